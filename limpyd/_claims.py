"""Uniqueness across shards (docs/sharding.rst, "Uniqueness across shards"): the claims.

Each shard of a sharded model keeps its own unique index, which sees only that shard. A unique
value is therefore also claimed once for the whole model: the claim key
``<model>#<h>:<field>:<value>`` (``{<model>#<h>}:...`` on a cluster; ``h = crc32("<field>:<value>")
% shards``) holds the pk owning the value. A write takes the claims of its new values first, then
writes in the instance's shard as an unsharded model does, then releases the claims of the values
it replaced.

A claim being written is *pending*: its lease key ``<model>#<h>:<field>~lease:<value>`` (same
slot, ``~`` never appears in a field name) holds the writer's pk for ``LEASE_MS`` and is dropped
once the write is done. A claim naming another pk is taken over only when it is not pending and
that pk does not hold the value in its shard (a client died between the claim and its write, or
after a write replacing the value and before releasing the old claim): checked in the pk's shard,
then swapped by a compare-and-set script in the claim's slot.

The values of unique single-value fields (``StringField``, ``InstanceHashField``) and the members
of unique ``SetField``, ``ListField`` and ``SortedSetField`` are claimed; the pk is not (its shard
is chosen by it). So are the combinations of a unique multi-field index (``EqualIndexWith(...,
unique=True)`` over single-value fields): claimed under the name ``<field>+<other>...``, the
value being the combination as the index's error shows it (``code=x, kind=a``); a write of any
of its fields reads the others, claims the new combination and releases the old one. A member is claimed before a write adding it (``sadd``, ``lpush``, ``zadd``...)
and released after a write removing it (``srem``, ``lpop``, ``ltrim``...: the members are read
before and after, a member gone is released). Unsharded models never come here.
"""

from __future__ import annotations

import contextlib
import hashlib
import zlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import redis

from limpyd import _atomic, sharding
from limpyd._batch import is_batched
from limpyd._cluster import cluster_model_name, plain_model_name
from limpyd._recovery import is_unknown_outcome
from limpyd.exceptions import ImplementationError, UniquenessError
from limpyd.fields import ListField, SetField, SingleValueField, SortedSetField
from limpyd.utils import make_key, normalize

__all__ = ["LEASE_MS", "claim_keys", "claimed_fields", "holds"]

#: how long a claim stays pending (its writer's write between the claim and the lease's drop)
LEASE_MS = 30000

# KEYS: claim, lease; ARGV: pk, lease ms. {1}: taken, {2}: already ours, {0, holder, pending}: refused
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {1}
end
if holder == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {2}
end
return {0, holder, redis.call('EXISTS', KEYS[2])}
"""

# KEYS: claim, lease; ARGV: new pk, stale pk, lease ms. 1: taken over, 0: changed meanwhile
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return 1
"""

# KEYS: claim, lease; ARGV: pk, "1" to release the claim too (else only the lease)
_RELEASE = """
if ARGV[2] == '1' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 1
"""

# KEYS: claim, lease. {holder or false, 1 if pending else 0}: read only, the claim's state at once
_PEEK = """
return {redis.call('GET', KEYS[1]), redis.call('EXISTS', KEYS[2])}
"""

#: the writes of a unique field that give the new value as their first argument
_SETTERS = {"set", "getset", "hset"}
_SETTERS_IF_EMPTY = {"setnx", "hsetnx"}
_DELETERS = {"delete", "hdel"}


#: the multi-value fields whose members are claimed
_MULTI_FIELDS = (SetField, ListField, SortedSetField)

#: the writes of a unique multi-value field adding members: where the members are
#: (``args``: every positional argument; an int: that argument, or the keyword ``value``)
_MULTI_ADDERS: Dict[str, Any] = {
    "sadd": "args",
    "lpush": "args",
    "rpush": "args",
    "lpushx": "args",
    "rpushx": "args",
    "linsert": 2,
    "lset": 1,
    "zincrby": 1,
    "zadd": "mapping",
}
#: adders that may add nothing (a missing list, a missing pivot): their claims are checked after
_MULTI_CONDITIONAL = {"lpushx", "rpushx", "linsert"}
#: the writes of a unique multi-value field that may remove members (read before and after)
_MULTI_REMOVERS = {
    "delete",
    "srem",
    "spop",
    "lpop",
    "rpop",
    "lrem",
    "lset",
    "ltrim",
    "zrem",
    "zremrangebyrank",
    "zremrangebyscore",
    "zremrangebylex",
    "zpopmin",
    "zpopmax",
}


