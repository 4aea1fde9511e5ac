"""Tests of ``limpyd.contrib.collection``: building, filters, intersections, zset order, score sorting.

Values and stored collections are in ``test_contrib_collection_store.py``, exhaustive slicing in
``test_contrib_collection_slicing.py`` (docs/contrib.rst, docs/collections.rst, docs/extending.rst).
"""

from __future__ import annotations

import re

import pytest
import redis
from _collection_helpers import temporary_keys
from _contrib_collection_helpers import command_log, shop, verbs, warm_list_script
from _redis_dump import dump, raw_client

import limpyd._batch as limpyd_batch
import limpyd.collection as base_collection
import limpyd.contrib.collection as contrib_collection
from limpyd.collection import CollectionManager, CollectionResults, ParsedFilter
from limpyd.contrib.collection import (
    DEFAULT_STORE_TTL,
    SORTED_SCORE,
    ExtendedCollectionManager,
    RawFilter,
    _StoredCollection,
)
from limpyd.contrib.database import PipelineDatabase
from limpyd.exceptions import ImplementationError
from limpyd.fields import HashField, PKField, SortedSetField, StringField
from limpyd.model import RedisModel

# ---------------------------------------------------------------------- names and state


def test_module_names():
    assert SORTED_SCORE == "sorted_score"
    assert DEFAULT_STORE_TTL == 60
    assert RawFilter._fields == ("name", "value")
    stored = _StoredCollection("conn", "key")
    assert (stored.connection, stored.key) == ("conn", "key")
    assert issubclass(ExtendedCollectionManager, CollectionManager)
    assert ExtendedCollectionManager._accepted_key_types == {"set", "zset", "list"}
    assert CollectionManager._accepted_key_types == {"set"}  # the base is untouched
    lua = ExtendedCollectionManager.scripts["list_to_set"]["lua"]
    assert "DEL" in lua and "LRANGE" in lua and "SADD" in lua
    assert set(contrib_collection.__all__) >= {
        "ExtendedCollectionManager",
        "SORTED_SCORE",
        "DEFAULT_STORE_TTL",
        "RawFilter",
    }


def test_initial_state(database, namespace):
    Product = shop(database, namespace)
    collection = Product.collection()
    assert type(collection) is ExtendedCollectionManager
    assert collection._lazy_collection == {"sets": [], "pks": set(), "intersects": set()}
    assert collection._has_sortedsets is False
    assert collection._sort_by_sortedset is None
    assert collection._store is False
    assert collection.stored_key is False
    assert collection._stored_len is None
    assert collection._values is None


def test_clone_copies_the_extended_state(database, namespace):
    Product = shop(database, namespace)
    board = Product(6)
    collection = Product.collection(cat="x").intersect(board.ranks).sort(by_score=board.ranks, desc=True)
    collection = collection.values("name", SORTED_SCORE)
    clone = collection.clone()
    assert clone._lazy_collection == collection._lazy_collection
    assert clone._lazy_collection["intersects"] is not collection._lazy_collection["intersects"]
    assert clone._has_sortedsets is True
    assert clone._sort_by_sortedset == collection._sort_by_sortedset
    assert clone._sort_by_sortedset is not collection._sort_by_sortedset  # copied, not shared
    assert clone._values == collection._values
    assert clone._values is not collection._values
    assert clone._values["fields"]["names"] is not collection._values["fields"]["names"]
    clone._values["fields"]["names"].append("oops")
    assert collection._values["fields"]["names"] == ["name", SORTED_SCORE]
    stored = Product.collection(cat="x").store()
    again = stored.clone()
    assert (again.stored_key, again._stored_len) == (stored.stored_key, 3)


def test_building_sends_no_command(database, namespace, count_commands):
    Product = shop(database, namespace)
    board = Product(6)
    with count_commands(0):
        collection = Product.collection(cat="x")
        collection.filter(price=20).intersect([1, 2], board.ranks, board.tags, board.history, "some:key")
        collection.sort(by_score=board.ranks, desc=True).values("name").values_list("name", flat=True)
        collection.sort(by=Product.get_field("name"), alpha=True).instances(lazy=True).primary_keys()
        Product.collection(pk=board, name=board.name)
    assert isinstance(collection, ExtendedCollectionManager)


def test_every_method_returns_a_new_collection(database, namespace):
    Product = shop(database, namespace)
    board = Product(6)
    base = Product.collection(cat="x")
    derived = [
        base.filter(price=20),
        base.intersect([2]),
        base.sort(by_score=board.ranks),
        base.values(),
        base.values_list(),
        base.instances(),
        base.primary_keys(),
        base(price=20),
    ]
    for collection in derived:
        assert collection is not base
    assert base._lazy_collection == {"sets": base._lazy_collection["sets"], "pks": set(), "intersects": set()}
    assert len(base._lazy_collection["sets"]) == 1
    assert (base._sort_by_sortedset, base._values, base._instances) == (None, None, False)
    assert set(base) == {"2", "4", "6"}


class _OnlyCheap:
    """A downstream-style mixin placed before the manager (docs/extending.rst)."""

    marker = "cheap"


class _CheapCollection(_OnlyCheap, ExtendedCollectionManager):
    def __init__(self, model):
        super().__init__(model)
        self._add_filters(cat="x")


