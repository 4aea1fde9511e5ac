"""``repair(model)``: fix what :func:`~limpyd.integrity.audit.audit` finds.

Each fix is checked again right before it is applied, under the lock of the field concerned
(the ``FieldLock`` every default-mode writer of an indexable field takes), so a value written
between the audit and the repair is not undone: an index entry is added only if the stored value
still produces it, removed only if it still does not. Key-level fixes run as small server-side
scripts that check their condition first (a key is deleted only if its pk is still outside the
collection, a lock only if it still has no expiry...). Instance data is never deleted unless
``delete_orphans=True``.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from limpyd.fields import FieldLock
from limpyd.integrity import _lua
from limpyd.integrity._lua import send as send_commands
from limpyd.integrity._schema import INSTANCE_HASH, ModelPlan
from limpyd.integrity.audit import analyze_alive, audit, check_present_entries, client_of, pk_sort_key
from limpyd.integrity.report import (
    EMPTY_PK,
    EXPIRED_INSTANCE,
    MISPLACED_INSTANCE,
    MISSING_ENTRY,
    ORPHAN_DATA,
    ORPHAN_DEADLINE,
    OWNERLESS_LOCK,
    SHARED_UNIQUE_VALUE,
    STALE_CLAIM,
    STALE_ENTRY,
    TEMPORARY_KEY,
    UNCLAIMED_VALUE,
    UNIQUE_CONFLICT,
    UNKNOWN_KEY,
    WRONG_ENTRY,
    AuditReport,
    Finding,
    RepairAction,
    RepairReport,
)
from limpyd.utils import make_key

__all__ = ["repair"]

#: kinds whose fix deletes instance data: applied only with ``delete_orphans=True``
DESTRUCTIVE = frozenset((EMPTY_PK, ORPHAN_DATA, UNKNOWN_KEY, SHARED_UNIQUE_VALUE))
KEEP_CHOICES = ("oldest", "newest")
CHUNK = 500
#: seconds to wait for a field lock before giving up (a writer holds one at most its 5 s timeout)
LOCK_WAIT = 30


def _describe(finding: Finding, delete_orphans: bool, keep: str) -> str:
    kind = finding.kind
    if kind == MISSING_ENTRY:
        return "add %r to %s" % (finding.member, finding.key)
    if kind in (STALE_ENTRY, WRONG_ENTRY):
        if finding.redis_type == "zset" and finding.kind == WRONG_ENTRY and finding.score is not None:
            return "set the score of %r in %s to %r" % (finding.member, finding.key, finding.score)
        return "remove %r from %s" % (finding.member, finding.key)
    if kind == UNIQUE_CONFLICT:
        pks = sorted(finding.pks or [], key=pk_sort_key)
        kept = pks[0] if keep == "oldest" else pks[-1]
        others = [pk for pk in pks if pk != kept]
        return "keep pk %s for %r; deindex pks %s%s" % (
            kept,
            finding.value,
            ", ".join(others),
            " and delete their value of %s" % finding.field
            if delete_orphans
            else " (their value stays stored)",
        )
    if kind == EMPTY_PK:
        return "remove pk %r from the collection" % finding.pk
    if kind == ORPHAN_DATA:
        return "delete %s" % finding.key
    if kind == UNKNOWN_KEY:
        if finding.member is not None:
            return "delete the entry %r of %s" % (finding.member, finding.key)
        return "delete %s" % finding.key
    if kind in (TEMPORARY_KEY, OWNERLESS_LOCK):
        return "delete %s" % finding.key
    if kind == EXPIRED_INSTANCE:
        return "purge the due instance %s" % finding.pk
    if kind == ORPHAN_DEADLINE:
        return "remove the deadline of pk %r" % finding.pk
    if kind == MISPLACED_INSTANCE:
        from limpyd.integrity.sharded import describe_move

        return describe_move(finding)
    if kind in (UNCLAIMED_VALUE, STALE_CLAIM, SHARED_UNIQUE_VALUE):
        from limpyd.integrity import claims

        return claims.describe(finding, delete_orphans, keep)
    return "nothing (unknown kind %r)" % kind


class _Repairer:
    def __init__(self, model: type, delete_orphans: bool, keep: str) -> None:
        self.model = model
        self.plan = ModelPlan(model)
        self.client = client_of(model)
        self.delete_orphans = delete_orphans
        self.keep = keep

    # ------------------------------------------------------------------ index entries

    def _lock(self, field: Optional[str]) -> Any:
        if field and field in self.plan.fields:
            return FieldLock(self.model.get_field(field), blocking_timeout=LOCK_WAIT)
        return _NoLock()

    def entries(self, actions: List[RepairAction]) -> None:
        """Fix missing, stale and wrong entries, field by field, under each field's lock."""
        by_field: Dict[Optional[str], List[RepairAction]] = {}
        for action in actions:
            by_field.setdefault(action.finding.field, []).append(action)
        for field, field_actions in by_field.items():
            for start in range(0, len(field_actions), CHUNK):
                chunk = field_actions[start : start + CHUNK]
                with self._lock(field):
                    self._entries_chunk(chunk)

    def _entries_chunk(self, actions: List[RepairAction]) -> None:
        plan, client = self.plan, self.client
        forward = [
            a
            for a in actions
            if a.finding.kind == MISSING_ENTRY
            or (
                a.finding.kind == WRONG_ENTRY
                and a.finding.score is not None
                and a.finding.redis_type == "zset"
                and self._score_fix(a.finding)
            )
        ]
        forward_ids = {id(a) for a in forward}
        backward = [a for a in actions if id(a) not in forward_ids]
        commands: List[Tuple[Tuple[Any, ...], Dict[str, Any]]] = []
        if forward:
            fresh = {
                f.identity(): f
                for f in analyze_alive(
                    plan, client, [a.finding.pk for a in forward], check_empty=False
                ).findings
                if f.kind in (MISSING_ENTRY, WRONG_ENTRY)
            }
            for action in forward:
                finding = fresh.get(action.finding.identity())
                if finding is None:
                    action.skipped = "fixed in the meantime"
                    continue
                if finding.redis_type == "set":
                    commands.append((("SADD", finding.key, finding.member), {}))
                else:
                    commands.append((("ZADD", finding.key, repr(finding.score), finding.member), {}))
                action.done = True
        if backward:
            items = [
                (a.finding.key, a.finding.redis_type, a.finding.member, a.finding.score) for a in backward
            ]
            confirmed = {(f.key, f.member) for f in check_present_entries(plan, client, items)}
            for action in backward:
                finding = action.finding
                if (finding.key, finding.member) not in confirmed:
                    action.skipped = "fixed in the meantime"
                    continue
                command = "SREM" if finding.redis_type == "set" else "ZREM"
                commands.append(((command, finding.key, finding.member), {}))
                action.done = True
        for reply in send_commands(client, commands) if commands else []:
            if isinstance(reply, Exception):
                raise reply

    @staticmethod
    def _score_fix(finding: Finding) -> bool:
        """Return whether a wrong entry is a wrong score of an expected member (fixed by ZADD)."""
        return "has score" in finding.detail

    # ------------------------------------------------------------------ unique conflicts

    def conflict(self, action: RepairAction) -> None:
        finding = action.finding
        plan, client = self.plan, self.client
        pks = sorted(finding.pks or [], key=pk_sort_key)
        kept = pks[0] if self.keep == "oldest" else pks[-1]
        losers = [pk for pk in pks if pk != kept]
        field_plan = plan.fields.get(finding.field or "")
        if field_plan is None:
            action.skipped = "no field %r" % finding.field
            return
        with self._lock(field_plan.name):
            commands: List[Tuple[Tuple[Any, ...], Dict[str, Any]]] = []
            read = {pk: values for pk, values, _, _ in plan.values(client, [*losers, kept])}
            for loser in losers:
                values = read[loser]
                entries = [
                    e
                    for e in plan.entries(loser, values, [field_plan.name])
                    if _same_value(e.value, finding.value, e)
                ]
                for entry in entries:
                    commands.append(
                        (("SREM" if entry.kind == "set" else "ZREM", entry.key, entry.member), {})
                    )
                if self.delete_orphans and entries:
                    commands.extend(self._delete_value(field_plan.name, loser, entries[0].value))
            # the kept pk gets its entries back if they were lost
            for entry in plan.entries(kept, read[kept], [field_plan.name]):
                if _same_value(entry.value, finding.value, entry):
                    if entry.kind == "set":
                        commands.append((("SADD", entry.key, entry.member), {}))
                    else:
                        commands.append((("ZADD", entry.key, repr(entry.score), entry.member), {}))
            for reply in send_commands(client, commands) if commands else []:
                if isinstance(reply, Exception):
                    raise reply
        action.done = True
        if not self.delete_orphans:
            action.skipped = "the other pks keep their value (delete_orphans=True deletes it)"

    def _delete_value(self, name: str, pk: str, value: Any) -> List[Tuple[Tuple[Any, ...], Dict[str, Any]]]:
        field_plan = self.plan.fields[name]
        if isinstance(value, tuple):
            value = value[-1] if value and not isinstance(value[0], tuple) else value
        if field_plan.reader == "ihash":
            return [(("HDEL", make_key(self.plan.name, pk, INSTANCE_HASH), name), {})]
        key = make_key(self.plan.name, pk, name)
        if field_plan.single:
            return [(("DEL", key), {})]
        if field_plan.reader == "set":
            return [(("SREM", key, value), {})]
        if field_plan.reader == "zset":
            return [(("ZREM", key, value), {})]
        if field_plan.reader == "list":
            return [(("LREM", key, 0, value), {})]
        return []

    # ------------------------------------------------------------------ keys

    def keys(self, actions: List[RepairAction]) -> None:
        plan = self.plan
        calls: List[Tuple[Any, Sequence[Any], Sequence[Any]]] = []
        targets: List[RepairAction] = []
        purge = 0
        for action in actions:
            finding = action.finding
            kind = finding.kind
            if kind in (TEMPORARY_KEY, OWNERLESS_LOCK):
                calls.append((_lua.DEL_IF_NO_TTL, [finding.key], []))
            elif kind == ORPHAN_DATA:
                calls.append((_lua.DEL_IF_ORPHAN, [plan.collection_key, finding.key], [finding.pk]))
            elif kind == EMPTY_PK:
                keys = [
                    make_key(plan.name, finding.pk, name)
                    for name, field_plan in plan.fields.items()
                    if field_plan.reader != "ihash"
                ]
                if plan.instancehash:
                    keys.append(make_key(plan.name, finding.pk, INSTANCE_HASH))
                calls.append((_lua.SREM_IF_EMPTY, [plan.collection_key, *keys], [finding.pk]))
            elif kind == UNKNOWN_KEY:
                if finding.member is not None:
                    calls.append(
                        (_lua.HDEL_ENTRY, [finding.key, plan.collection_key], [finding.pk, finding.member])
                    )
                else:
                    calls.append((_lua.DEL_IF_NO_TTL_OR_ANY, [finding.key], []))
            elif kind == ORPHAN_DEADLINE:
                calls.append((_lua.ZREM_IF_ORPHAN, [plan.deadlines_key, plan.collection_key], [finding.pk]))
            elif kind == EXPIRED_INSTANCE:
                purge += 1
                action.done = True
                continue
            else:
                action.skipped = "no fix for %r" % kind
                continue
            targets.append(action)
        for start in range(0, len(calls), 1000):
            replies = _lua.run(self.client, calls[start : start + 1000])
            for action, reply in zip(targets[start : start + 1000], replies):
                action.done = bool(reply)
                if not reply:
                    action.skipped = "fixed in the meantime"
        if purge:
            from limpyd.model import RedisModel

            purge_expired = RedisModel.__dict__["purge_expired"].__func__
            while purge > 0 and purge_expired(self.model, limit=min(purge, 1000)):
                purge -= 1000


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _same_value(entry_value: Any, finding_value: Any, entry: Any) -> bool:
    from limpyd.integrity.audit import _display

    return str(_display(entry_value)) == str(finding_value)


