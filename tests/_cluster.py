"""A private Redis Cluster for the tests: 3 primaries and 3 replicas started on free ports.

Imported by ``tests/conftest.py``. The session fixture ``redis_cluster`` is lazy: only a session
running a test that uses it (directly or through ``cluster_database``) starts the 6 servers
(about 2 s). It stops exactly the processes it started, by their pid. ``LIMPYD_TEST_REDIS_CLUSTER_URL``
(``redis://host:port`` of any node) points at an existing cluster instead: it must be a cluster
dedicated to tests (it must be empty at start; every test ends with a ``FLUSHALL`` on each primary).
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional
from urllib.parse import urlparse

import pytest
import redis
from redis.cluster import RedisCluster

from limpyd.database import RedisDatabase

#: milliseconds before a silent primary is considered failed (a replica takes over soon after)
NODE_TIMEOUT_MS = 1000


def _find_binary(name: str, env: Optional[str] = None) -> str:
    binary = (os.environ.get(env) if env else None) or shutil.which(name)
    if not binary and name == "redis-cli":
        server = os.environ.get("LIMPYD_TEST_REDIS_SERVER")
        if server and os.path.exists(os.path.join(os.path.dirname(server), "redis-cli")):
            binary = os.path.join(os.path.dirname(server), "redis-cli")
    if not binary:
        pytest.fail(
            "%s not found: install the redis-server package (redis-cli comes with it, or with "
            "redis-tools), or set LIMPYD_TEST_REDIS_CLUSTER_URL to an existing test cluster" % name,
            pytrace=False,
        )
    return binary


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int, taken: set) -> List[int]:
    """Return ``count`` free ports whose cluster bus port (+10000) is free too."""
    ports: List[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port > 55000 or port in taken or port in ports or not _port_is_free(port + 10000):
            continue
        ports.append(port)
    return ports


class ClusterNode:
    """One redis-server of the private cluster, started (and restartable) by the fixture."""

    def __init__(self, binary: str, port: int, directory: Path) -> None:
        self.binary = binary
        self.port = port
        self.directory = directory
        self.log_path = directory / "redis.log"
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.directory / "nodes.conf"),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--save",
                "",
                "--appendonly",
                "no",
                # replicas get their first copy at once (default: 5 s later), so a failover can
                # happen as soon as the cluster is up: a replica that never synced refuses to take over
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.log_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=5)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, kill: bool = False) -> None:
        """Stop the process this node started (by its pid): terminate (or kill), then wait."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self) -> str:
        return self.log_path.read_text()[-2000:] if self.log_path.exists() else "(no log)"


