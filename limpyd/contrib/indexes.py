"""More indexes (``limpyd.contrib.indexes``): composed, date/time, scored and multi-field indexes.

- :class:`MultiIndexes`: one entry of a field's ``indexes``, several real indexes behind it
  (``MultiIndexes.compose([EqualIndex, TextRangeIndex], key=..., transform=...)``);
- date and time indexes built with it: :data:`DateIndex`, :data:`TimeIndex`,
  :data:`DateTimeIndex`, :data:`SimpleDateTimeIndex` (and their building blocks), for string
  values ``YYYY-MM-DD``, ``HH:MM:SS``, ``YYYY-MM-DD HH:MM:SS`` (extra trailing characters cut);
- :class:`ScoredEqualIndex`: an equality index stored in sorted sets scored by another field of
  the instance, so filtered results come back ordered by that field (needs an
  ``ExtendedCollectionManager``);
- :class:`EqualIndexWith`: an equality index on several fields together, used when all of them
  are filtered, optionally unique together.

Key layout, commands and messages follow redis-limpyd 2.1.2 (docs/contrib.rst, More indexes), with these
differences:

- (Decision) removing a value from a unique :class:`ScoredEqualIndex` frees it (its pk leaves the
  ``<key>:__uniqueness__`` set; upstream kept the value "taken" forever);
- the scored and multi-field indexes depend on several fields. When one operation changes
  several of them (an instance-hash ``hmset`` of a field and its score field, or of two fields of
  one ``EqualIndexWith``), the values already (de)indexed by that operation, recorded in the
  rollback caches, are taken into account instead of the stored ones, which are only written at
  the end (upstream indexed with the old values, leaving wrong entries);
- their rollback removes the pk from every key the failed operation touched, then indexes the
  stored values again (upstream replayed the recorded values one field at a time, which cannot
  undo entries made of several fields' values).
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from redis.exceptions import DataError

from limpyd._batch import later
from limpyd.contrib.collection import ExtendedCollectionManager
from limpyd.exceptions import ImplementationError
from limpyd.fields import HashField, PKField, SingleValueField
from limpyd.indexes import (
    BaseIndex,
    EqualIndex,
    NumberRangeIndex,
    TextRangeIndex,
    _MultiFieldsIndexMixin,
)
from limpyd.model import RedisModel
from limpyd.utils import NotProvided, cached_property, make_key

__all__ = [
    "MultiIndexes",
    "SliceTransform",
    "UnsliceableValue",
    "DateIndexParts",
    "DateRangeIndex",
    "DateIndex",
    "TimeIndexParts",
    "TimeRangeIndex",
    "TimeIndex",
    "DateSimpleTimeIndex",
    "DateTimeIndex",
    "SimpleDateTimeIndex",
    "ScoredEqualIndex",
    "EqualIndexWith",
    # re-exported from limpyd.indexes
    "BaseIndex",
    "EqualIndex",
    "NumberRangeIndex",
    "TextRangeIndex",
]


def _model_path(model: Any) -> str:
    """Return ``module.qualname`` of ``model`` for error messages."""
    return "%s.%s" % (model.__module__, model.__qualname__)


def _field_path(model: Any, field: Any) -> str:
    """Return ``module.Model.field`` for error messages."""
    return "%s.%s" % (_model_path(model), getattr(field, "name", field))


def _field_parts(field: Any, value: Any) -> List[Tuple[Any, ...]]:
    """Return the index parts of ``value`` for ``field``: ``[(value,)]``, one per member, or ``(key, value)``.

    ``None`` and empty containers give ``[]``.
    """
    if value is None:
        return []
    if isinstance(field, SingleValueField):
        return [(value,)]
    if isinstance(value, (str, bytes)):  # a single member
        return [(value,)]
    return [parts for parts in field._index_parts(value) if parts[-1] is not None]


def _attach_related_index(target: Any, related_base: type, related_field: Any, index_class: type) -> None:
    """Make ``target`` indexable with a related index pointing to ``index_class`` on ``related_field``.

    Nothing is added when ``target`` already has it (a subclass copies its parent's fields with
    their index classes, and the model-ready hooks run again for it).
    """
    for existing in target.index_classes:
        if (
            isinstance(existing, type)
            and issubclass(existing, related_base)
            and existing.related_index_class is index_class
            and getattr(existing.related_field, "name", None) == related_field.name
        ):
            return
    target.indexable = True
    target.index_classes.append(
        related_base.configure(related_field=related_field, related_index_class=index_class)
    )


def _pending_changes(index: Any, pk: Any) -> Tuple[Iterable[Tuple[Any, ...]], Iterable[Tuple[Any, ...]]]:
    """Return ``(indexed, deindexed)``: the args ``index`` recorded for ``pk`` in this thread's operation."""
    per_thread = index._rollback_cache.get(threading.get_ident())
    cache = per_thread.get(pk) if per_thread else None
    if not cache:
        return (), ()
    return cache["indexed_values"], cache["deindexed_values"]


def _apply_pending(stored: List[Tuple[Any, ...]], index: Any, pk: Any, normalize: Any) -> List[Any]:
    """Return the normalized ``stored`` parts, minus those ``index`` deindexed, plus those it indexed.

    ``index`` records the changes of the running operation (``None``: stored parts only); the
    stored value is written at the end of the operation, after every index was maintained.
    """
    values = list(dict.fromkeys(normalize(parts) for parts in stored))
    if index is None:
        return values
    indexed, deindexed = _pending_changes(index, pk)
    if deindexed:
        removed = {normalize(args) for args in deindexed}
        values = [value for value in values if value not in removed]
    for args in indexed:
        value = normalize(args)
        if value not in values:
            values.append(value)
    return values


