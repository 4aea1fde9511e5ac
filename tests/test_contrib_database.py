"""Tests of ``limpyd.contrib.database`` (docs/contrib.rst): pipelines and transactions.

``PipelineDatabase`` must behave exactly like ``RedisDatabase`` with no pipeline open (same
commands, same round trips), and route every field/model command into the pipeline while one is
open in the thread (or shared), without opening a write-behind batch (``limpyd._batch``).
"""

from __future__ import annotations

import threading

import pytest
import redis
from _redis_dump import command_log, layout
from redis.client import Pipeline
from redis.exceptions import ResponseError, WatchError

import limpyd.contrib.database as contrib_database
from limpyd import _batch, fields, model
from limpyd.contrib.database import PipelineDatabase, _Pipeline
from limpyd.database import DEFAULT_CONNECTION_SETTINGS, RedisDatabase
from limpyd.exceptions import DoesNotExist, UniquenessError
from limpyd.indexes import EqualIndex, TextRangeIndex


@pytest.fixture
def pdb(redis_settings, database):
    """Return a ``PipelineDatabase`` on the private server (flushed by the ``database`` fixture)."""
    db = PipelineDatabase(**redis_settings)
    db.connection.ping()  # the first connection may read INFO: keep it out of the counts
    return db


def make_models(db, ns):
    """Return ``(Person, Counter)``: a model with indexable fields and one with plain fields only."""
    database = db

    class Person(model.RedisModel):
        database = db
        namespace = ns
        name = fields.StringField(indexable=True)
        email = fields.InstanceHashField(unique=True)
        city = fields.InstanceHashField(indexable=True, indexes=[EqualIndex, TextRangeIndex], default="paris")
        nick = fields.StringField()
        tags = fields.SetField(indexable=True)

    class Counter(model.RedisModel):
        database = db
        namespace = ns
        name = fields.StringField()
        value = fields.StringField()
        info = fields.InstanceHashField()
        other = fields.InstanceHashField()
        tags = fields.SetField()
        queue = fields.ListField()
        scores = fields.SortedSetField()
        data = fields.HashField()

    del database
    return Person, Counter


# ---------------------------------------------------------------------- module names


def test_module_names():
    assert contrib_database.PipelineDatabase is PipelineDatabase
    assert contrib_database._Pipeline is _Pipeline
    # incidental names of redis-limpyd 2.x
    assert contrib_database.RedisDatabase is RedisDatabase
    assert contrib_database.RedisField is fields.RedisField
    assert contrib_database.Pipeline is Pipeline
    assert contrib_database.WatchError is WatchError
    assert contrib_database.threading is threading
    assert issubclass(PipelineDatabase, RedisDatabase)
    assert issubclass(_Pipeline, Pipeline)


# ---------------------------------------------------------------------- PipelineDatabase


def test_construction_is_lazy_and_takes_redis_database_arguments():
    db = PipelineDatabase()
    assert db.connection_settings == DEFAULT_CONNECTION_SETTINGS
    assert db._pipelined_connection is None and db._direct_connection is None
    assert db._connection is None
    # nothing listens there: constructing must not connect
    db = PipelineDatabase(host="127.0.0.1", port=1, db=3)
    assert db.connection_settings == {"host": "127.0.0.1", "port": 1, "db": 3}
    assert db._connection is None
    assert db._models == {}


def test_connection_is_the_real_client_without_pipeline(pdb, redis_settings):
    connection = pdb.connection
    assert type(connection) is redis.Redis
    assert pdb._direct_connection is connection
    assert pdb._connection is connection
    assert pdb._pipelined_connection is None
    assert connection is RedisDatabase(**redis_settings).connection  # shared client cache


def test_connection_property_setter(pdb):
    direct = pdb.connection
    pipeline = pdb.pipeline()
    try:
        # installing a pipeline keeps the direct connection
        assert pdb._pipelined_connection is pipeline
        assert pdb._direct_connection is direct
        assert pdb._connection is pipeline
        # setting anything else sets the direct connection and drops the pipeline
        pdb._connection = None
        assert pdb._pipelined_connection is None and pdb._direct_connection is None
        pdb._connection = pipeline
        assert pdb._connection is pipeline and pdb._direct_connection is None
        pdb._connection = direct
        assert pdb._pipelined_connection is None and pdb._connection is direct
    finally:
        pipeline.reset()


