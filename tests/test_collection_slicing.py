"""Tests of collection indexing and slicing (docs/collections.rst; decisions C1, C2, C4, C7 in docs/migrating.rst).

The result of every slice is checked against Python's own slicing of the full result; the
commands are counted on the server: at most one evaluation per slice, none only for a slice that
Python proves empty from its bounds alone.
"""

from __future__ import annotations

import itertools

import pytest
from _collection_helpers import boats, command_log, raw_client, temporary_keys

from limpyd.collection import CollectionManager, CollectionResults
from limpyd.fields import StringField
from limpyd.model import RedisModel

BOUNDS = [None] + list(range(-5, 6))
STEPS = [None] + [step for step in range(-5, 6) if step]
ALL_SLICES = [slice(start, stop, step) for start, stop, step in itertools.product(BOUNDS, BOUNDS, STEPS)]
ITEMS = [str(pk) for pk in range(1, 10)]


def _nine(db, ns):
    """Return a model with 9 instances, pks 1-9, all with ``tag='x'`` (value ``v`` = pk)."""

    class Nine(RedisModel):
        database = db
        namespace = ns
        tag = StringField(indexable=True)
        v = StringField()

    for pk in ITEMS:
        Nine(tag="x", v=pk)
    return Nine


def _empty_at_every_length(s: slice) -> bool:
    """Return whether Python's own slicing gives ``[]`` for ``s`` on a list of any length.

    Only such a slice may be answered without asking Redis (its length is not known yet).
    """
    return all(list(range(length))[s] == [] for length in range(2 * 5 + 3))


def _variants(Nine):
    """Return ``(label, factory, expected full list or None for unsorted)``."""
    return [
        ("sorted", lambda: Nine.collection().sort(), ITEMS),
        ("sorted filtered", lambda: Nine.collection(tag="x").sort(), ITEMS),
        ("descending", lambda: Nine.collection().sort(by="-pk"), ITEMS[::-1]),
        ("descending by field", lambda: Nine.collection(tag="x").sort(by="-v"), ITEMS[::-1]),
        ("nosort", lambda: Nine.collection().sort(by="nosort"), None),
        ("unsorted", lambda: Nine.collection(), None),
    ]


@pytest.mark.parametrize("cloned", [False, True], ids=["direct", "clone"])
@pytest.mark.parametrize("variant", range(6))
def test_exhaustive_slices(database, namespace, count_commands, variant, cloned):
    """Every slice start/stop in -5..5/None, step in +-1..5/None, against Python on the same data."""
    Nine = _nine(database, namespace)
    label, factory, expected_full = _variants(Nine)[variant]
    make = (lambda: factory().clone()) if cloned else factory
    fetched_full = list(make())
    if expected_full is None:  # unsorted or set order: same members, order from Redis
        assert sorted(fetched_full, key=int) == ITEMS
    else:
        assert fetched_full == expected_full
    reference = fetched_full
    without_command = []
    for s in ALL_SLICES:
        collection = make()
        with count_commands() as counter:
            result = collection[s]
        expected = reference[s]
        # at most the one command of a full fetch; none only for a slice empty whatever the length
        assert counter.count <= 1, (label, s, counter.count)
        if counter.count == 0:
            assert _empty_at_every_length(s), (label, s)
            assert result == [] and type(result) is list, (label, s)
            without_command.append(s)
        assert len(result) == len(expected), (label, s)
        if label == "unsorted":
            # every slice of an unsorted collection is a numeric SORT (windowed or whole): pk
            # order, so that its slices agree with each other and with its indexes
            expected = ITEMS[s]
        # otherwise the order of the full fetch (SMEMBERS / SORT BY nosort: Redis set order)
        assert list(result) == expected, (label, s, list(result), expected)
    # the slices Python itself proves empty from their bounds alone cost nothing (e.g. [3:1], [-1:-3])
    assert (
        slice(3, 1) in without_command
        and slice(-1, -3) in without_command
        and slice(1, 3, -1) in without_command
    )


