"""The scripted pass over instances: one script call reads a chunk of pks and checks their entries.

The audit's reference check computes every expected entry in Python through the index objects
(:mod:`limpyd.integrity._schema`); that costs a few microseconds of Python and several script
arguments per entry. Most indexes are plain (``EqualIndex``, ``TextRangeIndex``,
``NumberRangeIndex`` without transform, on fields read by a standard getter): their entries are
a concatenation of the stored value with a fixed key or separator, which a script computes as
well. :data:`CHECK_CHUNK` walks the collection with ``SSCAN`` (one call per chunk), reads the
values of each pk, checks its plain entries (and the unique ones) and returns only the pks where
something looks wrong: a missing or wrong entry, another holder of a unique value, a key of the
wrong Redis type, an unknown instance-hash entry, no data at all, a value it cannot score. Those
pks go through the reference check, which makes the findings; the script never makes one, so it
can err only on the side of sending a pk to Python for nothing.

Fields with other indexes (contrib, transforms, hash fields...) are checked in Python for every
pk, as before; a model with a field read by a custom getter is checked in Python entirely.

Keys: ``KEYS[1]`` is the collection, which routes the call; the script also reads the pks' keys
and the index keys their values give, built from the model's key prefix. They cannot be declared
beforehand (they depend on the values read), but they all start with the model's name, which on
a Redis Cluster carries the model's hash tag (``{ns:model}``): every key the script touches is in
the slot of ``KEYS[1]``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from limpyd.fields import RedisField
from limpyd.indexes import BaseIndex, BaseRangeIndex, EqualIndex, NumberRangeIndex, TextRangeIndex
from limpyd.integrity import _lua
from limpyd.integrity._schema import REDIS_TYPES, FieldPlan, ModelPlan, _contrib_classes
from limpyd.utils import make_key

__all__ = ["CHECK_CHUNK", "ScriptedCheck"]

#: ARGV: cursor, count, prefix (``<model>:``), want all pks ('1'/'0'), check empty pks ('1'/'0'),
#: variadic membership commands (SMISMEMBER, ZMSCORE: Redis >= 6.2) ('1'/'0'), then the spec (see
#: :class:`ScriptedCheck`). Returns {next cursor, flagged pks, entry counts per counter, number of
#: existing instance keys, number of pks scanned, all pks (if asked) or {}}.
#: Reads: one HGETALL per pk (instance hash), one MGET per string field and chunk, one read per
#: pk of a multi-valued field; entries one command each, but those of a range index (one sorted
#: set per field) by one ZMSCORE per chunk.
CHECK_CHUNK = _lua.Script(r"""
local scanned = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local prefix, want_all, check_empty, variadic = ARGV[3], ARGV[4] == '1', ARGV[5] == '1', ARGV[6] == '1'
local i = 7
local nh = tonumber(ARGV[i]); i = i + 1
local hnames = {}
for j = 1, nh do hnames[ARGV[i]] = true; i = i + 1 end
local nf = tonumber(ARGV[i]); i = i + 1
local fields = {}
for j = 1, nf do fields[j] = {ARGV[i], ARGV[i + 1], ARGV[i + 2]}; i = i + 3 end
local ni = tonumber(ARGV[i]); i = i + 1
local indexes = {}
for j = 1, ni do
    indexes[j] = {ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3] == '1', ARGV[i + 4], tonumber(ARGV[i + 5]), ARGV[i + 6] == '1'}
    i = i + 7
end
local nc = tonumber(ARGV[i])
local BATCH = 500
local call, pcall = redis.call, redis.pcall

local pks = scanned[2]
local n = #pks
-- bad[p]: pk p goes to Python; keys[p]: its existing keys; values[field][p]: a string or a list
local bad, keys, values = {}, {}, {}
for p = 1, n do keys[p] = 0 end
for _, x in ipairs(indexes) do values[x[1]] = {} end

if nh > 0 then
    for p = 1, n do
        local h = pcall('HGETALL', prefix .. pks[p] .. ':hash')
        if h.err then
            bad[p], keys[p] = true, 1
        elseif #h > 0 then
            keys[p] = 1
            for j = 1, #h, 2 do
                local name = h[j]
                if hnames[name] then
                    local v = values[name]
                    if v then v[p] = h[j + 1] end
                else
                    bad[p] = true
                end
            end
        end
    end