class _RecomputedRollbackMixin:
    """Rollback of an index whose entries combine several fields: undo by recomputation.

    Every key written for a pk is journaled (with the rollback cache, per thread); ``_rollback``
    removes the pk from all of them, then indexes the stored values again with
    :meth:`_reindex_stored`. The related indexes of the other fields forward their ``_rollback``
    and ``_reset_rollback_cache`` here, so the first rollback of an operation undoes all of it.
    """

    def _journal(self, pk: Any, kind: str, key: str) -> None:
        """Remember that the pk was written in ``key`` (of Redis type ``kind``) by this operation."""
        self._get_rollback_cache(pk).setdefault("touched_keys", set()).add((kind, key))  # type: ignore[attr-defined]

    def _take_journal(self, pk: Any) -> Set[Tuple[str, str]]:
        """Return and forget the keys journaled for ``pk`` in this thread."""
        per_thread = self._rollback_cache.get(threading.get_ident())  # type: ignore[attr-defined]
        cache = per_thread.get(pk) if per_thread else None
        return cache.pop("touched_keys", set()) if cache else set()

    def _rollback(self, pk: Any) -> None:
        """Remove ``pk`` from every key the operation touched, then index its stored values again."""
        touched = self._take_journal(pk)
        if not touched:
            return
        connection = self.connection  # type: ignore[attr-defined]
        for kind, key in sorted(touched):
            # nobody reads the reply: sent with the next command
            if kind == "zset":
                later(connection).zrem(key, pk)
            else:
                later(connection).srem(key, pk)
        self._reindex_stored(pk)

    def _reindex_stored(self, pk: Any) -> None:
        """Write the entries of the values stored for ``pk`` (no uniqueness check, no journal)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# MultiIndexes


class MultiIndexes(BaseIndex):
    """A proxy index: one entry in a field's ``indexes``, several real indexes (``index_classes``).

    Values are transformed by the multi-index (``transform``) then passed, with its ``key`` as an
    extra key part, to every sub-index; filters go to the first sub-index handling their suffix.
    The model-ready hook is not forwarded: ``ScoredEqualIndex``/``EqualIndexWith`` cannot be used
    inside.
    """

    index_classes: List[type] = []

    @classmethod
    def compose(
        cls,
        index_classes: List[type],
        key: Optional[str] = None,
        transform: Any = None,
        name: Optional[str] = None,
    ) -> type:
        """Return a new multi-index class made of ``index_classes`` (optionally with a key and transform)."""
        attrs: Dict[str, Any] = {}
        if index_classes:
            attrs["index_classes"] = index_classes
        composed = type(name or cls.__name__, (cls,), attrs)
        options: Dict[str, Any] = {}
        if key:
            options["key"] = key
        if transform:
            options["transform"] = transform
        if options:
            composed = composed.configure(**options)
        return composed

    @cached_property
    def _indexes(self) -> List[BaseIndex]:
        """Return the sub-index objects (one per class of ``index_classes``)."""
        return [index_class(self.field) for index_class in self.index_classes]

    def can_handle_suffix(self, suffix: Optional[str]) -> bool:  # type: ignore[override]
        """Return whether a sub-index can serve a filter with the full suffix ``suffix``."""
        return any(index.can_handle_suffix(suffix) for index in self._indexes)

    @property
    def handle_uniqueness(self) -> bool:  # type: ignore[override]
        """Return whether a sub-index can check uniqueness."""
        return any(index.handle_uniqueness for index in self._indexes)

    def get_unique_index(self) -> BaseIndex:
        """Return the first sub-index able to check uniqueness (``IndexError`` if none)."""
        for index in self._indexes:
            if index.handle_uniqueness:
                return index
        raise IndexError(
            "No sub-index of %s on %s can check uniqueness"
            % (type(self).__name__, _field_path(self.model, self.field))
        )

    def check_storable(self, value: Any) -> None:
        """Refuse, before anything is written, a value the transforms cannot slice (not a str)."""
        try:
            transformed = self.transform_value(value)
            for index in self._indexes:
                index.check_storable(transformed)
        except TypeError as exc:
            raise UnsliceableValue(
                "Invalid value %r for %s: %s reads parts of a str (%s). Store the date/time as text, "
                "e.g. value.isoformat()."
                % (value, _field_path(self.model, self.field), type(self).__name__, exc)
            ) from None

    def prepare_args(self, args: Iterable[Any], transform: bool = True) -> List[Any]:
        """Return ``args`` with the value transformed (if asked) and ``key`` inserted before it."""
        args = list(args)
        if transform:
            args[-1] = self.transform_value(args[-1])
        if self.key:
            args.insert(len(args) - 1, self.key)
        return args

    def add(self, pk: Any, *args: Any, check_uniqueness: bool = False, **kwargs: Any) -> None:
        """Index ``pk`` in every sub-index; only the first uniqueness-capable one checks."""
        args = self.prepare_args(args)
        unique_index = None
        if check_uniqueness:
            unique_index = next((index for index in self._indexes if index.handle_uniqueness), None)
        for index in self._indexes:
            index.add(pk, *args, check_uniqueness=index is unique_index, **kwargs)

    def remove(self, pk: Any, *args: Any, **kwargs: Any) -> None:
        """Deindex ``pk`` from every sub-index."""
        args = self.prepare_args(args)
        for index in self._indexes:
            index.remove(pk, *args, **kwargs)

    def check_uniqueness(self, pk: Any, *args: Any) -> None:
        """Check uniqueness with the unique sub-index (args prepared without transform)."""
        self.get_unique_index().check_uniqueness(pk, *self.prepare_args(args, transform=False))

    def get_filtered_keys(
        self, suffix: Optional[str], *args: Any, **kwargs: Any
    ) -> List[Tuple[str, str, bool]]:
        """Return the keys of the first sub-index handling ``suffix`` (filter values are not transformed)."""
        args = self.prepare_args(args, transform=False)
        for index in self._indexes:
            if index.can_handle_suffix(suffix):
                return index.get_filtered_keys(suffix, *args, **kwargs)
        raise ImplementationError(
            "No index found to manage filter suffix %r for field %s: no sub-index of %s handles it"
            % (suffix, _field_path(self.model, self.field), type(self).__name__)
        )

    def get_all_storage_keys(self) -> Set[str]:
        """Return the keys of every sub-index."""
        keys: Set[str] = set()
        for index in self._indexes:
            keys.update(index.get_all_storage_keys())
        return keys

    def _rollback(self, pk: Any) -> None:
        """Undo, in every sub-index, what was (de)indexed for ``pk`` in this thread."""
        for index in self._indexes:
            index._rollback(pk)

    def _reset_rollback_cache(self, pk: Any) -> None:
        """Forget the rollback cache of ``pk`` in every sub-index."""
        for index in self._indexes:
            index._reset_rollback_cache(pk)


# ---------------------------------------------------------------------------------------------
# Date and time indexes (string values; non-string values make the transforms raise TypeError)


class UnsliceableValue(DataError, TypeError):
    """A value the date and time indexes cannot slice (not a str): a ``TypeError``, as in 2.x, and
    redis-py's ``DataError``, as every value refused before anything is written."""


