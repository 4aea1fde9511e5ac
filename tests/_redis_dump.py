"""Helpers shared by the field/model tests: full dumps, exact command logs, script warm-up.

Not a test module (pytest collects ``test_*.py`` only). The test modules import it by name: pytest
puts ``tests/`` on ``sys.path`` (rootdir-relative, no ``__init__.py``).
"""

from __future__ import annotations

import contextlib
import inspect
import re
from typing import Any, Dict, Iterator, List, Tuple

import redis
from redis.lock import Lock

from limpyd.fields import ListField

_TOKEN = re.compile(r"\b[0-9a-f]{32}\b")
_SHA = re.compile(r"\b[0-9a-f]{40}\b")

#: redis-py >= 5 pushes several values with LPUSHX/RPUSHX; redis-py 4 takes one
PUSHX_TAKES_SEVERAL_VALUES = "values" in inspect.signature(redis.Redis.rpushx).parameters


def raw_client(redis_settings: dict, decode: bool = True) -> redis.Redis:
    """Return a redis-py client on the private server, not owned by limpyd."""
    return redis.Redis(**redis_settings, decode_responses=decode)


def dump(client: redis.Redis) -> Dict[Any, Tuple[str, Any, bool]]:
    """Return every key of the server db: ``{key: (type, content, has_ttl)}``.

    Content: string value, hash dict, set, list, or zset ``[(member, score), ...]``. Works with a
    ``decode_responses=False`` client too (non-UTF-8 values are then compared as bytes).
    """
    result: Dict[Any, Tuple[str, Any, bool]] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            content: Any = client.get(key)
        elif kind == "hash":
            content = client.hgetall(key)
        elif kind == "set":
            content = client.smembers(key)
        elif kind == "list":
            content = client.lrange(key, 0, -1)
        elif kind == "zset":
            content = client.zrange(key, 0, -1, withscores=True)
        else:  # pragma: no cover - limpyd writes no other type
            content = None
        result[key] = (kind, content, client.pttl(key) >= 0)
    return result


def layout(client: redis.Redis) -> Dict[str, Tuple[str, Any]]:
    """Return ``{key: (type, content)}`` for every key (the ``dump`` without the TTL flag)."""
    return {key: (kind, content) for key, (kind, content, _) in dump(client).items()}


def warm_scripts(client: redis.Redis) -> None:
    """Load the Lua scripts limpyd runs (lock release, lrank, lcount) so that counts are exact.

    redis-py runs scripts with ``EVALSHA``; on a server that does not know them yet the first call
    costs ``NOSCRIPT`` + ``SCRIPT LOAD`` more. ``FLUSHALL`` keeps the script cache.
    """
    client.script_load(Lock.LUA_RELEASE_SCRIPT)
    for script in ListField.scripts.values():
        client.script_load(script["lua"])


def _normalize(command: Any) -> str:
    text = command.decode("utf-8", "replace") if isinstance(command, bytes) else str(command)
    return _SHA.sub("<sha>", _TOKEN.sub("<token>", text))


@contextlib.contextmanager
def slowlog_entries(client: redis.Redis) -> Iterator[List[dict]]:
    """Record every command the server runs inside the block (SLOWLOG, threshold 0), oldest first.

    Yields a list filled at exit with the SLOWLOG entries; the server's settings are restored.
    """
    saved = {
        name: next(iter(client.config_get(name).values()))
        for name in ("slowlog-max-len", "slowlog-log-slower-than")
    }
    client.config_set("slowlog-max-len", 100000)
    client.config_set("slowlog-log-slower-than", 0)
    client.slowlog_reset()
    recorded: List[dict] = []
    try:
        yield recorded
    finally:
        entries = client.slowlog_get(100000)
        for name, value in saved.items():
            client.config_set(name, value)
        client.slowlog_reset()
        recorded.extend(reversed(entries))


def client_commands(entries: List[dict]) -> List[str]:
    """Return the commands clients sent (not those run by Lua scripts, nor the recorder's own)."""
    commands = []
    for entry in entries:
        address = entry.get("client_address") or b""
        address = address.decode() if isinstance(address, bytes) else address
        if address.startswith("?"):  # run by a Lua script
            continue
        command = entry["command"]
        command = command.decode("utf-8", "replace") if isinstance(command, bytes) else command
        if command.split(" ")[0].upper() in ("SLOWLOG", "CONFIG", "INFO", "PING"):
            continue
        commands.append(command)
    return commands


@contextlib.contextmanager
def command_log(client: redis.Redis) -> Iterator[List[str]]:
    """Record, in order, every command the server runs inside the block (SLOWLOG, threshold 0).

    Yields a list filled at exit with strings such as ``"SADD ns:m:collection 1"``; commands run
    inside Lua scripts appear (lower-cased, as Redis logs them) before the ``EVALSHA`` running them;
    lock tokens become ``<token>`` and script SHAs ``<sha>``.
    """
    log: List[str] = []
    with slowlog_entries(client) as entries:
        yield log
    for entry in entries:
        text = _normalize(entry["command"])
        if text.upper().startswith("SLOWLOG"):
            continue
        log.append(text)


LOCK = ["SET {lock} <token> NX PX 5000"]
UNLOCK = ["get {lock}", "del {lock}", "EVALSHA <sha> 1 {lock} <token>"]


def locked(lock_key: str, commands: List[str]) -> List[str]:
    """Return ``commands`` surrounded by the 4 commands of a ``FieldLock`` on ``lock_key``."""
    return [c.format(lock=lock_key) for c in LOCK] + commands + [c.format(lock=lock_key) for c in UNLOCK]


def warm_model_script(model: type) -> None:
    """Load the atomic-writes script (and Redis 7 function) of ``model`` (each model has its own: its schema is written in)."""
    from limpyd import _atomic

    script = _atomic.script_of(model)
    client = model.database.connection
    client.script_load(script["lua"])
    if model.database.redis_version >= (7,):
        _atomic.load_function(client, script)
