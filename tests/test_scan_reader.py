"""The raw SCAN reader: ``parse_scan_header``/``decode_scan_keys`` parity, and ``limpyd._scan`` loops.

The parity tables run each input through the module of the ``speedups`` fixture (``py`` or
``cy``) and through ``limpyd._speedups_py`` (the specification): same result, or same exception
type, message and cause. The loop tests run ``scan_pool`` with both implementations' readers
against the private redis-server, except one: replies captured from that server are fed through
a fake socket cut at every byte position (the one place where a socket is faked).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest
import redis

from limpyd import _scan, _speedups_py
from limpyd._pool import get_pool_connection
from limpyd._scan import scan_pool

hiredis = pytest.importorskip("hiredis")


# ---------------------------------------------------------------------- outcome helpers


def _types(value: Any) -> Any:
    if type(value) in (tuple, list):
        return (type(value), tuple(_types(item) for item in value))
    return type(value)


def outcome(func: Callable[..., Any], *args: Any) -> tuple:
    """Return a comparable summary of ``func(*args)``: its result (with types), or its exception."""
    try:
        result = func(*args)
    except Exception as exc:
        cause = exc.__cause__
        return ("raise", type(exc), str(exc), type(cause) if cause is not None else None)
    return ("ok", _types(result), result)


def check(speedups: Any, name: str, args: tuple, expected: Any = None) -> tuple:
    """Assert ``name(*args)`` gives the same outcome in ``speedups`` and in the twin; return it."""
    tested = outcome(getattr(speedups, name), *args)
    reference = outcome(getattr(_speedups_py, name), *args)
    assert tested == reference, "%s%r differs from the twin" % (name, args)
    if expected is not None:
        if isinstance(expected, tuple) and expected and expected[0] == "raise":
            assert tested[:2] == expected[:2], tested
            assert expected[2] in tested[2], tested
        else:
            assert tested == ("ok", _types(expected), expected)
    return tested


def raises(exc_type: type, fragment: str) -> tuple:
    return ("raise", exc_type, fragment)


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def reply(cursor: bytes, keys: List[bytes]) -> bytes:
    return b"*2\r\n" + bulk(cursor) + b"*%d\r\n" % len(keys) + b"".join(bulk(key) for key in keys)


# ---------------------------------------------------------------------- parse_scan_header

HEADER = b"*2\r\n$3\r\n123\r\n*2\r\n"  # 17 bytes


@pytest.mark.parametrize(
    "data, start, expected",
    [
        (HEADER, 0, (b"123", 2, 17)),
        (HEADER + b"$1\r\na\r\n$1\r\nb\r\n", 0, (b"123", 2, 17)),
        (b"*2\r\n$1\r\n0\r\n*0\r\n", 0, (b"0", 0, 15)),
        (b"xyz" + HEADER, 3, (b"123", 2, 20)),  # a header after the end of a previous reply
        (b"*2\r\n:42\r\n*5\r\n", 0, (b"42", 5, 13)),  # an integer cursor
        (b"*2\r\n$18\r\n123456789012345678\r\n*1\r\n", 0, (b"123456789012345678", 1, 33)),
        (b"*2\r\n$1\r\n7\r\n*100000\r\n", 0, (b"7", 100000, 20)),
        (b"-ERR syntax error\r\n", 0, (None, "ERR syntax error", 19)),
        (b"-WRONGPASS \xff\r\n*2", 0, (None, "WRONGPASS \ufffd", 14)),
        (b"", 0, None),
        (HEADER, 17, None),
        (b"-ERR no end", 0, None),
        (b"*2\r", 0, None),
        (b"*2\r\n$3\r\n12", 0, None),
        (b"*2\r\n$3\r\n123\r", 0, None),
        (b"*2\r\n:4", 0, None),
        (b"*2\r\n$1\r\n0\r\n*", 0, None),
        (b"*2\r\n$1\r\n0\r\n*12", 0, None),
    ],
)
def test_parse_scan_header(speedups: Any, data: bytes, start: int, expected: Any) -> None:
    result = check(speedups, "parse_scan_header", (data, start))
    assert result == ("ok", _types(expected), expected)


def test_parse_scan_header_every_prefix(speedups: Any) -> None:
    full = HEADER + b"$1\r\na\r\n"
    for end in range(len(HEADER)):
        assert check(speedups, "parse_scan_header", (full[:end], 0)) == ("ok", type(None), None), end
    for end in range(len(HEADER), len(full) + 1):
        assert check(speedups, "parse_scan_header", (full[:end], 0))[2] == (b"123", 2, 17)


@pytest.mark.parametrize(
    "data, start, expected",
    [
        (b"+OK\r\n", 0, raises(ValueError, "expected a SCAN reply (*2) at byte 0, got b'+OK\\r\\n'")),
        (b">3\r\n", 0, raises(ValueError, "expected a SCAN reply (*2) at byte 0")),
        (b"*3\r\n", 0, raises(ValueError, "expected a SCAN reply of 2 elements at byte 0")),
        (b"*02\r\n", 0, raises(ValueError, "expected a SCAN reply of 2 elements at byte 0")),
        (b"*-1\r\n", 0, raises(ValueError, "expected the length of the reply at byte 1")),
        (b"*\r\n", 0, raises(ValueError, "expected the length of the reply at byte 1")),
        (b"*2\rX", 0, raises(ValueError, "expected CRLF after the length of the reply at byte 2")),
        (b"*2\r\n+0\r\n", 0, raises(ValueError, "expected a cursor at byte 4")),
        (b"*2\r\n$0\r\n\r\n", 0, raises(ValueError, "expected a cursor of 1 to 18 digits at byte 4")),
        (b"*2\r\n$19\r\n", 0, raises(ValueError, "expected a cursor of 1 to 18 digits at byte 4")),
        (b"*2\r\n$2\r\n1a\r\n", 0, raises(ValueError, "expected a cursor of 1 to 18 digits at byte 8")),
        (b"*2\r\n$1\r\n1XY", 0, raises(ValueError, "expected CRLF after the cursor at byte 9")),
        (
            b"*2\r\n:1234567890123456789\r\n",
            0,
            raises(ValueError, "a cursor of at most 18 digits at byte 23"),
        ),
        (b"*2\r\n:-1\r\n", 0, raises(ValueError, "expected a cursor at byte 5")),
        (b"*2\r\n$1\r\n0\r\n%1\r\n", 0, raises(ValueError, "expected the keys array (*) at byte 11")),
        (b"*2\r\n$1\r\n0\r\n*-1\r\n", 0, raises(ValueError, "expected the number of keys at byte 12")),
        (b"*2\r\n$1\r\n0\r\n*1x", 0, raises(ValueError, "expected the number of keys at byte 13")),
    ],
)
def test_parse_scan_header_invalid(speedups: Any, data: bytes, start: int, expected: tuple) -> None:
    result = check(speedups, "parse_scan_header", (data, start), expected)
    assert "The connection is out of sync with Redis" in result[2]


@pytest.mark.parametrize("name", ["parse_scan_header", "decode_scan_keys"])
@pytest.mark.parametrize(
    "data, start, expected",
    [
        (bytearray(HEADER), 0, raises(TypeError, "() reads a bytes buffer, got bytearray")),
        (memoryview(HEADER), 0, raises(TypeError, "() reads a bytes buffer, got memoryview")),
        (HEADER.decode(), 0, raises(TypeError, "() reads a bytes buffer, got str")),
        (None, 0, raises(TypeError, "() reads a bytes buffer, got NoneType")),
        (HEADER, -1, raises(ValueError, "(start=-1): start must be an int offset from 0 to len(data) (17).")),
        (HEADER, 18, raises(ValueError, "(start=18): start must be an int offset")),
        (HEADER, True, raises(ValueError, "(start=True): start must be an int offset")),
        (HEADER, 1.0, raises(ValueError, "(start=1.0): start must be an int offset")),
        (HEADER, None, raises(ValueError, "(start=None): start must be an int offset")),
    ],
)
def test_bad_arguments(speedups: Any, name: str, data: Any, start: Any, expected: tuple) -> None:
    args = (data, start) if name == "parse_scan_header" else (data, start, 1)
    result = check(speedups, name, args, expected)
    assert result[2].startswith(name)


# ---------------------------------------------------------------------- decode_scan_keys

ODD_KEYS = [b"a", b"", "clé:é".encode(), b"a\r\nb", b"$3\r\nabc\r\n", b"*2\r\n", "日本".encode(), b"x" * 300]
ODD_DATA = b"".join(bulk(key) for key in ODD_KEYS)
ODD_STR = [key.decode() for key in ODD_KEYS]


@pytest.mark.parametrize("count", [0, 1, 3, len(ODD_KEYS), len(ODD_KEYS) + 5, 10**30])
def test_decode_scan_keys_count(speedups: Any, count: int) -> None:
    keys, end = check(speedups, "decode_scan_keys", (ODD_DATA, 0, count))[2]
    assert keys == ODD_STR[:count]
    assert end == len(b"".join(bulk(key) for key in ODD_KEYS[:count]))


def test_decode_scan_keys_every_prefix(speedups: Any) -> None:
    """Every cut of the buffer gives the keys it holds whole, and the offset of the next one."""
    boundaries = [0]
    for key in ODD_KEYS:
        boundaries.append(boundaries[-1] + len(bulk(key)))
    for cut in range(len(ODD_DATA) + 1):
        whole = max(index for index, boundary in enumerate(boundaries) if boundary <= cut)
        expected = (ODD_STR[:whole], boundaries[whole])
        assert check(speedups, "decode_scan_keys", (ODD_DATA[:cut], 0, 100))[2] == expected, cut
        # resuming at that offset once the rest arrived gives the other keys
        rest = check(speedups, "decode_scan_keys", (ODD_DATA, boundaries[whole], 100))[2]
        assert rest == (ODD_STR[whole:], len(ODD_DATA))


@pytest.mark.parametrize(
    "keys",
    [
        [b"plain:%d" % index for index in range(20)],
        [("clé:%d" % index).encode() for index in range(20)],
        [b"k:%d" % index for index in range(5)] + [b"bad\xff"] + [b"k:%d" % index for index in range(5)],
        [b"k:%d" % index for index in range(5)]
        + [b"a\r\nb", b"$2\r\nab"]
        + [b"k:%d" % index for index in range(5)],
        [b"", b"", b"x", b""],
        [b"$1\r\nx", b"a\r\nb", b"$3\r\nabc\r\n", b"*2\r\n", b"\r", b"\n", b"$0", b"", b"x" * 12],
        [b"k:%d" % index for index in range(5)] + [b"\r\n$2\r\n"] + [b"k:%d" % index for index in range(5)],
    ],
)
def test_decode_scan_keys_every_prefix_and_count(speedups: Any, keys: list) -> None:
    """Whole keys, counts and cuts anywhere: the result is the twin's key by key loop."""
    data = b"".join(bulk(key) for key in keys) + reply(b"0", [b"next"])
    for cut in range(len(data) + 1):
        for count in (1, 2, 7, len(keys), 1000):
            tested = check(speedups, "decode_scan_keys", (data[:cut], 0, count))
            assert tested == outcome(_one_key_at_a_time, data[:cut], 0, count), (cut, count)


