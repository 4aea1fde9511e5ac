"""The ``limpyd`` command: ``limpyd [--url URL] [--models MODULE]... [--json] SUBCOMMAND ...``.

Subcommands (``limpyd SUBCOMMAND --help``): ``audit``, ``repair``, ``rebuild-indexes``, ``stats``,
``migrate`` (limpyd.migrate), ``reaper`` (limpyd.reaper), ``reshard`` (limpyd.resharding).
Others register with :func:`register` (a name, a function adding the arguments, a function
running it and returning the exit code). Progress goes to stderr, results to stdout (``--json``
for machines). Exit codes: 0 success (``audit``: clean), 1 problems found or left (``audit``,
``repair``), 2 error (bad arguments, unreachable server, module that does not import), 130
interrupted (a rebuild keeps its position: run the same command to resume).

How ``--url`` reaches the models: the modules named by ``--models`` are imported, which declares
their models on their own ``RedisDatabase`` objects; each of those databases is then switched to
the URL's settings with ``database.connect(**settings)`` (host, port, db, password, unix socket
path, TLS; ``cluster=True`` when the URL names a Redis Cluster node). Without ``--url`` the
databases keep the settings the modules gave them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["main", "register", "settings_from_url"]

#: name -> (help, add arguments, run)
SUBCOMMANDS: Dict[
    str, Tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {}


class CommandError(Exception):
    """A one-line error for the user (no traceback), naming the fix."""


def register(
    name: str,
    help_text: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add the subcommand ``name`` to the ``limpyd`` command."""
    SUBCOMMANDS[name] = (help_text, add_arguments, run)


def settings_from_url(url: str) -> Dict[str, Any]:
    """Return ``redis.Redis`` keyword arguments for a ``redis://``, ``rediss://`` or ``unix://`` URL."""
    from redis.connection import parse_url

    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise CommandError(
            "--url %r: give a redis://host:port/db, rediss://... or unix:///path/to/socket?db=N URL" % url
        )
    try:
        settings = parse_url(url)
    except ValueError as exc:
        raise CommandError("--url %r: %s" % (url, exc)) from exc
    connection_class = settings.pop("connection_class", None)
    if "path" in settings:
        settings["unix_socket_path"] = settings.pop("path")
    if connection_class is not None and getattr(connection_class, "__name__", "") == "SSLConnection":
        settings["ssl"] = True
    return settings


def database_settings(url: str) -> Dict[str, Any]:
    """Return the ``database.connect()`` settings for ``url``: ``cluster=True`` when the server it
    names is a Redis Cluster node (``INFO cluster``), so ``--url`` takes a cluster as it is."""
    settings = settings_from_url(url)
    if not _is_cluster_node(settings):
        return settings
    if settings.pop("db", 0):
        raise CommandError(
            "--url %r names a Redis Cluster node: a cluster has only database 0, drop the /db" % url
        )
    if "unix_socket_path" in settings:
        raise CommandError("--url %r: reach the Redis Cluster node over TCP (redis://host:port)" % url)
    settings["cluster"] = True
    return settings


def _is_cluster_node(settings: Dict[str, Any]) -> bool:
    """Return whether the server of ``settings`` runs in cluster mode (False if unreachable: the
    ping of :func:`load_models` reports that)."""
    import redis

    client = redis.Redis(
        **dict(settings, db=0, socket_timeout=5, socket_connect_timeout=5)
    )  # a cluster refuses SELECT
    try:
        return str(client.info("cluster").get("cluster_enabled", 0)) == "1"
    except redis.RedisError:
        return False
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# models


