"""What a model stores and which index entries its stored values must produce.

The expected entries are computed through the library's own index objects (``get_storage_key``,
``prepare_data_to_store``, ``normalize_value`` with transforms, ``MultiIndexes.prepare_args``,
``EqualIndexWith._make_storage_key``...), from values read in batches: nothing here sends a
command per instance. A plain ``EqualIndex`` (no transform, the field's own ``from_python``) takes
a shortcut that gives the same key by construction (``<M>:<F>[:P][:K]:<value>``).
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from limpyd.fields import (
    HashField,
    InstanceHashField,
    ListField,
    PKField,
    RedisField,
    SetField,
    SingleValueField,
    SortedSetField,
    StringField,
)
from limpyd.indexes import BaseIndex, BaseRangeIndex, EqualIndex, TextRangeIndex
from limpyd.utils import make_key

__all__ = ["Entry", "ModelPlan", "RESERVED_PARTS", "UnsupportedIndex"]

#: key parts right after the model name that are not pks (``M:<part>...``)
RESERVED_PARTS = frozenset(
    ("collection", "max_pk", "lock-for-update", "__index__", "__collection__", "__deadlines__", "__rebuild__")
)
TEMPORARY_PARTS = ("__index__", "__collection__")
#: a collection's ``store()`` result: a user-requested key, legitimate while it has a TTL
STORE_PREFIX = "__collection__:store:"
INSTANCE_HASH = "hash"


class UnsupportedIndex(Exception):
    """An index class whose entries the audit cannot compute."""


class Entry(NamedTuple):
    """One index entry: ``key`` of Redis type ``kind`` (``set``/``zset``) holds ``member`` (with ``score``).

    ``probe`` (unique indexes only) says how to find the other pks holding the same value:
    ``("S", set key)``, ``("L", start, end)`` (``ZRANGEBYLEX`` on ``key``) or ``("N", start, end)``
    (``ZRANGEBYSCORE`` on ``key``). ``index`` is the index object that produces it.
    """

    key: str
    kind: str
    member: str
    score: Optional[float]
    field: str
    probe: Optional[Tuple[Any, ...]]
    index: Any
    value: Any


def _is_related(index: Any) -> bool:
    from limpyd.contrib.indexes import _BaseRelatedIndex  # contrib imports the core: imported lazily

    return isinstance(index, _BaseRelatedIndex)


def _contrib_classes() -> Tuple[type, type, type]:
    from limpyd.contrib.indexes import EqualIndexWith, MultiIndexes, ScoredEqualIndex

    return MultiIndexes, ScoredEqualIndex, EqualIndexWith


#: (field class, reader name), most specific first
_READERS = (
    (InstanceHashField, "ihash"),
    (PKField, "pk"),
    (StringField, "string"),
    (HashField, "hash"),
    (SortedSetField, "zset"),
    (SetField, "set"),
    (ListField, "list"),
)
_STANDARD_GETTERS = {
    "ihash": "hget",
    "string": "get",
    "hash": "hgetall",
    "zset": "zmembers",
    "set": "smembers",
    "list": "lmembers",
}
#: Redis type of the key of each reader
REDIS_TYPES = {
    "string": "string",
    "hash": "hash",
    "zset": "zset",
    "set": "set",
    "list": "list",
    "ihash": "hash",
}


_READ_CODES = {"HGETALL": "h", "GET": "g", "SMEMBERS": "s", "LRANGE": "l", "ZRANGE": "z"}


class FieldPlan:
    """A non-pk field: how to read it in a batch, and the index objects storing under ``M:<name>:``."""

    def __init__(self, model: type, name: str) -> None:
        self.name = name
        self.field: RedisField = model.get_field(name)
        self.reader = "custom"
        for field_class, reader in _READERS:
            if isinstance(self.field, field_class):
                if self.field.proxy_getter == _STANDARD_GETTERS.get(reader, self.field.proxy_getter):
                    self.reader = reader
                break
        self.single = isinstance(self.field, SingleValueField)
        indexes = list(self.field._indexes) if self.field.indexable else []
        #: the indexes writing keys under ``M:<name>:`` (related indexes store nothing themselves)
        self.indexes = [index for index in indexes if not _is_related(index)]
        self.unique_index = None
        if self.field.unique:
            self.unique_index = next((index for index in indexes if index.handle_uniqueness), None)

    def parts(self, value: Any) -> List[Tuple[Any, ...]]:
        """Return the distinct index parts of a stored value (``[]`` for none)."""
        if value is None:
            return []
        if self.single:
            return [(value,)]
        if isinstance(value, (str, bytes)):
            return [(value,)]
        if not value:
            return []
        return list(dict.fromkeys(p for p in self.field._index_parts(value) if p[-1] is not None))


class ModelPlan:
    """Everything the integrity tools need to know about one model."""

    def __init__(self, model: type) -> None:
        if model._limpyd_shard_models is not None:  # its keys are its shard classes' (docs/sharding.rst)
            from limpyd.exceptions import ImplementationError

            raise ImplementationError(
                "ModelPlan(%s): a sharded model stores its instances in its shard classes; plan "
                "%s.shard_model(k) (limpyd.integrity.sharded runs the tools shard after shard)"
                % (model.__name__, model.__name__)
            )
        self.model = model
        self.name: str = model._name
        self.pk_name = model.get_field("pk").name
        self.fields: Dict[str, FieldPlan] = {}
        for name in model._fields:
            if model._field_is_pk(name):
                continue
            self.fields[name] = FieldPlan(model, name)
        self.instancehash = [name for name, plan in self.fields.items() if plan.reader == "ihash"]
        self.collection_key = make_key(self.name, "collection")
        self.deadlines_key = make_key(self.name, "__deadlines__")
        self.indexed = [plan for plan in self.fields.values() if plan.indexes]
        self._equal_bases: Dict[Tuple[int, Tuple[Any, ...]], str] = {}
        self.notes: List[str] = []
        for plan in self.indexed:
            for index in plan.indexes:
                try:
                    self._check_supported(index)
                except UnsupportedIndex as exc:
                    self.notes.append(str(exc))

    # ------------------------------------------------------------------ reading

    def instance_key(self, pk: str, name: str) -> str:
        return make_key(self.name, pk, name)

    def read_commands(
        self, pk: str, names: Optional[Sequence[str]] = None
    ) -> List[Tuple[Tuple[Any, ...], Dict[str, Any]]]:
        """Return the commands reading the fields ``names`` (all by default) of ``pk``; see :meth:`decode`."""
        commands: List[Tuple[Tuple[Any, ...], Dict[str, Any]]] = []
        plans = [self.fields[name] for name in names] if names is not None else list(self.fields.values())
        if any(plan.reader == "ihash" for plan in plans):
            commands.append((("HGETALL", self.instance_key(pk, INSTANCE_HASH)), {}))
        for plan in plans:
            key = self.instance_key(pk, plan.name)
            if plan.reader == "string":
                commands.append((("GET", key), {}))
            elif plan.reader in ("hash",):
                commands.append((("HGETALL", key), {}))
            elif plan.reader == "set":
                commands.append((("SMEMBERS", key), {}))
            elif plan.reader == "list":
                commands.append((("LRANGE", key, 0, -1), {}))
            elif plan.reader == "zset":
                commands.append((("ZRANGE", key, 0, -1), {}))
        return commands

    def decode(
        self, pk: str, replies: List[Any], names: Optional[Sequence[str]] = None
    ) -> Tuple[Dict[str, Any], Dict[str, str], List[str]]:
        """Return ``(values, extra hash entries, wrong-type keys)`` from the replies of :meth:`read_commands`.

        ``values`` maps field names to the value as the field's getter returns it (``None`` or
        empty when nothing is stored); fields read without a standard getter are read here, one
        command each.
        """
        plans = [self.fields[name] for name in names] if names is not None else list(self.fields.values())
        values: Dict[str, Any] = {}
        extra: Dict[str, str] = {}
        wrong: List[str] = []
        position = 0
        if any(plan.reader == "ihash" for plan in plans):
            entries = replies[0]
            position = 1
            if isinstance(entries, Exception):
                wrong.append(self.instance_key(pk, INSTANCE_HASH))
                entries = {}
            for plan in plans:
                if plan.reader == "ihash":
                    values[plan.name] = entries.get(plan.name)
            if names is None:
                extra = {name: value for name, value in entries.items() if name not in self.instancehash}
        for plan in plans:
            if plan.reader == "ihash":
                continue
            if plan.reader == "custom":
                values[plan.name] = plan.field.get_for_instance(pk).proxy_get()
                continue
            reply = replies[position]
            position += 1
            if isinstance(reply, Exception):
                wrong.append(self.instance_key(pk, plan.name))
                reply = None
            values[plan.name] = reply
        return values, extra, wrong

    def read(self, client: Any, pks: Sequence[str], names: Optional[Sequence[str]] = None) -> List[List[Any]]:
        """Return, for each of ``pks``, the replies :meth:`decode` takes, read by one script call per 4000 keys."""
        from limpyd.integrity import _lua

        keys: List[str] = []
        codes: List[str] = []
        spans = []
        for pk in pks:
            start = len(keys)
            for args, _ in self.read_commands(pk, names):
                keys.append(args[1])
                codes.append(_READ_CODES[args[0]])
            spans.append((start, len(keys)))
        calls = [(_lua.READ, keys[i : i + 4000], codes[i : i + 4000]) for i in range(0, len(keys), 4000)]
        flat: List[Any] = []
        for reply in _lua.run(client, calls) if calls else []:
            flat.extend(reply)
        converted = []
        for code, reply in zip(codes, flat):
            if isinstance(reply, Exception):
                converted.append(reply)
            elif code == "h":
                converted.append(dict(zip(reply[::2], reply[1::2])))
            elif code == "g":
                converted.append(None if isinstance(reply, list) else reply)
            elif code == "s":
                converted.append(set(reply))
            else:
                converted.append(reply)
        return [converted[start:end] for start, end in spans]

    def values(
        self, client: Any, pks: Sequence[str], names: Optional[Sequence[str]] = None
    ) -> Iterator[Tuple[str, Dict[str, Any], Dict[str, str], List[str]]]:
        """Yield ``(pk, values, extra hash entries, wrong-type keys)`` for each of ``pks`` (see :meth:`read`)."""
        for pk, replies in zip(pks, self.read(client, pks, names)):
            yield (pk, *self.decode(pk, replies, names))

    @staticmethod
    def has_data(values: Dict[str, Any], extra: Dict[str, str]) -> bool:
        """Return whether anything is stored for the pk."""
        return bool(extra) or any(not _empty(value) for value in values.values())

    # ------------------------------------------------------------------ expected entries

    def _check_supported(self, index: Any) -> None:
        multi, scored, equal_with = _contrib_classes()
        if isinstance(index, multi):
            for sub in index._indexes:
                self._check_supported(sub)
            return
        if isinstance(index, (scored, equal_with, EqualIndex, BaseRangeIndex)):
            return
        raise UnsupportedIndex(
            "%s on %s.%s: the audit cannot compute its entries (only the index classes of limpyd and "
            "limpyd.contrib, and their subclasses); its keys are reported as they are found"
            % (type(index).__name__, self.model.__name__, index.field.name)
        )

    def entries(self, pk: str, values: Dict[str, Any], names: Optional[Sequence[str]] = None) -> List[Entry]:
        """Return the index entries the stored ``values`` of ``pk`` must have (fields ``names``, or all)."""
        out: List[Entry] = []
        plans = self.indexed if names is None else [self.fields[n] for n in names if self.fields[n].indexes]
        multi, scored, equal_with = _contrib_classes()
        for plan in plans:
            parts_list = plan.parts(values.get(plan.name))
            for index in plan.indexes:
                if isinstance(index, equal_with):
                    out.extend(self._equal_with_entries(index, plan, pk, parts_list, values))
                    continue
                unique = index is plan.unique_index
                for parts in parts_list:
                    try:
                        self._index_entries(out, index, plan, pk, parts, values, unique, multi, scored)
                    except UnsupportedIndex:
                        continue
        return out

    def _index_entries(
        self,
        out: List[Entry],
        index: Any,
        plan: FieldPlan,
        pk: str,
        args: Tuple[Any, ...],
        values: Dict[str, Any],
        unique: bool,
        multi: type,
        scored: type,
    ) -> None:
        if isinstance(index, multi):
            prepared = tuple(index.prepare_args(args))
            unique_sub = None
            if unique:
                unique_sub = next((sub for sub in index._indexes if sub.handle_uniqueness), None)
            for sub in index._indexes:
                self._index_entries(out, sub, plan, pk, prepared, values, sub is unique_sub, multi, scored)
            return
        if isinstance(index, scored):
            key = index.get_storage_key(*args)
            score = _score_of(index, values)
            if index.field.unique:
                ukey = index.uniqueness_key(key)
                out.append(
                    Entry(ukey, "set", pk, None, plan.name, ("S", ukey) if unique else None, index, args[-1])
                )
            if score is not None:
                out.append(Entry(key, "zset", pk, score, plan.name, None, index, args[-1]))
            return
        if isinstance(index, EqualIndex):
            key = self._equal_key(index, plan, args)
            out.append(
                Entry(key, "set", pk, None, plan.name, ("S", key) if unique else None, index, args[-1])
            )
            return
        if isinstance(index, BaseRangeIndex):
            key = index.get_storage_key(*args)
            member, score = index.prepare_data_to_store(pk, args[-1])
            if score is None:
                return
            probe = None
            if unique:
                start, end, _ = index.get_boundaries("eq", index.normalize_value(args[-1]))
                probe = ("L" if isinstance(index, TextRangeIndex) else "N", start, end)
            out.append(Entry(key, "zset", str(member), float(score), plan.name, probe, index, args[-1]))
            return
        raise UnsupportedIndex(type(index).__name__)

    def _equal_key(self, index: Any, plan: FieldPlan, args: Tuple[Any, ...]) -> str:
        """Return ``index.get_storage_key(*args)``, without the method calls for a plain ``EqualIndex``."""
        value = args[-1]
        if (
            type(value) is str
            and not index.transform
            and type(index).get_storage_key is EqualIndex.get_storage_key
            and type(index).normalize_value is BaseIndex.normalize_value
            and type(plan.field).from_python is RedisField.from_python
        ):
            cache_key = (id(index), args[:-1])
            base = self._equal_bases.get(cache_key)
            if base is None:
                base = self._equal_bases[cache_key] = make_key(*index._key_parts(*args[:-1]), "")
            return base + value
        return index.get_storage_key(*args)

    def _equal_with_entries(
        self, index: Any, plan: FieldPlan, pk: str, parts_list: List[Tuple[Any, ...]], values: Dict[str, Any]
    ) -> List[Entry]:
        if not parts_list:
            return []
        per_field = [[index._main_parts(parts) for parts in parts_list]]
        for other in index._other_fields:
            if isinstance(other, PKField):
                other_parts = [(pk,)]
            else:
                other_parts = self.fields[other.name].parts(values.get(other.name))
            if not other_parts:
                return []
            per_field.append([index._other_parts(other, parts) for parts in other_parts])
        out = []
        for combination in itertools.product(*per_field):
            key = index._make_storage_key(combination)
            out.append(
                Entry(
                    key, "set", pk, None, plan.name, ("S", key) if index.unique else None, index, combination
                )
            )
        return out


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (list, set, dict, tuple)) and not value)


def _score_of(index: Any, values: Dict[str, Any]) -> Optional[float]:
    """Return the score a ``ScoredEqualIndex`` gives, from the stored score field (``None``: no entry)."""
    score_field = index._score_field
    value = values.get(score_field.name)
    if value is None:
        return None
    try:
        return float(str(score_field.from_python(value)))
    except ValueError:
        return None
