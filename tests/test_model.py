"""Models: instance construction, class-level and instance API, lifecycle, deletion, eq/hash/repr.

docs/models.rst (key layout: ``test_layout.py``; locks: ``test_fieldlock.py``).
"""

from __future__ import annotations

import re
import threading
import types

import pytest
import redis
from _redis_dump import command_log, layout, locked

from limpyd import model
from limpyd.exceptions import DoesNotExist, ImplementationError, UniquenessError
from limpyd.fields import (
    AutoPKField,
    HashField,
    InstanceHashField,
    ListField,
    PKField,
    SetField,
    SortedSetField,
    StringField,
)


@pytest.fixture
def Boat(Base):
    class Boat(Base):
        name = StringField(unique=True)
        power = InstanceHashField(indexable=True, default="sail")
        launched = StringField(indexable=True)
        length = StringField()
        tags = SetField(default=["a", "b"])

    return Boat


# ---------------------------------------------------------------------- construction (5.3)


def test_construction_binds_copies_of_the_fields(Base, count_commands):
    class M(Base):
        s = StringField()
        ih = InstanceHashField()

    with count_commands(0):
        obj = M()
    assert obj.lockable is True and obj._connected is False and obj.connected is False
    assert obj._pk is None
    for name in ("pk", "s", "ih"):
        field = getattr(obj, name)
        assert field is not M.get_field(name) and type(field) is type(M.get_field(name))
        assert field._instance is obj and field.name == name
    assert isinstance(obj.get_field, types.MethodType) and obj.get_field.__func__ is M.get_instance_field
    assert obj.get_fields.__func__ is M.get_instance_fields
    assert obj.get_field("s") is obj.s and obj.get_field("pk") is obj.pk
    assert list(obj.fields) == [obj.pk, obj.s, obj.ih] == list(obj.get_fields())
    assert obj._fields is M._fields and obj._instancehash_fields is M._instancehash_fields
    assert M._instancehash_fields == ["ih"]


def test_overridden_get_instance_field_is_honoured(Base):
    calls = []

    class M(Base):
        s = StringField()

        def get_instance_field(self, name):
            calls.append(name)
            return super().get_instance_field(name)

    obj = M(s="x")
    assert "s" in calls
    assert obj.get_field("s") is obj.s


def test_empty_constructor_writes_nothing(Boat, client, count_commands):
    with count_commands(0):
        boat = Boat()
    assert boat._pk is None and not boat.connected
    assert client.keys("*") == []


def test_constructor_with_a_pk(Base, client, namespace, count_commands):
    class M(Base):
        s = StringField()

    M(s="x")
    with command_log(client) as log:
        obj = M(1)
    assert log == ["SISMEMBER %s:m:collection 1" % namespace]
    assert obj._pk == "1" and obj.connected
    assert obj.s.get() == "x"
    with count_commands(1):
        with pytest.raises(DoesNotExist, match="^No M found with pk 2$"):
            M(2)
    assert M("1") == obj


def test_constructor_argument_errors(Base, client):
    class M(Base):
        s = StringField()

    M(s="x")
    before = layout(client)
    with pytest.raises(ValueError, match="^Cannot use args and kwargs to instanciate.$"):
        M(1, s="y")
    with pytest.raises(ValueError):
        M(1, 2)
    with pytest.raises(ValueError, match="^`foo` is not a valid field name for `M`.$"):
        M(s="y", foo=1)
    assert layout(client) == before


def test_two_values_for_the_pk(Base, client):
    class M(Base):
        id = AutoPKField()
        s = StringField()

    with pytest.raises(ValueError, match=r"^You cannot pass two values for the primary key \(pk and id\)$"):
        M(pk=None, id=None, s="x")
    assert client.keys("*") == []


# ---------------------------------------------------------------------- class-level API (5.4)