def load_models(args: argparse.Namespace) -> List[type]:
    """Import ``--models`` modules, point their databases at ``--url``, return the selected models."""
    if not args.models:
        raise CommandError("no models: name the module(s) declaring them with --models package.module")
    for module in args.models:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure is reported in one line
            raise CommandError(
                "cannot import --models %s (%s: %s): check the module path and PYTHONPATH"
                % (module, type(exc).__name__, exc)
            ) from exc
    from limpyd.database import RedisDatabase  # noqa: F401 - the registry lives on database objects

    models = _registered_models(args.models)
    if not models:
        raise CommandError("the module(s) %s declare no model: check --models" % ", ".join(args.models))
    if args.url:
        settings = database_settings(args.url)
        for database in {id(model.database): model.database for model in models}.values():
            database.connect(**settings)
    wanted = getattr(args, "model", None)
    if wanted:
        chosen = []
        for name in wanted:
            match = [
                m for m in models if name in (m.__name__, m._name, "%s.%s" % (m.__module__, m.__qualname__))
            ]
            if not match:
                raise CommandError(
                    "unknown model %r: choose among %s"
                    % (name, ", ".join("%s.%s" % (m.__module__, m.__qualname__) for m in models))
                )
            chosen.extend(match)
        models = list(dict.fromkeys(chosen))
    for database in {id(model.database): model.database for model in models}.values():
        _ping(database, args.url)
    return models


def _registered_models(modules: List[str]) -> List[type]:
    """Return the concrete models declared in ``modules`` (and their submodules), in declaration order."""
    from limpyd.model import RedisModel

    found: List[type] = []
    seen = set()
    stack = list(RedisModel.__subclasses__())
    while stack:
        model = stack.pop(0)
        stack.extend(model.__subclasses__())
        if id(model) in seen or getattr(model, "abstract", True) is True and "abstract" in model.__dict__:
            continue
        if model._limpyd_shard is not None:  # a shard class: its sharded model stands for it
            continue
        seen.add(id(model))
        if any(model.__module__ == module or model.__module__.startswith(module + ".") for module in modules):
            if not model.__dict__.get("abstract", False):
                found.append(model)
    return found


def _ping(database: Any, url: Optional[str]) -> None:
    import redis

    try:
        database.connection.ping()
    except redis.RedisError as exc:
        where = url or database.connection_settings
        raise CommandError(
            "cannot reach Redis at %s (%s): check --url and that the server runs" % (where, exc)
        ) from exc


def model_label(model: type) -> str:
    return "%s.%s" % (model.__module__, model.__qualname__)


# ---------------------------------------------------------------------------------------------
# progress


