"""Field scans (``sscan``, ``zscan``, ``hscan``) read their replies with the raw SCAN reader.

On a plain ``redis.Redis`` client the field scans go through ``limpyd._scan.scan_pool`` (the
cursor read from the first bytes of a reply, the next request sent before the items are decoded);
every other client keeps redis-py's ``*scan_iter``. Either way the results must be exactly
redis-py's: each test compares with redis-py's own iterator on the same key, run side by side.
The raw route runs with both readers (the ``speedups`` fixture: compiled and twin), through a spy
replacing the ``scan_pool`` the fields call, which also proves the route was taken.
"""

from __future__ import annotations

import functools
import inspect
import math
import socket
from collections import Counter
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import redis
from redis.exceptions import DataError

from limpyd import _scan
from limpyd._batch import batch_scope, is_batched
from limpyd._fields import multi
from limpyd.fields import HashField, SetField, SortedSetField

# ---------------------------------------------------------------------- data

#: members, fields and values that look like RESP, or that are not plain ASCII
SPECIAL = [
    "plain",
    "",
    "é",
    "日本語 ✓",
    "a\r\nb",
    "\r\n",
    "\n",
    "\r",
    "$",
    "$5\r\nhello",
    "*",
    "*2\r\n$1\r\n0\r\n*0\r\n",
    "-ERR not an error",
    ":12",
    "+OK",
    " ",
    "tab\t",
    "\x00nul",
]

#: scores of the sorted sets: integers, non-integers, negative, infinite, extreme
SCORES = [0.0, 1.5, -2.0, -0.25, math.inf, -math.inf, 1e300, 3.14159, float(2**53 + 1), 1e-300, 0.1, 42.0]

#: the size-1 collections hold this member (or field, with the value "")
SINGLE = "*1\r\n$0\r\n\r\n"


def items_of(size: int) -> List[str]:
    """Return ``size`` distinct members: the special ones first, then ``m:<i>:<special>``."""
    if size == 0:
        return []
    if size == 1:
        return [SINGLE]
    names = SPECIAL[:size]
    names += ["m:%d:%s" % (index, SPECIAL[index % len(SPECIAL)]) for index in range(size - len(names))]
    return names


#: the size of the large fields: several replies at every COUNT tried (1,000 at most)
LARGE = 3_000


def load(client: redis.Redis, kind: str, key: str, size: int, big: bool = False) -> None:
    """Store ``size`` members of ``kind`` at ``key`` (``big``: hash values up to 70 KB)."""
    names = items_of(size)
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(names), 2000):
        chunk = names[start : start + 2000]
        if kind == "set":
            pipe.sadd(key, *chunk)
        elif kind == "zset":
            pipe.zadd(key, {name: SCORES[(start + index) % len(SCORES)] for index, name in enumerate(chunk)})
        else:
            pipe.hset(
                key, mapping={name: _value(start + index, name, big) for index, name in enumerate(chunk)}
            )
    pipe.execute()


def _value(index: int, name: str, big: bool) -> str:
    if name == SINGLE:
        return ""
    if big:
        return "v%d:é\r\n" % index * (1 + (index * 7919) % 7000)  # 6 to 70,000 bytes
    return SPECIAL[(index * 5) % len(SPECIAL)] + ("" if index % 3 == 0 else str(index))


def _types(items: List[Any]) -> Counter:
    return Counter(
        (type(item), tuple(type(part) for part in item) if type(item) in (tuple, list) else ())
        for item in items
    )


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def own_client(redis_settings: dict) -> Iterator[redis.Redis]:
    """A plain client of the test's own: its pool holds only the connections of this test."""
    own = redis.Redis(**redis_settings, decode_responses=True)
    yield own
    own.close()


@pytest.fixture
def db_models(Base: type) -> Dict[str, type]:
    """A model with a field of each scannable kind, on the database's own client."""

    class Tagged(Base):
        tags = SetField()
        scores = SortedSetField()
        h = HashField()

    return {"model": Tagged}


@pytest.fixture
def models(db_models: Dict[str, type], own_client: redis.Redis, monkeypatch: Any) -> Dict[str, type]:
    """The model of ``db_models``, its commands sent through ``own_client``.

    The database's client is shared by the tests of the session (its pool may hold connections
    other tests left behind): the tests checking the pool's connections use a client of their own.
    """
    monkeypatch.setattr(db_models["model"], "get_connection", classmethod(lambda cls: own_client))
    return db_models


