"""Tests of ``limpyd.collection``: filters, evaluation, sorting, caching, results (docs/collections.rst).

Indexing and slicing (docs/collections.rst, "Slicing and indexing") are in ``test_collection_slicing.py``.
"""

from __future__ import annotations

import pytest
import redis
from _collection_helpers import boat_model, boats, command_log, keys_of, raw_client, temporary_keys

import limpyd.collection as collection_module
from limpyd.collection import NONE_SLICE, CollectionManager, CollectionResults, ParsedFilter
from limpyd.exceptions import DoesNotExist, ImplementationError
from limpyd.fields import HashField, InstanceHashField, PKField, StringField
from limpyd.indexes import EqualIndex, NumberRangeIndex, TextRangeIndex, _MultiFieldsIndexMixin
from limpyd.model import RedisModel

# ---------------------------------------------------------------------- module names


def test_module_names():
    assert ParsedFilter._fields == ("index", "suffix", "extra_field_parts", "value", "related_filters")
    assert NONE_SLICE == slice(None, None, None)
    for name in ("LimpydException", "UniquenessError", "ImplementationError", "DoesNotExist"):
        assert getattr(collection_module, name) is getattr(__import__("limpyd.exceptions").exceptions, name)
    assert CollectionManager._accepted_key_types == {"set"}
    assert CollectionManager.FINAL_SET_TTL == 300
    assert CollectionResults.MAX_REPR_ITEMS == 20


def test_hooks_exist():
    """The names the contrib manager overrides (docs/extending.rst)."""
    for name in (
        "_add_filters",
        "_field_is_pk",
        "_parse_filter_key",
        "_get_pk",
        "_prepare_sort_options",
        "_get_final_set",
        "_prepare_sets",
        "_prepare_parsed_filter",
        "_reduce_related_filters",
        "_combine_sets",
        "_final_redis_call",
        "_collection_length",
        "_fetch_collection",
        "_prepare_results",
        "_to_instance",
        "_get_from_results_cache",
        "_getitem",
        "_optimize_slice",
        "_cache_empty_collection",
        "_reset_if_sort_limits",
        "_coerce_by_parameter",
        "_apply_sort",
        "_reset_result_type",
        "_get_simple_fields",
        "_unique_key",
        "clone",
        "sort",
        "instances",
        "primary_keys",
    ):
        assert callable(getattr(CollectionManager, name)), name
    assert isinstance(CollectionManager.__dict__["_optimize_slice"], staticmethod)


def test_initial_state(database, namespace):
    Boat = boat_model(database, namespace)
    collection = CollectionManager(Boat)
    assert collection.model is Boat
    assert collection.connection is database.connection
    assert collection._lazy_collection == {"sets": [], "pks": set()}
    assert (collection._instances, collection._sort, collection._sort_limits, collection._len) == (
        False,
        None,
        None,
        None,
    )
    assert collection._len_mode is True
    assert (collection._collection_cache, collection._cache_iterator_function) == (None, None)
    assert (collection._final_set, collection._final_set_deletable) == (None, False)
    assert collection._get_simple_fields() == ["pk", "name", "power", "launched", "length"]


def test_no_values_on_base_manager(database, namespace):
    Boat = boat_model(database, namespace)
    with pytest.raises(AttributeError):
        Boat.collection().values
    with pytest.raises(AttributeError):
        Boat.collection().values_list


# ---------------------------------------------------------------------- creation is lazy


def test_building_sends_no_command(database, namespace, count_commands):
    Boat = boats(database, namespace)
    with count_commands(0):
        c = Boat.collection()
        Boat.instances()
        c.instances()
        c2 = Boat.collection(power="sail")
        c2(launched=1966).sort(by="-length").instances(lazy=True).primary_keys().clone()
        Boat.collection(pk=1, power="sail")
        Boat.collection(launched__in=[1898, 1966])
    assert isinstance(c2, CollectionManager)


def test_call_returns_a_new_collection(database, namespace):
    Boat = boats(database, namespace)
    base = Boat.collection(power="sail")
    narrowed = base(launched=1966)
    assert narrowed is not base
    assert set(base) == {"1", "2", "3"}
    assert set(narrowed) == {"3"}
    assert len(base._lazy_collection["sets"]) == 1
    assert Boat.collection(manager=CollectionManager, power="engine") == ["4"]


def test_subclass_filters_in_init_and_clone_keeps_class(database, namespace):
    class SailOnly(CollectionManager):
        def __init__(self, model):
            super().__init__(model)
            self._add_filters(power="sail")

    Boat = boats(database, namespace)
    collection = Boat.collection(manager=SailOnly)
    assert type(collection) is SailOnly
    assert set(collection) == {"1", "2", "3"}
    for derived in (
        collection(launched=1966),
        collection.sort(),
        collection.instances(lazy=True),
        collection.primary_keys(),
        collection.clone(),
    ):
        assert type(derived) is SailOnly
        assert len(derived._lazy_collection["sets"]) == len(collection._lazy_collection["sets"]) + (
            1 if derived._lazy_collection["sets"] != collection._lazy_collection["sets"] else 0
        )
    assert set(collection(launched=1966)) == {"3"}
    assert set(collection.clone()) == {"1", "2", "3"}


def test_clone_copies_state_and_resets_caches(database, namespace):
    Boat = boats(database, namespace)
    collection = Boat.collection(power="sail", pk=1).sort(by="-length").instances(lazy=True)
    list(collection)
    clone = collection.clone()
    assert clone._lazy_collection == collection._lazy_collection
    assert clone._lazy_collection["sets"] is not collection._lazy_collection["sets"]
    assert clone._lazy_collection["pks"] is not collection._lazy_collection["pks"]
    assert clone._sort == collection._sort and clone._sort is not collection._sort
    assert (clone._instances, clone._lazy_instances, clone._len, clone._len_mode) == (True, True, 1, True)
    assert clone._collection_cache is None and clone._cache_iterator_function is None
    assert clone._final_set is None and clone._final_set_deletable is False


# ---------------------------------------------------------------------- filter parsing and errors


def test_filter_syntax_equivalences(database, namespace):
    Boat = boats(database, namespace)
    assert set(Boat.collection(power="sail")) == set(Boat.collection(power__eq="sail")) == {"1", "2", "3"}
    assert set(Boat.collection(launched=1966)) == {"3"}  # values become str(from_python(v))
    assert set(Boat.collection(launched=b"1966")) == {"3"}
    assert set(Boat.collection(launched__in=[1898, 1964])) == {"1", "2"}
    assert set(Boat.collection(launched__in=(1898, 1898, 1955))) == {"1", "4"}