def test_subclass_with_mixin_survives_every_method(database, namespace):
    Product = shop(database, namespace)
    board = Product(6)
    collection = Product.collection(manager=_CheapCollection)
    assert set(collection) == {"2", "4", "6"}
    derived = [
        collection(price=20),
        collection.filter(price=20),
        collection.sort(by_score=board.ranks),
        collection.intersect([2, 4]),
        collection.instances(),
        collection.primary_keys(),
        collection.values("name"),
        collection.values_list("name"),
        collection.sort(),
        collection.clone(),
    ]
    for item in derived:
        assert type(item) is _CheapCollection
    assert list(collection.intersect([2, 4, 5]).sort()) == ["2", "4"]
    stored = collection.sort(by="-pk").store()
    assert type(stored) is _CheapCollection
    # a new collection of the class: its own filter applies too, so the list becomes a set
    assert stored._lazy_collection["sets"] and set(stored) == {"6", "4", "2"}
    assert list(ExtendedCollectionManager(Product).from_stored(stored.stored_key)) == ["6", "4", "2"]


# ---------------------------------------------------------------------- base behaviour kept


@pytest.mark.parametrize(
    "operation",
    [
        "list(M.collection())",
        "set(M.collection(cat='x'))",
        "list(M.collection(cat='x', price=20))",
        "list(M.collection(cat='x').sort(by='-price'))",
        "len(M.collection(cat='x', price__in=[20, 40]))",
        "M.collection(cat='x').sort()[1:2]",
        "M.collection(cat='x').sort(by='price')[-1]",
        "list(M.collection(pk=2, cat='x'))",
        "list(M.collection(pk=2))",
        "len(M.collection(pk=2))",
        "list(M.collection(pk=1, pk__eq=2))",
        "list(M.collection(cat='x').instances())",
    ],
)
def test_same_commands_as_the_base_manager(database, namespace, redis_settings, operation):
    """Without the extended features, the extended manager sends exactly the base commands."""
    client = raw_client(redis_settings)
    logs, results = [], []
    for manager in (CollectionManager, ExtendedCollectionManager):
        M = shop(database, "%s%s" % (namespace, manager.__name__[0]), manager=manager)
        with command_log(client) as log:
            result = eval(operation)
        logs.append([entry.replace(M._name, "M") for entry in log])
        results.append(result if not isinstance(result, CollectionResults) else list(result))
    assert logs[0] == logs[1]
    if "instances" in operation:
        results = [[instance._pk for instance in result] for result in results]
    assert results[0] == results[1]


def test_len_then_retrieval_reuses_the_final_key(database, namespace, redis_settings, count_commands):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    collection = Product.collection(cat="x", price__in=[20, 40, 10])
    with count_commands(7):
        assert len(collection) == 2
    with command_log(client) as log:
        assert set(collection) == {"2", "4"}
    assert verbs(log) == ["EXPIRE", "SMEMBERS", "DEL"]
    assert temporary_keys(client) == []


# ---------------------------------------------------------------------- filter and filter values


def test_filter_is_the_same_as_calling(database, namespace, count_commands):
    Product = shop(database, namespace)
    assert set(Product.collection().filter(cat="x")) == {"2", "4", "6"}
    assert set(Product.collection(cat="x").filter(price=20)) == {"2"}
    assert list(Product.collection(cat="x").filter(cat="y")) == []  # AND-ed
    assert list(Product.collection(pk=1).filter(pk=1)) == ["1"]
    with count_commands(0):  # two different pks: empty, nothing sent
        assert list(Product.collection(pk=1).filter(pk=2)) == []
    assert list(Product.collection(pk=1).filter(cat="x")) == []
    collection = Product.collection(cat="x")
    assert len(collection) == 3
    assert len(collection.filter(price=20)) == 1  # C3: the cached length is dropped


def test_pk_in_is_not_supported(database, namespace):
    Product = shop(database, namespace)
    with pytest.raises(ImplementationError, match=r"^Field Product\.pk is not indexable .*intersect\(\)"):
        Product.collection(pk__in=[1, 2])


def _ref_model(db, ns):
    class Ref(RedisModel):
        database = db
        namespace = ns
        collection_manager = ExtendedCollectionManager
        id = PKField()
        label = StringField(indexable=True)
        owner = StringField(indexable=True)  # holds a pk of Ref
        alias = StringField()

    Ref(id="a", label="one", owner="b", alias="b")
    Ref(id="b", label="two", owner="a", alias="a")
    Ref(id="c", label="three", owner="a", alias="c")
    return Ref


def test_filter_values_that_are_objects(database, namespace, count_commands):
    Ref = _ref_model(database, namespace)
    a, b, c = Ref("a"), Ref("b"), Ref("c")
    collection = Ref.collection(owner=a)  # an instance: its pk
    [parsed] = collection._lazy_collection["sets"]
    assert isinstance(parsed, ParsedFilter) and parsed.value is a
    assert set(collection) == {"b", "c"}
    by_field = Ref.collection(owner=b.alias)  # a bound single-value field: its value, read at evaluation
    assert set(by_field) == {"b", "c"}
    b.alias.set("b")
    assert set(Ref.collection(owner=b.alias)) == {"a"}
    assert set(by_field.clone()) == {"a"}  # read when evaluated, not when filtered
    assert set(Ref.collection(owner=a.pk)) == {"b", "c"}  # the bound pk field
    assert set(Ref.collection(owner__in=[a, "b"])) == {"a", "b", "c"}
    # on the pk: RawFilter in the pks, resolved at evaluation
    for name in ("pk", "pk__eq", "id", "id__eq"):
        by_instance = Ref.collection(**{name: b})
        assert by_instance._lazy_collection["pks"] == {RawFilter(name, b)}
        assert list(by_instance) == ["b"]
    on_pk = Ref.collection(pk=b.alias)
    assert on_pk._lazy_collection["pks"] == {RawFilter("pk", b.alias)}
    with count_commands(2):  # GET of the alias, SISMEMBER of the pk
        assert list(on_pk) == ["b"]
    assert list(Ref.collection(pk=b, label="two")) == ["b"]
    assert list(Ref.collection(pk=b, label="one")) == []
    assert list(Ref.collection(pk=b).filter(pk=c)) == []
    assert list(Ref.collection(pk=b).filter(pk="b")) == ["b"]
    assert len(Ref.collection(pk=a)) == 1
    assert len(Ref.collection(pk=a, id=b)) == 0


