"""Crash consistency: a client process killed (SIGKILL) at random instants of a write workload.

A forked child runs a mixed create/update/hmset/delete workload; the test kills it after a random
delay, 200 times. In atomic mode every operation is one script call, so the shared checker
(tests/_consistency.py) finds nothing, without any repair. In the default mode an operation is
several round trips: the same kills leave it half done now and then (the figure is printed).
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from _consistency import check_consistency
from _redis_dump import raw_client

from limpyd import fields, model
from limpyd.exceptions import DoesNotExist, UniquenessError

pytestmark = pytest.mark.slow  # deselected by the middle CI legs (-m "not slow"), see .ci/run

KILLS = 200


def define(database, namespace, atomic):
    attrs = {
        "database": database,
        "namespace": namespace,
        "atomic_writes": atomic,
        "code": fields.InstanceHashField(unique=True),
        "name": fields.StringField(indexable=True),
        "note": fields.InstanceHashField(),
        "tags": fields.SetField(indexable=True),
    }
    return type("Item", (model.RedisModel,), attrs)


def workload(Item, seed):
    """Write forever (until killed): random operations on a few pks and unique values."""
    rng = random.Random(seed)
    while True:
        pk = str(rng.randint(1, 30))
        code = "c%d" % rng.randint(0, 20)
        try:
            choice = rng.randrange(6)
            if choice == 0:
                Item(code=code, name="n%d" % rng.randint(0, 3), note="x", tags=["t%d" % rng.randint(0, 3)])
            elif choice == 1:
                Item.lazy_connect(pk).code.hset(code)
            elif choice == 2:
                Item.lazy_connect(pk).name.set("n%d" % rng.randint(0, 3))
            elif choice == 3:
                Item.lazy_connect(pk).tags.sadd("t%d" % rng.randint(0, 3))
            elif choice == 4:
                Item.lazy_connect(pk).hmset(code=code, note="y")
            else:
                Item.lazy_connect(pk).delete()
        except (UniquenessError, DoesNotExist):
            pass


def kill_at_random(Item, kills, seed):
    """Fork a writer and kill it after a random delay, ``kills`` times; yield after each kill."""
    rng = random.Random(seed)
    for round_number in range(kills):
        pid = os.fork()
        if pid == 0:  # the writer: its connections are new (redis-py pools reset after a fork)
            try:
                workload(Item, seed * 1000 + round_number)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.002, 0.02))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        yield round_number


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to start and kill writers cheaply")
def test_atomic_writes_survive_sigkill(database, namespace, redis_settings):
    Item = define(database, namespace, True)
    client = raw_client(redis_settings)
    for _ in kill_at_random(Item, KILLS, 1):
        pass
    assert len(Item.collection()) > 0  # the writers did write
    assert check_consistency(client, [Item]) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to start and kill writers cheaply")
def test_default_mode_is_left_half_done_by_some_kills(database, namespace, redis_settings, capsys):
    """The figure of the closing note; asserts only that the checker sees what atomic mode avoids."""
    Item = define(database, namespace, False)
    client = raw_client(redis_settings)
    broken = 0
    for _ in kill_at_random(Item, KILLS, 2):
        if check_consistency(client, [Item]):
            broken += 1
            for key in client.scan_iter(match=namespace + ":*"):  # start again from a clean model
                client.delete(key)
    with capsys.disabled():
        print("\ndefault mode: %d of %d SIGKILLs left the database inconsistent" % (broken, KILLS))
    assert broken > 0
