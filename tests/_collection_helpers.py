"""Helpers of the collection tests: models, exact client command logs, key listings.

Not a test module (pytest collects ``test_*.py`` only); the collection test modules import it by
name (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import re
from typing import Dict, Iterator, List

import redis
from _redis_dump import client_commands, slowlog_entries

from limpyd.fields import InstanceHashField, StringField
from limpyd.model import RedisModel

_HEX = re.compile(r"\b[0-9a-f]{32}\b")
_SHA = re.compile(r"\b[0-9a-f]{40}\b")

#: commands whose key arguments (after the destination) form an unordered set (SINTERSTORE and friends)
_UNORDERED_AFTER_DEST = {"SINTERSTORE", "SUNIONSTORE", "ZINTERSTORE", "ZUNIONSTORE"}


def raw_client(redis_settings: dict) -> redis.Redis:
    """Return a redis-py client on the private server, independent from limpyd."""
    return redis.Redis(**redis_settings, decode_responses=True)


def _canonical(commands: List[str]) -> List[str]:
    """Name temporary tokens ``<a>``, ``<b>``... in order of appearance; sort unordered arguments."""
    names: Dict[str, str] = {}

    def name(match: "re.Match[str]") -> str:
        token = match.group(0)
        if token not in names:
            names[token] = "<%s>" % chr(ord("a") + len(names))
        return names[token]

    result = []
    for command in commands:
        command = _HEX.sub(name, _SHA.sub("<sha>", command))
        parts = command.split(" ")
        verb = parts[0].upper()
        if verb in _UNORDERED_AFTER_DEST:
            parts = parts[:2] + sorted(parts[2:])
        elif verb == "DEL":
            parts = parts[:1] + sorted(parts[1:])
        elif verb == "EVALSHA":  # keep the key names, not the script arguments (temporary names)
            parts = parts[: 3 + int(parts[2])]
        result.append(" ".join(parts))
    return result


@contextlib.contextmanager
def command_log(client: redis.Redis) -> Iterator[List[str]]:
    """Record the commands clients send inside the block (not those run by Lua scripts).

    Temporary tokens (32 hex chars) become ``<a>``, ``<b>``... in order of first appearance,
    script SHAs ``<sha>``; the source keys of ``SINTERSTORE``/``SUNIONSTORE`` and the keys of ``DEL``
    are sorted, and ``EVALSHA`` keeps only its key names.
    """
    log: List[str] = []
    with slowlog_entries(client) as entries:
        yield log
    log.extend(_canonical(client_commands(entries)))


def keys_of(client: redis.Redis) -> Dict[str, int]:
    """Return ``{key: ttl in seconds or -1}`` of every key of the db."""
    return {key: client.ttl(key) for key in client.scan_iter(count=1000)}


def temporary_keys(client: redis.Redis) -> List[str]:
    """Return the temporary keys of collections and indexes present in the db."""
    return sorted(
        key for key in client.scan_iter(count=1000) if "__collection__" in key or "__index__" in key
    )


def boat_model(db, ns):
    """Return a ``Boat`` model (name unique, power indexable hash field, launched indexable, length)."""

    class Boat(RedisModel):
        database = db
        namespace = ns
        name = StringField(unique=True)
        power = InstanceHashField(indexable=True, default="sail")
        launched = StringField(indexable=True)
        length = StringField()

    return Boat


def boats(db, ns):
    """Return the ``Boat`` model with pks 1-4 (sail: 1, 2, 3; engine: 4)."""
    Boat = boat_model(db, ns)
    Boat(name="Pen Duick I", length=15.1, launched=1898)
    Boat(name="Pen Duick II", length=13.6, launched=1964)
    Boat(name="Pen Duick III", length=17.45, launched=1966)
    Boat(name="Rainbow Warrior I", power="engine", length=40, launched=1955)
    return Boat
