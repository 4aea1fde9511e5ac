"""Tests of ``limpyd.contrib.collection``: ``values``/``values_list`` and stored collections (docs/contrib.rst)."""

from __future__ import annotations

import pytest
import redis
from _collection_helpers import temporary_keys
from _contrib_collection_helpers import command_log, shop, verbs, warm_list_script
from _redis_dump import dump, raw_client

from limpyd.collection import CollectionResults
from limpyd.contrib.collection import DEFAULT_STORE_TTL, SORTED_SCORE, ExtendedCollectionManager
from limpyd.exceptions import DoesNotExist
from limpyd.fields import HashField, InstanceHashField, PKField, StringField
from limpyd.model import RedisModel

MODEL = r"_contrib_collection_helpers\.shop\.<locals>\.Product"

# ---------------------------------------------------------------------- values


def _people(db, ns):
    """Return ``Person`` (pk ``id`` of names, a hash field, a string, a HashField) and 3 instances."""

    class Person(RedisModel):
        database = db
        namespace = ns
        collection_manager = ExtendedCollectionManager
        id = PKField()
        city = InstanceHashField(indexable=True)
        age = StringField()
        extra = HashField()

    Person(id="bob", city="paris", age=30)
    Person(id="amy", city="paris")
    Person(id="cid", city="rome", age=20)
    return Person


def test_values_default_fields(database, namespace):
    Product = shop(database, namespace)
    collection = Product.collection(cat="x")
    assert collection._get_simple_fields() == ["pk", "name", "cat", "price", "note"]
    assert list(collection.values()) == [
        {"pk": "2", "name": "p2", "cat": "x", "price": "20", "note": None},
        {"pk": "4", "name": "p4", "cat": "x", "price": "40", "note": None},
        {"pk": "6", "name": "p6", "cat": "x", "price": "60", "note": None},
    ]
    assert list(collection.values_list())[0] == ("2", "p2", "x", "20", None)
    values = collection.values()._values
    n = Product._name
    assert values == {
        "fields": {
            "names": ["pk", "name", "cat", "price", "note"],
            "keys": ["#", "%s:*:name" % n, "%s:*:cat" % n, "%s:*:hash->price" % n, "%s:*:note" % n],
        },
        "mode": "dicts",
    }
    Person = _people(database, namespace + "p")
    # pk first under its real name; no multi-value field; missing values are None
    assert list(Person.collection(city="paris").sort(alpha=True).values()) == [
        {"id": "amy", "city": "paris", "age": None},
        {"id": "bob", "city": "paris", "age": "30"},
    ]


def test_values_names(database, namespace, redis_settings):
    Person = _people(database, namespace)
    client = raw_client(redis_settings)
    n = Person._name
    collection = Person.collection(city="paris").sort(by="-pk", alpha=True)
    assert list(collection.values("pk")) == [{"pk": "bob"}, {"pk": "amy"}]
    assert list(collection.values("id", "age")) == [{"id": "bob", "age": "30"}, {"id": "amy", "age": None}]
    assert list(collection.values("pk__eq")) == [{"pk__eq": "bob"}, {"pk__eq": "amy"}]
    assert list(collection.values_list("age", "id__eq", "city")) == [
        ("30", "bob", "paris"),
        (None, "amy", "paris"),
    ]
    assert list(collection.values_list("age", "age")) == [("30", "30"), (None, None)]
    assert list(collection.values_list("id", flat=True)) == ["bob", "amy"]
    assert list(collection.values_list("age", flat=True)) == ["30", None]
    assert list(collection.values(SORTED_SCORE, "id")) == [
        {SORTED_SCORE: None, "id": "bob"},
        {SORTED_SCORE: None, "id": "amy"},
    ]
    with command_log(client) as log:
        assert list(collection.values_list("pk", SORTED_SCORE, "city")) == [
            ("bob", None, "paris"),
            ("amy", None, "paris"),
        ]
    assert log == ["SORT %s:city:paris GET # GET sorted_score GET %s:*:hash->city DESC ALPHA" % (n, n)]


