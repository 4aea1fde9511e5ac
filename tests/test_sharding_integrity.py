"""The integrity tools on sharded models: audit, repair, rebuild_indexes, stats and the ``limpyd`` command.

Each shard class is audited, repaired and rebuilt as the unsharded model it is, and the results are
merged into one report for the model; a pk stored in another shard than its own is a
``misplaced-instance``, moved to its shard by the repair. Every test using ``database`` runs on the
private server and on the private cluster; the drift is written with plain redis-py clients on the
node holding each key, and the shared consistency checker must find nothing after the repairs.
"""

from __future__ import annotations

import json

import pytest
import redis
from test_cli import run, write_module
from test_sharding import define_event, every_model, full_dump, problems_of, pytest_generate_tests

from limpyd import integrity
from limpyd.exceptions import ImplementationError, UniquenessError
from limpyd.integrity import report as kinds
from limpyd.sharding import shard_index

__all__ = ["pytest_generate_tests"]  # the single/cluster parametrization of test_sharding

SHARDS = 4


def raw(database, key: str) -> redis.Redis:
    """Return a plain redis-py client on the server holding ``key`` (its node on a cluster)."""
    if database.is_cluster:
        node = database.connection.get_node_from_key(key)
        return redis.Redis(host=node.host, port=node.port, decode_responses=True)
    return redis.Redis(**database.connection_settings, decode_responses=True)


def write(database, command: str, key: str, *args) -> None:
    """Send ``command key *args`` to the server holding ``key``, with a plain client."""
    client = raw(database, key)
    try:
        client.execute_command(command, key, *args)
    finally:
        client.close()


def pk_in(shard: int, start: int = 10_000) -> str:
    """Return a numeric pk (from ``start``) whose shard among :data:`SHARDS` is ``shard``."""
    return next(str(pk) for pk in range(start, start + 1000) if shard_index(str(pk), SHARDS) == shard)


def fill(database, namespace, count=40):
    Event = define_event(database, namespace, shards=SHARDS)
    pks = [
        Event(kind="k%d" % (i % 3), score=str(i), label="x%d" % i, tags=["t", "u%d" % i]).pk.get()
        for i in range(count)
    ]
    return Event, pks


def found(report) -> set:
    return {(f.kind, f.key, f.pk, f.shard) for f in report.findings}


def test_a_clean_sharded_model_audits_clean(database, namespace):
    Event, pks = fill(database, namespace)
    report = Event.audit()
    assert report.clean, report.findings
    assert report.instances == len(pks) and report.counts == {}
    assert "%d shards" % SHARDS in report.model
    assert integrity.audit(Event).clean
    # a shard class is audited as any model: its own instances only
    for number in range(SHARDS):
        shard = Event.shard_model(number)
        part = shard.audit()
        assert part.clean and part.instances == sum(1 for pk in pks if Event.shard_of(pk) == number)
    assert problems_of(database, every_model(Event)) == []


