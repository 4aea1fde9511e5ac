"""One consistency checker for the whole database, shared by the fault, thread, crash and property tests.

``check_consistency(client, models)`` reads EVERY key of the Redis db with ``SCAN`` (plus ``TYPE``
and the reads it needs) through a raw redis-py client, never through limpyd, and returns the list
of problems found (empty when the db is clean). ``assert_consistent`` fails with that list.

The expected index content is computed here, independently of the code under test, from the values
actually stored and the key formats of docs/indexes.rst:

- ``EqualIndex``: SET ``M:F[:H][:P][:K]:V`` holding the pks whose value is ``V``;
- ``TextRangeIndex``: ZSET ``M:F[:H][:P]:K`` (``K`` default ``text-range``), members
  ``V:TEXT-RANGE-SEPARATOR:pk``, score 0;
- ``NumberRangeIndex``: ZSET ``M:F[:H][:P]:K`` (``K`` default ``number-range``), member ``pk``,
  score ``float(V)`` (0 when ``V`` is not a number);

where ``V`` is the value in the form Redis stores it. Only the model's declarations are read from
the model classes (field names and types, their index classes with ``prefix``/``key``, ``unique``):
that is configuration, not code under test; no limpyd index method is called.

Problems reported (each message starts with one of the ``KIND_*`` labels below, so tests can
match them): index entry without its value, value without its index entry (or with a wrong
score), pk in the collection without any data, instance data outside the collection, duplicate
unique value, leftover lock key, leftover temporary key, unknown key.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import redis

from limpyd import fields as limpyd_fields
from limpyd import indexes as limpyd_indexes

__all__ = [
    "KINDS",
    "assert_consistent",
    "check_consistency",
]

KIND_STALE_ENTRY = "index entry without its value"
KIND_MISSING_ENTRY = "value without its index entry"
KIND_EMPTY_PK = "pk in the collection without any data"
KIND_ORPHAN_DATA = "instance data outside the collection"
KIND_DUPLICATE_UNIQUE = "duplicate unique value"
KIND_LOCK = "leftover lock key"
KIND_TEMPORARY = "leftover temporary key"
KIND_UNKNOWN = "unknown key"
KIND_DEADLINE = "deadline without its instance"
KIND_CLAIM = "claim naming a pk that does not hold its value"
KIND_LEASE = "leftover claim lease"
#: the sorted set of the deadlines of an expiring model's instances (pk scored by ms, server time)
DEADLINES_PART = "__deadlines__"
#: the stored shard count of a sharded model (docs/sharding.rst)
SHARDS_PART = "__shards__"

KINDS = (
    KIND_STALE_ENTRY,
    KIND_MISSING_ENTRY,
    KIND_EMPTY_PK,
    KIND_ORPHAN_DATA,
    KIND_DUPLICATE_UNIQUE,
    KIND_LOCK,
    KIND_TEMPORARY,
    KIND_UNKNOWN,
)

TEXT_RANGE_SEPARATOR = ":TEXT-RANGE-SEPARATOR:"
LOCK_PART = "lock-for-update"
#: key parts of the temporary keys: indexes (``M:__index__:...``), collections (``M:__collection__:...``)
TEMPORARY_PARTS = ("__index__", "__collection__")
#: a collection's ``store()`` result is a user-requested key, legitimate while it has a TTL
STORE_PREFIX = "__collection__:store:"
INSTANCE_HASH = "hash"


# ---------------------------------------------------------------------- model configuration


@dataclass(frozen=True)
class IndexSpec:
    """What an index class stores, read from its declaration: kind, prefix, key, uniqueness role."""

    kind: str  # "equal", "text", "number", "equal-with" (a multi-field index) or "related" (none)
    prefix: Optional[str]
    key: Optional[str]
    handle_uniqueness: bool
    others: Tuple[str, ...] = ()  # "equal-with": the other fields, in order


@dataclass(frozen=True)
class FieldSpec:
    """A non-pk field of a model: name, storage kind, indexes, unique flag."""

    name: str
    kind: str  # "string", "instancehash", "set", "list", "zset", "hash"
    redis_type: str
    indexes: Tuple[IndexSpec, ...]
    unique: bool


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the model's ``_name`` (``namespace:lowercased class name``)
    fields: Dict[str, FieldSpec]

    @property
    def instance_hash_fields(self) -> Set[str]:
        return {f.name for f in self.fields.values() if f.kind == "instancehash"}


#: (limpyd field class, storage kind, Redis type of the key holding it), most specific first
_FIELD_KINDS = (
    (limpyd_fields.InstanceHashField, "instancehash", "hash"),
    (limpyd_fields.StringField, "string", "string"),
    (limpyd_fields.HashField, "hash", "hash"),
    (limpyd_fields.SortedSetField, "zset", "zset"),
    (limpyd_fields.SetField, "set", "set"),
    (limpyd_fields.ListField, "list", "list"),
)


def _index_spec(index_class: type) -> IndexSpec:
    """Describe an index class; refuse what this checker cannot compute independently."""
    if getattr(index_class, "transform", None) is not None:
        raise ValueError("check_consistency does not support index transforms (%r)" % index_class)
    from limpyd.contrib.indexes import EqualIndexWith, _EqualIndexWith_RelatedIndex

    if issubclass(index_class, _EqualIndexWith_RelatedIndex):  # stores nothing of its own
        return IndexSpec("related", None, None, False)
    if issubclass(index_class, EqualIndexWith):
        others = tuple(getattr(other, "name", other) for other in index_class.other_fields)
        return IndexSpec("equal-with", index_class.prefix, index_class.key, bool(index_class.unique), others)
    for base, kind in (
        (limpyd_indexes.NumberRangeIndex, "number"),
        (limpyd_indexes.TextRangeIndex, "text"),
        (limpyd_indexes.EqualIndex, "equal"),
    ):
        if issubclass(index_class, base) and getattr(index_class, "filter_single_field", True):
            key = index_class.key
            if kind == "text" and key is None:
                key = "text-range"
            if kind == "number" and key is None:
                key = "number-range"
            return IndexSpec(kind, index_class.prefix, key, bool(index_class.handle_uniqueness))
    raise ValueError("check_consistency does not support the index class %r" % index_class)


def _field_spec(model: type, name: str) -> Optional[FieldSpec]:
    """Describe the field ``name`` of ``model`` (``None`` for the pk)."""
    model_field = model.get_field(name)
    if isinstance(model_field, limpyd_fields.PKField):
        return None
    for field_class, kind, redis_type in _FIELD_KINDS:
        if isinstance(model_field, field_class):
            break
    else:
        raise ValueError("check_consistency does not support the field %s.%s" % (model.__name__, name))
    index_classes = [type(index) for index in model_field._indexes] if model_field.indexable else []
    return FieldSpec(
        name, kind, redis_type, tuple(_index_spec(c) for c in index_classes), bool(model_field.unique)
    )


def _model_spec(model: type) -> ModelSpec:
    specs = (_field_spec(model, name) for name in model._fields)
    return ModelSpec(model._name, {spec.name: spec for spec in specs if spec is not None})


# ---------------------------------------------------------------------- reading the database


def _text(value: Any) -> Any:
    """Return ``value`` as ``str`` if it is ``bytes`` (the client may not decode responses)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


