"""Uniqueness across shards (docs/sharding.rst, "Uniqueness across shards"): the claims.

Every test runs on the private server and on the private cluster, in the default mode and with
``atomic_writes``. The claims are read with plain redis-py clients on each server.
"""

from __future__ import annotations

import re
import zlib

import pytest
import redis
from test_sharding import (
    define_event,
    every_model,
    full_dump,
    node_clients,
    problems_of,
    run_workers,
)

from limpyd import _claims, fields
from limpyd.database import RedisDatabase
from limpyd.exceptions import BulkError, ImplementationError, UniquenessError
from limpyd.sharding import shard_index

SHARDS = 8


def define(database, namespace, atomic, name="Event"):
    """Return a sharded model with a unique StringField ``code`` and a unique InstanceHashField ``ref``."""
    return define_event(
        database,
        namespace,
        shards=SHARDS,
        atomic=atomic,
        name=name,
        code=fields.StringField(unique=True),
        ref=fields.InstanceHashField(unique=True),
    )


def claim_of(Event, name, value):
    """Return the pk a claim names (``None``: no claim), read with a plain client on every server."""
    key = _claims.claim_keys(Event, name, value)[0]
    for client in node_clients(Event.database):
        try:
            held = client.get(key)
        except redis.exceptions.ResponseError:  # MOVED: another node's slot
            continue
        finally:
            client.close()
        if held is not None:
            return held
    return None


def pks_on_different_shards(Event, count=2):
    """Return the first ``count`` auto pks (as the counter gives them) that fall on different shards."""
    pks, shards = [], set()
    for pk in range(1, 200):
        number = shard_index(str(pk), SHARDS)
        if number not in shards:
            shards.add(number)
            pks.append(pk)
        if len(pks) == count:
            return pks
    raise AssertionError("no pks on %d shards" % count)


def without_counter(dumped):
    """Return ``dumped`` without the pk counter (a refused creation has taken its pk)."""
    return {key: value for key, value in dumped.items() if not key.endswith(":max_pk")}


def two_instances(Event):
    """Return two instances on two different shards, without unique values."""
    first = Event(kind="a")
    second = Event(kind="b")
    while second.shard == first.shard:
        second = Event(kind="b")
    return first, second


def test_claim_key_layout(database, namespace, atomic):
    Event = define(database, namespace, atomic)
    number = zlib.crc32(b"code:x") % SHARDS
    prefix = "%s:event#%d" % (namespace, number)
    if database.is_cluster:
        prefix = "{%s}" % prefix
    assert _claims.claim_keys(Event, "code", "x") == (prefix + ":code:x", prefix + ":code~lease:x")
    obj = Event(code="x", kind="a")
    assert claim_of(Event, "code", "x") == obj.pk.get()
    # only the claim is added: no lease is left, the shard keys are those of an unsharded model
    claims = [key for key in full_dump(database) if "#" in key]
    assert claims == [prefix + ":code:x"]
    assert problems_of(database, every_model(Event)) == []


def test_duplicate_creation_refused_across_shards(database, namespace, atomic):
    Event = define(database, namespace, atomic)
    first = Event(code="x", ref="r", kind="a")
    # the next pks go to other shards: each of them is refused by the claim
    before = without_counter(full_dump(database))
    for values in ({"code": "x"}, {"ref": "r"}, {"code": "y", "ref": "r"}):
        with pytest.raises(UniquenessError) as excinfo:
            Event(kind="b", **values)
        name = "ref" if "ref" in values else "code"
        assert str(
            excinfo.value
        ) == 'Value "%s" already indexed for unique field Event.%s (for instance %s)' % (
            values[name],
            name,
            first.pk.get(),
        )
        assert without_counter(full_dump(database)) == before  # the refused pks were allocated
    assert Event.collection(code="x") == [first.pk.get()] and len(Event.collection()) == 1
    assert len({Event.shard_of(pk) for pk in range(1, 5)}) > 1  # the refused ones were on other shards
    assert claim_of(Event, "code", "y") is None
    assert problems_of(database, every_model(Event)) == []