class TestCluster:
    """The cluster used by a test session: its entry point and, when private, its nodes."""

    __test__ = False  # not a test class

    def __init__(self, host: str, port: int, nodes: Optional[List[ClusterNode]] = None) -> None:
        self.host = host
        self.port = port
        self.nodes = nodes or []

    @property
    def external(self) -> bool:
        return not self.nodes

    @property
    def settings(self) -> Dict[str, object]:
        """Return the ``RedisDatabase`` settings reaching this cluster."""
        return {"cluster": True, "host": self.host, "port": self.port}

    def primaries(self) -> List[redis.Redis]:
        """Return a plain client on each primary (read from the cluster's own view)."""
        client = RedisCluster(host=self.host, port=self.port, decode_responses=True)
        try:
            return [
                redis.Redis(host=node.host, port=node.port, decode_responses=True)
                for node in client.get_primaries()
            ]
        finally:
            client.close()

    def node(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def wait_ok(self, timeout: float = 30.0, nodes: Optional[List[ClusterNode]] = None) -> None:
        """Wait until every running node says ``cluster_state:ok`` and agrees on 3 primaries."""
        deadline = time.monotonic() + timeout
        nodes = [node for node in (nodes or self.nodes) if node.alive()]
        while True:
            try:
                states = []
                for node in nodes:
                    client = node.client()
                    try:
                        info = client.cluster("info")
                        primaries = sum(
                            1
                            for line in client.execute_command("CLUSTER", "NODES").splitlines()
                            if "master" in line.split(" ")[2]
                            and "fail" not in line.split(" ")[2]
                            and line.split(" ")[8:]
                        )
                    finally:
                        client.close()
                    states.append(info.get("cluster_state") == "ok" and primaries == 3)
                if all(states):
                    return
            except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError, IndexError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    "the private cluster is not ok after %ss; logs:\n%s"
                    % (timeout, "\n".join("--- %d\n%s" % (n.port, n.log_tail()) for n in nodes)),
                    pytrace=False,
                )
            time.sleep(0.05)

    def wait_replicas_synced(self, timeout: float = 30.0) -> None:
        """Wait until every running replica has its link to its primary up (it can then take over)."""
        deadline = time.monotonic() + timeout
        while True:
            synced = True
            for node in self.nodes:
                if not node.alive():
                    continue
                client = node.client()
                try:
                    info = client.info("replication")
                except (redis.ConnectionError, redis.TimeoutError):
                    synced = False
                    continue
                finally:
                    client.close()
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    synced = False
            if synced:
                return
            if time.monotonic() > deadline:
                pytest.fail(
                    "the replicas of the private cluster are not synced after %ss" % timeout, pytrace=False
                )
            time.sleep(0.05)

    def flushall(self) -> None:
        for client in self.primaries():
            try:
                client.flushall()
            finally:
                client.close()

    def dbsize(self) -> int:
        total = 0
        for client in self.primaries():
            try:
                total += client.dbsize()
            finally:
                client.close()
        return total

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _start_private_cluster(directory: Path) -> TestCluster:
    server = _find_binary("redis-server", "LIMPYD_TEST_REDIS_SERVER")
    cli = _find_binary("redis-cli")
    taken: set = set()
    for _attempt in range(3):
        ports = _free_ports(6, taken)
        taken.update(ports)
        nodes = [ClusterNode(server, port, directory / str(port)) for port in ports]
        cluster = TestCluster("127.0.0.1", ports[0], nodes)
        for node in nodes:
            node.start()
        try:
            deadline = time.monotonic() + 10
            for node in nodes:
                while True:
                    if not node.alive():
                        raise RuntimeError("node %d exited:\n%s" % (node.port, node.log_tail()))
                    try:
                        client = node.client()
                        client.ping()
                        client.close()
                        break
                    except redis.ConnectionError:
                        if time.monotonic() > deadline:
                            raise RuntimeError(
                                "node %d does not answer:\n%s" % (node.port, node.log_tail())
                            ) from None
                        time.sleep(0.02)
            result = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *["127.0.0.1:%d" % port for port in ports],
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if result.returncode != 0:
                raise RuntimeError(
                    "redis-cli --cluster create failed:\n%s%s"
                    % (result.stdout[-2000:], result.stderr[-2000:])
                )
            cluster.wait_ok()
            cluster.wait_replicas_synced()
            return cluster
        except RuntimeError as exc:
            cluster.stop()
            error = exc
            if any("Address already in use" in node.log_tail() for node in nodes):
                continue  # a port was taken between the check and the start: new ports
            break
    pytest.fail("the private Redis Cluster did not start: %s" % error, pytrace=False)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """Start a private 3-primary / 3-replica cluster (or use ``LIMPYD_TEST_REDIS_CLUSTER_URL``)."""
    url = os.environ.get("LIMPYD_TEST_REDIS_CLUSTER_URL")
    if url:
        parsed = urlparse(url)
        cluster = TestCluster(parsed.hostname or "127.0.0.1", parsed.port or 6379)
        if cluster.dbsize():
            pytest.fail("the cluster named by LIMPYD_TEST_REDIS_CLUSTER_URL must be empty", pytrace=False)
        yield cluster
        return
    cluster = _start_private_cluster(Path(str(tmp_path_factory.mktemp("cluster"))))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_database(redis_cluster: TestCluster) -> Iterator[RedisDatabase]:
    """Return a ``RedisDatabase(cluster=True, ...)`` on the test cluster, emptied after the test."""
    db = RedisDatabase(**redis_cluster.settings)
    db.connection.ping()
    yield db
    redis_cluster.flushall()


