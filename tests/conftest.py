"""Test fixtures: a private redis-server per session, databases on it, command counting."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import itertools
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis
from _redis_dump import raw_client, warm_scripts

from limpyd import _speedups_py, model
from limpyd.database import RedisDatabase

REQUIRE_EXTENSIONS = os.environ.get("LIMPYD_REQUIRE_EXTENSIONS", "").strip() not in ("", "0")
NO_EXTENSIONS = os.environ.get("LIMPYD_NO_EXTENSIONS", "").strip() not in ("", "0")


# ---------------------------------------------------------------------- private redis-server


def _find_redis_server() -> str:
    binary = os.environ.get("LIMPYD_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        pytest.fail(
            "redis-server not found: install the redis-server package or set LIMPYD_TEST_REDIS_SERVER "
            "to the path of a redis-server binary",
            pytrace=False,
        )
    return binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Start a private redis-server on a unix socket, yield its connection settings, stop it."""
    url = os.environ.get("LIMPYD_TEST_REDIS_URL")
    if url:
        client = redis.Redis.from_url(url)
        settings = dict(client.connection_pool.connection_kwargs)
        client.close()
        if "db" not in settings or not url.rstrip("/").rsplit("/", 1)[-1].isdigit():
            pytest.fail("LIMPYD_TEST_REDIS_URL must name a db, e.g. redis://localhost:6379/15", pytrace=False)
        yield {
            "external": True,
            **{k: settings[k] for k in ("host", "port", "db", "password") if k in settings},
        }
        return

    binary = _find_redis_server()
    directory = Path(str(tmp_path_factory.mktemp("redis")))
    socket_path = directory / "redis.sock"
    log_path = directory / "redis.log"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--logfile",
            str(log_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if socket_path.exists() and redis.Redis(unix_socket_path=str(socket_path)).ping():
                    break
            except redis.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log = log_path.read_text() if log_path.exists() else "(no log)"
                pytest.fail("the private redis-server did not start:\n%s" % log[-2000:], pytrace=False)
            time.sleep(0.02)
        yield {"unix_socket_path": str(socket_path)}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _client_accepts(argument: str) -> bool:
    return argument in inspect.signature(redis.Redis.__init__).parameters


#: redis-py >= 5 sends CLIENT SETINFO twice on each new connection: keep command counts exact
if _client_accepts("driver_info"):
    _QUIET_CLIENT: dict = {"driver_info": None}
elif _client_accepts("lib_name"):
    _QUIET_CLIENT = {"lib_name": None, "lib_version": None}
else:
    _QUIET_CLIENT = {}


@pytest.fixture
def redis_settings(redis_server: dict) -> dict:
    """Return the connection settings of the private server (without the ``external`` flag)."""
    settings = {k: v for k, v in redis_server.items() if k != "external"}
    settings.update(_QUIET_CLIENT)
    return settings


def _flush(client: redis.Redis, external: bool) -> None:
    if external:
        client.flushdb()
    else:
        client.flushall()


@pytest.fixture
def database(
    request: pytest.FixtureRequest, redis_server: dict, redis_settings: dict
) -> Iterator[RedisDatabase]:
    """Return a ``RedisDatabase`` on the private server, emptied after the test.

    In the core modules it is parametrized (``single``/``cluster``, tests/_cluster.py): the
    ``cluster`` variant is a database on the private Redis Cluster; the collection modules also
    have a ``sharded`` variant (every model the test defines is sharded, tests/_cluster.py).
    """
    variant = getattr(request, "param", "single")
    if variant == "cluster":
        yield from cluster_variant(request)
        return
    if variant == "sharded":
        yield from sharded_variant(request, _single_database(redis_server, redis_settings))
        return
    yield from _single_database(redis_server, redis_settings)


def _single_database(redis_server: dict, redis_settings: dict) -> Iterator[RedisDatabase]:
    db = RedisDatabase(**redis_settings)
    # connect now: the first connection sends INFO (version check), which tests must not count
    if redis_server.get("external"):
        assert db.connection.dbsize() == 0, "the db named by LIMPYD_TEST_REDIS_URL must be empty"
    else:
        db.connection.ping()
    yield db
    _flush(redis.Redis(**redis_settings), bool(redis_server.get("external")))


_namespace_counter = itertools.count()


@pytest.fixture(params=[False, True], ids=["default", "atomic"])
def atomic(request: pytest.FixtureRequest) -> bool:
    """Both write modes: the default one, then ``atomic_writes`` (one script per operation)."""
    return request.param


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """Return a namespace unique to this test, so models never collide across tests."""
    return "t%d" % next(_namespace_counter)


@pytest.fixture
def client(redis_settings: dict, database: RedisDatabase) -> Iterator[redis.Redis]:
    """Return a plain redis-py client on the private server, with limpyd's Lua scripts loaded.

    The scripts are loaded and the database's server version read now, so that command counts
    inside a test see only the commands of the operation under test.
    """
    raw = raw_client(redis_settings)
    warm_scripts(raw)
    database.redis_version
    yield raw
    raw.close()


@pytest.fixture
def Base(database: RedisDatabase, namespace: str) -> type:
    """Return an abstract model on the test database and namespace, to derive test models from."""
    db, ns = database, namespace

    class Base(model.RedisModel):
        database = db
        namespace = ns
        abstract = True

    return Base


# ---------------------------------------------------------------------- helpers


def server_info(client: redis.Redis) -> dict:
    return client.info()


@pytest.fixture(scope="session")
def redis_version(redis_server: dict) -> tuple:
    """Return the private server's version as a tuple of ints (read once per session)."""
    settings = {k: v for k, v in redis_server.items() if k != "external"}
    raw = redis.Redis(**settings, **_QUIET_CLIENT).info("server")["redis_version"]
    return tuple(int(part) for part in raw.split(".")[:3])


#: commands a new connection runs before its first command (redis-py's handshake), and the
#: ``REPLCONF ACK`` a replica sends its primary every second (the cluster fixture has replicas):
#: not the ORM's
HANDSHAKE_COMMANDS = ("hello", "client|setinfo", "client|setname", "select", "auth", "replconf")


def commands_processed(client: redis.Redis) -> int:
    """Return the commands the server of ``client`` processed so far, handshakes left out."""
    info = client.execute_command("INFO", "stats", "commandstats")
    handshakes = sum(int(info.get("cmdstat_" + name, {}).get("calls", 0)) for name in HANDSHAKE_COMMANDS)
    return int(info["total_commands_processed"]) - handshakes


class CommandCounter:
    """Count the commands processed by the server between ``start`` and ``stop``.

    The handshake of a connection opened meanwhile is left out: the pool opening one more
    connection is not a command of the operation (limpyd keeps one aside, see limpyd._pool).
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.count = 0

    def _processed(self) -> int:
        return commands_processed(self.client)

    def __enter__(self) -> "CommandCounter":
        self._start = self._processed()
        return self

    def __exit__(self, *exc: object) -> None:
        # the INFO sent by __exit__ itself is counted by the server before it answers
        self.count = self._processed() - self._start - 1


class ClusterCommandCounter(CommandCounter):
    """Count the commands processed by every primary of the cluster (the INFO of each left out)."""

    def __init__(self, clients: list) -> None:
        super().__init__(clients[0])
        self.clients = clients

    def _processed(self) -> int:
        return sum(commands_processed(client) for client in self.clients)

    def __exit__(self, *exc: object) -> None:
        self.count = self._processed() - self._start - len(self.clients)


@pytest.fixture
def count_commands(request: pytest.FixtureRequest, redis_settings: dict):
    """Return a context manager factory asserting (or measuring) how many commands run inside it.

    ``with count_commands(3): ...`` fails unless exactly 3 commands ran; ``with count_commands()
    as counter`` just measures (``counter.count``). The ``sharded`` variant on the cluster counts
    the commands of every primary.
    """
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("database") == "sharded" and not CLUSTER_DISABLED:
        clients = request.getfixturevalue("redis_cluster").primaries()
    else:
        clients = [redis.Redis(**redis_settings)]
    for client in clients:
        client.ping()

    @contextlib.contextmanager
    def counting(expected: "int | None" = None):
        counter = ClusterCommandCounter(clients) if len(clients) > 1 else CommandCounter(clients[0])
        with counter:
            yield counter
        if expected is not None:
            assert counter.count == expected, "expected %d Redis commands, %d were sent" % (
                expected,
                counter.count,
            )

    yield counting
    for client in clients:
        client.close()


# ---------------------------------------------------------------------- speedups implementations


def _speedups_params() -> list:
    params = [pytest.param("py", id="py")]
    if not NO_EXTENSIONS:
        params.append(pytest.param("cy", id="cy", marks=pytest.mark.cython))
    return params


@pytest.fixture(scope="session", params=_speedups_params())
def speedups(request: pytest.FixtureRequest):
    """Yield each speedups implementation module: ``py`` (the twin) and ``cy`` (compiled)."""
    if request.param == "py":
        return _speedups_py
    try:
        return importlib.import_module("limpyd._speedups")
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            pytest.fail("LIMPYD_REQUIRE_EXTENSIONS is set but limpyd._speedups is not importable: %s" % exc)
        pytest.skip("limpyd._speedups is not compiled: %s" % exc)


# ---------------------------------------------------------------------- markers


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Mark ``redis`` every test that uses the private redis-server, through any of its fixtures.

    ``-m "not redis"`` then runs the tests that need no server.
    """
    for item in items:
        if "redis_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)


from _cluster import (  # noqa: E402, F401 - the Redis Cluster fixtures (lazy) and the backend parametrization
    CLUSTER_DISABLED,
    cluster_database,
    cluster_variant,
    pytest_generate_tests,
    redis_cluster,
    sharded_variant,
)
