"""Fields holding several values: sets, lists, sorted sets, hashes."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import redis
from redis.exceptions import DataError

from limpyd._batch import (
    current_batch,
    is_batched,
    later,
)
from limpyd._fields.base import RedisField
from limpyd._fields.values import check_fresh_reply, check_value, field_label, write_hash
from limpyd._scan import scan_pool
from limpyd.exceptions import DoesNotExist, ImplementationError, LimpydException


def _redis_py_attribute(*paths: str) -> Any:
    """Return the first of ``module:attribute`` paths that exists in the installed redis-py, or None."""
    import importlib

    for path in paths:
        module_name, attribute = path.split(":")
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError):
            continue
    return None


def _reply_callback(name: str) -> Any:
    """Return redis-py's own callback ``name`` (``parse_scan``...), wherever this version keeps it."""
    return _redis_py_attribute("redis._parsers.helpers:" + name, "redis.client:" + name)


_SCAN_COMMANDS = _redis_py_attribute("redis.commands.core:ScanCommands")

#: the field scans the raw reader serves: redis-py method -> (command, the reply callback whose
#: result it reproduces, pairs, cast of the second item of a pair); a client with another callback
#: for the command (``legacy_responses=False`` shapes, one set by the user) keeps redis-py's route
RAW_FIELD_SCANS: Dict[str, Tuple[str, Any, bool, Optional[Callable[[str], Any]]]] = {
    "sscan_iter": ("SSCAN", _reply_callback("parse_scan"), False, None),
    "hscan_iter": ("HSCAN", _reply_callback("parse_hscan"), True, None),
    "zscan_iter": ("ZSCAN", _reply_callback("parse_zscan"), True, float),  # zscan_iter's score_cast_func
}


def raw_field_scan(connection: Any, name: str) -> Optional[Tuple[str, bool, Optional[Callable[[str], Any]]]]:
    """Return ``(command, pairs, cast)`` if ``connection.<name>()`` may be replaced by ``scan_pool``.

    Only when the result is the one redis-py's ``*scan_iter`` gives: a plain ``redis.Redis``
    (not a pipeline, a cluster client, a batch view or a subclass) using its pool (no single
    connection), with neither the iterator, the command method nor ``execute_command`` replaced
    (on the instance or on redis-py's classes), redis-py's own reply callback for the command,
    and replies decoded to ``str`` (``decode_responses``, as the raw reader yields them).
    """
    spec = RAW_FIELD_SCANS.get(name)
    if spec is None or type(connection) is not redis.Redis or _SCAN_COMMANDS is None:
        return None
    command, callback, pairs, cast = spec
    method = name[:-5]  # sscan_iter -> sscan
    attributes = connection.__dict__
    if (
        callback is None
        or getattr(connection, "connection", None) is not None
        or name in attributes
        or method in attributes
        or "execute_command" in attributes
        or getattr(redis.Redis, name) is not getattr(_SCAN_COMMANDS, name)
        or getattr(redis.Redis, method) is not getattr(_SCAN_COMMANDS, method)
        or redis.Redis.execute_command is not _EXECUTE_COMMAND
    ):
        return None
    callbacks = getattr(connection, "response_callbacks", None)
    if callbacks is None or callbacks.get(command) is not callback:
        return None
    if not connection.connection_pool.connection_kwargs.get("decode_responses", False):
        return None  # redis-py yields bytes
    return command, pairs, cast


_EXECUTE_COMMAND = redis.Redis.execute_command


