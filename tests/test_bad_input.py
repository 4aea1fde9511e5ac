"""Bad input: each error is the documented exception and leaves Redis exactly as it was.

"Exactly as it was" is checked with a full dump of the server (every key, its type, its content and
whether it has a TTL) taken with a client that does not decode (bytes compared as bytes).
The values limpyd stores and the fields' commands: docs/models.rst; what a refused write leaves:
docs/failure-semantics.rst.
"""

from __future__ import annotations

import datetime
import decimal

import pytest
import redis
from _redis_dump import dump, raw_client, warm_scripts

from limpyd import model
from limpyd.exceptions import DoesNotExist, ImplementationError, LimpydException, UniquenessError
from limpyd.fields import (
    HashField,
    InstanceHashField,
    ListField,
    PKField,
    SetField,
    SortedSetField,
    StringField,
)
from limpyd.indexes import TextRangeIndex


@pytest.fixture
def raw(redis_settings, database):
    client = raw_client(redis_settings, decode=False)
    warm_scripts(client)
    yield client
    client.close()


@pytest.fixture
def M(database, namespace):
    db, ns = database, namespace

    class M(model.RedisModel):
        database = db
        namespace = ns
        s = StringField()
        i = StringField(indexable=True)
        u = StringField(unique=True)
        t = StringField(unique=True, indexes=[TextRangeIndex])
        ih = InstanceHashField(indexable=True)
        uih = InstanceHashField(unique=True)
        tags = SetField(indexable=True)
        utags = SetField(unique=True)
        items = ListField(indexable=True)
        uitems = ListField(unique=True)
        scores = SortedSetField(indexable=True)
        uscores = SortedSetField(unique=True)
        h = HashField(indexable=True)

    return M


@pytest.fixture
def objects(M):
    """Two fully populated instances: ``taken`` owns the unique values, ``obj`` is the one we break."""
    taken = M(
        s="s0",
        i="i0",
        u="taken",
        t="taken",
        ih="ih0",
        uih="taken",
        tags=["a0"],
        utags=["taken"],
        items=["l0"],
        uitems=["taken"],
        scores={"z0": 1},
        uscores={"taken": 1},
        h={"k": "v0"},
    )
    obj = M(
        s="s1",
        i="i1",
        u="u1",
        t="t1",
        ih="ih1",
        uih="uih1",
        tags=["a1", "b1"],
        utags=["x1"],
        items=["l1", "m1"],
        uitems=["y1"],
        scores={"z1": 2},
        uscores={"w1": 2},
        h={"k": "v1", "n": "5"},
    )
    return taken, obj


def unchanged(raw, call, exception, match=None):
    """Assert that ``call()`` raises ``exception`` and that Redis did not change."""
    before = dump(raw)
    with pytest.raises(exception, match=match):
        call()
    assert dump(raw) == before


NONE_CALLS = [
    ("string set", lambda o: o.s.set(None)),
    ("indexable set", lambda o: o.i.set(None)),
    ("unique set", lambda o: o.u.set(None)),
    ("indexable getset", lambda o: o.i.getset(None)),
    ("setnx", lambda o: o.s.setnx(None)),
    ("incrby", lambda o: o.s.incrby(None)),
    ("indexable append", lambda o: o.i.append(None)),
    ("instance hash hset", lambda o: o.ih.hset(None)),
    ("unique instance hash hset", lambda o: o.uih.hset(None)),
    ("sadd", lambda o: o.tags.sadd(None)),
    ("sadd with a good value first", lambda o: o.tags.sadd("ok", None)),
    ("unique sadd", lambda o: o.utags.sadd("new", None)),
    ("srem", lambda o: o.tags.srem(None)),
    ("rpush", lambda o: o.items.rpush("ok", None)),
    ("lpushx", lambda o: o.items.lpushx(None)),
    ("lset", lambda o: o.items.lset(0, None)),
    ("linsert", lambda o: o.items.linsert("before", "l1", None)),
    ("zadd member", lambda o: o.scores.zadd({None: 1})),
    ("zadd score", lambda o: o.scores.zadd({"ok": None})),
    ("zincrby amount", lambda o: o.scores.zincrby(None, "ok")),
    ("hash hset", lambda o: o.h.hset("k", None)),
    ("hash hmset", lambda o: o.h.hmset(k="ok", n=None)),
    ("hash hincrby", lambda o: o.h.hincrby("n", None)),
    ("model hmset", lambda o: o.hmset(ih="ok", uih=None)),
]


