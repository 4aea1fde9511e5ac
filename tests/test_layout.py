"""Redis key layout: every key name, type and content written through the package.

Model keys (docs/models.rst), index keys of every field type and index type (docs/indexes.rst)
and the keys downstream code relies upon (docs/extending.rst).
"""

from __future__ import annotations

import re

import pytest
from _redis_dump import layout

from limpyd import model
from limpyd.fields import (
    FieldLock,
    HashField,
    InstanceHashField,
    ListField,
    PKField,
    SetField,
    SortedSetField,
    StringField,
)
from limpyd.indexes import EqualIndex, NumberRangeIndex, TextRangeIndex


def everything_model(db, ns):
    class Everything(model.RedisModel):
        database = db
        namespace = ns
        s = StringField()
        ih = InstanceHashField()
        h = HashField()
        st = SetField(indexable=True)
        l = ListField()  # noqa: E741 - the spec's name
        z = SortedSetField()

    return Everything


def create_everything(Everything):
    return Everything(s="x", ih="y", h={"a": 1}, st=[1, 2], l=["p", "q", "p"], z={"m": 1.5})


def test_everything_in_a_namespace(database, client):
    Everything = everything_model(database, "ns")
    create_everything(Everything)
    assert layout(client) == {
        "ns:everything:collection": ("set", {"1"}),
        "ns:everything:max_pk": ("string", "1"),
        "ns:everything:1:s": ("string", "x"),
        "ns:everything:1:hash": ("hash", {"ih": "y"}),
        "ns:everything:1:h": ("hash", {"a": "1"}),
        "ns:everything:1:st": ("set", {"1", "2"}),
        "ns:everything:1:l": ("list", ["p", "q", "p"]),
        "ns:everything:1:z": ("zset", [("m", 1.5)]),
        "ns:everything:st:1": ("set", {"1"}),
        "ns:everything:st:2": ("set", {"1"}),
    }


@pytest.mark.parametrize("ns", [None, ""])
def test_everything_without_namespace(database, client, ns):
    Everything = everything_model(database, ns)
    assert Everything._name == ":everything"
    create_everything(Everything)
    assert layout(client) == {
        ":everything:collection": ("set", {"1"}),
        ":everything:max_pk": ("string", "1"),
        ":everything:1:s": ("string", "x"),
        ":everything:1:hash": ("hash", {"ih": "y"}),
        ":everything:1:h": ("hash", {"a": "1"}),
        ":everything:1:st": ("set", {"1", "2"}),
        ":everything:1:l": ("list", ["p", "q", "p"]),
        ":everything:1:z": ("zset", [("m", 1.5)]),
        ":everything:st:1": ("set", {"1"}),
        ":everything:st:2": ("set", {"1"}),
    }


def test_second_instance_and_max_pk(database, client):
    Everything = everything_model(database, "ns")
    create_everything(Everything)
    second = Everything(s="z")
    second.delete()
    data = layout(client)
    assert data["ns:everything:max_pk"] == ("string", "2")
    assert data["ns:everything:collection"] == ("set", {"1"})
    assert not [key for key in data if key.startswith("ns:everything:2:")]


def test_pk_field_model_in_a_colon_namespace(database, client):
    db = database

    class WithPK(model.RedisModel):
        database = db
        namespace = "a:b"
        id = PKField()
        name = StringField()
        ih = InstanceHashField()

    WithPK(id="foo", name="bar", ih="baz")
    assert layout(client) == {
        "a:b:withpk:collection": ("set", {"foo"}),
        "a:b:withpk:foo:name": ("string", "bar"),
        "a:b:withpk:foo:hash": ("hash", {"ih": "baz"}),
    }


def test_renamed_auto_pk_uses_max_pk(database, client):
    db = database

    class Renamed(model.RedisModel):
        database = db
        namespace = "r"
        ident = model.AutoPKField()
        name = StringField()

    Renamed(name="x")
    assert layout(client) == {
        "r:renamed:collection": ("set", {"1"}),
        "r:renamed:max_pk": ("string", "1"),
        "r:renamed:1:name": ("string", "x"),
    }


def test_keys_appear_with_the_first_write_and_go_when_emptied(database, client):
    Everything = everything_model(database, "ns")
    obj = Everything()
    obj.pk.get()
    assert set(layout(client)) == {"ns:everything:collection", "ns:everything:max_pk"}
    obj.st.sadd("v")
    obj.ih.hset("w")
    assert set(layout(client)) == {
        "ns:everything:collection",
        "ns:everything:max_pk",
        "ns:everything:1:st",
        "ns:everything:st:v",
        "ns:everything:1:hash",
    }
    obj.st.srem("v")
    obj.ih.hdel()
    assert set(layout(client)) == {"ns:everything:collection", "ns:everything:max_pk"}


