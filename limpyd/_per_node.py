"""Reads of many shards in one round trip per node (docs/sharding.rst, "Queries").

A collection of a sharded model reads one key per shard when each shard's result is one key (no
filter, or one equality filter): those commands go out together, without ``MULTI``. On a single
server that is one write and one read (``limpyd._batch.send_commands``). On a Redis Cluster the
commands are grouped by the node redis-py's slot map gives for their key, written to every node
first, then every node's replies are read: the nodes work at the same time, one round trip per
node. A command refused with a redirection (``MOVED``, ``ASK``...) did not run: it is sent again
through redis-py, which follows it, as every batch of limpyd does on a cluster (``limpyd._cluster``).

``len()`` sends one command per server: :data:`COUNT_SCRIPT`, the sum of the ``SCARD`` of the keys
it is given, each node asked for the keys its slots hold (:func:`count_per_node`).
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import redis

from limpyd._batch import _send_one_by_one, send_commands
from limpyd._cluster import _is_redirection, _refresh_slots
from limpyd._pool import get_pool_connection, keep_spare, take_connection

#: the ``SORT`` options a per-node read sends itself (redis-py ``sort`` keywords)
_SORT_OPTIONS = frozenset(("by", "start", "num", "get", "desc", "alpha"))

#: The sum of the ``SCARD`` of the keys given as ARGV, run once per node by ``EVALSHA <sha> 0
#: <keys>...``: no key declared, so no client refuses keys of several slots (``CROSSSLOT``), and
#: ``allow-cross-slot-keys`` (Redis 7.0) lets the node read keys of every slot it serves. A key
#: the node does not serve (a stale slot map, a slot being migrated) fails the script ("Script
#: attempted to access a non local key"): those keys are then counted one ``SCARD`` each.
COUNT_SCRIPT = """#!lua flags=no-writes,allow-cross-slot-keys
local total = 0
for index = 1, #ARGV do
    total = total + redis.call('SCARD', ARGV[index])
end
return total
"""
_COUNT_SHA = hashlib.sha1(COUNT_SCRIPT.encode("utf-8")).hexdigest()


def per_node_allowed(client: Any) -> bool:
    """Return whether the reads may skip ``client``'s methods: its ``execute_command`` is its
    class's own (a client whose method was replaced sees every call through it instead)."""
    return "execute_command" not in vars(client)


def sort_arguments(key: str, options: Dict[str, Any]) -> Optional[Tuple[Any, ...]]:
    """Return the ``SORT`` command redis-py's ``sort(key, **options)`` sends, or None for the
    options it does not cover (``store``, ``groups``: the core sends those itself)."""
    if any(value not in (None, False) for name, value in options.items() if name not in _SORT_OPTIONS):
        return None
    arguments: List[Any] = ["SORT", key]
    by = options.get("by")
    if by is not None:
        arguments += ["BY", by]
    start, num = options.get("start"), options.get("num")
    if start is not None and num is not None:
        arguments += ["LIMIT", start, num]
    for pattern in _as_list(options.get("get")):
        arguments += ["GET", pattern]
    if options.get("desc"):
        arguments.append("DESC")
    if options.get("alpha"):
        arguments.append("ALPHA")
    return tuple(arguments)


def sort_script_arguments(sha: str, key: str, options: Dict[str, Any]) -> Optional[Tuple[Any, ...]]:
    """Return the ``EVALSHA`` of limpyd's cluster ``SORT`` script (``limpyd._cluster.SORT_SCRIPT``)
    doing ``sort(key, **options)``, or None for the options it does not cover."""
    if any(value not in (None, False) for name, value in options.items() if name not in _SORT_OPTIONS):
        return None
    by, start, num = options.get("by"), options.get("start"), options.get("num")
    return (
        "EVALSHA",
        sha,
        1,
        key,
        by if by is not None else "",
        int(bool(options.get("alpha"))),
        int(bool(options.get("desc"))),
        start if start is not None else 0,
        num if num is not None else -1,
        *_as_list(options.get("get")),
    )


