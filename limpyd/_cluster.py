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

from typing import Any, Dict, List, Optional, Tuple

import redis

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
        "redis.cluster.ClusterNode, a 'host:port' string, a (host, port) pair or a dict with host and port." % (node,)
    )


def make_cluster_client(options: Dict[str, Any]) -> Any:
    """Return a ``RedisCluster`` built from the database ``options`` (``cluster`` removed)."""
    cluster_class = _redis_cluster_class()
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
    relations: Optional[Dict[str, List[Tuple[str, str, str]]]] = database.__dict__.get("_relations")
    if relations:
        converted = {
            name_on(is_cluster, target): [(name_on(is_cluster, owner), field, related) for owner, field, related in entries]
            for target, entries in relations.items()
        }
        relations.clear()
        relations.update(converted)