def _one_key_at_a_time(data: bytes, start: int, count: int) -> tuple:
    """Return what ``decode_scan_keys`` gives, asking the twin for one key per call (its plain loop)."""
    keys: list = []
    while len(keys) < count:
        more, following = _speedups_py.decode_scan_keys(data, start, 1)
        if not more:
            break
        keys += more
        start = following
    return keys, start


def test_decode_scan_keys_leading_zero_length(speedups: Any) -> None:
    data = b"$01\r\na\r\n" + bulk(b"bc") * 3
    check(speedups, "decode_scan_keys", (data, 0, 10), (["a", "bc", "bc", "bc"], len(data)))


def test_decode_scan_keys_leaves_the_next_reply(speedups: Any) -> None:
    data = b"junk" + bulk(b"k1") + bulk(b"k2") + reply(b"0", [b"k3"])
    assert check(speedups, "decode_scan_keys", (data, 4, 2))[2] == (["k1", "k2"], 20)
    assert check(speedups, "parse_scan_header", (data, 20))[2] == (b"0", 1, 35)


def test_decode_scan_keys_results_are_exact_str(speedups: Any) -> None:
    keys, _ = speedups.decode_scan_keys(ODD_DATA, 0, 100)
    assert [type(key) for key in keys] == [str] * len(ODD_KEYS)