class MultiValuesField(RedisField):
    """Base of fields holding several values (sets, lists, sorted sets, hashes)."""

    scannable = False

    def _add(self, command: str, /, *args: Any, **kwargs: Any) -> Any:
        """Strategy A: index the given values, then run the command."""
        for value in args:
            check_value(self, value)
        if self.indexable:
            self.index(args)
        return self._write_command(command, *args, **kwargs)

    def _rem(self, command: str, /, *args: Any, **kwargs: Any) -> Any:
        """Strategy D: deindex the given values, then run the command."""
        if self.indexable:
            self.deindex(args)
        return self._write_command(command, *args, **kwargs)

    def _pop(self, command: str, /, *args: Any, **kwargs: Any) -> Any:
        """Strategy P: run the command, then deindex the value(s) it returned."""
        result = self._traverse_command(command, *args, **kwargs)
        if self.indexable and result is not None:
            self.deindex(result if isinstance(result, list) else [result])
        return result

    def _index_all_if_set(self, command: str, /, *args: Any, **kwargs: Any) -> Any:
        """Strategy N: run the command, index the given values only if the result is truthy."""
        for value in args:
            check_value(self, value)
        result = self._traverse_command(command, *args, **kwargs)
        if self.indexable and result:
            self.index(args)
        return result

    def _scan(self, command: str, /, match: Any = None, count: Any = None) -> Any:
        """Return a generator over the field's key with the results of redis-py's ``*scan_iter``.

        On a plain ``redis.Redis`` client (see :func:`raw_field_scan`) the scan reads the replies
        from the socket itself (``limpyd._scan.scan_pool``: the next request is sent before the
        items of the current reply are decoded); otherwise, and inside a write-behind batch, it is
        redis-py's ``*scan_iter``.
        """
        if not self.scannable:  # pragma: no cover - only the scannable fields route a scan here
            raise ImplementationError("%s: a %s is not scannable" % (self._label(), type(self).__name__))
        if command.endswith("_iter"):
            raise ImplementationError(
                "Use %s instead of %s (%s): it already returns an iterator"
                % (command[:-5], command, self._label())
            )
        name = command + "_iter"
        connection = self.connection
        raw = raw_field_scan(connection, name) if name in self.available_commands else None
        if raw is None or current_batch(self._model.database) is not None:
            return self._traverse_command(name, match=match, count=count)
        scan_command, pairs, cast = raw
        arguments: List[Any] = []
        if match is not None:
            arguments += ["MATCH", match]
        if count is not None:
            arguments += ["COUNT", count]
        result = scan_pool(
            connection.connection_pool,
            arguments,
            head=(scan_command, self.key),
            pairs=pairs,
            cast=cast,
        )
        return self.post_command(
            sender=self, name=name, result=result, args=(), kwargs={"match": match, "count": count}
        )

    def index(self, values: Any = None, only_index: Any = None) -> None:
        """Add the instance to the indexes for each of ``values`` (default: the stored ones)."""
        self._require_indexable("index")
        if "_limpyd_atomic" in self.__dict__:
            return  # the atomic-writes script maintains the indexes
        if values is None:
            values = self._stored_values()
        self._index(values, only_index)

    def deindex(self, values: Any = None, only_index: Any = None) -> None:
        """Remove the instance from the indexes for each of ``values`` (default: the stored ones)."""
        self._require_indexable("deindex")
        if "_limpyd_atomic" in self.__dict__:
            return  # the atomic-writes script maintains the indexes
        if values is None:
            values = self._stored_values()
        self._deindex(values, only_index)

    def check_creation_value(self, value: Any) -> None:
        """Raise ``DataError`` if ``value`` (a value or a list/tuple/set of them) cannot be stored."""
        for item in value if isinstance(value, (list, tuple, set)) else [value]:
            check_value(self, item)

    def check_uniqueness(self, values: Any) -> None:
        """Raise ``UniquenessError`` if one of ``values`` is taken (unique field; no pk allocated)."""
        if not self.unique:
            return
        index = self.get_unique_index()
        for value in values:
            if value is not None:
                index.check_uniqueness(self._instance._pk, value)

    def _check_server_version(self, version: tuple, message: str) -> None:
        if self.database.redis_version < version:
            raise ImplementationError(message)


class SetField(MultiValuesField):
    """A Redis set ``N:<pk>:<name>``."""

    proxy_getter = "smembers"
    proxy_setter = "sadd"
    scannable = True
    available_getters = RedisField.available_getters | {
        "scard",
        "sismember",
        "smembers",
        "srandmember",
        "sscan",
        "sscan_iter",
        "sort",
    }
    available_modifiers = {"delete", "sadd", "srem", "spop"}

    _call_sadd = MultiValuesField._add
    _call_srem = MultiValuesField._rem
    _call_sscan = _call_sscan_iter = MultiValuesField._scan

    def _call_spop(self, command: str, /, count: Any = None, **kwargs: Any) -> Any:
        """Pop one member (or ``count`` members, as a list) and deindex what was popped."""
        if count is None:
            return self._pop(command, **kwargs)
        self._check_server_version((3, 2), "Count argument to SPOP is invalid for redis-server version < 3.2")
        return self._pop(command, count, **kwargs)


