"""Move every instance of a sharded model to the shards of another count (``limpyd reshard``).

The shard of a pk is ``crc32(pk) % shards``: changing ``shards`` moves most instances. This module
moves them, instance by instance, through limpyd itself: the values are read through the shard
class of the old count, the instance is created with the same pk and values in the shard class
of the new count (limpyd maintains the indexes), then deleted from the old shard. A count of 1 is
the layout of an unsharded model (``<namespace>:<model>:...``), so a model can start or stop being
sharded this way too. See docs/sharding.rst, "Resharding".

Resumable: the state lives in Redis, in the hash ``<model>:__reshard__`` (counts, the old shard
being emptied, the batch in flight and its phase); a rerun continues where a run stopped and
repairs the batch in flight (an instance created in its new shard but not yet deleted from the
old one is created again from the old values, then deleted from the old shard). While it runs,
``<model>:__shards__`` holds ``resharding <from> to <to>``, which every other process refuses.

Writes to the model must be paused by the operator: before and after each batch the pk counter
and the number of instances (every shard's collection) are compared, and the values of each
instance are read again before it is deleted from its old shard; any change not made by the move
stops the run with :class:`WritesNotPaused` (state kept: rerun once the writers are stopped).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from limpyd import _atomic, _claims, _shard_count, sharding
from limpyd.exceptions import DoesNotExist, LimpydException
from limpyd.fields import HashField, ListField, PKField, SetField, SortedSetField
from limpyd.utils import make_key

__all__ = ["ReshardError", "WritesNotPaused", "reshard", "shard_classes"]

#: the last part of the key of the state of a reshard (``<namespace>:<model>:__reshard__``)
STATE_PART = "__reshard__"

Progress = Callable[[str, int, Optional[int]], None]


class ReshardError(LimpydException):
    """A reshard that cannot start or continue as asked (the message names the fix)."""


class WritesNotPaused(LimpydException):
    """Something else wrote to the model during a reshard (the state is kept: rerun to continue)."""


def _path(model: Any) -> str:
    return "%s.%s" % (model.__module__, model.__qualname__)


# ---------------------------------------------------------------------- shard classes


def shard_classes(model: Any, count: int) -> List[Any]:
    """Return the classes of the shards ``0`` to ``count - 1`` of ``model`` for ``count`` shards.

    Made as ``sharding.setup`` makes the declared ones (a subclass named ``<model>@k``, whose auto
    pk takes the pk given), for any count; with ``count`` 1, one class using the layout of an
    unsharded model. They are registered on a private database with the same settings, so the
    model's database and registry are left as they are.
    """
    from limpyd.database import RedisDatabase

    model = sharding.sharded_model(model)
    private = RedisDatabase(**model.database.connection_settings)
    classes = []
    for number in range(count):
        attrs = {
            "__module__": model.__module__,
            "__qualname__": model.__qualname__,
            "_limpyd_shard": number,
            "_limpyd_shard_models": None,
            "database": private,
        }
        name = model.__name__ if count == 1 else "%s@%d" % (model.__name__, number)
        shard = type(model)(name, (model,), attrs)
        shard.__name__ = model.__name__
        pk_field = shard.get_class_field("pk")
        if pk_field._auto_increment:  # takes the pk of the instance it receives
            pk_field.__class__ = sharding._shard_pk_class(type(pk_field))
        classes.append(shard)
    return classes


# ---------------------------------------------------------------------- one instance


def _values(instance: Any) -> Dict[str, Any]:
    """Return the stored values of ``instance`` as creation arguments (empty values left out)."""
    values: Dict[str, Any] = {}
    for name in instance._fields:
        field = instance.get_field(name)
        if isinstance(field, PKField):
            continue
        if isinstance(field, SortedSetField):
            value: Any = dict(field.zrange(0, -1, withscores=True))
        elif isinstance(field, ListField):
            value = field.lrange(0, -1)
        elif isinstance(field, SetField):
            value = sorted(field.smembers())
        elif isinstance(field, HashField):
            value = field.hgetall()
        else:
            value = field.proxy_get()
        if value is None or (isinstance(value, (list, dict)) and not value):
            continue
        values[name] = value
    return values


def _deadline(shard: Any, pk: str) -> Optional[int]:
    """Return the deadline of ``pk`` in ``shard`` (ms, server clock), or None (not expiring)."""
    if not shard._limpyd_expiring:
        return None
    score = shard.database.connect().zscore(make_key(shard._name, "__deadlines__"), pk)
    return None if score is None else int(score)


def _create(shard: Any, pk: str, values: Dict[str, Any], deadline: Optional[int]) -> None:
    """Create the instance ``pk`` with ``values`` in ``shard`` (its deadline too)."""
    instance = object.__new__(shard)  # not through the model's routing: the shard is chosen here
    instance.__dict__["_limpyd_claims_off"] = True  # the pk keeps its values: its claims stay
    pk_field = shard.get_class_field("pk")
    arguments = dict(values)
    if pk_field._auto_increment:
        instance.__dict__["_limpyd_shard_pk"] = pk
    else:
        arguments[pk_field.name] = pk
    if not arguments:  # an instance without values: a creation all the same
        arguments[next(name for name in shard._fields if not shard._field_is_pk(name))] = None
    instance.__init__(**arguments)
    instance.pk.get()  # a creation without values is stored when its pk is read
    if shard._limpyd_expiring and (deadline is not None or shard._limpyd_default_ttl is not None):
        request: Dict[str, Any] = {"op": "expire", "pk": pk}
        if deadline is not None:
            request["at"] = deadline
        _atomic.run(shard, request)


def _delete(shard: Any, pk: str) -> None:
    """Delete the instance ``pk`` of ``shard`` (what is left of it: a rerun may finish a deletion),
    and its deadline (``delete()`` leaves it to the purge in the default mode). The claims of its
    unique values stay: the pk keeps them in its new shard."""
    instance = shard.lazy_connect(pk)
    instance.__dict__["_limpyd_claims_off"] = True
    instance.delete()
    if shard._limpyd_expiring:
        shard.database.connect().zrem(make_key(shard._name, "__deadlines__"), pk)


def _clean(shard: Any, pk: str, values: Dict[str, Any]) -> None:
    """Remove whatever an interrupted creation of ``pk`` (with ``values``) left in ``shard``:
    its keys, the index entries of ``values`` and of what it holds, its collection entry and
    deadline (``_abort_creation``, which cleans a creation that failed in this process)."""
    instance = shard.lazy_connect(pk)
    instance.__dict__["_limpyd_written"] = values
    instance._abort_creation()
    if shard._limpyd_expiring:
        shard.database.connect().zrem(make_key(shard._name, "__deadlines__"), pk)


# ---------------------------------------------------------------------- the run


class _Run:
    """One run of :func:`reshard` on ``model``, from ``source`` to ``target`` shards."""

    def __init__(
        self, model: Any, source: int, target: int, progress: Optional[Progress], batch: int
    ) -> None:
        self.model = model
        self.source, self.target = source, target
        self.old = shard_classes(model, source)
        self.new = shard_classes(model, target)
        self.client = model.database.connect()
        self.state_key = make_key(model._name, STATE_PART)
        self.progress = progress
        self.batch = batch
        #: the fingerprint taken before the first batch (a write of others changes it)
        self.reference: Optional[Tuple[Any, ...]] = None
        self.moved = self.shard_moved = self._moved_seen = 0

    def new_number(self, pk: str) -> int:
        return sharding.shard_index(pk, self.target)

    def stays(self, number: int, pk: str) -> bool:
        """Return whether ``pk``, in the old shard ``number``, is already in its new shard (same keys)."""
        return self.source > 1 and self.target > 1 and self.new_number(pk) == number

    def fingerprint(self) -> Tuple[Any, ...]:
        """Return what writes of others change: the pk counter, the number of instances."""
        pipeline = self.client.pipeline(transaction=False)
        pipeline.get(make_key(self.model._name, "max_pk"))
        if not self.model._limpyd_expiring:  # due instances leave by themselves
            names = {shard._name for shard in self.old + self.new}
            for name in sorted(names):
                pipeline.scard(make_key(name, "collection"))
        replies = pipeline.execute()
        return replies[0], sum(replies[1:])

    def check_unchanged(self, where: str) -> None:
        """Raise ``WritesNotPaused`` if the fingerprint is not the one taken before the first batch."""
        before, after = self.reference, self.fingerprint()
        if after != before:
            raise WritesNotPaused(
                "%s was written to during the reshard (%s: pk counter %s -> %s, instances %d -> %d): "
                "stop every writer of the model (and the reaper), then run the same command again "
                "to continue" % (_path(self.model), where, before[0], after[0], before[1], after[1])
            )

    def report(self, done: int, total: Optional[int]) -> None:
        if self.progress is not None:
            self.progress("reshard", done, total)

    def run(self, state: Dict[str, str]) -> Dict[str, int]:
        """Empty the old shards one after the other, from the one the state names; return the counts.

        ``examined`` counts the instances of the old shards (those moved in by the run are not
        theirs: skipped), each once across runs: the state keeps the count of the shards done
        and the number moved out of the current one (which a rerun does not see again).
        """
        self.moved = int(state.get("moved") or 0)
        self.shard_moved = int(state.get("shard_moved") or 0)
        examined = int(state.get("examined") or 0)
        start = int(state["shard"])
        total = examined + self.shard_moved
        total += sum(self.client.scard(make_key(shard._name, "collection")) for shard in self.old[start:])
        if state.get("inflight"):
            self.finish_inflight(start, json.loads(state["inflight"]), state.get("phase"))
        if self.reference is None:
            self.reference = self.fingerprint()
        self.report(examined, total)
        for number in range(start, self.source):
            shard = self.old[number]
            seen: Set[str] = set()
            pending: List[str] = []
            for pk in self.client.sscan_iter(make_key(shard._name, "collection"), count=self.batch):
                if pk in seen or sharding.shard_index(pk, self.source) != number:
                    continue  # seen twice by the scan, or moved here from another old shard
                seen.add(pk)
                if not self.stays(number, pk):
                    pending.append(pk)
                if len(pending) >= self.batch:
                    self.move(number, pending)
                    pending = []
                    self.report(examined + self.shard_moved + len(seen) - self._moved_seen, total)
            if pending:
                self.move(number, pending)
            examined += self.shard_moved + len(seen) - self._moved_seen
            self.shard_moved = self._moved_seen = 0
            self.client.hset(
                self.state_key,
                mapping={"shard": number + 1, "moved": self.moved, "examined": examined, "shard_moved": 0},
            )
            self.report(examined, max(total, examined))
        self.report(examined, examined)
        return {"moved": self.moved, "examined": examined}

    def finish_inflight(self, number: int, pks: List[str], phase: Optional[str]) -> None:
        """Finish the batch a previous run left: copy again (phase ``copy``) or delete (phase ``delete``)."""
        old = self.old[number]
        if phase == "delete":
            for pk in pks:
                _delete(old, pk)
            self.done(pks, counted=False)
            return
        for pk in pks:  # copy: the old shard still holds every value; drop the partial copies
            try:
                values = _values(old(pk))
            except DoesNotExist:
                continue
            _clean(self.new[self.new_number(pk)], pk, values)
        self.move(number, pks, counted=False)

    def done(self, pks: List[Any], counted: bool = True) -> None:
        """Note the batch ``pks`` moved (``counted``: seen by this run's scan of the shard)."""
        self.moved += len(pks)
        self.shard_moved += len(pks)
        if counted:
            self._moved_seen += len(pks)
        # one HSET: the batch is forgotten and counted at once
        self.client.hset(
            self.state_key,
            mapping={"inflight": "", "phase": "", "moved": self.moved, "shard_moved": self.shard_moved},
        )

    def move(self, number: int, pks: List[str], counted: bool = True) -> None:
        """Move ``pks`` from the old shard ``number`` to their new shards (copy, check, delete)."""
        old = self.old[number]
        if self.reference is None:
            self.reference = self.fingerprint()
        self.client.hset(self.state_key, mapping={"inflight": json.dumps(pks), "phase": "copy"})
        records = []
        for pk in pks:
            try:
                instance = old(pk)
            except DoesNotExist:  # expired since the scan saw it
                continue
            records.append((pk, _values(instance), _deadline(old, pk)))
        for pk, values, deadline in records:
            _create(self.new[self.new_number(pk)], pk, values, deadline)
        for pk, values, deadline in records:  # nobody changed what was copied
            try:
                current = _values(old(pk))
            except DoesNotExist:
                if deadline is not None:  # expired meanwhile: its copy has the same deadline
                    continue
                current = None
            if current != values:
                raise WritesNotPaused(
                    "%s was written to during the reshard (the instance %r changed while it was "
                    "moved): stop every writer of the model (and the reaper), then run the same "
                    "command again to continue" % (_path(self.model), pk)
                )
        self.client.hset(self.state_key, "phase", "delete")
        for pk, _, _ in records:
            _delete(old, pk)
        self.done([pk for pk, _, _ in records], counted)
        self.check_unchanged("after a batch of the old shard %d" % number)


def _rewrite_claims(model: Any, classes: List[Any], target: int) -> int:
    """Replace the claims of the unique values of ``model`` by those of ``target`` shards; return how many.

    A claim's key depends on the count (``crc32(field:value) % shards``): once every instance is
    in its new shard, every claim key of the model is deleted (and every lease: writes are
    paused), then each unique value held by an instance of the new shards (``classes``) is
    claimed for it. Idempotent: a run stopped here does it again. With 1 shard, no claim (an
    unsharded model's unique index sees every instance).
    """
    from limpyd.integrity import claims

    names = _claims.claimed_fields(model)
    if not names:
        return 0
    client = model.database.connect()
    _, parser = claims.claim_pattern(model)
    for key in list(model.database.scan_keys(claims.claim_pattern(model)[0])):
        if parser.match(key):
            client.delete(key)
    if target == 1:
        return 0
    held = claims.held_values(classes, client, names, 500)
    for (name, value), pks in held.items():
        client.set(_claims.claim_keys(model, name, value, shards=target)[0], sorted(pks)[0])
    return len(held)


def _check_count(value: Any, what: str, model: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= sharding.MAX_SHARDS:
        raise ReshardError(
            "%s %r for %s: give an int from 1 to %d" % (what, value, _path(model), sharding.MAX_SHARDS)
        )
    return value


def _marker(source: int, target: int) -> str:
    return "%s%d to %d" % (_shard_count.RESHARDING, source, target)


def reshard(
    model: Any,
    shards: int,
    from_shards: Optional[int] = None,
    progress: Optional[Progress] = None,
    batch_size: int = 500,
) -> Dict[str, Any]:
    """Move every instance of ``model`` to its shard among ``shards``; return what was done.

    The current count is the stored one (``<model>:__shards__``), else ``from_shards``, else the
    count ``model`` declares when it is not ``shards`` (the class may declare the old or the new
    count). A reshard in progress (a run stopped) is continued. At the end ``__shards__`` holds
    ``shards``; the model must then declare ``shards = <shards>``. ``progress(phase, done, total)``
    is called after each batch. The result: ``model``, ``from``, ``to``, ``moved``, ``examined``,
    ``status`` (``done``, ``resumed`` or ``nothing to do``).
    """
    model = sharding.sharded_model(model)
    target = _check_count(shards, "shards", model)
    if from_shards is not None:
        _check_count(from_shards, "from_shards", model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ReshardError("batch_size %r for %s: give an int >= 1" % (batch_size, _path(model)))
    client = model.database.connect()
    state_key = make_key(model._name, STATE_PART)
    count_key = _shard_count.count_key(model)
    state = client.hgetall(state_key)
    result: Dict[str, Any] = {"model": _path(model), "to": target, "moved": 0, "examined": 0}
    if state:
        source = int(state["from"])
        if int(state["to"]) != target or from_shards not in (None, source):
            raise ReshardError(
                "a reshard of %s from %s to %s shards is in progress (%s): run it again with "
                "--shards %s (and no other --from) to finish it first"
                % (_path(model), state["from"], state["to"], state_key, state["to"])
            )
        status = "resumed"
        result["from"] = source
    else:
        raw = client.get(count_key)
        if raw is not None and not (raw.isdigit() and 1 <= int(raw) <= sharding.MAX_SHARDS):
            raise ReshardError(
                "%s holds %r, not a shard count, and no reshard state is stored (%s): set it to "
                "the count the data of %s is in" % (count_key, raw, state_key, _path(model))
            )
        stored = None if raw is None else int(raw)
        if stored is not None and from_shards is not None and from_shards != stored:
            raise ReshardError(
                "--from %d for %s, but its data is stored in %d shards (%s): drop --from"
                % (from_shards, _path(model), stored, count_key)
            )
        if stored is not None:
            source = stored
        elif from_shards is not None:
            source = from_shards
        elif model._limpyd_shards != target:
            source = model._limpyd_shards
        else:
            raise ReshardError(
                "no shard count is stored for %s (%s) and it declares shards = %d, the new count: "
                "give the count its data is in with --from" % (_path(model), count_key, target)
            )
        result["from"] = source
        if target > 1 and model._limpyd_shard_models is None:  # what a sharded model cannot have
            sharding._check_supported(model)
        if source == target:
            client.set(count_key, target)
            _shard_count.remember(model, target)
            result["status"] = "nothing to do"
            return result
        state = {"from": str(source), "to": str(target), "shard": "0", "moved": "0", "examined": "0"}
        client.hset(state_key, mapping=state)
        status = "done"
    client.set(count_key, _marker(source, target))
    _shard_count.remember(model, _marker(source, target))
    run = _Run(model, source, target, progress, batch_size)
    counts = run.run(state)
    counts["claims"] = _rewrite_claims(model, run.new, target)
    client.set(count_key, target)
    client.delete(state_key)
    _shard_count.remember(model, target)
    result.update(counts, status=status)
    return result
