"""Extended collections of sharded models (docs/sharding.rst, "Extended collections").

A sharded model whose ``collection_manager`` is ``ExtendedCollectionManager`` (or a subclass)
gets a :class:`ShardedExtendedCollection` from ``Model.collection()``: a
:class:`~limpyd.sharding.ShardedCollection` (filters, sorts, slices, ``instances()``,
``values()``/``values_list()``, merged from the shards) with, planned over the shards so that the
results are those of a 1-shard model holding the same data:

- ``intersect(*sets)``: lists/sets/tuples of pks, other collections of the same model, the Redis
  key of a set, a sorted set or a list, a bound ``SetField``/``SortedSetField``/``ListField``. Everything is read on the client
  when the collection is evaluated (a key: ``TYPE`` then ``SMEMBERS``/``LRANGE``; a collection:
  its pks) and intersected there; each shard then intersects its own pks (a tuple, as the
  extended manager of the shard intersects a list of pks: in the shard's slot) with its filters.
  Shards with no pk left are not asked. A sorted set is read with its scores (``ZRANGE key 0 -1
  WITHSCORES``): as the unsharded ``ZINTERSTORE`` makes the collection iterate by score, a
  collection without ``sort()`` (or with ``sort(by="nosort")``) then comes in the order of the
  sum of the pks' scores in the sorted sets (ties: by the pks' bytes; ``inf - inf`` counts 0, as
  Redis counts it), its windows and ``[-k:]`` cut from that order;
- a filter of a ``ScoredEqualIndex``: every shard's sorted set of the value read with its scores
  (one round trip per node), the collection then ordered as for an intersected sorted set;
- ``sort(by_score=<key or bound SortedSetField>, desc=, alpha=)``: the pks of the collection
  (without the score sort) are read from the shards, the sorted set once (``ZRANGE key 0 -1
  WITHSCORES``, on its node), and the order is made on the client as ``SORT ... BY <score keys>``
  makes it on a 1-shard model: a full evaluation gives an absent pk the score ``-inf``, a window
  (index, optimised slice) none (numeric: 0, ``alpha``: first), as the extended manager does;
  ``values()`` read the values of the returned pks only (one ``SORT ... GET`` per shard concerned),
  ``SORTED_SCORE`` being the score as that manager writes it;
- ``store(key=None, ttl=60)``: the pks, in the order of iteration, are written to the Redis list
  ``key`` (``DEL``, ``RPUSH`` by chunks, ``EXPIRE``; default key
  ``<model>:__collection__:store:<hex>``, in the model's slot; any key on a cluster: written by
  the client), and the returned collection is based on it: its pks are those of the list (read
  again, ``LRANGE``, at its evaluation; ``DoesNotExist`` once the list is gone), in the list's
  order until it is sorted; ``from_stored(key)``, ``stored_key`` and ``stored_key_exists()`` as
  the extended manager has them.
"""

from __future__ import annotations

import operator
import uuid
from typing import Any, Dict, List, Optional, Set, Tuple

from limpyd.collection import CollectionManager, _model_path, checked_index
from limpyd.contrib.collection import (
    DEFAULT_STORE_TTL,
    SORTED_SCORE,
    ExtendedCollectionManager,
)
from limpyd.exceptions import DoesNotExist
from limpyd.fields import ListField, RedisField, SetField, SortedSetField
from limpyd.model import RedisModel
from limpyd.sharding import (
    ShardedCollection,
    ShardPks,
    _arrange,
    _shard_entry,
    _tie_key,
    filter_entries,
    shard_index,
    shard_model,
    shard_of,
    sharded_model,
    unsupported,
)
from limpyd.utils import make_key

__all__ = ["ShardedExtendedCollection", "is_extended"]

#: pks written per ``RPUSH`` by ``store()``
_PUSH_CHUNK = 1000


def is_extended(model: Any) -> bool:
    """Return whether the collections of ``model`` are extended ones (``ExtendedCollectionManager``)."""
    manager = model.collection_manager
    return isinstance(manager, type) and issubclass(manager, ExtendedCollectionManager)


def _is_scored(index: Any) -> bool:
    """Return whether ``index`` is a ``ScoredEqualIndex`` (or a configured subclass) filtering as it
    does: its filter reads the sorted sets of every shard (:meth:`ShardedExtendedCollection._resolve`)."""
    from limpyd.contrib.indexes import ScoredEqualIndex

    klass = type(index)
    return isinstance(index, ScoredEqualIndex) and all(
        getattr(klass, name) is getattr(ScoredEqualIndex, name)
        for name in ("get_filtered_keys", "union_filtered_in_keys", "get_storage_key")
    )