def plan_actions(report: AuditReport, delete_orphans: bool, keep: str) -> List[RepairAction]:
    """Return one action per finding of ``report`` (not applied)."""
    actions = []
    for finding in report.findings:
        action = RepairAction(finding, _describe(finding, delete_orphans, keep))
        if finding.kind in DESTRUCTIVE and not delete_orphans:
            action.skipped = "deletes instance data: pass delete_orphans=True"
        actions.append(action)
    return actions


def apply_actions(model: type, actions: List[RepairAction], delete_orphans: bool, keep: str) -> None:
    """Apply ``actions`` (those not skipped)."""
    if model._limpyd_shard_models is not None:  # sharded: each shard's by its shard class
        from limpyd.integrity import sharded

        sharded.apply_actions(model, actions, delete_orphans, keep)
        return
    repairer = _Repairer(model, delete_orphans, keep)
    todo = [action for action in actions if not action.skipped]
    # ownerless locks first: the fixes below take the field locks
    repairer.keys([a for a in todo if a.finding.kind == OWNERLESS_LOCK])
    todo = [a for a in todo if a.finding.kind != OWNERLESS_LOCK]
    repairer.entries([a for a in todo if a.finding.kind in (MISSING_ENTRY, STALE_ENTRY, WRONG_ENTRY)])
    for action in todo:
        if action.finding.kind == UNIQUE_CONFLICT:
            repairer.conflict(action)
    repairer.keys(
        [a for a in todo if a.finding.kind not in (MISSING_ENTRY, STALE_ENTRY, WRONG_ENTRY, UNIQUE_CONFLICT)]
    )


