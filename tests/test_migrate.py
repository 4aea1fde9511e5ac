"""``limpyd migrate`` (limpyd.migrate): a single server's models to a Redis Cluster and back.

The copy keeps every value byte for byte (DUMP/RESTORE) and every TTL, renames the keys between the
2.x layout (``ns:model:...``) and the cluster one (``{ns:model}:...``), never writes to the source,
resumes after an interruption and can run twice.
"""

from __future__ import annotations

import sys
import types

import pytest
import redis
from _consistency import check_consistency
from _redis_dump import dump

from limpyd import cli, fields
from limpyd.contrib.related import FKInstanceHashField, M2MSetField, RelatedModel
from limpyd.database import RedisDatabase
from limpyd.indexes import NumberRangeIndex, TextRangeIndex
from limpyd.migrate import MigrationError, migrate

MODULE = "limpyd_test_migrate_models"


def _models(db, ns):
    attrs = {"__module__": MODULE, "database": db, "namespace": ns}
    Owner = type(RelatedModel)(
        "Owner",
        (RelatedModel,),
        dict(attrs, __qualname__="Owner", name=fields.StringField(indexable=True, unique=True)),
    )
    Thing = type(RelatedModel)(
        "Thing",
        (RelatedModel,),
        dict(
            attrs,
            __qualname__="Thing",
            code=fields.InstanceHashField(unique=True),
            name=fields.StringField(indexable=True),
            text=fields.StringField(indexable=True, indexes=[TextRangeIndex]),
            size=fields.InstanceHashField(indexable=True, indexes=[NumberRangeIndex]),
            tags=fields.SetField(indexable=True),
            items=fields.ListField(indexable=True),
            scores=fields.SortedSetField(indexable=True),
            h=fields.HashField(indexable=True),
            plain=fields.StringField(),
            owner=FKInstanceHashField(Owner, related_name="things"),
            friends=M2MSetField(Owner, related_name="friend_things"),
        ),
    )
    return Owner, Thing


def _fill(Owner, Thing, count=40):
    owners = [Owner(name="o%d" % i) for i in range(3)]
    for i in range(count):
        thing = Thing(
            code="c%d" % i,
            name="n%d" % (i % 5),
            text="t%d" % i,
            size=i,
            tags=["a", "t%d" % (i % 3)],
            items=["x", "y%d" % i],
            scores={"m": i / 3},
            h={"k": "v%d" % (i % 2)},
            plain="\xe9\x00%d" % i,
            owner=owners[i % 3],
        )
        thing.friends.sadd(owners[0], owners[2])
    Thing(1).tags.connection.pexpire(Thing(1).tags.key, 500_000)  # a TTL to keep
    Thing.collection(tags="a").sort(by="name", alpha=True).store(ttl=600)  # a stored collection (list + TTL)


def _model_dump(client, prefix, new_prefix=None):
    result = {}
    for key, (kind, content, has_ttl) in dump(client).items():
        name = key.decode() if isinstance(key, bytes) else key
        if name.startswith(prefix + ":"):
            result[(new_prefix or prefix) + name[len(prefix) :]] = (kind, content, has_ttl)
    return result


def _node(cluster_client, prefix):
    node = cluster_client.get_node_from_key(prefix)
    return redis.Redis(host=node.host, port=node.port)