class ListField(MultiValuesField):
    """A Redis list ``N:<pk>:<name>``."""

    proxy_getter = "lmembers"
    proxy_setter = "rpush"
    available_getters = RedisField.available_getters | {
        "lindex",
        "llen",
        "lrange",
        "lrank",
        "lcontains",
        "lcount",
        "sort",
    }
    available_modifiers = {
        "delete",
        "linsert",
        "lpop",
        "lpush",
        "lpushx",
        "lrem",
        "rpop",
        "rpush",
        "rpushx",
        "lset",
        "ltrim",
    }
    scripts = {
        "lrank": {
            "lua": """
                local values = redis.call('LRANGE', KEYS[1], 0, -1)
                for index, value in ipairs(values) do
                    if value == ARGV[1] then return index - 1 end
                end
                return nil
            """,
        },
        "lcount": {
            "lua": """
                local values = redis.call('LRANGE', KEYS[1], 0, -1)
                local count = 0
                for _, value in ipairs(values) do
                    if value == ARGV[1] then count = count + 1 end
                end
                return count
            """,
        },
    }

    _call_lpush = _call_rpush = MultiValuesField._add
    _call_lpushx = _call_rpushx = MultiValuesField._index_all_if_set
    _call_lpop = _call_rpop = MultiValuesField._pop
    _call_ltrim = RedisField._reset

    def lmembers(self) -> list:
        """Return every element of the list (``LRANGE key 0 -1``)."""
        return self.lrange(0, -1)

    def _call_lrank(self, command: str, /, value: Any) -> Any:
        """Return the position of the first element equal to ``value``, or ``None``."""
        return self.database.call_script(ListField.scripts["lrank"], keys=[self.key], args=[value])

    def _call_lcount(self, command: str, /, value: Any) -> int:
        """Return how many elements equal ``value``."""
        return self.database.call_script(ListField.scripts["lcount"], keys=[self.key], args=[value])

    def _call_lcontains(self, command: str, /, value: Any) -> bool:
        """Return whether an element equals ``value``."""
        return self.lrank(value) is not None

    def _call_lrem(self, command: str, /, count: Any, value: Any) -> Any:
        """Remove elements equal to ``value``: all of them (``count == 0``) or ``count`` of them."""
        if count == 0:
            return self._rem_value(command, count, value)
        return self._reset(command, count, value)

    def _rem_value(self, command: str, /, count: Any, value: Any) -> Any:
        if self.indexable:
            self.deindex([value])
        return self._write_command(command, count, value)

    def _call_lset(self, command: str, /, index: Any, value: Any) -> Any:
        """Replace the element at ``index``, deindexing the old one and indexing ``value``."""
        check_value(self, value)
        if not self.indexable or self._atomic_capture():
            return self._traverse_command(command, index, value)
        old = self.connection.lindex(self.key, index)
        if old is not None:
            self.deindex([old])
        result = self._traverse_command(command, index, value)
        self.index([value])
        return result

    def _call_linsert(self, command: str, /, where: Any, refvalue: Any, value: Any) -> Any:
        """Insert ``value`` before/after ``refvalue``; index it unless the pivot was not found."""
        check_value(self, value)
        result = self._traverse_command(command, where, refvalue, value)
        if self.indexable and result != -1:
            self.index([value])
        return result


