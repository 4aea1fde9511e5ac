"""Unique multi-field indexes on sharded models (docs/sharding.rst, "Uniqueness across shards").

A unique ``EqualIndexWith`` over single-value fields has its combinations claimed once for the
whole model, under the name ``<field>+<other>``. Every test runs on the private server and on the
private cluster, in the default mode and with ``atomic_writes``; claims are read with plain
redis-py clients, and the shared consistency checker checks every key.
"""

from __future__ import annotations

import random
import re

import pytest
from test_sharding import (
    define_event,
    every_model,
    full_dump,
    problems_of,
    run_workers,
)
from test_sharding_unique import claim_of, without_counter

from limpyd import _claims, fields
from limpyd.contrib.indexes import EqualIndexWith
from limpyd.database import RedisDatabase
from limpyd.exceptions import BulkError, ImplementationError, UniquenessError
from limpyd.indexes import EqualIndex

SHARDS = 8
COMBO = "code+ref"


def define(database, namespace, atomic, shards=SHARDS, name="Event"):
    """Return a sharded model whose ``code`` (a StringField) and ``ref`` (an InstanceHashField)
    are unique together."""
    return define_event(
        database,
        namespace,
        shards=shards,
        atomic=atomic,
        name=name,
        code=fields.StringField(
            indexable=True, indexes=[EqualIndex, EqualIndexWith.configure(other_fields=["ref"], unique=True)]
        ),
        ref=fields.InstanceHashField(indexable=True),
        note2=fields.InstanceHashField(),
    )


def refusal(Event, code, ref, holder):
    return (
        'Value "code=%s, ref=%s" already indexed for unique together fields [code, ref] on %s (for instance %s)'
        % (
            code,
            ref,
            Event.__name__,
            holder,
        )
    )


def test_combinations_are_claimed(database, namespace, atomic):
    Event = define(database, namespace, atomic)
    assert Event._limpyd_claims == (COMBO,)
    assert Event._limpyd_claim_writes == frozenset({"code", "ref"})
    first = Event(code="x", ref="a", kind="k")
    assert claim_of(Event, COMBO, "code=x, ref=a") == first.pk.get()
    key = _claims.claim_keys(Event, COMBO, "code=x, ref=a")[0]
    assert re.search(r"#\d+\}?:code\+ref:code=x, ref=a$", key), key
    # other combinations are free, on any shard
    others = [Event(code="x", ref="b"), Event(code="y", ref="a"), Event(code="x")]
    assert len({obj.shard for obj in [first] + others}) > 1
    assert claim_of(Event, COMBO, "code=x, ref=b") == others[0].pk.get()
    assert [key for key in full_dump(database) if "#" in key and "code=x, ref=None" in key] == []
    before = without_counter(full_dump(database))
    for _ in range(3):  # the next pks fall on other shards: each refused by the claim
        with pytest.raises(UniquenessError) as excinfo:
            Event(code="x", ref="a", kind="dup")
        assert str(excinfo.value) == refusal(Event, "x", "a", first.pk.get())
    assert without_counter(full_dump(database)) == before
    assert problems_of(database, every_model(Event)) == []
    # the shared checker reads the combination's fields: a claim naming another pk is reported
    claim = _claims.claim_keys(Event, COMBO, "code=x, ref=a")[0]
    node = database.connection.get_node_from_key(claim) if database.is_cluster else None
    client = database.connection.get_redis_connection(node) if node is not None else database.connection
    client.set(claim, others[0].pk.get())
    problems = problems_of(database, every_model(Event))
    if not database.is_cluster:  # one server: the checker sees the claim and the pk's shard together
        assert any("claim naming a pk" in problem for problem in problems), problems
    client.set(claim, first.pk.get())
    assert problems_of(database, every_model(Event)) == []