def test_drift_in_every_shard_is_found_then_repaired(database, namespace):
    Event, pks = fill(database, namespace)
    name = [Event.shard_model(number)._name for number in range(SHARDS)]
    by_shard = {number: [pk for pk in pks if Event.shard_of(pk) == number] for number in range(SHARDS)}
    assert all(by_shard.values())
    missing_pk, wrong_pk = by_shard[1][0], by_shard[2][0]
    missing_kind = Event(missing_pk).kind.get()
    write(database, "SADD", name[0] + ":kind:k0", "9999")  # stale entry (shard 0)
    write(database, "SREM", "%s:kind:%s" % (name[1], missing_kind), missing_pk)  # missing entry (shard 1)
    write(database, "SADD", name[2] + ":kind:zzz", wrong_pk)  # wrong entry (shard 2)
    write(database, "SET", name[3] + ":77777:note", "x")  # orphan data (shard 3)
    empty_pk = pk_in(0)
    write(database, "SADD", name[0] + ":collection", empty_pk)  # empty pk, in its own shard
    write(database, "SET", "%s:%s:removed" % (name[1], by_shard[1][0]), "x")  # unknown key in a shard
    write(database, "SET", Event._name + ":junk", "x")  # unknown key in the model's own key space
    # a misplaced instance: pk p deleted from its shard, its data written in another shard
    moved = by_shard[3][-1]
    Event(moved).delete()
    home, wrong = 3, 1
    write(database, "SADD", name[wrong] + ":collection", moved)
    write(database, "SET", "%s:%s:kind" % (name[wrong], moved), "moved")
    write(database, "SADD", name[wrong] + ":kind:moved", moved)
    write(database, "SET", "%s:%s:note" % (name[wrong], moved), "kept")

    report = Event.audit()
    got = found(report)
    expected = {
        (kinds.STALE_ENTRY, name[0] + ":kind:k0", "9999", 0),
        (kinds.MISSING_ENTRY, "%s:kind:%s" % (name[1], missing_kind), missing_pk, 1),
        (kinds.WRONG_ENTRY, name[2] + ":kind:zzz", wrong_pk, 2),
        (kinds.ORPHAN_DATA, name[3] + ":77777:note", "77777", 3),
        (kinds.EMPTY_PK, name[0] + ":collection", empty_pk, 0),
        (kinds.UNKNOWN_KEY, "%s:%s:removed" % (name[1], by_shard[1][0]), by_shard[1][0], 1),
        (kinds.UNKNOWN_KEY, Event._name + ":junk", None, None),
        (kinds.MISPLACED_INSTANCE, name[wrong] + ":collection", moved, wrong),
    }
    assert got == expected, got ^ expected
    assert report.counts == {
        kinds.STALE_ENTRY: 1,
        kinds.MISSING_ENTRY: 1,
        kinds.WRONG_ENTRY: 1,
        kinds.ORPHAN_DATA: 1,
        kinds.EMPTY_PK: 1,
        kinds.UNKNOWN_KEY: 2,
        kinds.MISPLACED_INSTANCE: 1,
    }
    assert report.instances == len(pks) + 1  # the empty pk is in a collection, the moved one too
    misplaced = report.by_kind(kinds.MISPLACED_INSTANCE)[0]
    assert "its shard is %d" % home in misplaced.detail and misplaced.to_dict()["shard"] == wrong
    assert problems_of(database, every_model(Event))  # the independent checker sees problems too

    before = full_dump(database)
    planned = Event.repair()  # dry run: listed, nothing written
    assert full_dump(database) == before
    moves = [a for a in planned.actions if a.finding.kind == kinds.MISPLACED_INSTANCE]
    assert len(moves) == 1 and not moves[0].done and moves[0].skipped == "dry run"
    assert moves[0].action.startswith("move pk %r from shard %d" % (moved, wrong))
    assert len(planned.actions) == len(expected)

    done = Event.repair(dry_run=False, delete_orphans=True)
    assert done.clean, done.final.findings
    assert Event.audit().clean
    assert problems_of(database, every_model(Event)) == []
    # the moved instance kept its pk and values, and is found through its indexes
    instance = Event(moved)
    assert instance.shard == home and instance.kind.get() == "moved" and instance.note.get() == "kept"
    assert list(Event.collection(kind="moved")) == [moved]
    assert not Event.shard_model(wrong).get_field("pk").exists(moved)
    assert Event.repair(dry_run=False).actions == []  # nothing left to do


def test_a_pk_in_two_shards_is_not_moved(database, namespace):
    """A pk stored in its shard and in another: the repair cannot choose, it says how to fix it."""
    Event, pks = fill(database, namespace, count=8)
    pk = pks[0]
    home = Event.shard_of(pk)
    other = Event.shard_model((home + 1) % SHARDS)._name
    write(database, "SADD", other + ":collection", pk)
    write(database, "SET", "%s:%s:kind" % (other, pk), "twin")
    write(database, "SADD", other + ":kind:twin", pk)
    result = Event.repair(dry_run=False)
    action = next(a for a in result.actions if a.finding.kind == kinds.MISPLACED_INSTANCE)
    assert not action.done and "is also stored in its shard %d" % home in action.skipped
    assert "Event.shard_model(k)" in action.skipped
    assert Event(pk).kind.get() != "twin"  # the instance in its shard is untouched
    assert not result.clean and len(result.unresolved) == 1