@dataclass
class Snapshot:
    """Every key of the db: its type, content and whether it has a TTL."""

    types: Dict[str, str] = field(default_factory=dict)
    contents: Dict[str, Any] = field(default_factory=dict)
    has_ttl: Dict[str, bool] = field(default_factory=dict)


_READERS = {
    "string": lambda pipe, key: pipe.get(key),
    "hash": lambda pipe, key: pipe.hgetall(key),
    "set": lambda pipe, key: pipe.smembers(key),
    "list": lambda pipe, key: pipe.lrange(key, 0, -1),
    "zset": lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True),
}


def _decode_content(kind: str, content: Any) -> Any:
    if kind == "string":
        return _text(content)
    if kind == "hash":
        return {_text(k): _text(v) for k, v in content.items()}
    if kind == "set":
        return {_text(m) for m in content}
    if kind == "list":
        return [_text(m) for m in content]
    if kind == "zset":
        return {_text(m): float(s) for m, s in content}
    return content


def read_snapshot(client: redis.Redis, chunk: int = 500) -> Snapshot:
    """Read every key with SCAN, then its TYPE, PTTL and content (pipelined, no MULTI)."""
    keys = sorted({_text(key) for key in client.scan_iter(count=1000)})
    snapshot = Snapshot()
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        pipe = client.pipeline(transaction=False)
        for key in part:
            pipe.type(key)
            pipe.pttl(key)
        replies = pipe.execute()
        pipe = client.pipeline(transaction=False)
        readable = []
        for index, key in enumerate(part):
            kind = _text(replies[2 * index])
            if kind == "none":  # vanished between SCAN and TYPE
                continue
            snapshot.types[key] = kind
            snapshot.has_ttl[key] = replies[2 * index + 1] >= 0
            if kind in _READERS:
                _READERS[kind](pipe, key)
                readable.append(key)
        for key, content in zip(readable, pipe.execute()):
            snapshot.contents[key] = _decode_content(snapshot.types[key], content)
    return snapshot