def _member(value: Any) -> str:
    """Return ``value`` (a pk given to ``intersect``) as Redis stores it (redis-py's encoding)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _foreign_pk(number: int, shards: int) -> str:
    """Return a pk that cannot be in the shard ``number`` (its shard is another one)."""
    position = 0
    while True:
        pk = "\x00none:%d" % position
        if shard_index(pk, shards) != number:
            return pk
        position += 1


class _Collection:
    """A collection of the same sharded model given to ``intersect``: its pks, read at evaluation."""

    def __init__(self, collection: ShardedCollection) -> None:
        self.collection = collection.clone()
        self.collection._order = self.collection._by = None
        self.collection._values = None
        self.collection._instances = self.collection._lazy_instances = False
        if isinstance(self.collection, ShardedExtendedCollection):
            self.collection._score = None

    def __repr__(self) -> str:
        return "<the pks of %r>" % (self.collection,)


class ShardedExtendedCollection(ShardedCollection):
    """The collection of a sharded model with ``ExtendedCollectionManager``: see the module's docstring."""

    def __init__(self, model: type) -> None:
        super().__init__(model)
        #: the arguments of ``intersect``: tuples of pks, ``_Collection``, keys (str), bound fields
        self._intersects: List[Any] = []
        #: ``{'by': zset key, 'desc': bool, 'alpha': bool}`` when sorted by score
        self._score: Optional[Dict[str, Any]] = None
        #: the key of the stored list this collection is based on (``False``: none), its length
        self.stored_key: Any = False
        self._stored_len: Optional[int] = None
        #: resolved at evaluation: the pks every intersection allows (``None``: no intersection),
        #: and the position of each pk in the stored list
        self._allowed: Optional[Set[str]] = None
        self._resolved = False
        self._stored_order: Optional[Dict[str, int]] = None
        #: the summed scores of the allowed pks when sorted sets were intersected (else None)
        self._zset_scores: Optional[Dict[str, float]] = None
        self._per_shard: Optional[Dict[int, List[str]]] = None
        #: set by ``__getitem__`` for a slice that is not a window (a full evaluation)
        self._full_evaluation = False
        #: set by ``store()`` on the collection it reads: the unsharded ``SORT ... STORE`` keeps
        #: the pks' order, not the sorted sets' one, unless ``nosort``
        self._storing = False

    # -------------------------------------------------------------------- building (no Redis)

    def _forget(self) -> None:
        self._cache = self._len = None
        self._unresolve()

    def _unresolve(self) -> None:
        """Forget the pks read for the intersections: the next evaluation reads them again, as the
        unsharded manager reads its keys at each evaluation (the cached results stay)."""
        if not self._extras():
            return
        self._shard_collections = self._one = self._sample = None
        self._allowed, self._resolved, self._stored_order = None, False, None
        self._zset_scores = None

    def _add_filters(self, **filters: Any) -> "ShardedExtendedCollection":
        super()._add_filters(**filters)
        for parsed in self._template._lazy_collection["sets"]:
            index = getattr(parsed, "index", None)
            if index is None or "set" in getattr(index, "supported_key_types", {"set"}) or _is_scored(index):
                continue
            raise unsupported(
                self.model,
                "filtering by the index %s of %s (sorted sets: their score order); filter by an "
                "EqualIndex and sort(by=...)" % (type(index).__name__, index.field.name),
            )
        if filters:
            self._forget()
        return self

    def filter(self, **filters: Any) -> "ShardedExtendedCollection":
        """Return a new collection with ``filters`` added (the same as calling the collection)."""
        return self(**filters)  # type: ignore[return-value]

    def clone(self) -> "ShardedExtendedCollection":
        collection: ShardedExtendedCollection = super().clone()  # type: ignore[assignment]
        collection._intersects = list(self._intersects)
        collection._score = None if self._score is None else dict(self._score)
        collection.stored_key = self.stored_key
        collection._stored_len = self._stored_len
        if self._intersects or self.stored_key:
            collection._len = None  # the pks of keys and collections are read again
        return collection

    def _checker(self) -> ExtendedCollectionManager:
        """Return an extended collection of shard 0: it checks the arguments as the unsharded one does."""
        return ExtendedCollectionManager(shard_model(self.model, 0))

    def intersect(self, *sets: Any) -> "ShardedExtendedCollection":
        """Return a new collection keeping only the pks also found in each of ``sets``.

        Each argument is a list/set/tuple of pks, a collection of the same model, the key of a
        Redis set or list, or a bound ``SetField``/``ListField`` (read at evaluation, on the
        client). A sorted set orders the collection by score (the sum of the pks' scores in the
        sorted sets given), as the unsharded ``ZINTERSTORE`` does, until it is sorted.
        """
        items = []
        for value in sets:
            if isinstance(value, ShardedCollection):
                if sharded_model(value.model) is not sharded_model(self.model):
                    raise ValueError(
                        "intersect() on a collection of %s got a collection of %s: intersect collections "
                        "of the same model, or pass a list of pks"
                        % (_model_path(self.model), _model_path(value.model))
                    )
                items.append(_Collection(value))
                continue
            if isinstance(value, (CollectionManager, RedisModel)):
                raise ValueError(
                    "%r cannot be intersected with a collection of %s: pass a collection of the same "
                    "model or a list of pks" % (value, _model_path(self.model))
                )
            item = self._checker()._coerce_intersect_argument(value)  # raises as the unsharded one
            if isinstance(item, tuple):
                item = tuple(_member(pk) for pk in item)
            items.append(item)
        collection = self.clone()
        collection._intersects.extend(items)
        collection._forget()
        return collection

    def sort(self, **parameters: Any) -> "ShardedExtendedCollection":
        """Return a clone sorted as ``ShardedCollection.sort`` sorts, or by score with ``by_score``."""
        by = parameters.get("by")
        if isinstance(by, RedisField):
            parameters["by"] = by.name
        if "by_score" not in parameters:
            collection: ShardedExtendedCollection = super().sort(**parameters)  # type: ignore[assignment]
            collection._score = None
            return collection
        checked = self._checker().sort(**parameters)  # raises as the unsharded one does
        collection = self.clone()
        collection._order = collection._by = None
        collection._alpha = False
        collection._score = dict(checked._sort_by_sortedset)  # type: ignore[arg-type]
        return collection

    def store(
        self, key: Optional[str] = None, ttl: Optional[int] = DEFAULT_STORE_TTL
    ) -> "ShardedExtendedCollection":
        """Evaluate now, write the pks (order of iteration) to the list ``key``; return a collection on it.

        ``DEL``, ``RPUSH`` (a chunk of pks each), ``EXPIRE`` (``ttl`` seconds; ``None``: never,
        ``0``: at once); an empty result leaves no key. The default key is
        ``<model>:__collection__:store:<hex>``. The returned collection keeps this one's result
        type (pks, instances, values).
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
        source = self.primary_keys()
        source._storing = True
        pks = list(source)
        connection = self.model.get_connection()
        if key is None:
            key = make_key(self.model._name, "__collection__", "store", uuid.uuid4().hex)
        connection.delete(key)
        for position in range(0, len(pks), _PUSH_CHUNK):
            connection.rpush(key, *pks[position : position + _PUSH_CHUNK])
        if pks and ttl is not None:
            connection.expire(key, ttl)
        stored = type(self)(self.model)._based_on_stored(key, len(pks))
        stored._instances = self._instances
        stored._lazy_instances = self._lazy_instances
        stored._values = self._values
        return stored

    def from_stored(self, key: str) -> "ShardedExtendedCollection":
        """Return a collection based on the list of pks stored at ``key`` (``LLEN`` is read now)."""
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
        return self._based_on_stored(key, self.model.get_connection().llen(key))

    def _based_on_stored(self, key: str, length: int) -> "ShardedExtendedCollection":
        collection = self.clone().sort(by="nosort")
        collection.stored_key = key
        collection._stored_len = length
        collection._forget()
        return collection

    def stored_key_exists(self) -> int:
        """Return whether the stored list exists (Redis' int reply)."""
        if not self.stored_key:
            raise ValueError(
                "stored_key_exists() on a collection of %s that is not based on a stored one: use "
                "store() or from_stored(key) first" % _model_path(self.model)
            )
        return self.model.get_connection().exists(self.stored_key)

    # -------------------------------------------------------------------- the pks allowed

    def _extras(self) -> bool:
        """Return whether this collection has what a plain sharded collection has not."""
        return (
            bool(self._intersects) or bool(self.stored_key) or self._score is not None or bool(self._scored())
        )

    def _scored(self) -> List[Any]:
        """Return the filters of this collection served by a ``ScoredEqualIndex`` (sorted sets)."""
        return [
            item
            for item in self._template._lazy_collection["sets"]
            if getattr(item, "index", None) is not None and _is_scored(item.index)
        ]

    def _read_scored(self, item: Any) -> Dict[str, float]:
        """Return ``{pk: score}`` of the scored filter ``item`` over every shard: each shard's sorted
        set of each value (``ZRANGE ... WITHSCORES``, every shard's together: one round trip per
        node), a pk's scores summed over the values of an ``__in`` (as ``ZUNIONSTORE``)."""
        from limpyd._per_node import raise_first_error, send_per_node
        from limpyd.sharding import _renamed

        index = item.index
        values = set(item.value) if index.remove_prefix(item.suffix) == "in" else [item.value]
        keys = list(
            dict.fromkeys(
                index.get_storage_key(*item.extra_field_parts, value, transform_value=False)
                for value in values
            )
        )
        prefix = shard_model(self.model, 0)._name
        commands = [
            (key, ("ZRANGE", key, 0, -1, "WITHSCORES"))
            for shard in self.model._limpyd_shard_models
            for key in (_renamed(key, prefix, shard._name) for key in keys)
        ]
        scores: Dict[str, float] = {}
        for reply in (
            raise_first_error(send_per_node(self.model.get_connection(), commands)) if commands else ()
        ):
            # a flat reply [member, score, ...], or pairs when redis-py's reply callback ran
            pairs = reply if reply and isinstance(reply[0], (list, tuple)) else zip(reply[::2], reply[1::2])
            for member, score in pairs:
                member = _member(member)
                scores[member] = scores.get(member, 0.0) + float(score)
        return scores

    def _read_key(self, key: str) -> List[str]:
        """Return the members of the set, sorted set or list ``key`` (a missing key: none); a
        sorted set's scores are added to ``_zset_scores`` (read with them: one ``ZRANGE``)."""
        connection = self.model.get_connection()
        key_type = connection.type(key)
        if isinstance(key_type, bytes):
            key_type = key_type.decode()
        if key_type == "none":
            return []
        if key_type == "set":
            return list(connection.smembers(key))
        if key_type == "list":
            return list(connection.lrange(key, 0, -1))
        if key_type == "zset":
            pairs = [
                (member.decode() if isinstance(member, bytes) else member, score)
                for member, score in connection.zrange(key, 0, -1, withscores=True)
            ]
            self._add_scores(dict(pairs))
            return [member for member, _ in pairs]
        raise ValueError(
            "Cannot use redis key %s of type %s for filtering (collection of %s): intersect only "
            "sets, sorted sets and lists" % (key, key_type, _model_path(self.model))
        )

    def _resolve(self) -> Optional[Set[str]]:
        """Return the pks every intersection (and the stored list) allows, read now; ``None``: any."""
        if self._resolved:
            return self._allowed
        allowed: Optional[Set[str]] = None
        self._stored_order = None
        self._zset_scores = None
        self._stored_members: List[str] = []
        if self.stored_key:
            if self._stored_len == 0:
                allowed = set()
            else:
                connection = self.model.get_connection()
                members = list(connection.lrange(self.stored_key, 0, -1))
                if not members and not connection.exists(self.stored_key):
                    raise DoesNotExist(
                        "This collection is based on a previous one, stored at a key that does not exist "
                        "anymore. (key %r, collection of %s): store the collection again, or use a longer ttl"
                        % (self.stored_key, _model_path(self.model))
                    )
                self._stored_members = members
                self._stored_order = {}
                for position, pk in enumerate(members):
                    self._stored_order.setdefault(pk, position)
                allowed = set(self._stored_order)
        for item in self._intersects:
            if isinstance(item, tuple):
                if not item:
                    raise ValueError(
                        "Invalid filter type: an empty list of pks cannot be intersected (collection of "
                        "%s): intersect non-empty lists of pks, sets, sorted sets or lists"
                        % _model_path(self.model)
                    )
                pks: Any = item
            elif isinstance(item, _Collection):
                pks = list(item.collection.clone())
            elif isinstance(item, str):
                pks = self._read_key(item)
            elif isinstance(item, SetField):
                pks = self._read_key(item.key)
            elif isinstance(item, (ListField, SortedSetField)):
                pks = self._read_key(item.key)
            else:
                raise ValueError(
                    "Invalid filter type: %r cannot be intersected (collection of %s): intersect non-empty "
                    "lists of pks, sets or lists" % (item, _model_path(self.model))
                )
            allowed = set(pks) if allowed is None else allowed.intersection(pks)
        for item in self._scored():  # its sorted sets: the collection ordered by their scores
            scores = self._read_scored(item)
            self._add_scores(scores)
            allowed = set(scores) if allowed is None else allowed.intersection(scores)
        self._allowed, self._resolved = allowed, True
        if self._zset_scores is not None and allowed is not None:
            self._zset_scores = {pk: self._zset_scores[pk] for pk in allowed}
        self._per_shard = None
        if allowed is not None:
            shards = self.model._limpyd_shards
            self._per_shard = {}
            for pk in sorted(allowed):
                self._per_shard.setdefault(shard_index(pk, shards), []).append(pk)
        return allowed

    def _add_scores(self, scores: Dict[str, float]) -> None:
        """Add the scores of one sorted set to ``_zset_scores`` (its members only stay: an intersection)."""
        if self._zset_scores is None:
            self._zset_scores = scores
            return
        summed = {}
        for pk, score in scores.items():
            if pk in self._zset_scores:
                total = self._zset_scores[pk] + score
                summed[pk] = 0.0 if total != total else total  # inf - inf: NaN, which Redis counts 0
        self._zset_scores = summed

    def _zset_ordered(self) -> bool:
        """Return whether the results come in the order of the sorted sets intersected (by score),
        as the unsharded ``ZRANGE`` or ``SORT ... BY nosort`` of the intersection gives them:
        without ``sort()`` (pks, instances; values are read by a ``SORT`` in pk order) or with
        ``sort(by="nosort")``, no score sort. Read after :meth:`_resolve`."""
        if self._zset_scores is None or self._score is not None:
            return False
        return self._order == "nosort" or (self._order is None and self._values is None and not self._storing)

    def _read_order(self) -> Any:
        """Return the key of the order of the unsharded result ``SORT`` reads: the sorted sets'
        (by score, then bytes) when some were intersected (a sorted set; the order a cluster's
        ``SORT`` script reads), the stored list's when it is all there is, else a set's."""
        scores = self._zset_scores
        if scores is not None:
            return lambda pk: (scores.get(pk, 0.0), pk.encode("utf-8"))
        if self._plain_stored() and self._stored_order is not None:  # the list itself is sorted
            order = self._stored_order
            return lambda pk: order.get(pk, -1)
        return super()._read_order()

    def _in_zset_order(self, items: List[Any]) -> List[Any]:
        """Return ``items`` (pks, or rows starting with the pk) by score, then by the pk's bytes (``ZRANGE``)."""
        scores = self._zset_scores or {}
        if self._rich():
            return sorted(items, key=lambda item: (scores.get(item[0], 0.0), item[0].encode("utf-8")))
        return sorted(items, key=lambda pk: (scores.get(pk, 0.0), pk.encode("utf-8")))

    def _shard_pks(self, number: int) -> Optional[Tuple[str, ...]]:
        """Return the pks allowed in the shard ``number`` (sorted), or ``None`` when any is."""
        if self._resolve() is None:
            return None
        return tuple(self._per_shard.get(number, ()))  # type: ignore[union-attr]

    # -------------------------------------------------------------------- the shards' collections

    def _shard_extras(self, collection: Any, number: int) -> Any:
        """Return the shard's ``collection`` (filters added) intersected with its allowed pks.

        Sorted by score too when it answers alone (a pk filter): its extended manager then
        sorts as the unsharded one does.
        """
        if not self._extras():
            return collection
        if not isinstance(collection, ExtendedCollectionManager):
            collection = ExtendedCollectionManager(shard_model(self.model, number))
            for filters in self._filters:
                collection._add_filters(**filters)
        pks = self._shard_pks(number)
        if pks is not None:
            collection = collection.intersect(pks or (_foreign_pk(number, self.model._limpyd_shards),))
        if self._score is not None:
            collection = collection.sort(**{"by_score": self._score["by"], **self._score_flags()})
        return collection

    def _score_flags(self) -> Dict[str, bool]:
        return {name: True for name in ("desc", "alpha") if self._score[name]}  # type: ignore[index]

    def _shards(self) -> List[CollectionManager]:
        """Return the collection of each shard concerned: shards with no allowed pk are not asked."""
        if self._shard_collections is None and self._extras() and self._resolve() is not None:
            pks = self._template._lazy_collection["pks"]
            numbers = [shard_of(self.model, next(iter(pks)))] if pks else range(self.model._limpyd_shards)
            rich = self._rich()
            self._shard_collections = [
                self._shard_collection(number, rich) for number in numbers if self._shard_pks(number)
            ]
        return super()._shards()

    def _direct_keys(self) -> Optional[List[str]]:
        return None if self._extras() else super()._direct_keys()

    def _intersected_keys(self) -> Optional[List[Tuple[Any, ...]]]:
        """Return what each shard intersects (see ``ShardedCollection._intersected_keys``); with
        intersections (or a stored list, scored filters), each shard's allowed pks too, read on
        the client first (:meth:`_resolve`), so every shard's steps still go out together: its
        filters' sets and a temporary set of its pks (``SADD``), intersected, read, deleted. A
        shard with no pk allowed is not asked (an empty tuple). None when the filters cannot be
        planned (the shards are then asked one after the other)."""
        if not self._extras():
            return super()._intersected_keys()
        if self._plain_stored() or not self._per_node_possible() or self._template._lazy_collection["pks"]:
            return None
        allowed = self._resolve()
        if allowed is None:
            return None
        template = CollectionManager(shard_model(self.model, 0))
        template._lazy_collection["sets"] = [  # the scored filters are in the allowed pks already
            item
            for item in self._template._lazy_collection["sets"]
            if not (getattr(item, "index", None) is not None and _is_scored(item.index))
        ]
        entries = filter_entries(template)
        if entries is None:
            return None
        prefix = template.model._name
        every_key = [
            key
            for entry in entries
            for member in (entry if isinstance(entry, tuple) else (entry,))
            for key in (getattr(member, "key", member),)
        ]
        if not all(key.startswith(prefix + ":") for key in every_key):
            return None
        if not entries:  # no filter: the pks still existing (the collection key), as unsharded
            entries = [make_key(prefix, "collection")]
        per_shard: List[Tuple[Any, ...]] = []
        for number, shard in enumerate(self.model._limpyd_shard_models):
            pks = self._shard_pks(number)
            if not pks:
                per_shard.append(())
                continue
            renamed = tuple(_shard_entry(entry, prefix, shard._name) for entry in entries)
            per_shard.append(renamed + (ShardPks(pks),))
        return per_shard

    def _merge(self, parts: List[List[Any]], reverse: bool) -> List[Any]:
        """Merge as ``ShardedCollection`` does; unsorted on a stored list (``nosort``): the list's order."""
        merged = super()._merge(parts, reverse)
        if self._order == "nosort" and self._stored_order is not None:
            order = self._stored_order
            pk_of = operator.itemgetter(0) if self._rich() else None
            merged.sort(key=lambda item: order.get(item if pk_of is None else pk_of(item), -1))
        return merged

    def delete(self, batch_size: int = 1000) -> int:
        self._unresolve()
        deleted = super().delete(batch_size)
        self._forget()
        return deleted

    # -------------------------------------------------------------------- evaluation

    def _plain_stored(self) -> bool:
        """Return whether the stored list is all there is (no filter, no other intersection).

        The unsharded manager then reads the list itself (``LRANGE``, ``LLEN``, ``SORT list BY
        nosort GET``): its pks as they are, in its order.
        """
        return bool(self.stored_key) and not self._filters and not self._intersects

    def _fetch_all(self) -> List[Any]:
        if self._score is not None:
            return self._by_score(None)
        if self._order == "nosort" and self._plain_stored():
            self._resolve()
            return self._rows_output([(pk, None) for pk in self._stored_members])
        if self._extras():
            self._resolve()
            if self._zset_ordered():
                return self._output(
                    self._in_zset_order([item for part in self._all_parts() for item in part])
                )
        return super()._fetch_all()

    def __len__(self) -> int:
        if self._len is None and self._cache is None:
            self._unresolve()
            if self._plain_stored():
                self._resolve()
                self._len = len(self._stored_members)
        return super().__len__()

    def __iter__(self) -> Any:
        if self._cache is None:
            self._unresolve()
        return super().__iter__()

    def _fetch_window(self, start: int, count: int, reverse: bool) -> List[Any]:
        if self._score is not None:
            return self._by_score(None if self._full_evaluation else (start, count, reverse))
        if self._order == "nosort" and self.stored_key:  # the list's order: every pk, then cut
            results = self._fetch_all()
            return results[start:] if count < 0 else results[start : start + count]
        if self._extras():
            self._resolve()
            if self._zset_ordered():  # every pk by score, then cut (ZRANGE/ZREVRANGE windows)
                items = self._in_zset_order([item for part in self._all_parts() for item in part])
                if reverse:
                    items.reverse()
                return self._output(items[start:] if count < 0 else items[start : start + count])
        return super()._fetch_window(start, count, reverse)

    def __getitem__(self, arg: Any) -> Any:
        if self._cache is None:
            self._unresolve()
        if self._score is not None and isinstance(arg, slice) and self._cache is None:
            optimized = CollectionManager._optimize_slice(checked_index(self, arg), True)[0]
            if not optimized:  # the unsharded collection evaluates it whole (no window)
                self._full_evaluation = True
                try:
                    return super().__getitem__(arg)
                finally:
                    self._full_evaluation = False
        return super().__getitem__(arg)

    def _by_score(self, window: Optional[Tuple[int, int, bool]]) -> List[Any]:
        """Return the results sorted by score on the client (``window``: ``(start, count, reverse)``).

        The pks of the collection without the score sort, the sorted set read once (``ZRANGE
        ... WITHSCORES``), ordered as ``SORT ... BY`` the score keys of the unsharded manager
        orders them: a full evaluation scores absent pks ``-inf``, a window leaves them without
        a score (numeric: 0; ``alpha``: first).
        """
        base = self.clone()
        base._score = None
        base._order = base._by = None
        base._values = None
        base._instances = base._lazy_instances = False
        pks = list(base)
        if not pks:
            return []
        connection = self.model.get_connection()
        scores = {
            (member.decode() if isinstance(member, bytes) else member): score
            for member, score in connection.zrange(self._score["by"], 0, -1, withscores=True)  # type: ignore[index]
        }
        absent = "-inf" if window is None else None
        # a full evaluation sorts the pks read first, from a set (numeric order); a window sorts
        # the unsharded result itself (a sorted set's order when one was intersected)
        tie_key = _tie_key if window is None else base._read_order()
        rows = [(pk, str(float(scores[pk])) if pk in scores else absent) for pk in pks]
        desc, alpha = self._score["desc"], self._score["alpha"]  # type: ignore[index]
        if window is None:
            ordered = _arrange(rows, operator.itemgetter(0), operator.itemgetter(1), alpha, desc, tie_key)
        else:
            start, count, reverse = window
            ordered = _arrange(
                rows, operator.itemgetter(0), operator.itemgetter(1), alpha, desc != reverse, tie_key
            )
            ordered = ordered[start:] if count < 0 else ordered[start : start + count]
        return self._rows_output(ordered)

    def _rows_output(self, rows: List[Tuple[str, Optional[str]]]) -> List[Any]:
        """Return the results of the ``(pk, score)`` ``rows``: pks, or the values asked.

        The values of the fields are read for these pks only (a ``SORT ... GET`` in each shard
        concerned, all sent together); ``SORTED_SCORE`` is the score of the row.
        """
        if self._values is None:
            return [pk for pk, _ in rows]
        _, names, mode = self._values
        others = [name for name in names if name != SORTED_SCORE]
        values: Dict[str, Tuple[Any, ...]] = {}
        if others and rows:  # the values of these pks, every shard concerned asked together
            collection = type(self)(self.model).intersect([pk for pk, _ in rows]).values_list("pk", *others)
            for row in collection:
                values[row[0]] = row[1:]
        results = []
        is_pk = [isinstance(name, str) and self.model._field_is_pk(name) for name in names]
        for pk, score in rows:
            read = iter(values.get(pk, (None,) * len(others)))
            row = [score if name == SORTED_SCORE else next(read) for name in names]
            row = [pk if pk_name else value for pk_name, value in zip(is_pk, row)]
            if mode == "flat":
                results.append(row[0])
            elif mode == "tuples":
                results.append(tuple(row))
            else:
                results.append(dict(zip(names, row)))
        return results
