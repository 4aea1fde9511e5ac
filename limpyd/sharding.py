"""Sharded models (``shards = N``, docs/sharding.rst): one model spread over N slots.

Shard ``k`` of a model is a hidden model class made here, a subclass of the user's model whose
``_name`` is the model's followed by ``@k`` (``app:event@3``, ``{app:event@3}`` on a cluster): it
is registered on the database like any model, so the cluster renaming (``limpyd._cluster``) and
``use_database`` treat it as one, and each of its instances uses the layout of an unsharded model
under that name. The user's class keeps the model-level keys (the ``max_pk`` counter) and routes:

- ``Model(pk)``, ``Model(**values)``, ``Model.lazy_connect(pk)``, ``Model.exists(pk=...)`` go to
  the shard of the pk, ``zlib.crc32(pk.encode("utf-8")) % shards`` (:func:`shard_index`); a new
  auto pk is taken first from the model's counter (``INCRBY <model>:max_pk 1``), then the
  instance is created in its shard as an unsharded one is (the shard allocates no pk of its own);
- ``Model.collection(**filters)`` is a :class:`ShardedCollection`: each shard's part is the core
  collection of the shard model (an ``ExtendedCollectionManager`` of it for a sort by field and
  ``values()``: the pks come with their sort values and values from one ``SORT``), and the parts
  are merged on the client into what a 1-shard model with the same data returns.

The model-level hooks are in ``limpyd.model`` (the metaclass calls :func:`read_setting` and
:func:`setup`; the routing classmethods call the functions below when the model is sharded).
What is not supported yet raises :func:`unsupported` errors naming the feature and the page.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import operator
import uuid
import zlib
from typing import Any, Dict, List, Optional, Tuple

import redis

from limpyd import _atomic, _shard_count
from limpyd._batch import current_batch, is_batched, send_ahead_of_locks, send_commands
from limpyd._cluster import _sort_script, cluster_sort, needs_sort_script
from limpyd._per_node import (
    count_per_node,
    per_node_allowed,
    raise_first_error,
    send_per_node,
    sort_arguments,
    sort_script_arguments,
)
from limpyd._recovery import register_temporary_key, temporary_keys
from limpyd.collection import (
    CollectionManager,
    CollectionResults,
    ParsedFilter,
    _CheckedInstances,
    _direct_allowed,
    _entry_at,
    _index_window,
    _model_path,
    checked_index,
    results_equal,
)
from limpyd.exceptions import ImplementationError
from limpyd.fields import RedisField, SingleValueField
from limpyd.indexes import EqualIndex, NumberRangeIndex, TextRangeIndex
from limpyd.utils import make_key

__all__ = ["MAX_SHARDS", "ShardedCollection", "shard_index"]

#: the highest ``shards`` accepted: one shard per Redis Cluster slot
MAX_SHARDS = 16384

_DOC = "see docs/sharding.rst"


class ShardNumber:
    """``instance.shard``: the number of the instance's shard (0 when unsharded).

    A non-data descriptor, not a property: a related collection or a value set on an instance
    under this name wins over it, as over any method added after 3.0.
    """

    def __get__(self, instance: Any, owner: Any) -> Any:
        if instance is None:
            return self
        return owner._limpyd_shard or 0


def is_sharded(model: Any) -> bool:
    """Return whether ``model`` is a sharded model (``shards > 1``) or one of its shard classes."""
    return model._limpyd_shard_models is not None or model._limpyd_shard is not None


def shard_index(pk: str, shards: int) -> int:
    """Return the shard of the (normalized, ``str``) ``pk`` among ``shards``: ``crc32(utf-8) % shards``."""
    return zlib.crc32(pk.encode("utf-8")) % shards


def unsupported(model: Any, feature: str) -> ImplementationError:
    """Return the error raised for ``feature``, which sharded models do not support yet."""
    return ImplementationError(
        "%s is not supported on the sharded model %s (shards = %d) yet: %s (Status), or use an "
        "unsharded model (shards = 1) for it."
        % (feature, _model_path(sharded_model(model)), model._limpyd_shards, _DOC)
    )


# ---------------------------------------------------------------------- class definition


def read_setting(cls: Any) -> int:
    """Return the checked ``shards`` of the model class ``cls`` (``ImplementationError`` if invalid).

    A field named ``shards`` wins over the setting (the model then has one shard).
    """
    value = getattr(cls, "shards", 1)
    if isinstance(value, RedisField):
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SHARDS:
        raise ImplementationError(
            "%s.shards = %r: give an int from 1 to %d, the number of slots the model spreads over "
            "(1, the default, keeps every key of the model in one slot); %s."
            % (cls.__name__, value, MAX_SHARDS, _DOC)
        )
    return value


def setup(cls: Any) -> None:
    """Make the shard classes of the concrete sharded model ``cls`` (or undo inherited sharding).

    Called by the metaclass once the fields are built, for a model with ``shards > 1`` or one
    inheriting the shard classes of a sharded base; a shard class itself is left alone.
    """
    if "_limpyd_shard" in cls.__dict__:  # a shard class: already complete
        return
    if cls.abstract or cls._limpyd_shards == 1:  # the subclass of a sharded model stops sharding
        cls._limpyd_shard_models = None
        cls._limpyd_claims = ()
        cls._limpyd_claim_writes = frozenset()
        return
    _check_supported(cls)
    from limpyd import _claims

    cls._limpyd_claims = _claims.claimed_fields(cls)  # inherited by the shard classes
    cls._limpyd_claim_writes = _claims.claim_writes(cls)
    shards = []
    for number in range(cls._limpyd_shards):
        attrs = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "_limpyd_shard": number,
            "_limpyd_shard_models": None,
        }
        # the class name gives the ``_name`` (``<namespace>:<model>@<k>``); messages show the model's
        shard = type(cls)("%s@%d" % (cls.__name__, number), (cls,), attrs)
        shard.__name__ = cls.__name__
        pk_field = shard.get_class_field("pk")
        if pk_field._auto_increment:  # the shard takes the pk the model allocated
            pk_field.__class__ = _shard_pk_class(type(pk_field))
        shards.append(shard)
    cls._limpyd_shard_models = tuple(shards)
    cls.__new__ = staticmethod(_new)  # routes Model(...) to the shard class (inherited by shards)


def _check_supported(cls: Any) -> None:
    """Refuse, at class definition, what a sharded model cannot have yet."""
    # related fields to and from a sharded model, and a sharded RelatedModel (its extended
    # manager, see below), are supported: limpyd._sharded_related
    from limpyd._claims import claimed_fields

    claimed = claimed_fields(cls)
    for name in cls._fields[1:]:
        if cls.get_class_field(name).unique and name not in claimed:
            raise unsupported(cls, "the unique field %s (its values cannot be claimed)" % name)
    for index in cls._multi_fields_index_for_filtering:
        if getattr(index, "unique", False):
            for field in [index.field] + index._other_fields:
                if not isinstance(field, SingleValueField):
                    raise unsupported(
                        cls,
                        "the unique multi-field index %s with the multi-value field %s (its "
                        "combinations cannot be claimed)" % (type(index).__name__, field.name),
                    )
    from limpyd._sharded_extended import is_extended

    if cls.collection_manager is not CollectionManager and not is_extended(cls):
        raise unsupported(
            cls,
            "the collection manager %s (extended collections, limpyd.contrib.collection)"
            % cls.collection_manager.__name__,
        )


_shard_pk_classes: Dict[type, type] = {}


def _shard_pk_class(pk_class: type) -> type:
    """Return the class of the pk field of a shard whose model's pk is ``pk_class`` (an auto pk)."""
    klass = _shard_pk_classes.get(pk_class)
    if klass is None:
        klass = _shard_pk_classes[pk_class] = type("Shard" + pk_class.__name__, (_ShardPK, pk_class), {})
    return klass