def test_filter_values_that_are_bad_fields(database, namespace, count_commands):
    Ref = _ref_model(database, namespace)
    Product = shop(database, namespace + "p")
    board = Product(6)
    base = Ref.collection(label="one")
    message = (
        r"^If a field is used as a filter value, it must be a simple value field attached to an instance"
    )
    with count_commands(0):
        for value in (
            board.tags,
            board.ranks,
            Product.get_field("name"),
            Ref.get_field("alias"),
            Product.get_field("tags"),
        ):
            for key in ("owner", "pk", "owner__in"):
                with pytest.raises(ValueError, match=message) as info:
                    base(**{key: [value] if key.endswith("__in") else value})
                assert "Ref" in str(info.value) and repr(key) in str(info.value)
                with pytest.raises(ValueError, match=message):
                    base.filter(**{key: value})
    assert len(base._lazy_collection["sets"]) == 1 and base._lazy_collection["pks"] == set()
    assert list(base) == ["a"]


# ---------------------------------------------------------------------- intersect


def test_intersect_argument_kinds(database, namespace, redis_settings):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    board = Product(6)
    board.tags.sadd("2", "3", "9")
    board.history.rpush("3", "4", "3", "9")
    client.sadd("raw:set", "1", "2", "99")
    client.zadd("raw:zset", {"5": 1, "1": 2})
    client.rpush("raw:list", "6", "5")
    stored = Product.collection(cat="y").store()  # 1, 3, 5
    collection = Product.collection()
    assert set(collection.intersect([1, 2, 99])) == {"1", "2"}  # foreign pks dropped
    assert set(collection.intersect({"2", "3"})) == {"2", "3"}
    assert set(collection.intersect(("4",))) == {"4"}
    assert set(collection.intersect("raw:set")) == {"1", "2"}
    assert list(collection.intersect("raw:zset")) == ["5", "1"]
    assert set(collection.intersect("raw:list")) == {"5", "6"}
    assert list(collection.intersect("raw:missing")) == []
    assert set(collection.intersect(board.tags)) == {"2", "3"}
    assert list(collection.intersect(board.ranks)) == ["2", "4", "3", "5", "1"]
    assert set(collection.intersect(board.history)) == {"3", "4"}
    assert set(collection.intersect(_StoredCollection(None, stored.stored_key))) == {"1", "3", "5"}
    # all together, several calls, several arguments
    assert set(collection.intersect([2, 3, 4, 5]).intersect(board.ranks, stored.stored_key)) == {"3", "5"}
    assert set(collection.intersect(board.tags, board.history)) == {"3"}
    assert set(Product.collection(cat="y").intersect(board.ranks)) == {"1", "3", "5"}


def test_intersect_keeps_arguments_in_a_set(database, namespace):
    Product = shop(database, namespace)
    board = Product(6)
    collection = Product.collection().intersect([1, 2], (1, 2), board.ranks).intersect(board.ranks, [1, 2])
    intersects = collection._lazy_collection["intersects"]
    assert intersects == {(1, 2), board.ranks}  # lists become tuples, duplicates collapse
    assert collection._has_sortedsets is True  # at once for a bound sorted set field
    assert Product.collection().intersect("raw")._has_sortedsets is False  # a key: known at evaluation
    with_set = Product.collection().intersect({3, 2})
    assert [sorted(item) for item in with_set._lazy_collection["intersects"]] == [[2, 3]]


def test_intersect_drops_the_cached_length(database, namespace, count_commands):
    Product = shop(database, namespace)
    collection = Product.collection(cat="x")
    assert len(collection) == 3
    narrowed = collection.intersect([2])
    assert narrowed._len is None
    assert len(narrowed) == 1
    with count_commands(0):
        assert len(collection.sort()) == 3  # sort keeps it


def test_intersect_errors_at_call_time(database, namespace, count_commands):
    Product = shop(database, namespace)
    board = Product(6)
    collection = Product.collection()
    model = r"_contrib_collection_helpers\.shop\.<locals>\.Product"
    with count_commands(0):
        for field, name in (
            (Product.get_field("tags"), "SetField"),
            (Product.get_field("ranks"), "SortedSetField"),
            (Product.get_field("history"), "ListField"),
            (HashField(), "HashField"),
        ):
            with pytest.raises(
                ValueError,
                match=r'^%s passed to "intersect" must be bound \(collection of %s\): '
                r"pass the field of an instance" % (name, model),
            ):
                collection.intersect(field)
        for bad in ({}, {"a": 1}, 3, None, 2.5, b"key", board.name, Product, board):
            with pytest.raises(
                ValueError,
                match=r"^%s is not a valid type of argument that can be used as a set\. "
                r"Allowed: .*%s" % (re.escape(repr(bad)), model),
            ):
                collection.intersect(bad)
        with pytest.raises(
            TypeError,
            match=r"^The pks passed to intersect\(\) on a collection of %s must be "
            r"hashable" % model,
        ):
            collection.intersect([[1, 2]])
        with pytest.raises(ValueError):  # one bad argument: nothing is added
            collection.intersect([1], None)
    assert collection._lazy_collection["intersects"] == set()