@pytest.mark.parametrize("cloned", [False, True], ids=["direct", "clone"])
@pytest.mark.parametrize("variant", range(6))
def test_exhaustive_indexes(database, namespace, count_commands, variant, cloned):
    Nine = _nine(database, namespace)
    label, factory, expected_full = _variants(Nine)[variant]
    make = (lambda: factory().clone()) if cloned else factory
    reference = list(make())
    if label == "unsorted":  # every index is a window: numeric SORT
        reference = ITEMS
    with count_commands(18):
        for i in range(-9, 9):
            assert make()[i] == reference[i], (label, i)
    for i in (9, 10, 100, -10, -11, -100):
        with count_commands(1):
            with pytest.raises(IndexError):
                make()[i]


def test_unsorted_windows_follow_numeric_order(database, namespace):
    """K: a window on an unsorted collection is a numeric SORT, so windowed rules give pk order."""
    Nine = _nine(database, namespace)
    collection = Nine.collection()
    assert list(collection[1:3]) == ["2", "3"]
    assert list(collection[-3:-1]) == ["7", "8"]
    assert list(collection[2:]) == ITEMS[2:]
    assert collection[-1] == "9"
    assert collection[0] == "1"


def test_one_collection_object_stays_whole(database, namespace, count_commands):
    """C1 and C2: indexes and slices on one object never change what later operations see."""
    Nine = _nine(database, namespace)
    for collection, full in (
        (Nine.collection().sort(), ITEMS),
        (Nine.collection(tag="x").sort(by="-pk"), ITEMS[::-1]),
    ):
        assert collection[-1] == full[-1]
        assert collection[-2] == full[-2]
        assert collection[-1] == full[-1]
        assert collection[0] == full[0]
        assert list(collection[-2:]) == full[-2:]  # rule 6: full fetch, not cached as the whole
        assert list(collection[-3:-1]) == full[-3:-1]
        assert collection._sort_limits is None
        assert collection._collection_cache is None and collection._len is None
        with count_commands(1):
            assert list(collection) == full
        with count_commands(0):
            assert len(collection) == 9
            assert list(collection[-2:]) == full[-2:]
            assert collection[-1] == full[-1]
        assert list(collection) == full
    collection = Nine.collection().sort()
    for s in ALL_SLICES:
        collection[s]
    for i in range(-9, 9):
        assert collection[i] == ITEMS[i]
    assert len(collection) == 9
    assert list(collection) == ITEMS


def test_cached_collection_serves_slices(database, namespace, count_commands):
    Nine = _nine(database, namespace)
    collection = Nine.collection().sort(by="-pk")
    full = list(collection)
    with count_commands(0):
        for s in ALL_SLICES:
            result = collection[s]
            assert isinstance(result, CollectionResults)
            assert list(result) == full[s]
        for i in range(-9, 9):
            assert collection[i] == full[i]
        with pytest.raises(IndexError):
            collection[9]
        with pytest.raises(ValueError, match="slice step cannot be zero"):
            collection[::0]


@pytest.mark.parametrize(
    ("key", "command", "expected"),
    [
        (slice(1, 3), "SORT {c} LIMIT 1 2", ["2", "3"]),
        (slice(5, 1, -2), "SORT {c} LIMIT 2 4", ["6", "4"]),
        (slice(-3, -1), "SORT {c} LIMIT 1 2 DESC", ["7", "8"]),
        (slice(-1, -4, -1), "SORT {c} LIMIT 0 3 DESC", ["9", "8", "7"]),
        (slice(2, -1), "SORT {c} LIMIT 2 -1", ITEMS[2:-1]),
        (slice(None, 2, -1), "SORT {c} LIMIT 3 -1", ITEMS[:2:-1]),
        (slice(-2, 0, -1), "SORT {c} LIMIT 1 -1", ITEMS[-2:0:-1]),
        (slice(None, 3), "SORT {c} LIMIT 0 3", ["1", "2", "3"]),
        (slice(-3, None), "SORT {c} LIMIT 0 3 DESC", ["7", "8", "9"]),  # the last 3 only
        (slice(None, None, -1), "SORT {c}", ITEMS[::-1]),
        (slice(3, 0, -1), "SORT {c}", ["4", "3", "2"]),
        (slice(5, 1), None, []),
        (slice(-2, -1, -1), None, []),
        (slice(5, 10), "SORT {c} LIMIT 5 5", ITEMS[5:]),
        (slice(10, 20), "SORT {c} LIMIT 10 10", []),
        (3, "SORT {c} LIMIT 3 1", "4"),
        (-1, "SORT {c} LIMIT 0 1 DESC", "9"),
        (-4, "SORT {c} LIMIT 3 1 DESC", "6"),
    ],
)
def test_worked_examples(database, namespace, redis_settings, key, command, expected):
    Nine = _nine(database, namespace)
    client = raw_client(redis_settings)
    with command_log(client) as log:
        result = Nine.collection().sort()[key]
    assert (list(result) if isinstance(result, CollectionResults) else result) == expected
    assert log == ([] if command is None else [command.format(c="%s:nine:collection" % namespace)])
    if command is None:
        assert type(result) is list


