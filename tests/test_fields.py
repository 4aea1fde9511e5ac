"""Fields, part 1: proxy machinery, ``RedisField``, binding/copy/repr, index plumbing.

docs/models.rst (fields and their command sets). Single-value fields: ``test_fields_single.py``;
multi-value fields: ``test_fields_multi.py``.
"""

from __future__ import annotations

import copy
import re

import pytest

from limpyd import fields, model
from limpyd.exceptions import ImplementationError, UniquenessError
from limpyd.fields import (
    AutoPKField,
    HashField,
    InstanceHashField,
    ListField,
    MetaRedisProxy,
    MultiValuesField,
    PKField,
    RedisField,
    RedisProxyCommand,
    SetField,
    SingleValueField,
    SortedSetField,
    StringField,
)
from limpyd.indexes import EqualIndex

EXP = {"expire", "expireat", "pexpire", "pexpireat", "ttl", "pttl", "persist"}


# ---------------------------------------------------------------------- module, hierarchy, command sets


def test_module_all_and_hierarchy():
    assert sorted(fields.__all__) == sorted(
        [
            "InstanceHashField",
            "RedisField",
            "RedisProxyCommand",
            "MetaRedisProxy",
            "SortedSetField",
            "StringField",
            "ListField",
            "SetField",
            "PKField",
            "AutoPKField",
            "HashField",
        ]
    )
    assert type(RedisProxyCommand) is MetaRedisProxy
    assert issubclass(model.RedisModel, RedisProxyCommand)
    assert RedisField.__bases__ == (RedisProxyCommand,)
    for klass in (StringField, InstanceHashField, PKField):
        assert klass.__bases__ == (SingleValueField,)
    assert AutoPKField.__bases__ == (PKField,)
    assert not issubclass(PKField, StringField)
    for klass in (SortedSetField, SetField, ListField, HashField):
        assert klass.__bases__ == (MultiValuesField,)
    assert SingleValueField.__bases__ == (RedisField,)
    assert MultiValuesField.__bases__ == (RedisField,)
    from limpyd.database import Lock

    assert fields.FieldLock.__bases__ == (Lock,)


@pytest.mark.parametrize(
    "klass, getters, modifiers",
    [
        (RedisField, EXP, set()),
        (
            StringField,
            EXP | {"get", "getbit", "getrange", "strlen", "bitcount", "bitpos"},
            {
                "delete",
                "getset",
                "set",
                "append",
                "decr",
                "decrby",
                "incr",
                "incrby",
                "incrbyfloat",
                "setbit",
                "setnx",
                "setrange",
                "setex",
                "psetex",
            },
        ),
        (InstanceHashField, {"hget"}, {"hdel", "hset", "hsetnx", "hincrby", "hincrbyfloat"}),
        (PKField, {"get"}, {"set"}),
        (AutoPKField, {"get"}, {"set"}),
        (
            SetField,
            EXP | {"scard", "sismember", "smembers", "srandmember", "sscan", "sscan_iter", "sort"},
            {"delete", "sadd", "srem", "spop"},
        ),
        (
            ListField,
            EXP | {"lindex", "llen", "lrange", "lrank", "lcontains", "lcount", "sort"},
            {
                "delete",
                "linsert",
                "lpop",
                "lpush",
                "lpushx",
                "lrem",
                "rpop",
                "rpush",
                "rpushx",
                "lset",
                "ltrim",
            },
        ),
        (
            SortedSetField,
            EXP
            | {
                "zcard",
                "zcount",
                "zrange",
                "zrangebyscore",
                "zrank",
                "zrevrange",
                "zrevrangebyscore",
                "zrevrank",
                "zscore",
                "zscan",
                "zscan_iter",
                "sort",
                "zlexcount",
                "zrangebylex",
                "zrevrangebylex",
            },
            {
                "delete",
                "zadd",
                "zincrby",
                "zrem",
                "zremrangebyrank",
                "zremrangebyscore",
                "zremrangebylex",
                "zpopmin",
                "zpopmax",
            },
        ),
        (
            HashField,
            EXP | {"hget", "hgetall", "hmget", "hkeys", "hvals", "hlen", "hscan", "hscan_iter", "hstrlen"},
            {"delete", "hdel", "hmset", "hsetnx", "hset", "hincrby", "hincrbyfloat"},
        ),
        (model.RedisModel, {"hmget", "hgetall", "hkeys", "hvals", "hlen"}, {"hmset", "hdel"}),
    ],
)
def test_exact_command_sets(klass, getters, modifiers):
    assert type(klass.available_getters) is set and klass.available_getters == getters
    assert type(klass.available_modifiers) is set and klass.available_modifiers == modifiers
    assert klass.available_commands == getters | modifiers
    for name in getters | modifiers:
        assert callable(getattr(klass, name))