def test_intersect_errors_at_evaluation(database, namespace, redis_settings, count_commands):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    board = Product(6)
    client.set("raw:string", "x")
    client.hset("raw:hash", "a", "1")
    collection = Product.collection(cat="x")
    # accepted by intersect(), refused when evaluated (upstream; kept)
    empty = collection.intersect([])
    ns = namespace

    class WithHash(RedisModel):
        database = Product.database
        namespace = ns + "h"
        collection_manager = ExtendedCollectionManager
        data = HashField()

    holder = WithHash()
    holder.data.hset("k", "v")
    before = dump(client)
    for bad, message in (
        (empty, r"^Invalid filter type: an empty list of pks cannot be intersected"),
        (WithHash.collection().intersect(holder.data), r"^Invalid filter type: a HashField"),
        (
            collection.intersect([2], "raw:string"),
            r"^Cannot use redis key raw:string of type string "
            r"for filtering \(collection of .*Product\)",
        ),
        (collection.intersect("raw:hash", board.ranks), r"^Cannot use redis key raw:hash of type hash"),
    ):
        with pytest.raises(ValueError, match=message):
            list(bad)
        with pytest.raises(ValueError, match=message):
            len(bad)
        with pytest.raises(ValueError, match=message):
            bad[0]
        assert dump(client) == before


def test_intersect_sequences(database, namespace, redis_settings, count_commands):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    warm_list_script(client)
    board = Product(6)
    board.history.rpush("3", "1")
    n = Product._name
    with command_log(client) as log:
        assert set(Product.collection().intersect([1, 2, 99])) == {"1", "2"}
    assert log == [
        "EXISTS %s:__collection__:tmp:<a>" % n,
        "SADD %s:__collection__:tmp:<a> 1 2 99" % n,
        "EXISTS %s:__collection__:final:<b>" % n,
        "SINTERSTORE %s:__collection__:final:<b> %s:__collection__:tmp:<a> %s:collection" % (n, n, n),
        "DEL %s:__collection__:tmp:<a>" % n,
        "SMEMBERS %s:__collection__:final:<b>" % n,
        "DEL %s:__collection__:final:<b>" % n,
    ]
    with command_log(client) as log:  # a filter: the model's collection is not added
        assert set(Product.collection(cat="x").intersect(board.tags.key)) == set()
    assert log == [
        "TYPE %s:6:tags" % n,
        "EXISTS %s:__collection__:final:<a>" % n,
        "SINTERSTORE %s:__collection__:final:<a> %s:6:tags %s:cat:x" % (n, n, n),
        "SMEMBERS %s:__collection__:final:<a>" % n,
        "DEL %s:__collection__:final:<a>" % n,
    ]
    with command_log(client) as log:
        assert list(Product.collection(cat="y").intersect(board.ranks)) == ["3", "5", "1"]
    assert log == [
        "EXISTS %s:__collection__:final:<a>" % n,
        "ZINTERSTORE %s:__collection__:final:<a> 2 %s:6:ranks %s:cat:y" % (n, n, n),
        "ZRANGE %s:__collection__:final:<a> 0 -1" % n,
        "DEL %s:__collection__:final:<a>" % n,
    ]
    with command_log(client) as log:
        assert set(Product.collection().intersect(board.history)) == {"1", "3"}
    assert log == [
        "EXISTS %s:__collection__:tmp:<a>" % n,
        "EVALSHA <sha> 2 %s:6:history %s:__collection__:tmp:<a>" % (n, n),
        "EXISTS %s:__collection__:final:<b>" % n,
        "SINTERSTORE %s:__collection__:final:<b> %s:__collection__:tmp:<a> %s:collection" % (n, n, n),
        "DEL %s:__collection__:tmp:<a>" % n,
        "SMEMBERS %s:__collection__:final:<b>" % n,
        "DEL %s:__collection__:final:<b>" % n,
    ]
    # Lua: DEL, LRANGE, one SADD per member of the list
    with count_commands(7 + 2 + 2):
        assert set(Product.collection().intersect(board.history)) == {"1", "3"}
    with command_log(client) as log:
        assert list(Product.collection(pk=3).intersect(board.ranks)) == ["3"]
    assert log == [
        "SISMEMBER %s:collection 3" % n,
        "EXISTS %s:__collection__:tmp:<a>" % n,
        "SADD %s:__collection__:tmp:<a> 3" % n,
        "EXISTS %s:__collection__:final:<b>" % n,
        "ZINTERSTORE %s:__collection__:final:<b> 3 %s:6:ranks %s:__collection__:tmp:<a> %s:collection"
        % (n, n, n, n),
        "DEL %s:__collection__:tmp:<a>" % n,
        "ZRANGE %s:__collection__:final:<b> 0 -1" % n,
        "DEL %s:__collection__:final:<b>" % n,
    ]
    assert temporary_keys(client) == []


