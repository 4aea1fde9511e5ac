"""``limpyd.contrib.related``, part 1: related fields, instances as values, reverse side, deletion.

docs/contrib.rst, "Related models" (definitions, related names, lazy references and ``use_database`` are in
``test_contrib_related_definitions.py``; downstream extension points in
``test_contrib_related_extensions.py``).
"""

from __future__ import annotations

import copy

import pytest
from _redis_dump import PUSHX_TAKES_SEVERAL_VALUES, command_log, dump, layout, locked
from redis.exceptions import DataError

from limpyd.collection import CollectionManager
from limpyd.contrib import related
from limpyd.contrib.collection import ExtendedCollectionManager
from limpyd.contrib.related import (
    FKInstanceHashField,
    FKStringField,
    M2MListField,
    M2MSetField,
    M2MSortedSetField,
    MultiValuesRelatedFieldMixin,
    RelatedCollection,
    RelatedFieldMetaclass,
    RelatedFieldMixin,
    RelatedModel,
    SimpleValueRelatedFieldMixin,
)
from limpyd.exceptions import DoesNotExist, UniquenessError
from limpyd.fields import (
    InstanceHashField,
    ListField,
    MetaRedisProxy,
    PKField,
    SetField,
    SortedSetField,
    StringField,
)
from limpyd.indexes import EqualIndex, TextRangeIndex
from limpyd.model import RedisModel


@pytest.fixture
def RBase(database, namespace):
    """Return an abstract ``RelatedModel`` on the test database and namespace."""
    db, ns = database, namespace

    class RBase(RelatedModel):
        database = db
        namespace = ns
        abstract = True

    return RBase


@pytest.fixture
def league(RBase):
    """Return ``(Player, Team)``: Team has every kind of related field pointing to Player."""

    class Player(RBase):
        id = PKField()
        name = StringField()

    class Team(RBase):
        id = PKField()
        city = StringField(indexable=True)
        captain = FKInstanceHashField(Player, related_name="captained_teams")
        coach = FKStringField(Player, related_name="coached_teams")
        players = M2MSetField(Player, related_name="teams")
        lineup = M2MListField(Player, related_name="lineups")
        ranking = M2MSortedSetField(Player, related_name="rankings")

    return Player, Team


# ---------------------------------------------------------------------- module and classes


def test_public_names():
    for name in (
        "RelatedModel",
        "RelatedCollection",
        "FKStringField",
        "FKInstanceHashField",
        "M2MSetField",
        "M2MListField",
        "M2MSortedSetField",
        "re_identifier",
        "RelatedFieldMetaclass",
        "RelatedFieldMixin",
        "SimpleValueRelatedFieldMixin",
        "MultiValuesRelatedFieldMixin",
    ):
        assert hasattr(related, name), name
    assert related.re_identifier.pattern == r"\W"
    assert related.re_identifier.sub("_", "shop-v2.x") == "shop_v2_x"


def test_class_hierarchy():
    assert issubclass(RelatedModel, RedisModel) and RelatedModel.abstract is True
    assert RelatedModel.collection_manager is ExtendedCollectionManager
    assert issubclass(RelatedFieldMetaclass, MetaRedisProxy)
    for field_class, base, mixin in (
        (FKStringField, StringField, SimpleValueRelatedFieldMixin),
        (FKInstanceHashField, InstanceHashField, SimpleValueRelatedFieldMixin),
        (M2MSetField, SetField, MultiValuesRelatedFieldMixin),
        (M2MListField, ListField, MultiValuesRelatedFieldMixin),
        (M2MSortedSetField, SortedSetField, MultiValuesRelatedFieldMixin),
    ):
        assert issubclass(field_class, base) and issubclass(field_class, mixin)
        assert issubclass(mixin, RelatedFieldMixin)
        assert type(field_class) is RelatedFieldMetaclass
        assert field_class.related_collection_class is RelatedCollection
        # the command sets are exactly the base field's
        assert field_class.available_getters == base.available_getters
        assert field_class.available_modifiers == base.available_modifiers
    assert (
        M2MSetField._related_remover,
        M2MListField._related_remover,
        M2MSortedSetField._related_remover,
    ) == ("srem", "lrem", "zrem")
    assert not hasattr(FKStringField, "_related_remover") and not hasattr(
        FKInstanceHashField, "_related_remover"
    )


def test_to_is_mandatory():
    for field_class in (FKStringField, FKInstanceHashField, M2MSetField, M2MListField, M2MSortedSetField):
        with pytest.raises(TypeError, match="to"):
            field_class()
        with pytest.raises(TypeError, match="to"):
            field_class(related_name="x")


