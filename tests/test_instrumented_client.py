"""Code that replaces command methods on ``database.connection`` sees every call the ORM makes."""

from __future__ import annotations

from limpyd import fields
from limpyd.model import RedisModel


def _define(database, namespace):
    attrs = {
        "database": database,
        "namespace": namespace,
        "name": fields.InstanceHashField(indexable=True, unique=True),
        "tags": fields.SetField(indexable=True),
    }
    return type("Item", (RedisModel,), attrs)


def test_wrapped_methods_see_calls_made_inside_batches(database, namespace, client):
    Item = _define(database, namespace)
    Item(name="a", tags=["x"])  # a first batch: its client view is then reused
    connection = database.connection
    seen = []
    original_sadd, original_sinterstore = connection.sadd, connection.sinterstore

    def sadd(*args, **kwargs):
        seen.append(("sadd",) + args)
        return original_sadd(*args, **kwargs)

    def sinterstore(*args, **kwargs):
        seen.append(("sinterstore",) + args)
        return original_sinterstore(*args, **kwargs)

    connection.sadd = sadd
    connection.sinterstore = sinterstore
    try:
        item = Item(name="b", tags=["y", "z"])
        assert ("sadd", "%s:item:collection" % namespace, "2") in seen
        assert any(call[0] == "sadd" and call[1] == "%s:item:tags:y" % namespace for call in seen)
        seen.clear()
        assert set(Item.collection(name="b", tags="y")) == {item.pk.get()}
        assert [call[0] for call in seen] == ["sinterstore"]
    finally:
        del connection.sadd, connection.sinterstore
    # the data written through the wrappers is complete and in order
    assert client.smembers("%s:item:collection" % namespace) == {"1", "2"}
    assert client.smembers("%s:item:tags:z" % namespace) == {"2"}
    seen.clear()
    Item(name="c")
    assert seen == []  # removed wrappers are not called any more


def test_wrapped_execute_command_sees_every_command(database, namespace):
    Item = _define(database, namespace)
    connection = database.connection
    seen = []
    original = connection.execute_command

    def execute_command(*args, **kwargs):
        seen.append(args[0])
        return original(*args, **kwargs)

    connection.execute_command = execute_command
    try:
        Item(name="a", tags=["x"])
    finally:
        del connection.execute_command
    assert "SADD" in seen and "INCRBY" in seen and "HSET" in seen