class Progress:
    """Progress on stderr: a tqdm bar when tqdm is installed (the ``cli`` extra), lines otherwise."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.label = label
        self.bars: Dict[str, Any] = {}
        self.last = 0.0
        try:
            import tqdm

            self.tqdm = tqdm.tqdm
        except ImportError:
            self.tqdm = None

    def __call__(self, phase: str, done: int, total: Optional[int]) -> None:
        if not self.enabled:
            return
        if self.tqdm is not None:
            bar = self.bars.get(phase)
            if bar is None:
                bar = self.bars[phase] = self.tqdm(
                    total=total,
                    desc="%s %s" % (self.label, phase),
                    unit="",
                    file=sys.stderr,
                    leave=False,
                    dynamic_ncols=True,
                )
            bar.update(done - bar.n)
            return
        import time

        now = time.monotonic()
        if now - self.last >= 1.0 or (total and done >= total):
            self.last = now
            sys.stderr.write("%s %s: %d%s\n" % (self.label, phase, done, "/%d" % total if total else ""))

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars = {}


def _progress(args: argparse.Namespace, label: str) -> Progress:
    enabled = args.progress if args.progress is not None else sys.stderr.isatty()
    return Progress(enabled, label)


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    else:
        sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))


# ---------------------------------------------------------------------------------------------
# subcommands


def _add_model_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="only this model (class name, module.Class or namespace:name); repeatable",
    )


def _audit_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_selection(parser)
    parser.add_argument("--chunk-size", type=int, default=1000, help="pks read per round trip (default 1000)")
    parser.add_argument(
        "--max-findings", type=int, default=100_000, help="findings kept per model (all are counted)"
    )
    parser.add_argument(
        "--limit", type=int, default=20, help="findings printed per model (text output; default 20)"
    )


def _run_audit(args: argparse.Namespace) -> int:
    from limpyd.integrity import audit

    reports = []
    for model in load_models(args):
        progress = _progress(args, model.__name__)
        try:
            reports.append(
                audit(model, chunk_size=args.chunk_size, max_findings=args.max_findings, progress=progress)
            )
        finally:
            progress.close()
    lines = []
    for report in reports:
        lines.append(report.summary())
        for finding in report.findings[: args.limit]:
            lines.append(
                "  %s %s%s: %s"
                % (
                    finding.kind,
                    finding.key,
                    " (pk %s)" % finding.pk if finding.pk is not None else "",
                    finding.detail,
                )
            )
        if len(report.findings) > args.limit:
            lines.append("  ... %d more (--limit, or --json for all)" % (len(report.findings) - args.limit))
    clean = all(report.clean for report in reports)
    _out(args, {"clean": clean, "models": [report.to_dict() for report in reports]}, "\n".join(lines))
    return 0 if clean else 1


def _repair_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_selection(parser)
    parser.add_argument(
        "--apply", action="store_true", help="apply the fixes (default: dry run, nothing written)"
    )
    parser.add_argument(
        "--delete-orphans",
        action="store_true",
        help="also delete orphan data, empty pks, unknown keys and the other pks' unique values",
    )
    parser.add_argument(
        "--keep",
        choices=("oldest", "newest"),
        default="oldest",
        help="which pk keeps a unique value held by several (default: oldest)",
    )


def _run_repair(args: argparse.Namespace) -> int:
    from limpyd.integrity import repair

    results = []
    for model in load_models(args):
        progress = _progress(args, model.__name__)
        try:
            results.append(
                repair(
                    model,
                    dry_run=not args.apply,
                    delete_orphans=args.delete_orphans,
                    keep=args.keep,
                    progress=progress,
                )
            )
        finally:
            progress.close()
    lines = []
    for result in results:
        lines.append(result.summary())
        for action in result.actions[:50]:
            state = "done" if action.done else (action.skipped or "not done")
            lines.append("  %s [%s]" % (action.action, state))
    if not args.apply:
        lines.append("dry run: nothing was written; add --apply to fix")
    ok = all(result.clean for result in results) if args.apply else not any(r.actions for r in results)
    _out(args, {"applied": args.apply, "models": [result.to_dict() for result in results]}, "\n".join(lines))
    return 0 if ok else 1


def _rebuild_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_selection(parser)
    parser.add_argument(
        "--field", action="append", metavar="NAME", help="only this field's indexes; repeatable"
    )
    parser.add_argument(
        "--restart", action="store_true", help="drop a stopped rebuild instead of resuming it"
    )
    parser.add_argument("--chunk-size", type=int, default=1000, help="pks per round trip (default 1000)")


def _run_rebuild(args: argparse.Namespace) -> int:
    from limpyd.integrity import rebuild_indexes

    results = []
    for model in load_models(args):
        progress = _progress(args, model.__name__)
        try:
            try:
                result = rebuild_indexes(
                    model,
                    fields=args.field,
                    resume=not args.restart,
                    progress=progress,
                    chunk_size=args.chunk_size,
                )
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
        finally:
            progress.close()
        result["model"] = model_label(model)
        results.append(result)
    lines = [
        "%s: rebuilt %s on %d instances%s, %d entries fixed after the swap (%.2fs)"
        % (
            r["model"],
            ", ".join(r["fields"]),
            r["instances"],
            " (resumed)" if r["resumed"] else "",
            r["fixed"],
            r["seconds"],
        )
        for r in results
    ]
    _out(args, {"models": results}, "\n".join(lines))
    return 0


def _stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sample", type=int, default=50, help="keys sampled per group for memory/TTL (default 50)"
    )


def _run_stats(args: argparse.Namespace) -> int:
    from limpyd.integrity import stats

    models = load_models(args)
    database = models[0].database
    progress = _progress(args, "stats")
    try:
        result = stats(database, models=models, sample=args.sample, progress=progress)
    finally:
        progress.close()
    lines = [
        "%d keys scanned in %.2fs; memory and TTL from a sample of at most %d keys per group"
        % (result["keys"], result["scan_seconds"], result["sample"]),
        "%-28s %-14s %-16s %10s %14s %10s  %s"
        % ("model", "role", "field", "keys", "memory (B)", "with TTL", "types"),
    ]
    for row in result["groups"]:
        lines.append(
            "%-28s %-14s %-16s %10d %14d %10d  %s"
            % (
                row["model"],
                row["role"],
                row["field"] or "-",
                row["count"],
                row["memory"],
                row["with_ttl"],
                ",".join("%s:%d" % item for item in sorted(row["types"].items())),
            )
        )
    _out(args, result, "\n".join(lines))
    return 0


register(
    "audit",
    "report what the stored data and the indexes disagree on (exit 0 clean, 1 findings)",
    _audit_arguments,
    _run_audit,
)
register("repair", "fix what the audit finds (dry run unless --apply)", _repair_arguments, _run_repair)
register(
    "rebuild-indexes",
    "rebuild indexes online, aside then swapped in; resumable",
    _rebuild_arguments,
    _run_rebuild,
)
register(
    "stats",
    "count keys by model, role, field and index; sampled memory and TTLs",
    _stats_arguments,
    _run_stats,
)


def _migrate_arguments(parser: argparse.ArgumentParser) -> None:
    from limpyd import migrate

    migrate.add_arguments(parser)


def _run_migrate(args: argparse.Namespace) -> int:
    from limpyd import migrate

    return migrate.run(args)


register(
    "migrate",
    "copy the keys of models between a single server and a Redis Cluster (resumable)",
    _migrate_arguments,
    _run_migrate,
)


def _reaper_arguments(parser: argparse.ArgumentParser) -> None:
    from limpyd import reaper

    _add_model_selection(parser)
    parser.add_argument("--once", action="store_true", help="purge what is due now, then exit")
    parser.add_argument(
        "--max-sleep",
        type=float,
        default=reaper.MAX_SLEEP,
        help="longest sleep between two purges, in seconds (default %(default)s): the reaper "
        "wakes at the next deadline, or after this long to see deadlines added meanwhile",
    )


def _run_reaper(args: argparse.Namespace) -> int:
    """Purge the due instances of the expiring models until SIGINT/SIGTERM (or once)."""
    import signal

    from limpyd import reaper

    if args.max_sleep <= 0:
        raise CommandError("--max-sleep %r: give a number of seconds > 0" % args.max_sleep)
    models = load_models(args)
    expiring = [model for model in models if model._limpyd_expiring]
    if not expiring:
        raise CommandError(
            "none of the models %s has expiring instances: set `expiring = True` or `default_ttl` on "
            "a model, or name its module with --models"
            % ", ".join("%s.%s" % (model.__module__, model.__qualname__) for model in models)
        )
    purged: Dict[str, int] = {"%s.%s" % (m.__module__, m.__qualname__): 0 for m in expiring}
    stopping = []

    def on_purge(model: Any, count: int) -> None:
        name = "%s.%s" % (model.__module__, model.__qualname__)
        purged[name] += count
        if not args.json:
            sys.stdout.write("purged %d due instance(s) of %s\n" % (count, name))
            sys.stdout.flush()

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    if not args.once and not args.json:
        sys.stderr.write(
            "limpyd reaper: watching %s (Ctrl-C or SIGTERM stops it)\n" % ", ".join(sorted(purged))
        )
    try:
        total = reaper.reap(
            expiring,
            once=args.once,
            max_sleep=args.max_sleep,
            on_purge=on_purge,
            should_stop=lambda: bool(stopping),
        )
    except KeyboardInterrupt:  # the normal way to stop a reaper run by hand
        total = sum(purged.values())
    finally:
        signal.signal(signal.SIGTERM, previous)
    _out(args, {"purged": total, "models": purged}, "purged %d due instance(s) in all" % total)
    return 0


register(
    "reaper",
    "remove due instances of expiring models, sleeping until the next deadline (or --once)",
    _reaper_arguments,
    _run_reaper,
)


def _reshard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="MODEL", help="the model (module.Class, Class or namespace:name)")
    parser.add_argument("--shards", required=True, help="the new number of shards (an int >= 1)")
    parser.add_argument(
        "--from",
        dest="from_shards",
        help="the number of shards the data is in, when no count is stored (<model>:__shards__)",
    )
    parser.add_argument("--batch-size", type=int, default=500, help="instances moved per batch (default 500)")


def _count_argument(value: Optional[str], option: str) -> Optional[int]:
    """Return ``value`` of ``option`` as a shard count (``CommandError`` unless an int from 1 to 16384)."""
    from limpyd.sharding import MAX_SHARDS

    if value is None:
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_SHARDS:
        raise CommandError(
            "%s %r: give an int from 1 to %d, the number of shards" % (option, value, MAX_SHARDS)
        )
    return count


def _run_reshard(args: argparse.Namespace) -> int:
    """Move the instances of one model to the shards of ``--shards`` (resumable; writes paused)."""
    from limpyd import resharding

    shards = _count_argument(args.shards, "--shards")
    from_shards = _count_argument(args.from_shards, "--from")
    if args.batch_size < 1:
        raise CommandError("--batch-size %r: give an int >= 1" % args.batch_size)
    models = load_models(args)
    found = [m for m in models if args.target in (m.__name__, m._name, model_label(m))]
    if len(found) != 1:
        raise CommandError(
            "%s model %r: choose one among %s"
            % (
                "unknown" if not found else "ambiguous",
                args.target,
                ", ".join(model_label(m) for m in models),
            )
        )
    model = found[0]
    label = model_label(model)
    sys.stderr.write(
        "limpyd reshard: moving the instances of %s to %d shards; every write to it (and the "
        "reaper) must be paused until this finishes: a write seen stops the run (exit 2, run it "
        "again to continue)\n" % (label, shards)
    )
    progress = _progress(args, model.__name__)
    try:
        result = resharding.reshard(
            model, shards, from_shards=from_shards, progress=progress, batch_size=args.batch_size
        )
    except resharding.ReshardError as exc:
        raise CommandError(str(exc)) from exc
    except resharding.WritesNotPaused as exc:
        raise CommandError("%s; the reshard stopped, its state is kept" % exc) from exc
    except KeyboardInterrupt:
        progress.close()
        sys.stderr.write("limpyd reshard: interrupted; run the same command again to continue\n")
        return 130
    finally:
        progress.close()
    if result["status"] == "nothing to do":
        text = "%s: its data is already in %d shards: nothing to do" % (label, shards)
    else:
        text = "%s: moved %d of %d instances from %d to %d shards%s" % (
            label,
            result["moved"],
            result["examined"],
            result["from"],
            shards,
            " (resumed)" if result["status"] == "resumed" else "",
        )
    if model._limpyd_shards != shards:
        text += "\nnow declare shards = %d on %s (its stored count is %d)" % (shards, label, shards)
    result["declare"] = "shards = %d" % shards
    _out(args, result, text)
    return 0


register(
    "reshard",
    "move the instances of a sharded model to another number of shards (resumable; pause writes)",
    _reshard_arguments,
    _run_reshard,
)


# ---------------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="limpyd", description="Operate limpyd models stored in Redis.")
    parser.add_argument("--url", help="redis://host:port/db, rediss://..., or unix:///path/redis.sock?db=N")
    parser.add_argument(
        "--models",
        action="append",
        default=[],
        metavar="MODULE",
        help="module declaring models (imported); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show progress on stderr (default: when stderr is a terminal)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``limpyd`` command; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    run = SUBCOMMANDS[args.command][2]
    try:
        return run(args)
    except CommandError as exc:
        sys.stderr.write("limpyd %s: error: %s\n" % (args.command, exc))
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(
            "limpyd %s: interrupted%s\n"
            % (
                args.command,
                "; run the same command again to resume the rebuild"
                if args.command == "rebuild-indexes"
                else "",
            )
        )
        return 130
    except Exception as exc:  # noqa: BLE001 - the command never shows a traceback
        import redis

        if isinstance(exc, redis.ConnectionError):
            sys.stderr.write(
                "limpyd %s: error: lost the connection to Redis (%s): check --url and the server\n"
                % (args.command, exc)
            )
        else:
            sys.stderr.write("limpyd %s: error: %s: %s\n" % (args.command, type(exc).__name__, exc))
        return 2
