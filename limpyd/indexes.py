"""Indexes: find instances by field values (``limpyd.indexes``).

One index object exists per (model-level field, index class); it is shared by every instance and
thread. Fields call :meth:`BaseIndex.add` / :meth:`BaseIndex.remove` with the *parts* of a value
(``(value,)``, or ``(hash_key, value)`` for a ``HashField``), collections call
:meth:`BaseIndex.get_filtered_keys`. Key names, Redis commands and command counts are those of
redis-limpyd 2.1.2 (docs/indexes.rst), with these deliberate differences (reasons in docs/migrating.rst):

- D1: ``__in`` on a prefixed index is recognised after the prefix is removed;
- D2: text-range filters match entries whose value is the empty string ("no exclusion" excludes
  nothing: the exclusion argument of the Lua scripts is ``''`` for none, ``'=' + value`` otherwise);
- D3: the form of a ``transform`` call (``(index, value)`` or ``(value)``) is chosen from its
  signature, and exceptions raised by the transform propagate;
- D4: a filter prefix matches only at the start of the suffix;
- D5: ``clear(aggressive=True)`` works on every database (redis-py non-transactional pipeline);
- D6: ``clear``/``rebuild`` walk the instances with ``SORT ... ALPHA``, so any pk works.

This module does not import ``limpyd.database`` (the database layer sits below the indexes; it
resolves its default ``EqualIndex`` from here lazily).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from redis.exceptions import DataError

from limpyd._batch import later
from limpyd.exceptions import ImplementationError, UniquenessError
from limpyd.utils import make_key, unique_key

__all__ = ["BaseIndex", "EqualIndex", "BaseRangeIndex", "TextRangeIndex", "NumberRangeIndex"]

logger = logging.getLogger("limpyd.indexes")

#: ``(key, redis type, is temporary)`` as returned by ``get_filtered_keys``
FilteredKey = Tuple[str, str, bool]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _transform_form(transform: Callable[..., Any]) -> Optional[int]:
    """Return how to call ``transform``: 2 for ``(index, value)``, 1 for ``(value)``, ``None`` if unknown.

    Two required positional parameters (or none required but room for two) mean the
    ``(index, value)`` form; one required parameter means ``(value)``. ``None`` when the
    signature cannot be inspected.
    """
    try:
        signature = inspect.signature(transform)
    except (TypeError, ValueError):
        return None
    required = optional = 0
    var_positional = False
    for parameter in signature.parameters.values():
        if parameter.kind in _POSITIONAL:
            if parameter.default is parameter.empty:
                required += 1
            else:
                optional += 1
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            var_positional = True
    if required >= 2:
        return 2
    if required == 1:
        return 1
    return 2 if (optional >= 2 or var_positional) else 1


class BaseIndex:
    """Base of every index: one object per (model field, index class), shared by its instances."""

    #: filter suffixes served; ``None`` in the set means "usable without suffix"
    handled_suffixes: Set[Optional[str]] = set()
    #: whether this index may perform the uniqueness check of a ``unique`` field
    handle_uniqueness = False
    #: extra storage-key part
    key: Optional[str] = None
    #: filter prefix, also a storage-key part
    prefix: Optional[str] = None
    #: callable applied to values before storing them (stored as a ``staticmethod``)
    transform: Optional[Callable[..., Any]] = None
    #: ``False`` for multi-field indexes, which cannot filter their field alone
    filter_single_field = True
    #: names accepted by :meth:`configure`
    configurable_attrs = {"prefix", "transform", "handle_uniqueness", "key", "name"}
    #: Redis types of the keys :meth:`get_filtered_keys` can return
    supported_key_types: Set[str] = set()

    def __init__(self, field: Any) -> None:
        self.field = field
        self._reset_cache()

    def _reset_cache(self) -> None:
        """Start an empty rollback cache: ``{thread ident: {pk: {'indexed_values', 'deindexed_values'}}}``."""
        self._rollback_cache: Dict[int, Dict[Any, Dict[str, Set[Tuple[Any, ...]]]]] = {}

    @property
    def connection(self) -> Any:
        """Return the Redis client of the indexed field's model (re-read at each call)."""
        return self.field.connection

    @property
    def model(self) -> Any:
        """Return the model of the indexed field."""
        return self.field._model

    def __repr__(self) -> str:
        # upstream quirk: the default repr loses its last two characters
        return object.__repr__(self)[:-2] + " (field=" + repr(self.field) + ")>"

    def _check_filter_type(self, filter_type: Optional[str]) -> None:
        """Raise ``ValueError`` unless this index handles the filter suffix ``filter_type``."""
        if filter_type not in self.handled_suffixes:
            raise ValueError(
                "Invalid filter type %r for %s: use one of %s"
                % (
                    filter_type,
                    type(self).__name__,
                    ", ".join(sorted(repr(s) for s in self.handled_suffixes)),
                )
            )

    # ------------------------------------------------------------------ configuration

    @classmethod
    def _field_model_ready(cls, model: type, field: Any) -> None:
        """Do nothing (hook called by the model metaclass once the model of ``field`` is built).

        Called for every index class of every non-pk field, after default indexes are resolved
        and before the multi-field indexes are collected (contrib indexes add related indexes
        to other fields here).
        """

    @classmethod
    def handle_configurable_attrs(cls, **kwargs: Any) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
        """Return ``(name, attrs, remaining_kwargs)`` extracted from :meth:`configure`'s arguments.

        Subclasses accepting more attributes override it and call ``super()``.
        """
        name = kwargs.pop("name", None) or cls.__name__
        attrs: Dict[str, Any] = {}
        for attr in ("prefix", "handle_uniqueness", "key"):
            if attr in kwargs and attr in cls.configurable_attrs:
                attrs[attr] = kwargs.pop(attr)
        if "transform" in kwargs:
            attrs["transform"] = staticmethod(kwargs.pop("transform"))
        return name, attrs, kwargs

    @classmethod
    def configure(cls, **kwargs: Any) -> type:
        """Return a new subclass of this index class with the given attributes set.

        Accepted: ``prefix``, ``transform``, ``handle_uniqueness``, ``key`` and ``name`` (the name
        of the new class, default: the same as this class), as allowed by ``configurable_attrs``.
        """
        name, attrs, remaining = cls.handle_configurable_attrs(**kwargs)
        if remaining:
            raise TypeError(
                "%s.configure only accepts these named arguments: %s"
                % (cls.__name__, ", ".join(sorted(cls.configurable_attrs)))
            )
        return type(name, (cls,), attrs)

    # ------------------------------------------------------------------ suffixes

    @classmethod
    def remove_prefix(cls, suffix: Optional[str]) -> Optional[str]:
        """Return ``suffix`` without this index's prefix (``None`` if nothing is left).

        Raise ``IndexError`` if the index has a prefix and ``suffix`` does not start with it.
        """
        prefix = cls.prefix
        if not prefix:
            return suffix
        if suffix == prefix:
            return None
        start = prefix + "__"
        if suffix is not None and suffix.startswith(start):
            return suffix[len(start) :] or None
        raise IndexError("Suffix %r does not start with the prefix %r of %s" % (suffix, prefix, cls.__name__))

    @classmethod
    def can_handle_suffix(cls, suffix: Optional[str]) -> bool:
        """Return whether this index can serve a filter with the full suffix ``suffix``."""
        try:
            return cls.remove_prefix(suffix) in cls.handled_suffixes
        except IndexError:
            return False

    # ------------------------------------------------------------------ values

    def transform_value(self, value: Any) -> Any:
        """Return ``value`` passed through the index's ``transform`` (unchanged without one).

        The transform is called as ``transform(index, value)`` or ``transform(value)``, chosen
        from its signature (a method defined on a subclass takes ``(value)``); when the
        signature cannot be inspected, ``(index, value)`` is tried first, then ``(value)`` if
        that call fails on its arguments. Exceptions raised by the transform propagate.
        """
        transform = self.transform
        if not transform:
            return value
        function = getattr(transform, "__func__", transform)
        cached = self.__dict__.get("_transform_form_cache")
        if cached is not None and cached[0] is function:
            form = cached[1]
        else:
            form = _transform_form(transform)
            self.__dict__["_transform_form_cache"] = (function, form)
        if form == 2:
            return transform(self, value)
        if form == 1:
            return transform(value)
        try:
            return transform(self, value)
        except TypeError as exc:
            if "argument" not in str(exc):
                raise
        return transform(value)

    def check_storable(self, value: Any) -> None:
        """Raise redis-py's ``DataError`` if this index cannot hold ``value`` (hook; nothing by default).

        Called with every value given to a write of the field, before any command is sent, so a
        value the index would fail on never leaves the stored value and the index apart.
        """

    def normalize_value(self, value: Any, transform: bool = True) -> Any:
        """Return ``value`` as stored in the index: transformed (if asked), then ``str(from_python(v))``."""
        if transform:
            value = self.transform_value(value)
        return str(self.field.from_python(value))

    # ------------------------------------------------------------------ filtering

    def _check_key_accepted_key_types(self, accepted_key_types: Optional[Iterable[str]]) -> None:
        """Raise ``ImplementationError`` if none of ``accepted_key_types`` can be returned."""
        if accepted_key_types and not set(accepted_key_types) & set(self.supported_key_types):
            raise ImplementationError(
                "%s can only return keys of type %s"
                % (type(self).__name__, ", ".join(sorted(self.supported_key_types)))
            )

    def get_filtered_keys(self, suffix: Optional[str], *args: Any, **kwargs: Any) -> List[FilteredKey]:
        """Return the ``(key, redis type, is temporary)`` list answering a filter.

        ``args`` are the extra field parts then the filter value; keywords: ``accepted_key_types``
        and (multi-field indexes) ``related_filters``. Temporary keys are deleted by the caller.
        """
        raise NotImplementedError

    def _unique_key(self, prefix: Optional[str] = None) -> str:
        """Return a free temporary key ``M:__index__:<class name lowercased>[:prefix]:<32 hex>`` (1 ``EXISTS``)."""
        parts = [self.model._name, "__index__", type(self).__name__.lower()]
        if prefix:
            parts.append(prefix)
        return unique_key(self.connection, make_key(*parts))

    # ------------------------------------------------------------------ uniqueness

    @property
    def unique_index_name(self) -> str:
        """Return the name of the unique field for error messages: ``unique field <Model>.<field>``."""
        return "unique field %s.%s" % (self.model.__name__, self.field.name)

    def check_uniqueness(self, pk: Any, *args: Any) -> None:
        """Raise ``UniquenessError`` if another pk than ``pk`` already uses the value in ``args``."""
        if not self.field.unique:
            return
        raise NotImplementedError

    def assert_pks_uniqueness(self, pks: Iterable[Any], exclude: Any, get_display_value: Any) -> None:
        """Raise ``UniquenessError`` unless ``pks`` is empty or holds only ``exclude``.

        ``get_display_value`` (a callable, or the value itself) gives the value for the message.
        """
        pks = sorted(set(pks), key=str)
        if len(pks) > 1:
            raise UniquenessError("Multiple values indexed for %s: %s" % (self.unique_index_name, pks))
        if len(pks) == 1 and (not exclude or str(pks[0]) != str(exclude)):
            display = get_display_value() if callable(get_display_value) else get_display_value
            raise UniquenessError(
                'Value "%s" already indexed for %s (for instance %s)'
                % (display, self.unique_index_name, pks[0])
            )

    # ------------------------------------------------------------------ writing

    def add(self, pk: Any, *args: Any, check_uniqueness: bool = True, **kwargs: Any) -> None:
        """Index ``pk`` for the value parts ``args`` (checking uniqueness first if asked)."""
        raise NotImplementedError

    def remove(self, pk: Any, *args: Any, **kwargs: Any) -> None:
        """Deindex ``pk`` for the value parts ``args``."""
        raise NotImplementedError

    def _record_indexed(self, pk: Any, args: Tuple[Any, ...]) -> None:
        """Remember that ``args`` was indexed for ``pk`` (for :meth:`_rollback`)."""
        self._get_rollback_cache(pk)["indexed_values"].add(tuple(args))

    def _record_deindexed(self, pk: Any, args: Tuple[Any, ...]) -> None:
        """Remember that ``args`` was deindexed for ``pk`` (for :meth:`_rollback`)."""
        self._get_rollback_cache(pk)["deindexed_values"].add(tuple(args))

    # ------------------------------------------------------------------ rollback

    def _get_rollback_cache(self, pk: Any) -> Dict[str, Set[Tuple[Any, ...]]]:
        """Return the rollback cache of ``pk`` for the current thread (created on demand)."""
        per_thread = self._rollback_cache.setdefault(threading.get_ident(), {})
        cache = per_thread.get(pk)
        if cache is None:
            cache = per_thread[pk] = {"indexed_values": set(), "deindexed_values": set()}
        return cache

    def _reset_rollback_cache(self, pk: Any) -> None:
        """Forget the rollback cache of ``pk`` for the current thread."""
        ident = threading.get_ident()
        per_thread = self._rollback_cache.get(ident)
        if per_thread is None:
            return
        per_thread.pop(pk, None)
        if not per_thread:
            self._rollback_cache.pop(ident, None)

    def _rollback(self, pk: Any) -> None:
        """Undo what was (de)indexed for ``pk`` in this thread since the last reset."""
        cache = self._get_rollback_cache(pk)
        indexed = list(cache["indexed_values"])
        deindexed = list(cache["deindexed_values"])
        for args in indexed:
            self.remove(pk, *args)
        for args in deindexed:
            self.add(pk, *args, check_uniqueness=False)

    # ------------------------------------------------------------------ maintenance

    def get_all_storage_keys(self) -> Set[str]:
        """Return every Redis key used by this index (found with ``SCAN``)."""
        raise NotImplementedError

    def _scan_patterns(self, *patterns: str) -> Set[str]:
        """Return the set of keys matching any of ``patterns``."""
        database = self.model.database
        keys: Set[str] = set()
        for pattern in patterns:
            keys.update(database.scan_keys(pattern))
        return keys

    def _walk_instances(self, chunk_size: int, action: str) -> None:
        """Call ``field.<action>(value, only_index=self)`` for the current value of every instance.

        Instances are read in chunks of ``chunk_size`` pks (one ``SORT M:collection LIMIT ...
        ALPHA`` per chunk, so any pk works), then one read of the field per instance.
        """
        if chunk_size < 1:
            raise ValueError("chunk_size=%r: it must be a positive int" % (chunk_size,))
        model = self.model
        collection_key = make_key(model._name, "collection")
        start = 0
        while True:
            pks = self.connection.sort(collection_key, start=start, num=chunk_size, alpha=True)
            for pk in pks:
                field = model.lazy_connect(pk).get_field(self.field.name)
                value = field.proxy_get()
                if value is None or (isinstance(value, (list, set, dict, tuple)) and not value):
                    continue
                try:
                    getattr(field, action)(value, only_index=self)
                finally:
                    self._reset_rollback_cache(field._instance.pk.get())
            if len(pks) < chunk_size:
                break
            start += chunk_size

    def clear(self, chunk_size: int = 1000, aggressive: bool = False) -> None:
        """Remove every entry of this index.

        By default, walk the instances (see :meth:`_walk_instances`) and deindex their current
        values. With ``aggressive=True``, delete every key of :meth:`get_all_storage_keys` (one
        ``DEL`` per key, sent in one non-transactional pipeline) — the patterns may match keys of
        other indexes of the same field, which are deleted too.
        """
        if not aggressive:
            self._walk_instances(chunk_size, "deindex")
            return
        keys = self.get_all_storage_keys()
        if not keys:
            return
        pipeline = self.model.database._non_transactional_pipeline()
        with pipeline:
            for key in keys:
                pipeline.delete(key)
            pipeline.execute()

    def rebuild(self, chunk_size: int = 1000, aggressive_clear: bool = False) -> None:
        """Clear this index, then index the current value of every instance again.

        Uniqueness is checked again for unique fields.
        """
        self.clear(chunk_size=chunk_size, aggressive=aggressive_clear)
        self._walk_instances(chunk_size, "index")

    # ------------------------------------------------------------------ key helpers

    def _key_parts(self, *extra_parts: Any) -> List[Any]:
        """Return ``[M, F, *extra_parts, [prefix], [key]]``."""
        parts = [self.model._name, self.field.name, *extra_parts]
        if self.prefix:
            parts.append(self.prefix)
        if self.key:
            parts.append(self.key)
        return parts