def test_decode_scan_keys_huge_batch(speedups: Any) -> None:
    keys = [("key:%d:é" % index).encode() for index in range(100000)]
    data = reply(b"18446744073709551", keys)
    cursor, count, start = speedups.parse_scan_header(data, 0)
    assert (cursor, count) == (b"18446744073709551", 100000)
    decoded, end = check(speedups, "decode_scan_keys", (data, start, count))[2]
    assert end == len(data)
    assert decoded == [key.decode() for key in keys]


@pytest.mark.parametrize(
    "keys",
    [
        [bytes([byte]) for byte in range(128)],  # every ASCII byte, NUL and DEL included
        [bytes(range(1, 128)), b"", b"a" * 100000],
        [b"ascii:%d" % index + bytes([byte]) for index, byte in enumerate(range(120, 256))],
        ["é".encode() + b"x" * 40, b"x" * 40 + "é".encode(), b"x" * 40 + "\U0001f600".encode()],
        [b"x" * 40, b"x" * 40 + b"\x80", b"\xff" + b"x" * 40],
        ["日本:%d" % index for index in range(3)],
    ],
)
def test_decode_scan_keys_ascii_and_utf8(speedups: Any, keys: list) -> None:
    """ASCII keys (copied without the UTF-8 decoder when compiled) and others give the same str."""
    keys = [key.encode() if isinstance(key, str) else key for key in keys]
    data = b"".join(bulk(key) for key in keys)
    tested = check(speedups, "decode_scan_keys", (data, 0, len(keys)))
    try:
        expected = [key.decode() for key in keys]
    except UnicodeDecodeError:
        assert tested[:2] == ("raise", ValueError)
        return
    assert tested[2] == (expected, len(data))
    assert [(type(key), hash(key), len(key)) for key in tested[2][0]] == [
        (str, hash(key), len(key)) for key in expected
    ]