def test_descending_windows(database, namespace, redis_settings):
    Nine = _nine(database, namespace)
    client = raw_client(redis_settings)
    n = namespace
    with command_log(client) as log:
        assert Nine.collection(tag="x").sort(by="-v")[-1] == "1"
        assert list(Nine.collection(tag="x").sort(by="-v")[1:3]) == ["8", "7"]
    assert log == [
        "SORT %s:nine:tag:x BY %s:nine:*:v LIMIT 0 1" % (n, n),
        "SORT %s:nine:tag:x BY %s:nine:*:v LIMIT 1 2 DESC" % (n, n),
    ]


def test_nosort_windows(database, namespace, redis_settings):
    """Redis does not reverse a collection it does not sort: negative windows use a full fetch (C7)."""
    Nine = _nine(database, namespace)
    client = raw_client(redis_settings)
    c = "%s:nine:collection" % namespace
    with command_log(client) as log:
        assert list(Nine.collection().sort(by="nosort")[2:3]) == [
            list(Nine.collection().sort(by="nosort"))[2]
        ]
    assert log == ["SORT %s BY nosort LIMIT 2 1" % c, "SORT %s BY nosort" % c]
    full = list(Nine.collection().sort(by="nosort"))
    with command_log(client) as log:
        assert list(Nine.collection().sort(by="nosort")[-3:-2]) == full[-3:-2]
        assert Nine.collection().sort(by="nosort")[-1] == full[-1]
        assert Nine.collection().sort(by="-nosort")[-1] == full[-1]
    assert log == ["SORT %s BY nosort" % c, "SORT %s BY nosort" % c, "SORT %s BY nosort DESC" % c]


def test_pk_only_collection_applies_the_index(database, namespace, count_commands):
    """C4: upstream ignored the window (`collection(pk=1)[1]` returned '1')."""
    Boat = boats(database, namespace)
    with count_commands(1):
        assert Boat.collection(pk=1)[0] == "1"
    with count_commands(1):
        assert Boat.collection(pk=1)[-1] == "1"
    with count_commands(1):
        with pytest.raises(IndexError):
            Boat.collection(pk=1)[1]
    with pytest.raises(IndexError):
        Boat.collection(pk=1)[-2]
    with count_commands(1):
        assert list(Boat.collection(pk=1)[1:]) == []
    assert list(Boat.collection(pk=1)[0:]) == ["1"]
    assert list(Boat.collection(pk=1)[:5]) == ["1"]
    assert list(Boat.collection(pk=1)[::-1]) == ["1"]
    assert list(Boat.collection(pk=1).sort(by="-length")[-1:]) == ["1"]
    with count_commands(0):
        assert Boat.collection(pk=1)[3:1] == []
    with pytest.raises(IndexError):
        Boat.collection(pk=9)[0]
    assert list(Boat.collection(pk=9)[0:]) == []
    with count_commands(0):
        with pytest.raises(IndexError):
            Boat.collection(pk=1, pk__eq=2)[0]
    with count_commands(8):
        assert Boat.collection(pk=1, power="sail").sort()[0] == "1"
    with count_commands(8):
        assert list(Boat.collection(pk=1, power="sail")[1:]) == []
    for s in [slice(None, None, None), slice(1, None), slice(-1, None), slice(0, 1), slice(None, None, -2)]:
        assert list(Boat.collection(pk=2)[s]) == ["2"][s]