class EqualIndex(BaseIndex):
    """The default index: one Redis set of pks per value (``M:F[:H][:P][:K]:<value>``)."""

    handled_suffixes = {None, "eq", "in"}
    handle_uniqueness = True
    supported_key_types = {"set"}
    key = None

    def get_storage_key(self, *args: Any, transform_value: bool = True) -> str:
        """Return the set holding the pks of the value parts ``args`` (value transformed if asked)."""
        *extra_parts, value = args
        parts = self._key_parts(*extra_parts)
        parts.append(self.normalize_value(value, transform=transform_value))
        return make_key(*parts)

    def get_filtered_keys(self, suffix: Optional[str], *args: Any, **kwargs: Any) -> List[FilteredKey]:
        """Return the set key answering ``suffix`` (``None``/``eq``: no command; ``in``: a union).

        ``in`` takes any iterable of values (a ``str`` is iterated per character); an empty one
        gives ``[]``; otherwise the sets of the distinct values are united into a temporary key
        (``EXISTS`` + ``SUNIONSTORE``). Filter values are never transformed.
        """
        self._check_key_accepted_key_types(kwargs.get("accepted_key_types"))
        if self.remove_prefix(suffix) == "in":
            *extra_parts, values = args
            values = set(values)
            if not values:
                return []
            in_keys = list(
                dict.fromkeys(
                    self.get_storage_key(*extra_parts, value, transform_value=False) for value in values
                )
            )
            tmp_key = self._unique_key("tmp")
            self.union_filtered_in_keys(tmp_key, *in_keys)
            return [(tmp_key, "set", True)]
        return [(self.get_storage_key(*args, transform_value=False), "set", False)]

    def union_filtered_in_keys(self, dest_key: str, *source_keys: str) -> None:
        """Store the union of ``source_keys`` into ``dest_key`` (https://redis.io/commands/sunionstore)."""
        self.connection.sunionstore(dest_key, list(source_keys))

    def get_uniqueness_members(self, key: str) -> List[str]:
        """Return the pks stored in ``key`` (https://redis.io/commands/smembers)."""
        return list(self.connection.smembers(key))

    def check_uniqueness(self, pk: Any, *args: Any, key: Optional[str] = None) -> None:
        """Raise ``UniquenessError`` if a pk other than ``pk`` is indexed for this value (1 ``SMEMBERS``)."""
        if not self.field.unique:
            return
        if key is None:
            key = self.get_storage_key(*args)
        pks = self.get_uniqueness_members(key)
        self.assert_pks_uniqueness(pks, pk, lambda: args[-1])

    def store(self, key: str, pk: Any, **kwargs: Any) -> bool:
        """Add ``pk`` to the set ``key`` and return ``True`` (https://redis.io/commands/sadd)."""
        connection = self.connection
        # nobody reads the reply: sent with the next command
        later(connection).sadd(key, pk)
        return True

    def unstore(self, key: str, pk: Any, **kwargs: Any) -> bool:
        """Remove ``pk`` from the set ``key`` and return ``True`` (https://redis.io/commands/srem)."""
        connection = self.connection
        # nobody reads the reply: sent with the next command
        later(connection).srem(key, pk)
        return True

    def add(self, pk: Any, *args: Any, check_uniqueness: bool = True, **kwargs: Any) -> None:
        """Add ``pk`` to the set of the value (1 ``SADD``, after 1 ``SMEMBERS`` if checking uniqueness)."""
        key = self.get_storage_key(*args)
        if self.field.unique and check_uniqueness:
            self.check_uniqueness(pk, *args, key=key)
        logger.debug("adding %s to index %s", pk, key)
        if self.store(key, pk, **kwargs):
            self._record_indexed(pk, args)

    def remove(self, pk: Any, *args: Any, **kwargs: Any) -> None:
        """Remove ``pk`` from the set of the value (1 ``SREM``)."""
        key = self.get_storage_key(*args)
        logger.debug("removing %s from index %s", pk, key)
        if self.unstore(key, pk, **kwargs):
            self._record_deindexed(pk, args)

    def get_all_storage_keys(self) -> Set[str]:
        """Return the keys matching ``M:F[:P][:K]:*`` and ``M:F:*[:P][:K]:*`` (hash keys)."""
        model_name, field_name = self.model._name, self.field.name
        tail = self._key_parts()[2:]
        return self._scan_patterns(
            make_key(model_name, field_name, *tail, "*"),
            make_key(model_name, field_name, "*", *tail, "*"),
        )


