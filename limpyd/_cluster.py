"""Redis Cluster support: the client, the key placement of models, and the cluster routes.

A database created with ``cluster=True`` uses redis-py's ``redis.cluster.RedisCluster`` (every
other setting goes to it). limpyd keeps no slot map of its own: redis-py follows ``MOVED``/``ASK``,
refreshes the topology and survives failovers; limpyd only chooses key names so that every key one
model uses together lives in one slot.

Placement: on a cluster database the ``_name`` of a model (the prefix of all its keys, see spec 10
§6) is wrapped in braces, ``{<namespace>:<model>}``, a Redis hash tag: ``{shop:bike}:1:hash``,
``{shop:bike}:collection``, ``{shop:bike}:name:rosalie``, ``{shop:bike}:lock-for-update:name``,
``{shop:bike}:__collection__:tmp:<hex>``. Every command and script of one model therefore stays in
one slot, and different models spread over the nodes. On a single server ``_name`` keeps its 2.x
form (no braces): the layout is byte-identical to redis-limpyd 2.x. The database renames its models
when they join it (declaration, ``use_database``) and when ``connect()``/``reset()`` switches it
between a single server and a cluster.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Dict, List, Optional, Tuple

import redis

from limpyd.speedups import decode_scan_keys

__all__ = [
    "cluster_model_name",
    "is_cluster_client",
    "make_cluster_client",
    "plain_model_name",
    "rename_models",
]

#: redis-py version from which ``RedisCluster.pipeline(transaction=True)`` and ``watch`` exist
TRANSACTIONS_MIN_REDIS_PY = (6, 1)


def _redis_cluster_class() -> Any:
    try:
        from redis.cluster import RedisCluster
    except ImportError as exc:  # pragma: no cover - redis-py < 4.1
        from limpyd.exceptions import LimpydException

        raise LimpydException(
            "RedisDatabase(cluster=True) needs redis-py >= 4.1 (found %s), whose redis.cluster.RedisCluster "
            "is the cluster client: upgrade it with `pip install 'redis>=4.1'`." % redis.__version__
        ) from exc
    return RedisCluster


def _startup_node(node: Any) -> Any:
    """Return ``node`` as a redis-py ``ClusterNode`` (also accepted: ``"host:port"``, ``(host, port)``, a dict)."""
    from redis.cluster import ClusterNode

    if isinstance(node, ClusterNode):
        return node
    if isinstance(node, str) and ":" in node:
        host, port = node.rsplit(":", 1)
        return ClusterNode(host, int(port))
    if isinstance(node, (tuple, list)) and len(node) == 2:
        return ClusterNode(node[0], int(node[1]))
    if isinstance(node, dict) and "host" in node:
        return ClusterNode(node["host"], int(node.get("port", 6379)))
    raise ValueError(
        "RedisDatabase(cluster=True, startup_nodes=[..., %r, ...]): each startup node must be a "
        "redis.cluster.ClusterNode, a 'host:port' string, a (host, port) pair or a dict with host and port."
        % (node,)
    )


def make_cluster_client(options: Dict[str, Any]) -> Any:
    """Return a ``RedisCluster`` built from the database ``options`` (``cluster`` removed)."""
    cluster_class = _cluster_client_class()
    options = {name: value for name, value in options.items() if name != "cluster"}
    if options.get("startup_nodes") is not None:
        options["startup_nodes"] = [_startup_node(node) for node in options["startup_nodes"]]
    return cluster_class(**options)


def cache_value(name: str, value: Any) -> Any:
    """Return ``value`` as it enters the connection cache key (startup nodes as ``host:port``)."""
    if name == "startup_nodes" and isinstance(value, (list, tuple)):
        parts = []
        for node in value:
            try:
                node = _startup_node(node)
            except ValueError:
                parts.append(repr(node))  # refused when the client is created
            else:
                parts.append("%s:%s" % (node.host, node.port))
        return "[%s]" % ",".join(parts)
    return value


def is_cluster_client(client: Any) -> bool:
    """Return whether ``client`` is a redis-py cluster client."""
    return getattr(client, "nodes_manager", None) is not None


# ---------------------------------------------------------------------- placement


def plain_model_name(model: Any) -> str:
    """Return the 2.x ``_name`` of ``model`` (``<namespace>:<model>``), whatever database it is on."""
    plain = model.__dict__.get("_limpyd_plain_name")
    if plain is None:
        plain = model._name
        if plain.startswith("{") and plain.endswith("}"):  # pragma: no cover - always recorded first
            plain = plain[1:-1]
        model._limpyd_plain_name = plain
    return plain


def cluster_model_name(plain: str) -> str:
    """Return the cluster ``_name`` of a model whose 2.x ``_name`` is ``plain``: ``{plain}``."""
    return "{%s}" % plain


def model_name_on(database: Any, model: Any) -> str:
    """Return the ``_name`` ``model`` takes on ``database`` (braces on a cluster database only)."""
    plain = plain_model_name(model)
    return cluster_model_name(plain) if database.is_cluster else plain


def name_on(is_cluster: bool, name: str) -> str:
    """Return a registry name (plain or tagged, maybe lower-cased) in the form of a database."""
    tagged = name.startswith("{") and name.endswith("}")
    if is_cluster and not tagged:
        return cluster_model_name(name)
    if not is_cluster and tagged:
        return name[1:-1]
    return name


def rename_models(database: Any) -> None:
    """Give every model of ``database`` the ``_name`` of its current mode; re-key the registries.

    Called when ``connect()``/``reset()`` switches a database between a single server and a
    cluster: the model registry and the relations of ``limpyd.contrib.related`` are keyed by
    ``_name``.
    """
    models = database.__dict__.get("_models")
    if not models:
        return
    is_cluster = database.is_cluster
    renamed: Dict[str, Any] = {}
    for model in models.values():
        model._name = model_name_on(database, model)
        renamed[model._name] = model
    models.clear()
    models.update(renamed)
    relations: Optional[Dict[str, List[Tuple[str, str, str]]]] = database._relations
    if relations:
        converted = {
            name_on(is_cluster, target): [
                (name_on(is_cluster, owner), field, related) for owner, field, related in entries
            ]
            for target, entries in relations.items()
        }
        relations.clear()
        relations.update(converted)


# ---------------------------------------------------------------------- batches: one slot, one node

#: errors of a command that did not run on the node we sent it to: redis-py's own redirections
_REDIRECTIONS = ("MovedError", "AskError", "TryAgainError", "ClusterDownError")


def _is_redirection(reply: Any) -> bool:
    return isinstance(reply, Exception) and type(reply).__name__ in _REDIRECTIONS


def _first_key_slot(client: Any, commands: List[tuple]) -> Optional[int]:
    """Return the slot of the first command that names a key, or ``None``."""
    for args, _ in commands:
        try:
            return client.determine_slot(*args)
        except Exception:  # noqa: BLE001 - a keyless command: look at the next one
            continue
    return None


def send_cluster_commands(client: Any, commands: List[tuple], one_by_one: Any) -> list:
    """Send ``commands`` (``(args, options)`` pairs, all keys in one slot) in one round trip.

    They go to the node redis-py's slot map names for the slot of their keys, packed on one
    connection of that node's pool, as ``limpyd._batch.send_commands`` does on a single server.
    A command refused with a redirection (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``) did
    not run: those are sent again one by one through ``client.execute_command``, which follows
    the redirection and refreshes redis-py's slot map. A node that cannot be reached before
    anything was sent: the same one-by-one route (redis-py retries and finds the new primary).
    ``one_by_one(client, commands)`` is the single-server fallback of ``send_commands``.
    """
    slot = _first_key_slot(client, commands)
    if slot is None:
        return one_by_one(client, commands)
    try:
        node = client.nodes_manager.get_node_from_slot(slot)
        node_client = client.get_redis_connection(node)
    except Exception:  # noqa: BLE001 - no node known for the slot now: redis-py finds one
        return one_by_one(client, commands)
    from limpyd._pool import get_pool_connection

    pool = node_client.connection_pool
    try:
        connection = get_pool_connection(pool, "PIPELINE")
    except (redis.ConnectionError, redis.TimeoutError):
        return one_by_one(client, commands)
    try:
        packed = connection.pack_commands([args for args, _ in commands])
    except redis.DataError:
        pool.release(connection)
        return one_by_one(client, commands)
    except BaseException:
        pool.release(connection)
        raise
    try:
        try:
            connection.send_packed_command([b"".join(packed)] if len(packed) > 1 else packed)
        except (redis.ConnectionError, redis.TimeoutError):
            connection.disconnect()
            if getattr(connection, "_sock", None) is None:  # pragma: no cover - depends on the failure
                _refresh_slots(client)
            raise
        replies: list = []
        for args, options in commands:
            try:
                replies.append(node_client.parse_response(connection, args[0], **options))
            except redis.ResponseError as exc:
                replies.append(exc)
    except BaseException:
        connection.disconnect()  # never hand back a connection with unread replies
        pool.release(connection)
        raise
    pool.release(connection)
    if any(_is_redirection(reply) for reply in replies):
        _refresh_slots(client)
        redirected = [index for index, reply in enumerate(replies) if _is_redirection(reply)]
        again = one_by_one(client, [commands[index] for index in redirected])
        for index, reply in zip(redirected, again):
            replies[index] = reply
    return replies


def is_batchable_cluster(client: Any) -> bool:
    """Return whether ``client`` is the cluster client limpyd creates (its write-behind batches work)."""
    return _CLUSTER_CLASS is not None and type(client) is _CLUSTER_CLASS


def _routed_by_node_flag(client: Any, args: tuple) -> bool:
    """Return whether redis-py routes the command ``args`` by a node flag (``SCRIPT LOAD``, ``PING``...), not by a key."""
    flags = client.command_flags
    name = str(args[0]).upper()
    if name in flags:
        return True
    return len(args) > 1 and ("%s %s" % (name, str(args[1]).upper())) in flags


def cluster_batch_client_class(batch_client_class: type) -> type:
    """Return the batch view of limpyd's ``RedisCluster``: ``batch_client_class``'s logic on the cluster class.

    A batch holds the commands of one model, whose keys share one slot: ``send_commands`` sends
    them in one round trip to the node owning the slot (:func:`send_cluster_commands`). A command
    redis-py routes by a node flag or explicit ``target_nodes`` (``SCRIPT LOAD`` on every primary,
    ``PING``...) sends the queue first, then goes through the real client.
    """
    global _CLUSTER_VIEW_CLASS
    if _CLUSTER_VIEW_CLASS is not None:
        return _CLUSTER_VIEW_CLASS
    skipped = (
        "__dict__",
        "__weakref__",
        "__module__",
        "__qualname__",
        "__doc__",
        "execute_command",
        "pipeline",
    )
    namespace = {name: value for name, value in batch_client_class.__dict__.items() if name not in skipped}
    queued_or_sent = batch_client_class.__dict__["execute_command"]

    def execute_command(self: Any, *args: Any, **options: Any) -> Any:
        if self._limpyd_defer is None and (
            "target_nodes" in options
            or "nodes_flag" in options
            or _routed_by_node_flag(self._limpyd_real, args)
        ):
            self._limpyd_batch.flush()
            return self._limpyd_real.execute_command(*args, **options)
        return queued_or_sent(self, *args, **options)

    def pipeline(self: Any, transaction: Any = None, shard_hint: Any = None) -> Any:
        self._limpyd_batch.flush()
        return self._limpyd_real.pipeline(transaction=transaction, shard_hint=shard_hint)

    base = _cluster_client_class()

    def sort(
        self: Any,
        name: Any,
        start: Any = None,
        num: Any = None,
        by: Any = None,
        get: Any = None,
        desc: bool = False,
        alpha: bool = False,
        store: Any = None,
        groups: bool = False,
    ) -> Any:
        """Sort ``name`` as ``SORT`` does (https://redis.io/commands/sort); queued unless it runs as the script."""
        item = self._limpyd_defer
        if item is None or not needs_sort_script(by, get):
            return base.sort(
                self,
                name,
                start=start,
                num=num,
                by=by,
                get=get,
                desc=desc,
                alpha=alpha,
                store=store,
                groups=groups,
            )
        # the SORT script's reply is transformed (groups, STORE) and a NOSCRIPT reply must load it:
        # it is sent now, the queue in front of it, and its result handed to the queued call
        self._limpyd_defer = None
        try:
            result = base.sort(
                self,
                name,
                start=start,
                num=num,
                by=by,
                get=get,
                desc=desc,
                alpha=alpha,
                store=store,
                groups=groups,
            )
        except (redis.ResponseError, redis.DataError) as exc:
            if item.on_reply is None:
                raise
            try:
                item.on_reply(exc)  # the pending result keeps the error, raised when it is read
            except (redis.ResponseError, redis.DataError):
                pass
            return None
        if item.on_reply is not None:
            item.on_reply(result)
        return None

    def split_across_slots(command: str) -> Any:
        split = getattr(base, command.lower() if command != "DEL" else "delete")

        def method(self: Any, *keys: Any) -> Any:
            # redis-py sends EXISTS/DEL/TOUCH/UNLINK through a pipeline, one per slot: the keys of
            # one slot make one command, queued or sent with the batch as on a single server
            real = self._limpyd_real
            if len({real.keyslot(key) for key in keys}) <= 1:
                return self.execute_command(command, *keys)
            item, self._limpyd_defer = self._limpyd_defer, None
            result = split(self, *keys)  # its pipeline sends the queue first
            if item is None:
                return result
            if item.on_reply is not None:
                item.on_reply(result)
            return None

        method.__name__ = split.__name__
        method.__doc__ = split.__doc__
        return method

    for command in ("EXISTS", "DEL", "TOUCH", "UNLINK"):
        method = split_across_slots(command)
        namespace[method.__name__] = method

    namespace.update(
        execute_command=execute_command,
        pipeline=pipeline,
        sort=sort,
        __module__=__name__,
        __doc__="The limpyd ``RedisCluster`` seen through ``database.connection`` while a batch is open.",
    )
    _CLUSTER_VIEW_CLASS = type("ClusterBatchClient", (base,), namespace)
    return _CLUSTER_VIEW_CLASS


_CLUSTER_VIEW_CLASS: Any = None


def _refresh_slots(client: Any) -> None:
    """Ask redis-py to read the slot map again (after a redirection or a lost node)."""
    try:
        client.nodes_manager.initialize()
    except Exception:  # noqa: BLE001, S110 - the commands sent next through redis-py refresh it anyway
        pass


# ---------------------------------------------------------------------- SORT BY/GET patterns

#: ``SORT`` with ``BY pattern`` or ``GET``, run inside the slot of the sorted key: Redis 7.0 refuses
#: both options in cluster mode, even when every key shares one hash tag. Same reply as ``SORT``:
#: the weights are read as ``SORT`` reads them (``GET`` of a string key, ``HGET`` for
#: ``key->field``, missing or wrong-typed keys count as missing), numbers compared as doubles and
#: ties broken by the elements themselves, strings compared byte by byte (``strcoll`` in the C
#: locale, Redis' default), missing values first. KEYS[1]: the key to sort; ARGV: BY pattern ("" if
#: none), alpha, desc, start, count (-1: to the end), then the GET patterns.
SORT_SCRIPT = r"""
local function lookup(pattern, element)
    if pattern == '#' then return element end
    local star = string.find(pattern, '*', 1, true)
    if not star then return false end
    local arrow = string.find(pattern, '->', star + 1, true)
    local field = nil
    if arrow and arrow + 2 <= #pattern then
        field = string.sub(pattern, arrow + 2)
        pattern = string.sub(pattern, 1, arrow - 1)
    end
    local key = string.sub(pattern, 1, star - 1) .. element .. string.sub(pattern, star + 1)
    local value
    if field then value = redis.pcall('HGET', key, field) else value = redis.pcall('GET', key) end
    if type(value) == 'table' then return false end
    return value
end

local key = KEYS[1]
local by, alpha, desc = ARGV[1], ARGV[2] == '1', ARGV[3] == '1'
local start, count = tonumber(ARGV[4]), tonumber(ARGV[5])
local kind = redis.call('TYPE', key)['ok']
local members
if kind == 'set' then members = redis.call('SMEMBERS', key)
elseif kind == 'list' then members = redis.call('LRANGE', key, 0, -1)
elseif kind == 'zset' then members = redis.call('ZRANGE', key, 0, -1)
elseif kind == 'none' then members = {}
else return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value') end

-- a weight as SORT reads it (strtod, the whole string, no NaN, no ERANGE): a number, or nil
local function sort_weight(text)
    if text == '' then return 0 end
    if string.find(text, '%s$') then return nil end
    local number = tonumber(text)
    if number == nil or number ~= number then return nil end
    local lower = string.lower(text)
    if number == math.huge or number == -math.huge then
        if not string.find(lower, 'inf', 1, true) then return nil end  -- overflow
    elseif number == 0 then  -- underflow: a mantissa with a non-zero digit read as 0
        local hex = string.match(lower, '0x([%x%.]*)')
        if hex and string.find(hex, '[1-9a-f]') then return nil end
        local digits = not hex and string.match(lower, '^[%s+-]*([%d%.]*)')
        if digits and string.find(digits, '[1-9]') then return nil end
    elseif math.abs(number) < 2.2250738585072014e-308 then
        return nil  -- a subnormal result: ERANGE too
    end
    return number
end

local dontsort = by ~= '' and not string.find(by, '*', 1, true)
if not dontsort then
    local weights, order = {}, {}
    for i, element in ipairs(members) do
        local weight
        if by ~= '' then weight = lookup(by, element) else weight = element end
        if not alpha then
            if weight then
                local number = sort_weight(weight)
                if number == nil then
                    return redis.error_reply("ERR One or more scores can't be converted into double")
                end
                weight = number
            else
                weight = 0
            end
        end
        weights[i] = weight
        order[i] = i
    end
    -- numbers: ties broken by the elements (reversed by DESC), as SORT does; strings: equal
    -- weights keep the order in which the elements were read, as SORT's sort leaves them
    table.sort(order, function(i, j)
        local wa, wb = weights[i], weights[j]
        if wa == wb then
            local a, b = members[i], members[j]
            if alpha or a == b then return i < j end
            if desc then return a > b end
            return a < b
        end
        local less
        if wa == false then less = true
        elseif wb == false then less = false
        else less = wa < wb end
        if desc then return not less end
        return less
    end)
    local sorted = {}
    for i, index in ipairs(order) do sorted[i] = members[index] end
    members = sorted
elseif kind == 'zset' and desc then
    local reversed = {}
    for i = #members, 1, -1 do reversed[#reversed + 1] = members[i] end
    members = reversed
end

local total = #members
if start < 0 then start = 0 end
local last
if count < 0 then last = total - 1 else last = start + count - 1 end
if last >= total then last = total - 1 end

local result = {}
for i = start + 1, last + 1 do
    local element = members[i]
    if #ARGV > 5 then
        for g = 6, #ARGV do result[#result + 1] = lookup(ARGV[g], element) end
    else
        result[#result + 1] = element
    end
end
return result
"""


def hash_tag(key: str) -> Optional[str]:
    """Return the hash tag of ``key`` (what Redis hashes: the text of the first ``{...}``), or ``None``."""
    opening = key.find("{")
    if opening < 0:
        return None
    closing = key.find("}", opening + 1)
    if closing <= opening + 1:
        return None
    return key[opening + 1 : closing]


def check_same_slot(client: Any, key: str, other: str, role: str, fix: str) -> None:
    """Raise ``LimpydException`` naming both keys, both slots and ``fix`` if they are not in one slot."""
    slot, other_slot = client.keyslot(key), client.keyslot(other)
    if slot != other_slot:
        from limpyd.exceptions import LimpydException

        raise LimpydException(
            "On a Redis Cluster, %s %r (slot %d) must be in the slot of %r (slot %d): %s"
            % (role, other, other_slot, key, slot, fix)
        )


def _as_list(value: Any) -> List[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def needs_sort_script(by: Any, get: Any) -> bool:
    """Return whether a ``SORT`` with these options is refused by a Redis 7.0 cluster."""
    return bool(get) or (by is not None and "*" in str(by))


def cluster_sort(
    client: Any,
    name: str,
    start: Any = None,
    num: Any = None,
    by: Any = None,
    get: Any = None,
    desc: bool = False,
    alpha: bool = False,
    store: Any = None,
    groups: bool = False,
) -> Any:
    """Run redis-py's ``sort`` on a cluster: as a script when it uses BY/GET patterns.

    Same arguments, errors and replies as ``redis.Redis.sort``
    (https://redis.io/commands/sort).
    """
    from redis.exceptions import DataError

    if (start is not None and num is None) or (num is not None and start is None):
        raise DataError("``start`` and ``num`` must both be specified")
    gets = _as_list(get)
    for pattern in ([by] if by is not None else []) + gets:
        if "*" not in str(pattern):
            continue  # "#", or no per-element key ("nosort", a constant: missing values)
        check_same_slot(
            client,
            name,
            str(pattern).replace("*", "x", 1),
            "the SORT pattern",
            "put the hash tag of the sorted key in the pattern (limpyd's own patterns "
            "always carry the model's tag).",
        )
    if store is not None:
        check_same_slot(client, name, store, "the SORT STORE key", "store in a key of the same hash tag.")
    if groups and not gets:
        raise DataError(
            "when using ``groups`` the ``get`` argument must be specified and contain at least two keys"
        )
    if groups and len(gets) < 2:
        raise DataError(
            "when using ``groups`` the ``get`` argument must be specified and contain at least two keys"
        )
    script = _sort_script(getattr(client, "_limpyd_real", client))  # a batch view: cached on the real client
    arguments = [
        by if by is not None else "",
        int(bool(alpha)),
        int(bool(desc)),
        start if start is not None else 0,
        num if num is not None else -1,
        *gets,
    ]
    result = script(keys=[name], args=arguments, client=client)
    if store is not None:
        pipe_commands = [("DEL", store)] + ([("RPUSH", store, *result)] if result else [])
        for command in pipe_commands:
            client.execute_command(*command)
        return len(result)
    if groups:
        size = len(gets)
        return [tuple(result[i : i + size]) for i in range(0, len(result), size)]
    return result


def _sort_script(client: Any) -> Any:
    """Return the SORT script registered on ``client`` (a redis-py client, not a limpyd layer: cached on it)."""
    script = getattr(client, "_limpyd_sort_script", None)
    if script is None:
        script = client._limpyd_sort_script = client.register_script(SORT_SCRIPT)
    return script


def _cluster_client_class() -> Any:
    """Return the ``RedisCluster`` subclass limpyd creates: ``sort`` with patterns runs as a script."""
    global _CLUSTER_CLASS
    if _CLUSTER_CLASS is None:
        base = _redis_cluster_class()

        class LimpydRedisCluster(base):  # type: ignore[misc, valid-type]
            """redis-py's ``RedisCluster``; ``sort`` with BY/GET patterns runs inside the key's slot.

            Redis 7.0 refuses ``SORT ... BY pattern`` and ``GET pattern`` in cluster mode even
            when every key shares the hash tag of the sorted key: limpyd's collections sort by
            field through :data:`SORT_SCRIPT` instead (one ``EVALSHA`` to the node of the slot).
            """

            def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
                """Return redis-py's ``ClusterPipeline``, without redis-py 6.0-6.2's warning about itself.

                Those versions pass their own deprecated ``cluster_error_retry_attempts`` to
                ``ClusterPipeline`` on every call: a ``DeprecationWarning`` nobody can act on,
                an error under ``-W error``.
                """
                if not _PIPELINE_WARNS_ABOUT_ITSELF:
                    return super().pipeline(transaction=transaction, shard_hint=shard_hint)
                with warnings.catch_warnings():
                    warnings.filterwarnings(
                        "ignore", message=_PIPELINE_SELF_WARNING, category=DeprecationWarning
                    )
                    return super().pipeline(transaction=transaction, shard_hint=shard_hint)

            def sort(
                self,
                name: Any,
                start: Any = None,
                num: Any = None,
                by: Any = None,
                get: Any = None,
                desc: bool = False,
                alpha: bool = False,
                store: Any = None,
                groups: bool = False,
            ) -> Any:
                """Sort ``name`` as ``SORT`` does (https://redis.io/commands/sort)."""
                if store is not None:
                    check_same_slot(
                        self,
                        name,
                        store,
                        "the SORT STORE key",
                        "store in a key of the same hash tag (for a collection: a key "
                        "beginning with the model's prefix, Model._name).",
                    )
                if not needs_sort_script(by, get):
                    return super().sort(
                        name,
                        start=start,
                        num=num,
                        by=by,
                        get=get,
                        desc=desc,
                        alpha=alpha,
                        store=store,
                        groups=groups,
                    )
                return cluster_sort(
                    self,
                    name,
                    start=start,
                    num=num,
                    by=by,
                    get=get,
                    desc=desc,
                    alpha=alpha,
                    store=store,
                    groups=groups,
                )

        _CLUSTER_CLASS = LimpydRedisCluster
    return _CLUSTER_CLASS


_CLUSTER_CLASS: Any = None

#: the DeprecationWarning redis-py 6.0 to 6.2 raise from their own ``RedisCluster.pipeline()``
_PIPELINE_SELF_WARNING = r".*deprecated usage of input argument/s 'cluster_error_retry_attempts'"


# ---------------------------------------------------------------------- SCAN on every primary

#: replies a node's scanning thread may get ahead of the caller (bounds the memory of a slow consumer)
_SCAN_AHEAD = 4


class _ReplyKeys:
    """The keys ``decode_scan_keys`` read from one reply, seen by ``scan_pool`` as one item.

    ``scan_pool`` counts what its ``decode_keys`` returns with ``len()`` and yields what iterating
    it gives: this wrapper counts the keys and yields their list once, so a node's thread gets
    whole lists without a Python step per key.
    """

    __slots__ = ("keys",)

    def __init__(self, keys: List[str]) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Any:
        return iter((self.keys,))


def _decode_key_lists(data: bytes, start: int, count: int) -> Tuple[Any, int]:
    """``decode_keys`` for ``scan_pool`` yielding one list per decoded run of keys (see :class:`_ReplyKeys`)."""
    keys, end = decode_scan_keys(data, start, count)
    return _ReplyKeys(keys), end


class ClusterScan(itertools.chain):
    """The keys of :func:`scan_cluster`: a C-level iterator over the nodes' lists of keys.

    ``close()`` stops the nodes' threads as closing a generator would (dropping the iterator
    does it too).
    """

    __slots__ = ("_lists",)

    def close(self) -> None:
        """Stop the scan: the nodes' threads end, their connections are drained or disconnected."""
        self._lists.close()


def scan_cluster(client: Any, arguments: List[Any], scan_pool: Any) -> Any:
    """Return an iterator over the keys of a ``SCAN`` loop run on every primary, the nodes in parallel.

    One thread per primary drives that node's loop with ``scan_pool`` (one ``SCAN`` always in
    flight on the node, the next sent before the keys of the current reply are decoded) and
    hands each reply's keys over as one list; the caller gets them as they come, from whichever
    node, through a C-level ``chain`` (no Python step per key: on 2 cores the 3 nodes and the
    client share the CPU, so client work per key slows the nodes down). An abandoned scan stops
    the threads (each node's connection is drained or disconnected by ``scan_pool``, as on a
    single server); the first error of a node is raised to the caller.
    """
    pools = [client.get_redis_connection(node).connection_pool for node in client.get_primaries()]
    if len(pools) == 1:
        return scan_pool(pools[0], arguments)
    lists = _scan_lists(pools, arguments, scan_pool)
    keys = ClusterScan.from_iterable(lists)
    keys._lists = lists
    return keys


def _scan_lists(pools: List[Any], arguments: List[Any], scan_pool: Any) -> Any:
    """Yield lists of keys from the ``SCAN`` loops of ``pools``, one thread per pool."""
    import queue
    import threading

    replies: "queue.Queue[Any]" = queue.Queue(maxsize=_SCAN_AHEAD * len(pools))
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                replies.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run(pool: Any) -> None:
        keys = scan_pool(pool, arguments, decode_keys=_decode_key_lists)
        single: List[str] = []  # keys yielded one by one (scan_pool's redis-py parser route)
        try:
            for item in keys:
                if type(item) is list:
                    if not put(item):
                        return
                else:
                    single.append(item)
                    if len(single) >= 1000:
                        if not put(single):
                            return
                        single = []
            if single and not put(single):
                return
            put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            put(exc)
        finally:
            keys.close()

    threads = [
        threading.Thread(target=run, args=(pool,), name="limpyd-scan-%d" % index, daemon=True)
        for index, pool in enumerate(pools)
    ]
    for thread in threads:
        thread.start()
    try:
        running = len(threads)
        while running:
            item = replies.get()
            if item is done:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            elif item:
                yield item
    finally:
        stop.set()
        for thread in threads:
            thread.join()


# ---------------------------------------------------------------------- contrib pipelines on a cluster


def _pipeline_class(base: type) -> type:
    """Return the subclass of redis-py's cluster pipeline class ``base`` used by ``PipelineDatabase``."""
    cached = _PIPELINE_CLASSES.get(base)
    if cached is not None:
        return cached

    class _ClusterPipeline(base):  # type: ignore[misc, valid-type]
        """A redis-py ``ClusterPipeline`` installed as the connection of a ``PipelineDatabase``.

        As the single-server ``limpyd.contrib.database._Pipeline``: installed at once, restored by
        ``__exit__``, ``watch`` takes bound fields. In a transaction every key must be in one slot
        (one model): a command for another slot is refused when it is queued, naming both keys.
        """

        _limpyd_cluster_pipeline = True

        def watch(self, *names: Any) -> Any:
            """Watch keys given as names or as bound limpyd fields (https://redis.io/commands/watch)."""
            from limpyd.fields import RedisField

            keys = [name.key if isinstance(name, RedisField) else name for name in names]
            self._limpyd_check_slot(keys)
            return super().watch(*keys)

        def _limpyd_check_slot(self, keys: List[Any]) -> None:
            if not self._limpyd_transaction:
                return
            for key in keys:
                slot = self._limpyd_real.keyslot(key)
                if self._limpyd_slot is None:
                    self._limpyd_slot, self._limpyd_slot_key = slot, key
                elif slot != self._limpyd_slot:
                    from limpyd.exceptions import LimpydException

                    raise LimpydException(
                        "On a Redis Cluster, a transaction runs in one slot: the key %r (slot %d) is not in the "
                        "slot of %r (slot %d), the first key of this transaction. Keep a transaction to the keys "
                        "of one model (they share its hash tag), or use pipeline(transaction=False)."
                        % (key, slot, self._limpyd_slot_key, self._limpyd_slot)
                    )

        def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            if self._limpyd_transaction and len(args) > 1:
                try:
                    keys = self._limpyd_real._get_command_keys(*args)
                except Exception:  # noqa: BLE001 - no key: nothing to check
                    keys = None
                if keys:
                    self._limpyd_check_slot(list(keys))
            return super().execute_command(*args, **kwargs)

        def reset(self) -> None:
            super().reset()
            self._limpyd_slot = self._limpyd_slot_key = None

        def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
            self._limpyd_database._connection = self._limpyd_original_connection
            super().__exit__(exc_type, exc_value, traceback)

    _PIPELINE_CLASSES[base] = _ClusterPipeline
    return _ClusterPipeline


_PIPELINE_CLASSES: Dict[type, type] = {}


def _redis_py_version() -> Tuple[int, ...]:
    parts = []
    for part in redis.__version__.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


#: redis-py 6.0 to 6.2 warn about their own arguments in ``RedisCluster.pipeline()``
_PIPELINE_WARNS_ABOUT_ITSELF = (6, 0) <= _redis_py_version() < (6, 3)


def cluster_pipeline(database: Any, transaction: bool, share_in_threads: bool) -> Any:
    """Return a redis-py cluster pipeline installed as ``database``'s connection (contrib ``PipelineDatabase``)."""
    import threading

    from limpyd._batch import current_batch

    if transaction and _redis_py_version() < TRANSACTIONS_MIN_REDIS_PY:
        from limpyd.exceptions import LimpydException

        raise LimpydException(
            "pipeline(transaction=True) and transaction() on a Redis Cluster need redis-py >= %s "
            "(found %s), whose RedisCluster runs MULTI/EXEC and WATCH within one slot: upgrade it with "
            "`pip install 'redis>=6.1'`, or use pipeline(transaction=False)."
            % (".".join(map(str, TRANSACTIONS_MIN_REDIS_PY)), redis.__version__)
        )
    batch = current_batch(database)
    if batch is not None:
        batch.flush()
    original = database._connection
    if original is None:
        database._connection = original = database.connect()
    real = getattr(original, "_limpyd_real", original)
    real = getattr(real, "_limpyd_real", real)
    pipeline = real.pipeline(transaction=transaction) if transaction else real.pipeline()
    pipeline.__class__ = _pipeline_class(type(pipeline))
    pipeline._limpyd_real = real
    pipeline._limpyd_database = database
    pipeline._limpyd_original_connection = original
    pipeline._limpyd_transaction = bool(transaction)
    pipeline._limpyd_slot = pipeline._limpyd_slot_key = None
    pipeline.share_in_threads = share_in_threads
    if not share_in_threads:
        pipeline.current_thread_id = threading.current_thread().ident
    database._connection = pipeline
    return pipeline


# ---------------------------------------------------------------------- keys from other slots


def localize_key(collection: Any, key: str, key_type: str) -> Tuple[str, bool]:
    """Return ``(key, False)`` if ``key`` shares the slot of ``collection``'s model, else a copy of it.

    On a cluster, a collection combines keys in its model's slot only (``SINTERSTORE``,
    ``ZINTERSTORE`` and scripts are refused across slots). A key from elsewhere (the set field of
    a related model, a raw key given to ``intersect``, a collection stored under another tag) is
    read on its own node (one command) and copied into a temporary key of the model's tag (one
    command, none when it is empty): ``(copy, True)``, deleted with the other temporary keys.
    """
    connection = collection.model.database.connection  # a batch view: the copy is written in order
    client = getattr(connection, "_limpyd_real", connection)  # the other slot is read directly
    if client.keyslot(key) == client.keyslot(collection.model._name):
        return key, False
    copy = collection._unique_key("tmp")
    if key_type in ("set", "none"):
        members = client.smembers(key)
        if members:
            connection.sadd(copy, *members)
    elif key_type == "zset":
        pairs = client.zrange(key, 0, -1, withscores=True)
        if pairs:
            connection.zadd(copy, dict(pairs))
    elif key_type == "list":
        values = client.lrange(key, 0, -1)
        if values:
            connection.rpush(copy, *values)
    else:
        return key, False  # refused by the caller with its own message
    return copy, True
