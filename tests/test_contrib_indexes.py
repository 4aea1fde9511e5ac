"""Tests of ``limpyd.contrib.indexes`` (docs/contrib.rst, "More indexes"; multi-field uniqueness checks).

Index keys and commands are checked directly; filters go through ``Model.collection(...)``.
"""

from __future__ import annotations

import re

import pytest
from _redis_dump import layout

import limpyd.contrib.indexes as contrib_indexes
from limpyd import fields, indexes
from limpyd.collection import CollectionManager
from limpyd.contrib.collection import ExtendedCollectionManager
from limpyd.contrib.indexes import (
    DateIndex,
    DateIndexParts,
    DateRangeIndex,
    DateSimpleTimeIndex,
    DateTimeIndex,
    EqualIndexWith,
    MultiIndexes,
    ScoredEqualIndex,
    SimpleDateTimeIndex,
    TimeIndex,
    TimeIndexParts,
    TimeRangeIndex,
    _BaseRelatedIndex,
    _EqualIndexWith_RelatedIndex,
    _ScoredEqualIndex_RelatedIndex,
)
from limpyd.exceptions import ImplementationError, UniquenessError
from limpyd.indexes import EqualIndex, NumberRangeIndex, TextRangeIndex

TMP = "[0-9a-f]{32}"
SEP = ":TEXT-RANGE-SEPARATOR:"


@pytest.fixture
def ZBase(Base):
    class ZBase(Base):
        abstract = True
        collection_manager = ExtendedCollectionManager

    return ZBase


def keys_of(client, model_class):
    """Return the layout of the index keys of ``model_class`` (no instance data, collection, locks)."""
    name = model_class._name
    instance_key = re.compile(re.escape(name) + r":(\d+|collection|max_pk|lock-for-update)(:|$)")
    return {
        key: value
        for key, value in layout(client).items()
        if key.startswith(name + ":") and not instance_key.match(key)
    }


def pks(collection):
    return set(collection)


def read_keys(connection, keys):
    """Return the content of a ``get_filtered_keys`` answer, deleting the temporary keys."""
    result = []
    for key, kind, temporary in keys:
        if kind == "set":
            result.append((kind, connection.smembers(key)))
        else:
            result.append((kind, connection.zrange(key, 0, -1, withscores=True)))
        if temporary:
            connection.delete(key)
    return result


# ---------------------------------------------------------------------- module


def test_module_names():
    for name in (
        "MultiIndexes",
        "DateIndexParts",
        "DateRangeIndex",
        "DateIndex",
        "TimeIndexParts",
        "TimeRangeIndex",
        "TimeIndex",
        "DateSimpleTimeIndex",
        "DateTimeIndex",
        "SimpleDateTimeIndex",
        "ScoredEqualIndex",
        "EqualIndexWith",
        "_BaseRelatedIndex",
        "_ScoredEqualIndex_RelatedIndex",
        "_EqualIndexWith_RelatedIndex",
    ):
        assert isinstance(getattr(contrib_indexes, name), type), name
    assert contrib_indexes.BaseIndex is indexes.BaseIndex
    assert contrib_indexes.EqualIndex is EqualIndex
    assert contrib_indexes.NumberRangeIndex is NumberRangeIndex
    assert contrib_indexes.TextRangeIndex is TextRangeIndex
    assert contrib_indexes._MultiFieldsIndexMixin is indexes._MultiFieldsIndexMixin
    assert issubclass(MultiIndexes, indexes.BaseIndex)
    assert issubclass(ScoredEqualIndex, EqualIndex)
    assert issubclass(EqualIndexWith, indexes._MultiFieldsIndexMixin) and issubclass(
        EqualIndexWith, EqualIndex
    )
    assert issubclass(_ScoredEqualIndex_RelatedIndex, _BaseRelatedIndex)
    assert issubclass(_EqualIndexWith_RelatedIndex, indexes._MultiFieldsIndexMixin)
    assert issubclass(_EqualIndexWith_RelatedIndex, _BaseRelatedIndex)


# ---------------------------------------------------------------------- MultiIndexes


def test_compose_builds_subclasses():
    assert MultiIndexes.index_classes == []
    composed = MultiIndexes.compose([EqualIndex, TextRangeIndex])
    assert issubclass(composed, MultiIndexes) and composed is not MultiIndexes
    assert composed.__name__ == "MultiIndexes"
    assert composed.index_classes == [EqualIndex, TextRangeIndex]
    assert "index_classes" not in MultiIndexes.compose([]).__dict__
    named = MultiIndexes.compose([EqualIndex], key="kk", transform=str.upper, name="Named")
    assert named.__name__ == "Named" and named.key == "kk" and named.index_classes == [EqualIndex]
    assert named.transform is str.upper
    nested = MultiIndexes.compose([named, NumberRangeIndex])
    assert nested.index_classes == [named, NumberRangeIndex]
    configured = nested.configure(key="other")
    assert configured.key == "other" and issubclass(configured, nested)
    assert MultiIndexes.key is None and nested.key is None


def test_multi_indexes_example(Base, client, count_commands):
    Multi = MultiIndexes.compose([EqualIndex, TextRangeIndex], key="kk", transform=lambda v: v.upper())

    class M(Base):
        a = fields.StringField(indexable=True, indexes=[Multi])

    m = M(a="foo")
    n = M._name
    assert keys_of(client, M) == {
        "%s:a:kk:FOO" % n: ("set", {m._pk}),
        "%s:a:kk:text-range" % n: ("zset", [("FOO%s%s" % (SEP, m._pk), 0.0)]),
    }
    assert pks(M.collection(a="FOO")) == {m._pk}
    assert pks(M.collection(a="foo")) == set()
    assert pks(M.collection(a__gt="E")) == {m._pk}
    assert pks(M.collection(a__startswith="FO")) == {m._pk}
    assert pks(M.collection(a__in=["FOO", "BAR"])) == {m._pk}
    m.a.set("bar")
    assert keys_of(client, M) == {
        "%s:a:kk:BAR" % n: ("set", {m._pk}),
        "%s:a:kk:text-range" % n: ("zset", [("BAR%s%s" % (SEP, m._pk), 0.0)]),
    }
    m.delete()
    assert keys_of(client, M) == {}


def test_multi_indexes_instance_members(Base):
    Unique = EqualIndex
    NoUnique = TextRangeIndex.configure(handle_uniqueness=False)
    Multi = MultiIndexes.compose(
        [NoUnique, NumberRangeIndex.configure(prefix="n", handle_uniqueness=False), Unique],
        key="k",
        transform=lambda v: v * 2,
    )
    NoneUnique = MultiIndexes.compose([NoUnique])

    class M(Base):
        a = fields.StringField(indexable=True, indexes=[Multi])
        b = fields.StringField(indexable=True, indexes=[NoneUnique])

    index = M.get_field("a").get_index()
    assert [type(sub) for sub in index._indexes] == Multi.index_classes
    assert index._indexes is index._indexes  # cached
    assert all(sub.field is M.get_field("a") for sub in index._indexes)
    assert index.handle_uniqueness is True
    assert index.get_unique_index() is index._indexes[2]
    assert (
        index.can_handle_suffix(None)
        and index.can_handle_suffix("startswith")
        and index.can_handle_suffix("n__gt")
    )
    assert not index.can_handle_suffix("n__startswith") and not index.can_handle_suffix("year")
    assert index.prepare_args(["x"]) == ["k", "xx"]
    assert index.prepare_args(["h", "x"], transform=False) == ["h", "k", "x"]
    other = M.get_field("b").get_index()
    assert other.handle_uniqueness is False
    with pytest.raises(IndexError):
        other.get_unique_index()
    assert other.prepare_args(("x",)) == ["x"]