def _as_list(value: Any) -> List[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def send_per_node(client: Any, commands: Sequence[Tuple[str, Tuple[Any, ...]]]) -> List[Any]:
    """Return the replies of ``commands`` (``(key, arguments)`` pairs, each command on that one
    key), in order, an error reply in its place: one round trip per server (node)."""
    pairs = [(tuple(arguments), {}) for _, arguments in commands]
    if getattr(client, "connection_pool", None) is not None:  # a single server
        return send_commands(client, pairs)
    return _send_to_nodes(client, [key for key, _ in commands], pairs)


def raise_first_error(replies: List[Any]) -> List[Any]:
    """Return ``replies``, or raise the first error reply among them."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _send_to_nodes(client: Any, keys: List[str], pairs: List[Tuple[tuple, dict]]) -> List[Any]:
    """Send ``pairs`` to the nodes of their ``keys`` on the cluster ``client``: every node written
    to, then every node read (error replies in their places)."""
    groups: Dict[str, List[int]] = {}
    nodes: Dict[str, Any] = {}
    try:
        for position, key in enumerate(keys):
            node = client.nodes_manager.get_node_from_slot(client.keyslot(key))
            nodes[node.name] = node
            groups.setdefault(node.name, []).append(position)
    except Exception:  # noqa: BLE001 - no node known for a slot now: redis-py finds one
        return _send_one_by_one(client, pairs)
    replies: List[Any] = [None] * len(pairs)
    sent = []
    try:
        for name, positions in groups.items():
            node_client = client.get_redis_connection(nodes[name])
            pool = node_client.connection_pool
            connection = get_pool_connection(pool, "PIPELINE")
            sent.append((node_client, pool, connection, positions))
            packed = connection.pack_commands([pairs[position][0] for position in positions])
            connection.send_packed_command([b"".join(packed)] if len(packed) > 1 else packed)
        for node_client, _, connection, positions in sent:
            for position in positions:
                try:
                    replies[position] = node_client.parse_response(connection, pairs[position][0][0])
                except redis.ResponseError as error:
                    replies[position] = error
    except BaseException as error:
        for _, pool, connection, _ in sent:
            connection.disconnect()  # never hand back a connection with unread replies
            pool.release(connection)
        if not isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
            raise
        # a node lost (a failover): reads can be sent again, through redis-py, which finds the
        # new primary or raises the connection error
        _refresh_slots(client)
        return _send_one_by_one(client, pairs)
    for _, pool, connection, _ in sent:
        pool.release(connection)
    redirected = [position for position, reply in enumerate(replies) if _is_redirection(reply)]
    if redirected:
        _refresh_slots(client)
        for position, reply in zip(redirected, _send_one_by_one(client, [pairs[p] for p in redirected])):
            replies[position] = reply
    return replies


def count_per_node(client: Any, keys: Sequence[str]) -> int:
    """Return the sum of the ``SCARD`` of ``keys`` (each a set, or missing): one command per server.

    Each server (each node of a cluster, for the keys of its slots in redis-py's slot map) runs
    :data:`COUNT_SCRIPT` once, by ``EVALSHA``; a ``NOSCRIPT`` reply (first use, a node restarted,
    a ``SCRIPT FLUSH``) is answered by one ``EVAL`` of the script, which loads it again. A
    server refusing the script for any other reason (a key it does not serve, a key of another
    type, a server older than Redis 7.0, which knows no script flags) has its keys counted by
    one ``SCARD`` each (:func:`send_per_node`: redirections followed, errors raised as the
    unsharded collection raises them). A node lost: every ``SCARD`` through redis-py.
    """
    real = getattr(client, "_limpyd_real", client)
    if not keys or getattr(real, "_limpyd_no_count_script", False):
        return _count_each(client, keys)
    command = ("EVALSHA", _COUNT_SHA, 0)
    if getattr(client, "connection_pool", None) is not None:  # a single server
        parts = [(list(keys), send_commands(client, [((*command, *keys), {})])[0], client)]
    else:
        found = _script_on_nodes(client, command, keys)
        if found is None:
            return sum(raise_first_error(_send_one_by_one(client, [(("SCARD", key), {}) for key in keys])))
        parts = found
    total = 0
    for part_keys, reply, server in parts:
        if isinstance(reply, redis.exceptions.NoScriptError):  # EVAL runs it and loads it again
            try:
                reply = server.execute_command("EVAL", COUNT_SCRIPT, 0, *part_keys)
            except redis.ResponseError as error:
                reply = error
        if isinstance(reply, Exception):
            if _no_script_flags(reply):
                real._limpyd_no_count_script = True
            reply = _count_each(client, part_keys)
        total += reply
    return total


def _count_each(client: Any, keys: Sequence[str]) -> int:
    return sum(raise_first_error(send_per_node(client, [(key, ("SCARD", key)) for key in keys])))


def _no_script_flags(error: Exception) -> bool:
    """Return whether ``error`` says the server cannot compile :data:`COUNT_SCRIPT` (before Redis
    7.0 a script cannot start with a ``#!`` line): it is not sent to that client again."""
    message = str(error).lower()
    return "compiling" in message or "shebang" in message


def _script_on_nodes(
    client: Any, command: Tuple[Any, ...], keys: Sequence[str]
) -> Optional[List[Tuple[List[str], Any, Any]]]:
    """Send ``command`` followed by the keys of each node of the cluster ``client`` to that node,
    every node written to, then every node read: ``(keys, reply or error, node client)`` per
    node; None when a node is not known or lost (the slot map refreshed)."""
    try:
        plan = _node_plan(client, command, keys)
    except Exception:  # noqa: BLE001 - no node known for a slot now: redis-py finds one
        return None
    parts: List[Tuple[List[str], Any, Any]] = []
    sent = []
    try:
        for node, node_keys, packed in plan:
            node_client = client.get_redis_connection(node)
            pool = node_client.connection_pool
            connection = take_connection(pool, "EVALSHA")
            sent.append((node_client, pool, connection, node_keys))
            connection.send_packed_command(packed)
        for node_client, _, connection, node_keys in sent:
            try:
                reply = connection.read_response()  # an integer: no reply callback
            except redis.ResponseError as error:
                reply = error
            parts.append((node_keys, reply, node_client))
            if isinstance(reply, Exception) and not isinstance(reply, redis.exceptions.NoScriptError):
                _forget_nodes(client)  # maybe a key the node does not serve
    except BaseException as error:
        for _, pool, connection, _ in sent:
            connection.disconnect()  # never hand back a connection with unread replies
            pool.release(connection)
        _forget_nodes(client)
        if not isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
            raise
        _refresh_slots(client)  # a node lost (a failover): redis-py finds the new primary
        return None
    for _, pool, connection, _ in sent:
        keep_spare(pool, connection)  # its reply read whole
    return parts


#: the plans :func:`_node_plan` keeps per client, at most (then forgotten, all at once)
_MAX_PLANS = 1024


def _node_plan(
    client: Any, command: Tuple[Any, ...], keys: Sequence[str]
) -> List[Tuple[Any, List[str], Any]]:
    """Return ``(node, its keys, packed command)`` for each node redis-py's slot map names for
    ``keys`` on the cluster ``client`` (``get_node_from_slot`` of each key's slot), the packed
    command being ``command`` followed by that node's keys.

    The plans and the node of each hash tag (``{...}``: every key of a shard has its shard's) are
    kept on the client while redis-py's map is the same object (it makes a new one when it reads
    the map again): the same ``len()`` again costs a dictionary lookup. Only a hint, as
    redis-py's map is: a node refuses a key it does not serve, and :func:`_forget_nodes` then
    drops what was kept.
    """
    real = getattr(client, "_limpyd_real", client)
    manager = client.nodes_manager
    lookup = manager.get_node_from_slot
    token = (getattr(manager, "slots_cache", None), getattr(lookup, "__func__", lookup))
    kept = real.__dict__.get("_limpyd_node_plans")
    if token[0] is None:
        kept = (token, {}, {})  # no map object to follow: nothing kept
    elif kept is None or kept[0][0] is not token[0] or kept[0][1] is not token[1]:
        kept = real._limpyd_node_plans = (token, {}, {})
    _, nodes, plans = kept
    wanted = (command, tuple(keys))
    plan = plans.get(wanted)
    if plan is not None:
        return plan
    keyslot = client.keyslot
    groups: Dict[str, List[str]] = {}
    by_name: Dict[str, Any] = {}
    for key in keys:
        tag = _hash_tag(key)
        if tag is None:
            node = lookup(keyslot(key))
        else:
            node = nodes.get(tag)
            if node is None:
                node = nodes[tag] = lookup(keyslot(tag))
        by_name[node.name] = node
        groups.setdefault(node.name, []).append(key)
    encoder = client.encoder
    plan = [
        (by_name[name], node_keys, _packed(encoder, command, node_keys)) for name, node_keys in groups.items()
    ]
    if len(plans) >= _MAX_PLANS or len(nodes) >= 16 * _MAX_PLANS:
        plans.clear()
        nodes.clear()
    plans[wanted] = plan
    return plan


def _hash_tag(key: Any) -> Optional[str]:
    """Return the hash tag of the ``str`` key ``key`` (the cluster spec: what is between its first
    ``{`` and the next ``}``, if not empty), else None."""
    if not isinstance(key, str):
        return None
    opening = key.find("{")
    if opening < 0:
        return None
    closing = key.find("}", opening + 1)
    return key[opening + 1 : closing] if closing > opening + 1 else None


def _forget_nodes(client: Any) -> None:
    """Drop what :func:`_node_plan` kept for ``client`` (a node refused a key, or was lost)."""
    getattr(client, "_limpyd_real", client).__dict__.pop("_limpyd_node_plans", None)


def _packed(encoder: Any, command: Tuple[Any, ...], keys: Sequence[Any]) -> List[bytes]:
    """Return ``command`` followed by ``keys`` (``str`` or ``bytes``) packed as one buffer of the
    Redis protocol, ``str`` encoded as ``encoder`` (the client's) encodes them."""
    arguments = [argument if isinstance(argument, bytes) else str(argument).encode() for argument in command]
    arguments += [
        key if isinstance(key, bytes) else key.encode(encoder.encoding, encoder.encoding_errors)
        for key in keys
    ]
    return [
        b"*%d\r\n%s"
        % (len(arguments), b"".join(b"$%d\r\n%s\r\n" % (len(argument), argument) for argument in arguments))
    ]