@pytest.mark.parametrize("call", [c for _, c in NONE_CALLS], ids=[n for n, _ in NONE_CALLS])
def test_none_where_a_value_is_required(raw, objects, call):
    unchanged(raw, lambda: call(objects[1]), redis.DataError)


class NoStr:
    pass


BAD_VALUES = [
    object(),
    NoStr(),
    True,
    False,
    decimal.Decimal("1.5"),
    datetime.datetime(2020, 1, 2),
    datetime.date(2020, 1, 2),
    (1,),
    [1],
    {"a": 1},
]
BAD_IDS = ["object", "class", "True", "False", "Decimal", "datetime", "date", "tuple", "list", "dict"]

VALUE_CALLS = [
    ("string set", lambda o, v: o.s.set(v)),
    ("indexable set", lambda o, v: o.i.set(v)),
    ("unique set", lambda o, v: o.u.set(v)),
    ("text-range unique set", lambda o, v: o.t.set(v)),
    ("instance hash", lambda o, v: o.ih.hset(v)),
    ("sadd", lambda o, v: o.tags.sadd("ok", v)),
    ("rpush", lambda o, v: o.items.rpush(v)),
    ("zadd", lambda o, v: o.scores.zadd({"ok": 1, "other": v})),
    ("hset", lambda o, v: o.h.hset("k", v)),
    ("hmset", lambda o, v: o.h.hmset(n="ok", k=v)),
    ("model hmset", lambda o, v: o.hmset(ih=v)),
]


@pytest.mark.parametrize("value", BAD_VALUES, ids=BAD_IDS)
@pytest.mark.parametrize("call", [c for _, c in VALUE_CALLS], ids=[n for n, _ in VALUE_CALLS])
def test_objects_without_a_sensible_str(raw, objects, call, value):
    unchanged(raw, lambda: call(objects[1], value), redis.DataError)


def test_non_utf8_bytes(raw, M, objects, namespace):
    obj = objects[1]
    # non-UTF-8 data cannot be read back (every reply is decoded)
    raw.set(obj.s.key, b"\xff\xfe")
    with pytest.raises(UnicodeDecodeError):
        obj.s.get()
    obj.s.set("s1")
    # indexable: the index value cannot be computed (it is the UTF-8 decoded str), nothing is written
    # (the spec names no exception for this case: the decode error, or a DataError raised earlier)
    for call in (
        lambda: obj.i.set(b"\xff"),
        lambda: obj.u.set(b"\xff"),
        lambda: obj.tags.sadd("ok", b"\xff"),
        lambda: obj.items.rpush(b"\xc3"),
        lambda: obj.h.hset("k", b"\xff"),
        lambda: obj.hmset(ih=b"\xff"),
        lambda: M(u=b"\xff"),
    ):
        unchanged(raw, call, (UnicodeDecodeError, redis.DataError))
    # valid UTF-8 bytes are fine and index as str
    obj.i.set("caf\u00e9".encode())
    assert obj.i.get() == "caf\u00e9"
    assert raw.smembers(("%s:m:i:caf\u00e9" % namespace).encode()) == {b"2"}


