"""Fields, part 2: ``SetField``, ``ListField``, ``SortedSetField``, ``HashField`` and ``*scan``.

docs/models.rst (their commands and how each keeps the indexes up to date).
"""

from __future__ import annotations

import types

import pytest
import redis
from _redis_dump import PUSHX_TAKES_SEVERAL_VALUES, command_log, locked

from limpyd.exceptions import DoesNotExist, ImplementationError, LimpydException, UniquenessError
from limpyd.fields import HashField, ListField, SetField, SortedSetField


@pytest.fixture
def old_server(monkeypatch, database):
    """Make the database report an old server version (``redis_version`` patched on the object's class)."""

    def set_version(version):
        monkeypatch.setattr(type(database), "redis_version", property(lambda self: version))

    return set_version


def index_keys(client, prefix):
    return {key: client.smembers(key) for key in client.keys(prefix + ":*") if client.type(key) == "set"}


# ---------------------------------------------------------------------- SetField


def test_set_commands(Base, client, namespace):
    class M(Base):
        tags = SetField()

    obj = M()
    assert obj.tags.smembers() == set() and obj.tags.scard() == 0
    assert obj.tags.sadd("a", "b", "c") == 3
    assert obj.tags.sadd("a", "d") == 1
    assert obj.tags.smembers() == {"a", "b", "c", "d"}
    assert obj.tags.scard() == 4
    assert obj.tags.sismember("a") and not obj.tags.sismember("z")
    assert obj.tags.srandmember() in {"a", "b", "c", "d"}
    assert set(obj.tags.srandmember(2)) <= {"a", "b", "c", "d"} and len(obj.tags.srandmember(2)) == 2
    assert obj.tags.sort(alpha=True) == ["a", "b", "c", "d"]
    assert obj.tags.sort(alpha=True, desc=True, start=0, num=2) == ["d", "c"]
    assert obj.tags.srem("a", "z") == 1
    popped = obj.tags.spop()
    assert popped in {"b", "c", "d"} and obj.tags.scard() == 2
    two = obj.tags.spop(2)
    assert isinstance(two, list) and len(two) == 2 and obj.tags.scard() == 0
    assert obj.tags.spop() is None and obj.tags.spop(2) == [] and obj.tags.spop(0) == []
    obj.tags.sadd(1, 2.5, b"x")
    assert obj.tags.smembers() == {"1", "2.5", "x"}  # everything read back is str
    assert obj.tags.delete() == 1 and obj.tags.delete() == 0
    assert obj.tags.proxy_set(["p", "q"]) == 2 and obj.tags.proxy_get() == {"p", "q"}


def test_indexable_set_counts(Base, client, namespace, count_commands):
    class M(Base):
        tags = SetField(indexable=True)

    obj = M()
    obj.pk.get()
    n = namespace + ":m"
    key = obj.tags.key
    with command_log(client) as log:
        assert obj.tags.sadd("a", "b") == 2
    assert log == locked(
        n + ":lock-for-update:tags", ["SADD %s:tags:a 1" % n, "SADD %s:tags:b 1" % n, "SADD %s a b" % key]
    )
    with count_commands(4 + 2):
        obj.tags.srem("a")
    obj.tags.sadd("c", "d")
    with count_commands(4 + 2):  # SPOP + SREM
        value = obj.tags.spop()
    assert not client.exists("%s:tags:%s" % (n, value))
    with count_commands(4 + 3):  # spop(2) = lock + 3
        values = obj.tags.spop(2)
    assert len(values) == 2 and index_keys(client, n + ":tags") == {}
    with count_commands(4 + 1):  # nothing popped, nothing deindexed
        assert obj.tags.spop() is None
    obj.tags.sadd("e", "f")
    with command_log(client) as log:
        assert obj.tags.delete() == 1
    lock = n + ":lock-for-update:tags"
    assert log[:2] + log[4:] == locked(lock, ["SMEMBERS %s" % key, "DEL %s" % key])
    assert sorted(log[2:4]) == ["SREM %s:tags:e 1" % n, "SREM %s:tags:f 1" % n]  # set order
    assert index_keys(client, n + ":tags") == {}


