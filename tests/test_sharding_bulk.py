"""Bulk creation and deletion, and expiring instances, on sharded models (docs/sharding.rst).

Every test using ``database`` runs on the private server (``single``) and on the private cluster
(``cluster``), most in both write modes (``default`` and ``atomic``). Results are compared with
a 1-shard model given the same rows and the same operations; keys are read with plain redis-py
clients on every server, and the shared consistency checker is given the shard classes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import redis
from _redis_dump import command_log, warm_model_script
from test_sharding import (  # noqa: F401 - pytest_generate_tests: single server and cluster
    define_event,
    every_model,
    full_dump,
    node_clients,
    problems_of,
    pytest_generate_tests,
    tagged,
)

from limpyd import _atomic, fields, model, sharding
from limpyd.contrib.collection import ExtendedCollectionManager
from limpyd.exceptions import BulkError, DoesNotExist, ImplementationError, UniquenessError
from limpyd.indexes import EqualIndex
from limpyd.reaper import next_deadline, reap
from limpyd.sharding import shard_index

SHARDS = 16


def rows(count, start=0):
    """Yield ``count`` rows (a generator: create_many must stream it), some values missing."""
    for n in range(start, start + count):
        row = {
            "kind": "k%d" % (n % 3),
            "score": str(n % 5),
            "label": "l%02d" % (n % 11),
            "tags": ["t%d" % (n % 4), "all"],
        }
        if n % 6 == 0:
            row["note"] = "n%d" % n
        if n % 9 == 0:
            del row["label"]
        yield row


def pair(database, namespace, atomic, **extra):
    """Return a 16-shard model and a 1-shard model with the same fields (different namespaces)."""
    sharded = define_event(database, namespace, shards=SHARDS, atomic=atomic, **extra)
    single = define_event(database, namespace + "one", shards=1, atomic=atomic, **extra)
    return sharded, single


def collection_of(Model):
    """Return ``Model.collection``, an extended one (``values()``) for the 1-shard model."""
    if Model._limpyd_shard_models is not None:
        return Model.collection
    return functools.partial(Model.collection, manager=ExtendedCollectionManager)


def readings(Model):
    """Return what the readers of ``Model`` give (filters, sorts, slices, values, instances)."""
    c = collection_of(Model)
    return {
        "sorted": list(c().sort()),
        "unsorted": sorted(c(), key=lambda pk: (len(pk), pk)),
        "len": (len(c()), len(c(tags="all")), len(c(kind="k2")), len(c(score="2"))),
        "filter": sorted(c(kind="k1", tags="t2")),
        "by-score": list(c(score__gte=2).sort(by="score")),
        "by-label": list(c(kind="k0").sort(by="-label", alpha=True)),
        "slices": (list(c().sort(by="score")[2:7]), list(c().sort()[-3:]), list(c(tags="t1").sort()[1:4])),
        "values": list(c().sort().values("kind", "score", "label", "note")),
        "flat": list(c(kind="k0").sort(by="label", alpha=True).values_list("label", flat=True)),
        "instances": [instance.pk.get() for instance in c(tags="t3").sort().instances()],
    }


def shard_keys(database, Model, pk):
    """Return the keys of every server holding data of the instance ``pk`` of the sharded ``Model``."""
    prefix = Model.shard_model(Model.shard_of(pk))._name + ":%s:" % pk
    return [key for key in full_dump(database) if key.startswith(prefix)]


def warm_scripts(Model):
    """Load the script of every shard class of ``Model`` and store its shard count (command logs
    then hold no loading, and no ``__shards__`` check: once per model and process)."""
    sharding.check_count(Model, write=True)
    for shard in every_model(Model)[1:]:
        warm_model_script(shard)


def stored_pks(database, Model):
    """Return the pks having keys of their own in the shards of ``Model`` (``<shard>:<pk>:<field>``)."""
    prefixes = tuple(shard._name + ":" for shard in every_model(Model)[1:])
    names = set(Model._fields) | {"hash"}
    return {
        key.split(":")[-2]
        for key in full_dump(database)
        if key.startswith(prefixes) and key.count(":") >= 3 and key.split(":")[-1] in names
    }


@contextlib.contextmanager
def node_logs(database):
    """Record the commands every server of ``database`` runs inside the block: one log per server."""
    clients = node_clients(database)
    try:
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(command_log(client)) for client in clients]
    finally:
        for client in clients:
            client.close()


def labelled(call):
    """Return ``call`` (a line of :func:`script_calls`) as ``INCRBY ...`` or ``script <shard number>``."""
    if call.startswith("INCRBY"):
        return call
    return "script %s" % re.search(r"@(\d+)\}?:collection", call).group(1)


def script_calls(log):
    """Return the script calls (and INCRBY) a client sent in ``log`` (commands run inside scripts are lower-case)."""
    return [line for line in log if line.startswith(("EVALSHA", "FCALL", "INCRBY"))]


# ---------------------------------------------------------------------- create_many


def test_create_many_gives_what_a_single_shard_model_gives(database, namespace, atomic):
    sharded, single = pair(database, namespace, atomic)
    results = [Model.create_many(rows(60), batch_size=7) for Model in (sharded, single)]
    assert results[0] == results[1] == [str(n) for n in range(1, 61)]
    assert readings(sharded) == readings(single)
    assert {sharded(pk).shard for pk in results[0]} == set(range(SHARDS))  # spread over every shard
    assert all(type(sharded(pk)) is sharded.shard_model(shard_index(pk, SHARDS)) for pk in results[0])
    assert sharded(9).hmget("score", "label") == single(9).hmget("score", "label") == ["3", "l08"]
    # the model's counter is shared by every path: the next creation and batch follow
    assert sharded(kind="x").pk.get() == single(kind="x").pk.get() == "61"
    assert sharded.create_many(rows(3)) == single.create_many(rows(3)) == ["62", "63", "64"]
    assert readings(sharded) == readings(single)
    dumped = full_dump(database)
    assert dumped[sharded.make_key(sharded._name, "max_pk")][1] == "64"
    own = [key for key in dumped if key.startswith(sharded._name + ":")]
    assert sorted(own) == sorted(sharded.make_key(sharded._name, part) for part in ("max_pk", "__shards__"))
    assert problems_of(database, every_model(sharded) + [single]) == []


def test_create_many_streams_the_rows(database, namespace, atomic):
    """A batch is written before the next rows are read: the rows are never held as a whole."""
    sharded = define_event(database, namespace, shards=SHARDS, atomic=atomic)
    stored_when_read = []

    def streamed():
        for n, row in enumerate(rows(35)):
            if n % 10 == 0:
                stored_when_read.append(len(sharded.collection()))
            yield row

    assert sharded.create_many(streamed(), batch_size=10) == [str(n) for n in range(1, 36)]
    assert stored_when_read == [0, 10, 20, 30]


def test_create_many_sends_one_script_call_per_shard_per_batch(database, namespace, atomic):
    sharded = define_event(database, namespace, shards=4, atomic=atomic)
    warm_scripts(sharded)
    with node_logs(database) as logs:
        pks = sharded.create_many(rows(50), batch_size=20)
    assert pks == [str(n) for n in range(1, 51)]
    expected = []
    for batch in (pks[0:20], pks[20:40], pks[40:50]):
        expected.append("INCRBY %s %d" % (sharded.make_key(sharded._name, "max_pk"), len(batch)))
        expected.extend("script %d" % number for number in sorted({shard_index(pk, 4) for pk in batch}))
    calls = [[labelled(call) for call in script_calls(log)] for log in logs]
    assert sorted(sum(calls, [])) == sorted(expected), calls
    if not database.is_cluster:  # one server: the order of the calls too
        assert calls == [expected]
    assert problems_of(database, every_model(sharded)) == []


def test_refused_rows_are_reported_together(database, namespace, atomic):
    sharded, single = pair(database, namespace, atomic)
    given = [
        {"kind": "a"},
        {"kind": "b", "nope": 1},  # not a field
        {"kind": "c", "score": object()},  # a value Redis cannot store
        {"kind": "d"},
        {"kind": "e", "pk": 99},  # an auto pk cannot be given
        {"kind": "f"},
    ]
    errors = []
    for Model in (sharded, single):
        with pytest.raises(BulkError) as raised:
            Model.create_many(iter(given), batch_size=2)
        errors.append(raised.value)
    for error in errors:
        assert [position for position, _ in error.refusals] == [1, 2, 4]
        assert error.pks == ["1", None, None, "2", None, "3"]  # refused rows allocate no pk
        reasons = [reason for _, reason in error.refusals]
        assert "`nope` is not a valid field name for `Event`" in str(reasons[0])
        assert isinstance(reasons[1], redis.DataError) and "Event.score" in str(reasons[1])
        assert isinstance(reasons[2], ValueError) and "auto-increment" in str(reasons[2])
        assert str(error).startswith("3 row(s) refused, the 3 others created: row 1:")
    assert [type(reason) for _, reason in errors[0].refusals] == [type(r) for _, r in errors[1].refusals]
    assert readings(sharded) == readings(single)
    assert sorted(sharded.collection(), key=int) == ["1", "2", "3"]
    assert problems_of(database, every_model(sharded) + [single]) == []


def test_given_pks_pick_their_shard(database, namespace, atomic):
    sharded, single = pair(database, namespace, atomic, id=fields.PKField())
    sharded(id="taken", kind="x")
    single(id="taken", kind="x")
    given = [{"id": "user-%d" % n, "kind": "k%d" % (n % 3), "tags": ["t"]} for n in range(30)]
    given[4] = {"id": "taken", "kind": "y"}  # stored already
    given[9] = {"id": "user-2", "kind": "y"}  # given by an earlier row (another batch)
    given[11] = {"kind": "y"}  # no pk
    given[12] = {"id": "é", "kind": "y", "tags": ["t"]}
    errors = []
    for Model in (sharded, single):
        with pytest.raises(BulkError) as raised:
            Model.create_many(iter(given), batch_size=8)
        errors.append(raised.value)
    for error in errors:
        assert [position for position, _ in error.refusals] == [4, 9, 11]
        reasons = [reason for _, reason in error.refusals]
        assert isinstance(reasons[0], UniquenessError) and "taken already exists" in str(reasons[0])
        assert isinstance(reasons[1], UniquenessError) and "user-2 already exists" in str(reasons[1])
        assert isinstance(reasons[2], ValueError) and "must fill it" in str(reasons[2])
    assert errors[0].pks == errors[1].pks
    assert errors[0].pks[12] == "é" and errors[0].pks[4] is None and errors[0].pks[29] == "user-29"
    for pk in ("é", "user-3", "taken"):
        assert type(sharded(pk)) is sharded.shard_model(shard_index(pk, SHARDS))
    assert sorted(sharded.collection(tags="t")) == sorted(single.collection(tags="t"))
    assert sorted(sharded.collection(kind="k1")) == sorted(single.collection(kind="k1"))
    assert len(sharded.collection()) == len(single.collection()) == 28
    assert database.connection.get(sharded.make_key(sharded._name, "max_pk")) is None
    assert problems_of(database, every_model(sharded) + [single]) == []


def test_models_the_script_cannot_write_fall_back_to_one_by_one(database, namespace):
    """An index without server-side form: each row is a creation (and each pk a deletion) of its own."""
    lower = EqualIndex.configure(transform=lambda value: value.lower())
    sharded, single = pair(
        database, namespace, False, word=fields.StringField(indexable=True, indexes=[lower])
    )
    given = [{"word": "W%d" % (n % 4), "kind": "k"} for n in range(20)]
    given[3] = {"word": "x", "nope": 1}
    errors = []
    for Model in (sharded, single):
        with pytest.raises(BulkError) as raised:
            Model.create_many(iter(given), batch_size=6)
        errors.append(raised.value)
    assert errors[0].pks == errors[1].pks and errors[0].pks[3] is None and errors[0].pks[19] == "19"
    assert [position for position, _ in errors[0].refusals] == [3]
    assert sorted(sharded.collection(word="w1"), key=int) == sorted(single.collection(word="w1"), key=int)
    assert len(sharded.collection(word="w1")) == 5
    assert [Model.delete_many(["1", "2", "40"], batch_size=2) for Model in (sharded, single)] == [2, 2]
    assert readings(sharded) == readings(single)
    assert not {"1", "2"} & stored_pks(database, sharded) and "3" in stored_pks(database, sharded)


def test_shard_classes_refuse_create_many(database, namespace):
    sharded = define_event(database, namespace, shards=4)
    with pytest.raises(ImplementationError) as raised:
        sharded.shard_model(2).create_many([{"kind": "a"}])
    message = str(raised.value)
    assert "create_many() on the shard class 2 of" in message and "Event.create_many()" in message
    assert "docs/sharding.rst" in message
    with pytest.raises(ValueError, match=r"batch_size=0 for Event: give an int >= 1"):
        sharded.create_many([{"kind": "a"}], batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size=0 for Event: give an int >= 1"):
        sharded.delete_many(["1"], batch_size=0)
    assert full_dump(database) == {}


def test_bulk_in_a_pipeline_is_refused(database, namespace):
    from limpyd.contrib.database import PipelineDatabase

    sharded = define_event(PipelineDatabase(**database.connection_settings), namespace, shards=4)
    # transaction=False: MULTI on a cluster needs redis-py >= 6.1, the oldest CI leg has 4.6
    with sharded.database.pipeline(transaction=False) as pipeline:
        for call, feature in (
            (lambda: sharded.create_many([{"kind": "a"}]), "create_many() inside a pipeline"),
            (lambda: sharded.delete_many(["1"]), "delete_many() inside a pipeline"),
        ):
            with pytest.raises(ImplementationError) as raised:
                call()
            assert feature in str(raised.value) and "docs/sharding.rst" in str(raised.value)
        pipeline.execute()
    assert full_dump(database) == {}


# ---------------------------------------------------------------------- deletion


def test_delete_many_and_collection_delete(database, namespace, atomic):
    sharded, single = pair(database, namespace, atomic)
    for Model in (sharded, single):
        Model.create_many(rows(80))
    counts = []
    for Model in (sharded, single):
        pks = (pk for pk in [1, "2", "2", 3, "999"] + [str(n) for n in range(10, 40)])  # streamed
        counts.append(
            (
                Model.delete_many(pks, batch_size=6),
                Model.delete_many(["1", "3", "40"]),  # the deleted ones are skipped
                Model.collection(kind="k1").delete(batch_size=5),
                Model.collection(pk=42).delete(),
                Model.collection(pk=51, kind="k0").delete(),  # 51 is k2: nothing
                collection_of(Model)(tags="t3").sort(by="score").values("kind").delete(),
            )
        )
    assert counts[0] == counts[1] == (33, 1, 16, 1, 0, 7), counts
    assert readings(sharded) == readings(single)
    assert len(sharded.collection()) == 80 - 33 - 1 - 16 - 1 - 7 == 22
    for pk in ("1", "2", "10", "39", "40", "42", "50"):
        assert not sharded.exists(pk=pk) and shard_keys(database, sharded, pk) == []
    assert shard_keys(database, sharded, "45")  # kept
    assert problems_of(database, every_model(sharded) + [single]) == []


def test_delete_many_sends_one_script_call_per_shard_per_batch(database, namespace, atomic):
    sharded = define_event(database, namespace, shards=4, atomic=atomic)
    sharded.create_many(rows(40))
    warm_scripts(sharded)
    pks = [str(n) for n in range(1, 31)]
    with node_logs(database) as logs:
        assert sharded.delete_many(pks, batch_size=12) == 30
    expected = [
        "script %d" % number
        for batch in (pks[:12], pks[12:24], pks[24:])
        for number in sorted({shard_index(pk, 4) for pk in batch})
    ]
    calls = [[labelled(call) for call in script_calls(log)] for log in logs]
    assert sorted(sum(calls, [])) == sorted(expected), calls
    if not database.is_cluster:
        assert calls == [expected]
    assert problems_of(database, every_model(sharded)) == []


def test_shard_classes_delete_their_own_pks(database, namespace):
    sharded = define_event(database, namespace, shards=4)
    pks = sharded.create_many(rows(12))
    mine = [pk for pk in pks if shard_index(pk, 4) == 1]
    others = [pk for pk in pks if shard_index(pk, 4) != 1]
    assert mine and sharded.shard_model(1).delete_many(pks) == len(mine)
    assert sorted(sharded.collection(), key=int) == others
    assert problems_of(database, every_model(sharded)) == []


# ---------------------------------------------------------------------- expiring instances


def test_expiring_sharded_models_can_be_defined(database, namespace):
    for settings in ({"expiring": True}, {"default_ttl": 60}):
        sharded = define_event(database, namespace, shards=4, name="Expiring%d" % len(settings), **settings)
        assert sharded._limpyd_expiring and all(shard._limpyd_expiring for shard in every_model(sharded))
    never = define_event(database, namespace, shards=4, name="Never")
    with pytest.raises(ImplementationError, match=r"Never.create_many\(ttl=...\): the instances of Never"):
        never.create_many([{"kind": "a"}], ttl=10)
    with pytest.raises(ImplementationError, match=r"purge_expired\(\): the instances of Never do not expire"):
        never.purge_expired()


def test_expire_in_at_ttl_and_persist(database, namespace, atomic):
    sharded = define_event(database, namespace, shards=SHARDS, atomic=atomic, expiring=True)
    items = [sharded(kind="a") for _ in range(4)]
    item = items[2]
    assert item.time_to_live() is None
    item.expire_in(100)
    assert 99 < item.time_to_live() <= 100
    assert 99 < sharded(item.pk.get()).time_to_live() <= 100
    assert 99 < sharded.lazy_connect(item.pk.get()).time_to_live() <= 100
    item.expire_at(time.time() + 20)
    assert 19 < item.time_to_live() <= 20
    assert item.persist() is True and item.persist() is False and item.time_to_live() is None
    items[1].expire_in(50)
    # the deadline is in the instance's shard, in its slot: none in the model's own keys
    dumped = full_dump(database)
    deadlines = {key: content for key, (_, content, _) in dumped.items() if key.endswith("__deadlines__")}
    shard_name = sharded.shard_model(items[1].shard)._name
    assert list(deadlines) == [shard_name + ":__deadlines__"]
    assert [member for member, _ in deadlines[shard_name + ":__deadlines__"]] == [items[1].pk.get()]
    items[3].expire_at(time.time() - 60)  # due now: gone for every reader
    with pytest.raises(DoesNotExist):
        sharded(items[3].pk.get())
    assert sorted(sharded.collection(kind="a"), key=int) == ["1", "2", "3"]
    assert problems_of(database, every_model(sharded)) == []


def test_default_ttl_on_creation(database, namespace, atomic):
    sharded = define_event(database, namespace, shards=SHARDS, atomic=atomic, default_ttl=60)
    created = [sharded(kind="a", tags=["t"]) for _ in range(5)]
    bulk = sharded.create_many(rows(20))
    bulk_ttl = sharded.create_many(rows(5), ttl=300)
    assert all(59 < instance.time_to_live() <= 60 for instance in created)
    assert all(59 < sharded(pk).time_to_live() <= 60 for pk in bulk)
    assert all(299 < sharded(pk).time_to_live() <= 300 for pk in bulk_ttl)
    dumped = full_dump(database)
    deadlines = {}
    for key, (_, content, _) in dumped.items():
        if key.endswith(":__deadlines__"):
            deadlines.update({member: key for member, _ in content})
    assert len(deadlines) == 30  # every instance has its deadline, in its shard
    for pk, key in deadlines.items():
        assert key == sharded.shard_model(shard_index(pk, SHARDS))._name + ":__deadlines__"
    assert problems_of(database, every_model(sharded)) == []


def test_default_ttl_creation_is_one_step(database, namespace, atomic):
    """The deadline is written before any value (default mode) or by the same script call (atomic): never immortal."""
    sharded = define_event(database, namespace, shards=4, atomic=atomic, default_ttl=60)
    warm_scripts(sharded)
    with node_logs(database) as logs:
        instance = sharded(kind="a", note="n")
    assert any(log and log[0] == "INCRBY %s 1" % sharded.make_key(sharded._name, "max_pk") for log in logs)
    shard_name = sharded.shard_model(instance.shard)._name
    value = re.compile(r"(?i)(SET|HSET) %s:%s:" % (re.escape(shard_name), instance.pk.get()))
    (log,) = [
        log for log in logs if any(line.startswith("zadd %s:__deadlines__" % shard_name) for line in log)
    ]
    deadline = [i for i, line in enumerate(log) if line.startswith("zadd %s:__deadlines__" % shard_name)]
    first_value = [i for i, line in enumerate(log) if value.match(line)]
    assert deadline and first_value, log
    if atomic:  # a script's commands are logged before its call: the same call wrote both
        calls = [i for i, line in enumerate(log) if line.startswith(("EVALSHA", "FCALL"))]
        assert min(i for i in calls if i > deadline[0]) == min(i for i in calls if i > first_value[0]), log
    else:
        assert deadline[0] < first_value[0], log


def _len_then_iteration(collection) -> int:
    """Return ``len(collection)``, then iterate it (which deletes what its ``len()`` kept)."""
    length = len(collection)
    assert len(list(collection)) == length
    return length


def test_due_instances_are_hidden_from_every_reader(database, namespace, atomic):
    """Each reader meets due instances of several shards, still stored, and hides them as a 1-shard model does."""
    sharded, single = pair(
        database, namespace, atomic, expiring=True, note=fields.StringField(indexable=True)
    )
    for Model in (sharded, single):
        assert Model.create_many(rows(90)) == [str(n) for n in range(1, 91)]
    everyone = [str(n) for n in range(1, 91)]
    readers = {
        "iteration": lambda M: list(M.collection().sort()),
        "unsorted": lambda M: sorted(M.collection(), key=int),
        "len": lambda M: len(M.collection()),
        "len-filter": lambda M: len(M.collection(tags="all")),
        "filter": lambda M: sorted(M.collection(kind="k1"), key=int),
        "filters": lambda M: sorted(M.collection(kind="k1", tags="all"), key=int),
        # the core's len() of an intersection keeps its key (300 s) for the iteration after it
        "len-filters": lambda M: _len_then_iteration(M.collection(kind="k2", tags="all")),
        "nosort": lambda M: sorted(M.collection(kind="k0").sort(by="nosort"), key=int),
        "range": lambda M: list(M.collection(score__gte=2).sort(by="score")),
        "alpha": lambda M: list(M.collection().sort(by="-label", alpha=True)),
        "slice": lambda M: list(M.collection().sort(by="score")[3:12]),
        "end": lambda M: list(M.collection().sort()[-4:]),
        "index": lambda M: (M.collection().sort()[0], M.collection().sort()[-1]),
        "values": lambda M: [row["pk"] for row in collection_of(M)().sort().values("pk", "kind")],
        "flat": lambda M: list(
            collection_of(M)(kind="k0").sort(by="label", alpha=True).values_list("pk", flat=True)
        ),
        "instances": lambda M: [i.pk.get() for i in M.collection(tags="t2").sort().instances()],
        "exists": lambda M: [pk for pk in everyone if M.exists(pk=pk)],
        "exists-filter": lambda M: M.exists(note="n54"),  # row 54 (pk 55) only
        "bool": lambda M: bool(M.collection(note="n60")),  # row 60 (pk 61) only
        "get": lambda M: [M(pk).pk.get() for pk in ("2", "3")],
    }
    alive = list(everyone)
    reserved = {"exists-filter": ["55"], "bool": ["61"], "get": ["2", "3"]}
    for name, reader in readers.items():
        candidates = [pk for pk in alive if pk not in sum(reserved.values(), [])]
        if name in reserved:
            due = reserved.pop(name)
        elif name == "index":
            due = [candidates[0], candidates[-1]]
        else:
            due = [candidates[0], candidates[len(candidates) // 2], candidates[-1]]
        deadline = time.time() + 0.15  # the same for all: no call of the round purges another's
        for pk in due:
            alive.remove(pk)
            for Model in (sharded, single):
                Model.lazy_connect(pk).expire_at(deadline)
        time.sleep(max(0.0, deadline + 0.02 - time.time()))
        assert set(due) <= stored_pks(database, sharded), name  # still stored: not purged yet
        if name == "get":
            for Model in (sharded, single):
                for pk in due:
                    with pytest.raises(DoesNotExist):
                        Model(pk)
            continue
        results = [reader(sharded), reader(single)]
        assert results[0] == results[1], name
        result = results[0]
        if name in ("len", "len-filter"):
            assert result == len(alive), name
        elif name == "len-filters":
            assert result == len([pk for pk in alive if (int(pk) - 1) % 3 == 2]), name
        elif name in ("exists-filter", "bool"):
            assert result is False, name
        elif name == "index":
            assert result == (alive[0], alive[-1])
        elif name in ("iteration", "exists", "values"):
            assert result == alive, name
        else:
            assert result and not set(result) & set(due), name
    assert sorted(sharded.collection(), key=int) == alive
    assert problems_of(database, every_model(sharded) + [single]) == []


def test_default_ttl_instances_disappear(database, namespace, atomic):
    sharded = define_event(database, namespace, shards=SHARDS, atomic=atomic, default_ttl=0.3)
    kept = sharded.create_many(rows(6))
    for pk in kept:
        assert sharded(pk).persist() is True
    due = sharded.create_many(rows(20))
    assert len(sharded.collection(tags="all")) == 26
    time.sleep(0.35)
    assert sorted(sharded.collection(tags="all"), key=int) == kept
    assert len(sharded.collection()) == 6 and list(sharded.collection().sort()[-2:]) == kept[-2:]
    assert not any(shard_keys(database, sharded, pk) for pk in due)
    assert problems_of(database, every_model(sharded)) == []


# ---------------------------------------------------------------------- the reaper


def test_purge_expired_is_bounded_over_the_shards(database, namespace, atomic):
    sharded = define_event(database, namespace, shards=SHARDS, atomic=atomic, expiring=True)
    pks = sharded.create_many(rows(25), ttl=0.1)
    assert len({shard_index(pk, SHARDS) for pk in pks}) > 8
    time.sleep(0.15)
    assert [sharded.purge_expired(limit=10) for _ in range(4)] == [10, 10, 5, 0]
    with pytest.raises(ValueError, match=r"purge_expired\(limit=0\) on Event: give an int >= 1"):
        sharded.purge_expired(limit=0)
    model_keys = [sharded.make_key(sharded._name, part) for part in ("__shards__", "max_pk")]
    assert sorted(full_dump(database)) == model_keys


def test_reaper_reaps_every_shard(database, namespace, atomic):
    sharded = define_event(database, namespace, shards=SHARDS, atomic=atomic, expiring=True)
    other = define_event(database, namespace + "o", shards=4, atomic=atomic)  # not expiring: left alone
    other.create_many(rows(3))
    pks = sharded.create_many(rows(40))
    assert next_deadline(sharded) is None
    due = pks[::3]
    for pk in due:
        sharded.lazy_connect(pk).expire_in(0.1)
    later = pks[1]
    sharded.lazy_connect(later).expire_in(30)
    assert len({shard_index(pk, SHARDS) for pk in due}) > 6
    assert 0 < next_deadline(sharded) <= 0.1
    time.sleep(0.15)
    assert next_deadline(sharded) == 0 and set(due) <= stored_pks(database, sharded)
    purged = []
    total = reap([sharded, other], once=True, on_purge=lambda model, count: purged.append((model, count)))
    assert total == len(due) and purged == [(sharded, len(due))]
    assert 29 < next_deadline(sharded) <= 30
    # nobody read them: the reaper removed their keys, index entries and deadlines, in every shard
    assert not set(due) & stored_pks(database, sharded) and later in stored_pks(database, sharded)
    dumped = full_dump(database)
    deadlines = [(key, content) for key, (_, content, _) in dumped.items() if key.endswith("__deadlines__")]
    assert [[member for member, _ in content] for _, content in deadlines] == [[later]]
    assert len(other.collection()) == 3
    assert problems_of(database, every_model(sharded) + every_model(other)) == []
    assert reap([sharded], once=True) == 0


LIMPYD = shutil.which("limpyd", path=os.path.dirname(sys.executable))


@pytest.mark.skipif(LIMPYD is None, reason="the limpyd console script is not installed: pip install -e .")
def test_limpyd_reaper_command_reaps_every_shard(database, namespace, tmp_path):
    module = "sharded_reaper_%s" % namespace
    (tmp_path / ("%s.py" % module)).write_text(
        textwrap.dedent(
            """
            from limpyd import fields, model
            from limpyd.database import RedisDatabase

            database = RedisDatabase(host="localhost", port=1, db=0)  # --url switches it


            class Event(model.RedisModel):
                database = database
                namespace = %r
                shards = 8
                expiring = True
                kind = fields.StringField(indexable=True)
            """
            % namespace
        )
    )
    Event = type(
        "Event",
        (model.RedisModel,),
        {
            "database": database,
            "namespace": namespace,
            "shards": 8,
            "expiring": True,
            "kind": fields.StringField(indexable=True),
        },
    )
    pks = Event.create_many({"kind": "k%d" % n} for n in range(30))
    due = pks[::2]
    for pk in due:
        Event.lazy_connect(pk).expire_in(0.1)
    time.sleep(0.15)
    assert set(due) <= stored_pks(database, Event)
    if database.is_cluster:  # --url names one node: the command finds the cluster
        node = database.connection.get_primaries()[0]
        url = "redis://%s:%d" % (node.host, node.port)
    else:
        settings = database.connection_settings
        url = "unix://%s?db=%d" % (settings["unix_socket_path"], settings.get("db", 0))
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [LIMPYD, "--url", url, "--models", module, "reaper", "--once"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "purged %d due instance(s) in all" % len(due) in done.stdout, done.stdout
    assert stored_pks(database, Event) == set(pks[1::2])
    assert sorted(Event.collection(), key=int) == pks[1::2]
    assert problems_of(database, every_model(Event)) == []


def test_the_script_of_each_shard_knows_it_expires(database, namespace):
    sharded = define_event(database, namespace, shards=4, atomic=True, expiring=True)
    for shard in every_model(sharded)[1:]:
        schema = _atomic.schema_of(shard)
        assert schema["x"] is True and schema["m"] == shard._name == tagged(
            database, "%s:event@%d" % (namespace, shard._limpyd_shard)
        )