def test_multi_indexes_uniqueness_is_checked_by_the_first_capable_index(Base, client):
    Multi = MultiIndexes.compose(
        [
            EqualIndex.configure(prefix="up", transform=lambda v: v.upper(), handle_uniqueness=False),
            TextRangeIndex,
            EqualIndex,
        ]
    )

    class M(Base):
        a = fields.StringField(unique=True, indexes=[Multi])

    calls = []
    first = M(a="b")
    second = M(a="B")  # the upper-cased index does not check: 'b' and 'B' coexist
    with pytest.raises(
        UniquenessError, match=r'^Value "b" already indexed for unique field M.a \(for instance 1\)$'
    ):
        M(a="b")
    before = layout(client)
    with pytest.raises(UniquenessError):
        second.a.set("b")
    assert layout(client) == before  # rolled back in every sub-index
    assert second.a.get() == "B"
    index = M.get_field("a").get_index()
    assert index.get_unique_index() is index._indexes[1]
    # only the first capable sub-index checks: the third (an EqualIndex) is told not to
    original = EqualIndex.add

    def spy(self, pk, *args, check_uniqueness=True, **kwargs):
        calls.append((type(self).__name__, self.prefix, check_uniqueness))
        return original(self, pk, *args, check_uniqueness=check_uniqueness, **kwargs)

    EqualIndex.add = spy
    try:
        first.a.set("c")
    finally:
        EqualIndex.add = original
    assert calls == [("EqualIndex", "up", False), ("EqualIndex", None, False)]


def test_multi_indexes_check_uniqueness_and_filters_do_not_transform(Base, client):
    Multi = MultiIndexes.compose([EqualIndex], key="kk", transform=lambda v: v.upper())

    class M(Base):
        a = fields.StringField(unique=True, indexes=[Multi])

    M(a="foo")
    index = M.get_field("a").get_index()
    with pytest.raises(UniquenessError):
        index.check_uniqueness(None, "FOO")
    index.check_uniqueness(None, "foo")  # not transformed: another key
    assert index.get_filtered_keys(None, "FOO") == [("%s:a:kk:FOO" % M._name, "set", False)]
    assert index.get_filtered_keys("eq", "foo") == [("%s:a:kk:foo" % M._name, "set", False)]
    with pytest.raises(ImplementationError, match="^EqualIndex can only return keys of type set$"):
        index.get_filtered_keys(None, "FOO", accepted_key_types={"zset"})  # keywords reach the sub-index


def test_multi_indexes_unknown_suffix_and_storage_keys(Base, client):
    Multi = MultiIndexes.compose([EqualIndex, NumberRangeIndex.configure(prefix="n")])

    class M(Base):
        a = fields.StringField(indexable=True, indexes=[Multi])

    M(a="1")
    M(a="2")
    with pytest.raises(ImplementationError, match="No index found to manage filter"):
        M.collection(a__startswith="1")
    index = M.get_field("a").get_index()
    with pytest.raises(ImplementationError, match="No index found to manage filter"):
        index.get_filtered_keys("startswith", "1")
    n = M._name
    assert index.get_all_storage_keys() == {"%s:a:1" % n, "%s:a:2" % n, "%s:a:n:number-range" % n}
    assert pks(M.collection(a__n__gte=2)) == {"2"}


def test_multi_indexes_clear_and_rebuild(Base, client):
    Multi = MultiIndexes.compose([EqualIndex, TextRangeIndex], key="kk")

    class M(Base):
        a = fields.StringField(indexable=True, indexes=[Multi])

    M(a="x")
    M(a="y")
    field = M.get_field("a")
    full = keys_of(client, M)
    assert len(full) == 3
    field.clear_indexes()
    assert keys_of(client, M) == {}
    field.rebuild_indexes()
    assert keys_of(client, M) == full
    field.clear_indexes(aggressive=True)
    assert keys_of(client, M) == {}
    field.rebuild_indexes(aggressive_clear=True)
    assert keys_of(client, M) == full


def test_multi_indexes_do_not_forward_the_model_ready_hook(Base):
    Multi = MultiIndexes.compose([ScoredEqualIndex.configure(score_field="nothing")])

    class M(Base):  # no ImplementationError: the hook is not forwarded (unsupported combination)
        a = fields.StringField(indexable=True, indexes=[Multi])

    assert M.get_field("a").index_classes == [Multi]


# ---------------------------------------------------------------------- date and time indexes


def test_date_time_building_blocks():
    assert DateRangeIndex.key == "date" and issubclass(DateRangeIndex, TextRangeIndex)
    assert TimeRangeIndex.key == "time" and issubclass(TimeRangeIndex, TextRangeIndex)
    parts = DateIndexParts.index_classes
    assert [(c.__name__, c.prefix, c.key, c.handle_uniqueness) for c in parts] == [
        ("YearIndex", "year", "number-range", False),
        ("MonthIndex", "month", "number-range", False),
        ("DayIndex", "day", "number-range", False),
    ]
    assert all(issubclass(c, NumberRangeIndex) for c in parts)
    assert [(c.__name__, c.prefix) for c in TimeIndexParts.index_classes] == [
        ("HourIndex", "hour"),
        ("MinuteIndex", "minute"),
        ("SecondIndex", "second"),
    ]
    assert DateIndex.index_classes == [DateRangeIndex, DateIndexParts]
    assert TimeIndex.index_classes == [TimeRangeIndex, TimeIndexParts]
    assert [(c.__name__, c.prefix, c.key) for c in DateSimpleTimeIndex.index_classes] == [
        ("FullDateTimeRangeIndex", None, "full"),
        ("DateRangeIndex", "date", "date"),
        ("DateIndexParts", None, None),
        ("TimeRangeIndex", "time", "time"),
    ]
    assert DateTimeIndex.index_classes[0] is DateSimpleTimeIndex
    assert issubclass(DateTimeIndex.index_classes[1], TimeIndexParts)
    assert [(c.__name__, c.prefix, c.key) for c in SimpleDateTimeIndex.index_classes] == [
        ("FullDateTimeRangeIndex", None, "full"),
        ("DateRangeIndex", "date", "date"),
        ("TimeRangeIndex", "time", "time"),
    ]


