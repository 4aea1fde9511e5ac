"""Reads of a sharded model in one round trip per node (limpyd._per_node, docs/sharding.rst "Queries").

When each shard's result is one key (no filter, or one equality filter), ``len()``, iteration and
the windows of a sharded collection send every shard's ``SCARD``/``SMEMBERS``/``SORT`` together:
one write per server on a single server and on each primary of a cluster. The round trips are
counted on the client (each write of a command buffer to a connection), the results compared
with a 1-shard model holding the same data.
"""

from __future__ import annotations

import collections
import random
import time
from typing import Any, Dict

import pytest
import redis
from redis.connection import AbstractConnection
from test_sharding import _OMIT, define_event, pytest_generate_tests  # noqa: F401 - single and cluster

from limpyd import _per_node, fields, sharding
from limpyd._per_node import sort_arguments
from limpyd.contrib.collection import ExtendedCollectionManager
from limpyd.indexes import EqualIndex


class WriteCounter:
    """Count the command buffers written to each server (``host:port`` or socket) inside ``with``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.per_server: Dict[str, int] = collections.Counter()
        original = AbstractConnection.send_packed_command
        counter = self

        def counting(connection: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
            if counter.active:
                where = getattr(connection, "path", None) or "%s:%s" % (connection.host, connection.port)
                counter.per_server[where] += 1
            return original(connection, command, *args, **kwargs)

        self.active = False
        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)

    def __enter__(self) -> "WriteCounter":
        self.per_server.clear()
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False


_GENERATOR = random.Random(5)
SCORES = _GENERATOR.sample(range(-500, 500), 60)  # distinct sort values: one right order for windows
NOTES = _GENERATOR.sample(range(100, 999), 60)


@pytest.fixture
def models(database, namespace):
    """A 16-shard and a 1-shard model holding the same 60 instances (the 1-shard one with the
    extended collections, whose ``values()``/``values_list()`` the sharded collections give)."""
    sharded = define_event(database, namespace + "s", shards=16)
    single = define_event(
        database, namespace + "u", shards=_OMIT, collection_manager=ExtendedCollectionManager
    )
    for position in range(60):
        values = {
            "kind": "k%d" % (position % 3),
            "note": "n%d" % NOTES[position],
            "score": str(SCORES[position]),
            "tags": ["t%d" % (position % 2), "all"],
            "label": "l%02d" % (position % 7),
        }
        sharded(**values)
        single(**values)
    return sharded, single


def _primaries(database) -> int:
    return len(database.connection.get_primaries()) if database.is_cluster else 1


QUERIES = {
    "len, one filter": lambda Model: len(Model.collection(kind="k1")),
    "len, no filter": lambda Model: len(Model.collection()),
    # an unsorted collection: SMEMBERS order on a 1-shard model, numeric pk order on a sharded one
    "pks, one filter": lambda Model: sorted(Model.collection(kind="k2")),
    "pks, no filter": lambda Model: sorted(Model.collection()),
    "sorted by pk": lambda Model: list(Model.collection(kind="k0").sort()),
    "sorted desc": lambda Model: list(Model.collection(kind="k0").sort(desc=True)),
    "alpha": lambda Model: list(Model.collection(kind="k1").sort(alpha=True)),
    "window": lambda Model: list(Model.collection(kind="k0").sort()[3:9]),
    "window desc": lambda Model: list(Model.collection(kind="k0").sort(by="-pk")[0:4]),
    "last items": lambda Model: list(Model.collection(kind="k1").sort()[-5:]),
    "unsorted window": lambda Model: list(Model.collection(kind="k2")[2:7]),
    "index": lambda Model: Model.collection(kind="k2").sort(desc=True)[4],
    "negative index": lambda Model: Model.collection().sort()[-2],
    "open window": lambda Model: list(Model.collection(kind="k1").sort()[15:]),
    "score filter": lambda Model: sorted(Model.collection(score=SCORES[5])),
    # rows: the pks with their sort values and values, read by SORT ... BY ... GET (a script on a cluster)
    "by field": lambda Model: list(Model.collection(kind="k0").sort(by="score")),
    "by field desc, window": lambda Model: list(Model.collection(kind="k1").sort(by="-score")[2:6]),
    "alpha by field, last items": lambda Model: list(
        Model.collection(kind="k2").sort(by="note", alpha=True)[-4:]
    ),
    "by field, no filter, window": lambda Model: list(Model.collection().sort(by="score")[10:20]),
    "values": lambda Model: list(Model.collection(kind="k0").sort(by="score").values("kind", "note")),
    "values_list flat, window": lambda Model: list(
        Model.collection(kind="k1").sort(by="note", alpha=True).values_list("note", flat=True)[0:5]
    ),
    "values_list unsorted": lambda Model: sorted(Model.collection(kind="k2").values_list("pk", "score")),
    "values_list sorted by pk": lambda Model: list(
        Model.collection(kind="k2").sort().values_list("label", "score")
    ),
    # several equality filters: each shard intersects its sets into a temporary key, reads it and
    # deletes it, every shard's commands sent together (len(): one SINTERCARD per shard)
    "len, two filters": lambda Model: len(Model.collection(kind="k1", tags="t0")),
    "len, three filters": lambda Model: len(Model.collection(kind="k1", tags="t0")(tags="all")),
    "pks, two filters": lambda Model: sorted(Model.collection(kind="k2", tags="t1")),
    "sorted, two filters": lambda Model: list(Model.collection(kind="k0", tags="all").sort(desc=True)),
    "by field window, two filters": lambda Model: list(
        Model.collection(kind="k1", tags="t1").sort(by="score")[1:4]
    ),
    "values, two filters": lambda Model: list(
        Model.collection(kind="k2", tags="t0").sort(by="note", alpha=True).values("note", "score")
    ),
    # __in filters: each shard unites the sets (SUNIONSTORE) before the intersection
    "len, in filter": lambda Model: len(Model.collection(kind__in=["k1", "k2"])),
    "len, in and equality": lambda Model: len(Model.collection(kind__in=["k0", "k2", "none"], tags="t1")),
    "in filter, sorted": lambda Model: list(Model.collection(tags__in=["t0"]).sort(desc=True)),
    "two in filters, window by field": lambda Model: list(
        Model.collection(kind__in=["k0", "k1"], tags__in=["t0", "t1"]).sort(by="-score")[2:9]
    ),
    "in filter, values": lambda Model: sorted(
        Model.collection(kind__in=["k2", "k0"]).values_list("pk", "note")
    ),
    # range filters: each shard runs the index's filter script into a temporary set first
    "range filter": lambda Model: sorted(Model.collection(score__gte=0)),
    "len, range filter": lambda Model: len(Model.collection(score__gt=-100, score__lte=200)),
    "range and equality, window by field": lambda Model: list(
        Model.collection(kind="k1", score__lt=100).sort(by="score")[0:5]
    ),
    "text range": lambda Model: list(Model.collection(label__gte="l03", tags="t1").sort()),
    "text startswith, len": lambda Model: len(
        Model.collection(label__startswith="l0", kind__in=["k0", "k2"])
    ),
    "text eq and range": lambda Model: list(Model.collection(label="l02", score__lte=0).sort(desc=True)),
    # __in of a range index: each value filtered into its own temporary set, then united
    "range in filter": lambda Model: list(Model.collection(kind="k1", label__in=["l01", "l03"]).sort()),
    "len, range in filter": lambda Model: len(Model.collection(score__in=[SCORES[3], SCORES[8], 10**6])),
    "range in and range, window by field": lambda Model: list(
        Model.collection(label__in=["l02", "l05", "l06"], score__gte=-100).sort(by="-score")[1:6]
    ),
    # nosort: each shard's SORT ... BY nosort, the shards' results one after the other
    "nosort": lambda Model: sorted(Model.collection(kind="k1").sort(by="nosort")),
    "nosort, two filters": lambda Model: sorted(Model.collection(kind="k1", tags="t1").sort(by="nosort")),
    "empty intersection": lambda Model: list(Model.collection(kind="k0", tags="nothing").sort()),
}


@pytest.mark.parametrize("query", sorted(QUERIES))
def test_one_round_trip_per_node(database, models, monkeypatch, query):
    sharded, single = models
    expected = QUERIES[query](single)
    QUERIES[query](sharded)  # a script's first use on a server loads it (NOSCRIPT, then EVAL)
    counter = WriteCounter(monkeypatch)
    with counter:
        got = QUERIES[query](sharded)
    assert got == expected
    writes = counter.per_server
    assert writes and max(writes.values()) == 1, dict(writes)
    assert len(writes) <= _primaries(database)


def test_an_index_of_the_users_takes_the_general_path(database, namespace, monkeypatch):
    """A filter of an index subclass of the user's may send commands of its own: the shards are
    asked one after the other (the core collection's commands), with the same results."""

    class MyEqualIndex(EqualIndex):
        def get_filtered_keys(self, suffix, *args, **kwargs):
            return super().get_filtered_keys(suffix, *args, **kwargs)

    models = [
        define_event(
            database,
            namespace + suffix,
            shards=shards,
            name="Custom",
            code=fields.StringField(indexable=True, indexes=[MyEqualIndex]),
        )
        for suffix, shards in (("s", 16), ("u", _OMIT))
    ]
    for Model in models:
        for position in range(30):
            Model(code="c%d" % (position % 4), kind="k%d" % (position % 3))
    counter = WriteCounter(monkeypatch)
    with counter:
        got = list(models[0].collection(code="c1", kind="k2").sort())
    assert got == list(models[1].collection(code="c1", kind="k2").sort()) and got
    assert sum(counter.per_server.values()) >= 16  # at least one command per shard, one after the other


MULTI_QUERIES = {
    "both fields": lambda Model: list(Model.collection(kind="k1", code="c2").sort()),
    "len, both fields": lambda Model: len(Model.collection(kind="k0", code="c1")),
    "in on one field": lambda Model: list(Model.collection(kind__in=["k0", "k2"], code="c3").sort(desc=True)),
    "len, in on both": lambda Model: len(Model.collection(kind__in=["k0", "k1"], code__in=["c0", "c3"])),
    "with another filter, window by field": lambda Model: list(
        Model.collection(kind="k2", code="c0", score__gte=0).sort(by="score")[0:3]
    ),
}


@pytest.mark.parametrize("query", sorted(MULTI_QUERIES))
def test_multi_field_index_filters_one_round_trip_per_node(database, namespace, monkeypatch, query):
    """Filters served by an ``EqualIndexWith`` read the set of their combination (a union for
    ``__in``) in every shard, all shards together."""
    from limpyd.contrib.indexes import EqualIndexWith

    models = [
        define_event(
            database,
            namespace + suffix,
            shards=shards,
            name="Multi",
            code=fields.StringField(
                indexable=True, indexes=[EqualIndexWith.configure(other_fields=["kind"])]
            ),
        )
        for suffix, shards in (("s", 16), ("u", _OMIT))
    ]
    for Model in models:
        for position in range(40):
            Model(code="c%d" % (position % 4), kind="k%d" % (position % 3), score=str(SCORES[position]))
    sharded, single = models
    expected = MULTI_QUERIES[query](single)
    assert expected
    MULTI_QUERIES[query](sharded)  # a script's first use on a server loads it
    counter = WriteCounter(monkeypatch)
    with counter:
        got = MULTI_QUERIES[query](sharded)
    assert got == expected
    assert counter.per_server and max(counter.per_server.values()) == 1, dict(counter.per_server)


def test_a_lost_filter_script_is_loaded_again(database, models):
    """A server that lost the range filter script (``SCRIPT FLUSH``): the shards' replies are
    dropped (NOSCRIPT), the shards asked one after the other, which loads it again."""
    sharded, single = models
    expected = (len(single.collection(score__gte=0, kind="k2")), sorted(single.collection(score__lt=0)))
    connection = database.connection
    for node in connection.get_primaries() if database.is_cluster else [None]:
        (connection.get_redis_connection(node) if node is not None else connection).script_flush()
    assert (
        len(sharded.collection(score__gte=0, kind="k2")),
        sorted(sharded.collection(score__lt=0)),
    ) == expected
    assert expected[0] and expected[1]


def test_an_empty_in_filter_matches_nothing(database, models):
    sharded, single = models
    for build in (lambda M: M.collection(kind__in=[]), lambda M: M.collection(kind__in=[], tags="t0")):
        assert list(build(sharded)) == list(build(single)) == []
        assert len(build(sharded)) == len(build(single)) == 0


def test_intersections_leave_no_temporary_key(database, models):
    """The per-node intersections delete their temporary keys in the same write (and an error too)."""
    sharded, _ = models
    assert list(sharded.collection(kind="k1", tags="t0").sort(by="score")[0:3])
    assert len(sharded.collection(kind="k1", tags="t0"))
    assert list(sharded.collection(kind__in=["k1", "k0"], tags="t0").sort(by="score")[0:3])
    assert len(sharded.collection(kind__in=["k1", "k0"], tags__in=["t0"]))
    sharded.shard_model(3).get_field("tags").get_index().connection.set(
        sharded.shard_model(3).get_field("tags").get_index().get_storage_key("t1"), "not a set"
    )
    with pytest.raises(Exception, match="WRONGTYPE"):
        list(sharded.collection(kind="k1", tags="t1").sort())
    with pytest.raises(Exception, match="WRONGTYPE"):
        len(sharded.collection(kind="k1", tags="t1"))
    with pytest.raises(Exception, match="WRONGTYPE"):
        len(sharded.collection(kind="k1", tags__in=["t1", "t0"]))
    with pytest.raises(Exception, match="WRONGTYPE"):
        list(sharded.collection(tags__in=["t1", "t0"]))
    connection = database.connection
    leftovers = [key for key in _every_key(connection) if "__collection__" in key]
    assert leftovers == []


def _every_key(connection) -> list:
    """Every key of the server, or of every primary of a cluster."""
    if not hasattr(connection, "get_primaries"):
        return list(connection.scan_iter(count=1000))
    keys = []
    for node in connection.get_primaries():
        keys += list(connection.get_redis_connection(node).scan_iter(count=1000))
    return keys


def test_an_error_reply_is_raised(database, namespace):
    """A shard's key of the wrong type: the error of that command, as the core collection raises it."""
    sharded = define_event(database, namespace, shards=4)
    for position in range(8):
        sharded(kind="a", note=str(position))
    key = sharded.shard_model(2).get_field("kind").get_index().get_storage_key("a")
    database.connection.delete(key)
    database.connection.set(key, "not a set")
    with pytest.raises(Exception, match="WRONGTYPE"):
        len(sharded.collection(kind="a"))
    with pytest.raises(Exception, match="WRONGTYPE"):
        list(sharded.collection(kind="a"))


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, ("SORT", "k")),
        ({"desc": True, "alpha": True}, ("SORT", "k", "DESC", "ALPHA")),
        ({"start": 0, "num": 5, "desc": False}, ("SORT", "k", "LIMIT", 0, 5)),
        ({"by": "nosort", "start": 2, "num": -1}, ("SORT", "k", "BY", "nosort", "LIMIT", 2, -1)),
        ({"by": "x:*:score"}, ("SORT", "k", "BY", "x:*:score")),
        (
            {"by": "x:*:s", "get": ["#", "x:*:h->f"], "start": 0, "num": 3, "alpha": True},
            ("SORT", "k", "BY", "x:*:s", "LIMIT", 0, 3, "GET", "#", "GET", "x:*:h->f", "ALPHA"),
        ),
        ({"store": "dest"}, None),
        ({"groups": True}, None),
        ({"groups": False, "get": None}, ("SORT", "k")),
    ],
)
def test_sort_arguments(options, expected):
    assert sort_arguments("k", options) == expected


