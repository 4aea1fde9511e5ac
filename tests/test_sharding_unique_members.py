"""Unique multi-value fields of sharded models: each member claimed once for the whole model.

docs/sharding.rst, "Uniqueness across shards". A unique ``SetField``, ``ListField`` or
``SortedSetField`` of an unsharded model refuses a member another instance holds; a sharded
model's shards each see only their own instances, so every member is claimed as a unique value
of a single-value field is. Every test runs on the private server and on the private cluster, in
the default mode and with ``atomic_writes``; the claims are read with plain clients.
"""

from __future__ import annotations

import pytest
from test_sharding import (
    define_event,
    every_model,
    full_dump,
    problems_of,
    run_workers,
)
from test_sharding_unique import claim_of, two_instances, without_counter

from limpyd import fields
from limpyd.database import RedisDatabase
from limpyd.exceptions import UniquenessError

SHARDS = 8


def define(database, namespace, atomic, name="Member"):
    """Return a sharded model with a unique set ``emails``, list ``aliases`` and sorted set ``badges``."""
    return define_event(
        database,
        namespace,
        shards=SHARDS,
        atomic=atomic,
        name=name,
        emails=fields.SetField(unique=True),
        aliases=fields.ListField(unique=True),
        badges=fields.SortedSetField(unique=True),
    )


def refused(call, value, field, holder):
    """Run ``call``; it must raise the ``UniquenessError`` of an unsharded model's index."""
    with pytest.raises(UniquenessError) as excinfo:
        call()
    assert str(excinfo.value) == 'Value "%s" already indexed for unique field Member.%s (for instance %s)' % (
        value,
        field,
        holder,
    )


def test_creation_claims_every_member(database, namespace, atomic):
    Member = define(database, namespace, atomic)
    first = Member(
        kind="a", emails=["a@x", "b@x"], aliases=["al", "al", "bo"], badges={"gold": 1, "silver": 2}
    )
    pk = first.pk.get()
    for name, value in (("emails", "a@x"), ("emails", "b@x"), ("aliases", "al"), ("aliases", "bo")):
        assert claim_of(Member, name, value) == pk
    assert claim_of(Member, "badges", "gold") == claim_of(Member, "badges", "silver") == pk
    before = without_counter(full_dump(database))
    # the next pks land on other shards, whose own unique indexes never saw the first instance
    for values, field, value in (
        ({"emails": ["c@x", "a@x"]}, "emails", "a@x"),
        ({"aliases": ["zz", "bo"]}, "aliases", "bo"),
        ({"badges": {"bronze": 1, "gold": 3}}, "badges", "gold"),
    ):
        refused(lambda: Member(kind="b", **values), value, field, pk)
        assert without_counter(full_dump(database)) == before  # nothing written, no claim left
    assert claim_of(Member, "emails", "c@x") is None and claim_of(Member, "badges", "bronze") is None
    assert problems_of(database, every_model(Member)) == []


def test_adding_members_is_refused_across_shards(database, namespace, atomic):
    Member = define(database, namespace, atomic)
    first, second = two_instances(Member)
    first.emails.sadd("a@x")
    first.aliases.rpush("al")
    first.badges.zadd({"gold": 1})
    holder = first.pk.get()
    second.aliases.rpush("start")
    before = full_dump(database)
    refused(lambda: second.emails.sadd("new@x", "a@x"), "a@x", "emails", holder)
    refused(lambda: second.aliases.lpush("al"), "al", "aliases", holder)
    refused(lambda: second.aliases.rpushx("al"), "al", "aliases", holder)
    refused(lambda: second.aliases.linsert("before", "start", "al"), "al", "aliases", holder)
    refused(lambda: second.aliases.lset(0, "al"), "al", "aliases", holder)
    refused(lambda: second.badges.zadd({"gold": 5}), "gold", "badges", holder)
    refused(lambda: second.badges.zincrby(2, "gold"), "gold", "badges", holder)
    assert full_dump(database) == before  # every refusal wrote nothing, took no claim
    assert claim_of(Member, "emails", "new@x") is None
    # the instance holding a member may add it again (a list: twice)
    first.emails.sadd("a@x")
    first.aliases.rpush("al")
    first.badges.zincrby(2, "gold")
    assert first.aliases.lrange(0, -1) == ["al", "al"]
    assert claim_of(Member, "aliases", "al") == holder
    assert problems_of(database, every_model(Member)) == []