def test_spop_count_on_old_servers(Base, old_server):
    class M(Base):
        tags = SetField()

    obj = M(tags=["a"])
    old_server((3, 0, 7))
    with pytest.raises(
        ImplementationError, match="^Count argument to SPOP is invalid for redis-server version < 3.2$"
    ):
        obj.tags.spop(1)
    assert obj.tags.spop() == "a"


def test_sscan(Base, count_commands):
    class M(Base):
        tags = SetField()

    obj = M(tags=["a%d" % i for i in range(30)] + ["b"])
    with count_commands(0):  # lazy: Redis is hit while iterating
        generator = obj.tags.sscan()
    assert isinstance(generator, types.GeneratorType)
    assert sorted(generator) == sorted(["a%d" % i for i in range(30)] + ["b"])
    assert sorted(obj.tags.sscan("a1*", 5)) == sorted(["a1"] + ["a1%d" % i for i in range(10)])
    assert list(obj.tags.sscan(match="b", count=1000)) == ["b"]
    with pytest.raises(
        ImplementationError, match=r"^Use sscan instead of sscan_iter \(.*\): it already returns an iterator$"
    ):
        obj.tags.sscan_iter()


# ---------------------------------------------------------------------- ListField


def test_list_commands(Base):
    class M(Base):
        items = ListField()

    obj = M()
    assert obj.items.lmembers() == [] and obj.items.llen() == 0
    assert obj.items.lpushx("x") == 0 and obj.items.rpushx("x") == 0
    assert obj.items.rpush("b", "c") == 2
    assert obj.items.lpush("a") == 3
    assert obj.items.rpushx("d") == 4 and obj.items.lpushx("z") == 5
    assert obj.items.lmembers() == ["z", "a", "b", "c", "d"]
    assert (
        obj.items.lrange(1, 2) == ["a", "b"] and obj.items.lindex(-1) == "d" and obj.items.lindex(9) is None
    )
    assert obj.items.lpop() == "z" and obj.items.rpop() == "d"
    assert obj.items.lpop(2) == ["a", "b"] and obj.items.rpop(5) == ["c"]
    assert obj.items.lpop() is None and obj.items.lpop(2) is None
    obj.items.rpush(111, "x", "111", "y", "x")
    assert obj.items.lrank(111) == 0 and obj.items.lrank("x") == 1 and obj.items.lrank("nope") is None
    assert obj.items.lcount("x") == 2 and obj.items.lcount(111) == 2 and obj.items.lcount("nope") == 0
    assert obj.items.lcontains("y") is True and obj.items.lcontains("nope") is False
    assert obj.items.lrem(0, "x") == 2
    assert obj.items.lrem(1, "111") == 1
    assert obj.items.lmembers() == ["111", "y"]
    assert obj.items.lset(0, "w") is True
    assert obj.items.linsert("before", "y", "v") == 3
    assert obj.items.linsert("after", "nope", "v") == -1
    assert obj.items.lmembers() == ["w", "v", "y"]
    assert obj.items.sort(alpha=True) == ["v", "w", "y"]
    assert obj.items.ltrim(0, 1) is True and obj.items.lmembers() == ["w", "v"]
    with pytest.raises(redis.ResponseError):
        obj.items.lset(10, "x")
    assert obj.items.delete() == 1
    assert obj.items.proxy_set(["a", "b"]) == 2 and obj.items.proxy_get() == ["a", "b"]


def test_lrank_lcount_run_lua_without_post_command(Base, client, count_commands):
    seen = []

    class M(Base):
        items = ListField()

        def post_command(self, sender, name, result, args, kwargs):
            seen.append(name)
            return result

    obj = M(items=["a", "b", "a"])
    seen.clear()
    with command_log(client) as log:
        assert obj.items.lrank("b") == 1
        assert obj.items.lcount("a") == 2
        assert obj.items.lcontains("a") is True
    key = obj.items.key
    assert log == [
        "LRANGE %s 0 -1" % key,
        "EVALSHA <sha> 1 %s b" % key,
        "LRANGE %s 0 -1" % key,
        "EVALSHA <sha> 1 %s a" % key,
        "LRANGE %s 0 -1" % key,
        "EVALSHA <sha> 1 %s a" % key,
    ]
    assert seen == []
    assert set(ListField.scripts) == {"lrank", "lcount"} and all(
        "lua" in s for s in ListField.scripts.values()
    )


