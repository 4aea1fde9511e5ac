"""Fields, part 2: single-value fields (``StringField``, ``InstanceHashField``, ``PKField``) and values.

docs/models.rst (their commands, the values they store). Machinery: ``test_fields.py``;
multi-value fields: ``test_fields_multi.py``.
"""

from __future__ import annotations

import pytest
from _redis_dump import command_log, locked

from limpyd.exceptions import DoesNotExist, ImplementationError, LimpydException, UniquenessError
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

# ---------------------------------------------------------------------- StringField


def test_string_getters(Base, count_commands):
    class M(Base):
        s = StringField()

    obj = M()
    obj.pk.get()
    assert obj.s.get() is None
    with count_commands(1):
        assert obj.s.set("hello") is True
    with count_commands(1):
        assert obj.s.get() == "hello"
    assert obj.s.getrange(1, 3) == "ell"
    assert obj.s.strlen() == 5
    assert obj.s.bitcount() == 21 and obj.s.bitcount(0, 0) == 3
    assert obj.s.getbit(1) == 1 and obj.s.getbit(0) == 0
    assert obj.s.bitpos(1) == 1 and obj.s.bitpos(0, 1, 1) == 8


@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")  # redis-py's own warning
def test_string_modifiers_return_values(Base, client, namespace):
    class M(Base):
        s = StringField()

    obj = M()
    assert obj.s.setnx("a") is True
    assert obj.s.setnx("b") is False
    assert obj.s.getset("c") == "a"
    assert obj.s.append("de") == 3
    assert obj.s.setrange(0, "X") == 3
    assert obj.s.get() == "Xde"
    assert obj.s.setbit(0, 0) == 0
    assert obj.s.get() == "Xde"
    obj.s.set(5)
    assert obj.s.get() == "5"  # numbers come back as strings
    assert obj.s.incr() == 6 and obj.s.incr(3) == 9 and obj.s.incrby(2) == 11
    assert obj.s.decr() == 10 and obj.s.decr(4) == 6 and obj.s.decrby(1) == 5
    assert obj.s.incrbyfloat(0.5) == 5.5 and isinstance(obj.s.incrbyfloat(), float)
    assert obj.s.get() == "6.5"
    assert obj.s.setex(100, "t") is True
    assert 0 < obj.s.ttl() <= 100
    assert obj.s.psetex(100000, "u") is True
    assert 0 < obj.s.pttl() <= 100000
    assert obj.s.persist() is True and obj.s.ttl() == -1
    assert obj.s.expire(100) is True and obj.s.pexpire(100000) is True
    assert obj.s.expireat(2**40) is True and obj.s.pexpireat(2**50) is True
    assert obj.s.delete() == 1
    assert obj.s.delete() == 0


def test_incr_family_sends_incrby_and_decrby(Base, client):
    class M(Base):
        s = StringField()

    obj = M()
    obj.pk.get()
    with command_log(client) as log:
        obj.s.incr()
        obj.s.decr(2)
        obj.s.incrbyfloat(1.5)
    key = obj.s.key
    assert log == ["INCRBY %s 1" % key, "DECRBY %s 2" % key, "INCRBYFLOAT %s 1.5" % key]


def test_string_set_arguments(Base, client):
    class M(Base):
        s = StringField()
        i = StringField(indexable=True)

    obj = M()
    obj.pk.get()
    assert obj.s.set("a", ex=100) is True and 0 < obj.s.ttl() <= 100
    assert obj.s.set("b", px=100000) is True and 0 < obj.s.pttl() <= 100000
    assert obj.s.set("c", nx=False, xx=False) is True
    assert obj.s.ttl() == -1
    for flag in ("nx", "xx"):
        with pytest.raises(LimpydException, match="^%s argument to SET is not supported by limpyd$" % flag):
            obj.s.set("d", **{flag: True})
    for kwarg in ({"keepttl": True}, {"get": True}):
        with pytest.raises(TypeError):
            obj.s.set("d", **kwarg)
    for kwarg in ({"ex": 10}, {"px": 10}):
        with pytest.raises(ImplementationError, match="^Indexable fields cannot be expired$"):
            obj.i.set("d", **kwarg)
    assert obj.s.get() == "c" and obj.i.get() is None
    with command_log(client) as log:
        obj.s.set("e", ex=5)
    assert log == ["SET %s e EX 5" % obj.s.key]


