"""The write-behind batches (``limpyd._batch``): fewer round trips, same commands, same outcomes."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from _redis_dump import command_log, dump, locked

from limpyd import _batch
from limpyd.fields import FieldLock, SetField, StringField


def round_trips(database, monkeypatch, operation):
    """Return how many writes the database's connections make while ``operation`` runs."""
    writes = []
    connection_class = database.connection.connection_pool.connection_class
    original = connection_class.send_packed_command

    def counting(self, command, *args, **kwargs):
        writes.append(1)
        return original(self, command, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(connection_class, "send_packed_command", counting)
        operation()
    return len(writes)


def test_set_on_an_indexable_field_costs_two_round_trips(Base, client, database, monkeypatch):
    class M(Base):
        name = StringField(indexable=True)

    instance = M(name="a")
    n = M._name
    with command_log(client) as log:
        trips = round_trips(database, monkeypatch, lambda: instance.name.set("b"))
    assert trips == 2  # [SET NX lock, GET] then [SREM, SADD, SET, EVALSHA]
    assert log == locked(
        n + ":lock-for-update:name",
        ["GET %s:1:name" % n, "SREM %s:name:a 1" % n, "SADD %s:name:b 1" % n, "SET %s:1:name b" % n],
    )


def test_a_lock_held_elsewhere_is_waited_for_and_the_read_sent_again(Base, client, database):
    class M(Base):
        name = StringField(indexable=True)

    instance = M(name="a")
    held, done = threading.Event(), threading.Event()

    def update_elsewhere():  # another thread holds the field lock and changes the value meanwhile
        with FieldLock(M.get_field("name")):
            held.set()
            time.sleep(0.3)
            client.set(instance.name.key, "z")
            client.srem("%s:name:a" % M._name, instance._pk)
            client.sadd("%s:name:z" % M._name, instance._pk)
        done.set()

    thread = threading.Thread(target=update_elsewhere)
    thread.start()
    assert held.wait(5)
    start = time.monotonic()
    instance.name.set("b")
    waited = time.monotonic() - start
    thread.join()
    assert done.is_set()
    assert waited >= 0.2  # the SET NX sent with the read was refused: the lock was waited for
    # the read sent behind the refused lock was sent again once it was acquired: "z" is deindexed
    assert client.smembers("%s:name:z" % M._name) == set()
    assert client.smembers("%s:name:b" % M._name) == {instance._pk}
    assert client.smembers("%s:name:a" % M._name) == set()
    assert not client.exists("%s:lock-for-update:name" % M._name)


def test_a_new_instance_does_not_wait_for_the_lock_of_a_non_unique_field(Base, client, database):
    class M(Base):
        code = StringField()  # written first: allocates the pk
        name = StringField(indexable=True)

    held, release = threading.Event(), threading.Event()

    def hold_the_lock():
        with FieldLock(M.get_field("name")):
            held.set()
            release.wait(3)

    thread = threading.Thread(target=hold_the_lock)
    thread.start()
    assert held.wait(5)
    try:
        start = time.monotonic()
        created = M(code="c", name="a")  # nobody else knows its pk yet: no need to wait for the lock
        assert time.monotonic() - start < 0.5
        assert client.get(created.name.key) == "a"
        assert client.smembers("%s:name:a" % M._name) == {created._pk}
        assert client.exists("%s:lock-for-update:name" % M._name)  # the other holder's lock is intact
    finally:
        release.set()
        thread.join()


def test_a_write_error_sent_in_a_batch_rolls_the_indexes_back(Base, client, database):
    class M(Base):
        tags = SetField(indexable=True)

    instance = M(tags=["a"])
    client.delete(instance.tags.key)
    client.set(instance.tags.key, "not a set")  # the SADD will get WRONGTYPE
    before = dump(client)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        instance.tags.sadd("b")
    assert dump(client) == before  # the index entry added for "b" was removed again


def test_the_release_script_is_loaded_when_the_server_lost_it(Base, client, database):
    class M(Base):
        name = StringField(indexable=True)

    instance = M(name="a")
    client.script_flush()
    instance.name.set("b")  # the queued EVALSHA gets NOSCRIPT: the script is loaded and run again
    assert not client.exists("%s:lock-for-update:name" % M._name)
    assert client.get(instance.name.key) == "b"


def test_values_redis_py_cannot_encode_are_sent_one_by_one(database):
    connection = database.connection
    replies = _batch.send_commands(
        connection, [(("SET", "k1", "v1"), {}), (("SET", "k2", object()), {}), (("GET", "k1"), {})]
    )
    assert replies[0] is True and replies[2] == "v1"
    assert isinstance(replies[1], redis.DataError)
    assert connection.get("k2") is None


def test_no_batch_outside_an_operation_and_none_left_open(Base, database):
    class M(Base):
        name = StringField(indexable=True)

    M(name="a").name.set("b")
    assert _batch.current_batch(database) is None
    assert type(database.connection) is redis.Redis


def test_a_batch_flushes_before_a_scan(Base, client, database):
    class M(Base):
        name = StringField(indexable=True)

    with _batch.batch_scope(database) as batch:
        connection = database.connection
        assert _batch.is_batched(connection)
        _batch.later(connection).set("queued", "1")
        assert batch.queue  # not sent yet
        assert "queued" in set(database.scan_keys())
        assert not batch.queue


def test_later_marks_only_the_command_of_its_own_call(database, client):
    with _batch.batch_scope(database) as batch:
        connection = database.connection
        with pytest.raises(redis.DataError):
            _batch.later(connection).zadd("refused", {})  # redis-py refuses it before sending
        assert connection._limpyd_defer is None
        assert connection.set("after", "1")  # a later command runs at once: nothing was left for it
        assert not batch.queue
        _batch.later(connection).set("queued", "1")
        assert [item.args for item in batch.queue] == [("SET", "queued", "1")]
    assert client.get("after") == "1" and client.get("queued") == "1"
    assert client.exists("refused") == 0


def test_later_runs_the_command_at_once_outside_a_batch(database, client):
    connection = database.connection
    assert not _batch.is_batched(connection)
    assert _batch.later(connection).set("now", "1") is True
    assert client.get("now") == "1"
