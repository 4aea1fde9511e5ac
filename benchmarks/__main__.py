"""Run the limpyd benchmark suite on a private redis-server and print the figures.

    python -m benchmarks [--only GROUPS] [--quick] [--json FILE] [--compare BASE.json]
                         [--keys N] [--repeat R] [--instances N]

Groups (``--only scan,speedups``): scan, orm, collections, pipeline, speedups. Each group runs in
worker processes (``python -m benchmarks.bench_*``, see their ``--help``), once with the compiled
speedups and once with the pure-Python twin where that matters. Progress goes to stderr (what
runs, n of N, elapsed), results to stdout. Every ratio compares measurements of the same run:
the scan rows against a minimal C client compiled now (``benchmarks/_scan_client.py``), the ORM
rows against plain redis-py sending the same commands, the compiled speedups against the twin.
Every row is checked for a wrong result: a worker finding one fails, its stderr is shown, and the
suite exits with status 1 after the other groups ran. Nothing here asserts timings: targets are
printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import redis

from benchmarks import bench_scan
from benchmarks._server import PrivateRedisServer, load_keys

GROUPS = ["scan", "orm", "collections", "pipeline", "speedups", "atomic", "cluster", "sharding", "integrity"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: scan_keys() may take at most this times the C client (same worker), per speedups mode
SCAN_TARGETS = {"cython": 1.05, "python": 1.25}
MAKE_KEY_TARGET = 3.0  # compiled make_key must be at least this times faster than the twin
OVERHEAD_TARGET = 1.3  # one-command collection operations: at most this times plain redis-py

_started = time.perf_counter()


def progress(message: str) -> None:
    """Write a progress line on stderr, with the time elapsed since the suite started."""
    sys.stderr.write("[%6.1fs] %s\n" % (time.perf_counter() - _started, message))
    sys.stderr.flush()


class WorkerFailed(Exception):
    """A worker exited with an error (a wrong result, or a crash); its stderr is in the message."""


def run_worker(label: str, module: str, arguments: List[str], no_extensions: bool = False) -> Dict[str, Any]:
    """Run ``python -m module arguments``, relaying its stderr live; return the JSON it printed."""
    env = dict(os.environ)
    env.pop("LIMPYD_NO_EXTENSIONS", None)
    if no_extensions:
        env["LIMPYD_NO_EXTENSIONS"] = "1"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", module, *arguments]
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stderr_lines: List[str] = []

    def relay() -> None:
        for line in process.stderr:  # type: ignore[union-attr]
            stderr_lines.append(line)
            for part in line.rstrip("\n").split("\r"):
                if part.strip():
                    progress("  %s: %s" % (label, part.strip()))

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    stdout = process.stdout.read()  # type: ignore[union-attr]
    process.wait()
    thread.join()
    if process.returncode:
        raise WorkerFailed(
            "%s (%s) exited with status %d; its stderr:\n%s"
            % (label, " ".join(command[1:]), process.returncode, "".join(stderr_lines).strip() or "(empty)")
        )
    try:
        return json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise WorkerFailed(
            "%s printed no JSON result: %r; its stderr:\n%s" % (label, stdout[-500:], "".join(stderr_lines))
        ) from exc


def print_table(title: str, header: List[str], rows: List[List[Any]]) -> None:
    """Print an aligned table on stdout."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    print("\n" + title)
    print("  ".join(str(cell).ljust(width) for cell, width in zip(header, widths)).rstrip())
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    sys.stdout.flush()


def _command_output(command: List[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        return ""


def metadata(args: argparse.Namespace, server_version: str) -> Dict[str, Any]:
    """Return what the figures depend on: versions, commit, arguments, machine."""
    import limpyd
    import limpyd.speedups

    try:
        import hiredis

        hiredis_version: Optional[str] = hiredis.__version__
    except ImportError:
        hiredis_version = None
    commit = _command_output(["git", "rev-parse", "HEAD"])
    dirty = bool(_command_output(["git", "status", "--porcelain", "--untracked-files=no"]))
    try:
        usable_cpus: Optional[int] = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = None
    return {
        "versions": {
            "limpyd": limpyd.__version__,
            "redis-py": redis.__version__,
            "hiredis": hiredis_version,
            "redis-server": server_version,
            "python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "speedups": limpyd.speedups.IMPLEMENTATION,
        },
        "git_commit": commit + ("+dirty" if dirty and commit else ""),
        "arguments": vars(args),
        "argv": sys.argv[1:],
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "machine": platform.machine(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---------------------------------------------------------------------- groups
#
# Each group returns its rows: {"key": group/row/mode, "value": the figure to compare, "unit", ...}


def _modes() -> List[tuple]:
    return [("cython", False), ("python", True)]


def group_scan(
    args: argparse.Namespace, server: PrivateRedisServer, client: redis.Redis, notes: List[str]
) -> List[Dict[str, Any]]:
    progress("scan: loading %d keys" % args.keys)
    client.flushall()
    load_keys(client, args.keys)
    progress("scan: compiling the C reference client (benchmarks/_scan_client.py)")
    c_client, why = bench_scan.build_c_client()
    if why:
        notes.append("C reference not run: %s" % why)
        progress("scan: C reference not run: %s" % why)
    rows, table = [], []
    for index, (mode, no_extensions) in enumerate(_modes(), 1):
        names = [bench_scan.C_ROW, bench_scan.BARE_ROW, bench_scan.SCAN_KEYS_ROW]
        if mode == "cython":
            names.append(bench_scan.SCAN_ITER_ROW)
            if not args.quick:
                names.append(bench_scan.DEFAULT_COUNT_ROW)
        names += bench_scan.FIELD_ROWS  # a set field of as many members as there are keys
        progress(
            "scan: worker %d of 2 (%s speedups), %d rounds of %d rows"
            % (index, mode, args.repeat, len(names))
        )
        arguments = ["--socket", server.socket_path, "--repeat", str(args.repeat), "--rows", *names]
        arguments += ["--members", str(args.keys)]
        if c_client:
            arguments += ["--c-client", c_client]
        result = run_worker("scan[%s]" % mode, "benchmarks.bench_scan", arguments, no_extensions)
        if result["implementation"] != mode:
            notes.append(
                "the %s scan worker ran the %s speedups (is the extension built?)"
                % (mode, result["implementation"])
            )
        timings = result["rows"]
        reference = timings.get(bench_scan.C_ROW)
        for name, seconds in timings.items():
            ratio = seconds / reference if reference else None
            target = ""
            if name in bench_scan.FIELD_ROWS:  # compared with redis-py's sscan_iter on the same set
                redis_py = timings.get(bench_scan.SSCAN_ITER_ROW)
                ratio = None
                if name == bench_scan.FIELD_SSCAN_ROW and redis_py:
                    target = "%.2fx redis-py sscan_iter (%d members)" % (
                        seconds / redis_py,
                        result["members"],
                    )
            if name == bench_scan.SCAN_KEYS_ROW:
                limit = SCAN_TARGETS[mode]
                target = (
                    ("<= %.2fx: %s" % (limit, "met" if ratio <= limit else "NOT MET"))
                    if ratio
                    else "<= %.2fx: no C reference (%s)" % (limit, why)
                )
            rows.append(
                {
                    "key": "scan/%s/%s" % (name, mode),
                    "group": "scan",
                    "row": name,
                    "speedups": mode,
                    "value": seconds,
                    "unit": "s",
                    "ratio_to_c": ratio,
                    **(
                        {"ratio_to_redis_py": seconds / timings[bench_scan.SSCAN_ITER_ROW]}
                        if name == bench_scan.FIELD_SSCAN_ROW and timings.get(bench_scan.SSCAN_ITER_ROW)
                        else {}
                    ),
                }
            )
            table.append([name, mode, "%.3f" % seconds, "%.2fx" % ratio if ratio else "n/a", target])
        for name, why_not in result.get("notes", {}).items():
            table.append([name, mode, "not run", "", why_not])
    if not args.quick:
        cli = _redis_cli_scan(server.socket_path, min(args.repeat, 3))
        if cli:
            rows.append(
                {
                    "key": "scan/%s/-" % cli["label"],
                    "group": "scan",
                    "row": cli["label"],
                    "speedups": "-",
                    "value": cli["seconds"],
                    "unit": "s",
                }
            )
            table.append([cli["label"], "-", "%.3f" % cli["seconds"], "", ""])
    client.flushall()
    print_table(
        "Full scan of %d keys, best of %d rounds (ratio: time / the C client's in the same worker)"
        % (args.keys, args.repeat),
        ["row", "speedups", "seconds", "ratio", "target"],
        table,
    )
    return rows


def _redis_cli_scan(socket_path: str, repeat: int) -> Optional[Dict[str, Any]]:
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


def _overhead_rows(group: str, results: Dict[str, Any], with_results: bool) -> tuple:
    rows, table = [], []
    for mode, result in results.items():
        for row in result["rows"]:
            ours, plain = row["limpyd"], row["redis-py"]
            ratio = ours["us"] / plain["us"]
            rows.append(
                {
                    "key": "%s/%s/%s" % (group, row["operation"], mode),
                    "group": group,
                    "row": row["operation"],
                    "speedups": mode,
                    "value": ours["us"],
                    "unit": "us",
                    "redis_py_us": plain["us"],
                    "ratio_to_redis_py": ratio,
                    "commands": ours["commands"],
                    "round_trips": ours["round_trips"],
                }
            )
            line = [row["operation"], mode]
            if with_results:
                line.append(str(row["results"]))
            line += [
                "%.0f" % ours["us"],
                "%.1f" % ours["commands"],
                "%.1f" % ours["round_trips"],
                "%.0f" % plain["us"],
                "%.1f" % plain["commands"],
                "%.1f" % plain["round_trips"],
                "%.2fx" % ratio,
            ]
            if group == "orm":
                line.append("%d / %d" % (row["upstream_round_trips"], row["upstream_commands"]))
            table.append(line)
    return rows, table


def group_orm(
    args: argparse.Namespace, server: PrivateRedisServer, client: redis.Redis, notes: List[str]
) -> List[Dict[str, Any]]:
    results = {}
    for index, (mode, no_extensions) in enumerate(_modes(), 1):
        progress("orm: worker %d of 2 (%s speedups), %d instances" % (index, mode, args.instances))
        client.flushall()
        results[mode] = run_worker(
            "orm[%s]" % mode,
            "benchmarks.bench_orm",
            ["--socket", server.socket_path, "--instances", str(args.instances)],
            no_extensions,
        )
    rows, table = _overhead_rows("orm", results, with_results=False)
    print_table(
        "ORM, per operation, %d instances (limpyd vs plain redis-py sending the same commands one by one)"
        % args.instances,
        [
            "operation",
            "speedups",
            "limpyd us",
            "cmds",
            "round trips",
            "redis-py us",
            "cmds",
            "round trips",
            "time ratio",
            "2.1.2 rt/cmds",
        ],
        table,
    )
    limits = {"create": (4, 20), "get+set": (4, 9), "delete": (4, 19)}
    for row in results["cython"]["rows"]:
        max_round_trips, max_commands = limits.get(row["operation"], (None, None))
        if max_round_trips is None:
            continue
        ours = row["limpyd"]
        met = ours["round_trips"] <= max_round_trips and ours["commands"] <= max_commands
        notes.append(
            "%s: <= %d round trips and <= %d commands: %.1f / %.1f %s"
            % (
                row["operation"],
                max_round_trips,
                max_commands,
                ours["round_trips"],
                ours["commands"],
                "met" if met else "NOT MET",
            )
        )
    return rows


def group_collections(
    args: argparse.Namespace, server: PrivateRedisServer, client: redis.Redis, notes: List[str]
) -> List[Dict[str, Any]]:
    results = {}
    for index, (mode, no_extensions) in enumerate(_modes(), 1):
        progress("collections: worker %d of 2 (%s speedups), %d instances" % (index, mode, args.instances))
        client.flushall()
        results[mode] = run_worker(
            "collections[%s]" % mode,
            "benchmarks.bench_collection",
            ["--socket", server.socket_path, "--instances", str(args.instances)],
            no_extensions,
        )
    rows, table = _overhead_rows("collections", results, with_results=True)
    print_table(
        "Collections over %d instances, per operation (limpyd vs plain redis-py sending the same "
        "commands one by one; target <= %.1fx)" % (args.instances, OVERHEAD_TARGET),
        [
            "operation",
            "speedups",
            "results",
            "limpyd us",
            "cmds",
            "round trips",
            "redis-py us",
            "cmds",
            "round trips",
            "time ratio",
        ],
        table,
    )
    for mode, result in results.items():
        by_name = {row["operation"]: row for row in result["rows"]}
        pks, instances = by_name.get("filter 1 field, pks"), by_name.get("filter 1 field, .instances()")
        if pks and instances and instances["results"]:
            per_instance = (instances["limpyd"]["us"] - pks["limpyd"]["us"]) / instances["results"]
            notes.append(
                "collection.instances(), %s: %.1f us per instance (target <= 15; 2.1.2: 136) %s"
                % (mode, per_instance, "met" if per_instance <= 15 else "NOT MET")
            )
            rows.append(
                {
                    "key": "collections/instances per instance/%s" % mode,
                    "group": "collections",
                    "row": "instances per instance",
                    "speedups": mode,
                    "value": per_instance,
                    "unit": "us",
                }
            )
        over = [
            row["operation"]
            for row in result["rows"]
            if row["operation"] in OVERHEAD_ROWS
            and row["limpyd"]["us"] > OVERHEAD_TARGET * row["redis-py"]["us"]
        ]
        notes.append(
            "one-command rows <= %.1fx plain redis-py, %s: %s"
            % (OVERHEAD_TARGET, mode, "met" if not over else "NOT MET for " + ", ".join(over))
        )
    for row in results["cython"]["rows"]:
        if row["operation"] == "filter 2 fields, .instances()":
            trips = row["limpyd"]["round_trips"]
            notes.append(
                "filter by two fields then .instances(): <= 2 round trips (2.1.2: 5): %.1f %s"
                % (trips, "met" if trips <= 2 else "NOT MET")
            )
    return rows


def group_pipeline(
    args: argparse.Namespace, server: PrivateRedisServer, client: redis.Redis, notes: List[str]
) -> List[Dict[str, Any]]:
    progress("pipeline: worker 1 of 1, %d instances" % args.instances)
    client.flushall()
    result = run_worker(
        "pipeline",
        "benchmarks.bench_pipeline",
        ["--socket", server.socket_path, "--instances", str(args.instances)],
    )
    rows, table = [], []
    for row in result["rows"]:
        rows.append(
            {
                "key": "pipeline/%s/cython" % row["workload"],
                "group": "pipeline",
                "row": row["workload"],
                "speedups": "cython",
                "value": row["us"],
                "unit": "us",
                "commands": row["commands"],
                "round_trips": row["round_trips"],
            }
        )
        table.append(
            [row["workload"], "%.0f" % row["us"], "%.2f" % row["commands"], "%.3f" % row["round_trips"]]
        )
    print_table(
        "Pipelined writes, per instance (%d instances); Model(...) inside a pipeline: %s"
        % (result["instances"], result["Model(...) inside a pipeline"]),
        ["workload", "us", "cmds", "round trips"],
        table,
    )
    return rows


def group_speedups(
    args: argparse.Namespace, server: PrivateRedisServer, client: redis.Redis, notes: List[str]
) -> List[Dict[str, Any]]:
    progress("speedups: worker 1 of 1, every compiled function against the twin")
    result = run_worker("speedups", "benchmarks.bench_speedups", ["--quick"] if args.quick else [])
    rows, table = [], []
    for row in result["rows"]:
        rows.append(
            {
                "key": "speedups/%s/cython" % row["case"],
                "group": "speedups",
                "row": row["case"],
                "speedups": "cython",
                "value": row["cython_ns"],
                "unit": "ns",
                "python_ns": row["python_ns"],
                "ratio_py_cy": row["ratio"],
            }
        )
        table.append(
            [
                row["case"],
                "%.0f" % row["python_ns"],
                "%.0f" % row["cython_ns"] if row["cython_ns"] else "n/a",
                "%.2fx" % row["ratio"] if row["ratio"] else "n/a",
            ]
        )
    print_table(
        "Speedups: ns per call, Python twin vs compiled",
        ["function", "python ns", "cython ns", "py/cy"],
        table,
    )
    make_key = [row["ratio"] for row in result["rows"] if row["function"] == "make_key" and row["ratio"]]
    if make_key:
        notes.append(
            "compiled make_key >= %.1fx the twin: %.2fx (worst case) %s"
            % (MAKE_KEY_TARGET, min(make_key), "met" if min(make_key) >= MAKE_KEY_TARGET else "NOT MET")
        )
    else:
        notes.append("compiled speedups: the extension is not built (pip install . with a C compiler)")
    return rows


def group_atomic(
    args: argparse.Namespace, server: PrivateRedisServer, client: redis.Redis, notes: List[str]
) -> List[Dict[str, Any]]:
    bulk = 100000 if args.quick else 1000000
    purge = 10000 if args.quick else 100000
    progress(
        "atomic: worker 1 of 1, %d instances per operation, create_many of %d, purge of %d"
        % (args.instances, bulk, purge)
    )
    client.flushall()
    result = run_worker(
        "atomic",
        "benchmarks.bench_atomic",
        [
            "--socket",
            server.socket_path,
            "--instances",
            str(args.instances),
            "--bulk",
            str(bulk),
            "--purge",
            str(purge),
        ],
    )
    rows, table = [], []
    targets = {"create": 3.0, "get+set": 2.0, "delete": 2.0}
    for row in result["rows"]:
        default, atomic = row["default"], row["atomic"]
        rows.append(
            {
                "key": "atomic/%s/cython" % row["operation"],
                "group": "atomic",
                "row": row["operation"],
                "speedups": "cython",
                "value": atomic["us"],
                "unit": "us",
                "default_us": default["us"],
                "cpu_us": atomic["cpu_us"],
                "default_cpu_us": default["cpu_us"],
                "speedup": row["speedup"],
            }
        )
        table.append(
            [
                row["operation"],
                "%.0f" % default["us"],
                "%.0f" % default["cpu_us"],
                "%.0f" % atomic["us"],
                "%.0f" % atomic["cpu_us"],
                "%.2fx" % row["speedup"],
            ]
        )
        target = targets[row["operation"]]
        notes.append(
            "atomic %s >= %.0fx the default mode's operations/s: %.2fx %s"
            % (row["operation"], target, row["speedup"], "met" if row["speedup"] >= target else "NOT MET")
        )
    print_table(
        "Atomic writes vs the default write path, per operation (%d instances; best of 3 rounds, the modes interleaved)"
        % args.instances,
        ["operation", "default us", "default cpu us", "atomic us", "atomic cpu us", "speedup"],
        table,
    )
    bulk_row, purge_row = result["bulk"], result["purge"]
    print_table(
        "Bulk and expiry",
        ["row", "instances", "seconds", "instances/s", "maxrss MiB"],
        [
            [
                "create_many (batches of 1000)",
                bulk_row["instances"],
                "%.1f" % bulk_row["seconds"],
                "%.0f" % bulk_row["per_second"],
                "%.0f" % (bulk_row["maxrss_kib"] / 1024),
            ],
            [
                "purge_expired",
                purge_row["instances"],
                "%.1f" % purge_row["seconds"],
                "%.0f" % purge_row["per_second"],
                "",
            ],
        ],
    )
    notes.append(
        "create_many >= 30,000 instances/s: %.0f %s"
        % (bulk_row["per_second"], "met" if bulk_row["per_second"] >= 30000 else "NOT MET")
    )
    rows.append(
        {
            "key": "atomic/create_many/cython",
            "group": "atomic",
            "row": "create_many",
            "speedups": "cython",
            "value": bulk_row["per_second"],
            "unit": "instances/s",
            "maxrss_kib": bulk_row["maxrss_kib"],
        }
    )
    rows.append(
        {
            "key": "atomic/purge_expired/cython",
            "group": "atomic",
            "row": "purge_expired",
            "speedups": "cython",
            "value": purge_row["per_second"],
            "unit": "instances/s",
        }
    )
    return rows


def group_integrity(
    args: argparse.Namespace, server: PrivateRedisServer, client: redis.Redis, notes: List[str]
) -> List[Dict[str, Any]]:
    sizes = [20000] if args.quick else [100000, 1000000]  # --quick: the whole suite under a minute
    rows, table = [], []
    for position, size in enumerate(sizes, 1):
        progress(
            "integrity: worker %d of %d, audit/repair/rebuild of %d benchmark instances"
            % (position, len(sizes), size)
        )
        client.flushall()
        result = run_worker(
            "integrity",
            "benchmarks.bench_integrity",
            ["--socket", server.socket_path, "--instances", str(size)],
        )
        for operation in ("audit", "repair", "rebuild"):
            row = result[operation]
            rows.append(
                {
                    "key": "integrity/%s/%d" % (operation, size),
                    "group": "integrity",
                    "row": operation,
                    "speedups": "cython",
                    "value": row["per_second"],
                    "unit": "instances/s",
                    "instances": size,
                    "seconds": row["seconds"],
                    "maxrss_kib": result["maxrss_kib"],
                }
            )
            table.append(
                [
                    operation,
                    size,
                    "%.1f" % row["seconds"],
                    "%.0f" % row["per_second"],
                    "%.0f" % (result["maxrss_kib"] / 1024),
                ]
            )
        notes.append(
            "audit >= 50,000 instances/s on %d instances: %.0f %s"
            % (
                size,
                result["audit"]["per_second"],
                "met" if result["audit"]["per_second"] >= 50000 else "NOT MET",
            )
        )
    print_table(
        "Integrity (repair: audit + 2 fixes per 1000 instances + audit)",
        ["operation", "instances", "seconds", "instances/s", "worker maxrss MiB"],
        table,
    )
    client.flushall()
    return rows


def group_cluster(
    args: argparse.Namespace, server: PrivateRedisServer, client: redis.Redis, notes: List[str]
) -> List[Dict[str, Any]]:
    migrate = 10000 if args.quick else 100000
    progress(
        "cluster: worker 1 of 1 (starts its own 3-primary cluster), %d instances per operation, scan of %d "
        "keys, migration of %d instances" % (args.instances, args.keys, migrate)
    )
    client.flushall()
    result = run_worker(
        "cluster",
        "benchmarks.bench_cluster",
        [
            "--socket",
            server.socket_path,
            "--instances",
            str(args.instances),
            "--keys",
            str(args.keys),
            "--migrate",
            str(migrate),
        ],
    )
    client.flushall()
    rows, table = [], []
    single, cluster = result["rows"]["single"], result["rows"]["cluster"]
    for operation, on_cluster in cluster.items():
        alone = single[operation]
        rows.append(
            {
                "key": "cluster/%s/cython" % operation,
                "group": "cluster",
                "row": operation,
                "speedups": "cython",
                "value": on_cluster["us"],
                "unit": "us",
                "single_us": alone["us"],
                "commands": on_cluster["commands"],
                "single_commands": alone["commands"],
                "round_trips": on_cluster["round_trips"],
                "single_round_trips": alone["round_trips"],
            }
        )
        table.append(
            [
                operation,
                "%.0f" % alone["us"],
                "%.0f" % on_cluster["us"],
                "%.1f" % alone["commands"],
                "%.1f" % on_cluster["commands"],
                "%.1f" % alone["round_trips"],
                "%.1f" % on_cluster["round_trips"],
            ]
        )
        if on_cluster["round_trips"] > alone["round_trips"]:
            notes.append(
                "cluster %s: more round trips than on one server (%.1f > %.1f): NOT MET"
                % (operation, on_cluster["round_trips"], alone["round_trips"])
            )
    print_table(
        "Redis Cluster (3 primaries) vs single server, per operation (%d instances; the sorted slice runs "
        "the SORT script on the cluster: the server counts the commands it calls)" % args.instances,
        [
            "operation",
            "single us",
            "cluster us",
            "single cmds",
            "cluster cmds",
            "single trips",
            "cluster trips",
        ],
        table,
    )
    scan, moved = result["scan"], result["migration"]
    print_table(
        "Redis Cluster: scan_keys() and migration",
        ["row", "figure"],
        [
            ["scan_keys() of %d keys, single server" % scan["keys"], "%.2f s" % scan["single_s"]],
            [
                "scan_keys() of %d keys, cluster (3 primaries in parallel)" % scan["keys"],
                "%.2f s (%.2fx)" % (scan["cluster_s"], scan["ratio"]),
            ],
            [
                "limpyd.migrate of %d instances (%d keys) single -> cluster"
                % (moved["instances"], moved["keys"]),
                "%.0f instances/s (%.0f keys/s)" % (moved["instances_per_s"], moved["keys_per_s"]),
            ],
        ],
    )
    notes.append(
        "cluster scan_keys() <= 0.8x the single server: %.2fx %s (3 nodes and the client share the "
        "machine's %d cores)"
        % (scan["ratio"], "met" if scan["ratio"] <= 0.8 else "NOT MET", os.cpu_count() or 0)
    )
    rows.append(
        {
            "key": "cluster/scan_keys/cython",
            "group": "cluster",
            "row": "scan_keys",
            "speedups": "cython",
            "value": scan["cluster_s"],
            "unit": "s",
            "single_s": scan["single_s"],
            "ratio": scan["ratio"],
        }
    )
    rows.append(
        {
            "key": "cluster/migrate/cython",
            "group": "cluster",
            "row": "migrate",
            "speedups": "cython",
            "value": moved["instances_per_s"],
            "unit": "instances/s",
        }
    )
    return rows


def group_sharding(
    args: argparse.Namespace, server: PrivateRedisServer, client: redis.Redis, notes: List[str]
) -> List[Dict[str, Any]]:
    instances = 10000 if args.quick else 100000
    progress(
        "sharding: worker 1 of 1 (starts its own 3-primary cluster), a 64-shard and a 1-shard model "
        "of %d instances each" % instances
    )
    result = run_worker(
        "sharding",
        "benchmarks.bench_sharding",
        ["--instances", str(instances), "--timed", str(min(2000, args.instances * 2))],
    )
    label = "%d shards" % result["shards"]
    rows, table = [], []
    for operation, figures in result["rows"].items():
        ratio = figures[label] / figures["1 shard"]
        rows.append(
            {
                "key": "sharding/%s/cython" % operation,
                "group": "sharding",
                "row": operation,
                "speedups": "cython",
                "value": figures[label],
                "unit": "us",
                "one_shard_us": figures["1 shard"],
                "ratio": ratio,
            }
        )
        table.append(
            [
                operation,
                "%.0f" % figures["1 shard"],
                "%.0f" % figures[label],
                "%.2fx %s" % (ratio, "(<= 2x: met)" if ratio <= 2 else "(<= 2x: NOT MET)"),
            ]
        )
    print_table(
        "Sharded model (%s) vs 1-shard model on a 3-primary cluster, %d instances each, per operation"
        % (label, result["instances"]),
        ["operation", "1 shard us", "%s us" % label, "ratio"],
        table,
    )
    memory = []
    for name, figures in result["memory"].items():
        share = figures["biggest_node_share"]
        memory.append(
            [
                name,
                " / ".join("%.1f" % (size / 2**20) for size in figures["per_node_bytes"]),
                "%.0f%%" % (share * 100),
                figures["loaded_with"],
            ]
        )
        rows.append(
            {
                "key": "sharding/memory/%s" % name,
                "group": "sharding",
                "row": "biggest node share",
                "speedups": "cython",
                "value": share,
                "unit": "share",
            }
        )
    print_table(
        "Sharded model: memory each primary took for the model (INFO memory used_memory, grown while loading)",
        ["model", "MiB per node", "biggest node", "loaded with"],
        memory,
    )
    share = result["memory"][label]["biggest_node_share"]
    notes.append(
        "sharded model: biggest node <= 45%% of the model's memory: %.0f%% %s"
        % (share * 100, "met" if share <= 0.45 else "NOT MET")
    )
    return rows


#: the one-command operations whose cost must stay close to plain redis-py's
OVERHEAD_ROWS = (
    "filter 1 field, pks",
    "len() of a filtered collection",
    "alpha sort by hash field, [10:20]",
    "Model(pk)",
    "Model(pk) then hmget",
    "field.get()",
)

RUNNERS = {
    "scan": group_scan,
    "orm": group_orm,
    "collections": group_collections,
    "pipeline": group_pipeline,
    "speedups": group_speedups,
    "atomic": group_atomic,
    "cluster": group_cluster,
    "sharding": group_sharding,
    "integrity": group_integrity,
}


# ---------------------------------------------------------------------- compare


def compare(rows: List[Dict[str, Any]], base_path: str) -> None:
    """Print each row's value against the same row of a saved ``--json`` run."""
    with open(base_path) as handle:
        base = json.load(handle)
    base_rows = {row["key"]: row for row in base.get("rows", [])}
    table = []
    for row in rows:
        before = base_rows.get(row["key"])
        if before is None or not before.get("value") or row.get("value") is None:
            table.append([row["key"], "-", _figure(row), "new row" if before is None else "n/a"])
            continue
        table.append([row["key"], _figure(before), _figure(row), "%.2fx" % (row["value"] / before["value"])])
    missing = sorted(set(base_rows) - {row["key"] for row in rows})
    base_meta = base.get("meta", {})
    print_table(
        "Compared with %s (commit %s, %s): ratio = now / then (below 1: faster now)"
        % (base_path, base_meta.get("git_commit", "?"), base_meta.get("date", "?")),
        ["row", "then", "now", "ratio"],
        table,
    )
    if missing:
        print("rows of %s not run now: %s" % (base_path, ", ".join(missing)))


def _figure(row: Dict[str, Any]) -> str:
    value = row.get("value")
    if value is None:
        return "n/a"
    return ("%.3f %s" if row.get("unit") == "s" else "%.0f %s") % (value, row.get("unit", ""))


# ---------------------------------------------------------------------- main


def parse_arguments(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[4:]),
    )
    parser.add_argument(
        "--only",
        metavar="GROUPS",
        default=",".join(GROUPS),
        help="comma-separated groups to run, among %s (default: all)" % ", ".join(GROUPS),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced sizes (100,000 keys, 2 rounds, 1,000 instances): under a minute",
    )
    parser.add_argument("--keys", type=int, help="keys to scan (default 1,000,000; --quick 100,000)")
    parser.add_argument("--repeat", type=int, help="scan rounds, the best is kept (default 5; --quick 2)")
    parser.add_argument(
        "--instances",
        type=int,
        help="instances of the ORM, collection and pipeline rows (default 10,000; --quick 1,000)",
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write every figure, the versions and the arguments to FILE"
    )
    parser.add_argument("--compare", metavar="BASE.json", help="print each row's ratio to a saved --json run")
    args = parser.parse_args(argv)
    groups = [group.strip() for group in args.only.split(",") if group.strip()]
    unknown = [group for group in groups if group not in GROUPS]
    if unknown or not groups:
        parser.error(
            "--only %s: unknown group %s; choose among %s"
            % (args.only, ", ".join(map(repr, unknown)) or "(none)", ", ".join(GROUPS))
        )
    args.only = groups
    if args.keys is None:
        args.keys = 100_000 if args.quick else 1_000_000
    if args.repeat is None:
        args.repeat = 2 if args.quick else 5
    if args.instances is None:
        args.instances = 1_000 if args.quick else 10_000
    if args.compare and not os.path.exists(args.compare):
        parser.error("--compare %s: no such file (write one with --json FILE first)" % args.compare)
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Run the selected groups; return the process exit code (1 if a worker failed)."""
    args = parse_arguments(argv)
    groups = [group for group in GROUPS if group in args.only]
    notes: List[str] = []
    failures: List[str] = []
    rows: List[Dict[str, Any]] = []
    progress("starting a private redis-server; groups: %s" % ", ".join(groups))
    with PrivateRedisServer() as server:
        client = redis.Redis(decode_responses=True, **server.settings)
        server_version = client.info("server")["redis_version"]
        meta = metadata(args, server_version)
        progress(
            "limpyd %(limpyd)s (%(speedups)s speedups), redis-py %(redis-py)s, hiredis %(hiredis)s, "
            "redis-server %(redis-server)s, %(python_implementation)s %(python)s" % meta["versions"]
        )
        for index, group in enumerate(groups, 1):
            progress("group %d of %d: %s" % (index, len(groups), group))
            try:
                rows.extend(RUNNERS[group](args, server, client, notes))
            except WorkerFailed as exc:
                failures.append("%s: %s" % (group, exc))
                progress("FAILED: %s" % exc)
                print("\n%s: FAILED (see stderr)" % group)
            progress("group %d of %d: %s done" % (index, len(groups), group))

    if notes:
        print("\nTargets and notes:")
        for note in notes:
            print("  " + note)
    if args.compare:
        compare(rows, args.compare)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": rows, "notes": notes, "failures": failures}, handle, indent=2)
        print("\nwrote %s" % args.json)
    if failures:
        sys.stderr.write("\n%d group(s) failed:\n%s\n" % (len(failures), "\n".join(failures)))
        return 1
    progress("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
