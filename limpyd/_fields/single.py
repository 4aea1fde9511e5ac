"""Fields holding one value: strings, instance-hash entries, primary keys."""

from __future__ import annotations

from typing import Any, Set

from limpyd._batch import (
    later,
    send_ahead_of_locks,
)
from limpyd._fields.base import RedisField
from limpyd._fields.values import check_value
from limpyd._pool import direct, read_direct
from limpyd.exceptions import DoesNotExist, ImplementationError, LimpydException, UniquenessError
from limpyd.utils import make_key, normalize


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
        self._require_indexable("index")
        if "_limpyd_atomic" in self.__dict__:
            return  # the atomic-writes script maintains the indexes
        if value is None:
            value = self._stored_values()
        self._index([value], only_index)

    def deindex(self, value: Any = None, only_index: Any = None) -> None:
        """Remove the instance from the indexes for ``value`` (default: the stored value)."""
        self._require_indexable("deindex")
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
        "get",
        "getbit",
        "getrange",
        "strlen",
        "bitcount",
        "bitpos",
    }
    available_modifiers = {
        "delete",
        "getset",
        "set",
        "append",
        "decr",
        "decrby",
        "incr",
        "incrby",
        "incrbyfloat",
        "setbit",
        "setnx",
        "setrange",
        "setex",
        "psetex",
    }

    def _call_set(
        self,
        command: str,
        /,
        value: Any,
        ex: Any = None,
        px: Any = None,
        nx: bool = False,
        xx: bool = False,
        **kwargs: Any,
    ) -> Any:
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
    _call_incr = _call_incrby = _call_decr = _call_decrby = _call_incrbyfloat = (
        RedisField._reindex_from_result
    )
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
    reserved_pks = frozenset(
        ("collection", "max_pk", "lock-for-update", "__index__", "__collection__", "__rebuild__")
    )

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
        if (
            type(self).normalize is PKField.normalize
            and (isinstance(value, bool) or not isinstance(value, (str, int, bytes)))
            or (isinstance(value, bytes) and self.normalize(value) == str(value))
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
                % (
                    pk,
                    self._model_label(),
                    head,
                    "a field name of the model" if head not in self.reserved_pks else "a reserved key part",
                    make_key(model._name if model is not None else "<model>", head, "..."),
                    pk,
                )
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
        connection = self.connection
        # nobody reads the reply: sent with the next command
        later(connection).sadd(self.collection_key, value)
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
        connection = self.connection
        if direct(connection, "sismember"):  # the commonest read: Model(pk)
            return bool(read_direct(connection, "SISMEMBER", self.collection_key, value))
        return bool(connection.sismember(self.collection_key, value))

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
        # the counter's reply is needed now; it may pass the locks queued before it, and never runs twice
        return self.normalize(
            send_ahead_of_locks(self.connection, "INCRBY", make_key(self._model._name, "max_pk"), 1)
        )