def test_list_sort_is_a_getter(Base, count_commands):
    class M(Base):
        items = ListField(indexable=True)

    lazy = M.lazy_connect("nope")
    with count_commands(1):  # no lock, no existence check
        assert lazy.items.sort() == []


def test_indexable_list_counts(Base, client, namespace, count_commands):
    class M(Base):
        items = ListField(indexable=True)

    obj = M()
    obj.pk.get()
    n = namespace + ":m"
    key = obj.items.key
    with count_commands(4 + 3):
        obj.items.rpush("a", "b")
    with count_commands(4 + 2):
        obj.items.lpush("c")
    with count_commands(4 + 2):  # lpushx on an existing list: LPUSHX + SADD
        assert obj.items.lpushx("d") == 4
    if PUSHX_TAKES_SEVERAL_VALUES:
        with count_commands(4 + 3):
            assert obj.items.rpushx("e", "f") == 6
    else:
        with count_commands(4 + 2):
            assert obj.items.rpushx("e") == 5
        with count_commands(4 + 2):
            assert obj.items.rpushx("f") == 6
    assert set(index_keys(client, n + ":items")) == {"%s:items:%s" % (n, v) for v in "abcdef"}
    other = M()
    other.pk.get()
    with count_commands(4 + 1):  # nothing pushed: nothing indexed
        assert other.items.lpushx("g") == 0
    assert not client.exists(n + ":items:g")
    with count_commands(4 + 2):
        assert obj.items.lpop() == "d"
    assert not client.exists(n + ":items:d")
    with count_commands(4 + 3):
        assert obj.items.rpop(2) == ["f", "e"]
    # list is now c, a, b
    with command_log(client) as log:
        assert obj.items.lrem(0, "a") == 1
    assert log == locked(n + ":lock-for-update:items", ["SREM %s:items:a 1" % n, "LREM %s 0 a" % key])
    obj.items.rpush("x")
    # list c, b, x: lrem with a count = R: LRANGE, 3 SREM, LREM, LRANGE, 2 SADD
    with count_commands(4 + 8):
        assert obj.items.lrem(1, "b") == 1
    with command_log(client) as log:
        assert obj.items.lset(0, "y") is True
    assert log == locked(
        n + ":lock-for-update:items",
        ["LINDEX %s 0" % key, "SREM %s:items:c 1" % n, "LSET %s 0 y" % key, "SADD %s:items:y 1" % n],
    )
    with count_commands(4 + 2):
        with pytest.raises(redis.ResponseError):
            obj.items.lset(10, "z")
    assert not client.exists(n + ":items:z")
    with count_commands(4 + 2):
        assert obj.items.linsert("before", "x", "w") == 3
    with count_commands(4 + 1):
        assert obj.items.linsert("before", "nope", "v") == -1
    assert not client.exists(n + ":items:v")
    assert set(index_keys(client, n + ":items")) == {"%s:items:%s" % (n, v) for v in "ywx"}
    with count_commands(4 + 1 + 3 + 1 + 1 + 1):  # R: LRANGE, 3 SREM, LTRIM, LRANGE, 1 SADD
        obj.items.ltrim(0, 0)
    assert set(index_keys(client, n + ":items")) == {n + ":items:y"}
    with count_commands(4 + 3):
        assert obj.items.delete() == 1
    assert index_keys(client, n + ":items") == {}


def test_linsert_on_a_missing_list_indexes_the_value(Base, client, namespace):
    class M(Base):
        items = ListField(indexable=True)

    obj = M()
    assert obj.items.linsert("before", "pivot", "v") == 0
    assert obj.items.lmembers() == []
    assert client.smembers(namespace + ":m:items:v") == {"1"}  # upstream quirk, kept


