"""The stored shard count (``<model>:__shards__``) and ``limpyd reshard`` (limpyd.resharding).

Every test using ``database`` runs on the private server (``single``) and on the private cluster
(``cluster``), as tests/test_sharding.py does. The model holding the data is declared with the old
count; after a reshard the same model is declared again with the new count on another
``RedisDatabase`` with the same settings (what a restarted process does), and everything it reads
is compared with what the old declaration read before the move.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_sharding import (  # noqa: F401 - pytest_generate_tests: each test on both backends
    define_event,
    every_model,
    full_dump,
    problems_of,
    pytest_generate_tests,
    tagged,
)

from limpyd import fields, resharding
from limpyd.contrib.collection import ExtendedCollectionManager
from limpyd.database import RedisDatabase
from limpyd.exceptions import DoesNotExist, ImplementationError, UniquenessError

EXTRA = {
    "rank": fields.StringField(),
    "steps": fields.ListField(),
    "points": fields.SortedSetField(),
    "attrs": fields.HashField(),
}


def declare(database, namespace, shards, **extra):
    """Return the test model declared with ``shards`` on a new database with ``database``'s settings."""
    other = RedisDatabase(**database.connection_settings)
    return define_event(other, namespace, shards=shards, **dict(EXTRA, **extra))


def fill(Model, count=90, seed=5):
    """Create ``count`` instances with values in every kind of field, then delete and update some."""
    rng = random.Random(seed)
    for n in range(count):
        row = {
            "kind": rng.choice(["a", "b", "c", None]),
            "score": rng.choice([None, str(rng.randint(-9, 9))]),
            "label": rng.choice([None, "l%d" % rng.randint(0, 20)]),
            "tags": rng.sample(["t1", "t2", "t3"], rng.randint(0, 2)),
            "rank": rng.choice([None, str(rng.randint(0, 5))]),
            "steps": rng.sample(["s1", "s2", "s3", "s4"], rng.randint(0, 3)),
            "points": {"p%d" % i: rng.randint(0, 9) + 0.5 for i in range(rng.randint(0, 2))},
            "attrs": {"x": str(n)} if n % 4 else {},
        }
        Model(**{name: value for name, value in row.items() if value not in (None, [], {})})
    for pk in rng.sample(range(1, count + 1), count // 10):
        Model(pk).delete()


def readings(Model) -> dict:
    """Return what the model answers: every instance's values, and collections, filters and sorts."""
    manager = ExtendedCollectionManager if Model._limpyd_shard_models is None else None
    instances = {}
    for pk in Model.collection():
        instance = Model(pk)
        instances[pk] = (
            instance.kind.get(),
            instance.hmget("score", "label"),
            sorted(instance.tags.smembers()),
            instance.rank.get(),
            instance.steps.lrange(0, -1),
            instance.points.zrange(0, -1, withscores=True),
            instance.attrs.hgetall(),
        )
    return {
        "instances": instances,
        "all": sorted(Model.collection(), key=int),
        "len": len(Model.collection()),
        "kind": list(Model.collection(kind="a").sort()),
        "tags": sorted(Model.collection(tags="t2"), key=int),
        "score": list(Model.collection(score__gte=0).sort(by="-score")),
        "label": list(Model.collection(label__startswith="l1").sort(by="label", alpha=True)),
        "window": list(Model.collection().sort(by="rank")[3:12]),
        "values": list(Model.collection(kind="b", manager=manager).sort().values("pk", "rank")),
        "exists": [Model.exists(pk=pk) for pk in ("1", "5", "77", "1000")],
    }


def dump_of_model(database, Model) -> dict:
    return {key: value for key, value in full_dump(database).items() if key.startswith(Model._name[:-1])}


def assert_only_layout_of(database, Model, namespace):
    """Assert every key of the namespace is the model's own (max_pk, __shards__) or a shard's of its count."""
    own = tagged(database, "%s:event" % namespace)
    names = {shard._name for shard in every_model(Model)[1:]}
    for key in full_dump(database):
        if key in (own + ":max_pk", own + ":__shards__"):
            continue
        assert any(key.startswith(name + ":") for name in names), key


# ---------------------------------------------------------------------- the stored count


def test_the_first_creation_stores_the_count_once(database, namespace):
    Event = define_event(database, namespace, shards=4)
    key = Event.make_key(Event._name, "__shards__")
    client = database.connection
    assert len(Event.collection()) == 0 and Event.exists(pk=1) is False
    assert client.get(key) is None  # reads store nothing
    Event(kind="a")
    assert client.get(key) == "4"
    client.delete(key)
    Event(kind="b")
    assert client.get(key) is None  # checked once per model and process: no second command
    other = define_event(RedisDatabase(**database.connection_settings), namespace, shards=4)
    other.create_many([{"kind": "c"}])
    assert client.get(key) == "4" and len(other.collection()) == 3


def test_the_check_costs_one_command_per_model_and_process(database, namespace, count_commands):
    Event = define_event(database, namespace, shards=4)
    for n in range(6):
        Event(kind="a")  # the count is stored (and checked) by the first one
    counts = []
    for _ in range(2):  # a new process: the first read checks, the next ones do not
        Fresh = define_event(RedisDatabase(**database.connection_settings), namespace, shards=4)
        Fresh.database.connection.ping()
        for operation in (
            lambda: Fresh(3),
            lambda: Fresh(3),
            lambda: Fresh(kind="b"),
            lambda: Fresh(kind="b"),
        ):
            with count_commands() as counter:
                operation()
            counts.append(counter.count)
    assert counts[0] == counts[1] + 1 and counts[2] == counts[3], counts
    assert counts[4:] == counts[:4]


def test_a_declared_count_other_than_the_stored_one_is_refused(database, namespace):
    Event = define_event(database, namespace, shards=4)
    Event(kind="a")
    Wrong = define_event(RedisDatabase(**database.connection_settings), namespace, shards=8)
    operations = [
        lambda: Wrong(1),
        lambda: Wrong(kind="b"),
        lambda: Wrong.lazy_connect(1),
        lambda: Wrong.exists(pk=1),
        lambda: list(Wrong.collection(kind="a")),
        lambda: Wrong.create_many([{"kind": "c"}]),
        lambda: Wrong.delete_many(["1"]),
    ]
    for operation in operations:
        with pytest.raises(ImplementationError) as excinfo:
            operation()
        message = str(excinfo.value)
        assert "test_sharding.Event declares shards = 8 but its data is stored in 4 shards" in message
        assert "declare shards = 4" in message and "reshard test_sharding.Event --shards 8" in message
    assert Event(1).kind.get() == "a" and len(Event.collection()) == 1


# ---------------------------------------------------------------------- resharding


@pytest.mark.parametrize(
    "source, target, atomic",
    [(4, 9, False), (9, 4, True), (1, 6, False), (6, 1, True), (5, 10, True)],
    ids=["4-9", "9-4-atomic", "1-6", "6-1-atomic", "5-10-atomic"],
)
def test_reshard_keeps_every_instance(database, namespace, source, target, atomic):
    Old = declare(database, namespace, source, atomic_writes=atomic)
    fill(Old)
    before = readings(Old)
    assert len(before["instances"]) == 81 and before["kind"] and before["window"]
    steps = []
    result = resharding.reshard(Old, target, batch_size=7, progress=lambda *step: steps.append(step))
    assert result["from"] == source and result["to"] == target and result["status"] == "done"
    assert result["examined"] == 81 and 0 < result["moved"] <= 82
    if source > 1 and target > 1:  # a pk whose shard number is the same does not move
        assert result["moved"] == sum(
            1 for pk in before["instances"] if Old.shard_of(pk) != resharding.sharding.shard_index(pk, target)
        )
    assert steps[-1] == ("reshard", 81, 81)
    New = declare(database, namespace, target, atomic_writes=atomic)
    assert readings(New) == before
    assert problems_of(database, every_model(New)) == []
    assert_only_layout_of(database, New, namespace)
    client = database.connection
    assert client.get(New.make_key(New._name, "__shards__")) == str(target)
    assert client.exists(New.make_key(New._name, "__reshard__")) == 0
    # the old declaration is refused by this process now (an unsharded one is not checked: its
    # layout is empty); the new one creates after the last pk
    with pytest.raises(ImplementationError if source > 1 else DoesNotExist) as excinfo:
        Old(1)
    assert source == 1 or "stored in %d shards" % target in str(excinfo.value)
    assert New(kind="new").pk.get() == "91"


UNIQUE = {"code": fields.InstanceHashField(unique=True), "ref": fields.StringField(unique=True)}


def claim_keys_of(database, Model) -> list:
    """Return the claim and lease keys of ``Model`` on every server (``<model>#h:...``)."""
    from limpyd.integrity import claims

    pattern, parser = claims.claim_pattern(Model)
    return sorted(key for key in Model.database.scan_keys(pattern) if parser.match(key))


@pytest.mark.parametrize("counts", [(4, 7, 1, 3)], ids=["4-7-1-3"])
def test_reshard_moves_the_claims_of_unique_values(database, namespace, counts):
    """The claim of a value depends on the count: a reshard writes those of the new count (none
    for 1 shard) and drops the others; uniqueness holds across the shards afterwards."""
    from limpyd import _claims

    Model = declare(database, namespace, counts[0], **UNIQUE)
    pks = [Model(kind="a", code="c%d" % n, ref="r%d" % n).pk.get() for n in range(30)]
    Model(pks[3]).delete()
    del pks[3]
    for source, target in zip(counts, counts[1:]):
        result = resharding.reshard(Model, target, batch_size=4)
        assert result["from"] == source and result["claims"] == (0 if target == 1 else 2 * len(pks))
        Model = declare(database, namespace, target, **UNIQUE)
        keys = claim_keys_of(database, Model)
        if target == 1:
            assert keys == []
        else:
            expected = sorted(
                _claims.claim_keys(Model, name, "%s%s" % (name[0], pk_value), shards=target)[0]
                for name in ("code", "ref")
                for pk_value in [Model(pk).code.hget()[1:] for pk in pks]
            )
            assert keys == expected
            assert Model.audit().clean, Model.audit().findings
        assert sorted(Model.collection(), key=int) == pks
        for name, value in (("code", "c5"), ("ref", "r7")):
            with pytest.raises(UniquenessError):
                Model(kind="b", **{name: value})
        assert problems_of(database, every_model(Model)) == []
    # a freed value can be taken again, through the claims of the last count
    Model(pks[0]).delete()
    assert Model(kind="c", code="c0", ref="r0").pk.get()


def test_reshard_moves_the_deadlines(database, namespace):
    Old = declare(database, namespace, 3, expiring=True)
    instances = [Old(kind="a", rank=str(n)) for n in range(12)]
    for instance in instances[:5]:
        instance.expire_in(3600)
    deadlines = {i.pk.get(): i.time_to_live() for i in instances}
    resharding.reshard(Old, 5, batch_size=4)
    New = declare(database, namespace, 5, expiring=True)
    for pk, ttl in deadlines.items():
        left = New(pk).time_to_live()
        assert (left is None) == (ttl is None) and (ttl is None or abs(left - ttl) < 5)
    assert problems_of(database, every_model(New)) == []


def test_rerun_after_completion_does_nothing(database, namespace):
    Old = declare(database, namespace, 4)
    fill(Old, 30)
    resharding.reshard(Old, 7)
    dumped = full_dump(database)
    again = resharding.reshard(declare(database, namespace, 7), 7)
    assert again["status"] == "nothing to do" and again["moved"] == 0
    assert resharding.reshard(Old, 7)["status"] == "nothing to do"  # the old declaration too
    assert full_dump(database) == dumped


class Killed(BaseException):
    """What a SIGKILL does to the run: it stops at once (not an error the code could handle)."""


def killing(monkeypatch, name, after, partial=False):
    """Make ``resharding.<name>`` stop the run at its call number ``after`` (``partial``: a creation
    writing only part of the values first, as a kill in the middle of a creation leaves it)."""
    real = getattr(resharding, name)
    calls = []

    def wrapper(shard, pk, *args):
        calls.append(pk)
        if len(calls) == after:
            if partial:
                values = dict(list(args[0].items())[:2])
                real(shard, pk, values, None)
            raise Killed()
        return real(shard, pk, *args)

    monkeypatch.setattr(resharding, name, wrapper)
    return calls


@pytest.mark.parametrize(
    "name, after, partial",
    [("_create", 10, False), ("_create", 12, True), ("_delete", 9, False), ("_create", 1, False)],
    ids=["copy", "partial-copy", "delete", "first"],
)
def test_a_killed_run_is_finished_by_the_next(database, namespace, monkeypatch, name, after, partial):
    Old = declare(database, namespace, 4)
    fill(Old, 60)
    before = readings(Old)
    calls = killing(monkeypatch, name, after, partial)
    with pytest.raises(Killed):
        resharding.reshard(Old, 7, batch_size=8)
    assert len(calls) == after
    client = database.connection
    state = client.hgetall(Old.make_key(Old._name, "__reshard__"))
    assert state["from"] == "4" and state["to"] == "7" and state["phase"] in ("copy", "delete")
    assert client.get(Old.make_key(Old._name, "__shards__")) == "resharding 4 to 7"
    # while the state says a reshard runs, a new process is refused with either count
    for count in (4, 7):
        with pytest.raises(ImplementationError, match="is being resharded"):
            declare(database, namespace, count)(1)
    with pytest.raises(resharding.ReshardError, match="from 4 to 7 shards is in progress"):
        resharding.reshard(Old, 8)
    monkeypatch.undo()
    result = resharding.reshard(Old, 7, batch_size=8)
    assert result["status"] == "resumed" and result["examined"] == len(before["instances"])
    New = declare(database, namespace, 7)
    assert readings(New) == before
    assert problems_of(database, every_model(New)) == []
    assert_only_layout_of(database, New, namespace)


def test_writes_during_the_run_stop_it(database, namespace, monkeypatch):
    Old = declare(database, namespace, 4)
    fill(Old, 40)
    before = readings(Old)
    client = database.connection
    counter = Old.make_key(Old._name, "max_pk")

    def creation_by_someone(phase, done, total):
        if 0 < done < total:
            client.incr(counter)  # what a creation of another process does first

    with pytest.raises(resharding.WritesNotPaused) as excinfo:
        resharding.reshard(Old, 7, batch_size=5, progress=creation_by_someone)
    message = str(excinfo.value)
    assert "test_sharding.Event was written to during the reshard" in message
    assert "pk counter 40 -> 41" in message and "run the same command again" in message
    client.decr(counter)
    # an update of an instance being moved (between its copy and its deletion)
    real = resharding._create
    changed = []

    def update_by_someone(shard, pk, values, deadline):
        real(shard, pk, values, deadline)
        if not changed:
            old = resharding.shard_classes(Old, 4)[Old.shard_of(pk)]
            old(pk).rank.set("9")
            changed.append(pk)

    monkeypatch.setattr(resharding, "_create", update_by_someone)
    with pytest.raises(resharding.WritesNotPaused, match="the instance '[0-9]+' changed while it was moved"):
        resharding.reshard(Old, 7, batch_size=5)
    monkeypatch.undo()
    # a deletion by someone, from a shard not emptied yet: the number of instances changes
    victim = max(before["instances"], key=lambda pk: Old.shard_of(pk))
    shard = resharding.shard_classes(Old, 4)[Old.shard_of(victim)]

    def deletion_by_someone(phase, done, total):
        if 0 < done < total and shard.exists(pk=victim):
            resharding._delete(shard, victim)

    with pytest.raises(resharding.WritesNotPaused, match="instances"):
        resharding.reshard(Old, 7, batch_size=5, progress=deletion_by_someone)
    result = resharding.reshard(Old, 7, batch_size=5)
    assert result["status"] == "resumed"
    New = declare(database, namespace, 7)
    expected = dict(before["instances"])
    del expected[victim]
    expected[changed[0]] = expected[changed[0]][:3] + ("9",) + expected[changed[0]][4:]
    assert readings(New)["instances"] == expected
    assert problems_of(database, every_model(New)) == []


def test_bad_arguments(database, namespace):
    Old = declare(database, namespace, 4)
    Old(kind="a")
    for value in (0, -1, 16385, True, 2.0, "8"):
        with pytest.raises(resharding.ReshardError, match="shards %r for test_sharding.Event" % (value,)):
            resharding.reshard(Old, value)
    with pytest.raises(resharding.ReshardError, match="--from 5 .* stored in 4 shards"):
        resharding.reshard(Old, 8, from_shards=5)
    with pytest.raises(resharding.ReshardError, match="batch_size 0"):
        resharding.reshard(Old, 8, batch_size=0)
    Fresh = declare(database, namespace + "x", 4)
    Fresh.database.connection.delete(Fresh.make_key(Fresh._name, "__shards__"))
    with pytest.raises(resharding.ReshardError, match="no shard count is stored .* give the count .* --from"):
        resharding.reshard(Fresh, 4)
    with pytest.raises(DoesNotExist):
        Old(99)
    Fresh.database.connection.set(Fresh.make_key(Fresh._name, "__shards__"), "0")
    with pytest.raises(resharding.ReshardError, match="holds '0', not a shard count"):
        resharding.reshard(Fresh, 4)
    Fresh.database.connection.set(Fresh.make_key(Fresh._name, "__shards__"), "abc")
    with pytest.raises(ImplementationError, match="holds 'abc', not a shard count"):
        declare(database, namespace + "x", 4)(1)


# ---------------------------------------------------------------------- the command

SCRIPT = shutil.which("limpyd", path=os.path.dirname(sys.executable))

MODULE = """
from limpyd import fields, model
from limpyd.database import RedisDatabase

database = RedisDatabase(host="localhost", port=1, db=0)  # never used: --url switches it


class Event(model.RedisModel):
    database = database
    namespace = %(namespace)r
    shards = %(shards)d
    kind = fields.StringField(indexable=True)
    tags = fields.SetField(indexable=True)


class Plain(model.RedisModel):
    database = database
    namespace = %(namespace)r
    name = fields.StringField(indexable=True)
"""

#: appended to the module: another writer creates an instance while the command runs
WRITER = """
from limpyd import resharding
from limpyd.utils import make_key

_create = resharding._create


def _create_while_someone_writes(shard, pk, values, deadline):
    _create(shard, pk, values, deadline)
    database.connection.incr(make_key(Event._name, "max_pk"))


resharding._create = _create_while_someone_writes
"""


#: appended to the module: the process is killed (SIGKILL) in the middle of the 12th copy
KILLER = """
import os
import signal

from limpyd import resharding

_create = resharding._create
_calls = []


def _create_then_die(shard, pk, values, deadline):
    _calls.append(pk)
    if len(_calls) == 12:
        _create(shard, pk, dict(list(values.items())[:1]), None)  # half an instance
        os.kill(os.getpid(), signal.SIGKILL)
    _create(shard, pk, values, deadline)


resharding._create = _create_then_die
"""


@pytest.fixture
def command(tmp_path: Path, namespace: str, database):
    """Return ``run(shards, *args, writer=False)``: the console script on a module declaring the model."""
    if SCRIPT is None:
        pytest.skip("the limpyd console script is not installed: pip install -e .")
    settings = database.connection_settings
    if database.is_cluster:
        node = database.connection.get_primaries()[0]
        url = "redis://%s:%d" % (node.host, node.port)
    else:
        url = "unix://%s?db=%d" % (settings["unix_socket_path"], settings.get("db", 0))

    def run(shards, *args, writer=False, killer=False):
        name = "reshard_%s_%d%s%s" % (namespace, shards, "_w" if writer else "", "_k" if killer else "")
        text = textwrap.dedent(MODULE) % {"namespace": namespace, "shards": shards}
        text += (WRITER if writer else "") + (KILLER if killer else "")
        (tmp_path / ("%s.py" % name)).write_text(text)
        env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        return subprocess.run(
            [SCRIPT, "--url", url, "--models", name, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    run.module = lambda shards: "reshard_%s_%d" % (namespace, shards)
    return run


def test_command_reshards_then_does_nothing(command, database, namespace):
    Old = define_event(database, namespace, shards=4)
    for n in range(40):
        Old(kind="k%d" % (n % 3), tags=["t%d" % (n % 5)])
    before = sorted(Old.collection(kind="k1"), key=int)
    done = command(4, "reshard", "%s.Event" % command.module(4), "--shards", "6", "--batch-size", "7")
    assert done.returncode == 0, done.stderr
    assert "pause" in done.stderr and "a write seen stops the run (exit 2" in done.stderr
    assert "moved " in done.stdout and "of 40 instances from 4 to 6 shards" in done.stdout
    assert "now declare shards = 6 on %s.Event" % command.module(4) in done.stdout
    New = declare(database, namespace, 6)
    assert sorted(New.collection(kind="k1"), key=int) == before and len(New.collection()) == 40
    done = command(6, "--json", "reshard", "Event", "--shards", "6")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "nothing to do" and result["from"] == 6 and result["moved"] == 0
    done = command(6, "reshard", "Event", "--shards", "6")
    assert "already in 6 shards: nothing to do" in done.stdout and "now declare" not in done.stdout


def test_command_stops_when_writes_are_not_paused(command, database, namespace):
    Old = define_event(database, namespace, shards=4)
    for n in range(30):
        Old(kind="k")
    done = command(4, "reshard", "Event", "--shards", "6", "--batch-size", "5", writer=True)
    assert done.returncode == 2, done.stdout + done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("limpyd reshard: error: ") and "was written to during the reshard" in error
    assert "state is kept" in error and "Traceback" not in done.stderr
    database.connection.set(Old.make_key(Old._name, "max_pk"), 30)
    done = command(4, "reshard", "Event", "--shards", "6")
    assert done.returncode == 0, done.stderr
    assert "(resumed)" in done.stdout
    New = declare(database, namespace, 6)
    assert sorted(New.collection(kind="k"), key=int) == [str(n) for n in range(1, 31)]
    assert problems_of(database, every_model(New)) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["reshard", "Nope", "--shards", "4"], "unknown model 'Nope': choose one among"),
        (["reshard", "Event", "--shards", "0"], "--shards '0': give an int from 1 to 16384"),
        (["reshard", "Event", "--shards", "many"], "--shards 'many': give an int from 1 to 16384"),
        (["reshard", "Event", "--shards", "8", "--from", "x"], "--from 'x': give an int"),
        (["reshard", "Event", "--shards", "4"], "no shard count is stored"),
        (["reshard", "Plain", "--shards", "1"], "declares shards = 1, the new count: give the count"),
    ],
    ids=["unknown", "zero", "text", "from", "no-count", "not-sharded"],
)
def test_command_bad_arguments(command, args, message):
    done = command(4, *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2  # the "pause writes" notice, then the error


def test_command_killed_then_run_again(command, database, namespace):
    """A SIGKILL in the middle of a copy: the same command, run again, finishes the move."""
    Old = define_event(database, namespace, shards=4)
    for n in range(50):
        Old(kind="k%d" % (n % 3), tags=["t%d" % (n % 4), "all"])
    before = {pk: (Old(pk).kind.get(), Old(pk).tags.smembers()) for pk in Old.collection()}
    done = command(4, "reshard", "Event", "--shards", "7", "--batch-size", "5", killer=True)
    assert done.returncode == -9, done.stderr
    client = database.connection
    assert client.hget(Old.make_key(Old._name, "__reshard__"), "phase") == "copy"
    done = command(4, "--progress", "reshard", "Event", "--shards", "7")
    assert done.returncode == 0, done.stderr
    assert "(resumed)" in done.stdout and "of 50 instances from 4 to 7 shards" in done.stdout
    New = declare(database, namespace, 7)
    assert {pk: (New(pk).kind.get(), New(pk).tags.smembers()) for pk in New.collection()} == before
    assert sorted(New.collection(tags="all"), key=int) == sorted(before, key=int)
    assert problems_of(database, every_model(New)) == []
    done = command(7, "reshard", "Event", "--shards", "7")
    assert done.returncode == 0 and "nothing to do" in done.stdout


def test_command_help():
    if SCRIPT is None:
        pytest.skip("the limpyd console script is not installed: pip install -e .")
    done = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "reshard" in done.stdout
    done = subprocess.run([SCRIPT, "reshard", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert all(option in done.stdout for option in ("--shards", "--from", "--batch-size", "MODEL"))


MEMBERS = {"emails": fields.SetField(unique=True), "badges": fields.SortedSetField(unique=True)}


def test_reshard_moves_the_claims_of_unique_members(database, namespace):
    """The members of unique multi-value fields are claimed under the new count after a reshard."""
    Model = declare(database, namespace, 4, **MEMBERS)
    pks = [Model(kind="a", emails=["e%d" % n, "f%d" % n], badges={"b%d" % n: n}).pk.get() for n in range(12)]
    for source, target in ((4, 7), (7, 1), (1, 3)):
        result = resharding.reshard(Model, target, batch_size=5)
        assert result["from"] == source and result["claims"] == (0 if target == 1 else 3 * len(pks))
        Model = declare(database, namespace, target, **MEMBERS)
        assert len(claim_keys_of(database, Model)) == (0 if target == 1 else 3 * len(pks))
        if target > 1:
            assert Model.audit().clean, Model.audit().findings
        with pytest.raises(UniquenessError):
            Model(kind="b", emails=["x", "f3"])
        with pytest.raises(UniquenessError):
            Model(pks[5]).badges.zadd({"b9": 1})
        assert sorted(Model.collection(), key=int) == pks
        assert problems_of(database, every_model(Model)) == []
