"""Atomic writes: one script call per operation, the same bytes as the default write path.

Each scenario runs the same operations on two models that differ only by namespace and by
``atomic_writes``; the two dumps, with the namespace taken out of the key names, must be equal.
"""

from __future__ import annotations

import pytest
import redis
from _consistency import check_consistency
from _redis_dump import command_log, dump, raw_client, warm_model_script, warm_scripts

from limpyd import fields, model
from limpyd.contrib.related import FKInstanceHashField, M2MSetField, RelatedModel
from limpyd.exceptions import DoesNotExist, ImplementationError, UniquenessError
from limpyd.indexes import EqualIndex, NumberRangeIndex, TextRangeIndex


def define(database, namespace, atomic, name="Item"):
    """The model of the scenarios: every field type, every core index type, a default, a prefix."""
    attrs = {
        "database": database,
        "namespace": namespace,
        "atomic_writes": atomic,
        "code": fields.InstanceHashField(unique=True),
        "name": fields.StringField(indexable=True),
        "text": fields.StringField(indexable=True, indexes=[TextRangeIndex]),
        "size": fields.InstanceHashField(indexable=True, indexes=[NumberRangeIndex]),
        "count": fields.StringField(indexable=True, indexes=[EqualIndex, NumberRangeIndex]),
        "label": fields.StringField(indexable=True, indexes=[EqualIndex.configure(prefix="lower")]),
        "tags": fields.SetField(indexable=True),
        "items": fields.ListField(indexable=True),
        "scores": fields.SortedSetField(indexable=True),
        "h": fields.HashField(indexable=True),
        "note": fields.InstanceHashField(),
        "plain": fields.StringField(),
        "d": fields.StringField(indexable=True, default="dflt"),
        "uset": fields.SetField(unique=True),
    }
    return type(name, (model.RedisModel,), attrs)


def scenario(Item):
    """Every modifier of every field type, on indexable fields."""
    a = Item(
        code="a",
        name="n1",
        text="hello",
        size=5,
        count=3,
        label="L",
        tags=["x", "y"],
        items=["i1", "i2"],
        scores={"m1": 1},
        h={"k": "v"},
        note="z",
        plain="p",
        uset=["u1"],
    )
    b = Item(code="b", name="n2", size="not a number", text="")
    c = Item(code="c", tags=["x"], d="given")
    a.name.set("n3")
    a.name.getset("n4")
    b.name.setnx("ignored")
    a.code.hset("a2")
    a.size.hset(7)
    a.size.hincrby(2)
    a.count.incr(5)
    a.count.decrby(2)
    a.count.incrbyfloat(0.5)
    a.text.append("!")
    a.text.setrange(0, "J")
    a.label.set("M")
    a.tags.sadd("z", "w")
    a.tags.srem("x")
    a.items.lpush("i0")
    a.items.rpush("i3", "i4")
    a.items.rpop()
    a.items.lpop()
    a.items.lrem(0, "i1")
    a.items.linsert("before", "i2", "i1b")
    a.items.lset(0, "first")
    a.items.ltrim(0, 5)
    a.scores.zadd({"m2": 2, "m3": 3})
    a.scores.zincrby(3, "m1")
    a.scores.zrem("m2")
    a.scores.zremrangebyscore(100, 200)
    a.h.hset("k2", "v2")
    a.h.hdel("k")
    a.h.hmset(k3="v3", k4="v4")
    a.h.hsetnx("k5", "v5")
    a.h.hincrby("n", 2)
    a.uset.sadd("u2")
    a.hmset(code="a3", size=9, note="w")
    a.hdel("size")
    c.name.delete()
    c.tags.delete()
    c.code.delete()
    for write in (
        lambda: b.code.hset("a3"),
        lambda: Item(code="a3"),
        lambda: b.hmset(code="a3", note="q"),
        lambda: b.uset.sadd("u1"),
        lambda: Item(code="new", uset=["u2"]),
    ):
        with pytest.raises(UniquenessError):
            write()
    b.delete()
    with pytest.raises(DoesNotExist):
        Item.lazy_connect("99").name.set("x")
    Item.lazy_connect(c.pk.get()).name.set("lazy")
    return a