def test_parsed_filters(database, namespace):
    Boat = boat_model(database, namespace)
    collection = Boat.collection(power="sail", launched__in=[1, 2])
    first, second = collection._lazy_collection["sets"]
    assert first == ParsedFilter(Boat.get_field("power")._indexes[0], None, [], "sail", None)
    assert second.suffix == "in" and second.value == [1, 2]
    assert collection._parse_filter_key("launched__eq") == (Boat.get_field("launched")._indexes[0], "eq", [])


def test_pk_filters(database, namespace, count_commands):
    Boat = boats(database, namespace)
    collection = Boat.collection(pk=1, pk__eq="1")
    assert collection._lazy_collection["pks"] == {"1"}
    assert collection._field_is_pk("pk") and collection._field_is_pk("pk__eq")
    assert not collection._field_is_pk("pk__in") and not collection._field_is_pk("power")
    with count_commands(1):  # SISMEMBER
        assert list(collection) == ["1"]
    with count_commands(1):
        assert len(Boat.collection(pk=2)) == 1
    with count_commands(1):
        assert list(Boat.collection(pk=99)) == []
    with count_commands(1):
        assert len(Boat.collection(pk=99)) == 0
    with count_commands(0):  # two different pks: empty without any command
        assert list(Boat.collection(pk=1)(pk=2)) == []
    with count_commands(0):
        assert len(Boat.collection(pk=1, pk__eq=2)) == 0
    with count_commands(2):  # SISMEMBER + SISMEMBER of Boat(pk)
        instances = list(Boat.collection(pk=3).instances())
    assert [(type(boat), boat._pk) for boat in instances] == [(Boat, "3")]


def test_pk_filter_with_real_pk_name(database, namespace):
    ns = namespace
    db = database

    class Person(RedisModel):
        database = db
        namespace = ns
        id = PKField()
        name = StringField(indexable=True)

    Person(id="joe", name="Joe")
    Person(id="jack", name="Jack")
    assert list(Person.collection(id="joe")) == ["joe"]
    assert list(Person.collection(id__eq="jack", name="Jack")) == ["jack"]
    assert list(Person.collection(pk="jack", name="Joe")) == []
    with pytest.raises(ImplementationError, match=r"^Field Person\.id is not indexable"):
        Person.collection(id__in=["joe"])
    with pytest.raises(ImplementationError, match=r"^Field Person\.id is not indexable"):
        Person.collection(pk__gt="a")


@pytest.mark.parametrize(
    ("filters", "exception", "message"),
    [
        ({"foo": 1}, AttributeError, r'^"foo" is not a field for the model "Boat" \(filter \'foo\''),
        ({"foo__eq": 1}, AttributeError, r'^"foo" is not a field for the model "Boat" \(filter \'foo__eq\''),
        (
            {"length": 1},
            ImplementationError,
            r"^Field Boat\.length is not indexable \(filter 'length'.*indexable=True",
        ),
        (
            {"pk__in": [1]},
            ImplementationError,
            r"^Field Boat\.pk is not indexable \(filter 'pk__in'.*intersect",
        ),
        ({"pk__gt": 1}, ImplementationError, r"^Field Boat\.pk is not indexable"),
        (
            {"name__startswith": "P"},
            ImplementationError,
            r'^No index found to manage filter "name__startswith" for field Boat\.name: .*EqualIndex: '
            r"\(no suffix\), eq, in",
        ),
        (
            {"power__gt": "a"},
            ImplementationError,
            r'^No index found to manage filter "power__gt" for field Boat\.power',
        ),
        (
            {"launched__in__eq": [1]},
            ImplementationError,
            r'^No index found to manage filter "launched__in__eq"',
        ),
    ],
)
def test_filter_errors_at_filter_time(database, namespace, count_commands, filters, exception, message):
    Boat = boats(database, namespace)
    collection = Boat.collection(power="sail")
    with count_commands(0):
        with pytest.raises(exception, match=message):
            Boat.collection(**filters)
        with pytest.raises(exception, match=message):
            collection(**filters)
    assert len(collection._lazy_collection["sets"]) == 1  # untouched


def test_filter_error_leaves_nothing_added(database, namespace):
    Boat = boats(database, namespace)
    collection = Boat.collection()
    with pytest.raises(ImplementationError):
        collection._add_filters(power="sail", pk=1, length=3)
    assert collection._lazy_collection == {"sets": [], "pks": set()}


def test_hash_field_filters(database, namespace):
    ns = namespace
    db = database

    class Email(RedisModel):
        database = db
        namespace = ns
        headers = HashField(indexable=True)
        subject = StringField(indexable=True)

    Email(headers={"from": "a@b", "to": "c@d"}, subject="hi")
    Email(headers={"from": "x@y", "to": "c@d"}, subject="yo")
    assert set(Email.collection(headers__from="a@b")) == {"1"}
    assert set(Email.collection(headers__from__eq="x@y")) == {"2"}
    assert set(Email.collection(headers__to="c@d")) == {"1", "2"}
    assert set(Email.collection(headers__from__in=["a@b", "x@y"], subject="yo")) == {"2"}
    index, suffix, parts = Email.collection()._parse_filter_key("headers__from__in")
    assert (suffix, parts) == ("in", ["from"])
    with pytest.raises(
        ImplementationError, match=r"^Unexpected number of parts in filter headers for field Email\.headers"
    ):
        Email.collection(headers="x")
    with pytest.raises(
        ImplementationError,
        match=r'^No index found to manage filter "headers__from__age" for field Email\.headers',
    ):
        Email.collection(headers__from__age="x")
    with pytest.raises(ImplementationError, match=r'^No index found to manage filter "subject__building"'):
        Email.collection(subject__building="x")


def test_index_choice_and_prefixed_index(database, namespace):
    ns = namespace
    db = database
    reverse = EqualIndex.configure(prefix="rev", transform=lambda value: value[::-1])

    class Person(RedisModel):
        database = db
        namespace = ns
        name = StringField(indexable=True, indexes=[EqualIndex, TextRangeIndex, reverse])

    Person(name="bar")
    Person(name="foo")
    Person(name="foobar")
    collection = Person.collection()
    indexes = Person.get_field("name")._indexes
    assert collection._parse_filter_key("name")[0] is indexes[0]  # first index handling the suffix
    assert collection._parse_filter_key("name__gt")[0] is indexes[1]
    assert collection._parse_filter_key("name__rev")[0] is indexes[2]
    assert set(Person.collection(name__rev="rab")) == {"1"}
    assert set(Person.collection(name__rev__eq="oof")) == {"2"}
    assert set(Person.collection(name__rev__in=["oof", "raboof"])) == {"2", "3"}
    assert set(Person.collection(name__startswith="foo")) == {"2", "3"}
    assert set(Person.collection(name__gt="bar", name__lte="foobar")) == {"2", "3"}