def test_decode_scan_keys_empty(speedups: Any) -> None:
    check(speedups, "decode_scan_keys", (b"", 0, 10), ([], 0))
    check(speedups, "decode_scan_keys", (b"$1\r\na\r\n", 7, 10), ([], 7))


@pytest.mark.parametrize(
    "data, count, expected",
    [
        (b"+a\r\n", 1, raises(ValueError, "expected a key ($) at byte 0, got b'+a\\r\\n'")),
        (bulk(b"a") + b":1\r\n", 2, raises(ValueError, "expected a key ($) at byte 7")),
        (b"$-1\r\n", 1, raises(ValueError, "expected the length of a key at byte 1")),
        (b"$\r\n", 1, raises(ValueError, "expected the length of a key at byte 1")),
        (b"$1x\r\n", 1, raises(ValueError, "expected the length of a key at byte 2")),
        (b"$1\rx", 1, raises(ValueError, "expected CRLF after the length of a key at byte 2")),
        (
            b"$1234567890123456789\r\n",
            1,
            raises(ValueError, "the length of a key of at most 18 digits at byte 19"),
        ),
        (b"$1\r\nab\r\n", 1, raises(ValueError, "expected CRLF after a key at byte 5")),
        (b"$2\r\nab\n\r", 1, raises(ValueError, "expected CRLF after a key at byte 6")),
        (
            b"$2\r\n\xff\xfe\r\n",
            1,
            raises(ValueError, "SCAN returned the key b'\\xff\\xfe', which is not valid UTF-8"),
        ),
        (b"$1\r\na\r\n", -1, raises(ValueError, "decode_scan_keys(count=-1): count must be an int >= 0.")),
        (
            b"$1\r\na\r\n",
            True,
            raises(ValueError, "decode_scan_keys(count=True): count must be an int >= 0."),
        ),
        (b"$1\r\na\r\n", 1.0, raises(ValueError, "decode_scan_keys(count=1.0): count must be an int >= 0.")),
    ],
)
def test_decode_scan_keys_invalid(speedups: Any, data: bytes, count: Any, expected: tuple) -> None:
    check(speedups, "decode_scan_keys", (data, 0, count), expected)


def test_decode_scan_keys_invalid_utf8_is_chained(speedups: Any) -> None:
    result = check(speedups, "decode_scan_keys", (bulk(b"ok") + bulk(b"\xc3"), 0, 2))
    assert result[1:] == (ValueError, result[2], UnicodeDecodeError)
    assert "Rename or delete that key" in result[2]


def test_decode_scan_keys_incomplete_garbage_is_not_waited_for(speedups: Any) -> None:
    # a length that cannot end (too many digits) raises at once instead of waiting for bytes
    check(
        speedups,
        "decode_scan_keys",
        (b"$" + b"9" * 19, 0, 1),
        raises(ValueError, "the length of a key of at most 18 digits at byte 19"),
    )
    check(speedups, "decode_scan_keys", (b"$" + b"9" * 18, 0, 1), ([], 0))


# ---------------------------------------------------------------------- replies captured from Redis


def _raw_connection(settings: dict) -> socket.socket:
    if "unix_socket_path" in settings:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(settings["unix_socket_path"])
    else:
        sock = socket.create_connection((settings.get("host", "localhost"), settings.get("port", 6379)))
    return sock


def _capture(settings: dict, arguments: list) -> tuple:
    """Run a SCAN loop on a raw socket; return the commands sent and the replies, as bytes.

    Commands are packed by redis-py and replies delimited by hiredis: neither uses limpyd's code.
    """
    packer = redis.Connection()
    sock = _raw_connection(settings)
    commands, replies = [], []
    try:
        if settings.get("db"):
            sock.sendall(b"".join(packer.pack_command("SELECT", settings["db"])))
            sock.recv(100)
        cursor = b"0"
        while True:
            command = b"".join(packer.pack_command("SCAN", cursor, *arguments))
            sock.sendall(command)
            reader = hiredis.Reader()
            raw = b""
            parsed: Any = False
            while parsed is False:
                chunk = sock.recv(65536)
                assert chunk
                raw += chunk
                reader.feed(chunk)
                parsed = reader.gets()
            commands.append(command)
            replies.append(raw)
            cursor = parsed[0]
            if cursor == b"0":
                return commands, replies, [key.decode() for r in replies for key in hiredis_keys(r)]
    finally:
        sock.close()