def test_field_options_and_attributes_before_attachment(RBase):
    field = M2MSetField("Player", related_name="%(model)s_members", indexable=False, lockable=False)
    assert field.indexable is True  # forced, even against indexable=False
    assert field.related_to == "Player" and field.related_name == "%(model)s_members"
    assert field.lockable is False and field.index_classes == []
    assert not hasattr(field, "_model") and not hasattr(field, "_instance")
    unique = FKStringField("Player", unique=True)
    assert unique.unique and unique.indexable and unique.related_name is None


def test_default_index_and_attributes_after_attachment(league, namespace):
    Player, Team = league
    for name in ("captain", "coach", "players", "lineup", "ranking"):
        field = Team.get_field(name)
        assert field.indexable and field.index_classes == [EqualIndex]
        assert field.related_to == namespace + ":player"
        assert isinstance(field.get_index(), EqualIndex)
    assert Team.get_field("players").related_name == "teams"


def test_copies_keep_to_and_related_name(league, namespace):
    Player, Team = league
    field = Team.get_field("players")
    clone = copy.copy(field)
    assert type(clone) is M2MSetField
    assert clone.related_to == namespace + ":player" and clone.related_name == "teams"
    assert clone.indexable and clone.index_classes == [EqualIndex] and clone.name == "players"
    assert ("to", "related_to") in M2MSetField._copy_conf[
        "kwargs"
    ] and "related_name" in M2MSetField._copy_conf["kwargs"]
    team = Team(id="t")
    assert team.players.related_to == namespace + ":player" and team.players.related_name == "teams"
    assert team.players._model is Team and team.players._instance is team


# ---------------------------------------------------------------------- key layout


def test_key_layout(league, client, namespace):
    """The key layout of related fields (docs/contrib.rst: FK hash, FK string, M2M set/list/zset and their indexes)."""
    Player, Team = league
    p1, p2 = Player(id="p1"), Player(id="p2")
    Team(id="t1", players=[p1, p2], captain=p1, coach="p2", lineup=[p1, p2, p1], ranking={p1: 2, "p2": 1.5})
    Team(id="t2", captain="p1")
    ns = namespace
    assert layout(client) == {
        ns + ":player:collection": ("set", {"p1", "p2"}),
        ns + ":team:collection": ("set", {"t1", "t2"}),
        ns + ":team:t1:players": ("set", {"p1", "p2"}),
        ns + ":team:players:p1": ("set", {"t1"}),
        ns + ":team:players:p2": ("set", {"t1"}),
        ns + ":team:t1:hash": ("hash", {"captain": "p1"}),
        ns + ":team:t2:hash": ("hash", {"captain": "p1"}),
        ns + ":team:captain:p1": ("set", {"t1", "t2"}),
        ns + ":team:t1:coach": ("string", "p2"),
        ns + ":team:coach:p2": ("set", {"t1"}),
        ns + ":team:t1:lineup": ("list", ["p1", "p2", "p1"]),
        ns + ":team:lineup:p1": ("set", {"t1"}),
        ns + ":team:lineup:p2": ("set", {"t1"}),
        ns + ":team:t1:ranking": ("zset", [("p2", 1.5), ("p1", 2.0)]),
        ns + ":team:ranking:p1": ("set", {"t1"}),
        ns + ":team:ranking:p2": ("set", {"t1"}),
    }


def test_relations_registry(league, database, namespace):
    Player, Team = league
    n = namespace
    assert database._relations == {
        n + ":player": [
            (n + ":team", "captain", "captained_teams"),
            (n + ":team", "coach", "coached_teams"),
            (n + ":team", "players", "teams"),
            (n + ":team", "lineup", "lineups"),
            (n + ":team", "ranking", "rankings"),
        ]
    }


# ---------------------------------------------------------------------- instances instead of pks


def test_from_python(league):
    Player, Team = league
    p1 = Player(id="p1")
    team = Team(id="t", coach=p1, captain="p1")
    for name in ("captain", "coach", "players", "lineup", "ranking"):
        field = team.get_field(name)
        assert field.from_python(p1) == "p1"
        assert field.from_python(Player.lazy_connect("p9")) == "p9"
        assert (
            field.from_python("p2") == "p2" and field.from_python(3) == 3 and field.from_python(None) is None
        )
        assert field.from_python(b"p3") == "p3"  # bytes decoded, as the base from_python does
        assert (
            field.from_python(team.coach) == "p1" and field.from_python(team.captain) == "p1"
        )  # bound FK: its value
        assert field.from_python_many(p1, "x", team.coach) == ["p1", "x", "p1"]
        assert Team.get_field(name).from_python(p1) == "p1"  # model-level fields convert too
    # a model-level FK field is not a value: left unchanged
    assert team.players.from_python(Team.get_field("coach")) is Team.get_field("coach")
    # indexes normalise through from_python: instances are accepted there too
    assert Team.get_field("captain").get_index().get_storage_key(p1) == Team._name + ":captain:p1"


