"""A private redis-server for the benchmarks: unix socket, no persistence, stopped on exit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional

import redis


class PrivateRedisServer:
    """Start ``redis-server`` in a temporary directory; use as a context manager."""

    def __init__(self, binary: Optional[str] = None) -> None:
        self.binary = binary or os.environ.get("LIMPYD_TEST_REDIS_SERVER") or shutil.which("redis-server")
        if not self.binary:
            sys.exit(
                "redis-server not found: install the redis-server package or set LIMPYD_TEST_REDIS_SERVER"
            )
        self.directory = tempfile.mkdtemp(prefix="limpyd-bench-")
        self.socket_path = os.path.join(self.directory, "redis.sock")
        self.process: Optional[subprocess.Popen] = None

    @property
    def settings(self) -> dict:
        """Return the connection settings of the server (for redis.Redis / RedisDatabase)."""
        return {"unix_socket_path": self.socket_path}

    def __enter__(self) -> "PrivateRedisServer":
        log_path = os.path.join(self.directory, "redis.log")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                "0",
                "--unixsocket",
                self.socket_path,
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.directory,
                "--logfile",
                log_path,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if os.path.exists(self.socket_path) and redis.Redis(unix_socket_path=self.socket_path).ping():
                    return self
            except redis.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                sys.exit("the private redis-server did not start; see %s" % log_path)
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


def load_keys(client: redis.Redis, count: int, prefix: str = "bench:key:", chunk: int = 50_000) -> None:
    """Create ``count`` string keys server-side (Lua, in chunks), with a progress line on stderr."""
    script = client.register_script(
        "for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do redis.call('SET', ARGV[3] .. i, i) end"
    )
    start = time.perf_counter()
    done = 0
    while done < count:
        upto = min(done + chunk, count)
        script(args=[done, upto - 1, prefix])
        done = upto
        sys.stderr.write(
            "\rloading keys: %d of %d (%.1fs elapsed)" % (done, count, time.perf_counter() - start)
        )
        sys.stderr.flush()
    sys.stderr.write("\n")
