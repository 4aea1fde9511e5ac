"""Bulk creation and deletion: one round trip per batch, refusals reported together at the end."""

from __future__ import annotations

import pytest
import redis
from _consistency import check_consistency
from _redis_dump import command_log, raw_client, warm_model_script, warm_scripts

from limpyd import fields, model
from limpyd.exceptions import BulkError, UniquenessError
from limpyd.indexes import EqualIndex


def define(database, namespace, atomic, **extra):
    attrs = {
        "database": database,
        "namespace": namespace,
        "atomic_writes": atomic,
        "code": fields.InstanceHashField(unique=True),
        "name": fields.StringField(indexable=True),
        "tags": fields.SetField(indexable=True),
        "note": fields.InstanceHashField(),
        **extra,
    }
    return type("Item", (model.RedisModel,), attrs)


@pytest.fixture
def raw(redis_settings, database):
    client = raw_client(redis_settings)
    warm_scripts(client)
    yield client
    client.close()


def rows(count, start=0):
    for n in range(start, start + count):
        yield {"code": "c%d" % n, "name": "n%d" % (n % 7), "tags": ["t%d" % (n % 3), "all"], "note": "x"}


def test_create_many_streams_batches_in_one_round_trip_each(database, namespace, atomic, raw):
    Item = define(database, namespace, atomic)
    warm_model_script(Item)
    with command_log(raw) as log:
        pks = Item.create_many(rows(2500), batch_size=1000)
    assert pks == [str(n) for n in range(1, 2501)]
    client_commands = [line[:40] for line in log if line.split(" ", 1)[0].isupper()]
    assert len(client_commands) == 3 and all(
        line.startswith(("EVALSHA", "FCALL")) for line in client_commands
    ), client_commands
    assert len(Item.collection(tags="all")) == 2500 and len(Item.collection(name="n3")) == 357
    assert Item(1500).hmget("code", "note") == ["c1499", "x"]
    assert check_consistency(raw, [Item]) == []


def test_refused_rows_are_reported_together(database, namespace, atomic, raw):
    Item = define(database, namespace, atomic)
    Item(code="taken")
    given = [
        {"code": "a"},
        {"code": "taken"},  # taken by stored data
        {"code": "b", "name": object()},  # a value Redis cannot store
        {"code": "a"},  # taken by an earlier row
        {"code": "c", "nope": 1},  # not a field
        {"code": "d"},
    ]
    with pytest.raises(BulkError) as raised:
        Item.create_many(iter(given), batch_size=2)
    error = raised.value
    assert [position for position, _ in error.refusals] == [1, 2, 3, 4]
    reasons = [reason for _, reason in error.refusals]
    assert isinstance(reasons[0], UniquenessError) and 'Value "taken" already indexed' in str(reasons[0])
    assert isinstance(reasons[1], redis.DataError) and "Item.name" in str(reasons[1])
    assert isinstance(reasons[2], UniquenessError) and 'Value "a" already indexed' in str(reasons[2])
    assert "`nope` is not a valid field name" in str(reasons[3])
    assert error.pks == ["2", None, None, None, None, "3"]
    assert "4 row(s) refused, the 2 others created: row 1:" in str(error)
    assert sorted(Item.collection()) == ["1", "2", "3"]
    assert check_consistency(raw, [Item]) == []


def test_models_the_script_cannot_write_fall_back_to_one_by_one(database, namespace, raw):
    lower = EqualIndex.configure(transform=lambda value: value.lower())
    Item = define(database, namespace, False, label=fields.StringField(indexable=True, indexes=[lower]))
    with pytest.raises(BulkError) as raised:
        Item.create_many([{"code": "a", "label": "ABC"}, {"code": "a"}, {"code": "b", "label": "Def"}])
    assert raised.value.pks == ["1", None, "2"]
    assert list(Item.collection(label="abc")) == ["1"] and list(Item.collection(label="def")) == ["2"]


def test_create_many_with_a_ttl(database, namespace, atomic):
    Item = define(database, namespace, atomic, expiring=True)
    pks = Item.create_many(rows(3), ttl=100)
    assert all(99 < Item(pk).time_to_live() <= 100 for pk in pks)


def test_delete_many_and_collection_delete(database, namespace, atomic, raw):
    Item = define(database, namespace, atomic)
    Item.create_many(rows(300))  # the script is loaded now
    with command_log(raw) as log:
        assert Item.delete_many((str(n) for n in range(1, 101)), batch_size=50) == 100
    assert len([line for line in log if line.startswith(("EVALSHA", "FCALL"))]) == 2
    assert Item.delete_many(["1", "2", "250"]) == 1  # the deleted ones are skipped
    assert Item.collection(name="n0").delete() == len(
        [n for n in range(101, 301) if n != 250 and (n - 1) % 7 == 0]
    )
    assert len(Item.collection()) == 199 - 28
    assert check_consistency(raw, [Item]) == []


def test_bad_batch_size(database, namespace):
    Item = define(database, namespace, True)
    with pytest.raises(ValueError, match=r"batch_size=0 for Item: give an int >= 1"):
        Item.create_many([], batch_size=0)


def test_create_many_after_the_server_forgot_its_scripts(database, namespace, raw):
    Item = define(database, namespace, True)
    Item.create_many(rows(10))
    raw.script_flush()  # as after a restart: every pipelined batch meets NOSCRIPT (or a missing
    if database.redis_version >= (7,):  # function), then is sent again once it is loaded
        raw.execute_command("FUNCTION", "FLUSH")
    assert Item.create_many(rows(2500, start=10), batch_size=500) == [str(n) for n in range(11, 2511)]
    assert len(Item.collection(tags="all")) == 2510
    assert check_consistency(raw, [Item]) == []