class _ShardPK:
    """The auto pk of a shard: the pk the sharded model allocated for the new instance, no counter."""

    def _validate(self, value: Any) -> str:
        if value is not None:
            return super()._validate(value)  # type: ignore[misc] - refuses a given value
        pk = self._instance.__dict__.pop("_limpyd_shard_pk", None)  # type: ignore[attr-defined]
        if pk is None:
            raise ImplementationError(
                "A shard class of %s cannot allocate a pk: create instances with %s(field=value, ...); %s."
                % (_model_path(self._model), self._model.__name__, _DOC)  # type: ignore[attr-defined]
            )
        return pk


# ---------------------------------------------------------------------- instances


def sharded_model(model: Any) -> Any:
    """Return the user's model of ``model`` (itself, or the model a shard class belongs to)."""
    return model.__bases__[0] if model._limpyd_shard is not None else model


def shard_model(model: Any, number: int) -> Any:
    """Return the shard class ``number`` of ``model`` (the model itself when it is not sharded)."""
    model = sharded_model(model)
    shards = model._limpyd_shard_models
    if shards is None:
        if number != 0:
            raise IndexError("%s has one shard (0), not %r" % (model.__name__, number))
        return model
    return shards[number]


def shard_of(model: Any, pk: Any) -> int:
    """Return the shard number of ``pk`` for ``model`` (0 when it is not sharded)."""
    model = sharded_model(model)
    if model._limpyd_shard_models is None:
        return 0
    return shard_index(model.get_class_field("pk").normalize(pk), model._limpyd_shards)


def model_of(model: Any, pk: Any) -> Any:
    """Return the shard class holding ``pk`` for the sharded ``model`` (stored count checked)."""
    check_count(model)
    return model._limpyd_shard_models[shard_of(model, pk)]


def check_count(model: Any, write: bool = False) -> None:
    """Refuse to work on the sharded ``model`` if its stored shard count is not its declared one.

    One command per model and process (``limpyd._shard_count``); ``write``: a creation, which
    stores the declared count when none is stored. A shard class or an unsharded model: nothing.
    """
    if model._limpyd_shard_models is not None:
        _shard_count.check(model, write)


def _check_creation(model: Any, kwargs: Dict[str, Any]) -> None:
    """Check the names and values of a creation before the pk is allocated (as ``_create`` does)."""
    for name, value in kwargs.items():
        if not model.has_field(name):
            raise ValueError("`%s` is not a valid field name for `%s`." % (name, model.__name__))
        if model._field_is_pk(name) or value is None:
            continue
        if isinstance(value, (list, tuple, set, dict)) and not value:
            continue
        model.get_class_field(name).check_creation_value(value)