FIELD_OF = {"set": "tags", "zset": "scores", "hash": "h"}
SCAN_OF = {"set": "sscan", "zset": "zscan", "hash": "hscan"}


@pytest.fixture
def raw_calls(speedups: Any, monkeypatch: Any) -> List[tuple]:
    """Run the field scans' ``scan_pool`` with the readers of ``speedups``; record each call."""
    calls: List[tuple] = []

    def spy(pool: Any, arguments: List[Any], **kwargs: Any) -> Iterator[Any]:
        calls.append((arguments, kwargs))
        return _scan.scan_pool(
            pool, arguments, speedups.parse_scan_header, speedups.decode_scan_keys, **kwargs
        )

    monkeypatch.setattr(multi, "scan_pool", spy)
    return calls


@pytest.fixture
def sockets(monkeypatch: Any) -> List[Any]:
    """Record what ``_socket_of`` returns: a socket means the raw reader read the replies."""
    seen: List[Any] = []
    monkeypatch.setattr(
        _scan,
        "_socket_of",
        lambda connection, real=_scan._socket_of: seen.append(real(connection)) or seen[-1],
    )
    return seen


def _field(models: Dict[str, type], kind: str) -> Any:
    obj = models["model"]()
    return getattr(obj, FIELD_OF[kind])


def _redis_py_iter(client: redis.Redis, kind: str, key: str, match: Any, count: Any) -> Iterator[Any]:
    return getattr(client, SCAN_OF[kind] + "_iter")(key, match=match, count=count)


def _stored(client: redis.Redis, kind: str, key: str) -> Any:
    """Return what the field holds, read with the field's usual whole-value command."""
    if kind == "set":
        return client.smembers(key)
    if kind == "zset":
        return dict(client.zrange(key, 0, -1, withscores=True))
    return client.hgetall(key)


def _pooled(client: redis.Redis) -> list:
    return list(client.connection_pool._available_connections)


def _sockets_of(client: redis.Redis) -> Dict[int, Any]:
    """Return the socket of each pooled connection (the pool is the database's, shared by tests)."""
    return {id(connection): connection._sock for connection in _pooled(client)}


def _assert_clean(client: redis.Redis) -> None:
    """Every pooled connection is connected, has nothing left to read, and answers in sync."""
    for connection in _pooled(client):
        if connection._sock is not None:
            assert not connection.can_read(timeout=0)
    assert client.echo("in sync") == "in sync"


# ---------------------------------------------------------------------- same results as redis-py


def _cases() -> List[Any]:
    cases = []
    for kind in ("set", "zset", "hash"):
        for size in (0, 1, LARGE):
            for count in (None, 1, 10, 1000):
                for match in (None, "m:1*", "*\r\n*", "*é*"):
                    if size == LARGE and count == 1 and match is not None:
                        continue  # 10,000 round trips each: one such case per kind is enough
                    cases.append(
                        pytest.param(kind, size, count, match, id="%s-%d-%s-%r" % (kind, size, count, match))
                    )
    return cases


@pytest.mark.parametrize("kind, size, count, match", _cases())
def test_same_results_as_redis_py(
    models: Dict[str, type],
    client: redis.Redis,
    raw_calls: List[tuple],
    sockets: List[Any],
    kind: str,
    size: int,
    count: Optional[int],
    match: Optional[str],
) -> None:
    field = _field(models, kind)
    load(client, kind, field.key, size)
    connection = field.connection
    expected = list(_redis_py_iter(connection, kind, field.key, match, count))
    items = list(getattr(field, SCAN_OF[kind])(match=match, count=count))
    assert len(raw_calls) == 1 and isinstance(sockets[-1], socket.socket)  # the raw reader read them
    head = {"set": "SSCAN", "zset": "ZSCAN", "hash": "HSCAN"}[kind]
    assert raw_calls[0][1]["head"] == (head, field.key)
    # COUNT and MATCH sent as given, nothing when None
    assert raw_calls[0][0] == (["MATCH", match] if match is not None else []) + (
        ["COUNT", count] if count is not None else []
    )
    # the same items, of the same types (a member may come twice while Redis rehashes)
    assert set(items) == set(expected)
    assert len(items) <= len(expected) * 1.1
    assert _types(items) == _types(expected) or not items
    stored = _stored(connection, kind, field.key)
    found = dict.fromkeys(items) if kind == "set" else dict(items)
    stored = dict.fromkeys(stored) if kind == "set" else stored
    if match is None:
        assert found == stored and len(stored) == size
    else:
        assert found.items() <= stored.items()
    if size == LARGE:
        assert items  # the match is not empty by mistake
    _assert_clean(connection)