def test_a_flushed_sort_script_is_loaded_again(database, models, monkeypatch):
    """On a cluster the sorts by a field run limpyd's SORT script: after a SCRIPT FLUSH (a node
    restarted) each shard's NOSCRIPT reply is answered by loading it again, same results."""
    if not database.is_cluster:
        pytest.skip("single server: SORT ... BY runs as SORT, no script to lose")
    sharded, single = models
    expected = list(single.collection(kind="k1").sort(by="-score").values_list("pk", "note")[0:7])
    for node in database.connection.get_primaries():
        database.connection.get_redis_connection(node).script_flush()
    reloads = []
    original = sharding.cluster_sort
    monkeypatch.setattr(sharding, "cluster_sort", lambda *a, **k: reloads.append(a[1]) or original(*a, **k))
    got = list(sharded.collection(kind="k1").sort(by="-score").values_list("pk", "note")[0:7])
    assert got == expected and len(got) == 7
    assert len(reloads) == 16  # every shard's EVALSHA was refused, then sorted through the script again
    reloads.clear()
    assert list(sharded.collection(kind="k1").sort(by="-score").values_list("pk", "note")[0:7]) == expected
    assert reloads == []  # loaded again on every node


def _cluster_only(database):
    if not database.is_cluster:
        pytest.skip("single server: no slot map, no redirection")