def test_shard_classes_keep_working_as_models(database, namespace):
    Event, pks = fill(database, namespace, count=12)
    shard = Event.shard_model(2)
    write(database, "DEL", shard._name + ":kind:k0", shard._name + ":kind:k1", shard._name + ":kind:k2")
    report = integrity.audit(shard)
    assert report.by_kind(kinds.MISSING_ENTRY)
    assert all(f.shard is None and f.key.startswith(shard._name + ":") for f in report.findings)
    assert shard.rebuild_indexes()["instances"] == report.instances
    assert shard.audit().clean and Event.audit().clean
    with pytest.raises(ImplementationError, match="shard_model"):
        integrity._schema.ModelPlan(Event)  # the model itself stores no instance


def test_rebuild_indexes_rebuilds_every_shard(database, namespace):
    Event, pks = fill(database, namespace)
    for number in range(SHARDS):
        name = Event.shard_model(number)._name
        write(database, "DEL", name + ":kind:k0", name + ":kind:k1", name + ":kind:k2")
    assert set(Event.audit().counts) == {kinds.MISSING_ENTRY}
    result = Event.rebuild_indexes(fields=["kind"])
    assert result["shards"] == SHARDS and result["instances"] == len(pks) and result["fields"] == ["kind"]
    assert Event.audit().clean
    assert problems_of(database, every_model(Event)) == []
    assert sorted(Event.collection(kind="k0"), key=int) == [pk for i, pk in enumerate(pks) if i % 3 == 0]
    # a rebuild stopped in one shard is resumed there (its state is the shard's own)
    shard = Event.shard_model(1)
    write(
        database, "HSET", shard._name + ":__rebuild__:state", "id", "abc", "fields", "label", "phase", "build"
    )
    with pytest.raises(ValueError, match="was stopped before its end"):
        Event.rebuild_indexes(fields=["kind"])
    assert Event.rebuild_indexes(fields=["label"])["resumed"] is True
    assert Event.audit().clean


def test_stats_groups_the_shards_under_the_model(database, namespace):
    Event, pks = fill(database, namespace, count=20)
    result = integrity.stats(database, models=[Event])
    groups = {(g["model"], g["role"], g["field"]): g["count"] for g in result["groups"]}
    assert not any("@" in model for model, _, _ in groups), groups
    assert groups[(Event._name, "data", "kind")] == 20
    assert groups[(Event._name, "collection", "")] == len({Event.shard_of(pk) for pk in pks})
    assert groups[(Event._name, "max_pk", "")] == 1 and groups[(Event._name, "__shards__", "")] == 1
    index_keys = {(Event.shard_of(pk), Event(pk).kind.get()) for pk in pks}
    assert groups[(Event._name, "index", "kind")] == len(index_keys)


CLI_MODEL = """
class Event(model.RedisModel):
    database = database
    namespace = %r
    shards = %d
    kind = fields.StringField(indexable=True)
"""