def test_model_instance_as_value_of_plain_field_is_not_special(database, namespace):
    Boat = boats(database, namespace)
    boat = Boat(1)
    # the base manager does not understand instances: the value is used as given
    assert list(Boat.collection(launched=boat)) == []


# ---------------------------------------------------------------------- evaluation: sequences and counts


def test_sequence_all(database, namespace, redis_settings, count_commands):
    Boat = boats(database, namespace)
    client = raw_client(redis_settings)
    with command_log(client) as log:
        assert set(Boat.collection()) == {"1", "2", "3", "4"}
    assert log == ["SMEMBERS %s:boat:collection" % namespace]
    with count_commands(1):
        list(Boat.collection())


def test_sequence_one_filter(database, namespace, redis_settings, count_commands):
    Boat = boats(database, namespace)
    client = raw_client(redis_settings)
    with command_log(client) as log:
        assert set(Boat.collection(power="sail")) == {"1", "2", "3"}
    assert log == ["SMEMBERS %s:boat:power:sail" % namespace]
    with count_commands(1):
        assert len(list(Boat.collection(power="sail").instances(lazy=True))) == 3
    with count_commands(1 + 3):
        assert len(list(Boat.collection(power="sail").instances())) == 3
    with count_commands(1):
        assert list(Boat.collection(power="sail").sort()) == ["1", "2", "3"]
    with count_commands(1):
        assert len(Boat.collection(power="sail")) == 3
    with count_commands(1):
        assert bool(Boat.collection(power="engine"))
    with count_commands(1):
        assert not Boat.collection(power="none")


def test_sequence_two_filters(database, namespace, redis_settings, count_commands):
    Boat = boats(database, namespace)
    client = raw_client(redis_settings)
    before = keys_of(client)
    with command_log(client) as log:
        assert list(Boat.collection(power="sail", launched=1966)) == ["3"]
    n = namespace
    assert log == [
        "EXISTS %s:boat:__collection__:final:<a>" % n,
        "SINTERSTORE %s:boat:__collection__:final:<a> %s:boat:launched:1966 %s:boat:power:sail" % (n, n, n),
        "SMEMBERS %s:boat:__collection__:final:<a>" % n,
        "DEL %s:boat:__collection__:final:<a>" % n,
    ]
    with command_log(client) as log:
        assert list(Boat.collection(power="sail", launched=1966).sort(by="-length")) == ["3"]
    assert log[2] == "SORT %s:boat:__collection__:final:<a> BY %s:boat:*:length DESC" % (n, n)
    with count_commands(4):
        list(Boat.collection(power="sail", launched=1966).sort())
    assert keys_of(client) == before


def test_sequence_pk_and_filter(database, namespace, redis_settings, count_commands):
    Boat = boats(database, namespace)
    client = raw_client(redis_settings)
    n = namespace
    with command_log(client) as log:
        assert list(Boat.collection(pk=1, power="sail")) == ["1"]
    assert log == [
        "SISMEMBER %s:boat:collection 1" % n,
        "EXISTS %s:boat:__collection__:tmp:<a>" % n,
        "SADD %s:boat:__collection__:tmp:<a> 1" % n,
        "EXISTS %s:boat:__collection__:final:<b>" % n,
        "SINTERSTORE %s:boat:__collection__:final:<b> %s:boat:__collection__:tmp:<a> %s:boat:power:sail"
        % (n, n, n),
        "DEL %s:boat:__collection__:tmp:<a>" % n,
        "SMEMBERS %s:boat:__collection__:final:<b>" % n,
        "DEL %s:boat:__collection__:final:<b>" % n,
    ]
    with count_commands(8):
        assert list(Boat.collection(pk=4, power="sail")) == []
    with count_commands(1):  # the pk does not exist: nothing else
        assert list(Boat.collection(pk=5, power="sail")) == []
    assert temporary_keys(client) == []


def test_sequence_equal_in(database, namespace, redis_settings, count_commands):
    Boat = boats(database, namespace)
    client = raw_client(redis_settings)
    n = namespace
    with command_log(client) as log:
        assert set(Boat.collection(launched__in=[1898, 1966])) == {"1", "3"}
    assert log == [
        "EXISTS %s:boat:__index__:equalindex:tmp:<a>" % n,
        "SUNIONSTORE %s:boat:__index__:equalindex:tmp:<a> %s:boat:launched:1898 %s:boat:launched:1966"
        % (n, n, n),
        "SMEMBERS %s:boat:__index__:equalindex:tmp:<a>" % n,
        "DEL %s:boat:__index__:equalindex:tmp:<a>" % n,
    ]
    with count_commands(0):  # empty `in` alone
        assert list(Boat.collection(launched__in=[])) == []
    with count_commands(0):
        assert len(Boat.collection(launched__in=[])) == 0
    assert temporary_keys(client) == []


def test_empty_in_with_other_filters_is_empty(database, namespace, redis_settings):
    """Decision C5: upstream ignored the empty `in` and returned all sail boats."""
    Boat = boats(database, namespace)
    client = raw_client(redis_settings)
    assert list(Boat.collection(launched__in=[], power="sail")) == []
    assert list(Boat.collection(power="sail", launched__in=[])) == []
    assert len(Boat.collection(power="sail", launched__in=[])) == 0
    assert list(Boat.collection(launched__in=[1898, 1964], name__in=[])) == []
    assert list(Boat.collection(pk=1, launched__in=[])) == []
    assert len(Boat.collection(pk=1, launched__in=[])) == 0
    assert Boat.collection(launched__in=[1898, 1964], name__in=[])[0:2] == []
    assert temporary_keys(client) == []


def _range_model(db, ns):
    class P(RedisModel):
        database = db
        namespace = ns
        value = StringField(indexable=True, indexes=[NumberRangeIndex])
        cat = StringField(indexable=True)
        name = StringField(indexable=True, indexes=[TextRangeIndex])

    for value, cat, name in (
        (-15, "a", "foo"),
        (-25, "a", "bar"),
        (30, "b", "foobar"),
        (30, "a", "foobar"),
        (123, "b", "qux"),
    ):
        P(value=value, cat=cat, name=name)
    return P


