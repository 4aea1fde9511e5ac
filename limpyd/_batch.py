"""Write-behind batches: send the writes nobody waits for together with the next command that
needs a reply, so an ORM operation costs a few round trips instead of one per command.

A batch is opened (per thread and database) by the operations that send many commands: a
modifier of an indexable field, an instance creation, a deletion, the instance-hash ``hmset`` /
``hdel``. While it is open, ``database.connection`` returns a :class:`BatchClient`: every command
sent through it keeps its place in the server's command order, so the server sees exactly the
commands, in exactly the order, that sending them one by one would give; only the number of round
trips changes. Commands whose reply is needed (reads, lock acquisitions, pk allocation) are sent
at once with the queued ones; the writes whose replies nobody reads (index entries, the pk's
collection entry, lock releases, field writes whose result the caller drops) wait in the queue.

Two speculations keep the round trips down, both verified when the replies come back:
- a lock acquisition (``SET NX``) is sent with the read that follows it (a read needs no lock to be
  sent, only to be trusted): if the lock was not acquired, the lock is then waited for as usual and
  the read sent again; a write never travels behind an unconfirmed lock;
- while an instance is being created with a pk it has just allocated, its fields are known to be
  empty: the reads of their current values are sent without waiting for the replies (checked when
  they arrive), and the locks of its non-unique fields are taken without waiting (nobody else can
  be writing the fields of a pk nobody knows yet: the lock commands are sent, as the command
  contract wants, but a lock held elsewhere does not make the creation wait).

Inside a user pipeline (``PipelineDatabase``) no batch is opened: commands go to the pipeline.

A queued lock acquisition names its lock as ``guard``: a lock object answering
``lock_refused(token, relaxed)`` when the ``SET NX`` was refused (``FieldLock``); the transport
knows nothing else of locks or of the ORM's keys.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional

import redis
from redis.client import Pipeline
from redis.exceptions import DataError, ResponseError

from limpyd._cluster import cluster_batch_client_class, is_batchable_cluster, send_cluster_commands
from limpyd._pool import get_pool_connection, keep_spare, take_connection

__all__ = [
    "Batch",
    "BatchClient",
    "Pending",
    "assume_exists",
    "batch_scope",
    "current_batch",
    "is_batched",
    "later",
    "queue_command",
    "resolve",
    "send_ahead_of_locks",
    "send_commands",
]

#: commands whose reply is needed but which may travel behind an unconfirmed lock: they read
READ_COMMANDS = frozenset(
    (
        "GET",
        "HGET",
        "HMGET",
        "HGETALL",
        "HEXISTS",
        "SMEMBERS",
        "SISMEMBER",
        "SCARD",
        "LRANGE",
        "LINDEX",
        "LLEN",
        "ZRANGE",
        "ZRANGEBYSCORE",
        "ZRANGEBYLEX",
        "ZSCORE",
        "ZCARD",
        "EXISTS",
        "TYPE",
        "STRLEN",
    )
)


class Pending:
    """The result of a command still in the batch queue; ``get()`` flushes if needed."""

    __slots__ = ("batch", "value", "error", "done")

    def __init__(self, batch: "Batch") -> None:
        self.batch = batch
        self.done = False
        self.value: Any = None
        self.error: Optional[BaseException] = None

    def set(self, value: Any = None, error: Optional[BaseException] = None) -> None:
        self.value, self.error, self.done = value, error, True

    def reply_handler(self, transform: Optional[Callable[[Any], Any]] = None) -> Callable[[Any], None]:
        """Return the callback setting this result from a reply (``transform``-ed); error replies raise."""

        def on_reply(reply: Any) -> None:
            if isinstance(reply, Exception):
                self.set(error=reply)
                raise reply
            self.set(transform(reply) if transform is not None else reply)

        return on_reply

    def get(self) -> Any:
        """Return the command's result (sending the queue first if it is still there)."""
        if not self.done:
            self.batch.flush()
        if self.error is not None:
            raise self.error
        return self.value


def resolve(value: Any) -> Any:
    """Return ``value``, or the result it stands for if it is a :class:`Pending`."""
    return value.get() if isinstance(value, Pending) else value


class _Item:
    __slots__ = ("args", "options", "on_reply", "guard", "relaxed", "is_write", "on_lost")

    def __init__(
        self,
        args: tuple,
        options: dict,
        on_reply: Optional[Callable[[Any], None]] = None,
        guard: Any = None,
        relaxed: bool = False,
        is_write: bool = True,
        on_lost: Optional[Callable[[], None]] = None,
    ) -> None:
        self.args = args
        self.options = options
        self.on_reply = on_reply
        self.guard = guard
        self.relaxed = relaxed
        self.is_write = is_write
        #: called when the round trip carrying the command is lost (lock releases redo theirs)
        self.on_lost = on_lost


