"""The database layer: a Redis connection shared by the models it hosts, and their registry."""

from __future__ import annotations

import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

import redis
from redis.lock import Lock

from limpyd import _cluster
from limpyd._batch import batch_client, current_batch
from limpyd._scan import scan_pool
from limpyd.exceptions import *  # noqa: F403 - redis-limpyd 2.x re-exports them here
from limpyd.exceptions import ImplementationError, LimpydException
from limpyd.speedups import make_key, register_model

__all__ = ["DEFAULT_CONNECTION_SETTINGS", "RedisDatabase", "Lock"]

DEFAULT_CONNECTION_SETTINGS = {"host": "localhost", "port": 6379, "db": 0}

#: One lock for every registry change (model declaration, ``use_database``): they are rare, and
#: a move touches two databases at once.
_registry_lock = threading.RLock()
_connections_lock = threading.Lock()

_MIN_REDIS_PY = (4,)
_MIN_REDIS_SERVER = (3,)


def __getattr__(name: str) -> Any:
    """Return ``EqualIndex`` (a name of this module in redis-limpyd 2.x), imported on first use."""
    if name == "EqualIndex":
        from limpyd.indexes import EqualIndex

        return EqualIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _DefaultIndexes:
    """The class-level default of :attr:`RedisDatabase.default_indexes`: ``[EqualIndex]``, resolved lazily.

    ``limpyd.database`` does not import ``limpyd.indexes`` (the index layer sits above the
    database): the list is built on first read and then stays the same object, so it reads and
    overrides (on a subclass or a database object) as the plain class attribute of 2.x did.
    """

    _value: Optional[List[Any]] = None

    def __get__(self, instance: Any, owner: Any) -> List[Any]:
        if self._value is None:
            from limpyd.indexes import EqualIndex

            self._value = [EqualIndex]
        return self._value


def _redis_py_version() -> Tuple[int, ...]:
    """Return the installed redis-py version as a tuple of its leading integer parts."""
    parts = []
    for part in redis.__version__.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


