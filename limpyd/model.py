"""Models: the metaclass (registration, fields) and ``RedisModel``."""

from __future__ import annotations

import contextlib
import copy
import sys
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

from redis.exceptions import DataError

from limpyd import _atomic, _bulk, _claims, _executors, sharding
from limpyd._batch import batch_scope, later, take_assumed_existence
from limpyd._executors import Executor
from limpyd._fields.base import IndexRecovery
from limpyd._pool import direct, read_direct
from limpyd._recovery import UNKNOWN_OUTCOME, with_retries
from limpyd.collection import CollectionManager
from limpyd.database import RedisDatabase
from limpyd.exceptions import *  # noqa: F403 - redis-limpyd 2.x exposes them here
from limpyd.exceptions import BulkError, DoesNotExist, ImplementationError, UniquenessError
from limpyd.fields import *  # noqa: F403 - redis-limpyd 2.x exposes every field here
from limpyd.fields import (
    AutoPKField,
    FieldLock,
    InstanceHashField,
    MetaRedisProxy,
    MultiValuesField,
    PKField,
    RedisField,
    RedisProxyCommand,
    check_value,
    hold_released_locks,
    write_hash,
)
from limpyd.utils import make_key

__all__ = ["RedisModel"]


def _creation_source() -> Tuple[str, int]:
    """Return ``(filename, line)`` of the code running the ``class`` statement being built.

    Skips the ``__new__`` frames of metaclasses deriving from ``MetaRedisModel`` (user
    metaclasses calling ``super().__new__``) and of the temporary metaclasses of
    ``six.with_metaclass`` / ``future.utils.with_metaclass``.
    """
    frame = sys._getframe(2)  # 0: this function, 1: MetaRedisModel.__new__
    while frame is not None and frame.f_code.co_name == "__new__" and _is_metaclass_frame(frame):
        frame = frame.f_back
    if frame is None:  # pragma: no cover - only when called from C with no Python caller
        return ("<unknown>", 0)
    return (frame.f_code.co_filename, frame.f_lineno)


def _is_metaclass_frame(frame: Any) -> bool:
    """Return whether ``frame`` runs the ``__new__`` of a model metaclass or of a six/future shim."""
    code = frame.f_code
    if not code.co_argcount:
        return False
    first = frame.f_locals.get(code.co_varnames[0])
    if isinstance(first, type) and issubclass(first, MetaRedisModel):
        return True
    described = str(first)
    return "metaclass" in described and ("six." in described or "future." in described)


#: Names of the model's own attributes in 3.0: a field of one of these names would hide it (or be
#: hidden by it) and break the model later. Frozen on purpose: methods added after 3.0 lose to a
#: field of their name instead, so existing models keep working.
RESERVED_FIELD_NAMES = frozenset(
    (
        "DoesNotExist",
        "abstract",
        "available_commands",
        "available_getters",
        "available_modifiers",
        "collection",
        "collection_manager",
        "connect",
        "connected",
        "connection",
        "database",
        "default_indexes",
        "delete",
        "exists",
        "fields",
        "from_pks",
        "get",
        "get_class_field",
        "get_class_fields",
        "get_connection",
        "get_default_indexes",
        "get_field",
        "get_fields",
        "get_instance_field",
        "get_instance_fields",
        "get_or_connect",
        "has_field",
        "hdel",
        "hgetall",
        "hkeys",
        "hlen",
        "hmget",
        "hmset",
        "hvals",
        "instances",
        "key",
        "lazy_connect",
        "lockable",
        "make_key",
        "namespace",
        "pk",
        "post_command",
        "scan_keys",
        "scan_model_keys",
        "sort_wildcard",
        "use_database",
    )
)


def _check_field_name(model_name: str, name: str, field: Any) -> None:
    """Raise ``ImplementationError`` if the field ``name`` clashes with an attribute of ``RedisModel``."""
    if name not in RESERVED_FIELD_NAMES or (name == "pk" and isinstance(field, PKField)):
        return
    raise ImplementationError(
        "The field %s.%s (%s) clashes with the model attribute %r that limpyd itself uses (%s). Rename "
        "the field (e.g. %r)%s."
        % (
            model_name,
            name,
            type(field).__name__,
            name,
            "the primary key" if name == "pk" else "RedisModel.%s" % name,
            name + "_",
            "; a primary key named pk must be a PKField" if name == "pk" else "",
        )
    )