end
for _, f in ipairs(fields) do
    local name, code, rtype = f[1], f[2], f[3]
    local suffix, v = ':' .. name, values[name]
    if code == 'g' then
        for first = 1, n, BATCH do
            local last = math.min(first + BATCH - 1, n)
            local names = {}
            for p = first, last do names[p - first + 1] = prefix .. pks[p] .. suffix end
            local r = call('MGET', unpack(names))
            for p = first, last do
                local got = r[p - first + 1]
                if got then
                    v[p] = got
                    keys[p] = keys[p] + 1
                elseif call('TYPE', names[p - first + 1])['ok'] ~= 'none' then
                    bad[p], keys[p] = true, keys[p] + 1
                end
            end
        end
    elseif code == 't' then
        for p = 1, n do
            local t = call('TYPE', prefix .. pks[p] .. suffix)['ok']
            if t ~= 'none' then
                keys[p] = keys[p] + 1
                if t ~= rtype then bad[p] = true end
            end
        end
    else
        for p = 1, n do
            local key, r = prefix .. pks[p] .. suffix
            if code == 's' then r = pcall('SMEMBERS', key)
            elseif code == 'l' then r = pcall('LRANGE', key, 0, -1)
            else r = pcall('ZRANGE', key, 0, -1) end
            if r.err then
                bad[p], keys[p] = true, keys[p] + 1
            elseif #r > 0 then
                v[p] = r
                keys[p] = keys[p] + 1
            end
        end
    end
end

-- the entries of each pk; those of a range index (one sorted set) are checked together
local nkeys, counted, ranged = 0, {}, {}
local function check(x, v, pk, p)
    local kind, key = x[2], x[3]
    if kind == 'e' then
        if x[4] then
            local r = pcall('SRANDMEMBER', key .. v, 2)
            return not r.err and #r == 1 and r[1] == pk
        end
        return pcall('SISMEMBER', key .. v, pk) == 1
    end
    local g = ranged[key]
    if not g then g = {members = {}, wants = {}, owners = {}}; ranged[key] = g end
    local m, member, want = #g.members + 1
    if kind == 't' then
        member, want = v .. x[5] .. pk, 0
        if x[4] then
            local low = '[' .. v .. x[5]
            local r = pcall('ZRANGEBYLEX', key, low, low .. '\255', 'LIMIT', 0, 2)
            if r.err or #r ~= 1 or r[1] ~= member then return false end
        end
    elseif string.match(v, '^%-?%d+%.?%d*$') or string.match(v, '^%-?%.%d+$') then
        member, want = pk, tonumber(v)
        if x[4] then
            local r = pcall('ZRANGEBYSCORE', key, v, v, 'LIMIT', 0, 2)
            if r.err or #r ~= 1 or r[1] ~= pk then return false end
        end
    else
        return false  -- a value Python's float() may read otherwise (spaces, '_', 'inf'...): Python decides
    end
    g.members[m], g.wants[m], g.owners[m] = member, want, p
    return true
end
for p = 1, n do
    nkeys = nkeys + keys[p]
    if check_empty and keys[p] == 0 then bad[p] = true end
    if not bad[p] then
        local pk, base = pks[p], (p - 1) * nc
        for _, x in ipairs(indexes) do
            local vals, c = values[x[1]][p], base + x[6]
            if type(vals) == 'string' then
                counted[c] = (counted[c] or 0) + 1
                if not check(x, vals, pk, p) then bad[p] = true; break end
            elseif vals then
                local seen = x[7] and {}
                for _, v in ipairs(vals) do
                    if not seen or not seen[v] then
                        if seen then seen[v] = true end
                        counted[c] = (counted[c] or 0) + 1
                        if not check(x, v, pk, p) then bad[p] = true; break end
                    end
                end
                if bad[p] then break end
            end
        end
    end
