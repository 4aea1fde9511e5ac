"""8 threads write the same pks with colliding unique values; the database stays consistent.

Mixed creations, field updates, instance ``hmset`` and deletions on a small set of shared pks and
of unique values, run in rounds: at each round the 8 threads start together (a barrier) to make
their writes overlap, then the shared checker (tests/_consistency.py) checks the whole database.
Checking after every round catches a duplicate unique value before a later write hides it.
Only limpyd's documented errors (``UniquenessError``, ``DoesNotExist``) may be raised.
"""

from __future__ import annotations

import random
import threading
from typing import Any, Callable, List, Tuple

import pytest
from _consistency import check_consistency

from limpyd import fields
from limpyd.exceptions import DoesNotExist, UniquenessError
from limpyd.indexes import NumberRangeIndex

pytestmark = pytest.mark.slow  # deselected by the middle CI legs (-m "not slow"), see .ci/run

THREADS = 8
ROUNDS = 25
OPERATIONS_PER_ROUND = 30
CODES = ["c%d" % i for i in range(6)]
NAMES = ["n%d" % i for i in range(4)]
TAGS = ["t%d" % i for i in range(4)]
LEGIT = (UniquenessError, DoesNotExist)


def define_item(base: type) -> type:
    """The model of the issue (unique, indexed, plain and set fields, plus a number range)."""

    class Item(base):
        code = fields.InstanceHashField(unique=True)
        name = fields.StringField(indexable=True)
        note = fields.InstanceHashField()
        tags = fields.SetField(indexable=True)
        size = fields.InstanceHashField(indexable=True, indexes=[NumberRangeIndex])

    return Item


def pick_operation(Item: type, rng: random.Random, pks: List[str]) -> Tuple[str, Callable[[], Any]]:
    """One random write on a shared pk (``pks``: the pks created so far, shared by the threads)."""
    pk = rng.choice(pks[-8:]) if pks else "1"
    code, name, tag, size = rng.choice(CODES), rng.choice(NAMES), rng.choice(TAGS), str(rng.randint(0, 5))
    choices = [
        ("create", lambda: pks.append(Item(code=code, name=name, note="x", tags=[tag], size=size)._pk)),
        ("code.hset", lambda: Item.lazy_connect(pk).code.hset(code)),
        # writes racing a deletion go through lazy instances: their pk is checked under the field
        # locks (a loaded instance trusts its load, as in 2.x; atomic_writes closes that case)
        ("hmset", lambda: Item.lazy_connect(pk).hmset(code=code, size=size)),
        ("hmset", lambda: Item.lazy_connect(pk).hmset(code=code, note=name)),
        ("name.set", lambda: Item.lazy_connect(pk).name.set(name)),
        ("tags.sadd", lambda: Item.lazy_connect(pk).tags.sadd(tag)),
        ("size.hset", lambda: Item.lazy_connect(pk).size.hset(size)),
        ("delete", lambda: Item(pk).delete()),
    ]
    label, call = rng.choice(choices)
    return "%s(pk=%s, code=%s)" % (label, pk, code), call


def worker(Item: type, seed: int, pks: List[str], barrier: threading.Barrier, errors: List[str]) -> None:
    """Wait for the others, then run one round of random operations."""
    rng = random.Random(seed)
    barrier.wait()
    for _ in range(OPERATIONS_PER_ROUND):
        label, call = pick_operation(Item, rng, pks)
        try:
            call()
        except LEGIT:
            pass
        except Exception as exc:
            errors.append("%s raised %s: %s" % (label, type(exc).__name__, exc))


def run_round(Item: type, round_number: int, pks: List[str]) -> List[str]:
    """Run the 8 threads for one round; return the errors they met."""
    barrier = threading.Barrier(THREADS)
    errors: List[str] = []
    threads = [
        threading.Thread(target=worker, args=(Item, round_number * 100 + n, pks, barrier, errors))
        for n in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck"
    return errors


def test_threads_keep_the_database_consistent(Base, client):
    Item = define_item(Base)
    pks: List[str] = []
    problems: List[str] = []
    seen: set = set()
    for code in CODES[:3]:
        pks.append(Item(code=code, name="n0", tags=["t0"], size="1")._pk)
    for round_number in range(ROUNDS):
        problems += ["round %d: %s" % (round_number, e) for e in run_round(Item, round_number, pks)]
        new = [p for p in check_consistency(client, [Item]) if p not in seen]  # each problem once
        seen.update(new)
        problems += ["after round %d: %s" % (round_number, p) for p in new]
    assert problems == [], "%d problem(s):\n%s" % (len(problems), "\n".join(problems[:80]))


def _claim(
    Item: type,
    pk: str,
    value: str,
    use_hmset: bool,
    barrier: threading.Barrier,
    outcome: List[Tuple[str, str]],
) -> None:
    """Wait for the others, then give ``value`` to ``pk`` (``hmset`` or ``code.hset``); record what happened."""
    barrier.wait()
    try:
        if use_hmset:
            Item(pk).hmset(code=value, note=value)
        else:
            Item(pk).code.hset(value)
        outcome.append((pk, "set"))
    except UniquenessError:
        outcome.append((pk, "refused"))
    except Exception as exc:
        outcome.append((pk, "%s: %s" % (type(exc).__name__, exc)))


def test_threads_claiming_one_unique_value(Base, client):
    """8 threads give one unique value to 8 instances at once, through ``hmset`` and ``hset``: one wins."""
    Item = define_item(Base)
    pks = [Item(code="own-%d" % n)._pk for n in range(THREADS)]
    problems: List[str] = []
    for round_number in range(30):
        value = "shared-%d" % round_number
        barrier = threading.Barrier(THREADS)
        outcome: List[Tuple[str, str]] = []
        threads = [
            threading.Thread(target=_claim, args=(Item, pk, value, n % 2 == 0, barrier, outcome))
            for n, pk in enumerate(pks)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        winners = sorted(pk for pk, result in outcome if result == "set")
        if len(winners) > 1:
            problems.append("round %d: %r given to pks %s" % (round_number, value, winners))
        problems += [
            "round %d: pk %s %s" % (round_number, pk, r) for pk, r in outcome if r not in ("set", "refused")
        ]
        problems += ["after round %d: %s" % (round_number, p) for p in check_consistency(client, [Item])]
        for n, pk in enumerate(pks):  # give every instance its own value back
            Item(pk).code.hset("own-%d" % n)
    assert problems == [], "%d problem(s):\n%s" % (len(problems), "\n".join(problems[:80]))
