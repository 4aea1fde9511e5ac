"""The server-side half of atomic writes: one Lua script, one call per operation.

Each model gets its own copy of the script, with its schema (field kinds and the indexes the
script can maintain) written in as a Lua table in place of ``__SCHEMA__``, so that a call only
carries the operation: a JSON request in ``ARGV[1]``. The script checks uniqueness, writes the
values and maintains every index entry, or refuses and writes nothing. The key layout and the stored bytes
are those of the default write path (see docs/atomic-writes.rst).

The same code is sent as a script (``EVALSHA``) or, where the server has them (Redis >= 7), loaded
once as a function library (``FUNCTION LOAD``, then ``FCALL``): a function survives restarts (with
persistence) and is compiled once, where a script's top level (the schema table, the local
functions) runs again at every call. ``__ENTRY__`` is replaced by the entry point of each form.

Replies: ``{"ok", result...}`` or ``{"unique", field, value, other pk}``, ``{"missing"}`` (a pk
that is not in the collection), ``{"pkexists", pk}``.
"""

from __future__ import annotations

__all__ = ["ATOMIC_LUA", "EVAL_ENTRY", "FUNCTION_ENTRY"]

#: how the script is entered when sent with EVAL/EVALSHA: the request is ARGV[1]
EVAL_ENTRY = "return handle(cjson.decode(ARGV[1]))"

#: how it is entered as a Redis 7 function (FUNCTION LOAD once, then FCALL): ``%s`` is its name
FUNCTION_ENTRY = (
    "redis.register_function('%s', function(keys, args) return handle(cjson.decode(args[1])) end)"
)

