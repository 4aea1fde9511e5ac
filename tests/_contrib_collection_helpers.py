"""Helpers of the ``limpyd.contrib.collection`` tests: models, exact command logs.

Not a test module (pytest collects ``test_*.py`` only); the test modules import it by name.
"""

from __future__ import annotations

import contextlib
import re
from typing import Dict, Iterator, List

import redis
from _redis_dump import client_commands, slowlog_entries

from limpyd.contrib.collection import ExtendedCollectionManager
from limpyd.fields import InstanceHashField, ListField, SetField, SortedSetField, StringField
from limpyd.model import RedisModel

_HEX = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
_SHA = re.compile(r"(?<![0-9a-f])[0-9a-f]{40}(?![0-9a-f])")

#: verbs whose arguments after the first ``skip`` ones form an unordered set
_UNORDERED = {"SINTERSTORE": 2, "SUNIONSTORE": 2, "ZINTERSTORE": 3, "ZUNIONSTORE": 3, "DEL": 1, "SADD": 2}


def _canonical(commands: List[str]) -> List[str]:
    """Name 32-hex tokens ``<a>``, ``<b>``... in order of appearance; sort unordered arguments.

    Also: ``EVALSHA`` keeps its key names only, ``MSET`` pairs are sorted, and a run of
    consecutive ``ZSCORE`` commands is sorted (they follow the unspecified order of a set).
    """
    names: Dict[str, str] = {}

    def name(match: "re.Match[str]") -> str:
        token = match.group(0)
        if token not in names:
            names[token] = "<%s>" % chr(ord("a") + len(names))
        return names[token]

    result: List[str] = []
    for command in commands:
        command = _HEX.sub(name, _SHA.sub("<sha>", command))
        parts = command.split(" ")
        verb = parts[0].upper()
        if verb in _UNORDERED:
            skip = _UNORDERED[verb]
            parts = parts[:skip] + sorted(parts[skip:])
        elif verb == "MSET":
            pairs = sorted(zip(parts[1::2], parts[2::2]))
            parts = parts[:1] + [item for pair in pairs for item in pair]
        elif verb == "EVALSHA":
            parts = parts[: 3 + int(parts[2])]
        result.append(" ".join(parts))
    # sort runs of ZSCORE
    index = 0
    while index < len(result):
        end = index
        while end < len(result) and result[end].startswith("ZSCORE "):
            end += 1
        if end > index:
            result[index:end] = sorted(result[index:end])
            index = end
        else:
            index += 1
    return result


@contextlib.contextmanager
def command_log(client: redis.Redis) -> Iterator[List[str]]:
    """Record the commands clients send inside the block (not those run by Lua scripts), canonical."""
    log: List[str] = []
    with slowlog_entries(client) as entries:
        yield log
    log.extend(_canonical(client_commands(entries)))


def verbs(log: List[str]) -> List[str]:
    """Return the command names of ``log``."""
    return [entry.split(" ")[0] for entry in log]


def warm_list_script(client: redis.Redis) -> None:
    """Load the ``list_to_set`` script, so that counts do not include its first ``SCRIPT LOAD``."""
    client.script_load(ExtendedCollectionManager.scripts["list_to_set"]["lua"])


def shop(db, ns, manager=ExtendedCollectionManager):
    """Return a ``Product`` model and its 6 instances (pks 1-6).

    ``name`` (unique), ``cat`` (indexable, ``x`` for even pks, ``y`` for odd ones), ``price``
    (instance hash, indexable), ``note`` (plain string), ``tags`` (set), ``ranks`` (sorted set),
    ``history`` (list). The sorted set ``ranks`` of pk 6 ("the board") scores pks 1-5 against
    their order: 1 -> 50, 2 -> 10, 3 -> 30, 4 -> 20, 5 -> 40 (6 is absent).
    """

    class Product(RedisModel):
        database = db
        namespace = ns
        collection_manager = manager
        name = StringField(unique=True)
        cat = StringField(indexable=True)
        price = InstanceHashField(indexable=True)
        note = StringField()
        tags = SetField()
        ranks = SortedSetField()
        history = ListField()

    for pk in range(1, 7):
        Product(name="p%d" % pk, cat="x" if pk % 2 == 0 else "y", price=pk * 10)
    board = Product(6)
    board.ranks.zadd({"1": 50, "2": 10, "3": 30, "4": 20, "5": 40})
    return Product