def test_indexable_string_command_counts(Base, client, namespace, count_commands):
    class M(Base):
        s = StringField(indexable=True)

    obj = M()
    obj.pk.get()
    n = namespace + ":m"
    lock = n + ":lock-for-update:s"
    key = obj.s.key
    with command_log(client) as log:
        obj.s.set("a")
    assert log == locked(lock, ["GET %s" % key, "SADD %s:s:a 1" % n, "SET %s a" % key])
    with count_commands(4 + 2):  # same value: no index change
        obj.s.set("a")
    with count_commands(4 + 4):
        obj.s.set("b")
    obj.s.set("10")
    with count_commands(4 + 4):  # set(10) over "10": not type-normalized, deindex + reindex
        obj.s.set(10)
    with count_commands(4 + 4):
        assert obj.s.getset("c") == "10"
    with count_commands(4 + 1):
        assert obj.s.setnx("x") is False
    with count_commands(4 + 5):
        obj.s.setrange(0, "d")
    with count_commands(4 + 5):
        obj.s.setbit(0, 0)
    with count_commands(4 + 5):
        obj.s.append("e")
    obj.s.set("5")
    with command_log(client) as log:
        assert obj.s.incr() == 6
    assert log == locked(
        lock, ["GET %s" % key, "SREM %s:s:5 1" % n, "INCRBY %s 1" % key, "SADD %s:s:6 1" % n]
    )
    for method in (obj.s.incrby, obj.s.decr, obj.s.decrby, obj.s.incrbyfloat):
        with count_commands(8):
            method()
    # incrbyfloat indexed its Python result "6.0" while Redis stores "6": delete deindexes "6"
    # (the stored value), the "6.0" entry stays (kept upstream quirk of strategy F)
    with command_log(client) as log:
        assert obj.s.delete() == 1
    assert log == locked(lock, ["GET %s" % key, "SREM %s:s:6 1" % n, "DEL %s" % key])
    assert client.smembers(n + ":s:6.0") == {"1"}
    client.delete(n + ":s:6.0")
    with count_commands(4 + 2):  # nothing stored: no index entry to remove
        assert obj.s.delete() == 0
    with count_commands(4 + 2):
        assert obj.s.setnx("n") is True
    assert client.smembers(n + ":s:n") == {"1"}
    with count_commands(4 + 3):
        obj.s.delete()
    assert client.keys(n + ":s:*") == []


def test_indexable_string_with_no_old_value_r_strategy(Base, client, namespace, count_commands):
    class M(Base):
        s = StringField(indexable=True)

    obj = M()
    obj.pk.get()
    with count_commands(4 + 4):  # GET (nothing to deindex), SETRANGE, GET, SADD
        obj.s.setrange(0, "ab")
    assert client.smembers(namespace + ":m:s:ab") == {"1"}


def test_incrbyfloat_indexes_the_python_value(Base, client, namespace):
    class M(Base):
        s = StringField(indexable=True)

    obj = M(s="2.5")
    assert obj.s.incrbyfloat(0.5) == 3.0
    assert obj.s.get() == "3"
    n = namespace + ":m"
    assert client.smembers(n + ":s:3.0") == {"1"} and not client.exists(n + ":s:3")

    class U(Base):
        s = StringField(unique=True)

    U(s="3.0")
    other = U(s="2.5")
    with pytest.raises(UniquenessError):
        other.s.incrbyfloat(0.5)
    # the write stays, the index changes are rolled back
    assert other.s.get() == "3"
    assert client.smembers(namespace + ":u:s:2.5") == {"2"}
    assert client.smembers(namespace + ":u:s:3.0") == {"1"}


def test_expiring_commands_are_refused_on_indexable_fields(Base, client, namespace):
    class M(Base):
        s = StringField(indexable=True)
        tags = SetField(indexable=True)
        items = ListField(indexable=True)
        scores = SortedSetField(indexable=True)
        h = HashField(indexable=True)
        plain = StringField()

    obj = M(s="v", tags=["a"], items=["b"], scores={"c": 1}, h={"d": "e"}, plain="p")
    for field in (obj.s, obj.tags, obj.items, obj.scores, obj.h):
        for name, args in (
            ("expire", (10,)),
            ("pexpire", (10000,)),
            ("expireat", (2**40,)),
            ("pexpireat", (2**50,)),
        ):
            with pytest.raises(ImplementationError, match="^Indexable fields cannot be expired$"):
                getattr(field, name)(*args)
        assert field.ttl() == -1 and field.pttl() == -1 and field.persist() is False
    for name, args in (("setex", (10, "x")), ("psetex", (10000, "x"))):
        with pytest.raises(ImplementationError, match="^Indexable fields cannot be expired$"):
            getattr(obj.s, name)(*args)
    assert obj.s.get() == "v"
    assert obj.plain.expire(10) is True