def test_unknown_field_names(raw, M, objects):
    obj = objects[1]
    attribute_error = '^"foo" is not a field for the model "M"'
    unchanged(raw, lambda: M(foo=1), ValueError, "^`foo` is not a valid field name for `M`.$")
    unchanged(raw, lambda: M(s="new", foo=1), ValueError, "^`foo` is not a valid field name for `M`.$")
    unchanged(raw, lambda: M.get_field("foo"), AttributeError, attribute_error)
    unchanged(raw, lambda: obj.get_field("foo"), AttributeError, attribute_error)
    unchanged(raw, lambda: obj.hmset(ih="new", foo=1), AttributeError, attribute_error)
    unchanged(raw, lambda: obj.hmset(foo=1), ValueError, "^Only InstanceHashField can be used here.$")
    unchanged(raw, lambda: obj.hmset(s="x"), ValueError, "^Only InstanceHashField can be used here.$")
    unchanged(raw, lambda: obj.hmget("foo"), ValueError, "^Only InstanceHashField can be used here.$")
    unchanged(raw, lambda: obj.hdel("foo", "s"), ValueError, "^Only InstanceHashField can be used here.$")
    unchanged(raw, lambda: M.get(foo=1), AttributeError, attribute_error)
    unchanged(raw, lambda: M.exists(foo=1), AttributeError, attribute_error)
    unchanged(raw, lambda: M.collection(foo=1), AttributeError, attribute_error)


NOT_ALLOWED = [
    ("instance hash expire", lambda o: o.ih.expire(10), (AttributeError, ImplementationError), None),
    ("instance hash ttl", lambda o: o.uih.ttl(), AttributeError, None),
    ("pk ttl", lambda o: o.pk.ttl(), AttributeError, "^ttl is not an available command for AutoPKField "),
    (
        "traverse unknown",
        lambda o: o.s._traverse_command("hget", "x"),
        AttributeError,
        "^hget is not an available command for StringField ",
    ),
    (
        "expire indexable",
        lambda o: o.i.expire(10),
        ImplementationError,
        "^Indexable fields cannot be expired$",
    ),
    (
        "pexpire set",
        lambda o: o.tags.pexpire(10000),
        ImplementationError,
        "^Indexable fields cannot be expired$",
    ),
    ("expireat list", lambda o: o.items.expireat(2**40), ImplementationError, None),
    ("pexpireat zset", lambda o: o.scores.pexpireat(2**50), ImplementationError, None),
    ("expire hash", lambda o: o.h.expire(10), ImplementationError, None),
    (
        "setex indexable",
        lambda o: o.i.setex(10, "x"),
        ImplementationError,
        "^Indexable fields cannot be expired$",
    ),
    ("psetex unique", lambda o: o.u.psetex(10000, "x"), ImplementationError, None),
    ("set ex indexable", lambda o: o.i.set("x", ex=10), ImplementationError, None),
    ("set px unique", lambda o: o.u.set("x", px=10), ImplementationError, None),
    (
        "set nx",
        lambda o: o.s.set("x", nx=True),
        LimpydException,
        "^nx argument to SET is not supported by limpyd$",
    ),
    (
        "set xx",
        lambda o: o.i.set("x", xx=True),
        LimpydException,
        "^xx argument to SET is not supported by limpyd$",
    ),
    ("set keepttl", lambda o: o.s.set("x", keepttl=True), TypeError, None),
    ("set get", lambda o: o.i.set("x", get=True), TypeError, None),
    ("zadd nx", lambda o: o.scores.zadd({"x": 1}, nx=True), LimpydException, None),
    (
        "zadd incr",
        lambda o: o.scores.zadd(x=1, incr=True),
        LimpydException,
        "^incr argument to ZADD is not supported by limpyd$",
    ),
    (
        "zadd three args",
        lambda o: o.scores.zadd({"x": 1}, True, 3),
        LimpydException,
        "^ZADD accepts only two argumnets: 'mapping' and 'ch'$",
    ),
    ("zadd mapping and members", lambda o: o.scores.zadd(mapping={"x": 1}, y=2), TypeError, None),
    ("zadd empty", lambda o: o.scores.zadd({}), redis.DataError, None),
    ("hincrby without amount", lambda o: o.h.hincrby("n"), TypeError, None),
    ("hash exists without key", lambda o: o.h.exists(), TypeError, None),
    (
        "sscan_iter",
        lambda o: o.tags.sscan_iter(),
        ImplementationError,
        r"^Use sscan instead of sscan_iter \(",
    ),
    ("pk delete", lambda o: o.pk.delete(), ImplementationError, "^PKField cannot be deleted directly.$"),
    ("pk update", lambda o: o.pk.set(None), ValueError, None),
    ("lset out of range", lambda o: o.items.lset(99, "x"), redis.ResponseError, None),
    ("incr on text", lambda o: o.i.incr(), redis.ResponseError, None),
    ("incrbyfloat on text", lambda o: o.u.incrbyfloat(1.5), redis.ResponseError, None),
    ("hincrby on text", lambda o: o.h.hincrby("k", 1), redis.ResponseError, None),
    ("instance hincrby on text", lambda o: o.ih.hincrby(1), redis.ResponseError, None),
    ("model hmget without names", lambda o: o.hmget(), redis.ResponseError, None),
    ("model hdel without names", lambda o: o.hdel(), redis.ResponseError, None),
    ("model hmset without values", lambda o: o.hmset(), redis.DataError, None),
    ("hash hmset without values", lambda o: o.h.hmset(), redis.DataError, None),
    ("unknown redis-py argument", lambda o: o.items.lrange(0, -1, 5), TypeError, None),
    ("missing argument", lambda o: o.tags.sismember(), TypeError, None),
    ("two positional args", lambda o: type(o)(1, 2), ValueError, None),
    (
        "args and kwargs",
        lambda o: type(o)(1, s="x"),
        ValueError,
        "^Cannot use args and kwargs to instanciate.$",
    ),
    ("get without arguments", lambda o: type(o).get(), ValueError, None),
    ("exists without arguments", lambda o: type(o).exists(), ValueError, None),
    ("unknown pk", lambda o: type(o)(42), DoesNotExist, "^No M found with pk 42$"),
    (
        "auto pk given",
        lambda o: type(o)(pk=5, s="x"),
        ValueError,
        '^The pk for M is "auto-increment", you must not fill it$',
    ),
]


