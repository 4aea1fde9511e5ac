"""Model.rebuild_indexes(): online (writer threads), resumable (killed mid-way), never an empty index."""

from __future__ import annotations

import random
import threading
import time

import pytest
from _consistency import check_consistency

from limpyd import fields
from limpyd.integrity.rebuild import state_key


def _model(Base, count=200):
    class Item(Base):
        code = fields.InstanceHashField(unique=True)
        name = fields.StringField(indexable=True)
        tags = fields.SetField(indexable=True)

    for i in range(count):
        Item(code="c%d" % i, name="n%d" % (i % 7), tags=["a", "t%d" % (i % 5)])
    return Item


def test_rebuild_fixes_drift_and_removes_stale_keys(Base, client):
    Item = _model(Base)
    m = Item._name
    client.delete("%s:name:n1" % m)
    client.sadd("%s:name:gone" % m, "5")
    client.srem("%s:code:c3" % m, "4")
    result = Item.rebuild_indexes()
    assert result["fields"] == ["code", "name", "tags"] and result["instances"] == 200
    assert check_consistency(client, [Item]) == []
    assert not client.exists("%s:name:gone" % m)
    assert not client.exists(state_key(Item))
    assert not list(client.scan_iter("%s:__rebuild__:*" % m))
    assert Item.audit().clean


def test_index_never_empty_while_building(Base, client):
    Item = _model(Base)
    m = Item._name
    seen = []

    def progress(phase, done, total):
        if phase == "build":
            seen.append((client.scard("%s:name:n1" % m), len(Item.collection(name="n2"))))

    Item.rebuild_indexes(fields=["name"], progress=progress, chunk_size=20)
    assert len(seen) >= 5
    assert all(n1 > 0 and n2 > 0 for n1, n2 in seen)


def test_killed_rebuild_resumes_where_it_stopped(Base, client):
    Item = _model(Base)
    client.delete("%s:name:n1" % Item._name)
    calls = []

    def stop_after_three(phase, done, total):
        calls.append(done)
        if phase == "build" and len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Item.rebuild_indexes(fields=["name"], progress=stop_after_three, chunk_size=20)
    state = client.hgetall(state_key(Item))
    assert state["phase"] == "build" and int(state["done"]) == calls[2]
    assert (state["cursor"], state["offset"]) != ("0", "0")  # a position inside the collection
    done_before = int(state["done"])
    resumed = []
    with pytest.raises(ValueError, match="resume it with fields=\\['name'\\]"):
        Item.rebuild_indexes(fields=["tags"])
    result = Item.rebuild_indexes(
        fields=["name"], progress=lambda p, d, t: resumed.append((p, d)), chunk_size=20
    )
    assert result["resumed"]
    builds = [done for phase, done in resumed if phase == "build"]
    assert builds[0] > done_before  # went on from the recorded position
    assert check_consistency(client, [Item]) == []


def test_restart_drops_a_stopped_rebuild(Base, client):
    Item = _model(Base, count=50)

    def stop(phase, done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Item.rebuild_indexes(progress=stop, chunk_size=10)
    assert list(client.scan_iter("%s:__rebuild__:*" % Item._name))
    result = Item.rebuild_indexes(fields=["name"], resume=False)
    assert not result["resumed"]
    assert not list(client.scan_iter("%s:__rebuild__:*" % Item._name))
    assert check_consistency(client, [Item]) == []


def test_concurrent_writers_end_consistent(Base, client):
    Item = _model(Base, count=300)
    client.delete("%s:name:n3" % Item._name)  # drift the rebuild must fix
    stop = threading.Event()
    errors = []

    def writer(seed):
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                item = Item(rng.randint(1, 300))
                if rng.random() < 0.5:
                    item.name.set("n%d" % rng.randint(0, 9))
                else:
                    item.tags.sadd("t%d" % rng.randint(0, 9))
                    item.tags.srem("t%d" % rng.randint(0, 9))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(2):
            Item.rebuild_indexes(chunk_size=25)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors
    assert check_consistency(client, [Item]) == []


def test_field_level_rebuild_still_works(Base, client):
    Item = _model(Base, count=20)
    client.delete("%s:name:n1" % Item._name)
    Item.get_field("name").rebuild_indexes(chunk_size=7, aggressive_clear=True)
    assert check_consistency(client, [Item]) == []


def test_bad_fields(Base):
    Item = _model(Base, count=1)
    with pytest.raises(ValueError, match="'nope' is not a field"):
        Item.rebuild_indexes(fields=["nope"])

    class Plain(Base):
        text = fields.StringField()

    with pytest.raises(ValueError, match="has no index"):
        Plain.rebuild_indexes(fields=["text"])


def test_rebuild_pk_word_is_reserved(Base):
    class Named(Base):
        id = fields.PKField()
        name = fields.StringField(indexable=True)

    with pytest.raises(ValueError):
        Named(id="__rebuild__:state")


def test_the_swap_keeps_its_lock_through_slow_scans(Base, client, monkeypatch):
    """A SCAN with MATCH over a large database can go longer than the lock's time to live without
    a matching key: the swap's lock is renewed by time, not by keys seen (benchmark of 1,000,000
    instances: LockNotOwnedError at the release before)."""
    from limpyd.integrity import rebuild

    Item = _model(Base, count=30)
    monkeypatch.setattr(rebuild, "SWAP_LOCK_TIMEOUT", 0.5)
    monkeypatch.setattr(rebuild, "SWAP_LOCK_RENEW_EVERY", 0.1)
    real_scan = Item.database.scan_keys

    def slow_scan(*args, **kwargs):
        for position, key in enumerate(real_scan(*args, **kwargs)):
            if position < 3:
                time.sleep(0.4)  # 1.2 s before the scan goes on: more than the lock's 0.5 s
            yield key

    monkeypatch.setattr(Item.database, "scan_keys", slow_scan)
    client.delete("%s:name:n1" % Item._name)
    result = Item.rebuild_indexes(fields=["name"])
    assert result["fields"] == ["name"]
    assert check_consistency(client, [Item]) == []
    assert not client.exists("%s:lock-for-update:name" % Item._name)  # released: nothing left