def test_window_with_filters_and_instances(database, namespace, redis_settings, count_commands):
    Boat = boats(database, namespace)
    client = raw_client(redis_settings)
    collection = Boat.collection(power="sail", launched__in=[1898, 1964, 1966]).sort(by="-length")
    with command_log(client) as log:
        assert collection[0] == "3"
    assert [entry.split(" ")[0] for entry in log] == [
        "EXISTS",
        "SUNIONSTORE",
        "EXISTS",
        "SINTERSTORE",
        "DEL",
        "SORT",
        "DEL",
    ]
    assert "LIMIT 0 1 DESC" in log[5]
    assert list(collection[1:]) == ["1", "2"]
    assert collection.instances()[-1]._pk == "2"
    assert [boat._pk for boat in collection.instances(lazy=True)[::2]] == ["3", "2"]
    assert temporary_keys(client) == []
    # len() keeps the final key; the following window uses it
    assert len(collection) == 3
    with command_log(client) as log:
        assert list(collection[-2:]) == ["1", "2"]
    assert [entry.split(" ")[0] for entry in log] == ["EXPIRE", "SORT", "DEL"]
    assert temporary_keys(client) == []
    assert list(collection) == ["3", "1", "2"]


@pytest.mark.parametrize("bad", ["a", 1.5, None, (1, 2), [0]])
def test_bad_index_types(database, namespace, count_commands, bad):
    Boat = boats(database, namespace)
    with count_commands(0):
        with pytest.raises(
            TypeError,
            match=r"CollectionManager indices must be integers or slices, not .* \(collection of .*Boat\)",
        ):
            Boat.collection()[bad]


@pytest.mark.parametrize("bad", [slice("a", 2), slice(1, 2.0), slice(None, None, "x")])
def test_bad_slice_parts(database, namespace, count_commands, bad):
    Boat = boats(database, namespace)
    cached = Boat.collection()
    list(cached)
    with count_commands(0):
        with pytest.raises(
            TypeError, match=r"^slice indices must be integers or None .* collection of .*Boat"
        ):
            Boat.collection()[bad]
        with pytest.raises(TypeError, match=r"^slice indices must be integers"):
            cached[bad]
        with pytest.raises(ValueError, match=r"^slice step cannot be zero$"):
            Boat.collection()[1:2:0]


def test_index_like_objects(database, namespace):
    class Two:
        def __index__(self):
            return 2

    Boat = boats(database, namespace)
    assert Boat.collection().sort()[Two()] == "3"
    assert list(Boat.collection().sort()[Two() :]) == ["3", "4"]
    assert Boat.collection().sort()[True] == "2"


def test_optimize_slice_contract():
    optimize = CollectionManager._optimize_slice
    assert optimize(slice(1, 3, None), True) == (True, 1, 2, False, slice(None, None, 1))
    assert optimize(slice(-3, -1, None), True) == (True, 1, 2, True, slice(None, None, -1))
    assert optimize(slice(-3, -1, None), False)[0] is False
    assert optimize(slice(5, 1, None), True)[:3] == (True, 0, 0)
    assert optimize(slice(None, None, -1), True)[0] is False
    with pytest.raises(ValueError):
        optimize(slice(None, None, 0), True)


def test_index_full_fetches_are_not_cached(database, namespace, count_commands):
    """C2 also for the full fetches of a pk collection (C4) and of a non-reversible negative index (C7)."""
    Boat = boats(database, namespace)
    missing = Boat.collection(pk=9)
    with pytest.raises(IndexError):
        missing[0]
    present = Boat.collection(pk=2)
    assert present[-1] == "2"
    unsorted = Boat.collection().sort(by="nosort")
    last = unsorted[-1]
    assert list(unsorted[-2:])[-1] == last
    for collection in (missing, present, unsorted):
        assert collection._collection_cache is None and collection._len is None
    with count_commands(1):
        assert list(missing) == []
    with count_commands(1):
        assert len(present) == 1
    with count_commands(1):
        assert list(unsorted)[-1] == last