# ---------------------------------------------------------------------- MetaRedisProxy


def test_class_can_have_commands():
    class Mixin:
        pass

    assert MetaRedisProxy.class_can_have_commands(RedisField)
    assert MetaRedisProxy.class_can_have_commands(StringField)
    assert MetaRedisProxy.class_can_have_commands(model.RedisModel)
    assert not MetaRedisProxy.class_can_have_commands(Mixin)
    assert not MetaRedisProxy.class_can_have_commands(object)


def test_mixins_not_deriving_from_the_proxy_are_left_alone():
    class Mixin(metaclass=MetaRedisProxy):
        available_getters = ["foo"]
        available_modifiers = ("bar",)

    assert Mixin.available_getters == ["foo"]  # not turned into a set
    assert not hasattr(Mixin, "foo") and not hasattr(Mixin, "bar")
    assert not hasattr(Mixin, "available_commands")

    class Combined(Mixin, StringField):
        pass

    # the mixin's lists are inherited (first in the MRO), turned into sets, and get methods
    assert Combined.available_getters == {"foo"} and Combined.available_modifiers == {"bar"}
    assert Combined.available_commands == {"foo", "bar"}
    assert callable(Combined.foo) and callable(Combined.bar)


def test_own_command_lists_become_sets_with_generated_methods():
    class Custom(StringField):
        available_getters = ["get", "xyz"]
        available_modifiers = ("set", "abc")

    assert Custom.available_getters == {"get", "xyz"}
    assert Custom.available_modifiers == {"set", "abc"}
    assert Custom.available_commands == {"get", "xyz", "set", "abc"}
    assert "xyz" in Custom.__dict__ and "abc" in Custom.__dict__
    assert "get" not in Custom.__dict__  # inherited attribute: not regenerated


def test_generated_methods_are_inherited_and_dispatch_refuses_them(Base):
    class M(Base):
        ih = InstanceHashField()
        pk_name = PKField()

    obj = M(pk_name="a")
    assert hasattr(InstanceHashField, "expire") and "expire" not in InstanceHashField.__dict__
    with pytest.raises(AttributeError, match="^expire is not an available command for InstanceHashField "):
        obj.ih.expire(10)
    with pytest.raises(AttributeError, match="^ttl is not an available command for PKField "):
        obj.pk_name.ttl()


def test_explicit_methods_are_never_replaced():
    assert ListField.__dict__["lmembers"].__name__ == "lmembers"
    assert SortedSetField.__dict__["zmembers"].__name__ == "zmembers"
    assert PKField.__dict__["get"] is PKField.get
    assert PKField.__dict__["set"] is PKField.set

    class Sub(PKField):
        pass

    assert Sub.get is PKField.get and Sub.set is PKField.set


def test_generated_method_calls_call_command():
    calls = []

    class Recording(StringField):
        def _call_command(self, name, *args, **kwargs):
            calls.append((name, args, kwargs))
            return "result"

    field = Recording()
    assert field.get() == "result"
    assert field.set("v", ex=3) == "result"
    assert field.expire(5) == "result"
    assert calls == [("get", (), {}), ("set", ("v",), {"ex": 3}), ("expire", (5,), {})]
    method = StringField.__dict__["incr"]
    assert method.__name__ == "incr"


def test_make_command_method_is_looked_up_on_the_new_class():
    made = []

    class Maker(StringField):
        @classmethod
        def _make_command_method(cls, name):
            made.append(name)

            def method(self, *args, **kwargs):
                return ("custom", name, args)

            return method

    class Sub(Maker):
        available_getters = StringField.available_getters | {"newcmd"}

    assert made == ["newcmd"]  # existing (inherited) methods are not regenerated
    assert Sub().newcmd(1) == ("custom", "newcmd", (1,))