def strip(namespace, content):
    """Return the dump with the namespace taken out of the key names."""
    return {
        key.replace(namespace + ":", "<ns>:", 1): value
        for key, value in content.items()
        if key.startswith(namespace + ":")
    }


@pytest.fixture
def raw(redis_settings, database):
    client = raw_client(redis_settings)
    warm_scripts(client)
    yield client
    client.close()


def test_same_bytes_as_the_default_write_path(database, namespace, raw):
    default, atomic = define(database, namespace + "d", False), define(database, namespace + "a", True)
    scenario(default)
    scenario(atomic)
    assert strip(namespace + "d", dump(raw)) == strip(namespace + "a", dump(raw))
    assert strip(namespace + "a", dump(raw))  # not two empty dumps
    assert check_consistency(raw, [default, atomic]) == []


def test_related_fields_same_bytes(database, namespace, raw):
    def pair(ns, atomic):
        attrs = {"database": database, "namespace": ns, "atomic_writes": atomic, "abstract": True}
        Base = type("Base", (RelatedModel,), attrs)
        Person = type("Person", (Base,), {"name": fields.InstanceHashField(indexable=True)})
        Group = type(
            "Group",
            (Base,),
            {
                "owner": FKInstanceHashField(Person, related_name="owned"),
                "members": M2MSetField(Person, related_name="memberships"),
            },
        )
        return Person, Group

    for ns, atomic in ((namespace + "d", False), (namespace + "a", True)):
        Person, Group = pair(ns, atomic)
        alice, bob = Person(name="alice"), Person(name="bob")
        group = Group(owner=alice, members=[alice, bob])
        group.owner.hset(bob)
        group.members.srem(alice)
        assert list(bob.owned()) == [group.pk.get()] and list(alice.memberships()) == []
        Group(owner=alice).delete()
    assert strip(namespace + "d", dump(raw)) == strip(namespace + "a", dump(raw))


def test_one_script_call_per_operation(database, namespace, raw):
    Item = define(database, namespace, True)
    warm_model_script(Item)
    operations = [
        lambda: Item(code="a", name="n", tags=["x", "y"], size=3, h={"k": "v"}),
        lambda: loaded.name.set("m"),
        lambda: Item.lazy_connect(1).code.hset("b"),
        lambda: Item.lazy_connect(1).tags.sadd("z"),
        lambda: Item.lazy_connect(1).hmset(code="c", size=4),
        lambda: Item.lazy_connect(1).items.rpush("i"),
        lambda: Item.lazy_connect(1).scores.zadd({"m": 1}),
        lambda: Item.lazy_connect(1).h.hset("k", "w"),
        lambda: Item.lazy_connect(1).delete(),
    ]
    loaded = None
    for position, operation in enumerate(operations):
        if position == 1:
            loaded = Item(1)
        with command_log(raw) as log:
            operation()
        sent = [line for line in log if line.split(" ", 1)[0].isupper()]
        assert len(sent) == 1 and sent[0].startswith(("EVALSHA ", "FCALL ")), (sent, log)
    assert raw.keys(namespace + ":*") == [namespace + ":item:max_pk"]  # the deletion left only the counter


def test_refusals_write_nothing(database, namespace, raw):
    Item = define(database, namespace, True)
    first = Item(code="a", uset=["u1"], tags=["t"])
    second = Item(code="b")
    before = dump(raw)
    for write in (
        lambda: Item(code="a"),
        lambda: Item(code="z", uset=["u1"]),
        lambda: second.code.hset("a"),
        lambda: second.hmset(code="a", note="n", size=3),
        lambda: second.uset.sadd("u0", "u1"),
        lambda: Item(name="x", code="a", tags=["q"]),
    ):
        with pytest.raises(
            UniquenessError,
            match=r'^Value "(a|u1)" already indexed for unique field Item\.(code|uset) '
            r"\(for instance 1\)$",
        ):
            write()
        assert dump(raw) == before
    with pytest.raises(DoesNotExist):
        Item.lazy_connect("42").tags.sadd("x")
    assert dump(raw) == before
    assert first.code.hget() == "a"


