"""Exhaustive indexing and slicing of extended collections (docs/collections.rst on the orders of docs/contrib.rst).

Score-sorted, zset-ordered and stored collections: every slice ``start``/``stop`` in -5..5 and
``None``, ``step`` in ±1..±5 and ``None``, and every index, against a Python list of the
collection's own order; one evaluation per slice (no command for a known-empty slice), and the
collection itself never changes (C1, C2).
"""

from __future__ import annotations

import itertools

import pytest
from _collection_helpers import temporary_keys
from _contrib_collection_helpers import command_log
from _redis_dump import raw_client

from limpyd.contrib.collection import SORTED_SCORE, ExtendedCollectionManager
from limpyd.fields import SortedSetField, StringField
from limpyd.model import RedisModel

BOUNDS = [None] + list(range(-5, 6))
STEPS = [None] + [step for step in range(-5, 6) if step]
ALL_SLICES = [slice(start, stop, step) for start, stop, step in itertools.product(BOUNDS, BOUNDS, STEPS)]
ITEMS = [str(pk) for pk in range(1, 10)]
#: scores of pks 1-9 in the sorted set, against the pk order
SCORES = {"1": 5, "2": 9, "3": 1, "4": 7, "5": 3, "6": 8, "7": 2, "8": 6, "9": 4}
BY_SCORE = sorted(ITEMS, key=SCORES.get)  # 3 7 5 9 1 8 4 6 2


def _empty_at_every_length(s: slice) -> bool:
    """Return whether Python's own slicing gives ``[]`` for ``s`` on a list of any length.

    Only such a slice may be answered without asking Redis (its length is not known yet).
    """
    return all(list(range(length))[s] == [] for length in range(2 * 5 + 3))


def _nine(db, ns):
    """Return a model with pks 1-9 (``tag='x'``, ``other='y'``) and the key of the sorted set of scores."""

    class Nine(RedisModel):
        database = db
        namespace = ns
        collection_manager = ExtendedCollectionManager
        tag = StringField(indexable=True)
        other = StringField(indexable=True)
        scores = SortedSetField()

    for _ in ITEMS:
        Nine(tag="x", other="y")
    holder = Nine(1)
    holder.scores.zadd(SCORES)
    return Nine, holder.scores.key


# (label, factory(Nine, zkey), expected full list, reversible,
#  commands of a window, commands of a full fetch)
VARIANTS = [
    (
        "score",
        lambda M, z: M.collection().sort(by_score=z),
        BY_SCORE,
        True,
        6,
        1 + 9 + 6,
    ),  # ZRANGE WITHSCORES, EXISTS, SET, MSET, SORT, DEL / SMEMBERS, ZSCOREs, EXISTS SET MSET SADD SORT DEL
    (
        "score desc filtered",
        lambda M, z: M.collection(tag="x").sort(by_score=z, desc=True),
        BY_SCORE[::-1],
        True,
        6,
        1 + 9 + 6,
    ),
    (
        "score two filters",
        lambda M, z: M.collection(tag="x", other="y").sort(by_score=z),
        BY_SCORE,
        True,
        2 + 6,
        2 + 2 + 9 + 6,
    ),  # EXISTS + SINTERSTORE first; the final key's DEL joins the score keys' on a window
    (
        "score values",
        lambda M, z: M.collection().sort(by_score=z).values_list("pk", flat=True),
        BY_SCORE,
        True,
        6,
        1 + 9 + 6,
    ),
    (
        "zset order",
        lambda M, z: M.collection().intersect(z),
        BY_SCORE,
        True,
        5,
        5,
    ),  # TYPE of the key, EXISTS, ZINTERSTORE, ZRANGE/ZREVRANGE, DEL
    ("zset order filtered", lambda M, z: M.collection(tag="x").intersect(z), BY_SCORE, True, 5, 5),
    (
        "stored",
        lambda M, z: M.collection().from_stored("stored:by:score"),
        BY_SCORE,
        False,
        2,
        2,
    ),  # EXISTS, SORT ... BY nosort LIMIT / EXISTS, LRANGE
    (
        "stored resorted by score",
        lambda M, z: M.collection().from_stored("stored:by:pk").sort(by_score=z, desc=True),
        BY_SCORE[::-1],
        True,
        1 + 6,
        1 + 1 + 9 + 6,
    ),
    (
        "stored resorted",
        lambda M, z: M.collection().from_stored("stored:by:score").sort(by="-pk"),
        ITEMS[::-1],
        True,
        2,
        2,
    ),
]


def _prepare(database, namespace, cloned, variant):
    Nine, zkey = _nine(database, namespace)
    Nine.collection().sort(by_score=zkey).store(key="stored:by:score", ttl=None)
    Nine.collection().sort().store(key="stored:by:pk", ttl=None)
    label, factory, expected, reversible, window_count, full_count = VARIANTS[variant]
    if cloned:
        return (lambda: factory(Nine, zkey).clone()), label, expected, reversible, window_count, full_count
    return (lambda: factory(Nine, zkey)), label, expected, reversible, window_count, full_count


