"""The installed ``limpyd`` console script against the private server: output and exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = shutil.which("limpyd", path=os.path.dirname(sys.executable))

pytestmark = pytest.mark.skipif(
    SCRIPT is None, reason="the limpyd console script is not installed: pip install -e ."
)


@pytest.fixture
def models_module(tmp_path: Path, namespace: str, redis_settings: dict, database) -> dict:
    """Write a module declaring a model (on a database with wrong settings: --url must fix them)."""
    name = "cli_models_%s" % namespace
    (tmp_path / ("%s.py" % name)).write_text(
        textwrap.dedent(
            """
        from limpyd import fields, model
        from limpyd.database import RedisDatabase

        database = RedisDatabase(host="localhost", port=1, db=0)  # never used: --url switches it

        class Shop(model.RedisModel):
            database = database
            namespace = %r
            code = fields.InstanceHashField(unique=True)
            name = fields.StringField(indexable=True)
    """
            % namespace
        )
    )
    url = "unix://%s?db=%d" % (redis_settings["unix_socket_path"], redis_settings.get("db", 0))
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return {"module": name, "url": url, "env": env, "namespace": namespace}


def run(setup: dict, *args: str, url: bool = True) -> subprocess.CompletedProcess:
    command = [SCRIPT]
    if url:
        command += ["--url", setup["url"]]
    command += ["--models", setup["module"], *args]
    return subprocess.run(command, capture_output=True, text=True, env=setup["env"], timeout=120)


def _fill(client, namespace, count=10):
    for i in range(1, count + 1):
        client.hset("%s:shop:%d:hash" % (namespace, i), "code", "c%d" % i)
        client.sadd("%s:shop:code:c%d" % (namespace, i), i)
        client.set("%s:shop:%d:name" % (namespace, i), "n%d" % (i % 2))
        client.sadd("%s:shop:name:n%d" % (namespace, i % 2), i)
        client.sadd("%s:shop:collection" % namespace, i)


def test_audit_clean_then_findings_then_repair(models_module, client):
    ns = models_module["namespace"]
    _fill(client, ns)
    done = run(models_module, "audit")
    assert done.returncode == 0, done.stderr
    assert "10 instances" in done.stdout and "clean" in done.stdout
    client.srem("%s:shop:name:n1" % ns, "3")
    client.set("%s:shop:99:name" % ns, "x")
    done = run(models_module, "--json", "audit")
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    counts = data["models"][0]["counts"]
    assert counts == {"missing-entry": 1, "orphan-data": 1}
    # dry run: nothing written, exit 1 (fixes to apply)
    done = run(models_module, "repair")
    assert done.returncode == 1 and "dry run" in done.stdout
    assert client.sismember("%s:shop:name:n1" % ns, "3") == 0
    done = run(models_module, "repair", "--apply", "--delete-orphans")
    assert done.returncode == 0, done.stdout + done.stderr
    assert client.sismember("%s:shop:name:n1" % ns, "3") == 1 and not client.exists("%s:shop:99:name" % ns)
    assert run(models_module, "audit").returncode == 0


def test_rebuild_and_stats(models_module, client):
    ns = models_module["namespace"]
    _fill(client, ns)
    client.delete("%s:shop:name:n0" % ns)
    done = run(models_module, "--progress", "rebuild-indexes", "--field", "name")
    assert done.returncode == 0, done.stderr
    assert "rebuilt name on 10 instances" in done.stdout
    assert client.scard("%s:shop:name:n0" % ns) == 5
    client.set("other:thing", "1")
    done = run(models_module, "--json", "stats", "--sample", "5")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["sample"] == 5
    groups = {(g["model"], g["role"], g["field"]): g for g in data["groups"]}
    assert groups[("%s:shop" % ns, "data", "name")]["count"] == 10
    assert groups[("%s:shop" % ns, "index", "code")]["count"] == 10
    assert groups[("%s:shop" % ns, "data", "name")]["memory"] > 0
    assert ("other:thing", "unknown prefix", "") in groups
    done = run(models_module, "stats")
    assert "sample of at most 50 keys per group" in done.stdout


def test_python_dash_m(models_module, client):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "limpyd",
            "--url",
            models_module["url"],
            "--models",
            models_module["module"],
            "audit",
        ],
        capture_output=True,
        text=True,
        env=models_module["env"],
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "no_such_module_xyz", "audit"], "cannot import --models no_such_module_xyz"),
        (["audit"], "no models: name the module"),
    ],
)
def test_bad_module(args, message, models_module):
    done = subprocess.run(
        [SCRIPT, "--url", models_module["url"], *args],
        capture_output=True,
        text=True,
        env=models_module["env"],
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_unknown_model_and_unreachable_server(models_module):
    done = run(models_module, "audit", "--model", "Nope")
    assert done.returncode == 2 and "unknown model 'Nope': choose among" in done.stderr
    assert "Traceback" not in done.stderr
    done = run(models_module, "audit", url=False)  # the module's own settings: port 1
    assert done.returncode == 2 and "cannot reach Redis" in done.stderr and "check --url" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    bad = dict(models_module, url="http://x")
    done = run(bad, "audit")
    assert done.returncode == 2 and "--url 'http://x'" in done.stderr


def test_help_lists_subcommands():
    done = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for name in ("audit", "repair", "rebuild-indexes", "stats"):
        assert name in done.stdout