def test_intersect_with_pk_filter(database, namespace):
    Product = shop(database, namespace)
    board = Product(6)
    assert list(Product.collection(pk=2).intersect([2, 3])) == ["2"]
    assert list(Product.collection(pk=2).intersect([3])) == []
    assert len(Product.collection(pk=2).intersect([3])) == 0
    assert len(Product.collection(pk=2).intersect([2])) == 1
    assert Product.collection(pk=2).intersect([3])[0:1] == CollectionResults([])
    with pytest.raises(IndexError):
        Product.collection(pk=2).intersect(board.tags)[0]
    assert list(Product.collection(pk=4).intersect(board.ranks).instances())[0]._pk == "4"


# ---------------------------------------------------------------------- sorted set order


def test_zset_order_iteration_and_len(database, namespace, redis_settings, count_commands):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    board = Product(6)
    client.zadd("bonus", {"1": -100, "3": 100})
    n = Product._name
    collection = Product.collection().intersect(board.ranks)
    assert list(collection) == ["2", "4", "3", "5", "1"]  # ascending score
    assert list(Product.collection().intersect(board.ranks, "bonus")) == ["1", "3"]  # summed: -50, 130
    assert list(Product.collection(cat="y").intersect(board.ranks)) == ["3", "5", "1"]  # sets count 1
    with command_log(client) as log:
        assert len(Product.collection().intersect(board.ranks)) == 5
    assert verbs(log) == ["EXISTS", "ZINTERSTORE", "ZCARD", "EXPIRE"]
    assert log[2] == "ZCARD %s:__collection__:final:<a>" % n
    counted = Product.collection().intersect(board.ranks.key)  # a key: its type is read when counting
    assert len(counted) == 5
    with command_log(client) as log:  # the kept final key is a sorted set: read in score order
        assert list(counted) == ["2", "4", "3", "5", "1"]
    assert log == [
        "EXPIRE %s:__collection__:final:<a> 300" % n,
        "ZRANGE %s:__collection__:final:<a> 0 -1" % n,
        "DEL %s:__collection__:final:<a>" % n,
    ]
    # sort() and values() go through SORT and follow its order
    assert list(collection.sort()) == ["1", "2", "3", "4", "5"]
    assert list(collection.sort(by="-pk")) == ["5", "4", "3", "2", "1"]
    assert list(collection.values_list("name", flat=True)) == ["p1", "p2", "p3", "p4", "p5"]
    assert list(collection.sort(by="-price").values_list("pk", flat=True)) == ["5", "4", "3", "2", "1"]
    with command_log(client) as log:
        assert list(collection.sort()) == ["1", "2", "3", "4", "5"]
    assert log[2] == "SORT %s:__collection__:final:<a>" % n
    # instances follow the same order
    assert [instance._pk for instance in collection.instances(lazy=True)] == ["2", "4", "3", "5", "1"]
    assert temporary_keys(client) == [
        key for key in temporary_keys(client) if ":final:" in key
    ]  # len() keeps one


def test_zset_order_windows(database, namespace, redis_settings, count_commands):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    board = Product(6)
    n = Product._name
    collection = Product.collection().intersect(board.ranks)
    with command_log(client) as log:
        assert list(collection[1:3]) == ["4", "3"]
    assert log[2] == "ZRANGE %s:__collection__:final:<a> 1 2" % n
    with command_log(client) as log:
        assert collection[-1] == "1"
    assert log[2] == "ZREVRANGE %s:__collection__:final:<a> 0 0" % n
    with command_log(client) as log:
        assert list(collection[-3:-1]) == ["3", "5"]
    assert log[2] == "ZREVRANGE %s:__collection__:final:<a> 1 2" % n
    with command_log(client) as log:
        assert list(collection[2:]) == ["3", "5", "1"]
    assert log[2] == "ZRANGE %s:__collection__:final:<a> 2 -1" % n
    with count_commands(4):
        assert collection[0] == "2"
    # a window never changes the collection (C1, C2)
    assert (collection._sort, collection._sort_limits, collection._sort_limits_reverse) == (None, None, False)
    assert list(collection) == ["2", "4", "3", "5", "1"]
    with count_commands(0):
        assert collection[-1] == "1" and list(collection[1:3]) == ["4", "3"]
    with pytest.raises(IndexError):
        collection[5]
    with pytest.raises(IndexError):
        Product.collection().intersect(board.ranks)[-6]
    assert temporary_keys(client) == []


def test_zset_order_with_a_scored_index(database, namespace):
    """A ``ScoredEqualIndex`` filter returns sorted sets: results come in score order (docs/contrib.rst)."""
    from limpyd.contrib.indexes import ScoredEqualIndex

    db, ns = database, namespace

    class Task(RedisModel):
        database = db
        namespace = ns
        collection_manager = ExtendedCollectionManager
        queue = StringField(indexable=True, indexes=[ScoredEqualIndex.configure(score_field="priority")])
        priority = StringField()
        kind = StringField(indexable=True)

    for queue, priority, kind in (("q", 5, "a"), ("q", 1, "b"), ("q", 3, "a"), ("r", 0, "a")):
        Task(queue=queue, priority=priority, kind=kind)
    assert list(Task.collection(queue="q")) == ["2", "3", "1"]
    assert list(Task.collection(queue="q", kind="a")) == ["3", "1"]
    assert Task.collection(queue="q")[-1] == "1"
    assert list(Task.collection(queue="q")[0:2]) == ["2", "3"]
    assert len(Task.collection(queue="q")) == 3
    assert list(Task.collection(queue="q").sort()) == ["1", "2", "3"]


