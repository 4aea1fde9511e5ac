"""Recovery after an error whose outcome is unknown (a lost connection, a timeout).

When a round trip is lost, the server may or may not have run its commands. The default write
path then never guesses: it releases what it holds and makes the index entries it touched match
what is actually stored, reading them again on a fresh pooled connection (see
docs/failure-semantics.md). These helpers are shared by the field, model and collection code.
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

import redis

__all__ = ["UNKNOWN_OUTCOME", "is_unknown_outcome", "real_client", "with_retries"]

#: errors after which the commands sent may or may not have run
UNKNOWN_OUTCOME = (redis.ConnectionError, redis.TimeoutError)

#: attempts of a recovery step, each on a fresh pooled connection, and the pause between them
RECOVERY_ATTEMPTS = 4
RECOVERY_PAUSE = 0.05

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
