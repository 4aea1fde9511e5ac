"""Time the integrity tools on the benchmark model: audit, repair, rebuild_indexes.

``python -m benchmarks.bench_integrity --socket PATH --instances N`` prints a JSON object. The
instances (unique indexed InstanceHashField, indexed StringField, plain InstanceHashField,
indexed SetField of 3) are written in the limpyd key layout with raw pipelines (fast), checked by
a first audit (clean), then damaged (1 entry in 1000 removed, 1 in 1000 made stale) for the
repair row. Reports instances/s of each operation and the worker's peak memory (maxrss; the
audit's own line gives it right after the audit). ``--audit-only`` stops after the audit (for
1,000,000 instances).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any, Dict

import redis

from limpyd import fields, model
from limpyd.database import RedisDatabase
from limpyd.integrity import audit, rebuild_indexes, repair

#: instances/s the audit must reach on this model (issue 12)
AUDIT_TARGET = 50_000


def define(database: RedisDatabase) -> type:
    attrs = {
        "database": database,
        "namespace": "bench",
        "code": fields.InstanceHashField(unique=True),
        "name": fields.StringField(indexable=True),
        "note": fields.InstanceHashField(),
        "tags": fields.SetField(indexable=True),
    }
    return type("IntegrityItem", (model.RedisModel,), attrs)


def fill(client: redis.Redis, name: str, count: int) -> None:
    pipe = client.pipeline(transaction=False)
    for pk in range(1, count + 1):
        pipe.hset("%s:%d:hash" % (name, pk), mapping={"code": "c%d" % pk, "note": "n"})
        pipe.sadd("%s:code:c%d" % (name, pk), pk)
        pipe.set("%s:%d:name" % (name, pk), "name%d" % (pk % 100))
        pipe.sadd("%s:name:name%d" % (name, pk % 100), pk)
        tags = ["a", "t%d" % (pk % 10), "u%d" % (pk % 1000)]
        pipe.sadd("%s:%d:tags" % (name, pk), *tags)
        for tag in tags:
            pipe.sadd("%s:tags:%s" % (name, tag), pk)
        pipe.sadd("%s:collection" % name, pk)
        if pk % 2000 == 0:
            pipe.execute()
            sys.stderr.write("\rfilled %d/%d" % (pk, count))
    pipe.set("%s:max_pk" % name, count)
    pipe.execute()
    sys.stderr.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--instances", type=int, default=100000, help="benchmark instances (default 100000)")
    parser.add_argument(
        "--audit-only",
        action="store_true",
        help="time the audit only (no repair, no rebuild): for large sizes",
    )
    args = parser.parse_args()
    database = RedisDatabase(unix_socket_path=args.socket)
    client = redis.Redis(unix_socket_path=args.socket, decode_responses=True)
    client.flushdb()
    Item = define(database)
    fill(client, Item._name, args.instances)
    result: Dict[str, Any] = {"instances": args.instances}

    started = time.perf_counter()
    report = audit(Item)
    seconds = time.perf_counter() - started
    if not report.clean or report.instances != args.instances:
        raise SystemExit("audit of a clean database found %s" % report.summary())
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["audit"] = {"seconds": seconds, "per_second": args.instances / seconds, "maxrss_kib": maxrss}
    sys.stderr.write(
        "audit: %d instances in %.2fs, %.0f instances/s (target >= %d: %s), maxrss %.0f MiB\n"
        % (
            args.instances,
            seconds,
            args.instances / seconds,
            AUDIT_TARGET,
            "met" if args.instances / seconds >= AUDIT_TARGET else "NOT MET",
            maxrss / 1024,
        )
    )
    if args.audit_only:
        result["maxrss_kib"] = maxrss
        client.flushdb()
        print(json.dumps(result))
        return

    damaged = 0
    for pk in range(1, args.instances + 1, 1000):
        client.srem("%s:name:name%d" % (Item._name, pk % 100), pk)
        client.sadd("%s:tags:gone" % Item._name, args.instances + pk)
        damaged += 2
    started = time.perf_counter()
    fixed = repair(Item, dry_run=False)
    seconds = time.perf_counter() - started
    if not fixed.clean or fixed.done != damaged:
        raise SystemExit("repair: %s (%d fixes, %d expected)" % (fixed.summary(), fixed.done, damaged))
    result["repair"] = {"seconds": seconds, "per_second": args.instances / seconds, "fixes": damaged}
    sys.stderr.write("repair (audit + fixes + audit): %.1fs\n" % seconds)

    started = time.perf_counter()
    rebuilt = rebuild_indexes(Item)
    seconds = time.perf_counter() - started
    if rebuilt["instances"] != args.instances or not audit(Item).clean:
        raise SystemExit("rebuild left an inconsistent database")
    result["rebuild"] = {"seconds": seconds, "per_second": args.instances / seconds}
    sys.stderr.write("rebuild_indexes: %.0f instances/s\n" % (args.instances / seconds))
    result["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    client.flushdb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
