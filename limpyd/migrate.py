"""Copy the keys of models between a single server (2.x layout) and a Redis Cluster (tagged layout).

``limpyd migrate --from redis://host:6379/0 --to redis://host:7000 --to-cluster --models myapp.models``
runs :func:`migrate` (see docs/cluster.rst). On a single server a model's keys begin with
``<namespace>:<model>:``; on a cluster with ``{<namespace>:<model>}:`` (one hash tag per model, so
one slot). Every key of each model is copied with ``DUMP``/``RESTORE ... REPLACE``: the value is
kept byte for byte (every Redis type: instance hashes and fields, indexes, collection, pk counter,
stored collections), its time to live too (the ``PTTL`` read with the ``DUMP``), under the key
name of the target layout. Nothing is written to the source.

- batches: ``batch_size`` keys per round trip on each side (one ``SCAN`` step, then ``DUMP`` +
  ``PTTL`` of its keys in one pipeline, then their ``RESTORE`` in one pipeline; on a cluster each
  side talks to the node owning the model's slot only);
- resumable: after each batch the ``SCAN`` cursor is saved in a key of the target,
  ``limpyd:migrate:<target prefix>`` (a hash: ``cursor``, ``copied``); a run interrupted at any
  point resumes from it (a batch copied twice is overwritten with the same bytes); the key is
  deleted when the model is done;
- idempotent: running it again copies the same keys over the same bytes;
- verified: at the end the keys of each model are counted on both sides; a difference raises
  :class:`MigrationError` (keys written to the source meanwhile, or expired during the copy: run
  it again once writers are stopped).

Keys are found with ``SCAN MATCH <prefix>:*``: a model whose prefix begins another model's
(namespace ``a:b`` model ``c`` against namespace ``a`` model ``b``) would take its keys too: give
models distinct namespaces. A key that expires between its ``DUMP`` and ``RESTORE`` is skipped.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional

import redis

from limpyd._cluster import cluster_model_name, is_cluster_client, make_cluster_client, plain_model_name

__all__ = ["MigrationError", "client_from_url", "migrate", "migrate_model"]

#: the hash of the target keeping a model's position (``cursor``, ``copied``) while it is copied
STATE_KEY = "limpyd:migrate:%s"


class MigrationError(Exception):
    """The migration could not complete, or the counts of a model differ at the end (the message says which)."""


def client_from_url(url: str, cluster: bool = False) -> Any:
    """Return a redis-py client (``RedisCluster`` if ``cluster``) for a ``redis://``/``rediss://``/``unix://`` URL."""
    from limpyd.cli import settings_from_url

    settings = settings_from_url(url)
    if cluster:
        if settings.pop("db", 0) not in (0, "0", None):
            raise MigrationError("%s: a Redis Cluster has only the database 0" % url)
        settings.pop("unix_socket_path", None)
        return make_cluster_client(settings)
    return redis.Redis(**settings)


def _prefix(model: Any, cluster: bool) -> str:
    plain = plain_model_name(model)
    return cluster_model_name(plain) if cluster else plain


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _side(client: Any, prefix: str) -> Any:
    """Return the plain client holding ``prefix``'s keys: the node owning its slot on a cluster."""
    if is_cluster_client(client):
        return client.get_redis_connection(client.get_node_from_key(prefix))
    return client


def _decode(key: Any) -> str:
    return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key


def _count(client: Any, prefix: str) -> int:
    return sum(1 for _ in client.scan_iter(match=_glob_escape(prefix) + ":*", count=1000))