class SliceTransform:
    """The transform ``value[start:end]`` of the date and time indexes.

    An object rather than a lambda, so that the atomic-writes script can apply the same slice on
    the server (see docs/atomic-writes.rst); it is called as ``transform(value)``.
    """

    __slots__ = ("start", "end")

    def __init__(self, start: int, end: Optional[int] = None) -> None:
        self.start = start
        self.end = end

    def __call__(self, value: Any) -> Any:
        return value[self.start : self.end]

    def __repr__(self) -> str:
        return "SliceTransform(%r, %r)" % (self.start, self.end)


def _number_part(name: str, start: int, end: int) -> type:
    """Return a ``NumberRangeIndex`` prefixed ``name`` on ``value[start:end]``, without uniqueness."""
    return NumberRangeIndex.configure(
        prefix=name.lower()[: -len("index")],
        transform=SliceTransform(start, end),
        handle_uniqueness=False,
        name=name,
    )


YearIndex = _number_part("YearIndex", 0, 4)
MonthIndex = _number_part("MonthIndex", 5, 7)
DayIndex = _number_part("DayIndex", 8, 10)
DateIndexParts = MultiIndexes.compose([YearIndex, MonthIndex, DayIndex], name="DateIndexParts")
DateRangeIndex = TextRangeIndex.configure(key="date", transform=SliceTransform(0, 10), name="DateRangeIndex")
DateIndex = MultiIndexes.compose([DateRangeIndex, DateIndexParts], name="DateIndex")

HourIndex = _number_part("HourIndex", 0, 2)
MinuteIndex = _number_part("MinuteIndex", 3, 5)
SecondIndex = _number_part("SecondIndex", 6, 8)
TimeIndexParts = MultiIndexes.compose([HourIndex, MinuteIndex, SecondIndex], name="TimeIndexParts")
TimeRangeIndex = TextRangeIndex.configure(key="time", transform=SliceTransform(0, 8), name="TimeRangeIndex")
TimeIndex = MultiIndexes.compose([TimeRangeIndex, TimeIndexParts], name="TimeIndex")

FullDateTimeRangeIndex = TextRangeIndex.configure(key="full", name="FullDateTimeRangeIndex")
DateSimpleTimeIndex = MultiIndexes.compose(
    [
        FullDateTimeRangeIndex,
        DateRangeIndex.configure(prefix="date"),
        DateIndexParts,
        TimeRangeIndex.configure(prefix="time", transform=SliceTransform(11)),
    ],
    transform=SliceTransform(0, 19),
    name="DateSimpleTimeIndex",
)
DateTimeIndex = MultiIndexes.compose(
    [DateSimpleTimeIndex, TimeIndexParts.configure(transform=SliceTransform(11))],
    name="DateTimeIndex",
)
SimpleDateTimeIndex = MultiIndexes.compose(
    [
        FullDateTimeRangeIndex,
        DateRangeIndex.configure(prefix="date"),
        TimeRangeIndex.configure(prefix="time", transform=SliceTransform(11)),
    ],
    transform=SliceTransform(0, 19),
    name="SimpleDateTimeIndex",
)


# ---------------------------------------------------------------------------------------------
# Related indexes: attached to the fields another index depends on