def _new(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """Return an instance of the shard class of the pk: the ``__new__`` of sharded models.

    ``__init__`` then runs on it as on any instance (load, or create in the shard). A new
    instance with an auto pk gets its pk from the model's counter here, kept in the instance for
    the shard's creation (``_ShardPK`` in the default mode, the script request in atomic mode).
    """
    shards = cls._limpyd_shard_models
    if shards is None:
        if cls._limpyd_shard is not None and kwargs and not args:
            _check_shard_creation(cls, kwargs)
        return object.__new__(cls)
    if len(args) == 1 and not kwargs:
        return object.__new__(model_of(cls, args[0]))
    if not args and not kwargs:
        raise ImplementationError(
            "%s() without a pk nor values: a sharded model needs the pk to choose the shard of an "
            "instance; use %s(pk), %s.lazy_connect(pk) or %s(field=value, ...); %s."
            % (cls.__name__, cls.__name__, cls.__name__, cls.__name__, _DOC)
        )
    if args:  # refused by __init__ (positional and named arguments, or several pks)
        return object.__new__(shards[0])
    pk_field = cls.get_class_field("pk")
    given = [kwargs[name] for name in dict.fromkeys(("pk", pk_field.name)) if kwargs.get(name) is not None]
    if given:  # a PKField value picks the shard (an auto pk refuses it in __init__)
        check_count(cls, write=not pk_field._auto_increment)
        return object.__new__(model_of(cls, given[0]))
    if not pk_field._auto_increment:  # refused by __init__: the pk must be given
        return object.__new__(shards[0])
    connection = cls.database.connection
    if _atomic.in_pipeline(cls) or getattr(connection, "_limpyd_cluster_pipeline", False):
        raise unsupported(cls, "creating an instance inside a pipeline")
    _check_creation(cls, kwargs)
    check_count(cls, write=True)
    counter = make_key(cls._name, "max_pk")
    if cls._limpyd_claims and not is_batched(connection):
        from limpyd import _claims

        pk = pk_field.normalize(_claims.allocate_pk(cls, counter, kwargs))  # a duplicate refused here
    else:
        pk = pk_field.normalize(send_ahead_of_locks(connection, "INCRBY", counter, 1))
    instance = object.__new__(shards[shard_index(pk, len(shards))])
    instance.__dict__["_limpyd_shard_pk"] = pk
    return instance


def _check_shard_creation(shard: Any, kwargs: Dict[str, Any]) -> None:
    """Refuse a creation through a shard class that would put the instance in the wrong shard."""
    model = sharded_model(shard)
    pk_field = model.get_class_field("pk")
    given = [kwargs[name] for name in dict.fromkeys(("pk", pk_field.name)) if kwargs.get(name) is not None]
    if pk_field._auto_increment and not given:
        raise ImplementationError(
            "A shard class of %s cannot allocate a pk: create instances with %s(field=value, ...); %s."
            % (_model_path(model), model.__name__, _DOC)
        )
    if given and not pk_field._auto_increment and shard_of(model, given[0]) != shard._limpyd_shard:
        raise ImplementationError(
            "The pk %r of %s belongs to the shard %d, not %d: create instances with %s(...); %s."
            % (given[0], model.__name__, shard_of(model, given[0]), shard._limpyd_shard, model.__name__, _DOC)
        )


# ---------------------------------------------------------------------- collections


def _numeric_key(pk: str) -> Tuple[float, bytes]:
    """Return the key ``SORT`` (numeric) orders ``pk`` by: its value, then its bytes (ties)."""
    return _score(pk), pk.encode("utf-8")


def _score(value: Optional[str]) -> float:
    """Return the double numeric ``SORT`` reads from ``value`` (``strtod``; missing or empty: 0).

    Sort values reaching this were accepted by the server (it refuses the others: "One or more
    scores can't be converted into double"); besides what ``float`` reads, ``strtod`` reads
    hexadecimal (``0x`` prefix) and the empty string (0: nothing converted). ``ValueError`` for
    what is not a number (a pk: the order of an unsorted collection then has none).
    """
    if value is None:
        return 0.0
    if "_" in value:  # float("1_0") reads it, strtod does not
        raise ValueError("not a number for SORT: %r" % value)
    try:
        return float(value)
    except ValueError:
        stripped = value.strip()
        if not stripped:
            return 0.0
        if stripped.lstrip("+-")[:2].lower() != "0x":  # float.fromhex("abc") would read it
            raise
        return float.fromhex(stripped)


def _row_score(row: Tuple[Any, ...]) -> float:
    """Return the score of a row of a sort by a field: ``(pk, sort value, values...)``."""
    return _score(row[1])


def _tie_key(pk: str) -> Tuple[int, float, bytes]:
    """Return the order of ``pk`` among equal ``ALPHA`` values: numeric pk order, then bytes.

    ``SORT ... ALPHA`` leaves equal values in the order its sort algorithm gives: the order it
    read the set in (an intset, the set of integer pks: ascending numbers) for a full sort, and no
    defined order for a ``LIMIT`` on a single server; the merge uses that numeric pk order always.
    """
    try:
        return (0,) + _numeric_key(pk)
    except ValueError:
        return 1, 0.0, pk.encode("utf-8")


def _arrange(
    items: List[Any], pk_of: Any, value_of: Any, alpha: bool, descending: bool, tie_key: Any = _tie_key
) -> List[Any]:
    """Return ``items`` in the order of ``SORT`` (``value_of`` ``None``: by the pks themselves).

    Numeric: by the double of the value (missing: 0), ties by the bytes of the pk, the whole
    reversed by ``DESC``. ``ALPHA``: by the bytes of the value (C locale), missing values first,
    ``DESC`` reversing the values only (equal values keep the order ``SORT`` read them in:
    ``tie_key`` of the pk, :func:`_tie_key` for a set).
    """
    if value_of is None:
        if alpha:
            return sorted(items, key=lambda item: pk_of(item).encode("utf-8"), reverse=descending)
        return sorted(items, key=lambda item: _numeric_key(pk_of(item)), reverse=descending)
    if not alpha:
        return sorted(
            items,
            key=lambda item: (_score(value_of(item)), pk_of(item).encode("utf-8")),
            reverse=descending,
        )
    items = sorted(items, key=lambda item: tie_key(pk_of(item)))

    def alpha_key(item: Any) -> Tuple[bool, bytes]:
        value = value_of(item)
        return (False, b"") if value is None else (True, value.encode("utf-8"))

    return sorted(items, key=alpha_key, reverse=descending)  # stable: ties keep the pk order


def _candidates(parts: List[List[Any]], score_of: Any, limit: int, descending: bool) -> List[Any]:
    """Return the items of ``parts`` that can be among the first ``limit`` of their numeric sort.

    Each part is a shard's reply, sorted by the server by ``score_of`` (``descending`` or not),
    equal scores in any order. The parts are merged lazily by score alone (``heapq.merge``):
    the first ``limit`` items, then every item of the same score as the last of them (a tie at
    the edge is decided by the pks, by :func:`_arrange`). The other items cannot be among the
    first ``limit``: only ``limit`` scores and the shards' heads are read, not every item.
    """
    merged = heapq.merge(*parts, key=score_of, reverse=descending)
    taken = list(itertools.islice(merged, limit))
    if len(taken) == limit and limit:
        edge = score_of(taken[-1])
        for item in merged:
            if score_of(item) != edge:
                break
            taken.append(item)
    return taken


#: the shards' keys of a shard 0 key (``ShardedCollection._direct_keys``), per model: shard 0's
#: key names its layout (renaming the shards for a cluster renames it too), so it is kept as is
_DIRECT_KEYS: Dict[Tuple[type, str], List[str]] = {}
#: the due instances each shard's purge removes at most in a read of every shard (``_purge_together``)
_PURGE_LIMIT = 1000

#: the same for the keys each shard intersects (``ShardedCollection._intersected_keys``)
_INTERSECTED_KEYS: Dict[Tuple[type, Tuple[str, ...]], List[Tuple[str, ...]]] = {}
#: entries of :data:`_DIRECT_KEYS` (and of :data:`_INTERSECTED_KEYS`) at most (then forgotten, all at once)
_MAX_DIRECT_KEYS = 4096


def _equality_keys(collection: CollectionManager) -> Optional[Tuple[Any, ...]]:
    """Return the sets whose intersection is the result of ``collection`` when its filters are
    served by limpyd's own equality and range indexes (at least two filters, or one ``__in`` or
    range), and nothing else; else None. Sends no command.

    Each entry is a set key (``field=value``: what ``CollectionManager._direct_key`` reads for one
    filter; a multi-field ``EqualIndexWith`` filter: its combination's set), a tuple of entries
    to unite first (``__in``, as the indexes unite them), or a :class:`_RangeFilter`. None also
    for an empty ``__in`` (the core then answers without a command).
    """
    lazy = collection._lazy_collection
    if (
        lazy["pks"]
        or collection._final_set is not None
        or collection._sort_limits is not None
        or not _direct_allowed(type(collection))
    ):
        return None
    keys = filter_entries(collection)
    if (
        keys is None
        or not keys
        or (len(keys) == 1 and isinstance(keys[0], str) and collection._direct_key() is not None)
    ):
        return None  # no filter, or one equality filter the core reads directly: ``_direct_keys``
    return tuple(keys)


#: the methods a range index must not replace for its filter to be planned (the core's)
_RANGE_METHODS = (
    "get_filtered_keys",
    "_filter_into",
    "call_script",
    "get_boundaries",
    "normalize_value",
    "get_storage_key",
)


def _range_base(index: Any) -> Optional[type]:
    """Return ``TextRangeIndex`` or ``NumberRangeIndex`` when ``index`` is one of them or a
    configured subclass (a prefix, a key, a transform) filtering as they do, else None."""
    klass = type(index)
    for base in (TextRangeIndex, NumberRangeIndex):
        if isinstance(index, base) and all(
            getattr(klass, name) is getattr(base, name) for name in _RANGE_METHODS
        ):
            return base
    return None


def filter_entries(collection: CollectionManager) -> Optional[List[Any]]:
    """Return the entry of :func:`_equality_keys` of each filter of ``collection`` (``[]``: no
    filter), or None when one of them cannot be planned (or is an empty ``__in``). No command."""
    try:
        sets = collection._reduce_related_filters(collection._lazy_collection["sets"])  # multi-field combined
    except ImplementationError:
        return None  # raised again by the core's path
    entries: List[Any] = []
    for item in sets:
        entry = _filter_entry(item) if isinstance(item, ParsedFilter) else None
        if not entry:
            return None
        entries.append(entry)
    return entries


class ShardPks:
    """An entry of a shard's intersection: pks of that shard given by the client (an extended
    collection's ``intersect``), put in a temporary set of its slot (``SADD``) first."""

    __slots__ = ("pks",)

    def __init__(self, pks: Tuple[str, ...]) -> None:
        self.pks = pks


def _filter_entry(item: ParsedFilter) -> Any:
    """Return the entry of :func:`_equality_keys` answering the filter ``item`` (an empty tuple
    for an empty ``__in``), or None for an index whose filter may send commands of its own (a
    subclass of the user's replacing how it filters, a sorted-set index)."""
    from limpyd.contrib.indexes import EqualIndexWith, MultiIndexes

    index = item.index
    klass = type(index)
    filter_type = index.remove_prefix(item.suffix)
    if _range_base(index) is not None:
        if filter_type == "in":  # each value filtered on its own, then united, as the index does
            return tuple(_range_filter(item, "eq", value) for value in set(item.value))
        return _range_filter(item, filter_type, item.value)
    if klass.get_filtered_keys is EqualIndex.get_filtered_keys and item.related_filters is None:
        if filter_type == "in":
            return tuple(
                dict.fromkeys(
                    index.get_storage_key(*item.extra_field_parts, value, transform_value=False)
                    for value in set(item.value)
                )
            )
        return index.get_storage_key(*item.extra_field_parts, item.value, transform_value=False)
    if klass.get_filtered_keys is EqualIndexWith.get_filtered_keys and item.related_filters is not None:
        keys, united = index.filtered_storage_keys(
            item.suffix, *item.extra_field_parts, item.value, related_filters=item.related_filters
        )
        return tuple(keys) if united else (keys[0] if keys else ())
    if klass.get_filtered_keys is MultiIndexes.get_filtered_keys and item.related_filters is None:
        # the date/time indexes: the first sub-index handling the suffix, with the key part added
        args = index.prepare_args([*item.extra_field_parts, item.value], transform=False)
        for sub_index in index._indexes:
            if sub_index.can_handle_suffix(item.suffix):
                return _filter_entry(ParsedFilter(sub_index, item.suffix, tuple(args[:-1]), args[-1], None))
        return None
    return None


class _RangeFilter:
    """A range filter of shard 0 (``TextRangeIndex``/``NumberRangeIndex``): the index's Lua
    filter script, run on its sorted set ``key`` with ``arguments``, stores the matching pks
    into a temporary set, as ``BaseRangeIndex._filter_into`` does."""

    __slots__ = ("key", "lua", "sha", "arguments")

    def __init__(self, key: str, lua: str, arguments: Tuple[Any, ...]) -> None:
        self.key, self.lua, self.arguments = key, lua, arguments
        self.sha = hashlib.sha1(lua.encode("utf-8")).hexdigest()

    def renamed(self, prefix: str, name: str) -> "_RangeFilter":
        return _RangeFilter(_renamed(self.key, prefix, name), self.lua, self.arguments)

    def _identity(self) -> Tuple[Any, ...]:
        return (self.key, self.sha, self.arguments)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _RangeFilter) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