class SortedSetField(MultiValuesField):
    """A Redis sorted set ``N:<pk>:<name>``."""

    proxy_getter = "zmembers"
    proxy_setter = "zadd"
    scannable = True
    available_getters = RedisField.available_getters | {
        "zcard",
        "zcount",
        "zrange",
        "zrangebyscore",
        "zrank",
        "zrevrange",
        "zrevrangebyscore",
        "zrevrank",
        "zscore",
        "zscan",
        "zscan_iter",
        "sort",
        "zlexcount",
        "zrangebylex",
        "zrevrangebylex",
    }
    available_modifiers = {
        "delete",
        "zadd",
        "zincrby",
        "zrem",
        "zremrangebyrank",
        "zremrangebyscore",
        "zremrangebylex",
        "zpopmin",
        "zpopmax",
    }

    _call_zrem = MultiValuesField._rem
    _call_zremrangebyrank = _call_zremrangebyscore = _call_zremrangebylex = RedisField._reset
    _call_zscan = _call_zscan_iter = MultiValuesField._scan

    def check_creation_value(self, value: Any) -> None:
        """Raise ``DataError`` unless ``value`` is a ``{member: score}`` dict Redis can store."""
        if not isinstance(value, dict):
            raise DataError(
                "Invalid value %r for %s: a SortedSetField takes a {member: score} dict."
                % (value, field_label(self))
            )
        for member, score in value.items():
            check_value(self, member, "member")
            check_value(self, score, "score")

    def zmembers(self) -> list:
        """Return every member, by ascending score (``ZRANGE key 0 -1``)."""
        return self.zrange(0, -1)

    @staticmethod
    def coerce_zadd_args(*args: Any, **kwargs: Any) -> Tuple[list, Dict[str, Any]]:
        """Return ``([], kwargs)`` for redis-py's ``zadd`` from limpyd's ``zadd`` arguments."""
        values_callback = kwargs.pop("values_callback", None)
        error = LimpydException("ZADD accepts only two argumnets: 'mapping' and 'ch'")
        if args:
            if len(args) > 2 or "mapping" in kwargs or (set(kwargs) - {"ch"}) or (len(args) == 2 and kwargs):
                raise error
            mapping = args[0]
            options = {"ch": args[1]} if len(args) == 2 else dict(kwargs)
        elif "mapping" in kwargs:
            mapping = kwargs.pop("mapping")
            options = kwargs
        else:
            flags = ("nx", "xx", "ch", "incr")
            options = {name: kwargs.pop(name) for name in flags if name in kwargs}
            mapping = kwargs
        for flag in ("nx", "xx", "incr"):
            if flag in options:
                raise LimpydException("%s argument to ZADD is not supported by limpyd" % flag)
        if values_callback is not None and mapping:
            scores = list(mapping.values())
            new_members = values_callback(*mapping.keys())
            mapping.clear()
            mapping.update(zip(new_members, scores))
        options["mapping"] = mapping
        return [], options

    def _call_zadd(self, command: str, /, *args: Any, **kwargs: Any) -> Any:
        """Add members with their scores (a mapping, or ``member=score`` keywords)."""
        _, kwargs = self.coerce_zadd_args(*args, **kwargs)
        for member, score in (kwargs.get("mapping") or {}).items():
            check_value(self, member, "member")
            check_value(self, score, "score")
        if self.indexable:
            self.index(list(kwargs["mapping"]))
        return self._write_command(command, **kwargs)

    def _call_zincrby(self, command: str, /, amount: Any, value: Any) -> Any:
        """Increment the score of ``value`` by ``amount`` (indexing ``value``)."""
        check_value(self, value, "member")
        if self.indexable:
            self.index([value])
        return self._write_command(command, amount, value)

    def _call_zpopmin(self, command: str, /, *args: Any, **kwargs: Any) -> Any:
        """Pop the members with the lowest scores (Redis >= 5)."""
        self._check_server_version((5,), "ZPOPMIN is not a valid command for redis-server version < 5")
        return self._reset(command, *args, **kwargs)

    def _call_zpopmax(self, command: str, /, *args: Any, **kwargs: Any) -> Any:
        """Pop the members with the highest scores (Redis >= 5)."""
        self._check_server_version((5,), "ZPOPMAX is not a valid command for redis-server version < 5")
        return self._reset(command, *args, **kwargs)


