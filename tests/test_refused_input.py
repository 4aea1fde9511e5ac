"""Values, pks, field names and filters that cannot be stored or served are refused up front.

Each refusal names the value, the model/field and the fix, and leaves Redis exactly as it was
(full dump compared). See docs/failure-semantics.rst, "Bad input".
"""

from __future__ import annotations

import pytest
import redis
from _redis_dump import command_log, dump, layout, raw_client, warm_scripts

from limpyd import model
from limpyd.exceptions import ImplementationError
from limpyd.fields import InstanceHashField, PKField, SetField, StringField
from limpyd.indexes import EqualIndex, NumberRangeIndex, TextRangeIndex


@pytest.fixture
def raw(redis_settings, database):
    client = raw_client(redis_settings, decode=False)
    warm_scripts(client)
    yield client
    client.close()


def _define(_database, _namespace, _model_name, **fields):
    return type(_model_name, (model.RedisModel,), {"database": _database, "namespace": _namespace, **fields})


@pytest.fixture
def Item(database, namespace):
    return _define(
        database,
        namespace,
        "Item",
        code=InstanceHashField(unique=True),
        name=StringField(indexable=True),
        text=StringField(indexable=True, indexes=[TextRangeIndex]),
        size=InstanceHashField(indexable=True, indexes=[NumberRangeIndex]),
        both=InstanceHashField(indexable=True, indexes=[EqualIndex, NumberRangeIndex]),
        tags=SetField(indexable=True),
    )


# ---------------------------------------------------------------------- item 8: b'' is ''


def test_empty_bytes_are_indexed_as_the_empty_string(database, namespace, client):
    M = _define(
        database,
        namespace,
        "Empty",
        name=StringField(indexable=True),
        text=StringField(indexable=True, indexes=[TextRangeIndex]),
        size=InstanceHashField(indexable=True, indexes=[NumberRangeIndex]),
        tags=SetField(indexable=True),
    )
    obj = M(name=b"", text=b"", size=b"", tags=[b""])
    n = namespace + ":empty"
    keys = layout(client)
    assert keys[n + ":name:"] == ("set", {"1"})
    assert keys[n + ":tags:"] == ("set", {"1"})
    assert keys[n + ":text:text-range"] == ("zset", [(":TEXT-RANGE-SEPARATOR:1", 0.0)])
    assert keys[n + ":size:number-range"] == ("zset", [("1", 0.0)])
    assert not [key for key in keys if "b'" in key]
    assert (
        set(M.collection(name=""))
        == {obj.pk.get()}
        == set(M.collection(text=""))
        == set(M.collection(tags=""))
    )


# ---------------------------------------------------------------------- items 9, 10: values


@pytest.mark.parametrize(
    "value, words",
    [
        (float("nan"), ["nan", "Item.size", "NumberRangeIndex", "finite number"]),
        (10**400, ["Item.size", "overflow", "finite number"]),
        ("nan", ["'nan'", "Item.size", "nan"]),
    ],
    ids=["nan", "overflow", "nan str"],
)
def test_number_range_refuses_values_it_cannot_score(Item, raw, value, words):
    obj = Item(code="a", size="1")
    before = dump(raw)
    for write in (
        lambda: obj.size.hset(value),
        lambda: obj.hmset(size=value),
        lambda: Item(code="b", size=value),
    ):
        with pytest.raises(redis.DataError) as raised:
            write()
        for word in words:
            assert word in str(raised.value)
        assert dump(raw) == before  # nothing written: no value, no index entry, no lock, no pk


@pytest.fixture(params=[False, True], ids=["default", "atomic"])
def ItemBothModes(request, database, namespace):
    """``Item`` in the default write path and in atomic mode (scripts encode values themselves)."""
    return _define(
        database,
        namespace,
        "Item",
        atomic_writes=request.param,
        code=InstanceHashField(unique=True),
        name=StringField(indexable=True),
        tags=SetField(indexable=True),
        plain=StringField(),
    )


def test_number_range_accepts_infinities(Item):
    obj = Item(code="a", size=float("inf"))
    assert list(Item.collection(size__gt=10**300)) == [obj.pk.get()]


@pytest.mark.parametrize(
    "value, words",
    [
        ("\ud800", ["'\\ud800'", "Item.name", "UTF-8", "surrogates"]),
        (10**5000, ["int of 16610 bits", "Item.name", "hex"]),
    ],
    ids=["surrogate", "huge int"],
)
def test_values_python_cannot_encode_are_refused_before_writing(ItemBothModes, raw, value, words):
    Item = ItemBothModes
    obj = Item(code="a", name="x")
    before = dump(raw)
    for write in (
        lambda: obj.name.set(value),
        lambda: Item(code="b", name=value),
        lambda: obj.tags.sadd(value),
        lambda: obj.plain.set(value),
    ):
        with pytest.raises(redis.DataError) as raised:
            write()
        message = str(raised.value).replace("Item.tags", "Item.name").replace("Item.plain", "Item.name")
        for word in words:
            assert word in message
        assert dump(raw) == before


# ---------------------------------------------------------------------- item 11: pks


@pytest.fixture
def Named(database, namespace):
    return _define(
        database,
        namespace,
        "Named",
        id=PKField(),
        name=StringField(indexable=True),
        tags=SetField(indexable=True),
    )