def test_fk_string_commands_accept_instances(league, client):
    Player, Team = league
    p1, p2, p3 = Player(id="p1"), Player(id="p2"), Player(id="p3")
    team = Team(id="t")
    assert team.coach.set(p1) is True and team.coach.get() == "p1"
    assert team.coach.set(value=p2) is True and team.coach.get() == "p2"
    assert team.coach.getset(p3) == "p2" and team.coach.get() == "p3"
    assert team.coach.setnx(p1) is False and team.coach.get() == "p3"
    team.coach.delete()
    assert team.coach.setnx(value=p1) is True and team.coach.get() == "p1"
    assert client.smembers(Team._name + ":coach:p1") == {"t"}
    assert not client.exists(Team._name + ":coach:p2") and not client.exists(Team._name + ":coach:p3")


def test_fk_hash_commands_accept_instances(league, client):
    Player, Team = league
    p1, p2 = Player(id="p1"), Player(id="p2")
    team = Team(id="t")
    assert team.captain.hset(p1) == 1 and team.captain.hget() == "p1"
    assert team.captain.hset(value=p2) == 0 and team.captain.hget() == "p2"
    assert team.captain.hsetnx(p1) == 0
    other = Team(id="u")
    assert other.captain.hsetnx(value=p1) == 1
    assert client.smembers(Team._name + ":captain:p2") == {"t"}
    assert client.smembers(Team._name + ":captain:p1") == {"u"}
    # the value of another instance's FK field (read when converted)
    assert other.captain.hset(team.captain) == 0 and other.captain.hget() == "p2"


def test_m2m_set_commands_accept_instances(league, client):
    Player, Team = league
    p1, p2, p3 = Player(id="p1"), Player(id="p2"), Player(id="p3")
    team = Team(id="t")
    assert team.players.sadd(p1, p2, "p3") == 3
    assert (
        team.players.sismember(p1) and team.players.sismember(value=p3) and not team.players.sismember("p9")
    )
    assert team.players.srem(p2, "p9") == 1
    assert team.players.smembers() == {"p1", "p3"}
    assert client.smembers(Team._name + ":players:p1") == {"t"} and not client.exists(
        Team._name + ":players:p2"
    )
    assert team.players.proxy_set([p2]) == 1 and team.players.proxy_get() == {"p1", "p2", "p3"}


def test_m2m_list_commands_accept_instances(league, client):
    Player, Team = league
    p1, p2, p3, p4 = (Player(id="p%d" % i) for i in range(1, 5))
    team = Team(id="t")
    assert team.lineup.lpushx(p1) == 0 and team.lineup.rpushx(p1) == 0  # nothing to push into yet
    assert team.lineup.rpush(p1, p2) == 2
    assert team.lineup.lpush(p3) == 3
    if PUSHX_TAKES_SEVERAL_VALUES:
        assert team.lineup.lpushx(p4) == 4 and team.lineup.rpushx(p4, p1) == 6  # every value converted
    else:
        assert team.lineup.lpushx(p4) == 4 and team.lineup.rpushx(p4) == 5 and team.lineup.rpushx(p1) == 6
    assert team.lineup.lmembers() == ["p4", "p3", "p1", "p2", "p4", "p1"]
    assert team.lineup.linsert("BEFORE", p2, p3) == 7  # the pivot is converted too (decision)
    assert team.lineup.lmembers() == ["p4", "p3", "p1", "p3", "p2", "p4", "p1"]
    assert team.lineup.lrem(0, p4) == 2
    assert team.lineup.lset(0, p2) is True
    assert team.lineup.lmembers() == ["p2", "p1", "p3", "p2", "p1"]
    assert team.lineup.lrank(p3) == 2 and team.lineup.lcount(p1) == 2 and team.lineup.lcontains(p2)
    assert not team.lineup.lcontains(p4)
    assert not client.exists(Team._name + ":lineup:p4")
    assert {p: client.smembers(Team._name + ":lineup:" + p) for p in ("p1", "p2", "p3")} == {
        "p1": {"t"},
        "p2": {"t"},
        "p3": set(),
    }  # lset overwrote a p3: deindexed (the 2.x behaviour of lset on an indexed list)