def test_values_errors(database, namespace, count_commands):
    Product = shop(database, namespace)
    collection = Product.collection()
    with count_commands(0):
        for bad in ("nope", "name__eq", "pk__in", 3, None):
            with pytest.raises(
                ValueError,
                match=r"^%s if not a valid field to get from collection for Product: use one of "
                r"'pk', 'name'" % bad,
            ):
                collection.values(bad)
            with pytest.raises(ValueError, match=r"^%s if not a valid field" % bad):
                collection.values_list("name", bad)
        for multi in ("tags", "ranks", "history"):
            with pytest.raises(
                ValueError,
                match=r"^It's not possible to get a MultiValuesField from a collection \(asked: "
                r"%s\) on %s" % (multi, MODEL),
            ):
                collection.values("name", multi)
        with pytest.raises(
            ValueError,
            match=r"^Unexpected keyword arguments for the values method: \['bar', 'foo'\] "
            r"\(values_list\(\) on a collection of %s\)" % MODEL,
        ):
            collection.values_list("name", foo=1, bar=2, flat=True)
        with pytest.raises(TypeError):
            collection.values(flat=True)
        message = r"^'flat' is not valid when values is called with more than one field\. \(values_list\(\) on a collection of %s"
        with pytest.raises(ValueError, match=message % MODEL):
            collection.values_list("name", "pk", flat=True)
        with pytest.raises(ValueError, match=message % MODEL):
            collection.values_list(flat=True)  # no field: every simple field
    assert collection.values_list("name", flat=False)._values["mode"] == "tuples"

    db, ns = database, namespace

    class Lonely(RedisModel):
        database = db
        namespace = ns + "l"
        collection_manager = ExtendedCollectionManager
        tags = HashField()

    Lonely(tags={"a": "b"})
    assert list(Lonely.collection().values_list(flat=True)) == ["1"]  # one simple field: the pk


def test_values_always_sorted(database, namespace, redis_settings):
    Person = _people(database, namespace)
    client = raw_client(redis_settings)
    collection = Person.collection(city="paris")
    message = r"^One or more scores can't be converted into double$"
    with pytest.raises(redis.exceptions.ResponseError, match=message):
        list(collection.values("age"))
    with pytest.raises(redis.exceptions.ResponseError, match=message):
        collection.values("age")[0]
    with pytest.raises(redis.exceptions.ResponseError, match=message):  # with a temporary final key
        list(Person.collection().intersect(["amy", "bob"]).values("age"))
    assert temporary_keys(client) == []
    assert list(collection.sort(alpha=True).values_list("id", flat=True)) == ["amy", "bob"]
    assert set(collection.sort(by="nosort").values_list("id", flat=True)) == {"amy", "bob"}
    assert list(collection.sort(by="-age").values_list("id", "age")) == [("bob", "30"), ("amy", None)]
    assert len(collection.values("age")) == 2  # len() never sorts


def test_values_with_a_pk_filter(database, namespace, redis_settings, count_commands):
    """C8: ``SORT ... BY nosort GET ...`` on the pk set: no dependence on the pk type."""
    Person = _people(database, namespace)
    client = raw_client(redis_settings)
    n = Person._name
    with command_log(client) as log:
        assert list(Person.collection(pk="bob").values("age", "city")) == [{"age": "30", "city": "paris"}]
    assert log == [
        "SISMEMBER %s:collection bob" % n,
        "EXISTS %s:__collection__:tmp:<a>" % n,
        "SADD %s:__collection__:tmp:<a> bob" % n,
        "SORT %s:__collection__:tmp:<a> BY nosort GET %s:*:age GET %s:*:hash->city" % (n, n, n),
        "DEL %s:__collection__:tmp:<a>" % n,
    ]
    with count_commands(8):
        assert list(
            Person.collection(pk="bob", city="paris").sort(by="age").values_list("id", flat=True)
        ) == ["bob"]
    with count_commands(1):
        assert list(Person.collection(pk="zed").values()) == []
    assert list(Person.collection(pk="bob", city="rome").values()) == []
    collection = Person.collection(id="cid").values_list("age", "pk")
    assert collection[0] == ("20", "cid")
    assert collection[-1] == ("20", "cid")
    assert list(collection[0:5]) == [("20", "cid")]
    assert collection[1:] == CollectionResults([])
    with pytest.raises(IndexError):
        collection[1]
    assert temporary_keys(client) == []