def test_range_filters_sequences(database, namespace, redis_settings, count_commands):
    P = _range_model(database, namespace)
    client = raw_client(redis_settings)
    n = namespace
    assert set(P.collection(value__gt=-15)) == {"3", "4", "5"}  # also loads the script
    assert set(P.collection(name__gte="z")) == set()
    with command_log(client) as log:
        assert set(P.collection(value__gte=-15, cat="a")) == {"1", "4"}
    assert log == [
        "EXISTS %s:p:__index__:numberrangeindex:tmp:<a>" % n,
        "EVALSHA <sha> 2 %s:p:value:number-range %s:p:__index__:numberrangeindex:tmp:<a>" % (n, n),
        "EXISTS %s:p:__collection__:final:<b>" % n,
        "SINTERSTORE %s:p:__collection__:final:<b> %s:p:__index__:numberrangeindex:tmp:<a> %s:p:cat:a"
        % (n, n, n),
        "DEL %s:p:__index__:numberrangeindex:tmp:<a>" % n,
        "SMEMBERS %s:p:__collection__:final:<b>" % n,
        "DEL %s:p:__collection__:final:<b>" % n,
    ]
    with command_log(client) as log:
        assert set(P.collection(value__lte=30)) == {"1", "2", "3", "4"}
    assert [entry.split(" ")[0] for entry in log] == ["EXISTS", "EVALSHA", "SMEMBERS", "DEL"]
    with count_commands(1):  # empty range `in` alone: the EXISTS of the temporary key
        assert list(P.collection(value__in=[])) == []
    with command_log(client) as log:
        assert set(P.collection(value__in=(30, 123, 0))) == {"3", "4", "5"}
    assert [entry.split(" ")[0] for entry in log] == (
        ["EXISTS"] + ["EXISTS", "EVALSHA"] * 3 + ["SUNIONSTORE"] + ["DEL"] * 3 + ["SMEMBERS", "DEL"]
    )
    with count_commands(13 + 5):  # 13 client commands; Lua: 3 ZRANGEBYSCORE, 2 SADD (no match for 0)
        assert set(P.collection(value__in=(30, 123, 0))) == {"3", "4", "5"}
    assert set(P.collection(value__gt=-25, value__lte=30, cat="a", name__lte="fooa")) == {"1"}
    assert temporary_keys(client) == []


def test_len_then_retrieval_reuses_the_final_key(database, namespace, redis_settings, count_commands):
    Boat = boats(database, namespace)
    client = raw_client(redis_settings)
    n = namespace
    collection = Boat.collection(power="sail", launched__in=[1898, 1966, 1955])
    with command_log(client) as log:
        assert len(collection) == 2
    assert log == [
        "EXISTS %s:boat:__index__:equalindex:tmp:<a>" % n,
        "SUNIONSTORE %s:boat:__index__:equalindex:tmp:<a> %s:boat:launched:1898 %s:boat:launched:1955 "
        "%s:boat:launched:1966" % (n, n, n, n),
        "EXISTS %s:boat:__collection__:final:<b>" % n,
        "SINTERSTORE %s:boat:__collection__:final:<b> %s:boat:__index__:equalindex:tmp:<a> %s:boat:power:sail"
        % (n, n, n),
        "DEL %s:boat:__index__:equalindex:tmp:<a>" % n,
        "SCARD %s:boat:__collection__:final:<b>" % n,
        "EXPIRE %s:boat:__collection__:final:<b> 300" % n,
    ]
    [final_key] = temporary_keys(client)
    assert collection._final_set == final_key and collection._final_set_deletable is True
    assert 0 < client.ttl(final_key) <= 300
    with command_log(client) as log:
        assert set(collection) == {"1", "3"}
    assert log == [
        "EXPIRE %s:boat:__collection__:final:<a> 300" % n,
        "SMEMBERS %s:boat:__collection__:final:<a>" % n,
        "DEL %s:boat:__collection__:final:<a>" % n,
    ]
    assert temporary_keys(client) == []
    assert collection._final_set is None

    two = Boat.collection(power="sail", launched=1966)
    with count_commands(4):  # EXISTS, SINTERSTORE, SCARD, EXPIRE
        assert len(two) == 1
    with count_commands(3):  # EXPIRE, SMEMBERS, DEL
        assert set(two) == {"3"}
    with count_commands(0):
        assert len(two) == 1 and list(two) == ["3"]

    single = Boat.collection(power="sail")
    with count_commands(1):
        assert len(single) == 3
    with count_commands(1):
        assert set(single) == {"1", "2", "3"}


def test_count_mode_key_gone_is_rebuilt(database, namespace, redis_settings, count_commands):
    Boat = boats(database, namespace)
    client = raw_client(redis_settings)
    collection = Boat.collection(power="sail", launched=1966).sort(by="length")
    assert len(collection) == 1
    client.delete(collection._final_set)
    with command_log(client) as log:
        assert list(collection) == ["3"]
    assert [entry.split(" ")[0] for entry in log] == ["EXPIRE", "EXISTS", "SINTERSTORE", "SORT", "DEL"]
    assert temporary_keys(client) == []


def test_count_never_sorts(database, namespace):
    Boat = boats(database, namespace)
    collection = Boat.collection(power="sail").sort(by="name")  # numeric sort of names fails
    assert len(collection) == 3
    message = r"^One or more scores can't be converted into double$"  # Redis' own message, as is
    with pytest.raises(redis.exceptions.ResponseError, match=message):
        list(collection)
    with pytest.raises(redis.exceptions.ResponseError, match=message):  # temporary final key
        list(Boat.collection(power="sail", launched__in=[1898, 1964]).sort(by="name"))
    with pytest.raises(redis.exceptions.ResponseError, match=message):
        Boat.collection(power="sail", launched__in=[1898, 1964]).sort(by="name")[0]


def test_empty_count_mode_key(database, namespace, redis_settings):
    """An empty intersection creates no key: the retrieval after len() rebuilds (and finds nothing)."""
    Boat = boats(database, namespace)
    client = raw_client(redis_settings)
    collection = Boat.collection(power="engine", launched=1966)
    assert len(collection) == 0
    with command_log(client) as log:
        assert list(collection) == []
    assert [entry.split(" ")[0] for entry in log] == ["EXPIRE", "EXISTS", "SINTERSTORE", "SMEMBERS", "DEL"]