class RedisDatabase:
    """A Redis connection (any redis-py connection argument) shared by the models defined on it.

    Construction never contacts Redis: the client is created on first use and cached, so that
    every database with equal settings shares the same ``redis.Redis`` object and pool.
    """

    #: cache ``settings key -> redis.Redis`` shared by all databases
    _connections: Dict[str, redis.Redis] = {}
    #: index classes for indexable fields declaring none (lowest priority): ``[EqualIndex]``
    default_indexes: Optional[List[Any]] = _DefaultIndexes()  # type: ignore[assignment]
    #: ``COUNT`` hint sent with each ``SCAN`` by :meth:`scan_keys` when none is given (Redis'
    #: own default of 10 makes a full scan 100 times more round trips)
    default_scan_count: int = 1000
    #: ``True``: the models of this database that do not say otherwise write atomically, one
    #: server-side script per operation (set it on the class or on a database object)
    atomic_writes: bool = False

    # State the other layers keep on a database, declared here rather than set ad hoc:
    #: the models of this database, by ``_name`` (the registry: ``_add_model``, ``_use_for_model``)
    _models: Dict[str, Any]
    #: the related fields pointing to each model, kept by ``limpyd.contrib.related``:
    #: ``{target _name lower-cased: [(owner _name, field name, related name), ...]}`` (docs/contrib.rst)
    _relations: Dict[str, List[Tuple[str, str, str]]]
    #: ``True`` once the server refused a multi-field ``HSET`` (Redis < 4): the field layer then
    #: sends ``HMSET`` (``limpyd._fields.values``); forgotten by :meth:`reset`
    _limpyd_hmset_only: bool = False

    def __init__(self, **connection_settings: Any) -> None:
        self._connection = None
        self._models = {}
        self._relations = {}
        self.reset(**(connection_settings or DEFAULT_CONNECTION_SETTINGS))

    # ------------------------------------------------------------------ connection

    @staticmethod
    def _connection_cache_key(settings: Dict[str, Any]) -> str:
        """Return the cache key of ``settings``: ``name=value`` pairs ordered by name, joined by ``:``.

        Names are part of the key: ``{"port": 6379}`` and ``{"password": "6379"}`` must not share a
        client (redis-limpyd 2.x joined the values alone; see docs/failure-semantics.rst).
        """
        return make_key(
            *["%s=%s" % (name, _cluster.cache_value(name, settings[name])) for name in sorted(settings)]
        )

    def connect(self, **settings: Any) -> redis.Redis:
        """Return the client for the current settings, or switch to ``settings`` and return theirs.

        Without arguments the client is taken from the shared cache, or created (with
        ``decode_responses=True``), cached, and the server version checked. With arguments it
        behaves as :meth:`reset` with them (the database switches to the new settings, as the
        user documentation always promised) and returns the new client.
        """
        if settings:
            self.reset(**settings)
            return self.connection
        settings = self.connection_settings
        cache_key = self._connection_cache_key(settings)
        client = self._connections.get(cache_key)
        if client is not None:
            return client
        if "decode_responses" in settings and not settings["decode_responses"]:
            raise ImplementationError(
                "RedisDatabase(decode_responses=%r): limpyd always reads str from Redis; "
                "remove the decode_responses argument." % (settings["decode_responses"],)
            )
        options = dict(settings, decode_responses=True)
        with _connections_lock:
            client = self._connections.get(cache_key)
            created = client is None
            if created:
                client = self._connections[cache_key] = (
                    _cluster.make_cluster_client(options)
                    if options.get("cluster")
                    else redis.Redis(**options)
                )
        if created:
            # reads the server version through ``connection``, which hits the cache filled above
            self.ensure_redis_versions()
        return client

    def reset(self, **connection_settings: Any) -> None:
        """Use ``connection_settings`` as given (not merged with the defaults) from the next call on.

        Also forgets the server version read for the previous settings.
        """
        self.connection_settings = connection_settings
        self._connection = None
        self.__dict__.pop("_redis_version", None)
        self.__dict__.pop("_limpyd_hmset_only", None)
        _cluster.rename_models(self)  # the key prefix of the models follows the mode (cluster or not)

    @property
    def is_cluster(self) -> bool:
        """Return whether this database uses a Redis Cluster (setting ``cluster=True``, see docs/cluster.rst)."""
        return bool(self.connection_settings.get("cluster"))

    @property
    def connection(self) -> redis.Redis:
        """Return the client in use, connecting on first use (re-read by every Redis call).

        While a limpyd operation runs in this thread, that is a view of the same client which
        sends the writes nobody waits for with the next command (see ``limpyd._batch``).
        """
        client = batch_client(self)
        if client is not None:
            return client
        if self._connection is None:
            self._connection = self.connect()
        return self._connection

    # ------------------------------------------------------------------ versions

    @property
    def redis_version(self) -> Tuple[int, ...]:
        """Return the first three integer parts of the server's ``redis_version`` (read once)."""
        version = self.__dict__.get("_redis_version")
        if version is None:
            raw = self.connection.info("server")["redis_version"]
            version = tuple(int(part) for part in str(raw).split(".")[:3])
            self.__dict__["_redis_version"] = version
        return version

    def ensure_redis_versions(self) -> None:
        """Raise ``LimpydException`` if redis-py or the Redis server is too old for limpyd."""
        if _redis_py_version() < _MIN_REDIS_PY:
            raise LimpydException(
                "Limpyd needs redis-py >= 4 to operate (found %s): upgrade it with "
                "`pip install 'redis>=4'`." % redis.__version__
            )
        if self.redis_version < _MIN_REDIS_SERVER:
            raise LimpydException(
                "Limpyd needs redis-server >= 3 to operate (the server at %r runs %s): "
                "upgrade the server." % (self.connection_settings, ".".join(map(str, self.redis_version)))
            )

    def _non_transactional_pipeline(self) -> Any:
        """Return a new non-transactional pipeline for a burst of commands (``index.clear(aggressive=True)``).

        A hook: :class:`limpyd.contrib.database.PipelineDatabase` returns one of its own
        pipelines, installed as the connection while it is open.
        """
        return self.connection.pipeline(transaction=False)

    # ------------------------------------------------------------------ models

    @classmethod
    def get_default_indexes(cls) -> List[Any]:
        """Return the index classes used for indexable fields that declare none."""
        return cls.default_indexes if cls.default_indexes is not None else []

    def _add_model(self, model: Any) -> Any:
        """Register ``model`` and return it, or return the same model already registered.

        The already registered class is returned when it has the same class name and creation
        source (the same definition imported again); any other model with the same ``_name``
        raises ``ImplementationError`` naming both definitions.
        """
        with _registry_lock:
            name = _cluster.model_name_on(self, model)  # ``{<namespace>:<model>}`` on a cluster
            registered = register_model(
                self._models,
                name,
                model,
                model.namespace,
                model.__name__,
                "%s.%s" % (model.__module__, model.__qualname__),
                model._creation_source,
            )
            model._name = name
            return registered

    def _use_for_model(self, model: Any) -> List[Any]:
        """Move ``model`` and its subclasses sharing its database here; return the moved models."""
        with _registry_lock:
            old_database = getattr(model, "database", None)
            moved = self._collect_models_to_move(model)
            for moved_model in moved:
                if not moved_model.abstract:
                    old_name = moved_model._name
                    self._add_model(moved_model)
                    if old_database is not None and old_database is not self:
                        old_database._models.pop(old_name, None)
                moved_model.database = self
            return moved

    def _collect_models_to_move(self, model: Any) -> List[Any]:
        """Return ``model`` and, recursively, its direct subclasses that share its database."""
        database = getattr(model, "database", None)
        if database is self:
            return []
        collected = [model]
        for subclass in model.__subclasses__():
            if getattr(subclass, "database", None) is database:
                collected.extend(self._collect_models_to_move(subclass))
        return collected

    # ------------------------------------------------------------------ scripts and scans

    def call_script(
        self, script_dict: Dict[str, Any], keys: Optional[List[Any]] = None, args: Optional[List[Any]] = None
    ) -> Any:
        """Run the Lua script ``script_dict["lua"]`` (registered once, then sent with ``EVALSHA``)."""
        script = script_dict.get("script_object")
        if script is None:
            script = script_dict["script_object"] = self.connection.register_script(script_dict["lua"])
        return script(keys=keys or [], args=args or [], client=self.connection)

    def scan_keys(
        self,
        match: Optional[str] = None,
        count: Optional[int] = None,
        type: Optional[str] = None,  # noqa: A002 - SCAN's own word
    ) -> Iterator[str]:
        """Yield every key of the database (matching ``match`` and of Redis type ``type`` if given).

        ``count`` is the hint sent with each ``SCAN`` (``default_scan_count`` when ``None``); a key
        may be yielded more than once, as ``SCAN`` allows. The next batch is asked for before the
        current one is handed out, so Redis works while the caller consumes keys. The scan runs
        on a connection of its own from the pool, so it reads the database immediately even
        while a pipeline is open.

        ``type`` needs Redis >= 6.
        """
        if count is None:
            count = self.default_scan_count
        elif isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(
                "scan_keys(count=%r): count must be a positive int (the number of keys Redis "
                "should look at per SCAN call), or None for the default %d."
                % (count, self.default_scan_count)
            )
        arguments: List[Any] = []
        if match is not None:
            arguments += ["MATCH", match]
        arguments += ["COUNT", count]
        if type is not None:
            if self.redis_version < (6,):
                raise LimpydException(
                    "scan_keys(type=%r) needs Redis >= 6 (the server runs %s): drop the type "
                    "argument or upgrade the server." % (type, ".".join(map(str, self.redis_version)))
                )
            arguments += ["TYPE", type]
        batch = current_batch(self)
        if batch is not None:
            batch.flush()  # the scan reads on a connection of its own: send the queued writes first
        connection = self.connection
        if self.is_cluster and _cluster.is_cluster_client(connection):  # every primary, in parallel
            return _cluster.scan_cluster(connection, arguments, scan_pool)
        return self._scan(connection.connection_pool, arguments)

    @staticmethod
    def _scan(pool: Any, arguments: List[Any]) -> Iterator[str]:
        """Drive a ``SCAN`` loop on a pooled connection, one request always in flight.

        The cursor is read from the first bytes of each reply and the next ``SCAN`` sent before
        the keys are decoded (see ``limpyd._scan``).
        """
        return scan_pool(pool, arguments)