# ---------------------------------------------------------------------- score sorting


def test_sort_by_score(database, namespace, redis_settings):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    board = Product(6)
    key = board.ranks.key
    collection = Product.collection()
    # 6 is absent from the sorted set: kept, first (score -inf)
    assert list(collection.sort(by_score=board.ranks)) == ["6", "2", "4", "3", "5", "1"]
    assert list(collection.sort(by_score=key)) == ["6", "2", "4", "3", "5", "1"]
    assert list(collection.sort(by_score=board.ranks, desc=True)) == ["1", "5", "3", "4", "2", "6"]
    assert list(Product.collection(cat="y").sort(by_score=board.ranks)) == ["3", "5", "1"]
    assert list(collection.intersect([1, 4, 6]).sort(by_score=board.ranks)) == ["6", "4", "1"]
    client.zadd(key, {"6": 9.5, "7": 0})  # 7 is not a Product: sorting does not add it
    assert list(collection.sort(by_score=board.ranks, alpha=True)) == [
        "2",
        "4",
        "3",
        "5",
        "1",
        "6",
    ]  # "9.5" last
    assert list(collection.sort(by_score=board.ranks)) == ["6", "2", "4", "3", "5", "1"]
    # any later sort replaces the score sort, and the other way round
    by_name = collection.sort(by_score=board.ranks).sort(by="name", alpha=True, desc=True)
    assert by_name._sort_by_sortedset is None
    assert list(by_name) == ["6", "5", "4", "3", "2", "1"]
    back = by_name.sort(by_score=board.ranks, desc=True)
    assert back._sort is None and back._sort_by_sortedset == {"by": key, "desc": True, "alpha": False}
    assert list(back) == ["1", "5", "3", "4", "2", "6"]
    assert list(collection.sort(by_score=board.ranks).sort(by="nosort").sort()) == [
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
    ]
    assert temporary_keys(client) == []


def test_sort_by_score_sequence(database, namespace, redis_settings, count_commands):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    board = Product(6)
    n = Product._name
    collection = Product.collection(cat="x").sort(by_score=board.ranks)
    with command_log(client) as log:
        assert list(collection) == ["6", "2", "4"]
    assert log == [
        "SMEMBERS %s:cat:x" % n,
        "ZSCORE %s:6:ranks 2" % n,
        "ZSCORE %s:6:ranks 4" % n,
        "ZSCORE %s:6:ranks 6" % n,
        "EXISTS %s:__collection__:tmp:<a>" % n,
        "SET %s:__collection__:tmp:<a> working..." % n,
        "MSET %s:__collection__:tmp:<a>:2 10.0 %s:__collection__:tmp:<a>:4 20.0 %s:__collection__:tmp:<a>:6 -inf"
        % (n, n, n),
        "SADD %s:__collection__:tmp:<a>_final_set 2 4 6" % n,
        "SORT %s:__collection__:tmp:<a>_final_set BY %s:__collection__:tmp:<a>:*" % (n, n),
        "DEL %s:__collection__:tmp:<a> %s:__collection__:tmp:<a>:2 %s:__collection__:tmp:<a>:4 "
        "%s:__collection__:tmp:<a>:6 %s:__collection__:tmp:<a>_final_set" % (n, n, n, n, n),
    ]
    with command_log(client) as log:
        assert list(Product.collection(cat="x").sort(by_score=board.ranks, desc=True, alpha=True)) == [
            "4",
            "2",
            "6",
        ]
    assert log[8] == "SORT %s:__collection__:tmp:<a>_final_set BY %s:__collection__:tmp:<a>:* DESC ALPHA" % (
        n,
        n,
    )
    with command_log(client) as log:  # with a final key: deleted right after the retrieval
        assert list(Product.collection(cat="x", price__in=[20, 40]).sort(by_score=board.ranks)) == ["2", "4"]
    assert verbs(log) == [
        "EXISTS",
        "SUNIONSTORE",
        "EXISTS",
        "SINTERSTORE",
        "DEL",
        "SMEMBERS",
        "DEL",
        "ZSCORE",
        "ZSCORE",
        "EXISTS",
        "SET",
        "MSET",
        "SADD",
        "SORT",
        "DEL",
    ]
    with count_commands(1):  # one result, no values: nothing to sort
        assert list(Product.collection(price=40).sort(by_score=board.ranks)) == ["4"]
    with count_commands(1):
        assert list(Product.collection(cat="z").sort(by_score=board.ranks)) == []
    with count_commands(1):  # len() never sorts
        assert len(Product.collection(cat="x").sort(by_score=board.ranks)) == 3
    assert temporary_keys(client) == []