def test_values_sorted_score(database, namespace):
    Product = shop(database, namespace)
    board = Product(6)
    collection = Product.collection(cat="x").sort(by_score=board.ranks)
    assert list(collection.values("name", SORTED_SCORE)) == [
        {"name": "p6", SORTED_SCORE: "-inf"},
        {"name": "p2", SORTED_SCORE: "10.0"},
        {"name": "p4", SORTED_SCORE: "20.0"},
    ]
    assert list(collection.values_list(SORTED_SCORE, flat=True)) == ["-inf", "10.0", "20.0"]
    # a window reads the scores of the whole zset: 6 is absent (no score, sorted as 0)
    assert list(collection.values_list(SORTED_SCORE, "pk")[1:]) == [("10.0", "2"), ("20.0", "4")]
    assert list(collection.values_list(SORTED_SCORE, "pk")[0:3]) == [
        (None, "6"),
        ("10.0", "2"),
        ("20.0", "4"),
    ]
    assert collection.values_list("pk", SORTED_SCORE)[-1] == ("4", "20.0")
    assert list(Product.collection(price=40).sort(by_score=board.ranks).values()) == [
        {"pk": "4", "name": "p4", "cat": "x", "price": "40", "note": None}
    ]
    assert (
        list(Product.collection(cat="x").values(SORTED_SCORE)) == [{SORTED_SCORE: None}] * 3
    )  # not score-sorted


def test_values_result_type_switches(database, namespace, count_commands):
    Product = shop(database, namespace)
    collection = Product.collection(cat="x").sort()
    values = collection.instances().values("name")
    assert values._instances is False and values._values["mode"] == "dicts"
    assert list(values) == [{"name": "p2"}, {"name": "p4"}, {"name": "p6"}]
    back = values.instances()
    assert back._values is None and back._instances is True
    assert [instance._pk for instance in back] == ["2", "4", "6"]
    pks = values.primary_keys()
    assert (pks._values, pks._instances) == (None, False)
    assert list(pks) == ["2", "4", "6"]
    assert list(values.values_list("pk", flat=True)) == ["2", "4", "6"]  # replaces
    assert list(values.sort(by="-pk")) == [
        {"name": "p6"},
        {"name": "p4"},
        {"name": "p2"},
    ]  # sort keeps values
    assert list(values(price__in=[20, 60])) == [{"name": "p2"}, {"name": "p6"}]
    with count_commands(1):
        assert values.clone()[1] == {"name": "p4"}
    with count_commands(1):
        assert values.clone()[-1] == {"name": "p6"}
    with count_commands(1):
        assert list(values.clone()[1:]) == [{"name": "p4"}, {"name": "p6"}]
    with count_commands(1):
        assert len(Product.collection(cat="x").values("name")) == 3
    with count_commands(1):
        assert list(values.clone()[::-2]) == [{"name": "p6"}, {"name": "p2"}]


# ---------------------------------------------------------------------- store


def test_store_default_key_sequence_and_result(database, namespace, redis_settings, count_commands):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    n = Product._name
    with command_log(client) as log:
        stored = Product.collection(cat="x").sort(by="-price").store()
    assert log == [
        "EXISTS %s:__collection__:store:<a>" % n,
        "SORT %s:cat:x BY %s:*:hash->price DESC STORE %s:__collection__:store:<a>" % (n, n, n),
        "LLEN %s:__collection__:store:<a>" % n,
        "EXPIRE %s:__collection__:store:<a> %d" % (n, DEFAULT_STORE_TTL),
    ]
    key = stored.stored_key
    assert key.startswith("%s:__collection__:store:" % n) and len(key.rsplit(":", 1)[1]) == 32
    assert client.type(key) == "list" and client.lrange(key, 0, -1) == ["6", "4", "2"]
    assert 55 < client.ttl(key) <= DEFAULT_STORE_TTL
    assert type(stored) is ExtendedCollectionManager
    assert stored._stored_len == 3 and stored._sort == {"by": "nosort"}
    assert [type(item).__name__ for item in stored._lazy_collection["intersects"]] == ["_StoredCollection"]
    with command_log(client) as log:
        assert list(stored) == ["6", "4", "2"]
    canonical = "%s:__collection__:store:<a>" % n
    assert log == ["EXISTS %s" % canonical, "LRANGE %s 0 -1" % canonical]
    with count_commands(0):
        assert list(stored) == ["6", "4", "2"]
    fresh = ExtendedCollectionManager(Product).from_stored(key)
    with command_log(client) as log:
        assert len(fresh) == 3
    assert log == ["EXISTS %s" % canonical, "LLEN %s" % canonical]
    assert temporary_keys(client) == [key]