def test_expiring_commands_are_getters(Base, count_commands):
    class M(Base):
        s = StringField(indexable=True)
        plain = StringField()

    lazy = M.lazy_connect(42)
    with count_commands(1):  # no existence check, no lock
        assert lazy.plain.expire(10) is False
    with count_commands(1):
        assert lazy.s.ttl() == -2
    with count_commands(1):
        assert lazy.s.persist() is False


def test_non_indexable_commands_cost_one_command(Base, count_commands):
    class M(Base):
        s = StringField()

    obj = M(s="1")
    for call in (
        lambda: obj.s.set("2"),
        lambda: obj.s.get(),
        lambda: obj.s.incr(),
        lambda: obj.s.append("x"),
        lambda: obj.s.setnx("y"),
        lambda: obj.s.getset("3"),
        lambda: obj.s.setrange(0, "4"),
        lambda: obj.s.strlen(),
        lambda: obj.s.delete(),
    ):
        with count_commands(1):
            call()


# ---------------------------------------------------------------------- InstanceHashField


def test_instance_hash_field_commands(Base, client, namespace, count_commands):
    class M(Base):
        ih = InstanceHashField()
        other = InstanceHashField()

    obj = M()
    obj.pk.get()
    hash_key = "%s:m:1:hash" % namespace
    assert obj.ih.key == hash_key
    assert obj.ih.hget() is None
    assert obj.ih.hexists() is False and obj.ih.exists() is False
    with command_log(client) as log:
        assert obj.ih.hset("a") == 1
    assert log == ["HSET %s ih a" % hash_key]
    assert obj.ih.hset("b") == 0
    assert obj.ih.hget() == "b"
    assert obj.ih.hsetnx("c") == 0 and obj.other.hsetnx("c") == 1
    assert obj.ih.hexists() is True and obj.ih.exists() is True
    obj.ih.hset(5)
    assert obj.ih.hincrby() == 6 and obj.ih.hincrby(4) == 10
    assert obj.ih.hincrbyfloat() == 11.0 and obj.ih.hincrbyfloat(0.5) == 11.5
    assert obj.ih.hdel() == 1 and obj.ih.hdel() == 0
    obj.ih.hset("z")
    with count_commands(1):
        assert obj.ih.delete() == 1
    assert client.hgetall(hash_key) == {"other": "c"}
    obj.other.delete()
    assert not client.exists(hash_key)  # the hash disappears with its last entry
    obj.ih.hset("x")
    obj.delete()
    assert obj.ih.hexists() is False


def test_instance_hash_field_refuses_other_commands(Base):
    class M(Base):
        ih = InstanceHashField()
        iih = InstanceHashField(indexable=True)

    obj = M()
    for field in (obj.ih, obj.iih):
        for name in ("expire", "ttl", "persist"):
            with pytest.raises((AttributeError, ImplementationError)):
                getattr(field, name)(10) if name == "expire" else getattr(field, name)()


def test_indexable_instance_hash_field_counts(Base, client, namespace, count_commands):
    class M(Base):
        ih = InstanceHashField(indexable=True)

    obj = M()
    obj.pk.get()
    n = namespace + ":m"
    hash_key = n + ":1:hash"
    with command_log(client) as log:
        obj.ih.hset("a")
    assert log == locked(
        n + ":lock-for-update:ih", ["HGET %s ih" % hash_key, "SADD %s:ih:a 1" % n, "HSET %s ih a" % hash_key]
    )
    with count_commands(4 + 1):
        assert obj.ih.hsetnx("b") == 0
    obj.ih.hdel()
    with count_commands(4 + 2):
        assert obj.ih.hsetnx("b") == 1
    assert client.smembers(n + ":ih:b") == {"1"} and not client.exists(n + ":ih:a")
    obj.ih.hset(5)
    with command_log(client) as log:
        assert obj.ih.hincrby(2) == 7
    assert log == locked(
        n + ":lock-for-update:ih",
        ["HGET %s ih" % hash_key, "SREM %s:ih:5 1" % n, "HINCRBY %s ih 2" % hash_key, "SADD %s:ih:7 1" % n],
    )
    with count_commands(8):
        assert obj.ih.hincrbyfloat(0.5) == 7.5
    assert client.smembers(n + ":ih:7.5") == {"1"}
    with count_commands(4 + 3):
        assert obj.ih.delete() == 1
    assert client.keys(n + ":ih:*") == []


