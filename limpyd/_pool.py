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