def test_reset_during_a_pipeline_drops_both(pdb, redis_settings):
    with pdb.pipeline():
        pdb.reset(**redis_settings)
        assert pdb._pipelined_connection is None and pdb._direct_connection is None
        assert type(pdb.connection) is redis.Redis  # connects again, lazily
    assert type(pdb.connection) is redis.Redis


def test_pipeline_is_installed_at_creation_until_exit(pdb):
    direct = pdb.connection
    pipeline = pdb.pipeline(transaction=False)
    assert isinstance(pipeline, _Pipeline)
    assert pdb.connection is pipeline  # before __enter__
    with pipeline as entered:
        assert entered is pipeline
        assert pdb.connection is pipeline
    assert pdb.connection is direct
    assert pipeline.command_stack == []


def test_pipeline_attributes(pdb):
    direct = pdb.connection
    with pdb.pipeline() as pipe:
        assert pipe._database is pdb
        assert pipe._original_connection is direct
        assert pipe.share_in_threads is False
        assert pipe.current_thread_id == threading.current_thread().ident
        assert pipe.connection_pool is direct.connection_pool
        assert pipe.response_callbacks == direct.response_callbacks
        assert pipe.transaction is True
        assert pipe.shard_hint is None
    with pdb.pipeline(transaction=False, share_in_threads=True) as pipe:
        assert pipe.transaction is False
        assert pipe.share_in_threads is True
        assert not hasattr(pipe, "current_thread_id")


def test_pipeline_on_a_never_used_database(redis_settings, database):
    # Decision (upstream raised AttributeError): the connection is obtained first
    db = PipelineDatabase(**redis_settings)
    assert db._connection is None
    with db.pipeline() as pipe:
        assert isinstance(pipe._original_connection, redis.Redis)
        assert not isinstance(pipe._original_connection, Pipeline)
        assert db.connection is pipe
        pipe.set("k", "v")
        pipe.get("k")
        assert pipe.execute() == [True, "v"]
    assert db.connection is pipe._original_connection


def test_pipeline_sends_the_writes_queued_by_a_running_operation_first(pdb, client):
    with _batch.batch_scope(pdb) as batch:
        assert batch is not None
        connection = pdb.connection
        assert _batch.is_batched(connection)
        _batch.later(connection).set("queued", 1)
        assert client.exists("queued") == 0
        with pdb.pipeline(transaction=False) as pipe:
            assert client.get("queued") == "1"
            pipe.get("queued")
            assert pipe.execute() == ["1"]


def test_nested_pipelines_restore_the_outer_one(pdb):
    direct = pdb.connection
    with pdb.pipeline() as outer:
        with pdb.pipeline(transaction=False) as inner:
            assert inner._original_connection is outer
            assert inner.connection_pool is direct.connection_pool
            assert pdb.connection is inner
            inner.set("a", 1)
            assert inner.execute() == [True]
        assert pdb.connection is outer
        outer.get("a")
        assert outer.execute() == ["1"]
    assert pdb.connection is direct


def test_exception_in_a_pipeline_resets_and_restores(pdb, client):
    direct = pdb.connection
    with pytest.raises(KeyError):
        with pdb.pipeline() as pipe:
            pipe.set("never", 1)
            raise KeyError("boom")
    assert pdb.connection is direct
    assert pipe.command_stack == []
    assert client.exists("never") == 0


def test_watch_accepts_fields_and_keys(pdb, namespace, client):
    _, Counter = make_models(pdb, namespace)
    counter = Counter(name="c")
    with pdb.pipeline() as pipe:
        pipe.watch(counter.name, "plain-key")
        assert pipe.watching
        # watching mode: commands run at once and return real values
        assert counter.name.get() == "c"
        pipe.multi()
        counter.name.set("d")
        client.set("plain-key", "changed")  # a watched key changes: the transaction is aborted
        with pytest.raises(WatchError):
            pipe.execute()
    assert counter.name.get() == "c"
    with pdb.pipeline() as pipe:
        pipe.watch(counter.name)
        pipe.multi()
        counter.name.set("d")
        client.set("other-key", 1)
        assert pipe.execute() == [True]
    assert counter.name.get() == "d"


