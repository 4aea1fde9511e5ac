"""Tests of ``limpyd.database``: settings, connection cache, versions, scripts and ``scan_keys``.

docs/database.rst and its examples.
"""

from __future__ import annotations

import inspect
import re
import socket
import subprocess
import sys

import pytest
import redis
import redis.lock
from redis.backoff import NoBackoff
from redis.retry import Retry

import limpyd.database
import limpyd.exceptions
from limpyd import model
from limpyd.database import DEFAULT_CONNECTION_SETTINGS, Lock, RedisDatabase
from limpyd.exceptions import ImplementationError, LimpydException
from limpyd.indexes import EqualIndex


@pytest.fixture
def client(redis_settings):
    """Return a plain redis-py client on the private server (db 0), not owned by limpyd."""
    raw = redis.Redis(**redis_settings, decode_responses=True)
    yield raw
    raw.close()


def _closed_port() -> int:
    """Return a TCP port of localhost on which nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _calls(client: redis.Redis, command: str) -> int:
    """Return how many times the server ran ``command`` (INFO commandstats)."""
    return int(client.info("commandstats").get("cmdstat_%s" % command, {}).get("calls", 0))


def _load_keys(client: redis.Redis, keys: list, value: str = "1") -> None:
    """Create ``keys`` (strings) with a few MSETs in one pipeline round trip."""
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(keys), 10000):
        pipe.mset(dict.fromkeys(keys[start : start + 10000], value))
    pipe.execute()


# ---------------------------------------------------------------------- module names


def test_default_connection_settings_is_a_plain_dict():
    assert type(DEFAULT_CONNECTION_SETTINGS) is dict
    assert DEFAULT_CONNECTION_SETTINGS == {"host": "localhost", "port": 6379, "db": 0}
    # downstream copies it and overrides the db
    settings = DEFAULT_CONNECTION_SETTINGS.copy()
    settings["db"] = 5
    assert RedisDatabase(**settings).connection_settings == {"host": "localhost", "port": 6379, "db": 5}
    assert DEFAULT_CONNECTION_SETTINGS["db"] == 0


def test_lock_is_redis_py_lock():
    assert Lock is redis.lock.Lock
    assert Lock is redis.client.Lock


def test_lock_as_downstream_uses_it(database, client):
    with Lock(database.connection, "some-lock", timeout=60):
        assert client.exists("some-lock") == 1
    assert client.exists("some-lock") == 0


def test_star_import_names():
    namespace: dict = {}
    exec("from limpyd.database import *", namespace)
    for name in ("DEFAULT_CONNECTION_SETTINGS", "RedisDatabase", "Lock"):
        assert namespace[name] is getattr(limpyd.database, name)


def test_module_level_names():
    for name in limpyd.exceptions.__all__:
        assert getattr(limpyd.database, name) is getattr(limpyd.exceptions, name)
    assert limpyd.database.EqualIndex is EqualIndex
    assert RedisDatabase.default_indexes == [EqualIndex]


# ---------------------------------------------------------------------- construction


def test_constructor_does_not_contact_redis_on_a_closed_port():
    port = _closed_port()
    db = RedisDatabase(host="127.0.0.1", port=port, db=0, retry=Retry(NoBackoff(), 0))
    assert db.connection_settings["port"] == port
    assert db._connection is None
    assert db._models == {}
    # the first use, not the construction, is what connects
    with pytest.raises(redis.ConnectionError):
        db.connection


def test_constructor_sends_no_command(redis_settings, count_commands):
    with count_commands(0):
        db = RedisDatabase(**dict(redis_settings, socket_timeout=17.25))
    assert db._connection is None


def test_connection_settings_as_given(redis_settings):
    settings = dict(redis_settings, db=3)
    db = RedisDatabase(**settings)
    assert db.connection_settings == settings


def test_connection_settings_default():
    db = RedisDatabase()
    assert db.connection_settings == DEFAULT_CONNECTION_SETTINGS
    db.connection_settings["db"] = 9
    assert DEFAULT_CONNECTION_SETTINGS["db"] == 0, "the module default must not be mutated through a database"


def test_databases_have_no_equality(redis_settings):
    assert RedisDatabase(**redis_settings) != RedisDatabase(**redis_settings)
    assert not hasattr(RedisDatabase, "pipeline")
    assert not hasattr(RedisDatabase, "transaction")


# ---------------------------------------------------------------------- connection cache


def test_connection_is_a_decoding_redis_client(database, client):
    connection = database.connection
    assert isinstance(connection, redis.Redis)
    assert connection.connection_pool.connection_kwargs["decode_responses"] is True
    client.set("k", b"\xc3\xa9t\xc3\xa9")
    assert connection.get("k") == "été"


def test_connection_cache_key_format(redis_settings):
    settings = dict(redis_settings, db=3)
    db = RedisDatabase(**settings)
    connection = db.connection
    expected_key = ":".join("%s=%s" % (name, settings[name]) for name in sorted(settings))
    assert RedisDatabase._connections[expected_key] is connection


def test_connection_cache_key_example(monkeypatch):
    sentinel = object()
    monkeypatch.setitem(RedisDatabase._connections, "db=3:host=h:port=6379", sentinel)
    db = RedisDatabase(host="h", port=6379, db=3)
    assert db.connect() is sentinel
    assert db.connection is sentinel


def test_connection_cache_key_names_the_settings(redis_settings):
    """Equal values under different names never share a client."""
    first = RedisDatabase._connection_cache_key({"host": "localhost", "port": 6379, "db": 0})
    second = RedisDatabase._connection_cache_key({"host": "localhost", "password": "6379", "db": 0})
    assert first != second
    assert first == "db=0:host=localhost:port=6379"


def test_connection_cache_key_of_empty_settings(monkeypatch):
    sentinel = object()
    monkeypatch.setitem(RedisDatabase._connections, "", sentinel)
    db = RedisDatabase()
    db.reset()
    assert db.connection_settings == {}
    assert db.connection is sentinel


def test_connections_cache_is_shared_by_all_databases(redis_settings):
    first = RedisDatabase(**redis_settings)
    second = RedisDatabase(**dict(redis_settings))
    assert first.connection is second.connection
    assert first._connections is second._connections is RedisDatabase._connections


def test_connection_is_lazy_and_cached_on_the_object(redis_settings, count_commands):
    db = RedisDatabase(**redis_settings)
    assert db._connection is None
    connection = db.connection
    assert db._connection is connection
    with count_commands(0):
        assert db.connection is connection


def test_connect_without_arguments_does_not_change_state(redis_settings):
    settings = dict(redis_settings)
    db = RedisDatabase(**settings)
    connection = db.connect()
    assert isinstance(connection, redis.Redis)
    # (a client just created reads the server version through ``connection``, which may keep it)
    assert db._connection is None or db._connection is connection
    assert db.connection_settings == settings
    assert db.connect() is connection
    assert db.connection is connection


def test_connect_with_arguments_switches_database(database, redis_settings, client, namespace):
    db = database

    class Boat(model.RedisModel):
        database = db
        namespace = "sw"

    assert Boat().pk.get() == "1"
    assert client.get("sw:boat:max_pk") == "1"

    other_settings = dict(redis_settings, db=1)
    new_connection = db.connect(**other_settings)
    assert db.connection_settings == other_settings
    assert new_connection is db.connection
    assert new_connection.connection_pool.connection_kwargs["db"] == 1
    assert Boat.get_connection() is new_connection

    # the next calls hit db 1: a fresh counter there
    assert Boat().pk.get() == "1"
    assert Boat().pk.get() == "2"
    client_db1 = redis.Redis(**other_settings, decode_responses=True)
    try:
        assert client_db1.get("sw:boat:max_pk") == "2"
        assert client_db1.smembers("sw:boat:collection") == {"1", "2"}
    finally:
        client_db1.close()
    assert client.get("sw:boat:max_pk") == "1"
    assert client.smembers("sw:boat:collection") == {"1"}

    # and back
    assert db.connect(**redis_settings) is db.connection
    assert Boat().pk.get() == "2"


def test_reset_uses_settings_as_given(redis_settings):
    db = RedisDatabase(**redis_settings)
    first = db.connection
    db.reset(**dict(redis_settings, db=2))
    assert db._connection is None
    assert db.connection_settings == dict(redis_settings, db=2)
    second = db.connection
    assert second is not first
    assert second.connection_pool.connection_kwargs["db"] == 2
    db.reset()
    assert db.connection_settings == {}, "reset() means redis-py defaults, not DEFAULT_CONNECTION_SETTINGS"
    assert db._connection is None


def test_connection_is_reread_by_models(database, redis_settings):
    db = database

    class Reread(model.RedisModel):
        database = db

    assert Reread.get_connection() is db.connection
    db.reset(**dict(redis_settings, db=4))
    assert Reread.get_connection() is db.connection
    assert Reread.get_connection().connection_pool.connection_kwargs["db"] == 4


def test_decode_responses_false_is_refused(redis_settings):
    with pytest.raises(ImplementationError, match=r"decode_responses.*False"):
        db = RedisDatabase(**dict(redis_settings, decode_responses=False, socket_timeout=31.5))
        db.connection


def test_decode_responses_true_is_accepted(redis_settings, client):
    db = RedisDatabase(**dict(redis_settings, decode_responses=True))
    client.set("x", "y")
    assert db.connection.get("x") == "y"
    client.delete("x")


# ---------------------------------------------------------------------- versions


def test_redis_version(database, redis_version):
    version = database.redis_version
    assert type(version) is tuple
    assert len(version) == 3
    assert all(type(part) is int for part in version)
    assert version == redis_version


def test_redis_version_is_read_once(redis_settings, client, count_commands, redis_version):
    db = RedisDatabase(**dict(redis_settings, socket_timeout=23.5))  # settings never used before
    before = _calls(client, "info")
    db.connection  # a new client: its version is checked
    # one INFO from the check, one from the first commandstats read
    assert _calls(client, "info") - before == 2
    with count_commands(0):
        assert db.redis_version == redis_version
        assert db.redis_version == redis_version


def test_redis_version_is_cached_on_the_object_and_forgotten_by_reset(
    database, redis_settings, count_commands
):
    db = RedisDatabase(**redis_settings)
    with count_commands(0):
        db.connection  # the client is in the cache already (the fixture created it)
    with count_commands(1):
        version = db.redis_version
    with count_commands(0):
        assert db.redis_version == version
    db.reset(**redis_settings)
    with count_commands(1):
        assert db.redis_version == version


def test_reset_forgets_the_redis_version(redis_settings, monkeypatch, redis_version):
    marker = 29.75  # a socket_timeout identifying the settings of a pretend server
    real_info = redis.Redis.info

    def info(self, *args, **kwargs):
        if self.connection_pool.connection_kwargs.get("socket_timeout") == marker:
            return {"redis_version": "9.8.7"}
        return real_info(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "info", info)
    db = RedisDatabase(**redis_settings)
    assert db.redis_version == redis_version
    db.reset(**dict(redis_settings, socket_timeout=marker))
    assert db.redis_version == (9, 8, 7)
    db.connect(**redis_settings)
    assert db.redis_version == redis_version


def test_ensure_redis_versions_accepts_current_versions(database):
    assert database.ensure_redis_versions() is None


@pytest.mark.parametrize("old_version", ["3.5.3", "2.10.6"])
def test_ensure_redis_versions_refuses_old_redis_py(database, monkeypatch, old_version):
    monkeypatch.setattr(redis, "__version__", old_version)
    with pytest.raises(LimpydException, match=r"^Limpyd needs redis-py >= \d+ to operate"):
        database.ensure_redis_versions()


def test_ensure_redis_versions_accepts_redis_py_4(database, monkeypatch):
    monkeypatch.setattr(redis, "__version__", "4.0.0")
    database.ensure_redis_versions()
    monkeypatch.setattr(redis, "__version__", "8.1.0")
    database.ensure_redis_versions()


def test_ensure_redis_versions_refuses_old_server(database, monkeypatch):
    monkeypatch.setattr(RedisDatabase, "redis_version", property(lambda self: (2, 8, 24)))
    with pytest.raises(LimpydException, match=r"^Limpyd needs redis-server >= 3 to operate"):
        database.ensure_redis_versions()


def test_versions_are_checked_when_a_client_is_created(redis_settings, monkeypatch):
    monkeypatch.setattr(redis, "__version__", "3.5.3")
    settings = dict(redis_settings, socket_timeout=42.125)
    db = RedisDatabase(**settings)
    with pytest.raises(LimpydException, match="redis-py"):
        db.connection
    # the client was cached before the check (the check reads the version through the cache)
    cache_key = ":".join("%s=%s" % (name, settings[name]) for name in sorted(settings))
    assert isinstance(RedisDatabase._connections[cache_key], redis.Redis)


# ---------------------------------------------------------------------- default indexes


def test_get_default_indexes():
    assert RedisDatabase.get_default_indexes() == [EqualIndex]
    assert RedisDatabase().get_default_indexes() == [EqualIndex]

    class NoIndexesDatabase(RedisDatabase):
        default_indexes = None

    class OtherIndexesDatabase(RedisDatabase):
        default_indexes = [EqualIndex, EqualIndex]

    assert NoIndexesDatabase.get_default_indexes() == []
    assert NoIndexesDatabase().get_default_indexes() == []
    assert OtherIndexesDatabase.get_default_indexes() == [EqualIndex, EqualIndex]
    assert isinstance(inspect.getattr_static(RedisDatabase, "get_default_indexes"), classmethod)


def test_default_indexes_is_one_list_overridable_on_a_database_object():
    assert RedisDatabase.default_indexes is RedisDatabase.default_indexes
    assert RedisDatabase().default_indexes is RedisDatabase.default_indexes
    db = RedisDatabase()
    db.default_indexes = None
    assert db.get_default_indexes() == [EqualIndex]  # a classmethod: the class attribute counts
    assert db.default_indexes is None
    assert RedisDatabase.default_indexes == [EqualIndex]


def test_database_module_does_not_import_the_indexes():
    code = (
        "import sys, limpyd.database as d; loaded = 'limpyd.indexes' in sys.modules; "
        "assert not loaded, 'limpyd.database imported limpyd.indexes'; "
        "assert d.RedisDatabase.default_indexes[0] is sys.modules['limpyd.indexes'].EqualIndex; "
        "assert d.EqualIndex is sys.modules['limpyd.indexes'].EqualIndex"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with pytest.raises(AttributeError, match="has no attribute 'NotAName'"):
        limpyd.database.NotAName


def test_shared_state_is_declared_on_the_database():
    db = RedisDatabase()
    assert db._models == {} and db._relations == {}
    assert db._relations is not RedisDatabase()._relations
    assert db._limpyd_hmset_only is False
    db._limpyd_hmset_only = True
    db.reset(**db.connection_settings)
    assert db._limpyd_hmset_only is False


# ---------------------------------------------------------------------- call_script


def test_call_script_registers_once_and_uses_evalsha(database, client, count_commands):
    client.script_flush()
    script = {"lua": "return {#KEYS, #ARGV, KEYS[1], ARGV[1]}"}
    evalsha_before = _calls(client, "evalsha")
    eval_before = _calls(client, "eval")

    assert database.call_script(script, keys=["a"], args=["b"]) == [1, 1, "a", "b"]
    script_object = script["script_object"]
    assert isinstance(script_object, redis.commands.core.Script)
    assert set(script) == {"lua", "script_object"}

    with count_commands(1):
        assert database.call_script(script, keys=["c"], args=["d"]) == [1, 1, "c", "d"]
    assert script["script_object"] is script_object

    with count_commands(1):
        assert database.call_script(script) == [0, 0]  # keys/args default to []

    assert _calls(client, "eval") == eval_before
    assert _calls(client, "evalsha") >= evalsha_before + 3


def test_call_script_runs_on_the_current_connection(database, redis_settings, client):
    script = {"lua": "return redis.call('SET', KEYS[1], ARGV[1])"}
    database.call_script(script, keys=["where"], args=["db0"])
    database.connect(**dict(redis_settings, db=1))
    database.call_script(script, keys=["where"], args=["db1"])
    assert client.get("where") == "db0"
    client_db1 = redis.Redis(**dict(redis_settings, db=1), decode_responses=True)
    try:
        assert client_db1.get("where") == "db1"
    finally:
        client_db1.close()


# ---------------------------------------------------------------------- scan_keys


def test_scan_keys_on_an_empty_database(database, count_commands):
    generator = database.scan_keys()
    assert inspect.isgenerator(generator)
    with count_commands(1):
        assert list(generator) == []


def test_scan_keys_yields_str(database, client):
    client.set(b"\xc3\xa9l\xc3\xa9phant", "1")
    client.set("plain", "1")
    keys = list(database.scan_keys())
    assert sorted(keys) == ["plain", "éléphant"]
    assert all(type(key) is str for key in keys)


def test_scan_keys_200000_keys(database, client):
    a_keys = ["a:%d" % i for i in range(150000)]
    b_keys = ["b:%d" % i for i in range(50000)]
    _load_keys(client, a_keys + b_keys)

    everything = list(database.scan_keys())
    assert len(everything) >= 200000  # SCAN may repeat a key
    assert set(everything) == set(a_keys) | set(b_keys)

    matching = list(database.scan_keys(match="b:*"))
    assert set(matching) == set(b_keys)

    positional = set(database.scan_keys("a:1999*", 500))  # downstream calls it positionally
    assert positional == {key for key in a_keys if key.startswith("a:1999")}
    assert len(positional) == 11


def test_scan_keys_sends_default_count_of_1000(database, client):
    assert RedisDatabase.default_scan_count == 1000
    _load_keys(client, ["k:%d" % i for i in range(200000)])

    before = _calls(client, "scan")
    assert len(set(database.scan_keys())) == 200000
    default_calls = _calls(client, "scan") - before
    # about keys / 1000 SCAN calls (Redis' own COUNT of 10 would need about 20,000)
    assert 150 <= default_calls <= 600, default_calls

    before = _calls(client, "scan")
    assert len(set(database.scan_keys(count=None))) == 200000
    assert _calls(client, "scan") - before == default_calls

    before = _calls(client, "scan")
    assert len(set(database.scan_keys(count=100))) == 200000
    hundred_calls = _calls(client, "scan") - before
    assert hundred_calls > 5 * default_calls


def test_scan_keys_with_count_1(database, client):
    keys = ["one:%d" % i for i in range(20000)]
    _load_keys(client, keys)
    before = _calls(client, "scan")
    assert set(database.scan_keys(count=1)) == set(keys)
    assert _calls(client, "scan") - before >= 10000  # COUNT 1 really was sent


def test_scan_keys_with_match_and_count_1(database, client):
    keys = ["m:%d" % i for i in range(3000)]
    _load_keys(client, keys + ["other:%d" % i for i in range(3000)])
    assert set(database.scan_keys(match="m:*", count=1)) == set(keys)


@pytest.mark.parametrize("count", [0, -1, "many", 2.5])
def test_scan_keys_invalid_count(database, count):
    with pytest.raises(ValueError, match=re.escape("count=%r" % (count,))):
        list(database.scan_keys(count=count))


def test_scan_keys_type_filter(database, client, redis_version):
    if redis_version < (6,):
        pytest.skip("SCAN TYPE needs Redis >= 6")
    strings = {"s:%d" % i for i in range(500)}
    hashes = {"h:%d" % i for i in range(300)}
    _load_keys(client, sorted(strings))
    pipe = client.pipeline(transaction=False)
    for key in hashes:
        pipe.hset(key, "f", "v")
    pipe.execute()
    client.sadd("set", "x")

    assert set(database.scan_keys(type="string")) == strings
    assert set(database.scan_keys(type="hash")) == hashes
    assert set(database.scan_keys(match="h:1*", type="hash")) == {
        key for key in hashes if key.startswith("h:1")
    }
    assert set(database.scan_keys(match="h:*", type="string")) == set()
    assert set(database.scan_keys(type="hash", count=7)) == hashes


def test_scan_keys_type_refused_on_old_server(database, monkeypatch):
    monkeypatch.setattr(RedisDatabase, "redis_version", property(lambda self: (5, 0, 14)))
    with pytest.raises(LimpydException, match="Redis >= 6"):
        list(database.scan_keys(type="hash"))


def _check_database_still_sane(database: RedisDatabase, total: int) -> None:
    connection = database.connection
    assert connection.get("half:1") == "1"
    assert connection.echo("still in sync") == "still in sync"
    assert connection.dbsize() == total
    assert connection.ping() is True
    assert len(set(database.scan_keys(match="half:*"))) == total


@pytest.mark.parametrize("how", ["close", "del", "break-and-del"])
def test_scan_keys_abandoned_halfway(database, client, how):
    total = 5000
    _load_keys(client, ["half:%d" % i for i in range(total)])
    clients_before = len(client.client_list())

    for _ in range(20):
        generator = database.scan_keys(count=100)
        if how == "break-and-del":
            seen = []
            for key in generator:
                seen.append(key)
                if len(seen) == 150:  # the second SCAN is in flight
                    break
        else:
            seen = [next(generator) for _ in range(150)]
        assert all(key.startswith("half:") for key in seen)
        if how == "close":
            generator.close()
        del generator
        _check_database_still_sane(database, total)

    # every abandoned scan gave its connection back to the pool
    assert len(client.client_list()) <= clients_before + 1


def test_scan_keys_abandoned_before_start(database, client, count_commands):
    client.set("half:1", "1")
    with count_commands(0):
        generator = database.scan_keys()
        del generator
    _check_database_still_sane(database, 1)


def test_scan_keys_paused_while_other_commands_run(database, client):
    keys = ["p:%d" % i for i in range(3000)]
    _load_keys(client, keys)
    first = database.scan_keys(count=50)
    second = database.scan_keys(match="p:1*", count=50)
    seen_first = {next(first) for _ in range(10)}
    seen_second = {next(second)}
    # the paused scans do not disturb the database's other commands
    assert database.connection.get("p:42") == "1"
    database.connection.set("extra", "x")
    assert database.connection.get("extra") == "x"
    seen_first.update(first)
    seen_second.update(second)
    assert seen_first >= set(keys)
    assert seen_second == {key for key in keys if key.startswith("p:1")}


def test_seed_page_examples(database, client):
    _load_keys(client, ["something%d" % i for i in range(250)] + ["else%d" % i for i in range(50)])
    main_database = database

    keys = []
    generator = main_database.scan_keys()
    while True:
        try:
            key = next(generator)
        except StopIteration:
            break
        keys.append(key)
    assert len(set(keys)) == 300

    generator = main_database.scan_keys(match="something*", count=100)  # count is a hint
    assert {key for key in generator} == {"something%d" % i for i in range(250)}

    keys = set(main_database.scan_keys(match="something"))
    assert keys == set()
    client.set("something", "1")
    keys = set(main_database.scan_keys(match="something"))
    assert keys == {"something"}


def test_seed_page_database_definition(redis_settings, count_commands):
    with count_commands(0):
        main_database = RedisDatabase(host="localhost", port=6379, db=0)
    assert main_database.connection_settings == {"host": "localhost", "port": 6379, "db": 0}
    assert main_database._connection is None
    # "later": switch to the private server, db 3
    connection = main_database.connect(**dict(redis_settings, db=3))
    assert connection.connection_pool.connection_kwargs["db"] == 3
    assert main_database.connection is connection


# ---------------------------------------------------------------------- seed page: models on databases


def test_seed_page_models_on_a_database(database, client):
    from limpyd import fields

    main_database = database

    class Example(model.RedisModel):
        database = main_database
        namespace = "seed"
        some_field = fields.StringField()

    class BaseModel(model.RedisModel):
        database = main_database
        namespace = "seed"
        abstract = True

    class Foo(BaseModel):
        foo_field = fields.StringField()

    class Bar(BaseModel):
        bar_field = fields.StringField()

    assert main_database._models == {"seed:example": Example, "seed:foo": Foo, "seed:bar": Bar}
    assert Foo.database is Bar.database is main_database
    Foo(foo_field="x")
    assert client.get("seed:foo:1:foo_field") == "x"


def test_seed_page_switch_database(redis_settings, count_commands):
    with count_commands(0):  # an "external module": a default database, never contacted

        class BaseModel(model.RedisModel):
            database = RedisDatabase()
            namespace = "seedswitch"
            abstract = True

        class Foo(BaseModel):
            pass

        class Bar(BaseModel):
            pass

    external = BaseModel.database
    assert external._models == {"seedswitch:foo": Foo, "seedswitch:bar": Bar}

    database = RedisDatabase(**redis_settings)
    assert BaseModel.use_database(database) == [BaseModel, Foo, Bar]
    assert Foo.database is Bar.database is database
    assert external._models == {}
    assert database._models == {"seedswitch:foo": Foo, "seedswitch:bar": Bar}
    try:
        assert Foo().pk.get() == "1"
        assert database.connection.smembers("seedswitch:foo:collection") == {"1"}
    finally:
        database.connection.flushall()
