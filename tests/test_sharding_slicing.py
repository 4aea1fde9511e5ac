"""Every slice and index of a sharded collection, against Python's slicing of the whole result.

The results-only twin of ``tests/test_collection_slicing.py``'s exhaustive tests (which also count
the core's commands, and are skipped on the ``sharded`` variant for that reason): a 4-shard model,
every slice ``[start:stop:step]`` with bounds in -5..5/None and steps in +-1..5/None, and every
index, under each plan of docs/sharding.rst "Queries" (one key per shard, intersections, unions,
range filters, sorts by pk and by field, ``nosort``, unsorted), on the private server and on the
private cluster.
"""

from __future__ import annotations

import pytest
from test_collection_slicing import ALL_SLICES
from test_sharding import pytest_generate_tests  # noqa: F401 - single server and cluster

from limpyd import fields, model
from limpyd.indexes import EqualIndex, NumberRangeIndex

COUNT = 13
ITEMS = [str(pk) for pk in range(1, COUNT + 1)]
ODD = [pk for pk in ITEMS if int(pk) % 2]
#: the sort value of pk n: distinct, not in pk order
VALUE = {pk: str((int(pk) * 7) % 17 - 8) for pk in ITEMS}
LABEL = {pk: "l%02d" % ((int(pk) * 5) % 13) for pk in ITEMS}


def _model(db, ns):
    """Return a 4-shard model for pks 1-13 (``group`` g0/g1 by parity, a numeric ``v``)."""

    class Slice(model.RedisModel):
        database = db
        namespace = ns
        shards = 4
        tag = fields.StringField(indexable=True)
        group = fields.StringField(indexable=True)
        v = fields.StringField(indexable=True, indexes=[EqualIndex, NumberRangeIndex])
        label = fields.StringField()

    return Slice


def _variants(Slice):
    """Return ``(label, factory, expected whole result or None for an order given by Redis)``."""
    by_value = sorted(ITEMS, key=lambda pk: int(VALUE[pk]))
    return [
        ("sorted", lambda: Slice.collection().sort(), ITEMS),
        ("one filter, desc", lambda: Slice.collection(tag="x").sort(by="-pk"), ITEMS[::-1]),
        ("two filters", lambda: Slice.collection(tag="x", group="g1").sort(), ODD),
        ("in filter, by field", lambda: Slice.collection(group__in=["g0", "g1"]).sort(by="v"), by_value),
        (
            "range, by field desc",
            lambda: Slice.collection(v__gte=-3, tag="x").sort(by="-v"),
            [pk for pk in by_value[::-1] if int(VALUE[pk]) >= -3],
        ),
        (
            "alpha by field",
            lambda: Slice.collection(tag="x").sort(by="label", alpha=True),
            sorted(ITEMS, key=lambda pk: LABEL[pk]),
        ),
        ("nosort", lambda: Slice.collection(tag="x").sort(by="nosort"), None),
        ("unsorted", lambda: Slice.collection(group="g0"), [pk for pk in ITEMS if pk not in ODD]),
    ]


@pytest.fixture
def sliced(database, namespace):
    Slice = _model(database, namespace)
    for pk in ITEMS:
        assert Slice(tag="x", group="g%d" % (int(pk) % 2), v=VALUE[pk], label=LABEL[pk]).pk.get() == pk
    assert len({Slice.shard_of(pk) for pk in ITEMS}) == 4
    return Slice


@pytest.mark.parametrize("variant", range(8))
def test_every_slice(sliced, variant):
    label, factory, expected_full = _variants(sliced)[variant]
    whole = list(factory())
    if expected_full is None:  # nosort: the shards' results one after the other
        expected_full = whole
        assert sorted(whole, key=int) == ITEMS
    assert whole == expected_full, label
    for s in ALL_SLICES:
        result = factory()[s]
        assert list(result) == expected_full[s], (label, s, list(result), expected_full[s])


@pytest.mark.parametrize("variant", range(8))
def test_every_index(sliced, variant):
    label, factory, expected_full = _variants(sliced)[variant]
    if expected_full is None:
        expected_full = list(factory())
    size = len(expected_full)
    for i in range(-size, size):
        assert factory()[i] == expected_full[i], (label, i)
    for i in (size, size + 1, 100, -size - 1, -100):
        with pytest.raises(IndexError):
            factory()[i]
    assert len(factory()) == size
