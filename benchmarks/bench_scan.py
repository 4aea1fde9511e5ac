"""Time full-database key scans; run as a worker process so each speedups mode gets its own.

    python -m benchmarks.bench_scan --socket PATH [--repeat R] [--c-client BINARY] [--rows ...]
                                    [--members N]

prints one JSON object on stdout: ``{"implementation": ..., "keys": N, "members": M, "rows": {row:
best seconds}, "notes": {row: why it did not run}}``. The rows are timed interleaved, round after
round, in the same process: every ratio compares measurements taken side by side. The reference is
a minimal C client (``benchmarks/_scan_client.py``, compiled at run time) sending ``SCAN cursor COUNT
1000`` one after another. The field rows scan a set field of ``M`` members (created in db 1 of the
server, and deleted at the end) with ``SetField.sscan`` and with redis-py's ``sscan_iter`` on the
same key. Every row is checked: it must find every key of the database (every member of the set),
or the worker fails. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

import redis

import limpyd.speedups
from benchmarks._scan_client import SOURCE as C_SOURCE
from limpyd.database import RedisDatabase
from limpyd.fields import SetField
from limpyd.model import RedisModel

C_ROW = "C client, SCAN COUNT 1000 (reference)"
BARE_ROW = "redis-py SCAN loop, COUNT 1000"
SCAN_KEYS_ROW = "scan_keys()"
SCAN_ITER_ROW = "redis-py scan_iter(count=1000)"
DEFAULT_COUNT_ROW = "redis-py SCAN loop, Redis' default COUNT 10 (as 2.1.2)"
FIELD_SSCAN_ROW = "SetField.sscan(count=1000)"
SSCAN_ITER_ROW = "redis-py sscan_iter(count=1000), same key"
ALL_ROWS = [C_ROW, BARE_ROW, SCAN_KEYS_ROW, SCAN_ITER_ROW, DEFAULT_COUNT_ROW, FIELD_SSCAN_ROW, SSCAN_ITER_ROW]
FIELD_ROWS = [FIELD_SSCAN_ROW, SSCAN_ITER_ROW]
#: the database of the server holding the scanned set field (the keys to scan are in db 0)
FIELD_DB = 1


def progress(message: str) -> None:
    """Write one progress line on stderr."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def build_c_client(directory: Optional[str] = None) -> Tuple[Optional[str], str]:
    """Compile the C reference client; return ``(binary path, "")`` or ``(None, why it was not built)``."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        return None, "no C compiler (cc, gcc or clang; or set CC) on this machine"
    directory = directory or tempfile.mkdtemp(prefix="limpyd-bench-cc-")
    source = os.path.join(directory, "scan_client.c")
    with open(source, "w") as handle:
        handle.write(C_SOURCE)
    binary = os.path.join(directory, "scan_client")
    result = subprocess.run([compiler, "-O2", "-o", binary, source], capture_output=True, text=True)
    if result.returncode:
        return None, "%s failed to compile scan_client.c: %s" % (compiler, result.stderr.strip()[-300:])
    return binary, ""


def bare_scan_loop(client: redis.Redis, count: Optional[int] = 1000) -> int:
    """Send ``SCAN cursor COUNT count`` until the cursor is 0; return the number of keys seen.

    ``count=None`` sends no ``COUNT``: Redis' default of 10, what redis-limpyd 2.1.2 sends.
    """
    extra = ("COUNT", count) if count else ()
    cursor = 0
    seen = 0
    while True:
        cursor, keys = client.execute_command("SCAN", cursor, *extra)
        seen += len(keys)
        cursor = int(cursor)
        if not cursor:
            return seen


def distinct(iterator) -> int:
    """Iterate ``iterator`` to the end; return how many distinct items it gave."""
    return len(set(iterator))


def consume(iterator) -> int:
    """Iterate ``iterator`` to the end; return how many items it gave (what the C client does)."""
    total = 0
    for _ in iterator:
        total += 1
    return total


def c_scan(binary: str, socket_path: str) -> int:
    """Run the C client once; return the keys it counted (its own timing is read by the caller)."""
    output = subprocess.run([binary, socket_path, "1000", "1"], capture_output=True, text=True, check=True)
    keys, seconds = output.stdout.split()
    c_scan.last_seconds = float(seconds)  # type: ignore[attr-defined]
    return int(keys)


def load_set(client: redis.Redis, key: str, members: int, chunk: int = 50_000) -> None:
    """Add ``members`` members (``member:<i>``) to the set ``key`` server-side (Lua, in chunks)."""
    script = client.register_script(
        "for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do redis.call('SADD', KEYS[1], 'member:' .. i) end"
    )
    done = 0
    while done < members:
        upto = min(done + chunk, members)
        script(keys=[key], args=[done, upto - 1])
        done = upto


def make_set_field(socket_path: str, members: int) -> Tuple[object, Callable[[], None]]:
    """Return a ``SetField`` of ``members`` members in db ``FIELD_DB``, and the function deleting its keys."""
    field_database = RedisDatabase(unix_socket_path=socket_path, db=FIELD_DB)

    class BenchScanSet(RedisModel):
        database = field_database
        namespace = "bench_scan"
        members = SetField()

    field = BenchScanSet().members
    client = field_database.connection
    client.delete(field.key)
    load_set(client, field.key, members)

    def delete() -> None:
        keys = list(client.scan_iter(match="bench_scan:*", count=1000))
        if keys:
            client.delete(*keys)

    return field, delete


def busy_cores() -> Optional[Tuple[float, float]]:
    """Return the (busy, total) CPU time of the machine so far, in clock ticks, or ``None`` without /proc."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:8]]
    except (OSError, ValueError):
        return None
    return float(sum(fields) - fields[3] - fields[4]), float(sum(fields))  # idle, iowait