class _BaseRelatedIndex(BaseIndex):
    """Base of the indexes that forward the changes of a field to an index of another field.

    ``related_field`` (configured: a field of the model) is re-bound at init to the model-level
    field of the same name; ``related_index`` is its index of class ``related_index_class``.
    Stores nothing itself, and serves no filter.
    """

    related_field: Any = None
    related_index_class: Optional[type] = None
    configurable_attrs = BaseIndex.configurable_attrs | {"related_field", "related_index_class"}

    @classmethod
    def handle_configurable_attrs(cls, **kwargs: Any) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
        """Extract ``related_field`` and ``related_index_class``, then the base attributes."""
        related = {
            name: kwargs.pop(name) for name in ("related_field", "related_index_class") if name in kwargs
        }
        name, attrs, remaining = super().handle_configurable_attrs(**kwargs)
        attrs.update(related)
        return name, attrs, remaining

    def __init__(self, field: Any) -> None:
        super().__init__(field)
        if self.related_field is not None:
            self.related_field = self.model.get_field(self.related_field.name)

    @cached_property
    def related_index(self) -> Any:
        """Return the index of ``related_field`` this index forwards to."""
        index_class = self.related_index_class
        return self.related_field.get_index(
            index_class=index_class, key=index_class.key, prefix=index_class.prefix
        )

    def check_uniqueness(self, pk: Any, *args: Any) -> None:
        """Do nothing: a related index checks no uniqueness of its own."""

    def _rollback(self, pk: Any) -> None:
        """Undo the operation on ``pk`` in the related index (which undoes all of it)."""
        self.related_index._rollback(pk)

    def _reset_rollback_cache(self, pk: Any) -> None:
        """Forget the rollback cache of ``pk``, here and in the related index."""
        super()._reset_rollback_cache(pk)
        self.related_index._reset_rollback_cache(pk)

    def get_filtered_keys(
        self, suffix: Optional[str], *args: Any, **kwargs: Any
    ) -> List[Tuple[str, str, bool]]:
        """Refuse: a related index cannot filter its field."""
        raise ImplementationError(
            "%s on %s only maintains %s of %s: it cannot filter"
            % (
                type(self).__name__,
                _field_path(self.model, self.field),
                getattr(self.related_index_class, "__name__", None),
                _field_path(self.model, self.related_field),
            )
        )

    def get_all_storage_keys(self) -> Set[str]:
        """Return no key: a related index stores nothing itself."""
        return set()


class _ScoredEqualIndex_RelatedIndex(_BaseRelatedIndex):  # noqa: N801 - redis-limpyd 2.x name
    """Attached to the score field of a :class:`ScoredEqualIndex`: updates its scores."""

    def add(self, pk: Any, *args: Any, check_uniqueness: bool = False, **kwargs: Any) -> None:
        """Give every entry of ``pk`` in the scored index the new score ``float(value)``."""
        value = args[-1]
        self.related_index.score_updated(pk, None if value is None else float(value))
        self._record_indexed(pk, args)

    def remove(self, pk: Any, *args: Any, **kwargs: Any) -> None:
        """Remove every entry of ``pk`` from the scored index (its score is gone)."""
        self.related_index.score_updated(pk, None)
        self._record_deindexed(pk, args)


class _EqualIndexWith_RelatedIndex(_MultiFieldsIndexMixin, _BaseRelatedIndex):  # noqa: N801
    """Attached to each other field of an :class:`EqualIndexWith`: updates its combinations."""

    handled_suffixes = {None, "eq", "in"}
    supported_key_types = {"set"}

    def _can_filter_fields(
        self, fields_and_suffixes: List[Tuple[str, Optional[str]]]
    ) -> List[Tuple[str, Set[Optional[str]]]]:
        """Return ``[]``: the combinations are served by the main index."""
        return []

    def check_uniqueness_at_init(self, values: Dict[str, Any]) -> None:
        """Do nothing: the main index checks."""

    def add(self, pk: Any, *args: Any, check_uniqueness: bool = False, **kwargs: Any) -> None:
        """Add the combinations using this field's value ``args``."""
        self.related_index.other_add(pk, self.field.name, *args)
        self._record_indexed(pk, args)

    def remove(self, pk: Any, *args: Any, **kwargs: Any) -> None:
        """Remove the combinations using this field's value ``args``."""
        self.related_index.other_remove(pk, self.field.name, *args)
        self._record_deindexed(pk, args)


# ---------------------------------------------------------------------------------------------
# ScoredEqualIndex