def test_sort_by_score_on_a_pipeline_database(
    database, namespace, redis_settings, count_commands, monkeypatch
):
    """On a ``PipelineDatabase`` the ZSCOREs go through a non-transactional pipeline: same commands."""
    client = raw_client(redis_settings)
    logs = []
    opened = []
    original = PipelineDatabase.pipeline

    def spy(self, *args, **kwargs):
        pipeline = original(self, *args, **kwargs)
        opened.append((args, kwargs, pipeline.transaction))
        return pipeline

    monkeypatch.setattr(PipelineDatabase, "pipeline", spy)
    for kind, db in (("plain", database), ("pipeline", PipelineDatabase(**redis_settings))):
        Product = shop(db, namespace + kind)
        board = Product(6)
        with command_log(client) as log:
            assert list(Product.collection().sort(by_score=board.ranks)) == ["6", "2", "4", "3", "5", "1"]
        logs.append([entry.replace(Product._name, "M") for entry in log])
        with count_commands(1 + 6 + 6):
            assert list(Product.collection().sort(by_score=board.ranks, desc=True)) == [
                "1",
                "5",
                "3",
                "4",
                "2",
                "6",
            ]
        assert db._connection is db.connect()  # the pipeline is gone
    assert logs[0] == logs[1]
    assert verbs(logs[0]).count("ZSCORE") == 6
    assert "MULTI" not in verbs(logs[1])
    assert [transaction for _, _, transaction in opened] == [False, False]  # one pipeline per score sort


def test_sort_by_score_with_a_pk_filter(database, namespace, count_commands):
    """With a pk filter, score sorting applies only when SORTED_SCORE is asked (docs/contrib.rst)."""
    Product = shop(database, namespace)
    board = Product(6)
    with count_commands(1):
        assert list(Product.collection(pk=3).sort(by_score=board.ranks)) == ["3"]
    with count_commands(1 + 2 + 2):  # SISMEMBER, EXISTS + SADD of the pk set, SORT ... BY nosort GET, DEL
        assert list(Product.collection(pk=3).sort(by_score=board.ranks).values("name")) == [{"name": "p3"}]
    with count_commands(1 + 1 + 3 + 3):  # SISMEMBER, ZSCORE, EXISTS SET MSET, SADD SORT DEL
        assert list(Product.collection(pk=3).sort(by_score=board.ranks).values("name", SORTED_SCORE)) == [
            {"name": "p3", SORTED_SCORE: "30.0"}
        ]
    assert list(Product.collection(pk=6).sort(by_score=board.ranks).values_list(SORTED_SCORE, flat=True)) == [
        "-inf"
    ]
    assert list(
        Product.collection(pk=6, cat="x").sort(by_score=board.ranks).values_list("pk", SORTED_SCORE)
    ) == [("6", "-inf")]


def test_sort_by_score_slices_use_the_whole_sorted_set(database, namespace, redis_settings, count_commands):
    """On a window the score keys come from the whole zset: absent members sort as 0 (kept)."""
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    board = Product(6)
    n = Product._name
    collection = Product.collection(cat="x").sort(by_score=board.ranks)
    with command_log(client) as log:
        assert list(collection[0:2]) == ["6", "2"]
    assert log == [
        "ZRANGE %s:6:ranks 0 -1 WITHSCORES" % n,
        "EXISTS %s:__collection__:tmp:<a>" % n,
        "SET %s:__collection__:tmp:<a> working..." % n,
        "MSET %s:__collection__:tmp:<a>:1 50.0 %s:__collection__:tmp:<a>:2 10.0 %s:__collection__:tmp:<a>:3 30.0 "
        "%s:__collection__:tmp:<a>:4 20.0 %s:__collection__:tmp:<a>:5 40.0" % (n, n, n, n, n),
        "SORT %s:cat:x BY %s:__collection__:tmp:<a>:* LIMIT 0 2" % (n, n),
        "DEL %s:__collection__:tmp:<a> %s:__collection__:tmp:<a>:1 %s:__collection__:tmp:<a>:2 "
        "%s:__collection__:tmp:<a>:3 %s:__collection__:tmp:<a>:4 %s:__collection__:tmp:<a>:5"
        % (n, n, n, n, n, n),
    ]
    with command_log(client) as log:
        assert collection[-1] == "4"
    assert log[4] == "SORT %s:cat:x BY %s:__collection__:tmp:<a>:* LIMIT 0 1 DESC" % (n, n)
    desc = Product.collection(cat="x").sort(by_score=board.ranks, desc=True, alpha=True)
    with command_log(client) as log:
        assert desc[-1] == "6"
    assert log[4] == "SORT %s:cat:x BY %s:__collection__:tmp:<a>:* LIMIT 0 1 ALPHA" % (n, n)
    with command_log(client) as log:
        assert list(Product.collection(cat="x", price__in=[20, 60]).sort(by_score=board.ranks)[1:]) == ["2"]
    assert verbs(log) == [
        "EXISTS",
        "SUNIONSTORE",
        "EXISTS",
        "SINTERSTORE",
        "DEL",
        "ZRANGE",
        "EXISTS",
        "SET",
        "MSET",
        "SORT",
        "DEL",
    ]
    assert log[-2] == "SORT %s:__collection__:final:<b> BY %s:__collection__:tmp:<c>:* LIMIT 1 -1" % (n, n)
    assert log[-1].startswith("DEL %s:__collection__:final:<b> %s:__collection__:tmp:<c> " % (n, n))
    # absent members: 0 on a window, -inf on a full evaluation
    client.zadd(board.ranks.key, {"2": -5})
    assert list(collection.clone()) == ["6", "2", "4"]
    assert list(collection.clone()[0:3]) == ["2", "6", "4"]
    with count_commands(6):
        assert collection.clone()[0] == "2"
    assert temporary_keys(client) == []