def test_a_write_of_either_field_moves_the_claim(database, namespace, atomic):
    Event = define(database, namespace, atomic)
    first = Event(code="x", ref="a")
    second = Event(code="y", ref="a")
    while second.shard == first.shard:
        second = Event(code="y%d" % random.random(), ref="a")
    code = second.code.get()
    before = full_dump(database)
    with pytest.raises(UniquenessError) as excinfo:
        second.code.set("x")  # code=x, ref=a: first's
    assert str(excinfo.value) == refusal(Event, "x", "a", first.pk.get())
    with pytest.raises(ValueError, match="Only InstanceHashField"):
        second.hmset(code="x")  # not an InstanceHashField: refused by the core, nothing claimed
    assert full_dump(database) == before  # nothing written, no claim nor lease left
    second.ref.hset("b")  # code=<code>, ref=b: the old combination released
    assert claim_of(Event, COMBO, "code=%s, ref=a" % code) is None
    assert claim_of(Event, COMBO, "code=%s, ref=b" % code) == second.pk.get()
    second.code.set("x")  # code=x, ref=b: free
    assert claim_of(Event, COMBO, "code=x, ref=b") == second.pk.get()
    with pytest.raises(UniquenessError):
        first.ref.hset("b")
    first.hmset(ref="c", note2="n")  # hmset: code=x, ref=c
    assert claim_of(Event, COMBO, "code=x, ref=a") is None
    assert claim_of(Event, COMBO, "code=x, ref=c") == first.pk.get()
    with pytest.raises(UniquenessError):
        first.hmset(ref="b", note2="m")
    assert first.note2.hget() == "n"  # nothing of the refused hmset written
    assert first.code.getset("w") == "x"
    assert claim_of(Event, COMBO, "code=w, ref=c") == first.pk.get()
    assert claim_of(Event, COMBO, "code=x, ref=c") is None
    assert problems_of(database, every_model(Event)) == []


def test_a_field_removed_releases_the_combination(database, namespace, atomic):
    Event = define(database, namespace, atomic)
    obj = Event(code="x", ref="a")
    obj.ref.delete()
    assert claim_of(Event, COMBO, "code=x, ref=a") is None
    other = Event(code="x", ref="a")  # free again
    assert claim_of(Event, COMBO, "code=x, ref=a") == other.pk.get()
    with pytest.raises(UniquenessError):
        obj.ref.hset("a")  # code=x now complete again: taken
    obj.ref.hsetnx("c")
    assert claim_of(Event, COMBO, "code=x, ref=c") == obj.pk.get()
    assert obj.ref.hsetnx("d") == 0 and claim_of(Event, COMBO, "code=x, ref=d") is None
    obj.hdel("ref")
    assert claim_of(Event, COMBO, "code=x, ref=c") is None
    other.code.delete()
    assert claim_of(Event, COMBO, "code=x, ref=a") is None
    third = Event(code="x", ref="a")
    third.delete()
    assert claim_of(Event, COMBO, "code=x, ref=a") is None
    assert problems_of(database, every_model(Event)) == []


def test_computed_writes_of_a_field_of_a_combination_are_refused(database, namespace, atomic):
    Event = define(database, namespace, atomic)
    obj = Event(code="1", ref="a")
    with pytest.raises(ImplementationError) as excinfo:
        obj.code.incr()
    message = str(excinfo.value)
    assert "field of a unique multi-field index Event.code" in message and "set()" in message, message
    assert obj.code.get() == "1"


def test_a_multi_value_field_in_a_unique_combination_is_refused(database, namespace):
    with pytest.raises(ImplementationError) as excinfo:
        define_event(
            database,
            namespace,
            shards=4,
            name="Refused",
            code=fields.StringField(
                indexable=True, indexes=[EqualIndexWith.configure(other_fields=["tags"], unique=True)]
            ),
        )
    message = str(excinfo.value)
    assert "multi-value field tags" in message and "docs/sharding.rst" in message, message


