"""Extended collections: intersections, score sorting, values, stored collections (``limpyd.contrib.collection``).

:class:`ExtendedCollectionManager` is a :class:`~limpyd.collection.CollectionManager` (everything of
docs/collections.rst keeps working: filters, ``sort``, slicing, ``instances``, ``len``, caching, laziness) with:

- ``filter(**filters)``: the same as calling the collection; filter values may be model instances
  (their pk) or bound single-value fields (their value), both read when the collection is evaluated;
- ``intersect(*sets)``: keep only the pks also present in lists/sets/tuples of pks, Redis keys (set,
  sorted set, list), bound ``SetField``/``SortedSetField``/``ListField``, stored collections;
- ``sort(by_score=zset)``: order by the scores of a sorted set (``SORT ... BY <tmp>:*`` on one
  temporary string key per member holding its score);
- ``values(*fields)`` / ``values_list(*fields, flat=False)``: dicts, tuples or bare values read
  with one ``SORT ... GET`` (``SORTED_SCORE`` gives the score of a score-sorted collection);
- ``store(key=None, ttl=DEFAULT_STORE_TTL)`` / ``from_stored(key)``: keep the pks of an evaluation
  in a Redis list (``SORT ... STORE``) and build collections on it.

A sorted set taking part in the intersection (``intersect`` with a zset, a ``ScoredEqualIndex``
filter) makes the intersection a ``ZINTERSTORE`` (scores summed, sets count 1) and, without
``sort()`` and ``values*()``, the collection iterates by ascending score (``ZRANGE``); ``len()`` is a
``ZCARD`` then (``LLEN`` for a plain stored collection, ``SCARD`` otherwise) and never sorts.

Decisions taken over redis-limpyd 2.1.2 (labels of docs/collections.rst, reasons in docs/migrating.rst):

- an index or slice of a score-sorted or zset-ordered collection returns the slice of that order
  (``ZRANGE``/``ZREVRANGE`` windows; the score sort's direction inverted for that call only) and never
  modifies ``_sort``, ``_sort_by_sortedset`` or ``_values`` (C1); a slice is never cached as the
  whole collection (C2); filters and intersections drop the cached length (C3);
- ``store()`` works on pk-filtered and score-sorted collections (same pks, same order as iterating),
  and the stored collection keeps the ``values``/``values_list`` mode (upstream dropped it);
- with a pk filter, values are read with ``SORT ... BY nosort GET ...`` (C8), and stored with
  ``SORT ... BY nosort STORE ...``.

Round trips: commands whose replies nobody reads (temporary keys, intersections, score keys,
``DEL``) travel with the next command needing a reply (``limpyd._batch``): same commands, same order.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any, Dict, List, Optional, Set, Tuple

from limpyd._batch import batch_scope, later, queue_command
from limpyd._cluster import localize_key
from limpyd._recovery import temporary_keys
from limpyd.collection import CollectionManager, Converter, ParsedFilter, _execute, _model_path
from limpyd.contrib.database import PipelineDatabase
from limpyd.exceptions import DoesNotExist
from limpyd.fields import (
    HashField,
    ListField,
    MultiValuesField,
    RedisField,
    SetField,
    SingleValueField,
    SortedSetField,
)
from limpyd.model import RedisModel
from limpyd.utils import make_key

__all__ = ["ExtendedCollectionManager", "SORTED_SCORE", "DEFAULT_STORE_TTL", "RawFilter"]

#: name to give to ``values``/``values_list`` to get the score of a score-sorted collection
SORTED_SCORE = "sorted_score"

#: seconds a stored collection's list lives by default (``store(ttl=None)``: forever)
DEFAULT_STORE_TTL = 60

#: a pk filter whose value is an instance or a bound field, resolved when the collection is evaluated
RawFilter = namedtuple("RawFilter", ["name", "value"])

#: Lua: copy the list KEYS[1] into the (emptied) set KEYS[2], one SADD per member
_LIST_TO_SET = """
redis.call('DEL', KEYS[2])
local members = redis.call('LRANGE', KEYS[1], 0, -1)
for _, member in ipairs(members) do
    redis.call('SADD', KEYS[2], member)
end
return #members
"""

#: the value ``SET`` on the base key of the score keys (it only reserves the name)
_WORKING = "working..."


class _StoredCollection(object):
    """The Redis list of a stored collection, as an argument of ``intersect``."""

    def __init__(self, connection: Any, key: str) -> None:
        self.connection = connection
        self.key = key

    def __repr__(self) -> str:
        return "<_StoredCollection %r>" % (self.key,)


class _ModelCollection(object):
    """Marker of the model's ``<M._name>:collection`` set among the keys to intersect (type known)."""

    def __repr__(self) -> str:
        return "<the model's collection>"


_MODEL_COLLECTION = _ModelCollection()


class _ScorePlan(object):
    """How the current evaluation sorts by score: on a window (``before``) or after retrieval."""

    __slots__ = ("before", "get", "store")

    def __init__(self, before: bool, get: Optional[List[str]], store: Optional[str]) -> None:
        self.before = before
        self.get = get
        self.store = store