def test_database_and_base_settings(database, namespace):
    class AtomicDatabase(type(database)):
        atomic_writes = True

    db = AtomicDatabase(**database.connection_settings)
    Item = type(
        "Item",
        (model.RedisModel,),
        {"database": db, "namespace": namespace, "name": fields.StringField(indexable=True)},
    )
    Base = type(
        "Base",
        (model.RedisModel,),
        {"database": database, "namespace": namespace + "b", "abstract": True, "atomic_writes": True},
    )
    Child = type("Child", (Base,), {"name": fields.StringField(indexable=True)})
    Opted = type(
        "Opted",
        (model.RedisModel,),
        {
            "database": db,
            "namespace": namespace,
            "atomic_writes": False,
            "name": fields.StringField(indexable=True),
        },
    )
    from limpyd import _atomic

    assert (
        _atomic.atomic_enabled(Item) and _atomic.atomic_enabled(Child) and not _atomic.atomic_enabled(Opted)
    )


@pytest.mark.parametrize(
    "index, words",
    [
        (EqualIndex.configure(transform=lambda value: value.lower()), ["EqualIndex", "transform"]),
        (
            type(
                "MyIndex",
                (EqualIndex,),
                {
                    "get_storage_key": EqualIndex.get_storage_key.__wrapped__
                    if hasattr(EqualIndex.get_storage_key, "__wrapped__")
                    else (lambda self, *args, **kwargs: EqualIndex.get_storage_key(self, *args, **kwargs))
                },
            ),
            ["MyIndex"],
        ),
    ],
)
def test_an_index_without_server_side_form_is_refused_at_definition(database, namespace, index, words):
    with pytest.raises(ImplementationError) as raised:
        type(
            "Item",
            (model.RedisModel,),
            {
                "database": database,
                "namespace": namespace,
                "atomic_writes": True,
                "name": fields.StringField(indexable=True, indexes=[index]),
            },
        )
    message = str(raised.value)
    assert "Item.name" in message and "has no server-side form" in message
    assert "Set atomic_writes = False (and no expiring/default_ttl) on Item" in message
    for word in words:
        assert word in message


def test_date_and_time_indexes_same_bytes(database, namespace, raw):
    from limpyd.contrib.indexes import DateIndex, DateTimeIndex, SimpleDateTimeIndex, TimeIndex

    def scenario_dates(ns, atomic):
        Event = type(
            "Event",
            (model.RedisModel,),
            {
                "database": database,
                "namespace": ns,
                "atomic_writes": atomic,
                "day": fields.StringField(indexable=True, indexes=[DateIndex]),
                "hour": fields.InstanceHashField(indexable=True, indexes=[TimeIndex]),
                "at": fields.StringField(indexable=True, indexes=[DateTimeIndex]),
                "simple": fields.InstanceHashField(indexable=True, indexes=[SimpleDateTimeIndex]),
            },
        )
        first = Event(
            day="2024-02-29", hour="12:34:56", at="2024-02-29 12:34:56", simple="2023-01-01 00:00:01"
        )
        second = Event(day="2025-12-31", at="2025-12-31 23:59:59")
        first.day.set("2024-03-01")
        first.hmset(hour="01:02:03", simple="2022-06-15 10:20:30")
        second.at.set("2026-01-01 00:00:00")
        assert list(Event.collection(day__year=2024)) == [first.pk.get()]
        assert list(Event.collection(at__date="2026-01-01")) == [second.pk.get()]
        assert list(Event.collection(hour__hour__gte=1)) == [first.pk.get()]
        second.delete()
        with pytest.raises(redis.DataError, match="Event.day.*reads parts of a str"):
            first.day.set(20240301)
        return Event

    for ns, atomic in ((namespace + "d", False), (namespace + "a", True)):
        scenario_dates(ns, atomic)
    assert strip(namespace + "d", dump(raw)) == strip(namespace + "a", dump(raw))
    assert len(strip(namespace + "a", dump(raw))) > 10