def _glob_escape(text: str) -> str:
    """Return ``text`` with the glob characters of ``SCAN MATCH`` escaped (``*?[]\\``)."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _forget_failed_model(model: Any) -> None:
    """Undo the registration of a model whose class creation failed, so a fixed definition can run.

    Removes it from its database's registry, and the relations its related fields registered
    (``database._relations``, docs/contrib.rst).
    """
    database = model.database
    if database._models.get(model._name) is model:
        del database._models[model._name]
    for relations in database._relations.values():
        relations[:] = [relation for relation in relations if relation[0] != model._name]


class _InstanceField:
    """The field ``name`` of an instance, made on first access (a copy of the model's field).

    Building every field of every instance up front was most of the cost of loading instances
    (``collection.instances()``, ``Model(pk)``) that read one field or none. The copy is then a
    plain attribute of the instance, so later accesses cost nothing. ``alias`` makes ``pk`` the same
    object as a pk field of another name.
    """

    __slots__ = ("name", "alias")

    def __init__(self, name: str, alias: Optional[str] = None) -> None:
        self.name = name
        self.alias = alias

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:  # on the class: the model-level field
            return owner.get_class_field(self.name)
        name = self.name
        field = instance.__dict__.get(name)
        if field is None:
            field = copy.copy(type(instance).get_class_field(name))
            field._attach_to_instance(instance)
            instance.__dict__[name] = field
        if self.alias is not None:
            instance.__dict__[self.alias] = field
        return field


class MetaRedisModel(MetaRedisProxy):
    """Build a model class: registration on its database, fields, primary key, indexes."""

    def __new__(mcs, name: str, bases: tuple, attrs: Dict[str, Any]) -> type:
        for attr_name, value in attrs.items():
            if isinstance(value, RedisField) and not attr_name.startswith("_"):
                _check_field_name(name, attr_name, value)
        cls = super().__new__(mcs, name, bases, attrs)

        cls.abstract = attrs.get("abstract", False)
        if not cls.abstract:
            database = getattr(cls, "database", None)
            if not isinstance(database, RedisDatabase):
                raise ImplementationError(
                    "You must define a database for the model %s: set `database = RedisDatabase(...)` "
                    "on it or on one of its bases (got %r)." % (name, database)
                )
            if not cls.namespace:
                cls.namespace = ""
            cls._name = make_key(cls.namespace, name.lower())
            cls._creation_source = _creation_source()
            registered = database._add_model(cls)
            if registered is not cls:
                return registered

        try:
            mcs._build_fields(cls, name, attrs)
        except BaseException:
            if not cls.abstract:
                _forget_failed_model(cls)
            raise
        return cls

    @staticmethod
    def _build_fields(cls: Any, name: str, attrs: Dict[str, Any]) -> None:
        """Copy the inherited fields, attach the own ones, add the pk, prepare the indexes."""
        fields = list(getattr(cls, "_fields", []))
        instancehash_fields = list(getattr(cls, "_instancehash_fields", []))

        own_fields = sorted(
            (
                (attr_name, value)
                for attr_name, value in attrs.items()
                if not attr_name.startswith("_") and isinstance(value, RedisField)
            ),
            key=lambda item: item[1]._creation_order,
        )
        for attr_name, field in own_fields:
            field.name = attr_name

        inherited_pk = getattr(cls, "_redis_attr_pk", None)
        own_pks = [field for _, field in own_fields if isinstance(field, PKField)]
        if own_pks:
            if len(own_pks) > 1 or (inherited_pk is not None and not inherited_pk._auto_added):
                raise ImplementationError(
                    "Only one PKField field is allowed on %s: remove the extra PKField "
                    "declarations (the pk is inherited from the base model when declared there)." % name
                )
            if inherited_pk is not None:
                fields.remove(inherited_pk.name)
                if inherited_pk.name in instancehash_fields:  # pragma: no cover - defensive
                    instancehash_fields.remove(inherited_pk.name)

        # every inherited field is copied, so a model and its subclasses never share field objects
        for field_name in fields:
            field = copy.copy(cls.get_class_field(field_name))
            field._attach_to_model(cls)
            setattr(cls, "_redis_attr_%s" % field_name, field)

        pk_field = None
        if own_pks:
            pk_field = own_pks[0]
        elif inherited_pk is not None:
            pk_field = cls.get_class_field(inherited_pk.name)
        else:
            pk_field = AutoPKField()
            pk_field._auto_added = True
            pk_field.name = "pk"
            own_fields.append(("pk", pk_field))

        for attr_name, field in own_fields:
            if attr_name in cls.__dict__:
                delattr(cls, attr_name)
            field._attach_to_model(cls)
            fields.append(attr_name)
            setattr(cls, "_redis_attr_%s" % attr_name, field)
            if isinstance(field, InstanceHashField):
                instancehash_fields.append(attr_name)
            if field.indexable and not field.index_classes:
                field.index_classes = list(field.get_default_indexes() or [])

        fields.remove(pk_field.name)
        fields.insert(0, pk_field.name)
        cls._fields = fields
        cls._instancehash_fields = instancehash_fields
        if pk_field.name != "pk":
            cls._redis_attr_pk = pk_field
        if not cls.abstract:  # abstract models have no instances: their class keeps no field names
            for field_name in fields:
                setattr(cls, field_name, _InstanceField(field_name))
            setattr(cls, "pk", _InstanceField(pk_field.name, alias="pk"))

        for field_name in fields[1:]:
            field = cls.get_class_field(field_name)
            for index_class in field.index_classes:
                index_class._field_model_ready(cls, field)

        multi_fields_indexes = []
        for field_name in fields:
            field = cls.get_class_field(field_name)
            for index in field._indexes:
                if not index.filter_single_field:
                    multi_fields_indexes.append(index)
        cls._multi_fields_index_for_filtering = multi_fields_indexes
        MetaRedisModel._read_expiry_settings(cls)
        _atomic.check_model(cls)
        # sharded models (docs/sharding.rst): the checked setting; shard classes for shards > 1
        cls._limpyd_shards = sharding.read_setting(cls)
        if cls._limpyd_shards > 1 or cls._limpyd_shard_models is not None:
            sharding.setup(cls)

    @staticmethod
    def _read_expiry_settings(cls: Any) -> None:
        """Resolve ``default_ttl`` / ``expiring`` (a field of the same name wins: no setting then)."""
        ttl = getattr(cls, "default_ttl", None)
        if isinstance(ttl, RedisField) or ttl is None:
            ttl = None
        elif isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
            raise ImplementationError(
                "%s.default_ttl = %r: give a number of seconds > 0, or None for instances that never "
                "expire." % (cls.__name__, ttl)
            )
        expiring = getattr(cls, "expiring", False)
        if isinstance(expiring, RedisField):
            expiring = False
        cls._limpyd_default_ttl = ttl
        cls._limpyd_expiring = bool(expiring) or ttl is not None


class RedisModel(RedisProxyCommand, metaclass=MetaRedisModel):
    """Base of every model: declare fields as class attributes, and a ``database``."""

    namespace: Optional[str] = None
    abstract = True
    lockable = True
    collection_manager = CollectionManager
    DoesNotExist = DoesNotExist
    default_indexes: Optional[list] = None

    available_getters = {"hmget", "hgetall", "hkeys", "hvals", "hlen"}
    available_modifiers = {"hmset", "hdel"}

    #: ``True``: each creation, indexable-field write and deletion is one server-side script call
    #: (``None``: the database's ``atomic_writes``); see docs/atomic-writes.rst
    atomic_writes: Optional[bool] = None
    #: seconds every new instance lives (``None``: forever); implies ``expiring``
    default_ttl: Optional[float] = None
    #: instances may be given a time to live (``expire_in``...): reads then skip the due ones
    expiring = False
    #: the number of slots the model spreads over (an int from 1 to 16384; inherited): its
    #: instances live in shard models, see docs/sharding.rst; 1 keeps the one-slot layout
    shards: int = 1

    # State the other layers read on a model class, declared here rather than set ad hoc:
    #: ``default_ttl`` once checked by the metaclass (read by the writes, ``limpyd._bulk``)
    _limpyd_default_ttl: Optional[float] = None
    #: whether reads skip the due instances (``expiring`` or a ``default_ttl``; read by
    #: ``limpyd._atomic`` and ``limpyd.reaper``), set by the metaclass on every model
    _limpyd_expiring: bool = False
    #: the 2.x ``_name`` (``<namespace>:<model>``) recorded by ``limpyd._cluster`` for each model
    #: class before a cluster renames it ``{<namespace>:<model>}`` (``None``: not recorded yet)
    _limpyd_plain_name: Optional[str] = None
    #: ``shards`` once checked by the metaclass, set on every model (``limpyd.sharding``)
    _limpyd_shards: int = 1
    #: the shard classes of a sharded model, shard k at index k: set on that model only, ``None``
    #: on every other model, shard classes included (``limpyd.sharding``)
    _limpyd_shard_models: Optional[Tuple[type, ...]] = None
    #: the number k of a shard class (``None`` on every other model, see ``limpyd.sharding``)
    _limpyd_shard: Optional[int] = None
    #: the unique fields whose values a sharded model claims across its shards, on the model and
    #: its shard classes (``()`` on every other model, see ``limpyd._claims``)
    _limpyd_claims: Tuple[str, ...] = ()
    #: the fields whose writes change a claim (the claimed ones, those of unique combinations)
    _limpyd_claim_writes: frozenset = frozenset()

    # Per-instance flags, kept in the instance ``__dict__`` only while they hold (read with
    # ``__dict__.get``; declared here, never given a class-level value):
    #: a creation (``__init__`` with values) is running: a failing field write leaves the index
    #: recovery to the creation's own (``limpyd._fields.base``)
    _limpyd_creating: bool
    #: the running creation allocates a new pk: the fields are known to be empty, so their reads
    #: are queued and assumed empty (``limpyd._fields.base``)
    _limpyd_fresh: bool
    #: the values written by the running creation, ``{field name: value}`` (TTL and atomic writes)
    _limpyd_written: Dict[str, Any]
    #: the pk a sharded model allocated for this new instance before choosing its shard: the
    #: shard's creation takes it instead of allocating one (``limpyd.sharding``)
    _limpyd_shard_pk: str

    _thread_locks = threading.local()

    # ------------------------------------------------------------------ construction

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lockable = type(self).lockable
        self._connected = False
        # the fields of the instance are made on first access (see _InstanceField)
        self._pk = None
        self.get_field = self.get_instance_field
        self.get_fields = self.get_instance_fields
        self._init_fields: set = set()

        if args and kwargs:
            raise ValueError("Cannot use args and kwargs to instanciate.")
        if len(args) > 1:
            raise ValueError(
                "%s() takes at most one positional argument, the pk to load, got %d: %r."
                % (type(self).__name__, len(args), args)
            )
        if args:
            # the model-level pk field: loading an instance makes none of its fields
            self._pk = type(self).get_class_field("pk").normalize(args[0])
            self.connect()
        elif kwargs:
            self._create(kwargs)

    def _create(self, kwargs: Dict[str, Any]) -> None:
        """Create a new instance from ``kwargs``: with the claims of its unique values when sharded."""
        if type(self)._limpyd_claims:
            _claims.create(self, kwargs, lambda: self._create_here(kwargs))
        else:
            self._create_here(kwargs)

    def _create_here(self, kwargs: Dict[str, Any]) -> None:
        """Create a new instance from ``kwargs`` (field name -> value): checks, pk, then fields.

        Nothing is written before every name and unique value has been checked, and those
        checks allocate no pk, so a rejected creation leaves Redis untouched.
        """
        pk_name = self.get_field("pk").name
        if "pk" in kwargs and pk_name != "pk" and pk_name in kwargs:
            raise ValueError("You cannot pass two values for the primary key (pk and %s)" % pk_name)
        values: Dict[str, Any] = {}
        pk_value: Any = None
        pk_given = False
        atomic = _executors.for_model(type(self)) is Executor.SCRIPT
        self._purge_due()
        # atomic writes check the model-level fields (the script writes; no instance field is needed)
        get_field = type(self).get_class_field if atomic else self.get_field
        for name, value in kwargs.items():
            if not self.has_field(name):
                raise ValueError("`%s` is not a valid field name for `%s`." % (name, type(self).__name__))
            field = get_field(name)
            if self._field_is_pk(name):
                pk_given, pk_value = True, value
                continue
            values[field.name] = value
            if value is None or (isinstance(value, (list, tuple, set, dict)) and not value):
                continue  # skipped at creation: nothing written for this field
            field.check_creation_value(value)
            if field.unique and not atomic:  # atomic writes check uniqueness inside their script
                if isinstance(field, MultiValuesField):
                    field.check_uniqueness(value.keys() if isinstance(value, dict) else value)
                else:
                    field.check_uniqueness(value)
        self._check_multi_fields_uniqueness(values)
        if atomic:
            self._create_atomic(values, pk_given, pk_value)
            return

        self._init_fields = set(values)
        self.__dict__["_limpyd_creating"] = True
        self.__dict__["_limpyd_written"] = {}
        try:
            with batch_scope(self.database):
                if pk_given:
                    self._init_fields.add(pk_name)
                    self.pk.set(pk_value)
                else:
                    # the pk the first write allocates is new: its fields are known to be empty
                    self._limpyd_fresh = True
                for field in self.fields:
                    if field.name not in values or field.name == pk_name:
                        continue
                    value = values[field.name]
                    if value is None or (isinstance(value, (list, tuple, set, dict)) and not value):
                        continue
                    self._limpyd_written[field.name] = value
                    field._drop_next_result()
                    field.proxy_set(value)
        except UniquenessError:
            self.__dict__.pop("_limpyd_fresh", None)
            self.__dict__.pop("_limpyd_creating", None)
            if self.__dict__.get("_pk"):
                self.delete()
            raise
        except BaseException:
            self.__dict__.pop("_limpyd_fresh", None)
            self.__dict__.pop("_limpyd_creating", None)
            if self.__dict__.get("_pk"):
                self._abort_creation()
            raise
        finally:
            self.__dict__.pop("_limpyd_fresh", None)
            self.__dict__.pop("_limpyd_creating", None)
            self.__dict__.pop("_limpyd_written", None)

    def _create_atomic(self, values: Dict[str, Any], pk_given: bool, pk_value: Any) -> None:
        """Create the instance with one call of the atomic-writes script (values already checked)."""
        model = type(self)
        pk_field = self.pk
        request: Dict[str, Any] = {"op": "create", "f": _atomic.creation_fields(model, values)}
        if pk_field._auto_increment:
            if pk_given and pk_value is not None:
                raise ValueError('The pk for %s is "auto-increment", you must not fill it' % model.__name__)
            if "_limpyd_shard_pk" in self.__dict__:  # a shard: the pk its sharded model allocated
                request["pk"] = self.__dict__.pop("_limpyd_shard_pk")
        else:
            if pk_value is None:
                raise ValueError('The pk for %s is not "auto-increment", you must fill it' % model.__name__)
            pk_field.check_new_pk(pk_value)
            request["pk"] = pk_field.normalize(pk_value)
        ttl = model._limpyd_default_ttl
        if ttl is not None:
            request["ttl"] = int(ttl * 1000)
        reply = _atomic.run(model, request)
        self._pk = reply[1]
        self._connected = True
        pk_field._set = True

    def _abort_creation(self) -> None:
        """Remove everything a failed creation may have written: a creation completes or leaves nothing.

        Whatever failed (a lost connection, a value refused by Redis), the index entries of the
        values given and of the values stored, the field keys and the collection entry of the
        new pk are removed, on a fresh connection, retried while the connection is lost. No lock
        is needed: every entry removed belongs to this pk, which no one else knows yet.
        """
        written = dict(self.__dict__.get("_limpyd_written") or {})
        pk = self._pk

        def clean() -> None:
            with batch_scope(self.database):
                keys = []
                for field in self.fields:
                    if isinstance(field, PKField):
                        continue
                    if field.indexable:
                        for value in (written.get(field.name), field.proxy_get()):
                            if value is not None and not (
                                isinstance(value, (list, tuple, set, dict)) and not value
                            ):
                                field.deindex(value)
                        for index in field._indexes:
                            index._reset_rollback_cache(pk)
                    keys.append(field.key)
                connection = self.connection
                connection.delete(*dict.fromkeys(keys))
                connection.srem(self.pk.collection_key, pk)

        try:
            with_retries(clean)
        except UNKNOWN_OUTCOME:
            pass  # unreachable server: the creation's own error propagates (see docs/failure-semantics.rst)
        self._connected = False

    def _check_multi_fields_uniqueness(self, values: Dict[str, Any]) -> None:
        """Check the unique multi-field indexes for the values given at creation."""
        unique_indexes = [
            index for index in self._multi_fields_index_for_filtering if getattr(index, "unique", False)
        ]
        if not unique_indexes or not values:
            return
        for index in unique_indexes:
            for combination in index.can_filter_fields([(name, None) for name in values]):
                index.check_uniqueness_at_init({name: values[name] for name in dict(combination)})

    # ------------------------------------------------------------------ class-level API

    @classmethod
    def get(cls, *args: Any, **kwargs: Any) -> "RedisModel":
        """Return the instance with the given pk, or the only one matching the filters."""
        if len(args) == 1:
            pk = args[0]
        elif args or not kwargs:
            raise ValueError("Invalid `get` usage with args %s and kwargs %s" % (args, kwargs))
        elif len(kwargs) == 1 and cls._field_is_pk(next(iter(kwargs))):
            pk = next(iter(kwargs.values()))
        else:
            collection = cls.collection(**kwargs).sort(by="nosort")
            count = len(collection)
            if count == 0:
                raise DoesNotExist("No object matching filter: %s" % kwargs)
            if count > 1:
                raise ValueError("More than one object matching filter: %s" % kwargs)
            try:
                pk = collection[0]
            except IndexError:
                raise DoesNotExist("No object matching filter: %s" % kwargs) from None
        return cls(pk)

    @classmethod
    def get_or_connect(cls, **kwargs: Any) -> Tuple["RedisModel", bool]:
        """Return ``(instance, created)``: the one matching ``kwargs``, or a new one made from them."""
        try:
            return cls.get(**kwargs), False
        except DoesNotExist:
            pass
        try:
            return cls(**kwargs), True
        except UniquenessError:  # created concurrently since the `get`
            return cls.get(**kwargs), False

    @classmethod
    def exists(cls, **kwargs: Any) -> bool:
        """Return whether an instance matches ``kwargs`` (a pk, or filters)."""
        if not kwargs:
            raise ValueError("`Exists` method requires at least one kwarg.")
        cls._purge_due()
        if len(kwargs) == 1 and cls._field_is_pk(next(iter(kwargs))):
            pk = next(iter(kwargs.values()))
            if cls._limpyd_shard_models is not None:  # sharded model: the pk's shard says
                return sharding.model_of(cls, pk).exists(pk=pk)
            return bool(cls.get_field("pk").exists(pk))
        try:
            cls.collection(**kwargs).sort(by="nosort")[0]
        except IndexError:
            return False
        return True

    @classmethod
    def from_pks(cls, pks: Any, lazy: bool = False) -> Iterator["RedisModel"]:
        """Yield the instance of each pk of ``pks``, silently skipping the unknown ones."""
        for pk in pks:
            if lazy:
                yield cls.lazy_connect(pk)
                continue
            try:
                yield cls(pk)
            except DoesNotExist:
                pass

    @classmethod
    def instances(cls, lazy: bool = False, **filters: Any) -> Any:
        """Return the collection of instances matching ``filters``."""
        return cls.collection(**filters).instances(lazy=lazy)

    @classmethod
    def collection(cls, manager: Any = None, **filters: Any) -> Any:
        """Return a lazy collection of the model's pks matching ``filters`` (no Redis command)."""
        if cls._limpyd_shard_models is not None:  # sharded model: planned over its shards
            if manager is not None and manager not in (CollectionManager, cls.collection_manager):
                raise sharding.unsupported(
                    cls, "the collection manager %s (extended collections)" % manager.__name__
                )
            sharding.check_count(cls)
            return sharding.ShardedCollection(cls)._add_filters(**filters)
        collection = (manager or cls.collection_manager)(cls)
        if type(collection).__call__ is CollectionManager.__call__:
            return collection._add_filters(**filters)  # a new collection: no copy needed to add filters
        return collection(**filters)

    @classmethod
    def lazy_connect(cls, pk: Any) -> "RedisModel":
        """Return an instance for ``pk`` without checking that it exists (no Redis command)."""
        if cls._limpyd_shard_models is not None:  # sharded model: an instance of the pk's shard
            return sharding.model_of(cls, pk).lazy_connect(pk)
        instance = cls()
        instance._pk = instance.pk.normalize(pk)
        return instance

    @classmethod
    def shard_model(cls, number: int) -> type:
        """Return the model class of the shard ``number`` (the model itself when unsharded; docs/sharding.rst)."""
        return sharding.shard_model(cls, number)

    @classmethod
    def shard_of(cls, pk: Any) -> int:
        """Return the number of the shard holding ``pk`` (0 when unsharded; docs/sharding.rst)."""
        return sharding.shard_of(cls, pk)

    #: the number of the shard holding this instance (0 when unsharded; docs/sharding.rst)
    shard = sharding.ShardNumber()

    @classmethod
    def use_database(cls, database: RedisDatabase) -> List[type]:
        """Move this model, and its subclasses sharing its database, to ``database``."""
        return database._use_for_model(cls)

    @classmethod
    def has_field(cls, name: str) -> bool:
        """Return whether ``name`` is a field of the model (``pk`` always is)."""
        return name == "pk" or name in cls._fields

    @classmethod
    def get_class_field(cls, name: str) -> RedisField:
        """Return the model-level field ``name``."""
        if not cls.has_field(name):
            raise AttributeError('"%s" is not a field for the model "%s"' % (name, cls.__name__))
        return getattr(cls, "_redis_attr_%s" % name)

    get_field = get_class_field

    @classmethod
    def get_class_fields(cls) -> Iterator[RedisField]:
        """Yield the model-level fields, pk first."""
        return (cls.get_field(name) for name in cls._fields)

    get_fields = get_class_fields

    @classmethod
    def make_key(cls, *args: Any) -> str:
        """Return the Redis key made of ``args`` joined by ``:``."""
        return make_key(*args)

    @classmethod
    def sort_wildcard(cls) -> str:
        """Return the ``SORT ... BY`` pattern of instance hashes: ``N:*:hash``."""
        return make_key(cls._name, "*", "hash")

    @classmethod
    def scan_model_keys(cls, count: Optional[int] = None) -> Iterator[str]:
        """Yield every key of the model (collection, ``max_pk``, indexes, instances)."""
        return cls.database.scan_keys(make_key(cls._name, "*"), count)

    @classmethod
    def get_default_indexes(cls) -> List[Any]:
        """Return the index classes for indexable fields declaring none (model, then database)."""
        if cls.default_indexes is not None:
            return cls.default_indexes
        return cls.database.get_default_indexes()

    @classmethod
    def _field_is_pk(cls, name: str) -> bool:
        """Return whether ``name`` names the primary key (``pk`` or its real name)."""
        return name in ("pk", cls.get_field("pk").name)

    # ------------------------------------------------------------------ instance API

    @property
    def connected(self) -> bool:
        """Return whether the pk was created by this object or checked by ``connect()``."""
        return self._connected

    def connect(self) -> None:
        """Check that the pk exists (``SISMEMBER``), or raise ``DoesNotExist``."""
        if self._connected:
            return
        self._purge_due()
        if take_assumed_existence(self._name, self._pk) or type(self).get_class_field("pk").exists(self._pk):
            self._connected = True
            return
        pk, self._pk = self._pk, None
        raise DoesNotExist("No %s found with pk %s" % (type(self).__name__, pk))

    def get_instance_field(self, name: str) -> RedisField:
        """Return the field ``name`` bound to this instance."""
        if not self.has_field(name):
            raise AttributeError('"%s" is not a field for the model "%s"' % (name, type(self).__name__))
        return getattr(self, name)

    def get_instance_fields(self) -> Iterator[RedisField]:
        """Yield the fields bound to this instance, pk first."""
        return (self.get_field(name) for name in self._fields)

    @property
    def fields(self) -> Iterator[RedisField]:
        """Yield the fields bound to this instance, pk first."""
        return self.get_instance_fields()

    @property
    def key(self) -> str:
        """Return the key of the instance hash: ``N:<pk>:hash`` (may allocate the pk)."""
        return make_key(self._name, self.pk.get(), "hash")

    def _set_pk(self, value: str) -> None:
        """Record the pk just validated by the pk field, then write the defaults."""
        if self._pk:
            raise ImplementationError("Something wrong happened, the PK was already set !")
        self._pk = value
        self._connected = True
        ttl = type(self)._limpyd_default_ttl
        if ttl is not None:  # before any value: a creation cut short is purged, never immortal
            _atomic.run(type(self), {"op": "deadline", "pk": value, "ttl": int(ttl * 1000)})
        self._set_defaults()

    def _set_defaults(self) -> None:
        """Write the default of every field not given to the constructor."""
        for field in self.fields:
            if field.name in self._init_fields or not hasattr(field, "default"):
                continue
            default = field.default
            if callable(default):
                default = default()
            if default is not None:
                written = self.__dict__.get("_limpyd_written")
                if written is not None:
                    written[field.name] = default
                field._drop_next_result()
                field.proxy_set(default)

    # ------------------------------------------------------------------ instance hash

    def _check_instancehash_names(self, names: Any) -> None:
        if names and not any(name in self._instancehash_fields for name in names):
            raise ValueError("Only InstanceHashField can be used here.")

    def _call_hmget(self, command: str, /, *names: str) -> Any:
        """Return the values of the InstanceHashFields ``names`` (``None`` when not set)."""
        self._check_instancehash_names(names)
        connection = self.connection
        if direct(connection, "hmget"):
            result = read_direct(connection, "HMGET", self.key, *names)
        else:
            result = connection.hmget(self.key, list(names))
        return self.post_command(sender=self, name=command, result=result, args=names, kwargs={})

    def _call_command(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run the command ``name``; ``hmset`` of a lazy instance checks the pk under its field locks."""
        if type(self)._limpyd_claim_writes and name in ("hmset", "hdel"):  # a sharded model's unique values
            return _claims.hash_command(
                self, name, args, kwargs, lambda: self._run_command(name, *args, **kwargs)
            )
        return self._run_command(name, *args, **kwargs)

    def _run_command(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run the command ``name`` (see :meth:`_call_command`)."""
        if name in ("hmset", "hdel") and _executors.for_model(type(self)) is Executor.SCRIPT:
            return self._hash_write_atomic(name, *args, **kwargs)
        if name == "hmset" and self._pk and not self._connected:
            return self._call_hmset(name, *args, _limpyd_check_exists=True, **kwargs)
        return super()._call_command(name, *args, **kwargs)

    def _hash_write_atomic(self, command: str, /, *names: str, **values: Any) -> Any:
        """Run ``hmset``/``hdel`` of the instance hash as one call of the atomic-writes script."""
        written = list(values) if command == "hmset" else list(names)
        self._check_instancehash_names(written)
        if command == "hmset":
            if not values:
                raise DataError(
                    "HSET requires at least one field to write into %r: got an empty mapping" % self.key
                )
            for name, value in values.items():
                check_value(self.get_field(name), value)
            args: Tuple[Any, ...] = (self.key,)
            kwargs: Dict[str, Any] = {"mapping": values}
            redis_command = "hset"
        else:
            args, kwargs, redis_command = (self.key,) + tuple(names), {}, "hdel"
        indexed = [name for name in written if self.get_field(name).indexable]
        check = bool(self._pk) and not self._connected
        if not indexed:  # no index to maintain: the plain command
            if check:
                self.connect()
            result = getattr(self.connection, redis_command)(*args, **kwargs)
        else:
            try:
                # every entry written is in the diff: a refusal puts them all back
                result = _atomic.modify(
                    self.get_field(indexed[0]), self._pk, written, redis_command, args, kwargs, check
                )
            except DoesNotExist:
                if check:
                    self._pk = None
                raise
            if check:
                self._connected = True
        if command == "hmset":
            result = True
        return self.post_command(sender=self, name=command, result=result, args=names, kwargs=values)

    def _call_hmset(self, command: str, /, **values: Any) -> Any:
        """Set several InstanceHashFields in one write, maintaining their indexes (no lock)."""
        check_exists = values.pop("_limpyd_check_exists", False)
        self._check_instancehash_names(values)
        for name, value in values.items():
            check_value(self.get_field(name), value)
        indexed: List[RedisField] = []
        recovery = IndexRecovery()
        try:
            # the indexable fields are locked, as by their own writes: uniqueness holds on every
            # path, and a lazy instance is checked under the locks (a deletion holds them)
            with contextlib.ExitStack() as locks:
                for name in self._fields:  # in the model's order, as a deletion takes them
                    if name in values and self.get_field(name).indexable:
                        locks.enter_context(FieldLock(self.get_field(name)))
                try:
                    if check_exists:
                        self.connect()
                    for name in values:
                        field = self.get_field(name)
                        if field.indexable:
                            indexed.append(field)
                            recovery.fields.append(field)
                            field.deindex()
                            field.index(values[name])
                    result = write_hash(self.database, self.key, values)
                except BaseException as error:
                    recovery.roll_back(error)  # before the locks are released
                    raise
        except BaseException as error:
            recovery.finish(error)
            raise
        finally:
            for field in indexed:
                field._reset_indexes_rollback_caches(self._pk)
        return self.post_command(sender=self, name=command, result=result, args=(), kwargs=values)

    def _call_hdel(self, command: str, /, *names: str) -> Any:
        """Remove the InstanceHashFields ``names`` from the instance hash, deindexing them."""
        self._check_instancehash_names(names)
        for name in names:
            field = self.get_field(name)
            if field.indexable:
                field.deindex()
        return self._traverse_command(command, *names)

    def delete(self) -> None:
        """Delete every field of the instance (and its index entries), then the pk."""
        if type(self)._limpyd_claims:  # a sharded model: its unique values' claims released after
            _claims.delete(self, self._delete_here)
        else:
            self._delete_here()

    def _delete_here(self) -> None:
        """Delete the instance (see :meth:`delete`)."""
        if _executors.for_model(type(self)) is Executor.SCRIPT:
            _atomic.run(type(self), {"op": "delete", "pk": self.pk.get()})
            del self._pk
            return
        try:
            self._delete_fields_then_pk()
        except UNKNOWN_OUTCOME as error:
            # some fields may be gone already: the deletion is completed on a fresh connection
            # (each step is idempotent) rather than leaving half an instance
            try:
                with_retries(self._delete_fields_then_pk)
            except UNKNOWN_OUTCOME:
                raise error from None  # unreachable server: the instance stays partly deleted
        del self._pk

    def _delete_fields_then_pk(self) -> None:
        """Delete every field (index entries first) then remove the pk from the collection."""
        pk_name = self.get_field("pk").name
        # the field locks are released once the pk has left the collection: a writer of one of
        # these fields, which checks the pk under the lock, then finds it gone
        with batch_scope(self.database), hold_released_locks():
            for field in self.fields:
                if field.name != pk_name:
                    field._drop_next_result()
                    field.delete()
            connection = self.connection
            # nobody reads the reply: sent with the next command
            later(connection).srem(self.pk.collection_key, self._pk)
            if type(self)._limpyd_expiring:  # its deadline goes with it (the script does the same)
                later(connection).zrem(make_key(self._name, "__deadlines__"), self._pk)

    # ------------------------------------------------------------------ expiring instances

    @classmethod
    def _check_expiring(cls, what: str) -> None:
        if not cls._limpyd_expiring:
            raise ImplementationError(
                "%s.%s: the instances of %s do not expire. Declare expiring = True (or default_ttl = "
                "<seconds>) on the model, so that every read skips the instances that are due."
                % (cls.__name__, what, cls.__name__)
            )

    def expire_in(self, seconds: float) -> None:
        """Make this instance disappear (data, index entries, collection entry) in ``seconds``."""
        type(self)._check_expiring("expire_in()")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError(
                "expire_in(%r) on %s: give a number of seconds >= 0" % (seconds, type(self).__name__)
            )
        _atomic.run(type(self), {"op": "expire", "pk": self.pk.get(), "ttl": int(seconds * 1000)})

    def expire_at(self, when: Any) -> None:
        """Make this instance disappear at ``when`` (a ``datetime`` or a Unix timestamp, server clock)."""
        type(self)._check_expiring("expire_at()")
        timestamp = when.timestamp() if hasattr(when, "timestamp") else when
        if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
            raise ValueError(
                "expire_at(%r) on %s: give a datetime or a Unix timestamp" % (when, type(self).__name__)
            )
        _atomic.run(type(self), {"op": "expire", "pk": self.pk.get(), "at": int(timestamp * 1000)})

    def time_to_live(self) -> Optional[float]:
        """Return the seconds this instance has left, or ``None`` if it does not expire."""
        type(self)._check_expiring("time_to_live()")
        reply = _atomic.run(type(self), {"op": "ttl", "pk": self.pk.get()})
        return None if reply[1] is None else max(0.0, int(float(reply[1])) / 1000.0)

    def persist(self) -> bool:
        """Remove the time to live of this instance; return whether it had one."""
        type(self)._check_expiring("persist()")
        return bool(_atomic.run(type(self), {"op": "expire", "pk": self.pk.get()})[1])

    @classmethod
    def purge_expired(cls, limit: int = 1000) -> int:
        """Remove at most ``limit`` due instances (keys, index entries, collection entry); return how many."""
        cls._check_expiring("purge_expired()")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("purge_expired(limit=%r) on %s: give an int >= 1" % (limit, cls.__name__))
        if cls._limpyd_shard_models is not None:  # sharded: shard after shard (docs/sharding.rst)
            from limpyd import _sharded_bulk

            sharding.check_count(cls)
            return _sharded_bulk.purge_expired(cls, limit)
        return int(_atomic.run(cls, {"op": "purge", "limit": limit})[1])

    @classmethod
    def _purge_due(cls) -> None:
        """Remove the due instances before a read or a write meets them (expiring models only).

        A sharded model has nothing to purge itself: each shard class purges its own instances
        before its reads and writes (docs/sharding.rst).
        """
        if cls._limpyd_expiring and cls._limpyd_shard_models is None and not _atomic.in_pipeline(cls):
            while cls.purge_expired(1000) == 1000:
                pass

    # ------------------------------------------------------------------ bulk

    @classmethod
    def create_many(cls, rows: Any, batch_size: int = 1000, ttl: Optional[float] = None) -> List[str]:
        """Create an instance per row (a dict of field values), ``batch_size`` per round trip.

        ``rows`` is streamed. Returns the pks of the created instances, in order; a refused row
        (unique value taken, by stored data or an earlier row; bad value) is not created, and all
        refusals are raised together at the end as ``BulkError`` (its ``refusals``: position and
        reason of each, its ``pks``: the pks created, ``None`` for the refused rows).
        """
        if cls._limpyd_shards > 1:  # sharded: each batch split by shard (docs/sharding.rst)
            from limpyd import _sharded_bulk

            sharding.check_count(cls)  # the count is stored once rows are written: a refusal writes nothing
            try:
                pks = _sharded_bulk.create_many(cls, rows, batch_size, ttl)
            except BulkError:
                sharding.check_count(cls, write=True)
                raise
            sharding.check_count(cls, write=True)
            return pks
        return _bulk.create_many(cls, rows, batch_size, ttl)

    @classmethod
    def delete_many(cls, pks: Any, batch_size: int = 1000) -> int:
        """Delete the instances of ``pks`` (streamed), ``batch_size`` per round trip; return how many existed."""
        if cls._limpyd_shard_models is not None:  # sharded: each batch split by shard (docs/sharding.rst)
            from limpyd import _sharded_bulk

            sharding.check_count(cls)
            return _sharded_bulk.delete_many(cls, pks, batch_size)
        return _bulk.delete_many(cls, pks, batch_size)

    def scan_keys(self, count: Optional[int] = None) -> Iterator[str]:
        """Yield every existing key of this instance (fields with a value, the instance hash).

        Glob characters of the pk are escaped, and keys of other pks starting with this pk and a
        ``:`` (``"1:a"`` for ``"1"``) are left out.
        """
        prefix = make_key(self._name, self.pk.get(), "")
        start = len(prefix)
        return (
            key
            for key in self.database.scan_keys(_glob_escape(prefix) + "*", count)
            if ":" not in key[start:]
        )

    def __eq__(self, other: Any) -> bool:
        if not isinstance(getattr(other, "pk", None), PKField):
            return NotImplemented
        own_identity = (type(self), self.pk.get())
        return own_identity == (type(other), other.pk.get())

    def __ne__(self, other: Any) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash((type(self), self.pk.get()))

    def __repr__(self) -> str:
        return "%s (pk=%s)>" % (object.__repr__(self)[:-1], self.__dict__.get("_pk"))

    # ------------------------------------------------------------------ field locks registry

    @classmethod
    def _thread_lock_storage(cls) -> Dict[str, set]:
        """Return this thread's ``{model._name: set(locked field names)}``."""
        storage = getattr(cls._thread_locks, "fields", None)
        if storage is None:
            storage = cls._thread_locks.fields = {}
        return storage

    def _mark_field_as_locked(self, field: RedisField) -> None:
        """Record that this thread holds the lock of ``field``."""
        self._thread_lock_storage().setdefault(self._name, set()).add(field.name)

    def _unmark_field_as_locked(self, field: RedisField) -> None:
        """Forget that this thread holds the lock of ``field``."""
        self._thread_lock_storage().get(self._name, set()).discard(field.name)

    def _is_field_locked(self, field: RedisField) -> bool:
        """Return whether this thread holds the lock of ``field``."""
        return field.name in self._thread_lock_storage().get(self._name, set())


# ------------------------------------------------------------------ integrity tools (limpyd.integrity)
# Thin classmethods, not in RESERVED_FIELD_NAMES: a field named like one of them is set on the
# concrete model class and wins over it (the functions of limpyd.integrity stay usable).


def _audit(cls: Any, **options: Any) -> Any:
    """Return the audit report of this model (see :func:`limpyd.integrity.audit`)."""
    from limpyd.integrity import audit

    return audit(cls, **options)


def _repair(
    cls: Any,
    report: Any = None,
    dry_run: bool = True,
    delete_orphans: bool = False,
    keep: str = "oldest",
    **options: Any,
) -> Any:
    """Fix what the audit of this model finds (see :func:`limpyd.integrity.repair`)."""
    from limpyd.integrity import repair

    return repair(cls, report=report, dry_run=dry_run, delete_orphans=delete_orphans, keep=keep, **options)


def _rebuild_indexes(
    cls: Any, fields: Any = None, resume: bool = True, progress: Any = None, **options: Any
) -> Any:
    """Rebuild this model's indexes online (see :func:`limpyd.integrity.rebuild_indexes`)."""
    from limpyd.integrity import rebuild_indexes

    return rebuild_indexes(cls, fields=fields, resume=resume, progress=progress, **options)


RedisModel.audit = classmethod(_audit)  # type: ignore[attr-defined]
RedisModel.repair = classmethod(_repair)  # type: ignore[attr-defined]
RedisModel.rebuild_indexes = classmethod(_rebuild_indexes)  # type: ignore[attr-defined]