@pytest.mark.parametrize(
    "call, exception, match", [c[1:] for c in NOT_ALLOWED], ids=[c[0] for c in NOT_ALLOWED]
)
def test_commands_not_allowed(raw, objects, call, exception, match):
    unchanged(raw, lambda: call(objects[1]), exception, match)


TAKEN_CALLS = [
    ("creation", lambda m, o: m(s="new", u="taken")),
    ("creation text-range", lambda m, o: m(s="new", t="taken")),
    ("creation unique set", lambda m, o: m(utags=["new", "taken"])),
    ("creation unique list", lambda m, o: m(uitems=["taken"])),
    ("creation unique zset", lambda m, o: m(uscores={"taken": 5})),
    ("creation instance hash", lambda m, o: m(uih="taken", ih="x")),
    ("set", lambda m, o: o.u.set("taken")),
    ("getset", lambda m, o: o.u.getset("taken")),
    ("text-range set", lambda m, o: o.t.set("taken")),
    ("instance hash hset", lambda m, o: o.uih.hset("taken")),
    ("sadd", lambda m, o: o.utags.sadd("new", "taken")),
    ("rpush", lambda m, o: o.uitems.rpush("new", "taken")),
    ("lpush", lambda m, o: o.uitems.lpush("taken")),
    ("zadd", lambda m, o: o.uscores.zadd({"new": 1, "taken": 2})),
    ("zincrby", lambda m, o: o.uscores.zincrby(1, "taken")),
    ("model hmset", lambda m, o: o.hmset(ih="new", uih="taken")),
]


@pytest.mark.parametrize("call", [c for _, c in TAKEN_CALLS], ids=[n for n, _ in TAKEN_CALLS])
def test_unique_value_already_taken(raw, M, objects, call):
    unchanged(raw, lambda: call(M, objects[1]), UniquenessError)