def test_store_order_and_non_numeric_pks(database, namespace, redis_settings):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    assert client.lrange(Product.collection(cat="y").store().stored_key, 0, -1) == ["1", "3", "5"]  # numeric
    assert list(Product.collection().sort(by="name", alpha=True, desc=True).store()) == [
        "6",
        "5",
        "4",
        "3",
        "2",
        "1",
    ]
    assert list(Product.collection(cat="x", price__in=[20, 60]).store()) == ["2", "6"]
    Person = _people(database, namespace + "p")
    before = dump(client)
    with pytest.raises(
        redis.exceptions.ResponseError, match=r"^One or more scores can't be converted into double$"
    ):
        Person.collection(city="paris").store()
    with pytest.raises(redis.exceptions.ResponseError):
        Person.collection().intersect(["amy", "cid"]).store()
    assert dump(client) == before  # no store key, no temporary key
    assert list(Person.collection(city="paris").sort(alpha=True).store()) == ["amy", "bob"]
    assert set(Person.collection().sort(by="nosort").store()) == {"amy", "bob", "cid"}


def test_store_ttl(database, namespace, redis_settings):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    forever = Product.collection(cat="x").store(ttl=None)
    assert client.ttl(forever.stored_key) == -1
    short = Product.collection(cat="x").store(ttl=5)
    assert 0 < client.ttl(short.stored_key) <= 5
    gone = Product.collection(cat="x").store(ttl=0)  # deleted at once...
    assert client.exists(gone.stored_key) == 0 and gone._stored_len == 3
    message = (
        r"^This collection is based on a previous one, stored at a key that does not exist anymore\. \(key "
        r"'[^']+', collection of %s\)" % MODEL
    )
    with pytest.raises(DoesNotExist, match=message):  # ... so it raises when evaluated
        list(gone)
    with pytest.raises(DoesNotExist, match=message):
        len(gone)
    with pytest.raises(DoesNotExist, match=message):
        gone[0]
    with pytest.raises(DoesNotExist, match=message):
        list(gone(price=20))
    empty = Product.collection(cat="z").store(ttl=0)  # empty: nothing to check, empty result
    assert list(empty) == [] and len(empty) == 0
    for bad in (-1, 1.5, "60", True):
        with pytest.raises(
            ValueError, match=r"^store\(ttl=%r\) on a collection of %s: the ttl must be" % (bad, MODEL)
        ):
            Product.collection().store(ttl=bad)
    for bad in ("", 3, b"key"):
        with pytest.raises(
            TypeError, match=r"^store\(key=%r\) on a collection of %s: the key must be" % (bad, MODEL)
        ):
            Product.collection().store(key=bad)


def test_store_explicit_key_and_empty_results(database, namespace, redis_settings, count_commands):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    stored = Product.collection(cat="x").store(key="my:list")
    assert stored.stored_key == "my:list" and client.lrange("my:list", 0, -1) == ["2", "4", "6"]
    with command_log(client) as log:
        Product.collection(cat="y").store(key="my:list", ttl=None)
    assert log == ["SORT %s:cat:y STORE my:list" % Product._name, "LLEN my:list"]  # no EXISTS for a given key
    assert client.lrange("my:list", 0, -1) == ["1", "3", "5"]
    # an empty result creates no key (and empties a given one)
    before = dump(client)
    empty = Product.collection(cat="z").store()
    assert dump(client) == before and list(empty) == [] and empty._stored_len == 0
    with count_commands(0):
        assert list(empty.clone()) == [] and len(empty.clone()) == 0 and empty.clone()[0:3] == []
    for collection in (
        Product.collection(cat="z"),
        Product.collection(pk=99),
        Product.collection(pk=1, cat="x"),
        Product.collection(pk=1, pk__eq=2),
        Product.collection(cat="x", price__in=[]),
    ):
        client.rpush("my:old", "1")
        assert list(collection.store(key="my:old")) == []
        assert client.exists("my:old") == 0
    assert list(Product.collection(pk=1, pk__eq=2).store()) == []
    assert temporary_keys(client) == []