def test_call_command_dispatches_to_call_name_methods(Base):
    seen = []

    class Special(StringField):
        def _call_get(self, command, *args, **kwargs):
            seen.append((command, args, kwargs))
            return super()._traverse_command(command, *args, **kwargs)

    class M(Base):
        s = Special()

    obj = M()
    obj.s.set("v")
    assert obj.s.get() == "v"
    assert seen == [("get", (), {})]


def test_traverse_command_refuses_unknown_commands(Base):
    class M(Base):
        s = StringField()

    obj = M()
    with pytest.raises(AttributeError, match="^hget is not an available command for StringField "):
        obj.s._traverse_command("hget")
    with pytest.raises(AttributeError, match="^set is not an available command for M "):
        obj._traverse_command("set", "x")


def test_post_command_of_the_instance_sees_field_commands(Base):
    seen = []

    class M(Base):
        s = StringField()
        h = HashField()

        def post_command(self, sender, name, result, args, kwargs):
            seen.append((sender, name, result, args, kwargs))
            if name == "get":
                return "changed:%s" % result
            return result

    obj = M()
    assert obj.s.set("v") is True
    assert obj.s.get() == "changed:v"
    assert obj.h.hmset(a="1") is True
    assert seen == [
        (obj.s, "set", True, ("v",), {}),
        (obj.s, "get", "v", (), {}),
        (obj.h, "hmset", True, (), {"a": "1"}),
    ]
    # the field's own post_command delegates to the instance
    assert obj.s.post_command(sender=None, name="get", result=1, args=(), kwargs={}) == "changed:1"
    assert RedisProxyCommand.post_command(obj, sender=obj, name="x", result=42, args=(), kwargs={}) == 42


def test_get_connection_and_connection(Base, database):
    class M(Base):
        s = StringField()

    obj = M()
    assert M.get_connection() is database.connection
    assert obj.connection is database.connection
    assert M.get_field("s").connection is database.connection
    assert obj.s.connection is database.connection
    assert obj.s.database is database


# ---------------------------------------------------------------------- RedisField construction


def test_field_class_attributes():
    assert RedisField.proxy_getter is None and RedisField.proxy_setter is None
    assert RedisField.unique is False
    assert RedisField._unique_supported is True
    assert RedisField._field_parts == 1
    assert HashField._field_parts == 2 and HashField._unique_supported is False
    assert RedisField.default_indexes is None
    assert RedisField._commands_to_proxy == {}
    assert RedisField._copy_conf == {
        "args": [],
        "kwargs": ["lockable", "default", "indexable", "unique", ("indexes", "index_classes")],
        "attrs": ["name", "_instance", "_model"],
    }
    assert (StringField.proxy_getter, StringField.proxy_setter) == ("get", "set")
    assert (InstanceHashField.proxy_getter, InstanceHashField.proxy_setter) == ("hget", "hset")
    assert (PKField.proxy_getter, PKField.proxy_setter) == ("get", "set")
    assert (SetField.proxy_getter, SetField.proxy_setter) == ("smembers", "sadd")
    assert (ListField.proxy_getter, ListField.proxy_setter) == ("lmembers", "rpush")
    assert (SortedSetField.proxy_getter, SortedSetField.proxy_setter) == ("zmembers", "zadd")
    assert (HashField.proxy_getter, HashField.proxy_setter) == ("hgetall", "hmset")
    assert MultiValuesField.scannable is False and ListField.scannable is False
    assert SetField.scannable and SortedSetField.scannable and HashField.scannable


def test_field_options_defaults():
    field = StringField("ignored", 42, unknown_option=True)
    assert not hasattr(field, "default")
    assert field.indexable is False and field.unique is False
    assert field.index_classes == []
    assert field.lockable is True
    assert not hasattr(field, "_model") and not hasattr(field, "_instance")
    assert not field.attached_to_model and not field.attached_to_instance


def test_default_is_stored_only_when_given():
    assert StringField(default="x").default == "x"
    none_default = StringField(default=None)
    assert hasattr(none_default, "default") and none_default.default is None
    with pytest.raises(ImplementationError, match='^Cannot set "default" and "unique" together!$'):
        StringField(default=None, unique=True)
    with pytest.raises(ImplementationError, match='^Cannot set "default" and "unique" together!$'):
        SetField(default=["a"], unique=True)