# Lua filter scripts. KEYS = [index zset, destination]; ARGV = [destination type ('set' or
# 'zset'), start, end, exclusion, (separator)]. The exclusion is '' for none, or '=' followed by
# the value to drop (so that the empty string can be excluded, and "no exclusion" drops nothing).
# Kept pks of each page of 100 members go to the destination: SADD for a set, ZADD with the
# 0-based position within the page's kept pks as score otherwise. Returns the destination name.

#: Lua: send the pks kept from one page to the destination (shared by both filter scripts)
_STORE_PAGE_LUA = """    if #pks > 0 then
        if dest_type == 'set' then
            redis.call('SADD', dest, unpack(pks))
        else
            local zargs = {}
            for position, pk in ipairs(pks) do
                zargs[#zargs + 1] = position - 1
                zargs[#zargs + 1] = pk
            end
            redis.call('ZADD', dest, unpack(zargs))
        end
    end
"""

_TEXT_FILTER_LUA = (
    """
local source, dest = KEYS[1], KEYS[2]
local dest_type, start, stop, exclusion, separator = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local has_exclude = string.len(exclusion) > 0
local exclude = string.sub(exclusion, 2)
local sep_len = string.len(separator)
local page_size = 100
local offset = 0
local count
repeat
    local members = redis.call('ZRANGEBYLEX', source, start, stop, 'LIMIT', offset, page_size)
    count = #members
    local pks = {}
    for _, member in ipairs(members) do
        local last = nil
        local from = 1
        while true do
            local found = string.find(member, separator, from, true)
            if not found then break end
            last = found
            from = found + 1
        end
        if last then
            local value = string.sub(member, 1, last - 1)
            if not (has_exclude and value == exclude) then
                pks[#pks + 1] = string.sub(member, last + sep_len)
            end
        end
    end
"""
    + _STORE_PAGE_LUA
    + """    offset = offset + page_size
until count < page_size
return dest
"""
)