def test_single_to_cluster_to_single(redis_settings, redis_cluster, namespace):
    source = redis.Redis(**redis_settings)
    back_settings = dict(redis_settings, db=int(redis_settings.get("db", 0) or 0) + 1)
    back = redis.Redis(**back_settings)
    back.flushdb()
    db = RedisDatabase(**redis_settings)
    Owner, Thing = _models(db, namespace)
    _fill(Owner, Thing)
    cluster_db = RedisDatabase(**redis_cluster.settings)
    target = cluster_db.connection
    try:
        before = {p: _model_dump(source, p) for p in ("%s:owner" % namespace, "%s:thing" % namespace)}
        ttls = {key: source.pttl(key) for p in before for key in before[p] if before[p][key][2]}
        assert len(before["%s:thing" % namespace]) > 100 and len(ttls) == 2

        # an interrupted run resumes where it stopped
        thing_calls = []

        class Stop(Exception):
            pass

        def interrupt(label, done, total):
            if label.endswith(":thing"):
                thing_calls.append(done)
                if len(thing_calls) == 3:
                    raise Stop

        with pytest.raises(Stop):
            migrate([Owner, Thing], source, target, batch_size=10, progress=interrupt)
        state_node = _node(target, "{%s:thing}" % namespace)
        try:
            state = state_node.hgetall("limpyd:migrate:{%s:thing}" % namespace)
        finally:
            state_node.close()
        assert state[b"cursor"] != b"0" and int(state[b"copied"]) > 0
        resumed = []
        results = migrate(
            [Owner, Thing],
            source,
            target,
            batch_size=10,
            progress=lambda label, done, total: resumed.append((label, done)),
        )
        first_thing = next(done for label, done in resumed if label.endswith(":thing"))
        assert first_thing > int(state[b"copied"])  # counted from the saved position
        assert results[1]["copied"] >= results[1]["source_keys"]
        results = migrate([Owner, Thing], source, target, batch_size=25)  # again: same bytes
        for plain, content in before.items():
            tagged = "{%s}" % plain
            node = _node(target, tagged)
            try:
                assert _model_dump(node, tagged, plain) == content
                for key in content:
                    if content[key][2]:  # the TTL kept (minus the seconds of the test)
                        assert 0 < ttls[key] - node.pttl(tagged + key[len(plain) :]) < 30_000
                assert not node.exists("limpyd:migrate:%s" % tagged)  # the position key is gone
            finally:
                node.close()
        assert {p: _model_dump(source, p) for p in before} == before  # the source is untouched

        # the cluster models work on the copy
        Owner.use_database(cluster_db)
        Thing.use_database(cluster_db)
        assert sorted(Thing.collection(tags="t1", name="n1")) == sorted(
            str(i + 1) for i in range(40) if i % 3 == 1 and i % 5 == 1
        )
        assert Thing.get(code="c7").owner.hget() == Owner.get(name="o1").pk.get()
        for model_class in (Owner, Thing):
            node = _node(target, model_class._name)
            try:
                same_node = (
                    target.get_node_from_key(Owner._name).port == target.get_node_from_key(Thing._name).port
                )
                assert check_consistency(node, [Owner, Thing] if same_node else [model_class]) == []
            finally:
                node.close()

        # and back, through the command
        module = types.ModuleType(MODULE)
        sys.modules[MODULE] = module
        try:
            url_back = _url(back_settings)
            url_cluster = "redis://%s:%d" % (redis_cluster.host, redis_cluster.port)
            assert (
                cli.main(
                    [
                        "--no-progress",
                        "migrate",
                        "--from",
                        url_cluster,
                        "--from-cluster",
                        "--to",
                        url_back,
                        "--models",
                        MODULE,
                        "--model",
                        "Thing",
                        "--model",
                        "Owner",
                    ]
                )
                == 0
            )
        finally:
            del sys.modules[MODULE]
        assert {p: _model_dump(back, p) for p in before} == before
    finally:
        back.flushdb()
        back.close()
        source.close()


def _url(settings):
    if settings.get("unix_socket_path"):
        return "unix://%s?db=%d" % (settings["unix_socket_path"], settings.get("db", 0))
    return "redis://%s:%d/%d" % (
        settings.get("host", "127.0.0.1"),
        settings.get("port", 6379),
        settings.get("db", 0),
    )


def test_counts_are_verified(redis_settings, namespace):
    source = redis.Redis(**redis_settings)
    target_settings = dict(redis_settings, db=int(redis_settings.get("db", 0) or 0) + 2)
    target = redis.Redis(**target_settings)
    target.flushdb()
    try:
        Owner, Thing = _models(RedisDatabase(**redis_settings), namespace)
        _fill(Owner, Thing, count=3)
        migrate([Thing], source, target)  # same layout both sides: a plain copy
        target.set("%s:thing:extra" % namespace, "1")  # a key the source does not have
        with pytest.raises(MigrationError, match="on the source"):
            migrate([Thing], source, target)
    finally:
        target.flushdb()
        target.close()
        source.close()