def test_cli_audit_repair_and_stats_of_a_sharded_model(database, namespace, tmp_path, redis_settings):
    if database.is_cluster:
        pytest.skip("the command runs against the single private server (as tests/test_cli.py)")
    Event = define_event(database, namespace, shards=SHARDS, score=None, label=None, tags=None, note=None)
    assert Event._fields == ["pk", "kind"]  # the model the command declares
    for i in range(10):
        Event(kind="k%d" % (i % 2))
    module = "cli_sharded_integrity_%s" % namespace
    env = write_module(tmp_path, module, CLI_MODEL % (namespace, SHARDS))
    setup = {
        "module": module,
        "env": env,
        "url": "unix://%s?db=%d" % (redis_settings["unix_socket_path"], redis_settings.get("db", 0)),
    }
    done = run(setup, "--json", "audit")
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["clean"] and len(data["models"]) == 1 and data["models"][0]["instances"] == 10
    shard = Event.shard_model(2)._name
    write(database, "SADD", shard + ":kind:k0", "4242")
    done = run(setup, "--json", "audit")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)["models"][0]
    assert report["counts"] == {kinds.STALE_ENTRY: 1}
    assert report["findings"][0]["shard"] == 2 and report["findings"][0]["key"] == shard + ":kind:k0"
    done = run(setup, "repair", "--apply")
    assert done.returncode == 0, done.stdout + done.stderr
    assert run(setup, "audit").returncode == 0
    done = run(setup, "--json", "rebuild-indexes")
    assert done.returncode == 0 and json.loads(done.stdout)["models"][0]["shards"] == SHARDS
    done = run(setup, "--json", "stats")
    groups = {(g["model"], g["role"], g["field"]) for g in json.loads(done.stdout)["groups"]}
    assert (Event._name, "data", "kind") in groups and not any("@" in g[0] for g in groups)


def test_a_misplaced_instance_with_unique_values_is_moved_keeping_its_claims(database, namespace):
    """The move deletes from the wrong shard without releasing the claims of its unique values:
    the pk keeps them in its own shard."""
    from limpyd import _claims, fields

    Event = define_event(database, namespace, shards=SHARDS, code=fields.StringField(unique=True))
    pk = Event(kind="a", code="c1").pk.get()
    home = Event.shard_of(pk)
    wrong = (home + 1) % SHARDS
    name = [Event.shard_model(number)._name for number in range(SHARDS)]
    for command in (  # the instance's keys and entries moved to another shard behind limpyd's back
        ("SREM", name[home] + ":collection", pk),
        ("DEL", "%s:%s:kind" % (name[home], pk)),
        ("SREM", name[home] + ":kind:a", pk),
        ("DEL", "%s:%s:code" % (name[home], pk)),
        ("DEL", name[home] + ":code:c1"),
        ("SADD", name[wrong] + ":collection", pk),
        ("SET", "%s:%s:kind" % (name[wrong], pk), "a"),
        ("SADD", name[wrong] + ":kind:a", pk),
        ("SET", "%s:%s:code" % (name[wrong], pk), "c1"),
        ("SADD", name[wrong] + ":code:c1", pk),
    ):
        write(database, *command)
    claim = _claims.claim_keys(Event, "code", "c1")[0]
    assert raw(database, claim).get(claim) == pk
    report = Event.audit()
    assert found(report) == {(kinds.MISPLACED_INSTANCE, name[wrong] + ":collection", pk, wrong)}
    result = Event.repair(dry_run=False)
    (action,) = [a for a in result.actions if a.finding.kind == kinds.MISPLACED_INSTANCE]
    assert action.done and result.final.clean, result.final.findings
    assert raw(database, claim).get(claim) == pk  # the claim still names the pk
    assert not Event.shard_model(wrong).get_field("pk").exists(pk)
    assert Event(pk).code.get() == "c1" and Event.shard_model(home).get_field("pk").exists(pk)
    with pytest.raises(UniquenessError):  # still claimed
        Event(kind="b", code="c1")
    assert problems_of(database, every_model(Event)) == []


# ---------------------------------------------------------------------- the claims of unique values


def claimed_model(database, namespace):
    """A sharded model with a claimed ``InstanceHashField`` and a claimed ``StringField``."""
    from limpyd import fields

    return define_event(
        database,
        namespace,
        shards=SHARDS,
        code=fields.InstanceHashField(unique=True),
        ref=fields.StringField(unique=True),
    )


def test_claims_of_a_clean_model_audit_clean(database, namespace):
    Event = claimed_model(database, namespace)
    for i in range(12):
        Event(kind="a", code="c%d" % i, ref="r%d" % i)
    report = Event.audit()
    assert report.clean, report.findings
    assert Event.repair(dry_run=False).final.clean