def migrate_model(
    model: Any,
    source: Any,
    target: Any,
    batch_size: int = 500,
    progress: Optional[Callable[[str, int, Optional[int]], None]] = None,
) -> Dict[str, Any]:
    """Copy every key of ``model`` from ``source`` to ``target`` (redis-py clients; see the module doc).

    The layout of each side follows its client: tagged on a ``RedisCluster``, 2.x on a single
    server. Returns ``{"model", "from", "to", "copied", "source_keys", "target_keys"}``.
    """
    source_prefix = _prefix(model, is_cluster_client(source))
    target_prefix = _prefix(model, is_cluster_client(target))
    reader, writer = _side(source, source_prefix), _side(target, target_prefix)
    state_key = STATE_KEY % target_prefix
    if is_cluster_client(target):
        writer = _side(target, state_key)  # same tag: same node as the model's keys
    state = writer.hgetall(state_key)
    cursor = int(state.get(b"cursor", state.get("cursor", 0)))
    copied = int(state.get(b"copied", state.get("copied", 0)))
    match = _glob_escape(source_prefix) + ":*"
    start = len(source_prefix)
    while True:
        cursor, keys = reader.scan(cursor=cursor, match=match, count=batch_size)
        if keys:
            read = reader.pipeline(transaction=False)
            for key in keys:
                read.dump(key)
                read.pttl(key)
            replies = read.execute()
            write = writer.pipeline(transaction=False)
            written = 0
            for index, key in enumerate(keys):
                value, ttl = replies[2 * index], replies[2 * index + 1]
                if value is None or ttl == -2:  # expired or deleted since the SCAN
                    continue
                name = target_prefix + _decode(key)[start:]
                write.restore(name, max(ttl, 0), value, replace=True)
                written += 1
            write.hset(state_key, mapping={"cursor": cursor, "copied": copied + written})
            write.execute()
            copied += written
        elif cursor:
            writer.hset(state_key, mapping={"cursor": cursor, "copied": copied})
        if progress is not None:
            progress(plain_model_name(model), copied, None)
        if cursor == 0:
            break
    source_keys, target_keys = _count(reader, source_prefix), _count(writer, target_prefix)
    writer.delete(state_key)
    result = {
        "model": plain_model_name(model),
        "from": source_prefix,
        "to": target_prefix,
        "copied": copied,
        "source_keys": source_keys,
        "target_keys": target_keys,
    }
    if source_keys != target_keys:
        raise MigrationError(
            "%s: %d keys under %r on the source, %d under %r on the target after the copy (keys written or "
            "expired meanwhile?): stop the writers and run the migration again"
            % (model.__name__, source_keys, source_prefix + ":*", target_keys, target_prefix + ":*")
        )
    return result


def migrate(
    models: Iterable[Any],
    source: Any,
    target: Any,
    batch_size: int = 500,
    progress: Optional[Callable[[str, int, Optional[int]], None]] = None,
) -> List[Dict[str, Any]]:
    """Copy every key of each of ``models`` from ``source`` to ``target``; return one result per model.

    ``source``/``target``: redis-py clients (``redis.Redis`` for a single server, ``RedisCluster``
    for a cluster: see :func:`client_from_url`), or ``(url, is_cluster)`` pairs.
    """
    source, target = _client(source), _client(target)
    if source is target:
        raise MigrationError("the source and the target are the same client")
    return [
        migrate_model(model, source, target, batch_size=batch_size, progress=progress) for model in models
    ]


def _client(value: Any) -> Any:
    if isinstance(value, tuple):
        url, cluster = value
        return client_from_url(url, cluster)
    return value


# ---------------------------------------------------------------------------------------------
# the ``limpyd migrate`` subcommand (registered by limpyd.cli)


def add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--from", dest="source", required=True, metavar="URL", help="the server holding the keys"
    )
    parser.add_argument("--to", dest="target", required=True, metavar="URL", help="the server receiving them")
    parser.add_argument(
        "--from-cluster", action="store_true", help="the source is a Redis Cluster (tagged layout)"
    )
    parser.add_argument(
        "--to-cluster", action="store_true", help="the target is a Redis Cluster (tagged layout)"
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="only this model (class name, module.Class or namespace:name); repeatable",
    )
    parser.add_argument("--batch-size", type=int, default=500, help="keys per round trip (default 500)")
    parser.add_argument(
        "--models",
        dest="migrate_models",
        action="append",
        default=[],
        metavar="MODULE",
        help="module declaring models (also accepted before the subcommand); repeatable",
    )


def run(args: Any) -> int:
    import importlib

    from limpyd import cli

    modules = list(args.models) + list(getattr(args, "migrate_models", []))
    if not modules:
        raise cli.CommandError("no models: name the module(s) declaring them with --models package.module")
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - reported in one line
            raise cli.CommandError(
                "cannot import --models %s (%s: %s)" % (module, type(exc).__name__, exc)
            ) from exc
    models = cli._registered_models(modules)
    if args.model:
        models = [
            m
            for m in models
            if any(name in (m.__name__, plain_model_name(m), cli.model_label(m)) for name in args.model)
        ]
    if not models:
        raise cli.CommandError("no model to migrate in %s" % ", ".join(modules))
    source = client_from_url(args.source, args.from_cluster)
    target = client_from_url(args.target, args.to_cluster)
    progress = cli._progress(args, "migrate")
    try:
        results = migrate(models, source, target, batch_size=args.batch_size, progress=progress)
    except MigrationError as exc:
        raise cli.CommandError(str(exc)) from exc
    finally:
        progress.close()
    cli._out(
        args,
        results,
        "\n".join(
            "%s: %d keys copied (%s -> %s), %d on each side"
            % (r["model"], r["copied"], r["from"], r["to"], r["target_keys"])
            for r in results
        ),
    )
    return 0