def hiredis_keys(raw: bytes) -> list:
    reader = hiredis.Reader()
    reader.feed(raw)
    return reader.gets()[1]


class FakeSocket:
    """Serves captured replies, each only once its command was sent, cut at the given offsets."""

    def __init__(self, commands: list, replies: list, cuts: "set[int] | None" = None) -> None:
        self.expected_commands = list(commands)
        self.replies = list(replies)
        self.stream = b""
        self.read = 0
        self.cuts = sorted(cuts or ())
        self.sent: list = []

    def sendall(self, data: bytes) -> None:
        index = len(self.sent)
        assert index < len(self.expected_commands), "a SCAN was sent after the last reply"
        assert data == self.expected_commands[index], "SCAN #%d differs from redis-py's" % index
        self.sent.append(data)
        if index < len(self.replies):
            self.stream += self.replies[index]

    def recv(self, size: int) -> bytes:
        assert self.read < len(self.stream), "recv() with no reply due: the loop would hang"
        stop = min(len(self.stream), self.read + size)
        for cut in self.cuts:
            if self.read < cut < stop:
                stop = cut
                break
        chunk = self.stream[self.read : stop]
        self.read = stop
        return chunk


class FakeConnection:
    def __init__(self, sock: FakeSocket) -> None:
        self._sock = sock
        self.encoder = redis.connection.Encoder("utf-8", "strict", False)
        self.disconnected = 0

    def disconnect(self) -> None:
        self.disconnected += 1


class FakePool:
    def __init__(self, connection: FakeConnection) -> None:
        self.connection = connection
        self.released = 0

    def get_connection(self, *args: Any, **kwargs: Any) -> FakeConnection:
        return self.connection

    def release(self, connection: FakeConnection) -> None:
        assert connection is self.connection
        self.released += 1


@pytest.fixture
def captured(client: redis.Redis, redis_settings: dict) -> tuple:
    """Commands and replies of a real ``SCAN ... MATCH k* COUNT 3`` loop over odd keys."""
    keys = [b"k" + key for key in ODD_KEYS] + [b"k%d" % index for index in range(12)] + [b"other"]
    for key in keys:
        client.set(key, "v")
    commands, replies, expected = _capture(redis_settings, ["MATCH", "k*", "COUNT", 3])
    assert len(replies) >= 3 and len([r for r in replies if hiredis_keys(r)]) >= 2
    assert sorted(expected) == sorted(key.decode() for key in keys if key != b"other")
    return commands, replies, expected


def _run_fake(speedups: Any, captured: tuple, cuts: "set[int]", take: Optional[int] = None) -> tuple:
    commands, replies, expected = captured
    sock = FakeSocket(commands, replies, cuts)
    connection = FakeConnection(sock)
    pool = FakePool(connection)
    generator = scan_pool(
        pool, ["MATCH", "k*", "COUNT", 3], speedups.parse_scan_header, speedups.decode_scan_keys
    )
    if take is None:
        keys = list(generator)
    else:
        keys = [next(generator) for _ in range(take)]
        generator.close()
    return keys, sock, connection, pool


def test_fake_socket_split_at_every_byte(speedups: Any, captured: tuple) -> None:
    commands, replies, expected = captured
    total = sum(len(r) for r in replies)
    for cut in range(1, total):
        keys, sock, connection, pool = _run_fake(speedups, captured, {cut})
        assert keys == expected, cut
        assert sock.sent == commands and sock.read == total
        assert connection.disconnected == 0 and pool.released == 1
    # one byte per recv
    keys, sock, connection, pool = _run_fake(speedups, captured, set(range(1, total)))
    assert keys == expected and sock.read == total and connection.disconnected == 0
    # everything that is due arrives at once (the next reply's start shares a recv with the end)
    keys, sock, connection, pool = _run_fake(speedups, captured, set())
    assert keys == expected and sock.read == total and connection.disconnected == 0


def test_next_scan_sent_before_the_keys_are_decoded(speedups: Any, captured: tuple) -> None:
    commands, replies, expected = captured
    total = sum(len(r) for r in replies)
    for cuts in (set(), set(range(1, total)), {len(replies[0]) - 3}):
        sock = FakeSocket(commands, replies, cuts)
        decoded_with_sent = []

        def decode_keys(data: bytes, start: int, count: int) -> tuple:
            decoded_with_sent.append(len(sock.sent))
            return speedups.decode_scan_keys(data, start, count)

        pool = FakePool(FakeConnection(sock))
        keys = list(scan_pool(pool, ["MATCH", "k*", "COUNT", 3], speedups.parse_scan_header, decode_keys))
        assert keys == expected
        # keys of reply n are decoded once SCAN n + 1 is on its way (the last reply has no n + 1)
        replies_with_keys = [index for index, raw in enumerate(replies) if hiredis_keys(raw)]
        assert decoded_with_sent[0] == min(replies_with_keys[0] + 2, len(commands))
        assert decoded_with_sent == sorted(decoded_with_sent)
        assert all(sent >= 2 or len(commands) == 1 for sent in decoded_with_sent)


