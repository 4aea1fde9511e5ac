"""Small helpers shared by limpyd and by downstream code (key building, sentinels, caching)."""

from __future__ import annotations

import uuid
from typing import Any, Callable, Optional

from limpyd._recovery import register_temporary_key
from limpyd.speedups import make_key

__all__ = ["make_key", "unique_key", "normalize", "cached_property", "NotProvided"]


def unique_key(connection: Any, prefix: Optional[str] = None) -> str:
    """Return a random key name (uuid4 hex, behind ``prefix`` if given) not used in Redis yet.

    Sends one ``EXISTS`` per try, and tries again on the (unlikely) hit.
    """
    while True:
        key = uuid.uuid4().hex
        if prefix:
            key = make_key(prefix, key)
        if not connection.exists(key):
            register_temporary_key(key)
            return key


def normalize(value: Any) -> Any:
    """Return ``value`` decoded from UTF-8 if it is ``bytes`` (``b''`` too: it is stored as ``''``)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


class cached_property:  # noqa: N801 - the redis-limpyd 2.x name
    """Non-data descriptor computing a value once per instance, then stored in its ``__dict__``."""

    def __init__(self, func: Callable[[Any], Any], name: Optional[str] = None) -> None:
        self.func = func
        self.name = name or func.__name__
        self.__doc__ = func.__doc__

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.func(instance)
        return value


class NotProvided:
    """Sentinel class (the class itself is the value) for "argument not given"."""
