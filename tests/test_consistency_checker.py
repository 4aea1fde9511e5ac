"""The shared consistency checker (tests/_consistency.py) detects each kind of corruption.

A clean database made by limpyd passes; then each test corrupts it on purpose, through a raw
client, and the checker must name the problem: a checker that cannot fail proves nothing.
"""

from __future__ import annotations

import pytest
from _consistency import (
    KIND_DEADLINE,
    KIND_DUPLICATE_UNIQUE,
    KIND_EMPTY_PK,
    KIND_LOCK,
    KIND_MISSING_ENTRY,
    KIND_ORPHAN_DATA,
    KIND_STALE_ENTRY,
    KIND_TEMPORARY,
    KIND_UNKNOWN,
    assert_consistent,
    check_consistency,
)

from limpyd import fields
from limpyd.indexes import EqualIndex, NumberRangeIndex, TextRangeIndex


@pytest.fixture
def Everything(Base):
    """A model with every field type, indexed in every supported way."""

    class Everything(Base):
        code = fields.InstanceHashField(unique=True)
        note = fields.InstanceHashField()
        name = fields.StringField(indexable=True, indexes=[EqualIndex, TextRangeIndex])
        size = fields.StringField(indexable=True, indexes=[NumberRangeIndex])
        tags = fields.SetField(indexable=True)
        todo = fields.ListField(indexable=True)
        scores = fields.SortedSetField(indexable=True)
        info = fields.HashField(
            indexable=True, indexes=[EqualIndex.configure(prefix="e", key="k"), NumberRangeIndex]
        )

    return Everything


@pytest.fixture
def populated(Everything, client):
    """Two full instances written by limpyd; returns ``(model, client, name)``."""
    Everything(
        code="c1",
        note="n",
        name="john",
        size="30",
        tags=["a", "b"],
        todo=["x", "x", "y"],
        scores={"m1": 1.5},
        info={"k1": "10", "k2": "v"},
    )
    Everything(code="c2", name="jo", size="abc", tags=["a"], info={"k1": "20"})
    return Everything, client, Everything._name


def kinds(problems):
    return {problem.split(":", 1)[0] for problem in problems}


def test_clean_database_passes(populated):
    model, client, _ = populated
    assert check_consistency(client, [model]) == []
    assert_consistent(client, [model])


def test_expected_keys_follow_the_spec_layout(populated):
    """The checker's expectations match the key layout of docs/indexes.rst (a known-good dump)."""
    model, client, name = populated
    assert client.smembers(name + ":name:john") == {"1"}
    assert client.zrange(name + ":name:text-range", 0, -1) == [
        "jo:TEXT-RANGE-SEPARATOR:2",
        "john:TEXT-RANGE-SEPARATOR:1",
    ]
    assert client.zrange(name + ":size:number-range", 0, -1, withscores=True) == [("2", 0.0), ("1", 30.0)]
    assert client.smembers(name + ":info:k1:e:k:10") == {"1"}
    assert client.zrange(name + ":info:k1:number-range", 0, -1, withscores=True) == [("1", 10.0), ("2", 20.0)]


@pytest.mark.parametrize(
    "corrupt, kind, text",
    [
        (lambda c, n: c.sadd(n + ":name:ghost", "1"), KIND_STALE_ENTRY, ":name:ghost"),
        (lambda c, n: c.srem(n + ":name:john", "1"), KIND_MISSING_ENTRY, ":name:john"),
        (
            lambda c, n: c.zrem(n + ":name:text-range", "john:TEXT-RANGE-SEPARATOR:1"),
            KIND_MISSING_ENTRY,
            "text-range",
        ),
        (lambda c, n: c.zadd(n + ":size:number-range", {"1": 31}), KIND_MISSING_ENTRY, "score"),
        (lambda c, n: c.srem(n + ":tags:b", "1"), KIND_MISSING_ENTRY, ":tags:b"),
        (lambda c, n: c.sadd(n + ":todo:z", "2"), KIND_STALE_ENTRY, ":todo:z"),
        (lambda c, n: c.srem(n + ":scores:m1", "1"), KIND_MISSING_ENTRY, ":scores:m1"),
        (lambda c, n: c.hset(n + ":1:info", "k2", "w"), KIND_MISSING_ENTRY, ":info:k2:e:k:w"),
        (lambda c, n: c.set(n + ":1:name", "johnny"), KIND_STALE_ENTRY, ":name:john"),
        (lambda c, n: c.hset(n + ":1:hash", "code", "zz"), KIND_MISSING_ENTRY, ":code:zz"),
    ],
)
def test_index_mismatches_are_detected(populated, corrupt, kind, text):
    model, client, name = populated
    corrupt(client, name)
    problems = check_consistency(client, [model])
    assert any(p.startswith(kind) and text in p for p in problems), problems


def test_pk_without_data(populated):
    model, client, name = populated
    client.sadd(name + ":collection", "3")
    problems = check_consistency(client, [model])
    assert kinds(problems) == {KIND_EMPTY_PK}, problems


