"""``RedisField``: options, binding to a model and an instance, indexes, and the write strategies."""

from __future__ import annotations

from typing import Any, Dict, Optional, Set

from limpyd import _executors
from limpyd._batch import (
    Pending,
    batch_scope,
    current_batch,
    resolve,
)
from limpyd._executors import Executor
from limpyd._fields.lock import FieldLock
from limpyd._fields.proxy import RedisProxyCommand
from limpyd._recovery import UNKNOWN_OUTCOME, is_unknown_outcome, with_retries
from limpyd.exceptions import DoesNotExist, ImplementationError
from limpyd.utils import NotProvided, cached_property, make_key, normalize


class IndexRecovery:
    """The index recovery of one failed write of ``fields`` (see ``RedisField._recover_indexes``).

    A known failure (uniqueness, a refused command) is rolled back while the field locks are
    still held (:meth:`roll_back`, called inside the locked block): a writer waiting for the lock,
    or an instance deletion, then finds the indexes as they were. What could not be rolled back
    there (a lost connection: the write may have happened or not, or an error raised once the
    locks were released) is reconciled by :meth:`finish`, under the locks taken again.
    """

    def __init__(self, *fields: Any) -> None:
        self.fields = list(fields)
        self.done = False
        self.cut = False  # a rollback under the locks was cut by a lost connection

    def _applies(self) -> bool:
        instance = getattr(self.fields[0], "_instance", self.fields[0]) if self.fields else None
        return instance is not None and instance.connected and not instance.__dict__.get("_limpyd_creating")

    def roll_back(self, error: BaseException) -> None:
        """Undo the index changes of a known failure now, under the locks; else leave it to :meth:`finish`."""
        if self.done or is_unknown_outcome(error) or not self._applies():
            return
        try:
            for field in self.fields:
                field._rollback_indexes()
            batch = current_batch(self.fields[0]._model.database)
            if batch is not None:
                batch.flush()  # sent now, before the release, and its outcome known
        except UNKNOWN_OUTCOME:
            self.cut = True  # finish() reconciles
            return
        self.done = True

    def finish(self, error: BaseException) -> None:
        """Recover what :meth:`roll_back` did not (after the locks are released)."""
        if self.done or not self._applies():
            return
        self.done = True
        for field in self.fields:
            field._recover_indexes(error, reconcile=self.cut)


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

    # Per-field-object flags, kept in the field's ``__dict__`` only while they hold (read with
    # ``__dict__.get``/``in``; declared here, never given a class-level value):
    #: a modifier runs as an atomic-writes script call (:meth:`_call_atomic`); the value says
    #: whether the script checks that a lazy instance exists
    _limpyd_atomic: bool
    #: the ``Pending`` result of a write queued behind the next read (:meth:`_write_command`)
    _limpyd_pending: Any
    #: the result of the next command is dropped: it may be queued (:meth:`_drop_next_result`)
    _limpyd_drop_result: bool
    #: the read of a fresh instance's value is queued, its result assumed empty (:meth:`_read_current`)
    _limpyd_fresh_read: bool

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
        return "%s (model=%s, name=%s)>" % (
            object.__repr__(self)[:-1],
            model.__name__,
            getattr(self, "name", None),
        )

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
            raise ImplementationError(
                "%s field is indexable but has no indexes attached" % type(self).__name__
            )
        return [index_class(field=self) for index_class in self.index_classes]

    def get_index(
        self, index_class: Any = NotProvided, key: Any = NotProvided, prefix: Any = NotProvided
    ) -> Any:
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

    def _label(self) -> str:
        """Return ``module.Model.field`` for error messages (``<no model>`` when not attached)."""
        model = getattr(self, "_model", None)
        owner = "%s.%s" % (model.__module__, model.__qualname__) if model is not None else "<no model>"
        return "%s.%s" % (owner, getattr(self, "name", "<unnamed>"))

    def _require_indexable(self, method: str) -> None:
        """Raise ``ImplementationError`` naming ``method`` unless the field is indexable."""
        if not self.indexable:
            raise ImplementationError(
                "%s.%s(): the field is not indexable: declare it with indexable=True to index its values"
                % (self._label(), method)
            )

    def get_unique_index(self) -> Any:
        """Return the first index able to check the uniqueness of this unique field."""
        if not self.unique:
            raise ImplementationError(
                "%s.get_unique_index(): the field is not unique: declare it with unique=True" % self._label()
            )
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

    def _recover_indexes(self, error: BaseException, reconcile: bool = False) -> None:
        """Undo the index changes of a failed write (its error is ``error``).

        A known failure (uniqueness, a refused command) rolls back what was (de)indexed. After a
        lost connection the write may have happened or not: the entries touched are then made to
        match the value actually stored, read again under the field lock on a fresh connection.
        An instance being created is cleaned whole by its creation instead. ``reconcile``: skip
        the rollback (one was tried and cut) and reconcile at once.
        """
        if not reconcile and not is_unknown_outcome(error):
            try:
                self._rollback_indexes()
                return
            except UNKNOWN_OUTCOME:
                pass  # the rollback itself was cut (redis-py < 6 does not retry): reconcile instead
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
                    for parts in self._index_parts(
                        stored if isinstance(stored, (list, set, dict, tuple)) else [stored]
                    )
                }
            pk = self._instance.pk.get()
            kept = [
                parts for parts in touched if tuple(str(normalize(part)) for part in parts) in stored_parts
            ]
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
        """Raise ``ImplementationError`` unless ``method`` is called on an indexable model-level field."""
        self._require_indexable(method)
        if not self.attached_to_model:
            raise ImplementationError(
                "%s.%s() can only be called on a field attached to the model, not to an instance: "
                "call it on %s.get_field(%r)" % (self._label(), method, self._model.__name__, self.name)
            )

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
        """Run ``name`` with the executor ``limpyd._executors.for_field`` chooses for it."""
        instance = self.__dict__.get("_instance")
        if instance is not None and self.name in type(instance)._limpyd_claim_writes:
            if name in self.available_modifiers:  # a sharded model's unique value: claimed first
                from limpyd import _claims

                return _claims.field_command(
                    self, name, args, kwargs, lambda: self._run_command(name, *args, **kwargs)
                )
        return self._run_command(name, *args, **kwargs)

    def _run_command(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``name`` with its executor (see :meth:`_call_command`)."""
        drop_result = self.__dict__.pop("_limpyd_drop_result", False)
        executor = _executors.for_field(self, name)
        if executor is Executor.SCRIPT:
            return self._call_atomic(name, *args, **kwargs)
        if executor is Executor.IMMEDIATE:
            return self._call_immediate(name, drop_result, *args, **kwargs)
        return self._call_locked(name, drop_result, *args, **kwargs)

    def _call_immediate(self, name: str, drop_result: bool, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``name`` as it is built (a read, or a write of a field without index).

        Inside a write-behind batch, the write is queued when the caller said it drops the
        result (:meth:`_drop_next_result`).
        """
        if drop_result:
            batch = current_batch(self._model.database)
            if batch is not None:
                batch.owners.add(id(self))
                try:
                    return super()._call_command(name, *args, **kwargs)
                finally:
                    batch.owners.discard(id(self))
        return super()._call_command(name, *args, **kwargs)

    def _call_locked(self, name: str, drop_result: bool, /, *args: Any, **kwargs: Any) -> Any:
        """Run the modifier ``name`` of an indexable field under the field lock, with rollback.

        It runs in a write-behind batch (``limpyd._batch``; none in a user pipeline): same
        commands, same order, fewer round trips. Its final write is queued too when nobody waits
        for its result before the batch is sent: when this call opened the batch (the result is
        read after sending it), or when the caller said it drops the result.
        """
        instance = getattr(self, "_instance", self)
        scope = batch_scope(self._model.database)
        recovery = IndexRecovery(self)
        try:
            with scope as batch:
                owner = batch is not None and (scope.opened or drop_result)
                if owner:
                    batch.owners.add(id(self))
                try:
                    with FieldLock(self):
                        try:
                            result = super()._call_command(name, *args, **kwargs)
                        except BaseException as error:
                            recovery.roll_back(error)  # before the lock is released
                            raise
                finally:
                    if owner:
                        batch.owners.discard(id(self))
            return resolve(result) if scope.opened else result
        except BaseException as error:
            recovery.finish(error)
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

    def _lazy_write(self) -> bool:
        """Return whether a write on this field would first have to check that its instance exists."""
        instance = getattr(self, "_instance", None)
        return instance is not None and bool(instance.__dict__.get("_pk")) and not instance.connected

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
        return bool(
            instance is not None and instance.__dict__.get("_limpyd_fresh") and instance.__dict__.get("_pk")
        )

    def _read_current(self) -> Any:
        """Return the stored value (``proxy_get``); on a fresh instance, queue the read and assume empty."""
        if "_limpyd_atomic" in self.__dict__:
            return None  # the atomic-writes script reads it
        instance = getattr(self, "_instance", None)
        if (
            instance is not None
            and instance.__dict__.get("_limpyd_fresh")
            and not instance.__dict__.get("_pk")
        ):
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