def _range_filter(item: Any, filter_type: Optional[str], value: Any) -> _RangeFilter:
    """Return the :class:`_RangeFilter` of the range filter ``item`` of ``TextRangeIndex`` or
    ``NumberRangeIndex`` for ``filter_type`` and ``value`` (one value of an ``__in``: ``eq``)."""
    index = item.index
    klass = _range_base(index)
    value = index.normalize_value(value, transform=False)
    start, end, exclude = index.get_boundaries(filter_type, value)
    if exclude is None:
        exclusion: Any = ""
    elif isinstance(exclude, bytes):
        exclusion = b"=" + exclude
    else:
        exclusion = "=" + str(exclude)
    arguments: Tuple[Any, ...] = ("set", start, end, exclusion)
    if klass is TextRangeIndex:
        arguments += (index.separator,)
    key = index.get_storage_key(*item.extra_field_parts, item.value)
    return _RangeFilter(key, index.lua_filter_script["lua"], arguments)


def _shard_entry(entry: Any, prefix: str, name: str) -> Any:
    """Return an entry of :func:`_equality_keys` (shard 0, named ``prefix``) for the shard ``name``."""
    if isinstance(entry, _RangeFilter):
        return entry.renamed(prefix, name)
    if isinstance(entry, tuple):
        return tuple(_shard_entry(member, prefix, name) for member in entry)
    return _renamed(entry, prefix, name)


def _shard_steps(
    shard: Any, sets: Tuple[Any, ...]
) -> Tuple[List[Tuple[str, Tuple[Any, ...]]], str, List[str]]:
    """Return ``(commands, final key, temporary keys)`` making the intersection of ``sets`` (see
    :func:`_equality_keys`, under ``shard``'s name) in a temporary key of the shard's slot: a
    ``SUNIONSTORE`` per union, then a ``SINTERSTORE`` of everything (none for one union alone)."""
    commands: List[Tuple[str, Tuple[Any, ...]]] = []
    temporary: List[str] = []
    inputs = []

    def ranged(entry: _RangeFilter) -> str:
        key = make_key(shard._name, "__collection__", "tmp", uuid.uuid4().hex)
        temporary.append(key)
        commands.append((key, ("EVALSHA", entry.sha, 2, entry.key, key, *entry.arguments)))
        return key

    for entry in sets:
        if isinstance(entry, ShardPks):
            given = make_key(shard._name, "__collection__", "tmp", uuid.uuid4().hex)
            temporary.append(given)
            commands.append((given, ("SADD", given, *entry.pks)))
            inputs.append(given)
        elif isinstance(entry, _RangeFilter):
            inputs.append(ranged(entry))
        elif isinstance(entry, tuple):
            members = [ranged(member) if isinstance(member, _RangeFilter) else member for member in entry]
            union = make_key(shard._name, "__collection__", "tmp", uuid.uuid4().hex)
            temporary.append(union)
            commands.append((union, ("SUNIONSTORE", union, *members)))
            inputs.append(union)
        else:
            inputs.append(entry)
    if len(inputs) == 1:
        return commands, inputs[0], temporary
    final = make_key(shard._name, "__collection__", "final", uuid.uuid4().hex)
    temporary.append(final)
    commands.append((final, ("SINTERSTORE", final, *inputs)))
    return commands, final, temporary


def _renamed(key: Any, prefix: str, name: str) -> Any:
    """Return ``key`` (a key or ``SORT`` pattern of shard 0, named ``prefix``) under the shard name ``name``."""
    if isinstance(key, str) and key.startswith(prefix + ":"):
        return name + key[len(prefix) :]
    return key


def _same(value: Any) -> Any:
    return value