def test_m2m_sortedset_commands_accept_instances(league, client):
    Player, Team = league
    p1, p2, p3 = Player(id="p1"), Player(id="p2"), Player(id="p3")
    team = Team(id="t")
    mapping = {p1: 1.0, p2: 2}
    assert team.ranking.zadd(mapping) == 2
    assert mapping == {"p1": 1.0, "p2": 2}  # rewritten in place, as coerce_zadd_args does
    assert team.ranking.zadd(mapping={p3: 3}) == 1
    assert team.ranking.zadd({p3: 4}, values_callback=None) == 0  # an explicit None still converts
    assert team.ranking.zadd({p1: 5}, True) == 1  # ch
    assert team.ranking.zadd(mapping={p1: 6}, ch=True) == 1
    assert team.ranking.zscore(p1) == 6.0 and team.ranking.zscore(value=p3) == 4.0
    assert (
        team.ranking.zrank(p2) == 0 and team.ranking.zrevrank(p1) == 0 and team.ranking.zrank(value=p3) == 1
    )
    assert team.ranking.zincrby(10, p2) == 12.0
    assert team.ranking.zrem(p3, "p9") == 1
    assert team.ranking.zrange(0, -1, withscores=True) == [("p1", 6.0), ("p2", 12.0)]
    assert client.smembers(Team._name + ":ranking:p2") == {"t"} and not client.exists(
        Team._name + ":ranking:p3"
    )
    # a callable given by the caller replaces from_python_many
    assert team.ranking.zadd({"a": 1}, values_callback=lambda *keys: [k.upper() for k in keys]) == 1
    assert team.ranking.zscore("A") == 1.0
    assert team.ranking.zadd(p1=7) == 0 and team.ranking.zscore(p1) == 7.0  # keyword form


def test_creation_values_accept_instances(league, client):
    Player, Team = league
    p1, p2 = Player(id="p1"), Player(id="p2")
    Team(id="t", captain=p1, coach=p2, players=(p1, p2), lineup=[p2, p1, p2], ranking={p1: 1, p2: 2})
    team = Team("t")
    assert (team.captain.hget(), team.coach.get()) == ("p1", "p2")
    assert team.players.smembers() == {"p1", "p2"} and team.lineup.lmembers() == ["p2", "p1", "p2"]
    assert team.ranking.zrange(0, -1, withscores=True) == [("p1", 1.0), ("p2", 2.0)]
    # the value of another instance's FK field
    Team(id="u", coach=team.coach, captain=team.captain)
    assert (Team("u").coach.get(), Team("u").captain.hget()) == ("p2", "p1")


def test_filters_accept_instances(league):
    Player, Team = league
    p1, p2, p3 = Player(id="p1"), Player(id="p2"), Player(id="p3")
    Team(id="t1", captain=p1, coach=p1, players=[p1, p2], city="x")
    Team(id="t2", captain=p2, coach=p1, players=[p2, p3], city="y")
    assert set(Team.collection(captain=p1)) == {"t1"}
    assert set(Team.collection(coach=p1)) == {"t1", "t2"}
    assert set(Team.collection(players=p2)) == {"t1", "t2"}
    assert set(Team.collection(players=p2, city="y")) == {"t2"}
    assert set(Team.collection(players__in=[p1, p3])) == {"t1", "t2"}
    assert set(Team.collection(captain__in=[p2, "p3"])) == {"t2"}
    assert set(Team.collection(players=p3, captain=p1)) == set()


def test_unique_fk(RBase):
    class Person(RBase):
        id = PKField()

    class Desk(RBase):
        owner = FKStringField(Person, unique=True)

    alice = Person(id="alice")
    Desk(owner=alice)
    with pytest.raises(UniquenessError):
        Desk(owner="alice")
    desk = Desk()
    with pytest.raises(UniquenessError):
        desk.owner.set(alice)
    assert desk.owner.get() is None and len(Desk.collection(owner=alice)) == 1


# ---------------------------------------------------------------------- conversion costs no command


def test_conversion_sends_the_base_commands(league, client, namespace):
    """A related field sends exactly the commands of its base field (instances cost nothing)."""
    Player, Team = league
    p1 = Player(id="p1")
    team = Team(id="t")
    n = namespace + ":team"
    with command_log(client) as log:
        team.players.sadd(p1)
    assert log == locked(
        n + ":lock-for-update:players", ["SADD %s:players:p1 t" % n, "SADD %s:t:players p1" % n]
    )
    with command_log(client) as log:
        team.captain.hset(p1)
    assert log == locked(
        n + ":lock-for-update:captain",
        ["HGET %s:t:hash captain" % n, "SADD %s:captain:p1 t" % n, "HSET %s:t:hash captain p1" % n],
    )
    with command_log(client) as log:
        team.ranking.zadd({p1: 3})
    assert log == locked(
        n + ":lock-for-update:ranking", ["SADD %s:ranking:p1 t" % n, "ZADD %s:t:ranking 3 p1" % n]
    )
    with command_log(client) as log:
        assert team.players.sismember(p1)
    assert log == ["SISMEMBER %s:t:players p1" % n]


