"""Sharded models (``shards = N``, docs/sharding.rst): setting, layout, routing, collections, sorts, values.

Every test using ``database`` runs on the private server (``single``) and on the private cluster
(``cluster``). Keys are read with plain redis-py clients on each server (never through limpyd),
and the shared consistency checker (tests/_consistency.py) is given the shard classes and the
model: each shard is a model of its own for it, and the model's ``max_pk`` is under its own name.
"""

from __future__ import annotations

import random
import zlib

import pytest
import redis
from _cluster import CLUSTER_DISABLED
from _consistency import check_consistency
from _redis_dump import dump

from limpyd import _atomic, fields, model
from limpyd.collection import CollectionManager
from limpyd.contrib.collection import ExtendedCollectionManager
from limpyd.database import RedisDatabase
from limpyd.exceptions import DoesNotExist, ImplementationError
from limpyd.indexes import EqualIndex, NumberRangeIndex, TextRangeIndex
from limpyd.sharding import ShardedCollection, shard_index


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test using ``database`` on the single server and on the cluster (as the core modules)."""
    if "database" not in metafunc.fixturenames:
        return
    params = [pytest.param("single", id="single")]
    if not CLUSTER_DISABLED:
        params.append(pytest.param("cluster", id="cluster", marks=pytest.mark.cluster))
    metafunc.parametrize("database", params, indirect=True)


# ---------------------------------------------------------------------- helpers


def node_clients(database):
    """Return a plain redis-py client on each server of ``database`` (each primary of a cluster)."""
    if database.is_cluster:
        return [
            redis.Redis(host=node.host, port=node.port, decode_responses=True)
            for node in database.connection.get_primaries()
        ]
    settings = dict(database.connection_settings)
    return [redis.Redis(**settings, decode_responses=True)]


def full_dump(database) -> dict:
    """Return ``{key: (type, content, has_ttl)}`` of every key of every server of ``database``."""
    result = {}
    for client in node_clients(database):
        try:
            result.update(dump(client))
        finally:
            client.close()
    return result


def problems_of(database, models) -> list:
    """Return the problems the shared consistency checker finds on every server of ``database``."""
    problems = []
    for client in node_clients(database):
        try:
            problems.extend(check_consistency(client, models))
        finally:
            client.close()
    return problems


def every_model(Model) -> list:
    """Return the model and its shard classes (what the consistency checker must know)."""
    return [Model] + [Model.shard_model(number) for number in range(Model.shards)]


def tagged(database, name: str) -> str:
    """Return the ``_name`` a model named ``name`` (2.x form) has on ``database``."""
    return "{%s}" % name if database.is_cluster else name


_OMIT = object()


def define_event(database, namespace, shards=16, atomic=False, name="Event", **extra):
    """Return a new model (``shards=_OMIT``: without the setting) with indexes of every core kind."""
    attrs = {
        "database": database,
        "namespace": namespace,
        "atomic_writes": atomic,
        "kind": fields.StringField(indexable=True),
        "score": fields.InstanceHashField(indexable=True, indexes=[EqualIndex, NumberRangeIndex]),
        "label": fields.InstanceHashField(indexable=True, indexes=[TextRangeIndex]),
        "tags": fields.SetField(indexable=True),
        "note": fields.StringField(),
        "__module__": __name__,
    }
    if shards is not _OMIT:
        attrs["shards"] = shards
    attrs.update(extra)
    return type(model.RedisModel)(name, (model.RedisModel,), attrs)


# ---------------------------------------------------------------------- the setting


@pytest.mark.parametrize("value", [0, -1, 16385, True, False, 2.0, "4", None])
def test_invalid_shards_are_refused_at_class_definition(database, namespace, value):
    with pytest.raises(ImplementationError) as excinfo:
        define_event(database, namespace, shards=value, name="Refused")
    message = str(excinfo.value)
    assert "Refused.shards = %r" % (value,) in message
    assert "from 1 to 16384" in message and "docs/sharding.rst" in message
    # the failed definition left nothing registered: a fixed one can be defined
    assert define_event(database, namespace, shards=2, name="Refused").shards == 2


def test_shards_are_inherited_and_checked_on_abstract_bases(database, namespace):
    db, ns = database, namespace

    class Base(model.RedisModel):
        database = db
        namespace = ns
        abstract = True
        shards = 4

    class Event(Base):
        kind = fields.StringField(indexable=True)

    class Unsharded(Event):  # a subclass may stop sharding
        shards = 1

    assert Unsharded._limpyd_shard_models is None and type(Unsharded(kind="a")) is Unsharded
    assert Event.shards == 4 and Event._limpyd_shards == 4
    assert [Event.shard_model(k)._limpyd_shard for k in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ImplementationError, match=r"AbstractBad.shards = 0"):

        class AbstractBad(model.RedisModel):
            abstract = True
            shards = 0


def test_one_shard_changes_nothing(database, namespace):
    """``shards = 1`` (or no setting) makes no shard class, no new key, the same keys and values."""
    plain = define_event(database, namespace + "a", shards=_OMIT, name="Event")
    one = define_event(database, namespace + "b", shards=1, name="Event")
    for Model in (plain, one):
        assert Model._limpyd_shard_models is None and Model.__subclasses__() == []
        assert Model.__new__ is object.__new__
        assert Model.shard_model(0) is Model and Model.shard_of("17") == 0
    assert sorted(database._models) == sorted([plain._name, one._name])

    for Model in (plain, one):
        random.seed(3)
        for i in range(20):
            instance = Model(kind="k%d" % (i % 3), score=str(i), label="l%d" % i, tags=["a", "t%d" % i])
            assert type(instance) is Model and instance.shard == 0
        Model(5).kind.set("changed")
        Model(6).delete()
    dumped = full_dump(database)
    layouts = []
    for Model in (plain, one):
        prefix = Model._name
        layouts.append(
            {key.replace(prefix, "M"): value for key, value in dumped.items() if key.startswith(prefix + ":")}
        )
    assert layouts[0] == layouts[1] and len(layouts[0]) > 40
    assert not any("@" in key for key in dumped)


def test_a_field_named_shards_wins(database, namespace):
    Model = define_event(database, namespace, shards=fields.StringField(), name="Event")
    assert Model._limpyd_shards == 1 and Model._limpyd_shard_models is None
    instance = Model(kind="a", shards="3")
    assert instance.shards.get() == "3"


# ---------------------------------------------------------------------- shards and layout


def test_pk_to_shard_is_stable():
    """The shard of a pk is crc32(utf-8) % shards: a change of the hash moves every stored instance."""
    table = {"1": 55, "2": 13, "3": 27, "10": 33, "42": 8, "1000": 23, "user-7": 33, "é": 62}
    assert {pk: shard_index(pk, 64) for pk in table} == table
    assert all(shard_index(pk, 64) == zlib.crc32(pk.encode("utf-8")) % 64 for pk in table)


def test_shard_classes_and_names(database, namespace):
    Event = define_event(database, namespace, shards=64)
    assert Event._name == tagged(database, "%s:event" % namespace)
    for number in (0, 5, 63):
        shard = Event.shard_model(number)
        assert issubclass(shard, Event) and shard is not Event
        assert shard._name == tagged(database, "%s:event@%d" % (namespace, number))
        assert database._models[shard._name] is shard
        assert shard.__name__ == "Event" and shard.shard_model(number) is shard
    assert Event.shard_of(42) == Event.shard_of("42") == Event.shard_of(b"42") == 8
    with pytest.raises(IndexError):
        Event.shard_model(64)


def test_key_layout(database, namespace):
    """An instance's keys and index entries are under its shard's name only; the model keeps max_pk."""
    Event = define_event(database, namespace, shards=16)
    created = [Event(kind="k%d" % (i % 2), score=str(i), label="x%d" % i, tags=["t"]) for i in range(40)]
    dumped = full_dump(database)
    own = tagged(database, "%s:event" % namespace)
    assert {key for key in dumped if key.startswith(own + ":")} == {own + ":max_pk", own + ":__shards__"}
    assert dumped[own + ":max_pk"][1] == "40" and dumped[own + ":__shards__"][1] == "16"
    shard_names = {tagged(database, "%s:event@%d" % (namespace, k)) for k in range(16)}
    for instance in created:
        pk = instance.pk.get()
        name = tagged(database, "%s:event@%d" % (namespace, Event.shard_of(pk)))
        assert type(instance)._name == name and instance.shard == shard_index(pk, 16)
        for key in ("%s:%s:kind" % (name, pk), "%s:%s:hash" % (name, pk), "%s:%s:tags" % (name, pk)):
            assert key in dumped
        assert pk in dumped["%s:collection" % name][1]
    for key, (kind, content, has_ttl) in dumped.items():
        if key in (own + ":max_pk", own + ":__shards__"):
            continue
        prefix = key.split(":", 2)[0] + ":" + key.split(":", 2)[1]
        assert prefix in shard_names, key
        assert not has_ttl
        members = content if kind == "set" else [m for m, _ in content] if kind == "zset" else []
        for member in members:  # index entries and collection members: pks of this shard only
            pk = member.rsplit(":", 1)[-1] if kind == "zset" and "TEXT-RANGE" in member else member
            if key.endswith(":tags"):
                continue
            assert tagged(database, "%s:event@%d" % (namespace, shard_index(pk, 16))) == prefix, key
    if database.is_cluster:  # each shard is a slot of its own
        client = database.connection
        assert len({client.keyslot(name) for name in shard_names}) == 16
    assert problems_of(database, every_model(Event)) == []


def test_use_database_moves_the_shards(database, namespace):
    Event = define_event(database, namespace, shards=4)
    other = RedisDatabase(**database.connection_settings)
    moved = Event.use_database(other)
    assert set(moved) == set(every_model(Event)) and all(m.database is other for m in moved)
    assert sorted(other._models) == sorted(m._name for m in every_model(Event))
    assert not [name for name in database._models if name.startswith(Event._name.rstrip("}"))]
    assert Event(Event(kind="a").pk.get()).database is other


def test_connect_switch_renames_the_shards(redis_settings, redis_cluster, namespace):
    """A database switched between a single server and a cluster renames the shard models too."""
    db = RedisDatabase(**redis_settings)
    Event = define_event(db, namespace, shards=4)
    assert Event.shard_model(2)._name == "%s:event@2" % namespace
    db.connect(**redis_cluster.settings)
    try:
        assert Event._name == "{%s:event}" % namespace
        assert [Event.shard_model(k)._name for k in range(4)] == [
            "{%s:event@%d}" % (namespace, k) for k in range(4)
        ]
        assert sorted(db._models) == sorted([Event._name] + [Event.shard_model(k)._name for k in range(4)])
        instance = Event(kind="a")
        assert Event(instance.pk.get()).kind.get() == "a"
        assert list(Event.collection(kind="a")) == [instance.pk.get()]
        db.connect(**redis_settings)
        assert Event.shard_model(3)._name == "%s:event@3" % namespace
    finally:
        redis_cluster.flushall()
        redis.Redis(**redis_settings).flushall()


# ---------------------------------------------------------------------- instances


@pytest.mark.parametrize("atomic", [False, True], ids=["default", "atomic"])
def test_create_load_update_delete(database, namespace, atomic):
    Event = define_event(database, namespace, shards=8, atomic=atomic)
    first = Event(kind="login", score="3", label="b", tags=["x", "y"], note="n")
    assert isinstance(first, Event) and type(first) is Event.shard_model(first.shard)
    assert first.pk.get() == "1" and first.shard == shard_index("1", 8)
    instances = [first] + [Event(kind="k%d" % i, score=str(i)) for i in range(2, 12)]
    assert [i.pk.get() for i in instances] == [str(n) for n in range(1, 12)]
    assert len({i.shard for i in instances}) > 3
    max_pk = database.connection.get(Event.make_key(Event._name, "max_pk"))
    assert max_pk == "11"
    for shard in range(8):  # no shard has a counter of its own
        assert database.connection.get(Event.make_key(Event.shard_model(shard)._name, "max_pk")) is None

    loaded = Event(1)
    assert type(loaded) is type(first) and loaded == first
    assert loaded.kind.get() == "login" and loaded.hmget("score", "label") == ["3", "b"]
    assert loaded.tags.smembers() == {"x", "y"}
    lazy = Event.lazy_connect("1")
    assert type(lazy) is type(first) and not lazy.connected and lazy.note.get() == "n"
    assert Event.exists(pk=1) and Event.exists(pk="11") and not Event.exists(pk=12)
    assert Event.exists(kind="k5") and not Event.exists(kind="nope")
    assert Event.get(kind="login") == first and Event.get(pk=4).pk.get() == "4"
    with pytest.raises(DoesNotExist):
        Event(12)
    assert list(Event.from_pks([1, 99, 3])) == [first, Event(3)]

    loaded.kind.set("logout")
    loaded.hmset(score="77", label="c")
    loaded.tags.srem("x")
    assert list(Event.collection(kind="logout")) == ["1"]
    assert list(Event.collection(kind="login")) == []
    assert list(Event.collection(score=77)) == ["1"]
    assert list(Event.collection(tags="y")) == ["1"] and list(Event.collection(tags="x")) == []
    lazy_other = Event.lazy_connect(5)
    lazy_other.kind.set("via-lazy")
    assert Event(5).kind.get() == "via-lazy"
    assert problems_of(database, every_model(Event)) == []

    loaded.delete()
    Event(7).delete()
    assert not Event.exists(pk=1) and not Event.exists(pk=7)
    assert list(Event.collection(kind="logout")) == [] and len(Event.collection()) == 9
    dumped = full_dump(database)
    assert not [key for key in dumped if ":1:" in key or ":7:" in key]
    assert problems_of(database, every_model(Event)) == []
    # a new instance continues the model's counter
    assert Event(kind="again").pk.get() == "12"


@pytest.mark.parametrize("atomic", [False, True], ids=["default", "atomic"])
def test_creation_commands(database, namespace, atomic, count_commands):
    """A creation sends the commands of an unsharded one (atomic: the INCRBY comes out of the script)."""
    sharded = define_event(database, namespace + "s", shards=2, atomic=atomic)
    single = define_event(database, namespace + "u", shards=_OMIT, atomic=atomic)
    for Model in (sharded, single):  # loads the scripts of both shards (pks 1 to 4 are in both)
        assert {Model(kind="warm").shard for _ in range(4)} == ({0, 1} if Model is sharded else {0})
    values = {"kind": "a", "score": "3", "label": "b", "tags": ["t"], "note": "n"}
    counts = []
    for Model in (sharded, single):
        with count_commands() as counter:
            Model(**values)
        counts.append(counter.count)
    assert counts[0] == counts[1] + (1 if atomic else 0), counts
    if atomic:  # each shard has its own script: its schema holds the shard's name
        scripts = {_atomic.script_of(sharded.shard_model(k))["lua"] for k in range(2)}
        assert len(scripts) == 2


@pytest.mark.parametrize("atomic", [False, True], ids=["default", "atomic"])
def test_given_pks_pick_the_shard(database, namespace, atomic):
    Event = define_event(database, namespace, shards=16, atomic=atomic, id=fields.PKField())
    for pk in ("user-7", "é", "42"):
        instance = Event(id=pk, kind="a")
        assert instance.shard == shard_index(pk, 16)
        assert type(instance)._name == tagged(database, "%s:event@%d" % (namespace, instance.shard))
    assert sorted(Event.collection(kind="a")) == sorted(["user-7", "é", "42"])
    assert Event("é").kind.get() == "a" and Event.exists(id="user-7")
    # pks that are not numbers: the unsorted and "nosort" orders put the shards one after the other
    assert Event.exists(kind="a") and Event.get(kind="a", id="42").pk.get() == "42"
    assert sorted(Event.collection(kind="a").sort(by="nosort")[:10]) == sorted(["user-7", "é", "42"])
    assert Event.collection().sort(by="nosort")[1] in ("user-7", "é", "42")
    with pytest.raises(Exception, match="already exists"):
        Event(id="42", kind="b")
    with pytest.raises(ValueError, match="must fill it"):
        Event(kind="b")
    wrong = Event.shard_model((shard_index("x1", 16) + 1) % 16)
    with pytest.raises(ImplementationError, match="belongs to the shard"):
        wrong(id="x1", kind="b")
    assert database.connection.get(Event.make_key(Event._name, "max_pk")) is None
    assert problems_of(database, every_model(Event)) == []


def test_refused_creations_allocate_nothing(database, namespace):
    Event = define_event(database, namespace, shards=4)
    with pytest.raises(ValueError, match="not a valid field name"):
        Event(kind="a", unknown="b")
    with pytest.raises(ValueError, match="auto-increment"):
        Event(pk=3, kind="a")
    with pytest.raises(ImplementationError, match="without a pk nor values"):
        Event()
    with pytest.raises(ImplementationError, match="cannot allocate a pk"):
        Event.shard_model(1)(kind="a")
    assert full_dump(database) == {}
    assert Event(kind="a").pk.get() == "1"


# ---------------------------------------------------------------------- collections


def _random_value(rng, kind):
    if kind == "kind":
        return rng.choice(["a", "b", "c", "d", None])
    if kind == "score":
        return rng.choice([None, str(rng.randint(-20, 20)), "%.1f" % rng.uniform(-5, 5)])
    if kind == "label":
        return rng.choice([None, "".join(rng.choice("abcde") for _ in range(rng.randint(1, 3)))])
    return rng.sample(["t1", "t2", "t3", "t4"], rng.randint(0, 2))


def _random_filters(rng):
    filters = {}
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        choice = rng.randrange(9)
        if choice == 0:
            filters["kind"] = rng.choice("abcdz")
        elif choice == 1:
            filters["kind__in"] = rng.sample(list("abcdz"), rng.randint(0, 3))
        elif choice == 2:
            filters["score__%s" % rng.choice(["gt", "gte", "lt", "lte"])] = rng.randint(-20, 20)
        elif choice == 3:
            filters["score"] = str(rng.randint(-20, 20))
        elif choice == 4:
            filters["label__%s" % rng.choice(["gt", "gte", "lt", "lte", "startswith"])] = rng.choice(
                ["a", "b", "cd", "e"]
            )
        elif choice == 5:
            filters["tags"] = rng.choice(["t1", "t2", "t3", "t4", "t9"])
        elif choice == 6:
            filters["score__in"] = [str(rng.randint(-20, 20)) for _ in range(3)]
        elif choice == 7:
            filters["pk"] = rng.randint(1, 320)
        else:
            filters["label"] = rng.choice(["a", "b", "ab", "e"])
    return filters


def _random_slice(rng, size):
    bound = size + 5

    def part():
        return rng.choice([None, rng.randint(-bound, bound), rng.randint(0, 10), -rng.randint(1, 10)])

    step = rng.choice([None, None, None, 1, 2, 3, -1, -2])
    return slice(part(), part(), step)


def _outcome(function):
    """Return ``("ok", value)`` or ``("error", type)`` of ``function()``."""
    try:
        return ("ok", function())
    except (IndexError, ValueError, redis.ResponseError) as error:
        return ("error", type(error))


@pytest.mark.slow
def test_randomized_equivalence_with_one_shard(database, namespace):
    """The same random data in a 16-shard and a 1-shard model: random queries give the same results."""
    sharded = define_event(database, namespace + "s", shards=16)
    single = define_event(database, namespace + "u", shards=1)
    rng = random.Random(20261205)
    rows = []
    for _ in range(300):
        row = {name: _random_value(rng, name) for name in ("kind", "score", "label", "tags")}
        rows.append({name: value for name, value in row.items() if value is not None})
    for row in rows:
        a, b = sharded(**row), single(**row)
        assert a.pk.get() == b.pk.get()
    for pk in rng.sample(range(1, 301), 30):  # deletions and updates, identical on both
        for Model in (sharded, single):
            Model(pk).delete()
    for pk in rng.sample([pk for pk in range(1, 301) if single.exists(pk=pk)], 30):
        value = rng.choice("abcd")
        for Model in (sharded, single):
            Model(pk).kind.set(value)
    assert problems_of(database, every_model(sharded) + [single]) == []

    for round_number in range(90):
        filters = _random_filters(rng)
        context = "round %d filters %r" % (round_number, filters)
        collections = [Model.collection(**filters) for Model in (sharded, single)]
        assert isinstance(collections[0], ShardedCollection)
        size = len(collections[1])
        assert len(collections[0]) == size, context
        assert sorted(collections[0]) == sorted(collections[1]), context
        order = rng.choice(
            [None, {}, {"by": "pk"}, {"by": "-pk"}, {"desc": True}, {"by": "pk", "desc": True}]
        )
        if order is not None:
            collections = [collection.sort(**order) for collection in collections]
            assert list(collections[0]) == list(collections[1]), context
        # a clone forgets the results read above: the slices below are asked to Redis (an unsorted
        # collection's cached results are in the set's order, its windows in numeric pk order)
        collections = [collection.clone() for collection in collections]
        if rng.random() < 0.3:
            lazy = rng.random() < 0.5
            collections = [collection.instances(lazy=lazy) for collection in collections]
        for _ in range(4):
            if rng.random() < 0.7:
                the_slice = _random_slice(rng, size)
                results = [_outcome(lambda c=c: [_pk(x) for x in c[the_slice]]) for c in collections]
                assert results[0] == results[1], "%s order %r slice %r" % (context, order, the_slice)
            else:
                index = rng.randint(-size - 2, size + 2)
                results = [_outcome(lambda c=c: _pk(c[index])) for c in collections]
                assert results[0] == results[1], "%s order %r index %r" % (context, order, index)
        fresh = [Model.collection(**filters) for Model in (sharded, single)]
        if order is not None:
            fresh = [collection.sort(**order) for collection in fresh]
        else:
            fresh = [collection.sort() for collection in fresh]
        assert [_pk(x) for x in fresh[0].instances()] == [_pk(x) for x in fresh[1].instances()], context
        # results are cached as the core caches them: slices of an iterated collection
        list(fresh[0]), list(fresh[1])
        assert list(fresh[0][1:4]) == list(fresh[1][1:4]), context
    # unsorted collections: the numeric order of the pks (the order of their windows)
    assert list(sharded.collection()) == sorted(single.collection(), key=int)
    assert problems_of(database, every_model(sharded) + [single]) == []


def _pk(value):
    return value.pk.get() if isinstance(value, model.RedisModel) else value


#: numeric text as SORT reads it (strtod): ties, negatives, floats, -0, hexadecimal, a leading space
_RANKS = ["3", "-1", "0", "-0", "0.0", "1.5", "-2.25", "10", "2", "1e1", "0x10", " 4", "-7"]
#: text for ALPHA: ties, an empty value, case, UTF-8 (byte order: "Z" < "a" < "é" < "ż" < "Ａ" < "😀")
_NOTES = ["", "a", "b", "ab", "Z", "e", "é", "éa", "żółw", "a b", "ß", "\uff21", "\U0001f600"]


def _sort_row(rng):
    row = {name: _random_value(rng, name) for name in ("kind", "score", "label", "tags")}
    row["rank"] = rng.choice([None, None] + _RANKS)
    row["note"] = rng.choice([None] + _NOTES)
    return {name: value for name, value in row.items() if value is not None}


def _random_sort(rng):
    """Return sort() arguments: by a field (numeric or ALPHA, ascending or not), by pk, or nothing."""
    choice = rng.random()
    if choice < 0.1:
        return None
    if choice < 0.2:
        return rng.choice([{"by": "pk"}, {"by": "-pk"}, {"alpha": True}, {"by": "pk", "desc": True}])
    field = rng.choice(["score", "rank", "rank", "label", "note", "note", "kind"])
    alpha = field in ("label", "note", "kind") and rng.random() < 0.9 or rng.random() < 0.2
    order = {"by": ("-" if rng.random() < 0.3 else "") + field}
    if alpha:
        order["alpha"] = True
    if rng.random() < 0.2:
        order["desc"] = True
    return order


def _random_result_type(rng):
    """Return ``(method, args, kwargs)`` of the result type: pks, instances, values(), values_list()."""
    names = ["pk", "kind", "score", "label", "rank", "note"]
    choice = rng.randrange(6)
    if choice == 0:
        return None, (), {}
    if choice == 1:
        return "instances", (), {"lazy": rng.random() < 0.5}
    if choice == 2:
        return "values", tuple(rng.sample(names, rng.randint(0, 3))), {}
    if choice == 3:
        return "values_list", tuple(rng.sample(names, rng.randint(0, 3))), {}
    return "values_list", (rng.choice(names),), {"flat": True}


def _entry_pk(entry):
    """Return the pk of a result: a pk, an instance, or a row of values holding the pk first."""
    if isinstance(entry, dict):
        return entry["pk"]
    if isinstance(entry, tuple):
        return entry[0]
    return _pk(entry)


def _tie_view(entries, value_of, members=True):
    """Return ``entries`` up to the order of equal sort values inside a window (``SORT ALPHA`` ties).

    On a single server, ``SORT ... ALPHA LIMIT`` orders equal values as its partial sort leaves
    them (1-shard and sharded alike): keep the sequence of values, the pks of each run of equal
    values as a set, and only the size of the runs touching the window's edges (their members
    depend on that order), or of every run (``members`` false: a slice step other than 1 picks
    entries by their position in the runs).
    """
    pks = [_entry_pk(entry) for entry in entries]
    values = [value_of(pk) for pk in pks]
    runs = []
    start = 0
    for position in range(1, len(pks) + 1):
        if position == len(pks) or values[position] != values[start]:
            edge = start == 0 or position == len(pks) or not members
            runs.append((values[start], position - start, None if edge else sorted(pks[start:position])))
            start = position
    return runs


@pytest.mark.slow
def test_randomized_sorts_and_values_equivalence_with_one_shard(database, namespace):
    """Sorts by field (numeric, ALPHA, descending), slices, values(): 16 shards give what 1 shard gives.

    Numeric ties are broken by the pk's bytes and ALPHA ties keep the numeric pk order (the order
    the server reads an intset in) in both models, so results are compared exactly, except the
    windows of an ALPHA sort on a single server, whose ties the server's partial sort leaves in no
    defined order (compared by ``_tie_view``, asking values with the pk first).
    """
    from limpyd.contrib.collection import ExtendedCollectionManager

    extra = {"rank": fields.StringField(), "note": fields.StringField()}
    sharded = define_event(database, namespace + "s", shards=16, **extra)
    single = define_event(database, namespace + "u", shards=1, **extra)
    rng = random.Random(20261206)
    rows = [_sort_row(rng) for _ in range(260)]
    for row in rows:
        assert sharded(**row).pk.get() == single(**row).pk.get()
    for pk in rng.sample(range(1, 261), 20):
        for Model in (sharded, single):
            Model(pk).delete()
    for pk in rng.sample([pk for pk in range(1, 261) if single.exists(pk=pk)], 30):
        rank = rng.choice(_RANKS)
        for Model in (sharded, single):
            Model(pk).rank.set(rank)
    stored = {}
    for pk in single.collection():
        instance = single(pk)
        stored[pk] = dict(zip(("label", "score"), instance.hmget("label", "score")))
        stored[pk].update(note=instance.note.get(), kind=instance.kind.get(), rank=instance.rank.get())
    outcomes = set()

    def unchanged(entries, members=True):
        return entries

    for round_number in range(130):
        filters = _random_filters(rng)
        order = _random_sort(rng)
        method, args, kwargs = _random_result_type(rng)
        alpha_field = order is not None and order.get("alpha") and order.get("by", "pk").lstrip("-") != "pk"
        windows_by_ties = alpha_field and not database.is_cluster
        if windows_by_ties and method in ("values", "values_list"):
            args, kwargs = ("pk",) + tuple(name for name in args if name != "pk"), {}
        context = "round %d filters %r sort %r %s%r%r" % (round_number, filters, order, method, args, kwargs)
        reference = single.collection(
            manager=ExtendedCollectionManager if method and "values" in method else None
        )
        collections = [sharded.collection(**filters), reference(**filters)]
        if order is not None:
            collections = [collection.sort(**order) for collection in collections]
        if method is not None:
            collections = [getattr(collection, method)(*args, **kwargs) for collection in collections]
        assert isinstance(collections[0], ShardedCollection)
        size = len(collections[1])
        assert len(collections[0]) == size, context
        full = [_outcome(lambda c=c: [_pk(x) for x in c]) for c in collections]
        if order is None and method in (None, "instances"):  # SMEMBERS: no order (windows have one)
            full = [(status, sorted(value) if status == "ok" else value) for status, value in full]
        assert full[0] == full[1], context
        outcomes.add(full[1][0] if full[1][0] == "error" else "ok" if size > 1 else "small")
        view = unchanged
        if windows_by_ties:
            field = order["by"].lstrip("-")

            def view(entries, field=field, members=True):
                return _tie_view(entries, lambda pk: stored[pk][field], members)

        for _ in range(5):
            collections = [collection.clone() for collection in collections]  # asked to Redis again
            if rng.random() < 0.75:
                the_slice = _random_slice(rng, size)
                members = the_slice.step in (None, 1, -1)
                results = [
                    _outcome(lambda c=c: view([_pk(x) for x in c[the_slice]], members=members))
                    for c in collections
                ]
                assert results[0] == results[1], "%s slice %r" % (context, the_slice)
            else:
                index = rng.randint(-size - 2, size + 2)
                results = [_outcome(lambda c=c: view([_pk(c[index])])) for c in collections]
                assert results[0] == results[1], "%s index %r" % (context, index)
    # the rounds met errors (a numeric sort of text), empty and larger results
    assert outcomes == {"ok", "small", "error"}


def test_sort_by_field_and_values(database, namespace):
    """The merge orders as SORT does: numbers (missing: 0) with ties by pk bytes, ALPHA by bytes
    with missing values first and equal values in pk order; values() come in that order."""
    from limpyd.contrib.collection import ExtendedCollectionManager

    extra = {"rank": fields.StringField(), "note": fields.StringField()}
    sharded = define_event(database, namespace + "s", shards=8, **extra)
    single = define_event(database, namespace + "u", shards=1, **extra)
    data = [  # rank, note of the pks 1 to 12
        ("2", "b"), (None, "a"), ("0", None), ("-1.5", "é"), ("2", "b"), ("0x10", "Z"),
        (None, "b"), ("0.0", ""), ("2", None), ("-0", "a"), ("1e1", "b"), ("2.0", "ab"),
    ]  # fmt: skip
    for rank, note in data:
        row = {"kind": "k", "rank": rank, "note": note}
        for Model in (sharded, single):
            Model(**{name: value for name, value in row.items() if value is not None})
    assert len({sharded(pk).shard for pk in range(1, 13)}) > 4
    numeric = ["4", "10", "2", "3", "7", "8", "1", "12", "5", "9", "11", "6"]
    alpha = ["3", "9", "8", "6", "2", "10", "12", "1", "5", "7", "11", "4"]
    alpha_desc = ["4", "1", "5", "7", "11", "12", "2", "10", "6", "8", "3", "9"]
    for Model in (sharded, single):
        collection = Model.collection(kind="k")
        assert list(collection.sort(by="rank")) == numeric
        assert list(collection.sort(by="-rank")) == numeric[::-1]
        assert list(collection.sort(by="rank", desc=True)) == numeric[::-1]
        assert list(collection.sort(by="note", alpha=True)) == alpha
        assert list(collection.sort(by="-note", alpha=True)) == alpha_desc
        assert list(collection.sort(alpha=True)) == sorted(numeric)  # the pks' bytes
        assert list(collection.sort(by="rank", alpha=True))[:4] == ["2", "7", "10", "4"]  # "-0" < "-1.5"
        with pytest.raises(redis.ResponseError, match="converted into double"):
            list(collection.sort(by="note"))
        sorted_by_rank = collection.sort(by="rank")
        assert sorted_by_rank[2:5] == numeric[2:5] and sorted_by_rank[-3:] == numeric[-3:]
        assert sorted_by_rank[-1] == "6" and sorted_by_rank[::-5] == numeric[::-5]
        assert [i.pk.get() for i in sorted_by_rank.instances()[1:3]] == numeric[1:3]
    # a window read from the end takes the last values as SORT ... DESC does: equal values in pk order
    by_note = sharded.collection().sort(by="note", alpha=True)
    assert by_note[-3:] == ["5", "1", "4"] and by_note[-1] == "4" and by_note[:3] == alpha[:3]
    if database.is_cluster:  # a stable sort: single's windows are defined too
        assert single.collection().sort(by="note", alpha=True)[-3:] == ["5", "1", "4"]

    values = sharded.collection().sort(by="-rank").values("pk", "note")
    assert isinstance(values, ShardedCollection)
    expected = [{"pk": "6", "note": "Z"}, {"pk": "11", "note": "b"}, {"pk": "9", "note": None}]
    assert values[:3] == expected and list(values)[:3] == expected and len(values) == 12
    reference = single.collection(manager=ExtendedCollectionManager)
    checks = [
        lambda c: c.values(),
        lambda c: c.values_list(),
        lambda c: c.values_list("note", flat=True),
        lambda c: c.values_list("rank", "pk"),
        lambda c: c.sort(by="note", alpha=True).values_list("pk", "note"),
        lambda c: c.values("rank").sort(by="rank", desc=True),
        lambda c: c(kind="k").values_list("note", flat=True).sort(by="-rank"),
    ]
    for number, check in enumerate(checks):
        assert list(check(sharded.collection())) == list(check(reference)), number
        if number == 4 and not database.is_cluster:  # ALPHA ties in a LIMIT: no order on a server
            assert check(sharded.collection())[2:7] == [
                ("8", ""),
                ("6", "Z"),
                ("2", "a"),
                ("10", "a"),
                ("12", "ab"),
            ]
            continue
        assert check(sharded.collection())[2:7] == check(reference)[2:7], number
        assert check(sharded.collection())[-4:] == check(reference)[-4:], number
    # a pk filter asks its shard only, as the core does (SORT ... BY nosort GET)
    assert list(sharded.collection(pk=4).values()) == list(reference(pk=4).values())
    assert sharded.collection(pk=4).values_list("note", flat=True)[0] == "é"
    # instances() and primary_keys() cancel values(); values() cancels instances()
    assert list(values.primary_keys())[:2] == ["6", "11"]
    assert [i.pk.get() for i in values.instances()][:2] == ["6", "11"]
    assert values.instances().values("pk")[0] == {"pk": "6"}
    assert repr(sharded.collection(kind="none").values()) == "<ShardedCollection []>"


def test_collection_commands_stay_in_each_shard(database, namespace):
    """A query builds its temporary keys in each shard's slot and leaves none behind."""
    Event = define_event(database, namespace, shards=4)
    for i in range(30):
        Event(kind="a" if i % 2 else "b", score=str(i), tags=["t%d" % (i % 3)])
    collection = Event.collection(kind="a", tags="t1", score__gte=5)
    assert len(collection) == len([i for i in range(30) if i % 2 and i % 3 == 1 and i >= 5])
    assert list(collection) == [str(i + 1) for i in range(30) if i % 2 and i % 3 == 1 and i >= 5]
    assert collection[-2:] == list(collection)[-2:]
    other = Event.collection(kind="a", tags="t2")
    assert len(other) == 5 and other[-1] == "30"  # the key len() kept is read, then deleted
    assert not [key for key in full_dump(database) if "__collection__" in key]
    assert other[0] == "6" and other[-3:-1] == ["18", "24"]
    assert not [key for key in full_dump(database) if "__collection__" in key]
    nosort = Event.collection(kind="a").sort(by="nosort")
    assert sorted(nosort[:100]) == sorted(Event.collection(kind="a")) and len(nosort[2:5]) == 3
    assert repr(Event.collection(kind="zz")) == "<ShardedCollection []>"
    assert "... (" in repr(Event.collection()) or len(Event.collection()) <= 20
    pks = Event.collection(pk=3)
    assert (
        list(pks) == ["3"]
        and len(pks) == 1
        and pks[0] == "3"
        and list(pks.instances())[0].shard == Event.shard_of(3)
    )
    assert list(Event.collection(pk=3, kind="a")) == [] and list(Event.collection(pk=3)(pk=4)) == []