# ---------------------------------------------------------------------- single server / cluster parametrization

#: the core modules whose tests run on both backends: each test using the ``database`` fixture
#: runs once on the private server (``single``) and once on the private cluster (``cluster``)
BOTH_BACKENDS = re.compile(
    r"^test_(model|fields.*|indexes|collection.*|contrib_(?!related_definitions).*)\.py$"
)
# (test_contrib_related_definitions.py checks the registry of relations, keyed by 2.x model names,
# without Redis: nothing to run on a cluster)

#: tests of the core modules asserting 2.x key names, or reading single-server internals
SINGLE_SERVER_TESTS = {
    "test_model.py::test_class_helpers": "asserts the 2.x key names (no hash tag)",
    "test_model.py::test_scan_model_keys_and_scan_keys": "asserts the 2.x key names (no hash tag)",
    "test_fields_single.py::test_renamed_pk": "asserts the 2.x key names (no hash tag)",
    "test_indexes.py::test_verified_key_layout": "asserts the 2.x key names (no hash tag)",
    "test_indexes.py::test_aggressive_clear_sends_no_transaction": "reads the single server's command log",
    "test_collection.py::test_sort_coercion": "asserts the 2.x key names (no hash tag)",
    "test_collection.py::test_sort_with_get_and_limits_pass_through": "sorts with 2.x patterns (no hash tag)",
    "test_collection.py::test_sort_limits_never_outlive_a_window": "asserts the 2.x key names (no hash tag)",
    "test_contrib_related.py::test_default_index_and_attributes_after_attachment": "asserts 2.x model names",
    "test_contrib_related.py::test_copies_keep_to_and_related_name": "asserts 2.x model names",
    "test_contrib_related.py::test_relations_registry": "asserts 2.x model names",
}

#: fixtures that read or count on the single server: a cluster variant using one is skipped
SINGLE_SERVER_FIXTURES = {
    "client": "reads the single server directly (layout, dump, SLOWLOG command log)",
    "count_commands": "counts the commands of the single server (INFO total_commands_processed)",
    "redis_settings": "connects to the single server with its settings",
    "redis_version": "reads the single server's version",
}

CLUSTER_DISABLED = os.environ.get("LIMPYD_TEST_CLUSTER", "").strip() == "0"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the core modules' tests using ``database`` on the single server and on the cluster."""
    if "database" not in metafunc.fixturenames:
        return
    if not BOTH_BACKENDS.match(os.path.basename(str(metafunc.definition.fspath))):
        return
    params = [pytest.param("single", id="single")]
    if not CLUSTER_DISABLED:
        params.append(pytest.param("cluster", id="cluster", marks=pytest.mark.cluster))
    if SHARDED_MODULES.match(os.path.basename(str(metafunc.definition.fspath))):
        marks = [] if CLUSTER_DISABLED else [pytest.mark.cluster]
        params.append(pytest.param("sharded", id="sharded", marks=marks))
    metafunc.parametrize("database", params, indirect=True)


def cluster_variant(request: pytest.FixtureRequest) -> Iterator[RedisDatabase]:
    """Yield the cluster ``database`` of a parametrized test (or skip it, with the reason)."""
    direct = (
        set(inspect.signature(request.node.function).parameters)
        if hasattr(request.node, "function")
        else set()
    )
    for name, reason in SINGLE_SERVER_FIXTURES.items():
        # ``redis_settings`` is also a dependency of ``database`` itself: only a direct use counts
        if name in (direct if name in ("redis_settings", "redis_version") else request.fixturenames):
            pytest.skip("single server only: the test %s (fixture %r)" % (reason, name))
    node_id = "%s::%s" % (os.path.basename(str(request.node.fspath)), request.node.originalname)
    if node_id in SINGLE_SERVER_TESTS:
        pytest.skip("single server only: the test %s" % SINGLE_SERVER_TESTS[node_id])
    marker = request.node.get_closest_marker("single_server")
    if marker is not None:
        pytest.skip("single server only: %s" % (marker.args[0] if marker.args else "marked single_server"))
    yield from _cluster_db(request)