def test_unsaved_or_bad_values_write_nothing(league, client):
    """A value Redis cannot store is refused: nothing is half-written (the lock may come and go)."""
    Player, Team = league
    p1 = Player(id="p1")
    team = Team(id="t", players=[p1])
    before = dump(client)
    unsaved = Player()  # no pk yet: its _pk is None
    with pytest.raises(DataError, match="Team.players"):
        team.players.sadd("p2", unsaved)
    with pytest.raises(DataError, match="Team.coach"):
        team.coach.set(unsaved)
    with pytest.raises(DataError, match="Team.ranking"):
        team.ranking.zadd({p1: 1, "p2": object()})
    with pytest.raises(DataError, match="Team.lineup"):
        team.lineup.rpush(p1, unsaved)
    with pytest.raises(DataError):
        Team(id="u", players=[p1, object()])
    with pytest.raises(DataError):
        Team(id="u", captain=p1, ranking={p1: 1, object(): 2})
    with pytest.raises(DataError):
        Team(id="u", coach=unsaved)
    assert dump(client) == before
    deleted = Player(id="gone")
    deleted.delete()
    before = dump(client)
    with pytest.raises(AttributeError):
        team.players.sadd(deleted)
    assert dump(client) == before


def test_failed_unique_creation_writes_nothing(RBase, client):
    class Person(RBase):
        id = PKField()

    class Desk(RBase):
        owner = FKStringField(Person, unique=True)
        visitors = M2MSetField(Person, related_name="visited_desks")

    alice = Person(id="alice")
    Desk(owner=alice, visitors=[alice])
    before = dump(client)
    with pytest.raises(UniquenessError):
        Desk(visitors=[alice], owner=alice)
    assert dump(client) == before


# ---------------------------------------------------------------------- FK instance() and M2M collections


def test_fk_instance(league, count_commands):
    Player, Team = league
    p1 = Player(id="p1")
    team = Team(id="t", captain=p1, coach=p1)
    for field in (team.captain, team.coach):
        with count_commands(2):  # the read, then the existence check
            instance = field.instance()
        assert type(instance) is Player and instance._pk == "p1" and instance.connected
        with count_commands(1):
            lazy = field.instance(lazy=True)
        assert type(lazy) is Player and lazy._pk == "p1" and not lazy.connected
    empty = Team(id="e")
    with pytest.raises(DoesNotExist, match="^No Player found with pk None$"):
        empty.coach.instance()
    assert empty.captain.instance(lazy=True)._pk == "None"
    # a FK whose target was deleted
    team.coach.set("p9")
    with pytest.raises(DoesNotExist):
        team.coach.instance()


def test_m2m_collections(league):
    Player, Team = league
    p1, p2, p3 = Player(id="p1", name="a"), Player(id="p2", name="b"), Player(id="p3", name="a")
    team = Team(id="t", players=[p1, p2, p3], lineup=[p3, p1, p3], ranking={p2: 1, p3: 2})
    players = team.players()
    assert isinstance(players, ExtendedCollectionManager) and players.model is Player
    assert set(players) == {"p1", "p2", "p3"}
    assert set(team.players.collection()) == {"p1", "p2", "p3"}
    assert [p._pk for p in team.players().instances().sort(alpha=True)] == ["p1", "p2", "p3"]
    assert set(team.lineup()) == {"p1", "p3"}
    assert set(team.ranking()) == {"p2", "p3"}
    assert set(Team(id="empty").players()) == set()


def test_m2m_collections_with_filters(league):
    Player, Team = league
    p1, p2, p3 = Player(id="p1", name="a"), Player(id="p2", name="b"), Player(id="p3", name="a")
    team = Team(id="t", players=[p1, p2], lineup=[p2, p3], ranking={p1: 1, p3: 2})
    assert set(team.players(pk="p2")) == {"p2"}
    assert set(team.players.collection(pk="p3")) == set()
    assert set(team.lineup(id="p3")) == {"p3"} and set(team.ranking(pk="p3")) == {"p3"}


def test_m2m_collection_uses_the_target_manager(RBase):
    class Manager(ExtendedCollectionManager):
        pass

    class Player(RBase):
        collection_manager = Manager

    class Team(RBase):
        players = M2MSetField(Player)

    player = Player()
    player.pk.get()
    team = Team(players=[player])
    collection = team.players()
    assert type(collection) is Manager and list(collection) == [player._pk]


def test_m2m_collection_of_pks_not_in_the_target(league):
    Player, Team = league
    team = Team(id="t", players=["ghost"])
    Player(id="p1")
    assert team.players.smembers() == {"ghost"}
    assert list(team.players()) == []  # the intersection keeps only existing targets


# ---------------------------------------------------------------------- reverse side