def test_duplicate_set_and_hmset_refused_across_shards(database, namespace, atomic):
    Event = define(database, namespace, atomic)
    first, second = two_instances(Event)
    first.code.set("x")
    first.ref.hset("r")
    before = full_dump(database)
    for write in (
        lambda: second.code.set("x"),
        lambda: second.ref.hset("r"),
        lambda: second.hmset(ref="r", label="l"),
        lambda: Event(second.pk.get()).code.set("x"),
        lambda: Event.lazy_connect(second.pk.get()).hmset(ref="r"),
    ):
        with pytest.raises(UniquenessError) as excinfo:
            write()
        assert "already indexed for unique field Event." in str(excinfo.value)
        assert "(for instance %s)" % first.pk.get() in str(excinfo.value)
        assert full_dump(database) == before
    assert claim_of(Event, "ref", "r") == first.pk.get()
    assert problems_of(database, every_model(Event)) == []


def test_replacing_a_value_frees_the_old_one(database, namespace, atomic):
    Event = define(database, namespace, atomic)
    first, second = two_instances(Event)
    first.code.set("x")
    first.hmset(ref="r")
    first.code.set("y")
    first.hmset(ref="s")
    assert claim_of(Event, "code", "x") is None and claim_of(Event, "ref", "r") is None
    assert claim_of(Event, "code", "y") == first.pk.get()
    second.code.set("x")
    second.ref.hset("r")
    assert claim_of(Event, "code", "x") == second.pk.get() and claim_of(Event, "ref", "r") == second.pk.get()
    # setting the value it holds again changes nothing
    second.code.set("x")
    assert claim_of(Event, "code", "x") == second.pk.get()
    # removing a value frees it
    second.code.delete()
    second.ref.hdel()
    assert claim_of(Event, "code", "x") is None and claim_of(Event, "ref", "r") is None
    first.code.set("x")
    assert problems_of(database, every_model(Event)) == []


def test_delete_frees_the_values(database, namespace, atomic):
    Event = define(database, namespace, atomic)
    first = Event(code="x", ref="r", kind="a")
    first.delete()
    assert claim_of(Event, "code", "x") is None and claim_of(Event, "ref", "r") is None
    assert [key for key in full_dump(database) if "#" in key] == []
    second = Event(code="x", ref="r", kind="b")
    Event(second.pk.get()).delete()
    third = Event(code="x", ref="r", kind="c")
    assert Event.collection(code="x") == [third.pk.get()]
    assert Event.delete_many([third.pk.get()]) == 1
    fourth = Event(code="x", ref="r", kind="d")
    assert Event.collection(kind="d").delete() == 1
    assert [key for key in full_dump(database) if "#" in key] == []
    assert fourth.pk.get() not in Event.collection()
    assert problems_of(database, every_model(Event)) == []


@pytest.mark.parametrize("holder", ["other", "missing"])
def test_a_stale_claim_is_taken_over(database, namespace, atomic, holder):
    Event = define(database, namespace, atomic)
    other = Event(code="z", kind="a")  # exists, but does not hold "x"
    stale = other.pk.get() if holder == "other" else "999"
    for name in ("code", "ref"):
        key = _claims.claim_keys(Event, name, "x")[0]
        with redis.Redis(**_client_settings(database, key), decode_responses=True) as client:
            client.set(key, stale)
    problems = problems_of(database, every_model(Event))
    if not database.is_cluster:  # one server: the checker sees both (on a cluster: when on one node)
        assert len(problems) == 2 and all("claim naming a pk" in problem for problem in problems), problems
    obj = Event(code="x", kind="b")
    assert claim_of(Event, "code", "x") == obj.pk.get()
    obj.ref.hset("x")
    assert claim_of(Event, "ref", "x") == obj.pk.get()
    assert problems_of(database, every_model(Event)) == []


def test_a_pending_claim_is_not_taken_over(database, namespace, atomic):
    Event = define(database, namespace, atomic)
    claim, lease = _claims.claim_keys(Event, "code", "x")
    with redis.Redis(**_client_settings(database, claim), decode_responses=True) as client:
        client.set(claim, "999")
        client.set(lease, "999", px=60000)
        with pytest.raises(UniquenessError):
            Event(code="x", kind="a")
        assert client.get(claim) == "999"
        client.delete(claim, lease)


