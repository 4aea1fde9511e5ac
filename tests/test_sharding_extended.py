"""Extended collections of sharded models (docs/sharding.rst, "Extended collections").

A 16-shard and a 1-shard model with ``collection_manager = ExtendedCollectionManager`` hold the
same random data; random queries using ``intersect`` (lists of pks, set and list keys, bound
fields, collections of the model), ``sort(by_score=...)`` (a key, a bound ``SortedSetField`` of
another model; ``desc``, ``alpha``) and ``store()``, with filters, sorts, result types, indexes
and slices, give the same results. Every test runs on the private server and on the cluster.
"""

from __future__ import annotations

import random

import pytest
import redis
from _cluster import CLUSTER_DISABLED

from limpyd import fields, model
from limpyd._sharded_extended import ShardedExtendedCollection
from limpyd.collection import CollectionManager
from limpyd.contrib.collection import SORTED_SCORE, ExtendedCollectionManager
from limpyd.exceptions import DoesNotExist, ImplementationError
from limpyd.indexes import EqualIndex, NumberRangeIndex, TextRangeIndex
from limpyd.sharding import ShardedCollection


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test using ``database`` on the single server and on the cluster."""
    if "database" not in metafunc.fixturenames:
        return
    params = [pytest.param("single", id="single")]
    if not CLUSTER_DISABLED:
        params.append(pytest.param("cluster", id="cluster", marks=pytest.mark.cluster))
    metafunc.parametrize("database", params, indirect=True)


# ---------------------------------------------------------------------- helpers


def define(database, namespace, shards, name="Event", manager=ExtendedCollectionManager, **extra):
    """Return a new model with indexes of every core kind and the extended collection manager."""
    attrs = {
        "database": database,
        "namespace": namespace,
        "shards": shards,
        "collection_manager": manager,
        "kind": fields.StringField(indexable=True),
        "score": fields.InstanceHashField(indexable=True, indexes=[EqualIndex, NumberRangeIndex]),
        "label": fields.InstanceHashField(indexable=True, indexes=[TextRangeIndex]),
        "tags": fields.SetField(indexable=True),
        "rank": fields.StringField(),
        "note": fields.StringField(),
        "__module__": __name__,
    }
    attrs.update(extra)
    return type(model.RedisModel)(name, (model.RedisModel,), attrs)


def define_board(database, namespace):
    """Return an unsharded model holding sorted sets, sets and lists of pks (one slot per model)."""
    return type(model.RedisModel)(
        "Board",
        (model.RedisModel,),
        {
            "database": database,
            "namespace": namespace,
            "ranks": fields.SortedSetField(),
            "members": fields.SetField(),
            "queue": fields.ListField(),
            "__module__": __name__,
        },
    )


def _pk(value):
    return value.pk.get() if isinstance(value, model.RedisModel) else value


def _entry_pk(entry):
    if isinstance(entry, dict):
        return entry["pk"]
    if isinstance(entry, tuple):
        return entry[0]
    return _pk(entry)


def _outcome(function):
    """Return ``("ok", value)`` or ``("error", type)`` of ``function()``."""
    try:
        return ("ok", function())
    except (IndexError, ValueError, redis.ResponseError, DoesNotExist) as error:
        return ("error", type(error))


def _tie_view(entries, value_of, members=True, whole=False):
    """Return ``entries`` up to the order of equal sort values inside a window (``SORT ALPHA`` ties
    of a single server's partial sort): runs of equal values, the members of inner runs only
    (``whole``: of every run, for a whole result whose ties have no defined order)."""
    pks = [_entry_pk(entry) for entry in entries]
    values = [value_of(pk) for pk in pks]
    runs = []
    start = 0
    for position in range(1, len(pks) + 1):
        if position == len(pks) or values[position] != values[start]:
            edge = not members or (not whole and (start == 0 or position == len(pks)))
            runs.append((values[start], position - start, None if edge else sorted(pks[start:position])))
            start = position
    return runs


_RANKS = ["3", "-1", "0", "1.5", "-2.25", "10", "2", "1e1", "0x10", "-7"]
_NOTES = ["", "a", "b", "ab", "Z", "é", "a b", "\uff21"]


def _random_row(rng):
    row = {
        "kind": rng.choice(["a", "b", "c", "d", None]),
        "score": rng.choice([None, str(rng.randint(-20, 20)), "%.1f" % rng.uniform(-5, 5)]),
        "label": rng.choice([None, "".join(rng.choice("abcde") for _ in range(rng.randint(1, 3)))]),
        "tags": rng.sample(["t1", "t2", "t3", "t4"], rng.randint(0, 2)),
        "rank": rng.choice([None, None] + _RANKS),
        "note": rng.choice([None] + _NOTES),
    }
    return {name: value for name, value in row.items() if value is not None}


def _random_filters(rng):
    filters = {}
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        choice = rng.randrange(7)
        if choice == 0:
            filters["kind"] = rng.choice("abcdz")
        elif choice == 1:
            filters["kind__in"] = rng.sample(list("abcdz"), rng.randint(1, 3))
        elif choice == 2:
            filters["score__%s" % rng.choice(["gt", "gte", "lt", "lte"])] = rng.randint(-20, 20)
        elif choice == 3:
            filters["label__%s" % rng.choice(["gt", "lt", "startswith"])] = rng.choice(["a", "b", "cd"])
        elif choice == 4:
            filters["tags"] = rng.choice(["t1", "t2", "t3", "t9"])
        elif choice == 5:
            filters["pk"] = rng.randint(1, 130)
        else:
            filters["score"] = str(rng.randint(-20, 20))
    return filters


def _random_slice(rng, size):
    bound = size + 5

    def part():
        return rng.choice([None, rng.randint(-bound, bound), rng.randint(0, 10), -rng.randint(1, 10)])

    return slice(part(), part(), rng.choice([None, None, None, 1, 2, -1, -2]))


class _Data:
    """The same random data in a 16-shard and a 1-shard model, and sets, lists, sorted sets of pks."""

    def __init__(self, database, namespace, seed, rows=120):
        self.database = database
        self.sharded = define(database, namespace + "s", 16)
        self.single = define(database, namespace + "u", 1)
        self.board = define_board(database, namespace + "b")(ranks={"1": 0}, members=["1"], queue=["1"])
        self.rng = rng = random.Random(seed)
        for _ in range(rows):
            row = _random_row(rng)
            assert self.sharded(**row).pk.get() == self.single(**row).pk.get()
        for pk in rng.sample(range(1, rows + 1), rows // 10):
            for Model in (self.sharded, self.single):
                Model(pk).delete()
        self.pks = [str(pk) for pk in range(1, rows + 11)]  # 10 pks that were never used
        connection = database.connection
        # the keys given by their names: in any slot of a cluster (not the models' tags)
        self.set_key, self.list_key = namespace + ":pks:set", namespace + ":pks:list"
        self.zset_key = namespace + ":pks:zset"
        connection.sadd(self.set_key, *rng.sample(self.pks, 70))
        connection.rpush(self.list_key, *rng.sample(self.pks, 60))
        # scores with ties, negative, large; some pks absent
        scores = [0, 1, 1, 2.5, -3, -3, 7, 1e10, 100, 42]
        connection.zadd(self.zset_key, {pk: rng.choice(scores) for pk in rng.sample(self.pks, 90)})
        self.board.ranks.zadd({pk: rng.choice(scores) for pk in rng.sample(self.pks, 50)})
        self.board.members.sadd(*rng.sample(self.pks, 40))
        self.board.queue.rpush(*rng.sample(self.pks, 40))

    def score_of(self, key):
        """Return the score keys' text of each pk in the sorted set ``key`` (absent: none)."""
        return {
            member: str(float(score))
            for member, score in self.database.connection.zrange(key, 0, -1, withscores=True)
        }

    def intersect_args(self):
        """Return ``(sharded argument, 1-shard argument)`` pairs for one random ``intersect``."""
        rng = self.rng
        pairs = []
        for _ in range(rng.choice([1, 1, 2])):
            choice = rng.randrange(9)
            if choice == 0:
                pks = rng.sample(self.pks, rng.randint(1, 40))
                value = rng.choice([list, set, tuple])(int(pk) if rng.random() < 0.3 else pk for pk in pks)
                pairs.append((value, value))
            elif choice == 1:
                pairs.append((self.set_key, self.set_key))
            elif choice == 2:
                pairs.append((self.list_key, self.list_key))
            elif choice == 3:
                pairs.append((self.board.members, self.board.members))
            elif choice == 4:
                pairs.append((self.board.queue, self.board.queue))
            elif choice == 5:  # sorted sets: the collection then iterates by score
                pairs.append((self.zset_key, self.zset_key))
            elif choice == 6:
                pairs.append((self.board.ranks, self.board.ranks))
            else:  # a collection of the model: its pks for the 1-shard model
                filters = _random_filters(rng)
                filters.pop("pk", None)
                pks = list(self.single.collection(**filters))
                if not pks:
                    continue
                pairs.append((self.sharded.collection(**filters), pks))
        return pairs


def _random_sort(rng, data):
    """Return ``(sort() arguments, the zset key of a score sort or None)``."""
    choice = rng.random()
    if choice < 0.1:
        return None, None
    if choice < 0.55:
        which = rng.random()
        key = data.zset_key if which < 0.5 else data.board.ranks.key
        by_score = data.zset_key if which < 0.3 else data.board.ranks if which >= 0.5 else key
        order = {"by_score": by_score}
        if rng.random() < 0.3:
            order["desc"] = True
        if rng.random() < 0.25:
            order["alpha"] = True
        return order, key
    if choice < 0.7:
        return rng.choice([{}, {"by": "pk"}, {"by": "-pk"}, {"alpha": True}]), None
    field = rng.choice(["score", "rank", "note", "label"])
    order = {"by": ("-" if rng.random() < 0.3 else "") + field}
    if field in ("note", "label"):
        order["alpha"] = True
    return order, None


def _random_result_type(rng, scored):
    names = ["pk", "kind", "score", "label", "rank", "note"] + ([SORTED_SCORE] * 2 if scored else [])
    choice = rng.randrange(5)
    if choice == 0:
        return None, (), {}
    if choice == 1:
        return "instances", (), {"lazy": rng.random() < 0.5}
    if choice == 2:
        return "values", tuple(dict.fromkeys(rng.sample(names, rng.randint(1, 3)))), {}
    if choice == 3:
        return "values_list", tuple(dict.fromkeys(rng.sample(names, rng.randint(1, 3)))), {}
    return "values_list", (rng.choice(names),), {"flat": True}


# ---------------------------------------------------------------------- the random comparison


@pytest.mark.slow
def test_randomized_extended_equivalence_with_one_shard(database, namespace):
    """intersect / by_score / store with filters, sorts, result types and slices: 16 shards give
    what 1 shard gives (ALPHA ties inside the windows of a single server compared as runs)."""
    data = _Data(database, namespace, 20261207)
    rng = data.rng
    outcomes = set()
    for round_number in range(110):
        filters = _random_filters(rng)
        pairs = data.intersect_args() if rng.random() < 0.7 else []
        order, zset = _random_sort(rng, data)
        method, args, kwargs = _random_result_type(rng, zset is not None)
        stored = rng.random() < 0.25
        if stored and rng.random() < 0.4:  # stored, then sorted again or not
            final_order = rng.choice([None, order])
        else:
            final_order = order
        # ALPHA ties inside windows: no defined order on a single server (compared as runs)
        ties = (
            bool(final_order and final_order.get("alpha"))
            and not database.is_cluster
            and ("by_score" in final_order or final_order.get("by", "pk").lstrip("-") != "pk")
        )
        # a sorted set intersected: SORT ... ALPHA by a field on a single server reads the result
        # in the order of its hash table, so equal values have no defined order, even unsliced
        by_zset = any(not isinstance(b, (list, set, tuple)) and _is_zset(database, b) for _, b in pairs)
        zset_ties = ties and by_zset and "by_score" not in final_order and "by_score" not in (order or {})
        if ties and method in ("values", "values_list"):
            args, kwargs = ("pk",) + tuple(name for name in args if name != "pk"), {}
        context = "round %d filters %r intersect %r sort %r %s%r%r stored %r" % (
            round_number, filters, [b for _, b in pairs], order, method, args, kwargs, stored,
        )  # fmt: skip
        collections = [data.sharded.collection(**filters), data.single.collection(**filters)]
        assert isinstance(collections[0], ShardedExtendedCollection), context
        if pairs:
            collections = [
                collections[0].intersect(*[a for a, _ in pairs]),
                collections[1].intersect(*[b for _, b in pairs]),
            ]
        if stored:  # stored in the order of the collection, then filtered again or not
            before = [collection.sort(**order) if order else collection for collection in collections]
            collections = [collection.store(ttl=rng.choice([None, 60])) for collection in before]
            lists = [database.connection.lrange(c.stored_key, 0, -1) for c in collections]
            if zset_ties:  # the lists' ties have no defined order: so has what is read from them
                value_of = _value_of(data, order, None, False)
                assert _tie_view(lists[0], value_of, whole=True) == _tie_view(lists[1], value_of, whole=True)
                continue
            assert lists[0] == lists[1], context
            if rng.random() < 0.4:
                more = _random_filters(rng)
                collections = [collection(**more) for collection in collections]
                context += " then %r" % more
            order = final_order
            if zset is not None and (order is None or "by_score" not in order):
                zset = None
        if order is not None:
            collections = [collection.sort(**order) for collection in collections]
        context += " then sorted %r" % (order,)
        if method is not None:
            collections = [getattr(collection, method)(*args, **kwargs) for collection in collections]
        size = len(collections[1])
        assert len(collections[0]) == size, context
        plain_stored = (
            stored
            and not collections[1]._lazy_collection["sets"]
            and len(collections[1]._lazy_collection["intersects"]) == 1
            and not collections[1]._lazy_collection["pks"]
        )
        unordered = order is None and not (stored and plain_stored) and not by_zset
        full = [_outcome(lambda c=c: [_pk(x) for x in c]) for c in collections]
        if unordered and (method in (None, "instances") or stored):  # SMEMBERS / nosort: set order
            full = [(status, sorted(value, key=repr) if status == "ok" else value) for status, value in full]
        if zset_ties:
            value_of = _value_of(data, order, None, False)
            full = [
                (status, _tie_view(value, value_of, whole=True) if status == "ok" else value)
                for status, value in full
            ]
        assert full[0] == full[1], context
        outcomes.add(full[1][0] if full[1][0] == "error" else "ok" if size > 1 else "small")
        if unordered and stored:  # a filtered stored collection: set order (1 shard), list order
            continue
        for _ in range(4):
            collections = [collection.clone() for collection in collections]  # asked to Redis again
            if rng.random() < 0.75:
                the_slice = _random_slice(rng, size)
                window = _is_window(the_slice)
                view = _view(data, order, zset, window, ties, the_slice.step in (None, 1, -1))
                results = [_outcome(lambda c=c: view([_pk(x) for x in c[the_slice]])) for c in collections]
                assert results[0] == results[1], "%s slice %r" % (context, the_slice)
            else:
                index = rng.randint(-size - 2, size + 2)
                view = _view(data, order, zset, True, ties, True)
                results = [_outcome(lambda c=c: view([_pk(c[index])])) for c in collections]
                assert results[0] == results[1], "%s index %r" % (context, index)
    assert outcomes == {"ok", "small"}


def _is_zset(database, argument):
    """Return whether the ``intersect`` argument is a sorted set (a key or a bound field)."""
    if isinstance(argument, fields.SortedSetField):
        return True
    return isinstance(argument, str) and database.connection.type(argument) in ("zset", b"zset")


def _is_window(the_slice):
    return CollectionManager._optimize_slice(the_slice, True)[0]


def _value_of(data, order, zset, window):
    """Return the sort value of a pk (score keys' text, or a field) for the tie view."""
    if zset is not None:
        scores = data.score_of(zset)
        absent = None if window else "-inf"
        return lambda pk: scores.get(pk, absent)
    field = order["by"].lstrip("-")
    return lambda pk: getattr(data.single(pk), field).proxy_get()


def _view(data, order, zset, window, ties, members):
    if not ties:
        return lambda entries: entries
    value_of = _value_of(data, order, zset, window)
    return lambda entries: _tie_view(entries, value_of, members)


# ---------------------------------------------------------------------- focused checks


def test_intersect(database, namespace):
    """intersect() with every kind of argument, combined with filters, sorts, values and slices."""
    sharded = define(database, namespace + "s", 8)
    single = define(database, namespace + "u", 1)
    board = define_board(database, namespace + "b")(members=["2", "3", "5", "40"], queue=["5", "3", "9"])
    for number in range(1, 13):
        for Model in (sharded, single):
            Model(kind="ab"[number % 2], rank=str(number % 4), note="n%d" % number)
    database.connection.sadd(namespace + ":set", "1", "2", "3", "4", "99")
    database.connection.rpush(namespace + ":list", "4", "2", "6")
    for Model in (sharded, single):
        collection = Model.collection()
        assert sorted(collection.intersect([1, "2", 3, 99])) == ["1", "2", "3"]
        assert list(collection.intersect({7, 8}, (8, 9)).sort()) == ["8"]
        assert list(collection(kind="a").intersect(list(range(1, 9))).sort(by="-pk")) == ["8", "6", "4", "2"]
        assert list(collection.intersect(namespace + ":set").sort()) == ["1", "2", "3", "4"]
        assert list(collection.intersect(namespace + ":list").sort()) == ["2", "4", "6"]
        assert list(collection.intersect(namespace + ":missing")) == []
        assert list(collection.intersect(board.members).sort()) == ["2", "3", "5"]
        assert list(collection.intersect(board.queue).sort(by="rank")) == ["5", "9", "3"]
        values = collection.intersect([3, 4, 5, 6]).sort(by="rank").values_list("pk", "note")
        assert list(values) == [("4", "n4"), ("5", "n5"), ("6", "n6"), ("3", "n3")]
        assert values[1:3] == [("5", "n5"), ("6", "n6")] and values[-1] == ("3", "n3")
        assert len(collection.intersect([1, 2, 50])) == 2
        assert list(collection(pk=2).intersect([2, 3])) == ["2"]
        assert list(collection(pk=2).intersect([3])) == []
        # a key is read at each evaluation (the results of an iteration are cached)
        read_twice = collection.intersect(namespace + ":list").sort()
        assert read_twice[0:5] == ["2", "4", "6"]
        database.connection.rpush(namespace + ":list", "1")
        assert read_twice[0:5] == ["1", "2", "4", "6"] and list(read_twice) == ["1", "2", "4", "6"]
        database.connection.lrem(namespace + ":list", 0, "1")
        assert read_twice[0:5] == ["1", "2", "4", "6"]  # cached
        with pytest.raises(ValueError, match="empty list of pks"):
            list(collection.intersect([]))
        with pytest.raises(ValueError, match="not a valid type"):
            collection.intersect(3)
        with pytest.raises(ValueError, match="must be bound"):
            collection.intersect(Model.get_class_field("tags"))
    # a collection of the same model: its pks (shard by shard)
    both = sharded.collection(kind="a").intersect(sharded.collection(kind="b"))
    assert list(both) == [] and list(both.intersect([1])) == []
    odd = sharded.collection(kind="b")
    assert list(sharded.collection().intersect(odd, [1, 2, 3, 4]).sort()) == ["1", "3"]
    assert list(sharded.collection().intersect(sharded.collection(kind="z"))) == []
    assert list(sharded.collection().intersect(odd.intersect([3, 4, 5])).sort(by="-pk")) == ["5", "3"]
    assert list(sharded.collection(kind="b").intersect(odd)) == ["1", "3", "5", "7", "9", "11"]


def test_intersect_with_sorted_sets(database, namespace):
    """intersect() with sorted sets: the collection iterates by the sum of the pks' scores (ties
    by the pks' bytes) until sorted, windows and indexes cut from that order, as on 1 shard."""
    sharded = define(database, namespace + "s", 8)
    single = define(database, namespace + "u", 1)
    board = define_board(database, namespace + "b")(ranks={"3": 5, "1": -2, "7": 5, "12": 0, "40": 1})
    for number in range(1, 13):
        for Model in (sharded, single):
            Model(kind="ab"[number % 2], rank=str(number % 4), note="n%d" % number)
    connection = database.connection
    connection.zadd(namespace + ":zset", {"1": 1, "3": 1, "5": 2, "7": -5, "12": 1, "9": float("inf")})
    results = []
    for Model in (sharded, single):
        collection = Model.collection()
        ranked = collection.intersect(board.ranks)
        both = collection.intersect(namespace + ":zset", board.ranks)
        results.append(
            [
                list(ranked),  # by score: 1 (-2), 12 (0), 3 and 7 (5, ties by bytes)
                list(both),  # summed: 7 (0), 1 (-1), 12 (1), 3 (6)
                list(collection(kind="b").intersect(board.ranks)),
                list(ranked.sort(by="nosort")),
                list(ranked.sort()),  # sorted: the zset order no more
                list(ranked.values_list("pk", "note")),
                list(ranked.values("note")),
                list(ranked.sort(by="nosort").values_list("pk", "note")),
                [ranked[0], ranked[-1], ranked[1:3], ranked[-2:], ranked[::2]],
                [both[0:2], both[-3:], both[2]],
                len(both),
                list(collection.intersect(namespace + ":zset", [1, 3, 9, 12])),
                list(ranked.instances()),
                list(ranked.store(ttl=None)),
            ]
        )
    assert results[0][:-2] == results[1][:-2]
    assert [o.pk.get() for o in results[0][-2]] == [o.pk.get() for o in results[1][-2]]
    assert results[0][-1] == results[1][-1]
    assert results[1][0] == ["1", "12", "3", "7"] and results[1][1] == ["1", "7", "12", "3"] or results[1][1]


def test_scored_equal_index_filters(database, namespace):
    """A ``ScoredEqualIndex`` filter: every shard's sorted set read with its scores, the
    collection ordered by them (summed with an intersected sorted set's), as on 1 shard."""
    from limpyd.contrib.indexes import ScoredEqualIndex

    queue = lambda: fields.StringField(  # noqa: E731
        indexable=True, indexes=[ScoredEqualIndex.configure(score_field="rank")]
    )
    sharded = define(database, namespace + "s", 8, queue=queue())
    single = define(database, namespace + "u", 1, queue=queue())
    board = define_board(database, namespace + "b")(ranks={"3": 5, "1": -2, "7": 5, "12": 0, "40": 1})
    ranks = ["3", "-1", "0", "1.5", "1.5", "10", "2", None]
    for number in range(1, 25):
        for Model in (sharded, single):
            Model(
                kind="ab"[number % 2],
                queue="q%d" % (number % 3),
                rank=ranks[number % len(ranks)],
                note="n%d" % number,
            )
    results = []
    for Model in (sharded, single):
        collection = Model.collection()
        q1 = collection(queue="q1")
        results.append(
            [
                list(q1),  # by rank (ties by the pks' bytes); no rank: not in the sorted set
                len(q1),
                list(collection(queue="q2", kind="a")),
                list(collection(queue__in=["q0", "q2"])),
                [q1[0], q1[-1], q1[1:4], q1[-3:]],
                list(q1.sort()),
                list(q1.sort(by="note", alpha=True)),
                list(q1.values_list("pk", "rank")),
                list(collection(queue="q0").intersect(board.ranks)),
                list(collection(queue__in=[])),
                list(collection(queue="q1").sort(by_score=board.ranks)),
            ]
        )
    assert results[0] == results[1]
    assert results[1][0] and results[1][3]


def test_sort_by_score(database, namespace):
    """sort(by_score=...): a full evaluation scores the absent pks -inf, a window none (as 1 shard)."""
    sharded = define(database, namespace + "s", 8)
    single = define(database, namespace + "u", 1)
    board = define_board(database, namespace + "b")(ranks={"2": 10, "4": 20, "3": 30, "5": 40, "1": 50})
    for number in range(1, 7):
        for Model in (sharded, single):
            Model(kind="xy"[number % 2], note="p%d" % number)
    key = board.ranks.key
    for Model in (sharded, single):
        collection = Model.collection()
        assert list(collection.sort(by_score=board.ranks)) == ["6", "2", "4", "3", "5", "1"]
        assert list(collection.sort(by_score=key, desc=True)) == ["1", "5", "3", "4", "2", "6"]
        assert list(collection(kind="x").sort(by_score=key)) == ["6", "2", "4"]
        assert list(collection.intersect([1, 4, 6]).sort(by_score=key)) == ["6", "4", "1"]
        # a window: 6 has no score (0): after the negative ones
        board.ranks.zadd({"2": -5})
        assert list(collection.sort(by_score=key)) == ["6", "2", "4", "3", "5", "1"]
        assert list(collection.sort(by_score=key)[0:3]) == ["2", "6", "4"]
        assert collection.sort(by_score=key)[0] == "2" and collection.sort(by_score=key)[-1] == "1"
        assert list(collection.sort(by_score=key)[-3:5]) == ["3", "5"]  # not a window: whole
        board.ranks.zadd({"2": 10})
        assert list(collection.sort(by_score=key).values("note", SORTED_SCORE)) == [
            {"note": "p6", SORTED_SCORE: "-inf"},
            {"note": "p2", SORTED_SCORE: "10.0"},
            {"note": "p4", SORTED_SCORE: "20.0"},
            {"note": "p3", SORTED_SCORE: "30.0"},
            {"note": "p5", SORTED_SCORE: "40.0"},
            {"note": "p1", SORTED_SCORE: "50.0"},
        ]
        assert collection.sort(by_score=key).values_list(SORTED_SCORE, "pk")[:2] == [
            (None, "6"),
            ("10.0", "2"),
        ]
        assert collection.sort(by_score=key).values_list("pk", flat=True)[-2:] == ["5", "1"]
        assert [i.pk.get() for i in collection.sort(by_score=key, desc=True).instances()[:2]] == ["1", "5"]
        assert list(collection(pk=3).sort(by_score=key).values(SORTED_SCORE)) == [{SORTED_SCORE: "30.0"}]
        assert len(collection.sort(by_score=key)) == 6
        # any later sort replaces the score sort
        assert list(collection.sort(by_score=key).sort(by="note", alpha=True, desc=True))[0] == "6"
        with pytest.raises(ValueError, match="by_score"):
            collection.sort(by="note", by_score=key)
        with pytest.raises(TypeError, match="Unexpected"):
            collection.sort(by_score=key, start=1)
        with pytest.raises(ValueError, match="SortedSetFied"):
            collection.sort(by_score=Model.get_class_field("tags"))


def test_store(database, namespace):
    """store(): the pks in order in a list (ttl), a collection on it; from_stored, stored_key_exists."""
    sharded = define(database, namespace + "s", 8)
    single = define(database, namespace + "u", 1)
    for number in range(1, 11):
        for Model in (sharded, single):
            Model(kind="ab"[number % 2], rank=str(10 - number), note="n%d" % number)
    connection = database.connection
    for Model in (sharded, single):
        stored = Model.collection(kind="a").sort(by="rank").store()
        assert connection.lrange(stored.stored_key, 0, -1) == ["10", "8", "6", "4", "2"]
        assert 0 < connection.ttl(stored.stored_key) <= 60 and stored.stored_key_exists()
        assert list(stored) == ["10", "8", "6", "4", "2"] and len(stored) == 5
        assert stored[1:3] == ["8", "6"] and stored[-1] == "2"
        assert list(stored.sort()) == ["2", "4", "6", "8", "10"]
        assert sorted(stored.intersect([2, 4, 5])) == ["2", "4"]
        assert sorted(stored(kind="a").intersect([2, 3])) == ["2"] and list(stored(kind="b")) == []
        assert list(stored.values_list("note", flat=True)) == ["n10", "n8", "n6", "n4", "n2"]
        key = Model._name + ":kept"  # the 1-shard model on a cluster stores in its own slot only
        again = Model.collection().sort(by="-pk").values("note").store(key, ttl=None)
        assert connection.lrange(key, 0, -1) == [str(n) for n in range(10, 0, -1)]
        assert connection.ttl(key) == -1 and again.stored_key == key
        assert again[0] == {"note": "n10"}  # the values mode is kept
        assert list(Model.collection().from_stored(key)) == [str(n) for n in range(10, 0, -1)]
        assert list(again.store(ttl=None).primary_keys().sort(by="note", alpha=True))[:2] == ["1", "10"]
        empty = Model.collection(kind="z").store(key)
        assert list(empty) == [] and len(empty) == 0 and not connection.exists(key)
        gone = Model.collection().store(ttl=0)
        with pytest.raises(DoesNotExist, match="does not exist anymore"):
            list(gone)
        with pytest.raises(TypeError, match="non-empty str"):
            Model.collection().store(key="")
        with pytest.raises(ValueError, match="ttl"):
            Model.collection().store(ttl=-1)
        with pytest.raises(ValueError, match="already based"):
            stored.from_stored(key)
        with pytest.raises(ValueError, match="not based on a stored one"):
            Model.collection().stored_key_exists()
        by_score = Model.collection().sort(by_score=namespace + ":missing", desc=True).store()
        # every score -inf: ties by the bytes of the pks, the whole reversed by desc
        assert list(by_score) == ["9", "8", "7", "6", "5", "4", "3", "2", "10", "1"]
        assert list(by_score) == connection.lrange(by_score.stored_key, 0, -1)


def test_refused(database, namespace):
    """What stays unsupported raises the sharding error naming it and the fix; other managers are refused."""
    sharded = define(database, namespace + "s", 4)
    sharded(kind="a")
    database.connection.zadd(namespace + ":zset", {"1": 1})
    checks = [
        (lambda: sharded.collection().sort(by="kind", get="#"), "sort(get=...)"),
    ]
    for function, feature in checks:
        with pytest.raises(ImplementationError) as excinfo:
            function()
        message = str(excinfo.value)
        assert feature in message and "Event" in message and "docs/sharding.rst" in message, message
    # an index of the user's returning sorted sets: refused (its scores cannot be read per shard)
    from limpyd.contrib.indexes import ScoredEqualIndex

    class MyScored(ScoredEqualIndex):
        def get_filtered_keys(self, suffix, *args, **kwargs):
            return super().get_filtered_keys(suffix, *args, **kwargs)

    scored = define(
        database,
        namespace + "q",
        4,
        name="Task",
        queue=fields.StringField(indexable=True, indexes=[MyScored.configure(score_field="rank")]),
    )
    scored(queue="q", rank="1")
    with pytest.raises(ImplementationError) as excinfo:
        scored.collection(queue="q")
    assert "MyScored of queue" in str(excinfo.value) and "Task" in str(excinfo.value)
    assert list(scored.collection(kind__in=["a", "b"])) == []
    with pytest.raises(ValueError, match="same model"):
        sharded.collection().intersect(define(database, namespace + "o", 4, name="Other").collection())

    class Custom(CollectionManager):
        pass

    with pytest.raises(ImplementationError, match="collection manager Custom"):
        define(database, namespace + "c", 4, name="Refused", manager=Custom)
    # a subclass of the extended manager is accepted
    Subclass = type("Subclass", (ExtendedCollectionManager,), {})
    assert isinstance(
        define(database, namespace + "x", 4, name="Sub", manager=Subclass).collection(),
        ShardedExtendedCollection,
    )
    # manager= naming the model's own manager: the same collection; another one: refused
    assert isinstance(
        sharded.collection(manager=ExtendedCollectionManager, kind="a"), ShardedExtendedCollection
    )
    assert list(sharded.collection(manager=ExtendedCollectionManager).intersect([1, 2])) == ["1"]
    with pytest.raises(ImplementationError, match="collection manager Subclass"):
        sharded.collection(manager=Subclass)
    # the core manager keeps the plain sharded collection
    plain = define(database, namespace + "p", 4, name="Plain", manager=CollectionManager)
    assert type(plain.collection()) is ShardedCollection
    with pytest.raises(ImplementationError, match="intersect"):
        plain.collection().intersect([1])


def test_intersections_read_every_shard_together(database, namespace, monkeypatch):
    """With intersections, each shard's steps (its filters' sets and a temporary set of its
    allowed pks, intersected, read, deleted) go out together: one write per server; a shard with
    no pk allowed is not asked."""
    from test_sharding_reads import WriteCounter

    sharded = define(database, namespace + "s", 16)
    single = define(database, namespace + "u", 1)
    board = define_board(database, namespace + "b")(ranks={"3": 5, "1": -2, "7": 5, "12": 0})
    for number in range(1, 41):
        for Model in (sharded, single):
            Model(
                kind="ab"[number % 2], score=str(number % 7), tags=["t%d" % (number % 3)], note="n%d" % number
            )
    queries = [
        lambda M: list(M.collection(kind="a").intersect(list(range(1, 30))).sort()),
        lambda M: len(M.collection(kind="b", tags="t1").intersect([1, 3, 5, 7, 9, 11, 13, 99])),
        lambda M: list(M.collection().intersect([2, 4, 6, 8, 40]).sort(by="-score")[1:3]),
        lambda M: list(M.collection(score__gte=3).intersect(list(range(10, 40))).values_list("pk", "note")),
        lambda M: list(M.collection(kind="b").intersect(board.ranks)),  # by score
        lambda M: list(M.collection(kind__in=["a", "b"]).intersect([5, 6, 7]).sort(by="score", alpha=True)),
    ]
    servers = len(database.connection.get_primaries()) if database.is_cluster else 1
    for position, query in enumerate(queries):
        expected = query(single)
        counter = WriteCounter(monkeypatch)
        query(sharded)  # the filter scripts loaded
        with counter:
            got = query(sharded)
        assert got == expected, position
        reads = 0 if position != 4 else 1  # a sorted set given: read once (TYPE, ZRANGE) on its node
        writes = counter.per_server
        assert max(writes.values()) <= 1 + 2 * reads and sum(writes.values()) <= servers + 2 * reads, (
            position,
            dict(writes),
        )
    from test_sharding import full_dump

    # every temporary key of the sharded model deleted (the 1-shard model keeps the final key of
    # its len() for the iteration that may follow, 300 s)
    assert not [key for key in full_dump(database) if "__collection__" in key and "event@" in key]