def test_reverse_collections(league, count_commands):
    Player, Team = league
    p1, p2 = Player(id="p1"), Player(id="p2")
    Team(id="t1", city="x", captain=p1, coach=p2, players=[p1, p2], lineup=[p1], ranking={p2: 1})
    Team(id="t2", city="y", captain=p1, players=[p1])
    with count_commands(1):
        p1 = Player("p1")
    assert p1.related_collections == ["captained_teams", "coached_teams", "teams", "lineups", "rankings"]
    for name in p1.related_collections:
        reverse = getattr(p1, name)
        assert type(reverse) is RelatedCollection and reverse.instance is p1
        assert reverse.related_field is Team.get_field(reverse.related_field.name)  # the model-level field
    with count_commands(0):
        collection = p1.teams(city="y")
    assert isinstance(collection, ExtendedCollectionManager) and collection.model is Team
    assert set(collection) == {"t2"}
    assert set(p1.teams()) == {"t1", "t2"} and set(p1.captained_teams()) == {"t1", "t2"}
    assert set(p1.coached_teams()) == set() and set(p2.coached_teams()) == {"t1"}
    assert set(p1.lineups()) == {"t1"} and set(p2.rankings()) == {"t1"} and set(p1.rankings()) == set()
    # the field's own filter is overridden by the instance
    assert set(p2.teams(players="p1")) == {"t1"} == set(Team.collection(players=p2._pk))
    assert [t._pk for t in p1.teams().instances().sort(alpha=True)] == ["t1", "t2"]


def test_reverse_collections_on_every_kind_of_instance(league):
    Player, Team = league
    Team(id="t", players=["p1"])
    Player(id="p1")
    for instance in (Player.lazy_connect("p1"), Player("p1"), Player.get(id="p1"), Player(id="p2"), Player()):
        assert instance.related_collections == [
            "captained_teams",
            "coached_teams",
            "teams",
            "lineups",
            "rankings",
        ]
        assert type(instance.teams) is RelatedCollection
    assert set(Player.lazy_connect("p1").teams()) == {"t"}
    # not on the owner model, nor on a model that is not a target
    assert Team(id="u").related_collections == [] and not hasattr(Team(id="v"), "teams")


def test_related_model_without_relations(database, namespace):
    db, ns = database, namespace

    class Alone(RelatedModel):
        database = db
        namespace = ns
        name = StringField(indexable=True)

    assert db._relations == {}  # declared on every database, filled only by related fields
    alone = Alone(name="x")
    assert alone.related_collections == []
    assert list(Alone.collection(name="x")) == [alone._pk]
    alone.delete()
    assert list(Alone.collection()) == []


def test_reverse_side_on_a_plain_model_target(RBase, database, namespace):
    """A relation to a RedisModel that is not a RelatedModel: stored, but no reverse collection."""
    db, ns = database, namespace

    class Plain(RedisModel):
        database = db
        namespace = ns

    class Owner(RBase):
        plain = FKStringField(ns + ":plain", related_name="owners")

    plain = Plain()
    plain.pk.get()
    owner = Owner(plain=plain)
    assert owner.plain.get() == plain._pk and not hasattr(plain, "owners")
    assert owner.plain.instance() == plain


# ---------------------------------------------------------------------- deletion rules


def test_delete_removes_the_instance_from_every_relation(league, client, namespace):
    Player, Team = league
    p1, p2 = Player(id="p1"), Player(id="p2")
    Team(id="t1", captain=p1, coach=p1, players=[p1, p2], lineup=[p1, p2, p1, p1], ranking={p1: 1, p2: 2})
    Team(id="t2", captain=p2, coach=p1, players=[p1], lineup=[p1])
    p1.delete()
    n = namespace + ":team"
    assert layout(client) == {
        namespace + ":player:collection": ("set", {"p2"}),
        n + ":collection": ("set", {"t1", "t2"}),  # no cascade: the owners stay
        n + ":t1:players": ("set", {"p2"}),
        n + ":players:p2": ("set", {"t1"}),
        n + ":t1:lineup": ("list", ["p2"]),  # every occurrence removed (decision)
        n + ":lineup:p2": ("set", {"t1"}),
        n + ":t1:ranking": ("zset", [("p2", 2.0)]),
        n + ":ranking:p2": ("set", {"t1"}),
        n + ":t2:hash": ("hash", {"captain": "p2"}),
        n + ":captain:p2": ("set", {"t2"}),
    }
    with pytest.raises(DoesNotExist):
        Player("p1")
    assert Team("t1").coach.get() is None and Team("t2").lineup.lmembers() == []