_NUMBER_FILTER_LUA = (
    """
local source, dest = KEYS[1], KEYS[2]
local dest_type, start, stop = ARGV[1], ARGV[2], ARGV[3]
local page_size = 100
local offset = 0
local count
repeat
    local pks = redis.call('ZRANGEBYSCORE', source, start, stop, 'LIMIT', offset, page_size)
    count = #pks
"""
    + _STORE_PAGE_LUA
    + """    offset = offset + page_size
until count < page_size
return dest
"""
)


class BaseRangeIndex(BaseIndex):
    """Base of range indexes: one sorted set per field (and hash key), filtered by Lua scripts."""

    handle_uniqueness = True
    supported_key_types = {"set", "zset"}
    #: ``{'lua': <source>}`` on subclasses; ``database.call_script`` caches the script object in it
    lua_filter_script: Any = NotImplemented

    def get_storage_key(self, *args: Any) -> str:
        """Return the sorted set of the index: ``M:F[:H][:P][:K]`` (the value in ``args`` is ignored)."""
        return make_key(*self._key_parts(*args[:-1]))

    def prepare_data_to_store(self, pk: Any, value: Any, **kwargs: Any) -> Tuple[Any, Any]:
        """Return the ``(member, score)`` storing ``pk`` for ``value``."""
        raise NotImplementedError

    def store(self, key: str, member: Any, score: Any) -> bool:
        """Add ``member`` with ``score`` to ``key``; return whether it was sent (https://redis.io/commands/zadd)."""
        if score is None:
            return False
        connection = self.connection
        # nobody reads the reply: sent with the next command
        later(connection).zadd(key, {member: score})
        return True

    def unstore(self, key: str, member: Any, score: Any) -> bool:
        """Remove ``member`` from ``key`` and return ``True`` (https://redis.io/commands/zrem)."""
        connection = self.connection
        # nobody reads the reply: sent with the next command
        later(connection).zrem(key, member)
        return True

    def add(self, pk: Any, *args: Any, check_uniqueness: bool = True, **kwargs: Any) -> None:
        """Add the member of ``pk`` for the value (1 ``ZADD``, after 1 read if checking uniqueness)."""
        if self.field.unique and check_uniqueness:
            self.check_uniqueness(pk, *args)
        key = self.get_storage_key(*args)
        member, score = self.prepare_data_to_store(pk, args[-1], **kwargs)
        logger.debug("adding %s to index %s (member %s, score %s)", pk, key, member, score)
        if self.store(key, member, score):
            self._record_indexed(pk, args)

    def remove(self, pk: Any, *args: Any, **kwargs: Any) -> None:
        """Remove the member of ``pk`` for the value (1 ``ZREM``)."""
        key = self.get_storage_key(*args)
        member, score = self.prepare_data_to_store(pk, args[-1], **kwargs)
        logger.debug("removing %s from index %s (member %s)", pk, key, member)
        if self.unstore(key, member, score):
            self._record_deindexed(pk, args)

    def check_uniqueness(self, pk: Any, *args: Any) -> None:
        """Raise ``UniquenessError`` if a pk other than ``pk`` has the same normalized value (1 read)."""
        if not self.field.unique:
            return
        key = self.get_storage_key(*args)
        pks = self.get_pks_for_filter(key, "eq", self.normalize_value(args[-1]))
        self.assert_pks_uniqueness(pks, pk, lambda: args[-1])

    def get_boundaries(self, filter_type: Optional[str], value: Any) -> Tuple[Any, Any, Any]:
        """Return ``(start, end, exclude)`` of the range answering ``filter_type`` for ``value``."""
        raise NotImplementedError

    def get_pks_for_filter(self, key: str, filter_type: Optional[str], value: Any) -> List[str]:
        """Return the pks of ``key`` matching ``filter_type`` for the normalized ``value`` (Python side)."""
        raise NotImplementedError

    def call_script(
        self, key: str, tmp_key: str, key_type: str, start: Any, end: Any, exclude: Any, *args: Any
    ) -> Any:
        """Run the class's Lua filter script, storing the matching pks of ``key`` into ``tmp_key``.

        ``exclude`` is the value whose entries are dropped (``None``: none); it is sent as
        ``''`` for none and ``'=' + value`` otherwise.
        """
        if exclude is None:
            exclusion: Any = ""
        elif isinstance(exclude, bytes):
            exclusion = b"=" + exclude
        else:
            exclusion = "=" + str(exclude)
        return self.model.database.call_script(
            script_dict=self.lua_filter_script,
            keys=[key, tmp_key],
            args=[key_type, start, end, exclusion] + list(args),
        )

    def _filter_into(
        self, tmp_key: str, key: str, key_type: str, filter_type: Optional[str], value: Any
    ) -> None:
        """Store into ``tmp_key`` the pks of ``key`` matching ``filter_type`` for the raw filter ``value``."""
        value = self.normalize_value(value, transform=False)
        start, end, exclude = self.get_boundaries(filter_type, value)
        self.call_script(key, tmp_key, key_type, start, end, exclude)

    def get_filtered_keys(self, suffix: Optional[str], *args: Any, **kwargs: Any) -> List[FilteredKey]:
        """Return a temporary key holding the pks matching the filter (``EXISTS`` + ``EVALSHA``).

        The key is a set, unless ``accepted_key_types`` is given without ``'set'`` (then a
        sorted set). ``in`` filters each distinct value into its own temporary key, unites them
        (``SUNIONSTORE``/``ZUNIONSTORE``) and deletes them (one ``DEL`` each).
        """
        accepted_key_types = kwargs.get("accepted_key_types")
        self._check_key_accepted_key_types(accepted_key_types)
        key_type = "set" if not accepted_key_types or "set" in accepted_key_types else "zset"
        tmp_key = self._unique_key("tmp")
        filter_type = self.remove_prefix(suffix)
        *extra_parts, value = args
        key = self.get_storage_key(*args)
        if filter_type != "in":
            self._filter_into(tmp_key, key, key_type, filter_type, value)
            return [(tmp_key, key_type, True)]

        values = set(value)
        if not values:
            return []
        value_keys: List[str] = []
        try:
            for one_value in values:
                value_key = self._unique_key("tmp")
                value_keys.append(value_key)
                self._filter_into(value_key, key, key_type, "eq", one_value)
            if key_type == "set":
                self.connection.sunionstore(tmp_key, value_keys)
            else:
                self.connection.zunionstore(tmp_key, value_keys)
        finally:
            if value_keys:
                pipeline = self.connection.pipeline(transaction=False)
                with pipeline:
                    for value_key in value_keys:
                        pipeline.delete(value_key)
                    pipeline.execute()
        return [(tmp_key, key_type, True)]

    def get_all_storage_keys(self) -> Set[str]:
        """Return the keys matching ``M:F[:P][:K]`` and ``M:F:*[:P][:K]`` (hash keys)."""
        model_name, field_name = self.model._name, self.field.name
        tail = self._key_parts()[2:]
        return self._scan_patterns(
            make_key(model_name, field_name, *tail),
            make_key(model_name, field_name, "*", *tail),
        )