class BatchClient(redis.Redis):
    """The ``redis.Redis`` seen through ``database.connection`` while a batch is open.

    It shares the real client's pool and callbacks (its attributes are the real client's); every
    command goes through the batch, immediately unless it is sent through :class:`later`.
    """

    #: the real client this view stands for (its pool, callbacks and replaced methods)
    _limpyd_real: redis.Redis
    #: the batch the commands go through
    _limpyd_batch: "Batch"
    #: the queue item describing the command being sent through :class:`later`, only during that call
    _limpyd_defer: Optional[_Item] = None

    def __init__(self, real: redis.Redis, batch: "Batch") -> None:  # no redis.Redis.__init__: a view
        self.__dict__.update(real.__dict__)
        self.auto_close_connection_pool = False  # the pool is the real client's: never close it
        self._limpyd_real = real
        self._limpyd_batch = batch
        self._limpyd_defer: Optional[_Item] = None
        self._limpyd_sync_overrides()

    def _limpyd_sync_overrides(self) -> None:
        """Route the command methods replaced on the real client (``client.sadd = wrapper``) here.

        Instrumentation replaces methods on the client object; a copy taken once would miss the
        later ones. Each such method is called through :meth:`_limpyd_call_override`, which sends
        the queue first (so the server still sees every command in order) and gives a queued
        call's reply to its callback.
        """
        real_dict = self._limpyd_real.__dict__
        overrides = {
            name: value
            for name, value in real_dict.items()
            if callable(value) and not name.startswith("_") and hasattr(redis.Redis, name)
        }
        own = self.__dict__
        for name in [name for name in own.get("_limpyd_overrides", ()) if name not in overrides]:
            own.pop(name, None)
        for name, method in overrides.items():
            own[name] = self._limpyd_override_caller(method)
        own["_limpyd_overrides"] = tuple(overrides)

    def _limpyd_override_caller(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            item, self._limpyd_defer = self._limpyd_defer, None
            self._limpyd_batch.flush()
            try:
                result = method(*args, **kwargs)
            except ResponseError as exc:
                if item is not None and item.on_reply is not None:
                    item.on_reply(exc)
                raise
            if item is None:
                return result
            if item.on_reply is not None:
                item.on_reply(result)
            return None

        return call

    def close(self) -> None:
        """Do nothing: the connections belong to the real client."""

    def __del__(self) -> None:
        pass

    def execute_command(self, *args: Any, **options: Any) -> Any:
        item = self._limpyd_defer
        if item is not None:
            self._limpyd_defer = None
            item.args, item.options = args, options
            self._limpyd_batch.enqueue(item)
            return None
        return self._limpyd_batch.execute(args, options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        self._limpyd_batch.flush()
        return self._limpyd_real.pipeline(transaction=transaction, shard_hint=shard_hint)


#: the client views of a batch: :class:`BatchClient`, and its cluster twin once a cluster is used
_VIEW_TYPES = {BatchClient}


def _view_class(real: Any) -> type:
    """Return the class of the batch view of ``real``: :class:`BatchClient`, or its ``RedisCluster`` twin."""
    if isinstance(real, redis.Redis):
        return BatchClient
    view = cluster_batch_client_class(BatchClient)
    _VIEW_TYPES.add(view)
    return view


def send_commands(client: redis.Redis, commands: List[tuple]) -> list:
    """Send ``commands`` (``(args, options)`` pairs) in one write on one pooled connection of ``client``.

    Returns the parsed replies, an error reply in its place. What redis-py's non-transactional
    pipeline does, without its per-call bookkeeping. A value redis-py cannot encode fails the
    packing, before anything is sent: the commands are then sent one by one, as they would have
    been without batching, each error in its place.
    """
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # a RedisCluster: the node owning the slot of the commands' keys
        return send_cluster_commands(client, commands, _send_one_by_one)
    # a command alone (a read, mostly) takes the connection the pool keeps aside (limpyd._pool)
    alone = len(commands) == 1
    connection = take_connection(pool, "PIPELINE") if alone else get_pool_connection(pool, "PIPELINE")
    try:
        packed = connection.pack_commands([args for args, _ in commands])
    except DataError:
        pool.release(connection)
        return _send_one_by_one(client, commands)
    except BaseException:
        pool.release(connection)
        raise
    try:
        # one write: redis-py cuts large packings into several buffers, each its own sendall
        connection.send_packed_command([b"".join(packed)] if len(packed) > 1 else packed)
        replies: list = []
        for args, options in commands:
            try:
                replies.append(client.parse_response(connection, args[0], **options))
            except ResponseError as exc:
                replies.append(exc)
    except BaseException:
        connection.disconnect()  # never hand back a connection with unread replies
        pool.release(connection)
        raise
    if alone:
        keep_spare(pool, connection)
    else:
        pool.release(connection)
    return replies


def _send_one_by_one(client: redis.Redis, commands: List[tuple]) -> list:
    replies: list = []
    for args, options in commands:
        try:
            replies.append(client.execute_command(*args, **options))
        except (DataError, ResponseError) as exc:
            replies.append(exc)
    return replies


class Batch:
    """The queue of one thread's writes on one database, and the logic that sends it."""

    def __init__(self, real: redis.Redis) -> None:
        self.real = real
        self.client = _view_class(real)(real, self)
        self.queue: List[_Item] = []
        self.strict_guard_queued = False
        self.owners: set = set()

    # ------------------------------------------------------------------ queueing

    def enqueue(self, item: _Item) -> None:
        """Queue ``item``; a write never travels behind an unconfirmed (strict) lock."""
        if item.is_write and item.guard is None and self.strict_guard_queued:
            self.flush()
        self.queue.append(item)
        if item.guard is not None and not item.relaxed:
            self.strict_guard_queued = True

    def execute(self, args: tuple, options: dict, ahead_of_locks: bool = False) -> Any:
        """Send the command ``args`` now, with the queue in front of it; return its reply.

        Alone, it is sent the way queued commands are (one pooled connection, no redis-py retry
        layer): a lost reply surfaces as a connection error, which the operation recovers from.
        """
        if not self.queue:
            reply = send_commands(self.real, [(args, options)])[0]
            if isinstance(reply, Exception):
                raise reply
            return reply
        name = str(args[0]).upper()
        is_read = ahead_of_locks or name in READ_COMMANDS
        if self.strict_guard_queued and not is_read:
            self.flush()
            return self.real.execute_command(*args, **options)
        items = self.queue
        self.queue = []
        self.strict_guard_queued = False
        replies = self._send(items + [_Item(args, options)])
        rerun = self._process(items, replies[:-1])
        if rerun and not ahead_of_locks:  # a read sent behind a lock we did not get yet
            return self.real.execute_command(*args, **options)
        reply = replies[-1]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def flush(self) -> None:
        """Send every queued command now."""
        if not self.queue:
            return
        items = self.queue
        self.queue = []
        self.strict_guard_queued = False
        self._process(items, self._send(items))

    def _send(self, items: List[_Item]) -> list:
        """Send ``items`` in one round trip; return the parsed replies (or errors).

        When the round trip is lost (connection or timeout error), the commands may or may not
        have run: the ``on_lost`` callbacks of the items run (a lock release is sent again on a
        fresh connection), then the error propagates.
        """
        try:
            return send_commands(self.real, [(item.args, item.options) for item in items])
        except (redis.ConnectionError, redis.TimeoutError):
            for item in items:
                if item.on_lost is not None:
                    try:
                        item.on_lost()
                    except Exception:  # noqa: S110 - the lost round trip's error is the one raised
                        pass
            raise

    def _process(self, items: List[_Item], replies: list) -> bool:
        """Check the replies of queued commands; return whether a strict lock had to be waited for."""
        waited = False
        error: Optional[BaseException] = None
        for item, reply in zip(items, replies):
            try:
                if item.guard is not None:
                    if not reply and not isinstance(reply, Exception):
                        item.guard.lock_refused(item.args[2], item.relaxed)
                        waited = waited or not item.relaxed
                    elif isinstance(reply, Exception):
                        raise reply
                elif item.on_reply is not None:
                    item.on_reply(reply)
                elif isinstance(reply, Exception):
                    raise reply
            except BaseException as exc:  # keep checking the others: their callbacks must run
                if error is None:
                    error = exc
        if error is not None:
            raise error
        return waited


_local = threading.local()


def current_batch(database: Any) -> Optional[Batch]:
    """Return the batch open on ``database`` in this thread, if any."""
    batches = getattr(_local, "batches", None)
    return batches.get(id(database)) if batches else None


def batch_client(database: Any) -> Optional[BatchClient]:
    """Return the client of the batch open on ``database`` in this thread, if any."""
    batches = getattr(_local, "batches", None)
    if batches:
        batch = batches.get(id(database))
        if batch is not None:
            return batch.client
    return None


class batch_scope:  # noqa: N801 - used as a context manager, like contextlib's helpers
    """Open (or join) the batch of ``database`` for this thread; the outermost scope flushes it."""

    __slots__ = ("database", "batch", "opened")

    def __init__(self, database: Any) -> None:
        self.database = database
        self.batch: Optional[Batch] = None
        self.opened = False

    def __enter__(self) -> Optional[Batch]:
        database = self.database
        batch = current_batch(database)
        if batch is None:
            real = database.connection
            if (
                isinstance(real, Pipeline)
                or not (isinstance(real, redis.Redis) or is_batchable_cluster(real))
                or "execute_command" in real.__dict__
            ):
                # a user pipeline, a custom client, or one whose execute_command is wrapped: every
                # command goes there, one by one (a limpyd cluster client batches: one slot, one node)
                return None
            batches = getattr(_local, "batches", None)
            if batches is None:
                batches = _local.batches = {}
                _local.spares = {}
            # an emptied batch of this thread is reused: its client view costs a copy to build
            batch = _local.spares.pop(id(real), None)
            if batch is None or batch.real is not real:
                batch = Batch(real)
            else:
                batch.client._limpyd_sync_overrides()  # methods may have been replaced since
            batches[id(database)] = batch
            self.opened = True
        self.batch = batch
        return batch

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        batch = self.batch
        if batch is None or not self.opened:
            return  # a user pipeline, or an inner scope: the outermost one sends the batch
        try:
            batch.flush()
        finally:
            del _local.batches[id(self.database)]
            if not batch.queue:
                batch.owners.clear()
                batch.strict_guard_queued = False
                batch.client._limpyd_defer = None
                _local.spares[id(batch.real)] = batch


def is_batched(connection: Any) -> bool:
    """Return whether ``connection`` is the view of an open write-behind batch (commands may be queued)."""
    return type(connection) in _VIEW_TYPES


def send_ahead_of_locks(connection: Any, *args: Any) -> Any:
    """Send the command ``args`` now and return its reply; in a batch, it may pass a lock not confirmed yet.

    For a command whose reply is needed, that must not wait for the field locks queued before it,
    and that must not run twice (the pk counter's ``INCRBY``).
    """
    if type(connection) in _VIEW_TYPES:
        return connection._limpyd_batch.execute(args, {}, ahead_of_locks=True)
    return connection.execute_command(*args)


class later:  # noqa: N801 - reads as a verb at call sites: later(connection).sadd(key, pk)
    """Queue the command called through it in the write-behind batch, if ``connection`` has one open.

    ``later(connection).sadd(key, pk)`` queues ``SADD`` (sent with the next command needing a
    reply) and returns ``None``; on any other client (no batch, a user pipeline) the command runs
    at once and its result is returned (:func:`is_batched` says which). The options describe the
    queued command: ``on_reply`` (the callback of its reply), ``guard`` (the lock a ``SET NX``
    takes) and ``relaxed``, ``is_write``, ``on_lost`` (what to do when its round trip is lost).

    The call is explicit: the batch view queues the command sent during this call only (the
    marker is set around the call and always cleared), so no state waits for a later command.
    """

    __slots__ = ("connection", "options")

    def __init__(self, connection: Any, **options: Any) -> None:
        self.connection = connection
        self.options = options

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.connection, name)
        connection, options = self.connection, self.options

        def call(*args: Any, **kwargs: Any) -> Any:
            if not is_batched(connection):
                return method(*args, **kwargs)
            connection._limpyd_defer = _Item((), {}, **options)
            try:
                return method(*args, **kwargs)
            finally:  # sent, or failed before being sent: nothing is left for another command
                connection._limpyd_defer = None

        return call


def queue_command(connection: Any, name: str, *args: Any, **kwargs: Any) -> Optional[Pending]:
    """Queue the redis-py command ``name`` on ``connection`` and return its :class:`Pending` result.

    Returns ``None`` (and sends nothing) when ``connection`` is not a :class:`BatchClient`: the
    caller then sends the command its usual way. An error reply is raised when the batch is sent.
    """
    if not is_batched(connection):
        return None
    pending = Pending(connection._limpyd_batch)
    getattr(later(connection, on_reply=pending.reply_handler()), name)(*args, **kwargs)
    return pending


class assume_exists:  # noqa: N801 - a context manager
    """Let ``connect()`` of the next instance of ``model_name``/``pk`` in this thread skip its check.

    Used when the existence of many pks was checked in one round trip (same ``SISMEMBER``s, sent
    together): the instance is then built as usual, its check answered from that reply.
    """

    __slots__ = ("key",)

    def __init__(self, model_name: str, pk: Any) -> None:
        self.key = (model_name, pk)

    def __enter__(self) -> None:
        _local.assumed = self.key

    def __exit__(self, *exc: Any) -> None:
        _local.assumed = None


def take_assumed_existence(model_name: str, pk: Any) -> bool:
    """Return (and forget) whether ``connect()`` may skip its check for ``model_name``/``pk``."""
    if getattr(_local, "assumed", None) == (model_name, pk):
        _local.assumed = None
        return True
    return False