def test_date_index(Base, client):
    class M(Base):
        d = fields.StringField(indexable=True, indexes=[DateIndex])

    a = M(d="2015-12-16")
    b = M(d="2016-01-02 and more")  # extra characters are cut
    n = M._name
    assert keys_of(client, M) == {
        "%s:d:date" % n: ("zset", [("2015-12-16%s1" % SEP, 0.0), ("2016-01-02%s2" % SEP, 0.0)]),
        "%s:d:year:number-range" % n: ("zset", [("1", 2015.0), ("2", 2016.0)]),
        "%s:d:month:number-range" % n: ("zset", [("2", 1.0), ("1", 12.0)]),
        "%s:d:day:number-range" % n: ("zset", [("2", 2.0), ("1", 16.0)]),
    }
    one, two = {a._pk}, {b._pk}
    assert pks(M.collection(d="2015-12-16")) == one
    assert pks(M.collection(d__eq="2016-01-02")) == two
    assert pks(M.collection(d__gt="2015-12-16")) == two
    assert pks(M.collection(d__gte="2015-12-16")) == one | two
    assert pks(M.collection(d__lt="2016")) == one
    assert pks(M.collection(d__lte="2016-01-02")) == one | two
    assert pks(M.collection(d__startswith="2016-01")) == two
    assert pks(M.collection(d__in=["2015-12-16", "2000-01-01"])) == one
    assert pks(M.collection(d__year=2015)) == one
    assert pks(M.collection(d__year__gt=2015)) == two
    assert pks(M.collection(d__month__gte=1)) == one | two
    assert pks(M.collection(d__month__lt=12)) == two
    assert pks(M.collection(d__day__lte=2)) == two
    assert pks(M.collection(d__day__eq=16)) == one
    assert pks(M.collection(d__day__in=[16, 2])) == one | two
    assert pks(M.collection(d__year=2016, d__month=1)) == two
    with pytest.raises(ImplementationError):
        M.collection(d__year__startswith="2")
    index = M.get_field("d").get_index()
    for suffix, name in (("gt", "daterangeindex"), ("year__gt", "yearindex"), ("day", "dayindex")):
        [(key, kind, temporary)] = index.get_filtered_keys(suffix, "2015" if suffix == "gt" else 1)
        assert re.fullmatch(re.escape(n) + ":__index__:%s:tmp:%s" % (name, TMP), key), key
        assert temporary and kind == "set"
        client.delete(key)
    b.d.set("2015-12-17")
    assert pks(M.collection(d__year=2016)) == set()
    assert pks(M.collection(d__day=17)) == two


def test_date_index_uniqueness_on_the_date_string(Base):
    class M(Base):
        d = fields.StringField(unique=True, indexes=[DateIndex])

    M(d="2015-12-16")
    M(d="2015-12-17")  # same year and month: the parts do not check uniqueness
    with pytest.raises(UniquenessError, match='^Value "2015-12-16" already indexed for unique field M.d'):
        M(d="2015-12-16")


def test_non_string_values_are_not_supported(Base):
    class M(Base):
        d = fields.StringField(indexable=True, indexes=[DateIndex])

    instance = M(d="2015-12-16")
    with pytest.raises(TypeError):
        instance.d.set(20151216)
    assert instance.d.get() == "2015-12-16"


def test_time_index(Base, client):
    class M(Base):
        t = fields.StringField(indexable=True, indexes=[TimeIndex])

    a = M(t="15:16:17")
    b = M(t="08:09:10.500")
    n = M._name
    assert keys_of(client, M) == {
        "%s:t:time" % n: ("zset", [("08:09:10%s2" % SEP, 0.0), ("15:16:17%s1" % SEP, 0.0)]),
        "%s:t:hour:number-range" % n: ("zset", [("2", 8.0), ("1", 15.0)]),
        "%s:t:minute:number-range" % n: ("zset", [("2", 9.0), ("1", 16.0)]),
        "%s:t:second:number-range" % n: ("zset", [("2", 10.0), ("1", 17.0)]),
    }
    one, two = {a._pk}, {b._pk}
    assert pks(M.collection(t="08:09:10")) == two
    assert pks(M.collection(t__lt="12")) == two
    assert pks(M.collection(t__startswith="15:1")) == one
    assert pks(M.collection(t__hour=15)) == one
    assert pks(M.collection(t__minute__lt=10)) == two
    assert pks(M.collection(t__second__gte=10)) == one | two
    index = M.get_field("t").get_index()
    [(key, _, _)] = index.get_filtered_keys("hour__gt", 1)
    assert re.fullmatch(re.escape(n) + ":__index__:hourindex:tmp:" + TMP, key)
    client.delete(key)


def test_simple_date_time_index(Base, client):
    class M(Base):
        dt = fields.StringField(unique=True, indexes=[SimpleDateTimeIndex])

    a = M(dt="2015-12-16 15:16:17.123")
    b = M(dt="2015-12-17 08:00:00")
    n = M._name
    assert keys_of(client, M) == {
        "%s:dt:full" % n: (
            "zset",
            [("2015-12-16 15:16:17%s1" % SEP, 0.0), ("2015-12-17 08:00:00%s2" % SEP, 0.0)],
        ),
        "%s:dt:date:date" % n: ("zset", [("2015-12-16%s1" % SEP, 0.0), ("2015-12-17%s2" % SEP, 0.0)]),
        "%s:dt:time:time" % n: ("zset", [("08:00:00%s2" % SEP, 0.0), ("15:16:17%s1" % SEP, 0.0)]),
    }
    one, two = {a._pk}, {b._pk}
    assert pks(M.collection(dt="2015-12-16 15:16:17")) == one
    assert pks(M.collection(dt__gt="2015-12-16 15:16:17")) == two
    assert pks(M.collection(dt__date="2015-12-17")) == two
    assert pks(M.collection(dt__date__lt="2015-12-17")) == one
    assert pks(M.collection(dt__time__startswith="15")) == one
    assert pks(M.collection(dt__time__gte="08:00:00")) == one | two
    with pytest.raises(ImplementationError):
        M.collection(dt__year=2015)
    # uniqueness on the first 19 characters
    with pytest.raises(UniquenessError, match="already indexed for unique field M.dt"):
        b.dt.set("2015-12-16 15:16:17.999")
    assert b.dt.get() == "2015-12-17 08:00:00"
    with pytest.raises(UniquenessError):
        M(dt="2015-12-17 08:00:00")


def test_date_time_index_spec_example(Base, client):
    class M(Base):
        dt = fields.StringField(indexable=True, indexes=[DateTimeIndex])

    m = M(dt="2015-12-16 15:16:17.123")
    M(dt="2016-01-01 00:00:00")
    n = M._name
    assert set(keys_of(client, M)) == {
        "%s:dt:%s" % (n, suffix)
        for suffix in (
            "full",
            "date:date",
            "time:time",
            "year:number-range",
            "month:number-range",
            "day:number-range",
            "hour:number-range",
            "minute:number-range",
            "second:number-range",
        )
    }
    assert client.zscore("%s:dt:second:number-range" % n, m._pk) == 17.0
    assert client.zscore("%s:dt:hour:number-range" % n, m._pk) == 15.0
    for filters in (
        {"dt": "2015-12-16 15:16:17"},
        {"dt__date__lt": "2015-12-17"},
        {"dt__year": 2015},
        {"dt__time__startswith": "15"},
        {"dt__second": 17},
        {"dt__month__gt": 11},
        {"dt__minute__lte": 16, "dt__day": 16},
    ):
        assert pks(M.collection(**filters)) == {m._pk}, filters


