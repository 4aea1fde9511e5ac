"""The claims of a sharded model's unique values, audited and repaired (docs/sharding.rst).

Each shard keeps its own unique index, which sees only that shard; a unique value is also
claimed once for the whole model (``limpyd._claims``). What only the claims can show:

- ``unclaimed-value``: an instance holds a unique value whose claim is missing, or names another
  pk that does not hold it: a writer on another shard could take the value. The repair claims it
  for the holder (a compare-and-set in the claim's slot: only if the claim is still as audited
  and no write of that value is pending);
- ``stale-claim``: a claim naming a pk that does not hold the value, held by no instance (a
  client died between its claim and its write, an instance purged with its keys). Harmless (the
  next writer of the value takes it over), reported so that the key space stays clean; the
  repair deletes it (compare-and-delete, not while a write of the value is pending);
- ``shared-unique-value``: one unique value held by instances of several shards (data written
  around limpyd). The repair keeps the pk the claim names (else the ``keep`` rule) and deletes
  the value of the others through their shard class (indexes maintained): instance data, so only
  with ``delete_orphans=True``.

A claim whose write is pending (its lease key exists) is never reported: the write is running.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

from limpyd import _claims, sharding
from limpyd._batch import send_commands
from limpyd._cluster import plain_model_name
from limpyd.integrity.report import SHARED_UNIQUE_VALUE, STALE_CLAIM, UNCLAIMED_VALUE, Finding
from limpyd.utils import normalize

__all__ = ["apply_actions", "audit", "claim_pattern", "describe", "held_values"]

# KEYS: claim, lease; ARGV: pk, the claim's audited holder ('' = no claim). 1: claimed, 0: changed
_CLAIM_FOR = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local holder = redis.call('GET', KEYS[1])
if (holder or '') ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

# KEYS: claim, lease; ARGV: stale pk. 1: deleted, 0: changed meanwhile or pending
_DROP_STALE = """
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


def claim_pattern(model: Any) -> Tuple[str, "re.Pattern[str]"]:
    """Return the ``SCAN MATCH`` pattern of the claim and lease keys of ``model``, and their parser."""
    from limpyd.integrity.audit import glob_escape

    plain = plain_model_name(model)
    if model.database.is_cluster:
        head = "{%s#" % plain
        parser = re.compile(r"^%s(\d+)\}:([^:]+):(.*)$" % re.escape(head), re.S)
    else:
        head = "%s#" % plain
        parser = re.compile(r"^%s(\d+):([^:]+):(.*)$" % re.escape(head), re.S)
    return glob_escape(head) + "*", parser


def held_values(
    shards: List[Any], client: Any, names: Tuple[str, ...], chunk_size: int
) -> Dict[Tuple[str, str], List[str]]:
    """Return ``{(field, value): [pks holding it]}`` over the shard classes ``shards`` (one read per pk chunk)."""
    from limpyd.utils import make_key

    held: Dict[Tuple[str, str], List[str]] = {}
    for shard in shards:
        pks = [str(pk) for pk in client.sscan_iter(make_key(shard._name, "collection"), count=chunk_size)]
        for start in range(0, len(pks), chunk_size):
            chunk = list(dict.fromkeys(pks[start : start + chunk_size]))
            commands, owners = [], []
            for pk in chunk:
                instance = shard.lazy_connect(pk)
                for name in names:
                    parts = name.split("+")  # a unique combination: each of its fields read
                    commands.extend((_claims.read_command(instance, part), {}) for part in parts)
                    owners.append((pk, name, parts))
            replies = iter(send_commands(client, commands))
            for pk, name, parts in owners:
                read = [next(replies) for _ in parts]
                if any(isinstance(reply, Exception) for reply in read):
                    continue
                if len(parts) > 1:
                    index = _claims.combinations(shard)[name]
                    text = _claims.combination_text(index, dict(zip(parts, map(normalize, read))))
                    values: Any = () if text is None else (text,)
                elif read[0] is None:
                    continue
                else:
                    reply = read[0]
                    values = dict.fromkeys(reply) if isinstance(reply, (list, set, tuple)) else (reply,)
                for value in values:
                    held.setdefault((name, normalize(value)), []).append(pk)
    return held


def _read_claims(model: Any, client: Any, names: Tuple[str, ...]) -> Tuple[Dict[Tuple[str, str], str], set]:
    """Return ``({(field, value): claim's pk}, {(field, value) whose write is pending})``."""
    pattern, parser = claim_pattern(model)
    claim_keys: Dict[Tuple[str, str], str] = {}
    pending = set()
    for key in model.database.scan_keys(pattern):
        match = parser.match(key)
        if match is None:
            continue
        part, value = match.group(2), match.group(3)
        if part.endswith("~lease"):
            pending.add((part[: -len("~lease")], value))
        elif part in names:
            claim_keys[(part, value)] = key
    holders: Dict[Tuple[str, str], str] = {}
    for (name, value), key in claim_keys.items():
        reply = client.get(key)
        if reply is not None:
            holders[(name, value)] = normalize(reply)
    return holders, pending


