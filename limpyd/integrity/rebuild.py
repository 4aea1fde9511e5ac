"""``rebuild_indexes(model)``: rebuild indexes online, aside, and swap them in; resumable.

Phases, recorded in the hash ``<model._name>:__rebuild__:state`` (``__rebuild__`` is a reserved
pk part, so the key cannot be an instance's):

1. **build**: ``SSCAN`` of the collection from the recorded cursor; for each chunk the values are
   read and their entries written under aside keys ``<M>:__rebuild__:<id>:<real key>``; the
   cursor is recorded in the same round trip as the chunk's writes, so a killed rebuild goes on
   from the last chunk written (``SSCAN`` cursors stay valid while the set changes; an entry
   written twice is harmless). The real index keeps serving queries, untouched.
2. **swap**, field by field, under the field's lock (the ``FieldLock`` every default-mode writer
   of the field takes, renewed while the swap runs): real keys of the field without an aside
   key are deleted (values nobody has any more), then every aside key is renamed over its real
   key. Writers of that field wait for the swap; readers see each key either old or new, never
   missing, so an index is never empty or partial.
3. **catch-up**: writes of the field made during the build went to the real keys the swap
   replaced; an audit of the rebuilt fields finds the entries they changed, and they are fixed
   under the field lock as :func:`limpyd.integrity.repair` does. When it ends, the indexes
   agree with the stored values, concurrent writes included.

The state hash is deleted at the end. ``resume=False`` drops the aside keys of an unfinished
rebuild and starts again.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from limpyd.fields import FieldLock
from limpyd.integrity import _lua
from limpyd.integrity._lua import send as send_commands
from limpyd.integrity._schema import ModelPlan
from limpyd.integrity.audit import audit, client_of, glob_escape
from limpyd.integrity.report import MISSING_ENTRY, STALE_ENTRY, UNIQUE_CONFLICT, WRONG_ENTRY
from limpyd.utils import make_key

__all__ = ["rebuild_indexes", "state_key"]

Progress = Optional[Callable[[str, int, Optional[int]], None]]

#: deletes each real key of KEYS[1..n] whose aside key (ARGV[1] prefix + key) does not exist
SWEEP = _lua.Script("""
local deleted = 0
for i, key in ipairs(KEYS) do
    if redis.call('EXISTS', ARGV[1] .. key) == 0 then deleted = deleted + redis.call('DEL', key) end
end
return deleted
""")

#: renames each aside key of KEYS over the real key (the aside key without the ARGV[1] prefix)
SWAP = _lua.Script("""
local n = string.len(ARGV[1])
for i, key in ipairs(KEYS) do
    if redis.call('EXISTS', key) == 1 then redis.call('RENAME', key, string.sub(key, n + 1)) end
end
return #KEYS
""")


def state_key(model: type) -> str:
    """Return the hash holding the position of the model's rebuild."""
    return make_key(model._name, "__rebuild__", "state")


def _aside_prefix(model: type, build_id: str) -> str:
    return make_key(model._name, "__rebuild__", build_id, "")


def _drop_aside(model: type, client: Any, build_id: str) -> None:
    pattern = glob_escape(_aside_prefix(model, build_id)) + "*"
    batch: List[str] = []
    for key in model.database.scan_keys(pattern):
        batch.append(key)
        if len(batch) >= 1000:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)


def _fields(plan: ModelPlan, fields: Optional[Sequence[str]]) -> List[str]:
    if fields is None:
        return [field_plan.name for field_plan in plan.indexed]
    if isinstance(fields, str):
        fields = [fields]
    names = []
    for name in fields:
        field_plan = plan.fields.get(name)
        if field_plan is None:
            raise ValueError(
                "rebuild_indexes(fields=%r): %r is not a field of %s (fields: %s)"
                % (list(fields), name, plan.model.__name__, ", ".join(plan.fields))
            )
        if not field_plan.indexes:
            raise ValueError(
                "rebuild_indexes(fields=%r): %s.%s has no index of its own to rebuild"
                % (list(fields), plan.model.__name__, name)
            )
        names.append(name)
    return names