def test_store_with_a_pk_filter(database, namespace, redis_settings):
    """Decision (a): upstream stored nothing for a pk-filtered collection."""
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    n = Product._name
    with command_log(client) as log:
        stored = Product.collection(pk=3).store(key="one", ttl=None)
    assert log == [
        "SISMEMBER %s:collection 3" % n,
        "EXISTS %s:__collection__:tmp:<a>" % n,
        "SADD %s:__collection__:tmp:<a> 3" % n,
        "SORT %s:__collection__:tmp:<a> BY nosort STORE one" % n,
        "DEL %s:__collection__:tmp:<a>" % n,
        "LLEN one",
    ]
    assert list(stored) == ["3"]
    assert list(Product.collection(pk=3, cat="y").sort(by="-name").store()) == ["3"]
    assert list(Product.collection(pk=3, cat="x").store()) == []
    Person = _people(database, namespace + "p")
    assert list(Person.collection(pk="bob").store()) == ["bob"]  # C8: no numeric sort of the pk
    assert list(Person.collection(pk="bob", city="paris").store()) == ["bob"]
    assert list(Person.collection(pk="bob").intersect(["bob", "amy"]).store()) == ["bob"]
    assert temporary_keys(client) == sorted(key for key in temporary_keys(client) if ":store:" in key)


def test_store_sorted_by_score(database, namespace, redis_settings, count_commands):
    """Decision (b): upstream raised TypeError (or stored nothing) and leaked temporary keys."""
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    board = Product(6)
    n = Product._name
    collection = Product.collection(cat="x").sort(by_score=board.ranks)
    with command_log(client) as log:
        stored = collection.store(key="scored")
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
        "SORT %s:__collection__:tmp:<a>_final_set BY %s:__collection__:tmp:<a>:* STORE scored" % (n, n),
        "DEL %s:__collection__:tmp:<a> %s:__collection__:tmp:<a>:2 %s:__collection__:tmp:<a>:4 "
        "%s:__collection__:tmp:<a>:6 %s:__collection__:tmp:<a>_final_set" % (n, n, n, n, n),
        "LLEN scored",
        "EXPIRE scored 60",
    ]
    assert client.lrange("scored", 0, -1) == list(collection) == ["6", "2", "4"]
    assert list(stored) == ["6", "2", "4"]
    desc = Product.collection().sort(by_score=board.ranks, desc=True)
    assert list(desc.store()) == list(desc) == ["1", "5", "3", "4", "2", "6"]
    single = Product.collection(price=30).sort(by_score=board.ranks)
    assert list(single.store()) == list(single) == ["3"]  # one result: still stored
    assert list(Product.collection(pk=2).sort(by_score=board.ranks).store()) == ["2"]
    assert list(Product.collection(cat="z").sort(by_score=board.ranks).store()) == []
    zset_ordered = Product.collection().intersect(board.ranks)
    assert list(zset_ordered) == ["2", "4", "3", "5", "1"]
    assert list(zset_ordered.store()) == ["1", "2", "3", "4", "5"]  # no explicit sort: numeric order
    assert temporary_keys(client) == sorted(key for key in temporary_keys(client) if ":store:" in key)