# ---------------------------------------------------------------------- expected indexes


def _number_score(value: str) -> float:
    """Return the score a scored index gives a value: ``float(value)``, 0 when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _index_parts(spec: FieldSpec, stored: Any) -> List[Tuple[str, ...]]:
    """Return the index parts (``(value,)`` or ``(hash key, value)``) of a stored field value."""
    if stored is None:
        return []
    if spec.kind in ("string", "instancehash"):
        return [(stored,)]
    if spec.kind == "hash":
        return [(k, v) for k, v in stored.items()]
    if spec.kind == "zset":
        return [(member,) for member in stored]
    return [(value,) for value in dict.fromkeys(stored)]  # set, list (one entry per distinct value)


def _join(*parts: Any) -> str:
    return ":".join(str(part) for part in parts)


def _expected_entry(
    model_name: str, spec: FieldSpec, index: IndexSpec, pk: str, parts: Tuple[str, ...]
) -> Tuple[str, str, str, Optional[float]]:
    """Return ``(key, redis type, member, score)`` of the entry of ``pk`` for ``parts`` in ``index``."""
    extra, value = parts[:-1], parts[-1]
    base = [model_name, spec.name, *extra]
    if index.prefix:
        base.append(index.prefix)
    if index.kind == "equal":
        if index.key:
            base.append(index.key)
        return _join(*base, value), "set", pk, None
    key = _join(*base, index.key)
    if index.kind == "text":
        return key, "zset", value + TEXT_RANGE_SEPARATOR + pk, 0.0
    return key, "zset", pk, _number_score(value)


@dataclass
class _Expected:
    """Index content computed from stored values: key -> {member: score or None}, plus origins."""

    entries: Dict[str, Dict[str, Optional[float]]] = field(default_factory=dict)
    types: Dict[str, str] = field(default_factory=dict)
    origin: Dict[Tuple[str, str], str] = field(default_factory=dict)

    def add(self, key: str, kind: str, member: str, score: Optional[float], origin: str) -> None:
        self.entries.setdefault(key, {})[member] = score
        self.types[key] = kind
        self.origin[(key, member)] = origin


# ---------------------------------------------------------------------- the check


@dataclass
class _ModelKeys:
    """The keys of one model, sorted by role."""

    collection: Set[str] = field(default_factory=set)
    instance_keys: Dict[str, List[Tuple[str, str]]] = field(default_factory=dict)  # pk -> [(key, field)]
    index_keys: List[str] = field(default_factory=list)


def _owner(key: str, models: Sequence[ModelSpec]) -> Optional[ModelSpec]:
    """The model whose ``_name`` prefixes ``key`` (longest name first)."""
    for spec in models:
        if key.startswith(spec.name + ":"):
            return spec
    return None


def _instance_field(spec: ModelSpec, rest: str, kind: str) -> Optional[Tuple[str, str]]:
    """Parse ``<pk>:<field>`` (right type) into ``(pk, field name)``; ``None`` if it is not one."""
    if ":" not in rest:
        return None
    pk, name = rest.rsplit(":", 1)
    if name == INSTANCE_HASH and spec.instance_hash_fields and kind == "hash":
        return pk, INSTANCE_HASH
    field_spec = spec.fields.get(name)
    if field_spec is not None and field_spec.kind != "instancehash" and field_spec.redis_type == kind:
        return pk, name
    return None


def _is_index_key(spec: ModelSpec, rest: str, kind: str) -> bool:
    if kind not in ("set", "zset"):
        return False
    return any(f.indexes and rest.startswith(f.name + ":") for f in spec.fields.values())


def _classify(
    snapshot: Snapshot, models: Sequence[ModelSpec], problems: List[str], claims: Set[str] = frozenset()
) -> Dict[str, _ModelKeys]:
    """Sort every key by model and role; report locks, temporary keys and unknown keys."""
    found = {spec.name: _ModelKeys() for spec in models}
    for spec in models:
        collection_key = spec.name + ":collection"
        if snapshot.types.get(collection_key) == "set":
            found[spec.name].collection = set(snapshot.contents[collection_key])
    for key, kind in sorted(snapshot.types.items()):
        spec = _owner(key, models)
        if spec is None and key in claims:
            continue  # checked by _check_claims
        if spec is None:
            problems.append("%s: %s (%s, belongs to no checked model)" % (KIND_UNKNOWN, key, kind))
            continue
        keys = found[spec.name]
        rest = key[len(spec.name) + 1 :]
        if (rest == "collection" and kind == "set") or (rest in ("max_pk", SHARDS_PART) and kind == "string"):
            continue
        if rest == DEADLINES_PART and kind == "zset":  # expiring instances: every pk must exist
            for pk in snapshot.contents[key]:  # {member: score}
                if pk not in keys.collection:
                    problems.append(
                        "%s: %s member %r (no such pk in %s:collection)" % (KIND_DEADLINE, key, pk, spec.name)
                    )
            continue
        if rest.startswith(LOCK_PART + ":"):
            problems.append("%s: %s" % (KIND_LOCK, key))
            continue
        if rest.split(":", 1)[0] in TEMPORARY_PARTS:
            if not (rest.startswith(STORE_PREFIX) and snapshot.has_ttl.get(key)):
                problems.append(
                    "%s: %s (%s, ttl: %s)" % (KIND_TEMPORARY, key, kind, snapshot.has_ttl.get(key))
                )
            continue
        instance = _instance_field(spec, rest, kind)
        if instance is not None and (instance[0] in keys.collection or not _is_index_key(spec, rest, kind)):
            keys.instance_keys.setdefault(instance[0], []).append((key, instance[1]))
        elif _is_index_key(spec, rest, kind):
            keys.index_keys.append(key)
        else:
            problems.append("%s: %s (%s)" % (KIND_UNKNOWN, key, kind))
    return found


def _stored_values(
    spec: ModelSpec, snapshot: Snapshot, pk_keys: List[Tuple[str, str]], problems: List[str]
) -> Dict[str, Any]:
    """Return ``{field name: stored value}`` of one pk (instance-hash entries split per field)."""
    values: Dict[str, Any] = {}
    for key, name in pk_keys:
        content = snapshot.contents[key]
        if name != INSTANCE_HASH:
            values[name] = content
            continue
        for entry, value in content.items():
            if entry in spec.instance_hash_fields:
                values[entry] = value
            else:
                problems.append("%s: entry %r of %s (not an InstanceHashField)" % (KIND_UNKNOWN, entry, key))
    return values


def _uniqueness_value(index: IndexSpec, value: str) -> Any:
    """The form in which the uniqueness-checking index compares values (floats for number ranges)."""
    return _number_score(value) if index.kind == "number" else value


def _check_model(spec: ModelSpec, snapshot: Snapshot, keys: _ModelKeys, problems: List[str]) -> None:
    """Compare one model's indexes with its stored values; report collection and uniqueness problems."""
    expected = _Expected()
    owners: Dict[Tuple[str, Any], Set[str]] = {}
    for pk in sorted(set(keys.instance_keys) - keys.collection):
        for key, _ in keys.instance_keys[pk]:
            problems.append("%s: %s (pk %r not in %s:collection)" % (KIND_ORPHAN_DATA, key, pk, spec.name))
    for pk in sorted(keys.collection):
        if pk not in keys.instance_keys:
            problems.append("%s: %s pk %r" % (KIND_EMPTY_PK, spec.name, pk))
            continue
        values = _stored_values(spec, snapshot, keys.instance_keys[pk], problems)
        for name, stored in values.items():
            field_spec = spec.fields[name]
            unique_index = next(
                (i for i in field_spec.indexes if i.handle_uniqueness and i.kind != "equal-with"), None
            )
            for parts in _index_parts(field_spec, stored):
                origin = "pk %r field %s value %r" % (pk, name, parts[-1] if len(parts) == 1 else parts)
                for index in field_spec.indexes:
                    if index.kind == "related":
                        continue
                    if index.kind == "equal-with":  # one entry per combination with the other fields
                        for others in itertools.product(
                            *(_index_parts(spec.fields[other], values.get(other)) for other in index.others)
                        ):
                            combined = parts + tuple(part for other in others for part in other)
                            head = [spec.name, name] + [part for part in (index.prefix, index.key) if part]
                            expected.add(_join(*head, *combined), "set", pk, None, origin)
                            if index.handle_uniqueness:
                                owners.setdefault((name + "+" + "+".join(index.others), combined), set()).add(
                                    pk
                                )
                        continue
                    key, kind, member, score = _expected_entry(spec.name, field_spec, index, pk, parts)
                    expected.add(key, kind, member, score, origin)
                if field_spec.unique and unique_index is not None:
                    owners.setdefault((name, _uniqueness_value(unique_index, parts[-1])), set()).add(pk)
    for (name, value), pks in sorted(owners.items(), key=repr):
        if len(pks) > 1:
            problems.append(
                "%s: %s.%s = %r held by pks %s" % (KIND_DUPLICATE_UNIQUE, spec.name, name, value, sorted(pks))
            )
    _compare_indexes(expected, snapshot, keys.index_keys, problems)