def test_get(Base, client, count_commands):
    class M(Base):
        name = StringField(indexable=True)
        kind = StringField(indexable=True)

    first = M(name="a", kind="k")
    M(name="b", kind="k")
    with count_commands(1):
        assert M.get(1) == first
    with count_commands(1):
        assert M.get(pk=1)._pk == "1"
    with count_commands(1):
        assert M.get("1", name="ignored")._pk == "1"  # one positional: the pk, kwargs ignored
    assert M.get(name="a") == first
    assert M.get(name="b", kind="k")._pk == "2"
    with pytest.raises(DoesNotExist, match=r"^No object matching filter: \{'name': 'c'\}$"):
        M.get(name="c")
    with pytest.raises(ValueError, match=r"^More than one object matching filter: \{'kind': 'k'\}$"):
        M.get(kind="k")
    with pytest.raises(ValueError, match=r"^Invalid `get` usage with args \(\) and kwargs \{\}$"):
        M.get()
    with pytest.raises(ValueError, match=r"^Invalid `get` usage with args \(1, 2\) and kwargs \{\}$"):
        M.get(1, 2)
    with pytest.raises(DoesNotExist, match="^No M found with pk 9$"):
        M.get(9)
    with pytest.raises(DoesNotExist):
        M.get(pk=9)


def test_get_with_a_renamed_pk(Base, count_commands):
    class M(Base):
        id = PKField()

    M(id="x")
    with count_commands(1):
        assert M.get(id="x")._pk == "x"
    assert M.exists(id="x") is True and M.exists(pk="y") is False


def test_get_or_connect(Base, client):
    class M(Base):
        name = StringField(unique=True)
        other = StringField()

    existing = M(name="a")
    assert M.get_or_connect(name="a") == (existing, False)
    created, flag = M.get_or_connect(name="b")
    assert flag is True and created._pk == "2" and created.name.get() == "b"
    M(other="x")
    M(other="x")
    # a filter on a field that is not indexable is an error, not a reason to create
    with pytest.raises(ImplementationError):
        M.get_or_connect(other="x")