class TextRangeIndex(BaseRangeIndex):
    """Lexicographic range index: members ``'<value>:TEXT-RANGE-SEPARATOR:<pk>'`` with score 0."""

    handled_suffixes = {None, "eq", "gt", "gte", "lt", "lte", "startswith", "in"}
    key = "text-range"
    #: computed from the default key; a configured ``key`` does not change it
    separator = ":%s-SEPARATOR:" % key.upper()
    lua_filter_script = {"lua": _TEXT_FILTER_LUA}

    def prepare_data_to_store(self, pk: Any, value: Any, **kwargs: Any) -> Tuple[str, int]:
        """Return ``('<normalized value><separator><pk>', 0)``."""
        return self.normalize_value(value) + self.separator + str(pk), 0

    def _extract_value_from_storage(self, member: str) -> Tuple[str, str]:
        """Return ``(value, pk)`` of a stored member (split at the last separator)."""
        value, pk = member.rsplit(self.separator, 1)
        return value, pk

    def get_boundaries(self, filter_type: Optional[str], value: Any) -> Tuple[Any, Any, Any]:
        """Return ``(start, end, exclude)`` for ``ZRANGEBYLEX`` (``b'\\xff'`` is the byte 0xFF)."""
        self._check_filter_type(filter_type)
        separator = self.separator
        if filter_type in (None, "eq", "in"):
            return "[" + value + separator, ("[" + value + separator).encode("utf-8") + b"\xff", None
        if filter_type == "gt":
            return "(" + value, "+", value
        if filter_type == "gte":
            return "[" + value, "+", None
        if filter_type == "lt":
            return "-", "(" + value, value
        if filter_type == "lte":
            return "-", ("[" + value + separator).encode("utf-8") + b"\xff", None
        # startswith
        return "[" + value, ("[" + value).encode("utf-8") + b"\xff", None

    def get_pks_for_filter(self, key: str, filter_type: Optional[str], value: Any) -> List[str]:
        """Return the pks of ``key`` matching the filter (https://redis.io/commands/zrangebylex)."""
        start, end, exclude = self.get_boundaries(filter_type, value)
        pks = []
        for member in self.connection.zrangebylex(key, start, end):
            member_value, pk = self._extract_value_from_storage(member)
            if exclude is None or member_value != exclude:
                pks.append(pk)
        return pks

    def call_script(
        self, key: str, tmp_key: str, key_type: str, start: Any, end: Any, exclude: Any, *args: Any
    ) -> Any:
        """Run the text filter script (the separator is appended to its arguments)."""
        return super().call_script(key, tmp_key, key_type, start, end, exclude, self.separator, *args)


