"""The reaper: remove due instances of expiring models, without any reader having to meet them.

``reap(models)`` purges what is due, then sleeps until the next deadline (server time), again and
again; ``reap(models, once=True)`` purges once and returns. Several reapers may run at once: each
purge is one script call, so an instance is removed by exactly one of them. A sharded model is
reaped shard by shard (its ``purge_expired``). The ``limpyd reaper`` command runs it (see
docs/atomic-writes.rst).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, List, Optional

from limpyd.utils import make_key

__all__ = ["next_deadline", "reap"]

#: longest sleep between two looks at the deadlines (new deadlines may come before the next one)
MAX_SLEEP = 5.0


def next_deadline(model: Any) -> Optional[float]:
    """Return the seconds until the next deadline of ``model`` (server clock), ``None`` if there is none.

    A sharded model's deadlines are those of its shard classes: the earliest of theirs (one
    ``ZRANGE`` per shard).
    """
    client = model.database.connection
    firsts = []
    for part in getattr(model, "_limpyd_shard_models", None) or (model,):
        first = client.zrange(make_key(part._name, "__deadlines__"), 0, 0, withscores=True)
        if first:
            firsts.append(first[0][1])
    if not firsts:
        return None
    seconds, microseconds = client.time()
    return max(0.0, (min(firsts) - (seconds * 1000 + microseconds // 1000)) / 1000.0)


def reap(
    models: Iterable[Any],
    once: bool = False,
    max_sleep: float = MAX_SLEEP,
    on_purge: Optional[Callable[[Any, int], None]] = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Purge the due instances of the expiring ``models``; return how many were removed.

    Without ``once``, loop until ``should_stop()`` is true (or KeyboardInterrupt), sleeping until
    the next deadline (at most ``max_sleep`` seconds). ``on_purge(model, count)`` is called after
    each purge that removed something.
    """
    expiring: List[Any] = [model for model in models if getattr(model, "_limpyd_expiring", False)]
    total = 0
    while True:
        for model in expiring:
            while True:
                count = model.purge_expired(1000)
                total += count
                if count and on_purge is not None:
                    on_purge(model, count)
                if count < 1000:
                    break
        if once or should_stop():
            return total
        waits = [wait for wait in (next_deadline(model) for model in expiring) if wait is not None]
        pause = min(waits + [max_sleep])
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline:
            if should_stop():
                return total
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
