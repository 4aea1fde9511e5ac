"""Atomic writes: each creation, indexable-field modifier and deletion is one server-side script.

``atomic_writes = True`` on a model (or an abstract base, or a database) sends every such
operation as one call of the script of :mod:`limpyd._atomic_lua`: one round trip, no client lock,
uniqueness checked inside it, nothing written when it refuses. The values, the keys and the index
entries are those the default write path writes (see docs/atomic-writes.rst).

This module builds the model's schema (what the script needs to know of its fields and indexes),
turns a redis-py command into its arguments without sending it, and reads the script's replies.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import redis
from redis.client import Pipeline

from limpyd._atomic_lua import ATOMIC_LUA
from limpyd.exceptions import DoesNotExist, ImplementationError, UniquenessError
from limpyd.indexes import EqualIndex, NumberRangeIndex, TextRangeIndex
from limpyd.utils import make_key

__all__ = ["SCRIPT", "atomic_enabled", "command_args", "run", "schema_of", "check_model"]

#: the script, registered once per client by ``database.call_script`` (EVALSHA, NOSCRIPT reloads)
SCRIPT: Dict[str, Any] = {"lua": ATOMIC_LUA}

#: index classes the script maintains, and the methods a subclass must not override for that
_SERVER_SIDE_INDEXES = ((EqualIndex, "eq"), (TextRangeIndex, "text"), (NumberRangeIndex, "num"))
_INDEX_METHODS = ("get_storage_key", "normalize_value", "prepare_data_to_store", "store", "unstore", "add",
                  "remove", "_key_parts", "check_uniqueness", "transform_value")


def atomic_enabled(model: Any) -> bool:
    """Return whether ``model`` writes atomically (its own setting, else its database's)."""
    setting = getattr(model, "atomic_writes", None)
    if setting is None:
        setting = getattr(model.database, "atomic_writes", False)
    return bool(setting)


def _field_kind(field: Any) -> Optional[str]:
    from limpyd import fields

    for klass, kind in ((fields.InstanceHashField, "ih"), (fields.StringField, "str"), (fields.SetField, "set"),
                        (fields.ListField, "list"), (fields.SortedSetField, "zset"), (fields.HashField, "hash")):
        if isinstance(field, klass):
            return kind
    return None


def _index_descriptor(model: Any, field: Any, index: Any) -> Dict[str, Any]:
    """Return what the script needs of ``index``, or raise ``ImplementationError`` naming the fix."""
    for klass, kind in _SERVER_SIDE_INDEXES:
        if isinstance(index, klass) and all(
            getattr(type(index), name, None) is getattr(klass, name, None) for name in _INDEX_METHODS
        ):
            if index.transform is None and not (kind == "num" and index.raise_if_not_float):
                tail = "".join(":%s" % part for part in (index.prefix, index.key) if part)
                descriptor = {"y": kind, "h": make_key(model._name, field.name), "t": tail}
                if kind == "text":
                    descriptor["sep"] = index.separator
                return descriptor
    raise ImplementationError(
        "%s.%s: its index %s has no server-side form, so the model cannot use atomic_writes (the "
        "script maintains EqualIndex, TextRangeIndex and NumberRangeIndex, also configured with a "
        "prefix or key, without transform). Set atomic_writes = False on %s, or index the field "
        "with one of those." % (model.__name__, field.name, type(index).__name__, model.__name__)
    )


def schema_of(model: Any) -> Dict[str, Any]:
    """Return (and cache on the model) the schema the script works from."""
    cached = model.__dict__.get("_limpyd_atomic_schema")
    if cached is not None and cached[0] == model._name:
        return cached[1]
    names: List[str] = []
    described: Dict[str, Any] = {}
    for name in model._fields[1:]:
        field = model.get_field(name)
        kind = _field_kind(field)
        if kind is None:
            raise ImplementationError(
                "%s.%s (%s) is not a field type atomic_writes knows: set atomic_writes = False on %s."
                % (model.__name__, name, type(field).__name__, model.__name__)
            )
        indexes = field._indexes if field.indexable else []
        entry: Dict[str, Any] = {"k": kind, "ix": [_index_descriptor(model, field, index) for index in indexes]}
        if field.unique:
            entry["u"] = indexes.index(field.get_unique_index()) + 1
        names.append(name)
        described[name] = entry
    schema = {"m": model._name, "o": names, "f": described}
    if getattr(model, "_limpyd_expiring", False):
        schema["x"] = True
    model._limpyd_atomic_schema = (model._name, schema)
    return schema


def check_model(model: Any) -> None:
    """Raise ``ImplementationError`` now if ``model`` declares atomic writes it cannot have."""
    if not model.abstract and atomic_enabled(model):
        schema_of(model)


class _Recorder(redis.Redis):
    """A client that returns the arguments of a command instead of sending it."""

    def __init__(self) -> None:  # no connection: nothing is ever sent
        pass

    def execute_command(self, *args: Any, **options: Any) -> Any:
        return args, options


_RECORDER = _Recorder()


def command_args(name: str, *args: Any, **kwargs: Any) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """Return the Redis command (and its reply options) redis-py's method ``name`` would send."""
    return getattr(_RECORDER, name)(*args, **kwargs)


def parse_reply(client: Any, command: str, reply: Any, options: Dict[str, Any]) -> Any:
    """Return ``reply`` of ``command`` run by the script as redis-py would have returned it."""
    options = {key: value for key, value in options.items() if key != "keys"}
    callback = getattr(client, "response_callbacks", {}).get(command)
    return callback(reply, **options) if callback is not None else reply


def modify(field: Any, pk: str, names: List[str], name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any],
           check: bool) -> Any:
    """Run the redis-py command ``name(*args, **kwargs)`` on fields ``names`` of ``pk`` in one script call."""
    model = field._model
    command, options = command_args(name, *args, **kwargs)
    request: Dict[str, Any] = {"op": "modify", "pk": pk, "names": names,
                               "cmd": [str(command[0]).lower()] + encode_all(model.database, command[1:])}
    if check:
        request["check"] = True
    reply = run(model, request)
    return parse_reply(model.database.connection, str(command[0]).upper(), reply[1] if len(reply) > 1 else None,
                       options)


