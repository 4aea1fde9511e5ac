"""Concurrent creations with colliding unique values: one instance per value, consistent indexes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _concurrency_worker import define_model
from _redis_dump import dump

WORKERS = 8
ATTEMPTS = 1000
VALUES = 150


@pytest.mark.slow
def test_colliding_unique_creations_across_processes(database, redis_server):
    if "unix_socket_path" not in redis_server:
        pytest.skip("the workers connect through the private server's unix socket")
    socket_path = redis_server["unix_socket_path"]
    Racer = define_model(database)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    )
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).parent / "_concurrency_worker.py"),
                socket_path,
                str(worker),
                str(ATTEMPTS),
                str(VALUES),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for worker in range(WORKERS)
    ]
    created = rejected = 0
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        made, refused = map(int, out.split())
        created += made
        rejected += refused
    assert created + rejected == WORKERS * ATTEMPTS
    assert created == VALUES  # every value was tried by several workers: exactly one instance each

    pks = Racer.get_field("pk").collection()
    assert len(pks) == VALUES
    codes = [Racer(pk).code.hget() for pk in pks]
    assert sorted(codes) == sorted("code-%d" % value for value in range(VALUES))
    for code in set(codes):
        assert len(database.connection.smembers("race:racer:code:%s" % code)) == 1

    client = database.connection
    before = {key: value for key, value in dump(client).items() if ":lock-for-update:" not in key}
    for field_name in ("code", "group", "tags"):
        Racer.get_field(field_name).rebuild_indexes()
    after = {key: value for key, value in dump(client).items() if ":lock-for-update:" not in key}
    assert after == before
    assert not [key for key in client.keys("*") if ":lock-for-update:" in key]
