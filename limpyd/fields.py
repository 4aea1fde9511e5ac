"""Fields: the command proxy machinery, the field base class and the primary-key fields.

Every Redis command of a model or field goes through ``_call_command``, then ``_call_<name>``
(the per-command extension point) or ``_traverse_command`` (the redis-py method of the same
name, with the field's key prepended). The remaining field types (strings, hashes, sets, lists,
sorted sets), index maintenance and ``FieldLock`` are described in docs/models.rst.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Dict, Optional, Set, Tuple

import redis
from redis.exceptions import DataError, ResponseError
from redis.lock import Lock

from limpyd._batch import (
    Pending,
    batch_scope,
    current_batch,
    defer_next,
    lock_command,
    release_reply_checker,
    resolve,
    send_commands,
    wait_for_lock,
)
from limpyd import _atomic
from limpyd._recovery import UNKNOWN_OUTCOME, is_unknown_outcome, real_client, with_retries
from limpyd.exceptions import DoesNotExist, ImplementationError, LimpydException, UniquenessError
from limpyd.utils import NotProvided, cached_property, make_key, normalize

__all__ = [
    "InstanceHashField",
    "RedisField",
    "RedisProxyCommand",
    "MetaRedisProxy",
    "SortedSetField",
    "StringField",
    "ListField",
    "SetField",
    "PKField",
    "AutoPKField",
    "HashField",
]


def write_hash(database: Any, key: str, mapping: Dict[str, Any]) -> Any:
    """Write ``mapping`` into the hash ``key`` with one command and return ``True`` (as ``HMSET`` did).

    ``HSET key f1 v1 ...`` (``HMSET`` is deprecated), or ``HMSET`` on a Redis < 4 refusing it; an empty
    mapping raises redis-py's ``DataError``. Inside a pipeline the pipeline object is returned.
    """
    connection = database.connection
    if not mapping:
        raise DataError("HSET requires at least one field to write into %r: got an empty mapping" % (key,))
    version = database.__dict__.get("_redis_version")  # known without a command once connected
    if (version is not None and version < (4,)) or getattr(database, "_limpyd_hmset_only", False):
        result = connection.execute_command("HMSET", key, *[part for item in mapping.items() for part in item])
        return True if isinstance(result, int) else result
    try:
        result = connection.hset(key, mapping=mapping)
    except ResponseError as exc:
        if "wrong number of arguments" not in str(exc):
            raise
        # Redis < 4 takes one field per HSET: HMSET is the one-command form there (remembered)
        database._limpyd_hmset_only = True
        result = connection.execute_command("HMSET", key, *[part for item in mapping.items() for part in item])
    return True if isinstance(result, int) else result


def field_label(field: Any) -> str:
    """Return ``Model.field`` for error messages (``<unbound>`` parts when not attached)."""
    model = getattr(field, "_model", None)
    return "%s.%s" % (model.__name__ if model is not None else "<no model>", getattr(field, "name", "<unnamed>"))


def check_value(field: Any, value: Any, role: str = "value") -> None:
    """Raise redis-py's ``DataError`` naming the model, field and value if Redis cannot store ``value``.

    Done before any Redis command, so a bad value leaves Redis untouched: limpyd stores ``str``,
    ``bytes`` (UTF-8: everything is read back as ``str``), ``int`` and ``float``.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(
                "Invalid %s %r for %s: this str cannot be encoded in UTF-8 (%s). Remove the lone "
                "surrogates (e.g. value.encode('utf-8', 'replace').decode())." % (role, value, field_label(field), exc.reason)
            ) from None
        _check_index_values(field, value, role)
        return
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > 256:
            try:
                str(value)
            except ValueError:
                raise DataError(
                    "Invalid %s (an int of %d bits) for %s: Python cannot write it as decimal digits. Store "
                    "it as a hex str (hex(value)) or raise sys.set_int_max_str_digits()."
                    % (role, value.bit_length(), field_label(field))
                ) from None
        _check_index_values(field, value, role)
        return
    if isinstance(value, float):
        _check_index_values(field, value, role)
        return
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(
                "Invalid %s %r for %s: these bytes are not UTF-8, and limpyd reads every value back as "
                "str. Store text (or encode the bytes, e.g. base64) first." % (role, value, field_label(field))
            ) from None
        _check_index_values(field, value, role)
        return
    raise DataError(
        "Invalid %s %r (of type %s) for %s: Redis stores str, bytes, int or float. Convert it first "
        "(e.g. str(value)), or skip the field to store nothing." % (role, value, type(value).__name__, field_label(field))
    )


def _check_index_values(field: Any, value: Any, role: str) -> None:
    """Let each index of ``field`` refuse ``value`` before anything is written (``check_storable``)."""
    if role in ("value", "member") and getattr(field, "indexable", False):
        for index in field._indexes:
            index.check_storable(value)


def check_fresh_reply(field: Any, reply: Any) -> None:
    """Raise if a read of the pk an instance just allocated found data (left by another instance)."""
    if reply is None or reply == {} or reply == [] or reply == set() or (
        isinstance(reply, list) and all(value is None for value in reply)
    ):
        return
    instance = field._instance
    raise LimpydException(
        "%s.%s of the new pk %s already holds %r: keys of another instance with this pk are still in "
        "Redis (was %s reset?). Delete the keys matching %r, or set %s above the highest pk in use."
        % (type(instance).__name__, field.name, instance._pk, reply, make_key(instance._name, "max_pk"),
           make_key(instance._name, instance._pk, "*"), make_key(instance._name, "max_pk"))
    )


class MetaRedisProxy(type):
    """Metaclass building a command method for each name of ``available_getters/modifiers``."""

    def __new__(mcs, name: str, bases: tuple, attrs: Dict[str, Any]) -> type:
        cls = super().__new__(mcs, name, bases, attrs)
        if any(mcs.class_can_have_commands(base) for base in bases):
            cls.available_getters = set(cls.available_getters)
            cls.available_modifiers = set(cls.available_modifiers)
            cls.available_commands = cls.available_getters | cls.available_modifiers
            for command in cls.available_commands:
                if not hasattr(cls, command):
                    setattr(cls, command, cls._make_command_method(command))
        return cls

    @staticmethod
    def class_can_have_commands(klass: type) -> bool:
        """Return whether ``klass`` derives from ``RedisProxyCommand`` (and so gets commands)."""
        proxy = globals().get("RedisProxyCommand")
        return proxy is not None and isinstance(klass, type) and issubclass(klass, proxy)


