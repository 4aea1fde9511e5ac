"""Atomic writes: each creation, indexable-field modifier and deletion is one server-side script.

``atomic_writes = True`` on a model (or an abstract base, or a database) sends every such
operation as one call of the script of :mod:`limpyd._atomic_lua`: one round trip, no client lock,
uniqueness checked inside it, nothing written when it refuses. The values, the keys and the index
entries are those the default write path writes (see docs/atomic-writes.rst).

This module builds the model's schema (what the script needs to know of its fields and indexes),
turns a redis-py command into its arguments without sending it, and reads the script's replies.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import sys
from typing import Any, Dict, List, Optional, Tuple

import redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

from limpyd._atomic_lua import ATOMIC_LUA, EVAL_ENTRY, FUNCTION_ENTRY
from limpyd._pool import get_pool_connection, send_on_pool
from limpyd.exceptions import DoesNotExist, ImplementationError, UniquenessError
from limpyd.indexes import EqualIndex, NumberRangeIndex, TextRangeIndex
from limpyd.utils import make_key

__all__ = ["atomic_enabled", "lua_literal", "script_of", "command_args", "run", "schema_of", "check_model"]


#: index classes the script maintains, and the methods a subclass must not override for that
_SERVER_SIDE_INDEXES = ((EqualIndex, "eq"), (TextRangeIndex, "text"), (NumberRangeIndex, "num"))
_INDEX_METHODS = (
    "get_storage_key",
    "normalize_value",
    "prepare_data_to_store",
    "store",
    "unstore",
    "add",
    "remove",
    "_key_parts",
    "check_uniqueness",
    "transform_value",
)
#: the methods of a multi-index the script reproduces
_MULTI_METHODS = ("add", "remove", "prepare_args", "transform_value")
#: the methods of EqualIndexWith / ScoredEqualIndex the script reproduces
_COMPOUND_METHODS = ("add", "remove", "store", "unstore", "normalize_value", "_key_parts", "get_storage_key")


def atomic_enabled(model: Any) -> bool:
    """Return whether ``model`` writes atomically (its own setting, else its database's)."""
    setting = getattr(model, "atomic_writes", None)
    if setting is None:
        setting = getattr(model.database, "atomic_writes", False)
    return bool(setting)


def _field_kind(field: Any) -> Optional[str]:
    from limpyd import fields

    for klass, kind in (
        (fields.InstanceHashField, "ih"),
        (fields.StringField, "str"),
        (fields.SetField, "set"),
        (fields.ListField, "list"),
        (fields.SortedSetField, "zset"),
        (fields.HashField, "hash"),
    ):
        if isinstance(field, klass):
            return kind
    return None


def _slice_of(transform: Any) -> Optional[List[int]]:
    """Return ``[start, end]`` (end -1: to the end) of a slice transform the script can apply, else None."""
    start, end = getattr(transform, "start", None), getattr(transform, "end", 0)
    if type(transform).__name__ != "SliceTransform" or not isinstance(start, int) or start < 0:
        return None
    if end is None:
        return [start, -1]
    return [start, end] if isinstance(end, int) and end >= 0 else None


def _refuse(model: Any, field: Any, index: Any) -> ImplementationError:
    return ImplementationError(
        "%s.%s: its index %s has no server-side form, so the model cannot use atomic_writes nor "
        "expiring instances (their script maintains EqualIndex, TextRangeIndex and NumberRangeIndex, "
        "also configured with a prefix or key, the date and time indexes of limpyd.contrib.indexes, and "
        "related fields; not other transforms nor other index classes). Set atomic_writes = False (and "
        "no expiring/default_ttl) on %s, or index the field with one of those."
        % (model.__name__, field.name, type(index).__name__, model.__name__)
    )


def _compound(model: Any, field: Any, index: Any, contrib: Any) -> Optional[Dict[str, Any]]:
    """Return the description of an index whose entries depend on a second field, if ``index`` is one.

    ``EqualIndexWith`` (a set per combination of the values of its fields) and ``ScoredEqualIndex``
    (a sorted set per value, scored by another field): the script recomputes their entries from
    every field involved, before and after each write touching one of them.
    """
    with_class = getattr(contrib, "EqualIndexWith", None)
    scored_class = getattr(contrib, "ScoredEqualIndex", None)
    if with_class is not None and isinstance(index, with_class):
        if index.transform is not None or any(
            getattr(type(index), name) is not getattr(with_class, name) for name in _COMPOUND_METHODS
        ):
            raise _refuse(model, field, index)
        head = make_key(model._name, field.name, *[part for part in (index.prefix, index.key) if part])
        return {
            "y": "with",
            "h": head,
            "fields": [field.name] + [other.name for other in index._other_fields],
            "u": bool(index.unique),
        }
    if scored_class is not None and isinstance(index, scored_class):
        if index.transform is not None or any(
            getattr(type(index), name) is not getattr(scored_class, name) for name in _COMPOUND_METHODS
        ):
            raise _refuse(model, field, index)
        tail = "".join(":%s" % part for part in (index.prefix, index.key) if part)
        return {
            "y": "scored",
            "h": make_key(model._name, field.name),
            "t": tail,
            "fields": [field.name, index._score_field.name],
            "u": bool(field.unique),
        }
    return None


def _index_descriptors(
    model: Any, field: Any, index: Any, slices: Tuple[List[int], ...] = (), extras: Tuple[str, ...] = ()
) -> List[Dict[str, Any]]:
    """Return what the script needs of ``index`` (one entry per real index), or raise naming the fix.

    A multi-index (``limpyd.contrib.indexes.MultiIndexes``: the date and time indexes) gives one
    entry per sub-index, with the multi-index's key as an extra key part and its transform
    applied first; transforms must be slices (``SliceTransform``).
    """
    contrib = sys.modules.get("limpyd.contrib.indexes")
    related = getattr(contrib, "_BaseRelatedIndex", None)
    if related is not None and isinstance(index, related):
        return []  # forwards to a compound index, described once with it (see _compound)
    compound = _compound(model, field, index, contrib)
    if compound is not None:
        return [compound]
    multi = getattr(contrib, "MultiIndexes", None)
    if multi is not None and isinstance(index, multi):
        if any(getattr(type(index), name) is not getattr(multi, name) for name in _MULTI_METHODS):
            raise _refuse(model, field, index)
        if index.transform is not None:
            piece = _slice_of(index.transform)
            if piece is None:
                raise _refuse(model, field, index)
            slices = slices + (piece,)
        if index.key:
            extras = extras + (index.key,)
        return [
            entry for sub in index._indexes for entry in _index_descriptors(model, field, sub, slices, extras)
        ]
    for klass, kind in _SERVER_SIDE_INDEXES:
        if isinstance(index, klass) and all(
            getattr(type(index), name, None) is getattr(klass, name, None) for name in _INDEX_METHODS
        ):
            if kind == "num" and index.raise_if_not_float:
                break
            own = slices
            if index.transform is not None:
                piece = _slice_of(index.transform)
                if piece is None:
                    break
                own = slices + (piece,)
            tail = "".join(":%s" % part for part in (index.prefix, index.key) if part)
            descriptor: Dict[str, Any] = {"y": kind, "h": make_key(model._name, field.name), "t": tail}
            if kind == "text":
                descriptor["sep"] = index.separator
            if extras:
                descriptor["x"] = list(extras)
            if own:
                descriptor["tf"] = [list(piece) for piece in own]
            return [descriptor]
    raise _refuse(model, field, index)


def schema_of(model: Any) -> Dict[str, Any]:
    """Return (and cache on the model) the schema the script works from."""
    cached = model.__dict__.get("_limpyd_atomic_schema")
    if cached is not None and cached[0] == model._name:
        return cached[1]
    names: List[str] = []
    described: Dict[str, Any] = {}
    compounds: List[Dict[str, Any]] = []
    for name in model._fields[1:]:
        field = model.get_field(name)
        kind = _field_kind(field)
        if kind is None:
            raise ImplementationError(
                "%s.%s (%s) is not a field type atomic_writes knows: set atomic_writes = False on %s."
                % (model.__name__, name, type(field).__name__, model.__name__)
            )
        indexes = field._indexes if field.indexable else []
        descriptors: List[Dict[str, Any]] = []
        unique_position = None
        for index in indexes:
            of_index = _index_descriptors(model, field, index)
            own = [one for one in of_index if one["y"] not in ("with", "scored")]
            compounds.extend(one for one in of_index if one["y"] in ("with", "scored"))
            if field.unique and index is field.get_unique_index() and own:
                if index.transform is not None or len(own) != 1:
                    raise _refuse(model, field, index)  # uniqueness on transformed values: not server-side
                unique_position = len(descriptors) + 1
            descriptors.extend(own)
        entry: Dict[str, Any] = {"k": kind, "ix": descriptors}
        if unique_position is not None:
            entry["u"] = unique_position
        names.append(name)
        described[name] = entry
    schema = {"m": model._name, "o": names, "f": described, "pk": model._fields[0]}
    if compounds:
        schema["c"] = compounds
    if getattr(model, "_limpyd_expiring", False):
        schema["x"] = True
    # the model's own script (``database.call_script`` registers it once: EVALSHA, NOSCRIPT reloads)
    code = ATOMIC_LUA.replace("__SCHEMA__", lua_literal(schema), 1)
    name = "limpyd_" + hashlib.sha1(code.encode("utf-8")).hexdigest()[:20]
    script = {
        "lua": code.replace("__ENTRY__", EVAL_ENTRY, 1),
        "function": name,
        "library": "#!lua name=%s\n%s" % (name, code.replace("__ENTRY__", FUNCTION_ENTRY % name, 1)),
    }
    model._limpyd_atomic_schema = (
        model._name,
        schema,
        script,
        {name: entry["k"] for name, entry in described.items()},
    )
    return schema


def script_of(model: Any) -> Dict[str, Any]:
    """Return the atomic-writes script of ``model`` (its schema written in)."""
    schema_of(model)
    return model.__dict__["_limpyd_atomic_schema"][2]


def kinds_of(model: Any) -> Dict[str, str]:
    """Return ``{field name: kind}`` of ``model``'s fields."""
    schema_of(model)
    return model.__dict__["_limpyd_atomic_schema"][3]


def lua_literal(value: Any) -> str:
    """Return ``value`` (dicts, lists, str, int, bool) written as a Lua expression."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _lua_string(value)
    if isinstance(value, dict):
        return "{%s}" % ",".join(
            "[%s]=%s" % (_lua_string(str(key)), lua_literal(item)) for key, item in value.items()
        )
    if isinstance(value, (list, tuple)):
        return "{%s}" % ",".join(lua_literal(item) for item in value)
    raise TypeError("no Lua literal for %r" % (value,))


def _lua_string(text: str) -> str:
    """Return ``text`` as a Lua string literal (every byte outside plain ASCII escaped as \\ddd)."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        out.append(char if 32 <= byte < 127 and char not in "'\\" else "\\%03d" % byte)
    return "'%s'" % "".join(out)


def check_model(model: Any) -> None:
    """Raise ``ImplementationError`` now if ``model`` declares atomic writes (or expiring instances,
    whose purge is the same script) it cannot have."""
    if not model.abstract and (atomic_enabled(model) or getattr(model, "_limpyd_expiring", False)):
        schema_of(model)


class _Recorder(redis.Redis):
    """A client that returns the arguments of a command instead of sending it."""

    def __init__(self) -> None:  # no connection: nothing is ever sent
        pass

    def execute_command(self, *args: Any, **options: Any) -> Any:
        return args, options


_RECORDER = _Recorder()


#: redis-py methods whose command, called with positional arguments only, is their name then the
#: arguments as given, with no reply option (checked against redis-py by tests/test_atomic.py):
#: built without the recorder, the commonest writes of atomic mode
_PLAIN_COMMANDS = {
    "set": "SET",
    "sadd": "SADD",
    "srem": "SREM",
    "lpush": "LPUSH",
    "rpush": "RPUSH",
    "hdel": "HDEL",
    "delete": "DEL",
}


def command_args(name: str, *args: Any, **kwargs: Any) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """Return the Redis command (and its reply options) redis-py's method ``name`` would send."""
    if not kwargs:
        command = _PLAIN_COMMANDS.get(name)
        if command is not None and (name != "set" or len(args) == 2):
            return (command,) + args, {}
    return getattr(_RECORDER, name)(*args, **kwargs)


def parse_reply(client: Any, command: str, reply: Any, options: Dict[str, Any]) -> Any:
    """Return ``reply`` of ``command`` run by the script as redis-py would have returned it."""
    callback = getattr(client, "response_callbacks", {}).get(command)
    if callback is None:
        return reply
    return callback(reply, **{key: value for key, value in options.items() if key != "keys"})


def modify(
    field: Any,
    pk: str,
    names: List[str],
    name: str,
    args: Tuple[Any, ...],
    kwargs: Dict[str, Any],
    check: bool,
) -> Any:
    """Run the redis-py command ``name(*args, **kwargs)`` on fields ``names`` of ``pk`` in one script call."""
    model = field._model
    client = model.database.connection
    command, options = command_args(name, *args, **kwargs)
    request: Dict[str, Any] = {
        "op": "modify",
        "pk": pk,
        "names": names,
        "cmd": [str(command[0]).lower()] + encode_values(client.get_encoder(), command[1:]),
    }
    if check:
        request["check"] = True
    reply = run(model, request, client)
    return parse_reply(client, str(command[0]).upper(), reply[1] if len(reply) > 1 else None, options)


#: the requests' JSON encoder (compact; one instance, not one per call as ``json.dumps`` builds)
_JSON = json.JSONEncoder(separators=(",", ":"))


def _encode(encoder: Any, value: Any) -> str:
    """Return ``value`` as Redis stores it (redis-py's encoding), as text."""
    encoded = encoder.encode(value)
    return encoded.decode("utf-8") if isinstance(encoded, bytes) else str(encoded)


def encode_all(database: Any, values: Any) -> List[str]:
    """Return the ``values`` as Redis stores them."""
    return encode_values(database.connection.get_encoder(), values)


def encode_values(encoder: Any, values: Any) -> List[str]:
    """Return the ``values`` as ``encoder`` (redis-py's) stores them (text as it is in UTF-8)."""
    if all(type(value) is str for value in values) and _is_utf8(encoder.encoding):
        return list(values)
    return [_encode(encoder, value) for value in values]


#: ``{encoding name: whether it is UTF-8}`` of the encodings seen
_IS_UTF8: Dict[str, bool] = {}


def _is_utf8(encoding: str) -> bool:
    """Return whether ``encoding`` names UTF-8 (``utf-8``, ``UTF8``, ``utf_8``...)."""
    known = _IS_UTF8.get(encoding)
    if known is None:
        known = _IS_UTF8[encoding] = codecs.lookup(encoding).name == "utf-8"
    return known


def _scored(field: Any) -> Any:
    """Return the NumberRangeIndex of ``field`` whose scores the script needs, if any."""
    for index in field._indexes if field.indexable else ():
        if isinstance(index, NumberRangeIndex):
            return index
    return None


def _creation_plan(model: Any) -> List[Tuple[str, Any, str, bool, Any]]:
    """Return ``[(name, field, kind, has default, scoring index), ...]`` of ``model`` (cached)."""
    cached = model.__dict__.get("_limpyd_creation_plan")
    if cached is not None and cached[0] is model.__dict__.get("_limpyd_atomic_schema"):
        return cached[1]
    kinds = kinds_of(model)
    plan = []
    for name in model._fields[1:]:
        field = model.get_class_field(name)
        plan.append((name, field, kinds[name], hasattr(field, "default"), _scored(field)))
    model._limpyd_creation_plan = (model.__dict__.get("_limpyd_atomic_schema"), plan)
    return plan


def creation_fields(model: Any, values: Dict[str, Any], encoder: Any = None) -> List[List[Any]]:
    """Return ``[[name, values as stored, scores or absent], ...]`` of a new instance, in model order.

    ``values`` are the given ones (already checked); the defaults of the other fields are added,
    as the default write path does. ``None`` and empty containers write nothing.
    """
    if encoder is None:
        encoder = model.database.connection.get_encoder()
    result: List[List[Any]] = []
    for name, field, kind, has_default, scored in _creation_plan(model):
        if name in values:
            value = values[name]
        elif has_default:
            value = field.default() if callable(field.default) else field.default
        else:
            continue
        if value is None or (isinstance(value, (list, tuple, set, dict)) and not value):
            continue
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
        entry: List[Any] = [
            name,
            [piece if type(piece) is str else _encode(encoder, piece) for piece in pieces],
        ]
        if scored is not None:
            entry.append([_encode(encoder, scored.normalize_value(one)) for one in index_values])
        result.append(entry)
    return result


def run(model: Any, request: Dict[str, Any], client: Any = None) -> List[Any]:
    """Send ``request`` (an operation of the script) for ``model`` and return the reply list.

    Refusals become the errors the default write path raises: ``UniquenessError`` for a taken
    unique value or pk, ``DoesNotExist`` for a pk that is not in the collection.
    """
    reply = run_raw(model, request, client)
    status = reply[0] if reply else None
    if status == "ok":
        return reply
    raise refusal(model, status, *(list(reply[1:]) + [None] * 3)[:3], pk=request.get("pk"))


def uses_functions(database: Any, client: Any) -> bool:
    """Return whether the model's code runs as a Redis 7 function on ``client`` (else as a script).

    Functions need Redis >= 7; a cluster client and user pipelines keep the script (redis-py
    loads scripts on the node that needs them).
    """
    return type(client) is redis.Redis and database.redis_version >= (7,)


def is_function_missing(error: BaseException) -> bool:
    """Return whether ``error`` says the function is not loaded on the server (yet, or any more)."""
    return isinstance(error, redis.ResponseError) and "function not found" in str(error).lower()


def load_function(client: Any, script: Dict[str, Any]) -> None:
    """Load (or load again) the model's function library on the server of ``client``."""
    client.execute_command("FUNCTION", "LOAD", "REPLACE", script["library"])


def run_raw(model: Any, request: Dict[str, Any], client: Any = None) -> List[Any]:
    """Send ``request`` for ``model`` (on ``client``, its database's by default) and return the
    script's reply as it is."""
    database = model.database
    script = script_of(model)
    key = make_key(model._name, "collection")
    payload = _JSON.encode(request)
    if client is None:
        client = database.connection
    if uses_functions(database, client):
        try:
            return send_on_pool(client, "FCALL", script["function"], 1, key, payload)
        except redis.ResponseError as error:
            if not is_function_missing(error):
                raise
        load_function(client, script)
        return send_on_pool(client, "FCALL", script["function"], 1, key, payload)
    return database.call_script(script, keys=[key], args=[payload])


def refusal(
    model: Any, status: Any, first: Any = None, second: Any = None, third: Any = None, pk: Any = None
) -> Exception:
    """Return the error the default write path raises for the script's refusal ``status``."""
    if status == "unique":
        return UniquenessError(
            'Value "%s" already indexed for unique field %s.%s (for instance %s)'
            % (second, model.__name__, first, third)
        )
    if status == "uniquewith":
        return UniquenessError(
            "Values already indexed together for the unique index of %s.%s (key %s, for instance %s)"
            % (model.__name__, first, second, third)
        )
    if status == "pkexists":
        return UniquenessError("PKField %s already exists for model %s)" % (first, model))
    if status == "missing":
        return DoesNotExist("No %s found with pk %s" % (model.__name__, pk))
    return ImplementationError(
        "unexpected reply of the atomic-writes script: %r" % ([status, first, second, third],)
    )


def in_pipeline(model: Any) -> bool:
    """Return whether the model's commands go to a user pipeline (atomic writes do not apply there)."""
    connection = model.database.connection
    return type(connection) is not redis.Redis and isinstance(connection, Pipeline)


class script_sender:  # noqa: N801 - a context manager
    """Send requests of ``model``'s script one after the other, each reply read after the next send.

    ``send(request, on_reply)`` sends the request, then reads the reply of the previous one and
    gives it to its callback: the server runs a request while the client prepares the next. On a
    client without a connection pool of its own (a cluster client), each request is a plain call.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.connection: Any = None
        self.pending: Optional[Any] = None

    def __enter__(self) -> Any:
        client = self.model.database.connection
        if (
            type(client) is not redis.Redis
            and not isinstance(client, redis.Redis)
            or isinstance(client, Pipeline)
        ):
            return self._plain
        script = script_of(self.model)
        self.client = client
        if uses_functions(self.model.database, client):
            self.command = ("FCALL", script["function"])
        else:  # loaded on the first NOSCRIPT
            self.command = ("EVALSHA", hashlib.sha1(script["lua"].encode("utf-8")).hexdigest())
        self.key = make_key(self.model._name, "collection")
        self.connection = get_pool_connection(client.connection_pool, self.command[0])
        return self._send

    def _plain(self, request: Dict[str, Any], on_reply: Any) -> None:
        on_reply(run_raw(self.model, request))

    def _send(self, request: Dict[str, Any], on_reply: Any) -> None:
        self.connection.send_command(*self.command, 1, self.key, _JSON.encode(request))
        reloaded = self._read_pending()
        self.pending = (request, on_reply)
        if reloaded:  # this request was sent before the script was loaded again: it met NOSCRIPT too
            self._read_pending()

    def _read_pending(self) -> bool:
        """Read the reply of the request in flight; return whether it met NOSCRIPT (and was run again)."""
        if self.pending is None:
            return False
        (request, on_reply), self.pending = self.pending, None
        try:
            reply = self.client.parse_response(self.connection, self.command[0])
        except redis.ResponseError as error:  # not loaded on this server yet: the plain call loads it
            if not (isinstance(error, NoScriptError) or is_function_missing(error)):
                raise
            on_reply(run_raw(self.model, request))
            return True
        on_reply(reply)
        return False

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.connection is None:
            return
        try:
            if exc_type is None:
                self._read_pending()
        except BaseException:
            self.connection.disconnect()
            raise
        finally:
            if exc_type is not None:
                self.connection.disconnect()  # a reply may still be on its way: never reuse it
            self.client.connection_pool.release(self.connection)