end
for key, g in pairs(ranged) do
    local members, wants, owners = g.members, g.wants, g.owners
    for first = 1, #members, BATCH do
        local last = math.min(first + BATCH - 1, #members)
        local r
        if variadic then
            r = pcall('ZMSCORE', key, unpack(members, first, last))
        else
            r = {}
            for m = first, last do
                local got = pcall('ZSCORE', key, members[m])
                if type(got) == 'table' then r = got; break end
                r[m - first + 1] = got
            end
        end
        if r.err then
            for m = first, last do bad[owners[m]] = true end
        else
            for m = first, last do
                local got = r[m - first + 1]
                if not got or tonumber(got) ~= wants[m] then bad[owners[m]] = true end
            end
        end
    end
end

local flagged, counts = {}, {}
for c = 1, nc do counts[c] = 0 end
for p = 1, n do
    if bad[p] then
        flagged[#flagged + 1] = pks[p]
    else
        local base = (p - 1) * nc
        for c = 1, nc do counts[c] = counts[c] + (counted[base + c] or 0) end
    end
end
if not want_all then pks = {} end
return {scanned[1], flagged, counts, nkeys, n, pks}
""")

#: field readers whose values the script reads (others are only checked for their Redis type)
_READ_CODES = {"string": "g", "set": "s", "list": "l", "zset": "z"}


def _from_python_is_plain(field_plan: FieldPlan) -> bool:
    """Return whether the field's ``from_python`` leaves a ``str`` read from Redis unchanged."""
    from limpyd.contrib.related import RelatedFieldMixin  # contrib imports the core: imported lazily

    return type(field_plan.field).from_python in (RedisField.from_python, RelatedFieldMixin.from_python)


def _scripted_index(field_plan: FieldPlan, index: Any) -> Optional[Tuple[str, str, str]]:
    """Return ``(kind, key, separator)`` if the script computes the entries of ``index``, else ``None``.

    ``kind``: ``e`` (``EqualIndex``: ``key`` is the prefix of the value's set), ``t``
    (``TextRangeIndex``) or ``n`` (``NumberRangeIndex``): ``key`` is the sorted set.
    """
    if field_plan.reader not in ("ihash", "string", "set", "list", "zset") or index.transform:
        return None
    if not _from_python_is_plain(field_plan) or isinstance(index, _contrib_classes()):
        return None
    cls = type(index)
    if cls._key_parts is not BaseIndex._key_parts:
        return None
    if isinstance(index, EqualIndex):
        if (
            cls.get_storage_key is EqualIndex.get_storage_key
            and cls.normalize_value is BaseIndex.normalize_value
        ):
            return "e", make_key(*index._key_parts(), ""), ""
        return None
    if not isinstance(index, BaseRangeIndex) or cls.get_storage_key is not BaseRangeIndex.get_storage_key:
        return None
    if (
        isinstance(index, TextRangeIndex)
        and cls.prepare_data_to_store is TextRangeIndex.prepare_data_to_store
        and cls.get_boundaries is TextRangeIndex.get_boundaries
        and cls.normalize_value is BaseIndex.normalize_value
    ):
        return "t", make_key(*index._key_parts()), str(index.separator)
    if (
        isinstance(index, NumberRangeIndex)
        and cls.prepare_data_to_store is NumberRangeIndex.prepare_data_to_store
        and cls.get_boundaries is NumberRangeIndex.get_boundaries
        and cls.normalize_value is NumberRangeIndex.normalize_value
    ):
        return "n", make_key(*index._key_parts()), ""
    return None


class ScriptedCheck:
    """What :data:`CHECK_CHUNK` checks for a model, and its arguments.

    ``available`` is false when the model has a field read by a custom getter (the whole check
    is then done in Python); ``python_fields`` are the indexed fields whose entries are checked
    in Python; ``python_reads`` the fields those need read (``None``: all).
    """

    def __init__(self, plan: ModelPlan) -> None:
        self.plan = plan
        self.available = all(field_plan.reader != "custom" for field_plan in plan.fields.values())
        self.python_fields: List[str] = []
        self.counters: List[str] = []
        indexes: List[Any] = []
        for field_plan in plan.indexed:
            scripted = [_scripted_index(field_plan, index) for index in field_plan.indexes]
            if any(item is None for item in scripted):
                self.python_fields.append(field_plan.name)
                continue
            self.counters.append(field_plan.name)
            for index, (kind, key, separator) in zip(field_plan.indexes, scripted):
                unique = "1" if index is field_plan.unique_index else "0"
                dedupe = "1" if field_plan.reader == "list" else "0"
                indexes.append((field_plan.name, kind, key, unique, separator, len(self.counters), dedupe))
        self.python_reads = self._python_reads()
        scripted_fields = set(self.counters)
        args: List[Any] = [len(plan.instancehash), *plan.instancehash]
        others = [field_plan for field_plan in plan.fields.values() if field_plan.reader != "ihash"]
        args.append(len(others))
        for field_plan in others:
            code = _READ_CODES.get(field_plan.reader, "t") if field_plan.name in scripted_fields else "t"
            args.extend((field_plan.name, code, REDIS_TYPES.get(field_plan.reader, "")))
        args.append(len(indexes))
        for item in indexes:
            args.extend(item)
        args.append(len(self.counters))
        self.spec = args
        #: SMISMEMBER and ZMSCORE exist (Redis >= 6.2)
        self.variadic = tuple(plan.model.database.redis_version) >= (6, 2)

    def _python_reads(self) -> Optional[List[str]]:
        """Return the fields to read for the Python part (the fields checked there, or all if they need others)."""
        multi, scored, equal_with = _contrib_classes()

        def standalone(index: Any) -> bool:
            if isinstance(index, multi):
                return all(standalone(sub) for sub in index._indexes)
            return not isinstance(index, (scored, equal_with))

        for name in self.python_fields:
            if not all(standalone(index) for index in self.plan.fields[name].indexes):
                return None
        return list(self.python_fields)

    def run(
        self, client: Any, cursor: Any, count: int, want_all: bool
    ) -> Tuple[Any, List[str], Dict[str, int], int, int, List[str]]:
        """Run one call from ``cursor``: ``(next cursor, flagged pks, entries per field, instance keys, pks, all pks)``."""
        plan = self.plan
        args = [
            cursor,
            count,
            plan.name + ":",
            "1" if want_all else "0",
            "1" if plan.fields else "0",
            "1" if self.variadic else "0",
        ]
        reply = _lua.run(client, [(CHECK_CHUNK, [plan.collection_key], args + self.spec)])[0]
        counts = {name: int(number) for name, number in zip(self.counters, reply[2])}
        return (
            reply[0],
            [str(pk) for pk in reply[1]],
            counts,
            int(reply[3]),
            int(reply[4]),
            [str(pk) for pk in reply[5]],
        )
