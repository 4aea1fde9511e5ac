"""Sphinx extension: start a private redis-server for the doctest builder, stop it at the end.

The server listens on a unix socket in a temporary directory (no TCP port, no persistence), so the
documentation examples never touch a server you run. Its socket path is exported as
``LIMPYD_DOCS_REDIS_SOCKET`` for ``doctest_global_setup`` (``docs/conf.py``). The binary is found
like the tests find it: ``LIMPYD_TEST_REDIS_SERVER`` or ``redis-server`` on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sphinx.errors import ExtensionError

_state: dict = {}


def _start(app: Any) -> None:
    if app.builder.name != "doctest" or os.environ.get("LIMPYD_DOCS_REDIS_SOCKET"):
        return
    import redis

    binary = os.environ.get("LIMPYD_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        raise ExtensionError(
            "redis-server not found: install the redis-server package or set LIMPYD_TEST_REDIS_SERVER"
        )
    directory = Path(tempfile.mkdtemp(prefix="limpyd-docs-"))
    socket_path, log_path = directory / "redis.sock", directory / "redis.log"
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", str(directory), "--logfile", str(log_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    _state.update(process=process, directory=directory)
    deadline = time.monotonic() + 10
    while True:
        try:
            if socket_path.exists() and redis.Redis(unix_socket_path=str(socket_path)).ping():
                break
        except redis.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(app, None)
            log = log_path.read_text() if log_path.exists() else "(no log)"
            raise ExtensionError("the private redis-server did not start:\n" + log[-2000:])
        time.sleep(0.02)
    os.environ["LIMPYD_DOCS_REDIS_SOCKET"] = str(socket_path)


def _stop(app: Any, exception: Any) -> None:
    process = _state.pop("process", None)
    if process is not None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        os.environ.pop("LIMPYD_DOCS_REDIS_SOCKET", None)
    directory = _state.pop("directory", None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def setup(app: Any) -> dict:
    """Register the start and stop hooks."""
    app.connect("builder-inited", _start)
    app.connect("build-finished", _stop)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