def test_fake_socket_abandoned_at_every_key(speedups: Any, captured: tuple) -> None:
    commands, replies, expected = captured
    total = sum(len(r) for r in replies)
    for take in range(len(expected)):
        for cuts in (set(), set(range(1, total)), {len(replies[0]) + 3}):
            keys, sock, connection, pool = _run_fake(speedups, captured, cuts, take=take)
            assert keys == expected[:take]
            # the reply being read and the one in flight were read to their last byte
            assert sock.read == len(sock.stream), (take, cuts)
            # a generator never started took no connection and sent nothing
            assert connection.disconnected == 0 and pool.released == (1 if take else 0)
            assert len(sock.sent) == (0 if take == 0 else len(sock.sent))
            assert take == 0 or sock.sent


def test_fake_socket_closed_mid_reply(speedups: Any, captured: tuple) -> None:
    commands, replies, expected = captured
    truncated = [replies[0], replies[1][:-5]]
    sock = FakeSocket(commands, truncated, set())
    sock.recv = lambda size, recv=sock.recv: recv(size) if sock.read < len(sock.stream) else b""
    connection = FakeConnection(sock)
    pool = FakePool(connection)
    generator = scan_pool(
        pool, ["MATCH", "k*", "COUNT", 3], speedups.parse_scan_header, speedups.decode_scan_keys
    )
    with pytest.raises(redis.ConnectionError, match="Connection closed by server during SCAN"):
        list(generator)
    assert connection.disconnected == 1 and pool.released == 1


# ---------------------------------------------------------------------- scan_pool on the private server


def _load(client: redis.Redis, keys: list) -> None:
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(keys), 10000):
        pipe.mset(dict.fromkeys(keys[start : start + 10000], "1"))
    pipe.execute()


def _run_scan(speedups: Any, client: redis.Redis, arguments: list) -> Iterator[str]:
    return scan_pool(client.connection_pool, arguments, speedups.parse_scan_header, speedups.decode_scan_keys)


def _arguments(match: Optional[str] = None, count: Optional[int] = None, type_: Optional[str] = None) -> list:
    arguments: list = []
    if match is not None:
        arguments += ["MATCH", match]
    if count is not None:
        arguments += ["COUNT", count]
    if type_ is not None:
        arguments += ["TYPE", type_]
    return arguments


def _calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get("cmdstat_%s" % command, {}).get("calls", 0))


def _pooled(client: redis.Redis) -> list:
    return list(client.connection_pool._available_connections)


@pytest.fixture
def keyspace(client: redis.Redis) -> list:
    keys = ["a:%d" % i for i in range(120000)] + ["b:é:%d" % i for i in range(30000)]
    _load(client, keys)
    for i in range(300):
        client.hset("h:%d" % i, "f", "v")
    return keys