def test_redis_version_inside_a_pipeline(redis_settings, database):
    db = PipelineDatabase(**redis_settings)
    db.connection.ping()  # client shared with the fixture: this object never read the version
    assert "_redis_version" not in db.__dict__
    with db.pipeline():
        version = db.redis_version
    assert isinstance(version, tuple) and version >= (3,)
    assert db.redis_version == version


# ---------------------------------------------------------------------- limpyd calls in a pipeline


def test_getters_return_the_pipeline_and_replies_come_in_order(pdb, namespace):
    _, Counter = make_models(pdb, namespace)
    a = Counter(name="v1", tags=["x", "y"], queue=["q1", "q2"], info="i", data={"k": "v"}, scores={"m": 2})
    b = Counter(name="v2")
    with pdb.pipeline() as pipe:
        assert a.name.get() is pipe
        assert b.name.get() is pipe
        assert a.tags.smembers() is pipe
        assert a.queue.lrange(0, -1) is pipe
        assert a.info.hget() is pipe
        assert a.hmget("info", "other") is pipe
        assert a.data.hgetall() is pipe
        assert a.scores.zrange(0, -1, withscores=True) is pipe
        assert a.pk.get() == a._pk  # local, no command
        assert len(pipe.command_stack) == 8
        assert pipe.execute() == [
            "v1",
            "v2",
            {"x", "y"},
            ["q1", "q2"],
            "i",
            ["i", None],
            {"k": "v"},
            [("m", 2.0)],
        ]


def test_modifiers_of_non_indexable_fields(pdb, namespace, client):
    _, Counter = make_models(pdb, namespace)
    counter = Counter(name="start")
    with pdb.pipeline() as pipe:
        assert counter.name.set("new") is pipe
        assert counter.data.hset("k", "v") is pipe
        assert counter.tags.sadd("a", "b") is pipe
        assert counter.tags.smembers() is pipe
        assert counter.hmset(info="i", other="o") is pipe
        assert counter.queue.rpush("x", "y", "z") is pipe
        assert counter.hmget("info", "other") is pipe
        assert counter.value.incr() is pipe
        assert counter.scores.zadd({"m": 1.5}) is pipe
        assert counter.name.get() is pipe
        assert client.get(counter.name.key) == "start"  # nothing sent yet
        result = pipe.execute()
    assert result == [True, 1, 2, {"a", "b"}, 2, 3, ["i", "o"], 1, 1, "new"]  # HSET: 2 new entries
    assert counter.name.get() == "new"
    assert counter.hmget("info", "other") == ["i", "o"]


def test_lazy_instance_sends_its_existence_check_into_the_pipeline(pdb, namespace):
    _, Counter = make_models(pdb, namespace)
    pk = Counter(name="x")._pk
    lazy = Counter.lazy_connect(pk)
    assert not lazy.connected
    with pdb.pipeline() as pipe:
        lazy.name.set("y")
        lazy.tags.sadd("t")  # connected now: no second check
        assert lazy.connected  # marked connected without a real check
        assert pipe.execute() == [1, True, 1]
    unknown = Counter.lazy_connect("999")
    with pdb.pipeline() as pipe:
        unknown.value.set("z")
        assert pipe.execute() == [0, True]  # the 0 is the (ignored) existence check