#: every variant directly, and a clone of one collection of each kind (its state copied by clone())
COMBINATIONS = [pytest.param(variant, False, id=VARIANTS[variant][0]) for variant in range(len(VARIANTS))] + [
    pytest.param(variant, True, id=VARIANTS[variant][0] + " clone") for variant in (1, 3, 4, 7)
]


@pytest.mark.parametrize("variant, cloned", COMBINATIONS)
def test_exhaustive_slices(database, namespace, redis_settings, count_commands, variant, cloned):
    make, label, expected_full, reversible, window_count, full_count = _prepare(
        database, namespace, cloned, variant
    )
    assert list(make()) == expected_full
    client = raw_client(redis_settings)
    sliced = [make() for _ in ALL_SLICES]  # (from_stored reads LLEN: not counted below)
    costs = set()
    for s, collection in zip(ALL_SLICES, sliced):
        expected = expected_full[s]
        with count_commands() as counter:
            result = collection[s]
        # one evaluation: a window or the full fetch, never more; nothing only for a slice that
        # is empty whatever the length
        assert counter.count in (0, window_count, full_count), (label, s, counter.count)
        if counter.count == 0:
            assert _empty_at_every_length(s), (label, s)
            assert result == [] and type(result) is list, (label, s)
        costs.add(counter.count)
        assert len(result) == len(expected), (label, s)
        assert list(result) == expected, (label, s, list(result), expected)
    assert costs == {0, window_count, full_count}  # each kind of evaluation happened
    # the collections are untouched (C1, C2): same sorts and values as a new one, no window, no
    # cache, so their next full evaluation is the whole collection, in order (checked on a sample)
    pristine = make()
    state = (pristine._sort, pristine._sort_by_sortedset, pristine._values, None, False, None, None)
    for position, (s, collection) in enumerate(zip(ALL_SLICES, sliced)):
        assert (
            collection._sort,
            collection._sort_by_sortedset,
            collection._values,
            collection._sort_limits,
            collection._sort_limits_reverse,
            collection._collection_cache,
            collection._len,
        ) == state, (label, s)
        if position % 13 == 0:
            assert list(collection) == expected_full, (label, s)
            assert len(collection) == 9
    assert temporary_keys(client) == []


@pytest.mark.parametrize("variant, cloned", COMBINATIONS)
def test_exhaustive_indexes(database, namespace, redis_settings, count_commands, variant, cloned):
    make, label, expected_full, reversible, window_count, full_count = _prepare(
        database, namespace, cloned, variant
    )
    client = raw_client(redis_settings)
    collection = make()
    for i in range(-9, 9):
        with count_commands(window_count if i >= 0 or reversible else full_count):
            assert collection[i] == expected_full[i], (label, i)
    for i in (9, 10, 100, -10, -11, -100):
        with count_commands(window_count if i >= 0 or reversible else full_count):
            with pytest.raises(IndexError):
                collection[i]
    assert list(collection) == expected_full
    with count_commands(0):  # served from the cache now
        for i in range(-9, 9):
            assert collection[i] == expected_full[i]
        assert list(collection[::-1]) == expected_full[::-1]
    assert temporary_keys(client) == []


def test_score_sorted_windows_commands(database, namespace, redis_settings):
    """The window of a score-sorted collection is one ``SORT ... BY <tmp>:* LIMIT``, reversed when asked."""
    Nine, zkey = _nine(database, namespace)
    client = raw_client(redis_settings)
    n = Nine._name
    collection = Nine.collection(tag="x").sort(by_score=zkey)
    expected = [
        (slice(1, 3), "LIMIT 1 2", BY_SCORE[1:3]),
        (slice(5, 1, -2), "LIMIT 2 4", BY_SCORE[5:1:-2]),
        (slice(-3, -1), "LIMIT 1 2 DESC", BY_SCORE[-3:-1]),
        (slice(-1, -4, -1), "LIMIT 0 3 DESC", BY_SCORE[-1:-4:-1]),
        (slice(2, -1), "LIMIT 2 -1", BY_SCORE[2:-1]),
        (slice(None, 2, -1), "LIMIT 3 -1", BY_SCORE[:2:-1]),
    ]
    for s, limit, items in expected:
        with command_log(client) as log:
            assert list(collection[s]) == items
        assert log[4] == "SORT %s:tag:x BY %s:__collection__:tmp:<a>:* %s" % (n, n, limit), s
    desc = Nine.collection(tag="x").sort(by_score=zkey, desc=True)
    with command_log(client) as log:
        assert desc[-2] == BY_SCORE[1]
    assert log[4] == "SORT %s:tag:x BY %s:__collection__:tmp:<a>:* LIMIT 1 1" % (n, n)
    with command_log(client) as log:
        assert list(desc[-3:]) == BY_SCORE[2::-1]  # the last 3 only: a window read backwards
    assert log[4] == "SORT %s:tag:x BY %s:__collection__:tmp:<a>:* LIMIT 0 3" % (n, n)
    values = collection.values_list("pk", SORTED_SCORE)
    with command_log(client) as log:
        assert values[-1] == ("2", "9.0")
    assert log[4] == (
        "SORT %s:tag:x BY %s:__collection__:tmp:<a>:* LIMIT 0 1 GET # GET %s:__collection__:tmp:<a>:* DESC"
        % (n, n, n)
    )
    assert temporary_keys(client) == []
