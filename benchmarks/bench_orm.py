"""Time ORM operations, counting Redis commands and round trips, beside plain redis-py.

``python -m benchmarks.bench_orm --socket PATH [--instances N]`` prints a JSON list of rows. Each row runs one
workload through limpyd and through a plain redis-py program sending the same commands one by
one (what the ORM would cost without batching), in the same process and the same run. Commands
and round trips come from the server: ``INFO`` ``total_commands_processed`` and
``total_reads_processed`` deltas (the ``INFO`` calls themselves are subtracted).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Callable, Dict, List, Optional

import redis
from redis.lock import Lock

import limpyd.speedups
from limpyd import fields, model
from limpyd.database import RedisDatabase

#: what redis-limpyd 2.1.2 costs per operation (from the issue), for the table
UPSTREAM = {"create": (16, 20), "get+set": (7, 9), "delete": (15, 19)}


class Counters:
    """Read the server's command and read-event counters (one ``INFO stats`` each time)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def snapshot(self) -> tuple:
        stats = self.client.info("stats")
        return int(stats["total_commands_processed"]), int(stats["total_reads_processed"])


def measure(counters: Counters, count: int, run: Callable[[], None]) -> Dict[str, float]:
    """Run ``run`` (doing ``count`` operations); return µs, commands and round trips per operation."""
    commands_before, reads_before = counters.snapshot()
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    commands_after, reads_after = counters.snapshot()
    return {
        "us": elapsed / count * 1e6,
        "commands": (commands_after - commands_before - 1) / count,
        "round_trips": (reads_after - reads_before - 1) / count,
    }


def define_model(database: RedisDatabase) -> type:
    """Return the benchmark model: unique indexable hash field, indexable string, plain hash, set."""

    bench_database = database

    class BenchItem(model.RedisModel):
        database = bench_database
        namespace = "bench"
        code = fields.InstanceHashField(indexable=True, unique=True)
        name = fields.StringField(indexable=True)
        note = fields.InstanceHashField()
        tags = fields.SetField()

    return BenchItem


class PlainRedisPy:
    """The same commands as limpyd sends, written with redis-py, one round trip each."""

    prefix = "plain:benchitem"

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self.release = client.register_script(Lock.LUA_RELEASE_SCRIPT)

    def _lock(self, field: str) -> tuple:
        name, token = "%s:lock-for-update:%s" % (self.prefix, field), uuid.uuid1().hex
        self.r.set(name, token, nx=True, px=5000)
        return name, token

    def _unlock(self, lock: tuple) -> None:
        self.release(keys=[lock[0]], args=[lock[1]])

    def create(self, code: str, name: str) -> str:
        r, p = self.r, self.prefix
        if r.smembers("%s:code:%s" % (p, code)):
            raise ValueError(code)
        lock = self._lock("code")
        pk = str(r.incr("%s:max_pk" % p))
        r.sadd("%s:collection" % p, pk)
        r.hget("%s:%s:hash" % (p, pk), "code")
        r.smembers("%s:code:%s" % (p, code))
        r.sadd("%s:code:%s" % (p, code), pk)
        r.hset("%s:%s:hash" % (p, pk), "code", code)
        self._unlock(lock)
        lock = self._lock("name")
        r.get("%s:%s:name" % (p, pk))
        r.sadd("%s:name:%s" % (p, name), pk)
        r.set("%s:%s:name" % (p, pk), name)
        self._unlock(lock)
        r.hset("%s:%s:hash" % (p, pk), "note", "x")
        r.sadd("%s:%s:tags" % (p, pk), "a", "b", "c")
        return pk

    def get_then_set(self, pk: str) -> None:
        r, p = self.r, self.prefix
        value = r.get("%s:%s:name" % (p, pk))
        lock = self._lock("name")
        current = r.get("%s:%s:name" % (p, pk))
        r.srem("%s:name:%s" % (p, current), pk)
        r.sadd("%s:name:%s" % (p, value + "x"), pk)
        r.set("%s:%s:name" % (p, pk), value + "x")
        self._unlock(lock)

    def delete(self, pk: str) -> None:
        r, p = self.r, self.prefix
        r.sismember("%s:collection" % p, pk)
        lock = self._lock("code")
        code = r.hget("%s:%s:hash" % (p, pk), "code")
        r.srem("%s:code:%s" % (p, code), pk)
        r.hdel("%s:%s:hash" % (p, pk), "code")
        self._unlock(lock)
        lock = self._lock("name")
        name = r.get("%s:%s:name" % (p, pk))
        r.srem("%s:name:%s" % (p, name), pk)
        r.delete("%s:%s:name" % (p, pk))
        self._unlock(lock)
        r.hdel("%s:%s:hash" % (p, pk), "note")
        r.delete("%s:%s:tags" % (p, pk))
        r.srem("%s:collection" % p, pk)


