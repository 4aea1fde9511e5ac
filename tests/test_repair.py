"""Model.repair(): dry run writes nothing, fixes are idempotent, the audit and the independent checker are clean after."""

from __future__ import annotations

import redis
from _consistency import check_consistency

from limpyd import fields
from limpyd.integrity import report as kinds


def _damaged(Base, client):
    class Shop(Base):
        code = fields.InstanceHashField(unique=True)
        name = fields.StringField(indexable=True)
        tags = fields.SetField(indexable=True)

    for i in range(20):
        Shop(code="c%d" % i, name="n%d" % (i % 3), tags=["a", "t%d" % i])
    m = Shop._name
    client.srem("%s:name:n1" % m, "2")
    client.sadd("%s:name:n1" % m, "999")
    client.sadd("%s:tags:zz" % m, "3")
    client.hset("%s:5:hash" % m, "code", "c3")  # pk 4 holds c3
    client.set("%s:77:name" % m, "x")
    client.set("%s:5:removed" % m, "x")
    client.set("%s:lock-for-update:name" % m, "token")
    client.sadd("%s:__collection__:abc" % m, "1")
    client.sadd("%s:collection" % m, "500")
    return Shop


def _dump(client: redis.Redis) -> dict:
    return {key: client.dump(key) for key in client.scan_iter()}


def test_dry_run_writes_nothing(Base, client):
    Shop = _damaged(Base, client)
    before = _dump(client)
    result = Shop.repair()
    assert result.dry_run and result.actions and not result.done
    assert all(action.skipped for action in result.actions)
    assert _dump(client) == before


def test_repair_without_delete_orphans_keeps_data(Base, client):
    Shop = _damaged(Base, client)
    result = Shop.repair(dry_run=False)
    left = result.final.counts
    # what needs deleting data is left, and reported
    assert set(left) == {kinds.UNIQUE_CONFLICT, kinds.EMPTY_PK, kinds.ORPHAN_DATA, kinds.UNKNOWN_KEY}
    assert client.get("%s:77:name" % Shop._name) == "x"
    assert client.hget("%s:5:hash" % Shop._name, "code") == "c3"
    # the kept pk holds the unique value alone in the index
    assert client.smembers("%s:code:c3" % Shop._name) == {"4"}
    assert client.exists("%s:lock-for-update:name" % Shop._name) == 0
    assert {f.kind for f in result.final.findings} == set(left)
    assert result.unresolved


def test_repair_with_delete_orphans_is_clean_and_idempotent(Base, client):
    Shop = _damaged(Base, client)
    result = Shop.repair(dry_run=False, delete_orphans=True)
    assert result.clean, result.final.findings
    assert check_consistency(client, [Shop]) == []
    assert client.smembers("%s:code:c3" % Shop._name) == {"4"}
    assert client.hget("%s:5:hash" % Shop._name, "code") is None  # the newer pk lost the value
    before = _dump(client)
    again = Shop.repair(dry_run=False, delete_orphans=True)
    assert again.clean and again.done == 0
    assert _dump(client) == before


def test_keep_newest(Base, client):
    Shop = _damaged(Base, client)
    Shop.repair(dry_run=False, delete_orphans=True, keep="newest")
    assert client.smembers("%s:code:c3" % Shop._name) == {"5"}
    assert client.hget("%s:4:hash" % Shop._name, "code") is None


def test_repair_given_a_report_and_a_value_changed_meanwhile(Base, client):
    Shop = _damaged(Base, client)
    report = Shop.audit()
    # the missing entry's value changes before the repair: nothing wrong is added
    client.delete("%s:lock-for-update:name" % Shop._name)  # the ownerless lock would block the write
    Shop(2).name.set("n2")
    result = Shop.repair(report=report, dry_run=False, delete_orphans=True)
    assert result.clean
    assert "2" not in client.smembers("%s:name:n1" % Shop._name)
    assert check_consistency(client, [Shop]) == []


def test_bad_keep(Base, client):
    import pytest

    Shop = _damaged(Base, client)
    with pytest.raises(ValueError, match="keep='x'"):
        Shop.repair(keep="x")