@pytest.mark.parametrize(
    "match, count, type_",
    [
        (None, 1000, None),
        (None, 1, None),
        (None, 100000, None),
        ("b:*", 1000, None),
        ("b:*", 100000, None),
        (None, 7, "hash"),
        ("h:1*", 500, "hash"),
    ],
)
def test_same_keys_in_the_same_order_as_redis_py(
    speedups: Any, redis_settings: dict, keyspace: list, match: Any, count: int, type_: Any
) -> None:
    client = redis.Redis(decode_responses=True, **redis_settings)
    try:
        if count == 1 and match is None:
            client.delete(*keyspace[5000:])  # COUNT 1 over 150,000 keys is 150,000 round trips
        expected = set(client.scan_iter(match=match, count=count, _type=type_))
        assert expected  # the case is not empty by mistake, except the type mismatch below
        scans = _calls(client, "scan")
        keys = list(_run_scan(speedups, client, _arguments(match, count, type_)))
        calls = _calls(client, "scan") - scans
        # every key, each at most a few times (SCAN may repeat a key while Redis rehashes)
        assert set(keys) == expected and len(keys) < len(expected) * 1.1
        # COUNT was sent as given: about len(database) / count calls
        assert calls >= min(client.dbsize() // count, 10)
        assert calls <= client.dbsize() // count * 3 + 2
        (connection,) = _pooled(client)
        assert connection._sock is not None and client.echo("in sync") == "in sync"
    finally:
        client.close()


#: redis-py 4 has no ``protocol=`` argument: it speaks RESP2 only
_HAS_PROTOCOL = int(redis.__version__.split(".")[0]) >= 5
#: redis-py 7 refuses RESP3 on a unix socket ("Cannot enable maintenance notifications for
#: connection object that doesn't have a host attribute"); 8 accepts it again
_RESP3_ON_UNIX_SOCKET = int(redis.__version__.split(".")[0]) != 7
needs_resp3 = pytest.mark.skipif(
    not _HAS_PROTOCOL or not _RESP3_ON_UNIX_SOCKET,
    reason="redis-py %s cannot speak RESP3 here: no protocol= argument before 5, and 7 refuses RESP3 on "
    "a unix socket (maintenance notifications need a host)" % redis.__version__,
)


@pytest.mark.parametrize("protocol", [2, pytest.param(3, marks=needs_resp3)])
def test_resp2_and_resp3_with_password_and_db(
    speedups: Any, redis_server: dict, redis_settings: dict, client: redis.Redis, protocol: int
) -> None:
    if redis_server.get("external"):
        pytest.skip("creates an ACL user: private server only")
    client.acl_setuser("scanner", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"])
    other = redis.Redis(**dict(redis_settings, db=3), decode_responses=True)
    options = {"protocol": protocol} if _HAS_PROTOCOL else {}  # redis-py 4: RESP2, the only one
    scanner = redis.Redis(
        **dict(redis_settings, db=3, username="scanner", password="s3cret"), **options, decode_responses=True
    )
    try:
        _load(client, ["db0:%d" % i for i in range(500)])
        expected = {"db3:%d:é" % i for i in range(3000)}
        _load(other, sorted(expected))
        assert set(_run_scan(speedups, scanner, _arguments(count=100))) == expected
        (connection,) = _pooled(scanner)
        assert connection.protocol in (protocol, str(protocol)) if _HAS_PROTOCOL else protocol == 2
        assert scanner.acl_whoami() == "scanner" and scanner.dbsize() == 3000
    finally:
        scanner.close()
        other.flushdb()
        other.close()
        client.acl_deluser("scanner")


@needs_resp3
def test_resp3_push_messages_between_replies(
    speedups: Any, redis_settings: dict, client: redis.Redis, monkeypatch: Any
) -> None:
    _load(client, ["t:%d" % i for i in range(3000)])
    skipped = []
    monkeypatch.setattr(
        _scan,
        "_skip_frame",
        lambda data, position, real=_scan._skip_frame: (
            skipped.append(data[position : position + 1]) or real(data, position)
        ),
    )
    scanner = redis.Redis(**redis_settings, protocol=3, decode_responses=True)
    try:
        connection = get_pool_connection(scanner.connection_pool, "CLIENT")
        connection.send_command("CLIENT", "TRACKING", "ON", "BCAST")
        assert connection.read_response() in ("OK", b"OK")
        scanner.connection_pool.release(connection)
        seen = []
        generator = _run_scan(speedups, scanner, _arguments(count=100))
        for key in generator:
            seen.append(key)
            if len(seen) % 250 == 1:
                client.set("t:%d" % (len(seen) // 250), "changed")  # an invalidation push each time
        assert set(seen) == {"t:%d" % i for i in range(3000)}
        assert b">" in skipped  # invalidation pushes came between the replies, and were skipped
    finally:
        scanner.close()


def test_error_reply_leaves_the_connection_clean(speedups: Any, client: redis.Redis) -> None:
    client.set("x", "1")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        list(_run_scan(speedups, client, ["COUNT", 0]))
    (connection,) = _pooled(client)
    assert connection._sock is not None
    assert client.get("x") == "1"


@pytest.mark.parametrize("count", [10, 1000, 100000])
def test_abandoned_generator_is_drained(speedups: Any, client: redis.Redis, count: int) -> None:
    _load(client, ["d:%d" % i for i in range(60000)])
    client.get("d:1")
    (connection,) = _pooled(client)
    sock = connection._sock
    for take in (0, 1, 5, min(count, 30000), min(count + 3, 30003)):
        generator = _run_scan(speedups, client, _arguments(count=count))
        keys = [next(generator) for _ in range(take)]
        assert all(key.startswith("d:") for key in keys)
        generator.close()
        assert _pooled(client) == [connection]
        assert connection._sock is sock  # drained, not reconnected
        assert client.echo("in sync") == "in sync" and client.get("d:7") == "1"


#: the name of the scanning client of the kill tests (CLIENT LIST finds its connection by it)
SCANNER_NAME = "limpyd-test-scanner"


def _scanning_client_id(client: redis.Redis) -> int:
    """Return the id of the scanner's connection running SCAN (not any idle connection whose last
    command was a SCAN)."""
    for entry in client.client_list():
        if entry["cmd"] == "scan" and entry.get("name") == SCANNER_NAME:
            return int(entry["id"])
    raise AssertionError("no client is scanning")


@pytest.mark.parametrize("count", [10, 1000])
def test_connection_killed_mid_scan(
    speedups: Any, redis_settings: dict, client: redis.Redis, count: int
) -> None:
    _load(client, ["kill:%d" % i for i in range(20000)])
    scanner = redis.Redis(**redis_settings, decode_responses=True, client_name=SCANNER_NAME)
    try:
        generator = _run_scan(speedups, scanner, _arguments(count=count))
        next(generator)
        client.client_kill_filter(_id=_scanning_client_id(client))
        with pytest.raises(redis.ConnectionError, match="SCAN"):
            list(generator)
        (connection,) = _pooled(scanner)
        assert connection._sock is None  # disconnected: redis-py reconnects it on next use
        assert scanner.get("kill:3") == "1"
        assert len(set(_run_scan(speedups, scanner, _arguments(count=count)))) == 20000
    finally:
        scanner.close()


def test_non_utf8_key_raises_and_disconnects(speedups: Any, client: redis.Redis) -> None:
    client.set(b"bad:\xff", "1")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        list(_run_scan(speedups, client, _arguments(count=10)))
    (connection,) = _pooled(client)
    assert connection._sock is None
    assert client.dbsize() == 1


def test_other_encodings_use_redis_py_parser(redis_settings: dict, client: redis.Redis) -> None:
    client.set(b"caf\xe9", "1")
    latin = redis.Redis(**redis_settings, decode_responses=True, encoding="latin-1")
    try:
        connection = get_pool_connection(latin.connection_pool, "SCAN")
        assert _scan._socket_of(connection) is None
        latin.connection_pool.release(connection)
        assert list(scan_pool(latin.connection_pool, ["COUNT", 10])) == ["café"]
        generator = scan_pool(latin.connection_pool, ["COUNT", 10])
        assert next(generator) == "café"
        generator.close()
        assert latin.echo("ok") == "ok"
    finally:
        latin.close()


def test_the_database_scans_with_the_raw_reader(database: Any, client: redis.Redis, monkeypatch: Any) -> None:
    _load(client, ["r:%d" % i for i in range(5000)])
    calls = []
    original = _scan.scan_pool

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr("limpyd.database.scan_pool", spy)
    sockets = []
    monkeypatch.setattr(
        _scan,
        "_socket_of",
        lambda connection, real=_scan._socket_of: sockets.append(real(connection)) or sockets[-1],
    )
    assert len(set(database.scan_keys(count=500))) == 5000
    assert len(calls) == 1 and len(sockets) == 1 and isinstance(sockets[0], socket.socket)


# ---------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Start a redis-server speaking TLS only on a free local port (needs openssl and a TLS build)."""
    binary = os.environ.get("LIMPYD_TEST_REDIS_SERVER") or shutil.which("redis-server")
    openssl = shutil.which("openssl")
    if not binary or not openssl:
        pytest.skip("needs redis-server and openssl")
    directory = Path(str(tmp_path_factory.mktemp("redis-tls")))
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(directory / "key.pem"),
            "-out",
            str(directory / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    log_path = directory / "redis.log"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(directory / "cert.pem"),
            "--tls-key-file",
            str(directory / "key.pem"),
            "--tls-ca-cert-file",
            str(directory / "cert.pem"),
            "--tls-auth-clients",
            "no",
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
    settings = {"host": "127.0.0.1", "port": port, "ssl": True, "ssl_cert_reqs": "none"}
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(**settings).ping():
                    break
            except redis.ConnectionError:
                pass
            if process.poll() is not None:
                log = log_path.read_text() if log_path.exists() else ""
                if "TLS" in log or "tls" in log:
                    pytest.skip("this redis-server has no TLS support: %s" % log[-300:])
                pytest.fail("the TLS redis-server did not start:\n%s" % log[-2000:])
            if time.monotonic() > deadline:
                pytest.fail("the TLS redis-server did not answer in 10s")
            time.sleep(0.05)
        yield settings
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("count", [10, 1000, 100000])
def test_tls(speedups: Any, tls_server: dict, count: int) -> None:
    tls = redis.Redis(**tls_server, decode_responses=True)
    try:
        tls.flushall()
        _load(tls, ["tls:%d:é" % i for i in range(30000)])
        expected = set(tls.scan_iter(count=count))
        keys = list(_run_scan(speedups, tls, _arguments(count=count)))
        assert set(keys) == expected and len(expected) == 30000 and len(keys) < 33000
        generator = _run_scan(speedups, tls, _arguments(count=count))
        next(generator)
        generator.close()
        (connection,) = _pooled(tls)
        assert connection._sock is not None and tls.echo("tls") == "tls"
    finally:
        tls.close()