def test_lock_key_is_transient(database, client):
    db = database

    class Bike(model.RedisModel):
        database = db
        namespace = "shop"
        name = StringField(indexable=True)

    class Car(model.RedisModel):
        database = db
        name = StringField(indexable=True)

    for Model, key in ((Bike, "shop:bike:lock-for-update:name"), (Car, ":car:lock-for-update:name")):
        lock = FieldLock(Model.get_field("name"))
        assert lock.name == key
        with lock:
            assert client.type(key) == "string"
            assert re.match("^[0-9a-f]{32}$", client.get(key))
            assert 0 < client.pttl(key) <= 5000
        assert not client.exists(key)
    Bike(name="x")
    assert "shop:bike:lock-for-update:name" not in layout(client)


def test_index_keys_of_every_field_and_index_type(database, client):
    db = database

    class Person(model.RedisModel):
        database = db
        namespace = "ns"
        name = StringField(indexable=True)
        email = StringField(unique=True)
        nick = StringField(indexable=True, indexes=[TextRangeIndex])
        age = InstanceHashField(indexable=True, indexes=[NumberRangeIndex])
        tags = SetField(indexable=True)
        todo = ListField(indexable=True)
        scores = SortedSetField(indexable=True)
        info = HashField(indexable=True)

    class Q(model.RedisModel):
        database = db
        namespace = "ns"
        h = HashField(indexable=True, indexes=[NumberRangeIndex, EqualIndex.configure(prefix="e", key="k")])

    Person(
        name="john",
        email="j@x",
        nick="jo",
        age=30,
        tags=["a"],
        todo=["x", "x"],
        scores={"m1": 5},
        info={"k1": "v1"},
    )
    Person(nick="bobby", age="abc", info={"k1": "v1"})
    Q(h={"s": 10})
    Q(h={"s": 20})
    data = layout(client)
    indexes = {
        key: value
        for key, value in data.items()
        if not re.match(r"^ns:(person|q):(\d+:|collection|max_pk)", key)
    }
    assert indexes == {
        "ns:person:name:john": ("set", {"1"}),
        "ns:person:email:j@x": ("set", {"1"}),
        "ns:person:nick:text-range": (
            "zset",
            [("bobby:TEXT-RANGE-SEPARATOR:2", 0.0), ("jo:TEXT-RANGE-SEPARATOR:1", 0.0)],
        ),
        "ns:person:age:number-range": ("zset", [("2", 0.0), ("1", 30.0)]),
        "ns:person:tags:a": ("set", {"1"}),
        "ns:person:todo:x": ("set", {"1"}),
        "ns:person:scores:m1": ("set", {"1"}),
        "ns:person:info:k1:v1": ("set", {"1", "2"}),
        "ns:q:h:s:number-range": ("zset", [("1", 10.0), ("2", 20.0)]),
        "ns:q:h:s:e:k:10": ("set", {"1"}),
        "ns:q:h:s:e:k:20": ("set", {"2"}),
    }
    assert data["ns:person:2:nick"] == ("string", "bobby")
    assert data["ns:person:2:hash"] == ("hash", {"age": "abc"})


def test_index_key_shapes_with_prefix_key_and_transform(database, client):
    db = database

    class Item(model.RedisModel):
        database = db
        namespace = "app"
        f = StringField(
            indexable=True,
            indexes=[
                EqualIndex,
                EqualIndex.configure(prefix="rev", transform=lambda v: v[::-1]),
                EqualIndex.configure(key="foo"),
                EqualIndex.configure(prefix="p", key="k"),
                TextRangeIndex.configure(prefix="qux", key="baz"),
                TextRangeIndex,
                NumberRangeIndex,
            ],
        )
        data = HashField(indexable=True, indexes=[TextRangeIndex, EqualIndex])

    Item(f=b"abc", data={"foo": "bar"})
    Item(f="123")
    indexes = {
        key: value
        for key, value in layout(client).items()
        if not re.match(r"^app:item:(\d+:|collection|max_pk)", key)
    }
    assert indexes == {
        "app:item:f:abc": ("set", {"1"}),
        "app:item:f:123": ("set", {"2"}),
        "app:item:f:rev:cba": ("set", {"1"}),
        "app:item:f:rev:321": ("set", {"2"}),
        "app:item:f:foo:abc": ("set", {"1"}),
        "app:item:f:foo:123": ("set", {"2"}),
        "app:item:f:p:k:abc": ("set", {"1"}),
        "app:item:f:p:k:123": ("set", {"2"}),
        "app:item:f:qux:baz": (
            "zset",
            [("123:TEXT-RANGE-SEPARATOR:2", 0.0), ("abc:TEXT-RANGE-SEPARATOR:1", 0.0)],
        ),
        "app:item:f:text-range": (
            "zset",
            [("123:TEXT-RANGE-SEPARATOR:2", 0.0), ("abc:TEXT-RANGE-SEPARATOR:1", 0.0)],
        ),
        "app:item:f:number-range": ("zset", [("1", 0.0), ("2", 123.0)]),
        "app:item:data:foo:text-range": ("zset", [("bar:TEXT-RANGE-SEPARATOR:1", 0.0)]),
        "app:item:data:foo:bar": ("set", {"1"}),
    }