def claimed_fields(model: Any) -> Tuple[str, ...]:
    """Return the names of the fields of ``model`` (a sharded model or shard class) whose values
    are claimed, then the names of its unique combinations (:func:`combinations`)."""
    return tuple(
        name
        for name in model._fields[1:]
        if model.get_class_field(name).unique
        and isinstance(model.get_class_field(name), (SingleValueField,) + _MULTI_FIELDS)
    ) + tuple(combinations(model))


def combinations(model: Any) -> Dict[str, Any]:
    """Return ``{"<field>+<other>...": index}``: the unique multi-field indexes of ``model``."""
    found = {}
    for index in getattr(model, "_multi_fields_index_for_filtering", None) or ():
        if getattr(index, "unique", False):
            found["+".join(index._field_names)] = index
    return found


def claim_writes(model: Any) -> frozenset:
    """Return the names of the fields of ``model`` whose writes change a claim: the claimed
    fields and the fields of the unique combinations."""
    names = set(claimed_fields(model))
    for name in combinations(model):
        names.discard(name)
        names.update(name.split("+"))
    return frozenset(names)


def _combination_index(model: Any, name: str) -> Any:
    """Return the unique multi-field index of the combination ``name``, or None for a field."""
    if "+" not in name:
        return None
    return combinations(sharding.sharded_model(model))[name]


def combination_text(index: Any, values: Dict[str, Any]) -> Optional[str]:
    """Return the combination of ``values`` (field name -> value, as given or as stored) in the
    unique multi-field ``index``, as its error shows it; None while one of its fields has no value
    (the index holds nothing then)."""
    from limpyd.contrib.indexes import _field_parts

    combination = []
    for position, field in enumerate([index.field] + index._other_fields):
        parts = _field_parts(field, values.get(field.name))
        if not parts:
            return None
        if position == 0:
            combination.append(index._main_parts(parts[0]))
        else:
            combination.append(index._other_parts(field, parts[0]))
    return index._display(combination)


def is_multi(model: Any, name: str) -> bool:
    """Return whether the claimed field ``name`` of ``model`` holds several values (members)."""
    return "+" not in name and isinstance(model.get_class_field(name), _MULTI_FIELDS)


def read_command(instance: Any, name: str) -> Tuple[Any, ...]:
    """Return the command reading the values of the field ``name`` of ``instance`` (a reply: one
    value, or a list of members)."""
    field = instance.get_field(name)
    if isinstance(field, SetField):
        return ("SMEMBERS", field.key)
    if isinstance(field, ListField):
        return ("LRANGE", field.key, 0, -1)
    if isinstance(field, SortedSetField):
        return ("ZRANGE", field.key, 0, -1)
    if field.proxy_getter == "hget":
        return ("HGET", instance.key, name)
    return ("GET", field.key)


def members(model: Any, pk: str, name: str) -> List[str]:
    """Return the members of the multi-value field ``name`` of the instance ``pk`` (1 command, in its shard)."""
    instance = sharding.model_of(sharding.sharded_model(model), pk).lazy_connect(pk)
    reply = model.database.connection.execute_command(*read_command(instance, name))
    return [normalize(member) for member in reply or ()]


def text_of(value: Any) -> str:
    """Return ``value`` as Redis stores it (redis-py's encoding: ``repr`` of a float, ``str`` else)."""
    value = normalize(value)
    if isinstance(value, float):
        return repr(value)
    return value if isinstance(value, str) else str(value)