def test_no_batch_is_opened_inside_a_pipeline(pdb, namespace):
    _, Counter = make_models(pdb, namespace)
    seen = []

    class Hooked(Counter):
        def post_command(self, sender, name, result, args, kwargs):
            seen.append((name, _batch.current_batch(pdb), type(self.database.connection)))
            return result

    instance = Hooked(name="x")
    assert seen and seen[-1][1] is not None  # outside a pipeline, a creation runs in a batch
    seen.clear()
    with pdb.pipeline() as pipe:
        with _batch.batch_scope(pdb) as batch:
            assert batch is None
            assert _batch.current_batch(pdb) is None
        instance.name.set("y")
        instance.tags.sadd("t")
        instance.delete()  # a deletion opens a batch outside pipelines
        # set, sadd, then one delete per field (name, value, info, other, tags, queue, scores, data), SREM
        assert pipe.execute() == [True, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert [name for name, _, _ in seen] == ["set", "sadd"] + ["delete"] * 2 + ["hdel"] * 2 + ["delete"] * 4
    assert all(batch is None and kind is _Pipeline for _, batch, kind in seen)


def test_pipeline_without_transaction_sends_no_multi(pdb, namespace, client):
    _, Counter = make_models(pdb, namespace)
    counter = Counter(name="x")
    for transaction, expected in ((False, []), (True, ["MULTI"])):  # Redis does not log EXEC
        with command_log(client) as log:
            with pdb.pipeline(transaction=transaction) as pipe:
                counter.name.get()
                counter.value.set(1)
                pipe.execute()
        assert [c for c in log if c in ("MULTI", "EXEC")] == expected
        assert [c for c in log if c not in ("MULTI", "EXEC")] == [
            "GET %s" % counter.name.key,
            "SET %s 1" % counter.value.key,
        ]


# ---------------------------------------------------------------------- threads


def test_other_threads_keep_the_real_connection(pdb, namespace):
    _, Counter = make_models(pdb, namespace)
    counter = Counter(name="real")
    seen = {}

    def other_thread():
        seen["connection"] = pdb.connection
        seen["value"] = counter.name.get()

    with pdb.pipeline() as pipe:
        counter.name.get()
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert pipe.execute() == ["real"]
    assert type(seen["connection"]) is redis.Redis
    assert seen["value"] == "real"


def test_shared_pipeline_collects_other_threads_commands(pdb, namespace):
    _, Counter = make_models(pdb, namespace)
    a = Counter(name="a")
    b = Counter(name="b")
    seen = {}

    def other_thread():
        seen["connection"] = pdb.connection
        seen["value"] = b.name.get()

    with pdb.pipeline(share_in_threads=True) as pipe:
        a.name.get()
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert pipe.execute() == ["a", "b"]
    assert seen["connection"] is pipe
    assert seen["value"] is pipe


# ---------------------------------------------------------------------- transactions


def test_transaction_returns_the_execute_result(pdb, namespace):
    _, Counter = make_models(pdb, namespace)
    counter = Counter(name="x", value=1)

    def simple(pipe):
        assert pdb.connection is pipe
        pipe.multi()
        counter.value.incr()
        counter.name.set("y")
        counter.name.get()

    assert pdb.transaction(simple) == [2, True, "y"]
    assert type(pdb.connection) is redis.Redis


def test_transaction_ignores_other_keywords(pdb, namespace):
    _, Counter = make_models(pdb, namespace)
    counter = Counter(name="x")
    pipes = []

    def func(pipe):
        pipes.append(pipe)
        pipe.multi()
        counter.name.get()

    assert pdb.transaction(func, transaction=False, whatever=1) == ["x"]
    assert pipes[0].transaction is True
    assert pipes[0].share_in_threads is False
    pdb.transaction(func, share_in_threads=True)
    assert pipes[1].share_in_threads is True


def test_transaction_retried_on_watch_error_never_half_applied(pdb, namespace, client, count_commands):
    _, Counter = make_models(pdb, namespace)
    counter = Counter(name="c", value=10)
    calls = []

    def func(pipe):
        calls.append(pipe)
        current = int(counter.value.get())  # watching mode: a real read
        if len(calls) == 1:
            client.set(counter.value.key, 100)  # a concurrent writer changes the watched key
        pipe.multi()
        counter.value.set(current + 1)
        counter.queue.rpush("attempt %d" % len(calls))
        counter.info.hset("done")

    result = pdb.transaction(func, counter.value, "some-other-key")
    assert len(calls) == 2 and calls[0] is calls[1]
    assert result == [True, 1, 1]
    assert counter.value.get() == "101"
    # the first attempt wrote nothing at all
    assert counter.queue.lrange(0, -1) == ["attempt 2"]
    assert counter.info.hget() == "done"
    assert type(pdb.connection) is redis.Redis


def test_transaction_exception_propagates_and_applies_nothing(pdb, namespace, client):
    _, Counter = make_models(pdb, namespace)
    counter = Counter(name="c")
    before = layout(client)

    def func(pipe):
        pipe.multi()
        counter.name.set("changed")
        counter.tags.sadd("x")
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        pdb.transaction(func, counter.name)
    assert layout(client) == before
    assert type(pdb.connection) is redis.Redis
    assert pdb._pipelined_connection is None


def test_transaction_reads_before_multi_are_real(pdb, namespace):
    _, Counter = make_models(pdb, namespace)
    counter = Counter(name="c", tags=["a", "b"])
    values = []

    def func(pipe):
        values.append(counter.tags.smembers())
        values.append(counter.name.get())
        pipe.multi()
        counter.name.set("%s+%d" % (values[-1], len(values[0])))

    assert pdb.transaction(func, counter.name, counter.tags) == [True]
    assert values == [{"a", "b"}, "c"]
    assert counter.name.get() == "c+2"


# ---------------------------------------------------------------------- failures and indexes


def _index_layout(client, ns):
    return {key: value for key, value in layout(client).items() if not key.startswith(ns + ":counter")}


def test_failed_pipeline_leaves_indexes_consistent(pdb, namespace, client):
    Person, Counter = make_models(pdb, namespace)
    people = [Person(name="n%d" % i, email="e%d" % i, nick="k", tags=["t%d" % i]) for i in range(3)]
    counter = Counter(name="not a number")
    before = layout(client)

    # a command failing inside EXEC: Redis runs the others, indexes are not touched by any of them
    with pdb.pipeline() as pipe:
        people[0].nick.set("changed")
        counter.name.incr()  # ERR value is not an integer
        people[1].nick.get()
        with pytest.raises(ResponseError):
            pipe.execute()
    assert people[0].nick.get() == "changed"

    # an exception before execute: nothing sent at all
    with pytest.raises(ZeroDivisionError):
        with pdb.pipeline():
            people[1].nick.set("lost")
            1 / 0
    assert people[1].nick.get() == "k"

    # a transaction aborted by a watched key: nothing applied
    with pdb.pipeline() as pipe:
        pipe.watch(people[2].nick)
        pipe.multi()
        people[2].nick.set("lost")
        client.set(people[2].nick.key, "concurrent")
        with pytest.raises(WatchError):
            pipe.execute()

    after = layout(client)
    changed = {key for key in set(before) | set(after) if before.get(key) != after.get(key)}
    assert changed == {people[0].nick.key, people[2].nick.key}
    # indexes are consistent: rebuilding them changes nothing
    for name in ("name", "email", "city", "tags"):
        Person.get_field(name).rebuild_indexes()
    assert layout(client) == after
    assert set(Person.collection(name="n1")) == {people[1]._pk}
    assert set(Person.collection(city__startswith="pa")) == {p._pk for p in people}


def test_aggressive_clear_uses_a_pipeline_and_restores_the_connection(pdb, namespace, client, count_commands):
    Person, _ = make_models(pdb, namespace)
    Person(name="a", email="a")
    Person(name="b", email="b")
    direct = pdb.connection
    field = Person.get_field("name")
    with command_log(client) as log:
        field.clear_indexes(aggressive=True)
    assert sorted(c for c in log if c.startswith("DEL")) == [
        "DEL %s:person:name:a" % namespace,
        "DEL %s:person:name:b" % namespace,
    ]
    assert "MULTI" not in log
    assert pdb.connection is direct and pdb._pipelined_connection is None
    # the index got it from the database's hook: one of its own pipelines, installed while open
    with pdb._non_transactional_pipeline() as pipeline:
        assert isinstance(pipeline, _Pipeline) and not pipeline.transaction
        assert pdb.connection is pipeline
    assert pdb.connection is direct
    field.rebuild_indexes()
    assert set(Person.collection(name="a")) == {"1"}


def test_score_sorting_of_extended_collections_on_a_pipeline_database(pdb, namespace, client):
    from limpyd.contrib.collection import ExtendedCollectionManager

    db, ns = pdb, namespace

    class Player(model.RedisModel):
        database = db
        namespace = ns
        collection_manager = ExtendedCollectionManager
        name = fields.StringField(indexable=True)

    class Board(model.RedisModel):
        database = db
        namespace = ns
        scores = fields.SortedSetField()

    players = [Player(name="p%d" % i) for i in range(3)]
    board = Board(scores={players[0]._pk: 30, players[1]._pk: 10, players[2]._pk: 20})
    direct = pdb.connection
    assert list(Player.collection().sort(by_score=board.scores)) == [
        players[1]._pk,
        players[2]._pk,
        players[0]._pk,
    ]
    assert pdb.connection is direct and pdb._pipelined_connection is None
    assert [key for key in client.keys("*") if "__collection__" in key] == []


# ---------------------------------------------------------------------- same behaviour as RedisDatabase


def _scenario(db, ns):
    """Run a series of limpyd operations on ``db`` (with no pipeline open)."""
    Person, Counter = make_models(db, ns)
    a = Person(name="alice", email="a@x", nick="al", tags=["t1", "t2"])
    b = Person(name="bob", email="b@x")
    with pytest.raises(UniquenessError):
        Person(name="carl", email="a@x")
    a.name.set("alicia")
    a.city.hset("lyon")
    a.tags.sadd("t3")
    a.tags.srem("t1")
    a.hmset(email="a2@x", city="nice")
    b.nick.get()
    Person.lazy_connect(b._pk).name.set("bobby")
    with pytest.raises(DoesNotExist):
        Person.lazy_connect("404").name.set("x")
    list(Person.collection(name="bobby"))
    list(Person.collection(city__gte="m"))
    c = Counter(name="c", tags=["x"], data={"k": "v"})
    c.value.incr()
    c.hdel("info")
    b.delete()
    c.delete()


@pytest.mark.parametrize("scenario", [_scenario])
def test_same_commands_and_round_trips_as_redis_database(
    redis_settings, database, namespace, client, scenario, monkeypatch
):
    results = {}
    for kind, db in (
        ("redis", RedisDatabase(**redis_settings)),
        ("pipeline", PipelineDatabase(**redis_settings)),
    ):
        db.connection.ping()
        client.flushdb()
        # round trips counted on the client side (one per write of the database's connections):
        # the server's read events also depend on how the kernel splits the data
        writes = []
        connection_class = db.connection.connection_pool.connection_class
        original = connection_class.send_packed_command

        def counting_send(self, command, *args, _original=original, **kwargs):
            writes.append(1)
            return _original(self, command, *args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(connection_class, "send_packed_command", counting_send)
            with command_log(client) as log:
                scenario(db, namespace)
        results[kind] = (log, layout(client), len(writes))
    assert results["pipeline"][0] == results["redis"][0]
    assert results["pipeline"][1] == results["redis"][1]
    assert results["pipeline"][2] == results["redis"][2]


def test_same_command_counts_as_redis_database(pdb, database, client, namespace, count_commands):
    # counts of the core tests (20 commands for the Boat creation, test_model.py), on a PipelineDatabase
    db, ns = pdb, namespace

    class Boat(model.RedisModel):
        database = db
        namespace = ns
        name = fields.StringField(unique=True)
        power = fields.InstanceHashField(indexable=True, default="sail")
        launched = fields.StringField(indexable=True)
        length = fields.StringField()
        tags = fields.SetField(default=["a", "b"])

    Boat(name="x", length=3)
    with count_commands(20):
        boat = Boat(name="y", length=4)
    with count_commands(1):
        Boat(boat._pk)
    with count_commands(0):
        lazy = Boat.lazy_connect(boat._pk)
    with count_commands(4 + 6):  # lock (4), SISMEMBER, GET, SREM, SMEMBERS, SADD, SET
        lazy.name.set("z")
    with count_commands(1):
        boat.length.set(5)
    with count_commands(1):
        assert boat.power.hget() == "sail"
