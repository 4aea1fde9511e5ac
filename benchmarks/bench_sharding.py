"""A 64-shard model against a 1-shard model on a local 3-primary Redis Cluster (docs/sharding.rst).

``python -m benchmarks.bench_sharding [--instances N] [--timed N] [--queries N] [--shards N]``
starts 3 ``redis-server --cluster-enabled yes`` on free ports (as ``bench_cluster``, no
replicas) and stops them (by pid) at the end; prints a JSON object:

- ``memory``: for each model, what each primary's ``used_memory`` grew by while the model's
  ``--instances`` instances were loaded (the 1-shard model first, then the sharded one), and the
  biggest node's share of the model's memory;
- ``rows``: per operation, wall µs on each model, same data, same run: ``create`` (one instance
  at a time, ``--timed`` of them), ``filter + len()`` and ``filter + sorted slice [0:100]`` (each
  ``--queries`` times over a filter matching a tenth of the instances), and on a model with a
  unique field ``create, unique field`` (``--timed``) and ``unique check (refused duplicate)``
  (``--queries``); every result of the sharded model is compared with the 1-shard model's (a
  difference exits with ``WRONG RESULT``).

The models are loaded with ``create_many`` where the model supports it, one instance at a time
otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

import redis

from benchmarks.bench_cluster import start_cluster
from limpyd import fields, model
from limpyd.database import RedisDatabase
from limpyd.exceptions import ImplementationError, UniquenessError


def progress(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def define(database: RedisDatabase, name: str, shards: int) -> type:
    """Return an event model of ``shards`` shards: an indexed kind, a score sorted on, a payload."""
    return type(
        name,
        (model.RedisModel,),
        {
            "database": database,
            "namespace": "benchsharding",
            "shards": shards,
            "kind": fields.StringField(indexable=True),
            "score": fields.StringField(),
            "payload": fields.InstanceHashField(),
        },
    )


def rows_of(count: int) -> List[Dict[str, Any]]:
    """Return ``count`` rows; the scores are distinct, so every sort has one right order."""
    scores = random.Random(1).sample(range(100 * count), count)
    return [{"kind": "k%d" % (i % 10), "score": scores[i], "payload": "x" * 40} for i in range(count)]


def used_memory(servers: List[redis.Redis]) -> List[int]:
    return [int(client.info("memory")["used_memory"]) for client in servers]


def load(Model: type, rows: List[Dict[str, Any]], batch: int = 1000) -> str:
    """Create ``rows`` in ``Model``: ``create_many`` when it supports the model; return how."""
    try:
        for start in range(0, len(rows), batch):
            Model.create_many(rows[start : start + batch], batch_size=batch)
            if start % 20000 == 0:
                progress("  %s: %d of %d loaded" % (Model.__name__, start + batch, len(rows)))
        return "create_many"
    except ImplementationError:
        if len(Model.collection()):
            raise
    for position, row in enumerate(rows, 1):
        Model(**row)
        if position % 20000 == 0:
            progress("  %s: %d of %d loaded (one by one)" % (Model.__name__, position, len(rows)))
    return "one by one"


def timed(count: int, run: Callable[[int], Any]) -> tuple:
    """Run ``run(i)`` for ``i`` in ``range(count)``: µs per call and the results."""
    start = time.perf_counter()
    results = [run(i) for i in range(count)]
    return (time.perf_counter() - start) / count * 1e6, results


def unique_rows(database: RedisDatabase, args: argparse.Namespace, result: Dict[str, Any]) -> None:
    """Time creations with a unique value and refused duplicates on a model with a unique field
    (``--timed`` instances each; a sharded model claims each value, docs/sharding.rst)."""
    progress("unique: %d creations with a unique value, %d refused duplicates" % (args.timed, args.queries))
    for label, shards in (("1 shard", 1), ("%d shards" % args.shards, args.shards)):
        Model = type(
            "Unique%d" % shards,
            (model.RedisModel,),
            {
                "database": database,
                "namespace": "benchsharding",
                "shards": shards,
                "code": fields.StringField(unique=True),
                "kind": fields.StringField(indexable=True),
            },
        )
        us, _ = timed(args.timed, lambda i: Model(code="c%d" % i, kind="k%d" % (i % 10)))
        result["rows"].setdefault("create, unique field", {})[label] = us

        def refused(i: int) -> bool:
            try:
                Model(code="c%d" % (i * 7 % args.timed), kind="dup")
            except UniquenessError:
                return True
            return False

        us, outcomes = timed(args.queries, refused)
        if not all(outcomes) or len(Model.collection(kind="dup")):
            sys.exit("WRONG RESULT: a duplicate unique value was accepted by the %s model" % label)
        result["rows"].setdefault("unique check (refused duplicate)", {})[label] = us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100_000, help="instances of each model")
    parser.add_argument("--timed", type=int, default=2_000, help="instances created one at a time, timed")
    parser.add_argument("--queries", type=int, default=100, help="runs of each query row")
    parser.add_argument("--shards", type=int, default=64, help="shards of the sharded model")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="limpyd-bench-sharding-")
    ports, processes = start_cluster(directory)
    result: Dict[str, Any] = {"instances": args.instances, "shards": args.shards, "rows": {}, "memory": {}}
    try:
        database = RedisDatabase(cluster=True, host="127.0.0.1", port=ports[0])
        servers = [redis.Redis(port=port) for port in ports]
        every_row = rows_of(args.instances + args.timed)
        rows, extra = every_row[: args.instances], every_row[args.instances :]
        models = {
            "1 shard": define(database, "Event", 1),
            "%d shards" % args.shards: define(database, "ShardedEvent", args.shards),
        }
        for label, Model in models.items():
            progress("loading %d instances into the %s model" % (args.instances, label))
            before = used_memory(servers)
            how = load(Model, rows)
            grown = [after - previous for after, previous in zip(used_memory(servers), before)]
            total = sum(grown) or 1
            result["memory"][label] = {
                "per_node_bytes": grown,
                "biggest_node_share": max(grown) / total,
                "loaded_with": how,
            }
        one, sharded = models.values()
        progress(
            "timing: create (%d), filter + len() and filter + sorted slice (%d each)"
            % (args.timed, args.queries)
        )
        for label, Model in models.items():
            result["rows"].setdefault("create", {})[label] = timed(args.timed, lambda i: Model(**extra[i]))[0]
        queries = {
            "filter + len()": lambda Model, i: len(Model.collection(kind="k%d" % (i % 10))),
            "filter + sorted slice [0:100]": lambda Model, i: list(
                Model.collection(kind="k%d" % (i % 10)).sort(by="score")[0:100]
            ),
        }
        for name, query in queries.items():
            outcomes = {}
            for label, Model in models.items():
                us, outcomes[label] = timed(args.queries, lambda i: query(Model, i))
                result["rows"].setdefault(name, {})[label] = us
            expected, got = outcomes.values()
            if expected != got:
                sys.exit(
                    "WRONG RESULT: %s differs between the models (first: %r / %r)"
                    % (name, expected[:1], got[:1])
                )
        if (
            len(one.collection()) != len(sharded.collection())
            or len(one.collection()) != args.instances + args.timed
        ):
            sys.exit("WRONG RESULT: %d and %d instances" % (len(one.collection()), len(sharded.collection())))
        unique_rows(database, args, result)
        print(json.dumps(result))
    finally:
        for process in processes:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