# ---------------------------------------------------------------------- sorting


def test_sort_by_fields(database, namespace):
    Boat = boats(database, namespace)
    assert list(Boat.collection().sort(by="length")) == ["2", "1", "3", "4"]
    assert list(Boat.collection().sort(by="-length")) == ["4", "3", "1", "2"]
    assert list(Boat.collection().sort(by="name", alpha=True)) == ["1", "2", "3", "4"]
    assert list(Boat.collection().sort(by="-name", alpha=True)) == ["4", "3", "2", "1"]
    assert list(Boat.collection().sort(by="power", alpha=True))[0] == "4"  # engine < sail
    assert list(Boat.collection().sort(by="-power", alpha=True))[-1] == "4"
    assert list(Boat.collection().sort(by="pk")) == ["1", "2", "3", "4"]
    assert list(Boat.collection().sort(by="-pk")) == ["4", "3", "2", "1"]
    assert list(Boat.collection().sort(desc=True)) == ["4", "3", "2", "1"]
    assert list(Boat.collection(power="sail").sort(by="-length")) == ["3", "1", "2"]


def test_sort_coercion(database, namespace):
    Boat = boat_model(database, namespace)
    n = namespace
    assert Boat.collection().sort(by="length")._sort == {"by": "%s:boat:*:length" % n}
    assert Boat.collection().sort(by="-length")._sort == {"by": "%s:boat:*:length" % n, "desc": True}
    assert Boat.collection().sort(by="power")._sort == {"by": "%s:boat:*:hash->power" % n}
    assert Boat.collection().sort(by="pk", alpha=True)._sort == {"alpha": True}
    assert Boat.collection().sort(by="-pk")._sort == {"desc": True}
    assert Boat.collection().sort(by="nosort")._sort == {"by": "nosort"}
    assert Boat.collection().sort(by="-nosort")._sort == {"by": "nosort", "desc": True}  # C6
    assert Boat.collection().sort(by="raw:*:key")._sort == {"by": "raw:*:key"}
    assert Boat.collection().sort()._sort == {}
    # sort() replaces any previous sort (no merge)
    assert Boat.collection().sort(by="-length", alpha=True).sort(by="name")._sort == {
        "by": "%s:boat:*:name" % n
    }


def test_sort_by_hash_field_of_other_pk_name(database, namespace):
    ns = namespace
    db = database

    class Singer(RedisModel):
        database = db
        namespace = ns
        id = PKField()
        name = InstanceHashField(indexable=True)

    for pk, name in (
        (1, "Jacques Higelin"),
        (2, "Jacques Brel"),
        (3, "Alain Bashung"),
        (4, "Gérard Blanchard"),
    ):
        Singer(id=pk, name=name)
    assert list(Singer.collection().sort(by="name", alpha=True)) == ["3", "4", "2", "1"]
    assert list(Singer.collection().sort(by="-id")) == ["4", "3", "2", "1"]


def test_sort_numeric_and_alpha_pks(database, namespace):
    ns = namespace
    db = database

    class Item(RedisModel):
        database = db
        namespace = ns
        id = PKField()
        tag = StringField(indexable=True)

    for pk in (2, 1, 10):
        Item(id=pk, tag="x")
    assert list(Item.collection().sort()) == ["1", "2", "10"]
    assert list(Item.collection().sort(alpha=True)) == ["1", "10", "2"]
    for pk in (8123, 8674, 7402, 87):
        Item(id=pk, tag="y")
    assert list(Item.collection(tag="y").sort()) == ["87", "7402", "8123", "8674"]


def test_sort_on_non_numeric_pks(database, namespace, redis_settings, count_commands):
    ns = namespace
    db = database

    class Person(RedisModel):
        database = db
        namespace = ns
        id = PKField()
        name = StringField(indexable=True)

    Person(id="joe", name="Joe")
    Person(id="jack", name="Jack")
    client = raw_client(redis_settings)
    with pytest.raises(redis.exceptions.ResponseError):
        list(Person.collection().sort())
    with pytest.raises(redis.exceptions.ResponseError):  # kept (K): a window on an unsorted collection
        Person.collection()[0]
    assert list(Person.collection().sort(alpha=True)) == ["jack", "joe"]
    assert Person.collection().sort(alpha=True)[-1] == "joe"
    # C8: with a pk filter the retrieval does not depend on the pk type
    with count_commands(1):
        assert list(Person.collection(pk="joe").sort()) == ["joe"]
    with count_commands(8):
        assert list(Person.collection(pk="joe", name="Joe").sort(by="-pk")) == ["joe"]
    assert Person.collection(pk="joe", name="Joe").sort()[0] == "joe"
    assert Person.collection(pk="joe").sort()[-1:] == ["joe"]
    # an error during SORT deletes the final key
    with pytest.raises(redis.exceptions.ResponseError):
        list(Person.collection(name__in=["Joe", "Jack"]).sort(by="name"))
    assert temporary_keys(client) == []


def test_sort_argument_errors(database, namespace, count_commands):
    Boat = boat_model(database, namespace)
    with count_commands(0):
        with pytest.raises(
            TypeError, match=r"Unexpected argument\(s\) order to sort\(\) on a collection of .*Boat"
        ):
            Boat.collection().sort(order="length")
        with pytest.raises(TypeError, match=r"The `by` argument of sort\(\) .* must be"):
            Boat.collection().sort(by=3)


def test_sort_with_get_and_limits_pass_through(database, namespace):
    Boat = boats(database, namespace)
    n = namespace
    assert list(Boat.collection().sort(by="length", get="%s:boat:*:name" % n)) == [
        "Pen Duick II",
        "Pen Duick I",
        "Pen Duick III",
        "Rainbow Warrior I",
    ]
    assert list(Boat.collection().sort(start=1, num=2)) == ["2", "3"]


def test_instances_and_primary_keys_independent_of_sort_order(database, namespace):
    Boat = boats(database, namespace)
    a = Boat.collection().sort(by="-length").instances()
    b = Boat.collection().instances().sort(by="-length")
    assert [boat._pk for boat in a] == [boat._pk for boat in b] == ["4", "3", "1", "2"]
    assert list(a.primary_keys()) == ["4", "3", "1", "2"]
    assert list(b.primary_keys().sort(by="length")) == ["2", "1", "3", "4"]


# ---------------------------------------------------------------------- caching and protocol


