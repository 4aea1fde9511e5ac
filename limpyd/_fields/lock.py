"""``FieldLock``: the lock taken while an indexable field is modified, and its release rules."""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import redis
from redis.exceptions import LockError, LockNotOwnedError, NoScriptError
from redis.lock import Lock

from limpyd._batch import (
    current_batch,
    is_batched,
    later,
    send_commands,
)
from limpyd._recovery import UNKNOWN_OUTCOME, is_unknown_outcome, real_client, with_retries
from limpyd.utils import make_key

if TYPE_CHECKING:  # the base module imports this one
    from limpyd._fields.base import RedisField


def lock_command(lock: Any, token: Any) -> tuple:
    """Return the ``SET name token NX [PX ms]`` taking ``lock`` (one argument order, any redis-py)."""
    if lock.timeout:
        return ("SET", lock.name, token, "NX", "PX", int(lock.timeout * 1000))
    return ("SET", lock.name, token, "NX")


def wait_for_lock(lock: Any, token: Any) -> None:
    """Acquire ``lock`` with ``token`` the way redis-py's blocking ``acquire`` does (after a miss)."""
    client = real_client(lock.redis)
    command = lock_command(lock, token)
    blocking_timeout = lock.blocking_timeout
    stop_at = time.monotonic() + blocking_timeout if blocking_timeout is not None else None
    while not client.execute_command(*command):
        if not lock.blocking or (stop_at is not None and time.monotonic() > stop_at):
            raise LockError("Unable to acquire the lock %r: it is held by someone else" % lock.name)
        time.sleep(lock.sleep)


def release_reply_checker(lock: Any, token: Any) -> Callable[[Any], None]:
    """Return the callback checking the reply of a queued lock release (as redis-py's release)."""

    def check(reply: Any) -> None:
        if isinstance(reply, NoScriptError):  # first release on this server: load the script, retry
            reply = lock.lua_release(keys=[lock.name], args=[token], client=real_client(lock.redis))
        elif isinstance(reply, Exception):
            raise reply
        if not reply and not getattr(lock, "not_acquired", False):
            raise LockNotOwnedError("Cannot release a lock that's no longer owned")

    return check