def test_simple_date_time_index_on_instance_hash_field_with_datetimes(Base):
    # str(datetime) values, filters on __date__gt and equality (docs/contrib.rst)
    import datetime

    class Job(Base):
        added = fields.InstanceHashField(indexable=True, indexes=[SimpleDateTimeIndex])

    first = datetime.datetime(2020, 5, 4, 3, 2, 1, 123456)
    job1 = Job(added=str(first))
    job2 = Job(added=str(first + datetime.timedelta(days=2)))
    assert pks(Job.collection(added__date__gt="2020-05-04")) == {job2._pk}
    assert pks(Job.collection(added__date__gt="2020-05-03")) == {job1._pk, job2._pk}
    assert pks(Job.collection(added="2020-05-04 03:02:01")) == {job1._pk}


# ---------------------------------------------------------------------- ScoredEqualIndex


def test_scored_equal_index_class_attributes():
    assert ScoredEqualIndex.key == "equal-scored"
    assert ScoredEqualIndex.supported_key_types == {"zset"}
    assert ScoredEqualIndex.score_field is None
    assert ScoredEqualIndex.configurable_attrs == EqualIndex.configurable_attrs | {"score_field"}
    assert ScoredEqualIndex.RelatedIndex is _ScoredEqualIndex_RelatedIndex
    assert ScoredEqualIndex.handled_suffixes == {None, "eq", "in"}
    configured = ScoredEqualIndex.configure(score_field="prio", prefix="p", name="X")
    assert (configured.__name__, configured.score_field, configured.prefix) == ("X", "prio", "p")
    assert ScoredEqualIndex.score_field is None
    with pytest.raises(
        TypeError, match="ScoredEqualIndex.configure only accepts these named arguments: .*score_field"
    ):
        ScoredEqualIndex.configure(other_fields=["x"])


@pytest.mark.parametrize(
    "manager, score_field, field_class, message",
    [
        (
            CollectionManager,
            "prio",
            fields.StringField,
            "collection_manager CollectionManager cannot use sorted sets",
        ),
        (None, "nothing", fields.StringField, "score_field 'nothing' is not a field of M"),
        (None, None, fields.StringField, "score_field None is not a field of M"),
        (None, "name", fields.StringField, "score_field 'name' is the indexed field itself"),
        (None, "tags", fields.StringField, "score_field 'tags' is a SetField"),
    ],
)
def test_scored_equal_index_definition_errors(Base, manager, score_field, field_class, message):
    Index = ScoredEqualIndex.configure(score_field=score_field)
    attrs = {
        "collection_manager": manager or ExtendedCollectionManager,
        "name": fields.StringField(indexable=True, indexes=[Index]),
        "prio": fields.StringField(),
        "tags": fields.SetField(),
    }
    with pytest.raises(ImplementationError) as info:
        type("M", (Base,), dict(attrs, __module__=__name__, __qualname__="M"))
    assert message in str(info.value)
    assert "ScoredEqualIndex on %s.M.name" % __name__ in str(info.value)  # model and field named


@pytest.fixture
def Scored(ZBase):
    Index = ScoredEqualIndex.configure(score_field="prio")

    class Scored(ZBase):
        name = fields.InstanceHashField(indexable=True, indexes=[Index])
        prio = fields.InstanceHashField()
        email = fields.InstanceHashField(unique=True)
        tags = fields.SetField(indexable=True, indexes=[ScoredEqualIndex.configure(score_field="rank")])
        rank = fields.StringField(indexable=True)

    return Scored


def test_scored_equal_index_model_ready(Scored):
    name_index_class = Scored.get_field("name").index_classes[0]
    prio = Scored.get_field("prio")
    assert name_index_class.score_field is prio  # replaced by the model-level field
    assert prio.indexable
    [related] = prio.index_classes
    assert issubclass(related, _ScoredEqualIndex_RelatedIndex)
    assert related.related_index_class is name_index_class
    assert related.related_field is Scored.get_field("name")
    rank = Scored.get_field("rank")
    assert rank.index_classes[0] is EqualIndex  # appended after the default index
    assert issubclass(rank.index_classes[1], _ScoredEqualIndex_RelatedIndex)
    [prio_index] = prio._indexes
    assert prio_index.related_field is Scored.get_field("name")
    assert prio_index.related_index is Scored.get_field("name").get_index()
    with pytest.raises(ImplementationError, match="No index found to manage filter"):
        Scored.collection(prio=1)


def test_scored_equal_index_storage(Scored, client):
    n = Scored._name
    a = Scored(name="x")
    assert keys_of(client, Scored) == {}  # no score: no entry
    a.prio.hset(5)
    assert keys_of(client, Scored) == {"%s:name:equal-scored:x" % n: ("zset", [(a._pk, 5.0)])}
    b = Scored(name="x", prio="2.5")
    assert keys_of(client, Scored) == {"%s:name:equal-scored:x" % n: ("zset", [(b._pk, 2.5), (a._pk, 5.0)])}
    a.prio.hset(1)
    assert client.zrange("%s:name:equal-scored:x" % n, 0, -1, withscores=True) == [(a._pk, 1.0), (b._pk, 2.5)]
    a.name.hset("y")
    assert keys_of(client, Scored) == {
        "%s:name:equal-scored:x" % n: ("zset", [(b._pk, 2.5)]),
        "%s:name:equal-scored:y" % n: ("zset", [(a._pk, 1.0)]),
    }
    a.prio.delete()
    assert keys_of(client, Scored) == {"%s:name:equal-scored:x" % n: ("zset", [(b._pk, 2.5)])}
    a.prio.hset(3)
    b.name.delete()
    assert keys_of(client, Scored) == {"%s:name:equal-scored:y" % n: ("zset", [(a._pk, 3.0)])}
    a.delete()
    assert keys_of(client, Scored) == {}


def test_scored_equal_index_on_a_multi_value_field(Scored, client):
    n = Scored._name
    a = Scored(tags=["t1", "t2"], rank=10)
    assert keys_of(client, Scored) == {
        "%s:tags:equal-scored:t1" % n: ("zset", [(a._pk, 10.0)]),
        "%s:tags:equal-scored:t2" % n: ("zset", [(a._pk, 10.0)]),
        "%s:rank:10" % n: ("set", {a._pk}),
    }
    a.rank.set(20)
    a.tags.sadd("t3")
    a.tags.srem("t1")
    assert keys_of(client, Scored) == {
        "%s:tags:equal-scored:t2" % n: ("zset", [(a._pk, 20.0)]),
        "%s:tags:equal-scored:t3" % n: ("zset", [(a._pk, 20.0)]),
        "%s:rank:20" % n: ("set", {a._pk}),
    }
    assert pks(Scored.collection(rank=20)) == {a._pk}  # the score field keeps its own index


def test_scored_equal_index_non_numeric_score(Scored, client):
    a = Scored(name="x", prio=1)
    before = layout(client)
    with pytest.raises(ValueError):
        a.prio.hset("not a number")
    assert layout(client) == before
    with pytest.raises(ValueError):
        Scored(prio="nan-ish")
    b = Scored(tags=["t"])
    client.hset(b.key, "prio", "nan-ish")  # written behind limpyd's back
    with pytest.raises(ValueError):
        b.name.hset("x")
    assert keys_of(client, Scored) == {"%s:name:equal-scored:x" % Scored._name: ("zset", [(a._pk, 1.0)])}