def _cluster_db(request: pytest.FixtureRequest) -> Iterator[RedisDatabase]:
    cluster = request.getfixturevalue("redis_cluster")
    db = RedisDatabase(**cluster.settings)
    db.connection.ping()
    try:
        yield db
    finally:
        cluster.flushall()


# ---------------------------------------------------------------------- sharded variant

#: the core modules whose tests also run on sharded models (docs/sharding.rst): a third variant,
#: ``sharded``, on the private cluster (on the single server when LIMPYD_TEST_CLUSTER=0)
SHARDED_MODULES = re.compile(r"^test_collection(_slicing)?\.py$")

#: the ``shards`` every model defined during a ``sharded`` test gets (9 pks 1-9 spread 2-3 per shard)
SHARDED_SHARDS = 4

#: tests of those modules that cannot apply to a sharded model, with the reason
SHARDED_SKIPS: Dict[str, str] = {
    # the core collection's internals (a sharded model's collection is a ShardedCollection)
    "test_collection.py::test_no_values_on_base_manager": "asserts the core collection has no values(): "
    "a ShardedCollection has values()/values_list() (those of ExtendedCollectionManager, by design)",
    "test_collection.py::test_building_sends_no_command": "asserts the collection is a CollectionManager",
    "test_collection.py::test_call_returns_a_new_collection": "reads _lazy_collection (the core's parsed "
    "filters)",
    "test_collection.py::test_clone_copies_state_and_resets_caches": "reads the core collection's "
    "attributes (_lazy_collection, _sort, _len_mode, _final_set...)",
    "test_collection.py::test_parsed_filters": "reads _lazy_collection (the core's parsed filters)",
    "test_collection.py::test_pk_filters": "reads _lazy_collection and _field_is_pk, counts commands, and "
    "asserts type(instance) is the model (a sharded model's instances are of its shard classes)",
    "test_collection.py::test_filter_errors_at_filter_time": "reads _lazy_collection after the errors",
    "test_collection.py::test_filter_error_leaves_nothing_added": "calls _add_filters and reads _lazy_collection",
    "test_collection.py::test_hash_field_filters": "calls the core's _parse_filter_key",
    "test_collection.py::test_index_choice_and_prefixed_index": "calls the core's _parse_filter_key",
    "test_collection.py::test_count_mode_key_gone_is_rebuilt": "deletes the core's _final_set key",
    "test_collection.py::test_len_mode_false_fetches": "sets the core's _len_mode and counts its commands",
    "test_collection.py::test_sort_coercion": "reads the core's _sort (2.x key names)",
    "test_collection.py::test_no_temporary_key_left_after_sort_error": "reads _lazy_collection",
    "test_collection.py::test_multi_field_index_resolution": "reads _lazy_collection and writes keys of "
    "the unsharded layout",
    "test_collection_slicing.py::test_one_collection_object_stays_whole": "reads the core's _sort_limits, "
    "_collection_cache and _len, and counts commands",
    "test_collection_slicing.py::test_index_full_fetches_are_not_cached": "reads the core's "
    "_collection_cache, and counts commands",
    "test_collection.py::test_repr": "asserts the repr names CollectionManager (a ShardedCollection's names "
    "its class) and uses collection(manager=...), refused by a sharded model",
    "test_collection_slicing.py::test_bad_index_types": "asserts the message names CollectionManager (a "
    "ShardedCollection's names its class)",
    # what a sharded model refuses by design (ImplementationError, docs/sharding.rst "Status")
    "test_collection.py::test_subclass_filters_in_init_and_clone_keeps_class": "defines a collection_manager "
    "subclass, refused at class definition by a sharded model",
    "test_collection.py::test_overridden_hooks_are_called_with_the_same_commands": "defines a "
    "collection_manager subclass, refused at class definition by a sharded model",
    "test_collection.py::test_final_set_ttl_is_a_class_attribute": "defines a collection_manager subclass, "
    "refused at class definition by a sharded model",
    "test_collection.py::test_sort_limits_never_outlive_a_window": "defines a collection_manager subclass, "
    "refused at class definition by a sharded model",
    "test_collection.py::test_sort_with_get_and_limits_pass_through": "sorts with get/start/num, refused "
    "by a sharded model (sort(get=...))",
    "test_collection.py::test_sort_argument_errors": "counts 0 commands for collection() of a model never "
    "written to: a sharded model reads its stored shard count there (one GET, by design)",
    # the core's exact commands (a sharded collection sends its steps to every shard)
    "test_collection.py::test_sequence_all": "asserts the core's command log (key names, one key)",
    "test_collection.py::test_sequence_one_filter": "asserts the core's command log (key names, one key)",
    "test_collection.py::test_sequence_two_filters": "asserts the core's command log (key names, one key)",
    "test_collection.py::test_sequence_pk_and_filter": "asserts the core's command log (key names, one key)",
    "test_collection.py::test_sequence_equal_in": "asserts the core's command log (key names, one key)",
    "test_collection.py::test_range_filters_sequences": "asserts the core's command log (key names)",
    "test_collection.py::test_len_then_retrieval_reuses_the_final_key": "asserts the core's command log "
    "and its final key",
    "test_collection.py::test_empty_count_mode_key": "asserts the core's command log",
    "test_collection.py::test_caching": "counts one command per evaluation (a sharded one sends one per "
    "shard) and asserts the repr names CollectionManager",
    "test_collection.py::test_len_cache_and_clone": "counts one command per evaluation (a sharded one "
    "sends one per shard)",
    "test_collection.py::test_equality": "counts one command per evaluation (a sharded one sends one per shard)",
    "test_collection.py::test_instances": "adds a pk to an index key of the unsharded layout, and counts "
    "commands",
    "test_collection.py::test_model_get": "counts the core's commands (SCARD, SORT, SISMEMBER)",
    "test_collection.py::test_model_exists": "counts one command per evaluation (a sharded one sends one "
    "per shard)",
    "test_collection_slicing.py::test_exhaustive_slices": "counts at most one command per slice (a "
    "sharded collection sends one per shard)",
    "test_collection_slicing.py::test_exhaustive_indexes": "counts one command per index (a sharded "
    "collection sends one per shard)",
    "test_collection_slicing.py::test_worked_examples": "asserts the core's SORT ... LIMIT command",
    "test_collection_slicing.py::test_descending_windows": "asserts the core's SORT commands",
    "test_collection_slicing.py::test_nosort_windows": "asserts the core's SORT commands",
    "test_collection_slicing.py::test_window_with_filters_and_instances": "asserts the core's command log",
}


def sharded_variant(
    request: pytest.FixtureRequest, single: Iterator[RedisDatabase]
) -> Iterator[RedisDatabase]:
    """Yield the ``database`` of the ``sharded`` variant (or skip the test, with the reason).

    Every model the test defines (deriving from ``RedisModel``) is sharded: ``RedisModel.shards``
    is ``SHARDED_SHARDS`` during the test (the metaclass reads ``shards`` through inheritance).
    ``single``: the single server's database, used when the cluster variants are disabled.
    """
    from limpyd.model import RedisModel

    node_id = "%s::%s" % (os.path.basename(str(request.node.fspath)), request.node.originalname)
    if node_id in SHARDED_SKIPS:
        pytest.skip("not for a sharded model: the test %s" % SHARDED_SKIPS[node_id])
    databases = single if CLUSTER_DISABLED else _cluster_db(request)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RedisModel, "shards", SHARDED_SHARDS)
        yield from databases