def test_list_duplicates_share_one_index_entry(Base, client, namespace):
    class M(Base):
        items = ListField(indexable=True)

    obj = M(items=["a", "b", "a"])
    key = namespace + ":m:items:a"
    assert client.smembers(key) == {"1"}
    assert obj.items.lpop() == "a"
    assert obj.items.lmembers() == ["b", "a"] and not client.exists(key)  # kept upstream behaviour
    obj.items.rpush("c", "c")
    obj.items.lset(2, "d")
    assert obj.items.lmembers() == ["b", "a", "d", "c"]
    assert not client.exists(namespace + ":m:items:c")


# ---------------------------------------------------------------------- SortedSetField


def test_sorted_set_getters(Base):
    class M(Base):
        scores = SortedSetField()

    obj = M()
    assert obj.scores.zmembers() == [] and obj.scores.zcard() == 0
    assert obj.scores.zadd({"a": 1, "b": 2, "c": 3.5}) == 3
    assert obj.scores.zmembers() == ["a", "b", "c"]
    assert obj.scores.zrange(0, 0, withscores=True) == [("a", 1.0)]
    assert obj.scores.zrevrange(0, -1) == ["c", "b", "a"]
    assert obj.scores.zrangebyscore(1.5, "+inf") == ["b", "c"]
    assert obj.scores.zrevrangebyscore("+inf", 2, withscores=True) == [("c", 3.5), ("b", 2.0)]
    assert obj.scores.zcount(1, 2) == 2
    assert obj.scores.zrank("b") == 1 and obj.scores.zrevrank("b") == 1 and obj.scores.zrank("z") is None
    assert obj.scores.zscore("c") == 3.5 and obj.scores.zscore("z") is None
    assert obj.scores.sort(alpha=True) == ["a", "b", "c"]
    obj.scores.delete()
    obj.scores.zadd({"x": 0, "y": 0, "z": 0})  # lex ranges need equal scores
    assert obj.scores.zlexcount("[x", "[y") == 2
    assert obj.scores.zrangebylex("-", "(z") == ["x", "y"]
    assert obj.scores.zrevrangebylex("+", "[y") == ["z", "y"]
    assert obj.scores.proxy_get() == obj.scores.zrange(0, -1)


def test_sorted_set_modifiers(Base):
    class M(Base):
        scores = SortedSetField()

    obj = M()
    assert obj.scores.zadd(a=1, b=2) == 2
    assert obj.scores.zadd({"a": 5, "c": 1}, True) == 2  # added + changed with ch
    assert obj.scores.zadd({"a": 6}, ch=True) == 1
    assert obj.scores.zadd(mapping={"d": 0}) == 1
    assert obj.scores.zadd(mapping={"d": 1}, ch=True) == 1
    assert obj.scores.zadd(e=1, ch=True) == 1
    assert obj.scores.zincrby(2, "b") == 4.0 and isinstance(obj.scores.zincrby(1, "new"), float)
    assert obj.scores.zrem("new", "nope") == 1
    assert obj.scores.zmembers() == ["c", "d", "e", "b", "a"]
    assert obj.scores.zremrangebyrank(0, 0) == 1
    assert obj.scores.zremrangebyscore(1, 1) == 2
    assert obj.scores.zpopmin() == [("b", 4.0)]
    assert obj.scores.zpopmax(3) == [("a", 6.0)]
    obj.scores.zadd({"l1": 0, "l2": 0, "l3": 0})
    assert obj.scores.zremrangebylex("[l1", "[l2") == 2
    assert obj.scores.zpopmax(3) == [("l3", 0.0)]
    assert obj.scores.zpopmin() == []
    with pytest.raises(redis.DataError):
        obj.scores.zadd({})
    obj.scores.proxy_set({"p": 1})
    assert obj.scores.delete() == 1


