"""Take connections from a redis-py pool the way the installed redis-py version wants."""

from __future__ import annotations

import inspect
from typing import Any, Dict

_NEEDS_COMMAND_NAME: Dict[type, bool] = {}


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
    connection = get_pool_connection(pool, args[0])
    try:
        packed = connection.pack_command(*args)

        def send() -> Any:
            connection.send_packed_command(packed)
            return connection.read_response()

        retry = getattr(connection, "retry", None)
        if retry is None:
            return send()
        return retry.call_with_retry(send, lambda error: connection.disconnect())
    finally:
        pool.release(connection)