def claim_keys(model: Any, name: str, value: Any, shards: Optional[int] = None) -> Tuple[str, str]:
    """Return the claim key and the lease key of the value ``value`` of the field ``name`` of ``model``.

    ``shards``: the count the claim is made for (default: the one the model declares; a reshard
    writes the claims of the new count).
    """
    owner = sharding.sharded_model(model)
    text = text_of(value)
    count = owner._limpyd_shards if shards is None else shards
    number = zlib.crc32(("%s:%s" % (name, text)).encode("utf-8")) % count
    plain = "%s#%d" % (plain_model_name(owner), number)
    prefix = cluster_model_name(plain) if owner.database.is_cluster else plain
    return make_key(prefix, name, text), make_key(prefix, name + "~lease", text)


def _stored(model: Any, pk: str, name: str) -> Optional[str]:
    """Return the value of the field ``name`` of the instance ``pk`` as stored in its shard (1
    command; a combination: its fields read together, 1 round trip)."""
    shard = sharding.model_of(sharding.sharded_model(model), pk)
    index = _combination_index(model, name)
    if index is not None:
        return combination_text(index, _stored_values(shard.lazy_connect(pk), name.split("+")))
    # the key of the value computed here: no instance built (the refusal of a duplicate reads it)
    if shard.get_class_field(name).proxy_getter == "hget":
        command: Tuple[Any, ...] = ("HGET", make_key(shard._name, pk, "hash"), name)
    else:
        command = ("GET", make_key(shard._name, pk, name))
    return _read_values(model.database.connection, [command])[0]


def _stored_values(instance: Any, names: List[str]) -> Dict[str, Optional[str]]:
    """Return the stored values of the single-value fields ``names`` of ``instance`` (1 round trip,
    sent straight to the node of the instance's shard: ``limpyd._per_node``)."""
    commands = [read_command(instance, name) for name in names]
    return dict(zip(names, _read_values(instance.database.connection, commands)))


def _read_values(connection: Any, commands: List[Tuple[Any, ...]]) -> List[Optional[str]]:
    """Return the replies of the reads ``commands`` (each on the key after its name), normalized:
    one round trip to each node concerned (through the write-behind batch inside one)."""
    from limpyd._per_node import raise_first_error, send_per_node

    if is_batched(connection):  # after what the batch queued
        replies = [connection.execute_command(*command) for command in commands]
    else:
        replies = raise_first_error(send_per_node(connection, [(c[1], c) for c in commands]))
    return [normalize(reply) for reply in replies]


def holds(model: Any, pk: str, name: str, value: Any) -> bool:
    """Return whether the instance ``pk`` holds ``value`` in its field ``name`` (read in its shard):
    its value, or one of its members (``SISMEMBER``, ``LPOS``, ``ZSCORE``)."""
    if not is_multi(model, name):
        return _stored(model, pk, name) == text_of(value)
    instance = sharding.model_of(sharding.sharded_model(model), pk).lazy_connect(pk)
    field = instance.get_field(name)
    connection = model.database.connection
    if isinstance(field, SetField):
        return bool(connection.sismember(field.key, text_of(value)))
    if isinstance(field, ListField):
        return connection.execute_command("LPOS", field.key, text_of(value)) is not None
    return connection.zscore(field.key, text_of(value)) is not None


def _refusal(model: Any, name: str, value: Any, holder: str) -> UniquenessError:
    """Return the error of a value claimed by ``holder``: the message of an unsharded model's index."""
    owner = sharding.sharded_model(model)
    if "+" in name:
        where = "unique together fields [%s] on %s" % (", ".join(name.split("+")), owner.__name__)
    else:
        where = "unique field %s.%s" % (owner.__name__, name)
    return UniquenessError('Value "%s" already indexed for %s (for instance %s)' % (value, where, holder))


def _take(model: Any, pk: str, name: str, value: Any) -> bool:
    """Claim ``value`` of the field ``name`` for ``pk``; return whether the claim is new (else it was ours).

    ``UniquenessError`` when another pk holds it, or is writing it (a pending claim).
    """
    connection = model.database.connection
    claim, lease = claim_keys(model, name, value)
    while True:
        reply = connection.eval(_TAKE, 2, claim, lease, pk, LEASE_MS)
        if int(reply[0]):
            return int(reply[0]) == 1
        holder, pending = normalize(reply[1]), int(reply[2])
        if pending or holds(model, holder, name, value):
            raise _refusal(model, name, value, holder)
        if int(connection.eval(_TAKE_OVER, 2, claim, lease, pk, holder, LEASE_MS)):
            return True
        # the claim changed between the check and the swap: look again