def test_create_many_refuses_as_a_one_shard_model(database, namespace, atomic):
    """Random rows colliding with each other and with stored values: the same refusals (positions
    and messages) and stored values as a 1-shard model given the same rows."""
    generator = random.Random(11)
    models = [define(database, namespace, atomic), define(database, namespace + "u", atomic, shards=1)]
    for Model in models:
        Model(code="c0", ref="r0")
    rows = []
    for _ in range(80):
        row = {"kind": "k", "code": "c%d" % generator.randrange(6)}
        if generator.random() < 0.8:
            row["ref"] = "r%d" % generator.randrange(6)
        rows.append(row)
    outcomes = []
    for Model in models:
        with pytest.raises(BulkError) as excinfo:
            Model.create_many(iter(rows), batch_size=20)
        error = excinfo.value
        reasons = []
        for position, reason in error.refusals:
            message, holder = re.match(r"^(.*) \(for instance (\d+)\)$", str(reason)).groups()
            reasons.append((position, message, error.pks.index(holder) if holder in error.pks else "stored"))
        outcomes.append(
            (
                reasons,
                [None if pk is None else (Model(pk).code.get(), Model(pk).ref.hget()) for pk in error.pks],
            )
        )
    assert outcomes[0] == outcomes[1] and outcomes[0][0]
    assert problems_of(database, every_model(models[0]) + every_model(models[1])) == []


def test_the_audit_sees_the_combinations(database, namespace, atomic):
    from limpyd.integrity import claims as integrity_claims

    Event = define(database, namespace, atomic)
    obj = Event(code="x", ref="a")
    Event(code="x")  # no combination
    client = database.connection
    assert integrity_claims.audit(Event, client) == []
    held = integrity_claims.held_values(list(Event._limpyd_shard_models), client, Event._limpyd_claims, 100)
    assert held == {(COMBO, "code=x, ref=a"): [obj.pk.get()]}
    claim = _claims.claim_keys(Event, COMBO, "code=x, ref=a")[0]
    client.delete(claim)  # the combination held without its claim
    findings = integrity_claims.audit(Event, client)
    assert [(f.kind, f.pk, f.value) for f in findings] == [("unclaimed-value", obj.pk.get(), "code=x, ref=a")]
    client.set(_claims.claim_keys(Event, COMBO, "code=q, ref=q")[0], "999")  # a stale claim
    kinds = sorted(f.kind for f in integrity_claims.audit(Event, client))
    assert kinds == ["stale-claim", "unclaimed-value"]


# ---------------------------------------------------------------------- concurrency

WORKERS = 8
ATTEMPTS = 120
COMBINATIONS = 60


def _worker(settings, namespace, atomic, worker, queue):
    database = RedisDatabase(**settings)
    Event = define(database, namespace, atomic)
    created = refused = 0
    for attempt in range(ATTEMPTS):
        number = (attempt * 7 + worker * 13) % COMBINATIONS
        try:
            if attempt % 3:
                Event(code="c%d" % (number % 6), ref="r%d" % (number // 6), kind="w%d" % worker)
            else:  # a write completing the combination of an existing instance
                obj = Event(code="c%d" % (number % 6), kind="w%d" % worker)
                try:
                    obj.ref.hset("r%d" % (number // 6))
                except UniquenessError:
                    obj.delete()
                    raise
            created += 1
        except UniquenessError:
            refused += 1
    queue.put((created, refused))


def test_colliding_combinations_across_processes(database, namespace, atomic):
    Event = define(database, namespace, atomic)
    results = run_workers(_worker, database, namespace, atomic, WORKERS)
    assert sum(made for made, _ in results) == COMBINATIONS
    holders = {}
    for pk in Event.collection():
        obj = Event(pk)
        combination = (obj.code.get(), obj.ref.hget())
        assert combination not in holders, combination
        holders[combination] = pk
    assert len(holders) == COMBINATIONS
    for (code, ref), pk in holders.items():
        assert claim_of(Event, COMBO, "code=%s, ref=%s" % (code, ref)) == pk
    assert problems_of(database, every_model(Event)) == []