def run(socket_path: str, instances: int) -> List[Dict[str, object]]:
    """Run the three workloads on ``instances`` instances; return one row per workload."""
    settings = {"unix_socket_path": socket_path}
    database = RedisDatabase(**settings)
    database.connection.flushdb()
    counters = Counters(redis.Redis(**settings))
    Item = define_model(database)
    plain = PlainRedisPy(redis.Redis(decode_responses=True, **settings))
    # scripts loaded, pool warm: the field read keeps a connection aside (limpyd._pool), whose
    # handshake must not count in the get+set row
    warm = Item(code="warm-up", name="w", note="x", tags=["a", "b", "c"])
    warm.name.set(warm.name.get() + "x")
    warm.delete()
    plain.delete(plain.create("warm-up", "w"))

    items: list = []
    pks: list = []
    rows = []

    def limpyd_create() -> None:
        items.extend(
            Item(code="c%d" % i, name="n%d" % (i % 100), note="x", tags=["a", "b", "c"])
            for i in range(instances)
        )

    def plain_create() -> None:
        pks.extend(plain.create("c%d" % i, "n%d" % (i % 100)) for i in range(instances))

    def limpyd_get_set() -> None:
        for item in items:
            item.name.set(item.name.get() + "x")

    def plain_get_set() -> None:
        for pk in pks:
            plain.get_then_set(pk)

    def limpyd_delete() -> None:
        for item in items:
            Item(item._pk).delete()

    def plain_delete() -> None:
        for pk in pks:
            plain.delete(pk)

    raw = redis.Redis(decode_responses=True, **settings)

    def check(name: str) -> None:
        """Exit when limpyd and the plain program did not leave the same data behind."""
        limpyd_pks = raw.smembers("%s:collection" % Item._name)
        plain_pks = raw.smembers("%s:collection" % plain.prefix)
        expected = 0 if name == "delete" else instances
        if len(limpyd_pks) != expected or len(plain_pks) != expected:
            sys.exit(
                "WRONG RESULT after %s: %d limpyd and %d plain instances, expected %d"
                % (name, len(limpyd_pks), len(plain_pks), expected)
            )
        if name == "get+set":
            names = {item.name.get() for item in items[:50]}
            plain_names = {raw.get("%s:%s:name" % (plain.prefix, pk)) for pk in pks[:50]}
            if not all(value.endswith("x") for value in names | plain_names):
                sys.exit(
                    "WRONG RESULT after get+set: names %r / %r" % (sorted(names)[:3], sorted(plain_names)[:3])
                )

    for index, (name, limpyd_run, plain_run) in enumerate(
        (
            ("create", limpyd_create, plain_create),
            ("get+set", limpyd_get_set, plain_get_set),
            ("delete", limpyd_delete, plain_delete),
        ),
        1,
    ):
        limpyd_figures = measure(counters, instances, limpyd_run)
        plain_figures = measure(counters, instances, plain_run)
        check(name)
        sys.stderr.write("orm [%s]: %d of 3 (%s) done\n" % (limpyd.speedups.IMPLEMENTATION, index, name))
        sys.stderr.flush()
        rows.append(
            {
                "operation": name,
                "limpyd": limpyd_figures,
                "redis-py": plain_figures,
                "upstream_round_trips": UPSTREAM[name][0],
                "upstream_commands": UPSTREAM[name][1],
            }
        )
    leftovers = [key for key in database.connection.keys("*") if not key.endswith(":max_pk")]
    if leftovers:
        sys.exit("the benchmark left keys behind: %s" % leftovers[:5])
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_orm", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--socket", required=True, help="unix socket of the redis-server to use (it is flushed)"
    )
    parser.add_argument(
        "--instances", type=int, default=10000, help="instances per workload (default 10,000)"
    )
    args = parser.parse_args(argv)
    print(
        json.dumps(
            {"implementation": limpyd.speedups.IMPLEMENTATION, "rows": run(args.socket, args.instances)}
        )
    )


if __name__ == "__main__":
    main()