def _release(model: Any, pk: str, name: str, value: Any, claim_too: bool = True) -> None:
    """Release the claim of ``value`` if it still names ``pk`` (``claim_too`` False: only its lease)."""
    claim, lease = claim_keys(model, name, value)
    model.database.connection.eval(_RELEASE, 2, claim, lease, pk, "1" if claim_too else "0")


def _eval_many(
    model: Any,
    script: str,
    calls: List[Tuple[str, str, Tuple[Any, ...]]],
    ahead: Tuple[Tuple[str, Tuple[Any, ...]], ...] = (),
) -> List[Any]:
    """Run ``script`` once per call (``(claim key, lease key, arguments)``), every call sent
    together: one round trip per node (``EVALSHA``; a server that lost it runs those calls by
    ``EVAL``, which loads it). Error replies in their places.

    ``ahead``: ``(key, command)`` sent in the same round trip, before the calls; their replies
    come first.
    """
    from limpyd._per_node import send_per_node

    if not calls and not ahead:
        return []
    connection = model.database.connection
    sha = _SHAS.get(script)
    if sha is None:
        sha = _SHAS[script] = hashlib.sha1(script.encode("utf-8")).hexdigest()
    replies = send_per_node(
        connection,
        list(ahead)
        + [(claim, ("EVALSHA", sha, 2, claim, lease, *arguments)) for claim, lease, arguments in calls],
    )
    for position, reply in enumerate(replies[len(ahead) :], len(ahead)):
        if isinstance(reply, redis.exceptions.NoScriptError):
            claim, lease, arguments = calls[position - len(ahead)]
            try:
                replies[position] = connection.eval(script, 2, claim, lease, *arguments)
            except redis.ResponseError as error:
                replies[position] = error
    return replies


def allocate_pk(model: Any, counter: str, kwargs: Dict[str, Any]) -> Any:
    """Return the next pk of the sharded ``model`` (``INCRBY`` of its counter ``counter``) for a
    creation from ``kwargs``, reading the claims of its unique values in the same round trip.

    A value already held (its claim pending, or naming a pk holding it) refuses the creation
    here, with the error the creation would raise, before anything is written: a refused
    duplicate costs this round trip and one read of the holder, not the claim scripts too. A
    free or stale claim refuses nothing here: the creation takes it (:func:`create`).
    """
    claims = row_claims(model, kwargs)
    claims = [claim for claim in claims if not is_multi(model, claim[0])] + [
        claim for claim in claims if is_multi(model, claim[0])
    ]  # the order the creation takes them in
    replies = _eval_many(
        model,
        _PEEK,
        [(*claim_keys(model, name, value), ()) for name, value in claims],
        ahead=((counter, ("INCRBY", counter, 1)),),
    )
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    for (name, value), (holder, pending) in zip(claims, replies[1:]):
        if holder is None:
            continue
        holder = normalize(holder)
        if int(pending) or holds(model, holder, name, value):
            raise _refusal(model, name, value, holder)
    return replies[0]


#: the SHA1 of the claim scripts (``EVALSHA``)
_SHAS: Dict[str, str] = {}


def take_many(model: Any, claims: List[Tuple[str, str, Any]]) -> List[Any]:
    """Claim each ``(pk, field, value)`` of ``claims`` for its pk, every claim sent together; return,
    in order, whether each claim is new (``True``), was the pk's already (``False``), or the
    ``UniquenessError`` refusing it (another pk holds the value, or is writing it). A claim held
    by a pk that does not hold the value is taken over as :func:`_take` does (one at a time)."""
    replies = _eval_many(
        model,
        _TAKE,
        [(*claim_keys(model, name, value), (pk, LEASE_MS)) for pk, name, value in claims],
    )
    results: List[Any] = []
    for (pk, name, value), reply in zip(claims, replies):
        if isinstance(reply, Exception):
            raise reply
        if int(reply[0]):
            results.append(int(reply[0]) == 1)
            continue
        try:
            results.append(_take(model, pk, name, value))
        except UniquenessError as error:
            results.append(error)
    return results