def test_unique_implies_indexable_and_is_refused_on_hash_fields():
    field = StringField(unique=True)
    assert field.unique is True and field.indexable is True
    assert StringField(unique=True, indexable=False).indexable is True
    with pytest.raises(ImplementationError, match="^HashField field cannot be unique$"):
        HashField(unique=True)


def test_indexes_option():
    assert StringField(indexable=True, indexes=[EqualIndex]).index_classes == [EqualIndex]
    assert StringField(indexable=True, indexes=None).index_classes == []
    with pytest.raises(ImplementationError, match="^Cannot pass indexes if not indexable$"):
        StringField(indexes=[EqualIndex])


def test_lockable_option():
    assert StringField(lockable=False).lockable is False


def test_creation_order_counter():
    first, second, third = StringField(), SetField(), HashField()
    assert first._creation_order < second._creation_order < third._creation_order
    assert RedisField._creation_order == third._creation_order


# ---------------------------------------------------------------------- binding, copy, repr


def test_attach_to_model_and_instance(Base):
    class M(Base):
        s = StringField()

    model_field = M.get_field("s")
    assert model_field._model is M and not hasattr(model_field, "_instance")
    assert model_field.attached_to_model and not model_field.attached_to_instance
    obj = M()
    assert obj.s is not model_field
    assert obj.s._model is M and obj.s._instance is obj
    assert obj.s.attached_to_instance and not obj.s.attached_to_model
    assert obj.get_field("s") is obj.s

    runtime = StringField()
    runtime._attach_to_model(M)
    assert runtime._model is M and not hasattr(runtime, "name")  # unnamed fields can be attached
    runtime._attach_to_instance(obj)
    assert runtime._instance is obj


def test_attach_to_instance_combines_lockable(Base):
    class Locked(Base):
        a = StringField(indexable=True)
        b = StringField(indexable=True, lockable=False)

    class Unlocked(Base):
        lockable = False
        a = StringField(indexable=True)

    obj = Locked()
    assert obj.a.lockable is True and obj.b.lockable is False
    other = Unlocked()
    assert other.lockable is False
    assert other.a.lockable is False
    assert Unlocked.get_field("a").lockable is True  # model-level fields keep the field option


def test_copy_follows_copy_conf(Base):
    class M(Base):
        s = StringField(indexable=True, default="d", lockable=False)

    original = M.get_field("s")
    original._indexes  # fill the cache
    clone = copy.copy(original)
    assert type(clone) is StringField and clone is not original
    assert clone.name == "s" and clone._model is M and not hasattr(clone, "_instance")
    assert clone.default == "d" and clone.indexable is True and clone.unique is False
    assert clone.lockable is False and clone.index_classes == [EqualIndex]
    assert "_indexes" in original.__dict__ and "_indexes" not in clone.__dict__
    assert clone._creation_order > original._creation_order

    bare = copy.copy(StringField())
    assert not hasattr(bare, "name") and not hasattr(bare, "_model") and not hasattr(bare, "default")

    obj = M()
    instance_copy = copy.copy(obj.s)
    assert instance_copy._instance is obj


def test_copy_of_pk_fields(Base):
    class M(Base):
        pass

    obj = M()
    obj.pk.get()
    assert obj.pk._set is True
    clone = copy.copy(obj.pk)
    assert type(clone) is AutoPKField
    assert clone._auto_added is True and clone._auto_increment is True and clone.name == "pk"
    assert clone._set is False
    assert PKField._copy_conf["attrs"] == ["name", "_instance", "_model", "_auto_increment", "_auto_added"]


def test_copy_conf_can_be_extended():
    class Extra(StringField):
        _copy_conf = copy.deepcopy(StringField._copy_conf)
        _copy_conf["args"].append("pattern")
        _copy_conf["kwargs"].append(("fmt", "_fmt"))
        _copy_conf["attrs"].append("marker")

        def __init__(self, pattern="p", *args, **kwargs):
            self.pattern = pattern
            self._fmt = kwargs.pop("fmt", None)
            super().__init__(*args, **kwargs)

    field = Extra("pat", fmt="f", indexable=True)
    field.marker = 3
    clone = copy.copy(field)
    assert (clone.pattern, clone._fmt, clone.marker, clone.indexable) == ("pat", "f", 3, True)
    assert StringField._copy_conf["args"] == []  # the base configuration is untouched