def test_caching(database, namespace, count_commands):
    Boat = boats(database, namespace)
    collection = Boat.collection(power="sail").sort()
    with count_commands(1):  # list() = __iter__ then __len__ answered from the cache
        assert list(collection) == ["1", "2", "3"]
    with count_commands(0):
        assert len(collection) == 3 and bool(collection)
        assert list(collection) == ["1", "2", "3"] and set(collection) == {"1", "2", "3"}
        assert collection[1] == "2" and collection[-1] == "3" and collection[5:10] == []
        assert list(collection[::-1]) == ["3", "2", "1"]
        assert repr(collection) == "<CollectionManager ['1', '2', '3']>"
    Boat(name="new", launched=2000)  # sail by default
    with count_commands(0):  # no invalidation
        assert list(collection) == ["1", "2", "3"]
    with count_commands(1):
        assert list(collection.clone()) == ["1", "2", "3", "5"]


def test_len_cache_and_clone(database, namespace, count_commands):
    """C3: a clone adding filters forgets the length; sort/instances/primary_keys clones keep it."""
    Boat = boats(database, namespace)
    collection = Boat.collection()
    assert len(collection) == 4
    with count_commands(1):
        assert len(collection(power="engine")) == 1
    with count_commands(0):
        assert len(collection.sort(by="length")) == 4
        assert len(collection.instances()) == 4
        assert len(collection.primary_keys()) == 4
        assert len(collection.clone()) == 4
    with count_commands(1):
        assert len(collection.sort()(power="sail")) == 3


def test_len_mode_false_fetches(database, namespace, count_commands):
    Boat = boats(database, namespace)
    collection = Boat.collection(power="sail", launched=1966)
    collection._len_mode = False
    with count_commands(4):  # EXISTS, SINTERSTORE, SMEMBERS, DEL
        assert len(collection) == 1
    with count_commands(0):
        assert list(collection) == ["3"]


def test_iteration_returns_collection_results(database, namespace):
    Boat = boats(database, namespace)
    results = iter(Boat.collection().sort())
    assert isinstance(results, CollectionResults)
    assert results.data == ["1", "2", "3", "4"] and results.func is None and results.length == 4
    assert next(results) == "1"
    assert [boat for boat in Boat.collection().sort()] == ["1", "2", "3", "4"]


def test_equality(database, namespace, count_commands):
    Boat = boats(database, namespace)
    collection = Boat.collection().sort()
    with count_commands(1):
        assert collection == ["1", "2", "3", "4"]
    assert collection != ["4", "3", "2", "1"]
    assert collection == {"4", "3", "2", "1"}
    assert collection != {"1"}
    assert collection == CollectionResults(["1", "2", "3", "4"])
    assert collection != CollectionResults(["1", "2"])
    assert collection != ("1", "2", "3", "4")
    assert collection != "1234"
    assert Boat.collection().sort().instances() == [Boat(1), Boat(2), Boat(3), Boat(4)]
    with pytest.raises(TypeError):
        hash(collection)
    with pytest.raises(TypeError):
        {collection}


def test_repr(database, namespace, monkeypatch, count_commands):
    Boat = boats(database, namespace)
    with count_commands(1):
        assert repr(Boat.collection().sort()) == "<CollectionManager ['1', '2', '3', '4']>"
    monkeypatch.setattr(CollectionResults, "MAX_REPR_ITEMS", 2)
    assert (
        repr(Boat.collection().sort())
        == "<CollectionManager ['1', '2', '... (2 remaining elements truncated)...']>"
    )
    assert repr(Boat.collection(pk=1)) == "<CollectionManager ['1']>"
    assert repr(Boat.collection(pk=9)) == "<CollectionManager []>"
    text = repr(Boat.collection(pk=2).instances())
    assert text.startswith("<CollectionManager [<") and "(pk=2)>]>" in text

    class Sub(CollectionManager):
        pass

    assert repr(Boat.collection(manager=Sub, pk=1)) == "<Sub ['1']>"


# ---------------------------------------------------------------------- instances


def test_instances(database, namespace, redis_settings, count_commands):
    Boat = boats(database, namespace)
    client = raw_client(redis_settings)
    client.sadd("%s:boat:power:sail" % namespace, 9999)  # a pk that does not exist
    collection = Boat.collection(power="sail").sort()
    with count_commands(1 + 4):
        instances = list(collection.instances())
    assert [boat._pk for boat in instances] == ["1", "2", "3"]
    assert all(isinstance(boat, Boat) and boat.connected for boat in instances)
    with count_commands(1):
        lazy = list(collection.instances(lazy=True))
    assert [boat._pk for boat in lazy] == ["1", "2", "3", "9999"]
    assert not any(boat.connected for boat in lazy)
    assert len(collection.instances()) == 4  # lengths count pks
    with pytest.raises(DoesNotExist):
        collection.instances()[3]
    with pytest.raises(DoesNotExist):
        collection.instances()[-1]
    assert [boat._pk for boat in collection.instances()[1:]] == ["2", "3"]
    cached = collection.instances()
    assert len(list(cached)) == 3
    with pytest.raises(DoesNotExist):
        cached[3]
    assert cached[0]._pk == "1"
    assert Boat.instances(power="engine") == [Boat(4)]
    assert [boat._pk for boat in Boat.instances(lazy=True, pk=9999)] == []


def test_instances_double_slicing(database, namespace):
    Boat = boats(database, namespace)
    collection = Boat.collection().sort().instances()
    first = collection[1:]
    assert isinstance(first, CollectionResults)
    assert isinstance(first[1], Boat) and first[1]._pk == "3"
    second = first[1:]
    assert type(second) is list and [boat._pk for boat in second] == ["3", "4"]
    assert Boat.collection().sort()[1:][1] == "3"


# ---------------------------------------------------------------------- CollectionResults


def test_collection_results_protocol():
    def convert(entry):
        if entry == "x":
            raise DoesNotExist("gone")
        return int(entry)

    results = CollectionResults(["1", "x", "3"], convert)
    assert (len(results), bool(results), results.length) == (3, True, 3)
    assert not CollectionResults([])
    assert list(results) == [1, 3]
    assert next(results) == 1
    assert next(results) == 3
    with pytest.raises(StopIteration):
        next(results)
    with pytest.raises(StopIteration):
        next(results)
    assert list(results) == [1, 3]  # a fresh iterator
    iter(results)  # resets the cursor
    assert next(results) == 1
    assert results[0] == 1 and results[-1] == 3
    with pytest.raises(DoesNotExist):
        results[1]
    with pytest.raises(IndexError):
        results[3]
    assert results[0:3] == [1, 3] and type(results[0:3]) is list
    assert results[::-1] == [3, 1]
    with pytest.raises(TypeError):
        results["a"]
    assert results == [1, 3] and results == {1, 3}
    assert results == CollectionResults(["1", "x", "3"]) and results != CollectionResults(["1"])
    assert results != (1, 3)
    with pytest.raises(TypeError):
        hash(results)
    plain = CollectionResults(["1", "2"])
    assert plain.func is None and plain[1] == "2" and list(plain) == ["1", "2"]