def _compare_indexes(
    expected: _Expected, snapshot: Snapshot, index_keys: Iterable[str], problems: List[str]
) -> None:
    """Report every actual index member not expected, and every expected member missing or wrong."""
    actual_keys = set(index_keys)
    for key in sorted(actual_keys):
        kind = snapshot.types[key]
        wanted = expected.entries.get(key, {})
        if key in expected.types and expected.types[key] != kind:
            problems.append("%s: %s is a %s, expected a %s" % (KIND_UNKNOWN, key, kind, expected.types[key]))
            continue
        content = snapshot.contents[key]
        members = content if kind == "zset" else dict.fromkeys(content)
        for member in sorted(members):
            if member not in wanted:
                problems.append("%s: %s member %r" % (KIND_STALE_ENTRY, key, member))
    for key in sorted(expected.entries):
        kind = expected.types[key]
        content = snapshot.contents.get(key) if snapshot.types.get(key) == kind else None
        members = (content if kind == "zset" else dict.fromkeys(content)) if content is not None else {}
        for member, score in sorted(expected.entries[key].items()):
            origin = expected.origin[(key, member)]
            if member not in members:
                problems.append("%s: %s member %r (%s)" % (KIND_MISSING_ENTRY, key, member, origin))
            elif score is not None and not _same_score(members[member], score):
                problems.append(
                    "%s: %s member %r has score %r, expected %r (%s)"
                    % (KIND_MISSING_ENTRY, key, member, members[member], score, origin)
                )


