"""The reaper removes due instances in the background, sleeping until the next deadline."""

from __future__ import annotations

import threading
import time

from _consistency import check_consistency
from _redis_dump import raw_client

from limpyd import fields, model
from limpyd.reaper import next_deadline, reap


def define(database, namespace, **settings):
    attrs = {
        "database": database,
        "namespace": namespace,
        "code": fields.InstanceHashField(unique=True),
        "tags": fields.SetField(indexable=True),
        **settings,
    }
    return type("Item", (model.RedisModel,), attrs)


def test_reap_once_and_next_deadline(database, namespace, redis_settings):
    Item = define(database, namespace, expiring=True)
    Other = define(database, namespace + "o")  # not expiring: left alone
    Other(code="x")
    items = [Item(code="c%d" % n, tags=["t"]) for n in range(5)]
    assert next_deadline(Item) is None
    for item in items[:3]:
        item.expire_in(0.1)
    items[3].expire_in(30)
    assert 0 <= next_deadline(Item) <= 0.1
    time.sleep(0.15)
    purged = []
    assert reap([Item, Other], once=True, on_purge=lambda model, count: purged.append((model, count))) == 3
    assert purged == [(Item, 3)]
    assert 29 < next_deadline(Item) <= 30
    assert check_consistency(raw_client(redis_settings), [Item, Other]) == []


def test_reapers_sleep_until_the_deadline_and_share_the_work(database, namespace):
    Item = define(database, namespace, expiring=True)
    items = [Item(code="c%d" % n, tags=["t"]) for n in range(40)]
    stop = threading.Event()
    totals = []

    def reaper():
        totals.append(reap([Item], max_sleep=0.05, should_stop=stop.is_set))

    threads = [threading.Thread(target=reaper) for _ in range(3)]
    for thread in threads:
        thread.start()
    for item in items:
        item.expire_in(0.3)
    deadline = time.monotonic() + 5
    while len(Item.collection()) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(5)
    assert sum(totals) == 40  # each instance removed by exactly one reaper
    assert len(Item.collection()) == 0