class ScoredEqualIndex(_RecomputedRollbackMixin, EqualIndex):
    """An equality index in sorted sets, each pk scored by the value of ``score_field``.

    ``ScoredEqualIndex.configure(score_field='prio')``. Key
    ``M:F[:H][:P]:equal-scored:<value>`` (zset of pks); no entry while the score is empty.
    Filtering (``None``, ``eq``, ``in``) returns sorted sets, so results come ordered by score.
    A unique field also keeps ``<key>:__uniqueness__`` (set of the pks using the value).
    """

    key = "equal-scored"
    supported_key_types = {"zset"}
    score_field: Any = None
    configurable_attrs = EqualIndex.configurable_attrs | {"score_field"}
    RelatedIndex = _ScoredEqualIndex_RelatedIndex

    @classmethod
    def handle_configurable_attrs(cls, **kwargs: Any) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
        """Extract ``score_field``, then the base attributes."""
        score_field = kwargs.pop("score_field", NotProvided)
        name, attrs, remaining = super().handle_configurable_attrs(**kwargs)
        if score_field is not NotProvided:
            attrs["score_field"] = score_field
        return name, attrs, remaining

    @classmethod
    def _field_model_ready(cls, model: type, field: Any) -> None:
        """Check the configuration and attach the related index to the score field."""
        where = "%s on %s" % (cls.__name__, _field_path(model, field))
        manager = model.collection_manager
        if not (isinstance(manager, type) and issubclass(manager, ExtendedCollectionManager)):
            raise ImplementationError(
                "%s: the model's collection_manager %s cannot use sorted sets; set `collection_manager = "
                "ExtendedCollectionManager` (from limpyd.contrib.collection) on %s"
                % (
                    where,
                    getattr(model.collection_manager, "__name__", model.collection_manager),
                    model.__name__,
                )
            )
        score_name = getattr(cls.score_field, "name", cls.score_field)
        if not score_name or not isinstance(score_name, str) or not model.has_field(score_name):
            raise ImplementationError(
                "%s: score_field %r is not a field of %s; use ScoredEqualIndex.configure(score_field='<field name>')"
                % (where, score_name, model.__name__)
            )
        if score_name == field.name:
            raise ImplementationError(
                "%s: score_field %r is the indexed field itself; score it by another field of %s"
                % (where, score_name, model.__name__)
            )
        score_field = model.get_field(score_name)
        if not isinstance(score_field, SingleValueField) or isinstance(score_field, PKField):
            raise ImplementationError(
                "%s: score_field %r is a %s; use a StringField or InstanceHashField holding a number"
                % (where, score_name, type(score_field).__name__)
            )
        cls.score_field = score_field
        _attach_related_index(score_field, cls.RelatedIndex, field, cls)

    def normalize_value(self, value: Any, transform: bool = True) -> Any:
        """Return the stored form of ``value`` (a model instance gives its pk)."""
        if isinstance(value, RedisModel):
            value = value.pk.get()
        return super().normalize_value(value, transform=transform)

    @cached_property
    def _score_field(self) -> Any:
        """Return the model-level score field of this index's model (re-bound by name)."""
        return self.model.get_field(getattr(self.score_field, "name", self.score_field))

    @cached_property
    def _score_related_index(self) -> Any:
        """Return the related index the score field has for this index (``None`` if missing)."""
        for index in self._score_field._indexes:
            if isinstance(index, _ScoredEqualIndex_RelatedIndex) and index.related_index is self:
                return index
        return None

    def _current_score(self, pk: Any, pending: bool = True) -> Optional[float]:
        """Return the score of ``pk``: its score field's value as a float, ``None`` when empty.

        With ``pending``, a score (de)indexed by the running operation replaces the stored one.
        """
        value = self._score_field.get_for_instance(pk).proxy_get()
        stored = [] if value is None else [(value,)]
        values = _apply_pending(
            stored,
            self._score_related_index if pending else None,
            pk,
            lambda parts: str(self._score_field.from_python(parts[-1])),
        )
        return float(values[-1]) if values else None

    def _current_keys(self, pk: Any, pending: bool = True) -> List[str]:
        """Return the storage keys of the values of ``pk`` (with the running operation's changes)."""
        stored = _field_parts(self.field, self.field.get_for_instance(pk).proxy_get())
        return _apply_pending(
            stored, self if pending else None, pk, lambda parts: self.get_storage_key(*parts)
        )

    @staticmethod
    def uniqueness_key(key: str) -> str:
        """Return the set of the pks using the value stored at ``key``: ``<key>:__uniqueness__``."""
        return make_key(key, "__uniqueness__")

    def get_uniqueness_members(self, key: str) -> List[str]:
        """Return the pks using the value of ``key`` (https://redis.io/commands/smembers)."""
        return list(self.connection.smembers(self.uniqueness_key(key)))

    def store(self, key: str, pk: Any, score: Any = NotProvided, **kwargs: Any) -> bool:
        """Add ``pk`` to ``key`` with its score (read unless given) and return ``True``.

        Nothing is added to the sorted set without a score, but the uniqueness set of a unique
        field is written anyway, and the value is recorded as indexed (a score set later in the
        same operation finds it) (https://redis.io/commands/zadd).
        """
        if score is NotProvided:
            score = self._current_score(pk)
        connection = self.connection
        if self.field.unique:
            uniqueness_key = self.uniqueness_key(key)
            self._journal(pk, "set", uniqueness_key)
            # nobody reads the reply: sent with the next command
            later(connection).sadd(uniqueness_key, pk)
        if score is not None:
            self._journal(pk, "zset", key)
            later(connection).zadd(key, {pk: score})
        return True

    def unstore(self, key: str, pk: Any, **kwargs: Any) -> bool:
        """Remove ``pk`` from ``key`` (and from the uniqueness set: the value is free again).

        https://redis.io/commands/zrem
        """
        connection = self.connection
        self._journal(pk, "zset", key)
        later(connection).zrem(key, pk)
        if self.field.unique:
            uniqueness_key = self.uniqueness_key(key)
            self._journal(pk, "set", uniqueness_key)
            later(connection).srem(uniqueness_key, pk)
        return True

    def score_updated(self, pk: Any, new_score: Optional[float]) -> None:
        """Re-add every entry of ``pk`` with ``new_score``, or remove them all when it is ``None``."""
        connection = self.connection
        for key in self._current_keys(pk):
            self._journal(pk, "zset", key)
            # nobody reads the reply: sent with the next command
            if new_score is None:
                later(connection).zrem(key, pk)
            else:
                later(connection).zadd(key, {pk: new_score})

    def _reindex_stored(self, pk: Any) -> None:
        """Write the entries (and uniqueness records) of the values stored for ``pk``."""
        try:
            score = self._current_score(pk, pending=False)
        except ValueError:  # a non-numeric score written behind limpyd's back: no entry
            score = None
        connection = self.connection
        for key in self._current_keys(pk, pending=False):
            if self.field.unique:
                later(connection).sadd(self.uniqueness_key(key), pk)
            if score is not None:
                later(connection).zadd(key, {pk: score})

    def union_filtered_in_keys(self, dest_key: str, *source_keys: str) -> None:
        """Store the union of the sorted sets ``source_keys`` into ``dest_key`` (https://redis.io/commands/zunionstore)."""
        self.connection.zunionstore(dest_key, list(source_keys))

    def get_filtered_keys(
        self, suffix: Optional[str], *args: Any, **kwargs: Any
    ) -> List[Tuple[str, str, bool]]:
        """Return the sorted set answering the filter (``in``: their union in a temporary key)."""
        self._check_key_accepted_key_types(kwargs.get("accepted_key_types"))
        return [(key, "zset", temporary) for key, _, temporary in super().get_filtered_keys(suffix, *args)]