def test_indexable_sorted_set_counts(Base, client, namespace, count_commands):
    class M(Base):
        scores = SortedSetField(indexable=True)

    obj = M()
    obj.pk.get()
    n = namespace + ":m"
    key = obj.scores.key
    with command_log(client) as log:
        obj.scores.zadd({"a": 1, "b": 2})
    assert log == locked(
        n + ":lock-for-update:scores",
        ["SADD %s:scores:a 1" % n, "SADD %s:scores:b 1" % n, "ZADD %s 1 a 2 b" % key],
    )
    with command_log(client) as log:
        assert obj.scores.zincrby(5, "c") == 5.0
    assert log == locked(n + ":lock-for-update:scores", ["SADD %s:scores:c 1" % n, "ZINCRBY %s 5 c" % key])
    with count_commands(4 + 2):
        obj.scores.zrem("a")
    # b(2), c(5): R = ZRANGE, 2 SREM, command, ZRANGE, 1 SADD
    with count_commands(4 + 6):
        assert obj.scores.zremrangebyrank(0, 0) == 1
    obj.scores.zadd({"x": 0, "y": 0})
    with count_commands(4 + 1 + 3 + 1 + 1 + 3):  # nothing removed: every member re-indexed
        assert obj.scores.zremrangebyscore(10, 20) == 0
    with count_commands(4 + 1 + 3 + 1 + 1 + 2):
        assert obj.scores.zpopmax() == [("c", 5.0)]
    with count_commands(4 + 1 + 2 + 1):
        assert obj.scores.delete() == 1
    obj.scores.zadd({"x": 0, "y": 0, "z": 0})
    with count_commands(4 + 1 + 3 + 1 + 1 + 2):
        assert obj.scores.zremrangebylex("[x", "[x") == 1
    with count_commands(4 + 1 + 2 + 1 + 1 + 1):
        assert obj.scores.zpopmin() == [("y", 0.0)]
    with count_commands(4 + 1 + 1 + 1 + 1):
        assert obj.scores.zpopmax() == [("z", 0.0)]
    assert index_keys(client, n + ":scores") == {}
    obj.scores.zadd(q=1)
    with count_commands(4 + 3):
        assert obj.scores.delete() == 1
    assert index_keys(client, n + ":scores") == {}


def test_zpop_on_old_servers(Base, old_server):
    class M(Base):
        scores = SortedSetField()

    obj = M(scores={"a": 1})
    old_server((4, 0, 14))
    with pytest.raises(
        ImplementationError, match="^ZPOPMIN is not a valid command for redis-server version < 5$"
    ):
        obj.scores.zpopmin()
    with pytest.raises(
        ImplementationError, match="^ZPOPMAX is not a valid command for redis-server version < 5$"
    ):
        obj.scores.zpopmax(1)
    assert obj.scores.zmembers() == ["a"]


def test_zscan(Base, count_commands):
    class M(Base):
        scores = SortedSetField()

    obj = M(scores={"a": 1, "b": 2.5, "ab": 3})
    with count_commands(0):
        generator = obj.scores.zscan()
    assert isinstance(generator, types.GeneratorType)
    assert sorted(generator) == [("a", 1.0), ("ab", 3.0), ("b", 2.5)]
    assert sorted(obj.scores.zscan("a*", 10)) == [("a", 1.0), ("ab", 3.0)]
    with pytest.raises(
        ImplementationError, match=r"^Use zscan instead of zscan_iter \(.*\): it already returns an iterator$"
    ):
        obj.scores.zscan_iter()


ZADD_ERROR = "^ZADD accepts only two argumnets: 'mapping' and 'ch'$"