def test_collection_results_repr(monkeypatch):
    assert repr(CollectionResults(["1", "2", "3", "4"])) == "<CollectionResults ['1', '2', '3', '4']>"
    monkeypatch.setattr(CollectionResults, "MAX_REPR_ITEMS", 2)
    assert repr(CollectionResults(["1", "2", "3", "4"])) == (
        "<CollectionResults ['1', '2', '... (2 remaining elements truncated)...']>"
    )
    assert repr(CollectionResults(["1", "2"])) == "<CollectionResults ['1', '2']>"
    assert repr(CollectionResults([])) == "<CollectionResults []>"


# ---------------------------------------------------------------------- model API built on collections


def test_model_get(database, namespace, redis_settings, count_commands):
    Boat = boats(database, namespace)
    with count_commands(3):  # SCARD, SORT BY nosort LIMIT 0 1, SISMEMBER
        boat = Boat.get(power="engine")
    assert boat._pk == "4"
    assert Boat.get(name="Pen Duick II", power="sail")._pk == "2"
    assert Boat.get(pk=1, power="sail")._pk == "1"
    with count_commands(1):
        assert Boat.get(pk=3)._pk == "3"
    with pytest.raises(DoesNotExist, match=r"^No object matching filter: "):
        Boat.get(power="none")
    with pytest.raises(DoesNotExist):
        Boat.get(pk=4, power="sail")
    with pytest.raises(ValueError, match=r"^More than one object matching filter: "):
        Boat.get(power="sail")
    assert temporary_keys(raw_client(redis_settings)) == []


def test_model_exists(database, namespace, count_commands):
    Boat = boats(database, namespace)
    with count_commands(1):
        assert Boat.exists(power="engine") is True
    with count_commands(1):
        assert Boat.exists(power="none") is False
    assert Boat.exists(power="sail", launched=1966) is True
    assert Boat.exists(power="engine", launched=1966) is False
    assert Boat.exists(pk=1, launched=1898) is True
    assert Boat.exists(pk=1, launched=1966) is False
    assert Boat.exists(launched__in=[]) is False


def test_model_get_or_connect(database, namespace):
    Boat = boats(database, namespace)
    boat, created = Boat.get_or_connect(name="Pen Duick I")
    assert (boat._pk, created) == ("1", False)
    boat, created = Boat.get_or_connect(name="Pen Duick VI", launched=1973)
    assert (boat._pk, created) == ("5", True)
    assert Boat.get_or_connect(name="Pen Duick VI", launched=1973) == (Boat(5), False)
    with pytest.raises(ValueError):
        Boat.get_or_connect(power="sail")


def test_empty_collection_index_raises_index_error(database, namespace):
    Boat = boat_model(database, namespace)
    with pytest.raises(IndexError):
        Boat.collection()[0]
    with pytest.raises(IndexError):
        Boat.collection(power="sail").sort(by="nosort")[0]
    assert list(Boat.instances()) == []


# ---------------------------------------------------------------------- temporary keys and errors


class _ZsetOnlyIndex(EqualIndex):
    """An index returning a temporary sorted set, which the base manager cannot intersect."""

    supported_key_types = {"set", "zset"}

    def get_filtered_keys(self, suffix, *args, **kwargs):
        key = self._unique_key("tmp")
        self.connection.zadd(key, {"1": 1})
        return [(key, "zset", True)]


class _FailingIndex(EqualIndex):
    """An index failing after the other filters made their temporary keys."""

    def get_filtered_keys(self, suffix, *args, **kwargs):
        raise RuntimeError("boom")


def test_no_temporary_key_left_after_errors(database, namespace, redis_settings):
    ns = namespace
    db = database

    class Thing(RedisModel):
        database = db
        namespace = ns
        name = StringField(indexable=True)
        zfield = StringField(indexable=True, indexes=[_ZsetOnlyIndex])
        broken = StringField(indexable=True, indexes=[_FailingIndex])

    Thing(name="a", zfield="z", broken="b")
    Thing(name="b", zfield="z", broken="b")
    client = raw_client(redis_settings)
    before = keys_of(client)
    with pytest.raises(
        ValueError, match=r"^The index key returned by the index .*_ZsetOnlyIndex.* is not valid"
    ):
        list(Thing.collection(name__in=["a", "b"], zfield="z"))
    assert keys_of(client) == before
    with pytest.raises(ValueError):
        len(Thing.collection(zfield="z"))
    assert keys_of(client) == before
    with pytest.raises(RuntimeError, match="boom"):
        list(Thing.collection(name__in=["a", "b"], pk=1, broken="b"))
    with pytest.raises(RuntimeError, match="boom"):
        Thing.collection(name__in=["a", "b"], broken="b")[0]
    assert keys_of(client) == before
    assert list(Thing.collection(name__in=["a", "b"], pk=2).sort(by="name")) == ["2"]  # pk: SMEMBERS
    with pytest.raises(redis.exceptions.ResponseError):
        list(Thing.collection(name__in=["a", "b"]).sort(by="name"))
    assert keys_of(client) == before


def test_no_temporary_key_left_after_sort_error(database, namespace, redis_settings):
    Boat = boats(database, namespace)
    client = raw_client(redis_settings)
    before = keys_of(client)
    for collection in (
        Boat.collection(power="sail", launched__in=[1898, 1964]).sort(by="name"),
        Boat.collection(launched__in=[1898, 1964]).sort(by="name"),
        Boat.collection(pk=1, launched__in=[1898, 1964])
        .sort(by="name")
        .instances()(power="sail")
        .sort(by="name", desc=True),
    ):
        if collection._lazy_collection["pks"]:  # C8: no SORT with a pk filter, so no error
            assert list(collection)[0]._pk == "1"
            continue
        with pytest.raises(redis.exceptions.ResponseError):
            list(collection)
        assert keys_of(client) == before
        with pytest.raises(redis.exceptions.ResponseError):
            collection[0]
        assert keys_of(client) == before
        with pytest.raises(redis.exceptions.ResponseError):
            collection[1:3]
        assert keys_of(client) == before
    counted = Boat.collection(power="sail", launched__in=[1898, 1964]).sort(by="name")
    assert len(counted) == 2  # keeps the final key 300 s
    with pytest.raises(redis.exceptions.ResponseError):
        list(counted)
    assert keys_of(client) == before