def release_many(model: Any, claims: List[Tuple[str, str, Any, bool]]) -> None:
    """Release each ``(pk, field, value, claim too)`` of ``claims`` as :func:`_release` does, every
    release sent together."""
    replies = _eval_many(
        model,
        _RELEASE,
        [
            (*claim_keys(model, name, value), (pk, "1" if claim_too else "0"))
            for pk, name, value, claim_too in claims
        ],
    )
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def row_claims(model: Any, row: Dict[str, Any]) -> List[Tuple[str, str]]:
    """Return the ``(field, value)`` a creation from ``row`` claims (values, members), as :func:`create`."""
    found = []
    for name in model._limpyd_claims:
        index = _combination_index(model, name)
        if index is not None:
            text = combination_text(index, row)
            if text is not None:
                found.append((name, text))
            continue
        value = row.get(name)
        if value is None:
            continue
        if not is_multi(model, name):
            found.append((name, text_of(value)))
        elif isinstance(value, (list, tuple, set, frozenset, dict)):
            found.extend((name, text_of(member)) for member in value)
    return list(dict.fromkeys(found))


def _check_no_pipeline(model: Any) -> None:
    """Refuse a claimed write inside a pipeline: the claim's reply is needed before the write."""
    connection = model.database.connection
    if _atomic.in_pipeline(model) or getattr(connection, "_limpyd_cluster_pipeline", False):
        raise sharding.unsupported(
            model, "writing a unique value inside a pipeline (its claim is read first)"
        )


def _off(instance: Any) -> bool:
    return bool(instance.__dict__.get("_limpyd_claims_off"))


@contextlib.contextmanager
def _suspended(instance: Any) -> Iterator[None]:
    """Let the writes made inside (a creation's field writes, a deletion's) take no claim of their own."""
    previous = instance.__dict__.get("_limpyd_claims_off")
    instance.__dict__["_limpyd_claims_off"] = True
    try:
        yield
    finally:
        if previous is None:
            instance.__dict__.pop("_limpyd_claims_off", None)


def _current(instance: Any, names: List[str]) -> Dict[str, Optional[str]]:
    """Return the stored values of the single-value fields ``names`` of the existing ``instance`` (1 command each)."""
    if not instance._pk:
        return {name: None for name in names}
    return {name: _stored(type(instance), instance._pk, name) for name in names}


def _current_members(instance: Any, names: List[str]) -> Dict[str, List[str]]:
    """Return the members of the multi-value fields ``names`` of the existing ``instance`` (1 command each)."""
    if not instance._pk:
        return {name: [] for name in names}
    return {name: members(type(instance), instance._pk, name) for name in names}


def write(
    instance: Any,
    pk: str,
    values: Dict[str, Any],
    call: Callable[[], Any],
    old: Optional[Dict[str, Optional[str]]] = None,
    written: Callable[[Any], bool] = lambda result: True,
    members_added: Optional[List[Tuple[str, str]]] = None,
) -> Any:
    """Run ``call``, the write of ``values`` (claimed field -> new value) for the instance ``pk``.

    Claims the new values first (``UniquenessError`` if one is held by another pk), runs the write
    in the shard, then releases the claims of the replaced values (``old``, read before). A write
    refused or failed (or not done: ``written(result)`` false) releases the claims it took; after
    a lost connection (the write may have happened) they are kept, naming this pk, harmless.
    ``members_added``: ``(field, member)`` of multi-value fields claimed too (a creation's).
    """
    model = type(instance)
    _check_no_pipeline(model)
    values = {name: value for name, value in values.items() if value is not None}
    if old is None:
        old = _current(instance, list(values))
    taken: List[Tuple[str, Any, bool]] = []
    try:
        for name, value in values.items():
            if old.get(name) is not None and old[name] == text_of(value):
                continue  # the instance holds it already
            taken.append((name, value, _take(model, pk, name, value)))
        for name, member in members_added or ():
            taken.append((name, member, _take(model, pk, name, member)))
        result = call()
    except BaseException as error:
        keep = is_unknown_outcome(error)
        for name, value, new in taken:
            with contextlib.suppress(Exception):
                _release(model, pk, name, value, claim_too=new and not keep)
        raise
    done = written(result)
    for name, value, new in taken:
        _release(model, pk, name, value, claim_too=new and not done)
    if done:
        for name in values:
            if old.get(name) is not None and old[name] != text_of(values[name]):
                _release(model, pk, name, old[name])
    return result