class NumberRangeIndex(BaseRangeIndex):
    """Numeric range index: members ``<pk>`` scored by the value (0 if it is not a number)."""

    handled_suffixes = {None, "eq", "gt", "gte", "lt", "lte", "in"}
    key = "number-range"
    #: raise ``ValueError`` for non-numeric values instead of indexing them as 0
    raise_if_not_float = False
    lua_filter_script = {"lua": _NUMBER_FILTER_LUA}

    def normalize_value(self, value: Any, transform: bool = True) -> Any:
        """Return ``float(value)`` (transformed first if asked); ``0`` if it is not a number."""
        if transform:
            value = self.transform_value(value)
        try:
            return float(value)
        except (ValueError, TypeError) as exc:
            if self.raise_if_not_float:
                raise ValueError(
                    "Invalid value %s for field %s.%s" % (value, self.model.__name__, self.field.name)
                ) from exc
            return 0

    def check_storable(self, value: Any) -> None:
        """Refuse values whose score Redis would refuse (``nan``) or Python cannot compute (overflow)."""
        try:
            score = self.normalize_value(value)
        except OverflowError:
            score = None
        if score is None or score != score:  # OverflowError, or nan (the only float unequal to itself)
            raise DataError(
                "Invalid value %r for %s.%s: its %s score would be %s, which a Redis sorted set cannot "
                "hold. Store a finite number (or inf/-inf), or use another index for this field."
                % (
                    value,
                    self.model.__name__,
                    self.field.name,
                    type(self).__name__,
                    "an overflow" if score is None else "nan",
                )
            )

    def prepare_data_to_store(self, pk: Any, value: Any, **kwargs: Any) -> Tuple[Any, Any]:
        """Return ``(pk, normalized value)``."""
        return pk, self.normalize_value(value)

    def get_boundaries(self, filter_type: Optional[str], value: Any) -> Tuple[Any, Any, Any]:
        """Return ``(start, end, None)`` for ``ZRANGEBYSCORE``."""
        self._check_filter_type(filter_type)
        value = str(value)
        if filter_type in (None, "eq", "in"):
            return value, value, None
        if filter_type == "gt":
            return "(" + value, "+inf", None
        if filter_type == "gte":
            return value, "+inf", None
        if filter_type == "lt":
            return "-inf", "(" + value, None
        # lte
        return "-inf", value, None

    def get_pks_for_filter(self, key: str, filter_type: Optional[str], value: Any) -> List[str]:
        """Return the pks of ``key`` matching the filter (https://redis.io/commands/zrangebyscore)."""
        start, end, _ = self.get_boundaries(filter_type, value)
        return list(self.connection.zrangebyscore(key, start, end))


