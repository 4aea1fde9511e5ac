"""``limpyd._pool.send_on_pool``: redis-py's connection handling without its per-command layers.

The connection a pool keeps aside for the next call must behave like one taken from the pool:
a killed socket surfaces as a connection error (or is retried by redis-py), a forked child never
shares it, a small pool never has one kept out of it, and replies are those of redis-py.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import redis

from limpyd import _pool
from limpyd.database import RedisDatabase
from limpyd.fields import StringField
from limpyd.model import RedisModel


@pytest.fixture
def plain(redis_settings, database):  # the database fixture empties the server afterwards
    client = redis.Redis(**redis_settings)
    yield client
    client.close()


def in_use(pool):
    return len(pool._in_use_connections)


def test_the_reply_is_redis_py_s(plain):
    plain.set("pool:k", "v")
    assert _pool.send_on_pool(plain, "GET", "pool:k") == plain.get("pool:k")
    assert _pool.send_on_pool(plain, "GET", "pool:missing") is None


def test_a_large_pool_keeps_one_connection_aside(plain):
    pool = plain.connection_pool
    _pool.send_on_pool(plain, "PING")
    _pool.send_on_pool(plain, "PING")
    assert in_use(pool) == 1  # the spare, reused: not one per call
    spare = _pool.take_spare(pool)
    assert spare is not None and _pool.take_spare(pool) is None
    pool.release(spare)


def test_a_small_pool_keeps_nothing_aside(redis_settings):
    client = redis.Redis(max_connections=_pool.MIN_POOL_SIZE_FOR_A_SPARE - 1, **redis_settings)
    try:
        _pool.send_on_pool(client, "PING")
        assert in_use(client.connection_pool) == 0
        assert _pool.take_spare(client.connection_pool) is None
    finally:
        client.close()


def test_a_killed_spare_is_replaced_before_use(redis_settings, plain):
    """A spare the server closed is seen before the send (as a pool sees it), even without retries."""
    client = redis.Redis(retry=None, **redis_settings) if _accepts_retry_none() else None
    client = client or redis.Redis(**redis_settings)
    try:
        client.set("pool:k", "v")
        _pool.send_on_pool(client, "GET", "pool:k")
        spare = _pool.take_spare(client.connection_pool)
        _pool.keep_spare(client.connection_pool, spare)
        killed = _client_id(spare)
        plain.client_kill_filter(_id=killed)
        for _ in range(100):  # the server closes the socket right after CLIENT KILL: wait for it
            if all(str(entry["id"]) != str(killed) for entry in plain.client_list()):
                break
            time.sleep(0.01)
        assert _pool.send_on_pool(client, "GET", "pool:k") == b"v"
        assert _client_id(_pool.take_spare(client.connection_pool)) != killed
    finally:
        client.close()


def test_a_spare_killed_during_its_command_surfaces_as_a_connection_error(redis_settings, plain):
    """Killed while its command runs: a connection error (or redis-py's retry), never a wrong reply."""
    client = redis.Redis(**redis_settings)
    try:
        _pool.send_on_pool(client, "PING")
        spare = _pool.take_spare(client.connection_pool)
        _pool.keep_spare(client.connection_pool, spare)
        killer = threading.Timer(0.2, lambda: plain.client_kill_filter(_id=_client_id_of_blocked(plain)))
        killer.start()
        try:
            reply = _pool.send_on_pool(client, "BLPOP", "pool:never", 2)
        except redis.ConnectionError:
            reply = "connection error"
        finally:
            killer.join()
        assert reply in ("connection error", None)  # None: redis-py retried, BLPOP timed out
        assert _pool.send_on_pool(client, "PING") in (True, b"PONG", "PONG")  # the next call reconnects
    finally:
        client.close()


def _client_id_of_blocked(plain):
    return next(entry["id"] for entry in plain.client_list() if entry.get("cmd") == "blpop")


def test_a_forked_child_does_not_use_its_parent_s_spare(plain):
    _pool.send_on_pool(plain, "PING")
    pool = plain.connection_pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's spare must not be handed out here
        try:
            taken = _pool.take_spare(pool)
            os.write(write, b"none" if taken is None else b"taken")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 10) == b"none"
    assert _pool.take_spare(pool) is not None  # the parent still has it


def test_field_reads_see_a_replaced_method(redis_settings, database, namespace):
    """``field.get()`` takes the short route only when ``get`` is redis-py's own."""
    database = RedisDatabase(**redis_settings)  # its own client: the method is replaced on it

    Item = type("Item", (RedisModel,), {"database": database, "namespace": namespace, "name": StringField()})
    obj = Item(name="x")
    seen = []
    original = database.connection.get

    def get(*args, **kwargs):
        seen.append(args)
        return original(*args, **kwargs)

    database.connection.get = get
    try:
        assert obj.name.get() == "x"
    finally:
        del database.connection.get
    assert seen == [(obj.name.key,)]
    assert obj.name.get() == "x" and len(seen) == 1  # back to the short route


def _client_id(connection):
    connection.send_command("CLIENT", "ID")
    return connection.read_response()


def _accepts_retry_none():
    import inspect

    return "retry" in inspect.signature(redis.Redis).parameters


@pytest.mark.parametrize(
    "method, operation",
    [
        ("sismember", lambda Item, obj: Item(obj.pk.get())),
        ("hmget", lambda Item, obj: obj.hmget("code")),
        ("scard", lambda Item, obj: len(Item.collection(name="x"))),
        ("smembers", lambda Item, obj: list(Item.collection(name="x"))),
    ],
)
def test_direct_reads_see_a_replaced_method(redis_settings, database, namespace, method, operation):
    """The reads limpyd sends directly go through a replaced redis-py method instead."""
    from limpyd.fields import InstanceHashField

    database = RedisDatabase(**redis_settings)
    Item = type(
        "Item",
        (RedisModel,),
        {
            "database": database,
            "namespace": namespace,
            "name": StringField(indexable=True),
            "code": InstanceHashField(),
        },
    )
    obj = Item(name="x", code="c")
    expected = operation(Item, obj)
    seen = []
    original = getattr(database.connection, method)

    def replaced(*args, **kwargs):
        seen.append(args)
        return original(*args, **kwargs)

    setattr(database.connection, method, replaced)
    try:
        assert _same(operation(Item, obj), expected)
    finally:
        delattr(database.connection, method)
    assert len(seen) == 1
    assert _same(operation(Item, obj), expected) and len(seen) == 1  # the short route again


def _same(result, expected):
    if isinstance(result, RedisModel):
        return result.pk.get() == expected.pk.get()
    return result == expected