def test_fields_hash_and_compare_by_identity(Base):
    class M(Base):
        s = StringField()

    obj = M()
    clone = copy.copy(obj.s)
    assert obj.s != clone and obj.s == obj.s
    assert len({obj.s: 1, clone: 2}) == 2
    assert hash(obj.s) == object.__hash__(obj.s)


def test_field_repr(Base):
    class Bike(Base):
        name = StringField()

    pattern = r"^<limpyd\.fields\.StringField object at 0x[0-9a-f]+ \(model=Bike, name=name\)>$"
    assert re.match(pattern, repr(Bike.get_field("name")))
    assert re.match(pattern, repr(Bike().name))
    unbound = StringField()
    assert repr(unbound) == object.__repr__(unbound)


# ---------------------------------------------------------------------- key, helpers, proxy get/set


def test_key_sort_wildcard_and_make_key(Base, namespace, count_commands):
    class Bike(Base):
        name = StringField()
        power = InstanceHashField()

    with pytest.raises(AttributeError):
        Bike.get_field("name").key
    assert Bike.get_field("name").sort_wildcard == "%s:bike:*:name" % namespace
    assert Bike.get_field("power").sort_wildcard == "%s:bike:*:hash->power" % namespace
    bike = Bike()
    with count_commands(2):  # the key allocates the pk (INCRBY, SADD collection)
        assert bike.name.key == "%s:bike:1:name" % namespace
    assert bike.power.key == bike.key == "%s:bike:1:hash" % namespace
    assert bike.name.make_key("a", 1, "b") == "a:1:b"


def test_proxy_get_and_proxy_set(Base):
    calls = []

    class Recording(SetField):
        def _call_command(self, name, *args, **kwargs):
            calls.append((name, args, kwargs))
            return len(calls)

    class M(Base):
        r = Recording()

    obj = M()
    assert obj.r.proxy_set(["a", "b"]) == 1
    assert obj.r.proxy_set(("c",)) == 2
    assert obj.r.proxy_set({"x"}) == 3
    assert obj.r.proxy_set({"k": 1}) == 4
    assert obj.r.proxy_set("solo") == 5
    assert obj.r.proxy_get() == 6
    assert calls == [
        ("sadd", ("a", "b"), {}),
        ("sadd", ("c",), {}),
        ("sadd", ("x",), {}),
        ("sadd", (), {"k": 1}),
        ("sadd", ("solo",), {}),
        ("smembers", (), {}),
    ]


def test_from_python():
    field = StringField()
    assert field.from_python(b"caf\xc3\xa9") == "café"
    assert field.from_python(123) == 123
    assert field.from_python(b"") == ""  # b'' is stored as '': its index key uses '' too


def test_exists_and_delete(Base):
    class M(Base):
        s = StringField()

    obj = M()
    assert obj.s.exists() is False
    obj.s.set("v")
    assert obj.s.exists() is True
    assert obj.s.delete() == 1
    assert obj.s.delete() == 0
    assert obj.s.exists() is False
    obj.s.set("v")
    obj.delete()
    assert obj.s.exists() is False


def test_get_for_instance(Base, count_commands):
    class M(Base):
        s = StringField()

    obj = M(s="v")
    model_field = M.get_field("s")
    with count_commands(0):
        other = model_field.get_for_instance(obj._pk)
    assert other._instance is not obj and other._instance._pk == obj._pk
    assert not other._instance.connected
    assert other.get() == "v"
    assert obj.s.get_for_instance(1)._instance._pk == "1"


def test_get_default_indexes(Base):
    class Special(StringField):
        default_indexes = ["from-field-class"]

    class M(Base):
        s = StringField(indexable=True)

    class WithModelDefault(Base):
        default_indexes = ["from-model"]
        s = StringField()

    assert Special().get_default_indexes() == ["from-field-class"]
    assert StringField().get_default_indexes() is None
    assert M.get_field("s").get_default_indexes() == [EqualIndex]
    assert M.get_field("s").index_classes == [EqualIndex]
    assert WithModelDefault.get_field("s").get_default_indexes() == ["from-model"]


# ---------------------------------------------------------------------- index plumbing (field side)


def test_indexes_are_shared_by_model_field_and_instances(Base):
    class M(Base):
        s = StringField(indexable=True)
        plain = StringField()

    model_indexes = M.get_field("s")._indexes
    assert len(model_indexes) == 1 and isinstance(model_indexes[0], EqualIndex)
    assert model_indexes[0].field is M.get_field("s")
    assert M().s._indexes is model_indexes
    assert M().s._indexes is model_indexes
    assert M.get_field("plain")._indexes == []


