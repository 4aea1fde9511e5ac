"""``FieldLock``: key, cost, scope, re-entrancy, ``lockable=False``, blocking between threads.

docs/models.rst ("FieldLock") and docs/failure-semantics.rst ("Locks").
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from _redis_dump import command_log, locked
from redis.exceptions import LockNotOwnedError

from limpyd.database import Lock
from limpyd.fields import FieldLock, InstanceHashField, PKField, SetField, StringField


def test_fieldlock_is_a_redis_py_lock(Base):
    class M(Base):
        name = StringField(indexable=True)

    assert issubclass(FieldLock, Lock) and Lock is redis.lock.Lock
    lock = FieldLock(M.get_field("name"))
    assert lock.field is M.get_field("name") and lock.sub_lock_mode is False
    assert lock.name == "%s:m:lock-for-update:name" % M.namespace
    assert lock.timeout == 5 and lock.sleep == 0.1 and lock.blocking is True
    assert lock.blocking_timeout is None and lock.thread_local is True
    assert lock.redis is M.get_connection()
    custom = FieldLock(
        M().name, timeout=1, sleep=0.01, blocking=False, blocking_timeout=2, thread_local=False
    )
    assert (custom.timeout, custom.sleep, custom.blocking, custom.blocking_timeout, custom.thread_local) == (
        1,
        0.01,
        False,
        2,
        False,
    )


def test_a_lock_costs_four_commands(Base, client, count_commands):
    class M(Base):
        name = StringField(indexable=True)

    key = "%s:m:lock-for-update:name" % M.namespace
    with command_log(client) as log:
        with FieldLock(M.get_field("name")):
            pass
    assert log == locked(key, [])
    with count_commands(4):
        with FieldLock(M.get_field("name")):
            pass


def test_lock_is_taken_by_modifiers_of_indexable_fields_only(Base, client, namespace, count_commands):
    class M(Base):
        name = StringField(indexable=True)
        plain = StringField()
        ih = InstanceHashField(indexable=True)

    obj = M(name="a", plain="b", ih="c")
    with count_commands(1):  # getter of an indexable field: no lock
        obj.name.get()
    with count_commands(1):  # modifier of a field that is not indexable: no lock
        obj.plain.set("x")
    with command_log(
        client
    ) as log:  # the model-level hmset locks its indexable fields (2.x: none); hdel none
        obj.hmset(ih="d")
        obj.hdel("ih")
    assert [line for line in log if "lock-for-update" in line and line.startswith("SET")] == [
        "SET %s:m:lock-for-update:ih <token> NX PX 5000" % namespace
    ]
    with count_commands(0):  # pk operations neither
        obj.pk.get()
    with command_log(client) as log:
        obj.name.set("z")
    assert log[0].startswith("SET %s:m:lock-for-update:name " % namespace)


def test_pk_operations_take_no_lock(Base, client):
    class M(Base):
        id = PKField()

    with command_log(client) as log:
        M(id="a")
        M.get("a")
    assert not [line for line in log if "lock" in line]


def test_lockable_false_on_the_field(Base, client, count_commands):
    class M(Base):
        name = StringField(indexable=True, lockable=False)

    obj = M()
    obj.pk.get()
    with count_commands(3):  # GET, SADD, SET: no lock command
        obj.name.set("x")
    lock = FieldLock(obj.name)
    with count_commands(0):
        assert lock.acquire() is True
        lock.release()
        with lock:
            pass


def test_lockable_false_on_the_model(Base, client, count_commands):
    class M(Base):
        lockable = False
        name = StringField(indexable=True)

    obj = M()
    obj.pk.get()
    assert obj.name.lockable is False and M.get_field("name").lockable is True
    with count_commands(3):
        obj.name.set("x")
    with count_commands(4):  # the model-level field keeps its own option
        with FieldLock(M.get_field("name")):
            pass


def test_lock_is_held_while_the_command_runs(Base, client, namespace):
    key = "%s:m:lock-for-update:name" % namespace
    seen = []

    class M(Base):
        name = StringField(indexable=True)

        def post_command(self, sender, name, result, args, kwargs):
            seen.append((name, client.exists(key)))
            return result

    obj = M()
    obj.pk.get()
    obj.name.set("x")
    obj.name.get()
    assert seen == [("get", 1), ("set", 1), ("get", 0)]  # the read of the S strategy is inside too
    assert not client.exists(key)


def test_reentrancy_in_the_same_thread(Base, client, count_commands):
    class M(Base):
        name = StringField(indexable=True)

    field = M.get_field("name")
    other = M()
    other.pk.get()
    outer = FieldLock(field)
    with count_commands(4 + 3):  # the outer lock + GET, SADD, SET: the set takes no second lock
        with outer:
            assert outer.already_locked_by_model is True
            other.name.set("x")
    assert outer.already_locked_by_model is False
    with FieldLock(field):
        inner = FieldLock(field)
        with count_commands(0):
            assert inner.acquire() is True
        assert inner.sub_lock_mode is True
        with count_commands(0):
            inner.release()
        assert FieldLock(field).already_locked_by_model is True  # the outer lock is still recorded
    assert FieldLock(field).already_locked_by_model is False


def test_already_locked_by_model_property(Base):
    class M(Base):
        name = StringField(indexable=True)
        other = StringField(indexable=True)

    lock = FieldLock(M.get_field("name"))
    assert lock.already_locked_by_model is False
    lock.already_locked_by_model = True
    assert M._thread_lock_storage()[M._name] == {"name"}
    assert FieldLock(M().name).already_locked_by_model is True
    assert FieldLock(M.get_field("other")).already_locked_by_model is False
    lock.already_locked_by_model = False
    assert M._thread_lock_storage()[M._name] == set()


def test_defaults_written_inside_the_lock_of_the_same_field(Base, client, namespace):
    """Allocating a pk inside the lock of a field writes the defaults, locked on the same field."""

    class M(Base):
        name = StringField(indexable=True, default="d")
        other = StringField(indexable=True)

    n = namespace + ":m"
    with command_log(client) as log:
        M(other="o")
    assert log == ["SET %s:lock-for-update:other <token> NX PX 5000" % n, "INCRBY %s:max_pk 1" % n] + locked(
        n + ":lock-for-update:name", ["GET %s:1:name" % n, "SADD %s:name:d 1" % n, "SET %s:1:name d" % n]
    ) + [
        "SADD %s:collection 1" % n,
        "GET %s:1:other" % n,
        "SADD %s:other:o 1" % n,
        "SET %s:1:other o" % n,
        "get %s:lock-for-update:other" % n,
        "del %s:lock-for-update:other" % n,
        "EVALSHA <sha> 1 %s:lock-for-update:other <token>" % n,
    ]
    # the same field: no deadlock, the nested write runs in sub-lock mode
    with command_log(client) as log:
        obj = M(name="given")
    assert [line for line in log if line.startswith("SET %s:lock" % n)] == [
        "SET %s:lock-for-update:name <token> NX PX 5000" % n
    ]
    assert obj.name.get() == "given"


def test_lock_released_on_error(Base, client, namespace):
    class M(Base):
        name = StringField(unique=True)

    M(name="taken")
    obj = M(name="free")
    with pytest.raises(Exception):
        obj.name.set("taken")
    assert not client.exists("%s:m:lock-for-update:name" % namespace)
    assert FieldLock(M.get_field("name")).already_locked_by_model is False
    obj.name.set("other")  # not blocked


def test_other_threads_wait_for_the_lock(Base, client):
    class M(Base):
        name = StringField(indexable=True)
        other = StringField(indexable=True)

    first, second = M(name="a"), M(name="b")
    events = []
    done = threading.Event()

    def update():
        second.name.set("c")  # another instance, same field: must wait
        events.append("second written")
        done.set()

    with FieldLock(M.get_field("name")):
        thread = threading.Thread(target=update)
        thread.start()
        first.other.set("x")  # another field of the model: not blocked
        assert not done.wait(0.4)
        events.append("releasing")
    thread.join(5)
    assert events == ["releasing", "second written"]
    assert second.name.get() == "c"
    assert set(M.collection(name="c")) == {"2"}


def test_same_thread_different_models_do_not_share_the_registry(Base, client, count_commands):
    class A(Base):
        name = StringField(indexable=True)

    class B(Base):
        name = StringField(indexable=True)

    b = B()
    b.pk.get()
    with FieldLock(A.get_field("name")):
        with count_commands(4 + 3):  # B's lock is a different lock, taken for real
            b.name.set("x")


def test_lock_expires_after_its_timeout(Base, client, namespace):
    class M(Base):
        name = StringField(indexable=True)

    lock = FieldLock(M.get_field("name"), timeout=0.2)
    lock.acquire()
    time.sleep(0.35)
    assert not client.exists("%s:m:lock-for-update:name" % namespace)
    with pytest.raises(LockNotOwnedError):
        lock.release()
    assert lock.already_locked_by_model is False


def test_set_field_modifiers_lock_too(Base, client, namespace, count_commands):
    class M(Base):
        tags = SetField(indexable=True)

    obj = M()
    obj.pk.get()
    with command_log(client) as log:
        obj.tags.sadd("a")
    assert log == locked(
        "%s:m:lock-for-update:tags" % namespace,
        ["SADD %s:m:tags:a 1" % namespace, "SADD %s:m:1:tags a" % namespace],
    )


@pytest.mark.parametrize("write", ["field", "hmset"])
def test_a_refused_write_is_rolled_back_before_the_lock_is_released(Base, client, namespace, write):
    """A writer waiting for the lock (or an instance deletion) must find the indexes restored.

    The uniqueness check refuses the new value after the old one was deindexed: the old index
    entry is put back while the lock is still held, never after its release (a deletion taking
    the lock in between would leave that entry behind, pointing at a deleted instance).
    """

    class M(Base):
        code = InstanceHashField(unique=True)
        size = InstanceHashField(indexable=True)

    n = namespace + ":m"
    M(code="taken")
    obj = M(code="mine", size="1")
    with command_log(client) as log:
        with pytest.raises(Exception, match="taken"):
            if write == "field":
                obj.code.hset("taken")
            else:
                obj.hmset(code="taken", size="2")
    rollback = log.index("SADD %s:code:mine %s" % (n, obj.pk.get()))
    releases = [i for i, line in enumerate(log) if line.startswith("EVALSHA <sha> 1 %s:lock-for-update:" % n)]
    assert releases and rollback < min(releases), log
    assert client.smembers("%s:code:mine" % n) == {obj.pk.get()}
    assert obj.code.hget() == "mine"