def _same_score(actual: float, wanted: float) -> bool:
    if math.isnan(wanted):
        return False  # Redis cannot hold a NaN score: such a value can never be indexed
    return actual == wanted


def _claim_pattern(model: type) -> "re.Pattern[str]":
    """The claim and lease keys of the sharded ``model``: ``M#h:<field>[~lease]:<value>`` (docs/sharding.rst)."""
    plain = model._name.strip("{}")
    return re.compile(r"^(\{?)%s#(\d+)(\}?):([\w+]+)(~lease)?:(.*)$" % re.escape(plain), re.S)


def _check_claims(
    client: redis.Redis, snapshot: Snapshot, models: Sequence[type], problems: List[str]
) -> Set[str]:
    """Check the uniqueness claims of the sharded models; return the claim and lease keys seen.

    A claim ``M#h:F:V`` (a string) must hold a pk whose stored ``F`` is ``V``, in the right
    ``h = crc32("F:V") % shards``; checked when the pk's shard is on this server (on a cluster it
    may live on another node, which answers ``MOVED``: the caller checks across nodes). A lease is
    a leftover once no write runs. A stored value without its claim is not looked for here.
    """
    seen: Set[str] = set()
    sharded = [
        model for model in models if getattr(model, "_limpyd_shard_models", None) and model._limpyd_claims
    ]
    for model in sharded:
        pattern = _claim_pattern(model)
        for key, kind in snapshot.types.items():
            match = pattern.match(key)
            if (
                match is None
                or match.group(1) != ("{" if match.group(3) else "")
                or match.group(4) not in model._limpyd_claims
            ):
                continue
            seen.add(key)
            name, value = match.group(4), match.group(6)
            if match.group(5):
                problems.append("%s: %s" % (KIND_LEASE, key))
                continue
            expected = zlib.crc32(("%s:%s" % (name, value)).encode("utf-8")) % model._limpyd_shards
            pk = _text(snapshot.contents.get(key)) if kind == "string" else None
            if pk is None or int(match.group(2)) != expected:
                problems.append(
                    "%s: %s (%s, %r, slot of the hash %d)" % (KIND_CLAIM, key, kind, pk, expected)
                )
                continue
            shard = model._limpyd_shard_models[zlib.crc32(pk.encode("utf-8")) % model._limpyd_shards]
            try:
                client.exists(shard._name + ":collection")
            except redis.exceptions.ResponseError:  # MOVED: the pk's shard is on another node
                continue  # the caller checks across nodes
            if "+" in name:  # a unique combination: "f1=v1, f2=v2" of the fields' stored values
                parts = [_stored_of(snapshot, model, shard, pk, part) for part in name.split("+")]
                stored = None
                if all(part is not None for part in parts):
                    stored = ", ".join("%s=%s" % (n, _text(v)) for n, v in zip(name.split("+"), parts))
            else:
                stored = _stored_of(snapshot, model, shard, pk, name)
            if isinstance(stored, (set, list, dict)):  # a member of a multi-value field (zset: dict)
                held = value in stored
            else:
                held = _text(stored) == value
            if not held:
                problems.append("%s: %s (%r holds %r)" % (KIND_CLAIM, key, pk, stored))
    return seen


