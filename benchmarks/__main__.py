"""Run the limpyd benchmark suite on a private redis-server and print ratios.

    python -m benchmarks [--keys N] [--repeat R] [--json FILE]

Every ratio compares two measurements taken in the same run: the scan rows against a bare
client loop sending ``SCAN cursor COUNT 1000`` (timed interleaved with them, in the same
process), the compiled speedups against the pure-Python twin. Nothing here asserts: targets are
printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

import redis

from benchmarks import bench_scan, bench_speedups
from benchmarks._server import PrivateRedisServer, load_keys

SCAN_TARGET = 1.25  # scan_keys() may take at most this times the bare SCAN COUNT 1000 loop
MAKE_KEY_TARGET = 3.0  # compiled make_key must be at least this times faster than the twin


def _worker(module: str, arguments: List[str], no_extensions: bool) -> Dict[str, object]:
    """Run ``python -m module arguments`` with the compiled speedups or the twin; return its JSON."""
    env = dict(os.environ)
    env.pop("LIMPYD_NO_EXTENSIONS", None)
    if no_extensions:
        env["LIMPYD_NO_EXTENSIONS"] = "1"
    output = subprocess.run(
        [sys.executable, "-m", module, *arguments], env=env, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def _redis_cli_scan(socket_path: str, repeat: int) -> Optional[Dict[str, object]]:
    """Time ``redis-cli --scan`` (with ``--count 1000`` where this redis-cli supports it)."""
    cli = shutil.which("redis-cli")
    if not cli:
        return None
    help_text = subprocess.run([cli, "--help"], capture_output=True, text=True).stdout
    command = [cli, "-s", socket_path, "--scan"]
    label = "redis-cli --scan --count 1000"
    if "--count" in help_text:
        command += ["--count", "1000"]
    else:
        label = "redis-cli --scan (no --count here: COUNT 10)"
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - start)
    return {"label": label, "seconds": best}


def _print_table(title: str, header: List[str], rows: List[List[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    print("\n" + title)
    print("  ".join(str(cell).ljust(width) for cell, width in zip(header, widths)))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmarks; return the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[1])
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys to scan (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per row; the best is kept (default 5)")
    parser.add_argument("--instances", type=int, default=10_000,
                        help="instances created, updated and deleted by the ORM rows (default 10,000)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args(argv)
    results: Dict[str, object] = {"keys": args.keys}

    with PrivateRedisServer() as server:
        client = redis.Redis(decode_responses=True, **server.settings)
        load_keys(client, args.keys)

        scan_rows = []
        per_mode = {}
        for mode, no_extensions in (("cython", False), ("python", True)):
            timings = _worker("benchmarks.bench_scan", [server.socket_path, str(args.repeat)], no_extensions)
            per_mode[mode] = timings
            if timings.pop("implementation") != mode:
                print("warning: the %s worker ran the %s speedups" % (mode, mode == "cython" and "python" or "cython"))
            reference = timings["reference: SCAN COUNT 1000 loop"]
            for name, seconds in timings.items():
                if name.startswith("redis-py") and mode == "python":
                    continue
                scan_rows.append([name, mode, "%.3f" % seconds, "%.2fx" % (seconds / reference)])
        results["scan"] = per_mode

        cli = _redis_cli_scan(server.socket_path, min(args.repeat, 3))
        if cli:
            reference = per_mode["cython"]["reference: SCAN COUNT 1000 loop"]
            scan_rows.append([cli["label"], "-", "%.3f" % cli["seconds"], "%.2fx" % (cli["seconds"] / reference)])
            results["redis_cli"] = cli
        start = time.perf_counter()
        bench_scan.bare_scan_loop(client, count=None)
        default_count = time.perf_counter() - start
        reference = per_mode["cython"]["reference: SCAN COUNT 1000 loop"]
        scan_rows.append(["SCAN loop, Redis' default COUNT 10 (as 2.1.2)", "-", "%.3f" % default_count,
                          "%.2fx" % (default_count / reference)])
        results["scan_default_count_10"] = default_count
        client.flushall()

        orm = {mode: _worker("benchmarks.bench_orm", [server.socket_path, str(args.instances)], no_ext)
               for mode, no_ext in (("cython", False), ("python", True))}
        results["orm"] = orm
        client.flushall()
        collections = {mode: _worker("benchmarks.bench_collection", [server.socket_path, str(args.instances)], no_ext)
                       for mode, no_ext in (("cython", False), ("python", True))}
        results["collections"] = collections

    _print_table(
        "Full scan of %d keys (best of %d; ratio = time / bare SCAN COUNT 1000 loop of the same worker)"
        % (args.keys, args.repeat),
        ["row", "speedups", "seconds", "ratio"],
        scan_rows,
    )

    orm_rows = []
    for mode, result in orm.items():
        for row in result["rows"]:
            ours, plain = row["limpyd"], row["redis-py"]
            orm_rows.append([
                row["operation"], mode,
                "%.0f" % ours["us"], "%.1f" % ours["commands"], "%.1f" % ours["round_trips"],
                "%.0f" % plain["us"], "%.1f" % plain["commands"], "%.1f" % plain["round_trips"],
                "%.2fx" % (ours["us"] / plain["us"]),
                "%d / %d" % (row["upstream_round_trips"], row["upstream_commands"]),
            ])
    _print_table(
        "ORM, per operation, %d instances (limpyd vs plain redis-py sending the same commands one by one)"
        % args.instances,
        ["operation", "speedups", "limpyd us", "cmds", "round trips", "redis-py us", "cmds", "round trips",
         "time ratio", "2.1.2 rt/cmds"],
        orm_rows,
    )

    collection_rows = []
    for mode, result in collections.items():
        for row in result["rows"]:
            ours, plain = row["limpyd"], row["redis-py"]
            collection_rows.append([
                row["operation"], mode, str(row["results"]),
                "%.0f" % ours["us"], "%.1f" % ours["commands"], "%.1f" % ours["round_trips"],
                "%.0f" % plain["us"], "%.1f" % plain["commands"], "%.1f" % plain["round_trips"],
                "%.2fx" % (ours["us"] / plain["us"]),
            ])
    _print_table(
        "Collections over %d instances, per operation (limpyd vs plain redis-py sending the same commands one "
        "by one)" % args.instances,
        ["operation", "speedups", "results", "limpyd us", "cmds", "round trips", "redis-py us", "cmds",
         "round trips", "time ratio"],
        collection_rows,
    )

    speedup_rows = bench_speedups.run()
    results["speedups"] = speedup_rows
    _print_table(
        "Speedups: ns per call, Python twin vs compiled",
        ["function", "python ns", "cython ns", "py/cy"],
        [[row["case"], "%.0f" % row["python_ns"],
          "%.0f" % row["cython_ns"] if row["cython_ns"] else "n/a",
          "%.2fx" % row["ratio"] if row["ratio"] else "n/a"] for row in speedup_rows],
    )

    scan_ratio = per_mode["cython"]["scan_keys()"] / per_mode["cython"]["reference: SCAN COUNT 1000 loop"]
    make_key_ratios = [row["ratio"] for row in speedup_rows if row["ratio"]]
    print("\nTargets:")
    print("  scan_keys() <= %.2fx the bare loop: %.2fx %s"
          % (SCAN_TARGET, scan_ratio, "met" if scan_ratio <= SCAN_TARGET else "NOT MET"))
    if make_key_ratios:
        worst = min(make_key_ratios)
        print("  compiled make_key >= %.1fx the twin: %.2fx (worst case) %s"
              % (MAKE_KEY_TARGET, worst, "met" if worst >= MAKE_KEY_TARGET else "NOT MET"))
    else:
        print("  compiled make_key: the extension is not built (pip install . with a C compiler)")

    limits = {"create": (4, 20), "get+set": (4, 9), "delete": (4, 19)}
    for row in orm["cython"]["rows"]:
        max_round_trips, max_commands = limits[row["operation"]]
        ours = row["limpyd"]
        met = ours["round_trips"] <= max_round_trips and ours["commands"] <= max_commands
        print("  %s: <= %d round trips and <= %d commands: %.1f / %.1f %s"
              % (row["operation"], max_round_trips, max_commands, ours["round_trips"], ours["commands"],
                 "met" if met else "NOT MET"))

    for row in collections["cython"]["rows"]:
        if row["operation"] == "filter 2 fields, .instances()":
            trips = row["limpyd"]["round_trips"]
            print("  filter by two fields then .instances(): <= 2 round trips (2.1.2: 5): %.1f %s"
                  % (trips, "met" if trips <= 2 else "NOT MET"))

    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
        print("\nwrote %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
