"""Tests of ``limpyd.indexes`` (docs/indexes.rst): key layout, filtering, uniqueness, rollback, clear/rebuild."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading

import pytest
import redis

from limpyd import fields, model
from limpyd.database import RedisDatabase
from limpyd.exceptions import ImplementationError, UniquenessError
from limpyd.indexes import (
    BaseIndex,
    BaseRangeIndex,
    EqualIndex,
    NumberRangeIndex,
    TextRangeIndex,
    _MultiFieldsIndexMixin,
)

TMP_RE = r"[0-9a-f]{32}"


# ---------------------------------------------------------------------- helpers


def dump(connection, pattern):
    """Return ``{key: content}`` for the keys matching ``pattern`` (sets, sorted sets)."""
    result = {}
    for key in connection.scan_iter(match=pattern):  # every primary on a cluster
        kind = connection.type(key)
        if kind == "set":
            result[key] = ("set", connection.smembers(key))
        elif kind == "zset":
            result[key] = ("zset", connection.zrange(key, 0, -1, withscores=True))
        else:
            result[key] = (kind, None)
    return result


def read_filter(index, suffix, *args, **kwargs):
    """Return the pks answering a filter (set, or list of (pk, score) for a zset), deleting temp keys."""
    connection = index.connection
    keys = index.get_filtered_keys(suffix, *args, **kwargs)
    if not keys:
        return set()
    assert len(keys) == 1
    key, kind, temporary = keys[0]
    try:
        if kind == "set":
            return connection.smembers(key)
        return connection.zrange(key, 0, -1, withscores=True)
    finally:
        if temporary:
            connection.delete(key)


def key_count(connection):
    return connection.dbsize()


class FakeField:
    """A stand-in model-level field: just what indexes read."""

    unique = False

    def __init__(self, model, name, unique=False):
        self._model = model
        self.name = name
        self.unique = unique

    def from_python(self, value):
        if value and isinstance(value, bytes):
            return value.decode("utf-8")
        return value

    def __repr__(self):
        return "<FakeField %s>" % self.name


class FakeModel:
    _name = "app:bike"


@pytest.fixture
def ns(namespace):
    """Return a namespace unique to the test (class bodies read it as ``namespace = ns``)."""
    return "ns" + namespace


# ---------------------------------------------------------------------- module


def test_module_does_not_import_the_database():
    code = "import sys, limpyd.indexes; assert 'limpyd.database' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_module_names_and_logger():
    import limpyd.indexes as indexes

    for name in (
        "BaseIndex",
        "EqualIndex",
        "BaseRangeIndex",
        "TextRangeIndex",
        "NumberRangeIndex",
        "_MultiFieldsIndexMixin",
    ):
        assert hasattr(indexes, name)
    assert indexes.logger.name == "limpyd.indexes"


# ---------------------------------------------------------------------- class attributes


def test_base_index_class_attributes():
    assert BaseIndex.handled_suffixes == set()
    assert BaseIndex.handle_uniqueness is False
    assert BaseIndex.key is None
    assert BaseIndex.prefix is None
    assert BaseIndex.transform is None
    assert BaseIndex.filter_single_field is True
    assert BaseIndex.configurable_attrs == {"prefix", "transform", "handle_uniqueness", "key", "name"}
    assert BaseIndex.supported_key_types == set()


def test_concrete_index_class_attributes():
    assert EqualIndex.handled_suffixes == {None, "eq", "in"}
    assert EqualIndex.handle_uniqueness is True
    assert EqualIndex.supported_key_types == {"set"}
    assert EqualIndex.key is None
    assert BaseRangeIndex.handle_uniqueness is True
    assert BaseRangeIndex.supported_key_types == {"set", "zset"}
    assert BaseRangeIndex.lua_filter_script is NotImplemented
    assert TextRangeIndex.handled_suffixes == {None, "eq", "gt", "gte", "lt", "lte", "startswith", "in"}
    assert TextRangeIndex.key == "text-range"
    assert TextRangeIndex.separator == ":TEXT-RANGE-SEPARATOR:"
    assert TextRangeIndex.configure(key="foo").separator == ":TEXT-RANGE-SEPARATOR:"
    assert NumberRangeIndex.handled_suffixes == {None, "eq", "gt", "gte", "lt", "lte", "in"}
    assert NumberRangeIndex.key == "number-range"
    assert NumberRangeIndex.raise_if_not_float is False
    assert isinstance(TextRangeIndex.lua_filter_script, dict) and "lua" in TextRangeIndex.lua_filter_script
    assert (
        isinstance(NumberRangeIndex.lua_filter_script, dict) and "lua" in NumberRangeIndex.lua_filter_script
    )


def test_base_index_abstract_methods():
    index = BaseIndex(FakeField(FakeModel, "name"))
    with pytest.raises(NotImplementedError):
        index.get_filtered_keys(None, "x")
    with pytest.raises(NotImplementedError):
        index.add(1, "x")
    with pytest.raises(NotImplementedError):
        index.remove(1, "x")
    with pytest.raises(NotImplementedError):
        index.get_all_storage_keys()
    range_index = BaseRangeIndex(FakeField(FakeModel, "name"))
    with pytest.raises(NotImplementedError):
        range_index.prepare_data_to_store(1, "x")
    with pytest.raises(NotImplementedError):
        range_index.get_boundaries("eq", "x")
    with pytest.raises(NotImplementedError):
        range_index.get_pks_for_filter("k", "eq", "x")


# ---------------------------------------------------------------------- construction, repr


def test_construction_properties_and_repr():
    class Conn:
        pass

    connection = Conn()
    field = FakeField(FakeModel, "name")
    field.connection = connection
    index = EqualIndex(field)
    assert index.field is field
    assert index.model is FakeModel
    assert index.connection is connection
    assert index._rollback_cache == {}
    default = object.__repr__(index)
    assert repr(index) == default[:-2] + " (field=<FakeField name>)>"


def test_repr_with_a_real_field(database, ns):
    db = database

    class R(model.RedisModel):
        database = db
        namespace = ns
        both = fields.StringField(indexable=True)

    index = R.get_field("both").get_index()
    assert re.fullmatch(
        r"<limpyd\.indexes\.EqualIndex object at 0x[0-9a-f]+ \(field=<limpyd\.fields\.StringField "
        r"object at 0x[0-9a-f]+ \(model=R, name=both\)>\)>",
        repr(index),
    )


# ---------------------------------------------------------------------- configure


def test_configure_returns_a_new_subclass():
    def reverse(value):
        return value[::-1]

    configured = EqualIndex.configure(prefix="rev", transform=reverse)
    assert configured is not EqualIndex and issubclass(configured, EqualIndex)
    assert configured.__name__ == "EqualIndex"
    assert configured.prefix == "rev"
    assert isinstance(configured.__dict__["transform"], staticmethod)
    assert configured.transform is reverse
    assert EqualIndex.prefix is None and EqualIndex.transform is None

    named = EqualIndex.configure(name="MyIdx", key="k")
    assert named.__name__ == "MyIdx" and named.key == "k"

    text = TextRangeIndex.configure(key="foo", prefix="qux", handle_uniqueness=False)
    assert (text.key, text.prefix, text.handle_uniqueness) == ("foo", "qux", False)
    assert TextRangeIndex.handle_uniqueness is True


def test_configure_refuses_unknown_arguments():
    with pytest.raises(TypeError) as info:
        EqualIndex.configure(prefix="x", foo=1)
    message = str(info.value)
    assert message.startswith("EqualIndex.configure only accepts these named arguments: ")
    assert set(message.split(": ", 1)[1].split(", ")) == BaseIndex.configurable_attrs


def test_handle_configurable_attrs():
    def up(value):
        return value.upper()

    name, attrs, remaining = EqualIndex.handle_configurable_attrs(
        prefix="p", key="k", handle_uniqueness=False, transform=up, name="N", other=1
    )
    assert name == "N"
    assert set(attrs) == {"prefix", "key", "handle_uniqueness", "transform"}
    assert attrs["prefix"] == "p" and attrs["key"] == "k" and attrs["handle_uniqueness"] is False
    assert isinstance(attrs["transform"], staticmethod)
    assert remaining == {"other": 1}
    assert EqualIndex.handle_configurable_attrs()[0] == "EqualIndex"


def test_configure_extension_by_subclass():
    class WithColor(EqualIndex):
        color = None
        configurable_attrs = EqualIndex.configurable_attrs | {"color"}

        @classmethod
        def handle_configurable_attrs(cls, **kwargs):
            name, attrs, kwargs = super().handle_configurable_attrs(**kwargs)
            if "color" in kwargs:
                attrs["color"] = kwargs.pop("color")
            return name, attrs, kwargs

    assert WithColor.configure(color="red").color == "red"
    with pytest.raises(TypeError, match="WithColor.configure only accepts"):
        WithColor.configure(size=1)


# ---------------------------------------------------------------------- suffixes


def test_remove_prefix_and_can_handle_suffix():
    assert EqualIndex.remove_prefix(None) is None
    assert EqualIndex.remove_prefix("in") == "in"
    assert EqualIndex.can_handle_suffix(None)
    assert EqualIndex.can_handle_suffix("eq")
    assert EqualIndex.can_handle_suffix("in")
    assert not EqualIndex.can_handle_suffix("gt")
    assert not EqualIndex.can_handle_suffix("rev")

    rev = EqualIndex.configure(prefix="rev")
    assert rev.remove_prefix("rev") is None
    assert rev.remove_prefix("rev__eq") == "eq"
    assert rev.remove_prefix("rev__in") == "in"
    assert rev.remove_prefix("rev__") is None
    with pytest.raises(IndexError):
        rev.remove_prefix(None)
    with pytest.raises(IndexError):
        rev.remove_prefix("eq")
    assert not rev.can_handle_suffix(None)  # a prefixed index never serves an unsuffixed filter
    assert not rev.can_handle_suffix("eq")
    assert rev.can_handle_suffix("rev")
    assert rev.can_handle_suffix("rev__eq")
    assert rev.can_handle_suffix("rev__in")
    assert not rev.can_handle_suffix("rev__gt")
    # D4: the prefix only matches at the start of the suffix
    assert not rev.can_handle_suffix("xrev__eq")
    with pytest.raises(IndexError):
        rev.remove_prefix("xrev__eq")
    assert not rev.can_handle_suffix("revx__eq")
    # works on instances too
    assert rev(FakeField(FakeModel, "name")).can_handle_suffix("rev")


# ---------------------------------------------------------------------- values


def test_normalize_value():
    index = EqualIndex(FakeField(FakeModel, "name"))
    assert index.normalize_value(b"rosalie") == "rosalie"
    assert index.normalize_value(123) == "123"
    assert index.normalize_value(15.1) == "15.1"
    assert index.normalize_value(None) == "None"
    assert index.transform_value("abc") == "abc"


def test_transform_forms():
    field = FakeField(FakeModel, "name")

    one = EqualIndex.configure(transform=lambda v: v[::-1])(field)
    assert one.normalize_value("rosalie") == "eilasor"
    assert one.normalize_value("rosalie", transform=False) == "rosalie"

    seen = []

    def two(index, value):
        seen.append(index)
        return index.field.name + "-" + value

    two_index = EqualIndex.configure(transform=two)(field)
    assert two_index.transform_value("x") == "name-x"
    assert seen == [two_index]

    class Method(EqualIndex):
        def transform(self, value):
            assert isinstance(self, Method)
            return value.upper()

    assert Method(field).normalize_value("abc") == "ABC"

    class Static(EqualIndex):
        transform = staticmethod(lambda index, value: "%s:%s" % (type(index).__name__, value))

    assert Static(field).transform_value("v") == "Static:v"

    class StarArgs(EqualIndex):
        transform = staticmethod(lambda *args: len(args))

    assert StarArgs(field).transform_value("v") == 2  # upstream tried (index, value) first


def test_transform_errors_propagate():
    field = FakeField(FakeModel, "name")
    index = EqualIndex.configure(transform=lambda v: v + 1)(field)
    with pytest.raises(TypeError):
        index.normalize_value("a")  # upstream swallowed it and indexed 'None'
    index = EqualIndex.configure(transform=lambda v: v.upper())(field)
    with pytest.raises(AttributeError):
        index.normalize_value(1)

    def two(index, value):
        raise TypeError("bad argument inside")

    with pytest.raises(TypeError, match="bad argument inside"):
        EqualIndex.configure(transform=two)(field).transform_value("x")


def test_transform_without_inspectable_signature():
    calls = []

    class Opaque:
        __signature__ = "not a signature"

        def __call__(self, *args):
            calls.append(len(args))
            if len(args) != 1:
                raise TypeError("takes exactly 1 argument")
            return args[0] * 2

    # inspect.signature refuses it: TypeError up to Python 3.12, ValueError from 3.13 on (both handled)
    with pytest.raises((TypeError, ValueError)):
        import inspect

        inspect.signature(Opaque())
    index = EqualIndex.configure(transform=Opaque())(FakeField(FakeModel, "name"))
    assert index.transform_value("ab") == "abab"
    assert calls == [2, 1]

    class OpaqueFailing(Opaque):
        def __call__(self, *args):
            raise TypeError("something else")

    index = EqualIndex.configure(transform=OpaqueFailing())(FakeField(FakeModel, "name"))
    with pytest.raises(TypeError, match="something else"):
        index.transform_value("ab")


# ---------------------------------------------------------------------- key layout


def test_verified_key_layout(database, ns):
    db = database

    class Person(model.RedisModel):
        database = db
        namespace = ns
        name = fields.StringField(indexable=True)
        email = fields.StringField(unique=True)
        nick = fields.StringField(indexable=True, indexes=[TextRangeIndex])
        age = fields.InstanceHashField(indexable=True, indexes=[NumberRangeIndex])
        tags = fields.SetField(indexable=True)
        todo = fields.ListField(indexable=True)
        scores = fields.SortedSetField(indexable=True)
        info = fields.HashField(indexable=True)

    class Q(model.RedisModel):
        database = db
        namespace = ns
        h = fields.HashField(
            indexable=True, indexes=[NumberRangeIndex, EqualIndex.configure(prefix="e", key="k")]
        )

    Person(
        name="john",
        email="j@x",
        nick="jo",
        age=30,
        tags=["a"],
        todo=["x", "x"],
        scores={"m1": 1},
        info={"k1": "v1"},
    )
    Person(nick="bobby", age="abc", info={"k1": "v1"})
    Q(h={"s": 10})
    Q(h={"s": 20})
    connection = database.connection
    expected = {
        "%s:person:name:john" % ns: ("set", {"1"}),
        "%s:person:email:j@x" % ns: ("set", {"1"}),
        "%s:person:nick:text-range" % ns: (
            "zset",
            [("bobby:TEXT-RANGE-SEPARATOR:2", 0.0), ("jo:TEXT-RANGE-SEPARATOR:1", 0.0)],
        ),
        "%s:person:age:number-range" % ns: ("zset", [("2", 0.0), ("1", 30.0)]),
        "%s:person:tags:a" % ns: ("set", {"1"}),
        "%s:person:todo:x" % ns: ("set", {"1"}),
        "%s:person:scores:m1" % ns: ("set", {"1"}),
        "%s:person:info:k1:v1" % ns: ("set", {"1", "2"}),
        "%s:q:h:s:number-range" % ns: ("zset", [("1", 10.0), ("2", 20.0)]),
        "%s:q:h:s:e:k:10" % ns: ("set", {"1"}),
        "%s:q:h:s:e:k:20" % ns: ("set", {"2"}),
    }
    index_keys = {
        key: value
        for key, value in dump(connection, ns + ":*").items()
        if value[0] in ("set", "zset") and not key.endswith(":collection") and not re.search(r":\d+:", key)
    }
    assert index_keys == expected


def test_equal_storage_keys():
    field = FakeField(type("M", (), {"_name": "app:bike"}), "name")
    index = EqualIndex(field)
    assert index.get_storage_key("rosalie") == "app:bike:name:rosalie"
    assert index.get_storage_key(123) == "app:bike:name:123"
    assert index.get_storage_key(b"rosalie") == "app:bike:name:rosalie"
    assert index.get_storage_key("a:b") == "app:bike:name:a:b"
    headers = EqualIndex(FakeField(type("E", (), {"_name": "app:email"}), "headers"))
    assert headers.get_storage_key("from", "foo@bar.com") == "app:email:headers:from:foo@bar.com"
    reverse = EqualIndex.configure(key="reverse-equal", transform=lambda v: v[::-1])(field)
    assert reverse.get_storage_key("rosalie") == "app:bike:name:reverse-equal:eilasor"
    assert reverse.get_storage_key("rosalie", transform_value=False) == "app:bike:name:reverse-equal:rosalie"
    both = EqualIndex.configure(prefix="p", key="k")(field)
    assert both.get_storage_key("h", "v") == "app:bike:name:h:p:k:v"


def test_range_storage_keys():
    item = type("I", (), {"_name": "app:item"})
    assert TextRangeIndex(FakeField(item, "name")).get_storage_key("whatever") == "app:item:name:text-range"
    assert TextRangeIndex(FakeField(item, "name")).get_storage_key(None) == "app:item:name:text-range"
    assert (
        TextRangeIndex(FakeField(item, "data")).get_storage_key("foo", "bar")
        == "app:item:data:foo:text-range"
    )
    assert NumberRangeIndex(FakeField(item, "n")).get_storage_key(1) == "app:item:n:number-range"
    configured = TextRangeIndex.configure(key="baz", prefix="qux")(FakeField(item, "f"))
    assert configured.get_storage_key("x") == "app:item:f:qux:baz"


def test_unique_key_names(database, ns, count_commands):
    db = database

    class P(model.RedisModel):
        database = db
        namespace = ns
        name = fields.StringField(
            indexable=True, indexes=[TextRangeIndex, EqualIndex.configure(name="MyIdx")]
        )

    text, mine = P.get_field("name")._indexes
    with count_commands(1):
        key = text._unique_key("tmp")
    assert re.fullmatch("%s:p:__index__:textrangeindex:tmp:%s" % (ns, TMP_RE), key)
    assert re.fullmatch("%s:p:__index__:myidx:%s" % (ns, TMP_RE), mine._unique_key())


# ---------------------------------------------------------------------- equal index: filtering


@pytest.fixture
def boats(database, ns):
    db = database

    class Boat(model.RedisModel):
        database = db
        namespace = ns
        name = fields.StringField(indexable=True)
        launched = fields.StringField(indexable=True)
        rev = fields.StringField(
            indexable=True, indexes=[EqualIndex.configure(prefix="rev", transform=lambda v: v[::-1])]
        )

    Boat(name="a", launched=1898, rev="bar")
    Boat(name="b", launched=1966, rev="foo")
    Boat(name="c", launched=1966, rev="bar")
    return Boat


def test_equal_filter_eq_sends_nothing(boats, count_commands):
    index = boats.get_field("launched").get_index()
    with count_commands(0):
        keys = index.get_filtered_keys(None, 1966, accepted_key_types={"set"})
        assert index.get_filtered_keys("eq", b"1966") == keys
    assert keys == [("%s:launched:1966" % boats._name, "set", False)]
    assert index.connection.smembers(keys[0][0]) == {"2", "3"}


def test_equal_filter_in(boats, count_commands, database):
    index = boats.get_field("launched").get_index()
    before = key_count(database.connection)
    with count_commands(2):  # EXISTS + SUNIONSTORE
        keys = index.get_filtered_keys("in", [1898, 1966, "1966"])
    [(key, kind, temporary)] = keys
    assert re.fullmatch("%s:__index__:equalindex:tmp:%s" % (boats._name, TMP_RE), key)
    assert (kind, temporary) == ("set", True)
    assert database.connection.smembers(key) == {"1", "2", "3"}
    database.connection.delete(key)
    # one value still goes through a union (+ SMEMBERS and DEL of the reading helper)
    with count_commands(4):
        assert read_filter(index, "in", (1898,)) == {"1"}
    # empty in: nothing, no command
    with count_commands(0):
        assert index.get_filtered_keys("in", []) == []
    # a str is iterated per character
    assert read_filter(boats.get_field("name").get_index(), "in", "ab") == {"1", "2"}
    assert key_count(database.connection) == before


def test_equal_filter_values_are_not_transformed_and_prefixed_in(boats):
    index = boats.get_field("rev").get_index()
    assert read_filter(index, "rev", "rab") == {"1", "3"}
    assert read_filter(index, "rev__eq", "oof") == {"2"}
    assert read_filter(index, "rev", "bar") == set()
    # D1: ``in`` recognised after removing the prefix
    assert read_filter(index, "rev__in", ["rab", "oof"]) == {"1", "2", "3"}
    assert read_filter(index, "rev__in", []) == set()


def test_accepted_key_types_check(boats):
    index = boats.get_field("name").get_index()
    with pytest.raises(ImplementationError, match="^EqualIndex can only return keys of type set$"):
        index.get_filtered_keys(None, "a", accepted_key_types={"zset"})
    assert index.get_filtered_keys(None, "a", accepted_key_types=set())  # empty: not checked
    assert index.get_filtered_keys(None, "a", accepted_key_types=["zset", "set"])


# ---------------------------------------------------------------------- write contract


def test_equal_add_remove_counts_and_rollback_cache(database, ns, count_commands):
    db = database

    class W(model.RedisModel):
        database = db
        namespace = ns
        plain = fields.StringField(indexable=True)
        uniq = fields.StringField(unique=True)
        h = fields.HashField(indexable=True)

    plain = W.get_field("plain").get_index()
    uniq = W.get_field("uniq").get_index()
    connection = database.connection
    with count_commands(1):
        plain.add("1", "x")
    with count_commands(1):
        plain.add("1", "y", check_uniqueness=True)  # not unique: no check
    with count_commands(2):
        uniq.add("1", "x")
    with count_commands(1):
        uniq.add("2", "z", check_uniqueness=False)
    with count_commands(1):
        plain.remove("1", "y")
    assert connection.smembers(W._name + ":plain:x") == {"1"}
    assert not connection.exists(W._name + ":plain:y")  # last pk gone: no key
    assert plain._get_rollback_cache("1") == {
        "indexed_values": {("x",), ("y",)},
        "deindexed_values": {("y",)},
    }
    h = W.get_field("h").get_index()
    h.add("3", "k1", "v1")
    assert connection.smembers(W._name + ":h:k1:v1") == {"3"}
    assert h._get_rollback_cache("3")["indexed_values"] == {("k1", "v1")}
    with pytest.raises(UniquenessError):
        uniq.add("9", "x")
    assert "9" not in connection.smembers(W._name + ":uniq:x")
    assert uniq._get_rollback_cache("9") == {"indexed_values": set(), "deindexed_values": set()}


def test_store_unstore_return_true(boats):
    index = boats.get_field("name").get_index()
    assert index.store(boats._name + ":name:zz", "7") is True
    assert index.unstore(boats._name + ":name:zz", "7") is True
    assert index.get_uniqueness_members(boats._name + ":name:a") == ["1"]


def test_add_and_remove_log_one_debug_line(boats, caplog):
    index = boats.get_field("name").get_index()
    text = TextRangeIndex(boats.get_field("name"))
    with caplog.at_level(logging.DEBUG, logger="limpyd.indexes"):
        index.add("8", "q")
        index.remove("8", "q")
        text.add("8", "q")
        text.remove("8", "q")
    records = [r for r in caplog.records if r.name == "limpyd.indexes"]
    assert len(records) == 4
    assert all(r.levelno == logging.DEBUG for r in records)


def test_range_store_without_score_sends_nothing(database, ns, count_commands):
    db = database

    class NoScore(NumberRangeIndex):
        def prepare_data_to_store(self, pk, value, **kwargs):
            return pk, None

    class S(model.RedisModel):
        database = db
        namespace = ns
        n = fields.StringField(indexable=True, indexes=[NoScore])

    index = S.get_field("n").get_index()
    with count_commands(0):
        assert index.store("k", "1", None) is False
        index.add("1", "5")
    assert index._get_rollback_cache("1")["indexed_values"] == set()
    with count_commands(1):
        index.remove("1", "5")
    assert index._get_rollback_cache("1")["deindexed_values"] == {("5",)}


def test_range_add_remove_counts(database, ns, count_commands):
    db = database

    class RR(model.RedisModel):
        database = db
        namespace = ns
        t = fields.StringField(indexable=True, indexes=[TextRangeIndex])
        u = fields.StringField(unique=True, indexes=[NumberRangeIndex])

    t = RR.get_field("t").get_index()
    u = RR.get_field("u").get_index()
    with count_commands(1):
        t.add("1", "foo")
    with count_commands(1):
        t.remove("1", "foo")
    with count_commands(2):  # ZRANGEBYSCORE + ZADD
        u.add("1", "30")
    with count_commands(1):
        u.add("2", "31", check_uniqueness=False)
    with count_commands(1):
        u.remove("2", "31")
    assert database.connection.zrange(RR._name + ":u:number-range", 0, -1, withscores=True) == [("1", 30.0)]


# ---------------------------------------------------------------------- uniqueness


def test_unique_index_name_and_assert_pks_uniqueness():
    class Bike:
        _name = "app:bike"

    index = EqualIndex(FakeField(Bike, "name", unique=True))
    assert index.unique_index_name == "unique field Bike.name"
    index.assert_pks_uniqueness([], "1", lambda: "x")
    index.assert_pks_uniqueness(["1", "1"], "1", lambda: "x")
    with pytest.raises(UniquenessError) as info:
        index.assert_pks_uniqueness(["2"], "1", lambda: 30.0)
    assert str(info.value) == 'Value "30.0" already indexed for unique field Bike.name (for instance 2)'
    with pytest.raises(UniquenessError, match=r"\(for instance 2\)"):
        index.assert_pks_uniqueness(["2"], None, lambda: "x")
    with pytest.raises(UniquenessError) as info:
        index.assert_pks_uniqueness(["2", "1", "2"], "1", lambda: "x")
    assert str(info.value) == "Multiple values indexed for unique field Bike.name: ['1', '2']"


def test_check_uniqueness_is_a_noop_for_non_unique_fields(boats, count_commands):
    with count_commands(0):
        boats.get_field("name").get_index().check_uniqueness("9", "a")
        TextRangeIndex(boats.get_field("name")).check_uniqueness("9", "a")


def test_uniqueness_with_equal_index(database, ns, count_commands):
    db = database

    class U(model.RedisModel):
        database = db
        namespace = ns
        n = fields.StringField(unique=True)

    U(n="30")
    U(n="30.0")  # different strings: no conflict
    before = sorted(database.connection.keys("*"))
    with pytest.raises(UniquenessError) as info:
        U(n="30")
    assert str(info.value) == 'Value "30" already indexed for unique field U.n (for instance 1)'
    assert sorted(database.connection.keys("*")) == before  # nothing allocated
    index = U.get_field("n").get_index()
    with count_commands(1):
        index.check_uniqueness("1", "30")  # the owner itself
    with pytest.raises(UniquenessError):
        index.check_uniqueness(None, "30")
    database.connection.sadd(U._name + ":n:30", "7")
    with pytest.raises(
        UniquenessError, match=r"^Multiple values indexed for unique field U.n: \['1', '7'\]$"
    ):
        index.check_uniqueness("1", "30")
    # update path: uniqueness checked before the write
    second = U(n="x")
    with pytest.raises(UniquenessError):
        second.n.set("30.0")
    assert second.n.get() == "x"
    assert database.connection.smembers(U._name + ":n:x") == {"3"}


def test_uniqueness_with_range_indexes_compares_normalized_values(database, ns):
    db = database

    class U(model.RedisModel):
        database = db
        namespace = ns
        n = fields.StringField(unique=True, indexes=[NumberRangeIndex])

    class T(model.RedisModel):
        database = db
        namespace = ns
        t = fields.StringField(unique=True, indexes=[TextRangeIndex])

    U(n=30)
    with pytest.raises(UniquenessError) as info:
        U(n="30.0")
    assert str(info.value) == 'Value "30.0" already indexed for unique field U.n (for instance 1)'
    U(n="31")

    T(t="foo")
    T(t="foobar")
    T(t="fo")
    with pytest.raises(UniquenessError, match='Value "foo" already indexed for unique field T.t'):
        T(t="foo")
    other = T(t="bar")
    with pytest.raises(UniquenessError):
        other.t.set("foo")
    assert other.t.get() == "bar"

    class UP(model.RedisModel):
        database = db
        namespace = ns
        t = fields.StringField(unique=True, indexes=[TextRangeIndex.configure(transform=lambda v: v.upper())])

    UP(t="foo")
    with pytest.raises(UniquenessError, match='^Value "fOo" already indexed for unique field UP.t'):
        UP(t="fOo")  # compared once transformed; the raw value is displayed


def test_only_first_capable_index_checks_and_handle_uniqueness_false(database, ns, count_commands):
    db = database

    class C(model.RedisModel):
        database = db
        namespace = ns
        n = fields.StringField(
            unique=True,
            indexes=[
                EqualIndex.configure(prefix="x", transform=lambda v: v.upper(), handle_uniqueness=False),
                TextRangeIndex,
            ],
        )

    C(n="b")
    C(n="B")  # the upper-casing index does not check uniqueness
    with pytest.raises(UniquenessError):
        C(n="b")
    assert database.connection.smembers(C._name + ":n:x:B") == {"1", "2"}
    # creation check: one ZRANGEBYLEX only (the text index), nothing written
    with count_commands(1):
        with pytest.raises(UniquenessError):
            C(n="B")

    class N(model.RedisModel):
        database = db
        namespace = ns
        n = fields.StringField(unique=True, indexes=[EqualIndex.configure(handle_uniqueness=False)])

    with pytest.raises(
        ImplementationError, match="^Field N.n is unique but has no indexes capable of handling"
    ):
        N(n="a")


# ---------------------------------------------------------------------- rollback


def test_rollback_cache_per_thread_and_pk(boats):
    index = boats.get_field("name").get_index()
    index.add("1", "zz")
    index.remove("1", "a")
    cache = index._get_rollback_cache("1")
    assert cache == {"indexed_values": {("zz",)}, "deindexed_values": {("a",)}}
    assert index._get_rollback_cache("1") is cache
    assert index._get_rollback_cache("2") == {"indexed_values": set(), "deindexed_values": set()}
    other = {}

    def in_thread():
        other["cache"] = index._get_rollback_cache("1")
        index._reset_rollback_cache("1")

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert other["cache"] == {"indexed_values": set(), "deindexed_values": set()}
    assert index._get_rollback_cache("1") is cache  # untouched by the other thread

    connection = index.connection
    index._rollback("1")
    assert not connection.exists(boats._name + ":name:zz")
    assert connection.smembers(boats._name + ":name:a") == {"1"}
    index._reset_rollback_cache("1")
    assert index._get_rollback_cache("1") == {"indexed_values": set(), "deindexed_values": set()}


def test_rollback_removes_first_then_re_adds(boats):
    index = boats.get_field("name").get_index()
    # a value deindexed then indexed again (strategy R): the rollback leaves it indexed
    index.remove("1", "a")
    index.add("1", "a")
    index._rollback("1")
    assert index.connection.smembers(boats._name + ":name:a") == {"1"}
    index._reset_rollback_cache("1")


def test_rollback_of_range_index(database, ns):
    db = database

    class RB(model.RedisModel):
        database = db
        namespace = ns
        t = fields.StringField(indexable=True, indexes=[TextRangeIndex])

    index = RB.get_field("t").get_index()
    index.add("1", "old")
    index._reset_rollback_cache("1")
    index.remove("1", "old")
    index.add("1", "new")
    index._rollback("1")
    assert database.connection.zrange(RB._name + ":t:text-range", 0, -1) == ["old:TEXT-RANGE-SEPARATOR:1"]


def test_failed_write_keeps_the_old_index_entry(database, ns):
    db = database

    class F(model.RedisModel):
        database = db
        namespace = ns
        s = fields.StringField(indexable=True)

    instance = F(s="old")
    with pytest.raises(redis.exceptions.DataError):
        instance.s.set(True)
    assert database.connection.smembers(F._name + ":s:old") == {"1"}
    assert not database.connection.exists(F._name + ":s:True")
    assert F.get_field("s").get_index()._rollback_cache == {}


def test_uniqueness_error_in_a_later_index_rolls_back_the_earlier_one(database, ns):
    db = database

    class L(model.RedisModel):
        database = db
        namespace = ns
        n = fields.StringField(
            unique=True, indexes=[EqualIndex.configure(key="k", handle_uniqueness=False), TextRangeIndex]
        )

    L(n="foo")
    other = L(n="bar")
    with pytest.raises(UniquenessError):
        other.n.set("foo")
    connection = database.connection
    assert connection.smembers(L._name + ":n:k:foo") == {"1"}
    assert connection.smembers(L._name + ":n:k:bar") == {"2"}
    assert sorted(connection.zrange(L._name + ":n:text-range", 0, -1)) == [
        "bar:TEXT-RANGE-SEPARATOR:2",
        "foo:TEXT-RANGE-SEPARATOR:1",
    ]


# ---------------------------------------------------------------------- text range filters


@pytest.fixture
def texts(database, ns):
    db = database

    class Txt(model.RedisModel):
        database = db
        namespace = ns
        t = fields.StringField(indexable=True, indexes=[TextRangeIndex])

    for value in ("foo", "bar", "foobar", "foobar", "qux"):  # pks 1..5
        Txt(t=value)
    return Txt


def test_text_range_filters(texts, database):
    index = texts.get_field("t").get_index()
    before = key_count(database.connection)
    assert read_filter(index, None, "foo") == {"1"}
    assert read_filter(index, "eq", "foobar") == {"3", "4"}
    assert read_filter(index, "gt", "foo") == {"3", "4", "5"}
    assert read_filter(index, "gte", "foo") == {"1", "3", "4", "5"}
    assert read_filter(index, "lt", "foobar") == {"1", "2"}
    assert read_filter(index, "lte", "foo") == {"1", "2"}
    assert read_filter(index, "startswith", "foo") == {"1", "3", "4"}
    assert read_filter(index, "gt", "zzz") == set()
    assert read_filter(index, "lt", "aaa") == set()
    assert read_filter(index, "startswith", "quz") == set()
    assert read_filter(index, "eq", "fo") == set()
    assert read_filter(index, "in", ["foo", "qux", "nope"]) == {"1", "5"}
    assert read_filter(index, "in", []) == set()
    assert key_count(database.connection) == before  # no temporary key left, none for no match


def test_text_range_filter_command_counts(texts, count_commands):
    index = texts.get_field("t").get_index()
    read_filter(index, "eq", "foo")  # make sure the script is loaded on the server
    with count_commands(4) as _:  # EXISTS, EVALSHA (ZRANGEBYLEX, SADD inside)
        keys = index.get_filtered_keys("gte", "foo")
    with count_commands(3):  # no match: no SADD
        keys += index.get_filtered_keys("gt", "zzz")
    index.connection.delete(*[key for key, _, _ in keys])
    # in: EXISTS + per value (EXISTS, EVALSHA, ZRANGEBYLEX, [SADD]) + SUNIONSTORE + one DEL per value
    with count_commands(1 + 4 + 3 + 1 + 2):
        keys = index.get_filtered_keys("in", ["foo", "nope"])
    assert index.connection.smembers(keys[0][0]) == {"1"}
    # empty in: the temporary key name is still reserved
    with count_commands(1):
        assert index.get_filtered_keys("in", []) == []


def test_text_range_zset_destination_and_paging(database, ns, count_commands):
    db = database

    class Many(model.RedisModel):
        database = db
        namespace = ns
        t = fields.StringField(indexable=True, indexes=[TextRangeIndex])

    index = Many.get_field("t").get_index()
    key = index.get_storage_key("x")
    database.connection.zadd(key, {"v%03d%sp%03d" % (i, index.separator, i): 0 for i in range(250)})
    read_filter(index, "eq", "nothing")
    with count_commands(2 + 3 + 3):  # EXISTS, EVALSHA, 3 pages * (ZRANGEBYLEX + SADD)
        keys = index.get_filtered_keys("startswith", "v", accepted_key_types={"set"})
    assert len(database.connection.smembers(keys[0][0])) == 250
    database.connection.delete(keys[0][0])
    [(zkey, kind, temporary)] = index.get_filtered_keys("startswith", "v", accepted_key_types={"zset"})
    assert (kind, temporary) == ("zset", True)
    scores = database.connection.zrange(zkey, 0, -1, withscores=True)
    assert len(scores) == 250
    assert max(score for _, score in scores) == 99.0  # position within the page (upstream quirk)
    assert database.connection.zscore(zkey, "p000") == 0.0
    assert database.connection.zscore(zkey, "p100") == 0.0
    assert database.connection.zscore(zkey, "p249") == 49.0
    database.connection.delete(zkey)
    # exactly 100 matches: a second, empty page is read
    read_filter(index, "eq", "nothing")
    with count_commands(2 + 2 + 1):
        keys = index.get_filtered_keys("startswith", "v0")
    assert len(database.connection.smembers(keys[0][0])) == 100


def test_text_range_empty_string_values_match(database, ns):
    db = database

    class E(model.RedisModel):
        database = db
        namespace = ns
        t = fields.StringField(indexable=True, indexes=[TextRangeIndex])

    E(t="")
    E(t="a")
    E(t="b")
    index = E.get_field("t").get_index()
    assert database.connection.zrange(index.get_storage_key(""), 0, -1)[0] == ":TEXT-RANGE-SEPARATOR:1"
    # D2: "no exclusion" excludes nothing
    assert read_filter(index, None, "") == {"1"}
    assert read_filter(index, "lte", "b") == {"1", "2", "3"}
    assert read_filter(index, "lt", "a") == {"1"}
    assert read_filter(index, "in", [""]) == {"1"}
    assert read_filter(index, "startswith", "") == {"1", "2", "3"}
    assert read_filter(index, "gte", "") == {"1", "2", "3"}
    # a real exclusion of the empty string still works
    assert read_filter(index, "gt", "") == {"2", "3"}
    assert index.get_pks_for_filter(index.get_storage_key(""), "gt", "") == ["2", "3"]
    assert index.get_pks_for_filter(index.get_storage_key(""), "eq", "") == ["1"]


def test_text_range_lte_quirk_and_bytes_boundaries(database, ns):
    db = database

    class Q(model.RedisModel):
        database = db
        namespace = ns
        t = fields.StringField(indexable=True, indexes=[TextRangeIndex])

    for value in ("a!", "a b", "a:", "a;", "a", "a\u20ac", "b", "\u00e9t\u00e9", "\u00ea"):
        Q(t=value)
    index = Q.get_field("t").get_index()
    assert read_filter(index, "lte", "a") == {"1", "2", "3", "5"}
    # \xff is the single byte 0xFF: prefix matching works for any UTF-8 continuation
    assert read_filter(index, "startswith", "a") == {"1", "2", "3", "4", "5", "6"}
    assert read_filter(index, "startswith", "\u00e9") == {"8"}
    assert read_filter(index, "eq", "a\u20ac") == {"6"}
    separator = index.separator
    assert index.get_boundaries("eq", "v") == ("[v" + separator, b"[v" + separator.encode() + b"\xff", None)
    assert index.get_boundaries(None, "v") == index.get_boundaries("eq", "v")
    assert index.get_boundaries("gt", "v") == ("(v", "+", "v")
    assert index.get_boundaries("gte", "v") == ("[v", "+", None)
    assert index.get_boundaries("lt", "v") == ("-", "(v", "v")
    assert index.get_boundaries("lte", "v") == ("-", b"[v" + separator.encode() + b"\xff", None)
    assert index.get_boundaries("startswith", "\u00e9") == ("[\u00e9", b"[\xc3\xa9\xff", None)
    with pytest.raises(ValueError, match=r"^Invalid filter type 'contains' for TextRangeIndex: use one of "):
        index.get_boundaries("contains", "v")
    assert index._extract_value_from_storage("a" + separator + "b" + separator + "7") == (
        "a" + separator + "b",
        "7",
    )
    assert index.prepare_data_to_store("7", b"x") == ("x" + separator + "7", 0)


def test_text_range_prefix_key_and_transform(database, ns):
    db = database

    class P(model.RedisModel):
        database = db
        namespace = ns
        t = fields.StringField(
            indexable=True,
            indexes=[TextRangeIndex.configure(key="foo", prefix="qux", transform=lambda v: v.upper())],
        )

    P(t="abc")
    P(t="abd")
    index = P.get_field("t").get_index()
    assert database.connection.zrange(P._name + ":t:qux:foo", 0, -1) == [
        "ABC:TEXT-RANGE-SEPARATOR:1",
        "ABD:TEXT-RANGE-SEPARATOR:2",
    ]
    assert read_filter(index, "qux", "ABC") == {"1"}
    assert read_filter(index, "qux", "abc") == set()  # filter values are not transformed
    assert read_filter(index, "qux__gt", "ABC") == {"2"}
    # D1: a prefixed range index serves ``in`` after prefix removal
    assert read_filter(index, "qux__in", ["ABD", "X"]) == {"2"}
    assert read_filter(index, "qux__in", ["X"]) == set()
    [(key, _, _)] = index.get_filtered_keys("qux__in", ["ABC"])
    assert re.fullmatch("%s:__index__:textrangeindex:tmp:%s" % (P._name, TMP_RE), key)
    index.connection.delete(key)


def test_text_range_hash_field(database, ns):
    db = database

    class H(model.RedisModel):
        database = db
        namespace = ns
        headers = fields.HashField(indexable=True, indexes=[TextRangeIndex])

    H(headers={"from": "a@b", "to": "c@d"})
    H(headers={"from": "c@d"})
    index = H.get_field("headers").get_index()
    assert database.connection.zrange(H._name + ":headers:from:text-range", 0, -1) == [
        "a@b:TEXT-RANGE-SEPARATOR:1",
        "c@d:TEXT-RANGE-SEPARATOR:2",
    ]
    assert read_filter(index, None, "from", "c@d") == {"2"}
    assert read_filter(index, "gt", "from", "a") == {"1", "2"}
    assert read_filter(index, "in", "to", ["c@d"]) == {"1"}


def test_range_accepted_key_types(texts):
    index = texts.get_field("t").get_index()
    with pytest.raises(ImplementationError, match="^TextRangeIndex can only return keys of type set, zset$"):
        index.get_filtered_keys(None, "foo", accepted_key_types={"list"})
    assert index.get_filtered_keys(None, "x", accepted_key_types={"zset", "set"})[0][1] == "set"
    assert read_filter(index, "eq", "foobar", accepted_key_types={"zset"}) == [("3", 0.0), ("4", 1.0)]
    assert read_filter(index, "in", ["foobar", "foo"], accepted_key_types={"zset"}) in (
        [("1", 0.0), ("3", 0.0), ("4", 1.0)],
        [("3", 0.0), ("1", 0.0), ("4", 1.0)],
    )


def test_lua_script_dict_shared_by_configured_subclasses(texts):
    index = texts.get_field("t").get_index()
    read_filter(index, "eq", "foo")
    script = TextRangeIndex.lua_filter_script["script_object"]
    configured = TextRangeIndex.configure(key="other")(texts.get_field("t"))
    assert configured.lua_filter_script is TextRangeIndex.lua_filter_script
    read_filter(configured, "eq", "foo")
    assert TextRangeIndex.lua_filter_script["script_object"] is script


def test_call_script_arguments(texts, monkeypatch):
    index = texts.get_field("t").get_index()
    calls = []
    monkeypatch.setattr(texts.database, "call_script", lambda **kwargs: calls.append(kwargs))
    index.call_script("k", "tmp", "set", "[a", "+", None)
    index.call_script("k", "tmp", "zset", "(a", "+", "a")
    assert calls[0] == {
        "script_dict": TextRangeIndex.lua_filter_script,
        "keys": ["k", "tmp"],
        "args": ["set", "[a", "+", "", index.separator],
    }
    assert calls[1]["args"][0] == "zset"
    assert calls[1]["args"][3] != ""  # an exclusion is encoded, distinct from "none"
    assert calls[1]["args"][4] == index.separator


# ---------------------------------------------------------------------- number range filters


@pytest.fixture
def numbers(database, ns):
    db = database

    class Num(model.RedisModel):
        database = db
        namespace = ns
        value = fields.InstanceHashField(indexable=True, indexes=[NumberRangeIndex])
        cat = fields.StringField(indexable=True)

    for value in (-15, -25, 30, 30, 123):  # pks 1..5
        Num(value=value, cat="cat1")
    return Num


def test_number_range_filters(numbers, database, count_commands):
    index = numbers.get_field("value").get_index()
    before = key_count(database.connection)
    assert read_filter(index, "gt", -15) == {"3", "4", "5"}
    assert read_filter(index, "lte", 30) == {"1", "2", "3", "4"}
    assert read_filter(index, "lt", -25) == set()
    assert read_filter(index, "gte", "-15") == {"1", "3", "4", "5"}
    assert read_filter(index, None, 30.0) == {"3", "4"}
    assert read_filter(index, "eq", "123") == {"5"}
    assert read_filter(index, "in", (1898, 1964, 11, 1955, 0, -25)) == {"2"}
    assert key_count(database.connection) == before
    with count_commands(4):  # EXISTS, EVALSHA (ZRANGEBYSCORE, SADD)
        keys = index.get_filtered_keys("gt", -25)
    assert database.connection.smembers(keys[0][0]) == {"1", "3", "4", "5"}
    database.connection.delete(keys[0][0])


def test_number_range_boundaries_and_normalization(numbers):
    index = numbers.get_field("value").get_index()
    assert index.get_boundaries(None, 30.0) == ("30.0", "30.0", None)
    assert index.get_boundaries("eq", 30.0) == ("30.0", "30.0", None)
    assert index.get_boundaries("gt", -15.0) == ("(-15.0", "+inf", None)
    assert index.get_boundaries("gte", 1.5) == ("1.5", "+inf", None)
    assert index.get_boundaries("lt", 0) == ("-inf", "(0", None)
    assert index.get_boundaries("lte", 2.0) == ("-inf", "2.0", None)
    with pytest.raises(
        ValueError, match=r"^Invalid filter type 'startswith' for NumberRangeIndex: use one of "
    ):
        index.get_boundaries("startswith", 1.0)
    assert index.normalize_value("30") == 30.0
    assert index.normalize_value(b"1.5") == 1.5
    assert index.normalize_value("abc") == 0 and isinstance(index.normalize_value("abc"), int)
    assert index.normalize_value(None) == 0
    assert index.prepare_data_to_store("4", "2") == ("4", 2.0)
    assert index.get_pks_for_filter(index.get_storage_key(1), "eq", 30.0) == ["3", "4"]


def test_number_range_non_numeric_values(database, ns):
    db = database

    class NN(model.RedisModel):
        database = db
        namespace = ns
        v = fields.StringField(indexable=True, indexes=[NumberRangeIndex])

    NN(v="abc")
    NN(v="2")
    index = NN.get_field("v").get_index()
    assert database.connection.zrange(index.get_storage_key(None), 0, -1, withscores=True) == [
        ("1", 0.0),
        ("2", 2.0),
    ]
    assert NN(1).v.get() == "abc"
    assert read_filter(index, None, "xyz") == {"1"}  # a non-numeric filter value filters as 0

    class Strict(NumberRangeIndex):
        raise_if_not_float = True

    strict = Strict(NN.get_field("v"))
    with pytest.raises(ValueError, match="^Invalid value abc for field NN.v$"):
        strict.normalize_value("abc")
    assert strict.normalize_value("3") == 3.0
    with pytest.raises(TypeError):
        NumberRangeIndex.configure(raise_if_not_float=True)


def test_number_range_with_prefix_and_hash_field(database, ns):
    db = database

    class Q(model.RedisModel):
        database = db
        namespace = ns
        h = fields.HashField(indexable=True, indexes=[NumberRangeIndex.configure(prefix="p")])

    Q(h={"s": 10})
    Q(h={"s": 20, "t": 5})
    index = Q.get_field("h").get_index()
    assert database.connection.zrange(Q._name + ":h:s:p:number-range", 0, -1, withscores=True) == [
        ("1", 10.0),
        ("2", 20.0),
    ]
    assert read_filter(index, "p__gt", "s", 10) == {"2"}
    assert read_filter(index, "p", "t", 5) == {"2"}
    assert read_filter(index, "p__in", "s", [10, 20, 30]) == {"1", "2"}


def test_filters_on_one_field_intersect(texts, database):
    index = texts.get_field("t").get_index()
    keys = index.get_filtered_keys("gt", "bar") + index.get_filtered_keys("lte", "foobar")
    connection = database.connection
    assert connection.sinter([key for key, _, _ in keys]) == {"1", "3", "4"}
    connection.delete(*[key for key, _, _ in keys])


# ---------------------------------------------------------------------- storage keys


def test_get_all_storage_keys(database, ns):
    db = database

    class Item(model.RedisModel):
        database = db
        namespace = ns
        f = fields.StringField(
            indexable=True,
            indexes=[EqualIndex.configure(key="foo"), TextRangeIndex.configure(prefix="qux", key="baz")],
        )
        h = fields.HashField(indexable=True, indexes=[EqualIndex, TextRangeIndex])
        g = fields.StringField(indexable=True)

    Item(f="aaa", h={"k1": "v1", "k2": "v2"}, g="x")
    Item(f="bbb", h={"k1": "v3"}, g="y")
    name = Item._name
    equal, text = Item.get_field("f")._indexes
    assert equal.get_all_storage_keys() == {name + ":f:foo:aaa", name + ":f:foo:bbb"}
    assert text.get_all_storage_keys() == {name + ":f:qux:baz"}
    h_equal, h_text = Item.get_field("h")._indexes
    assert h_text.get_all_storage_keys() == {name + ":h:k1:text-range", name + ":h:k2:text-range"}
    # the plain pattern M:F:* also matches the keys of the other index of the field (kept)
    assert h_equal.get_all_storage_keys() == {
        name + ":h:k1:v1",
        name + ":h:k2:v2",
        name + ":h:k1:v3",
        name + ":h:k1:text-range",
        name + ":h:k2:text-range",
    }
    assert Item.get_field("g").get_index().get_all_storage_keys() == {name + ":g:x", name + ":g:y"}


# ---------------------------------------------------------------------- clear / rebuild


def test_clear_and_rebuild_walk(database, ns, count_commands):
    db = database

    class Walk(model.RedisModel):
        database = db
        namespace = ns
        id = fields.PKField()
        name = fields.StringField(indexable=True, indexes=[EqualIndex, TextRangeIndex])
        tags = fields.SetField(indexable=True)

    for pk in ("x", "b", "a10", "a2", "zz"):  # non-numeric pks (D6)
        Walk(id=pk, name="n-" + pk, tags=["t1", pk])
    Walk(id="empty")
    connection = database.connection
    equal, text = Walk.get_field("name")._indexes
    text_key = text.get_storage_key(None)
    before = dump(connection, Walk._name + ":*")
    # 6 pks, chunks of 2: 3 SORTs (the last chunk has 2 pks: a fourth, empty one is asked),
    # then per instance one read, plus one SREM for the 5 with a value
    with count_commands(4 + 6 + 5):
        equal.clear(chunk_size=2)
    assert not connection.keys(Walk._name + ":name:n-*")
    assert connection.zcard(text_key) == 5  # the other index is untouched
    with count_commands(4 + 6 + 5 + 4 + 6 + 5):
        equal.rebuild(chunk_size=2)
    assert dump(connection, Walk._name + ":*") == before
    assert equal._rollback_cache == {}

    tags = Walk.get_field("tags").get_index()
    tags.clear()
    assert not connection.keys(Walk._name + ":tags:*")
    tags.rebuild()
    assert dump(connection, Walk._name + ":*") == before

    Walk.get_field("name").clear_indexes()
    assert not connection.exists(text_key)
    assert not connection.keys(Walk._name + ":name:n-*")
    Walk.get_field("name").rebuild_indexes(chunk_size=3)
    assert dump(connection, Walk._name + ":*") == before

    with pytest.raises(ValueError):
        equal.clear(chunk_size=0)


def test_clear_and_rebuild_hash_field(database, ns):
    db = database

    class HW(model.RedisModel):
        database = db
        namespace = ns
        h = fields.HashField(indexable=True, indexes=[TextRangeIndex])

    HW(h={"a": "1", "b": "2"})
    HW(h={"a": "3"})
    HW()
    connection = database.connection
    before = dump(connection, HW._name + ":h:*")
    assert len(before) == 2
    index = HW.get_field("h").get_index()
    index.clear()
    assert dump(connection, HW._name + ":h:*") == {}
    index.rebuild()
    assert dump(connection, HW._name + ":h:*") == before


def test_aggressive_clear_on_plain_database(database, ns, count_commands):
    db = database

    class AG(model.RedisModel):
        database = db
        namespace = ns
        name = fields.StringField(indexable=True, indexes=[EqualIndex, TextRangeIndex])
        other = fields.StringField(indexable=True)

    for value in ("a", "b", "c"):
        AG(name=value, other=value)
    connection = database.connection
    equal, text = AG.get_field("name")._indexes
    # 2 SCANs, then 4 DELs (the pattern also matches the text-range key: kept upstream behaviour)
    with count_commands(2 + 4):
        equal.clear(aggressive=True)
    assert not connection.keys(AG._name + ":name:*")
    assert len(connection.keys(AG._name + ":other:*")) == 3
    with count_commands(2):  # nothing left: no DEL, no pipeline
        equal.clear(aggressive=True)
    equal.rebuild(aggressive_clear=True)
    text.rebuild(aggressive_clear=True)
    assert len(connection.keys(AG._name + ":name:*")) == 4

    class AU(model.RedisModel):
        database = db
        namespace = ns
        u = fields.StringField(unique=True)

    AU(u="a")
    AU(u="b")
    connection.set(AU._name + ":2:u", "a")  # a duplicate written behind limpyd's back
    with pytest.raises(UniquenessError, match='^Value "a" already indexed for unique field AU.u'):
        AU.get_field("u").rebuild_indexes(aggressive_clear=True)  # uniqueness is checked again


def test_aggressive_clear_uses_the_database_pipeline_hook(redis_settings, ns, count_commands):
    # the index asks its database for the pipeline through one explicit hook
    # (PipelineDatabase overrides it), not by looking for a ``pipeline`` method
    calls = []

    class PipeDatabase(RedisDatabase):
        def _non_transactional_pipeline(self):
            calls.append(False)
            return self.connection.pipeline(transaction=False)

    db = PipeDatabase(**redis_settings)

    class PD(model.RedisModel):
        database = db
        namespace = ns
        name = fields.StringField(indexable=True)

    PD(name="a")
    PD(name="b")
    index = PD.get_field("name").get_index()
    try:
        with count_commands(2 + 2):
            index.clear(aggressive=True)
        assert calls == [False]
        assert not db.connection.keys(PD._name + ":name:*")
    finally:
        db.connection.flushall()


def test_aggressive_clear_sends_no_transaction(database, ns):
    db = database

    class NT(model.RedisModel):
        database = db
        namespace = ns
        name = fields.StringField(indexable=True)

    NT(name="a")
    NT(name="b")
    monitored = []
    with database.connection.monitor() as monitor:
        NT.get_field("name").get_index().clear(aggressive=True)
        database.connection.ping()
        for entry in monitor.listen():
            command = entry["command"].split()[0].upper()
            if command == "PING":
                break
            monitored.append(command)
    assert "MULTI" not in monitored and "EXEC" not in monitored
    assert monitored.count("DEL") == 2


# ---------------------------------------------------------------------- hooks and multi-field mixin


def test_field_model_ready_hook_is_called(database, ns):
    db = database
    calls = []

    class Hooked(EqualIndex):
        @classmethod
        def _field_model_ready(cls, model, field):
            calls.append((cls, model, field))

    assert BaseIndex._field_model_ready(object, None) is None

    class HM(model.RedisModel):
        database = db
        namespace = ns
        a = fields.StringField(indexable=True, indexes=[Hooked])

    assert calls == [(Hooked, HM, HM.get_field("a"))]


class Combined(_MultiFieldsIndexMixin, EqualIndex):
    calls = 0

    def _can_filter_fields(self, fields_and_suffixes):
        type(self).calls += 1
        self.received = fields_and_suffixes
        names = {name for name, _ in fields_and_suffixes}
        if {"a", "b"} <= names:
            return [("a", {None, "eq"}), ("b", {"in"})]
        return []


def test_multi_fields_mixin_attributes_and_configure():
    assert Combined.filter_single_field is False
    assert Combined.unique is False
    assert Combined.handle_uniqueness is False
    with pytest.raises(TypeError) as info:
        Combined.configure(handle_uniqueness=True)
    assert str(info.value).startswith("Combined.configure only accepts these named arguments: ")
    assert "handle_uniqueness" not in str(info.value)
    assert "handle_uniqueness" in BaseIndex.configurable_attrs
    assert "handle_uniqueness" in EqualIndex.configurable_attrs
    assert Combined.configure(prefix="p").prefix == "p"
    index = _MultiFieldsIndexMixin()
    with pytest.raises(NotImplementedError):
        index._can_filter_fields([])
    with pytest.raises(NotImplementedError):
        index.check_uniqueness_at_init({})


def test_multi_fields_can_filter_fields():
    index = Combined(FakeField(FakeModel, "a"))
    Combined.calls = 0
    result = index.can_filter_fields([("b", "in"), ("a", None), ("a", "eq")])
    assert sorted(result, key=repr) == sorted(
        [
            (("a", None), ("b", "in")),
            (("a", "eq"), ("b", "in")),
        ],
        key=repr,
    )
    assert index.received == [("a", None), ("a", "eq"), ("b", "in")]
    assert index.can_filter_fields([("a", "eq"), ("a", None), ("b", "in")]) == result
    assert Combined.calls == 1  # memoized
    assert index.can_filter_fields([("a", None)]) == []
    assert Combined.calls == 2
    other = Combined(FakeField(FakeModel, "a"))
    other.can_filter_fields([("b", "in"), ("a", None), ("a", "eq")])
    assert Combined.calls == 3  # per index instance