def _stored_of(snapshot: Snapshot, model: type, shard: type, pk: str, name: str) -> Any:
    """Return what the snapshot holds for the field ``name`` of the instance ``pk`` of ``shard``."""
    if isinstance(model.get_class_field(name), limpyd_fields.InstanceHashField):
        return (snapshot.contents.get(_join(shard._name, pk, "hash")) or {}).get(name)
    return snapshot.contents.get(_join(shard._name, pk, name))


def check_consistency(client: redis.Redis, models: Iterable[type]) -> List[str]:
    """Return the consistency problems of the whole db (``[]`` when clean).

    ``client`` is a raw redis-py client on the db (not limpyd's); ``models`` the concrete model
    classes whose keys live there (any key belonging to none of them is reported as unknown).
    """
    models = list(models)
    specs = sorted((_model_spec(model) for model in models), key=lambda s: -len(s.name))
    snapshot = read_snapshot(client)
    problems: List[str] = []
    claims = _check_claims(client, snapshot, models, problems)
    found = _classify(snapshot, specs, problems, claims)
    for spec in specs:
        _check_model(spec, snapshot, found[spec.name], problems)
    return problems


def assert_consistent(client: redis.Redis, models: Iterable[type], context: str = "") -> None:
    """Fail with every problem found by :func:`check_consistency`."""
    problems = check_consistency(client, models)
    if problems:
        header = "inconsistent database%s: %d problem(s)" % (
            " (%s)" % context if context else "",
            len(problems),
        )
        raise AssertionError("\n  ".join([header] + problems[:60] + (["..."] if len(problems) > 60 else [])))