def audit(model: Any, client: Any, chunk_size: int = 1000) -> List[Finding]:
    """Return the claim findings of the sharded ``model`` (nothing when it has no claimed field)."""
    names = _claims.claimed_fields(model)
    if not names:
        return []
    held = held_values(list(model._limpyd_shard_models), client, names, chunk_size)
    claimed, pending = _read_claims(model, client, names)
    findings: List[Finding] = []
    for (name, value), pks in sorted(held.items()):
        if (name, value) in pending:
            continue  # a write of this value is running
        claim = _claims.claim_keys(model, name, value)[0]
        holder = claimed.get((name, value))
        shards = sorted({sharding.shard_index(pk, model._limpyd_shards) for pk in pks})
        if len(shards) > 1:
            findings.append(
                Finding(
                    SHARED_UNIQUE_VALUE,
                    claim,
                    field=name,
                    value=value,
                    pks=sorted(pks),
                    member=holder,
                    detail="the unique value %r of %s.%s is held by pks %s, in shards %s (the claim "
                    "names %r)" % (value, model.__name__, name, ", ".join(sorted(pks)), shards, holder),
                )
            )
        elif holder not in pks and len(pks) == 1:
            findings.append(
                Finding(
                    UNCLAIMED_VALUE,
                    claim,
                    pk=pks[0],
                    field=name,
                    value=value,
                    member=holder,
                    detail="pk %r of %s holds the unique value %r of %s, %s"
                    % (
                        pks[0],
                        model.__name__,
                        value,
                        name,
                        "without its claim"
                        if holder is None
                        else "claimed by pk %r, which does not hold it" % holder,
                    ),
                )
            )
    for (name, value), holder in sorted(claimed.items()):
        if (name, value) in held or (name, value) in pending:
            continue
        findings.append(
            Finding(
                STALE_CLAIM,
                _claims.claim_keys(model, name, value)[0],
                pk=holder,
                field=name,
                value=value,
                detail="the claim of the value %r of %s.%s names pk %r, which does not hold it (nor "
                "does any instance)" % (value, model.__name__, name, holder),
            )
        )
    return findings


def describe(finding: Finding, delete_orphans: bool, keep: str) -> str:
    """Return what the repair of a claim finding does."""
    if finding.kind == UNCLAIMED_VALUE:
        return "claim %r of %s for pk %r" % (finding.value, finding.field, finding.pk)
    if finding.kind == STALE_CLAIM:
        return "delete the claim %s (names pk %r)" % (finding.key, finding.pk)
    kept = _kept(finding, keep)
    return "keep pk %s for %r; delete the value of %s of pks %s" % (
        kept,
        finding.value,
        finding.field,
        ", ".join(pk for pk in finding.pks or [] if pk != kept),
    )


def _kept(finding: Finding, keep: str) -> str:
    from limpyd.integrity.audit import pk_sort_key

    pks = sorted(finding.pks or [], key=pk_sort_key)
    if finding.member in pks:
        return str(finding.member)
    return pks[0] if keep == "oldest" else pks[-1]


def _run(model: Any, script: str, name: str, value: str, *args: str) -> int:
    claim, lease = _claims.claim_keys(model, name, value)
    return int(model.database.connection.eval(script, 2, claim, lease, *args))


def apply_actions(model: Any, actions: List[Any], keep: str) -> None:
    """Apply the claim ``actions`` (those not skipped) of the sharded ``model``."""
    for action in actions:
        if action.skipped:
            continue
        finding = action.finding
        name, value = str(finding.field), str(finding.value)
        if finding.kind == UNCLAIMED_VALUE:
            if not _claims.holds(model, str(finding.pk), name, value):
                action.skipped = "fixed in the meantime"
                continue
            action.done = bool(_run(model, _CLAIM_FOR, name, value, str(finding.pk), finding.member or ""))
        elif finding.kind == STALE_CLAIM:
            action.done = bool(_run(model, _DROP_STALE, name, value, str(finding.pk)))
        else:  # SHARED_UNIQUE_VALUE
            kept = _kept(finding, keep)
            for pk in finding.pks or []:
                if pk != kept and _claims.holds(model, pk, name, value):
                    instance = sharding.model_of(model, pk).lazy_connect(pk)
                    with _claims._suspended(instance):  # the claim stays with the kept pk
                        # a combination: its first field's value deleted (the combination goes)
                        instance.get_field(name.split("+")[0]).delete()
            current: Optional[str] = normalize(
                model.database.connection.get(_claims.claim_keys(model, name, value)[0])
            )
            if current != kept:
                _run(model, _CLAIM_FOR, name, value, kept, current or "")
            action.done = True
        if not action.done and not action.skipped:
            action.skipped = "fixed in the meantime"
