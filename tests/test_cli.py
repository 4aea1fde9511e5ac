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


#: the head of the modules the tests write: a database with wrong settings (--url must fix them)
MODULE_HEAD = """
from limpyd import fields, model
from limpyd.database import RedisDatabase

database = RedisDatabase(host="localhost", port=1, db=0)  # never used: --url switches it
"""


def write_module(tmp_path: Path, name: str, models: str) -> dict:
    """Write the module ``name`` declaring ``models`` after :data:`MODULE_HEAD`; return its env."""
    (tmp_path / ("%s.py" % name)).write_text(MODULE_HEAD + textwrap.dedent(models))
    return dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture
def models_module(tmp_path: Path, namespace: str, redis_settings: dict, database) -> dict:
    """Write a module declaring a model ``Shop``; return how to run the command on it."""
    name = "cli_models_%s" % namespace
    env = write_module(
        tmp_path,
        name,
        """
        class Shop(model.RedisModel):
            database = database
            namespace = %r
            code = fields.InstanceHashField(unique=True)
            name = fields.StringField(indexable=True)
        """
        % namespace,
    )
    url = "unix://%s?db=%d" % (redis_settings["unix_socket_path"], redis_settings.get("db", 0))
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
    for name in ("audit", "repair", "rebuild-indexes", "stats", "migrate", "reaper"):
        assert name in done.stdout


@pytest.fixture
def expiring_module(tmp_path: Path, namespace: str, models_module: dict) -> dict:
    """A module declaring an expiring model (``Session``)."""
    name = "cli_expiring_%s" % namespace
    env = write_module(
        tmp_path,
        name,
        """
        class Session(model.RedisModel):
            database = database
            namespace = %r
            expiring = True
            user = fields.StringField(indexable=True)
        """
        % namespace,
    )
    return dict(models_module, module=name, env=env)


def _sessions(database, namespace):
    from limpyd import fields, model

    return type(
        "Session",
        (model.RedisModel,),
        {
            "database": database,
            "namespace": namespace,
            "expiring": True,
            "user": fields.StringField(indexable=True),
        },
    )


def test_reaper_once_purges_what_is_due(expiring_module, database, client):
    import time

    Session = _sessions(database, expiring_module["namespace"])
    sessions = [Session(user="u%d" % (n % 2)) for n in range(5)]
    for session in sessions[:3]:
        session.expire_in(0.05)
    time.sleep(0.1)
    done = run(expiring_module, "reaper", "--once")
    assert done.returncode == 0, done.stderr
    assert "purged 3 due instance(s) of %s.Session" % expiring_module["module"] in done.stdout
    assert "purged 3 due instance(s) in all" in done.stdout
    assert sorted(Session.collection()) == sorted(s.pk.get() for s in sessions[3:])
    assert client.keys("%s:session:1:*" % expiring_module["namespace"]) == []  # keys gone too
    done = run(expiring_module, "--json", "reaper", "--once")
    assert done.returncode == 0 and json.loads(done.stdout)["purged"] == 0


def test_reaper_runs_until_sigterm(expiring_module, database, client):
    import signal
    import time

    Session = _sessions(database, expiring_module["namespace"])
    process = subprocess.Popen(
        [
            SCRIPT,
            "--url",
            expiring_module["url"],
            "--models",
            expiring_module["module"],
            "reaper",
            "--max-sleep",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=expiring_module["env"],
    )
    try:
        for n in range(4):
            Session(user="u").expire_in(0.2)
        collection = "%s:session:collection" % expiring_module["namespace"]
        deadline = time.monotonic() + 20
        while client.scard(collection) and time.monotonic() < deadline:  # raw reads: no ORM purge
            time.sleep(0.05)
        assert client.scard(collection) == 0  # removed by the reaper: nobody read them
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "watching %s.Session" % expiring_module["module"] in err
    assert "purged 4 due instance(s) in all" in out


def test_reaper_needs_an_expiring_model(models_module):
    done = run(models_module, "reaper", "--once")
    assert (
        done.returncode == 2 and "has expiring instances" in done.stderr and "expiring = True" in done.stderr
    )
    assert len(done.stderr.strip().splitlines()) == 1


def test_url_of_a_cluster_node(models_module, cluster_database, redis_cluster):
    """``--url`` naming a Redis Cluster node switches the databases to the cluster by itself."""
    from limpyd import fields, model

    Shop = type(
        "Shop",
        (model.RedisModel,),
        {
            "database": cluster_database,
            "namespace": models_module["namespace"],
            "code": fields.InstanceHashField(unique=True),
            "name": fields.StringField(indexable=True),
        },
    )
    for n in range(10):
        Shop(code="c%d" % n, name="n%d" % (n % 2))
    setup = dict(models_module, url="redis://%s:%d" % (redis_cluster.host, redis_cluster.port))
    done = run(setup, "--json", "audit")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["models"][0]
    assert report["instances"] == 10 and report["counts"] == {}
    cluster_database.connection.srem("{%s:shop}:name:n1" % models_module["namespace"], "2")
    done = run(setup, "--json", "audit")
    assert done.returncode == 1 and json.loads(done.stdout)["models"][0]["counts"] == {"missing-entry": 1}
    done = run(dict(setup, url=setup["url"] + "/3"), "audit")
    assert done.returncode == 2 and "only database 0" in done.stderr


def test_a_sharded_model_is_listed_once(models_module, tmp_path, namespace):
    """The shard classes are not models of their own for the command: the integrity tools run on
    the sharded model, shard after shard, in one report (tests/test_sharding_integrity.py)."""
    name = "cli_sharded_%s" % namespace
    env = write_module(
        tmp_path,
        name,
        """
        class Event(model.RedisModel):
            database = database
            namespace = %r
            shards = 4
            kind = fields.StringField(indexable=True)
        """
        % namespace,
    )
    done = run(dict(models_module, module=name, env=env), "audit", "--model", "Event@1")
    assert done.returncode == 2 and "unknown model 'Event@1': choose among %s.Event" % name in done.stderr
    done = run(dict(models_module, module=name, env=env), "--json", "audit")
    assert done.returncode == 0, done.stdout + done.stderr
    reports = json.loads(done.stdout)["models"]
    assert len(reports) == 1 and "4 shards" in reports[0]["model"] and reports[0]["clean"]
