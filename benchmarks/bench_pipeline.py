"""Pipelined writes through ``PipelineDatabase`` against the one-by-one ORM path.

``python -m benchmarks.bench_pipeline [--instances N] [--socket PATH]`` uses the redis-server at
``PATH`` (flushed first) or starts a private one, and prints a JSON object with a list of rows (µs, commands and round trips per instance; commands and round trips are the
server's ``total_commands_processed`` / ``total_reads_processed`` deltas, minus the ``INFO``
calls themselves).

Creating instances inside a pipeline is not supported (spec 30 §1.3: the pk validation reads
its reply, which is the pipeline object there), so the pipelined row writes the same data with
what is supported: a lazily-connected instance per pk of a ``PKField`` model, modifiers of its
non-indexable fields (the first one sends the implicit ``SISMEMBER``), and the ``SADD`` of the
pk into the model's collection sent on the pipeline itself. Both rows leave the same keys.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Callable, Dict, List, Optional

import redis

from benchmarks._server import PrivateRedisServer
from limpyd import fields, model
from limpyd.contrib.database import PipelineDatabase
from limpyd.exceptions import UniquenessError


def _snapshot(client: redis.Redis) -> tuple:
    stats = client.info("stats")
    return int(stats["total_commands_processed"]), int(stats["total_reads_processed"])


def measure(client: redis.Redis, count: int, run: Callable[[], None]) -> Dict[str, float]:
    """Run ``run`` (``count`` instances); return µs, commands and round trips per instance."""
    commands_before, reads_before = _snapshot(client)
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    commands_after, reads_after = _snapshot(client)
    return {
        "us": round(elapsed / count * 1e6, 2),
        "commands": (commands_after - commands_before - 1) / count,
        "round_trips": (reads_after - reads_before - 1) / count,
    }


def define_model(database: PipelineDatabase, namespace: str) -> type:
    """Return a model with a ``PKField`` and two non-indexable fields."""
    bench_database, bench_namespace = database, namespace

    class Item(model.RedisModel):
        database = bench_database
        namespace = bench_namespace
        id = fields.PKField()
        name = fields.StringField()
        note = fields.InstanceHashField()

    return Item


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_pipeline", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--instances", type=int, default=10000, help="instances written per row (default 10,000)"
    )
    parser.add_argument(
        "--socket", help="unix socket of a redis-server to use and flush (default: start one)"
    )
    args = parser.parse_args(argv)
    count = args.instances
    with contextlib.ExitStack() as stack:
        if args.socket:
            settings = {"unix_socket_path": args.socket}
        else:
            settings = stack.enter_context(PrivateRedisServer()).settings
        client = redis.Redis(**settings, decode_responses=True)
        client.flushdb()
        database = PipelineDatabase(**settings)
        database.connection.ping()
        one_by_one = define_model(database, "one")
        pipelined = define_model(database, "pipe")

        def create_one_by_one() -> None:
            for pk in range(count):
                one_by_one(id=pk, name="name %d" % pk, note="note %d" % pk)

        def create_pipelined() -> None:
            collection_key = pipelined.get_field("pk").collection_key
            with database.pipeline(transaction=False) as pipe:
                for pk in range(count):
                    item = pipelined.lazy_connect(pk)
                    item.name.set("name %d" % pk)  # implicit SISMEMBER, then SET
                    item.note.hset("note %d" % pk)
                    pipe.sadd(collection_key, pk)
                pipe.execute()

        rows = [
            {
                "workload": "create (PKField model, 2 plain fields), one by one",
                **measure(client, count, create_one_by_one),
            },
        ]
        sys.stderr.write("pipeline: 1 of 2 (one by one) done\n")
        rows.append(
            {
                "workload": "same data written in one pipeline(transaction=False)",
                **measure(client, count, create_pipelined),
            },
        )
        sys.stderr.write("pipeline: 2 of 2 (pipelined) done\n")
        one = {key.split(":", 1)[1] for key in client.scan_iter("one:*")}
        same = one == {key.split(":", 1)[1] for key in client.scan_iter("pipe:*")}
        if not same or client.scard(one_by_one.get_field("pk").collection_key) != count:
            sys.exit(
                "WRONG RESULT: the pipelined row did not write the same %d instances as the one-by-one row"
                % count
            )
        try:
            with database.pipeline(transaction=False):
                pipelined(id="new", name="x")
            creation_in_pipeline = "accepted"
        except UniquenessError as exc:
            creation_in_pipeline = "UniquenessError: %s" % exc
        print(
            json.dumps(
                {
                    "instances": count,
                    "rows": rows,
                    "same_keys": same,
                    "Model(...) inside a pipeline": creation_in_pipeline,
                }
            )
        )


if __name__ == "__main__":
    main()