def test_a_refused_duplicate_is_refused_before_any_claim_is_taken(database, namespace, atomic, monkeypatch):
    """The pk's INCRBY reads the claims of the new values in the same round trip: a duplicate is
    refused after one more read (the holder's value), with no claim nor lease written."""
    from test_sharding_reads import WriteCounter

    Event = define(database, namespace, atomic)
    first = Event(code="x", ref="r", kind="a")
    for client in node_clients(database):  # the claims' read script loaded on every server
        client.script_load(_claims._PEEK)
        client.close()
    before = without_counter(full_dump(database))
    counter = WriteCounter(monkeypatch)
    for values in ({"code": "new", "ref": "r"}, {"code": "x"}):
        with counter, pytest.raises(UniquenessError) as excinfo:
            Event(kind="b", **values)
        assert "for instance %s" % first.pk.get() in str(excinfo.value)
        # one write to each server of the INCRBY and the claims, then one to the holder's server
        servers = len(database.connection.get_primaries()) if database.is_cluster else 1
        writes = counter.per_server
        assert sum(writes.values()) <= servers + 1 and max(writes.values()) <= 2, dict(writes)
        assert without_counter(full_dump(database)) == before  # "new" not claimed, no lease
    assert problems_of(database, every_model(Event)) == []


def _client_settings(database, key):
    """Return redis-py settings reaching the server holding ``key``."""
    if database.is_cluster:
        node = database.connection.get_node_from_key(key)
        return {"host": node.host, "port": node.port}
    return dict(database.connection_settings)


def test_unsupported_writes_of_a_unique_field(database, namespace, atomic):
    Event = define(database, namespace, atomic)
    obj = Event(code="1", kind="a")
    with pytest.raises(ImplementationError) as excinfo:
        obj.code.incr()
    message = str(excinfo.value)
    assert "incr()" in message and "Event.code" in message and "set()" in message, message
    assert obj.code.get() == "1"
    with pytest.raises(UniquenessError):
        Event(kind="b").code.set(value="1")  # the value given by name is claimed too


def test_unique_writes_refused_in_a_pipeline(database, namespace, atomic):
    from limpyd.contrib.database import PipelineDatabase

    Event = define(PipelineDatabase(**database.connection_settings), namespace, atomic)
    obj = Event(code="x", kind="a")
    before = full_dump(database)
    with Event.database.pipeline(transaction=False) as pipeline:
        for write in (lambda: obj.code.set("y"), lambda: obj.hmset(ref="r"), obj.delete):
            with pytest.raises(ImplementationError) as excinfo:
                write()
            assert "inside a pipeline" in str(excinfo.value) and "Event" in str(excinfo.value)
        pipeline.execute()
    assert full_dump(database) == before


def test_create_many_claims_each_row(database, namespace, atomic):
    Event = define(database, namespace, atomic)
    Event(code="taken", kind="a")
    rows = [{"code": "a"}, {"code": "taken"}, {"code": "b", "ref": "r"}, {"code": "a"}, {"ref": "r"}]
    with pytest.raises(BulkError) as excinfo:
        Event.create_many(rows)
    refused = [position for position, _ in excinfo.value.refusals]
    assert refused == [1, 3, 4]
    assert all(isinstance(error, UniquenessError) for _, error in excinfo.value.refusals)
    pks = excinfo.value.pks
    assert pks[1] is None and pks[3] is None and pks[4] is None
    assert claim_of(Event, "code", "a") == pks[0] and claim_of(Event, "ref", "r") == pks[2]
    assert sorted(Event.collection(code="a")) == [pks[0]]
    assert problems_of(database, every_model(Event)) == []


# ---------------------------------------------------------------------- concurrency

WORKERS = 8
ATTEMPTS = 200
VALUES = 100


def _worker(settings, namespace, atomic, worker, queue):
    database = RedisDatabase(**settings)
    Event = define(database, namespace, atomic)
    created = refused = 0
    for attempt in range(ATTEMPTS):
        code = "c%d" % ((attempt * 7 + worker * 13) % VALUES)
        try:
            Event(code=code, ref="r" + code, kind="w%d" % worker)
            created += 1
        except UniquenessError:
            refused += 1
    queue.put((created, refused))