@pytest.mark.parametrize("count", [None, 1, 10, 1000])
def test_zscan_scores(
    models: Dict[str, type], client: redis.Redis, raw_calls: List[tuple], count: Any
) -> None:
    field = _field(models, "zset")
    scores = {"s%d" % index: score for index, score in enumerate(SCORES)}
    scores.update({"n:%d" % index: -index / 7 for index in range(300)})
    client.zadd(field.key, scores)
    items = list(field.zscan(count=count))
    assert raw_calls
    assert all(type(member) is str and type(score) is float for member, score in items)
    assert dict(items) == scores  # inf, -inf, 1e-300, 2**53 + 1, 0.1: the floats redis-py gives
    assert sorted(items) == sorted(field.connection.zscan_iter(field.key, count=count))


@pytest.mark.parametrize("count", [1, 10, 1000])
def test_hash_pairs_cut_between_receives(
    models: Dict[str, type], client: redis.Redis, raw_calls: List[tuple], count: int
) -> None:
    # values from 6 bytes to 70 KB: a reply ends and the next starts mid-pair in most receives
    field = _field(models, "hash")
    load(client, "hash", field.key, 400, big=True)
    expected = client.hgetall(field.key)
    items = list(field.hscan(count=count))
    assert raw_calls
    assert len(items) == len(expected) and dict(items) == expected
    assert items == list(field.connection.hscan_iter(field.key, count=count))
    _assert_clean(field.connection)


def test_the_dispatched_readers_are_used(
    db_models: Dict[str, type], client: redis.Redis, sockets: List[Any]
) -> None:
    # without the spy, on the database's client: the fields call scan_pool with the readers
    # limpyd.speedups picked
    field = _field(db_models, "set")
    assert field.connection is field.database.connection
    load(client, "set", field.key, 3000)
    assert set(field.sscan(count=100)) == set(items_of(3000))
    assert len(sockets) == 1 and isinstance(sockets[0], socket.socket)


# ---------------------------------------------------------------------- the connection stays clean