def release_after(instance: Any, names: List[str], call: Callable[[], Any]) -> Any:
    """Run ``call``, which removes the fields ``names`` of ``instance``, then release their claims."""
    model = type(instance)
    _check_no_pipeline(model)
    pk = instance._pk
    multi = [name for name in names if is_multi(model, name)]
    old = _current(instance, [name for name in names if name not in multi])
    old_members = _current_members(instance, multi)
    result = call()
    for name, value in old.items():
        if value is not None:
            _release(model, pk, name, value)
    for name, values in old_members.items():
        for value in dict.fromkeys(values):
            _release(model, pk, name, value)
    return result


def _added_members(field: Any, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> List[Any]:
    """Return the members the write ``name`` of the multi-value ``field`` adds (see :data:`_MULTI_ADDERS`)."""
    where = _MULTI_ADDERS.get(name)
    if where is None:
        return []
    if where == "args":
        return list(args)
    if where == "mapping":  # zadd: a mapping or member=score keywords, checked as the write checks it
        return list((field.coerce_zadd_args(*args, **kwargs)[1].get("mapping") or {}).keys())
    if len(args) > where:
        return [args[where]]
    return [kwargs["value"]] if "value" in kwargs else []


def multi_command(
    field: Any, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any], call: Callable[[], Any]
) -> Any:
    """Run the modifier ``name`` of the claimed multi-value ``field`` (``call`` runs it).

    The members it adds are claimed first (``UniquenessError`` when another pk holds one; the
    claims taken are released if the write is refused or fails); the members of a write that may
    remove some are read before and after it, and those gone are released. A write that may add
    nothing (``lpushx``, ``linsert``) has its new claims checked after it.
    """
    instance = field._instance
    model = type(instance)
    _check_no_pipeline(model)
    pk = instance.pk.get()
    added = list(dict.fromkeys(text_of(member) for member in _added_members(field, name, args, kwargs)))
    before = set(members(model, pk, field.name)) if name in _MULTI_REMOVERS else None
    taken: List[Tuple[str, bool]] = []
    try:
        for member in added:
            taken.append((member, _take(model, pk, field.name, member)))
        result = call()
    except BaseException as error:
        keep = is_unknown_outcome(error)
        for member, new in taken:
            with contextlib.suppress(Exception):
                _release(model, pk, field.name, member, claim_too=new and not keep)
        raise
    for member, new in taken:
        unused = new and name in _MULTI_CONDITIONAL and not holds(model, pk, field.name, member)
        _release(model, pk, field.name, member, claim_too=unused)
    if before is not None:
        after = set(members(model, pk, field.name))
        for member in sorted(before - after):
            _release(model, pk, field.name, member)
    return result


# ---------------------------------------------------------------------- the hooks


def field_command(
    field: Any, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any], call: Callable[[], Any]
) -> Any:
    """Run the modifier ``name`` of the claimed field ``field`` (``call`` runs it) with its claims."""
    instance = field._instance
    if _off(instance):
        return call()
    if isinstance(field, _MULTI_FIELDS):
        return multi_command(field, name, args, kwargs, call)
    value = args[0] if args else kwargs.get("value")
    if name in _SETTERS or name in _SETTERS_IF_EMPTY:
        written = bool if name in _SETTERS_IF_EMPTY else (lambda result: True)
        return _write_fields(instance, {field.name: value}, call, written)
    if name in _DELETERS:
        return release_after(instance, _affected(type(instance), [field.name]), call)
    what = (
        "unique field"
        if field.name in type(instance)._limpyd_claims
        else "field of a unique multi-field index"
    )
    raise ImplementationError(
        "%s() on the %s %s.%s of a sharded model (shards = %d): Redis computes the new "
        "value, so it cannot be claimed across the shards first; read the value and set() the new "
        "one instead (%s)."
        % (name, what, type(instance).__name__, field.name, type(instance)._limpyd_shards, sharding._DOC)
    )