def test_a_stale_slot_map_is_followed(database, models, monkeypatch):
    """redis-py's slot map names the wrong node for some shards: those nodes answer MOVED, the
    reads are sent again through redis-py (which follows the redirection), same results."""
    _cluster_only(database)
    sharded, single = models
    expected = list(single.collection(kind="k0").sort(by="score"))
    client = database.connection
    manager = client.nodes_manager
    primaries = client.get_primaries()
    real = manager.get_node_from_slot
    wrong = []

    def stale(slot, *args, **kwargs):
        node = real(slot, *args, **kwargs)
        if len(wrong) >= 16:  # limpyd's grouping asked for its 16 shards: redis-py's own calls
            return node
        wrong.append(slot)
        return next(primary for primary in primaries if primary.name != node.name)  # not its owner

    monkeypatch.setattr(manager, "get_node_from_slot", stale)
    counter = WriteCounter(monkeypatch)
    with counter:
        got = list(sharded.collection(kind="k0").sort(by="score"))
    monkeypatch.setattr(manager, "get_node_from_slot", real)
    assert got == expected and wrong
    assert sum(counter.per_server.values()) > len(primaries)  # the MOVED ones were sent again
    assert len(sharded.collection(kind="k0")) == len(expected)


def test_an_unreachable_node_falls_back_to_redis_py(database, models, monkeypatch):
    """A node's connection cannot be made (a failover in progress): the reads go through redis-py,
    which finds the node again or raises redis.ConnectionError, never something else."""
    _cluster_only(database)
    sharded, single = models
    expected = sorted(single.collection(kind="k2"))
    refused = []

    def unreachable(pool, command_name):
        refused.append(pool)
        raise redis.ConnectionError("Error 111 connecting to the node. Connection refused.")

    monkeypatch.setattr(_per_node, "get_pool_connection", unreachable)  # limpyd's own route only
    assert sorted(sharded.collection(kind="k2")) == expected
    assert len(refused) == 1  # the first node refused: every read went through redis-py