def _copy_values(values: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Return a copy of a ``_values`` dict (its lists copied too), or ``None``."""
    if values is None:
        return None
    fields = values["fields"]
    return {"fields": {"names": list(fields["names"]), "keys": list(fields["keys"])}, "mode": values["mode"]}


def _is_bound(field: Any) -> bool:
    """Return whether ``field`` is bound to an instance (downstream checks it the same way)."""
    return hasattr(field, "_instance")


class ExtendedCollectionManager(CollectionManager):
    """A collection manager with ``filter``, ``intersect``, score sorting, ``values*`` and ``store``.

    Enable it per model with ``collection_manager = ExtendedCollectionManager`` (the default of
    ``RelatedModel``). Every public method returns a new collection and sends nothing to Redis,
    except ``store()`` (evaluates now), ``from_stored()`` (reads the list length) and
    ``stored_key_exists()``.
    """

    #: Redis types of the keys the collection can intersect (passed to the indexes)
    _accepted_key_types: Set[str] = {"set", "zset", "list"}
    #: keyword arguments ``sort()`` accepts
    _sort_arguments = CollectionManager._sort_arguments | {"by_score"}
    #: Lua scripts, registered once per class through ``database.call_script``
    scripts: Dict[str, Dict[str, Any]] = {"list_to_set": {"lua": _LIST_TO_SET}}

    def __init__(self, model: type) -> None:
        super().__init__(model)
        self._lazy_collection["intersects"] = set()
        #: a sorted set takes part in the intersection
        self._has_sortedsets = False
        #: ``{'by': zset key, 'desc': bool, 'alpha': bool}`` when sorted by score
        self._sort_by_sortedset: Optional[Dict[str, Any]] = None
        #: set on the clone that performs ``store()``, with the destination key
        self._store = False
        self._store_key: Optional[str] = None
        self._store_sent = False
        #: key of the stored list this collection is based on, and its length when based on it
        self.stored_key: Any = False
        self._stored_len: Optional[int] = None
        #: ``{'fields': {'names': [...], 'keys': [...]}, 'mode': 'dicts'|'tuples'|'flat'}``
        self._values: Optional[Dict[str, Any]] = None
        #: score sorting of the current evaluation (never outlives it)
        self._score_plan: Optional[_ScorePlan] = None

    # -------------------------------------------------------------------- building (no Redis)

    def clone(self) -> "ExtendedCollectionManager":
        """Return a copy of this collection: filters, intersections, result type, sorts; fresh caches."""
        collection = super().clone()
        collection._has_sortedsets = self._has_sortedsets
        collection._sort_by_sortedset = (
            None if self._sort_by_sortedset is None else dict(self._sort_by_sortedset)
        )
        collection._store = self._store
        collection._store_key = self._store_key
        collection.stored_key = self.stored_key
        collection._stored_len = self._stored_len
        collection._values = _copy_values(self._values)
        return collection  # type: ignore[return-value]

    def _in_set_order(self) -> bool:
        """Return whether nothing orders this collection: no sort, no sorted set, no stored list."""
        return (
            super()._in_set_order()
            and self._sort_by_sortedset is None
            and not self._has_sortedsets
            and not self.stored_key
            and self._values is None
        )

    def filter(self, **filters: Any) -> "ExtendedCollectionManager":
        """Return a new collection with ``filters`` added (AND-ed with the existing ones)."""
        return self(**filters)  # type: ignore[return-value]

    def _check_filter_value(self, key: str, value: Any) -> None:
        """Raise ``ValueError`` if the filter value ``value`` is a field that has no single value to give."""
        candidates = value if isinstance(value, (list, tuple, set, frozenset)) else (value,)
        for candidate in candidates:
            if isinstance(candidate, RedisField) and not (
                isinstance(candidate, SingleValueField) and _is_bound(candidate)
            ):
                raise ValueError(
                    "If a field is used as a filter value, it must be a simple value field attached to an "
                    "instance (filter %r on a collection of %s got %r): pass the field of an instance "
                    "(e.g. instance.name), the instance itself, or a plain value"
                    % (key, _model_path(self.model), candidate)
                )

    def _add_filters(self, **filters: Any) -> "ExtendedCollectionManager":
        """Parse ``filters`` and add them (mutates); pk filters given as objects become ``RawFilter``."""
        raw = {}
        for key, value in filters.items():
            self._check_filter_value(key, value)
            if isinstance(value, (RedisModel, RedisField)) and self._field_is_pk(key):
                raw[key] = value
        super()._add_filters(**{key: value for key, value in filters.items() if key not in raw})
        if raw:
            self._lazy_collection["pks"].update(RawFilter(key, value) for key, value in raw.items())
            self._len = None
            self._collection_cache = None
            self._cache_iterator_function = None
            self._final_set = None
            self._final_set_deletable = False
        return self

    @staticmethod
    def _resolve_filter_value(value: Any) -> Any:
        """Return the value a filter value stands for: an instance's pk, a bound field's value."""
        if isinstance(value, RedisModel):
            return value.pk.get()
        if isinstance(value, SingleValueField):
            return value.proxy_get()
        if isinstance(value, (list, tuple, set, frozenset)) and any(
            isinstance(item, (RedisModel, RedisField)) for item in value
        ):
            return [ExtendedCollectionManager._resolve_filter_value(item) for item in value]
        return value

    def _coerce_intersect_argument(self, value: Any) -> Any:
        """Return ``value`` as kept in ``_lazy_collection['intersects']``, or raise for a bad one."""
        if isinstance(value, (list, set, tuple, frozenset)):
            value = tuple(value)
            try:
                hash(value)
            except TypeError as exc:
                raise TypeError(
                    "The pks passed to intersect() on a collection of %s must be hashable (str, int...), "
                    "got %r: pass a flat list of pks" % (_model_path(self.model), value)
                ) from exc
            return value
        if isinstance(value, (str, _StoredCollection)):
            return value
        if isinstance(value, MultiValuesField):
            if not _is_bound(value):
                raise ValueError(
                    '%s passed to "intersect" must be bound (collection of %s): pass the field of an '
                    "instance, e.g. instance.%s"
                    % (type(value).__name__, _model_path(self.model), getattr(value, "name", "<field>"))
                )
            return value
        raise ValueError(
            "%r is not a valid type of argument that can be used as a set. Allowed: a list, set or tuple "
            "of pks, the Redis key (str) of a set, sorted set or list, a SetField, SortedSetField or "
            "ListField bound to an instance, a stored collection (intersect() on a collection of %s)"
            % (value, _model_path(self.model))
        )

    def intersect(self, *sets: Any) -> "ExtendedCollectionManager":
        """Return a new collection keeping only the pks also found in each of ``sets``.

        Each argument is a list/set/tuple of pks, the key of a Redis set, sorted set or list (its
        type is read at evaluation; a missing key counts as an empty set), a bound ``SetField``,
        ``SortedSetField`` or ``ListField``, or a stored collection. A sorted set makes the
        collection iterate by ascending (summed) score.
        """
        items = [self._coerce_intersect_argument(value) for value in sets]
        collection = self.clone()
        for item in items:
            collection._lazy_collection["intersects"].add(item)
            if isinstance(item, SortedSetField):
                collection._has_sortedsets = True
        collection._len = None
        return collection

    def _score_key(self, value: Any) -> str:
        """Return the key of the sorted set given to ``sort(by_score=...)``."""
        if isinstance(value, SortedSetField) and _is_bound(value):
            return value.key
        if isinstance(value, str) and value:
            return value
        raise ValueError(
            "To sort by sorted set, you must pass a SortedSetFied (attached to a model) or a string "
            "representing the key of a redis zset to the `by_score` named argument (got %r, collection "
            "of %s): pass instance.<sorted set field> or the key of a sorted set"
            % (value, _model_path(self.model))
        )

    def sort(self, **parameters: Any) -> "ExtendedCollectionManager":
        """Return a clone sorted with ``parameters`` (docs/collections.rst, Sorting), or by score with ``by_score``.

        ``by`` may also be a field object (its name is used). ``sort(by_score=X, desc=False,
        alpha=False)`` orders the pks by their score in the sorted set ``X`` (a bound
        ``SortedSetField`` or a key); members absent from ``X`` are kept. Each ``sort()`` call
        replaces the previous one, score sorting included.
        """
        if "by_score" not in parameters:
            by = parameters.get("by")
            if isinstance(by, RedisField):
                parameters["by"] = by.name
            return super().sort(**parameters)  # type: ignore[return-value]
        if parameters.get("by") is not None:
            raise ValueError(
                "You can't use `by` and `by_score` in the same call to `sort`. (collection of %s): sort "
                "either by a field/pattern or by the scores of a sorted set" % _model_path(self.model)
            )
        unexpected = sorted(set(parameters) - {"by_score", "by", "desc", "alpha"})
        if unexpected:
            raise TypeError(
                "Unexpected argument(s) %s to sort(by_score=...) on a collection of %s: only desc and alpha "
                "go with by_score (slice the collection instead of start/num, use values() instead of "
                "get and store() instead of store)" % (", ".join(unexpected), _model_path(self.model))
            )
        key = self._score_key(parameters["by_score"])
        collection = self.clone()
        collection._sort = None
        collection._sort_by_sortedset = {
            "by": key,
            "desc": bool(parameters.get("desc", False)),
            "alpha": bool(parameters.get("alpha", False)),
        }
        return collection

    def _apply_sort(self, **parameters: Any) -> None:
        """Set the sort of this collection to ``parameters`` (any score sort is dropped)."""
        super()._apply_sort(**parameters)
        self._sort_by_sortedset = None

    def _values_collection(self, fields: Tuple[Any, ...], mode: str) -> "ExtendedCollectionManager":
        """Return a clone returning the values of ``fields`` (all simple fields if none) in ``mode``."""
        names = list(fields) if fields else self._get_simple_fields()
        keys = []
        for name in names:
            if name == SORTED_SCORE:
                keys.append(SORTED_SCORE)
                continue
            if isinstance(name, str) and self._field_is_pk(name):
                keys.append("#")
                continue
            if not isinstance(name, str) or not self.model.has_field(name):
                raise ValueError(
                    "%s if not a valid field to get from collection for %s: use one of %s, 'pk' or "
                    "SORTED_SCORE"
                    % (name, self.model.__name__, ", ".join(map(repr, self._get_simple_fields())))
                )
            field = self.model.get_field(name)
            if isinstance(field, MultiValuesField):
                raise ValueError(
                    "It's not possible to get a MultiValuesField from a collection (asked: %s) on %s: "
                    "ask for single-value fields only (%s), and read %s from the instances"
                    % (name, _model_path(self.model), ", ".join(map(repr, self._get_simple_fields())), name)
                )
            keys.append(field.sort_wildcard)
        collection = self.clone()
        collection._instances = False
        collection._values = {"fields": {"names": names, "keys": keys}, "mode": mode}
        return collection

    def values(self, *fields: Any) -> "ExtendedCollectionManager":
        """Return a clone returning one dict ``{name: value}`` per pk (all simple fields if none given).

        Names are field names, ``'pk'`` (or the pk's real name) and ``SORTED_SCORE``. Values are
        read with one ``SORT ... GET``, so the collection is always sorted (numerically by pk
        unless ``sort()`` says otherwise).
        """
        return self._values_collection(fields, "dicts")

    def values_list(self, *fields: Any, **kwargs: Any) -> "ExtendedCollectionManager":
        """Return a clone returning one tuple of values per pk (bare values with ``flat=True``)."""
        flat = kwargs.pop("flat", False)
        if kwargs:
            raise ValueError(
                "Unexpected keyword arguments for the values method: %s (values_list() on a collection of "
                "%s): only flat=True/False is accepted" % (sorted(kwargs), _model_path(self.model))
            )
        if flat and len(fields or self._get_simple_fields()) > 1:
            raise ValueError(
                "'flat' is not valid when values is called with more than one field. (values_list() on a "
                "collection of %s, fields %s): name exactly one field"
                % (_model_path(self.model), ", ".join(map(repr, fields or self._get_simple_fields())))
            )
        return self._values_collection(fields, "flat" if flat else "tuples")

    def _reset_result_type(self) -> None:
        """Make this collection return primary keys (cancels ``instances()`` and ``values*()``)."""
        super()._reset_result_type()
        self._values = None

    # -------------------------------------------------------------------- stored collections

    def store(
        self, key: Optional[str] = None, ttl: Optional[int] = DEFAULT_STORE_TTL
    ) -> "ExtendedCollectionManager":
        """Evaluate the collection now, keep its pks in the Redis list ``key``; return a collection on it.

        The list (default key ``<M._name>:__collection__:store:<hex>``) is written with
        ``SORT ... STORE`` in the order of iteration of this collection (numeric pk order when it
        is not sorted), then expires after ``ttl`` seconds (``None``: never; ``0``: at once). Only
        pks are stored; the returned collection (``from_stored(key)``) returns pks, instances or
        values like this one. An empty result creates no key.
        https://redis.io/commands/sort
        """
        if key is not None and (not isinstance(key, str) or not key):
            raise TypeError(
                "store(key=%r) on a collection of %s: the key must be a non-empty str, or None for a new "
                "temporary key" % (key, _model_path(self.model))
            )
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0):
            raise ValueError(
                "store(ttl=%r) on a collection of %s: the ttl must be a number of seconds (int >= 0; 0 "
                "deletes the list at once), or None to keep the list forever" % (ttl, _model_path(self.model))
            )
        with temporary_keys(self.model.database), batch_scope(self.model.database):
            collection = self.clone()
            collection._store = True
            collection._values = None
            collection._instances = False
            store_key = key if key is not None else collection._unique_key("store")
            collection._store_key = store_key
            collection._store_sent = False
            collection._fetch_collection()
            connection = self.connection
            if not collection._store_sent and key is not None:
                # nothing matched: the destination holds the (empty) result, as SORT ... STORE does
                later(connection).delete(key)
            pending = queue_command(connection, "llen", store_key)
            length = connection.llen(store_key) if pending is None else None
            if ttl is not None:
                # nobody reads the reply: sent with the LLEN
                later(connection).expire(store_key, ttl)
            if pending is not None:
                length = pending.get()
        stored = self.__class__(self.model)._based_on_stored(store_key, length)
        stored._instances = self._instances
        stored._lazy_instances = self._lazy_instances
        stored._values = _copy_values(self._values)
        return stored

    def from_stored(self, key: str) -> "ExtendedCollectionManager":
        """Return a collection based on the list of pks stored at ``key`` (``LLEN`` is read now).

        The collection keeps the list order (``sort(by='nosort')``) unless sorted again; it can be
        filtered, intersected, sliced and stored again. A missing or empty list gives an empty
        collection. https://redis.io/commands/llen
        """
        if self.stored_key:
            raise ValueError(
                "This collection is already based on a stored one (key %r, collection of %s): call "
                "from_stored() on a collection that is not, e.g. Model.collection().from_stored(key)"
                % (self.stored_key, _model_path(self.model))
            )
        if not isinstance(key, str) or not key:
            raise TypeError(
                "from_stored(key=%r) on a collection of %s: pass the key (str) of a list stored by store()"
                % (key, _model_path(self.model))
            )
        return self._based_on_stored(key, self.connection.llen(key))

    def _based_on_stored(self, key: str, length: int) -> "ExtendedCollectionManager":
        """Return a clone based on the stored list ``key`` of ``length`` pks."""
        collection = self.clone()
        collection.stored_key = key
        collection = collection.intersect(_StoredCollection(self.model.get_connection(), key))
        collection = collection.sort(by="nosort")
        collection._stored_len = length
        return collection

    def stored_key_exists(self) -> int:
        """Return whether the stored list exists (Redis' int reply). https://redis.io/commands/exists"""
        if not self.stored_key:
            raise ValueError(
                "stored_key_exists() on a collection of %s that is not based on a stored one: use "
                "store() or from_stored(key) first" % _model_path(self.model)
            )
        return self.connection.exists(self.stored_key)

    def _is_plain_stored(self) -> bool:
        """Return whether the stored list is the only thing to evaluate (its key is used directly)."""
        lazy = self._lazy_collection
        return bool(self.stored_key) and not lazy["sets"] and not lazy["pks"] and len(lazy["intersects"]) == 1

    def _stored_is_empty(self) -> bool:
        """Return whether this collection is based on a list that was empty (nothing to check)."""
        return bool(self.stored_key) and self._stored_len == 0

    # -------------------------------------------------------------------- evaluation

    def _get_pk(self) -> Optional[Any]:
        """Return the pk of the pk filters (instances and fields read now), ``None``; ``ValueError`` if several."""
        pks = self._lazy_collection["pks"]
        if not any(isinstance(pk, RawFilter) for pk in pks):
            return super()._get_pk()
        normalize = self.model.get_field("pk").normalize
        resolved = {
            normalize(self._resolve_filter_value(pk.value)) if isinstance(pk, RawFilter) else pk for pk in pks
        }
        if len(resolved) > 1:
            raise ValueError(
                "Too many pks (%d distinct) in the filters of a collection of %s"
                % (len(resolved), self.model.__name__)
            )
        return next(iter(resolved))

    def _is_pk_only(self, sort_options: Optional[Dict[str, Any]]) -> bool:
        """Return whether the pk filter is the only thing to evaluate (no intersection, nothing to store)."""
        return (
            super()._is_pk_only(sort_options)
            and not self._lazy_collection["intersects"]
            and not (sort_options and sort_options.get("store"))
        )

    def _wants_sorted_score(self) -> bool:
        """Return whether ``values*`` asked for ``SORTED_SCORE``."""
        return self._values is not None and not self._store and SORTED_SCORE in self._values["fields"]["keys"]

    def _prepare_sort_options(self, has_pk: bool) -> Optional[Dict[str, Any]]:
        """Return the ``SORT`` keywords of this evaluation (``None``: plain retrieval); plan any score sort.

        Values add ``get`` (with a pk filter ``by='nosort'``, C8), ``store()`` adds ``store``. A
        score sort (ignored with a pk filter unless ``SORTED_SCORE`` is asked) happens on the
        window when there is one (``by`` is then set by ``_retrieve``, ``desc`` inverted when read
        in reverse), else after the retrieval, which then needs no option.
        """
        options = super()._prepare_sort_options(has_pk)
        get = list(self._values["fields"]["keys"]) if self._values is not None and not self._store else None
        store = self._store_key if self._store else None
        self._score_plan = None
        score = self._sort_by_sortedset
        if score is not None and (not has_pk or self._wants_sorted_score()):
            before = self._sort_limits is not None
            self._score_plan = _ScorePlan(before, get, store)
            if not before:
                return None
            window: Dict[str, Any] = {"start": options["start"], "num": options["num"]}  # type: ignore[index]
            if score["desc"] != self._sort_limits_reverse:
                window["desc"] = True
            if score["alpha"]:
                window["alpha"] = True
            if get:
                window["get"] = get
            return window
        if get or store:
            options = {} if options is None else options
            if has_pk:
                options["by"] = "nosort"
            if get:
                options["get"] = get
            if store:
                options["store"] = store
        return options

    def _get_final_set(
        self, sets: List[Any], pk: Any, sort_options: Optional[Dict[str, Any]]
    ) -> Tuple[Optional[str], bool]:
        """Return ``(final key or None, delete it after use)``, intersections included.

        Without index filter and stored list, an intersection also keeps to the model's pks
        (``<M._name>:collection``).
        """
        intersects = self._lazy_collection["intersects"]
        if intersects:
            sets = list(sets) + list(intersects)
            if not self._lazy_collection["sets"] and not self.stored_key:
                sets.append(_MODEL_COLLECTION)
        return super()._get_final_set(sets, pk, sort_options)

    def _prepare_sets(self, sets: List[Any]) -> Tuple[Set[str], Set[str]]:
        """Return ``(keys to intersect, temporary keys among them)`` for filters and intersections.

        A stored list that vanished raises ``DoesNotExist`` (one ``EXISTS``). Keys given as str
        have their type read (``TYPE``); tuples of pks go into a temporary set; a list is used as
        is when it is the only thing to evaluate, else copied into a temporary set (Lua). An empty
        ``__in`` makes the result empty (C5). On error the temporary keys are deleted.
        """
        if self.stored_key and not self.stored_key_exists():
            raise DoesNotExist(
                "This collection is based on a previous one, stored at a key that does not exist anymore. "
                "(key %r, collection of %s): store the collection again, or use a longer ttl"
                % (self.stored_key, _model_path(self.model))
            )
        keys: Set[str] = set()
        tmp_keys: Set[str] = set()
        lists: List[str] = []
        connection = self.connection
        cluster = getattr(self.model.database, "is_cluster", False)

        def add_key(key: str, key_type: str, is_tmp: bool = False) -> None:
            if cluster:  # a key of another slot is copied into the model's (limpyd._cluster)
                key, copied = localize_key(self, key, key_type)
                is_tmp = is_tmp or copied
            if key_type in ("set", "none"):  # a missing key is an empty set
                keys.add(key)
            elif key_type == "zset":
                keys.add(key)
                self._has_sortedsets = True
            elif key_type == "list":
                lists.append(key)
            else:
                raise ValueError(
                    "Cannot use redis key %s of type %s for filtering (collection of %s): intersect only "
                    "sets, sorted sets and lists" % (key, key_type, _model_path(self.model))
                )
            if is_tmp:
                tmp_keys.add(key)

        try:
            for item in self._reduce_related_filters(list(sets)):
                if item is _MODEL_COLLECTION:
                    add_key(make_key(self.model._name, "collection"), "set")
                elif isinstance(item, ParsedFilter):
                    index_keys = self._prepare_parsed_filter(item)
                    tmp_keys.update(key for key, _, is_tmp in index_keys if is_tmp)
                    if not index_keys:
                        self._delete_keys(tmp_keys)
                        return set(), set()
                    for key, key_type, is_tmp in index_keys:
                        if key_type not in self._accepted_key_types:
                            raise ValueError(
                                "The index key returned by the index %s is not valid: %r is a %r, %s accepts "
                                "only %s"
                                % (
                                    item.index.__class__,
                                    key,
                                    key_type,
                                    type(self).__name__,
                                    ", ".join(sorted(self._accepted_key_types)),
                                )
                            )
                        add_key(key, key_type, is_tmp)
                elif isinstance(item, str):
                    add_key(item, connection.type(item))
                elif isinstance(item, SortedSetField):
                    add_key(item.key, "zset")
                elif isinstance(item, SetField):
                    add_key(item.key, "set")
                elif isinstance(item, (ListField, _StoredCollection)):
                    add_key(item.key, "list")
                elif isinstance(item, tuple) and item:
                    tmp_key = self._unique_key("tmp")
                    # nobody reads the reply: sent with the next command
                    later(connection).sadd(tmp_key, *item)
                    add_key(tmp_key, "set", True)
                else:
                    kind = "an empty list of pks" if isinstance(item, tuple) else repr(item)
                    if isinstance(item, HashField):
                        kind = "a HashField"
                    raise ValueError(
                        "Invalid filter type: %s cannot be intersected (collection of %s): intersect "
                        "non-empty lists of pks, sets, sorted sets or lists" % (kind, _model_path(self.model))
                    )
            if lists:
                if len(lists) == 1 and not keys and not self._lazy_collection["pks"]:
                    keys.add(lists[0])  # only one list, nothing to intersect it with: used as is
                else:
                    for list_key in lists:
                        tmp_key = self._unique_key("tmp")
                        tmp_keys.add(tmp_key)
                        self._list_to_set(list_key, tmp_key)
                        keys.add(tmp_key)
        except BaseException:
            self._delete_keys(tmp_keys)
            raise
        return keys, tmp_keys

    def _list_to_set(self, list_key: str, set_key: str) -> None:
        """Copy the members of the list ``list_key`` into the set ``set_key`` (Lua: ``DEL``, ``LRANGE``, ``SADD``s)."""
        self.model.database.call_script(self.scripts["list_to_set"], keys=[list_key, set_key])

    def _prepare_parsed_filter(self, parsed_filter: ParsedFilter) -> List[Tuple[str, str, bool]]:
        """Return the keys of the index serving ``parsed_filter``, instance/field values read now."""
        value = self._resolve_filter_value(parsed_filter.value)
        related = parsed_filter.related_filters
        if related:
            related = {
                name: (list(parts[:-1]) + [self._resolve_filter_value(parts[-1])], suffix)
                for name, (parts, suffix) in related.items()
            }
        if value is not parsed_filter.value or related is not parsed_filter.related_filters:
            parsed_filter = parsed_filter._replace(value=value, related_filters=related)
        return super()._prepare_parsed_filter(parsed_filter)

    def _delete_keys(self, keys: Any) -> None:
        """Delete the temporary ``keys`` with one command (sent with the next one in a batch).

        https://redis.io/commands/del
        """
        if keys:
            connection = self.connection
            later(connection).delete(*keys)

    def _combine_sets(self, sets: Set[str], final_key: str) -> str:
        """Store the intersection of ``sets`` into ``final_key``; ``ZINTERSTORE`` when a zset takes part.

        https://redis.io/commands/zinterstore - https://redis.io/commands/sinterstore
        """
        command = "zinterstore" if self._has_sortedsets else "sinterstore"
        connection = self.connection
        if queue_command(connection, command, final_key, list(sets)) is None:
            getattr(connection, command)(final_key, list(sets))
        return final_key

    def _zset_ordered(self, sort_options: Optional[Dict[str, Any]]) -> bool:
        """Return whether the retrieval follows the sorted set order (no sort, values, store, score)."""
        return (
            self._has_sortedsets
            and self._sort is None
            and (sort_options is None or set(sort_options) <= {"start", "num", "desc"})
        )

    def _retrieval_command(
        self, final_set: str, sort_options: Optional[Dict[str, Any]]
    ) -> Tuple[str, tuple, Dict[str, Any]]:
        """Return ``(redis-py method, args, kwargs)`` retrieving ``final_set`` with ``sort_options``."""
        if self._zset_ordered(sort_options):
            options = sort_options or {}
            start, num = options.get("start", 0), options.get("num", -1)
            end = -1 if num == -1 else start + num - 1
            return ("zrevrange" if options.get("desc") else "zrange"), (final_set, start, end), {}
        if self._is_plain_stored() and (sort_options is None or sort_options == {"by": "nosort"}):
            return "lrange", (final_set, 0, -1), {}
        if sort_options is None:
            return "smembers", (final_set,), {}
        return "sort", (final_set,), dict(sort_options)

    def _final_redis_call(self, final_set: str, sort_options: Optional[Dict[str, Any]]) -> Any:
        """Return the raw results of ``final_set``.

        ``ZRANGE``/``ZREVRANGE`` for a zset-ordered collection, ``LRANGE`` for a plain stored one,
        else ``SORT`` with ``sort_options`` (``SMEMBERS`` without).
        https://redis.io/commands/zrange - https://redis.io/commands/lrange - https://redis.io/commands/sort
        """
        name, args, kwargs = self._retrieval_command(final_set, sort_options)
        result = getattr(self.connection, name)(*args, **kwargs)
        return list(result) if name == "smembers" else result

    def _length_command(self) -> str:
        """Return the redis-py method counting the final key: ``zcard``, ``llen`` or ``scard``."""
        if self._has_sortedsets:
            return "zcard"
        if self._is_plain_stored():
            return "llen"
        return "scard"

    def _send_and_delete(self, name: str, args: tuple, kwargs: Dict[str, Any], to_delete: List[str]) -> Any:
        """Run one retrieval command then ``DEL to_delete`` (even if it fails), in one round trip if batched."""
        connection = self.connection
        pending = queue_command(connection, name, *args, **kwargs)
        if pending is not None:
            if to_delete:
                queue_command(connection, "delete", *to_delete)
            return pending.get()
        try:
            return getattr(connection, name)(*args, **kwargs)
        finally:
            if to_delete:
                connection.delete(*to_delete)

    def _retrieve(self, final_set: str, deletable: bool, sort_options: Optional[Dict[str, Any]]) -> List[Any]:
        """Return the results of ``final_set`` (values grouped), deleting the temporary keys afterwards.

        On a window of a score-sorted collection the score keys are written first (every member
        of the sorted set: absent pks sort as 0) and ``SORT ... BY <base>:*`` reads the window.
        With ``store`` nothing is returned (the pks went to the list).
        """
        to_delete = [final_set] if deletable else []
        plan = self._score_plan
        if plan is not None and plan.before:
            try:
                base_key, score_keys = self._write_scores(None)
            except BaseException:
                self._delete_keys(to_delete)
                raise
            to_delete += [base_key] + score_keys
            sort_options = dict(sort_options or {})
            sort_options["by"] = make_key(base_key, "*")
            if sort_options.get("get"):
                sort_options["get"] = [
                    sort_options["by"] if pattern == SORTED_SCORE else pattern
                    for pattern in sort_options["get"]
                ]
        if type(self)._final_redis_call is ExtendedCollectionManager._final_redis_call:
            name, args, kwargs = self._retrieval_command(final_set, sort_options)
            results = self._send_and_delete(name, args, kwargs, to_delete)
            if name == "smembers":
                results = list(results)
        else:
            try:
                results = self._final_redis_call(final_set, sort_options)
            finally:
                if to_delete:
                    self.connection.delete(*to_delete)
        if sort_options and sort_options.get("store"):
            self._store_sent = True
            return []
        if sort_options and sort_options.get("get"):
            return self._to_values(results)
        return results

    def _to_values(self, results: List[Any]) -> List[Any]:
        """Group the flat ``SORT ... GET`` reply ``results`` into dicts, tuples or bare values."""
        values = self._values
        if values is None or values["mode"] == "flat":
            return list(results)
        names = values["fields"]["names"]
        size = len(names)
        rows = [results[position : position + size] for position in range(0, len(results), size)]
        if values["mode"] == "tuples":
            return [tuple(row) for row in rows]
        return [dict(zip(names, row)) for row in rows]

    def _zscores(self, zset_key: str, members: List[Any]) -> List[Any]:
        """Return the score of each of ``members`` in ``zset_key`` (``None`` if absent): one ``ZSCORE`` each.

        Batched in a non-transactional pipeline on a ``PipelineDatabase``, in the write-behind
        batch otherwise. https://redis.io/commands/zscore
        """
        database = self.model.database
        if isinstance(database, PipelineDatabase):
            with database.pipeline(transaction=False) as pipeline:
                for member in members:
                    pipeline.zscore(zset_key, member)
                return _execute(pipeline)
        connection = self.connection
        pendings = [queue_command(connection, "zscore", zset_key, member) for member in members]
        if pendings and pendings[0] is not None:
            return [pending.get() for pending in pendings]
        return [connection.zscore(zset_key, member) for member in members]

    def _write_scores(self, members: Optional[List[Any]]) -> Tuple[str, List[str]]:
        """Write one key ``<base>:<member>`` per member holding its score; return ``(base, keys)``.

        ``members`` ``None``: every member of the sorted set (``ZRANGE ... WITHSCORES``); else the
        scores of ``members`` (``ZSCORE``), absent ones as ``-inf``. Then ``EXISTS``/``SET`` of the
        base key ``<M._name>:__collection__:tmp:<hex>`` and one ``MSET``.
        https://redis.io/commands/mset
        """
        zset_key = self._sort_by_sortedset["by"]  # type: ignore[index]
        connection = self.connection
        if members is None:
            pairs = list(connection.zrange(zset_key, 0, -1, withscores=True))
        else:
            scores = self._zscores(zset_key, members)
            pairs = [
                (member, float("-inf") if score is None else score) for member, score in zip(members, scores)
            ]
        base_key = self._unique_key("tmp")
        mapping = {make_key(base_key, member): str(float(score)) for member, score in pairs}
        # only reserves the name: nobody reads the reply
        later(connection).set(base_key, _WORKING)
        if mapping:
            later(connection).mset(mapping)
        return base_key, list(mapping)

    def _sort_by_score_after(self, pks: List[Any], plan: _ScorePlan) -> List[Any]:
        """Return ``pks`` sorted by score (or their values; nothing when storing), via a temporary set."""
        score = self._sort_by_sortedset
        base_key, score_keys = self._write_scores(pks)
        final_set = base_key + "_final_set"
        options: Dict[str, Any] = {"by": make_key(base_key, "*")}
        if score["desc"]:  # type: ignore[index]
            options["desc"] = True
        if score["alpha"]:  # type: ignore[index]
            options["alpha"] = True
        if plan.get:
            options["get"] = [options["by"] if pattern == SORTED_SCORE else pattern for pattern in plan.get]
        if plan.store:
            options["store"] = plan.store
        connection = self.connection
        later(connection).sadd(final_set, *pks)
        results = self._send_and_delete("sort", (final_set,), options, score_keys + [final_set, base_key])
        if plan.store:
            self._store_sent = True
            return []
        if plan.get:
            return self._to_values(results)
        return results

    def _prepare_results(
        self, results: List[Any], _len_hint: Optional[int] = None, apply_slice: Optional[slice] = None
    ) -> Tuple[List[Any], Converter]:
        """Return ``(results[apply_slice], converter)``, sorted by score first when planned after retrieval."""
        plan = self._score_plan
        if plan is not None and not plan.before and results and (len(results) > 1 or plan.get or plan.store):
            results = self._sort_by_score_after(list(results), plan)
        return super()._prepare_results(results, _len_hint=_len_hint, apply_slice=apply_slice)

    def _fetch_collection_now(self, apply_slice: Optional[slice] = None) -> Tuple[List[Any], Converter]:
        """Evaluate the collection and return ``(results, converter)``."""
        if self._stored_is_empty():
            return self._cache_empty_collection(
                self._sort_limits is None and apply_slice is None, apply_slice
            )
        self._score_plan = None
        try:
            return super()._fetch_collection_now(apply_slice)
        finally:
            self._score_plan = None

    def _count_now(self) -> int:
        """Return the number of results without retrieving them (``ZCARD``/``LLEN``/``SCARD``)."""
        if self._stored_is_empty():
            return 0
        return super()._count_now()