def test_colliding_creations_across_processes(database, namespace, atomic):
    Event = define(database, namespace, atomic)
    results = run_workers(_worker, database, namespace, atomic, WORKERS)
    assert sum(made for made, _ in results) + sum(no for _, no in results) == WORKERS * ATTEMPTS
    assert sum(made for made, _ in results) == VALUES

    holders = {}
    for pk in Event.collection():
        obj = Event(pk)
        code, ref = obj.code.get(), obj.ref.hget()
        assert ref == "r" + code
        assert code not in holders
        holders[code] = pk
    assert sorted(holders) == sorted("c%d" % value for value in range(VALUES))
    for code, pk in holders.items():
        assert claim_of(Event, "code", code) == pk and claim_of(Event, "ref", "r" + code) == pk
    dumped = full_dump(database)
    assert len([key for key in dumped if "#" in key]) == 2 * VALUES
    assert problems_of(database, every_model(Event)) == []


# ---------------------------------------------------------------------- batched claims (create_many)


def test_create_many_refuses_as_row_by_row_creation(database, namespace, atomic):
    """Random rows colliding with each other and with stored values: the same refusals (positions
    and messages) and the same stored values as a 1-shard model given the same rows; a value of
    a refused row is free for the later rows of the batch."""
    import random

    generator = random.Random(5)
    Event = define(database, namespace, atomic)
    single = define_event(
        database,
        namespace + "u",
        shards=1,
        atomic=atomic,
        name="Event",
        code=fields.StringField(unique=True),
        ref=fields.InstanceHashField(unique=True),
    )
    for Model in (Event, single):
        Model(kind="old", code="c0", ref="r0")
    rows = [{"code": "c1", "ref": "r0"}, {"code": "c1"}]  # the first is refused: the second takes c1
    for _ in range(120):
        row = {"kind": "k"}
        if generator.random() < 0.8:
            row["code"] = "c%d" % generator.randrange(40)
        if generator.random() < 0.6:
            row["ref"] = "r%d" % generator.randrange(40)
        rows.append(row)
    outcomes = []
    for Model in (Event, single):
        with pytest.raises(BulkError) as excinfo:
            Model.create_many(iter(rows), batch_size=25)
        error = excinfo.value
        reasons = []
        for position, reason in error.refusals:
            # the holder named is the pk of the row holding the value: pks differ (a sharded model
            # allocates the pks of a batch before its claims), the rows must not
            message, holder = re.match(r"^(.*) \(for instance (\d+)\)$", str(reason)).groups()
            reasons.append((position, message, error.pks.index(holder) if holder in error.pks else "stored"))
        outcomes.append(
            (
                reasons,
                [None if pk is None else (Model(pk).code.get(), Model(pk).ref.hget()) for pk in error.pks],
            )
        )
    assert outcomes[0] == outcomes[1]
    refused = [position for position, _, _ in outcomes[0][0]]
    assert 0 in refused and 1 not in refused
    for values in outcomes[0][1]:
        if values is not None:
            for name, value in zip(("code", "ref"), values):
                if value is not None:
                    assert claim_of(Event, name, value) is not None
    assert problems_of(database, every_model(Event) + [single]) == []
    assert Event.audit().clean


def test_create_many_claims_a_batch_together(database, namespace, atomic, monkeypatch):
    """Per batch of distinct values: the INCRBY, the claims, the shards' script calls and the
    leases' release, each step sent to every node at once: at most 4 writes per node per batch."""
    from test_sharding_reads import WriteCounter

    Event = define(database, namespace, atomic)
    Event.create_many([{"code": "warm%d" % n, "ref": "w%d" % n} for n in range(20)])  # loads the scripts
    counter = WriteCounter(monkeypatch)
    with counter:
        pks = Event.create_many(({"code": "c%d" % n, "ref": "r%d" % n} for n in range(60)), batch_size=30)
    assert len(pks) == 60
    assert counter.per_server and max(counter.per_server.values()) <= 2 * 4, dict(counter.per_server)
    for n in (0, 31, 59):
        assert claim_of(Event, "code", "c%d" % n) == pks[n] and claim_of(Event, "ref", "r%d" % n) == pks[n]
    assert not [key for key in full_dump(database) if "~lease" in key]  # every lease dropped
    assert problems_of(database, every_model(Event)) == []