# ---------------------------------------------------------------------- len(): one script call per node


def _servers(database) -> Dict[str, Any]:
    """Return a plain client of each server (each primary of a cluster), by name."""
    if not database.is_cluster:
        return {"single": database.connection}
    client = database.connection
    return {node.name: client.get_redis_connection(node) for node in client.get_primaries()}


def _calls(database) -> Dict[str, Dict[str, Dict[str, int]]]:
    """Return, per server, the counters of each command so far (``INFO commandstats``: ``calls``,
    ``failed_calls``, ``rejected_calls``: refused before running, as a ``MOVED``)."""
    return {name: server.info("commandstats") for name, server in _servers(database).items()}


def _grown(
    before: Dict[str, Any], after: Dict[str, Any], command: str, counter: str = "calls"
) -> Dict[str, int]:
    """Return, per server, how much ``command``'s ``counter`` grew from ``before`` to ``after``."""
    key = "cmdstat_" + command
    return {
        name: int(after[name].get(key, {}).get(counter, 0)) - int(before[name].get(key, {}).get(counter, 0))
        for name in after
    }


@pytest.fixture
def counted(database, namespace):
    """A 64-shard and a 1-shard model holding the same 200 instances (3 kinds, a fourth never used)."""
    sharded = define_event(database, namespace + "s", shards=64)
    single = define_event(database, namespace + "u", shards=_OMIT)
    for position in range(200):
        kind = "k%d" % (position % 3) if position % 7 else "rare"
        sharded(kind=kind, note=str(position))
        single(kind=kind, note=str(position))
    return sharded, single