@pytest.mark.parametrize(
    "args, kwargs, expected",
    [
        (({"a": 1},), {}, {"mapping": {"a": 1}}),
        (({"a": 1}, True), {}, {"mapping": {"a": 1}, "ch": True}),
        (({"a": 1},), {"ch": False}, {"mapping": {"a": 1}, "ch": False}),
        ((), {"mapping": {"a": 1}}, {"mapping": {"a": 1}}),
        ((), {"mapping": {"a": 1}, "ch": True}, {"mapping": {"a": 1}, "ch": True}),
        ((), {"mapping": {"a": 1}, "foo": 1}, {"mapping": {"a": 1}, "foo": 1}),  # goes to redis-py
        ((), {"foo": 1.5, "bar": 2, "ch": True}, {"mapping": {"foo": 1.5, "bar": 2}, "ch": True}),
        ((), {"gt": 1, "lt": 2}, {"mapping": {"gt": 1, "lt": 2}}),  # not flags: members
        ((), {"values_callback": None, "a": 1}, {"mapping": {"a": 1}}),
        ((), {}, {"mapping": {}}),
    ],
)
def test_coerce_zadd_args(args, kwargs, expected):
    assert SortedSetField.coerce_zadd_args(*args, **kwargs) == ([], expected)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (({"a": 1}, True, 3), {}, ZADD_ERROR),
        (({"a": 1},), {"foo": 1}, ZADD_ERROR),
        (({"a": 1},), {"ch": True, "nx": True}, ZADD_ERROR),
        (({"a": 1}, True), {"ch": True}, ZADD_ERROR),
        (({"a": 1},), {"mapping": {"b": 2}}, ZADD_ERROR),
        ((), {"nx": True, "a": 1}, "^nx argument to ZADD is not supported by limpyd$"),
        ((), {"xx": True, "a": 1}, "^xx argument to ZADD is not supported by limpyd$"),
        ((), {"incr": True, "a": 1}, "^incr argument to ZADD is not supported by limpyd$"),
        ((), {"mapping": {"a": 1}, "nx": True}, "^nx argument to ZADD is not supported by limpyd$"),
        ((), {"mapping": {"a": 1}, "incr": False}, "^incr argument to ZADD is not supported by limpyd$"),
    ],
)
def test_coerce_zadd_args_errors(args, kwargs, message):
    with pytest.raises(LimpydException, match=message):
        SortedSetField.coerce_zadd_args(*args, **kwargs)


def test_coerce_zadd_args_values_callback():
    calls = []
    keys = [object(), object()]

    def callback(*members):
        calls.append(members)
        return keys

    mapping = {"a": 1, "b": 2}
    args, kwargs = SortedSetField.coerce_zadd_args(mapping, values_callback=callback)
    assert calls == [("a", "b")]
    assert args == [] and kwargs == {"mapping": {keys[0]: 1, keys[1]: 2}}
    assert kwargs["mapping"] is mapping  # modified in place
    assert SortedSetField.coerce_zadd_args(x=3, values_callback=lambda *m: ["X"]) == (
        [],
        {"mapping": {"X": 3}},
    )


def test_zadd_on_the_field_uses_the_coercion(Base, client):
    class M(Base):
        scores = SortedSetField()

    obj = M()
    obj.pk.get()
    with command_log(client) as log:
        assert obj.scores.zadd({"a": 1}, values_callback=lambda *m: [v.upper() for v in m]) == 1
        assert obj.scores.zadd({"A": 2}, True) == 1
    assert log == ["ZADD %s 1 A" % obj.scores.key, "ZADD %s CH 2 A" % obj.scores.key]
    with pytest.raises(TypeError):
        obj.scores.zadd(mapping={"a": 1}, foo=1)
    with pytest.raises(LimpydException):
        obj.scores.zadd({"a": 1}, nx=True)
    assert obj.scores.zrange(0, -1, withscores=True) == [("A", 2.0)]


# ---------------------------------------------------------------------- HashField


def test_hash_commands(Base, client):
    class M(Base):
        h = HashField()

    obj = M()
    assert obj.h.hgetall() == {} and obj.h.hlen() == 0 and obj.h.hget("a") is None
    assert obj.h.hexists("a") is False and obj.h.exists("a") is False
    assert obj.h.hset("a", 1) == 1 and obj.h.hset("a", 2) == 0
    assert obj.h.hmset(b="x", c="yy") is True
    assert obj.h.hgetall() == {"a": "2", "b": "x", "c": "yy"}
    assert obj.h.hmget("a", "z", "c") == ["2", None, "yy"]
    assert sorted(obj.h.hkeys()) == ["a", "b", "c"] and sorted(obj.h.hvals()) == ["2", "x", "yy"]
    assert obj.h.hlen() == 3 and obj.h.hstrlen("c") == 2
    assert obj.h.hexists("a") is True and obj.h.exists("a") is True
    assert obj.h.hsetnx("a", 9) == 0 and obj.h.hsetnx("d", 9) == 1
    assert obj.h.hincrby("a", 3) == 5 and obj.h.hincrbyfloat("a", 0.5) == 5.5
    with pytest.raises(TypeError):
        obj.h.hincrby("a")
    with pytest.raises(TypeError):
        obj.h.hincrbyfloat("a")
    with pytest.raises(TypeError):
        obj.h.exists()
    assert obj.h.hdel("a", "nope") == 1 and obj.h.hdel("nope") == 0
    assert obj.h.proxy_get() == {"b": "x", "c": "yy", "d": "9"}
    assert obj.h.proxy_set({"e": "1"}) is True
    assert obj.h.delete() == 1
    obj.h.hset("k", "v")
    obj.delete()
    assert obj.h.hexists("k") is False