def run(
    socket_path: str, repeat: int, c_client: Optional[str], rows: List[str], members: int = 1_000_000
) -> Dict[str, object]:
    """Return the best time of each row over ``repeat`` interleaved rounds, with the notes."""
    database = RedisDatabase(unix_socket_path=socket_path)
    client = database.connection
    expected = client.dbsize()
    notes: Dict[str, str] = {}
    if C_ROW in rows and not c_client:
        c_client, why = build_c_client()
        if not c_client:
            notes[C_ROW] = why
    if not any(name in FIELD_ROWS for name in rows):
        return _run(database, None, socket_path, repeat, c_client, rows, expected, members, notes)
    progress("scan [%s]: loading a set field of %d members" % (limpyd.speedups.IMPLEMENTATION, members))
    field, delete_field = make_set_field(socket_path, members)
    try:
        return _run(database, field, socket_path, repeat, c_client, rows, expected, members, notes)
    finally:
        delete_field()


def _run(
    database: RedisDatabase,
    field: object,
    socket_path: str,
    repeat: int,
    c_client: Optional[str],
    rows: List[str],
    expected: int,
    members: int,
    notes: Dict[str, str],
) -> Dict[str, object]:
    client = database.connection
    field_client = field.database.connection if field is not None else None  # type: ignore[attr-defined]
    field_key = field.key if field is not None else None  # type: ignore[attr-defined]
    candidates: Dict[str, Callable[[], int]] = {  # row -> run, returning the number of keys seen
        C_ROW: lambda: c_scan(c_client, socket_path),
        BARE_ROW: lambda: bare_scan_loop(client),
        SCAN_KEYS_ROW: lambda: consume(database.scan_keys()),
        SCAN_ITER_ROW: lambda: consume(client.scan_iter(count=1000)),
        DEFAULT_COUNT_ROW: lambda: bare_scan_loop(client, count=None),
        FIELD_SSCAN_ROW: lambda: consume(field.sscan(count=1000)),  # type: ignore[attr-defined]
        SSCAN_ITER_ROW: lambda: consume(field_client.sscan_iter(field_key, count=1000)),  # type: ignore[union-attr]
    }
    selected = {name: candidates[name] for name in rows if name not in notes}
    # what each row must find at least (SCAN may return an item twice, never miss one)
    minimum = {name: members if name in FIELD_ROWS else expected for name in selected}
    progress("scan [%s]: warm-up and exact check over %d keys" % (limpyd.speedups.IMPLEMENTATION, expected))
    for name, iterate in (
        (SCAN_KEYS_ROW, database.scan_keys),
        (SCAN_ITER_ROW, lambda: client.scan_iter(count=1000)),
    ):
        if name in selected:
            keys = set(iterate())
            if len(keys) != expected or (expected and not keys >= {client.randomkey() for _ in range(100)}):
                sys.exit(
                    "WRONG RESULT: %s found %d distinct keys, the database holds %d"
                    % (name, len(keys), expected)
                )
    for name, iterate in (
        (FIELD_SSCAN_ROW, lambda: field.sscan(count=1000)),  # type: ignore[attr-defined]
        (SSCAN_ITER_ROW, lambda: field_client.sscan_iter(field_key, count=1000)),  # type: ignore[union-attr]
    ):
        if name in selected:
            found = set(iterate())
            sample = set(field_client.srandmember(field_key, 100))  # type: ignore[union-attr]
            if len(found) != members or not found >= sample or not all(type(item) is str for item in found):
                sys.exit(
                    "WRONG RESULT: %s found %d distinct members, the set holds %d"
                    % (name, len(found), members)
                )
    best = {name: float("inf") for name in selected}
    start = time.perf_counter()
    cores = os.cpu_count() or 1
    for round_number in range(1, repeat + 1):
        before = busy_cores()
        for name, row in selected.items():
            row_start = time.perf_counter()
            found = row()
            elapsed = time.perf_counter() - row_start
            if name == C_ROW:
                elapsed = c_scan.last_seconds  # type: ignore[attr-defined]
            # SCAN may return a key twice while Redis rehashes: counts may exceed the keys, not miss any
            if found < minimum[name]:
                sys.exit("WRONG RESULT: %s saw %d items, there are %d" % (name, found, minimum[name]))
            best[name] = min(best[name], elapsed)
        after = busy_cores()
        load = ""
        if before and after and after[1] > before[1]:
            # the server and this client keep about 1.1 core busy: near all the cores means another
            # process took CPU, and the client's own CPU then slows the server down (the C client
            # uses almost none), so the ratios to the C client grow
            busy = cores * (after[0] - before[0]) / (after[1] - before[1])
            load = ", %.1f of %d cores busy" % (busy, cores)
        progress(
            "scan [%s]: round %d of %d done (%.1fs elapsed%s)"
            % (limpyd.speedups.IMPLEMENTATION, round_number, repeat, time.perf_counter() - start, load)
        )
    return {
        "implementation": limpyd.speedups.IMPLEMENTATION,
        "keys": expected,
        "members": members if any(name in FIELD_ROWS for name in selected) else 0,
        "rows": best,
        "notes": notes,
    }


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_scan", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--socket", required=True, help="unix socket of a redis-server holding the keys to scan"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="interleaved rounds; the best is kept (default 5)"
    )
    parser.add_argument("--c-client", help="the compiled scan_client (default: compile it now)")
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=ALL_ROWS,
        default=ALL_ROWS[:4],
        metavar="ROW",
        help="rows to time, among: %s (default: the first four)" % "; ".join(ALL_ROWS),
    )
    parser.add_argument(
        "--members",
        type=int,
        default=1_000_000,
        help="members of the set field the field rows scan (default 1,000,000)",
    )
    args = parser.parse_args(argv)
    print(json.dumps(run(args.socket, args.repeat, args.c_client, args.rows, args.members)))


if __name__ == "__main__":
    main()
