"""The integrity tools on a sharded model (docs/sharding.rst): shard after shard, one report.

Each shard class is an unsharded model of its own (``<model>@k``): it is audited, repaired and
rebuilt as any model, and the results are merged into one report for the model, each finding
marked with its shard (``Finding.shard``), the counts summed. Checked here, what only a sharded
model can have:

- a pk in the collection of a shard that is not its shard (``crc32(pk) % shards``):
  ``misplaced-instance``. The repair moves it: its values (and deadline) are read through the
  shard class holding it, the instance is created with the same pk and values in its own shard,
  then deleted from the other (limpyd maintains the indexes on both sides; the claims of its
  unique values stay, the pk keeps them). A pk stored in both shards is not moved: the repair
  cannot choose which one to keep;
- the claims of its unique values (:mod:`limpyd.integrity.claims`): ``unclaimed-value``,
  ``stale-claim`` and ``shared-unique-value`` (a value held in several shards);
- the model's own key space (``<model>:*``): ``max_pk``, ``__shards__`` and, while ``limpyd
  reshard`` runs, ``__reshard__``; any other key there is ``unknown-key``.

The stored shard count is checked first (``sharding.check_count``): with another count, every
instance would be misplaced.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from limpyd import sharding
from limpyd.integrity import _lua, claims
from limpyd.integrity.report import (
    CLAIM_KINDS,
    KINDS,
    MISPLACED_INSTANCE,
    UNKNOWN_KEY,
    AuditReport,
    Finding,
    RepairAction,
)
from limpyd.utils import make_key

__all__ = ["apply_actions", "audit", "rebuild_indexes"]

#: the keys a sharded model stores under its own name (``<model>:<part>``)
MODEL_PARTS = frozenset(("max_pk", "__shards__", "__reshard__"))


def _label(model: Any) -> str:
    return "%s.%s (%s, %d shards)" % (model.__module__, model.__qualname__, model._name, model._limpyd_shards)


def _shards(model: Any) -> List[Any]:
    """Return the shard classes of the sharded ``model``, once its stored count is checked."""
    sharding.check_count(model)
    return list(model._limpyd_shard_models)


# ---------------------------------------------------------------------- audit


def _misplaced(model: Any, client: Any, shard: Any, chunk_size: int) -> List[Finding]:
    """Return a finding for each pk of the collection of ``shard`` whose shard is another one (``SSCAN``)."""
    collection = make_key(shard._name, "collection")
    findings = []
    for pk in client.sscan_iter(collection, count=chunk_size):
        pk = str(pk)
        home = sharding.shard_index(pk, model._limpyd_shards)
        if home != shard._limpyd_shard:
            findings.append(
                Finding(
                    MISPLACED_INSTANCE,
                    collection,
                    pk=pk,
                    member=pk,
                    redis_type="set",
                    shard=shard._limpyd_shard,
                    value=home,
                    detail="pk %r is stored in shard %d of %s, its shard is %d (crc32(pk) %% %d)"
                    % (pk, shard._limpyd_shard, model.__name__, home, model._limpyd_shards),
                )
            )
    return findings


def _model_keys(model: Any, others: List[str]) -> tuple:
    """Return ``(keys scanned, findings)`` of the model's own key space (``<model>:*``)."""
    from limpyd.integrity.audit import glob_escape

    prefix = model._name + ":"
    skip = tuple(name + ":" for name in others)
    count, findings = 0, []
    for key in model.database.scan_keys(glob_escape(prefix) + "*"):
        if skip and key.startswith(skip):
            continue
        count += 1
        if key[len(prefix) :] not in MODEL_PARTS:
            findings.append(
                Finding(
                    UNKNOWN_KEY,
                    key,
                    detail="the sharded model %s stores only max_pk and __shards__ under %s (its "
                    "instances are in its shards, %s@k)" % (model.__name__, prefix, model._name),
                )
            )
    return count, findings


def _still_there(client: Any, findings: List[Finding]) -> List[Finding]:
    """Return the ``findings`` of this module still true (members still in their set, keys still there)."""
    if not findings:
        return []
    commands = [
        (("SISMEMBER", f.key, f.pk), {}) if f.kind == MISPLACED_INSTANCE else (("EXISTS", f.key), {})
        for f in findings
    ]
    replies = _lua.send(client, commands)
    return [f for f, reply in zip(findings, replies) if reply and not isinstance(reply, Exception)]