# ---------------------------------------------------------------------- not supported yet


def _assert_unsupported(excinfo, feature, model_name="Event"):
    message = str(excinfo.value)
    assert feature in message and model_name in message and "docs/sharding.rst" in message, message


@pytest.mark.parametrize(
    "extra, feature",
    [
        # unique SetField, ListField, SortedSetField: claimed, tests/test_sharding_unique_members.py
        (  # ExtendedCollectionManager is supported: tests/test_sharding_extended.py
            {"collection_manager": type("OtherManager", (CollectionManager,), {})},
            "the collection manager OtherManager",
        ),
    ],
    ids=["other-manager"],
)
def test_unsupported_definitions(database, namespace, extra, feature):
    with pytest.raises(ImplementationError) as excinfo:
        define_event(database, namespace, shards=4, **extra)
    _assert_unsupported(excinfo, feature)
    # nothing stays registered: the same model without the feature can be defined
    assert define_event(database, namespace, shards=4)._limpyd_shards == 4


def test_unsupported_creation_in_a_pipeline(database, namespace):
    from limpyd.contrib.database import PipelineDatabase

    Event = define_event(PipelineDatabase(**database.connection_settings), namespace, shards=4)
    # transaction=False: MULTI on a cluster needs redis-py >= 6.1, the oldest CI leg has 4.6
    with Event.database.pipeline(transaction=False) as pipeline:
        with pytest.raises(ImplementationError) as excinfo:
            Event(kind="a")
        pipeline.execute()
    _assert_unsupported(excinfo, "inside a pipeline")
    assert full_dump(database) == {}