class HashField(MultiValuesField):
    """A Redis hash ``N:<pk>:<name>``; its indexes see ``(hash_key, value)`` pairs."""

    proxy_getter = "hgetall"
    proxy_setter = "hmset"
    scannable = True
    _unique_supported = False
    _field_parts = 2
    available_getters = RedisField.available_getters | {
        "hget",
        "hgetall",
        "hmget",
        "hkeys",
        "hvals",
        "hlen",
        "hscan",
        "hscan_iter",
        "hstrlen",
    }
    available_modifiers = {"delete", "hdel", "hmset", "hsetnx", "hset", "hincrby", "hincrbyfloat"}

    _call_hscan = _call_hscan_iter = MultiValuesField._scan

    def check_creation_value(self, value: Any) -> None:
        """Raise ``DataError`` unless ``value`` is a ``{hash key: value}`` dict Redis can store."""
        if not isinstance(value, dict):
            raise DataError(
                "Invalid value %r for %s: a HashField takes a {hash key: value} dict."
                % (value, field_label(self))
            )
        for key, item in value.items():
            check_value(self, key, "hash key")
            check_value(self, item)

    def _index_parts(self, values: Any) -> list:
        """Return ``[(hash_key, value), ...]`` from a dict."""
        return list(values.items())

    def _call_hmget(self, command: str, /, *keys: Any) -> Any:
        """Return the values of ``keys`` (``None`` for missing ones)."""
        return self._traverse_command(command, keys)

    def _call_hstrlen(self, command: str, /, key: Any) -> int:
        """Return the length of the value of ``key`` (Redis >= 3.2)."""
        self._check_server_version((3, 2), "HSTRLEN is not a valid command for redis-server version < 3.2")
        return self._traverse_command(command, key)

    def _call_hset(self, command: str, /, key: Any, value: Any) -> Any:
        """Set ``key`` to ``value``, moving its index entry when the value changes."""
        check_value(self, key, "hash key")
        check_value(self, value)
        if self.indexable and not self._atomic_capture():
            current = self.connection.hget(self.key, key)
            if current != value:
                if current is not None:
                    self.deindex({key: current})
                if value is not None:
                    self.index({key: value})
        return self._write_command(command, key, value)

    def _call_hmset(self, command: str, /, *args: Any, **mapping: Any) -> bool:
        """Set several keys at once (``HSET key k1 v1 ...``); returns ``True``."""
        for value in mapping.values():
            check_value(self, value)
        if self._atomic_capture():
            return self._traverse_command("hset", mapping=mapping) and True
        if self.indexable and mapping:
            keys = list(mapping)
            connection = self.connection
            if self._is_fresh() and is_batched(connection):
                later(
                    connection, on_reply=lambda reply: check_fresh_reply(self, reply), is_write=False
                ).hmget(self.key, keys)
                current = {}
            else:
                current = dict(zip(keys, connection.hmget(self.key, keys)))
            self.deindex({key: value for key, value in current.items() if value is not None})
            self.index(mapping)
        result = self._write_hash(self.key, mapping)
        return self.post_command(sender=self, name=command, result=result, args=(), kwargs=mapping)

    def _write_hash(self, key: str, mapping: Dict[str, Any]) -> Any:
        """Write ``mapping`` into the hash ``key`` in one command; ``True`` (the pipeline when pipelined)."""
        return write_hash(self.database, key, mapping)

    def _call_hsetnx(self, command: str, /, key: Any, value: Any) -> Any:
        """Set ``key`` only if it does not exist, indexing the value if it was set."""
        check_value(self, key, "hash key")
        check_value(self, value)
        result = self._traverse_command(command, key, value)
        if self.indexable and result:
            self.index({key: value})
        return result

    def _call_hincrby(self, command: str, /, key: Any, amount: Any) -> Any:
        """Increment ``key`` by ``amount`` and index the value returned."""
        if self.indexable and not self._atomic_capture():
            current = self.connection.hget(self.key, key)
            if current is not None:
                self.deindex({key: current})
        result = self._traverse_command(command, key, amount)
        if self.indexable and result is not None:
            self.index({key: result})
        return result

    _call_hincrbyfloat = _call_hincrby

    def _call_hdel(self, command: str, /, *keys: Any) -> Any:
        """Remove ``keys`` (missing ones are fine), deindexing their values."""
        if self.indexable and keys and not self._atomic_capture():
            current = dict(zip(keys, self.connection.hmget(self.key, list(keys))))
            self.deindex({key: value for key, value in current.items() if value is not None})
        return self._write_command(command, *keys)

    def hexists(self, key: Any) -> bool:
        """Return whether ``key`` exists in the hash (``False`` for a deleted instance)."""
        try:
            redis_key = self.key
        except DoesNotExist:
            return False
        return bool(self.connection.hexists(redis_key, key))

    exists = hexists
