"""Time full-database key scans; run as a worker process so each speedups mode gets its own.

``python -m benchmarks.bench_scan SOCKET REPEAT`` prints a JSON dict ``{row: best seconds}``.
The reference, a bare client loop sending ``SCAN cursor COUNT 1000`` and discarding the replies,
is timed in the same process, interleaved with the candidates, so every ratio compares
measurements taken side by side.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable, Dict, Optional

import redis

import limpyd.speedups
from limpyd.database import RedisDatabase


def bare_scan_loop(client: redis.Redis, count: Optional[int] = 1000) -> None:
    """Send ``SCAN cursor COUNT count`` until the cursor is 0, discarding the replies.

    ``count=None`` sends no ``COUNT``: Redis' default of 10, what redis-limpyd 2.1.2 sends.
    """
    extra = ("COUNT", count) if count else ()
    cursor = 0
    while True:
        cursor, _ = client.execute_command("SCAN", cursor, *extra)
        cursor = int(cursor)
        if not cursor:
            return


def consume(iterator) -> int:
    """Iterate ``iterator`` to the end and return how many items it gave."""
    total = 0
    for _ in iterator:
        total += 1
    return total


def run(socket_path: str, repeat: int) -> Dict[str, float]:
    """Return the best time of each scan row over ``repeat`` interleaved rounds."""
    database = RedisDatabase(unix_socket_path=socket_path)
    client = database.connection
    expected = client.dbsize()
    rows: Dict[str, Callable[[], object]] = {
        "reference: SCAN COUNT 1000 loop": lambda: bare_scan_loop(client),
        "scan_keys()": lambda: consume(database.scan_keys()),
        "scan_keys(count=1000)": lambda: consume(database.scan_keys(count=1000)),
        "redis-py scan_iter(count=1000)": lambda: consume(client.scan_iter(count=1000)),
    }
    found = consume(database.scan_keys())  # warm up: connections, pages of the keyspace
    if found < expected:
        sys.exit("scan_keys() found %d keys of %d" % (found, expected))
    best = {name: float("inf") for name in rows}
    for _ in range(repeat):
        for name, row in rows.items():
            start = time.perf_counter()
            row()
            best[name] = min(best[name], time.perf_counter() - start)
    best["implementation"] = limpyd.speedups.IMPLEMENTATION  # type: ignore[assignment]
    return best


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], int(sys.argv[2]))))
