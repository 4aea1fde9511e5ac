"""Related fields to and from sharded models (docs/sharding.rst, "Related fields").

Every test using ``database`` runs on the private server (``single``) and on the private cluster
(``cluster``), most in both write modes (``default`` and ``atomic``). The same random data and
operations are given to a setup of 16-shard models and to the same setup with 1-shard models:
reverse collections (filters, sorts, slices, indexes, len, values, instances), FK reads, M2M
collections and deletions must give the same; the shared consistency checker is given the
shard classes.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
import redis
from test_sharding import (  # noqa: F401 - pytest_generate_tests: single server and cluster
    every_model,
    problems_of,
    pytest_generate_tests,
)

from limpyd import fields, resharding
from limpyd.contrib.collection import ExtendedCollectionManager
from limpyd.contrib.related import (
    FKInstanceHashField,
    FKStringField,
    M2MListField,
    M2MSetField,
    M2MSortedSetField,
    RelatedModel,
)
from limpyd.database import RedisDatabase
from limpyd.exceptions import DoesNotExist, ImplementationError
from limpyd.sharding import ShardedCollection

SHARDS = 16


def define(database, namespace, shards, atomic, match_shards=None):
    """Return ``(Player, Team, Match)``: Player and Match with ``shards``, Team unsharded.

    Team -> Player: unsharded to sharded (FK, M2M set); Match -> Team: sharded to unsharded (FK,
    M2M set); Match -> Player: sharded to sharded (FK, M2M list); Player -> Player: self (FK).
    """
    common = {"database": database, "namespace": namespace, "atomic_writes": atomic, "__module__": __name__}

    def make(model_name, /, **attrs):
        return type(RelatedModel)(model_name, (RelatedModel,), dict(common, **attrs))

    Player = make(
        "Player",
        shards=shards,
        name=fields.InstanceHashField(indexable=True),
        level=fields.StringField(indexable=True),
        mentor=FKStringField("self", related_name="mentees"),
    )
    Team = make(
        "Team",
        name=fields.InstanceHashField(indexable=True),
        captain=FKInstanceHashField(Player, related_name="captained_teams"),
        members=M2MSetField(Player, related_name="teams"),
    )
    Match = make(
        "Match",
        shards=shards if match_shards is None else match_shards,
        kind=fields.StringField(indexable=True),
        score=fields.InstanceHashField(indexable=True),
        team=FKStringField(Team, related_name="matches"),
        winner=FKInstanceHashField(Player, related_name="won_matches"),
        players=M2MListField(Player, related_name="played_matches"),
        referees=M2MSetField(Team, related_name="refereed_matches"),
    )
    return Player, Team, Match


def pair(database, namespace, atomic):
    """Return the models of :func:`define` in 16 shards and in 1 (different namespaces)."""
    return define(database, namespace, SHARDS, atomic), define(database, namespace + "one", 1, atomic)


def all_models(models):
    """Return every model of ``models`` and their shard classes (for the consistency checker)."""
    return [each for Model in models for each in every_model(Model)]


def problems(database, models):
    """Return what the consistency checker finds in ``models`` (and their shard classes).

    Left out: the final keys ``len()`` of a collection with several filters keeps, with a TTL,
    for its next retrieval (``CollectionManager.FINAL_SET_TTL``), which 1-shard models leave too.
    """
    found = problems_of(database, all_models(models))
    return [problem for problem in found if ":__collection__:final:" not in problem]


def populate(models, seed):
    """Create random players, teams and matches related every way, then change some relations."""
    Player, Team, Match = models
    rng = random.Random(seed)
    players = []
    for _ in range(40):
        values = {"name": "p%02d" % rng.randrange(15), "level": str(rng.randrange(4))}
        if players and rng.random() < 0.6:
            values["mentor"] = rng.choice(players)
        players.append(Player(**values))
    teams = []
    for n in range(8):
        values = {"name": "t%d" % (n % 3)}
        if rng.random() < 0.8:
            values["captain"] = rng.choice(players)
        members = rng.sample(players, rng.randrange(0, 6))
        if members:
            values["members"] = members
        teams.append(Team(**values))
    matches = []
    for _ in range(60):
        values = {"kind": rng.choice("abc"), "score": str(rng.randrange(-3, 10))}
        if rng.random() < 0.8:
            values["team"] = rng.choice(teams)
        if rng.random() < 0.8:
            values["winner"] = rng.choice(players).pk.get()  # a pk or an instance: the same
        played = [rng.choice(players) for _ in range(rng.randrange(0, 5))]  # a list: maybe twice
        if played:
            values["players"] = played
        referees = rng.sample(teams, rng.randrange(0, 3))
        if referees:
            values["referees"] = referees
        matches.append(Match(**values))
    for match in rng.sample(matches, 20):  # writes on existing instances (shard instances)
        operation = rng.randrange(5)
        if operation == 0:
            match.winner.hset(rng.choice(players))
        elif operation == 1:
            match.players.rpush(rng.choice(players), rng.choice(players))
        elif operation == 2:
            match.team.set(rng.choice(teams))
        elif operation == 3:
            match.referees.sadd(rng.choice(teams))
        else:
            match.hmset(winner=rng.choice(players), score=str(rng.randrange(-3, 10)))
    for player in rng.sample(players[1:], 8):
        player.mentor.set(rng.choice(players))
    for team in rng.sample(teams, 3):
        if team.members.smembers():
            team.members.srem(*team.members.smembers())
        team.members.sadd(*rng.sample(players, 3))
        team.captain.hset(rng.choice(players))
    return rng


def pks(Model):
    return sorted(Model.collection(), key=int)


def readings(models):
    """Return what every reader of the relations gives: reverse collections (filters, sorts,
    slices, indexes, len, values, instances), FK reads, M2M collections, stored values."""
    Player, Team, Match = models
    result = {}
    for pk in pks(Player):
        player = Player(pk)
        won = player.won_matches()
        mentor = player.mentor.get()
        result["player", pk] = {
            "captained": list(player.captained_teams().sort()),
            "teams": (list(player.teams().sort(by="-pk")), len(player.teams(name="t1"))),
            "won": (list(won.sort()), sorted(won), len(won), len(player.won_matches(kind="a"))),
            "won-sorted": (
                list(won.sort(by="score")),
                list(player.won_matches(kind__in=["a", "b"]).sort(by="-score")),
                list(won.sort(by="score")[1:3]),
                list(won.sort()[-2:]),
                won.sort(by="-score")[0] if len(won) else None,
                won.sort()[-1] if len(won) else None,
            ),
            "won-values": list(won.sort(by="score").values("kind", "score", "team")),
            "won-flat": list(player.won_matches(kind="b").sort().values_list("score", flat=True)),
            "won-instances": [(m.pk.get(), m.kind.get()) for m in won.sort(by="-score").instances()],
            "won-lazy": [m.pk.get() for m in won.sort().instances(lazy=True)],
            "direct": sorted(Match.collection(winner=pk, kind="c")),
            "played": (
                list(player.played_matches().sort()),
                list(player.played_matches(kind="c").sort(by="score")[0:2]),
                len(player.played_matches(team__in=["1", "2", "3"])),
            ),
            "mentees": (list(player.mentees().sort()), list(player.mentees(level="1").sort(by="-level"))),
            "mentor": (mentor, player.mentor.instance().pk.get() if mentor else None),
        }
    for pk in pks(Team):
        team = Team(pk)
        captain = team.captain.hget()
        result["team", pk] = {
            "matches": (
                list(team.matches().sort(by="-score")),
                list(team.matches(kind="a").sort()[:3]),
                len(team.matches()),
            ),
            "refereed": (list(team.refereed_matches().sort()), len(team.refereed_matches(kind="b"))),
            "members": (
                sorted(team.members()),
                list(team.members(level="1").sort()),
                list(team.members().sort(by="level")[:2]),
                len(team.members()),
                team.members.smembers(),
            ),
            "members-held": held(team, level="2"),
            "captain": (captain, team.captain.instance().pk.get() if captain else None),
        }
    for pk in pks(Match):
        match = Match(pk)
        winner, team = match.winner.hget(), match.team.get()
        result["match", pk] = {
            "winner": (winner, match.winner.instance().level.get() if winner else None),
            "winner-lazy": match.winner.instance(lazy=True).pk.get() if winner else None,
            "team": (team, match.team.instance().name.hget() if team else None),
            "players": (match.players.lrange(0, -1), sorted(match.players()), len(match.players(level="2"))),
            "referees": (match.referees.smembers(), list(match.referees().sort())),
        }
    return result


def held(team, **filters):
    """Return what the collection of the players held by ``team.members`` gives."""
    collection = team.members(**filters)
    return (
        sorted(collection),
        len(collection),
        list(collection.sort(by="-pk")[1:3]),
        list(collection.sort().values_list("name", "level")),
        [p.name.hget() for p in collection.sort(by="level").instances()],
    )


def delete_some(models, rng):
    """Delete random players (targets of every relation), teams and matches."""
    Player, Team, Match = models
    for pk in rng.sample(pks(Player), 12):
        Player(pk).delete()
    for pk in rng.sample(pks(Team), 3):
        Team(pk).delete()
    for pk in rng.sample(pks(Match), 10):
        Match(pk).delete()


@pytest.mark.parametrize("seed", [1, 2])
def test_sharded_and_unsharded_relations_read_the_same(database, namespace, atomic, seed):
    sharded, single = pair(database, namespace, atomic)
    rngs = [populate(models, seed) for models in (sharded, single)]
    before = readings(sharded)
    assert before == readings(single)
    # the relations are not empty: the comparison compares something
    assert sum(len(entry["won"][0]) for key, entry in before.items() if key[0] == "player") > 30
    assert sum(len(entry["matches"][0]) for key, entry in before.items() if key[0] == "team") > 30
    assert sum(len(entry["members"][0]) for key, entry in before.items() if key[0] == "team") > 10
    for models, rng in zip((sharded, single), rngs):
        delete_some(models, rng)
    after = readings(sharded)
    assert after == readings(single)
    assert after != before
    assert problems(database, sharded + single) == []


def test_relations_are_declared_once_for_the_sharded_model(database, namespace):
    common = {"database": database, "namespace": namespace, "__module__": __name__}
    # declared before its sharded target (by name), and after it
    Before = type(RelatedModel)(
        "Before", (RelatedModel,), dict(common, name=fields.StringField(), player=FKStringField("Player"))
    )
    Player = type(RelatedModel)(
        "Player",
        (RelatedModel,),
        dict(
            common,
            shards=4,
            name=fields.StringField(),
            before=FKStringField("Before", related_name="players"),
        ),
    )
    After = type(RelatedModel)(
        "After", (RelatedModel,), dict(common, shards=3, players=M2MSetField("Player", related_name="afters"))
    )
    relations = {target: sorted(entries) for target, entries in database._relations.items() if entries}
    assert relations == {
        Player._name.lower(): sorted(
            [(Before._name, "player", "before_set"), (After._name, "players", "afters")]
        ),
        Before._name.lower(): [(Player._name, "before", "players")],
    }
    assert not any("@" in owner for entries in relations.values() for owner, _, _ in entries)
    # a sharded RelatedModel keeps its extended manager on its shards; its collections are sharded
    assert Player.collection_manager is ExtendedCollectionManager
    assert Player.shard_model(2).collection_manager is ExtendedCollectionManager
    assert isinstance(Player.collection(), ShardedCollection)
    before = Before(name="b")
    player = Player(name="p", before=before)
    other = Player(name="o", before=before.pk.get())
    Before(name="c", player=player)
    after = After(players=[player, other])
    assert type(player) is Player.shard_model(Player.shard_of(player.pk.get()))
    assert sorted(player.related_collections) == ["afters", "before_set"]
    assert list(player.before_set()) == ["2"] and list(player.afters()) == [after.pk.get()]
    assert list(other.afters()) == [after.pk.get()] and list(other.before_set()) == []
    assert sorted(before.players()) == sorted([player.pk.get(), other.pk.get()])
    assert player.before.instance().pk.get() == before.pk.get()
    assert isinstance(before.players(), ShardedCollection) and isinstance(after.players(), ShardedCollection)
    assert sorted(after.players()) == sorted([player.pk.get(), other.pk.get()])
    before_pk = before.pk.get()
    before.delete()  # an unsharded target: its sharded owners lose it, in their shards
    assert player.before.get() is None and other.before.get() is None
    assert list(Player.collection(before=before_pk)) == []
    player.delete()
    assert after.players.smembers() == {other.pk.get()} and list(other.afters()) == [after.pk.get()]
    assert problems(database, [Before, Player, After]) == []


def test_fk_reads_build_the_instance_in_its_shard(database, namespace):
    Player, Team, Match = define(database, namespace, SHARDS, False)
    players = [Player(name="p%d" % n) for n in range(20)]
    team = Team(captain=players[7])
    matches = [Match(winner=player, team=team) for player in players]
    for player, match in zip(players, matches):
        pk = player.pk.get()
        for read in (
            match.winner.instance(),
            match.winner.instance(lazy=True),
            Match(match.pk.get()).winner.instance(),
        ):
            assert type(read) is Player.shard_model(Player.shard_of(pk)) and read.pk.get() == pk
            assert read.shard == Player.shard_of(pk) and isinstance(read, Player)
        assert match.team.instance().pk.get() == team.pk.get()
    assert team.captain.instance().shard == Player.shard_of(players[7].pk.get())
    assert len({player.shard for player in players}) > 5 and len({match.shard for match in matches}) > 5
    players[3].delete()
    with pytest.raises(DoesNotExist):
        Player(players[3].pk.get())
    assert matches[3].winner.hget() is None


def test_sorted_set_m2m_to_a_sharded_model(database, namespace):
    common = {"database": database, "namespace": namespace, "__module__": __name__}
    Player = type(RelatedModel)(
        "Player", (RelatedModel,), dict(common, shards=4, level=fields.StringField(indexable=True))
    )
    Ranking = type(RelatedModel)(
        "Ranking",
        (RelatedModel,),
        dict(
            common,
            shards=2,
            name=fields.StringField(),
            players=M2MSortedSetField(Player, related_name="rankings"),
        ),
    )
    players = [Player(level=str(n % 2)) for n in range(6)]
    ranking = Ranking(name="r", players={players[0]: 3, players[4]: 1})
    other = Ranking(name="o", players={players[4]: 2})
    # the reverse collection (the index of a sorted-set field) works
    assert list(players[4].rankings().sort()) == sorted([ranking.pk.get(), other.pk.get()], key=int)
    assert list(players[0].rankings()) == [ranking.pk.get()]
    # the collection of the players it holds: by score, as for an unsharded target
    assert list(ranking.players()) == [players[4].pk.get(), players[0].pk.get()]
    assert list(ranking.players(level="0")) == [players[4].pk.get(), players[0].pk.get()]
    assert (
        list(ranking.players().sort(by="-pk"))
        == sorted([players[4].pk.get(), players[0].pk.get()], key=int)[::-1]
    )
    assert ranking.players()[-1] == players[0].pk.get() and len(ranking.players()) == 2
    players[4].delete()
    assert ranking.players.zrange(0, -1, withscores=True) == [(players[0].pk.get(), 3.0)]
    assert list(other.players.zrange(0, -1)) == [] and list(players[0].rankings()) == [ranking.pk.get()]
    assert problems(database, [Player, Ranking]) == []


def test_extended_methods_of_a_sharded_reverse_collection(database, namespace):
    """What a sharded collection cannot do is refused clearly on a reverse collection too."""
    Player, Team, Match = define(database, namespace, SHARDS, False)
    player = Player(name="x")
    Match(winner=player, kind="a")
    with pytest.raises(ImplementationError) as excinfo:
        player.won_matches().sort(by="winner:*")
    assert "docs/sharding.rst" in str(excinfo.value) and "Match" in str(excinfo.value)


def test_deletion_takes_the_lock_of_each_shard_holding_owners(database, namespace):
    Player, Team, Match = define(database, namespace, SHARDS, False)
    player = Player(name="x")
    matches = [Match(winner=player) for _ in range(30)]
    number = matches[0].shard
    lock = Match.shard_model(number)._name + ":lock-for-update:winner"
    client = redis.Redis(**database.connection_settings) if not database.is_cluster else database.connection
    client.set(lock, "someone else", px=1200)  # a writer of the field in that shard
    pk = player.pk.get()
    started = time.monotonic()
    player.delete()
    assert time.monotonic() - started > 0.9  # waited for that shard's lock
    assert all(match.winner.hget() is None for match in matches)
    assert list(Match.collection(winner=pk)) == []


def test_concurrent_writers_and_deletions_leave_consistent_indexes(database, namespace, atomic):
    """Threads writing FKs to players while others delete players: every index stays consistent."""
    Player, Team, Match = define(database, namespace, SHARDS, atomic)
    players = [Player(name="p%d" % n) for n in range(30)]
    matches = [Match(kind="a") for _ in range(40)]
    player_pks = [player.pk.get() for player in players]
    errors = []

    def write(seed):
        rng = random.Random(seed)
        try:
            for _ in range(60):
                match = rng.choice(matches)
                match.winner.hset(rng.choice(player_pks))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for player in players[:10]:
        player.delete()
    for thread in threads:
        thread.join()
    assert errors == []
    assert problems(database, [Player, Match]) == []
    for pk in player_pks[10:]:
        owners = sorted(Match.collection(winner=pk), key=int)
        assert owners == sorted((m.pk.get() for m in matches if m.winner.hget() == pk), key=int)


@pytest.mark.parametrize(
    "model, source, target",
    [("match", 1, SHARDS), ("match", SHARDS, 5), ("match", SHARDS, 1), ("player", SHARDS, 5)],
    ids=["match-1-to-16", "match-16-to-5", "match-16-to-1", "player-16-to-5"],
)
def test_reshard_related_models(database, namespace, model, source, target):
    """A reshard moves instances with their relations: nothing pointing to them is lost."""
    player_shards = source if model == "player" else SHARDS
    match_shards = source if model == "match" else SHARDS
    models = define(database, namespace, player_shards, False, match_shards=match_shards)
    populate(models, 3)
    before = readings(models)
    Model = models[0] if model == "player" else models[2]
    resharding.reshard(Model, target)
    other = RedisDatabase(**database.connection_settings)
    if model == "player":
        moved = define(other, namespace, target, False, match_shards=SHARDS)
    else:
        moved = define(other, namespace, SHARDS, False, match_shards=target)
    assert readings(moved) == before
    assert problems(other, moved) == []


def test_each_kind_of_relation_once(database, namespace):
    Player, Team, Match = define(database, namespace, SHARDS, False)
    players = [Player(name="p%d" % n, level=str(n % 3)) for n in range(10)]
    team = Team(name="t", captain=players[1], members=[players[1], players[2], players[7]])
    match = Match(
        kind="a", score="3", team=team, winner=players[2], players=[players[2], players[3]], referees=[team]
    )
    assert list(players[1].captained_teams()) == [team.pk.get()]
    assert isinstance(players[2].won_matches(), ShardedCollection)
    assert list(players[2].won_matches()) == [match.pk.get()]
    assert list(team.matches()) == [match.pk.get()]
    assert sorted(team.members()) == ["2", "3", "8"]
    assert match.winner.instance().pk.get() == players[2].pk.get()
    players[2].delete()
    assert match.winner.hget() is None
    assert match.players.lrange(0, -1) == [players[3].pk.get()]
    assert problems_of(database, every_model(Player) + [Team] + every_model(Match)) == []