def _encode(encoder: Any, value: Any) -> str:
    """Return ``value`` as Redis stores it (redis-py's encoding), as text."""
    encoded = encoder.encode(value)
    return encoded.decode("utf-8") if isinstance(encoded, bytes) else str(encoded)


def encode_all(database: Any, values: Any) -> List[str]:
    """Return the ``values`` as Redis stores them."""
    encoder = database.connection.get_encoder()
    return [_encode(encoder, value) for value in values]


def _scored(field: Any) -> Any:
    """Return the NumberRangeIndex of ``field`` whose scores the script needs, if any."""
    for index in field._indexes if field.indexable else ():
        if isinstance(index, NumberRangeIndex):
            return index
    return None


def creation_fields(instance: Any, values: Dict[str, Any]) -> List[List[Any]]:
    """Return ``[[name, values as stored, scores or absent], ...]`` of a new instance, in model order.

    ``values`` are the given ones (already checked); the defaults of the other fields are added,
    as the default write path does. ``None`` and empty containers write nothing.
    """
    model = type(instance)
    database = model.database
    encoder = database.connection.get_encoder()
    result: List[List[Any]] = []
    for name in model._fields[1:]:
        field = model.get_field(name)
        if name in values:
            value = values[name]
        elif hasattr(field, "default"):
            value = field.default() if callable(field.default) else field.default
        else:
            continue
        if value is None or (isinstance(value, (list, tuple, set, dict)) and not value):
            continue
        kind = _field_kind(field)
        convert = field.from_python  # related fields: instances become their pks
        if kind == "zset":
            pieces = [piece for member, score in value.items() for piece in (convert(member), score)]
            index_values = pieces[::2]
        elif kind == "hash":
            pieces = [piece for pair in value.items() for piece in pair]
            index_values = pieces[1::2]
        elif kind in ("set", "list"):
            pieces = [convert(one) for one in (value if isinstance(value, (list, tuple, set)) else [value])]
            index_values = pieces
        else:
            pieces = index_values = [convert(value)]
        entry: List[Any] = [name, [_encode(encoder, piece) for piece in pieces]]
        scored = _scored(field)
        if scored is not None:
            entry.append([_encode(encoder, scored.normalize_value(one)) for one in index_values])
        result.append(entry)
    return result


def run(model: Any, request: Dict[str, Any]) -> List[Any]:
    """Send ``request`` (an operation of the script) for ``model`` and return the reply list.

    Refusals become the errors the default write path raises: ``UniquenessError`` for a taken
    unique value or pk, ``DoesNotExist`` for a pk that is not in the collection.
    """
    reply = run_raw(model, request)
    status = reply[0] if reply else None
    if status == "ok":
        return reply
    raise refusal(model, status, *(list(reply[1:]) + [None] * 3)[:3], pk=request.get("pk"))


def run_raw(model: Any, request: Dict[str, Any]) -> List[Any]:
    """Send ``request`` for ``model`` and return the script's reply as it is."""
    request["s"] = schema_of(model)
    return model.database.call_script(SCRIPT, keys=[make_key(model._name, "collection")],
                                      args=[json.dumps(request, separators=(",", ":"))])


def refusal(model: Any, status: Any, first: Any = None, second: Any = None, third: Any = None,
            pk: Any = None) -> Exception:
    """Return the error the default write path raises for the script's refusal ``status``."""
    if status == "unique":
        return UniquenessError(
            'Value "%s" already indexed for unique field %s.%s (for instance %s)'
            % (second, model.__name__, first, third)
        )
    if status == "pkexists":
        return UniquenessError("PKField %s already exists for model %s)" % (first, model))
    if status == "missing":
        return DoesNotExist("No %s found with pk %s" % (model.__name__, pk))
    return ImplementationError("unexpected reply of the atomic-writes script: %r" % ([status, first, second, third],))


def in_pipeline(model: Any) -> bool:
    """Return whether the model's commands go to a user pipeline (atomic writes do not apply there)."""
    return isinstance(model.database.connection, Pipeline)