def test_sort_by_score_index_never_changes_the_collection(database, namespace, count_commands):
    """C1/C2 on score-sorted collections: upstream toggled the stored desc for good after c[-1]."""
    Product = shop(database, namespace)
    board = Product(6)
    collection = Product.collection(cat="y").sort(by_score=board.ranks).values_list("pk", flat=True)
    state = (dict(collection._sort_by_sortedset), collection._sort, repr(collection._values))
    assert collection[-1] == "1"
    assert collection[-1] == "1"
    assert list(collection[-2:]) == ["5", "1"]
    assert (dict(collection._sort_by_sortedset), collection._sort, repr(collection._values)) == state
    assert (collection._sort_limits, collection._sort_limits_reverse, collection._collection_cache) == (
        None,
        False,
        None,
    )
    assert list(collection) == ["3", "5", "1"]
    with count_commands(0):
        assert collection[-1] == "1" and collection[0] == "3" and list(collection[1:]) == ["5", "1"]


def test_sort_arguments(database, namespace, redis_settings, count_commands):
    Product = shop(database, namespace)
    board = Product(6)
    collection = Product.collection()
    assert list(collection.sort(by=Product.get_field("name"), desc=True, alpha=True)) == [
        "6",
        "5",
        "4",
        "3",
        "2",
        "1",
    ]
    assert list(collection.sort(by=board.price)) == ["1", "2", "3", "4", "5", "6"]
    score_message = (
        r"^To sort by sorted set, you must pass a SortedSetFied \(attached to a model\) or a string "
        r"representing the key of a redis zset to the `by_score` named argument \(got .*Product\)"
    )
    with count_commands(0):
        for bad in (
            None,
            "",
            3,
            board.tags,
            board.name,
            Product.get_field("ranks"),
            SortedSetField(),
            [board.ranks],
        ):
            with pytest.raises(ValueError, match=score_message):
                collection.sort(by_score=bad)
        with pytest.raises(
            ValueError, match=r"^You can't use `by` and `by_score` in the same call to `sort`\."
        ):
            collection.sort(by="name", by_score=board.ranks)
        with pytest.raises(
            TypeError,
            match=r"^Unexpected argument\(s\) get, start to sort\(by_score=\.\.\.\) on a "
            r"collection of .*Product: only desc and alpha",
        ):
            collection.sort(by_score=board.ranks, start=0, get="#")
        with pytest.raises(TypeError, match=r"^Unexpected argument\(s\) foo to sort\(\)"):
            collection.sort(foo=1)
        with pytest.raises(TypeError, match=r"The `by` argument of sort\(\)"):
            collection.sort(by=3)
    assert collection.sort(by_score=board.ranks, by=None)._sort_by_sortedset["by"] == board.ranks.key


def test_sort_by_score_no_temporary_key_left_after_errors(database, namespace, redis_settings):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    client.set("not:a:zset", "x")
    before = dump(client)
    for collection in (
        Product.collection().sort(by_score="not:a:zset"),
        Product.collection(cat="x", price__in=[20, 40]).sort(by_score="not:a:zset"),
        Product.collection(cat="x").sort(by_score="not:a:zset").values("name", SORTED_SCORE),
    ):
        with pytest.raises(redis.exceptions.ResponseError, match="^WRONGTYPE"):
            list(collection)
        assert dump(client) == before
        with pytest.raises(redis.exceptions.ResponseError, match="^WRONGTYPE"):
            collection[0:2]
        assert dump(client) == before
        with pytest.raises(redis.exceptions.ResponseError, match="^WRONGTYPE"):
            collection[-1]
        assert dump(client) == before


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "operation",
    [
        "list(M.collection(cat='x').intersect([2, 4, 5], board.history, board.ranks))",
        "len(M.collection(cat='x').intersect([2, 4, 5], board.ranks))",
        "list(M.collection(cat='x', price__in=[20, 40]).sort(by_score=board.ranks).values('name', SORTED_SCORE))",
        "list(M.collection(cat='x', price__in=[20, 40]).sort(by_score=board.ranks, desc=True)[0:1])",
        "list(M.collection(pk=2).sort(by_score=board.ranks).values_list('pk', SORTED_SCORE))",
        "list(M.collection(cat='x').sort(by_score=board.ranks).store(key='k'))",
        "list(M.collection(pk=2, cat='x').store(key='k'))",
        "list(M.collection(cat='z').store(key='k'))",
        "list(M.collection().from_stored('k')(cat='x'))",
        "len(M.collection().from_stored('k'))",
    ],
)
def test_batched_round_trips_keep_the_commands(database, namespace, redis_settings, monkeypatch, operation):
    """The commands sent one by one (no write-behind batch) are exactly those sent batched."""
    client = raw_client(redis_settings)
    warm_list_script(client)
    logs, results = [], []
    for batched in (True, False):
        M = shop(database, namespace + ("b" if batched else "s"))
        board = M(6)
        board.history.rpush("2", "4")
        client.rpush("k", "2", "4", "1")
        with monkeypatch.context() as patch:
            if not batched:
                for module in (contrib_collection, base_collection):
                    patch.setattr(module, "queue_command", lambda *args, **kwargs: None)
                # later(connection).<command>(...) queues only where limpyd._batch.is_batched says so
                patch.setattr(limpyd_batch, "is_batched", lambda connection: False)
                patch.setattr(base_collection, "current_batch", lambda database: None)
            with command_log(client) as log:
                results.append(eval(operation, {"M": M, "board": board, "SORTED_SCORE": SORTED_SCORE}))
        logs.append([entry.replace(M._name, "M") for entry in log])
        client.delete("k")
    assert logs[0] == logs[1]
    assert results[0] == results[1]