def test_indexable_field_without_index_classes():
    field = StringField(indexable=True)
    with pytest.raises(
        ImplementationError, match="^StringField field is indexable but has no indexes attached$"
    ):
        field._indexes


def test_get_index(Base):
    Rev = EqualIndex.configure(prefix="rev", transform=lambda value: value[::-1])
    Keyed = EqualIndex.configure(key="k")

    class M(Base):
        s = StringField(indexable=True, indexes=[EqualIndex, Rev, Keyed])
        plain = StringField()

    field = M.get_field("s")
    default, rev, keyed = field._indexes
    assert field.get_index(prefix="rev") is rev
    assert field.get_index(key="k") is keyed
    assert field.get_index(index_class=Rev) is rev
    assert field.get_index(key=None, prefix=None) is default
    assert M().s.get_index(prefix="rev") is rev
    with pytest.raises(ValueError, match="^More than one index matching filters$"):
        field.get_index(index_class=EqualIndex)
    with pytest.raises(ValueError, match="^More than one index matching filters$"):
        field.get_index()
    with pytest.raises(ValueError, match="^No indexes matching filters$"):
        field.get_index(prefix="nope")
    with pytest.raises(ValueError, match="^No indexes matching filters$"):
        M.get_field("plain").get_index()


def test_index_and_deindex(Base, client, namespace, count_commands):
    Rev = EqualIndex.configure(prefix="rev", transform=lambda value: value[::-1])

    class M(Base):
        s = StringField(indexable=True, indexes=[EqualIndex, Rev])
        tags = SetField(indexable=True)
        h = HashField(indexable=True)
        plain = StringField()

    obj = M(s="abc", tags=["x", "y"], h={"k": "v"})
    n = namespace + ":m"
    assert client.smembers(n + ":s:abc") == {"1"} and client.smembers(n + ":s:rev:cba") == {"1"}
    with count_commands(3):  # read + one SREM per index
        obj.s.deindex()
    assert not client.exists(n + ":s:abc", n + ":s:rev:cba")
    with count_commands(1):
        obj.s.index("zz", only_index=M.get_field("s").get_index(prefix="rev"))
    assert client.smembers(n + ":s:rev:zz") == {"1"} and not client.exists(n + ":s:zz")
    with count_commands(1):
        obj.s.deindex("zz", only_index=obj.s.get_index(prefix="rev"))
    with count_commands(3):
        obj.s.index()
    assert client.smembers(n + ":s:abc") == {"1"}

    with count_commands(2):  # no deduplication: one command per value
        obj.tags.index(["w", "w"])
    with count_commands(3):  # SMEMBERS + one SREM per member
        obj.tags.deindex()
    assert not client.exists(n + ":tags:x", n + ":tags:y")
    assert client.smembers(n + ":tags:w") == {"1"}
    obj.h.deindex({"k": "v"})
    assert not client.exists(n + ":h:k:v")
    obj.h.index({"a": "1", "b": None})  # None values are skipped
    assert client.smembers(n + ":h:a:1") == {"1"} and not client.exists(n + ":h:b:None")

    with pytest.raises(
        ImplementationError,
        match=r"\.plain\.index\(\): the field is not indexable: declare it with indexable=True",
    ):
        obj.plain.index("x")
    with pytest.raises(ImplementationError, match=r"\.plain\.deindex\(\): the field is not indexable"):
        obj.plain.deindex()


def test_uniqueness_checked_by_the_first_capable_index_only(Base, client, namespace, count_commands):
    NotChecking = EqualIndex.configure(prefix="up", transform=lambda v: v.upper(), handle_uniqueness=False)

    class M(Base):
        s = StringField(unique=True, indexes=[NotChecking, EqualIndex])

    field = M.get_field("s")
    assert field.get_unique_index() is field._indexes[1]
    obj = M()
    obj.pk.get()
    with count_commands(4 + 5):  # lock + GET, SADD up, SMEMBERS, SADD, SET
        obj.s.set("b")
    M(s="B")  # upper-cased values are not compared
    with pytest.raises(UniquenessError):
        M(s="b")


