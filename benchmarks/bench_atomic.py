"""Time atomic writes against the default write path, bulk creation, and the purge of due instances.

``python -m benchmarks.bench_atomic --socket PATH [--instances N] [--bulk N] [--purge N]`` prints a
JSON object. The per-operation rows run the benchmark model (unique indexable hash field,
indexable string, plain hash field, set of 3) in both modes in the same process: wall time and
client CPU per operation. ``create_many`` streams ``--bulk`` rows (a generator) and reports
instances/s and the worker's peak memory (maxrss); ``purge`` expires ``--purge`` instances and
times ``purge_expired`` until nothing is due. Every figure is checked for a wrong result.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any, Callable, Dict, List

import redis

from limpyd import fields, model
from limpyd.database import RedisDatabase


def define(database: RedisDatabase, namespace: str, atomic: bool, **settings: Any) -> type:
    """The benchmark model, in one write mode."""
    attrs = {
        "database": database,
        "namespace": namespace,
        "atomic_writes": atomic,
        "code": fields.InstanceHashField(indexable=True, unique=True),
        "name": fields.StringField(indexable=True),
        "note": fields.InstanceHashField(),
        "tags": fields.SetField(),
        **settings,
    }
    return type("BenchItem", (model.RedisModel,), attrs)


def timed(count: int, run: Callable[[], None]) -> Dict[str, float]:
    """Run ``run`` (``count`` operations); return wall and client CPU µs per operation."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return {
        "us": (time.perf_counter() - wall) / count * 1e6,
        "cpu_us": (time.process_time() - cpu) / count * 1e6,
    }


def per_operation(database: RedisDatabase, instances: int, rounds: int = 3) -> List[Dict[str, Any]]:
    """Create, get+set and delete ``instances`` instances in both modes, ``rounds`` times.

    The two modes alternate within each round and each row keeps each mode's best round: a
    virtual machine's speed drifts over a minute, and the best of interleaved rounds compares the
    two modes at the same speed.
    """
    rows = []
    best: Dict[bool, Dict[str, Dict[str, float]]] = {False: {}, True: {}}
    for round_number in range(rounds):
        for atomic in (False, True):
            measured = _one_round(database, instances, atomic, round_number, rounds)
            for operation, figures in measured.items():
                kept = best[atomic].get(operation)
                if kept is None or figures["us"] < kept["us"]:
                    best[atomic][operation] = figures
    for operation in ("create", "get+set", "delete"):
        default, atomic = best[False][operation], best[True][operation]
        rows.append(
            {
                "operation": operation,
                "default": default,
                "atomic": atomic,
                "speedup": default["us"] / atomic["us"],
            }
        )
    return rows


def _one_round(
    database: RedisDatabase, instances: int, atomic: bool, round_number: int, rounds: int
) -> Dict[str, Dict[str, float]]:
    """Time the three operations of one mode once; exit on a wrong result."""
    Item = define(database, "bench%s%d" % ("a" if atomic else "d", round_number), atomic)
    Item(code="warm", name="w", note="x", tags=["a", "b", "c"]).delete()
    items: list = []
    progress(
        "per operation, round %d of %d, %s mode: create, get+set, delete of %d instances"
        % (round_number + 1, rounds, "atomic" if atomic else "default", instances)
    )
    measured = {
        "create": timed(
            instances,
            lambda: items.extend(
                Item(code="c%d" % i, name="n%d" % (i % 100), note="x", tags=["a", "b", "c"])
                for i in range(instances)
            ),
        ),
        "get+set": timed(instances, lambda: [item.name.set(item.name.get() + "x") for item in items]),
    }
    if len(Item.collection(name="n7x")) != instances // 100 + (1 if 7 < instances % 100 else 0):
        sys.exit("WRONG RESULT: the get+set of %s mode did not index every new name" % atomic)
    measured["delete"] = timed(instances, lambda: [Item(item._pk).delete() for item in items])
    if len(Item.collection()) != 0:
        sys.exit("WRONG RESULT: instances left after the deletions of %s mode" % atomic)
    return measured


def bulk(database: RedisDatabase, count: int) -> Dict[str, Any]:
    """Stream ``count`` rows through ``create_many``; instances/s and peak memory."""
    Item = define(database, "bulk", True)
    progress("create_many of %d instances" % count)

    def rows():
        for i in range(count):
            if i and i % 100000 == 0:
                progress("  create_many: %d of %d" % (i, count))
            yield {"code": "c%d" % i, "name": "n%d" % (i % 100), "note": "x", "tags": ["a", "b", "c"]}

    start = time.perf_counter()
    created = 0
    for pk in Item.create_many(rows(), batch_size=1000):
        created += 1
    elapsed = time.perf_counter() - start
    if created != count or len(Item.collection(name="n3")) != count // 100 + (1 if 3 < count % 100 else 0):
        sys.exit("WRONG RESULT: create_many created %d of %d" % (created, count))
    return {
        "instances": count,
        "seconds": elapsed,
        "per_second": count / elapsed,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def purge(database: RedisDatabase, count: int) -> Dict[str, Any]:
    """Expire ``count`` instances, then purge them; instances/s."""
    Item = define(database, "purge", True, expiring=True)
    progress("purge_expired of %d due instances (created first)" % count)
    pks = Item.create_many(
        ({"code": "c%d" % i, "name": "n%d" % (i % 100), "note": "x", "tags": ["a"]} for i in range(count)),
        ttl=3600,
    )
    # due now: their deadlines are moved to the past directly (a creation with a tiny ttl would see
    # the writes of the next batches purge the first ones already)
    raw = redis.Redis(**database.connection_settings)
    raw.zadd("purge:benchitem:__deadlines__", {pk: 0 for pk in pks})
    start = time.perf_counter()
    purged = 0
    while True:
        done = Item.purge_expired(1000)
        purged += done
        if done < 1000:
            break
    elapsed = time.perf_counter() - start
    left = [key for key in raw.scan_iter(match="purge:*", count=1000) if key != b"purge:benchitem:max_pk"]
    if purged != count or left:
        sys.exit("WRONG RESULT: purged %d of %d, %d keys left" % (purged, count, len(left)))
    return {"instances": count, "seconds": elapsed, "per_second": count / elapsed}


def progress(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_atomic", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--socket", required=True, help="unix socket of the private redis-server")
    parser.add_argument("--instances", type=int, default=5000, help="instances of the per-operation rows")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds of the per-operation rows (the best is kept)",
    )
    parser.add_argument("--bulk", type=int, default=1000000, help="rows streamed through create_many")
    parser.add_argument("--purge", type=int, default=100000, help="due instances purged")
    args = parser.parse_args(argv)
    database = RedisDatabase(unix_socket_path=args.socket)
    database.connection.flushdb()
    result = {
        "rows": per_operation(database, args.instances, args.rounds),
        "bulk": bulk(database, args.bulk),
        "purge": purge(database, args.purge),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
