"""Fields: the command proxy machinery, the field base class and the primary-key fields.

Every Redis command of a model or field goes through ``_call_command``, then ``_call_<name>``
(the per-command extension point) or ``_traverse_command`` (the redis-py method of the same
name, with the field's key prepended). The remaining field types (strings, hashes, sets, lists,
sorted sets), index maintenance and ``FieldLock`` follow spec 11.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Optional, Set

from limpyd.exceptions import DoesNotExist, ImplementationError, UniquenessError
from limpyd.utils import NotProvided, cached_property, make_key, normalize

__all__ = ["InstanceHashField", "RedisField", "RedisProxyCommand", "MetaRedisProxy", "PKField", "AutoPKField"]


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

    def _call_command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run the command ``name``: existence check for modifiers, then its ``_call_`` method."""
        obj = getattr(self, "_instance", self)
        if name in self.available_modifiers and obj._pk and not obj.connected:
            obj.connect()
        meth = getattr(self, "_call_" + name, self._traverse_command)
        return meth(name, *args, **kwargs)

    def _traverse_command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the redis-py method ``name`` with the key first, then ``post_command``."""
        if name not in self.available_commands:
            raise AttributeError("%s is not an available command for %s" % (name, type(self).__name__))
        result = getattr(self.connection, name)(self.key, *args, **kwargs)
        return self.post_command(sender=self, name=name, result=result, args=args, kwargs=kwargs)

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

    _creation_counter = itertools.count(1)

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
        self._creation_order = RedisField._creation_order = next(RedisField._creation_counter)

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

    __hash__ = object.__hash__


class SingleValueField(RedisField):
    """Base of fields holding one value."""


class InstanceHashField(SingleValueField):
    """A field stored as the entry ``<name>`` of the instance hash ``N:<pk>:hash``."""

    proxy_getter = "hget"
    proxy_setter = "hset"
    available_getters = {"hget"}
    available_modifiers = {"hset", "hsetnx", "hincrby", "hincrbyfloat", "hdel"}


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

    def normalize(self, value: Any) -> str:
        """Return ``value`` as a pk (``str``)."""
        return str(value)

    @property
    def collection_key(self) -> str:
        """Return the key of the set of all pks: ``N:collection``."""
        return make_key(self._model._name, "collection")

    def _validate(self, value: Any) -> str:
        """Return the normalized ``value`` if it can be used as a new pk."""
        if value is None:
            raise ValueError('The pk for %s is not "auto-increment", you must fill it' % self._model.__name__)
        value = self.normalize(value)
        if self.exists(value):
            raise UniquenessError(
                "PKField %s already exists for model %s)" % (value, self._instance.__class__)
            )
        return value

    def set(self, value: Any) -> int:
        """Set the pk of a new instance: validate, write the defaults, add it to the collection."""
        if self._set:
            raise ValueError("A primary key cannot be updated")
        value = self._validate(value)
        self._instance._set_pk(value)
        self._set = True
        self.connection.sadd(self.collection_key, value)
        return 1

    def get(self) -> str:
        """Return the pk of the instance, allocating it first for a new auto-pk instance."""
        instance = getattr(self, "_instance", None)
        if instance is None:
            raise ImplementationError("Impossible to get the PK of an unbound field")
        if not hasattr(instance, "_pk"):
            instance._connected = False
            raise DoesNotExist("The current object doesn't exists anymore")
        if not instance._pk:
            self.set(None)
        return self.normalize(instance._pk)

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