# ---------------------------------------------------------------------------------------------
# EqualIndexWith


class EqualIndexWith(_RecomputedRollbackMixin, _MultiFieldsIndexMixin, EqualIndex):
    """An equality index on a field together with ``other_fields``, optionally unique together.

    ``EqualIndexWith.configure(other_fields=['bar', 'baz'], unique=True)``. One set of pks per
    combination of values: ``M:F[:P]:equal-with:<main parts>:<other1 parts>:...`` (the cartesian
    product over multi-value fields; a hash gives ``<key>:<value>`` parts). Nothing is indexed
    while any of the fields has no value. Used by collections only when every field is filtered
    (suffixes ``None``, ``eq``, ``in``).
    """

    key = "equal-with"
    handled_suffixes = {None, "eq", "in"}
    supported_key_types = {"set", "zset"}
    filter_single_field = False
    unique = False
    handle_uniqueness = False
    other_fields: Any = None
    configurable_attrs = (EqualIndex.configurable_attrs - {"handle_uniqueness"}) | {"other_fields", "unique"}
    RelatedIndex = _EqualIndexWith_RelatedIndex

    @classmethod
    def configure(cls, other_fields: Any, unique: bool = False, **kwargs: Any) -> type:  # type: ignore[override]
        """Return a subclass indexing its field with ``other_fields`` (names), ``unique`` together or not.

        Also accepts ``prefix``, ``key``, ``transform`` and ``name``.
        """
        return super().configure(other_fields=other_fields, unique=unique, **kwargs)

    @classmethod
    def handle_configurable_attrs(cls, **kwargs: Any) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
        """Extract ``other_fields`` and ``unique``, then the base attributes."""
        own: Dict[str, Any] = {}
        if "other_fields" in kwargs:
            own["other_fields"] = list(kwargs.pop("other_fields"))
        if "unique" in kwargs:
            own["unique"] = bool(kwargs.pop("unique"))
        name, attrs, remaining = super().handle_configurable_attrs(**kwargs)
        attrs.update(own)
        return name, attrs, remaining

    @classmethod
    def _field_model_ready(cls, model: type, field: Any) -> None:
        """Check ``other_fields`` and attach the related index to each of them."""
        where = "%s on %s" % (cls.__name__, _field_path(model, field))
        names = [getattr(other, "name", other) for other in (cls.other_fields or [])]
        if not names:
            raise ImplementationError(
                "%s: no other fields; use EqualIndexWith.configure(other_fields=['<field name>', ...])"
                % where
            )
        for name in names:
            if not isinstance(name, str) or not model.has_field(name):
                raise ImplementationError(
                    "%s: %r in other_fields is not a field of %s (fields: %s)"
                    % (where, name, model.__name__, ", ".join(model._fields))
                )
            if name == field.name:
                raise ImplementationError(
                    "%s: other_fields names the indexed field %r itself; list only the other fields"
                    % (where, name)
                )
        others = [model.get_field(name) for name in names]
        if cls.unique:
            hashes = [other.name for other in others if isinstance(other, HashField)]
            if hashes:
                raise ImplementationError(
                    "%s: a unique EqualIndexWith cannot include the HashField %s; remove it or drop unique=True"
                    % (where, ", ".join(hashes))
                )
        cls.other_fields = others
        for other in others:
            if not isinstance(other, PKField):  # a pk never changes: nothing to forward
                _attach_related_index(other, cls.RelatedIndex, field, cls)

    # ------------------------------------------------------------------ fields and values

    @cached_property
    def _other_fields(self) -> List[Any]:
        """Return the model-level other fields of this index's model (re-bound by name)."""
        return [self.model.get_field(getattr(other, "name", other)) for other in self.other_fields or []]

    @property
    def _field_names(self) -> List[str]:
        return [self.field.name] + [other.name for other in self._other_fields]

    @property
    def unique_index_name(self) -> str:
        """Return ``unique together fields [<f1>, <f2>, ...] on <Model>`` for error messages."""
        return "unique together fields [%s] on %s" % (", ".join(self._field_names), self.model.__name__)

    def _main_parts(self, parts: Tuple[Any, ...], transform: bool = True) -> Tuple[str, ...]:
        """Return the key parts of a value of the main field (value normalized as by ``EqualIndex``)."""
        *extra, value = parts
        return tuple(str(part) for part in extra) + (self.normalize_value(value, transform=transform),)

    @staticmethod
    def _other_parts(field: Any, parts: Tuple[Any, ...]) -> Tuple[str, ...]:
        """Return the key parts of a value of another field (as stored)."""
        return tuple(str(field.from_python(part)) for part in parts)

    def _stored_parts(self, field: Any, pk: Any) -> List[Tuple[Any, ...]]:
        """Return the index parts of the value currently stored for ``pk`` in ``field`` (1 read)."""
        return _field_parts(field, field.get_for_instance(pk).proxy_get())

    def _make_storage_key(self, combination: Iterable[Tuple[str, ...]]) -> str:
        """Return the set of a combination: ``M:F[:P][:K]:<main parts>:<other parts>...``."""
        parts: List[Any] = [self.model._name, self.field.name]
        if self.prefix:
            parts.append(self.prefix)
        if self.key:
            parts.append(self.key)
        for field_parts in combination:
            parts.extend(field_parts)
        return make_key(*parts)

    def _combinations(self, per_field: List[List[Tuple[str, ...]]]) -> List[List[Tuple[str, ...]]]:
        """Return the cartesian product of the parts of each field (main first)."""
        return [list(combination) for combination in itertools.product(*per_field)]

    def _display(self, combination: List[Tuple[str, ...]]) -> str:
        return ", ".join(
            "%s=%s" % (name, ":".join(parts)) for name, parts in zip(self._field_names, combination)
        )

    @cached_property
    def _related_indexes(self) -> Dict[str, Any]:
        """Return ``{other field name: its related index for this index}``."""
        related = {}
        for other in self._other_fields:
            for index in other._indexes:
                if isinstance(index, _EqualIndexWith_RelatedIndex) and index.related_index is self:
                    related[other.name] = index
        return related

    def _main_values(self, pk: Any, pending: bool = True) -> List[Tuple[str, ...]]:
        """Return the key parts of the main field's values of ``pk`` (with the operation's changes)."""
        return _apply_pending(
            self._stored_parts(self.field, pk), self if pending else None, pk, self._main_parts
        )

    def _other_values(self, other: Any, pk: Any, pending: bool = True) -> List[Tuple[str, ...]]:
        """Return the key parts of ``other``'s values of ``pk`` (with the operation's changes)."""
        related = self._related_indexes.get(other.name) if pending else None
        return _apply_pending(
            self._stored_parts(other, pk), related, pk, lambda parts: self._other_parts(other, parts)
        )

    def _keys_for_pk(
        self,
        pk: Any,
        main: List[Tuple[str, ...]],
        replaced: Optional[str] = None,
        replacement: Optional[Tuple[Any, ...]] = None,
        pending: bool = True,
    ) -> List[List[Tuple[str, ...]]]:
        """Return the combinations of ``pk`` with the main parts ``main`` and the other fields' values.

        The other field named ``replaced`` (if any) takes the single value ``replacement``.
        """
        per_field = [main]
        for other in self._other_fields:
            if other.name == replaced:
                per_field.append([self._other_parts(other, replacement)])
            else:
                per_field.append(self._other_values(other, pk, pending))
            if not per_field[-1]:
                return []
        return self._combinations(per_field)

    def _check_combinations(self, combinations: List[List[Tuple[str, ...]]], pk: Any) -> None:
        """Raise ``UniquenessError`` if a combination is already used by another pk (1 ``SMEMBERS`` each)."""
        for combination in combinations:
            pks = self.get_uniqueness_members(self._make_storage_key(combination))
            self.assert_pks_uniqueness(pks, pk, lambda combination=combination: self._display(combination))

    def _write(self, combinations: List[List[Tuple[str, ...]]], pk: Any, add: bool) -> None:
        """Add ``pk`` to (or remove it from) the set of each combination (checked first if unique)."""
        if add and self.unique:
            self._check_combinations(combinations, pk)
        for combination in combinations:
            key = self._make_storage_key(combination)
            self._journal(pk, "set", key)
            if add:
                self.store(key, pk)
            else:
                self.unstore(key, pk)

    # ------------------------------------------------------------------ writing

    def add(self, pk: Any, *args: Any, check_uniqueness: bool = True, **kwargs: Any) -> None:
        """Index ``pk`` for the main value ``args`` combined with the other fields' values.

        When the index is unique, each combination is checked first (whatever ``check_uniqueness``
        says: the field itself is not unique). The value is recorded even when a field has no
        value yet (nothing written), for the other fields changed later in the same operation.
        """
        self._write(self._keys_for_pk(pk, [self._main_parts(args)]), pk, add=True)
        self._record_indexed(pk, args)

    def remove(self, pk: Any, *args: Any, **kwargs: Any) -> None:
        """Deindex ``pk`` for the main value ``args`` combined with the other fields' values."""
        self._write(self._keys_for_pk(pk, [self._main_parts(args)]), pk, add=False)
        self._record_deindexed(pk, args)

    def other_add(self, pk: Any, field_name: str, *args: Any) -> None:
        """Index ``pk`` for the new value ``args`` of the other field ``field_name``."""
        main = self._main_values(pk)
        if main:
            self._write(self._keys_for_pk(pk, main, field_name, args), pk, add=True)

    def other_remove(self, pk: Any, field_name: str, *args: Any) -> None:
        """Deindex ``pk`` for the old value ``args`` of the other field ``field_name``."""
        main = self._main_values(pk)
        if main:
            self._write(self._keys_for_pk(pk, main, field_name, args), pk, add=False)

    def _reindex_stored(self, pk: Any) -> None:
        """Add ``pk`` to the set of every combination of its stored values."""
        main = self._main_values(pk, pending=False)
        if main:
            for combination in self._keys_for_pk(pk, main, pending=False):
                self.store(self._make_storage_key(combination), pk)

    def check_uniqueness(self, pk: Any, *args: Any, key: Optional[str] = None) -> None:
        """Do nothing: uniqueness is checked together, in :meth:`add` and :meth:`check_uniqueness_at_init`."""

    def check_uniqueness_at_init(self, values: Dict[str, Any]) -> None:
        """Raise ``UniquenessError`` if the values given at creation are already used together.

        ``values`` maps field names to the values given to the constructor; nothing is checked
        unless every field of the index has a value (pk ``None``: any owner is a conflict).
        """
        if not self.unique:
            return
        per_field: List[List[Tuple[str, ...]]] = []
        for position, field in enumerate([self.field] + self._other_fields):
            if field.name not in values:
                return
            parts_list = _field_parts(field, values[field.name])
            if not parts_list:
                return
            if position == 0:
                per_field.append([self._main_parts(parts) for parts in parts_list])
            else:
                per_field.append([self._other_parts(field, parts) for parts in parts_list])
        self._check_combinations(self._combinations(per_field), None)

    # ------------------------------------------------------------------ filtering

    def _can_filter_fields(
        self, fields_and_suffixes: List[Tuple[str, Optional[str]]]
    ) -> List[Tuple[str, Set[Optional[str]]]]:
        """Return ``[(field name, {suffixes}), ...]`` (main first) when every field is filtered, else ``[]``."""
        given: Dict[str, Set[Optional[str]]] = {}
        for name, suffix in fields_and_suffixes:
            given.setdefault(name, set()).add(suffix)
        result: List[Tuple[str, Set[Optional[str]]]] = []
        main_suffixes = {
            suffix for suffix in given.get(self.field.name, ()) if self.can_handle_suffix(suffix)
        }
        if not main_suffixes:
            return []
        result.append((self.field.name, main_suffixes))
        for other in self._other_fields:
            suffixes = {suffix for suffix in given.get(other.name, ()) if suffix in (None, "eq", "in")}
            if not suffixes:
                return []
            result.append((other.name, suffixes))
        return result

    def get_filtered_keys(
        self, suffix: Optional[str], *args: Any, **kwargs: Any
    ) -> List[Tuple[str, str, bool]]:
        """Return the set of the filtered combination, or the union of all of them with ``in``.

        ``related_filters`` (keyword) maps each other field name to ``(parts + [value], suffix)``.
        Without ``in`` no command is sent; with ``in`` on any field the sets of every combination
        are united (``EXISTS`` + ``SUNIONSTORE``) into a temporary key; an empty ``in`` gives ``[]``.
        """
        self._check_key_accepted_key_types(kwargs.get("accepted_key_types"))
        keys, use_union = self.filtered_storage_keys(
            suffix, *args, related_filters=kwargs.get("related_filters")
        )
        if not keys:
            return []
        if not use_union:
            return [(keys[0], "set", False)]
        tmp_key = self._unique_key("tmp")
        self.union_filtered_in_keys(tmp_key, *keys)
        return [(tmp_key, "set", True)]

    def filtered_storage_keys(
        self, suffix: Optional[str], *args: Any, related_filters: Optional[Dict[str, Any]] = None
    ) -> Tuple[List[str], bool]:
        """Return ``(the sets of the filtered combinations, whether they are to be united)``; no
        command. The filter as :meth:`get_filtered_keys` takes it; no set for an empty ``in``."""
        related_filters = related_filters or {}
        use_union = False

        def values_of(filter_suffix: Optional[str], value: Any) -> List[Any]:
            nonlocal use_union
            if filter_suffix == "in":
                use_union = True
                return list(dict.fromkeys(value))
            return [value]

        *extra, value = args
        per_field = [
            [
                self._main_parts((*extra, one), transform=False)
                for one in values_of(self.remove_prefix(suffix), value)
            ]
        ]
        for other in self._other_fields:
            if other.name not in related_filters:
                raise ImplementationError(
                    'No index found to manage filter "%s" for field %s: %s needs a filter on %s too'
                    % (
                        self.field.name,
                        _field_path(self.model, self.field),
                        type(self).__name__,
                        ", ".join(self._field_names[1:]),
                    )
                )
            other_args, other_suffix = related_filters[other.name]
            *other_extra, other_value = other_args
            per_field.append(
                [
                    self._other_parts(other, (*other_extra, one))
                    for one in values_of(other_suffix, other_value)
                ]
            )
        if any(not parts for parts in per_field):
            return [], use_union
        return list(
            dict.fromkeys(self._make_storage_key(c) for c in self._combinations(per_field))
        ), use_union
