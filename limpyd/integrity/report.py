"""What an audit finds and what a repair did: finding kinds, :class:`Finding`, the reports."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

__all__ = [
    "AuditReport",
    "Finding",
    "KINDS",
    "KIND_DESCRIPTIONS",
    "RepairAction",
    "RepairReport",
]

#: an index entry whose pk is not in the model's collection
STALE_ENTRY = "stale-entry"
#: an index entry of an existing pk that its stored values do not produce (value changed, wrong score)
WRONG_ENTRY = "wrong-entry"
#: a stored value whose index entry is missing
MISSING_ENTRY = "missing-entry"
#: a unique index holding several pks for one value
UNIQUE_CONFLICT = "unique-conflict"
#: a pk in the collection without any stored data
EMPTY_PK = "empty-pk"
#: data (a field key, the instance hash) of a pk outside the collection
ORPHAN_DATA = "orphan-data"
#: a key (or instance-hash entry) in the model's key space that no field or index produces
UNKNOWN_KEY = "unknown-key"
#: a temporary key of an index or collection evaluation (``__index__``, ``__collection__``) left without TTL
TEMPORARY_KEY = "temporary-key"
#: a field lock (``lock-for-update``) without expiry: nobody owns it, it would block its field forever
OWNERLESS_LOCK = "ownerless-lock"
#: an instance of an expiring model whose deadline is past, still stored (added with expiring instances)
EXPIRED_INSTANCE = "expired-instance"
#: a deadline of a pk that is not in the collection (added with expiring instances)
ORPHAN_DEADLINE = "orphan-deadline"
#: a pk of a sharded model stored in a shard that is not its shard (``crc32(pk) % shards``)
MISPLACED_INSTANCE = "misplaced-instance"
#: a unique value of a sharded model whose claim is missing or names a pk not holding it
UNCLAIMED_VALUE = "unclaimed-value"
#: a claim of a sharded model naming a pk that does not hold the value, held by no instance
STALE_CLAIM = "stale-claim"
#: a unique value of a sharded model held by instances of several shards
SHARED_UNIQUE_VALUE = "shared-unique-value"

KIND_DESCRIPTIONS: Dict[str, str] = {
    STALE_ENTRY: "index entry whose pk has no instance",
    WRONG_ENTRY: "index entry whose value differs from the stored one",
    MISSING_ENTRY: "stored value missing from its index",
    UNIQUE_CONFLICT: "unique index holding several pks for one value",
    EMPTY_PK: "pk in the collection without data",
    ORPHAN_DATA: "data of a pk outside the collection",
    UNKNOWN_KEY: "key in the model's key space that no field or index produces",
    TEMPORARY_KEY: "temporary key left behind (no TTL)",
    OWNERLESS_LOCK: "field lock without owner (no expiry)",
    EXPIRED_INSTANCE: "instance past its TTL still stored",
    ORPHAN_DEADLINE: "deadline of a pk outside the collection",
    MISPLACED_INSTANCE: "instance of a sharded model stored in another shard than its own",
    UNCLAIMED_VALUE: "unique value of a sharded model without its claim",
    STALE_CLAIM: "claim of a sharded model's unique value that no instance holds",
    SHARED_UNIQUE_VALUE: "unique value of a sharded model held in several shards",
}

#: the kinds of the claims of a sharded model's unique values (limpyd.integrity.claims)
CLAIM_KINDS = frozenset((UNCLAIMED_VALUE, STALE_CLAIM, SHARED_UNIQUE_VALUE))

#: every kind, in report order
KINDS: Tuple[str, ...] = tuple(KIND_DESCRIPTIONS)


@dataclass
class Finding:
    """One problem: its ``kind`` (see :data:`KINDS`), the Redis ``key``, ``pk``, ``field`` and ``detail``.

    ``member``/``score`` name the index entry concerned (index kinds), ``pks`` the holders of a
    unique conflict, ``value`` the conflicting or missing value; ``redis_type`` is the type of
    ``key``. ``shard`` is the number of the shard class the finding is in (a sharded model's
    report; ``None`` for the model's own keys and on unsharded models). Repairs use these;
    reports show ``detail``.
    """

    kind: str
    key: Optional[str]
    pk: Optional[str] = None
    field: Optional[str] = None
    detail: str = ""
    member: Optional[str] = None
    score: Optional[float] = None
    redis_type: Optional[str] = None
    pks: Optional[List[str]] = None
    value: Any = None
    shard: Optional[int] = None

    def identity(self) -> Tuple[Any, ...]:
        """Return what makes two findings the same problem."""
        if self.kind == UNIQUE_CONFLICT:
            return (self.kind, self.key, self.field)
        return (self.kind, self.key, self.pk, self.field, self.member)

    def to_dict(self) -> Dict[str, Any]:
        """Return the finding as a JSON-ready dict (empty attributes left out)."""
        data = asdict(self)
        return {name: value for name, value in data.items() if value not in (None, "") or name == "key"}


@dataclass
class AuditReport:
    """The result of :func:`limpyd.integrity.audit`: findings of one model and counts by kind.

    ``counts`` covers every finding, also those beyond ``max_findings`` that were not kept in
    ``findings`` (``truncated`` is then true). ``clean`` is true when nothing was found.
    """

    model: str
    findings: List[Finding] = field(default_factory=list)
    counts: Dict[str, int] = field(default_factory=dict)
    instances: int = 0
    keys: int = 0
    seconds: float = 0.0
    truncated: bool = False
    notes: List[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    @property
    def clean(self) -> bool:
        """Return whether the audit found nothing."""
        return not any(self.counts.values())

    @property
    def total(self) -> int:
        """Return the number of findings (kept or not)."""
        return sum(self.counts.values())

    def by_kind(self, kind: str) -> List[Finding]:
        """Return the kept findings of ``kind``."""
        return [finding for finding in self.findings if finding.kind == kind]

    def to_dict(self) -> Dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {
            "model": self.model,
            "clean": self.clean,
            "instances": self.instances,
            "keys": self.keys,
            "seconds": round(self.seconds, 3),
            "counts": {kind: self.counts.get(kind, 0) for kind in KINDS if self.counts.get(kind)},
            "truncated": self.truncated,
            "notes": list(self.notes),
            "findings": [finding.to_dict() for finding in self.findings],
        }

    def summary(self) -> str:
        """Return one line: the model, instances read, and the counts by kind (or ``clean``)."""
        counts = ", ".join("%s: %d" % (kind, self.counts[kind]) for kind in KINDS if self.counts.get(kind))
        return "%s: %d instances, %d keys, %s (%.2fs)" % (
            self.model,
            self.instances,
            self.keys,
            counts or "clean",
            self.seconds,
        )


class _FindingCollector:
    """Keep findings (deduplicated, at most ``limit``) and count all of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept: Dict[Tuple[Any, ...], Finding] = {}
        self.overflow: Dict[str, int] = {}

    def add(self, finding: Finding) -> None:
        identity = finding.identity()
        if identity in self.kept:
            return
        if len(self.kept) >= self.limit:
            self.overflow[finding.kind] = self.overflow.get(finding.kind, 0) + 1
            return
        self.kept[identity] = finding

    def extend(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            self.add(finding)

    def discard(self, finding: Finding) -> None:
        self.kept.pop(finding.identity(), None)

    def findings(self) -> List[Finding]:
        return list(self.kept.values())


@dataclass
class RepairAction:
    """One fix: the finding it answers, what it does (``action``) and whether it was ``done``.

    ``skipped`` gives the reason a fix was not applied (dry run, ``delete_orphans`` not given,
    the problem went away before the fix).
    """

    finding: Finding
    action: str
    done: bool = False
    skipped: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return {
            "finding": self.finding.to_dict(),
            "action": self.action,
            "done": self.done,
            "skipped": self.skipped,
        }


@dataclass
class RepairReport:
    """The result of :func:`limpyd.integrity.repair`: the actions, and the audit run after them."""

    model: str
    dry_run: bool
    actions: List[RepairAction] = field(default_factory=list)
    rounds: int = 0
    final: Optional[AuditReport] = None
    seconds: float = 0.0

    @property
    def done(self) -> int:
        """Return how many actions were applied."""
        return sum(1 for action in self.actions if action.done)

    @property
    def unresolved(self) -> List[RepairAction]:
        """Return the actions whose problem is still found by the audit after the repair (one per problem)."""
        if self.final is None:
            return []
        left = {finding.identity() for finding in self.final.findings}
        unique = {
            action.finding.identity(): action for action in self.actions if action.finding.identity() in left
        }
        return list(unique.values())

    @property
    def clean(self) -> bool:
        """Return whether the audit after the repair found nothing (``False`` for a dry run)."""
        return bool(self.final is not None and self.final.clean)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model,
            "dry_run": self.dry_run,
            "rounds": self.rounds,
            "done": self.done,
            "clean": self.clean,
            "seconds": round(self.seconds, 3),
            "actions": [action.to_dict() for action in self.actions],
            "final": self.final.to_dict() if self.final is not None else None,
        }

    def summary(self) -> str:
        if self.dry_run:
            return "%s: %d fixes planned (dry run)" % (self.model, len(self.actions))
        left = self.final.summary() if self.final is not None else "not audited"
        return "%s: %d fixes applied, %d left unresolved; after: %s" % (
            self.model,
            self.done,
            len(self.unresolved),
            left,
        )