def test_scored_equal_index_filtered_keys(Scored, client, count_commands):
    a = Scored(name="x", prio=3)
    b = Scored(name="y", prio=1)
    Scored(name="z", prio=2)
    index = Scored.get_field("name").get_index()
    n = Scored._name
    with count_commands(0):
        assert index.get_filtered_keys(None, "x") == [("%s:name:equal-scored:x" % n, "zset", False)]
        assert index.get_filtered_keys("eq", "y", accepted_key_types={"set", "zset"}) == [
            ("%s:name:equal-scored:y" % n, "zset", False)
        ]
    with count_commands(2):  # EXISTS + ZUNIONSTORE
        keys = index.get_filtered_keys("in", ["x", "y"])
    [(key, kind, temporary)] = keys
    assert re.fullmatch(re.escape(n) + ":__index__:scoredequalindex:tmp:" + TMP, key)
    assert read_keys(client, keys) == [("zset", [(b._pk, 1.0), (a._pk, 3.0)])]  # ordered by score
    assert index.get_filtered_keys("in", []) == []
    with pytest.raises(ImplementationError, match="^ScoredEqualIndex can only return keys of type zset$"):
        index.get_filtered_keys(None, "x", accepted_key_types={"set"})
    assert list(Scored.collection(name__in=["x", "y", "z"])) == [b._pk, "3", a._pk]


def test_scored_equal_index_storage_key_of_an_instance(Scored):
    a = Scored(name="x")
    index = Scored.get_field("name").get_index()
    assert index.get_storage_key(a) == "%s:name:equal-scored:%s" % (Scored._name, a._pk)
    assert index.get_storage_key("v") == "%s:name:equal-scored:v" % Scored._name


def test_scored_equal_index_uniqueness(ZBase, client):
    Index = ScoredEqualIndex.configure(score_field="prio")

    class U(ZBase):
        name = fields.InstanceHashField(unique=True, indexes=[Index])
        prio = fields.InstanceHashField()

    n = U._name
    a = U(name="x")  # no score: the uniqueness set is written anyway
    assert keys_of(client, U) == {"%s:name:equal-scored:x:__uniqueness__" % n: ("set", {a._pk})}
    before = layout(client)
    with pytest.raises(
        UniquenessError, match=r'^Value "x" already indexed for unique field U.name \(for instance 1\)$'
    ):
        U(name="x", prio=3)
    assert layout(client) == before  # checked at creation with pk None: nothing allocated
    b = U(name="y", prio=2)
    with pytest.raises(UniquenessError):
        b.name.hset("x")
    assert b.name.hget() == "y"
    assert layout(client)["%s:name:equal-scored:y" % n] == ("zset", [(b._pk, 2.0)])
    # Decision: a value is free again once nobody uses it
    a.name.hset("z")
    assert "%s:name:equal-scored:x:__uniqueness__" % n not in layout(client)
    c = U(name="x", prio=1)
    c.delete()
    U(name="x")
    b.delete()
    U(name="y")


def test_scored_equal_index_rollback_of_a_failed_hmset(ZBase, client):
    Index = ScoredEqualIndex.configure(score_field="prio")

    class R(ZBase):
        label = fields.InstanceHashField(indexable=True, indexes=[Index])
        prio = fields.InstanceHashField()
        email = fields.InstanceHashField(unique=True)

    R(email="taken")
    a = R(label="x", prio=4, email="mine")
    before = layout(client)
    with pytest.raises(UniquenessError):
        a.hmset(prio=7, email="taken")
    assert layout(client) == before
    with pytest.raises(UniquenessError):
        a.hmset(label="y", email="taken")
    assert layout(client) == before
    with pytest.raises(UniquenessError):
        a.hmset(prio=8, label="y", email="taken")
    assert layout(client) == before
    a.hmset(prio=9)
    assert client.zscore("%s:label:equal-scored:x" % R._name, a._pk) == 9.0


def test_scored_equal_index_score_updated(Scored, client):
    a = Scored(name="x", prio=1)
    index = Scored.get_field("name").get_index()
    key = "%s:name:equal-scored:x" % Scored._name
    index.score_updated(a._pk, 42.0)
    assert client.zscore(key, a._pk) == 42.0
    index.score_updated(a._pk, None)
    assert client.exists(key) == 0
    Scored.get_field("name").rebuild_indexes()
    assert client.zscore(key, a._pk) == 1.0


def test_scored_equal_index_on_an_inherited_model(Scored, client):
    class Child(Scored):
        pass

    prio = Child.get_field("prio")
    assert len(prio.index_classes) == 1  # the related index is not added twice
    assert [type(index) for index in prio._indexes] == Scored.get_field("prio").index_classes
    assert prio._indexes[0].related_field is Child.get_field("name")
    child = Child(name="x", prio=3)
    parent = Scored(name="x", prio=4)
    assert client.zrange("%s:name:equal-scored:x" % Child._name, 0, -1, withscores=True) == [(child._pk, 3.0)]
    assert client.zrange("%s:name:equal-scored:x" % Scored._name, 0, -1, withscores=True) == [
        (parent._pk, 4.0)
    ]
    child.prio.hset(5)
    parent.prio.hset(6)
    assert client.zscore("%s:name:equal-scored:x" % Child._name, child._pk) == 5.0
    assert client.zscore("%s:name:equal-scored:x" % Scored._name, parent._pk) == 6.0


def test_scored_equal_index_clear_and_rebuild(Scored, client):
    Scored(name="x", prio=1, tags=["a"], rank=2)
    Scored(name="y", prio=2)
    full = keys_of(client, Scored)
    for field_name in ("name", "prio", "tags", "rank"):
        field = Scored.get_field(field_name)
        field.clear_indexes()
        field.rebuild_indexes()
        assert keys_of(client, Scored) == full, field_name
    Scored.get_field("name").clear_indexes(aggressive=True)
    assert not any(":name:" in key for key in keys_of(client, Scored))
    Scored.get_field("name").rebuild_indexes()
    assert keys_of(client, Scored) == full


# ---------------------------------------------------------------------- EqualIndexWith


def test_equal_index_with_class_attributes_and_configure():
    assert EqualIndexWith.key == "equal-with"
    assert EqualIndexWith.handled_suffixes == {None, "eq", "in"}
    assert EqualIndexWith.supported_key_types == {"set", "zset"}
    assert EqualIndexWith.filter_single_field is False
    assert EqualIndexWith.unique is False and EqualIndexWith.handle_uniqueness is False
    assert EqualIndexWith.RelatedIndex is _EqualIndexWith_RelatedIndex
    configured = EqualIndexWith.configure(["a", "b"], unique=True, prefix="p", name="Both")
    assert (configured.__name__, configured.other_fields, configured.unique, configured.prefix) == (
        "Both",
        ["a", "b"],
        True,
        "p",
    )
    assert EqualIndexWith.configure(other_fields=("a",)).unique is False
    with pytest.raises(TypeError):
        EqualIndexWith.configure()
    with pytest.raises(
        TypeError,
        match="^EqualIndexWith.configure only accepts these named arguments: "
        "key, name, other_fields, prefix, transform, unique$",
    ):
        EqualIndexWith.configure(["a"], handle_uniqueness=True)
    assert _EqualIndexWith_RelatedIndex.handled_suffixes == {None, "eq", "in"}