# ---------------------------------------------------------------------- multi-field indexes


class _PairIndex(_MultiFieldsIndexMixin, EqualIndex):
    """A test multi-field index: serves ``first`` and ``second`` filtered together (equality)."""

    key = "pair"
    calls: list = []

    def _can_filter_fields(self, fields_and_suffixes):
        names = {name for name, suffix in fields_and_suffixes if suffix in (None, "eq")}
        if {"first", "second"} <= names and self.field.name == "first":
            return [("first", {None, "eq"}), ("second", {None, "eq"})]
        return []

    def get_filtered_keys(self, suffix, *args, **kwargs):
        related = kwargs["related_filters"]
        type(self).calls.append((suffix, args, related))
        other = related["second"][0][-1]
        return [(self.model.make_key(self.model._name, "pair", args[-1], other), "set", False)]


def test_multi_field_index_resolution(database, namespace, redis_settings):
    ns = namespace
    db = database

    class Duo(RedisModel):
        database = db
        namespace = ns
        first = StringField(indexable=True, indexes=[_PairIndex, EqualIndex])
        second = StringField(indexable=True, indexes=[_PairIndex])
        third = StringField(indexable=True)

    client = raw_client(redis_settings)
    client.sadd("%s:duo:pair:a:b" % namespace, "1", "2")
    client.sadd("%s:duo:collection" % namespace, "1", "2", "3")
    client.sadd("%s:duo:third:x" % namespace, "2", "3")
    assert [type(index) for index in Duo._multi_fields_index_for_filtering] == [_PairIndex, _PairIndex]
    # a filter whose only index is multi-field is accepted when added...
    collection = Duo.collection(second="b")
    assert collection._lazy_collection["sets"][0].index.filter_single_field is False
    # ... and refused at evaluation, without any key left
    with pytest.raises(
        ImplementationError, match=r'^No index found to manage filter "second" for field Duo\.second'
    ):
        list(collection)
    with pytest.raises(ImplementationError, match=r'^No index found to manage filter "second__eq"'):
        len(Duo.collection(second__eq="b", third="x"))
    assert temporary_keys(client) == []
    _PairIndex.calls = []
    assert set(Duo.collection(first="a", second="b")) == {"1", "2"}
    assert _PairIndex.calls == [(None, ("a",), {"second": (["b"], None)})]
    assert set(Duo.collection(first="a", second__eq="b", third="x")) == {"2"}
    assert set(Duo.collection(first="a")) == set()  # served by its EqualIndex


# ---------------------------------------------------------------------- overridable hooks


def test_overridden_hooks_are_called_with_the_same_commands(database, namespace, redis_settings):
    """Subclasses overriding the command hooks see every call; the commands sent stay the same."""
    calls = []

    class Traced(CollectionManager):
        def _combine_sets(self, sets, final_key):
            calls.append(("combine", sorted(sets)))
            return super()._combine_sets(sets, final_key)

        def _final_redis_call(self, final_set, sort_options):
            calls.append(("retrieve", sort_options))
            return super()._final_redis_call(final_set, sort_options)

        def _collection_length(self, final_set):
            calls.append(("length", final_set))
            return super()._collection_length(final_set)

    Boat = boats(database, namespace)
    client = raw_client(redis_settings)
    logs = []
    for manager in (CollectionManager, Traced):
        collection = Boat.collection(manager=manager, power="sail", launched__in=[1898, 1966]).sort(
            by="-length"
        )
        with command_log(client) as log:
            assert len(collection) == 2
            assert list(collection) == ["3", "1"]
            assert list(Boat.collection(manager=manager, power="sail", launched__in=[1898, 1966])[0:1]) == [
                "1"
            ]
        logs.append(log)
    assert logs[0] == logs[1]
    assert [entry.split(" ")[0] for entry in logs[0]] == [
        "EXISTS",
        "SUNIONSTORE",
        "EXISTS",
        "SINTERSTORE",
        "DEL",
        "SCARD",
        "EXPIRE",  # len()
        "EXPIRE",
        "SORT",
        "DEL",  # list()
        "EXISTS",
        "SUNIONSTORE",
        "EXISTS",
        "SINTERSTORE",
        "DEL",
        "SORT",
        "DEL",  # [0:1]
    ]
    n = namespace
    assert [name for name, _ in calls] == ["combine", "length", "retrieve", "combine", "retrieve"]
    assert calls[2] == ("retrieve", {"by": "%s:boat:*:length" % n, "desc": True})
    assert calls[4] == ("retrieve", {"start": 0, "num": 1})
    assert temporary_keys(client) == []


def test_final_set_ttl_is_a_class_attribute(database, namespace, redis_settings):
    class Short(CollectionManager):
        FINAL_SET_TTL = 50

    Boat = boats(database, namespace)
    client = raw_client(redis_settings)
    collection = Boat.collection(manager=Short, power="sail", launched__in=[1898, 1966])
    assert len(collection) == 2
    assert 40 < client.ttl(collection._final_set) <= 50
    with command_log(client) as log:
        assert set(collection) == {"1", "3"}
    assert log[0] == "EXPIRE %s:boat:__collection__:final:<a> 50" % namespace


def test_sort_limits_never_outlive_a_window(database, namespace):
    seen = []

    class Spy(CollectionManager):
        def _prepare_sort_options(self, has_pk):
            options = super()._prepare_sort_options(has_pk)
            seen.append((dict(self._sort_limits or {}), self._sort_limits_reverse, options))
            return options

    Boat = boats(database, namespace)
    collection = Boat.collection(manager=Spy).sort(by="length")
    assert collection[-1] == "4"
    assert (collection._sort_limits, collection._sort_limits_reverse) == (None, False)
    assert collection._sort == {"by": "%s:boat:*:length" % namespace}  # C1: not flipped
    assert list(collection) == ["2", "1", "3", "4"]
    assert seen == [
        (
            {"start": 0, "num": 1},
            True,
            {"by": "%s:boat:*:length" % namespace, "start": 0, "num": 1, "desc": True},
        ),
        ({}, False, {"by": "%s:boat:*:length" % namespace}),
    ]