class FieldLock(Lock):
    """The lock taken while an indexable field is modified: one per (model, field name).

    Re-entrant per thread (a nested operation on the same field only marks a sub-lock), and a
    no-op without any Redis command when the field is not lockable.
    """

    def __init__(
        self,
        field: RedisField,
        timeout: float = 5,
        sleep: float = 0.1,
        blocking: bool = True,
        blocking_timeout: Optional[float] = None,
        thread_local: bool = True,
    ) -> None:
        self.field = field
        self.sub_lock_mode = False
        super().__init__(
            redis=field._model.get_connection(),
            name=make_key(field._model._name, "lock-for-update", field.name),
            timeout=timeout,
            sleep=sleep,
            blocking=blocking,
            blocking_timeout=blocking_timeout,
            thread_local=thread_local,
        )

    def _get_already_locked_by_model(self) -> bool:
        return self.field.name in self.field._model._thread_lock_storage().get(self.field._model._name, set())

    def _set_already_locked_by_model(self, value: bool) -> None:
        locked = self.field._model._thread_lock_storage().setdefault(self.field._model._name, set())
        if value:
            locked.add(self.field.name)
        else:
            locked.discard(self.field.name)

    already_locked_by_model = property(_get_already_locked_by_model, _set_already_locked_by_model)

    def do_acquire(self, token: Any) -> bool:
        """Send ``SET name token NX PX``; in a batch, with the next read, and checked on its reply."""
        instance = getattr(self.field, "_instance", None)
        relaxed = bool(instance is not None and self.field._is_fresh() and not self.field.unique)
        command = lock_command(self, token)  # the same arguments, in the same order, for every redis-py
        if is_batched(self.redis):  # checked on its reply (lock_refused), with the next read
            later(self.redis, guard=self, relaxed=relaxed).execute_command(*command)
            return True
        return bool(self.redis.execute_command(*command)) or holds_lock(self, token)

    #: set when a relaxed acquisition (a field of an instance being created) found the lock held
    #: elsewhere: its release then expects "not owned"
    not_acquired = False

    def lock_refused(self, token: Any, relaxed: bool) -> None:
        """Answer a queued ``SET NX`` refused by Redis: wait for the lock, or (relaxed) go on without it."""
        if relaxed:
            self.not_acquired = True
        else:
            wait_for_lock(self, token)

    def do_release(self, expected_token: Any) -> None:
        """Run the release script; in a batch, queued and checked on its reply."""
        if is_batched(self.redis):
            later(
                self.redis,
                on_reply=release_reply_checker(self, expected_token),
                on_lost=lambda: self._release_now(expected_token),
            ).evalsha(self.lua_release.sha, 1, self.name, expected_token)
            return
        client = self.redis
        if type(client) is not redis.Redis:  # a pipeline or a custom client: redis-py's own release
            super().do_release(expected_token)
            return
        # sent without redis-py's retries: a release retried after a lost reply would find its
        # lock gone and raise LockNotOwnedError for a release that worked
        try:
            reply = send_commands(
                client, [(("EVALSHA", self.lua_release.sha, 1, self.name, expected_token), {})]
            )[0]
        except UNKNOWN_OUTCOME:
            self._release_now(expected_token)  # ran or not: run it again, its outcome is then known
            return
        release_reply_checker(self, expected_token)(reply)

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        """Take the lock, unless this thread already holds it for this field (sub-lock)."""
        if not self.field.lockable:
            return True
        if self.already_locked_by_model:
            self.sub_lock_mode = True
            return True
        self.already_locked_by_model = True
        if len(args) < 4 and "token" not in kwargs:
            kwargs["token"] = os.urandom(16).hex()  # as unique as redis-py's uuid1, much cheaper
        try:
            return super().acquire(*args, **kwargs)
        except BaseException as error:
            self.already_locked_by_model = False
            if is_unknown_outcome(error) and kwargs.get("token"):
                # the SET NX may have run with its reply lost: release what may be ours
                try:
                    self._release_now(kwargs["token"])
                except UNKNOWN_OUTCOME:
                    pass  # unreachable server: the lock expires after its timeout
            raise

    #: per thread: the locks whose release waits for the end of an instance deletion
    _held = threading.local()

    def release(self) -> None:
        """Release the lock (nothing to do for a sub-lock or a non-lockable field).

        During an instance deletion (:func:`hold_released_locks`) the release waits for the end of
        the deletion, so no writer of these fields runs before the pk has left the collection.
        """
        if not self.field.lockable or self.sub_lock_mode:
            return
        held = getattr(FieldLock._held, "locks", None)
        if held is not None:
            held.append(self)
            return
        try:
            super().release()
        finally:
            self.already_locked_by_model = False

    def _release_now(self, token: Any) -> None:
        """Run the release script for ``token`` on the real client, retried on a lost connection."""
        client = real_client(self.redis)
        with_retries(lambda: self.lua_release(keys=[self.name], args=[token], client=client))

    def release_after_error(self) -> None:
        """Release the lock now, whatever happened: on a fresh connection, never raising "not owned".

        After a failed operation the lock may never have been taken (a lost ``SET NX``), or be
        held with our token: the release script deletes it only in the second case. A lost
        connection is retried; if the server stays unreachable the lock expires on its own.
        """
        try:
            if not self.field.lockable or self.sub_lock_mode:
                return
            token, self.local.token = self.local.token, None
            if token is None:
                return
            batch = current_batch(self.field._model.database)
            if batch is not None:
                try:
                    batch.flush()  # what the operation queued goes before the release, as usual
                except UNKNOWN_OUTCOME:
                    pass
                except Exception:  # noqa: S110 - the operation's own error is the one to raise
                    pass
            self._release_now(token)
        finally:
            if self.field.lockable and not self.sub_lock_mode:
                self.already_locked_by_model = False

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None:
            held = getattr(FieldLock._held, "locks", None)
            if held is None:
                try:
                    self.release_after_error()
                except UNKNOWN_OUTCOME:
                    pass  # the operation's error propagates; the lock expires after its timeout
                return
        try:
            super().__exit__(*exc)
        finally:
            if (
                self.field.lockable
                and not self.sub_lock_mode
                and getattr(FieldLock._held, "locks", None) is None
            ):
                self.already_locked_by_model = False


class hold_released_locks:  # noqa: N801 - a context manager
    """Keep the field locks released inside the block until its end (an instance deletion).

    A writer of a deleted instance's field takes the field lock then checks that the pk exists:
    holding every lock of the deletion until the pk has left the collection makes that check
    reliable. The releases are sent at the end, in the order of the acquisitions.
    """

    def __enter__(self) -> None:
        self.outer = getattr(FieldLock._held, "locks", None)
        if self.outer is None:
            FieldLock._held.locks = []

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.outer is not None:
            return  # an outer deletion releases them
        locks, FieldLock._held.locks = FieldLock._held.locks, None
        error: Optional[BaseException] = None
        for lock in locks:
            try:
                if exc_type is None and error is None:
                    lock.release()
                else:
                    lock.release_after_error()
            except BaseException as release_error:  # release the others anyway
                if error is None:
                    error = release_error
                lock.already_locked_by_model = False
        if error is not None and exc_type is None:
            raise error


def holds_lock(lock: Lock, token: Any) -> bool:
    """Return whether ``lock`` is held with ``token`` (a ``SET NX`` retried by redis-py after a lost reply).

    Only asked when a ``SET NX`` was refused, so it costs nothing in the usual case.
    """
    if isinstance(token, bytes):
        token = token.decode()
    return real_client(lock.redis).get(lock.name) == token