class _ShardedInstances(_CheckedInstances):
    """Convert pks to instances checked as ``Model(pk)`` (the core converter, :class:`_CheckedInstances`):
    the ``SISMEMBER`` of each pk in its shard's collection key, a chunk of the results at a time,
    every shard's checks sent together (one round trip per node; shard after shard inside a
    write-behind batch or through a client whose methods were replaced)."""

    def _model_of(self, pk: Any) -> type:
        return shard_model(self.model, shard_of(self.model, pk))

    def _send_checks(self, connection: Any, chunk: List[Any]) -> List[Any]:
        commands = []
        for pk in chunk:
            pk_field = self._model_of(pk).get_field("pk")
            key = pk_field.collection_key
            commands.append((key, ("SISMEMBER", key, pk_field.normalize(pk))))
        if per_node_allowed(connection) and current_batch(self.model.database) is None:
            return send_per_node(connection, commands)
        groups: Dict[type, List[int]] = {}  # through the client's own methods: one round trip per shard
        for position, pk in enumerate(chunk):
            groups.setdefault(self._model_of(pk), []).append(position)
        replies: List[Any] = [None] * len(chunk)
        for positions in groups.values():
            sent = send_commands(connection, [(commands[position][1], {}) for position in positions])
            for position, reply in zip(positions, sent):
                replies[position] = reply
        return replies