def test_hmset_sends_hset_and_ignores_positional_args(Base, client):
    seen = []

    class M(Base):
        h = HashField()

        def post_command(self, sender, name, result, args, kwargs):
            seen.append((name, result, kwargs))
            return result

    obj = M()
    obj.pk.get()
    with command_log(client) as log:
        assert obj.h.hmset({"ignored": 1}, a="1", b="2") is True
    assert log == ["HSET %s a 1 b 2" % obj.h.key]
    assert seen == [("hmset", True, {"a": "1", "b": "2"})]
    with pytest.raises(redis.DataError):
        obj.h.hmset()
    assert obj.h.hgetall() == {"a": "1", "b": "2"}


def test_hstrlen_on_old_servers(Base, old_server):
    class M(Base):
        h = HashField()

    obj = M(h={"a": "xyz"})
    old_server((3, 0, 0))
    with pytest.raises(
        ImplementationError, match="^HSTRLEN is not a valid command for redis-server version < 3.2$"
    ):
        obj.h.hstrlen("a")


def test_hscan(Base, count_commands):
    class M(Base):
        h = HashField()

    obj = M(h={"a": "1", "ab": "2", "b": "3"})
    with count_commands(0):
        generator = obj.h.hscan()
    assert isinstance(generator, types.GeneratorType)
    assert sorted(generator) == [("a", "1"), ("ab", "2"), ("b", "3")]
    assert sorted(obj.h.hscan(match="a*", count=10)) == [("a", "1"), ("ab", "2")]
    with pytest.raises(
        ImplementationError, match=r"^Use hscan instead of hscan_iter \(.*\): it already returns an iterator$"
    ):
        obj.h.hscan_iter()


def test_indexable_hash_counts(Base, client, namespace, count_commands):
    class M(Base):
        h = HashField(indexable=True)

    obj = M()
    obj.pk.get()
    n = namespace + ":m"
    key = obj.h.key
    lock = n + ":lock-for-update:h"
    with command_log(client) as log:
        assert obj.h.hset("a", "x") == 1
    assert log == locked(lock, ["HGET %s a" % key, "SADD %s:h:a:x 1" % n, "HSET %s a x" % key])
    with count_commands(4 + 2):  # same value: no index change
        obj.h.hset("a", "x")
    with count_commands(4 + 4):
        obj.h.hset("a", "y")
    with command_log(client) as log:
        assert obj.h.hmset(a="z", b="w") is True
    assert log == locked(
        lock,
        [
            "HMGET %s a b" % key,
            "SREM %s:h:a:y 1" % n,
            "SADD %s:h:a:z 1" % n,
            "SADD %s:h:b:w 1" % n,
            "HSET %s a z b w" % key,
        ],
    )
    with count_commands(4 + 1):
        assert obj.h.hsetnx("a", "q") == 0
    with count_commands(4 + 2):
        assert obj.h.hsetnx("c", "q") == 1
    obj.h.hset("n", 5)
    with command_log(client) as log:
        assert obj.h.hincrby("n", 2) == 7
    assert log == locked(
        lock, ["HGET %s n" % key, "SREM %s:h:n:5 1" % n, "HINCRBY %s n 2" % key, "SADD %s:h:n:7 1" % n]
    )
    with count_commands(8):
        assert obj.h.hincrbyfloat("n", 0.5) == 7.5
    with command_log(client) as log:
        assert obj.h.hdel("a", "nope") == 1
    assert log == locked(lock, ["HMGET %s a nope" % key, "SREM %s:h:a:z 1" % n, "HDEL %s a nope" % key])
    assert index_keys(client, n + ":h") == {n + ":h:b:w": {"1"}, n + ":h:c:q": {"1"}, n + ":h:n:7.5": {"1"}}
    with count_commands(4 + 1 + 3 + 1):
        assert obj.h.delete() == 1
    assert index_keys(client, n + ":h") == {}