def test_existing_pk_value(raw, database, namespace):
    db, ns = database, namespace

    class P(model.RedisModel):
        database = db
        namespace = ns
        id = PKField()
        s = StringField(default="d")

    P(id="a")
    unchanged(
        raw, lambda: P(id="a", s="x"), UniquenessError, r"^PKField a already exists for model <class .*P'>\)$"
    )
    unchanged(raw, lambda: P(pk="a"), UniquenessError)
    unchanged(raw, lambda: P().pk.set("a"), UniquenessError)
    unchanged(raw, lambda: P(s="x"), ValueError, '^The pk for P is not "auto-increment", you must fill it$')


CHECKED_AFTER_WRITE = [
    # strategies N and R, lset, linsert: the value is written, then the index change is refused and
    # rolled back; the written value stays (upstream behaviour, kept). (F: see test_fields.py)
    ("setnx", lambda o: o.u.delete(), lambda o: o.u.setnx("taken"), "u", b"taken"),
    ("hsetnx", lambda o: o.uih.delete(), lambda o: o.uih.hsetnx("taken"), "uih", b"taken"),
    ("append", lambda o: o.u.set("tak"), lambda o: o.u.append("en"), "u", b"taken"),
    ("lset", lambda o: None, lambda o: o.uitems.lset(0, "taken"), "uitems", [b"taken"]),
    (
        "linsert",
        lambda o: None,
        lambda o: o.uitems.linsert("before", "y1", "taken"),
        "uitems",
        [b"taken", b"y1"],
    ),
]


@pytest.mark.parametrize(
    "setup, call, field, stored",
    [c[1:] for c in CHECKED_AFTER_WRITE],
    ids=[c[0] for c in CHECKED_AFTER_WRITE],
)
def test_unique_checked_after_the_write(raw, objects, setup, call, field, stored):
    obj = objects[1]
    setup(obj)
    before = dump(raw)
    with pytest.raises(UniquenessError):
        call(obj)
    after = dump(raw)
    key = getattr(obj, field).key.encode()
    assert {k for k in set(before) | set(after) if before.get(k) != after.get(k)} == {
        key
    }  # indexes unchanged
    kind, content, _ = after[key]
    assert (content[field.encode()] if kind == "hash" else content) == stored


# ---------------------------------------------------------------------- checks that survive python -O


def test_the_library_checks_arguments_without_assert():
    # an ``assert`` vanishes under ``python -O``: limpyd's checks raise its own errors instead
    import ast
    from pathlib import Path

    import limpyd

    found = []
    for path in sorted(Path(limpyd.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assert):
                found.append("%s:%d" % (path.name, node.lineno))
    assert found == [], (
        "replace these asserts with raise ImplementationError/ValueError/TypeError: %s" % found
    )


OPTIMIZED_CHECKS = """
import sys
assert False, "not run under python -O"
from limpyd import model, fields
from limpyd.database import RedisDatabase
from limpyd.exceptions import ImplementationError
from limpyd.indexes import TextRangeIndex

class M(model.RedisModel):
    database = RedisDatabase(host="localhost", port=1)  # never contacted
    namespace = "optimized"
    plain = fields.StringField()
    name = fields.StringField(indexable=True, indexes=[TextRangeIndex])

for call, error in [
    (lambda: M.get_field("plain").get_unique_index(), ImplementationError),
    (lambda: M.get_field("plain").clear_indexes(), ImplementationError),
    (lambda: M.get_field("name").get_index().get_boundaries("contains", "v"), ValueError),
]:
    try:
        call()
    except error as exc:
        print(type(exc).__name__, exc)
    else:
        print("nothing raised")
"""


def test_checks_raise_under_python_optimized():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-O", "-c", OPTIMIZED_CHECKS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    assert lines[0].startswith("ImplementationError ") and "declare it with unique=True" in lines[0]
    assert lines[1].startswith("ImplementationError ") and "declare it with indexable=True" in lines[1]
    assert lines[2].startswith("ValueError Invalid filter type 'contains' for TextRangeIndex")