# ---------------------------------------------------------------------- PKField / AutoPKField


def test_pk_field_class_attributes():
    assert PKField.name == "pk" and PKField.indexable is False and PKField.unique is True
    assert PKField._auto_increment is False and PKField._auto_added is False and PKField._set is False
    assert AutoPKField._auto_increment is True
    field = PKField()
    assert field.unique is False and field.indexable is False
    assert field.normalize(12) == "12"


def test_auto_pk_allocation(Base, client, namespace, count_commands):
    class M(Base):
        pass

    first = M()
    with command_log(client) as log:
        assert first.pk.get() == "1"
    assert log == ["INCRBY %s:m:max_pk 1" % namespace, "SADD %s:m:collection 1" % namespace]
    with count_commands(0):
        assert first.pk.get() == "1"
    assert M().pk.get() == "2"
    assert M.get_field("pk").collection() == {"1", "2"}
    assert M.get_field("pk").collection_key == "%s:m:collection" % namespace
    with pytest.raises(ValueError, match='^The pk for M is "auto-increment", you must not fill it$'):
        M().pk.set(3)
    with pytest.raises(ValueError, match='^The pk for M is "auto-increment", you must not fill it$'):
        M(pk=3)


def test_pk_set_rules(Base, client, namespace, count_commands):
    calls = []

    class M(Base):
        id = PKField()
        s = StringField()

        def post_command(self, sender, name, result, args, kwargs):
            calls.append(name)
            return result

    obj = M()
    with pytest.raises(ValueError, match='^The pk for M is not "auto-increment", you must fill it$'):
        obj.pk.get()
    with pytest.raises(ValueError, match='^The pk for M is not "auto-increment", you must fill it$'):
        obj.s.get()
    with count_commands(2):  # SISMEMBER, SADD collection
        assert obj.pk.set(10) == 1
    assert obj._pk == "10" and obj.connected and obj.pk.get() == "10"
    assert calls == []  # no post_command for pk operations
    with pytest.raises(ValueError, match="^A primary key cannot be updated$"):
        obj.pk.set("11")
    with pytest.raises(UniquenessError, match=r"^PKField 10 already exists for model <class '.*\.M'>\)$"):
        M().pk.set(10)
    loaded = M(10)
    with pytest.raises(ImplementationError, match="^Something wrong happened, the PK was already set !$"):
        loaded.pk.set("other")
    assert client.smembers("%s:m:collection" % namespace) == {"10"}
    assert not client.exists("%s:m:max_pk" % namespace)


def test_pk_get_errors(Base):
    class M(Base):
        pass

    with pytest.raises(ImplementationError, match="^Impossible to get the PK of an unbound field$"):
        M.get_field("pk").get()
    with pytest.raises(ImplementationError, match="^Impossible to get the PK of an unbound field$"):
        AutoPKField().get()
    obj = M()
    obj.pk.get()
    obj.delete()
    obj._connected = True
    with pytest.raises(DoesNotExist, match="^The current object doesn't exists anymore$"):
        obj.pk.get()
    assert obj.connected is False


def test_pk_exists(Base, count_commands):
    class M(Base):
        id = PKField()

    model_field = M.get_field("pk")
    with count_commands(0):
        assert model_field.exists() is False
    M(id="0")
    with count_commands(1):
        assert model_field.exists(0) is True  # only None means "use get()"
    assert model_field.exists("") is False
    assert model_field.exists("nope") is False
    obj = M(id="a")
    assert obj.pk.exists() is True
    obj.delete()
    assert obj.pk.exists() is False
    with pytest.raises(ValueError):  # only DoesNotExist/AttributeError mean "no"
        M().pk.exists()


def test_pk_cannot_be_deleted(Base):
    class M(Base):
        pass

    with pytest.raises(ImplementationError, match="^PKField cannot be deleted directly.$"):
        M().pk.delete()