@pytest.mark.parametrize(
    "index, message",
    [
        (EqualIndexWith, "EqualIndexWith on {module}.M.foo: no other fields"),
        (EqualIndexWith.configure([]), "no other fields"),
        (EqualIndexWith.configure(["nope"]), "'nope' in other_fields is not a field of M"),
        (EqualIndexWith.configure(["foo"]), "other_fields names the indexed field 'foo' itself"),
        (EqualIndexWith.configure(["bar", "data"], unique=True), "cannot include the HashField data"),
    ],
)
def test_equal_index_with_definition_errors(Base, index, message):
    attrs = {
        "foo": fields.StringField(indexable=True, indexes=[index]),
        "bar": fields.StringField(),
        "data": fields.HashField(),
    }
    with pytest.raises(ImplementationError) as info:
        type("M", (Base,), dict(attrs, __module__=__name__, __qualname__="M"))
    assert message.format(module=__name__) in str(info.value)


def test_equal_index_with_model_ready(Base):
    Index = EqualIndexWith.configure(["baz", "bar"])

    class M(Base):
        foo = fields.StringField(indexable=True, indexes=[EqualIndex, Index])
        bar = fields.StringField()
        baz = fields.StringField(indexable=True)

    assert Index.other_fields == [M.get_field("baz"), M.get_field("bar")]
    bar, baz = M.get_field("bar"), M.get_field("baz")
    assert bar.indexable and len(bar.index_classes) == 1
    assert issubclass(bar.index_classes[0], _EqualIndexWith_RelatedIndex)
    assert bar.index_classes[0].related_index_class is Index
    assert baz.index_classes[0] is EqualIndex and issubclass(
        baz.index_classes[1], _EqualIndexWith_RelatedIndex
    )
    multi = M._multi_fields_index_for_filtering
    assert [(index.field.name, type(index)) for index in multi] == [
        ("foo", Index),
        ("bar", bar.index_classes[0]),
        ("baz", baz.index_classes[1]),
    ]
    index = multi[0]
    assert index.can_filter_fields([("foo", None), ("bar", "eq"), ("baz", "in")]) == [
        (("foo", None), ("baz", "in"), ("bar", "eq"))
    ]
    assert index.can_filter_fields([("foo", None), ("bar", None)]) == []
    assert index.can_filter_fields([("foo", "gt"), ("bar", None), ("baz", None)]) == []
    combinations = index.can_filter_fields([("foo", None), ("foo", "in"), ("bar", None), ("baz", None)])
    assert set(combinations) == {
        (("foo", None), ("baz", None), ("bar", None)),
        (("foo", "in"), ("baz", None), ("bar", None)),
    }
    assert multi[1].can_filter_fields([("foo", None), ("bar", None), ("baz", None)]) == []


@pytest.fixture
def Together(Base):
    class Together(Base):
        foo = fields.HashField(indexable=True, indexes=[EqualIndexWith.configure(["bar", "baz"])])
        bar = fields.ListField()
        baz = fields.StringField(indexable=True)

    return Together


def test_equal_index_with_storage_cartesian_product(Together, client):
    n = Together._name
    t = Together(foo={"F1": "v1"}, bar=["B1", "B2"], baz="z")
    assert keys_of(client, Together) == {
        "%s:foo:equal-with:F1:v1:B1:z" % n: ("set", {t._pk}),
        "%s:foo:equal-with:F1:v1:B2:z" % n: ("set", {t._pk}),
        "%s:baz:z" % n: ("set", {t._pk}),
    }
    t.bar.rpush("B3")
    t.foo.hset("F2", "v2")
    assert {key for key in keys_of(client, Together) if ":equal-with:" in key} == {
        "%s:foo:equal-with:%s:%s:z" % (n, f, b) for f in ("F1:v1", "F2:v2") for b in ("B1", "B2", "B3")
    }
    t.baz.set("y")
    t.bar.lrem(0, "B1")
    t.foo.hdel("F1")
    assert {key for key in keys_of(client, Together) if ":equal-with:" in key} == {
        "%s:foo:equal-with:F2:v2:%s:y" % (n, b) for b in ("B2", "B3")
    }
    t.delete()
    assert keys_of(client, Together) == {}


def test_equal_index_with_nothing_while_a_field_is_empty(Together, client):
    t = Together(foo={"F": "v"}, baz="z")
    assert not [key for key in keys_of(client, Together) if ":equal-with:" in key]
    t.bar.rpush("b")
    assert [key for key in keys_of(client, Together) if ":equal-with:" in key] == [
        "%s:foo:equal-with:F:v:b:z" % Together._name
    ]
    t.baz.delete()
    assert not [key for key in keys_of(client, Together) if ":equal-with:" in key]
    u = Together(bar=["b"], baz="z")
    u.foo.hmset(F="v")
    assert keys_of(client, Together)["%s:foo:equal-with:F:v:b:z" % Together._name] == ("set", {u._pk})


def test_equal_index_with_prefix_and_transform(Base, client):
    Index = EqualIndexWith.configure(["bar"], prefix="w", transform=lambda v: v.upper())

    class M(Base):
        foo = fields.StringField(indexable=True, indexes=[Index])
        bar = fields.StringField()

    m = M(foo="x", bar="y")
    assert keys_of(client, M) == {"%s:foo:w:equal-with:X:y" % M._name: ("set", {m._pk})}
    assert pks(M.collection(foo__w="X", bar="y")) == {m._pk}
    assert pks(M.collection(foo__w__eq="x", bar="y")) == set()
    assert pks(M.collection(foo__w__in=["X", "Z"], bar__in=["y"])) == {m._pk}