def _build(
    plan: ModelPlan, client: Any, names: List[str], state: Dict[str, str], chunk_size: int, progress: Progress
) -> None:
    model = plan.model
    key = state_key(model)
    prefix = _aside_prefix(model, state["id"])
    cursor = int(state.get("cursor", 0))
    done = int(state.get("done", 0))
    total = int(client.scard(plan.collection_key))
    offset = int(state.get("offset", 0))
    while True:
        next_cursor, reply = client.sscan(plan.collection_key, cursor, count=chunk_size)
        next_cursor = int(next_cursor)
        # a reply may hold more than chunk_size pks (small sets come whole): it is cut in chunks,
        # and the position is the reply's cursor plus the pks of the reply already done
        while True:
            pks = reply[offset : offset + chunk_size]
            offset += len(pks)
            last = offset >= len(reply)
            writes: List[Tuple[Tuple[Any, ...], Dict[str, Any]]] = []
            for pk, values, _, _ in plan.values(client, pks):
                for entry in plan.entries(pk, values, names):
                    if entry.kind == "set":
                        writes.append((("SADD", prefix + entry.key, entry.member), {}))
                    else:
                        writes.append((("ZADD", prefix + entry.key, repr(entry.score), entry.member), {}))
            done += len(pks)
            finished = last and next_cursor == 0
            position = (next_cursor, 0) if last else (cursor, offset)
            writes.append(
                (
                    (
                        "HSET",
                        key,
                        "cursor",
                        position[0],
                        "offset",
                        position[1],
                        "done",
                        done,
                        "phase",
                        "swap" if finished else "build",
                    ),
                    {},
                )
            )
            for reply_item in send_commands(client, writes):
                if isinstance(reply_item, Exception):
                    raise reply_item
            if progress:
                progress("build", done, total)
            if last:
                break
        cursor, offset = next_cursor, 0
        if cursor == 0:
            break


#: the swap's field lock: its time to live, renewed every ``SWAP_LOCK_RENEW_EVERY`` seconds by a
#: thread (a ``SCAN`` with ``MATCH`` over a large database can go seconds without a matching key)
SWAP_LOCK_TIMEOUT = 5.0
SWAP_LOCK_RENEW_EVERY = 1.0


class _Renewing:
    """A thread renewing ``lock`` (``reacquire``) until :meth:`stop`: the swap holds it for as long
    as it runs, however slowly its scans give keys. A renewal that fails (the lock lost) ends the
    thread; the swap's ``release`` then raises ``LockNotOwnedError``."""

    def __init__(self, lock: FieldLock) -> None:
        self._lock = lock
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="limpyd-rebuild-lock", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(SWAP_LOCK_RENEW_EVERY):
            try:
                self._lock.reacquire()
            except Exception:  # noqa: BLE001 - lost or unreachable: release() says so
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def _swap_field(plan: ModelPlan, client: Any, name: str, build_id: str, progress: Progress) -> None:
    model = plan.model
    prefix = _aside_prefix(model, build_id)
    real_pattern = glob_escape(make_key(plan.name, name, "")) + "*"
    # not thread-local: the renewing thread reacquires the token the swap took
    lock = FieldLock(
        model.get_field(name), timeout=SWAP_LOCK_TIMEOUT, blocking_timeout=60, thread_local=False
    )
    if not lock.acquire():
        raise TimeoutError(
            "rebuild_indexes: the lock of %s.%s stayed taken for 60 s; run it again to resume"
            % (model.__name__, name)
        )
    renewing = _Renewing(lock) if lock.field.lockable else None
    try:
        batch: List[str] = []
        swept = 0
        for key in model.database.scan_keys(real_pattern):
            batch.append(key)
            if len(batch) >= 500:
                _lua.run(client, [(SWEEP, batch, [prefix])])
                swept += len(batch)
                batch = []
        if batch:
            _lua.run(client, [(SWEEP, batch, [prefix])])
        aside_pattern = glob_escape(prefix + make_key(plan.name, name, "")) + "*"
        batch = []
        swapped = 0
        for key in model.database.scan_keys(aside_pattern):
            batch.append(key)
            if len(batch) >= 500:
                _lua.run(client, [(SWAP, batch, [prefix])])
                swapped += len(batch)
                batch = []
                if progress:
                    progress("swap:%s" % name, swapped, None)
        if batch:
            _lua.run(client, [(SWAP, batch, [prefix])])
        client.hset(state_key(model), "swapped:%s" % name, 1)
    finally:
        if renewing is not None:
            renewing.stop()
        if lock.field.lockable:
            lock.release()
        else:
            lock.already_locked_by_model = False