LENGTHS = {
    "no filter": {},
    "one filter": {"kind": "k1"},
    "rare": {"kind": "rare"},
    "no match": {"kind": "none"},
}


@pytest.mark.parametrize("filters", sorted(LENGTHS))
def test_len_is_one_script_call_per_node(database, counted, monkeypatch, filters):
    """``len()`` of a 64-shard collection reading one key per shard: each server (each primary)
    gets one ``EVALSHA`` of the count script, holding its shards' keys, and no ``SCARD`` from the
    client; the sum is the 1-shard model's count."""
    sharded, single = counted
    expected = len(single.collection(**LENGTHS[filters]))
    len(sharded.collection(kind="k0"))  # the script's first use on a server loads it
    before = _calls(database)
    counter = WriteCounter(monkeypatch)
    with counter:
        got = len(sharded.collection(**LENGTHS[filters]))
    after = _calls(database)
    assert got == expected
    assert expected > 0 or filters == "no match"
    assert dict(counter.per_server) and set(counter.per_server.values()) == {1}, dict(counter.per_server)
    assert len(counter.per_server) == _primaries(database)  # 64 shards: every primary holds some
    assert _grown(before, after, "evalsha") == {name: 1 for name in after}
    assert not any(_grown(before, after, "eval").values())
    # the SCARD the servers ran are the script's: one per shard in all
    assert sum(_grown(before, after, "scard").values()) == 64


@pytest.mark.parametrize("flushed", ["one", "every"])
def test_len_loads_a_flushed_count_script_again(database, counted, monkeypatch, flushed):
    """After a ``SCRIPT FLUSH`` (a server restarted) the server answers the ``EVALSHA`` with
    ``NOSCRIPT``: one ``EVAL`` of the script runs it and loads it again, same count; the next
    ``len()`` is one ``EVALSHA`` per server again."""
    sharded, single = counted
    expected = len(single.collection(kind="k2"))
    assert len(sharded.collection(kind="k2")) == expected
    servers = _servers(database)
    names = sorted(servers)[:1] if flushed == "one" else sorted(servers)
    for name in names:
        servers[name].script_flush()
    before = _calls(database)
    counter = WriteCounter(monkeypatch)
    with counter:
        got = len(sharded.collection(kind="k2"))
    after = _calls(database)
    assert got == expected
    assert _grown(before, after, "eval") == {name: int(name in names) for name in after}
    assert _grown(before, after, "evalsha") == {name: 1 for name in after}
    assert sum(_grown(before, after, "scard").values()) == 64  # the scripts' (NOSCRIPT ran nothing)
    assert sorted(counter.per_server.values()) == sorted([1] * (len(after) - len(names)) + [2] * len(names))
    with counter:
        assert len(sharded.collection(kind="k2")) == expected
    assert set(counter.per_server.values()) == {1} and len(counter.per_server) == len(after)


