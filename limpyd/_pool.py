"""Take connections from a redis-py pool the way the installed redis-py version wants."""

from __future__ import annotations

import inspect
import os
import weakref
from typing import Any, Dict, List, Tuple

import redis

_NEEDS_COMMAND_NAME: Dict[type, bool] = {}

#: the idle connection each pool keeps aside for ``send_on_pool`` (with the pid that opened it):
#: taking a connection from a redis-py pool and giving it back costs about as much CPU as the
#: round trip itself (a lock, a readiness poll of the socket, observability hooks)
_SPARES: "weakref.WeakKeyDictionary[Any, List[Tuple[int, Any]]]" = weakref.WeakKeyDictionary()

#: a pool smaller than this never has a connection kept aside: it could starve the other callers
MIN_POOL_SIZE_FOR_A_SPARE = 16


def get_pool_connection(pool: Any, command_name: str) -> Any:
    """Take a connection from ``pool``: redis-py < 5.3 needs a command name, later ones warn on it."""
    needs_name = _NEEDS_COMMAND_NAME.get(type(pool))
    if needs_name is None:
        try:
            parameter = inspect.signature(pool.get_connection).parameters.get("command_name")
        except (TypeError, ValueError):
            parameter = None
        needs_name = parameter is not None and parameter.default is inspect.Parameter.empty
        _NEEDS_COMMAND_NAME[type(pool)] = needs_name
    return pool.get_connection(command_name) if needs_name else pool.get_connection()


def send_on_pool(client: Any, *args: Any) -> Any:
    """Send the command ``args`` on a connection of ``client``'s pool and return its reply.

    The same connection handling, retries and errors as ``client.execute_command``, without
    redis-py's per-command layers (argument checks, observability, reply callbacks): for the
    commands limpyd sends most, whose reply it parses itself. A client whose ``execute_command``
    was replaced, or one holding a single connection, gets the plain call, so nothing is bypassed.
    """
    if client.connection is not None or "execute_command" in client.__dict__:
        return client.execute_command(*args)
    pool = client.connection_pool
    connection = take_connection(pool, args[0])
    try:
        packed = connection.pack_command(*args)

        def send() -> Any:
            connection.send_packed_command(packed)
            return connection.read_response()

        retry = getattr(connection, "retry", None)
        reply = (
            send() if retry is None else retry.call_with_retry(send, lambda error: connection.disconnect())
        )
    except BaseException:
        pool.release(connection)  # redis-py disconnected it if its reply was not read whole
        raise
    keep_spare(pool, connection)
    return reply


def take_connection(pool: Any, command_name: str) -> Any:
    """Take the connection ``pool`` keeps aside, else one of the pool (give it back with
    :func:`keep_spare` once its replies were read whole, else with ``pool.release``)."""
    return take_spare(pool) or get_pool_connection(pool, command_name)


def direct(client: Any, method: str) -> bool:
    """Return whether the redis-py method ``method`` of ``client`` may be skipped for
    :func:`read_direct`: a plain ``redis.Redis`` (no subclass, pipeline or cluster client) whose
    method, ``execute_command`` and connection handling are redis-py's own."""
    return (
        type(client) is redis.Redis
        and client.connection is None
        and method not in client.__dict__
        and "execute_command" not in client.__dict__
    )


def read_direct(client: Any, *args: Any) -> Any:
    """Return the reply of the command ``args`` as ``client.execute_command(*args)`` would (its
    reply callback applied), sent by :func:`send_on_pool`; for a client :func:`direct` accepts."""
    reply = send_on_pool(client, *args)
    callback = client.response_callbacks.get(args[0])
    return reply if callback is None else callback(reply)


def take_spare(pool: Any) -> Any:
    """Return the connection ``pool`` keeps aside for this process, or None."""
    spares = _SPARES.get(pool)
    while spares:
        try:
            pid, connection = spares.pop()
        except IndexError:  # another thread took it
            return None
        if pid == os.getpid():  # a forked child never uses its parent's socket
            _check_ready(connection)
            return connection
    return None


def _check_ready(connection: Any) -> None:
    """Disconnect ``connection`` if its socket has something to read before any command: the
    server closed it (``CLIENT KILL``, a timeout, a restart) or sent something unasked. What a
    redis-py pool checks when it hands a connection out: the next send connects again, instead
    of failing where redis-py (before 6, without retries) would have used a fresh connection."""
    try:
        if connection.can_read():
            connection.disconnect()
    except (redis.ConnectionError, OSError):
        connection.disconnect()


def keep_spare(pool: Any, connection: Any) -> None:
    """Keep ``connection`` (its reply read whole) aside for the next call, or give it back."""
    if getattr(pool, "max_connections", 0) >= MIN_POOL_SIZE_FOR_A_SPARE:
        spares = _SPARES.get(pool)
        if spares is None:
            spares = _SPARES.setdefault(pool, [])
        if not spares:
            spares.append((os.getpid(), connection))
            return
    pool.release(connection)