def _catch_up(model: type, names: List[str], progress: Progress) -> int:
    from limpyd.integrity.repair import apply_actions, plan_actions

    report = audit(model, progress=progress)
    kinds = (MISSING_ENTRY, STALE_ENTRY, WRONG_ENTRY, UNIQUE_CONFLICT)
    report.findings = [f for f in report.findings if f.kind in kinds and f.field in names]
    actions = [a for a in plan_actions(report, False, "oldest") if a.finding.kind != UNIQUE_CONFLICT]
    apply_actions(model, actions, False, "oldest")
    return sum(1 for action in actions if action.done)


def rebuild_indexes(
    model: type,
    fields: Optional[Sequence[str]] = None,
    resume: bool = True,
    progress: Progress = None,
    chunk_size: int = 1000,
) -> Dict[str, Any]:
    """Rebuild the indexes of ``fields`` (all indexed fields by default) of ``model``, online.

    Returns ``{"fields", "instances", "fixed", "resumed", "seconds"}``. ``progress(phase, done,
    total)`` is called after each chunk. ``resume=True`` continues a rebuild of the same fields
    that was stopped (its position is in Redis); ``resume=False`` drops it and starts again. See
    the module documentation for the phases and why concurrent writes end consistent.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError("rebuild_indexes(chunk_size=%r): give an int >= 1" % (chunk_size,))
    if model._limpyd_shard_models is not None:  # sharded: every shard (limpyd.integrity.sharded)
        from limpyd.integrity import sharded

        return sharded.rebuild_indexes(
            model, fields=fields, resume=resume, progress=progress, chunk_size=chunk_size
        )
    started = time.perf_counter()
    plan = ModelPlan(model)
    names = _fields(plan, fields)
    client = client_of(model)
    key = state_key(model)
    state = client.hgetall(key)
    resumed = False
    if state:
        if resume and state.get("fields") == ",".join(names):
            resumed = True
        elif resume:
            raise ValueError(
                "rebuild_indexes: a rebuild of %s.%s fields %s was stopped before its end; resume it with "
                "fields=%r, or pass resume=False to drop it"
                % (
                    model.__module__,
                    model.__qualname__,
                    state.get("fields"),
                    state.get("fields", "").split(","),
                )
            )
        else:
            _drop_aside(model, client, state.get("id", ""))
            client.delete(key)
            state = {}
    if not state:
        state = {
            "id": os.urandom(6).hex(),
            "fields": ",".join(names),
            "phase": "build",
            "cursor": "0",
            "done": "0",
        }
        client.hset(key, mapping=state)
    if state.get("phase") == "build":
        _build(plan, client, names, state, chunk_size, progress)
        client.hset(key, "phase", "swap")
    for name in names:
        if not client.hget(key, "swapped:%s" % name):
            _swap_field(plan, client, name, state["id"], progress)
    client.hset(key, "phase", "catch-up")
    fixed = _catch_up(model, names, progress)
    _drop_aside(model, client, state["id"])
    client.delete(key)
    return {
        "fields": names,
        "instances": int(client.scard(plan.collection_key)),
        "fixed": fixed,
        "resumed": resumed,
        "seconds": time.perf_counter() - started,
    }