def test_store_keeps_the_result_type(database, namespace):
    """Decision: the values/values_list mode carries over too (upstream dropped it)."""
    Product = shop(database, namespace)
    board = Product(6)
    base = Product.collection(cat="x").sort(by="-pk")
    instances = base.instances().store()
    assert instances._instances is True and instances._lazy_instances is False
    assert [instance._pk for instance in instances] == ["6", "4", "2"]
    lazy = base.instances(lazy=True).store()
    assert lazy._lazy_instances is True and [instance._pk for instance in lazy] == ["6", "4", "2"]
    values = base.values("name", "pk").store()
    assert list(values) == [{"name": "p6", "pk": "6"}, {"name": "p4", "pk": "4"}, {"name": "p2", "pk": "2"}]
    assert list(base.values_list("name", flat=True).store()) == ["p6", "p4", "p2"]
    assert list(base.values_list("pk", "price").store()[1:]) == [("4", "40"), ("2", "20")]
    assert list(base.store().values_list("name", flat=True)) == ["p6", "p4", "p2"]
    scored = Product.collection(cat="x").sort(by_score=board.ranks).values("pk", SORTED_SCORE).store()
    assert list(scored) == [
        {"pk": "6", SORTED_SCORE: None},
        {"pk": "2", SORTED_SCORE: None},
        {"pk": "4", SORTED_SCORE: None},
    ]  # the stored collection is not score-sorted
    assert list(scored.sort(by_score=board.ranks)) == [
        {"pk": "6", SORTED_SCORE: "-inf"},
        {"pk": "2", SORTED_SCORE: "10.0"},
        {"pk": "4", SORTED_SCORE: "20.0"},
    ]


def test_store_after_len_and_on_a_clone(database, namespace, redis_settings):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    collection = Product.collection(cat="x", price__in=[20, 40])
    assert len(collection) == 2  # keeps its final key
    stored = collection.store()
    assert list(stored) == ["2", "4"]
    assert list(collection) == ["2", "4"] or set(collection) == {"2", "4"}
    assert collection._store is False and collection._values is None  # the original is untouched
    assert temporary_keys(client) == [stored.stored_key]


# ---------------------------------------------------------------------- stored collections


def test_from_stored(database, namespace, redis_settings, count_commands):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    client.rpush("manual", "5", "1", "99", "5")
    with command_log(client) as log:
        collection = Product.collection().from_stored("manual")
    assert log == ["LLEN manual"]
    assert collection.stored_key == "manual" and collection._stored_len == 4
    assert list(collection) == ["5", "1", "99", "5"]  # the list as is (no check of the pks)
    assert set(collection(cat="y")) == {"1", "5"}
    assert list(collection.sort()) == ["1", "5", "5", "99"]
    assert list(Product.collection(cat="y").from_stored("manual").sort(by="-pk")) == ["5", "1"]
    with count_commands(1):
        missing = Product.collection().from_stored("nothing:here")
    with count_commands(0):
        assert list(missing) == [] and len(missing.clone()) == 0 and list(missing(cat="x")) == []
    with count_commands(0):
        for bad in (
            lambda: collection.from_stored("other"),
            lambda: collection(cat="x").from_stored("other"),
            lambda: collection.sort().from_stored("other"),
        ):
            with pytest.raises(
                ValueError,
                match=r"^This collection is already based on a stored one \(key 'manual', "
                r"collection of %s\): call from_stored\(\) on a collection that is not" % MODEL,
            ):
                bad()
        for bad in (None, 3, ""):
            with pytest.raises(
                TypeError, match=r"^from_stored\(key=%r\) on a collection of %s" % (bad, MODEL)
            ):
                Product.collection().from_stored(bad)
    client.set("a:string", "x")
    with pytest.raises(redis.exceptions.ResponseError, match="^WRONGTYPE"):
        Product.collection().from_stored("a:string")


def test_stored_key_exists(database, namespace, redis_settings, count_commands):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    stored = Product.collection(cat="x").store(ttl=None)
    with count_commands(1):
        assert stored.stored_key_exists() == 1
    client.delete(stored.stored_key)
    assert stored.stored_key_exists() == 0
    with pytest.raises(
        ValueError,
        match=r"^stored_key_exists\(\) on a collection of %s that is not based on a stored "
        r"one: use store\(\) or from_stored\(key\) first" % MODEL,
    ):
        Product.collection().stored_key_exists()


