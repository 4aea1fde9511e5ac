"""Pipelines and transactions for limpyd models (``limpyd.contrib.database``).

A :class:`PipelineDatabase` is a :class:`~limpyd.database.RedisDatabase` that can route every
command of its models into a redis-py pipeline::

    with database.pipeline() as pipe:
        bike.name.get()          # returns the pipeline, the value comes with execute()
        car.tags.sadd('red')     # non-indexable field: supported
        values = pipe.execute()  # ['rosalie', 1]

While a pipeline is open, ``database.connection`` is that pipeline in the thread that opened it
(in every thread with ``share_in_threads=True``), so each field/model command is queued and its
reply comes back, in issue order, in the list returned by ``execute()`` — implicit commands
included (the ``SISMEMBER`` existence check of a lazily-connected instance's first modifier).

Supported inside a pipeline: getters on any field, ``Model.hmget``, modifiers of **non-indexable**
fields. Not supported (they need real replies while running): modifiers of indexable fields
(index maintenance reads the old value), creation of auto-pk instances, uniqueness checks,
``get``/``exists``/``get_or_connect``, and evaluating collections.

With no pipeline open, a ``PipelineDatabase`` behaves exactly as a ``RedisDatabase`` (same
commands, same write-behind batches of ``limpyd._batch``). Inside a pipeline no batch is opened:
every command goes to the pipeline.

Differences from redis-limpyd 2.1.2 (docs/migrating.rst): ``pipeline()`` works on a database
that was never used (upstream raised ``AttributeError``): the real connection is obtained first.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional

from redis.client import Pipeline
from redis.exceptions import WatchError

from limpyd._batch import current_batch
from limpyd._cluster import cluster_pipeline
from limpyd.database import RedisDatabase
from limpyd.fields import RedisField

__all__ = ["PipelineDatabase", "_Pipeline"]

# ``RedisDatabase``, ``RedisField``, ``Pipeline``, ``WatchError`` and ``threading`` are also
# reachable from this module, as they were in redis-limpyd 2.x.


class PipelineDatabase(RedisDatabase):
    """A database whose models can send their commands through a pipeline or a transaction.

    Same arguments and defaults as :class:`RedisDatabase`; construction never contacts Redis.
    ``_connection`` is a property: the pipeline open in this thread (or shared by another
    thread), else the real client (``_direct_connection``).
    """

    _pipelined_connection: Optional["_Pipeline"] = None
    _direct_connection: Any = None

    def __init__(self, **connection_settings: Any) -> None:
        self._pipelined_connection = None
        self._direct_connection = None
        super().__init__(**connection_settings)

    @property
    def _connection(self) -> Any:
        """Return the pipeline in effect for this thread, else the real client (maybe ``None``)."""
        pipeline = self._pipelined_connection
        if pipeline is not None and (
            pipeline.share_in_threads or threading.current_thread().ident == pipeline.current_thread_id
        ):
            return pipeline
        return self._direct_connection

    @_connection.setter
    def _connection(self, value: Any) -> None:
        """Install a pipeline (a :class:`_Pipeline`), or set the real client and drop any pipeline."""
        if isinstance(value, _Pipeline) or getattr(value, "_limpyd_cluster_pipeline", False):
            self._pipelined_connection = value
        else:
            self._direct_connection = value
            self._pipelined_connection = None

    @property
    def redis_version(self) -> Any:
        """Return the server version, read on the real client even while a pipeline is open."""
        if "_redis_version" not in self.__dict__ and (
            isinstance(self._connection, _Pipeline)
            or getattr(self._connection, "_limpyd_cluster_pipeline", False)
        ):
            raw = self.connect().info("server")["redis_version"]
            self.__dict__["_redis_version"] = tuple(int(part) for part in str(raw).split(".")[:3])
        return RedisDatabase.redis_version.fget(self)  # type: ignore[attr-defined]

    def pipeline(self, transaction: bool = True, share_in_threads: bool = False) -> "_Pipeline":
        """Return a new pipeline, installed as this database's connection until its ``__exit__``.

        Use it as a context manager. ``transaction=True`` wraps the commands in ``MULTI``/``EXEC``;
        ``share_in_threads=True`` makes every thread's commands on this database go into it.
        """
        if self.is_cluster:  # redis-py's ClusterPipeline (transactions within one slot, redis-py >= 6.1)
            return cluster_pipeline(self, transaction, share_in_threads)
        return _Pipeline(self, transaction=transaction, share_in_threads=share_in_threads)

    def _non_transactional_pipeline(self) -> Any:
        """Return ``self.pipeline(transaction=False)``: the burst runs through this database's pipeline machinery."""
        return self.pipeline(transaction=False)

    def transaction(self, func: Callable[["_Pipeline"], Any], *watches: Any, **kwargs: Any) -> List[Any]:
        """Run ``func(pipeline)`` in a transaction, again and again until no watched key changed.

        ``watches`` are key names or bound limpyd fields, watched before each run. ``func`` must
        call ``pipeline.multi()`` before queueing the writes that must be atomic (the reads done
        before it run immediately and return real values). Returns the ``execute()`` result.
        Only the ``share_in_threads`` keyword (default ``False``) is used; others are ignored.
        On ``WatchError`` the whole run starts again (no retry limit); any other exception
        propagates, the pipeline being reset and the connection restored.
        """
        share_in_threads = kwargs.get("share_in_threads", False)
        with self.pipeline(True, share_in_threads=share_in_threads) as pipeline:
            while True:
                try:
                    if watches:
                        pipeline.watch(*watches)
                    func(pipeline)
                    return pipeline.execute()
                except WatchError:
                    continue


class _Pipeline(Pipeline):
    """A redis-py pipeline installed as the connection of a :class:`PipelineDatabase`.

    Created by :meth:`PipelineDatabase.pipeline`; installed at once, restored (to the real
    client, or to the outer pipeline when nested) by ``__exit__``.
    """

    def __init__(
        self, database: PipelineDatabase, transaction: bool = True, share_in_threads: bool = False
    ) -> None:
        self._database = database
        batch = current_batch(database)
        if batch is not None:  # writes queued by a running limpyd operation go first
            batch.flush()
        original = database._connection
        if original is None:
            # never used yet (upstream raised AttributeError here): connect first
            database._connection = original = database.connect()
        self._original_connection = original
        self.share_in_threads = share_in_threads
        if not share_in_threads:
            self.current_thread_id = threading.current_thread().ident
        super().__init__(
            connection_pool=original.connection_pool,
            response_callbacks=original.response_callbacks,
            transaction=transaction,
            shard_hint=None,
        )
        database._connection = self

    def watch(self, *names: Any) -> Any:
        """Watch keys given as names or as bound limpyd fields (https://redis.io/commands/watch)."""
        keys = [name.key if isinstance(name, RedisField) else name for name in names]
        return super().watch(*keys)

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self._database._connection = self._original_connection
        super().__exit__(exc_type, exc_value, traceback)