def test_removed_members_are_freed(database, namespace, atomic):
    Member = define(database, namespace, atomic)
    first, second = two_instances(Member)
    first.emails.sadd("a@x", "b@x", "c@x")
    first.aliases.rpush("al", "bo", "al", "cy", "dd")
    first.badges.zadd({"gold": 1, "silver": 2, "bronze": 3, "tin": 10})
    holder, other = first.pk.get(), second.pk.get()

    first.emails.srem("a@x")
    first.aliases.lrem(1, "al")  # one "al" is left: still held
    first.aliases.lset(0, "ee")  # "bo" replaced
    first.aliases.rpop()  # "dd"
    first.badges.zrem("gold")
    first.badges.zremrangebyscore(9, 11)  # "tin"
    assert claim_of(Member, "aliases", "al") == holder
    freed = [("emails", "a@x"), ("aliases", "bo"), ("aliases", "dd"), ("badges", "gold"), ("badges", "tin")]
    for name, value in freed:
        assert claim_of(Member, name, value) is None, (name, value)
    second.emails.sadd("a@x")
    second.aliases.rpush("bo", "dd")
    second.badges.zadd({"gold": 1, "tin": 2})
    for name, value in freed:
        assert claim_of(Member, name, value) == other, (name, value)
    assert claim_of(Member, "aliases", "ee") == holder
    refused(lambda: second.aliases.rpush("al"), "al", "aliases", holder)

    first.aliases.ltrim(1, 1)  # keeps "al" only ("ee", "cy" freed)
    assert first.aliases.lrange(0, -1) == ["al"]
    assert claim_of(Member, "aliases", "cy") is None and claim_of(Member, "aliases", "ee") is None
    first.emails.delete()
    assert claim_of(Member, "emails", "b@x") is None and claim_of(Member, "emails", "c@x") is None
    popped = first.badges.zpopmin()
    assert claim_of(Member, "badges", popped[0][0]) is None
    first.delete()  # every member left is freed
    for name, value in (("aliases", "al"), ("badges", "bronze"), ("badges", "silver")):
        assert claim_of(Member, name, value) is None, (name, value)
    assert problems_of(database, every_model(Member)) == []


def test_a_conditional_push_that_adds_nothing_keeps_no_claim(database, namespace, atomic):
    Member = define(database, namespace, atomic)
    first, _ = two_instances(Member)
    assert first.aliases.rpushx("al") == 0  # no list yet: nothing pushed
    assert claim_of(Member, "aliases", "al") is None
    first.aliases.rpush("x")
    assert first.aliases.linsert("before", "missing", "bo") == -1
    assert claim_of(Member, "aliases", "bo") is None
    assert problems_of(database, every_model(Member)) == []


def test_audit_finds_the_claims_of_members_clean(database, namespace, atomic):
    Member = define(database, namespace, atomic)
    first, second = two_instances(Member)
    first.emails.sadd("a@x", "b@x")
    second.aliases.rpush("al", "al")
    second.badges.zadd({"gold": 1})
    assert Member.audit().clean
    # a member written behind limpyd's back, without its index entry nor its claim: found, repaired
    second.database.connection.sadd(second.emails.key, "raw@x")
    report = Member.audit()
    assert sorted((f.kind, f.value) for f in report.findings) == [
        ("missing-entry", "raw@x"),
        ("unclaimed-value", "raw@x"),
    ]
    assert all(action.done for action in Member.repair(dry_run=False).actions)
    assert claim_of(Member, "emails", "raw@x") == second.pk.get()
    assert Member.audit().clean


# ---------------------------------------------------------------------- concurrency

WORKERS = 8
ATTEMPTS = 60
VALUES = 40


def _worker(settings, namespace, atomic, worker, queue):
    database = RedisDatabase(**settings)
    Member = define(database, namespace, atomic)
    mine = Member(kind="w%d" % worker)
    added = refused_count = 0
    for attempt in range(ATTEMPTS):
        value = "m%d" % ((attempt * 7 + worker * 13) % VALUES)
        try:
            mine.emails.sadd(value)
            added += 1
        except UniquenessError:
            refused_count += 1
    queue.put((mine.pk.get(), added, refused_count))


def test_colliding_members_across_processes(database, namespace, atomic):
    """8 processes add colliding members to their own instances: each member ends in one instance."""
    Member = define(database, namespace, atomic)
    results = run_workers(_worker, database, namespace, atomic, WORKERS)
    holders = {}
    for pk, _, _ in results:
        for value in Member(pk).emails.smembers():
            assert value not in holders, (value, pk, holders.get(value))
            holders[value] = pk
    assert sorted(holders) == sorted("m%d" % value for value in range(VALUES))
    for value, pk in holders.items():
        assert claim_of(Member, "emails", value) == pk
    assert problems_of(database, every_model(Member)) == []