def test_delete_command_sequence(league, client, namespace):
    """Exact commands of a deletion: per relation, lock + reverse filter + owner check + remover."""
    Player, Team = league
    p1 = Player(id="p1", name="x")
    Team(id="t1", players=[p1], captain=p1)
    Team(id="t2", captain=p1)
    p1 = Player("p1")
    n = namespace + ":team"
    with command_log(client) as log:
        p1.delete()
    expected_captain = []
    for t in sorted({"t1", "t2"}, key=lambda t: log.index("SISMEMBER %s:collection %s" % (n, t))):
        expected_captain += [
            "SISMEMBER %s:collection %s" % (n, t),
            "HGET %s:%s:hash captain" % (n, t),
            "SREM %s:captain:p1 %s" % (n, t),
            "HDEL %s:%s:hash captain" % (n, t),
        ]
    expected = (
        locked(n + ":lock-for-update:captain", ["SMEMBERS %s:captain:p1" % n] + expected_captain)
        + locked(n + ":lock-for-update:coach", ["SMEMBERS %s:coach:p1" % n])
        + locked(
            n + ":lock-for-update:players",
            [
                "SMEMBERS %s:players:p1" % n,
                "SISMEMBER %s:collection t1" % n,
                "SREM %s:players:p1 t1" % n,
                "SREM %s:t1:players p1" % n,
            ],
        )
        + locked(n + ":lock-for-update:lineup", ["SMEMBERS %s:lineup:p1" % n])
        + locked(n + ":lock-for-update:ranking", ["SMEMBERS %s:ranking:p1" % n])
        + ["DEL %s:player:p1:name" % namespace, "SREM %s:player:collection p1" % namespace]
    )
    assert log == expected


def test_delete_of_an_instance_nobody_points_to(league, client, count_commands):
    Player, Team = league
    Player(id="p1")
    p1 = Player("p1")
    with count_commands(5 * (4 + 1) + 2):  # per relation: lock + reverse filter; DEL name, SREM collection
        p1.delete()
    assert layout(client) == {}


def test_delete_then_owner_fields_are_consistent(league):
    Player, Team = league
    p1, p2 = Player(id="p1"), Player(id="p2")
    team = Team(id="t", players=[p1, p2], captain=p1)
    p1.delete()
    assert team.players.smembers() == {"p2"} and team.captain.hget() is None
    assert set(Team.collection(players="p1")) == set() and set(Team.collection(captain="p1")) == set()
    assert set(p2.teams()) == {"t"}
    team.delete()  # the owner's own related fields and their index entries go
    assert set(Team.collection(players="p2")) == set() and set(p2.teams()) == set()


def test_delete_owner_keeps_targets(league, client, namespace):
    Player, Team = league
    p1 = Player(id="p1")
    team = Team(id="t", players=[p1], captain=p1, coach=p1, lineup=[p1], ranking={p1: 1})
    team.delete()
    assert layout(client) == {namespace + ":player:collection": ("set", {"p1"})}
    assert Player("p1").connected


def test_self_relation_deletion(RBase, client, namespace):
    class Person(RBase):
        id = PKField()
        friends = M2MSetField("self", related_name="friend_of")
        mentor = FKStringField("self", related_name="mentees")

    a, b = Person(id="a"), Person(id="b")
    a.friends.sadd(a, b)
    b.friends.sadd(a)
    b.mentor.set(a)
    a.mentor.set(a)
    assert set(a.friend_of()) == {"a", "b"} and set(a.mentees()) == {"a", "b"}
    a.delete()
    n = namespace + ":person"
    assert layout(client) == {n + ":collection": ("set", {"b"})}


def test_delete_with_a_post_command_hook_sends_the_same_commands(RBase, client, namespace):
    """With a post_command of its own, a model keeps the one-by-one timing: same commands."""
    calls = []

    class Player(RBase):
        id = PKField()

    class Team(RBase):
        id = PKField()
        players = M2MSetField(Player, related_name="teams")

        def post_command(self, sender, name, result, args, kwargs):
            calls.append(name)
            return result

    class PlainTeam(RBase):
        id = PKField()
        players = M2MSetField(Player, related_name="plain_teams")

    p1 = Player(id="p1")
    Team(id="t", players=[p1])
    PlainTeam(id="t", players=[p1])
    with command_log(client) as log:
        Player("p1").delete()
    n, m = namespace + ":team", namespace + ":plainteam"
    assert log == (
        ["SISMEMBER %s:player:collection p1" % namespace]
        + locked(
            n + ":lock-for-update:players",
            [
                "SMEMBERS %s:players:p1" % n,
                "SISMEMBER %s:collection t" % n,
                "SREM %s:players:p1 t" % n,
                "SREM %s:t:players p1" % n,
            ],
        )
        + locked(
            m + ":lock-for-update:players",
            [
                "SMEMBERS %s:players:p1" % m,
                "SISMEMBER %s:collection t" % m,
                "SREM %s:players:p1 t" % m,
                "SREM %s:t:players p1" % m,
            ],
        )
        + ["SREM %s:player:collection p1" % namespace]
    )
    assert "srem" in calls