def test_stored_collection_can_do_everything(database, namespace, redis_settings):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    warm_list_script(client)
    board = Product(6)
    stored = Product.collection().sort(by="-pk").store(key="stored")  # 6 5 4 3 2 1
    assert list(stored) == ["6", "5", "4", "3", "2", "1"]
    assert set(stored(cat="x")) == {"2", "4", "6"}
    assert set(stored.filter(cat="x", price=40)) == {"4"}
    assert set(stored.intersect([1, 2, 9])) == {"1", "2"}
    assert list(stored.intersect(board.ranks)) == ["2", "4", "3", "5", "1"]
    assert list(stored.sort()) == ["1", "2", "3", "4", "5", "6"]
    assert list(stored.sort(by="name", alpha=True)) == ["1", "2", "3", "4", "5", "6"]
    assert list(stored.sort(by_score=board.ranks)) == ["6", "2", "4", "3", "5", "1"]
    assert list(stored.sort(by_score=board.ranks)[1:3]) == ["2", "4"]
    assert list(stored.values_list("name", flat=True)) == ["p6", "p5", "p4", "p3", "p2", "p1"]
    assert [instance._pk for instance in stored.instances()] == ["6", "5", "4", "3", "2", "1"]
    assert list(stored[1:3]) == ["5", "4"]
    assert stored[-1] == "1" and stored[0] == "6"
    assert list(stored(pk=4)) == ["4"] and list(stored(pk=4, cat="y")) == []
    again = stored(cat="x").store()
    assert set(again) == {"2", "4", "6"}
    assert list(stored.sort(by="-name", alpha=True).store()) == ["6", "5", "4", "3", "2", "1"]
    with command_log(client) as log:
        assert set(stored(cat="x")) == {"2", "4", "6"}
    assert verbs(log) == ["EXISTS", "EXISTS", "EVALSHA", "EXISTS", "SINTERSTORE", "DEL", "SORT", "DEL"]
    assert log[0] == "EXISTS %s" % stored.stored_key
    assert log[-2] == "SORT %s:__collection__:final:<b> BY nosort" % Product._name
    with command_log(client) as log:
        assert list(stored.clone()[1:3]) == ["5", "4"]
    assert log == ["EXISTS %s" % stored.stored_key, "SORT %s BY nosort LIMIT 1 2" % stored.stored_key]
    with command_log(client) as log:  # not reversible (by nosort): a full fetch (C7)
        assert stored.clone()[-2] == "2"
    assert log == ["EXISTS %s" % stored.stored_key, "LRANGE %s 0 -1" % stored.stored_key]
    assert all(":store:" in key for key in temporary_keys(client))
    # the stored key vanishes: every evaluation raises, without leaving a key
    plain = Product.collection().from_stored("stored")  # never evaluated: no cached length
    client.delete(stored.stored_key)
    before = dump(client)
    for collection in (
        plain,
        plain(cat="x"),
        plain.intersect([1]),
        plain.sort(by_score=board.ranks),
        plain.values("name"),
        plain(pk=4),
    ):
        with pytest.raises(DoesNotExist):
            list(collection)
        with pytest.raises(DoesNotExist):
            len(collection)
        with pytest.raises(DoesNotExist):
            collection[0:2]
        with pytest.raises(DoesNotExist):
            collection.store()
        assert dump(client) == before


def test_no_temporary_key_left_after_errors(database, namespace, redis_settings):
    Product = shop(database, namespace)
    client = raw_client(redis_settings)
    warm_list_script(client)
    board = Product(6)
    board.history.rpush("1", "2")
    client.set("a:string", "x")
    before = dump(client)
    everything = ("list", "len", "index", "slice", "store", "store key")
    without_len = ("list", "index", "slice", "store", "store key")  # len() never sorts
    failing = [
        (Product.collection(cat="x").intersect([1, 2], board.history, "a:string"), ValueError, everything),
        (
            Product.collection(cat="x").intersect([1, 2], board.ranks).sort(by="name"),
            redis.exceptions.ResponseError,
            without_len,
        ),
        (
            Product.collection(cat="x").intersect([1, 2]).values("name").sort(by="name"),
            redis.exceptions.ResponseError,
            without_len,
        ),
        (Product.collection(cat="x", price__in=[10, 20]).intersect([]), ValueError, everything),
        (
            Product.collection().intersect(board.history, [1, 2]).sort(by_score="a:string"),
            redis.exceptions.ResponseError,
            without_len,
        ),
    ]
    operations = {
        "list": list,
        "len": len,
        "index": lambda c: c[0],
        "slice": lambda c: c[-2:],
        "store": lambda c: c.store(),
        "store key": lambda c: c.store(key="k"),
    }
    for collection, exception, names in failing:
        for name in names:
            with pytest.raises(exception):
                operations[name](collection.clone())
            assert dump(client) == before, (collection._lazy_collection, name)