def audit(
    model: Any,
    chunk_size: int = 1000,
    max_findings: int = 100_000,
    progress: Any = None,
    recheck_findings: bool = True,
) -> AuditReport:
    """Return the audit report of the sharded ``model``: its shards' reports merged, and its own checks."""
    from limpyd.integrity.audit import audit as audit_one
    from limpyd.integrity.audit import client_of, other_model_names

    started = time.perf_counter()
    report = AuditReport(model=_label(model))
    client = client_of(model)
    findings: List[Finding] = []
    counts: Dict[str, int] = {}
    for shard in _shards(model):
        part = audit_one(
            shard,
            chunk_size=chunk_size,
            max_findings=max_findings,
            progress=progress,
            recheck_findings=recheck_findings,
        )
        for finding in part.findings:
            finding.shard = shard._limpyd_shard
        own = _misplaced(model, client, shard, chunk_size)
        if recheck_findings:
            own = _still_there(client, own)
        findings.extend(part.findings + own)
        for kind, number in part.counts.items():
            counts[kind] = counts.get(kind, 0) + number
        if own:
            counts[MISPLACED_INSTANCE] = counts.get(MISPLACED_INSTANCE, 0) + len(own)
        report.instances += part.instances
        report.keys += part.keys
        report.truncated = report.truncated or part.truncated
        report.notes.extend(note for note in part.notes if note not in report.notes)
    keys, own = _model_keys(model, other_model_names(model))
    if recheck_findings:
        own = _still_there(client, own)
    findings.extend(own)
    if own:
        counts[UNKNOWN_KEY] = counts.get(UNKNOWN_KEY, 0) + len(own)
    claimed = claims.audit(model, client, chunk_size)
    if claimed and recheck_findings:  # a write may have been running: keep what a second look confirms
        again = {f.identity() for f in claims.audit(model, client, chunk_size)}
        claimed = [f for f in claimed if f.identity() in again]
    findings.extend(claimed)
    for finding in claimed:
        counts[finding.kind] = counts.get(finding.kind, 0) + 1
    report.keys += keys
    if len(findings) > max_findings:
        findings, report.truncated = findings[:max_findings], True
    report.findings = findings
    report.counts = {kind: counts[kind] for kind in KINDS if counts.get(kind)}
    report.seconds = time.perf_counter() - started
    return report


# ---------------------------------------------------------------------- repair


def describe_move(finding: Finding) -> str:
    """Return what the repair of a misplaced instance does."""
    return "move pk %r from shard %s (%s) to its shard %s" % (
        finding.pk,
        finding.shard,
        finding.key,
        finding.value,
    )


def _move(model: Any, action: RepairAction) -> None:
    """Move the misplaced instance of ``action`` to its shard (same pk, values and deadline)."""
    from limpyd import resharding

    finding = action.finding
    pk = str(finding.pk)
    source = sharding.shard_model(model, int(finding.shard))  # type: ignore[arg-type]
    target = sharding.shard_model(model, sharding.shard_index(pk, model._limpyd_shards))
    if not source.get_field("pk").exists(pk):
        action.skipped = "fixed in the meantime"
        return
    if target.get_field("pk").exists(pk):
        action.skipped = (
            "pk %r is also stored in its shard %d: keep one of them (delete the other instance "
            "through %s.shard_model(k)), then repair again" % (pk, target._limpyd_shard, model.__name__)
        )
        return
    values = resharding._values(source.lazy_connect(pk))
    deadline = resharding._deadline(source, pk)
    resharding._create(target, pk, values, deadline)
    resharding._delete(source, pk)
    action.done = True


def apply_actions(model: Any, actions: List[RepairAction], delete_orphans: bool, keep: str) -> None:
    """Apply ``actions`` (those not skipped) of the sharded ``model``: each shard's by its shard class."""
    from limpyd.integrity.repair import apply_actions as apply_one

    by_shard: Dict[Optional[int], List[RepairAction]] = {}
    for action in actions:
        by_shard.setdefault(action.finding.shard, []).append(action)
    from limpyd.integrity.audit import client_of

    client = client_of(model)
    for number, part in by_shard.items():
        if number is None:  # the model's own keys (unknown keys, deleted) and the claims
            claims.apply_actions(model, [a for a in part if a.finding.kind in CLAIM_KINDS], keep)
            todo = [a for a in part if not a.skipped and a.finding.kind == UNKNOWN_KEY]
            for action in todo:
                action.done = bool(
                    _lua.run(client, [(_lua.DEL_IF_NO_TTL_OR_ANY, [action.finding.key], [])])[0]
                )
                action.skipped = "" if action.done else "fixed in the meantime"
            continue
        moves = [a for a in part if a.finding.kind == MISPLACED_INSTANCE]
        rest = [a for a in part if a.finding.kind != MISPLACED_INSTANCE]
        apply_one(sharding.shard_model(model, number), rest, delete_orphans, keep)
        for action in moves:
            if not action.skipped:
                _move(model, action)


# ---------------------------------------------------------------------- rebuild


def rebuild_indexes(model: Any, **options: Any) -> Dict[str, Any]:
    """Rebuild the indexes of every shard of ``model``, shard after shard (each resumable on its own)."""
    from limpyd.integrity.rebuild import rebuild_indexes as rebuild_one

    started = time.perf_counter()
    results = [rebuild_one(shard, **options) for shard in _shards(model)]
    return {
        "fields": results[0]["fields"],
        "instances": sum(result["instances"] for result in results),
        "fixed": sum(result["fixed"] for result in results),
        "resumed": any(result["resumed"] for result in results),
        "shards": len(results),
        "seconds": time.perf_counter() - started,
    }
