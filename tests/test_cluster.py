"""limpyd on a real Redis Cluster (3 primaries, 3 replicas: the ``redis_cluster`` fixture of tests/_cluster.py).

Every feature is run end to end on the cluster and, where it makes sense, compared with the same
operations on the private single server (``database`` fixture): same results, the cluster layout
being the single-server one with the model's ``_name`` between braces.
"""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster

from limpyd import fields, model
from limpyd.contrib.database import PipelineDatabase
from limpyd.database import RedisDatabase


def _cluster_keys(cluster) -> dict:
    """Return ``{key: type}`` for every key of the cluster (every primary)."""
    keys = {}
    for client in cluster.primaries():
        try:
            for key in client.scan_iter(count=1000):
                keys[key] = client.type(key)
        finally:
            client.close()
    return keys


def _single_keys(redis_settings) -> dict:
    client = redis.Redis(**redis_settings, decode_responses=True)
    try:
        return {key: client.type(key) for key in client.scan_iter(count=1000)}
    finally:
        client.close()


def _make_bike_model(db, ns):
    attrs = {
        "database": db,
        "namespace": ns,
        "name": fields.InstanceHashField(indexable=True, unique=True),
        "wheels": fields.StringField(indexable=True, default=2),
        "tags": fields.SetField(indexable=True),
        "passengers": fields.ListField(),
        "scores": fields.SortedSetField(),
        "headers": fields.HashField(indexable=True),
    }
    return type(model.RedisModel)("Bike", (model.RedisModel,), dict(attrs, __module__=__name__, __qualname__="Bike"))


def _fill(Bike):
    Bike(name="rosalie", wheels=4, tags=["red", "old"], passengers=["a", "b"], scores={"x": 1.5},
         headers={"from": "me"})
    Bike(name="bob", tags=["red"])


class TestDatabase:
    def test_client_is_redis_cluster(self, cluster_database):
        assert isinstance(cluster_database.connection, RedisCluster)
        assert cluster_database.is_cluster
        assert cluster_database.connection.ping()

    def test_single_server_database_is_not_cluster(self, database):
        assert not database.is_cluster
        assert isinstance(database.connection, redis.Redis)

    def test_databases_with_equal_settings_share_the_client(self, redis_cluster):
        first = RedisDatabase(**redis_cluster.settings)
        second = PipelineDatabase(**redis_cluster.settings)
        assert first.connection is second.connection

    def test_startup_nodes(self, redis_cluster):
        nodes = ["%s:%d" % (redis_cluster.host, redis_cluster.port)]
        db = RedisDatabase(cluster=True, startup_nodes=nodes)
        assert isinstance(db.connection, RedisCluster)
        assert db.connection is RedisDatabase(cluster=True, startup_nodes=[(redis_cluster.host, redis_cluster.port)]).connection
        assert db.connection.ping()

    def test_bad_startup_node(self, redis_cluster):
        db = RedisDatabase(cluster=True, startup_nodes=[42])
        try:
            db.connection
        except ValueError as exc:
            assert "42" in str(exc) and "host:port" in str(exc)
        else:  # pragma: no cover
            raise AssertionError("ValueError expected")

    def test_connect_switches_to_the_cluster_and_back(self, redis_cluster, redis_settings, namespace):
        db = PipelineDatabase(**redis_settings)
        Bike = _make_bike_model(db, namespace)
        assert Bike._name == "%s:bike" % namespace
        assert isinstance(db.connect(**redis_cluster.settings), RedisCluster)
        assert Bike._name == "{%s:bike}" % namespace
        assert db._models == {"{%s:bike}" % namespace: Bike}
        Bike(name="x")
        assert set(_cluster_keys(redis_cluster)) == {"{%s:bike}:%s" % (namespace, k) for k in (
            "collection", "max_pk", "1:hash", "1:wheels", "name:x", "wheels:2")}
        assert isinstance(db.connect(**redis_settings), redis.Redis)
        assert Bike._name == "%s:bike" % namespace
        assert db._models == {"%s:bike" % namespace: Bike}
        redis_cluster.flushall()
        redis.Redis(**redis_settings).flushall()

    def test_use_database_renames(self, redis_cluster, database, namespace):
        Bike = _make_bike_model(database, namespace)
        cluster_db = RedisDatabase(**redis_cluster.settings)
        Bike.use_database(cluster_db)
        assert Bike._name == "{%s:bike}" % namespace
        assert cluster_db._models == {"{%s:bike}" % namespace: Bike}
        assert "%s:bike" % namespace not in database._models
        Bike.use_database(database)
        assert Bike._name == "%s:bike" % namespace
        assert database._models["%s:bike" % namespace] is Bike
        assert cluster_db._models == {}


class TestLayout:
    def test_cluster_layout_is_the_single_layout_with_braces(self, cluster_database, database, redis_cluster,
                                                             redis_settings, namespace):
        single = _make_bike_model(database, namespace)
        clustered = _make_bike_model(cluster_database, namespace)
        _fill(single)
        _fill(clustered)
        single_keys = _single_keys(redis_settings)
        cluster_keys = _cluster_keys(redis_cluster)
        prefix = "%s:bike" % namespace
        assert all(key.startswith(prefix + ":") for key in single_keys)
        assert cluster_keys == {"{%s}%s" % (prefix, key[len(prefix):]): kind for key, kind in single_keys.items()}
        assert "{%s}:1:hash" % prefix in cluster_keys
        assert "{%s}:name:rosalie" % prefix in cluster_keys

    def test_every_key_of_a_model_is_in_one_slot(self, cluster_database, redis_cluster, namespace):
        Bike = _make_bike_model(cluster_database, namespace)
        _fill(Bike)
        client = cluster_database.connection
        slots = {client.keyslot(key) for key in _cluster_keys(redis_cluster)}
        assert slots == {client.keyslot(Bike._name)}
