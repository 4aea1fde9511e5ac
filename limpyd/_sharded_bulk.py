"""Bulk creation, deletion and purge of sharded models (``shards = N``, docs/sharding.rst).

Each batch is split by shard and each part goes to its shard class, an unsharded model, through
the script of the unsharded bulk path (:mod:`limpyd._bulk`): one call per shard holding rows of
the batch, every shard's call sent together (one round trip per node,
:func:`run_on_shards`). The auto pks of a batch are allocated first, with one ``INCRBY`` of the model's
counter, so the shard of each row is known before anything is written and the shards allocate
nothing. Rows and pks are streamed: at most ``batch_size`` of them are held at once.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, Iterable, List, Optional, Tuple

import redis
from redis.exceptions import DataError

from limpyd import _atomic, _bulk, _claims, _executors, sharding
from limpyd._batch import send_ahead_of_locks
from limpyd._executors import Executor
from limpyd.collection import _model_path
from limpyd.exceptions import BulkError, ImplementationError, LimpydException
from limpyd.utils import make_key

__all__ = ["create_many", "delete_many", "purge_expired"]


def _check_model(model: Any, what: str) -> None:
    """Refuse ``what`` on a shard class (its rows would skip the model's counter and routing), or in a pipeline."""
    if model._limpyd_shard is not None:
        owner = sharding.sharded_model(model)
        raise ImplementationError(
            "%s on the shard class %d of %s: the model chooses the shard of each row; call %s.%s "
            "instead (%s)."
            % (what, model._limpyd_shard, _model_path(owner), owner.__name__, what, sharding._DOC)
        )
    connection = model.database.connection
    if _atomic.in_pipeline(model) or getattr(connection, "_limpyd_cluster_pipeline", False):
        raise sharding.unsupported(model, "%s inside a pipeline" % what)


def run_on_shards(model: Any, requests: Dict[int, Dict[str, Any]]) -> Dict[int, List[Any]]:
    """Run each shard's request (shard number -> an operation of its script, as
    ``limpyd._atomic.run_raw`` sends it) and return each shard's reply, every call sent together:
    one round trip per node (``limpyd._per_node.send_per_node``).

    A shard whose server lost the script or function (``NOSCRIPT``, "function not found": it did
    not run) or whose call could not go with the others runs alone through ``run_raw``, which
    loads it again; another error reply is raised once every reply is read.
    """
    from limpyd._per_node import per_node_allowed, raise_first_error, send_per_node

    shards = model._limpyd_shard_models
    connection = model.database.connection
    real = getattr(connection, "_limpyd_real", connection)
    if len(requests) < 2 or not per_node_allowed(connection):
        return {number: _atomic.run_raw(shards[number], request) for number, request in requests.items()}
    functions = _atomic.uses_functions(model.database, real)
    numbers = sorted(requests)
    commands = []
    for number in numbers:
        shard = shards[number]
        script = _atomic.script_of(shard)
        key = make_key(shard._name, "collection")
        payload = _atomic._JSON.encode(requests[number])
        if functions:
            commands.append((key, ("FCALL", script["function"], 1, key, payload)))
        else:
            sha = script.get("sha")
            if sha is None:
                sha = script["sha"] = hashlib.sha1(script["lua"].encode("utf-8")).hexdigest()
            commands.append((key, ("EVALSHA", sha, 1, key, payload)))
    replies = dict(zip(numbers, send_per_node(connection, commands)))
    for number, reply in replies.items():
        if isinstance(reply, redis.exceptions.NoScriptError) or (
            isinstance(reply, Exception) and _atomic.is_function_missing(reply)
        ):
            replies[number] = _atomic.run_raw(shards[number], requests[number])
    raise_first_error(list(replies.values()))
    return replies


def _allocate(model: Any, requests: List[Dict[str, Any]]) -> None:
    """Give each of ``requests`` (rows without a pk) the next pk of the model: one ``INCRBY`` for all."""
    if not requests:
        return
    normalize = model.get_class_field("pk").normalize
    key = make_key(model._name, "max_pk")
    last = int(send_ahead_of_locks(model.database.connection, "INCRBY", key, len(requests)))
    for offset, request in enumerate(requests):
        request["pk"] = normalize(last - len(requests) + 1 + offset)


def create_many(model: Any, rows: Iterable[Any], batch_size: int, ttl: Optional[float]) -> List[Any]:
    """Create the instances of ``rows`` in their shards; see ``RedisModel.create_many``.

    Per batch: one ``INCRBY`` for its auto pks, then one script call per shard it touches (rows
    checked before, as the unsharded path checks them). Refusals are raised together at the end,
    as ``BulkError``, with positions in ``rows``.
    """
    _check_model(model, "create_many()")
    _bulk._check_batch_size(model, batch_size)
    if ttl is not None:
        model._check_expiring("create_many(ttl=...)")
    elif model._limpyd_default_ttl is not None:
        ttl = model._limpyd_default_ttl
    shards = model._limpyd_shard_models
    template = shards[0]  # the rows are checked against the fields of a shard class (same fields)
    if _executors.for_bulk(template) is not Executor.SCRIPT:
        return _bulk._create_one_by_one(model, rows, batch_size, ttl)
    auto = model.get_class_field("pk")._auto_increment
    if model._limpyd_expiring and not auto:  # the given pk of a due instance is free, as unsharded
        for shard in shards:
            shard._purge_due()
    encoder = model.database.connection.get_encoder()
    pks: List[Any] = []
    refusals: List[Tuple[int, Exception]] = []
    position = 0
    for chunk in _bulk._chunks(rows, batch_size):
        start = position
        prepared: List[Tuple[int, Dict[str, Any]]] = []
        claimed: Dict[int, List[Tuple[str, str]]] = {}
        for row in chunk:
            try:
                prepared.append((position, _bulk._prepare_row(template, row, ttl, encoder)))
                if model._limpyd_claims:
                    claimed[position] = _claims.row_claims(model, row)
            except (LimpydException, ValueError, TypeError, DataError) as error:
                refusals.append((position, error))
            position += 1
        if auto:
            _allocate(model, [request for _, request in prepared])
        taken: Dict[int, List[Tuple[str, str, bool]]] = {}
        if claimed:  # the unique values: claimed for the whole model before any row is written
            prepared = _claim_rows(model, prepared, claimed, taken, refusals)
        parts: Dict[int, List[Tuple[int, Dict[str, Any]]]] = {}
        for at, request in prepared:
            parts.setdefault(sharding.shard_index(request["pk"], len(shards)), []).append((at, request))
        created: Dict[int, Any] = {}
        replies = run_on_shards(
            model,
            {
                number: {"op": "create_many", "rows": [request for _, request in part]}
                for number, part in parts.items()
            },
        )
        for number in sorted(parts):
            part, shard, reply = parts[number], shards[number], replies[number]
            for index, (at, _) in enumerate(part):
                status, first, second, third = reply[4 * index : 4 * index + 4]
                if status == "ok":
                    created[at] = first
                else:
                    refusals.append((at, _atomic.refusal(shard, status, first, second, third)))
        if taken:  # the leases dropped; the claims of the rows refused by their shard released
            pk_of = dict(prepared)
            _claims.release_many(
                model,
                [
                    (pk_of[at]["pk"], name, value, new and at not in created)
                    for at, claims in taken.items()
                    for name, value, new in claims
                ],
            )
        pks.extend(created.get(at) for at in range(start, position))
    if refusals:
        refusals.sort(key=lambda refusal: refusal[0])
        raise BulkError(refusals, pks)
    return pks


def _claim_rows(
    model: Any,
    prepared: List[Tuple[int, Dict[str, Any]]],
    claimed: Dict[int, List[Tuple[str, str]]],
    taken: Dict[int, List[Tuple[str, str, bool]]],
    refusals: List[Tuple[int, Exception]],
) -> List[Tuple[int, Dict[str, Any]]]:
    """Claim the unique values of the ``prepared`` rows of a batch (``claimed``: each row's), every
    claim of a round sent together (``limpyd._claims.take_many``: one round trip per node); return
    the rows whose claims were all taken, their claims in ``taken`` (``(field, value, new)``).

    The outcome is that of the rows created one after the other: a row waits while an earlier
    undecided row of the batch claims one of its values; a value an earlier accepted row holds
    refuses it with the ``UniquenessError`` its creation alone raises, a value held by another pk
    too (in ``refusals``); a refused row's claims are released at once, so it writes nothing and
    its values are free for the later rows. Each round decides at least the earliest undecided
    row: usually one round, two with values repeated in the batch.
    """
    pk_of = {at: request["pk"] for at, request in prepared}
    order = [at for at, _ in prepared]
    accepted: set = set()
    refused: Dict[int, Exception] = {}
    while len(accepted) + len(refused) < len(order):
        holder: Dict[Tuple[str, str], int] = {}
        for at in order:  # who claims each value: the accepted rows, then the earliest undecided
            if at in accepted:
                for pair in claimed.get(at, ()):
                    holder[pair] = at
        for at in order:
            if at not in accepted and at not in refused:
                for pair in claimed.get(at, ()):
                    holder.setdefault(pair, at)
        wanted = [
            (at, *pair)
            for at in order
            if at not in accepted and at not in refused
            for pair in claimed.get(at, ())
            if holder[pair] == at and pair not in {(name, value) for name, value, _ in taken.get(at, ())}
        ]
        results = _claims.take_many(model, [(pk_of[at], name, value) for at, name, value in wanted])
        failures: Dict[Tuple[int, str, str], Exception] = {}
        for (at, name, value), result in zip(wanted, results):
            if isinstance(result, Exception):
                failures[(at, name, value)] = result
            else:
                taken.setdefault(at, []).append((name, value, result))
        decided: Dict[int, Exception] = {}
        for at in order:  # each row decided by its first value not claimed for it, in field order
            if at in accepted or at in refused:
                continue
            outcome: Any = True
            for name, value in claimed.get(at, ()):
                first = holder[(name, value)]
                if first != at:
                    outcome = (
                        _claims._refusal(model, name, value, pk_of[first]) if first in accepted else None
                    )
                    break
                if (at, name, value) in failures:
                    outcome = failures[(at, name, value)]
                    break
            if outcome is True:
                accepted.add(at)
            elif outcome is not None:
                decided[at] = outcome
        _release_refused(model, decided, pk_of, taken)  # before the next round claims their values
        refused.update(decided)
    refusals.extend(refused.items())
    return [(at, request) for at, request in prepared if at not in refused]


def _release_refused(
    model: Any,
    refused: Dict[int, Exception],
    pk_of: Dict[int, Any],
    taken: Dict[int, List[Tuple[str, str, bool]]],
) -> None:
    """Release what the ``refused`` rows claimed (their new claims, the leases of the others)."""
    _claims.release_many(
        model, [(pk_of[at], name, value, new) for at in refused for name, value, new in taken.pop(at, [])]
    )


def delete_many(model: Any, pks: Iterable[Any], batch_size: int) -> int:
    """Delete the instances of ``pks``, each batch split by shard; return how many existed.

    Each shard's part of a batch goes to ``delete_many`` of its shard class (one script call).
    """
    _check_model(model, "delete_many()")
    _bulk._check_batch_size(model, batch_size)
    normalize = model.get_class_field("pk").normalize
    shards = model._limpyd_shard_models
    deleted = 0
    for chunk in _bulk._chunks(pks, batch_size):
        parts: Dict[int, List[str]] = {}
        for pk in chunk:
            pk = normalize(pk)
            parts.setdefault(sharding.shard_index(pk, len(shards)), []).append(pk)
        if _executors.for_bulk(shards[0]) is not Executor.SCRIPT or model._limpyd_claims:
            for number in sorted(parts):  # instance after instance (claims released by each)
                deleted += _bulk.delete_many(shards[number], parts[number], batch_size)
            continue
        replies = run_on_shards(
            model, {number: {"op": "delete_many", "pks": part} for number, part in parts.items()}
        )
        for number in sorted(parts):
            reply = replies[number]
            if reply[0] != "ok":
                raise _atomic.refusal(shards[number], *(list(reply) + [None] * 4)[:4])
            deleted += int(reply[1])
    return deleted


def purge_expired(model: Any, limit: int) -> int:
    """Remove at most ``limit`` due instances of the sharded ``model``, shard after shard; return how many."""
    purged = 0
    for shard in model._limpyd_shard_models:
        purged += shard.purge_expired(limit - purged)
        if purged >= limit:
            break
    return purged