def test_check_uniqueness(Base, count_commands):
    class M(Base):
        s = StringField(unique=True)
        tags = SetField(unique=True)
        plain = StringField(indexable=True)

    M(s="taken", tags=["t"])
    obj = M()
    with count_commands(0):
        obj.plain.check_uniqueness("taken")
        obj.s.check_uniqueness(None)
        obj.tags.check_uniqueness([None])
    with count_commands(1):
        obj.s.check_uniqueness("free")
    with pytest.raises(UniquenessError, match='^Value "taken" already indexed for unique field M.s'):
        obj.s.check_uniqueness("taken")
    with pytest.raises(UniquenessError):
        obj.tags.check_uniqueness(["free", "t"])
    assert obj._pk is None  # nothing allocated


def test_get_unique_index_errors(Base):
    NoUnique = EqualIndex.configure(handle_uniqueness=False)

    class M(Base):
        s = StringField(unique=True, indexes=[NoUnique])
        plain = StringField(indexable=True)

    with pytest.raises(
        ImplementationError,
        match=r"\.M\.plain\.get_unique_index\(\): the field is not unique: declare it with unique=True$",
    ):
        M.get_field("plain").get_unique_index()
    with pytest.raises(
        ImplementationError, match="^Field M.s is unique but has no indexes capable of handling uniqueness$"
    ):
        M.get_field("s").get_unique_index()
    with pytest.raises(ImplementationError, match="capable of handling uniqueness"):
        M(s="x")


def test_instance_pk_property(Base):
    class WithPK(Base):
        id = PKField()
        s = StringField()

    class Auto(Base):
        s = StringField()

    with pytest.raises(ValueError):  # pk.get() of a PKField without pk: not swallowed
        WithPK().s._instance_pk
    assert WithPK(id="a").s._instance_pk == "a"
    obj = Auto()
    assert obj.s._instance_pk == "1"  # allocates, like pk.get()
    obj.delete()
    assert obj.s._instance_pk is None


def test_clear_and_rebuild_indexes_wrappers(Base):
    calls = []

    class Recording(EqualIndex):
        def clear(self, chunk_size=1000, aggressive=False):
            calls.append(("clear", self, chunk_size, aggressive))

        def rebuild(self, chunk_size=1000, aggressive_clear=False):
            calls.append(("rebuild", self, chunk_size, aggressive_clear))

    Other = Recording.configure(prefix="o")

    class M(Base):
        s = StringField(indexable=True, indexes=[Recording, Other])
        plain = StringField()

    field = M.get_field("s")
    first, second = field._indexes
    field.clear_indexes()
    field.clear_indexes(chunk_size=5, aggressive=True)
    field.rebuild_indexes()
    field.rebuild_indexes(chunk_size=7, aggressive_clear=True)
    assert calls == [
        ("clear", first, 1000, False),
        ("clear", second, 1000, False),
        ("clear", first, 5, True),
        ("clear", second, 5, True),
        ("rebuild", first, 1000, False),
        ("rebuild", second, 1000, False),
        ("rebuild", first, 7, True),
        ("rebuild", second, 7, True),
    ]
    message = (
        r"\.M\.s\.rebuild_indexes\(\) can only be called on a field attached to the model, not to an "
        r"instance: call it on M\.get_field\('s'\)$"
    )
    with pytest.raises(ImplementationError, match=message):
        M().s.clear_indexes()
    with pytest.raises(ImplementationError, match=message):
        M().s.rebuild_indexes()
    for method in (M.get_field("plain").clear_indexes, M.get_field("plain").rebuild_indexes):
        with pytest.raises(
            ImplementationError, match=r"\.M\.plain\.rebuild_indexes\(\): the field is not indexable"
        ):
            method()


def test_rollback_and_reset_of_the_rollback_caches(Base, client, namespace):
    class M(Base):
        s = StringField(indexable=True)

    obj = M(s="a")
    obj.s.index("b")
    obj.s.deindex("a")
    n = namespace + ":m"
    assert client.smembers(n + ":s:b") == {"1"} and not client.exists(n + ":s:a")
    obj.s._rollback_indexes()
    assert client.smembers(n + ":s:a") == {"1"} and not client.exists(n + ":s:b")
    obj.s.index("c")
    obj.s._reset_indexes_rollback_caches(obj._pk)
    obj.s._rollback_indexes()  # nothing recorded any more
    assert client.smembers(n + ":s:c") == {"1"}