ATOMIC_LUA = r"""
local schema = __SCHEMA__
local M = schema.m
local COLLECTION = M .. ':collection'
local DEADLINES = M .. ':__deadlines__'

local function fkey(pk, name, kind)
    if kind == 'ih' then return M .. ':' .. pk .. ':hash' end
    return M .. ':' .. pk .. ':' .. name
end

-- Python's float() for the common forms (an unparsable value scores 0, as in NumberRangeIndex)
local function num(v)
    local s = string.lower((string.gsub(v, '^%s*(.-)%s*$', '%1')))
    if s == 'inf' or s == '+inf' or s == 'infinity' or s == '+infinity' then return '+inf' end
    if s == '-inf' or s == '-infinity' then return '-inf' end
    if string.find(s, '^[+-]?%d*%.?%d*e?[+-]?%d*$') and string.find(s, '%d') then
        local n = tonumber(s)
        if n then return n end
    end
    return 0
end

-- the stored values of a field, as index parts: {value} or {hash key, value}
local function read_parts(pk, name, f)
    local k = fkey(pk, name, f.k)
    local out = {}
    if f.k == 'str' then
        local v = redis.call('get', k)
        if v then out[1] = {v} end
    elseif f.k == 'ih' then
        local v = redis.call('hget', k, name)
        if v then out[1] = {v} end
    elseif f.k == 'set' then
        for _, v in ipairs(redis.call('smembers', k)) do out[#out + 1] = {v} end
    elseif f.k == 'list' then
        for _, v in ipairs(redis.call('lrange', k, 0, -1)) do out[#out + 1] = {v} end
    elseif f.k == 'zset' then
        for _, v in ipairs(redis.call('zrange', k, 0, -1)) do out[#out + 1] = {v} end
    elseif f.k == 'hash' then
        local a = redis.call('hgetall', k)
        for i = 1, #a, 2 do out[#out + 1] = {a[i], a[i + 1]} end
    end
    return out
end

local function parts_id(parts)
    return table.concat(parts, '\0')
end

local function ix_base(ix, parts)
    local k = ix.h
    for i = 1, #parts - 1 do k = k .. ':' .. parts[i] end
    if ix.x then
        for _, extra in ipairs(ix.x) do k = k .. ':' .. extra end
    end
    return k .. ix.t
end

-- the value as the index stores it: the slices of its transforms applied (date and time indexes)
local function ix_value(ix, v)
    if ix.tf then
        for _, piece in ipairs(ix.tf) do v = string.sub(v, piece[1] + 1, piece[2]) end
    end
    return v
end

local function ix_add(ix, pk, parts, score)
    local v = ix_value(ix, parts[#parts])
    if ix.tf then score = nil end  -- the client's score is that of the untransformed value
    if ix.y == 'eq' then
        redis.call('sadd', ix_base(ix, parts) .. ':' .. v, pk)
    elseif ix.y == 'text' then
        redis.call('zadd', ix_base(ix, parts), 0, v .. ix.sep .. pk)
    else
        redis.call('zadd', ix_base(ix, parts), score or num(v), pk)
    end
end

local function ix_remove(ix, pk, parts)
    local v = ix_value(ix, parts[#parts])
    if ix.y == 'eq' then
        redis.call('srem', ix_base(ix, parts) .. ':' .. v, pk)
    elseif ix.y == 'text' then
        redis.call('zrem', ix_base(ix, parts), v .. ix.sep .. pk)
    else
        redis.call('zrem', ix_base(ix, parts), pk)
    end
end

-- the pks other than pk holding the value of parts in the unique index ix
local function ix_others(ix, pk, parts, score)
    local v = ix_value(ix, parts[#parts])
    local found
    if ix.y == 'eq' then
        found = redis.call('smembers', ix_base(ix, parts) .. ':' .. v)
    elseif ix.y == 'text' then
        found = {}
        local prefix = v .. ix.sep
        for _, member in ipairs(redis.call('zrangebylex', ix_base(ix, parts), '[' .. prefix, '[' .. prefix .. '\255')) do
            found[#found + 1] = string.sub(member, #prefix + 1)
        end
    else
        local s = score or num(v)
        found = redis.call('zrangebyscore', ix_base(ix, parts), s, s)
    end
    local others = {}
    for _, other in ipairs(found) do
        if other ~= pk then others[#others + 1] = other end
    end
    return others
end

-- {field, value, other pk} if a unique field of the new parts is taken, else nil
local function unique_conflict(pk, name, f, parts_list, scores)
    if not f.u then return nil end
    local ix = f.ix[f.u]
    for i, parts in ipairs(parts_list) do
        local others = ix_others(ix, pk, parts, scores and scores[i])
        if #others > 0 then
            table.sort(others)
            return {name, parts[#parts], others[1]}
        end
    end
    return nil
end

-- compound indexes (EqualIndexWith, ScoredEqualIndex): entries computed from every field involved
local function field_parts(pk, name)
    if name == schema.pk then return {{pk}} end
    return read_parts(pk, name, schema.f[name])
end

-- {id = {key type, key, member, score}} of the compound index c for pk, from what is stored now
local function compound_entries(pk, c)
    local out = {}
    if c.y == 'scored' then
        local scores = field_parts(pk, c.fields[2])
        for _, parts in ipairs(field_parts(pk, c.fields[1])) do
            local key = c.h
            for i = 1, #parts - 1 do key = key .. ':' .. parts[i] end
            key = key .. c.t .. ':' .. parts[#parts]
            if #scores > 0 then out['z\0' .. key] = {'zset', key, pk, num(scores[1][1])} end
            if c.u then out['s\0' .. key .. ':__uniqueness__'] = {'set', key .. ':__uniqueness__', pk} end
        end
        return out
    end
    local combos = {{}}
    for _, name in ipairs(c.fields) do
        local parts_list = field_parts(pk, name)
        if #parts_list == 0 then return out end
        local next_combos = {}
        for _, combo in ipairs(combos) do
            for _, parts in ipairs(parts_list) do
                local extended = {unpack(combo)}
                for _, part in ipairs(parts) do extended[#extended + 1] = part end
                next_combos[#next_combos + 1] = extended
            end
        end
        combos = next_combos
    end
    for _, combo in ipairs(combos) do
        local key = c.h .. ':' .. table.concat(combo, ':')
        out['s\0' .. key] = {'set', key, pk}
    end
    return out
end

local function compounds_of(names)
    local found = {}
    if not schema.c then return found end
    for _, c in ipairs(schema.c) do
        for _, name in ipairs(c.fields) do
            local touched = false
            for _, other in ipairs(names) do if other == name then touched = true end end
            if touched then found[#found + 1] = c; break end
        end
    end
    return found
end

-- the pk holding a unique entry of c other than pk, or nil
local function compound_conflict(c, entry, pk)
    if not c.u then return nil end
    if entry[1] ~= 'set' then return nil end
    for _, other in ipairs(redis.call('smembers', entry[2])) do
        if other ~= pk then return other end
    end
    return nil
end

local function apply_compound(before, after)
    for id, entry in pairs(before) do
        local now = after[id]
        if not now then
            if entry[1] == 'set' then redis.call('srem', entry[2], entry[3]) else redis.call('zrem', entry[2], entry[3]) end
        end
    end
    for id, entry in pairs(after) do
        local was = before[id]
        if not was or (entry[1] == 'zset' and was[4] ~= entry[4]) then
            if entry[1] == 'set' then redis.call('sadd', entry[2], entry[3]) else redis.call('zadd', entry[2], entry[4], entry[3]) end
        end
    end
end

local function deindex_all(pk, name, f, parts_list)
    for _, parts in ipairs(parts_list) do
        for _, ix in ipairs(f.ix) do ix_remove(ix, pk, parts) end
    end
end

local function index_all(pk, name, f, parts_list, scores)
    for i, parts in ipairs(parts_list) do
        for _, ix in ipairs(f.ix) do ix_add(ix, pk, parts, scores and scores[i]) end
    end
end

local function delete_instance(pk)
    if schema.c then
        for _, c in ipairs(schema.c) do apply_compound(compound_entries(pk, c), {}) end
    end
    local keys = {}
    for _, name in ipairs(schema.o) do
        local f = schema.f[name]
        if #f.ix > 0 then deindex_all(pk, name, f, read_parts(pk, name, f)) end
        keys[#keys + 1] = fkey(pk, name, f.k)
    end
    redis.call('del', unpack(keys))
    redis.call('srem', COLLECTION, pk)
    if schema.x then redis.call('zrem', DEADLINES, pk) end
end

local function now_ms()
    local t = redis.call('time')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- remove the instances whose deadline is past (at most limit of them); return how many
local function purge(limit)
    if not schema.x then return 0 end
    local due = redis.call('zrangebyscore', DEADLINES, '-inf', now_ms(), 'LIMIT', 0, limit)
    for _, pk in ipairs(due) do delete_instance(pk) end
    return #due
end

-- write the given values of a new instance (fields: list of {name, values, scores})
local function write_new(pk, fields)
    redis.call('sadd', COLLECTION, pk)
    local hash = {}
    for _, item in ipairs(fields) do
        local name, values = item[1], item[2]
        local f = schema.f[name]
        local k = fkey(pk, name, f.k)
        local parts = {}
        if f.k == 'str' then
            redis.call('set', k, values[1]); parts[1] = {values[1]}
        elseif f.k == 'ih' then
            hash[#hash + 1] = name; hash[#hash + 1] = values[1]; parts[1] = {values[1]}
        elseif f.k == 'set' then
            redis.call('sadd', k, unpack(values))
            for i, v in ipairs(values) do parts[i] = {v} end
        elseif f.k == 'list' then
            redis.call('rpush', k, unpack(values))
            for i, v in ipairs(values) do parts[i] = {v} end
        elseif f.k == 'zset' then  -- values: member, score, member, score...
            local args = {}
            for i = 1, #values, 2 do
                args[#args + 1] = values[i + 1]; args[#args + 1] = values[i]
                parts[#parts + 1] = {values[i]}
            end
            redis.call('zadd', k, unpack(args))
        elseif f.k == 'hash' then  -- values: key, value, key, value...
            redis.call('hset', k, unpack(values))
            for i = 1, #values, 2 do parts[#parts + 1] = {values[i], values[i + 1]} end
        end
        if #f.ix > 0 then index_all(pk, name, f, parts, item[3]) end
    end
    if #hash > 0 then redis.call('hset', M .. ':' .. pk .. ':hash', unpack(hash)) end
end

-- the unique checks of a new instance; nil when free
local function check_new(pk, fields)
    for _, item in ipairs(fields) do
        local f = schema.f[item[1]]
        if f.u then
            local parts = {}
            if f.k == 'zset' then
                for i = 1, #item[2], 2 do parts[#parts + 1] = {item[2][i]} end
            else
                for i, v in ipairs(item[2]) do parts[i] = {v} end
            end
            local conflict = unique_conflict(pk, item[1], f, parts, item[3])
            if conflict then return conflict end
        end
    end
    return nil
end

local function create_one(row)
    local pk = row.pk
    if pk and redis.call('sismember', COLLECTION, pk) == 1 then return {'pkexists', pk} end
    local conflict = check_new(pk or '', row.f)
    if conflict then return {'unique', conflict[1], conflict[2], conflict[3]} end
    local allocated = not pk
    if allocated then pk = tostring(redis.call('incrby', M .. ':max_pk', 1)) end
    write_new(pk, row.f)
    if schema.c then
        local entries = {}
        for _, c in ipairs(schema.c) do
            local after = compound_entries(pk, c)
            for _, entry in pairs(after) do
                local other = compound_conflict(c, entry, pk)
                if other then  -- refused: the creation is undone whole, the pk counter included
                    delete_instance(pk)
                    if allocated then
                        if tonumber(pk) == 1 then redis.call('del', M .. ':max_pk')
                        else redis.call('decrby', M .. ':max_pk', 1) end
                    end
                    return {'uniquewith', c.fields[1], entry[2], other}
                end
            end
            entries[#entries + 1] = after
        end
        for _, after in ipairs(entries) do apply_compound({}, after) end
    end
    if row.ttl then redis.call('zadd', DEADLINES, now_ms() + row.ttl, pk) end
    return {'ok', pk}
end

local function restore(pk, name, f, snapshot)
    local k = fkey(pk, name, f.k)
    if f.k == 'ih' then
        if snapshot then redis.call('hset', k, name, snapshot) else redis.call('hdel', k, name) end
        return
    end
    redis.call('del', k)
    if f.k == 'str' then
        if snapshot then redis.call('set', k, snapshot) end
    elseif #snapshot > 0 then
        if f.k == 'set' then redis.call('sadd', k, unpack(snapshot))
        elseif f.k == 'list' then redis.call('rpush', k, unpack(snapshot))
        elseif f.k == 'zset' then
            local args = {}
            for i = 1, #snapshot, 2 do args[#args + 1] = snapshot[i + 1]; args[#args + 1] = snapshot[i] end
            redis.call('zadd', k, unpack(args))
        elseif f.k == 'hash' then redis.call('hset', k, unpack(snapshot)) end
    end
end

local function snapshot_of(pk, name, f)
    local k = fkey(pk, name, f.k)
    if f.k == 'ih' then return redis.call('hget', k, name) end
    if f.k == 'str' then return redis.call('get', k) end
    if f.k == 'set' then return redis.call('smembers', k) end
    if f.k == 'list' then return redis.call('lrange', k, 0, -1) end
    if f.k == 'zset' then return redis.call('zrange', k, 0, -1, 'WITHSCORES') end
    return redis.call('hgetall', k)
end

-- run one command on fields of an instance, maintaining their indexes from what changed
local function modify(pk, names, command)
    local compounds = compounds_of(names)
    local compound_pre = {}
    for i, c in ipairs(compounds) do compound_pre[i] = compound_entries(pk, c) end
    local pre, snapshots, unique = {}, {}, false
    for _, name in ipairs(names) do
        if schema.f[name].u then unique = true end
    end
    for _, c in ipairs(compounds) do if c.u then unique = true end end
    for _, name in ipairs(names) do
        local f = schema.f[name]
        pre[name] = read_parts(pk, name, f)
        if unique then snapshots[name] = snapshot_of(pk, name, f) end
    end
    local result = redis.call(unpack(command))
    local changes = {}
    for _, name in ipairs(names) do
        local f = schema.f[name]
        local post = read_parts(pk, name, f)
        local before, after = {}, {}
        for _, parts in ipairs(pre[name]) do before[parts_id(parts)] = parts end
        for _, parts in ipairs(post) do after[parts_id(parts)] = parts end
        local removed, added = {}, {}
        for id, parts in pairs(before) do if not after[id] then removed[#removed + 1] = parts end end
        for id, parts in pairs(after) do if not before[id] then added[#added + 1] = parts end end
        changes[#changes + 1] = {name, f, removed, added}
        local conflict = unique_conflict(pk, name, f, added, nil)
        if conflict then  -- refused: every field the command touched is put back as it was
            for _, n in ipairs(names) do restore(pk, n, schema.f[n], snapshots[n]) end
            return {'unique', conflict[1], conflict[2], conflict[3]}
        end
    end
    local compound_post = {}
    for i, c in ipairs(compounds) do
        compound_post[i] = compound_entries(pk, c)
        for id, entry in pairs(compound_post[i]) do
            if not compound_pre[i][id] then
                local other = compound_conflict(c, entry, pk)
                if other then
                    for _, n in ipairs(names) do restore(pk, n, schema.f[n], snapshots[n]) end
                    return {'uniquewith', c.fields[1], entry[2], other}
                end
            end
        end
    end
    for _, change in ipairs(changes) do
        deindex_all(pk, change[1], change[2], change[3])
        index_all(pk, change[1], change[2], change[4], nil)
    end
    for i = 1, #compounds do apply_compound(compound_pre[i], compound_post[i]) end
    return {'ok', result}
end

local function handle(req)
    local op = req.op
    if op ~= 'purge' then purge(100) end
    if op == 'create' then
        return create_one(req)
    elseif op == 'create_many' then
        local out = {}
        for i, row in ipairs(req.rows) do
            local reply = create_one(row)
            out[#out + 1] = reply[1]
            out[#out + 1] = reply[2] or ''
            out[#out + 1] = reply[3] or ''
            out[#out + 1] = reply[4] or ''
        end
        return out
    elseif op == 'modify' then
        if req.check and redis.call('sismember', COLLECTION, req.pk) == 0 then return {'missing'} end
        return modify(req.pk, req.names, req.cmd)
    elseif op == 'delete' then
        if redis.call('sismember', COLLECTION, req.pk) == 0 then return {'missing'} end
        delete_instance(req.pk)
        return {'ok'}
    elseif op == 'delete_many' then
        local count = 0
        for _, pk in ipairs(req.pks) do
            if redis.call('sismember', COLLECTION, pk) == 1 then delete_instance(pk); count = count + 1 end
        end
        return {'ok', count}
    elseif op == 'purge' then
        return {'ok', purge(req.limit)}
    elseif op == 'expire' then
        if redis.call('sismember', COLLECTION, req.pk) == 0 then return {'missing'} end
        if req.at then
            redis.call('zadd', DEADLINES, req.at, req.pk)
        elseif req.ttl then
            redis.call('zadd', DEADLINES, now_ms() + req.ttl, req.pk)
        else
            return {'ok', redis.call('zrem', DEADLINES, req.pk)}
        end
        return {'ok', 1}
    elseif op == 'deadline' then
        redis.call('zadd', DEADLINES, now_ms() + req.ttl, req.pk)
        return {'ok'}
    elseif op == 'ttl' then
        local deadline = redis.call('zscore', DEADLINES, req.pk)
        if not deadline then return {'ok', false} end
        return {'ok', tostring(tonumber(deadline) - now_ms())}
    end
    return redis.error_reply('limpyd atomic script: unknown operation ' .. tostring(op))
end
__ENTRY__
"""