class RedisProxyCommand(metaclass=MetaRedisProxy):
    """Base of models and fields: dispatches commands to ``_call_<name>`` or to redis-py."""

    available_getters: Set[str] = set()
    available_modifiers: Set[str] = set()
    available_commands: Set[str] = set()

    @classmethod
    def _make_command_method(cls, command_name: str) -> Callable[..., Any]:
        """Return a method sending ``command_name`` through ``_call_command``."""

        def command(self: Any, *args: Any, **kwargs: Any) -> Any:
            return self._call_command(command_name, *args, **kwargs)

        command.__name__ = command_name
        command.__doc__ = "Run the Redis command %s (https://redis.io/commands/%s)." % (
            command_name.upper(),
            command_name,
        )
        return command

    def _call_command(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run the command ``name``: existence check for modifiers, then its ``_call_`` method."""
        obj = getattr(self, "_instance", self)
        if name in self.available_modifiers and obj._pk and not obj.connected:
            obj.connect()
        meth = getattr(self, "_call_" + name, self._traverse_command)
        return meth(name, *args, **kwargs)

    def _traverse_command(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the redis-py method ``name`` with the key first, then ``post_command``."""
        if name not in self.available_commands:
            raise AttributeError(
                "%s is not an available command for %s (%s): use one of %s"
                % (name, type(self).__name__, self._command_owner_label(), ", ".join(sorted(self.available_commands)))
            )
        if "_limpyd_atomic" in self.__dict__ and name in self.available_modifiers:
            return self.post_command(sender=self, name=name, result=_atomic.modify(
                self, self._instance.pk.get(), [self.name], name, (self.key,) + args, kwargs,
                self.__dict__["_limpyd_atomic"]), args=args, kwargs=kwargs)
        connection = self.connection
        key = self.key  # may allocate the pk: before the command is marked to be queued
        pending = self.__dict__.pop("_limpyd_pending", None)
        if pending is not None and defer_next(connection, on_reply=self._pending_reply(pending, name, args, kwargs)):
            getattr(connection, name)(key, *args, **kwargs)
            return pending
        if self.__dict__.get("_limpyd_fresh_read") and defer_next(
            connection, on_reply=self._fresh_read_reply(name, args, kwargs), is_write=False
        ):
            getattr(connection, name)(key, *args, **kwargs)
            return None
        result = getattr(connection, name)(key, *args, **kwargs)
        return self.post_command(sender=self, name=name, result=result, args=args, kwargs=kwargs)

    def _command_owner_label(self) -> str:
        """Return what runs the command, for error messages: ``field Model.name`` or ``model Model``."""
        if isinstance(self, RedisField):
            return "field %s" % field_label(self)
        return "model %s" % type(self).__name__

    def _fresh_read_reply(self, name: str, args: Any, kwargs: Any) -> Callable[[Any], None]:
        """Return the callback checking that a queued read of a just-allocated pk found nothing."""

        def on_reply(reply: Any) -> None:
            if isinstance(reply, Exception):
                raise reply
            reply = self.post_command(sender=self, name=name, result=reply, args=args, kwargs=kwargs)
            check_fresh_reply(self, reply)

        return on_reply

    def _pending_reply(self, pending: Pending, name: str, args: Any, kwargs: Any) -> Callable[[Any], None]:
        """Return the callback giving ``pending`` the (post-processed) reply of a queued command."""
        return pending.reply_handler(
            lambda reply: self.post_command(sender=self, name=name, result=reply, args=args, kwargs=kwargs)
        )

    def post_command(self, sender: Any, name: str, result: Any, args: Any, kwargs: Any) -> Any:
        """Return the result of a command (hook: its return value replaces the result)."""
        return result

    @classmethod
    def get_connection(cls) -> Any:
        """Return the Redis client of the model's database."""
        return cls.database.connection

    @property
    def connection(self) -> Any:
        """Return the Redis client, re-read at each call."""
        return self.get_connection()


class RedisField(RedisProxyCommand):
    """Base of every field: options, binding to a model and an instance, copy, key."""

    _creation_order = 0  # class-wide counter; each field takes the next value

    proxy_getter: Optional[str] = None
    proxy_setter: Optional[str] = None
    unique = False
    _unique_supported = True
    _field_parts = 1
    default_indexes: Optional[list] = None
    _commands_to_proxy: Dict[str, Any] = {}
    _copy_conf: Dict[str, list] = {
        "args": [],
        "kwargs": ["lockable", "default", "indexable", "unique", ("indexes", "index_classes")],
        "attrs": ["name", "_instance", "_model"],
    }
    available_getters = {"expire", "expireat", "pexpire", "pexpireat", "ttl", "pttl", "persist"}
    available_modifiers: Set[str] = set()


    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lockable = kwargs.get("lockable", True)
        if "default" in kwargs:
            self.default = kwargs["default"]
        self.indexable = kwargs.get("indexable", False)
        self.unique = kwargs.get("unique", False)
        if self.unique:
            if not self._unique_supported:
                raise ImplementationError("%s field cannot be unique" % type(self).__name__)
            if hasattr(self, "default"):
                raise ImplementationError('Cannot set "default" and "unique" together!')
            self.indexable = True
        self.index_classes = list(kwargs.get("indexes") or [])
        if self.index_classes and not self.indexable:
            raise ImplementationError("Cannot pass indexes if not indexable")
        RedisField._creation_order += 1
        self._creation_order = RedisField._creation_order

    # ------------------------------------------------------------------ binding

    def _attach_to_model(self, model: type) -> None:
        """Bind this field to ``model`` (override point; must not read the name or Redis)."""
        self._model = model

    def _attach_to_instance(self, instance: Any) -> None:
        """Bind this field to ``instance`` (override point; must not read the name, pk or Redis)."""
        self._instance = instance
        self.lockable = self.lockable and instance.lockable

    @property
    def attached_to_model(self) -> bool:
        """Return whether the field is a model-level field."""
        return bool(getattr(self, "_model", None)) and not hasattr(self, "_instance")

    @property
    def attached_to_instance(self) -> bool:
        """Return whether the field is bound to an instance."""
        return bool(getattr(self, "_instance", None))

    def __copy__(self) -> "RedisField":
        args = [getattr(self, name) for name in self._copy_conf["args"]]
        kwargs = {}
        for entry in self._copy_conf["kwargs"]:
            kwarg, attr = entry if isinstance(entry, tuple) else (entry, entry)
            if hasattr(self, attr):
                kwargs[kwarg] = getattr(self, attr)
        new_copy = type(self)(*args, **kwargs)
        for attr in self._copy_conf["attrs"]:
            if hasattr(self, attr):
                setattr(new_copy, attr, getattr(self, attr))
        return new_copy

    def __repr__(self) -> str:
        model = getattr(self, "_model", None)
        if model is None:
            return object.__repr__(self)
        return "%s (model=%s, name=%s)>" % (object.__repr__(self)[:-1], model.__name__, getattr(self, "name", None))

    # ------------------------------------------------------------------ Redis access

    @property
    def key(self) -> str:
        """Return the Redis key of this field for its instance: ``N:<pk>:<name>``."""
        return make_key(self._instance._name, self._instance.pk.get(), self.name)

    @property
    def database(self) -> Any:
        """Return the database of the field's model."""
        return self._model.database

    @property
    def connection(self) -> Any:
        """Return the Redis client of the field's model (re-read at each call)."""
        return self._model.get_connection()

    @property
    def sort_wildcard(self) -> str:
        """Return the ``SORT ... BY`` pattern for this field: ``N:*:<name>``."""
        return make_key(self._model._name, "*", self.name)

    def make_key(self, *args: Any) -> str:
        """Return the Redis key made of ``args`` joined by ``:``."""
        return make_key(*args)

    def proxy_get(self) -> Any:
        """Return the value of the field, read with its ``proxy_getter`` command."""
        return getattr(self, self.proxy_getter)()

    def proxy_set(self, value: Any) -> Any:
        """Write ``value`` with the ``proxy_setter`` command (lists are splatted, dicts as kwargs)."""
        setter = getattr(self, self.proxy_setter)
        if isinstance(value, (list, tuple, set)):
            return setter(*value)
        if isinstance(value, dict):
            return setter(**value)
        return setter(value)

    def from_python(self, value: Any) -> Any:
        """Return ``value`` as indexes see it (bytes decoded)."""
        return normalize(value)

    def exists(self) -> bool:
        """Return whether the field's key exists in Redis (``False`` for a deleted instance)."""
        try:
            key = self.key
        except DoesNotExist:
            return False
        return bool(self.connection.exists(key))

    def delete(self) -> Any:
        """Delete the field's value (and its index entries)."""
        return self._call_command("delete")

    def post_command(self, sender: Any, name: str, result: Any, args: Any, kwargs: Any) -> Any:
        """Delegate to the instance's ``post_command`` and return its result."""
        return self._instance.post_command(sender=self, name=name, result=result, args=args, kwargs=kwargs)

    def get_for_instance(self, pk: Any) -> "RedisField":
        """Return this field bound to a lazy instance of pk ``pk`` (no Redis command)."""
        return self._model.lazy_connect(pk).get_field(self.name)

    def get_default_indexes(self) -> Optional[list]:
        """Return the index classes to use when none are declared (field class, model, database)."""
        if type(self).default_indexes is not None:
            return type(self).default_indexes
        model = getattr(self, "_model", None)
        if model is not None:
            return model.get_default_indexes()
        return None

    # ------------------------------------------------------------------ indexes

    @cached_property
    def _indexes(self) -> list:
        """Return the index objects of this field (shared by the model field and its instances)."""
        if hasattr(self, "_instance"):
            return self._model.get_field(self.name)._indexes
        if not self.indexable:
            return []
        if not self.index_classes:
            raise ImplementationError("%s field is indexable but has no indexes attached" % type(self).__name__)
        return [index_class(field=self) for index_class in self.index_classes]

    def get_index(self, index_class: Any = NotProvided, key: Any = NotProvided, prefix: Any = NotProvided) -> Any:
        """Return the only index of this field matching the given class, key and prefix."""
        indexes = [
            index
            for index in self._indexes
            if (index_class is NotProvided or isinstance(index, index_class))
            and (key is NotProvided or index.key == key)
            and (prefix is NotProvided or index.prefix == prefix)
        ]
        if len(indexes) == 1:
            return indexes[0]
        if indexes:
            raise ValueError("More than one index matching filters")
        raise ValueError("No indexes matching filters")

    def _index_parts(self, values: Any) -> list:
        """Return the index parts of ``values``: ``[(value,), ...]`` (HashField: ``(key, value)``)."""
        return [(value,) for value in values]

    def _filter_indexes(self, only_index: Any = None) -> list:
        """Return the indexes to maintain: all, or only the one matching ``only_index``."""
        if only_index is None:
            return self._indexes
        return [self.get_index(index_class=type(only_index), key=only_index.key, prefix=only_index.prefix)]

    def _index(self, values: Any, only_index: Any = None) -> None:
        """Add the instance pk to the indexes for each of ``values``."""
        pk = self._instance.pk.get()
        indexes = self._filter_indexes(only_index)
        unique_index = self.get_unique_index() if self.unique else None
        for parts in self._index_parts(values):
            if parts[-1] is None:
                continue
            for index in indexes:
                index.add(pk, *parts, check_uniqueness=index is unique_index)

    def _deindex(self, values: Any, only_index: Any = None) -> None:
        """Remove the instance pk from the indexes for each of ``values``."""
        pk = self._instance.pk.get()
        indexes = self._filter_indexes(only_index)
        for parts in self._index_parts(values):
            if parts[-1] is None:
                continue
            for index in indexes:
                index.remove(pk, *parts)

    def _stored_values(self) -> Any:
        """Return the values currently stored, read through a lazy instance (1 command)."""
        return self.get_for_instance(self._instance.pk.get()).proxy_get()

    def get_unique_index(self) -> Any:
        """Return the first index able to check the uniqueness of this unique field."""
        assert self.unique, "Field not unique"
        for index in self._indexes:
            if index.handle_uniqueness:
                return index
        raise ImplementationError(
            "Field %s.%s is unique but has no indexes capable of handling uniqueness"
            % (self._model.__name__, self.name)
        )

    @property
    def _instance_pk(self) -> Any:
        """Return the instance's pk, or ``None`` if it has none (deleted, or a PKField not set)."""
        try:
            return self._instance.pk.get()
        except (ImplementationError, DoesNotExist):
            return None

    def _recover_indexes(self, error: BaseException) -> None:
        """Undo the index changes of a failed write (its error is ``error``).

        A known failure (uniqueness, a refused command) rolls back what was (de)indexed. After a
        lost connection the write may have happened or not: the entries touched are then made to
        match the value actually stored, read again under the field lock on a fresh connection.
        An instance being created is cleaned whole by its creation instead.
        """
        if not is_unknown_outcome(error):
            self._rollback_indexes()
            return
        try:
            with_retries(self._reconcile_indexes)
        except UNKNOWN_OUTCOME:
            pass  # the server is unreachable: the caller gets the connection error

    def _touched_index_parts(self) -> list:
        """Return the index parts (de)indexed by this thread for this instance since the last reset."""
        pk = self._instance.pk.get()
        touched: list = []
        for index in self._indexes:
            cache = index._get_rollback_cache(pk)
            for parts in cache["indexed_values"] | cache["deindexed_values"]:
                if parts not in touched:
                    touched.append(parts)
        return touched

    def _reconcile_indexes(self) -> None:
        """Make the index entries this operation touched match the stored value (under the field lock)."""
        touched = self._touched_index_parts()
        if not touched:
            return
        with FieldLock(self):
            stored = self._stored_values()
            if stored is None or isinstance(stored, (list, set, dict, tuple)) and not stored:
                stored_parts = set()
            else:
                stored_parts = {
                    tuple(str(normalize(part)) for part in parts)
                    for parts in self._index_parts(stored if isinstance(stored, (list, set, dict, tuple)) else [stored])
                }
            pk = self._instance.pk.get()
            kept = [parts for parts in touched if tuple(str(normalize(part)) for part in parts) in stored_parts]
            # removals first: a range index holds one member per pk, which an addition replaces
            for parts in touched:
                if parts not in kept:
                    for index in self._indexes:
                        index.remove(pk, *parts)
            for parts in kept:
                for index in self._indexes:
                    index.add(pk, *parts, check_uniqueness=False)

    def _rollback_indexes(self) -> None:
        """Undo the index changes recorded since the last reset of the rollback caches."""
        pk = self._instance.pk.get()
        for index in self._indexes:
            index._rollback(pk)

    def _reset_indexes_rollback_caches(self, pk: Any) -> None:
        """Forget the index changes recorded for ``pk``."""
        for index in self._indexes:
            index._reset_rollback_cache(pk)

    def _check_model_level(self, method: str) -> None:
        assert self.indexable, "Field not indexable"
        assert self.attached_to_model, "`%s` can only be called on a field attached to the model" % method

    def clear_indexes(self, chunk_size: int = 1000, aggressive: bool = False) -> None:
        """Remove every index entry of this model field."""
        self._check_model_level("rebuild_indexes")
        for index in self._indexes:
            index.clear(chunk_size=chunk_size, aggressive=aggressive)

    def rebuild_indexes(self, chunk_size: int = 1000, aggressive_clear: bool = False) -> None:
        """Clear then rebuild every index of this model field from the stored values."""
        self._check_model_level("rebuild_indexes")
        for index in self._indexes:
            index.rebuild(chunk_size=chunk_size, aggressive_clear=aggressive_clear)

    # ------------------------------------------------------------------ commands

    def _call_command(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``name``; a modifier of an indexable field runs under the field lock, with rollback.

        Such a modifier runs in a write-behind batch (``limpyd._batch``): same commands, same
        order, fewer round trips. Its final write is queued too when nobody waits for its result
        before the batch is sent: when this call opened the batch (the result is read after
        sending it), or when the caller said it drops the result (:meth:`_drop_next_result`).
        """
        drop_result = self.__dict__.pop("_limpyd_drop_result", False)
        if self.indexable and name in self.available_modifiers and _atomic.atomic_enabled(self._model) \
                and not _atomic.in_pipeline(self._model):
            return self._call_atomic(name, *args, **kwargs)
        if not (self.indexable and name in self.available_modifiers):
            if drop_result:
                batch = current_batch(self._model.database)
                if batch is not None:
                    batch.owners.add(id(self))
                    try:
                        return super()._call_command(name, *args, **kwargs)
                    finally:
                        batch.owners.discard(id(self))
            return super()._call_command(name, *args, **kwargs)
        instance = getattr(self, "_instance", self)
        scope = batch_scope(self._model.database)
        try:
            with scope as batch:
                owner = batch is not None and (scope.opened or drop_result)
                if owner:
                    batch.owners.add(id(self))
                try:
                    with FieldLock(self):
                        result = super()._call_command(name, *args, **kwargs)
                finally:
                    if owner:
                        batch.owners.discard(id(self))
            return resolve(result) if scope.opened else result
        except BaseException as error:
            if instance.connected and not instance.__dict__.get("_limpyd_creating"):
                self._recover_indexes(error)
            raise
        finally:
            if instance.connected:
                self._reset_indexes_rollback_caches(self._instance_pk)

    def _call_atomic(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run the modifier ``name`` as one call of the atomic-writes script (see limpyd._atomic).

        The command's own method checks and shapes the arguments as usual; its reads, index
        changes and locks are left to the script, which runs the command and maintains the
        indexes from what it changed. A lazy instance is checked inside the script.
        """
        instance = self._instance
        check = bool(instance._pk) and not instance.connected
        self.__dict__["_limpyd_atomic"] = check
        try:
            meth = getattr(self, "_call_" + name, self._traverse_command)
            result = meth(name, *args, **kwargs)
        except DoesNotExist:
            if check:
                instance._pk = None
            raise
        finally:
            self.__dict__.pop("_limpyd_atomic", None)
        if check:
            instance._connected = True
        return result

    def _atomic_capture(self) -> bool:
        """Return whether a modifier runs as a script call (its reads and index changes are skipped)."""
        return "_limpyd_atomic" in self.__dict__

    def _drop_next_result(self) -> None:
        """Say that the result of the next command of this field is dropped (it may be queued)."""
        self.__dict__["_limpyd_drop_result"] = True

    def _has_default_post_command(self) -> bool:
        """Return whether no ``post_command`` hook is overridden (on the field or its instance).

        Queued commands run their hook when the batch is sent: with a hook of its own, a model
        keeps the one-by-one timing (its hook runs while the field lock is still held).
        """
        instance = getattr(self, "_instance", None)
        return type(self).post_command is RedisField.post_command and (
            instance is None or type(instance).post_command is RedisProxyCommand.post_command
        )

    def _write_command(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run a command whose result only goes back to the caller (queued when that is allowed)."""
        batch = current_batch(self._model.database)
        if batch is not None and id(self) in batch.owners and self._has_default_post_command():
            self.__dict__["_limpyd_pending"] = Pending(batch)
            try:
                return self._traverse_command(name, *args, **kwargs)
            finally:
                self.__dict__.pop("_limpyd_pending", None)
        return self._traverse_command(name, *args, **kwargs)

    def _is_fresh(self) -> bool:
        """Return whether the instance is being created on a pk it just allocated (fields empty)."""
        instance = getattr(self, "_instance", None)
        return bool(instance is not None and instance.__dict__.get("_limpyd_fresh") and instance.__dict__.get("_pk"))

    def _read_current(self) -> Any:
        """Return the stored value (``proxy_get``); on a fresh instance, queue the read and assume empty."""
        if "_limpyd_atomic" in self.__dict__:
            return None  # the atomic-writes script reads it
        instance = getattr(self, "_instance", None)
        if instance is not None and instance.__dict__.get("_limpyd_fresh") and not instance.__dict__.get("_pk"):
            instance.pk.get()  # the read would allocate the pk first anyway: do it now
        if not self._is_fresh() or not self._has_default_post_command():
            return self.proxy_get()
        batch = current_batch(self._model.database)
        if batch is None:
            return self.proxy_get()
        self.__dict__["_limpyd_fresh_read"] = True
        try:
            self.proxy_get()
        finally:
            self.__dict__.pop("_limpyd_fresh_read", None)
        return None

    def _reset(self, command: str, /, *args: Any, **kwargs: Any) -> Any:
        """Strategy R: deindex every stored value, run the command, index every stored value."""
        if self.indexable:
            self.deindex()
        result = self._write_command(command, *args, **kwargs)
        if self.indexable:
            self.index()
        return result

    def _reindex_from_result(self, command: str, /, *args: Any, **kwargs: Any) -> Any:
        """Strategy F: deindex the stored value, run the command, index the value it returned."""
        if self.indexable:
            self.deindex()
        result = self._traverse_command(command, *args, **kwargs)
        if self.indexable and result is not None:
            self.index(result)
        return result

    def _deny_if_indexable(self, command: str, /, *args: Any, **kwargs: Any) -> Any:
        """Strategy E: refuse expiring commands on indexable fields (their index would go stale)."""
        if self.indexable:
            raise ImplementationError("Indexable fields cannot be expired")
        return self._traverse_command(command, *args, **kwargs)

    def _del(self, command: str, /, *args: Any, **kwargs: Any) -> Any:
        """Strategy X: deindex every stored value, then run the (delete) command."""
        if self.indexable:
            self.deindex()
        return self._write_command(command, *args, **kwargs)

    _call_expire = _call_pexpire = _call_expireat = _call_pexpireat = _deny_if_indexable
    _call_delete = _del

    __hash__ = object.__hash__


class SingleValueField(RedisField):
    """Base of fields holding one value."""

    def _call_set(self, command: str, /, value: Any, *args: Any, **kwargs: Any) -> Any:
        """Strategy S: (de)index only when the value changes, uniqueness checked before writing."""
        check_value(self, value)
        if self.indexable:
            current = self._read_current()
            if normalize(current) != normalize(value):
                if current is not None:
                    self.deindex(current)
                if value is not None:
                    self.index(value)
        return self._write_command(command, value, *args, **kwargs)

    def _index_if_set(self, command: str, /, value: Any, *args: Any, **kwargs: Any) -> Any:
        """Strategy N: run the command, index ``value`` only if it was written."""
        check_value(self, value)
        result = self._traverse_command(command, value, *args, **kwargs)
        if self.indexable and result:
            self.index(value)
        return result

    def index(self, value: Any = None, only_index: Any = None) -> None:
        """Add the instance to the indexes for ``value`` (default: the stored value)."""
        assert self.indexable, "Field not indexable"
        if "_limpyd_atomic" in self.__dict__:
            return  # the atomic-writes script maintains the indexes
        if value is None:
            value = self._stored_values()
        self._index([value], only_index)

    def deindex(self, value: Any = None, only_index: Any = None) -> None:
        """Remove the instance from the indexes for ``value`` (default: the stored value)."""
        assert self.indexable, "Field not indexable"
        if "_limpyd_atomic" in self.__dict__:
            return  # the atomic-writes script maintains the indexes
        if value is None:
            value = self._stored_values()
        self._deindex([value], only_index)

    def check_creation_value(self, value: Any) -> None:
        """Raise ``DataError`` if ``value``, given to the model's constructor, cannot be stored."""
        check_value(self, value)

    def check_uniqueness(self, value: Any) -> None:
        """Raise ``UniquenessError`` if ``value`` is taken (for a unique field; no pk allocated)."""
        if not self.unique or value is None:
            return
        self.get_unique_index().check_uniqueness(self._instance._pk, value)


class StringField(SingleValueField):
    """A Redis string ``N:<pk>:<name>``."""

    proxy_getter = "get"
    proxy_setter = "set"
    available_getters = RedisField.available_getters | {
        "get", "getbit", "getrange", "strlen", "bitcount", "bitpos",
    }
    available_modifiers = {
        "delete", "getset", "set", "append", "decr", "decrby", "incr", "incrby", "incrbyfloat",
        "setbit", "setnx", "setrange", "setex", "psetex",
    }

    def _call_set(self, command: str, /, value: Any, ex: Any = None, px: Any = None, nx: bool = False,
                  xx: bool = False, **kwargs: Any) -> Any:
        """Set the value (``SET key value [EX|PX]``); ``nx``/``xx`` are not supported by limpyd."""
        if kwargs:
            raise TypeError(
                "%s.set() got unexpected keyword arguments %s: only value, ex and px are accepted"
                % (type(self).__name__, ", ".join(sorted(kwargs)))
            )
        for flag, given in (("nx", nx), ("xx", xx)):
            if given:
                raise LimpydException("%s argument to SET is not supported by limpyd" % flag)
        options = {}
        if ex is not None or px is not None:
            if self.indexable:
                raise ImplementationError("Indexable fields cannot be expired")
            options = {"ex": ex, "px": px}
        return super()._call_set(command, value, **options)

    _call_getset = SingleValueField._call_set
    _call_setnx = SingleValueField._index_if_set
    _call_append = _call_setrange = _call_setbit = RedisField._reset
    _call_incr = _call_incrby = _call_decr = _call_decrby = _call_incrbyfloat = RedisField._reindex_from_result
    _call_setex = _call_psetex = RedisField._deny_if_indexable


class InstanceHashField(SingleValueField):
    """A field stored as the entry ``<name>`` of the instance hash ``N:<pk>:hash``."""

    proxy_getter = "hget"
    proxy_setter = "hset"
    available_getters = {"hget"}
    available_modifiers = {"hset", "hsetnx", "hincrby", "hincrbyfloat", "hdel"}

    @property
    def key(self) -> str:
        """Return the key of the instance hash: ``N:<pk>:hash``."""
        return self._instance.key

    @property
    def sort_wildcard(self) -> str:
        """Return the ``SORT ... BY`` pattern for this field: ``N:*:hash-><name>``."""
        return "%s->%s" % (self._model.sort_wildcard(), self.name)

    def _traverse_command(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the redis-py hash command ``name`` on the instance hash, the field name first."""
        return super()._traverse_command(name, self.name, *args, **kwargs)

    _call_hset = SingleValueField._call_set
    _call_hsetnx = SingleValueField._index_if_set
    _call_hincrby = _call_hincrbyfloat = RedisField._reindex_from_result
    _call_hdel = RedisField._del

    def delete(self) -> Any:
        """Remove this entry from the instance hash (and its index entries)."""
        return self._call_command("hdel")

    def hexists(self) -> bool:
        """Return whether the entry exists in the instance hash (``False`` for a deleted instance)."""
        try:
            key = self.key
        except DoesNotExist:
            return False
        return bool(self.connection.hexists(key, self.name))

    exists = hexists


class PKField(SingleValueField):
    """The primary key: stored nowhere but in ``N:collection`` (and ``N:max_pk`` when automatic)."""

    proxy_getter = "get"
    proxy_setter = "set"
    name = "pk"
    indexable = False
    unique = True
    _auto_increment = False
    _auto_added = False
    _set = False
    available_getters = {"get"}
    available_modifiers = {"set"}
    _copy_conf = dict(
        RedisField._copy_conf, attrs=RedisField._copy_conf["attrs"] + ["_auto_increment", "_auto_added"]
    )

    #: key parts that follow the model name in keys of the model itself: a pk equal to one of them
    #: (or to a field name) would share keys with the collection, counter, locks or indexes
    reserved_pks = frozenset(("collection", "max_pk", "lock-for-update", "__index__", "__collection__"))

    def normalize(self, value: Any) -> str:
        """Return ``value`` as a pk (``str``; UTF-8 ``bytes`` are decoded, as values are)."""
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return str(value)

    def _model_label(self) -> str:
        model = getattr(self, "_model", None)
        return model.__name__ if model is not None else "<no model>"

    def check_new_pk(self, value: Any) -> None:
        """Raise ``ValueError`` if ``value`` cannot be the pk of a new instance.

        Refused: what is not a ``str``, an ``int`` or UTF-8 ``bytes`` (``bool`` and other objects would
        be stored as their ``str()``, which no later lookup with the same object finds reliably), the
        empty string, and a pk whose first ``:``-separated part is a field name of the
        model or a reserved key part (``reserved_pks``): its keys would be those of an index, the
        collection, the pk counter or a lock of the model.
        """
        if type(self).normalize is PKField.normalize and (
            isinstance(value, bool) or not isinstance(value, (str, int, bytes))
        ) or (
            isinstance(value, bytes) and self.normalize(value) == str(value)
        ):
            raise ValueError(
                "Invalid pk %r (of type %s) for %s: a pk is a str, an int or UTF-8 bytes. Pass str(value) "
                "if that text is really the pk you want." % (value, type(value).__name__, self._model_label())
            )
        pk = self.normalize(value)
        if pk == "":
            raise ValueError("Invalid pk '' for %s: a pk cannot be empty." % self._model_label())
        head = pk.split(":", 1)[0]
        model = getattr(self, "_model", None)
        if head in self.reserved_pks or (model is not None and head in model._fields):
            raise ValueError(
                "Invalid pk %r for %s: %r is %s, so the keys of this instance would collide with the "
                "model's own keys (%s). Choose another pk (e.g. prefix it: 'id-%s')."
                % (pk, self._model_label(), head,
                   "a field name of the model" if head not in self.reserved_pks else "a reserved key part",
                   make_key(model._name if model is not None else "<model>", head, "..."), pk)
            )

    @property
    def collection_key(self) -> str:
        """Return the key of the set of all pks: ``N:collection``."""
        return make_key(self._model._name, "collection")

    def _validate(self, value: Any) -> str:
        """Return the normalized ``value`` if it can be used as a new pk."""
        if value is None:
            raise ValueError('The pk for %s is not "auto-increment", you must fill it' % self._model.__name__)
        self.check_new_pk(value)
        value = self.normalize(value)
        if self.exists(value):
            raise UniquenessError("PKField %s already exists for model %s)" % (value, self._instance.__class__))
        return value

    def set(self, value: Any) -> int:
        """Set the pk of a new instance: validate, write the defaults, add it to the collection."""
        if self._set:
            raise ValueError("A primary key cannot be updated")
        value = self._validate(value)
        self._instance._set_pk(value)
        self._set = True
        connection = self.connection
        defer_next(connection)  # nobody reads the reply: sent with the next command
        connection.sadd(self.collection_key, value)
        return 1

    def get(self) -> str:
        """Return the pk of the instance, allocating it first for a new auto-pk instance."""
        instance = getattr(self, "_instance", None)
        if instance is None:
            raise ImplementationError("Impossible to get the PK of an unbound field")
        try:
            pk = instance._pk
        except AttributeError:
            instance._connected = False
            raise DoesNotExist("The current object doesn't exists anymore") from None
        if not pk:
            self.set(None)
            pk = instance._pk
        return self.normalize(pk)

    def exists(self, value: Any = None) -> bool:
        """Return whether the pk ``value`` (default: this instance's) is in the collection."""
        try:
            if value is None:
                if getattr(self, "_instance", None) is None:
                    return False
                value = self.get()
        except (DoesNotExist, AttributeError):
            return False
        return bool(self.connection.sismember(self.collection_key, value))

    def collection(self) -> Set[str]:
        """Return the set of all pks of the model (``SMEMBERS N:collection``)."""
        return self.connection.smembers(self.collection_key)

    def delete(self) -> Any:
        """Refuse: a pk is removed by deleting the instance."""
        raise ImplementationError("PKField cannot be deleted directly.")


class AutoPKField(PKField):
    """A pk allocated from the ``N:max_pk`` counter: ``"1"``, ``"2"``, ..."""

    _auto_increment = True

    def _validate(self, value: Any) -> str:
        """Return a newly allocated pk (``INCRBY N:max_pk 1``); refuse a given one."""
        if value is not None:
            raise ValueError('The pk for %s is "auto-increment", you must not fill it' % self._model.__name__)
        return self.normalize(self.connection.incr(make_key(self._model._name, "max_pk")))


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
        """Return the redis-py ``*scan_iter`` generator over the field's key."""
        assert self.scannable, "Field is not scannable"
        assert not command.endswith("_iter"), "Use %s instead of %s" % (command[:-5], command)
        return self._traverse_command(command + "_iter", match=match, count=count)

    def index(self, values: Any = None, only_index: Any = None) -> None:
        """Add the instance to the indexes for each of ``values`` (default: the stored ones)."""
        assert self.indexable, "Field not indexable"
        if "_limpyd_atomic" in self.__dict__:
            return  # the atomic-writes script maintains the indexes
        if values is None:
            values = self._stored_values()
        self._index(values, only_index)

    def deindex(self, values: Any = None, only_index: Any = None) -> None:
        """Remove the instance from the indexes for each of ``values`` (default: the stored ones)."""
        assert self.indexable, "Field not indexable"
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
        "scard", "sismember", "smembers", "srandmember", "sscan", "sscan_iter", "sort",
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
        "lindex", "llen", "lrange", "lrank", "lcontains", "lcount", "sort",
    }
    available_modifiers = {
        "delete", "linsert", "lpop", "lpush", "lpushx", "lrem", "rpop", "rpush", "rpushx", "lset", "ltrim",
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
        "zcard", "zcount", "zrange", "zrangebyscore", "zrank", "zrevrange", "zrevrangebyscore", "zrevrank",
        "zscore", "zscan", "zscan_iter", "sort", "zlexcount", "zrangebylex", "zrevrangebylex",
    }
    available_modifiers = {
        "delete", "zadd", "zincrby", "zrem", "zremrangebyrank", "zremrangebyscore", "zremrangebylex",
        "zpopmin", "zpopmax",
    }

    _call_zrem = MultiValuesField._rem
    _call_zremrangebyrank = _call_zremrangebyscore = _call_zremrangebylex = RedisField._reset
    _call_zscan = _call_zscan_iter = MultiValuesField._scan

    def check_creation_value(self, value: Any) -> None:
        """Raise ``DataError`` unless ``value`` is a ``{member: score}`` dict Redis can store."""
        if not isinstance(value, dict):
            raise DataError(
                "Invalid value %r for %s: a SortedSetField takes a {member: score} dict." % (value, field_label(self))
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
        "hget", "hgetall", "hmget", "hkeys", "hvals", "hlen", "hscan", "hscan_iter", "hstrlen",
    }
    available_modifiers = {"delete", "hdel", "hmset", "hsetnx", "hset", "hincrby", "hincrbyfloat"}

    _call_hscan = _call_hscan_iter = MultiValuesField._scan

    def check_creation_value(self, value: Any) -> None:
        """Raise ``DataError`` unless ``value`` is a ``{hash key: value}`` dict Redis can store."""
        if not isinstance(value, dict):
            raise DataError(
                "Invalid value %r for %s: a HashField takes a {hash key: value} dict." % (value, field_label(self))
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
            if self._is_fresh() and defer_next(
                connection, on_reply=lambda reply: check_fresh_reply(self, reply), is_write=False
            ):
                connection.hmget(self.key, keys)
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


class FieldLock(Lock):
    """The lock taken while an indexable field is modified: one per (model, field name).

    Re-entrant per thread (a nested operation on the same field only marks a sub-lock), and a
    no-op without any Redis command when the field is not lockable.
    """

    def __init__(self, field: RedisField, timeout: float = 5, sleep: float = 0.1, blocking: bool = True,
                 blocking_timeout: Optional[float] = None, thread_local: bool = True) -> None:
        self.field = field
        self.sub_lock_mode = False
        super().__init__(
            redis=field._model.get_connection(),
            name=make_key(field._model._name, "lock-for-update", field.name),
            timeout=timeout,
            sleep=sleep,
            blocking=blocking,
            blocking_timeout=blocking_timeout,
            thread_local=thread_local,
        )

    def _get_already_locked_by_model(self) -> bool:
        return self.field.name in self.field._model._thread_lock_storage().get(self.field._model._name, set())

    def _set_already_locked_by_model(self, value: bool) -> None:
        locked = self.field._model._thread_lock_storage().setdefault(self.field._model._name, set())
        if value:
            locked.add(self.field.name)
        else:
            locked.discard(self.field.name)

    already_locked_by_model = property(_get_already_locked_by_model, _set_already_locked_by_model)

    def do_acquire(self, token: Any) -> bool:
        """Send ``SET name token NX PX``; in a batch, with the next read, and checked on its reply."""
        instance = getattr(self.field, "_instance", None)
        relaxed = bool(instance is not None and self.field._is_fresh() and not self.field.unique)
        command = lock_command(self, token)  # the same arguments, in the same order, for every redis-py
        if defer_next(self.redis, guard=self, relaxed=relaxed):
            self.redis.execute_command(*command)
            return True
        return bool(self.redis.execute_command(*command)) or holds_lock(self, token)

    def _limpyd_wait_for_lock(self, token: Any) -> None:
        """Wait for the lock after a queued ``SET NX`` found it held elsewhere."""
        wait_for_lock(self, token)

    def do_release(self, expected_token: Any) -> None:
        """Run the release script; in a batch, queued and checked on its reply."""
        if defer_next(self.redis, on_reply=release_reply_checker(self, expected_token),
                      on_lost=lambda: self._release_now(expected_token)):
            self.redis.evalsha(self.lua_release.sha, 1, self.name, expected_token)
            return
        client = self.redis
        if type(client) is not redis.Redis:  # a pipeline or a custom client: redis-py's own release
            super().do_release(expected_token)
            return
        # sent without redis-py's retries: a release retried after a lost reply would find its
        # lock gone and raise LockNotOwnedError for a release that worked
        try:
            reply = send_commands(client, [(("EVALSHA", self.lua_release.sha, 1, self.name, expected_token), {})])[0]
        except UNKNOWN_OUTCOME:
            self._release_now(expected_token)  # ran or not: run it again, its outcome is then known
            return
        release_reply_checker(self, expected_token)(reply)

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        """Take the lock, unless this thread already holds it for this field (sub-lock)."""
        if not self.field.lockable:
            return True
        if self.already_locked_by_model:
            self.sub_lock_mode = True
            return True
        self.already_locked_by_model = True
        if len(args) < 4 and "token" not in kwargs:
            kwargs["token"] = os.urandom(16).hex()  # as unique as redis-py's uuid1, much cheaper
        try:
            return super().acquire(*args, **kwargs)
        except BaseException:
            self.already_locked_by_model = False
            raise

    #: per thread: the locks whose release waits for the end of an instance deletion
    _held = threading.local()

    def release(self) -> None:
        """Release the lock (nothing to do for a sub-lock or a non-lockable field).

        During an instance deletion (:func:`hold_released_locks`) the release waits for the end of
        the deletion, so no writer of these fields runs before the pk has left the collection.
        """
        if not self.field.lockable or self.sub_lock_mode:
            return
        held = getattr(FieldLock._held, "locks", None)
        if held is not None:
            held.append(self)
            return
        try:
            super().release()
        finally:
            self.already_locked_by_model = False

    def _release_now(self, token: Any) -> None:
        """Run the release script for ``token`` on the real client, retried on a lost connection."""
        client = real_client(self.redis)
        with_retries(lambda: self.lua_release(keys=[self.name], args=[token], client=client))

    def release_after_error(self) -> None:
        """Release the lock now, whatever happened: on a fresh connection, never raising "not owned".

        After a failed operation the lock may never have been taken (a lost ``SET NX``), or be
        held with our token: the release script deletes it only in the second case. A lost
        connection is retried; if the server stays unreachable the lock expires on its own.
        """
        try:
            if not self.field.lockable or self.sub_lock_mode:
                return
            token, self.local.token = self.local.token, None
            if token is None:
                return
            batch = current_batch(self.field._model.database)
            if batch is not None:
                try:
                    batch.flush()  # what the operation queued goes before the release, as usual
                except UNKNOWN_OUTCOME:
                    pass
                except Exception:  # noqa: S110 - the operation's own error is the one to raise
                    pass
            self._release_now(token)
        finally:
            if self.field.lockable and not self.sub_lock_mode:
                self.already_locked_by_model = False

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None:
            held = getattr(FieldLock._held, "locks", None)
            if held is None:
                try:
                    self.release_after_error()
                except UNKNOWN_OUTCOME:
                    pass  # the operation's error propagates; the lock expires after its timeout
                return
        try:
            super().__exit__(*exc)
        finally:
            if self.field.lockable and not self.sub_lock_mode and getattr(FieldLock._held, "locks", None) is None:
                self.already_locked_by_model = False


class hold_released_locks:  # noqa: N801 - a context manager
    """Keep the field locks released inside the block until its end (an instance deletion).

    A writer of a deleted instance's field takes the field lock then checks that the pk exists:
    holding every lock of the deletion until the pk has left the collection makes that check
    reliable. The releases are sent at the end, in the order of the acquisitions.
    """

    def __enter__(self) -> None:
        self.outer = getattr(FieldLock._held, "locks", None)
        if self.outer is None:
            FieldLock._held.locks = []

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.outer is not None:
            return  # an outer deletion releases them
        locks, FieldLock._held.locks = FieldLock._held.locks, None
        error: Optional[BaseException] = None
        for lock in locks:
            try:
                if exc_type is None and error is None:
                    lock.release()
                else:
                    lock.release_after_error()
            except BaseException as release_error:  # release the others anyway
                if error is None:
                    error = release_error
                lock.already_locked_by_model = False
        if error is not None and exc_type is None:
            raise error


def holds_lock(lock: Lock, token: Any) -> bool:
    """Return whether ``lock`` is held with ``token`` (a ``SET NX`` retried by redis-py after a lost reply).

    Only asked when a ``SET NX`` was refused, so it costs nothing in the usual case.
    """
    if isinstance(token, bytes):
        token = token.decode()
    return real_client(lock.redis).get(lock.name) == token