def repair(
    model: type,
    report: Optional[AuditReport] = None,
    dry_run: bool = True,
    delete_orphans: bool = False,
    keep: str = "oldest",
    max_rounds: int = 3,
    progress: Any = None,
) -> RepairReport:
    """Fix what the audit of ``model`` finds (``report``, or a new audit); return a :class:`RepairReport`.

    ``dry_run=True`` (the default) only lists the fixes. Unique conflicts keep the ``keep`` pk
    (``"oldest"``: the lowest numeric pk, then the first by sort; ``"newest"``: the last) and
    deindex the others; their stored value is deleted only with ``delete_orphans=True``, which
    also allows deleting orphan data, empty pks and unknown keys. After the fixes the model is
    audited again, and what can still be fixed is fixed again (at most ``max_rounds`` rounds: a
    fix can reveal another problem, e.g. an entry added back shows a unique conflict). Running
    it again on a clean model changes nothing.
    """
    if keep not in KEEP_CHOICES:
        raise ValueError("repair(keep=%r): choose among %s" % (keep, ", ".join(map(repr, KEEP_CHOICES))))
    started = time.perf_counter()
    result = RepairReport(
        model="%s.%s (%s)" % (model.__module__, model.__qualname__, model._name), dry_run=dry_run
    )
    current = report if report is not None else audit(model, progress=progress)
    previous: set = set()
    for round_number in range(1, max_rounds + 1):
        actions = plan_actions(current, delete_orphans, keep)
        if dry_run:
            for action in actions:
                action.skipped = action.skipped or "dry run"
            result.actions.extend(actions)
            result.final = None
            break
        result.rounds = round_number
        apply_actions(model, actions, delete_orphans, keep)
        result.actions.extend(actions)
        current = audit(model, progress=progress)
        result.final = current
        fixable = {f.identity() for f in current.findings if delete_orphans or f.kind not in DESTRUCTIVE}
        if not fixable or fixable == previous or not any(action.done for action in actions):
            break
        previous = fixable
    result.seconds = time.perf_counter() - started
    return result