def test_len_with_a_stale_slot_map(database, counted, monkeypatch):
    """redis-py's slot map names the wrong node for every shard: each node's script fails on a
    key it does not serve ("non local key"), those keys are counted one ``SCARD`` each, which the
    nodes answer ``MOVED``; the slot map is read again and the ``SCARD`` sent again through
    redis-py: the count of the 1-shard model."""
    _cluster_only(database)
    sharded, single = counted
    expected = len(single.collection(kind="k1"))
    len(sharded.collection(kind="k0"))  # the script loaded
    client = database.connection
    manager = client.nodes_manager
    primaries = client.get_primaries()
    real = manager.get_node_from_slot
    state = {"stale": True, "refreshed": 0, "wrong": 0}

    def stale(slot, *args, **kwargs):
        node = real(slot, *args, **kwargs)
        if not state["stale"]:
            return node
        state["wrong"] += 1
        return next(primary for primary in primaries if primary.name != node.name)  # not its owner

    def refresh(client):  # a stale map stays so until it is read again
        state["stale"] = False
        state["refreshed"] += 1
        monkeypatch.setattr(manager, "get_node_from_slot", real)
        original_refresh(client)

    original_refresh = _per_node._refresh_slots
    monkeypatch.setattr(_per_node, "_refresh_slots", refresh)
    monkeypatch.setattr(manager, "get_node_from_slot", stale)
    before = _calls(database)
    got = len(sharded.collection(kind="k1"))
    after = _calls(database)
    assert got == expected
    assert state["wrong"] > 64 and state["refreshed"] == 1  # the script's and the SCARD's grouping
    scripts = _grown(before, after, "evalsha")
    assert sum(scripts.values()) >= 1 and _grown(before, after, "evalsha", "failed_calls") == scripts
    assert sum(_grown(before, after, "scard", "rejected_calls").values()) > 0  # MOVED
    counter = WriteCounter(monkeypatch)
    with counter:
        assert len(sharded.collection(kind="k1")) == expected  # the map is right again
    assert set(counter.per_server.values()) == {1} and len(counter.per_server) == len(primaries)


def test_len_with_an_unreachable_node(database, counted, monkeypatch):
    """A node's connection cannot be made: every ``SCARD`` goes through redis-py, same count."""
    _cluster_only(database)
    sharded, single = counted
    expected = len(single.collection(kind="k0"))
    refused = []

    def unreachable(pool, command_name):
        refused.append(pool)
        raise redis.ConnectionError("Error 111 connecting to the node. Connection refused.")

    monkeypatch.setattr(_per_node, "get_pool_connection", unreachable)
    monkeypatch.setattr(_per_node, "take_connection", unreachable)
    before = _calls(database)
    assert len(sharded.collection(kind="k0")) == expected
    after = _calls(database)
    assert len(refused) == 1  # the first node refused: nothing else tried on limpyd's route
    assert not any(_grown(before, after, "evalsha").values())
    assert sum(_grown(before, after, "scard").values()) == 64


def test_len_without_script_flags(database, counted, monkeypatch):
    """A server that cannot compile the script (before Redis 7.0 no script has a ``#!`` line; here
    a flag Redis does not know): its shards are counted one ``SCARD`` each, and the client does not
    send the script again."""
    sharded, single = counted
    expected = len(single.collection(kind="k1"))
    script = _per_node.COUNT_SCRIPT.replace("no-writes,", "no-writes,not-a-flag,", 1)
    assert script != _per_node.COUNT_SCRIPT
    monkeypatch.setattr(_per_node, "COUNT_SCRIPT", script)
    monkeypatch.setattr(_per_node, "_COUNT_SHA", "0" * 40)  # unknown: NOSCRIPT, then EVAL
    real = database.connection
    monkeypatch.setattr(real, "_limpyd_no_count_script", False, raising=False)
    before = _calls(database)
    assert len(sharded.collection(kind="k1")) == expected
    middle = _calls(database)
    assert _grown(before, middle, "eval") == {name: 1 for name in middle}  # refused by each server
    assert real._limpyd_no_count_script is True
    counter = WriteCounter(monkeypatch)
    with counter:
        assert len(sharded.collection(kind="k1")) == expected
    after = _calls(database)
    assert not any(_grown(middle, after, "evalsha").values()) and not any(
        _grown(middle, after, "eval").values()
    )
    assert sum(_grown(middle, after, "scard").values()) == 64
    assert set(counter.per_server.values()) == {1}  # the SCARD still one write per server