def test_unsupported_unique_multi_field_index(database, namespace):
    from limpyd.contrib.indexes import EqualIndexWith

    with pytest.raises(ImplementationError) as excinfo:
        define_event(
            database,
            namespace,
            shards=4,
            first=fields.StringField(
                indexable=True, indexes=[EqualIndexWith.configure(other_fields=["second"], unique=True)]
            ),
            second=fields.SetField(indexable=True),
        )
    _assert_unsupported(excinfo, "unique multi-field index EqualIndexWith with the multi-value field second")


def test_unsupported_operations(database, namespace):
    from limpyd import integrity

    Event = define_event(database, namespace, shards=4)
    Event(kind="a", score="1")
    collection = Event.collection(kind="a")
    checks = [
        (lambda: collection.sort(by="%s:*:kind" % Event._name), "sorting by a pattern"),
        (lambda: collection.sort(by="-tags"), "sort(by='-tags') (sorting by a multi-value field)"),
        (lambda: collection.sort(by="score", start=0, num=2), "sort(num=...)"),
        (lambda: collection.sort(get="#"), "sort(get=...)"),
        (lambda: collection.sort(store="key"), "sort(store=...)"),
        (lambda: collection.values("kind").sort(by="kind", groups=True), "sort(groups=...)"),
        (lambda: collection.intersect(["1"]), "intersect"),
        (lambda: collection.values().store(), "store"),
        (lambda: Event.collection(manager=ExtendedCollectionManager), "extended collections"),
    ]
    for function, feature in checks:
        with pytest.raises(ImplementationError) as excinfo:
            function()
        _assert_unsupported(excinfo, feature)
    with pytest.raises(AttributeError):
        collection.no_such_method
    # unknown keywords and fields are refused as the core refuses them
    with pytest.raises(TypeError):
        collection.sort(unknown=1)
    with pytest.raises(ValueError):
        collection.sort(by="missing")
    with pytest.raises(AttributeError):
        Event.collection(missing=1)
    # values() refuses what ExtendedCollectionManager refuses
    with pytest.raises(ValueError, match="not a valid field"):
        collection.values("missing")
    with pytest.raises(ValueError, match="MultiValuesField"):
        collection.values_list("tags")
    with pytest.raises(ValueError, match="flat"):
        collection.values_list("kind", "score", flat=True)
    with pytest.raises(ValueError, match="Unexpected keyword"):
        collection.values_list("kind", other=True)
    assert list(Event.collection(kind="a")) == ["1"]
    # the integrity tools work on sharded models and their shard classes (tests/test_sharding_integrity.py)
    assert Event.audit().clean and integrity.audit(Event.shard_model(1)).clean
    assert Event.repair().actions == [] and integrity.repair(Event.shard_model(0)).actions == []
    assert Event.rebuild_indexes()["shards"] == 4 and integrity.rebuild_indexes(Event)["instances"] == 1


def run_workers(worker, database, namespace, atomic, count):
    """Run ``worker(settings, namespace, atomic, number, queue)`` in ``count`` forked processes at
    once; return what each put on the queue (each process must exit cleanly)."""
    import multiprocessing

    settings = dict(database.connection_settings)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes = [
        context.Process(target=worker, args=(settings, namespace, atomic, number, queue))
        for number in range(count)
    ]
    for process in processes:
        process.start()
    results = [queue.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return results