class ShardedCollection:
    """The collection of a sharded model: the core collection of each shard, merged on the client.

    Gives what the collection of a 1-shard model holding the same data gives: filters (those the
    core accepts), ``len()``, iteration (numeric pk order for an unsorted collection whose pks
    are all numbers), ``sort()`` by pk or by a single-value field (``by``, ``desc``, ``alpha``;
    ``by="nosort"``), indexes and slices, ``instances()``, and ``values()`` / ``values_list()``
    as ``limpyd.contrib.collection.ExtendedCollectionManager`` gives them. A pk filter asks its
    shard only. Not supported yet (each raises ``ImplementationError``): ``sort(by=<pattern or
    multi-value field>)`` and the other ``SORT`` options, the other methods of extended
    collections. ``delete()`` deletes shard by shard.
    """

    def __new__(cls, model: type) -> "ShardedCollection":
        if cls is ShardedCollection:  # extended collections: limpyd._sharded_extended
            from limpyd._sharded_extended import ShardedExtendedCollection, is_extended

            if is_extended(model):
                cls = ShardedExtendedCollection
        return object.__new__(cls)

    def __init__(self, model: type) -> None:
        self.model = model
        #: the filters given, in order (each shard parses them against its own fields)
        self._filters: List[Dict[str, Any]] = []
        #: ``None`` (unsorted), ``"nosort"``, or ``"asc"``/``"desc"``
        self._order: Optional[str] = None
        #: the field sorted by (``None``: the pk), and whether the sort is ``ALPHA``
        self._by: Optional[str] = None
        self._alpha = False
        #: ``values()``/``values_list()``: ``(fields as given, names, mode)``, else ``None``
        self._values: Optional[Tuple[Tuple[Any, ...], List[Any], str]] = None
        self._instances = False
        self._lazy_instances = False
        self._cache: Optional[List[Any]] = None
        self._len: Optional[int] = None
        self._shard_collections: Optional[List[CollectionManager]] = None
        self._one: Optional[CollectionManager] = None
        #: shard 0's collection, whose key and ``SORT`` options give every shard's (``_direct_keys``)
        self._sample: Optional[CollectionManager] = None
        #: checks the filters (and gives the pk filters) without any Redis command: shard 0's collection
        self._template = CollectionManager(shard_model(model, 0))

    # -------------------------------------------------------------------- building (no Redis)

    def _add_filters(self, **filters: Any) -> "ShardedCollection":
        if filters:
            self._template._add_filters(**filters)  # raises for a bad filter, as the core does
            self._filters.append(filters)
            self._cache = self._len = self._shard_collections = self._one = self._sample = None
        return self

    def __call__(self, **filters: Any) -> "ShardedCollection":
        """Return a new collection with ``filters`` added (the original is untouched)."""
        return self.clone()._add_filters(**filters)

    def clone(self) -> "ShardedCollection":
        """Return a copy of this collection: same filters, result type and sort; fresh caches."""
        collection = type(self)(self.model)
        for filters in self._filters:
            collection._add_filters(**filters)
        collection._order = self._order
        collection._by = self._by
        collection._alpha = self._alpha
        collection._values = self._values
        collection._instances = self._instances
        collection._lazy_instances = self._lazy_instances
        collection._len = self._len
        return collection

    def sort(self, **parameters: Any) -> "ShardedCollection":
        """Return a clone sorted by pk or by a single-value field (``by``, ``desc``, ``alpha``), or ``by="nosort"``."""
        self._template.sort(**parameters)  # refuses unknown keywords and unknown ``by`` as the core does
        for name in sorted(parameters):
            if name not in ("by", "desc", "alpha") and parameters[name] not in (None, False):
                raise unsupported(self.model, "sort(%s=...)" % name)
        by = parameters.get("by")
        desc = bool(parameters.get("desc"))
        if by is not None and by.startswith("-"):
            by, desc = by[1:], True
        collection = self.clone()
        collection._by, collection._alpha = None, bool(parameters.get("alpha"))
        if by == "nosort":
            collection._order, collection._alpha = "nosort", False
            return collection
        if by is not None and not self.model._field_is_pk(by):
            if not (self.model.has_field(by) and isinstance(self.model.get_field(by), SingleValueField)):
                what = "a pattern" if not self.model.has_field(by) else "a multi-value field"
                raise unsupported(self.model, "sort(by=%r) (sorting by %s)" % (parameters["by"], what))
            collection._by = by
        collection._order = "desc" if desc else "asc"
        return collection

    def instances(self, lazy: bool = False) -> "ShardedCollection":
        """Return a clone returning instances (``lazy``: not existence-checked) instead of pks."""
        collection = self.clone()
        collection._instances, collection._lazy_instances = True, lazy
        collection._values = None
        return collection

    def primary_keys(self) -> "ShardedCollection":
        """Return a clone returning primary keys (cancels ``instances()`` and ``values*()``)."""
        collection = self.clone()
        collection._instances = collection._lazy_instances = False
        collection._values = None
        return collection

    def _values_clone(self, fields: Tuple[Any, ...], checked: Any) -> "ShardedCollection":
        values = checked._values
        collection = self.clone()
        collection._instances = collection._lazy_instances = False
        collection._values = (fields, list(values["fields"]["names"]), values["mode"])
        return collection

    def values(self, *fields: Any) -> "ShardedCollection":
        """Return a clone returning one dict ``{name: value}`` per pk, as ``ExtendedCollectionManager.values``."""
        from limpyd.contrib.collection import ExtendedCollectionManager

        checked = ExtendedCollectionManager(shard_model(self.model, 0)).values(*fields)  # raises as it does
        return self._values_clone(fields, checked)

    def values_list(self, *fields: Any, **kwargs: Any) -> "ShardedCollection":
        """Return a clone returning tuples (bare values with ``flat=True``), as ``ExtendedCollectionManager.values_list``."""
        from limpyd.contrib.collection import ExtendedCollectionManager

        checked = ExtendedCollectionManager(shard_model(self.model, 0)).values_list(*fields, **kwargs)
        return self._values_clone(fields, checked)

    def delete(self, batch_size: int = 1000) -> int:
        """Delete every instance of this collection; return how many.

        As the core collection does: the pks read first (one evaluation, every shard's reads
        together), then deleted as ``Model.delete_many`` does (each batch split by shard, every
        shard's part sent together).
        """
        from limpyd._bulk import _check_batch_size

        _check_batch_size(self.model, batch_size)
        pks = list(self.primary_keys())
        deleted = self.model.delete_many(pks, batch_size=batch_size) if pks else 0
        self._cache = self._len = self._shard_collections = self._one = None
        return deleted

    def __getattr__(self, name: str) -> Any:
        from limpyd.contrib.collection import ExtendedCollectionManager

        if not name.startswith("__") and hasattr(ExtendedCollectionManager, name):
            raise unsupported(self.model, "%s (extended collections, limpyd.contrib.collection)" % name)
        raise AttributeError("%r object has no attribute %r" % (type(self).__name__, name))

    # -------------------------------------------------------------------- the shards' collections

    def _rich(self) -> bool:
        """Return whether the shards give rows (pk, sort value, values) instead of bare pks."""
        return self._by is not None or self._values is not None

    def _shard_collection(self, number: int, rows: bool) -> CollectionManager:
        """Return the collection of the shard ``number``: its pks, its rows (``rows``), or its values.

        Pks: the core collection, sorted as this one. Rows and values: an
        ``ExtendedCollectionManager`` of the shard sorted as this one, whose ``values_list`` reads
        the pk, the sort value and the values in the ``SORT`` giving the order (``GET`` patterns).
        """
        shard = shard_model(self.model, number)
        if rows or self._values is not None:
            from limpyd.contrib.collection import ExtendedCollectionManager

            collection: Any = ExtendedCollectionManager(shard)
        else:
            collection = CollectionManager(shard)
        for filters in self._filters:
            collection._add_filters(**filters)
        collection = self._shard_extras(collection, number)
        if self._order == "nosort":
            collection = collection.sort(by="nosort")
        elif self._order is not None:
            parameters: Dict[str, Any] = {"desc": self._order == "desc", "alpha": self._alpha}
            if self._by is not None:
                parameters["by"] = self._by
            collection = collection.sort(**{name: value for name, value in parameters.items() if value})
        if rows:
            names = self._values[1] if self._values is not None else []
            collection = collection.values_list(*(["pk"] + ([self._by] if self._by else []) + names))
        elif self._values is not None:
            fields, _, mode = self._values
            if mode == "dicts":
                collection = collection.values(*fields)
            else:
                collection = collection.values_list(*fields, flat=mode == "flat")
        return collection

    def _shard_extras(self, collection: Any, number: int) -> Any:
        """Return the shard's ``collection``, filters added, with what a subclass adds (intersections)."""
        return collection

    def _shards(self) -> List[CollectionManager]:
        """Return the collection of each shard concerned (pks or rows; kept for this collection's life).

        With a pk filter, only the pk's shard is concerned (two different pks: nothing matches,
        which that shard's collection says too).
        """
        if self._shard_collections is None:
            pks = self._template._lazy_collection["pks"]
            numbers = [shard_of(self.model, next(iter(pks)))] if pks else range(self.model._limpyd_shards)
            rich = self._rich()
            self._shard_collections = [self._shard_collection(number, rich) for number in numbers]
        return self._shard_collections

    def _one_shard(self) -> Optional[CollectionManager]:
        """Return the shard collection answering alone (pk filter), in this collection's result type."""
        pks = self._template._lazy_collection["pks"]
        if not pks:
            return None
        if self._one is None:
            collection = self._shard_collection(shard_of(self.model, next(iter(pks))), False)
            self._one = collection.instances(lazy=self._lazy_instances) if self._instances else collection
        return self._one

    def _converter(self) -> Any:
        if not self._instances:
            return None
        if self._lazy_instances:
            return self.model.lazy_connect
        return _ShardedInstances(self.model)

    def _merge(self, parts: List[List[Any]], reverse: bool) -> List[Any]:
        """Merge the shards' results (pks or rows) in the order of this collection (reversed if ``reverse``)."""
        items = [item for part in parts for item in part]
        if self._order == "nosort":
            return items
        descending = (self._order == "desc") != reverse
        if not self._rich():
            return _arrange(items, _same, None, self._alpha, descending)
        value_of = operator.itemgetter(1) if self._by is not None else None
        return _arrange(items, operator.itemgetter(0), value_of, self._alpha, descending, self._read_order())

    def _read_order(self) -> Any:
        """Return the key of the order ``SORT`` reads an unsharded model's result in (its ties
        under ``ALPHA`` keep it): the pks of a set, see :func:`_tie_key`."""
        return _tie_key

    def _output(self, items: List[Any]) -> List[Any]:
        """Return the results of the merged ``items``: pks, or the values asked (dicts, tuples, bare values)."""
        if not self._rich():
            return items
        if self._values is None:
            return [item[0] for item in items]
        _, names, mode = self._values
        skip = 2 if self._by is not None else 1
        if mode == "flat":
            return [item[skip] for item in items]
        if mode == "tuples":
            return [tuple(item[skip:]) for item in items]
        return [dict(zip(names, item[skip:])) for item in items]

    def _direct_keys(self) -> Optional[List[str]]:
        """Return the key holding each shard's result when every shard reads one key (no filter
        or one equality filter), else None: those reads then go out together, one round trip per
        node (``limpyd._per_node``) instead of one per shard.

        Not for a write-behind batch, a pipeline, or a client whose methods were replaced. An
        expiring model's shards purge their due instances first, together
        (``_purge_together``).
        """
        if not self._per_node_possible():
            return None
        key = self._template._direct_key()  # shard 0's collection, with the same filters
        if key is None:
            return None
        cached = _DIRECT_KEYS.get((self.model, key))
        if cached is not None:
            return cached
        prefix = shard_model(self.model, 0)._name
        if not key.startswith(prefix + ":"):
            return None
        keys = [_renamed(key, prefix, shard._name) for shard in self.model._limpyd_shard_models]
        if len(_DIRECT_KEYS) >= _MAX_DIRECT_KEYS:
            _DIRECT_KEYS.clear()
        _DIRECT_KEYS[(self.model, key)] = keys
        return keys

    def _per_node_possible(self) -> bool:
        """Return whether the shards may be read together (``_direct_keys``, ``_intersected_keys``)."""
        return (
            per_node_allowed(self.model.get_connection())
            and current_batch(self.model.database) is None
            and not _atomic.in_pipeline(self.model)
        )

    def _intersected_keys(self) -> Optional[List[Tuple[Any, ...]]]:
        """Return, for each shard, the sets whose intersection is its result when the filters are
        several equality filters or ``__in`` filters (:func:`_equality_keys`), else None.

        Each shard then makes the intersection in a temporary key (:func:`_shard_steps`), reads it
        and deletes its temporary keys, and those commands of every shard go out together: one
        round trip per node (``_read_directly``); ``len()`` of equality filters sends one
        ``SINTERCARD`` per shard, all together.
        """
        if not self._per_node_possible():
            return None
        keys = _equality_keys(self._template)  # shard 0's collection, with the same filters
        if keys is None:
            return None
        cached = _INTERSECTED_KEYS.get((self.model, keys))
        if cached is not None:
            return cached
        prefix = shard_model(self.model, 0)._name
        every_key = [
            key
            for entry in keys
            for member in (entry if isinstance(entry, tuple) else (entry,))
            for key in (getattr(member, "key", member),)
        ]
        if not all(key.startswith(prefix + ":") for key in every_key):
            return None
        per_shard = [
            tuple(_shard_entry(entry, prefix, shard._name) for entry in keys)
            for shard in self.model._limpyd_shard_models
        ]
        if len(_INTERSECTED_KEYS) >= _MAX_DIRECT_KEYS:
            _INTERSECTED_KEYS.clear()
        _INTERSECTED_KEYS[(self.model, keys)] = per_shard
        return per_shard

    def _read_keys(self) -> Optional[List[Any]]:
        """Return what each shard reads when the shards can be read together, else None: its key
        (``_direct_keys``) or the keys it intersects (``_intersected_keys``)."""
        keys: Optional[List[Any]] = self._direct_keys()
        if keys is None:
            keys = self._intersected_keys()
        if keys is not None:
            self._purge_together()
        return keys

    def _purge_together(self) -> None:
        """Remove the due instances of every shard of an expiring model before a read of them
        all: each shard's purge script (``purge_expired(1000)``), every shard's call sent together
        (one round trip per node). A shard with more due (1000 purged), or whose script or
        function the server lost, purges as it does alone (``_purge_due``)."""
        model = self.model
        if not model._limpyd_expiring:
            return
        from limpyd._sharded_bulk import run_on_shards

        request = {"op": "purge", "limit": _PURGE_LIMIT}
        replies = run_on_shards(model, dict.fromkeys(range(len(model._limpyd_shard_models)), request))
        for number, reply in replies.items():
            if not reply or reply[0] != "ok" or int(reply[1]) >= _PURGE_LIMIT:
                model._limpyd_shard_models[number]._purge_due()  # more due: purges until none

    def _read_directly(
        self, keys: List[str], window: Optional[Tuple[int, int, bool]]
    ) -> Optional[List[List[Any]]]:
        """Return each shard's pks (rows: tuples of the ``GET`` values) read from its key in
        ``keys``, all in one step, or None when shard 0's collection sends something else than
        one ``SMEMBERS``/``SORT`` (a score sort); ``window``: ``(start, count, reverse)`` as the
        core's windows, a reversed window's reply turned back as the core turns it."""
        if self._sample is None:
            self._sample = self._shard_collection(0, self._rich())
        collection: Any = self._sample  # every shard sends the same, under its own name
        if window is not None:
            collection._sort_limits = {"start": window[0], "num": window[1]}
            collection._sort_limits_reverse = window[2]
        try:
            options = collection._prepare_sort_options(False)
        finally:
            collection._reset_if_sort_limits(True)
        if getattr(collection, "_score_plan", None) is not None:
            return None
        connection = self.model.get_connection()
        if keys and isinstance(keys[0], tuple):
            intersected = self._read_intersections(connection, keys, options)
            return None if intersected is None else self._parts(intersected, options, window)
        commands = [
            self._read_command(connection, key, options, shard)
            for key, shard in zip(keys, self.model._limpyd_shard_models)
        ]
        if None in commands:
            return None
        replies = send_per_node(connection, commands)  # type: ignore[arg-type]
        for position, reply in enumerate(replies):
            if isinstance(reply, redis.exceptions.NoScriptError):  # a node restarted: the script loads again
                replies[position] = cluster_sort(
                    connection, keys[position], **self._shard_options(options, position)
                )
        raise_first_error(replies)
        return self._parts(replies, options, window)

    def _read_intersections(
        self, connection: Any, keys: List[Tuple[str, ...]], options: Optional[Dict[str, Any]]
    ) -> Optional[List[Any]]:
        """Return each shard's replies to the read of the intersection of its ``keys``: per shard
        the steps of :func:`_shard_steps` (``SUNIONSTORE``, ``SINTERSTORE`` into temporary keys of
        its slot), the read of the final key, ``DEL`` of the temporary keys, every shard's commands
        sent together; None when a node lost the ``SORT`` script (the shard after shard path then
        loads it again)."""
        commands: List[Tuple[str, Tuple[Any, ...]]] = []
        reads = []
        with temporary_keys(self.model.database):  # deleted again if a round trip is lost
            for shard_sets, shard in zip(keys, self.model._limpyd_shard_models):
                if not shard_sets:  # nothing can match in this shard: not asked
                    reads.append(None)
                    continue
                steps, final, temporary = _shard_steps(shard, shard_sets)
                read = self._read_command(connection, final, options, shard)
                if read is None:
                    return None
                for key in temporary:
                    register_temporary_key(key)
                commands += steps
                reads.append(len(commands))
                commands.append(read)
                if temporary:  # none for one set read as it is (a multi-field index's)
                    commands.append((final, ("DEL", *temporary)))
            replies = send_per_node(connection, commands)
        if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
            return None  # a filter or SORT script not loaded: the rest ran without it, in vain
        raise_first_error(replies)
        return [[] if position is None else replies[position] for position in reads]

    def _parts(
        self, replies: List[Any], options: Optional[Dict[str, Any]], window: Optional[Tuple[int, int, bool]]
    ) -> List[List[Any]]:
        """Return each shard's items from its reply (``GET`` values grouped in rows)."""
        gets = len(options.get("get") or ()) if options else 0
        parts = []
        for reply in replies:
            items = list(reply)
            if gets:
                items = [tuple(items[index : index + gets]) for index in range(0, len(items), gets)]
            parts.append(items[::-1] if window is not None and window[2] else items)
        return parts

    def _shard_options(self, options: Dict[str, Any], number: int) -> Dict[str, Any]:
        """Return the ``SORT`` options of shard 0 (``options``) for the shard ``number``: its patterns."""
        prefix, name = shard_model(self.model, 0)._name, shard_model(self.model, number)._name
        shard_options = dict(options)
        if options.get("by") is not None:
            shard_options["by"] = _renamed(options["by"], prefix, name)
        if options.get("get"):
            shard_options["get"] = [_renamed(pattern, prefix, name) for pattern in options["get"]]
        return shard_options

    def _read_command(self, connection: Any, key: str, options: Optional[Dict[str, Any]], shard: Any) -> Any:
        """Return ``(key, arguments)`` of the read of ``key`` with shard 0's ``options`` for ``shard``."""
        if options is None:
            return key, ("SMEMBERS", key)
        options = self._shard_options(options, shard._limpyd_shard)
        if self.model.database.is_cluster and needs_sort_script(options.get("by"), options.get("get")):
            script = _sort_script(getattr(connection, "_limpyd_real", connection))
            arguments = sort_script_arguments(script.sha, key, options)
        else:
            arguments = sort_arguments(key, options)
        return None if arguments is None else (key, arguments)

    def _fetch_all(self) -> List[Any]:
        """Return every result, in this collection's order (unsorted pks: numeric order when every pk is a number)."""
        parts = self._all_parts()
        if self._order is not None or self._rich():
            return self._output(self._merge(parts, False))
        pks = [pk for part in parts for pk in part]
        try:
            return sorted(pks, key=_numeric_key)
        except ValueError:  # pks that are not numbers: the order of an unsorted set (none)
            return pks

    def _all_parts(self) -> List[List[Any]]:
        """Return every result of each shard (pks or rows, unmerged): every shard's reads in one
        step when they can go together (``_read_keys``), else shard after shard."""
        keys = self._read_keys()
        parts = self._read_directly(keys, None) if keys is not None else None
        if parts is None:
            parts = [list(collection) for collection in self._shards()]
        return parts

    def _fetch_window(self, start: int, count: int, reverse: bool) -> List[Any]:
        """Return the window ``LIMIT start count`` (``count`` -1: to the end), read from the end if ``reverse``.

        Each shard gives its first ``start + count`` results in that direction (sorted by Redis:
        the order of the windows of the core collection, numeric pk order when unsorted), merged,
        then cut. A window read from the end always has a count (``CollectionManager._optimize_slice``).
        """
        stop = None if count < 0 else start + count
        keys = self._read_keys() if stop != 0 else None
        parts = None
        if keys is not None:
            parts = self._read_directly(keys, (0, -1 if stop is None else stop, reverse))
        if parts is None:
            parts = []
            for collection in self._shards():
                if reverse:  # the core reads the last ``stop`` backwards (SORT ... DESC LIMIT 0 stop)
                    parts.append(list(collection[-stop:]))  # type: ignore[operator]
                else:
                    parts.append(list(collection[0:stop]))
        if (
            stop is not None
            and not reverse
            and self._by is not None
            and not self._alpha
            and self._order in ("asc", "desc")
        ):
            # a numeric sort by a field, read forwards: each part comes sorted by its score
            try:
                parts = [_candidates(parts, _row_score, stop, self._order == "desc")]
            except ValueError:  # not a number: the whole merge below raises as it raises
                pass
        merged = self._merge(parts, reverse)
        return self._output(merged[start:] if stop is None else merged[start:stop])

    # -------------------------------------------------------------------- evaluation

    def __iter__(self) -> CollectionResults:
        one = self._one_shard()
        if one is not None:
            return one.__iter__()
        if self._cache is None:
            self._cache = self._fetch_all()
            self._len = len(self._cache)
        return CollectionResults(self._cache, self._converter())

    def __len__(self) -> int:
        if self._len is None:
            one = self._one_shard()
            if one is not None:
                self._len = len(one)
            elif self._cache is not None:
                self._len = len(self._cache)
            else:
                keys = self._direct_keys()
                if keys is not None:  # one count script per node
                    self._purge_together()
                    self._len = count_per_node(self.model.get_connection(), keys)
                else:
                    counted = self._count_intersections()
                    if counted is None:
                        counted = sum(len(collection) for collection in self._shards())
                    self._len = counted
        return self._len

    def _count_intersections(self) -> Optional[int]:
        """Return the sum of the shards' ``SINTERCARD`` of the keys they intersect, sent together
        (one round trip per node), or None when the filters are not only equality filters or the
        server knows no ``SINTERCARD`` (before Redis 7.0: the shards then count one by one)."""
        keys = self._intersected_keys()
        connection = self.model.get_connection()
        real = getattr(connection, "_limpyd_real", connection)
        if keys is None:
            return None
        # unions, ranges, pks given: stored first (a shard without entries is not asked)
        unions = any(not isinstance(entry, str) for shard_keys in keys for entry in shard_keys)
        if not unions and getattr(real, "_limpyd_no_sintercard", False):
            return None
        self._purge_together()
        if unions:  # the unions stored, then SCARD of the intersection, then DEL, per shard
            commands: List[Tuple[str, Tuple[Any, ...]]] = []
            counts = []
            with temporary_keys(self.model.database):
                for shard_sets, shard in zip(keys, self.model._limpyd_shard_models):
                    if not shard_sets:
                        continue
                    steps, final, temporary = _shard_steps(shard, shard_sets)
                    for key in temporary:
                        register_temporary_key(key)
                    commands += steps
                    counts.append(len(commands))
                    commands.append((final, ("SCARD", final)))
                    if temporary:
                        commands.append((final, ("DEL", *temporary)))
                replies = send_per_node(connection, commands)
            if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
                return None  # a range filter's script not loaded: the shards count one by one
            raise_first_error(replies)
            return sum(replies[position] for position in counts)
        replies = send_per_node(
            connection,
            [
                (shard_keys[0], ("SINTERCARD", len(shard_keys), *shard_keys))
                for shard_keys in keys
                if shard_keys
            ],
        )
        for reply in replies:
            if isinstance(reply, redis.ResponseError) and "unknown command" in str(reply).lower():
                real._limpyd_no_sintercard = True
                return None
        return sum(raise_first_error(replies))

    def __bool__(self) -> bool:
        return bool(len(self))

    def __getitem__(self, arg: Any) -> Any:
        arg = checked_index(self, arg)
        one = self._one_shard()
        if one is not None:
            return one[arg]
        func = self._converter()
        if self._cache is not None:
            if isinstance(arg, slice):
                return CollectionResults(self._cache[arg], func)
            entry = self._cache[arg]
            return entry if func is None else func(entry)
        can_reverse = self._order != "nosort"
        if isinstance(arg, slice):
            optimized, start, count, reverse, python_slice = CollectionManager._optimize_slice(
                arg, can_reverse
            )
            if optimized and count == 0:
                return []
            if optimized:
                results = self._fetch_window(start, count, reverse)  # type: ignore[arg-type]
            else:
                results = self._fetch_window(0, -1, False)
            if python_slice is not None:
                results = results[python_slice]
            return CollectionResults(results, func)
        window = _index_window(arg, can_reverse)
        if window is None:
            results, position = self._fetch_window(0, -1, False), arg
        else:
            results, position = self._fetch_window(*window), 0
        return _entry_at(results, position, arg, self.model, func)

    def __eq__(self, other: Any) -> bool:
        return results_equal(self.__iter__(), other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        max_items = CollectionResults.MAX_REPR_ITEMS
        if self._cache is not None or (
            self._order is None and not getattr(self.model.get_field("pk"), "_auto_increment", False)
        ):
            return "<%s %r>" % (type(self).__name__, self.__iter__()._repr_items())
        items = list(self[: max_items + 1])
        if len(items) > max_items:
            items[-1] = "... (%s remaining elements truncated)..." % (len(self) - max_items)
        return "<%s %r>" % (type(self).__name__, items)