def test_len_with_a_stale_kept_plan(database, counted, monkeypatch):
    """The nodes kept for a ``len()`` name a node that no longer serves the keys (a slot moved
    since): that node refuses the script, the keys are counted one ``SCARD`` each, what was kept
    is dropped and the next ``len()`` is one script call per node again."""
    _cluster_only(database)
    sharded, single = counted
    expected = len(single.collection(kind="k2"))
    assert len(sharded.collection(kind="k2")) == expected
    client = database.connection
    token, nodes, plans = client._limpyd_node_plans
    primaries = client.get_primaries()
    for wanted, plan in list(plans.items()):  # every node's keys sent to another primary
        plans[wanted] = [
            (next(p for p in primaries if p.name != node.name), keys, packed) for node, keys, packed in plan
        ]
    before = _calls(database)
    assert len(sharded.collection(kind="k2")) == expected
    after = _calls(database)
    assert sum(_grown(before, after, "evalsha", "failed_calls").values()) >= 1
    assert "_limpyd_node_plans" not in vars(client) or not client._limpyd_node_plans[2]
    counter = WriteCounter(monkeypatch)
    with counter:
        assert len(sharded.collection(kind="k2")) == expected
    assert set(counter.per_server.values()) == {1} and len(counter.per_server) == len(primaries)


@pytest.mark.parametrize("descending", [False, True])
def test_window_candidates_keep_every_tie_at_the_edge(descending):
    """A window of a numeric sort merges the shards' heads by score only, then every row tying with
    the last one: what ``_arrange`` then orders by pk must equal the full merge's first rows."""
    rng = random.Random(11)
    for _ in range(300):
        parts = []
        for _shard in range(rng.randrange(1, 6)):
            rows = [
                (str(rng.randrange(1000)), rng.choice(["1", "2", "2.0", "0x3", None, "-1", "5"]))
                for _ in range(rng.randrange(0, 8))
            ]
            # the server's order: by score only, ties in any order
            rows.sort(key=lambda row: sharding._score(row[1]), reverse=descending)
            parts.append(rows)
        limit = rng.randrange(1, 12)
        pk_of, value_of = (lambda row: row[0]), (lambda row: row[1])
        everything = [row for part in parts for row in part]
        expected = sharding._arrange(everything, pk_of, value_of, False, descending)[:limit]
        candidates = sharding._candidates(parts, sharding._row_score, limit, descending)
        assert len(candidates) <= len(everything)
        assert sharding._arrange(candidates, pk_of, value_of, False, descending)[:limit] == expected


@pytest.mark.parametrize(
    "query", ["len, one filter", "len, two filters", "sorted by pk", "by field window, two filters", "nosort"]
)
def test_expiring_models_purge_every_shard_together(database, namespace, monkeypatch, query):
    """An expiring sharded model: each shard's purge script, all sent together, then the reads:
    two round trips per node, the due instances hidden as on a 1-shard model."""
    sharded = define_event(database, namespace + "xs", shards=16, expiring=True)
    single = define_event(
        database, namespace + "xu", shards=_OMIT, collection_manager=ExtendedCollectionManager, expiring=True
    )
    for Model in (sharded, single):
        for position in range(40):
            Model(
                kind="k%d" % (position % 3),
                note="n%d" % NOTES[position],
                score=str(SCORES[position]),
                tags=["t%d" % (position % 2), "all"],
            )
    QUERIES[query](sharded)  # the scripts' first use on a server loads them
    deadline = time.time() + 0.1
    for pk in range(1, 41, 3):
        for Model in (sharded, single):
            Model.lazy_connect(str(pk)).expire_at(deadline)
    time.sleep(max(0.0, deadline + 0.02 - time.time()))
    expected = QUERIES[query](single)
    counter = WriteCounter(monkeypatch)
    with counter:
        got = QUERIES[query](sharded)
    assert got == expected
    writes = counter.per_server
    assert writes and max(writes.values()) == 2, dict(writes)
    assert len(writes) <= _primaries(database)


@pytest.mark.parametrize("atomic", [False, True], ids=["default", "atomic"])
def test_bulk_writes_send_every_shard_together(database, namespace, monkeypatch, atomic):
    """``create_many``/``delete_many``: per batch, the INCRBY, then every shard's script call sent
    together (one round trip per node), instead of one round trip per shard."""
    sharded = define_event(database, namespace + "b", shards=16, atomic=atomic)
    sharded.create_many([{"kind": "warm"}] * 40)  # the scripts' first use on a server loads them
    counter = WriteCounter(monkeypatch)
    with counter:
        pks = sharded.create_many(({"kind": "k%d" % n, "score": str(n)} for n in range(90)), batch_size=30)
    assert len(pks) == 90 and len(sharded.collection(kind="k7")) == 1
    # 3 batches: the INCRBY on the counter's node, then the scripts: at most 2 writes per node each
    assert counter.per_server and max(counter.per_server.values()) <= 6, dict(counter.per_server)
    counter = WriteCounter(monkeypatch)
    with counter:
        assert sharded.delete_many(pks[:60], batch_size=30) == 60
    assert counter.per_server and max(counter.per_server.values()) <= 2, dict(counter.per_server)
    assert len(sharded.collection()) == 70


