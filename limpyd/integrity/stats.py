"""``stats(database, models)``: every key of a database, grouped by model, role, field and index.

One full ``SCAN`` (``database.scan_keys``, the fast reader) classifies each key by its name only;
memory, TTL and type come from a sample of each group (``MEMORY USAGE``, ``PTTL``, ``TYPE`` on at
most ``sample`` keys per group, chosen by reservoir sampling, in one round trip at the end), and
are extrapolated to the whole group.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from limpyd._batch import send_commands
from limpyd.integrity._schema import INSTANCE_HASH, RESERVED_PARTS
from limpyd.sharding import sharded_model

#: the keys a sharded model stores under its own name, besides ``max_pk``
SHARDED_PARTS = ("__shards__", "__reshard__")

__all__ = ["stats"]


class _Group:
    __slots__ = ("count", "sample", "seen")

    def __init__(self) -> None:
        self.count = 0
        self.sample: List[str] = []


def _classify(key: str, models: Sequence[Tuple[str, Any, str]]) -> Tuple[str, str, str]:
    """Return ``(owner, role, detail)`` of ``key``: the model name (or unknown prefix), its role, the field.

    ``models``: ``(key prefix, field names, owner)``; a shard class's owner is its sharded model.
    """
    for name, plan, owner in models:
        if key.startswith(name) and key[len(name) : len(name) + 1] == ":":
            rest = key[len(name) + 1 :]
            head, _, tail = rest.partition(":")
            if head in RESERVED_PARTS or (head in SHARDED_PARTS and not tail):
                if head in ("collection", "max_pk", "__deadlines__", *SHARDED_PARTS) and not tail:
                    return owner, head, ""
                if head == "lock-for-update":
                    return owner, "lock", tail
                if head in ("__index__", "__collection__"):
                    return owner, "temporary", head
                return owner, head, ""
            if head in plan and tail:
                return owner, "index", head
            pk, _, field = rest.rpartition(":")
            if field == INSTANCE_HASH or field in plan:
                return owner, "data", field
            return owner, "unknown", field
    head = key.split(":", 2)
    return ":".join(head[:2]) if len(head) > 1 else head[0], "unknown prefix", ""


def _prefixes(models: Sequence[Any]) -> List[Tuple[str, Any, str]]:
    """Return ``(key prefix, field names, owner)`` of ``models``, each sharded model's shard classes
    included: the keys of its shards (``<model>@k:...``) are counted under the model."""
    known = {}
    for model in models:
        owner = sharded_model(model)._name
        for klass in [model, *(model._limpyd_shard_models or ())]:
            known[klass._name] = (klass._name, set(klass._fields), owner)
    return list(known.values())


def stats(
    database: Any,
    models: Optional[Sequence[type]] = None,
    sample: int = 50,
    count: Optional[int] = None,
    progress: Optional[Callable[[str, int, Optional[int]], None]] = None,
    seed: Optional[int] = None,
) -> Dict[str, Any]:
    """Return the keys of ``database`` grouped by model, role (data, index, collection...), field.

    ``models``: the models to recognise (default: those registered on ``database``). Each group
    gives ``count``, and from a sample of at most ``sample`` keys: ``memory`` (``MEMORY USAGE``
    mean times count, bytes), ``with_ttl`` (share of sampled keys with a TTL, times count),
    ``types``. The sample size is in the result.
    """
    if models is None:
        models = list(getattr(database, "_models", {}).values())
    known = sorted(_prefixes(models), key=lambda item: -len(item[0]))
    rng = random.Random(seed)
    groups: Dict[Tuple[str, str, str], _Group] = {}
    started = time.perf_counter()
    total = 0
    for key in database.scan_keys(count=count):
        total += 1
        ident = _classify(key, known)
        group = groups.get(ident)
        if group is None:
            group = groups[ident] = _Group()
        group.count += 1
        if len(group.sample) < sample:
            group.sample.append(key)
        else:
            slot = rng.randrange(group.count)
            if slot < sample:
                group.sample[slot] = key
        if progress and total % 100_000 == 0:
            progress("keys", total, None)
    scan_seconds = time.perf_counter() - started
    client = database.connection
    commands = []
    for group in groups.values():
        for key in group.sample:
            commands.append((("MEMORY", "USAGE", key), {}))
            commands.append((("PTTL", key), {}))
            commands.append((("TYPE", key), {}))
    replies = send_commands(client, commands) if commands else []
    position = 0
    rows = []
    for (owner, role, detail), group in sorted(groups.items()):
        memory = 0
        with_ttl = 0
        types: Dict[str, int] = {}
        sampled = 0
        for _ in group.sample:
            used, ttl, kind = replies[position : position + 3]
            position += 3
            if isinstance(used, Exception) or used is None:
                continue
            sampled += 1
            memory += int(used)
            with_ttl += 1 if isinstance(ttl, int) and ttl >= 0 else 0
            types[str(kind)] = types.get(str(kind), 0) + 1
        factor = group.count / sampled if sampled else 0
        rows.append(
            {
                "model": owner,
                "role": role,
                "field": detail,
                "count": group.count,
                "sampled": sampled,
                "memory": int(memory * factor),
                "with_ttl": int(round(with_ttl * factor)),
                "types": types,
            }
        )
    return {
        "keys": total,
        "sample": sample,
        "scan_seconds": round(scan_seconds, 3),
        "keys_per_second": int(total / scan_seconds) if scan_seconds else None,
        "groups": rows,
    }
