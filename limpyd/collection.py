"""Collections: filter, sort and slice a model's instances (``limpyd.collection``).

A :class:`CollectionManager` is a lazy description of a set of primary keys: building, filtering,
sorting, cloning it never touches Redis. Evaluation (iteration, ``len()``, indexing,
slicing, ``repr()``, ``==``) turns the filters into Redis keys with the indexes' ``get_filtered_keys``,
intersects them into a temporary key when there are several, then counts (``SCARD``) or retrieves
(``SMEMBERS``, or ``SORT`` when sorted or windowed) and deletes every temporary key.

Command sequences and counts are those of redis-limpyd 2.1.2, with the
decisions listed in docs/collections.rst (reasons in docs/migrating.rst):

- C1: a negative index or reversed window inverts the direction of that one ``SORT`` only;
- C2: the result of an index or slice is never cached as the whole collection;
- C3: a clone that adds filters forgets the cached length;
- C4: an index or slice on a pk-filtered collection is applied to its (at most one) result;
- C5: an empty ``__in`` gives an empty result even combined with other filters;
- C6: ``sort(by='-raw pattern')`` strips the ``-`` like for fields;
- C7: a negative index on a collection that Redis does not sort (``by='nosort'``, or any ``by``
  pattern without ``*``, which Redis treats the same way) is answered from a full fetch;
- C8: with a pk filter, retrieval is ``SMEMBERS`` whatever the sort options, so it never depends on
  the pk type;
- C9: iteration returns a :class:`CollectionResults` (length, indexing, iteration).

Round trips: evaluation runs in a write-behind batch (``limpyd._batch``): where this class owns
the commands, the temporary keys, the intersection, the retrieval and the ``DEL`` of the final key
travel in one write (same commands, same order; the ``DEL`` still runs when the retrieval fails,
like the ``finally`` of the sequential version, used when a hook is overridden).
"""

from __future__ import annotations

import copy
import itertools
import operator
import uuid
from collections import namedtuple
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

# redis-limpyd 2.x exposes every exception here (it star-imported them)
from redis.client import Pipeline

from limpyd._batch import (
    assume_exists,
    batch_scope,
    current_batch,
    later,
    queue_command,
    send_commands,
)
from limpyd._pool import direct, read_direct
from limpyd._recovery import register_temporary_key, temporary_keys
from limpyd.exceptions import DoesNotExist, ImplementationError, LimpydException, UniquenessError
from limpyd.fields import SingleValueField
from limpyd.indexes import EqualIndex
from limpyd.utils import make_key, unique_key

__all__ = [
    "CollectionManager",
    "CollectionResults",
    "ParsedFilter",
    "NONE_SLICE",
    "LimpydException",
    "UniquenessError",
    "ImplementationError",
    "DoesNotExist",
]

#: A filter on an indexed field, as parsed when it is added to a collection: the index serving it,
#: the filter suffix (``None``, ``'eq'``, ``'in'``, ``'gt'``...), the extra field parts (the hash key
#: of a ``HashField``), the value as given, and (multi-field indexes only) the related filters.
ParsedFilter = namedtuple(
    "ParsedFilter", ["index", "suffix", "extra_field_parts", "value", "related_filters"]
)

NONE_SLICE = slice(None, None, None)

#: Converter of a raw result (a pk) into what the collection returns (an instance), or ``None``
Converter = Optional[Callable[[Any], Any]]


def _model_path(model: type) -> str:
    """Return ``module.qualname`` of ``model``, for error messages."""
    return "%s.%s" % (model.__module__, model.__qualname__)


def _describe_suffixes(suffixes: Any) -> str:
    """Return the filter suffixes ``suffixes`` as ``(no suffix), eq, in`` for error messages."""
    names = sorted("(no suffix)" if suffix is None else suffix for suffix in suffixes)
    return ", ".join(names) if names else "(none)"


def _execute(pipeline: Any) -> List[Any]:
    """Run the commands queued in ``pipeline`` (all of them) and return their replies.

    The first failed command raises its own error, unchanged: same exception and message as
    when the commands are sent one by one (redis-py would prefix it with the pipeline position).
    """
    replies = pipeline.execute(raise_on_error=False)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _check_free_key(key: str) -> Callable[[Any], None]:
    """Return the callback checking the reply of the ``EXISTS`` sent for a new temporary key."""

    def check(reply: Any) -> None:
        if isinstance(reply, Exception):
            raise reply
        if reply:
            raise LimpydException(
                "The temporary key %r already existed (a uuid4 collision?) and was overwritten: "
                "retry the operation." % key
            )

    return check


class _CheckedInstances:
    """Convert pks to instances with ``Model(pk)``, checking the existence of upcoming pks in batches.

    The same ``SISMEMBER`` per pk as converting them one by one, sent ``CHUNK`` at a time in one
    round trip when iteration starts; each instance is then built by ``Model(pk)`` with its check
    answered from that reply (a missing pk raises ``DoesNotExist`` as usual).
    """

    CHUNK = 1000

    def __init__(self, model: type) -> None:
        self.model = model
        self.entries: List[Any] = []
        self.position = 0
        self.known: Dict[Any, bool] = {}

    def prefetch(self, entries: List[Any]) -> None:
        """Get ready to convert ``entries``, in this order."""
        self.entries, self.position, self.known = entries, 0, {}

    def _check_next_chunk(self) -> None:
        chunk = [
            pk for pk in self.entries[self.position : self.position + self.CHUNK] if pk not in self.known
        ]
        if not chunk:
            return
        connection = self.model.get_connection()
        if isinstance(connection, Pipeline):  # a user pipeline: collections are not evaluated there
            return
        replies = self._send_checks(connection, chunk)
        for pk, exists in zip(chunk, replies):
            if isinstance(exists, Exception):
                raise exists
            self.known[pk] = bool(exists)

    def _send_checks(self, connection: Any, chunk: List[Any]) -> List[Any]:
        """Return the ``SISMEMBER`` replies of the pks of ``chunk`` in the collection key (one round trip)."""
        pk_field = self.model.get_field("pk")
        collection_key = pk_field.collection_key
        return send_commands(
            connection, [(("SISMEMBER", collection_key, pk_field.normalize(pk)), {}) for pk in chunk]
        )

    def _model_of(self, pk: Any) -> type:
        """Return the model class building the instance of ``pk``."""
        return self.model

    def __call__(self, pk: Any) -> Any:
        model = self._model_of(pk)
        if self.entries:
            if pk not in self.known:
                self._check_next_chunk()
            self.position += 1
            exists = self.known.pop(pk, None)
            if exists is not None:
                if not exists:
                    raise DoesNotExist("No %s found with pk %s" % (model.__name__, pk))
                with assume_exists(model._name, model.get_field("pk").normalize(pk)):
                    return model(pk)
        return model(pk)