def test_a_missing_claim_is_found_then_claimed_again(database, namespace):
    from limpyd import _claims

    Event = claimed_model(database, namespace)
    pks = [Event(kind="a", code="c%d" % i, ref="r%d" % i).pk.get() for i in range(6)]
    claim = _claims.claim_keys(Event, "code", "c2")[0]
    write(database, "DEL", claim)
    other = _claims.claim_keys(Event, "ref", "r4")[0]
    write(database, "SET", other, "999")  # names a pk that does not hold the value
    report = Event.audit()
    assert found(report) == {
        (kinds.UNCLAIMED_VALUE, claim, pks[2], None),
        (kinds.UNCLAIMED_VALUE, other, pks[4], None),
    }
    assert report.counts == {kinds.UNCLAIMED_VALUE: 2}
    # without its claim, another shard's writer could take the value; the repair claims it back
    result = Event.repair(dry_run=False)
    assert all(a.done for a in result.actions if a.finding.kind == kinds.UNCLAIMED_VALUE)
    assert result.final.clean, result.final.findings
    assert raw(database, claim).get(claim) == pks[2] and raw(database, other).get(other) == pks[4]
    with pytest.raises(UniquenessError):
        Event(kind="b", code="c2")
    assert problems_of(database, every_model(Event)) == []


def test_a_stale_claim_is_found_then_deleted_but_not_while_pending(database, namespace):
    from limpyd import _claims

    Event = claimed_model(database, namespace)
    Event(kind="a", code="c1", ref="r1")
    stale, lease = _claims.claim_keys(Event, "code", "gone")
    write(database, "SET", stale, "12345")
    pending, pending_lease = _claims.claim_keys(Event, "ref", "writing")
    write(database, "SET", pending, "777")
    write(database, "SET", pending_lease, "777", "PX", "60000")  # a write of that value is running
    report = Event.audit()
    assert found(report) == {(kinds.STALE_CLAIM, stale, "12345", None)}
    (action,) = Event.repair(dry_run=True).actions
    assert "delete the claim %s" % stale in action.action
    result = Event.repair(dry_run=False)
    assert result.final.clean and raw(database, stale).get(stale) is None
    assert raw(database, pending).get(pending) == "777"  # the pending claim is left to its writer


def test_a_value_held_in_two_shards_is_kept_once_with_delete_orphans(database, namespace):
    from limpyd import _claims

    Event = claimed_model(database, namespace)
    first = Event(kind="a", code="c1").pk.get()
    second = next(  # an instance in another shard
        pk
        for pk in (Event(kind="a", code="x%d" % i).pk.get() for i in range(40))
        if Event.shard_of(pk) != Event.shard_of(first)
    )
    shard = Event.shard_model(Event.shard_of(second))
    key = "%s:%s:hash" % (shard._name, second)
    write(database, "HSET", key, "code", "c1")  # written behind limpyd's back: no claim, no index
    write(database, "SADD", shard._name + ":code:c1", second)
    claim = _claims.claim_keys(Event, "code", "c1")[0]
    report = Event.audit()
    shared = [f for f in report.findings if f.kind == kinds.SHARED_UNIQUE_VALUE]
    assert [(f.key, f.pks, f.member) for f in shared] == [(claim, sorted([first, second]), first)]
    kept_only = Event.repair(dry_run=False)  # instance data: not without delete_orphans
    (action,) = [a for a in kept_only.actions if a.finding.kind == kinds.SHARED_UNIQUE_VALUE]
    assert not action.done and "delete_orphans=True" in action.skipped
    result = Event.repair(dry_run=False, delete_orphans=True)
    assert result.final.clean, result.final.findings
    assert Event(first).code.hget() == "c1" and Event(second).code.hget() is None
    assert raw(database, claim).get(claim) == first
    assert problems_of(database, every_model(Event)) == []