@pytest.mark.parametrize(
    "pk, words",
    [
        ("", ["Invalid pk ''", "Named", "empty"]),
        ("collection", ["'collection'", "reserved key part", ":named:collection:...", "'id-collection'"]),
        ("max_pk", ["'max_pk'", "reserved key part"]),
        ("lock-for-update", ["'lock-for-update'", "reserved key part"]),
        ("__index__", ["reserved key part"]),
        ("name", ["'name'", "a field name of the model", ":named:name:..."]),
        ("tags:x", ["'tags:x'", "'tags' is a field name of the model"]),
        (True, ["Invalid pk True (of type bool)", "str, an int or UTF-8 bytes"]),
        (object, ["(of type type)", "str(value)"]),
        (b"\xff", ["Invalid pk b'\\xff'", "UTF-8 bytes"]),
    ],
)
def test_unsafe_pks_are_refused(Named, raw, pk, words):
    before = dump(raw)
    with pytest.raises(ValueError) as raised:
        Named(id=pk, name="x")
    for word in words:
        assert word in str(raised.value)
    assert dump(raw) == before


def test_safe_pks(Named, client, namespace):
    assert Named(id=b"abc", name="x").pk.get() == "abc"  # UTF-8 bytes are decoded, as values are
    assert Named(id=12, name="x").pk.get() == "12"
    assert Named(id="collections", name="x").pk.get() == "collections"  # only the whole part counts
    assert Named.exists(pk="abc") and Named.exists(pk=b"abc")


def test_instance_scan_keys_escapes_the_pk(Named, namespace):
    star = Named(id="a*", name="x")
    star.tags.sadd("t")
    Named(id="ab", name="y").tags.sadd("t")
    Named(id="a*:b", name="z").tags.sadd("t")
    n = namespace + ":named"
    assert sorted(star.scan_keys()) == [n + ":a*:name", n + ":a*:tags"]


# ---------------------------------------------------------------------- item 12: field names


@pytest.mark.parametrize(
    "name",
    [
        "key",
        "fields",
        "connection",
        "delete",
        "connect",
        "get_field",
        "post_command",
        "database",
        "abstract",
        "pk",
        "collection",
        "exists",
    ],
)
def test_field_names_clashing_with_the_model_are_refused(database, namespace, name):
    with pytest.raises(ImplementationError) as raised:
        _define(database, namespace, "Clash", **{name: StringField()})
    message = str(raised.value)
    assert "Clash.%s (StringField)" % name in message
    assert "clashes with the model attribute %r" % name in message
    assert "Rename the field (e.g. %r)" % (name + "_") in message
    # the model was not registered: a fixed definition works
    fixed = _define(database, namespace, "Clash", **{name + "_": StringField()})
    assert fixed(**{name + "_": "x"}).get_field(name + "_").get() == "x"


def test_a_pk_field_may_be_named_pk(database, namespace):
    M = _define(database, namespace, "Own", pk=PKField())
    assert M(pk="x").pk.get() == "x"


# ---------------------------------------------------------------------- item 13: filters


@pytest.mark.parametrize(
    "filters, words",
    [
        (
            {"tags__in": 5},
            ["Invalid value 5 for the filter tags__in", "__in takes an iterable", "tags__in=[5]"],
        ),
        ({"tags__in": None}, ["Invalid value None for the filter tags__in", "iterable"]),
        ({"tags__in": [None]}, ["Invalid value None (of type NoneType) for the filter tags"]),
        ({"name": None}, ["Invalid value None (of type NoneType) for the filter name", "not indexed"]),
        ({"name": True}, ["Invalid value True (of type bool) for the filter name", "name='True'"]),
        (
            {"name": ["a", "b"]},
            ["Invalid value ['a', 'b'] (of type list) for the filter name", "name__in=[...]"],
        ),
        ({"size__gt": {"a": 1}}, ["(of type dict) for the filter size__gt"]),
    ],
)
def test_bad_filter_values_are_refused(Item, filters, words):
    with pytest.raises(TypeError) as raised:
        Item.collection(**filters)
    for word in words:
        assert word in str(raised.value)


def test_sort_by_an_unknown_name_is_refused(Item):
    with pytest.raises(ValueError) as raised:
        Item.collection().sort(by="-nmae")
    message = str(raised.value)
    assert "sort(by='-nmae')" in message and "'nmae' is neither a field nor a Redis pattern" in message
    assert "'name'" in message and "'nosort'" in message
    for by in ("name", "-name", "pk", "-pk", "nosort", "%s:*:name" % Item._name):
        Item.collection().sort(by=by)  # accepted


# ---------------------------------------------------------------------- item 14: fetch what is shown


def test_last_entries_and_repr_fetch_only_what_is_shown(database, namespace, redis_settings, count_commands):
    M = _define(database, namespace, "Many", name=StringField(indexable=True))
    for value in range(60):
        M(name="x")
    client = raw_client(redis_settings)
    c = "%s:many:collection" % namespace
    with command_log(client) as log:
        assert list(M.collection().sort()[-3:]) == ["58", "59", "60"]
    assert log == ["SORT %s LIMIT 0 3 DESC" % c]
    with command_log(client) as log:
        text = repr(M.collection().sort())
    assert "'20', '... (40 remaining elements truncated)...'" in text
    assert log == ["SORT %s LIMIT 0 21" % c, "SCARD %s" % c]
    unsorted = M.collection()
    assert unsorted[-1] == "60" and list(unsorted[-3:]) == ["58", "59", "60"]  # windows agree
    assert list(unsorted[-3:][::-1]) == list(unsorted[:-4:-1])