def test_get_or_connect_after_a_concurrent_creation(Base, monkeypatch):
    class M(Base):
        name = StringField(unique=True)

    existing = M(name="a")
    real_get = M.get.__func__
    calls = []

    def racing_get(cls, *args, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:  # as if the other process created it right after our lookup
            raise DoesNotExist("not yet")
        return real_get(cls, *args, **kwargs)

    monkeypatch.setattr(M, "get", classmethod(racing_get))
    assert M.get_or_connect(name="a") == (existing, False)
    assert calls == [{"name": "a"}, {"name": "a"}]


def test_get_or_connect_propagates_several_matches(Base):
    class M(Base):
        kind = StringField(indexable=True)

    M(kind="k")
    M(kind="k")
    with pytest.raises(ValueError, match="^More than one object matching filter"):
        M.get_or_connect(kind="k")


def test_exists(Base, count_commands):
    class M(Base):
        name = StringField(indexable=True)

    M(name="a")
    with pytest.raises(ValueError, match="^`Exists` method requires at least one kwarg.$"):
        M.exists()
    with count_commands(1):
        assert M.exists(pk=1) is True
    with count_commands(1):
        assert M.exists(pk="2") is False
    assert M.exists(name="a") is True and M.exists(name="b") is False
    assert M.exists(pk=1, name="a") is True and M.exists(pk=1, name="b") is False


def test_lazy_connect(Base, count_commands):
    class M(Base):
        s = StringField()

    with count_commands(0):
        lazy = M.lazy_connect(5)
    assert lazy._pk == "5" and lazy.connected is False
    assert lazy.s.get() is None  # getters never check existence


def test_from_pks(Base, count_commands):
    class M(Base):
        pass

    M().pk.get()
    M().pk.get()
    with count_commands(0):
        generator = M.from_pks([1, 5, "2"])
    assert isinstance(generator, types.GeneratorType)
    with count_commands(3):
        assert [obj._pk for obj in generator] == ["1", "2"]
    with count_commands(0):
        lazy = list(M.from_pks([1, 5], lazy=True))
    assert [obj._pk for obj in lazy] == ["1", "5"] and not any(obj.connected for obj in lazy)


def test_instances_and_collection(Base, count_commands):
    class M(Base):
        kind = StringField(indexable=True)

    a, b = M(kind="x"), M(kind="y")
    with count_commands(0):
        collection = M.collection(kind="x")
        M.instances(kind="x")
        M.collection()
    assert list(collection) == ["1"]
    assert set(M.collection()) == {"1", "2"}
    assert list(M.instances(kind="y")) == [b]
    lazy = list(M.instances(lazy=True, kind="x"))
    assert lazy == [a] and not lazy[0].connected


def test_class_helpers(Base, namespace, database):
    class M(Base):
        s = StringField()
        id = AutoPKField()

    assert M.has_field("pk") and M.has_field("id") and M.has_field("s") and not M.has_field("x")
    with pytest.raises(AttributeError, match='^"x" is not a field for the model "M"$'):
        M.get_class_field("x")
    with pytest.raises(AttributeError, match='^"x" is not a field for the model "M"$'):
        M().get_field("x")
    assert [f.name for f in M.get_class_fields()] == ["id", "s"] == [f.name for f in M.get_fields()]
    assert M.make_key("a", 1) == "a:1" and M().make_key("b", 2) == "b:2"
    assert M.sort_wildcard() == "%s:m:*:hash" % namespace
    assert M.get_connection() is database.connection and M().get_connection() is database.connection
    assert M._field_is_pk("pk") and M._field_is_pk("id") and not M._field_is_pk("s")
    assert M.get_default_indexes() == database.get_default_indexes()
    assert model.RedisModel.__dict__["get_field"] is model.RedisModel.__dict__["get_class_field"]
    assert M.get_field.__func__ is M.get_class_field.__func__


def test_scan_model_keys_and_scan_keys(Base, namespace):
    class M(Base):
        s = StringField(indexable=True)
        ih = InstanceHashField()
        empty = SetField()

    obj = M(s="x", ih="y")
    M(s="z")
    n = namespace + ":m"
    assert isinstance(M.scan_model_keys(), types.GeneratorType)
    assert set(M.scan_model_keys()) == {
        n + ":collection",
        n + ":max_pk",
        n + ":1:s",
        n + ":1:hash",
        n + ":2:s",
        n + ":s:x",
        n + ":s:z",
    }
    assert set(M.scan_model_keys(count=1)) == set(M.scan_model_keys())
    assert set(obj.scan_keys()) == {n + ":1:s", n + ":1:hash"}
    assert set(obj.scan_keys(2)) == {n + ":1:s", n + ":1:hash"}


def test_set_pk_refuses_a_second_pk(Base):
    class M(Base):
        pass

    obj = M()
    obj.pk.get()
    with pytest.raises(ImplementationError, match="^Something wrong happened, the PK was already set !$"):
        obj._set_pk("9")


def test_thread_lock_registry(Base):
    class M(Base):
        s = StringField()

    obj = M()
    field = obj.s
    assert M._thread_lock_storage() is M._thread_lock_storage()
    assert not obj._is_field_locked(field)
    obj._mark_field_as_locked(field)
    assert obj._is_field_locked(field) and "s" in M._thread_lock_storage()[M._name]
    other_thread = []
    thread = threading.Thread(target=lambda: other_thread.append(obj._is_field_locked(field)))
    thread.start()
    thread.join()
    assert other_thread == [False]
    obj._unmark_field_as_locked(field)
    assert not obj._is_field_locked(field)


# ---------------------------------------------------------------------- instance API (5.5)


def test_connect(Base, count_commands):
    class M(Base):
        pass

    M().pk.get()
    lazy = M.lazy_connect(1)
    with count_commands(1):
        lazy.connect()
    assert lazy.connected
    with count_commands(0):
        lazy.connect()
    missing = M.lazy_connect(3)
    with pytest.raises(DoesNotExist, match="^No M found with pk 3$"):
        missing.connect()
    assert missing._pk is None and not missing.connected


def test_instance_key_allocates(Base, namespace, count_commands):
    class M(Base):
        pass

    obj = M()
    with count_commands(2):
        assert obj.key == "%s:m:1:hash" % namespace


def test_instance_hash_commands(Base, client, namespace, count_commands):
    seen = []

    class M(Base):
        a = InstanceHashField()
        b = InstanceHashField()
        s = StringField()

        def post_command(self, sender, name, result, args, kwargs):
            seen.append((sender, name))
            return result

    obj = M(a="1")
    key = "%s:m:1:hash" % namespace
    seen.clear()
    with command_log(client) as log:
        assert obj.hmset(a="x", b="y") is True
    assert log == ["HSET %s a x b y" % key]
    assert obj.hmget("a", "b") == ["x", "y"]
    assert obj.hmget("a", "s") == ["x", None]
    assert obj.hgetall() == {"a": "x", "b": "y"}
    assert sorted(obj.hkeys()) == ["a", "b"] and sorted(obj.hvals()) == ["x", "y"] and obj.hlen() == 2
    assert seen[:2] == [(obj, "hmset"), (obj, "hmget")]
    for call in (lambda: obj.hmget("s"), lambda: obj.hmset(s="v"), lambda: obj.hdel("s")):
        with pytest.raises(ValueError, match="^Only InstanceHashField can be used here.$"):
            call()
    with pytest.raises(AttributeError):
        obj.hmset(a="1", unknown="2")
    with pytest.raises(redis.ResponseError):
        obj.hmget()
    with pytest.raises(redis.ResponseError):
        obj.hdel()
    with pytest.raises(redis.DataError):
        obj.hmset()
    assert obj.hgetall() == {"a": "x", "b": "y"}
    with count_commands(1):
        assert obj.hdel("a", "b") == 2
    assert obj.hdel("a") == 0
    assert not client.exists(key)


def test_instance_hmset_hdel_with_indexes(Base, client, namespace, count_commands):
    class M(Base):
        a = InstanceHashField(indexable=True)
        b = InstanceHashField(unique=True)
        c = InstanceHashField()

    obj = M(a="old")
    n = namespace + ":m"
    key = n + ":1:hash"
    with command_log(client) as log:  # the indexable fields' locks (2.x took none); kwargs order; one write
        assert obj.hmset(b="B", a="new", c="C") is True
    lock_a, lock_b = locked(n + ":lock-for-update:a", []), locked(n + ":lock-for-update:b", [])
    assert (
        log
        == lock_a[:1]
        + lock_b[:1]
        + [
            "HGET %s b" % key,
            "SMEMBERS %s:b:B" % n,
            "SADD %s:b:B 1" % n,
            "HGET %s a" % key,
            "SREM %s:a:old 1" % n,
            "SADD %s:a:new 1" % n,
            "HSET %s b B a new c C" % key,
        ]
        + lock_b[1:]
        + lock_a[1:]
    )
    other = M(a="x", b="other")
    before = layout(client)
    with pytest.raises(UniquenessError):
        other.hmset(a="y", b="B")
    assert layout(client) == before  # the indexes of `a` were rolled back, nothing written
    with command_log(client) as log:
        assert obj.hdel("a", "c") == 2
    assert log == ["HGET %s a" % key, "SREM %s:a:new 1" % n, "HDEL %s a c" % key]
    assert client.hgetall(key) == {"b": "B"}


def test_delete(Base, client, namespace):
    class M(Base):
        s = StringField(indexable=True)
        ih = InstanceHashField()
        tags = SetField()
        items = ListField()
        scores = SortedSetField()
        h = HashField()
        empty = StringField()

    obj = M(s="x", ih="y", tags=["t"], items=["i"], scores={"z": 1}, h={"k": "v"})
    other = M(s="x")
    n = namespace + ":m"
    with command_log(client) as log:
        assert obj.delete() is None
    # the field locks are released after the SREM (2.x: after each field), so that a writer of a
    # field, checking the pk under its lock, never writes into a half-deleted instance
    lock_and_work = locked(
        n + ":lock-for-update:s", ["GET %s:1:s" % n, "SREM %s:s:x 1" % n, "DEL %s:1:s" % n]
    )
    assert (
        log
        == lock_and_work[:-3]
        + [
            "HDEL %s:1:hash ih" % n,
            "DEL %s:1:tags" % n,
            "DEL %s:1:items" % n,
            "DEL %s:1:scores" % n,
            "DEL %s:1:h" % n,
            "DEL %s:1:empty" % n,
            "SREM %s:collection 1" % n,
        ]
        + lock_and_work[-3:]
    )
    assert layout(client) == {
        n + ":collection": ("set", {"2"}),
        n + ":max_pk": ("string", "2"),
        n + ":2:s": ("string", "x"),
        n + ":s:x": ("set", {"2"}),
    }
    assert not hasattr(obj, "_pk") and "_pk" not in obj.__dict__
    assert M().pk.get() == "3"  # pks are never reused
    other.delete()
    M.get(3).delete()
    assert layout(client) == {n + ":max_pk": ("string", "3")}  # only max_pk remains


def test_deleted_instance_behaviour(Base, client):
    class M(Base):
        s = StringField()
        i = StringField(indexable=True)
        ih = InstanceHashField()
        tags = SetField()

    obj = M(s="x", ih="y", tags=["a"])
    same = M(1)
    obj.delete()
    with pytest.raises(AttributeError):
        obj._pk
    for getter in (obj.s.get, obj.ih.hget, obj.tags.smembers, obj.pk.get, obj.hgetall):
        obj._connected = True
        with pytest.raises(DoesNotExist, match="^The current object doesn't exists anymore$"):
            getter()
        assert obj.connected is False
    for modifier in (
        lambda: obj.s.set("v"),
        lambda: obj.i.set("v"),
        lambda: obj.tags.sadd("b"),
        lambda: obj.ih.hset("v"),
        lambda: obj.hmset(ih="v"),
        obj.delete,
    ):
        with pytest.raises(AttributeError):
            modifier()
    assert obj.s.exists() is False and obj.pk.exists() is False and obj.ih.hexists() is False
    assert client.keys("*") == [client.keys("*max_pk")[0]]
    # another object for the same pk is not affected and can still write (no re-check once connected)
    same.s.set("again")
    assert same.s.get() == "again"


def test_eq_hash_repr(Base, count_commands):
    class M(Base):
        pass

    class Sub(M):
        pass

    a, b = M.lazy_connect(4), M.lazy_connect("4")
    assert a == b and not (a != b) and hash(a) == hash(b)
    assert M.lazy_connect(5) != a
    assert Sub.lazy_connect(4) != a  # exact class
    assert (a == "4") is False and a != object()
    assert a.__eq__(object()) is NotImplemented
    fresh = M()
    with count_commands(0):
        text = repr(fresh)
    assert re.match(r"^<test_model\.test_eq_hash_repr\.<locals>\.M object at 0x[0-9a-f]+ \(pk=None\)>$", text)
    assert repr(a).endswith(" (pk=4)>")
    with count_commands(2):  # __eq__/__hash__ call pk.get(): a new instance gets a pk
        hash(fresh)
    assert repr(fresh).endswith(" (pk=1)>")
    fresh.delete()
    with count_commands(0):
        assert repr(fresh).endswith(" (pk=None)>")


# ---------------------------------------------------------------------- lifecycle (7)


def test_first_read_allocates_the_pk_and_writes_defaults(Boat, client, namespace, count_commands):
    boat = Boat()
    n = namespace + ":boat"
    with command_log(client) as log:
        assert boat.name.get() is None
    assert log == ["INCRBY %s:max_pk 1" % n] + locked(
        n + ":lock-for-update:power",
        ["HGET %s:1:hash power" % n, "SADD %s:power:sail 1" % n, "HSET %s:1:hash power sail" % n],
    ) + ["SADD %s:1:tags a b" % n, "SADD %s:collection 1" % n, "GET %s:1:name" % n]
    assert boat.connected and boat._pk == "1"
    assert boat.power.hget() == "sail" and boat.tags.smembers() == {"a", "b"}
    with count_commands(0):
        assert boat.pk.get() == "1"


def test_defaults(Base, client, namespace):
    counter = iter(range(100))

    class M(Base):
        s = StringField(default="d")
        none = StringField(default=None)
        call = StringField(default=lambda: "c%d" % next(counter))
        tags = SetField(default=["a", "b"])
        items = ListField(default=("x", "y", "x"))
        scores = SortedSetField(default={"m": 1.5})
        h = HashField(default={"k": "v"})
        ih = InstanceHashField(default=0)
        plain = StringField()

    first = M(plain="p")
    second = M(s="given")
    n = namespace + ":m"
    data = layout(client)
    assert data[n + ":1:s"] == ("string", "d") and data[n + ":2:s"] == ("string", "given")
    assert n + ":1:none" not in data
    assert data[n + ":1:call"] == ("string", "c0") and data[n + ":2:call"] == ("string", "c1")
    assert data[n + ":1:tags"] == ("set", {"a", "b"})
    assert data[n + ":1:items"] == ("list", ["x", "y", "x"])
    assert data[n + ":1:scores"] == ("zset", [("m", 1.5)])
    assert data[n + ":1:h"] == ("hash", {"k": "v"})
    assert data[n + ":1:hash"] == ("hash", {"ih": "0"})
    assert data[n + ":1:plain"] == ("string", "p") and n + ":2:plain" not in data
    first.s.delete()
    first.s.get()
    assert first.s.get() is None  # written once only
    assert second.pk.get() == "2"


def test_given_fields_never_receive_their_default(Base, client, namespace):
    class M(Base):
        s = StringField(default="d")
        tags = SetField(default=["a"])
        other = StringField(default="o")

    obj = M(s=None, tags=[])  # skipped values: nothing to write, so no pk allocated yet
    assert layout(client) == {} and obj._pk is None
    assert obj.s.get() is None  # allocates: defaults, but not for the fields given
    n = namespace + ":m"
    assert layout(client) == {
        n + ":collection": ("set", {"1"}),
        n + ":max_pk": ("string", "1"),
        n + ":1:other": ("string", "o"),
    }
    with_value = M(s="v", tags=[], other=None)
    assert with_value._pk == "2"
    assert {k for k in layout(client) if k.startswith(n + ":2:")} == {n + ":2:s"}
    assert obj._init_fields == {"s", "tags"}


def test_init_fields(Base):
    class M(Base):
        id = PKField()
        s = StringField()
        t = StringField()

    assert M()._init_fields == set()
    assert M(pk="a", s="x")._init_fields == {"id", "s"}
    assert M(id="b", t="x")._init_fields == {"id", "t"}


def test_creation_writes_in_declaration_order(Base, client, namespace):
    class M(Base):
        b = StringField()
        a = StringField()
        c = StringField()

    with command_log(client) as log:
        M(c="3", a="2", b="1")
    n = namespace + ":m"
    assert log == [
        "INCRBY %s:max_pk 1" % n,
        "SADD %s:collection 1" % n,
        "SET %s:1:b 1" % n,
        "SET %s:1:a 2" % n,
        "SET %s:1:c 3" % n,
    ]


def test_creation_with_a_pk_field(Base, client, namespace):
    class M(Base):
        name = PKField()
        s = StringField(default="d")
        u = StringField(unique=True)

    with command_log(client) as log:
        M(u="x", name="foo")
    n = namespace + ":m"
    assert log == [
        "SMEMBERS %s:u:x" % n,
        "SISMEMBER %s:collection foo" % n,
        "SET %s:foo:s d" % n,
        "SADD %s:collection foo" % n,
    ] + locked(
        n + ":lock-for-update:u",
        ["GET %s:foo:u" % n, "SMEMBERS %s:u:x" % n, "SADD %s:u:x foo" % n, "SET %s:foo:u x" % n],
    )
    before = layout(client)
    with pytest.raises(UniquenessError):
        M(name="foo", s="other")
    with pytest.raises(UniquenessError):
        M(name="bar", u="x")
    with pytest.raises(ValueError, match='^The pk for M is not "auto-increment", you must fill it$'):
        M(s="x")
    assert layout(client) == before


def test_boat_creation_sequence(Boat, client, namespace, count_commands):
    n = namespace + ":boat"
    with command_log(client) as log:
        Boat(name="x", length=3)
    assert log == (
        [
            "SMEMBERS %s:name:x" % n,
            "SET %s:lock-for-update:name <token> NX PX 5000" % n,
            "INCRBY %s:max_pk 1" % n,
        ]
        + locked(
            n + ":lock-for-update:power",
            ["HGET %s:1:hash power" % n, "SADD %s:power:sail 1" % n, "HSET %s:1:hash power sail" % n],
        )
        + [
            "SADD %s:1:tags a b" % n,
            "SADD %s:collection 1" % n,
            "GET %s:1:name" % n,
            "SMEMBERS %s:name:x" % n,
            "SADD %s:name:x 1" % n,
            "SET %s:1:name x" % n,
            "get %s:lock-for-update:name" % n,
            "del %s:lock-for-update:name" % n,
            "EVALSHA <sha> 1 %s:lock-for-update:name <token>" % n,
            "SET %s:1:length 3" % n,
        ]
    )
    with count_commands(20):
        Boat(name="y", length=4)


def test_rejected_creation_leaves_redis_untouched(Boat, client):
    Boat(name="x")
    before = layout(client)
    with pytest.raises(UniquenessError, match='^Value "x" already indexed for unique field Boat.name'):
        Boat(name="x", length=5)
    assert layout(client) == before  # no pk consumed, no defaults written
    assert Boat(name="y")._pk == "2"


def test_unique_multi_value_fields_are_checked_per_element_at_creation(Base, client):
    class M(Base):
        tags = SetField(unique=True)
        h = StringField(unique=True)

    M(tags=["a", "b"])
    before = layout(client)
    with pytest.raises(UniquenessError):
        M(tags=["c", "b"])
    assert layout(client) == before


def test_uniqueness_error_while_writing_deletes_the_instance(Base, client, namespace):
    class Racing(StringField):
        def check_uniqueness(self, value):  # as if the value was taken after the step-1 check
            pass

    class M(Base):
        plain = StringField()
        tags = SetField(indexable=True)
        name = Racing(unique=True)

    M(name="taken")
    before = layout(client)
    with pytest.raises(UniquenessError):
        M(plain="p", tags=["t"], name="taken")
    n = namespace + ":m"
    after = layout(client)
    assert after.pop(n + ":max_pk") == ("string", "2")  # the pk was consumed
    before.pop(n + ":max_pk")
    assert after == before


def test_other_errors_while_writing_leave_nothing(Base, client, namespace):
    """A creation completes or leaves nothing: no collection entry, no key, no index entry."""

    class M(Base):
        a = StringField(indexable=True)
        b = SetField()

    n = namespace + ":m"
    client.set(n + ":1:b", "not a set")  # the write of `b` will fail on the server (WRONGTYPE)
    with pytest.raises(redis.ResponseError):
        M(a="x", b=["v"])
    assert layout(client) == {n + ":max_pk": ("string", "1")}  # the pk counter never goes back
    assert not M.exists(pk=1)


def test_no_value_is_cached(Base, client, count_commands):
    class M(Base):
        s = StringField()

    obj = M(s="x")
    client.set(obj.s.key, "changed")
    with count_commands(1):
        assert obj.s.get() == "changed"
    with count_commands(1):
        assert obj.s.get() == "changed"


def test_lazy_instance_modifier_checks_existence_once(Base, client, count_commands):
    class M(Base):
        s = StringField()
        i = StringField(indexable=True)

    M().pk.get()
    lazy = M.lazy_connect(1)
    with count_commands(2):  # SISMEMBER + SET
        lazy.s.set("x")
    with count_commands(1):
        lazy.s.set("y")
    lazy = M.lazy_connect(1)
    with count_commands(4 + 4):  # inside the lock: SISMEMBER, GET, SADD, SET
        lazy.i.set("v")
    missing = M.lazy_connect(7)
    with pytest.raises(DoesNotExist):
        missing.s.set("z")
    assert missing._pk is None
    assert missing.s.get() is None and missing._pk == "2"  # a later command allocates a new pk
    assert client.smembers(M.get_field("pk").collection_key) == {"1", "2"}


def test_database_connection_is_read_at_every_command(Base, database, redis_settings):
    class M(Base):
        s = StringField(indexable=True)
        plain = StringField()

    obj = M(s="a", plain="b")
    database.reset(**dict(redis_settings, db=1))  # the models follow at once: no client cached on them
    try:
        db1 = redis.Redis(**dict(redis_settings, db=1), decode_responses=True)
        obj.plain.set("c")
        obj.s.set("d")
        assert db1.get(obj.plain.key) == "c" and db1.get(obj.s.key) == "d"
        assert db1.smembers("%s:s:d" % M._name) == {"1"}
        assert M.get_connection() is database.connection and obj.connection is database.connection
        db1.flushdb()
        db1.close()
    finally:
        database.reset(**redis_settings)
    assert obj.plain.get() == "b" and obj.s.get() == "a"
