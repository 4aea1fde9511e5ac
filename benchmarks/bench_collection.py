"""Time collection operations, counting Redis commands and round trips, beside plain redis-py.

``python -m benchmarks.bench_collection --socket PATH [--instances N]`` prints a JSON list of rows. Each row
runs one collection operation through limpyd and through a plain redis-py program sending the
same commands one by one, in the same process and the same run (figures per operation).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from typing import Dict, List, Optional

import redis

import limpyd.speedups
from benchmarks.bench_orm import Counters, measure
from limpyd import fields, model
from limpyd.database import RedisDatabase

CITIES = 100  # filtering by one city gives INSTANCES / 100 results
KINDS = 7  # a city and a kind together give about INSTANCES / 700 results


def define_model(database: RedisDatabase) -> type:
    """Return the benchmark model: a sortable name, two indexed fields."""
    bench_database = database

    class BenchPerson(model.RedisModel):
        database = bench_database
        namespace = "bench"
        name = fields.InstanceHashField()
        city = fields.InstanceHashField(indexable=True)
        kind = fields.StringField(indexable=True)

    return BenchPerson


class PlainRedisPy:
    """The commands limpyd sends for each operation, written with redis-py, one round trip each."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.r = client
        self.prefix = prefix

    def filter_pks(self, city: str) -> list:
        return list(self.r.smembers("%s:city:%s" % (self.prefix, city)))

    def filter_instances(self, city: str) -> list:
        pks = self.filter_pks(city)
        return [pk for pk in pks if self.r.sismember("%s:collection" % self.prefix, pk)]

    def two_filters_instances(self, city: str, kind: str) -> list:
        tmp = "%s:__collection__:final:%s" % (self.prefix, uuid.uuid4().hex)
        self.r.exists(tmp)
        self.r.sinterstore(tmp, ["%s:city:%s" % (self.prefix, city), "%s:kind:%s" % (self.prefix, kind)])
        pks = list(self.r.smembers(tmp))
        self.r.delete(tmp)
        return [pk for pk in pks if self.r.sismember("%s:collection" % self.prefix, pk)]

    def length(self, city: str) -> int:
        return self.r.scard("%s:city:%s" % (self.prefix, city))

    def load(self, pk: str) -> bool:
        return self.r.sismember("%s:collection" % self.prefix, pk)

    def load_then_hmget(self, pk: str) -> list:
        self.load(pk)
        return self.r.hmget("%s:%s:hash" % (self.prefix, pk), ["name", "city"])

    def field_get(self, pk: str) -> str:
        return self.r.get("%s:%s:kind" % (self.prefix, pk))

    def sorted_slice(self) -> list:
        return self.r.sort(
            "%s:collection" % self.prefix, by="%s:*:hash->name" % self.prefix, alpha=True, start=10, num=10
        )


def run(socket_path: str, instances: int) -> List[Dict[str, object]]:
    """Create ``instances`` instances, then time each collection operation; return one row each."""
    settings = {"unix_socket_path": socket_path}
    database = RedisDatabase(**settings)
    database.connection.flushdb()
    counters = Counters(redis.Redis(**settings))
    Person = define_model(database)
    for index in range(instances):
        Person(
            name="person-%06d" % ((index * 7919) % instances),
            city="c%d" % (index % CITIES),
            kind="k%d" % (index % KINDS),
        )
    plain = PlainRedisPy(redis.Redis(decode_responses=True, **settings), Person._name)
    rows = []
    workloads = [
        (
            "filter 1 field, pks",
            200,
            lambda: list(Person.collection(city="c1")),
            lambda: plain.filter_pks("c1"),
        ),
        (
            "filter 1 field, .instances()",
            20,
            lambda: list(Person.collection(city="c1").instances()),
            lambda: plain.filter_instances("c1"),
        ),
        (
            "filter 2 fields, .instances()",
            100,
            lambda: list(Person.collection(city="c1", kind="k1").instances()),
            lambda: plain.two_filters_instances("c1", "k1"),
        ),
        (
            "len() of a filtered collection",
            500,
            lambda: len(Person.collection(city="c1")),
            lambda: plain.length("c1"),
        ),
        (
            "alpha sort by hash field, [10:20]",
            20,
            lambda: Person.collection().sort(by="name", alpha=True)[10:20],
            plain.sorted_slice,
        ),
        ("Model(pk)", 500, lambda: Person("7")._pk == "7", lambda: bool(plain.load("7"))),
        (
            "Model(pk) then hmget",
            500,
            lambda: Person("7").hmget("name", "city"),
            lambda: plain.load_then_hmget("7"),
        ),
        ("field.get()", 1000, lambda: loaded.kind.get(), lambda: plain.field_get("7")),
    ]
    loaded = Person("7")
    for index, (name, repeat, limpyd_run, plain_run) in enumerate(workloads, 1):
        expected = plain_run()
        got = limpyd_run()
        plain_value = isinstance(got, (bool, int, str)) or name == "Model(pk) then hmget"
        got_pks = got if plain_value else [getattr(item, "_pk", item) for item in got]
        if (sorted(got_pks) if isinstance(got_pks, list) else got_pks) != (
            sorted(expected) if isinstance(expected, list) else expected
        ):
            sys.exit("WRONG RESULT: limpyd and redis-py disagree on %r: %r != %r" % (name, got_pks, expected))

        def repeat_limpyd(run=limpyd_run, times=repeat) -> None:
            for _ in range(times):
                run()

        def repeat_plain(run=plain_run, times=repeat) -> None:
            for _ in range(times):
                run()

        rows.append(
            {
                "operation": name,
                "results": 1
                if isinstance(got, (bool, str)) or name == "Model(pk) then hmget"
                else got
                if isinstance(got, int)
                else len(got),
                "limpyd": measure(counters, repeat, repeat_limpyd),
                "redis-py": measure(counters, repeat, repeat_plain),
            }
        )
        sys.stderr.write(
            "collections [%s]: %d of %d (%s) done\n"
            % (limpyd.speedups.IMPLEMENTATION, index, len(workloads), name)
        )
        sys.stderr.flush()
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_collection", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--socket", required=True, help="unix socket of the redis-server to use (it is flushed)"
    )
    parser.add_argument(
        "--instances", type=int, default=10000, help="instances created first (default 10,000)"
    )
    args = parser.parse_args(argv)
    print(
        json.dumps(
            {"implementation": limpyd.speedups.IMPLEMENTATION, "rows": run(args.socket, args.instances)}
        )
    )


if __name__ == "__main__":
    main()
