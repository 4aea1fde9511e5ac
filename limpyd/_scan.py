"""``SCAN`` loops read straight from a pooled connection's socket, one request always in flight.

redis-py parses a whole reply before it hands it over, so a loop built on it sends the next
``SCAN`` only once all the keys of the previous reply were parsed, and Redis idles meanwhile.
Here the cursor is read from the first bytes of a reply (:func:`limpyd.speedups.parse_scan_header`),
the next ``SCAN`` is sent at once, and the keys are decoded
(:func:`limpyd.speedups.decode_scan_keys`) while Redis computes the next batch. Both readers track
byte offsets in the received bytes, so the start of the next reply, when it arrives in the same
``recv`` as the end of the current one, is kept for the next header.

redis-py still owns the connection: it connected it (TCP, unix socket or TLS), authenticated,
selected the database and negotiated the protocol (RESP2 or RESP3: ``SCAN`` replies are the same
bytes in both). The scan only borrows the connected socket between two of redis-py's commands and
gives it back either clean (every reply it asked for was read to the last byte) or disconnected:
an abandoned generator drains the replies still due (at most the end of the current one and the
next one), any failure disconnects the connection, and redis-py reconnects it on its next use.
Connections that do not expose a plain socket, or decode with something else than strict UTF-8,
use redis-py's own reply parser instead, with the same one-request-ahead loop.

The field scans (``SSCAN``, ``HSCAN``, ``ZSCAN``: same reply shape, a cursor then a flat array of
bulk strings) run the same loop with their command head (``("SSCAN", key)``), ``HSCAN`` and
``ZSCAN`` yielding ``(field, value)`` and ``(member, score)`` pairs as redis-py's iterators do.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import redis

from limpyd._pool import get_pool_connection
from limpyd.speedups import decode_scan_batch, decode_scan_keys, parse_scan_header

__all__ = ["scan_pool"]

#: bytes asked for by each ``recv``: a ``SCAN COUNT 1000`` reply of 20-character keys is ~26 KB
RECEIVE_SIZE = 65536

#: RESP3 frames that may come before a reply without being it: push messages (client tracking,
#: maintenance notifications) and attributes
_OUT_OF_BAND = (ord(">"), ord("|"))

HeaderReader = Callable[[bytes, int], Any]
KeysDecoder = Callable[[bytes, int, int], Tuple[List[str], int]]

#: the command head of a key scan
SCAN_HEAD = ("SCAN",)


def _packing_error(connection: Any, head: Sequence[Any], arguments: List[Any]) -> Optional[Exception]:
    """Return the error redis-py's own packer raises for this command, or None if it accepts it.

    redis-py packs with hiredis where it can (6.x, 7.x), whose message differs from the
    ``Encoder``'s: the user sees the very error ``sscan_iter`` would have raised.
    """
    try:
        connection.pack_command(*head, 0, *arguments)
    except Exception as error:
        return error
    return None


def pack_scan_arguments(encoder: Any, arguments: List[Any]) -> bytes:
    """Return ``arguments`` (what follows the cursor) as RESP bulk strings, encoded by ``encoder``."""
    packed = []
    for argument in arguments:
        value = encoder.encode(argument)
        packed.append(b"$%d\r\n%b\r\n" % (len(value), value))
    return b"".join(packed)


def _socket_of(connection: Any) -> Optional[Any]:
    """Return the connected socket of ``connection`` if the raw reader can use it, else ``None``."""
    sock = getattr(connection, "_sock", None)
    encoder = getattr(connection, "encoder", None)
    if sock is None or encoder is None or not hasattr(sock, "recv") or not hasattr(sock, "sendall"):
        return None  # not a plain redis-py Connection (a cache proxy, a test double, ...)
    encoding = str(getattr(encoder, "encoding", "")).lower().replace("-", "").replace("_", "")
    if encoding != "utf8" or getattr(encoder, "encoding_errors", "strict") != "strict":
        return None  # keys must be decoded the way the client decodes them
    return sock


def _response_error(connection: Any, message: str) -> Exception:
    """Return the redis-py exception for the error reply ``message`` (as ``read_response`` would)."""
    parse_error = getattr(getattr(connection, "_parser", None), "parse_error", None)
    if parse_error is not None:
        return parse_error(message)
    return redis.ResponseError(message)


def _skip_frame(data: bytes, position: int) -> int:
    """Return the offset after the RESP value at ``data[position]``, or -1 if it is incomplete."""
    end = len(data)
    if position >= end:
        return -1
    newline = data.find(b"\r\n", position)
    if newline < 0:
        return -1
    kind = data[position]
    line = data[position + 1 : newline]
    position = newline + 2
    if kind in b"$=!":  # bulk string, verbatim string, bulk error
        length = int(line)
        if length < 0:
            return position
        position += length + 2
        return position if position <= end else -1
    if kind in b"*~>%|":  # array, set, push, map, attribute
        items = int(line)
        if kind in b"%|":
            items *= 2
        for _ in range(max(items, 0)):
            position = _skip_frame(data, position)
            if position < 0:
                return -1
        return position
    if kind in b"+-:_,#(":  # one-line values
        return position
    raise ValueError(
        "Invalid RESP frame type %r at byte %d while skipping an out-of-band message before a SCAN "
        "reply: the connection is out of sync with Redis and is dropped." % (bytes([kind]), position)
    )


def scan_pool(
    pool: Any,
    arguments: List[Any],
    parse_header: HeaderReader = parse_scan_header,
    decode_keys: KeysDecoder = decode_scan_keys,
    head: Sequence[Any] = SCAN_HEAD,
    pairs: bool = False,
    cast: Optional[Callable[[str], Any]] = None,
) -> Iterator[Any]:
    """Yield the items of a ``SCAN`` loop (``*head cursor *arguments``) run on a connection of ``pool``.

    The connection is taken at the first ``next()`` and given back to ``pool`` when the loop
    ends, fails or is abandoned, never with unread bytes: the replies still due are drained, or
    the connection is disconnected. A socket failure raises ``redis.ConnectionError`` (or
    ``redis.TimeoutError``), an error reply the exception redis-py raises for it.
    ``parse_header`` and ``decode_keys`` are the RESP readers to use (the dispatched speedups).

    ``head`` is the command and what comes before the cursor: ``("SCAN",)`` (the default), or
    ``("SSCAN", key)``, ``("HSCAN", key)``, ``("ZSCAN", key)``. With ``pairs`` the items are
    yielded two by two as tuples ``(first, second)``, ``second`` passed through ``cast`` if given
    (``HSCAN``: ``(field, value)``; ``ZSCAN`` with ``cast=float``: ``(member, score)``).
    """
    name = str(head[0])
    connection = get_pool_connection(pool, name)
    clean = False
    data = b""
    position = 0
    remaining = 0  # keys of the current reply not read yet
    in_flight = False  # a SCAN was sent whose reply header was not read yet
    sock = None
    try:
        check_health = getattr(connection, "check_health", None)
        if check_health is not None:
            check_health()  # the PING redis-py sends itself after health_check_interval
        sock = _socket_of(connection)
        if sock is None:
            yield from _scan_with_parser(connection, head, arguments, pairs, cast)
            clean = True
            return
        recv = sock.recv
        sendall = sock.sendall
        try:
            tail = pack_scan_arguments(connection.encoder, arguments)
            prefix = b"*%d\r\n%b" % (
                len(head) + len(arguments) + 1,
                pack_scan_arguments(connection.encoder, list(head)),
            )
        except Exception as refused:  # an argument redis-py cannot encode: nothing was sent
            clean = True
            raise _packing_error(connection, head, arguments) or refused
        half = None  # with pairs: the first item of a pair whose second one is not decoded yet
        sendall(prefix + b"$1\r\n0\r\n" + tail)
        in_flight = True
        while True:
            (cursor, remaining, position), data = _read_header(recv, data, position, parse_header, name)
            in_flight = False
            if cursor is None:  # an error reply: nothing else is due on the connection
                clean = position == len(data)
                raise _response_error(connection, remaining)
            last = cursor == b"0"
            if not last:
                sendall(b"%b$%d\r\n%b\r\n%b" % (prefix, len(cursor), cursor, tail))
                in_flight = True
            while remaining:
                keys, position = decode_keys(data, position, remaining)
                if keys:
                    remaining -= len(keys)
                    if not pairs:
                        for key in keys:  # faster than ``yield from keys`` on CPython 3.11
                            yield key
                    else:
                        if half is not None:
                            keys.insert(0, half)
                        half = keys.pop() if len(keys) % 2 else None
                        items = iter(keys)
                        for pair in zip(items, items if cast is None else map(cast, items)):
                            yield pair
                if remaining:
                    data = _receive(recv, data, position, name)
                    position = 0
            if last:
                clean = position == len(data)
                return
    except GeneratorExit:  # abandoned: read what is still due, so the connection can be reused
        if sock is None:
            clean = True  # _scan_with_parser read its reply in flight, or disconnected
        else:
            try:
                clean = _drain(recv, data, position, remaining, in_flight, parse_header, decode_keys)
            except Exception:  # a broken connection is dropped below, not reused
                clean = False
        raise
    except socket.timeout as exc:  # before OSError: it is one
        raise redis.TimeoutError("Timeout reading from %s during %s" % (_describe(connection), name)) from exc
    except OSError as exc:
        raise redis.ConnectionError(
            "Error while reading from %s during %s: %s" % (_describe(connection), name, exc)
        ) from exc
    finally:
        if not clean:
            connection.disconnect()
        pool.release(connection)


def _describe(connection: Any) -> str:
    """Return where ``connection`` points to, for error messages."""
    describe = getattr(connection, "_host_error", None)
    if describe is not None:
        try:
            return str(describe())
        except Exception:  # only for a message
            pass
    return repr(connection)


def _read_header(
    recv: Callable[[int], bytes],
    data: bytes,
    position: int,
    parse_header: HeaderReader,
    name: str = "SCAN",
) -> Tuple[Any, bytes]:
    """Return the next reply's header and the buffer it was read from, receiving bytes as needed.

    RESP3 push and attribute frames met before the header are skipped.
    """
    while True:
        if position < len(data):
            if data[position] in _OUT_OF_BAND:
                skipped = _skip_frame(data, position)
                if skipped >= 0:
                    position = skipped
                    continue
            else:
                header = parse_header(data, position)
                if header is not None:
                    return header, data
        data = _receive(recv, data, position, name)
        position = 0


def _receive(recv: Callable[[int], bytes], data: bytes, position: int, name: str = "SCAN") -> bytes:
    """Return the bytes of ``data`` not read yet followed by the next bytes from the socket."""
    chunk = recv(RECEIVE_SIZE)
    if not chunk:
        raise redis.ConnectionError("Connection closed by server during %s." % name)
    if position < len(data):
        return data[position:] + chunk
    return chunk


def _drain(
    recv: Callable[[int], bytes],
    data: bytes,
    position: int,
    remaining: int,
    in_flight: bool,
    parse_header: HeaderReader,
    decode_keys: KeysDecoder,
) -> bool:
    """Read and drop the keys still due and the reply in flight; return whether nothing else is left."""
    while True:
        while remaining:
            keys, position = decode_keys(data, position, remaining)
            remaining -= len(keys)
            if remaining:
                data = _receive(recv, data, position)
                position = 0
        if not in_flight:
            return position == len(data)
        (cursor, remaining, position), data = _read_header(recv, data, position, parse_header)
        in_flight = False
        if cursor is None:
            remaining = 0


def _scan_with_parser(
    connection: Any,
    head: Sequence[Any],
    arguments: List[Any],
    pairs: bool = False,
    cast: Optional[Callable[[str], Any]] = None,
) -> Iterator[Any]:
    """Yield the items of the ``SCAN`` loop through redis-py's reply parser, one request ahead.

    Used for connections the raw reader cannot use. Leaves the connection clean when it ends or
    is abandoned (the reply in flight is read), and raises when it cannot. ``head``, ``pairs``
    and ``cast`` as for :func:`scan_pool`.
    """
    pending = False
    try:
        connection.send_command(*head, 0, *arguments)
        pending = True
        while True:
            pending = False  # read_response consumes the reply, or disconnects on failure
            cursor, keys = decode_scan_batch(connection.read_response())
            if pairs:
                items = iter(keys)
                keys = list(zip(items, items if cast is None else map(cast, items)))
            if not cursor:
                yield from keys
                return
            connection.send_command(*head, cursor, *arguments)
            pending = True
            yield from keys
    finally:
        if pending:
            try:
                connection.read_response()
            except Exception:  # a broken connection must not go back to the pool as is
                connection.disconnect()