def test_equal_index_with_filtering(Base, client, count_commands):
    class M(Base):
        foo = fields.StringField(indexable=True, indexes=[EqualIndexWith.configure(["bar"])])
        bar = fields.InstanceHashField()
        qux = fields.StringField(indexable=True)

    a = M(foo="f1", bar="b1", qux="q")
    b = M(foo="f1", bar="b2", qux="q")
    c = M(foo="f2", bar="b1")
    assert pks(M.collection(foo="f1", bar="b1")) == {a._pk}
    assert pks(M.collection(bar__eq="b2", foo__eq="f1")) == {b._pk}
    assert pks(M.collection(foo="f1", bar__in=["b1", "b2"])) == {a._pk, b._pk}
    assert pks(M.collection(foo__in=["f1", "f2"], bar="b1")) == {a._pk, c._pk}
    assert pks(M.collection(foo__in=["f1", "f2"], bar__in=[])) == set()
    assert pks(M.collection(foo="f1", bar="b1", qux="q")) == {a._pk}
    # split across collection() and filter() calls, in any order
    assert pks(M.collection(bar="b2")(foo="f1")) == {b._pk}
    assert pks(M.collection(foo="f1")(bar="b1")) == {a._pk}
    # a field filtered twice: the intersection of each combination
    assert pks(M.collection(foo="f1", bar="b1")(foo="f2")) == set()
    assert pks(M.collection(foo__in=["f1", "f2"], bar="b1")(foo="f2")) == {c._pk}
    # one field alone cannot be served
    for filters in ({"foo": "f1"}, {"bar": "b1"}, {"foo": "f1", "qux": "q"}):
        collection = M.collection(**filters)  # accepted at filter time
        with pytest.raises(ImplementationError, match="No index found to manage filter"):
            list(collection)
    index = M.get_field("foo").get_index()
    n = M._name
    with count_commands(0):
        assert index.get_filtered_keys(None, "f1", related_filters={"bar": (["b1"], None)}) == [
            ("%s:foo:equal-with:f1:b1" % n, "set", False)
        ]
    with count_commands(2):
        keys = index.get_filtered_keys("in", ["f1", "f2"], related_filters={"bar": (["b1"], "eq")})
    [(key, kind, temporary)] = keys
    assert re.fullmatch(re.escape(n) + ":__index__:equalindexwith:tmp:" + TMP, key) and temporary
    assert read_keys(client, keys) == [("set", {a._pk, c._pk})]
    assert index.get_filtered_keys("in", [], related_filters={"bar": (["b1"], None)}) == []
    with pytest.raises(ImplementationError, match="No index found to manage filter"):
        index.get_filtered_keys(None, "f1")


def test_equal_index_with_filter_resolution_example(Base):
    class M(Base):
        foo = fields.StringField(
            indexable=True, indexes=[EqualIndex, EqualIndexWith.configure(["bar", "baz", "qux"])]
        )
        bar = fields.StringField()
        baz = fields.StringField(
            indexable=True,
            indexes=[EqualIndexWith.configure(["foo", "bar"]), EqualIndexWith.configure(["qux"])],
        )
        qux = fields.StringField(indexable=True)

    m = M(foo="1", bar="2", baz="3", qux="4")
    M(foo="1", bar="x", baz="3", qux="4")
    M(foo="1", bar="2", baz="y", qux="4")
    with pytest.raises(ImplementationError, match='No index found to manage filter "bar" for field M.bar'):
        list(M.collection(foo="1", bar="2"))
    assert pks(M.collection(foo="1", baz="3", qux="4")) == {m._pk, "2"}
    assert pks(M.collection(foo="1", bar="2", baz="3")) == {m._pk}
    assert pks(M.collection(foo="1", bar="2", baz="3", qux="4")) == {m._pk}
    [foo_index, baz_foo_bar, baz_qux] = [
        index for index in M._multi_fields_index_for_filtering if isinstance(index, EqualIndexWith)
    ]
    everything = [("foo", None), ("bar", None), ("baz", None), ("qux", None)]
    assert foo_index.can_filter_fields(everything) == [
        (("foo", None), ("bar", None), ("baz", None), ("qux", None))
    ]
    assert baz_foo_bar.can_filter_fields(everything) == [(("baz", None), ("foo", None), ("bar", None))]
    assert baz_qux.can_filter_fields(everything) == [(("baz", None), ("qux", None))]


def test_equal_index_with_uniqueness(Base, client):
    class M(Base):
        foo = fields.StringField(indexable=True, indexes=[EqualIndexWith.configure(["bar"], unique=True)])
        bar = fields.InstanceHashField(indexable=True)

    n = M._name
    a = M(foo="f", bar="b")
    M(foo="f", bar="c")
    before = layout(client)
    message = r'^Value "foo=f, bar=b" already indexed for unique together fields \[foo, bar\] on M \(for instance 1\)$'
    with pytest.raises(UniquenessError, match=message):
        M(foo="f", bar="b")
    assert layout(client) == before  # checked at construction: no pk allocated
    assert client.get("%s:max_pk" % n) == "2"
    c = M(foo="g", bar="b")
    with pytest.raises(UniquenessError, match=message):
        c.foo.set("f")
    assert c.foo.get() == "g"  # rolled back
    with pytest.raises(
        UniquenessError, match=r'^Value "foo=f, bar=c" already indexed .* \(for instance 2\)$'
    ):
        a.bar.hset("c")
    assert a.bar.hget() == "b"
    assert keys_of(client, M)["%s:foo:equal-with:f:b" % n] == ("set", {a._pk})
    assert keys_of(client, M)["%s:foo:equal-with:g:b" % n] == ("set", {c._pk})
    a.bar.hset("d")
    M(foo="f", bar="b")  # free again
    # partial values at creation are not checked together
    M(foo="f")
    M(bar="d")


def test_equal_index_with_uniqueness_on_multi_value_fields_at_init(Base, client):
    class M(Base):
        foo = fields.SetField(indexable=True, indexes=[EqualIndexWith.configure(["bar"], unique=True)])
        bar = fields.StringField()

    M(foo=["a", "b"], bar="x")
    before = layout(client)
    with pytest.raises(UniquenessError, match='"foo=b, bar=x"'):
        M(foo=["c", "b"], bar="x")
    assert layout(client) == before
    index = M.get_field("foo").get_index()
    index.check_uniqueness_at_init({"foo": ["c"], "bar": "x"})
    index.check_uniqueness_at_init({"foo": ["a"]})  # not every field: nothing checked
    with pytest.raises(UniquenessError):
        index.check_uniqueness_at_init({"foo": {"a"}, "bar": "x"})


def test_equal_index_with_rollback_of_a_failed_hmset(Base, client):
    class M(Base):
        foo = fields.InstanceHashField(indexable=True, indexes=[EqualIndexWith.configure(["bar"])])
        bar = fields.InstanceHashField()
        email = fields.InstanceHashField(unique=True)

    M(email="taken")
    m = M(foo="f", bar="b", email="mine")
    before = layout(client)
    with pytest.raises(UniquenessError):
        m.hmset(bar="c", email="taken")
    assert layout(client) == before
    m.hmset(bar="c")
    assert pks(M.collection(foo="f", bar="c")) == {m._pk}
    assert pks(M.collection(foo="f", bar="b")) == set()


def test_equal_index_with_clear_and_rebuild(Together, client):
    Together(foo={"F": "v"}, bar=["a", "b"], baz="z")
    Together(foo={"G": "w"}, bar=["a"], baz="y")
    full = keys_of(client, Together)
    for field_name in ("foo", "bar", "baz"):
        field = Together.get_field(field_name)
        field.clear_indexes()
        field.rebuild_indexes()
        assert keys_of(client, Together) == full, field_name
    field = Together.get_field("foo")
    field.clear_indexes(aggressive=True)
    assert not [key for key in keys_of(client, Together) if ":equal-with:" in key]
    field.rebuild_indexes()
    assert keys_of(client, Together) == full


def test_equal_index_with_on_an_inherited_model(Together, client):
    class Child(Together):
        pass

    assert len(Child.get_field("bar").index_classes) == 1
    assert len(Child.get_field("baz").index_classes) == 2
    child = Child(foo={"F": "v"}, bar=["b"], baz="z")
    assert pks(Child.collection(foo__F="v", bar="b", baz="z")) == {child._pk}
    assert pks(Together.collection(foo__F="v", bar="b", baz="z")) == set()