def test_deadline_of_a_missing_pk(populated):
    model, client, name = populated
    client.zadd(name + ":__deadlines__", {"1": 10, "2": 20})
    assert check_consistency(client, [model]) == []  # deadlines of existing pks are fine
    client.zadd(name + ":__deadlines__", {"9": 30})
    problems = check_consistency(client, [model])
    assert kinds(problems) == {KIND_DEADLINE}, problems


def test_data_outside_the_collection(populated):
    model, client, name = populated
    client.srem(name + ":collection", "2")
    problems = check_consistency(client, [model])
    assert KIND_ORPHAN_DATA in kinds(problems), problems
    assert any(p.startswith(KIND_ORPHAN_DATA) and ":2:hash" in p for p in problems)
    # the index entries of pk 2 now point at no instance
    assert any(p.startswith(KIND_STALE_ENTRY) and ":name:jo" in p for p in problems)


def test_duplicate_unique_value(populated):
    model, client, name = populated
    client.hset(name + ":2:hash", "code", "c1")
    client.srem(name + ":code:c2", "2")
    client.sadd(name + ":code:c1", "2")
    problems = check_consistency(client, [model])
    assert kinds(problems) == {KIND_DUPLICATE_UNIQUE}, problems
    assert "'c1'" in problems[0] and "['1', '2']" in problems[0]


def test_leftover_lock(populated):
    model, client, name = populated
    client.set(name + ":lock-for-update:name", "token", px=5000)
    assert kinds(check_consistency(client, [model])) == {KIND_LOCK}


@pytest.mark.parametrize(
    "suffix",
    [
        ":__index__:equalindex:tmp:0123456789abcdef0123456789abcdef",
        ":__collection__:final:0123456789abcdef0123456789abcdef",
        ":__collection__:tmp:0123456789abcdef0123456789abcdef:1",
    ],
)
def test_leftover_temporary_key(populated, suffix):
    model, client, name = populated
    client.sadd(name + suffix, "1")
    assert kinds(check_consistency(client, [model])) == {KIND_TEMPORARY}


def test_stored_collection_with_ttl_is_not_a_leftover(populated):
    model, client, name = populated
    client.rpush(name + ":__collection__:store:0123456789abcdef0123456789abcdef", "1")
    assert kinds(check_consistency(client, [model])) == {KIND_TEMPORARY}
    client.expire(name + ":__collection__:store:0123456789abcdef0123456789abcdef", 60)
    assert check_consistency(client, [model]) == []


@pytest.mark.parametrize(
    "key, kind",
    [
        ("stranger", "string"),
        ("{name}:1:nofield", "string"),
        ("{name}:1:name", "set"),  # a field key of the wrong type
    ],
)
def test_unknown_keys(populated, key, kind):
    model, client, name = populated
    key = key.format(name=name)
    client.delete(key)
    if kind == "string":
        client.set(key, "x")
    else:
        client.sadd(key, "x")
    problems = check_consistency(client, [model])
    assert any(p.startswith(KIND_UNKNOWN) and key in p for p in problems), problems


def test_assert_consistent_lists_the_problems(populated):
    model, client, name = populated
    client.sadd(name + ":name:ghost", "1")
    with pytest.raises(AssertionError, match="name:ghost"):
        assert_consistent(client, [model])


def test_multi_field_index_entries_are_checked(Base, client):
    """An ``EqualIndexWith`` (unique together): one set per combination, ``M:a:equal-with:<a>:<b>``."""
    from limpyd.contrib.indexes import EqualIndexWith

    class Together(Base):
        a = fields.StringField(
            indexable=True, indexes=[EqualIndexWith.configure(other_fields=["b"], unique=True)]
        )
        b = fields.InstanceHashField(indexable=True)

    first = Together(a="x", b="1")
    Together(a="x", b="2")
    Together(a="y")  # no combination: nothing indexed
    name = Together._name
    assert check_consistency(client, [Together]) == []
    assert sorted(key for key in client.keys(name + ":a:*")) == [
        name + ":a:equal-with:x:1",
        name + ":a:equal-with:x:2",
    ]
    client.srem(name + ":a:equal-with:x:1", first.pk.get())
    assert kinds(check_consistency(client, [Together])) == {KIND_MISSING_ENTRY}
    client.sadd(name + ":a:equal-with:x:1", first.pk.get(), "2")
    assert kinds(check_consistency(client, [Together])) == {KIND_STALE_ENTRY}
    client.srem(name + ":a:equal-with:x:1", "2")
    client.hset("%s:2:hash" % name, "b", "1")  # pk 2 now holds x, 1 too (its index not updated)
    assert kinds(check_consistency(client, [Together])) == {
        KIND_DUPLICATE_UNIQUE,
        KIND_MISSING_ENTRY,
        KIND_STALE_ENTRY,
    }