def test_remove_instance_directly(league, client):
    """``remove_instance`` alone (as downstream may call it): the owners' fields are cleaned, X stays."""
    Player, Team = league
    p1 = Player(id="p1")
    team = Team(id="t", players=[p1, "p2"], coach=p1)
    p1.teams.remove_instance()
    assert team.players.smembers() == {"p2"} and team.coach.get() == "p1"
    p1.coached_teams.remove_instance()
    assert team.coach.get() is None and Player("p1").connected
    assert not client.exists(Team._name + ":lock-for-update:players")


def test_remove_instance_with_a_stale_owner(league, client):
    """An index entry of an owner that does not exist: upstream's ``owner(pk)`` raises ``DoesNotExist``."""
    Player, Team = league
    p1 = Player(id="p1")
    client.sadd(Team._name + ":players:p1", "ghost")
    with pytest.raises(DoesNotExist):
        p1.teams.remove_instance()
    assert not client.exists(Team._name + ":lock-for-update:players")  # the lock was released


def test_related_collections_of_a_failed_creation(RBase, client, monkeypatch):
    """A creation failing with UniquenessError while writing (a concurrent writer took the value
    after the checks) is deleted from the constructor, before its reverse side exists."""

    class Person(RBase):
        id = PKField()
        email = StringField(unique=True)
        name = StringField()

    class Desk(RBase):
        owner = FKStringField(Person, related_name="desks")

    Person(id="a", email="x")
    before = dump(client)
    monkeypatch.setattr(
        StringField, "check_uniqueness", lambda self, value: None
    )  # the step-1 check misses it
    with pytest.raises(UniquenessError):
        Person(id="b", name="n", email="x")
    assert dump(client) == before


def test_collection_manager_default_is_extended(league):
    Player, Team = league
    assert Team.collection_manager is ExtendedCollectionManager
    assert not issubclass(CollectionManager, ExtendedCollectionManager)
    assert isinstance(Team.collection(), ExtendedCollectionManager)


def test_model_hmset_accepts_instances(RBase, client, namespace):
    """The instance-hash ``hmset`` of a RelatedModel converts the values of its related fields."""

    class Player(RBase):
        id = PKField()

    class Team(RBase):
        id = PKField()
        captain = FKInstanceHashField(Player, related_name="captained")
        label = InstanceHashField()

    p1 = Player(id="p1")
    team = Team(id="t", captain="p0")
    n = namespace + ":team"
    with command_log(client) as log:
        assert team.hmset(captain=p1, label="x") is True
    assert log == locked(
        n + ":lock-for-update:captain",
        [  # hmset locks the indexable fields it writes
            "HGET %s:t:hash captain" % n,
            "SREM %s:captain:p0 t" % n,
            "SADD %s:captain:p1 t" % n,
            "HSET %s:t:hash captain p1 label x" % n,
        ],
    )
    assert team.hmget("captain", "label") == ["p1", "x"] and list(p1.captained()) == ["t"]
    before = dump(client)
    with pytest.raises(DataError):
        team.hmset(captain=Player(), label="y")  # an instance without pk
    assert dump(client) == before
    with pytest.raises(AttributeError):
        team.hmset(captain=p1, unknown=1)
    assert dump(client) == before


def test_indexes_and_unique_options(RBase, client, namespace):
    """``indexes`` and ``unique`` work as on the base field (the field stays indexable)."""

    class Player(RBase):
        id = PKField()

    class Team(RBase):
        id = PKField()
        players = M2MSetField(Player, unique=True, related_name="team")
        bench = M2MListField(Player, indexes=[EqualIndex, TextRangeIndex], related_name="benches")

    p1, p2 = Player(id="p1"), Player(id="p2")
    team = Team(id="t", players=[p1], bench=[p2, "x9"])
    other = Team(id="u")
    before = dump(client)
    with pytest.raises(UniquenessError):
        other.players.sadd(p2, p1)  # a player belongs to one team at most
    assert dump(client) == before
    assert other.players.sadd(p2) == 1
    assert set(Team.collection(bench__startswith="p")) == {"t"} and set(Team.collection(bench=p2)) == {"t"}
    assert client.zrange(namespace + ":team:bench:text-range", 0, -1) == [
        "p2:TEXT-RANGE-SEPARATOR:t",
        "x9:TEXT-RANGE-SEPARATOR:t",
    ]
    p2.delete()
    assert other.players.smembers() == set() and team.bench.lmembers() == ["x9"]
    assert client.zrange(namespace + ":team:bench:text-range", 0, -1) == ["x9:TEXT-RANGE-SEPARATOR:t"]