DATED_QUERIES = {
    "date": lambda Model: list(Model.collection(created__date="2020-01-15").sort()),
    "year, len": lambda Model: len(Model.collection(created__year=2021)),
    "date range and kind": lambda Model: list(
        Model.collection(created__date__gte="2020-06-01", kind="k1").sort()
    ),
    "hour range, window by field": lambda Model: list(
        Model.collection(created__hour__lt=12).sort(by="score")[2:7]
    ),
    "full range, in on kind": lambda Model: sorted(
        Model.collection(created__gt="2020-03-01 00:00:00", kind__in=["k0", "k2"])
    ),
    "year in": lambda Model: list(Model.collection(created__year__in=[2020, 2022]).sort(desc=True)),
    "prefixed text range": lambda Model: list(Model.collection(code__p__gte="c3").sort()),
    "equality on a model with a multi-field index": lambda Model: list(Model.collection(kind="k2").sort()),
}


@pytest.mark.parametrize("query", sorted(DATED_QUERIES))
def test_date_time_and_configured_indexes_one_round_trip_per_node(database, namespace, monkeypatch, query):
    """The date/time indexes (``MultiIndexes`` of configured range and equality indexes), a
    configured range index, and an equality filter on a model having a multi-field index: every
    shard in one step."""
    from limpyd.contrib.indexes import DateTimeIndex, EqualIndexWith
    from limpyd.indexes import TextRangeIndex

    models = [
        define_event(
            database,
            namespace + suffix,
            shards=shards,
            name="Dated",
            created=fields.InstanceHashField(indexable=True, indexes=[DateTimeIndex]),
            code=fields.StringField(
                indexable=True,
                indexes=[
                    TextRangeIndex.configure(prefix="p"),
                    EqualIndexWith.configure(other_fields=["kind"]),
                ],
            ),
        )
        for suffix, shards in (("s", 16), ("u", _OMIT))
    ]
    generator = random.Random(3)
    rows = [
        {
            "created": "%d-%02d-%02d %02d:%02d:00"
            % (
                generator.choice([2020, 2021, 2022]),
                generator.randint(1, 12),
                15,
                generator.randint(0, 23),
                position,
            ),
            "code": "c%d" % (position % 6),
            "kind": "k%d" % (position % 3),
            "score": str(SCORES[position]),
        }
        for position in range(50)
    ]
    rows[0]["created"] = "2020-01-15 10:20:30"
    for Model in models:
        for row in rows:
            Model(**row)
    sharded, single = models
    expected = DATED_QUERIES[query](single)
    assert expected
    DATED_QUERIES[query](sharded)  # a script's first use on a server loads it
    counter = WriteCounter(monkeypatch)
    with counter:
        got = DATED_QUERIES[query](sharded)
    assert got == expected
    assert counter.per_server and max(counter.per_server.values()) == 1, dict(counter.per_server)


def test_instances_are_checked_one_round_trip_per_node(database, models, monkeypatch):
    """``instances()``: the read of the shards, then the existence checks of a chunk of the
    results (``SISMEMBER`` in each pk's shard), every shard's together: two writes per server."""
    sharded, single = models
    expected = list(single.collection(kind="k1").sort(by="score").values_list("pk", flat=True))
    list(sharded.collection(kind="k1").sort(by="score").instances())  # the SORT script loaded
    counter = WriteCounter(monkeypatch)
    with counter:
        got = list(sharded.collection(kind="k1").sort(by="score").instances())
    assert [instance.pk.get() for instance in got] == expected and expected
    assert {type(instance).__name__ for instance in got} == {"Event"} and len({i.shard for i in got}) > 3
    assert counter.per_server and max(counter.per_server.values()) == 2, dict(counter.per_server)


def test_collection_delete_one_round_trip_per_node_per_step(database, models, monkeypatch):
    """``collection(...).delete()``: the pks read (every shard together), then deleted as
    ``delete_many`` does (every shard's part of the batch together): two writes per server."""
    sharded, single = models
    # every shard's function loaded (pks that do not exist, spread over the shards)
    assert sharded.delete_many([str(number) for number in range(1000, 1200)]) == 0
    counter = WriteCounter(monkeypatch)
    with counter:
        deleted = sharded.collection(kind="k1", tags="t0").delete()
    assert deleted == single.collection(kind="k1", tags="t0").delete() and deleted > 3
    assert counter.per_server and max(counter.per_server.values()) == 2, dict(counter.per_server)
    assert sorted(sharded.collection()) == sorted(single.collection())