def test_equal_index_with_and_scored_equal_index_same_bytes(database, namespace, raw):
    from limpyd.contrib.collection import ExtendedCollectionManager
    from limpyd.contrib.indexes import EqualIndexWith, ScoredEqualIndex

    def run(ns, atomic):
        Task = type(
            "Task",
            (model.RedisModel,),
            {
                "database": database,
                "namespace": ns,
                "atomic_writes": atomic,
                "collection_manager": ExtendedCollectionManager,
                "owner": fields.InstanceHashField(
                    indexable=True, indexes=[EqualIndexWith.configure(other_fields=["kind"], unique=True)]
                ),
                "kind": fields.StringField(indexable=True),
                "queue": fields.StringField(
                    indexable=True, indexes=[ScoredEqualIndex.configure(score_field="prio")]
                ),
                "prio": fields.InstanceHashField(),
                "labels": fields.SetField(
                    indexable=True, indexes=[EqualIndexWith.configure(other_fields=["kind"])]
                ),
            },
        )
        a = Task(owner="ann", kind="bug", queue="q1", prio=5, labels=["x", "y"])
        b = Task(owner="bob", kind="bug", queue="q1", prio=1)
        with pytest.raises(UniquenessError):
            Task(owner="ann", kind="bug")
        with pytest.raises(UniquenessError):
            b.owner.hset("ann")
        a.kind.set("feature")
        b.owner.hset("ann")  # free again: ann's task is a feature now
        a.prio.hset(0)
        a.hmset(prio=9, owner="cid")
        a.labels.sadd("z")
        b.queue.set("q2")
        assert list(Task.collection(queue="q1")) == [a.pk.get()]
        assert list(Task.collection(owner="ann", kind="bug")) == [b.pk.get()]
        b.delete()
        return Task

    for ns, atomic in ((namespace + "d", False), (namespace + "a", True)):
        run(ns, atomic)
    assert strip(namespace + "d", dump(raw)) == strip(namespace + "a", dump(raw))
    assert any("equal-with" in key for key in strip(namespace + "a", dump(raw)))


def test_lazy_writes_of_plain_fields_check_the_pk_in_the_script(database, namespace, raw):
    """The race the default mode cannot close: a write on a field that is not indexable, on a lazy
    instance, against its deletion. In atomic mode the script checks the pk: no orphan key."""
    Item = define(database, namespace, True)
    item = Item(code="a", note="n", plain="p")
    lazy = Item.lazy_connect(item.pk.get())
    item.delete()
    with pytest.raises(DoesNotExist):
        lazy.note.hset("late")
    with pytest.raises(DoesNotExist):
        Item.lazy_connect(item.pk.get()).plain.set("late")
    assert raw.keys(namespace + ":*") == [namespace + ":item:max_pk"]
    other = Item(code="b")
    Item.lazy_connect(other.pk.get()).note.hset("fine")
    assert other.note.hget() == "fine"


@pytest.mark.parametrize(
    "name, args",
    [
        ("set", ("k", "v")),
        ("set", ("k", b"\xff")),
        ("sadd", ("k", "a", "b", 3)),
        ("srem", ("k", "a")),
        ("lpush", ("k", "a", "b")),
        ("rpush", ("k", 1.5)),
        ("hdel", ("k", "f", "g")),
        ("delete", ("k", "l", "m")),
    ],
)
def test_plain_commands_are_built_as_redis_py_builds_them(name, args):
    """The fast path of ``command_args`` gives what redis-py's own method would send."""
    from limpyd import _atomic

    assert _atomic.command_args(name, *args) == getattr(_atomic._RECORDER, name)(*args)


@pytest.mark.parametrize(
    "name, args, kwargs", [("set", ("k", "v", 10), {}), ("set", ("k", "v"), {"nx": True})]
)
def test_commands_with_options_go_through_redis_py(name, args, kwargs):
    """Arguments beyond the plain form are left to redis-py (``SET k v EX``/``NX``)."""
    from limpyd import _atomic

    expected = getattr(_atomic._RECORDER, name)(*args, **kwargs)
    assert _atomic.command_args(name, *args, **kwargs) == expected
    assert expected[0][:3] == ("SET", "k", "v") and len(expected[0]) > 3  # EX 10 / NX added