def results_equal(results: Any, other: Any) -> bool:
    """Return whether a collection's ``results`` equal ``other`` (a list: same order; a set: same
    members; other results: same data); anything else is not equal."""
    if isinstance(other, list):
        return list(results) == other
    if isinstance(other, set):
        return set(results) == other
    if isinstance(other, CollectionResults):
        return results.data == other.data
    return False


def _index_window(arg: int, can_reverse: bool) -> Optional[Tuple[int, int, bool]]:
    """Return the window ``(start, count, read from the end)`` answering ``collection[arg]`` (an
    int), or None when the whole result is needed: a negative index Redis would not read
    backwards (C7)."""
    if arg >= 0:
        return arg, 1, False
    if can_reverse:
        return -arg - 1, 1, True
    return None


def _entry_at(results: List[Any], position: int, arg: int, model: type, func: Converter) -> Any:
    """Return ``results[position]`` (converted by ``func``), the entry of ``collection[arg]``, or
    raise the ``IndexError`` naming the index and the model."""
    try:
        entry = results[position]
    except IndexError:
        raise IndexError(
            "collection index %d out of range (collection of %s, %s)"
            % (arg, model.__name__, "empty" if not results else "fewer results")
        ) from None
    return entry if func is None else func(entry)


def checked_index(collection: Any, arg: Any) -> Any:
    """Return the index or slice ``arg`` given to ``collection[...]`` with ``int`` parts (Python's
    own errors for a zero step or another type, naming the collection's model)."""
    if isinstance(arg, slice):
        arg = slice(
            _slice_part(arg.start, collection.model),
            _slice_part(arg.stop, collection.model),
            _slice_part(arg.step, collection.model),
        )
        if arg.step == 0:
            raise ValueError("slice step cannot be zero")
        return arg
    if isinstance(arg, int) or hasattr(type(arg), "__index__"):
        return operator.index(arg)
    raise TypeError(
        "%s indices must be integers or slices, not %s (collection of %s)"
        % (type(collection).__name__, type(arg).__name__, _model_path(collection.model))
    )


def _slice_part(value: Any, model: type) -> Optional[int]:
    """Return the slice start/stop/step ``value`` as an ``int`` (or ``None``), else raise ``TypeError``."""
    if value is None:
        return None
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            "slice indices must be integers or None or have an __index__ method: got %r in a slice of "
            "a collection of %s; pass integers, e.g. collection[1:3]" % (value, _model_path(model))
        ) from None


# ------------------------------------------------------------------------------------------------
# results


class CollectionResults(object):
    """The results of an evaluated collection: raw entries (pks) and their converter.

    Iterating converts each entry when it is reached and skips those whose conversion raises
    ``DoesNotExist`` (instances deleted since the pks were read); the length counts raw entries.
    The object is also its own iterator (``next(results)``).
    """

    #: number of entries shown by ``repr()`` (read at call time)
    MAX_REPR_ITEMS = 20

    def __init__(self, data: List[Any], func: Converter = None) -> None:
        self.data = data
        self.func = func
        self.length = len(data)
        self._cursor = -1

    def __len__(self) -> int:
        return self.length

    def __bool__(self) -> bool:
        return bool(self.length)

    def _converted(self, entries: List[Any]) -> Iterator[Any]:
        """Yield the converted ``entries``, skipping those whose instance does not exist anymore."""
        func = self.func
        if func is None:
            yield from entries
            return
        prefetch = getattr(func, "prefetch", None)
        if prefetch is not None:
            prefetch(entries)
        for entry in entries:
            try:
                yield func(entry)
            except DoesNotExist:
                continue

    def __iter__(self) -> Iterator[Any]:
        self._cursor = -1
        return self._converted(self.data)

    def __next__(self) -> Any:
        func = self.func
        cursor = self._cursor + 1
        if func is None:  # raw pks: the common case, kept short (``list(collection)`` runs it per entry)
            if cursor >= self.length:
                self._cursor = self.length
                raise StopIteration
            self._cursor = cursor
            return self.data[cursor]
        if cursor == 0:
            prefetch = getattr(func, "prefetch", None)
            if prefetch is not None:
                prefetch(self.data)
        while True:
            if cursor >= self.length:
                self._cursor = self.length
                raise StopIteration
            self._cursor = cursor
            try:
                return func(self.data[cursor])
            except DoesNotExist:
                cursor += 1

    def __getitem__(self, arg: Any) -> Any:
        if isinstance(arg, slice):
            return list(self._converted(self.data[arg]))
        if isinstance(arg, int) or hasattr(type(arg), "__index__"):
            entry = self.data[operator.index(arg)]
            return entry if self.func is None else self.func(entry)
        raise TypeError("CollectionResults indices must be integers or slices, not %s" % type(arg).__name__)

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, list):
            return list(self) == other
        if isinstance(other, set):
            return set(self) == other
        if isinstance(other, CollectionResults):
            return self.data == other.data
        return False

    __hash__ = None  # type: ignore[assignment]

    def _repr_items(self) -> List[Any]:
        """Return the entries shown by ``repr()``: at most ``MAX_REPR_ITEMS`` and a truncation note."""
        max_items = self.MAX_REPR_ITEMS
        items = self[: max_items + 1]
        if len(items) > max_items:
            items[-1] = "... (%s remaining elements truncated)..." % (len(self) - max_items)
        return items

    def __repr__(self) -> str:
        return "<CollectionResults %r>" % (self._repr_items(),)


# ------------------------------------------------------------------------------------------------
# the manager