def _affected(model: Any, names: List[str]) -> List[str]:
    """Return the claimed names a write of the fields ``names`` changes: those of them that are
    claimed, and the unique combinations holding one of them."""
    claimed = model._limpyd_claims
    found = [name for name in names if name in claimed]
    found += [combo for combo in claimed if "+" in combo and set(combo.split("+")) & set(names)]
    return found


def _write_fields(
    instance: Any, changes: Dict[str, Any], call: Callable[[], Any], written: Callable[[Any], bool]
) -> Any:
    """Run ``call``, the write of ``changes`` (field -> new value) of ``instance``, with the claims
    of the claimed fields among them and of the unique combinations they change (the other
    fields of a combination read first, with the old values: 1 round trip)."""
    model = type(instance)
    pk = instance.pk.get()
    affected = _affected(model, list(changes))
    values: Dict[str, Any] = {name: changes[name] for name in affected if "+" not in name}
    old: Dict[str, Optional[str]] = {}
    combos = [name for name in affected if "+" in name]
    if combos:
        fields_read = list(dict.fromkeys(part for combo in combos for part in combo.split("+")))
        fields_read += [name for name in values if name not in fields_read]
        current = _stored_values(instance, fields_read) if instance._pk else {}
        old.update((name, current.get(name)) for name in values)
        updated = dict(current, **{name: value for name, value in changes.items() if value is not None})
        for combo in combos:
            index = _combination_index(model, combo)
            old[combo] = combination_text(index, current)
            new = combination_text(index, updated)
            if new is not None:
                values[combo] = new
    elif values:
        old = _current(instance, list(values))
    if not values and not any(text is not None for text in old.values()):
        return call()
    result = write(instance, pk, values, call, old=old, written=written)
    if written(result):  # a combination gone (a field without value): released
        for combo in combos:
            if combo not in values and old.get(combo) is not None:
                _release(model, pk, combo, old[combo])
    return result


def hash_command(
    instance: Any, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any], call: Callable[[], Any]
) -> Any:
    """Run ``hmset``/``hdel`` of ``instance`` (``call`` runs it) with the claims of its unique fields."""
    hash_fields = instance._instancehash_fields  # what else is named is not a field written here
    claimed = [name for name in type(instance)._limpyd_claim_writes if name in hash_fields]
    if _off(instance):
        return call()
    if name == "hmset":
        changes = {field: value for field, value in kwargs.items() if field in claimed}
        if not changes:
            return call()
        return _write_fields(instance, changes, call, lambda result: True)
    names = _affected(type(instance), [field for field in args if field in claimed])
    return release_after(instance, names, call) if names else call()


def create(instance: Any, kwargs: Dict[str, Any], call: Callable[[], Any]) -> Any:
    """Run the creation ``call`` of ``instance`` from ``kwargs`` with the claims of its unique values."""
    model = type(instance)
    claims = row_claims(model, kwargs)
    values = {name: value for name, value in claims if not is_multi(model, name)}
    added = [(name, value) for name, value in claims if is_multi(model, name)]
    if not (values or added) or _off(instance):  # nothing claimed, or a move keeping the pk's claims
        return call()
    pk_field = model.get_class_field("pk")
    if pk_field._auto_increment:
        pk = instance.__dict__.get("_limpyd_shard_pk")
    else:
        given = [kwargs[key] for key in dict.fromkeys(("pk", pk_field.name)) if kwargs.get(key) is not None]
        pk = pk_field.normalize(given[0]) if given else None
    if pk is None:  # refused by the creation itself (no pk to claim for)
        return call()

    def created() -> Any:
        with _suspended(instance):
            return call()

    return write(instance, pk, values, created, old={}, members_added=added)


def delete(instance: Any, call: Callable[[], Any]) -> Any:
    """Run the deletion ``call`` of ``instance``, then release the claims of its unique values."""
    if _off(instance):
        return call()
    names = list(type(instance)._limpyd_claims)

    def deleted() -> Any:
        with _suspended(instance):
            return call()

    return release_after(instance, names, deleted)