def test_renamed_pk(Base, namespace):
    class Auto(Base):
        id = AutoPKField()
        name = StringField()

    class Named(Base):
        name = PKField()
        value = StringField()

    assert Auto._fields == ["id", "name"] and Named._fields == ["name", "value"]
    assert Auto.has_field("pk") and Auto.get_field("pk") is Auto.get_field("id")
    obj = Auto(name="x")
    assert obj.pk is obj.id and obj.id.get() == "1"
    assert obj.id._auto_added is False and obj.id.name == "id"
    by_pk = Auto(pk=None, name="y")
    assert by_pk.id.get() == "2"
    named = Named(name="foo", value="v")
    assert named.pk is named.name and named.pk.get() == "foo"
    assert named.value.key == "%s:named:foo:value" % namespace
    assert Named(pk="bar").name.get() == "bar"
    with pytest.raises(ValueError, match=r"^You cannot pass two values for the primary key \(pk and name\)$"):
        Named(pk="a", name="b")


# ---------------------------------------------------------------------- values (docs/models.rst)


def test_values_are_encoded_by_redis_py_and_read_back_as_str(Base, client, namespace):
    class M(Base):
        s = StringField()
        i = StringField(indexable=True)
        tags = SetField()

    obj = M()
    for value, stored in (
        (1.0, "1.0"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e20, "1e+20"),
        (float("inf"), "inf"),
        (-3, "-3"),
        (b"caf\xc3\xa9", "café"),
        ("", ""),
    ):
        obj.s.set(value)
        assert obj.s.get() == stored
    obj.i.set(15.1)
    assert client.smembers("%s:m:i:15.1" % namespace) == {"1"}
    obj.i.set(b"rosalie")
    assert client.smembers("%s:m:i:rosalie" % namespace) == {"1"}
    obj.tags.sadd(1, 2.5, 1e20)
    assert obj.tags.smembers() == {"1", "2.5", "1e+20"}


@pytest.mark.parametrize(
    "call",
    [
        lambda o: o.s.set("x"),
        lambda o: o.s.incr(),
        lambda o: o.s.delete(),
        lambda o: o.i.set("x"),
        lambda o: o.i.setnx("x"),
        lambda o: o.ih.hset("x"),
        lambda o: o.ih.hdel(),
        lambda o: o.iih.hincrby(1),
    ],
    ids=["set", "incr", "delete", "indexable set", "indexable setnx", "hset", "hdel", "indexable hincrby"],
)
def test_single_value_modifiers_of_a_lazy_unknown_instance(Base, client, call):
    class M(Base):
        s = StringField()
        i = StringField(indexable=True)
        ih = InstanceHashField()
        iih = InstanceHashField(indexable=True)

    lazy = M.lazy_connect(3)
    with pytest.raises(DoesNotExist, match="^No M found with pk 3$"):
        call(lazy)
    assert lazy._pk is None and client.keys("*") == []


def test_single_value_getters_of_a_lazy_unknown_instance(Base, count_commands):
    class M(Base):
        s = StringField(indexable=True)
        ih = InstanceHashField(indexable=True)

    lazy = M.lazy_connect(3)
    with count_commands(3):
        assert lazy.s.get() is None and lazy.ih.hget() is None and lazy.s.strlen() == 0
    assert lazy._pk == "3" and not lazy.connected


def test_pk_normalize_is_the_hook_for_every_pk(Base, client, namespace):
    class LowerPK(PKField):
        def normalize(self, value):
            return str(value).lower()

    class M(Base):
        id = LowerPK()

    obj = M(id="ABC")
    assert obj._pk == "abc" and obj.pk.get() == "abc"
    assert client.smembers("%s:m:collection" % namespace) == {"abc"}
    assert M("ABC")._pk == "abc" and M.get("Abc") == obj
    assert M.lazy_connect("ABC")._pk == "abc"
    with pytest.raises(UniquenessError):
        M(id="aBc")


def test_pk_allocation_by_eq_hash_and_scan_keys(Base, count_commands):
    class M(Base):
        pass

    a, b = M(), M()
    with count_commands(4):  # both sides get a pk (INCRBY + SADD each)
        assert a != b
    c = M()
    with count_commands(2 + 1):  # the pk, then one SCAN
        assert list(c.scan_keys()) == []
    d = M()
    hash(d)
    assert {a._pk, b._pk} == {"1", "2"} and (c._pk, d._pk) == ("3", "4")