#: the evaluation steps the one-command path (``_direct_key``) skips: a class overriding one of
#: them always takes the general path
_DIRECT_STEPS = (
    "_prepare_sets",
    "_get_final_set",
    "_retrieve",
    "_final_redis_call",
    "_collection_length",
    "_prepare_parsed_filter",
    "_reduce_related_filters",
    "_fetch_collection_now",
    "_count_now",
    "_length_command",
    "_to_instance",
)
_direct_classes: Dict[type, bool] = {}


def _direct_allowed(klass: type) -> bool:
    """Return whether ``klass`` overrides none of the steps the one-command path skips (memoized)."""
    allowed = _direct_classes.get(klass)
    if allowed is None:
        allowed = _direct_classes[klass] = all(
            getattr(klass, name) is getattr(CollectionManager, name) for name in _DIRECT_STEPS
        )
    return allowed


class CollectionManager(object):
    """Lazy collection of a model's primary keys (or instances): filters, sorting, slicing.

    ``Model.collection(**filters)`` builds one; calling it (``coll(**filters)``), ``sort()``,
    ``instances()``, ``primary_keys()`` and ``clone()`` return new collections. Nothing touches
    Redis until the collection is iterated, counted, indexed, sliced, printed or compared.
    """

    #: Redis types of the keys the collection can intersect (passed to the indexes)
    _accepted_key_types: Set[str] = {"set"}
    #: seconds a temporary final key built by ``len()`` is kept for the next retrieval
    FINAL_SET_TTL = 300
    #: keyword arguments ``sort()`` accepts (redis-py's ``sort``); subclasses may extend it
    _sort_arguments = frozenset({"by", "start", "num", "get", "desc", "alpha", "store", "groups"})

    def __init__(self, model: type) -> None:
        self.model = model
        self._lazy_collection: Dict[str, Any] = {"sets": [], "pks": set()}
        self._instances = False
        self._lazy_instances = False
        self._sort: Optional[Dict[str, Any]] = None
        self._sort_limits: Optional[Dict[str, Any]] = None
        #: the window of the current evaluation is read in reverse direction (C1: never persistent)
        self._sort_limits_reverse = False
        self._len: Optional[int] = None
        #: ``len()`` counts the final key (``SCARD``) instead of fetching everything
        self._len_mode = True
        self._collection_cache: Optional[List[Any]] = None
        self._cache_iterator_function: Converter = None
        self._final_set: Optional[str] = None
        self._final_set_deletable = False

    # -------------------------------------------------------------------- basics

    @property
    def connection(self) -> Any:
        """Return the Redis client of the model (re-read at each call)."""
        return self.model.get_connection()

    def _unique_key(self, prefix: Optional[str] = None) -> str:
        """Return a free temporary key ``M:__collection__[:prefix]:<32 hex>`` (1 ``EXISTS``)."""
        parts = [self.model._name, "__collection__"]
        if prefix:
            parts.append(prefix)
        connection = self.connection
        if current_batch(self.model.database) is not None:
            # the EXISTS travels with the commands using the key: a uuid4 is free (checked on reply)
            key = make_key(*parts, uuid.uuid4().hex)
            register_temporary_key(key)
            later(connection, on_reply=_check_free_key(key), is_write=False).exists(key)
            return key
        return unique_key(connection, make_key(*parts))

    def _get_simple_fields(self) -> List[str]:
        """Return the names of the model's ``SingleValueField`` fields (pk included), in model order."""
        return [
            name for name in self.model._fields if isinstance(self.model.get_field(name), SingleValueField)
        ]

    # -------------------------------------------------------------------- building (no Redis)

    def __call__(self, **filters: Any) -> "CollectionManager":
        """Return a new collection with ``filters`` added (the original is untouched)."""
        return self.clone()._add_filters(**filters)

    def clone(self) -> "CollectionManager":
        """Return a copy of this collection: same filters, result type, sort; fresh caches."""
        collection = self.__class__(self.model)
        collection._lazy_collection = {key: copy.copy(value) for key, value in self._lazy_collection.items()}
        collection._instances = self._instances
        collection._lazy_instances = self._lazy_instances
        collection._sort = None if self._sort is None else dict(self._sort)
        collection._sort_limits = None if self._sort_limits is None else dict(self._sort_limits)
        collection._len = self._len
        collection._len_mode = self._len_mode
        return collection

    def _add_filters(self, **filters: Any) -> "CollectionManager":
        """Parse ``filters`` and add them to this collection (mutates it); return it.

        Every key is parsed before anything is added, so a bad filter leaves the collection as
        it was. Adding filters forgets the cached length and results (C3).
        """
        pks = []
        parsed = []
        for key, value in filters.items():
            if self._field_is_pk(key):
                pks.append(self.model.get_field("pk").normalize(value))
            else:
                index, suffix, extra_field_parts = self._parse_filter_key(key)
                self._check_filter_value_type(
                    key, suffix is not None and (suffix == "in" or suffix.endswith("__in")), value
                )
                parsed.append(ParsedFilter(index, suffix, extra_field_parts, value, None))
        if filters:
            self._lazy_collection["pks"].update(pks)
            self._lazy_collection["sets"].extend(parsed)
            self._len = None
            self._collection_cache = None
            self._cache_iterator_function = None
            self._final_set = None
            self._final_set_deletable = False
        return self

    def _check_filter_value_type(self, key: str, is_in: bool, value: Any) -> None:
        """Raise ``TypeError`` for a filter value no stored value can equal (before any command).

        ``None``, ``True``/``False`` and containers would be compared as their ``str()``
        (``'None'``, ``'True'``, ``"['a']"``), which is never what was meant; ``__in`` takes an
        iterable of such values.
        """
        if is_in:
            if value is None or isinstance(value, (bool, int, float)) or not hasattr(value, "__iter__"):
                raise TypeError(
                    "Invalid value %r for the filter %s on %s: __in takes an iterable of values, e.g. "
                    "%s=[%r]" % (value, key, _model_path(self.model), key, value)
                )
            for item in value if not isinstance(value, (str, bytes)) else ():
                self._check_filter_value_type(
                    key[: -len("__in")] if key.endswith("__in") else key, False, item
                )
            return
        if value is None or isinstance(value, (bool, list, tuple, set, frozenset, dict)):
            fix = (
                "to match several values use %s__in=[...]" % key
                if isinstance(value, (list, tuple, set, frozenset))
                else "stored values are str, so filter with the text stored (e.g. %s=%r)" % (key, str(value))
                if isinstance(value, bool)
                else "an absent value is not indexed: filter on a value, or use a collection without this filter"
            )
            raise TypeError(
                "Invalid value %r (of type %s) for the filter %s on %s: %s."
                % (value, type(value).__name__, key, _model_path(self.model), fix)
            )

    def _field_is_pk(self, name: str) -> bool:
        """Return whether the filter ``name`` is on the pk: ``pk`` or its real name, maybe ``__eq``."""
        if name.endswith("__eq"):
            name = name[: -len("__eq")]
        return self.model._field_is_pk(name)

    def _parse_filter_key(self, key: str) -> Tuple[Any, Optional[str], List[str]]:
        """Return ``(index, suffix, extra_field_parts)`` serving the filter ``key`` (docs/collections.rst, Filters)."""
        model = self.model
        parts = key.split("__")
        try:
            field = model.get_field(parts[0])
        except AttributeError as exc:
            raise AttributeError(
                "%s (filter %r on %s): filter on one of the fields %s, as <field>[__<suffix>]=<value>"
                % (exc, key, _model_path(model), ", ".join(map(repr, getattr(model, "_fields", []))))
            ) from exc

        if not field.indexable:
            if model._field_is_pk(parts[0]):
                fix = (
                    "filter on one pk with %s=<pk> (or %s__eq=<pk>); to filter by a list of pks use "
                    "intersect() of limpyd.contrib.collection.ExtendedCollectionManager"
                    % (parts[0], parts[0])
                )
            else:
                fix = "declare the field with indexable=True (or unique=True) to filter on it"
            raise ImplementationError(
                "Field %s.%s is not indexable (filter %r on %s): %s"
                % (model.__name__, field.name, key, _model_path(model), fix)
            )

        extra_count = field._field_parts - 1
        if len(parts) - 1 < extra_count:
            raise ImplementationError(
                "Unexpected number of parts in filter %s for field %s.%s: a %s filter names %d sub-part(s) "
                "after the field name, e.g. %s__<hash key>=<value>"
                % (key, model.__name__, field.name, type(field).__name__, extra_count, parts[0])
            )
        extra_field_parts = parts[1 : 1 + extra_count]
        suffix = "__".join(parts[1 + extra_count :]) or None

        indexes = field._indexes
        candidates = [index for index in indexes if index.can_handle_suffix(suffix)]
        for index in candidates:
            if index.filter_single_field:
                return index, suffix, extra_field_parts
        if candidates:
            return candidates[0], suffix, extra_field_parts
        served = "; ".join(
            "%s%s: %s"
            % (
                type(index).__name__,
                " (prefix %r)" % index.prefix if index.prefix else "",
                _describe_suffixes(index.handled_suffixes),
            )
            for index in indexes
        )
        raise ImplementationError(
            'No index found to manage filter "%s" for field %s.%s: its indexes handle these suffixes: %s; '
            "use one of them, or add an index class serving %r to the field's indexes=[...]"
            % (key, model.__name__, field.name, served or "(no index)", suffix)
        )

    def sort(self, **parameters: Any) -> "CollectionManager":
        """Return a clone sorted with the redis-py ``SORT`` keywords ``parameters`` (docs/collections.rst, Sorting).

        ``by`` may name the pk or a field (a leading ``-`` sorts descending), or be a raw Redis
        pattern (``'nosort'``: keep the set order). Unknown keywords raise ``TypeError`` now.
        """
        unknown = sorted(set(parameters) - set(self._sort_arguments))
        if unknown:
            raise TypeError(
                "Unexpected argument(s) %s to sort() on a collection of %s: use only %s"
                % (", ".join(unknown), _model_path(self.model), ", ".join(sorted(self._sort_arguments)))
            )
        by = parameters.get("by")
        if by is not None and not isinstance(by, str):
            raise TypeError(
                "The `by` argument of sort() on a collection of %s must be a field name, 'pk' or a Redis "
                "pattern (str), got %r" % (_model_path(self.model), by)
            )
        if by is not None:
            name = by[1:] if by.startswith("-") else by
            if not (
                self.model._field_is_pk(name) or self.model.has_field(name) or "*" in name or name == "nosort"
            ):
                raise ValueError(
                    "sort(by=%r) on a collection of %s: %r is neither a field nor a Redis pattern (with *). "
                    "Use one of %s (prefix with - for descending), a pattern such as %r, or 'nosort'."
                    % (
                        by,
                        _model_path(self.model),
                        name,
                        ", ".join(map(repr, self.model._fields)),
                        make_key(self.model._name, "*", "<field>"),
                    )
                )
        collection = self.clone()
        collection._apply_sort(**parameters)
        return collection

    def _apply_sort(self, **parameters: Any) -> None:
        """Set the sort of this collection to ``parameters`` after coercion (replacing any previous)."""
        self._sort = self._coerce_by_parameter(parameters)

    def _coerce_by_parameter(self, parameters: Dict[str, Any]) -> Dict[str, Any]:
        """Return ``parameters`` with ``by`` turned into what Redis expects (C6)."""
        parameters = dict(parameters)
        by = parameters.get("by")
        if not isinstance(by, str):
            return parameters
        if by.startswith("-"):
            parameters["desc"] = True
            by = by[1:]
        if self.model._field_is_pk(by):
            del parameters["by"]
        elif self.model.has_field(by):
            parameters["by"] = self.model.get_field(by).sort_wildcard
        else:
            parameters["by"] = by
        return parameters

    def _reset_result_type(self) -> None:
        """Make this collection return primary keys."""
        self._instances = False

    def instances(self, lazy: bool = False) -> "CollectionManager":
        """Return a clone returning instances (``lazy``: not existence-checked) instead of pks."""
        collection = self.clone()
        collection._reset_result_type()
        collection._instances = True
        collection._lazy_instances = lazy
        return collection

    def primary_keys(self) -> "CollectionManager":
        """Return a clone returning primary keys (cancels ``instances()``)."""
        collection = self.clone()
        collection._reset_result_type()
        return collection

    # -------------------------------------------------------------------- evaluation helpers

    def _get_pk(self) -> Optional[Any]:
        """Return the pk of the pk filters, ``None`` without any; ``ValueError`` if several."""
        pks = self._lazy_collection["pks"]
        if not pks:
            return None
        if len(pks) > 1:
            raise ValueError(
                "Too many pks (%d distinct) in the filters of a collection of %s"
                % (len(pks), self.model.__name__)
            )
        return next(iter(pks))

    def _pk_exists(self, pk: Any) -> bool:
        """Return whether ``pk`` is in the model's collection (https://redis.io/commands/sismember)."""
        return bool(self.connection.sismember(make_key(self.model._name, "collection"), pk))

    def _is_pk_only(self, sort_options: Optional[Dict[str, Any]]) -> bool:
        """Return whether the pk filter is the only thing to evaluate (the result is ``[pk]``)."""
        return not self._lazy_collection["sets"] and not (sort_options and sort_options.get("get"))

    def _in_set_order(self) -> bool:
        """Return whether nothing orders this collection (its full fetch is an ``SMEMBERS``)."""
        return self._sort is None

    def _can_reverse(self) -> bool:
        """Return whether ``SORT ... DESC`` reverses this collection (Redis does not sort a ``by`` without ``*``)."""
        by = (self._sort or {}).get("by")
        return not (isinstance(by, str) and "*" not in by)

    def _prepare_sort_options(self, has_pk: bool) -> Optional[Dict[str, Any]]:
        """Return the keywords of redis-py ``sort`` for this evaluation, or ``None`` for ``SMEMBERS``.

        ``None`` when ``sort()`` was never called and no window is needed, and always with a pk
        filter (C8: at most one result, retrieved with ``SMEMBERS``, windows applied in Python).
        A window (``_sort_limits``) adds ``start``/``num`` (``0``/``-1`` when missing) and, when
        read in reverse, inverts ``desc`` in the returned dict only (C1).
        """
        if has_pk or (self._sort is None and self._sort_limits is None):
            return None
        options = dict(self._sort or {})
        if self._sort_limits is not None:
            start = self._sort_limits.get("start")
            num = self._sort_limits.get("num")
            options["start"] = 0 if start is None else start
            options["num"] = -1 if num is None else num
            if self._sort_limits_reverse:
                options["desc"] = not options.get("desc", False)
        return options

    def _reduce_related_filters(self, sets: List[Any]) -> List[Any]:
        """Return ``sets`` with the filters served together by a multi-field index combined (30 §4.4).

        Raise ``ImplementationError`` for a remaining filter whose index cannot filter alone.
        """
        multi_indexes = getattr(self.model, "_multi_fields_index_for_filtering", None) or []
        parsed = [item for item in sets if isinstance(item, ParsedFilter)]
        result = list(sets)
        if multi_indexes and parsed:
            pairs = list(dict.fromkeys((item.index.field.name, item.suffix) for item in parsed))
            proposed: Dict[Tuple[Any, ...], Any] = {}
            for index in multi_indexes:
                for combination in index.can_filter_fields(pairs):
                    if all(pair in pairs for pair in combination):
                        proposed.setdefault(tuple(combination), index)
            kept = [
                combination
                for combination in proposed
                if not any(set(combination) < set(other) for other in proposed)
            ]
            combined: List[Any] = []
            covered: Set[Tuple[str, Optional[str]]] = set()
            for combination in kept:
                groups = [
                    [item for item in parsed if (item.index.field.name, item.suffix) == pair]
                    for pair in combination
                ]
                for product in itertools.product(*groups):
                    main, others = product[0], product[1:]
                    related = {
                        other.index.field.name: (list(other.extra_field_parts) + [other.value], other.suffix)
                        for other in others
                    }
                    combined.append(
                        ParsedFilter(
                            proposed[combination], main.suffix, main.extra_field_parts, main.value, related
                        )
                    )
                covered.update(combination)
            result = [
                item
                for item in sets
                if not (isinstance(item, ParsedFilter) and (item.index.field.name, item.suffix) in covered)
            ]
            result.extend(combined)
        for item in result:
            if (
                isinstance(item, ParsedFilter)
                and item.related_filters is None
                and not item.index.filter_single_field
            ):
                field = item.index.field
                key = "__".join(
                    [field.name] + list(item.extra_field_parts) + ([item.suffix] if item.suffix else [])
                )
                raise ImplementationError(
                    'No index found to manage filter "%s" for field %s.%s: %s filters only together with '
                    "other fields; filter those too, or give the field an index of its own"
                    % (key, self.model.__name__, field.name, type(item.index).__name__)
                )
        return result

    def _prepare_parsed_filter(self, parsed_filter: ParsedFilter) -> List[Tuple[str, str, bool]]:
        """Return the ``(key, redis type, is temporary)`` list of the index serving ``parsed_filter``."""
        args = list(parsed_filter.extra_field_parts) + [parsed_filter.value]
        return parsed_filter.index.get_filtered_keys(
            parsed_filter.suffix,
            *args,
            accepted_key_types=self._accepted_key_types,
            related_filters=parsed_filter.related_filters,
        )

    def _prepare_sets(self, sets: List[Any]) -> Tuple[Set[str], Set[str]]:
        """Return ``(keys to intersect, temporary keys among them)`` for the filters ``sets``.

        A filter giving no key (an empty ``__in``) makes the result empty (C5): the temporary
        keys made so far are deleted and ``(set(), set())`` is returned. On any error the
        temporary keys made so far are deleted before the error propagates.
        """
        keys: Set[str] = set()
        tmp_keys: Set[str] = set()
        try:
            for item in self._reduce_related_filters(sets):
                if not isinstance(item, ParsedFilter):
                    keys.add(item)
                    continue
                index_keys = self._prepare_parsed_filter(item)
                tmp_keys.update(key for key, _, is_tmp in index_keys if is_tmp)
                if not index_keys:
                    self._delete_keys(tmp_keys)
                    return set(), set()
                for key, key_type, _ in index_keys:
                    if key_type not in self._accepted_key_types:
                        raise ValueError(
                            "The index key returned by the index %s is not valid: %r is a %r, %s accepts only "
                            "%s (use limpyd.contrib.collection.ExtendedCollectionManager for other types)"
                            % (
                                item.index.__class__,
                                key,
                                key_type,
                                type(self).__name__,
                                ", ".join(sorted(self._accepted_key_types)),
                            )
                        )
                    keys.add(key)
        except BaseException:
            self._delete_keys(tmp_keys)
            raise
        return keys, tmp_keys

    def _delete_keys(self, keys: Any) -> None:
        """Delete the temporary ``keys`` with one command, none without keys (https://redis.io/commands/del)."""
        if keys:
            self.connection.delete(*keys)

    def _combine_sets(self, sets: Set[str], final_key: str) -> str:
        """Store the intersection of ``sets`` into ``final_key`` and return it (https://redis.io/commands/sinterstore)."""
        self.connection.sinterstore(final_key, list(sets))
        return final_key

    def _get_final_set(
        self, sets: List[Any], pk: Any, sort_options: Optional[Dict[str, Any]]
    ) -> Tuple[Optional[str], bool]:
        """Return ``(final key or None, whether to delete it after use)``.

        ``None`` means "no key": the result is ``[pk]`` for a pk filter alone, else empty (an
        empty ``__in``). With several keys their intersection is stored in a temporary key
        ``M:__collection__:final:<hex>`` and the temporary input keys are deleted (one ``DEL``).
        """
        keys: Set[str] = set()
        tmp_keys: Set[str] = set()
        if sets:
            keys, tmp_keys = self._prepare_sets(sets)
            if not keys:
                return None, False
        try:
            if pk is not None:
                if not keys and self._is_pk_only(sort_options):
                    return None, False
                pk_key = self._unique_key("tmp")
                tmp_keys.add(pk_key)
                connection = self.connection
                # nobody reads the reply: sent with the next command
                later(connection).sadd(pk_key, pk)
                keys.add(pk_key)
            elif not keys:
                return make_key(self.model._name, "collection"), False
            if len(keys) == 1:
                key = next(iter(keys))
                return key, key in tmp_keys
            final_key = self._unique_key("final")
        except BaseException:
            self._delete_keys(tmp_keys)
            raise
        connection = self.connection
        if type(self)._combine_sets is CollectionManager._combine_sets and queue_command(
            connection, "sinterstore", final_key, list(keys)
        ):
            # queued: sent with the retrieval (the DEL runs even if SINTERSTORE fails, as sequentially)
            if tmp_keys:
                queue_command(connection, "delete", *tmp_keys)
            return final_key, True
        try:
            final_key = self._combine_sets(keys, final_key)
        finally:
            self._delete_keys(tmp_keys)
        return final_key, True

    def _final_redis_call(self, final_set: str, sort_options: Optional[Dict[str, Any]]) -> List[Any]:
        """Return the raw results of ``final_set``: ``SORT`` with ``sort_options``, else ``SMEMBERS``.

        https://redis.io/commands/sort - https://redis.io/commands/smembers
        """
        if sort_options is None:
            return list(self.connection.smembers(final_set))
        return self.connection.sort(final_set, **sort_options)

    def _length_command(self) -> str:
        """Return the redis-py method counting the final key (``scard``; other key types in contrib)."""
        return "scard"

    def _collection_length(self, final_set: str) -> int:
        """Return the number of members of ``final_set`` (https://redis.io/commands/scard)."""
        return self._send_length(self.connection, final_set)

    def _send_length(self, connection: Any, key: str) -> int:
        """Return the length of ``key`` (``_length_command``), read directly when nothing observes
        the redis-py method (``limpyd._pool.direct``)."""
        method = self._length_command()
        if method == "scard" and direct(connection, method):
            return read_direct(connection, "SCARD", key)
        return getattr(connection, method)(key)

    @staticmethod
    def _members(connection: Any, key: str) -> List[Any]:
        """Return the members of the set ``key`` (``SMEMBERS``), read directly when nothing
        observes the redis-py method (``limpyd._pool.direct``)."""
        if direct(connection, "smembers"):
            return list(read_direct(connection, "SMEMBERS", key))
        return list(connection.smembers(key))

    def _take_final_set(self) -> Tuple[Optional[str], bool]:
        """Return the final key kept by ``len()`` if it still exists (``EXPIRE`` renews it), else ``(None, False)``."""
        final_set, deletable = self._final_set, self._final_set_deletable
        if final_set is None:
            return None, False
        self._final_set, self._final_set_deletable = None, False
        if self.connection.expire(final_set, self.FINAL_SET_TTL):
            return final_set, deletable
        return None, False

    def _retrieve(self, final_set: str, deletable: bool, sort_options: Optional[Dict[str, Any]]) -> List[Any]:
        """Return the raw results of ``final_set``, deleting it afterwards (even on error) if ``deletable``."""
        default_call = type(self)._final_redis_call is CollectionManager._final_redis_call
        connection = self.connection
        batch = current_batch(self.model.database)
        if default_call and batch is not None and not batch.queue and not deletable:
            # nothing to send with it: one command, sent at once
            if sort_options is None:
                return list(connection.smembers(final_set))
            return connection.sort(final_set, **sort_options)
        if default_call and batch is not None:
            if sort_options is None:
                pending = queue_command(connection, "smembers", final_set)
            else:
                pending = queue_command(connection, "sort", final_set, **sort_options)
            if deletable:
                queue_command(connection, "delete", final_set)
            results = pending.get()  # sends the batch: queued commands, retrieval, DEL
            return list(results) if sort_options is None else results
        try:
            return self._final_redis_call(final_set, sort_options)
        finally:
            if deletable:
                self.connection.delete(final_set)

    def _direct_key(self) -> Optional[str]:
        """Return the key holding the result when it is read with one command and no temporary key.

        That is a collection with no filter (the collection key) or one equality filter on an
        ``EqualIndex`` (its set), no pk filter, no window, no kept final key, and none of the
        evaluation steps overridden; ``None`` otherwise (the general evaluation then runs).
        """
        if (
            self._lazy_collection["pks"]
            or self._final_set is not None
            or self._sort_limits is not None
            or not _direct_allowed(type(self))
        ):
            return None
        sets = self._lazy_collection["sets"]
        if not sets:
            return make_key(self.model._name, "collection")
        if len(sets) > 1 or getattr(self.model, "_multi_fields_index_for_filtering", None):
            return None
        item = sets[0]
        if not isinstance(item, ParsedFilter) or item.related_filters is not None:
            return None
        index = item.index
        if (
            type(index).get_filtered_keys is not EqualIndex.get_filtered_keys
            or index.remove_prefix(item.suffix) == "in"
        ):
            return None
        return index.get_storage_key(*item.extra_field_parts, item.value, transform_value=False)

    def _fetch_collection(self, apply_slice: Optional[slice] = None) -> Tuple[List[Any], Converter]:
        """Evaluate the collection and return ``(results, converter)``.

        Runs in a write-behind batch: the commands whose replies are not needed before the
        retrieval (temporary keys, intersections) travel with it.
        """
        self.model._purge_due()
        key = self._direct_key()
        if key is not None and current_batch(self.model.database) is None:  # one command: sent at once
            sort_options = self._prepare_sort_options(False)
            connection = self.connection
            results = (
                self._members(connection, key)
                if sort_options is None
                else connection.sort(key, **sort_options)
            )
            full = apply_slice is None
            return self._prepare_results(
                results, _len_hint=len(results) if full else None, apply_slice=apply_slice
            )
        with temporary_keys(self.model.database), batch_scope(self.model.database):
            return self._fetch_collection_now(apply_slice)

    def _fetch_collection_now(self, apply_slice: Optional[slice] = None) -> Tuple[List[Any], Converter]:
        """Evaluate the collection and return ``(results, converter)``.

        The window in ``_sort_limits`` (if any) limits the retrieval; ``apply_slice`` is then
        applied in Python. Neither is stored anywhere: the caller decides what to cache.
        """
        full = self._sort_limits is None and apply_slice is None
        try:
            pk = self._get_pk()
        except ValueError:  # two different pks: nothing can match
            return self._cache_empty_collection(full, apply_slice)
        sort_options = self._prepare_sort_options(pk is not None)
        final_set, deletable = self._take_final_set()
        if final_set is None:
            if pk is not None and not self._pk_exists(pk):
                return self._cache_empty_collection(full, apply_slice)
            if pk is not None and self._is_pk_only(sort_options):
                return self._prepare_results([pk], _len_hint=1 if full else None, apply_slice=apply_slice)
            final_set, deletable = self._get_final_set(self._lazy_collection["sets"], pk, sort_options)
            if final_set is None:
                return self._cache_empty_collection(full, apply_slice)
        results = self._retrieve(final_set, deletable, sort_options)
        return self._prepare_results(
            results, _len_hint=len(results) if full else None, apply_slice=apply_slice
        )

    def _count(self) -> int:
        """Return the number of results without retrieving them (count mode)."""
        self.model._purge_due()
        key = self._direct_key()
        if key is not None and current_batch(self.model.database) is None:  # one command: sent at once
            return self._send_length(self.connection, key)
        with temporary_keys(self.model.database), batch_scope(self.model.database):
            return self._count_now()

    def _count_now(self) -> int:
        """Return the number of results without retrieving them (count mode).

        A temporary final key is kept ``FINAL_SET_TTL`` seconds and remembered, for the
        retrieval that usually follows.
        """
        try:
            pk = self._get_pk()
        except ValueError:
            return 0
        if pk is not None:
            if not self._pk_exists(pk):
                return 0
            if self._is_pk_only(None):
                return 1
        final_set, deletable = self._get_final_set(self._lazy_collection["sets"], pk, None)
        if final_set is None:
            return 0
        default_length = type(self)._collection_length is CollectionManager._collection_length
        connection = self.connection
        batch = current_batch(self.model.database)
        if default_length and batch is not None and not batch.queue and not deletable:
            return getattr(connection, self._length_command())(final_set)  # alone: sent at once
        if default_length and batch is not None:
            pending = queue_command(connection, self._length_command(), final_set)
            if deletable:
                queue_command(connection, "expire", final_set, self.FINAL_SET_TTL)
            try:
                length = pending.get()
            except BaseException:
                if deletable:
                    self._delete_keys([final_set])
                raise
            if deletable:
                self._final_set, self._final_set_deletable = final_set, True
            return length
        try:
            length = self._collection_length(final_set)
        except BaseException:
            if deletable:
                self.connection.delete(final_set)
            raise
        if deletable:
            self.connection.expire(final_set, self.FINAL_SET_TTL)
            self._final_set, self._final_set_deletable = final_set, True
        return length

    def _prepare_results(
        self, results: List[Any], _len_hint: Optional[int] = None, apply_slice: Optional[slice] = None
    ) -> Tuple[List[Any], Converter]:
        """Return ``(results[apply_slice], converter)``; record ``_len_hint`` as the length if given."""
        if _len_hint is not None:
            self._len = _len_hint
        if apply_slice is not None:
            results = results[apply_slice]
        if not self._instances:
            return results, None
        if self._lazy_instances or type(self)._to_instance is not CollectionManager._to_instance:
            return results, self._to_instance
        return results, _CheckedInstances(self.model)

    def _to_instance(self, pk: Any) -> Any:
        """Return the instance of ``pk``: checked (``Model(pk)``) or lazy (``Model.lazy_connect(pk)``)."""
        if self._lazy_instances:
            return self.model.lazy_connect(pk)
        return self.model(pk)

    def _cache_empty_collection(
        self, full: bool = True, apply_slice: Optional[slice] = None
    ) -> Tuple[List[Any], Converter]:
        """Return an empty result, cached as the whole collection when ``full`` (a full evaluation)."""
        results, converter = self._prepare_results([], _len_hint=0 if full else None, apply_slice=apply_slice)
        if full:
            self._collection_cache, self._cache_iterator_function = results, converter
        return results, converter

    def _get_from_results_cache(self, apply_slice: Any = None) -> Any:
        """Serve from the cached full result: everything, a slice (``CollectionResults``) or an entry."""
        data, func = self._collection_cache, self._cache_iterator_function
        if apply_slice is None:
            return CollectionResults(data, func)
        if isinstance(apply_slice, slice):
            return CollectionResults(data[apply_slice], func)
        entry = data[apply_slice]
        return entry if func is None else func(entry)

    def _reset_if_sort_limits(self, clear_sort_limits: bool = True) -> None:
        """Forget the window of an indexed/sliced evaluation, so that it never outlives it (C1, C2)."""
        if clear_sort_limits:
            self._sort_limits = None
            self._sort_limits_reverse = False

    # -------------------------------------------------------------------- indexing and slicing

    @staticmethod
    def _optimize_slice(
        the_slice: slice, can_reverse: bool
    ) -> Tuple[bool, Optional[int], Optional[int], bool, Optional[slice]]:
        """Return ``(optimized, start, count, rev, python_slice)`` for ``the_slice`` (Python's slicing, sent as ``SORT ... LIMIT`` windows where possible).

        ``optimized`` with ``count == 0``: known empty, nothing to fetch (rule 1). ``optimized``:
        fetch the window ``LIMIT start count`` (``count == -1``: up to the end), read in reverse
        when ``rev``, then apply ``python_slice``. Not ``optimized``: fetch everything and apply
        ``python_slice``. Slice parts must be ``int`` or ``None``; a zero step raises ``ValueError``.
        """
        k = 1 if the_slice.step is None else the_slice.step
        if k == 0:
            raise ValueError("slice step cannot be zero")
        a, b = the_slice.start, the_slice.stop
        if a is None and k > 0:
            a = 0
        if a is not None and b is not None:
            if (k > 0 and (0 <= b <= a or b <= a < 0)) or (k < 0 and (0 <= a <= b or a <= b < 0)):
                return True, 0, 0, False, None
            if a >= 0 and b > 0:
                if k < 0:
                    a, b = b + 1, a + 1
                return True, a, b - a, False, slice(None, None, k)
            if a < 0 and b < 0 and can_reverse:
                if k < 0:
                    a, b = b + 1, a + 1
                return True, -b, b - a, True, slice(None, None, -k)
        if k > 0 and a is not None and a >= 0 and (b is None or b < 0):
            return True, a, -1, False, slice(None, b, k)
        if k > 0 and a is not None and a < 0 and b is None and can_reverse:
            # the last -a entries: read backwards from the end, then turned around
            return True, 0, -a, True, slice(None, None, -k)
        if k < 0 and (a is None or a < 0) and b is not None and b >= 0:
            return True, b + 1, -1, False, slice(a, None, k)
        return False, None, None, False, slice(a, b, k)

    def _fetch_window(
        self, start: int, count: int, rev: bool, python_slice: Optional[slice] = None
    ) -> Tuple[List[Any], Converter]:
        """Evaluate with the window ``LIMIT start count`` (reversed if ``rev``), for this call only."""
        self._sort_limits = {"start": start, "num": count}
        self._sort_limits_reverse = rev
        try:
            return self._fetch_collection(apply_slice=python_slice)
        finally:
            self._reset_if_sort_limits(True)

    def _getitem(self, arg: Any) -> Any:
        """Answer ``self[arg]`` (``int`` or ``slice`` of ints) from Redis, as Python would slice the full result."""
        if isinstance(arg, slice):
            optimized, start, count, rev, python_slice = self._optimize_slice(arg, self._can_reverse())
            if optimized and count == 0:
                return []
            if self._lazy_collection["pks"]:  # at most one result: slice it in Python (C4, C8)
                results, func = self._fetch_collection(apply_slice=arg)
            elif optimized:
                results, func = self._fetch_window(start, count, rev, python_slice)
            elif self._in_set_order():
                # the whole result in the order the windows of an unsorted collection use (a
                # numeric SORT), so that its slices and indexes agree with each other
                results, func = self._fetch_window(0, -1, False, python_slice)
            else:
                results, func = self._fetch_collection(apply_slice=python_slice)
            return CollectionResults(results, func)

        # full fetches below pass NONE_SLICE: their result is not cached as the collection's (C2)
        window = None if self._lazy_collection["pks"] else _index_window(arg, self._can_reverse())
        if window is None:
            results, func = self._fetch_collection(apply_slice=NONE_SLICE)
            position = arg
        else:
            results, func = self._fetch_window(*window)
            position = 0
        return _entry_at(results, position, arg, self.model, func)

    def __getitem__(self, arg: Any) -> Any:
        arg = checked_index(self, arg)
        if self._collection_cache is not None:
            return self._get_from_results_cache(arg)
        return self._getitem(arg)

    # -------------------------------------------------------------------- collection protocol

    def __iter__(self) -> CollectionResults:
        if self._collection_cache is None:
            results, func = self._fetch_collection()
            self._collection_cache, self._cache_iterator_function = results, func
            self._len = len(results)
        return self._get_from_results_cache()

    def __len__(self) -> int:
        if self._len is None:
            if self._collection_cache is not None:
                self._len = len(self._collection_cache)
            elif self._len_mode:
                self._len = self._count()
            else:
                self.__iter__()
        return self._len  # type: ignore[return-value]

    def __bool__(self) -> bool:
        return bool(len(self))

    def delete(self, batch_size: int = 1000) -> int:
        """Delete every instance of this collection, ``batch_size`` per round trip; return how many.

        The pks are read first (one evaluation), then deleted as ``Model.delete_many`` does.
        """
        pks = list(self.primary_keys()._fetch_collection()[0])
        return self.model.delete_many(pks, batch_size=batch_size)

    def __eq__(self, other: Any) -> bool:
        return results_equal(self.__iter__(), other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        """Show at most ``CollectionResults.MAX_REPR_ITEMS`` entries, fetching only those (and the length).

        A collection that Redis can only sort numerically by pk (no ``sort()``, pks not auto) is
        fetched whole, as before: its window would need a numeric ``SORT`` of its pks.
        """
        if self._collection_cache is not None or (
            self._sort is None and not getattr(self.model.get_field("pk"), "_auto_increment", False)
        ):
            return "<%s %r>" % (type(self).__name__, self.__iter__()._repr_items())
        max_items = CollectionResults.MAX_REPR_ITEMS
        items = list(self[: max_items + 1])
        if len(items) > max_items:
            items[-1] = "... (%s remaining elements truncated)..." % (len(self) - max_items)
        return "<%s %r>" % (type(self).__name__, items)