# ---------------------------------------------------------------------- several fields in one operation


@pytest.mark.parametrize("order", ["main first", "other first"])
def test_equal_index_with_hmset_of_several_fields(Base, client, order):
    class M(Base):
        foo = fields.InstanceHashField(indexable=True, indexes=[EqualIndexWith.configure(["bar"])])
        bar = fields.InstanceHashField()
        email = fields.InstanceHashField(unique=True)

    n = M._name
    M(email="taken")
    m = M(foo="x", bar="a")
    values = {"foo": "y", "bar": "b"} if order == "main first" else {"bar": "b", "foo": "y"}
    before = layout(client)
    with pytest.raises(UniquenessError):
        m.hmset(**values, email="taken")
    assert layout(client) == before
    m.hmset(**values)
    assert {k: v for k, v in keys_of(client, M).items() if ":equal-with:" in k} == {
        "%s:foo:equal-with:y:b" % n: ("set", {m._pk})
    }
    empty = M(foo="x")
    empty.hmset(**values)  # bar had no value
    assert keys_of(client, M)["%s:foo:equal-with:y:b" % n] == ("set", {m._pk, empty._pk})
    assert pks(M.collection(foo="y", bar="b")) == {m._pk, empty._pk}


@pytest.mark.parametrize("order", ["main first", "score first"])
def test_scored_equal_index_hmset_of_value_and_score(ZBase, client, order):
    Index = ScoredEqualIndex.configure(score_field="prio")

    class R(ZBase):
        label = fields.InstanceHashField(unique=True, indexes=[Index])
        prio = fields.InstanceHashField()
        email = fields.InstanceHashField(unique=True)

    n = R._name
    R(email="taken")
    r = R(label="x", prio=3)
    values = {"label": "y", "prio": 5} if order == "main first" else {"prio": 5, "label": "y"}
    before = layout(client)
    with pytest.raises(UniquenessError):
        r.hmset(**values, email="taken")
    assert layout(client) == before
    r.hmset(**values)
    assert keys_of(client, R) == {
        "%s:label:equal-scored:y" % n: ("zset", [(r._pk, 5.0)]),
        "%s:label:equal-scored:y:__uniqueness__" % n: ("set", {r._pk}),
        "%s:email:taken" % n: ("set", {"1"}),
    }
    no_score = R(label="z")
    no_score.hmset(**{"label": "w", "prio": 1} if order == "main first" else {"prio": 1, "label": "w"})
    assert keys_of(client, R)["%s:label:equal-scored:w" % n] == ("zset", [(no_score._pk, 1.0)])


def test_indexes_stay_consistent_through_random_operations(ZBase, client):
    import random

    class C(ZBase):
        a = fields.InstanceHashField(indexable=True, indexes=[EqualIndexWith.configure(["b"], unique=True)])
        b = fields.InstanceHashField()
        s = fields.InstanceHashField(indexable=True, indexes=[ScoredEqualIndex.configure(score_field="p")])
        p = fields.InstanceHashField()
        t = fields.SetField(indexable=True, indexes=[EqualIndexWith.configure(["a", "s"])])
        c = fields.InstanceHashField(indexable=True, indexes=[EqualIndexWith.configure(["b"])])
        email = fields.InstanceHashField(unique=True)

    rng = random.Random(20151216)
    instances = [C(email="e%d" % i) for i in range(4)]
    failures = 0
    for _ in range(300):
        instance = rng.choice(instances)
        values = {
            name: rng.choice(["1", "2", "3"])
            for name in rng.sample(["a", "b", "c", "s", "p"], rng.randint(1, 5))
        }
        if rng.random() < 0.3:
            values["email"] = rng.choice(["e0", "e1", "e2", "e3"])
        try:
            if rng.random() < 0.2:
                instance.t.sadd(rng.choice(["t1", "t2"]))
            elif rng.random() < 0.2:
                instance.get_field(rng.choice(["a", "b", "c", "s", "p"])).delete()
            else:
                instance.hmset(**values)
        except UniquenessError:
            failures += 1
    assert failures > 20
    # nothing left in the rollback caches (no journal or pending value outlives its operation)
    for name in C._fields[1:]:
        for index in C.get_field(name)._indexes:
            assert index._rollback_cache == {}, (name, index)
    current = keys_of(client, C)
    for name in ("a", "b", "c", "s", "p", "t"):
        C.get_field(name).clear_indexes(aggressive=True)
    for name in ("a", "b", "c", "s", "p", "t", "email"):
        C.get_field(name).rebuild_indexes()
    assert keys_of(client, C) == current


def test_scored_equal_index_collections_come_ordered_by_score(Scored):
    a = Scored(name="x", prio=30, rank=1)
    b = Scored(name="x", prio=10, rank=1)
    c = Scored(name="x", prio=20, rank=2)
    d = Scored(name="y", prio=15, rank=1)
    Scored(name="x")  # no score: not in the index
    assert list(Scored.collection(name="x")) == [b._pk, c._pk, a._pk]
    assert list(Scored.collection(name__eq="y")) == [d._pk]
    assert list(Scored.collection(name__in=["x", "y"])) == [b._pk, d._pk, c._pk, a._pk]
    assert list(Scored.collection(name="x", rank=1)) == [b._pk, a._pk]  # a plain set counts 1 for all
    assert Scored.collection(name="x")[0] == b._pk
    assert Scored.collection(name="x")[1:] == [c._pk, a._pk]
    assert len(Scored.collection(name="x")) == 3
    b.prio.hset(40)
    assert list(Scored.collection(name="x")) == [c._pk, a._pk, b._pk]
    assert [i.pk.get() for i in Scored.collection(name="x").instances()] == [c._pk, a._pk, b._pk]
    # combined with another scored filter: scores are summed
    e = Scored(name="z", prio=1, tags=["t"], rank=100)
    f = Scored(name="z", prio=50, tags=["t"], rank=10)
    assert list(Scored.collection(name="z", tags="t")) == [f._pk, e._pk]  # 60 < 101


def test_scored_equal_index_on_a_foreign_key(database, namespace, client):
    from limpyd.contrib.related import FKInstanceHashField, RelatedModel

    db, ns = database, namespace

    class Client(RelatedModel):
        database = db
        namespace = ns
        name = fields.StringField()

    class Order(RelatedModel):  # RelatedModel: an ExtendedCollectionManager by default
        database = db
        namespace = ns
        client = FKInstanceHashField(Client, indexes=[ScoredEqualIndex.configure(score_field="amount")])
        amount = fields.InstanceHashField()

    alice, bob = Client(name="alice"), Client(name="bob")
    first = Order(client=alice, amount=30)
    second = Order(client=alice, amount=10)
    Order(client=bob, amount=20)
    index = Order.get_field("client").get_index()
    assert index.get_storage_key(alice) == "%s:order:client:equal-scored:%s" % (ns, alice._pk)
    assert client.zrange(index.get_storage_key(alice), 0, -1, withscores=True) == [
        (second._pk, 10.0),
        (first._pk, 30.0),
    ]
    assert list(Order.collection(client=alice)) == [second._pk, first._pk]
    assert list(alice.order_set()) == [second._pk, first._pk]  # the reverse collection, by amount
