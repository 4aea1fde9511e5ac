"""Server-side scripts of the integrity tools, and a sender running many calls in one round trip.

Each script works on a batch (hundreds of keys) so that an audit costs a few commands per chunk
of instances instead of one per index entry. Every key a script touches is passed in ``KEYS``
(on a cluster, the keys of one model share its hash tag, so a batch lives in one slot).
"""

from __future__ import annotations

import hashlib
from typing import Any, List, Sequence, Tuple

from redis.exceptions import NoScriptError, ResponseError

from limpyd._batch import send_commands
from limpyd._pool import get_pool_connection

__all__ = ["Script", "CARDS", "CHECK", "DEL_IF_NO_TTL", "DEL_IF_ORPHAN", "IS_MEMBER", "MEMBERS", "run"]


class Script:
    """A Lua source and its SHA1; :func:`run` loads it on ``NOSCRIPT``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()


#: forward check of expected entries. ARGV[1] = number of entries; then per entry: code, member,
#: [score if the code starts with 'z'], [start, end if the probe is 'L' or 'N']. KEYS: per entry
#: its key, then the probe key when the probe is 'T' (a set other than the entry's key). Code:
#: entry type ('s' set, 'z' zset) + probe ('-' none, 'S' the entry's set, 'T' another set, 'L'
#: ZRANGEBYLEX, 'N' ZRANGEBYSCORE). Returns {position, 'm'} (missing), {position, 'x'} (wrong
#: type), {position, 'w', score} (other score), {position, 'c', {holders}} (other pks hold the value).
CHECK = Script("""
local out = {}
local ki, ai = 1, 2
for e = 1, tonumber(ARGV[1]) do
    local code, member = ARGV[ai], ARGV[ai + 1]
    ai = ai + 2
    local key = KEYS[ki]
    ki = ki + 1
    local t, p = string.sub(code, 1, 1), string.sub(code, 2, 2)
    if t == 's' then
        local r = redis.pcall('SISMEMBER', key, member)
        if type(r) == 'table' then out[#out + 1] = {e, 'x'}
        elseif r == 0 then out[#out + 1] = {e, 'm'} end
    else
        local want = ARGV[ai]
        ai = ai + 1
        local got = redis.pcall('ZSCORE', key, member)
        if type(got) == 'table' and got.err then out[#out + 1] = {e, 'x'}
        elseif not got then out[#out + 1] = {e, 'm'}
        elseif tonumber(got) == nil or tonumber(got) ~= tonumber(want) then out[#out + 1] = {e, 'w', got} end
    end
    if p == 'S' or p == 'T' then
        local pkey = key
        if p == 'T' then pkey = KEYS[ki]; ki = ki + 1 end
        local c = redis.pcall('SCARD', pkey)
        if type(c) == 'number' and (c > 1 or (c == 1 and redis.call('SISMEMBER', pkey, member) == 0)) then
            out[#out + 1] = {e, 'c', redis.call('SRANDMEMBER', pkey, 100)}
        end
    elseif p == 'L' or p == 'N' then
        local a, b = ARGV[ai], ARGV[ai + 1]
        ai = ai + 2
        local r
        if p == 'L' then r = redis.pcall('ZRANGEBYLEX', key, a, b, 'LIMIT', 0, 100)
        else r = redis.pcall('ZRANGEBYSCORE', key, a, b, 'LIMIT', 0, 100) end
        if type(r) == 'table' and not r.err and (#r > 1 or (#r == 1 and r[1] ~= member)) then
            out[#out + 1] = {e, 'c', r}
        end
    end
end
return out
""")

#: members of the set/zset keys of KEYS, summed per group: ARGV[i] is the group (1..ARGV[#ARGV]) of
#: KEYS[i]; returns {{sum per group}, {position, type, position, type...}} (keys neither set nor zset
#: nor missing). Index keys are sets or sorted sets: SCARD first, the type only when it fails.
CARDS = Script("""
local ngroups = tonumber(ARGV[#ARGV])
local sums, odd = {}, {}
for g = 1, ngroups do sums[g] = 0 end
for i, key in ipairs(KEYS) do
    local c = redis.pcall('SCARD', key)
    if type(c) ~= 'number' then
        local t = redis.call('TYPE', key)['ok']
        if t == 'zset' then c = redis.call('ZCARD', key)
        else
            c = 0
            if t ~= 'none' then odd[#odd + 1] = i; odd[#odd + 1] = t end
        end
    end
    local g = tonumber(ARGV[i])
    sums[g] = sums[g] + c
end
return {sums, odd}
""")

#: per key of KEYS: {type, card, members...} (zset: member, score, ...) when card <= ARGV[1], else {type, card}
MEMBERS = Script("""
local limit = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
    local t = redis.call('TYPE', key)['ok']
    local item = {t, 0}
    if t == 'set' then
        item[2] = redis.call('SCARD', key)
        if item[2] <= limit then item[3] = redis.call('SMEMBERS', key) end
    elseif t == 'zset' then
        item[2] = redis.call('ZCARD', key)
        if item[2] <= limit then item[3] = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES') end
    end
    out[#out + 1] = item
end
return out
""")

#: KEYS[1] a set, ARGV the members to look for: 1/0 for each
IS_MEMBER = Script("""
local out = {}
for i, member in ipairs(ARGV) do out[i] = redis.call('SISMEMBER', KEYS[1], member) end
return out
""")

#: KEYS[1] collection, KEYS[2] key, ARGV[1] pk: delete the key if the pk is not in the collection
DEL_IF_ORPHAN = Script("""
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
return redis.call('DEL', KEYS[2])
""")

#: KEYS[1] key: delete it if it has no expiry (a lock or temporary key nobody will delete)
DEL_IF_NO_TTL = Script("""
if redis.call('PTTL', KEYS[1]) ~= -1 then return 0 end
return redis.call('DEL', KEYS[1])
""")

#: KEYS[1] collection, KEYS[2..] every key the pk may own, ARGV[1] pk: remove the pk when it owns nothing
SREM_IF_EMPTY = Script("""
for i = 2, #KEYS do if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end end
return redis.call('SREM', KEYS[1], ARGV[1])
""")

#: KEYS[1] deadlines zset, KEYS[2] collection, ARGV[1] pk: drop the deadline of a pk outside the collection
ZREM_IF_ORPHAN = Script("""
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 0 end
return redis.call('ZREM', KEYS[1], ARGV[1])
""")

#: KEYS[1] instance hash, KEYS[2] collection, ARGV[1] pk, ARGV[2] entry: drop an entry no field declares
HDEL_ENTRY = Script("""
return redis.call('HDEL', KEYS[1], ARGV[2])
""")

#: KEYS[1] key: delete it (an unknown key; the caller was told to delete orphans)
DEL_IF_NO_TTL_OR_ANY = Script("""
return redis.call('DEL', KEYS[1])
""")


#: reads KEYS[i] with the command of ARGV[i] ('h' HGETALL, 'g' GET, 's' SMEMBERS, 'l' LRANGE, 'z' ZRANGE);
#: a key of another type gives an error in its place
READ = Script("""
local out = {}
local names = {h = 'HGETALL', g = 'GET', s = 'SMEMBERS', l = 'LRANGE', z = 'ZRANGE'}
for i, key in ipairs(KEYS) do
    local code = ARGV[i]
    local r
    if code == 'l' or code == 'z' then r = redis.pcall(names[code], key, 0, -1)
    else r = redis.pcall(names[code], key) end
    if r == false then r = {} end
    out[i] = r
end
return out
""")


def _encode(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return b"%d" % value
    if isinstance(value, float):
        return repr(value).encode("ascii")
    raise TypeError(value)


def pack(commands: Sequence[Sequence[Any]]) -> bytes:
    """Return ``commands`` in the RESP protocol (str, bytes, int and float arguments)."""
    out = []
    for args in commands:
        out.append(b"*%d\r\n" % len(args))
        for arg in args:
            data = _encode(arg)
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def send(client: Any, commands: List[Tuple[Tuple[Any, ...], Any]]) -> List[Any]:
    """Send ``commands`` like ``limpyd._batch.send_commands``, packed by :func:`pack` (much cheaper)."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return send_commands(client, commands)
    try:
        packed = pack([args for args, _ in commands])
    except TypeError:
        return send_commands(client, commands)
    connection = get_pool_connection(pool, "EVALSHA")
    try:
        connection.send_packed_command([packed])
        replies: List[Any] = []
        for args, options in commands:
            try:
                replies.append(client.parse_response(connection, args[0], **options))
            except ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


def run(client: Any, calls: Sequence[Tuple[Script, Sequence[Any], Sequence[Any]]]) -> List[Any]:
    """Run ``calls`` (``(script, keys, args)``) in one round trip; return their replies.

    A reply that is an error is raised; ``NOSCRIPT`` loads the script and sends the calls again.
    """
    if not calls:
        return []
    commands = [(("EVALSHA", script.sha, len(keys), *keys, *args), {}) for script, keys, args in calls]
    replies = send(client, commands)
    if any(isinstance(reply, NoScriptError) for reply in replies):
        for script in {script.sha: script for script, _, _ in calls}.values():
            client.script_load(script.source)
        replies = send(client, commands)
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies
