"""Recovery after an error whose outcome is unknown (a lost connection, a timeout).

When a round trip is lost, the server may or may not have run its commands. The default write
path then never guesses: it releases what it holds and makes the index entries it touched match
what is actually stored, reading them again on a fresh pooled connection (see
docs/failure-semantics.rst). These helpers are shared by the field, model and collection code.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, TypeVar

import redis

__all__ = [
    "UNKNOWN_OUTCOME",
    "is_unknown_outcome",
    "real_client",
    "register_temporary_key",
    "temporary_keys",
    "with_retries",
]

#: errors after which the commands sent may or may not have run
UNKNOWN_OUTCOME = (redis.ConnectionError, redis.TimeoutError)

#: attempts of a recovery step, each on a fresh pooled connection, and the pause between them
#: (growing: 10 ms, 20 ms, ... 0.45 s in all): a connection lost again during the recovery
#: itself, several times in a row, must not leave the operation half done
RECOVERY_ATTEMPTS = 10
RECOVERY_PAUSE = 0.01

T = TypeVar("T")


def is_unknown_outcome(error: BaseException) -> bool:
    """Return whether ``error`` leaves the outcome of the commands sent unknown."""
    return isinstance(error, UNKNOWN_OUTCOME)


def real_client(client: Any) -> Any:
    """Return the client behind a write-behind batch view (or ``client`` itself)."""
    return getattr(client, "_limpyd_real", client)


def with_retries(step: Callable[[], T]) -> T:
    """Run ``step``, again (up to ``RECOVERY_ATTEMPTS`` times) while it fails on a lost connection.

    redis-py drops a connection that failed, so each attempt runs on a fresh one; the last
    failure propagates.
    """
    for attempt in range(RECOVERY_ATTEMPTS):
        try:
            return step()
        except UNKNOWN_OUTCOME:
            if attempt == RECOVERY_ATTEMPTS - 1:
                raise
            time.sleep(RECOVERY_PAUSE * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


_local = threading.local()


def register_temporary_key(key: str) -> None:
    """Remember ``key`` (a temporary key just named) for the evaluation running in this thread."""
    keys = getattr(_local, "temporary_keys", None)
    if keys is not None:
        keys.append(key)


class temporary_keys:  # noqa: N801 - a context manager
    """Delete the temporary keys named inside the block if it fails on a lost connection.

    A collection evaluation deletes its temporary keys itself, with its last commands; when the
    round trip carrying them is lost they would stay forever (they have no TTL), so every
    temporary key named during the evaluation is deleted again, on a fresh connection.
    """

    __slots__ = ("database", "outer")

    def __init__(self, database: Any) -> None:
        self.database = database

    def __enter__(self) -> None:
        self.outer = getattr(_local, "temporary_keys", None)
        if self.outer is None:
            _local.temporary_keys = []

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.outer is not None:
            return  # the outermost evaluation cleans
        keys, _local.temporary_keys = _local.temporary_keys, None
        if keys and exc is not None and is_unknown_outcome(exc):
            client = real_client(self.database.connection)
            try:
                with_retries(lambda: client.delete(*dict.fromkeys(keys)))
            except UNKNOWN_OUTCOME:
                pass  # unreachable server: the evaluation's own error propagates