def test_index_keys_without_namespace(database, client):
    db = database

    class Boat(model.RedisModel):
        database = db
        name = StringField(indexable=True, indexes=[EqualIndex, TextRangeIndex])
        power = InstanceHashField(indexable=True, default="sail")

    Boat(name="x")
    assert layout(client) == {
        ":boat:collection": ("set", {"1"}),
        ":boat:max_pk": ("string", "1"),
        ":boat:1:name": ("string", "x"),
        ":boat:1:hash": ("hash", {"power": "sail"}),
        ":boat:name:x": ("set", {"1"}),
        ":boat:name:text-range": ("zset", [("x:TEXT-RANGE-SEPARATOR:1", 0.0)]),
        ":boat:power:sail": ("set", {"1"}),
    }


def test_temporary_index_keys(database, client):
    db = database

    class P(model.RedisModel):
        database = db
        namespace = "ns"
        name = StringField(indexable=True, indexes=[TextRangeIndex])

    index = P.get_field("name").get_index()
    key = index._unique_key("tmp")
    assert re.match("^ns:p:__index__:textrangeindex:tmp:[0-9a-f]{32}$", key)
    P(name="a")
    P(name="b")
    assert set(P.collection(name__gte="b")) == {"2"}
    assert not [k for k in client.keys("*") if "__index__" in k]  # deleted after use


def test_downstream_key_shapes(database, client):
    db = database

    class Queue(model.RedisModel):
        database = db
        namespace = "jobs"
        waiting = ListField()

    queue = Queue()
    queue.waiting.rpush("job:1")
    key = queue.waiting.key
    assert key == "jobs:queue:1:waiting" and int(key.split(":")[-2]) == 1
    assert layout(client)[key] == ("list", ["job:1"])


FIELD_VALUES = [
    (StringField, "7", [("7",)]),
    (InstanceHashField, "7", [("7",)]),
    (SetField, ["7", "8"], [("7",), ("8",)]),
    (ListField, ["7", "8", "7"], [("7",), ("8",), ("7",)]),
    (SortedSetField, {"7": 100, "8": 200}, [("7",), ("8",)]),
    (HashField, {"k": "7", "j": "8"}, [("k", "7"), ("j", "8")]),
]


@pytest.mark.parametrize("field_class, value, parts", FIELD_VALUES, ids=[f[0].__name__ for f in FIELD_VALUES])
@pytest.mark.parametrize(
    "index_class", [EqualIndex, TextRangeIndex, NumberRangeIndex], ids=["equal", "text", "number"]
)
def test_index_key_matrix(database, client, field_class, value, parts, index_class):
    db = database

    class M(model.RedisModel):
        database = db
        namespace = "mx"
        f = field_class(indexable=True, indexes=[index_class])

    M(f=value)
    M(f=value)
    indexes = {
        key: content
        for key, content in layout(client).items()
        if not re.match(r"^mx:m:(\d+:|collection|max_pk)", key)
    }
    # parts: in indexing order; a number-range zset has one member per pk (the last value indexed wins)
    expected: dict = {}
    for extra in parts:
        *hash_key, val = extra
        base = ":".join(["mx:m:f"] + hash_key)
        if index_class is EqualIndex:
            expected["%s:%s" % (base, val)] = ("set", {"1", "2"})
        elif index_class is TextRangeIndex:
            expected.setdefault(base + ":text-range", ("zset", {}))[1].update(
                {"%s:TEXT-RANGE-SEPARATOR:%s" % (val, pk): 0.0 for pk in "12"}
            )
        else:
            expected.setdefault(base + ":number-range", ("zset", {}))[1].update(
                {pk: float(val) for pk in "12"}
            )
    for key, (kind, members) in expected.items():
        if kind == "zset":
            expected[key] = (kind, sorted(members.items(), key=lambda item: (item[1], item[0])))
    assert indexes == expected