@pytest.mark.parametrize("kind", ["set", "zset", "hash"])
@pytest.mark.parametrize("count", [10, 1000])
def test_abandoned_generator_leaves_the_connection_clean(
    models: Dict[str, type], client: redis.Redis, raw_calls: List[tuple], kind: str, count: int
) -> None:
    field = _field(models, kind)
    load(client, kind, field.key, LARGE, big=False)
    connection = field.connection
    connection.ping()
    sockets = _sockets_of(connection)
    for take in (0, 1, 5, count, count + 3, LARGE // 2):
        generator = getattr(field, SCAN_OF[kind])(count=count)
        items = [next(generator) for _ in range(take)]
        assert len(set(items)) == take
        generator.close()
        assert _sockets_of(connection) == sockets  # given back drained, not reconnected
        _assert_clean(connection)
        assert connection.type(field.key) == {"set": "set", "zset": "zset", "hash": "hash"}[kind]
    assert len(raw_calls) == 6


@pytest.mark.parametrize("kind", ["set", "zset", "hash"])
@pytest.mark.parametrize("count", [10, 1000])
def test_connection_killed_mid_scan(
    models: Dict[str, type],
    client: redis.Redis,
    redis_settings: dict,
    raw_calls: List[tuple],
    monkeypatch: Any,
    kind: str,
    count: int,
) -> None:
    field = _field(models, kind)
    load(client, kind, field.key, 20_000)
    # a client of its own: its one pooled connection is the one the scan takes, and is killed
    scanner = redis.Redis(**redis_settings, decode_responses=True)
    try:
        monkeypatch.setattr(models["model"], "get_connection", classmethod(lambda cls: scanner))
        scanning_id = scanner.client_id()
        (pooled,) = _pooled(scanner)
        generator = getattr(field, SCAN_OF[kind])(count=count)
        next(generator)
        assert scanner.connection_pool._in_use_connections == {pooled}
        client.client_kill_filter(_id=scanning_id)
        with pytest.raises(redis.ConnectionError, match=SCAN_OF[kind].upper()):
            list(generator)
        assert raw_calls
        assert _pooled(scanner) == [pooled]
        assert pooled._sock is None  # disconnected: redis-py reconnects it on next use
        assert scanner.echo("back") == "back"
        assert len(set(getattr(field, SCAN_OF[kind])(count=count))) == 20_000
    finally:
        scanner.close()


def test_error_reply_leaves_the_connection_clean(
    models: Dict[str, type], client: redis.Redis, raw_calls: List[tuple]
) -> None:
    field = _field(models, "set")
    client.set(field.key, "not a set")
    connection = field.connection
    connection.ping()
    sockets = _sockets_of(connection)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE") as expected:
        list(connection.sscan_iter(field.key))
    with pytest.raises(redis.ResponseError, match="WRONGTYPE") as raised:
        list(field.sscan())
    assert type(raised.value) is type(expected.value) and str(raised.value) == str(expected.value)
    assert raw_calls
    assert _sockets_of(connection) == sockets  # nothing else was due: kept connected
    _assert_clean(connection)


@pytest.mark.parametrize("count, match", [(True, None), (None, object())])
def test_arguments_redis_py_refuses(
    models: Dict[str, type], client: redis.Redis, raw_calls: List[tuple], count: Any, match: Any
) -> None:
    field = _field(models, "set")
    client.sadd(field.key, "a")
    connection = field.connection
    connection.ping()
    sockets = _sockets_of(connection)
    with pytest.raises(DataError) as expected:
        list(connection.sscan_iter(field.key, match=match, count=count))
    generator = field.sscan(match=match, count=count)  # lazy, as redis-py's: raises on next()
    with pytest.raises(DataError) as raised:
        list(generator)
    assert str(raised.value) == str(expected.value) and raw_calls
    assert _sockets_of(connection) == sockets  # nothing was sent: the connection is kept
    _assert_clean(connection)


# ---------------------------------------------------------------------- redis-py's route


ALL_KINDS = {"set", "zset", "hash"}


def _client_kwargs() -> List[Any]:
    """Clients, with the kinds whose field scans take the raw route on them (redis-py's for the others)."""
    cases = [
        pytest.param({"decode_responses": False}, set(), id="bytes"),
        pytest.param(
            {"decode_responses": True, "single_connection_client": True}, set(), id="single-connection"
        ),
        # not UTF-8: the raw route reads the replies with redis-py's parser (same decoding)
        pytest.param({"decode_responses": True, "encoding": "latin-1"}, ALL_KINDS, id="latin-1"),
    ]
    parameters = inspect.signature(redis.Redis.__init__).parameters
    if "protocol" in parameters:
        cases += [
            pytest.param({"decode_responses": True, "protocol": 2}, ALL_KINDS, id="resp2"),
            pytest.param({"decode_responses": True, "protocol": 3}, ALL_KINDS, id="resp3"),
        ]
    if "legacy_responses" in parameters:
        # ZSCAN's unified callback yields [member, score] lists; SSCAN and HSCAN keep their shapes
        cases.append(
            pytest.param({"decode_responses": True, "legacy_responses": False}, {"set", "hash"}, id="unified")
        )
    return cases


class SubclassedRedis(redis.Redis):
    pass


@pytest.mark.parametrize("kind", ["set", "zset", "hash"])
@pytest.mark.parametrize("options, raw_kinds", _client_kwargs())
def test_other_clients(
    models: Dict[str, type],
    client: redis.Redis,
    redis_settings: dict,
    raw_calls: List[tuple],
    sockets: List[Any],
    monkeypatch: Any,
    kind: str,
    options: dict,
    raw_kinds: set,
) -> None:
    field = _field(models, kind)
    load(client, kind, field.key, 3000)
    other = redis.Redis(**redis_settings, **options)
    try:
        if options.get("protocol") == 3:
            _skip_if_redis_py_cannot_connect(other)
        monkeypatch.setattr(models["model"], "get_connection", classmethod(lambda cls: other))
        expected = list(_redis_py_iter(other, kind, field.key, None, 100))
        items = list(getattr(field, SCAN_OF[kind])(count=100))
        assert bool(raw_calls) is (kind in raw_kinds)
        if options.get("encoding") == "latin-1":
            assert sockets == [None]  # redis-py's parser, one request ahead
        assert set(map(_hashable, items)) == set(map(_hashable, expected)) and len(items) == len(expected)
        assert _types(items) == _types(expected)
    finally:
        other.close()


def _skip_if_redis_py_cannot_connect(client: redis.Redis) -> None:
    """redis-py 7.4 turns on its maintenance notifications with RESP3 and then refuses a unix socket
    connection (ValueError), its own ``sscan_iter`` included: nothing to compare with there."""
    try:
        client.ping()
    except ValueError as error:
        pytest.skip(f"redis-py {redis.__version__} cannot connect with RESP3 over a unix socket: {error}")


def _hashable(item: Any) -> Any:
    return tuple(item) if type(item) is list else item


@pytest.mark.parametrize("kind", ["set", "zset", "hash"])
def test_subclassed_client(
    models: Dict[str, type],
    client: redis.Redis,
    redis_settings: dict,
    raw_calls: List[tuple],
    monkeypatch: Any,
    kind: str,
) -> None:
    field = _field(models, kind)
    load(client, kind, field.key, 3000)
    calls = []

    class Spying(SubclassedRedis):
        def execute_command(self, *args: Any, **options: Any) -> Any:
            calls.append(args[0])
            return super().execute_command(*args, **options)

    other = Spying(**redis_settings, decode_responses=True)
    try:
        monkeypatch.setattr(models["model"], "get_connection", classmethod(lambda cls: other))
        items = list(getattr(field, SCAN_OF[kind])(count=100))
        assert not raw_calls and calls and set(calls) == {SCAN_OF[kind].upper()}
        assert set(items) == set(_redis_py_iter(other, kind, field.key, None, 100))
    finally:
        other.close()


@pytest.mark.parametrize("kind", ["set", "zset", "hash"])
@pytest.mark.parametrize("replaced", ["iterator", "method", "execute_command", "callback"])
def test_replaced_methods_are_called(
    models: Dict[str, type],
    client: redis.Redis,
    raw_calls: List[tuple],
    monkeypatch: Any,
    kind: str,
    replaced: str,
) -> None:
    field = _field(models, kind)
    load(client, kind, field.key, 3000)
    connection = field.connection
    expected = list(_redis_py_iter(connection, kind, field.key, "m:*", 100))
    calls: List[Any] = []
    name = {
        "iterator": SCAN_OF[kind] + "_iter",
        "method": SCAN_OF[kind],
        "execute_command": "execute_command",
    }.get(replaced)
    if name is not None:
        original = getattr(connection, name)

        def replacement(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return original(*args, **kwargs)

        monkeypatch.setattr(connection, name, replacement)  # on the instance, as users do
    else:
        command = SCAN_OF[kind].upper()
        original = connection.response_callbacks[command]
        monkeypatch.setitem(
            connection.response_callbacks,
            command,
            lambda response, **options: calls.append(command) or original(response, **options),
        )
    items = list(getattr(field, SCAN_OF[kind])(match="m:*", count=100))
    assert not raw_calls and calls
    assert set(items) == set(expected) and len(items) == len(expected)


@pytest.mark.parametrize("kind", ["set", "zset", "hash"])
@pytest.mark.parametrize("where", ["class", "execute_command"])
def test_redis_py_patched_at_class_level(
    models: Dict[str, type],
    client: redis.Redis,
    raw_calls: List[tuple],
    monkeypatch: Any,
    kind: str,
    where: str,
) -> None:
    field = _field(models, kind)
    load(client, kind, field.key, 500)
    calls: List[Any] = []
    name = SCAN_OF[kind] + "_iter" if where == "class" else "execute_command"
    original: Callable[..., Any] = getattr(redis.Redis, name)

    @functools.wraps(original)
    def replacement(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, name, replacement)
    items = list(getattr(field, SCAN_OF[kind])(count=100))
    assert not raw_calls and calls
    assert len(items) == 500


@pytest.mark.parametrize("kind", ["set", "zset", "hash"])
def test_inside_a_write_behind_batch(
    db_models: Dict[str, type], client: redis.Redis, database: Any, raw_calls: List[tuple], kind: str
) -> None:
    field = _field(db_models, kind)
    load(client, kind, field.key, 500)
    with batch_scope(database) as batch:
        assert batch is not None and is_batched(field.connection)
        items = list(getattr(field, SCAN_OF[kind])(count=100))
    assert not raw_calls
    assert set(items) == set(_redis_py_iter(database.connection, kind, field.key, None, 100))
    assert len(items) == 500