class _MultiFieldsIndexMixin:
    """Base of indexes covering several fields (contrib ``EqualIndexWith``): not usable alone."""

    filter_single_field = False
    unique = False
    handle_uniqueness = False

    @classmethod
    def handle_configurable_attrs(cls, **kwargs: Any) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
        """Refuse ``handle_uniqueness``, then extract the other attributes as the base class does."""
        cls.configurable_attrs = set(cls.configurable_attrs) - {"handle_uniqueness"}
        return super().handle_configurable_attrs(**kwargs)  # type: ignore[misc]

    def can_filter_fields(
        self, fields_and_suffixes: Iterable[Tuple[str, Optional[str]]]
    ) -> List[Tuple[Tuple[str, Optional[str]], ...]]:
        """Return every ``((field, suffix), ...)`` combination this index can serve (memoized).

        ``fields_and_suffixes`` lists the ``(field name, suffix)`` of the filters; the answer of
        :meth:`_can_filter_fields` (``[(field name, {suffixes}), ...]``, main field first, or
        ``[]``) is expanded to the cartesian product of the suffix sets.
        """
        ordered = tuple(sorted(fields_and_suffixes, key=lambda item: (item[0], item[1] or "")))
        cache = self.__dict__.setdefault("_can_filter_fields_cache", {})
        if ordered not in cache:
            result = self._can_filter_fields(list(ordered))
            combinations: List[Tuple[Tuple[str, Optional[str]], ...]] = []
            if result:
                names = [name for name, _ in result]
                suffix_lists = [sorted(suffixes, key=lambda s: s or "") for _, suffixes in result]
                for suffixes in itertools.product(*suffix_lists):
                    combinations.append(tuple(zip(names, suffixes)))
            cache[ordered] = combinations
        return cache[ordered]

    def _can_filter_fields(
        self, fields_and_suffixes: List[Tuple[str, Optional[str]]]
    ) -> List[Tuple[str, Set[Optional[str]]]]:
        """Return ``[(field name, {suffixes}), ...]`` (main field first) servable among the filters, or ``[]``."""
        raise NotImplementedError

    def check_uniqueness_at_init(self, values: Dict[str, Any]) -> None:
        """Raise ``UniquenessError`` if ``values`` (``{field name: value}``) are not unique together."""
        raise NotImplementedError