def test_hincrby_on_a_missing_hash_key(Base, client, namespace, count_commands):
    class M(Base):
        h = HashField(indexable=True)

    obj = M()
    obj.pk.get()
    with count_commands(4 + 3):  # HGET (None: nothing to deindex), HINCRBY, SADD
        assert obj.h.hincrby("n", 3) == 3
    assert client.smembers(namespace + ":m:h:n:3") == {"1"}


# ---------------------------------------------------------------------- lazy instances and modifiers


@pytest.mark.parametrize(
    "call",
    [
        lambda o: o.tags.sadd("a"),
        lambda o: o.tags.srem("a"),
        lambda o: o.tags.spop(),
        lambda o: o.items.rpush("a"),
        lambda o: o.items.lpop(),
        lambda o: o.items.ltrim(0, 1),
        lambda o: o.scores.zadd({"a": 1}),
        lambda o: o.scores.zincrby(1, "a"),
        lambda o: o.scores.zpopmin(),
        lambda o: o.h.hset("a", 1),
        lambda o: o.h.hmset(a=1),
        lambda o: o.h.hdel("a"),
        lambda o: o.tags.delete(),
        lambda o: o.itags.sadd("a"),
        lambda o: o.itags.delete(),
    ],
)
def test_first_modifier_of_a_lazy_unknown_instance_raises(Base, client, call):
    class M(Base):
        tags = SetField()
        itags = SetField(indexable=True)
        items = ListField()
        scores = SortedSetField()
        h = HashField()

    before = client.keys("*")
    lazy = M.lazy_connect(12)
    with pytest.raises(DoesNotExist, match="^No M found with pk 12$"):
        call(lazy)
    assert lazy._pk is None and not lazy.connected
    assert client.keys("*") == before


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda o: o.tags.smembers(), set()),
        (lambda o: o.tags.scard(), 0),
        (lambda o: list(o.tags.sscan()), []),
        (lambda o: o.items.lmembers(), []),
        (lambda o: o.items.lrank("a"), None),
        (lambda o: o.items.llen(), 0),
        (lambda o: o.scores.zmembers(), []),
        (lambda o: o.scores.zscore("a"), None),
        (lambda o: o.h.hgetall(), {}),
        (lambda o: o.h.hget("a"), None),
        (lambda o: o.h.hmget("a"), [None]),
    ],
)
def test_getters_of_a_lazy_unknown_instance_never_check(Base, count_commands, call, expected):
    class M(Base):
        tags = SetField()
        items = ListField()
        scores = SortedSetField()
        h = HashField()

    lazy = M.lazy_connect(12)
    with count_commands() as counter:
        assert call(lazy) == expected
    assert counter.count >= 1
    assert lazy._pk == "12"


def test_unique_multi_value_fields(Base, client, namespace):
    class M(Base):
        tags = SetField(unique=True)
        items = ListField(unique=True)
        scores = SortedSetField(unique=True)

    M(tags=["a"], items=["b"], scores={"c": 1})
    other = M(tags=["x"])
    before = index_keys(client, namespace)
    for call in (
        lambda: other.tags.sadd("a"),
        lambda: other.items.rpush("y", "b"),
        lambda: other.scores.zadd({"c": 2}),
        lambda: other.scores.zincrby(1, "c"),
    ):
        with pytest.raises(UniquenessError):
            call()
    assert index_keys(client, namespace) == before
    assert other.tags.smembers() == {"x"} and other.items.lmembers() == [] and other.scores.zmembers() == []


def test_hash_hset_compares_raw_values(Base, client, namespace, count_commands):
    class M(Base):
        h = HashField(indexable=True)

    obj = M(h={"n": "5"})
    with count_commands(4 + 4):  # 5 != "5": deindexed and indexed again (raw comparison)
        obj.h.hset("n", 5)
    with count_commands(4 + 2):
        obj.h.hset("n", "5")
    assert client.smembers(namespace + ":m:h:n:5") == {"1"}
