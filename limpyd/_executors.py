"""The executor that sends a write operation's commands, chosen in one place for every operation.

An ORM write (an instance creation, a field modifier, an instance-hash ``hmset``/``hdel``, an
instance deletion, a bulk load) builds its commands in its own method: the model's ``__init__``,
``delete`` and ``_call_command``, the field strategies ``_call_<command>``, ``limpyd._bulk``.
One of four executors sends them, chosen when the operation starts:

``SCRIPT``
    The whole operation is one call of the model's atomic-writes script (:mod:`limpyd._atomic`):
    one round trip, no client lock. Models with ``atomic_writes``, outside a user pipeline. The
    strategies then skip their reads and index commands (the field's ``_limpyd_atomic`` flag,
    set by ``RedisField._call_atomic`` for the length of the call) and the command itself
    becomes the script's request.
``PIPELINE``
    A user pipeline (``PipelineDatabase.pipeline()``) is open: every command is queued in it and
    sent by its ``execute()``; no script, no write-behind batch. The field locks are taken as
    in the default mode.
``WRITE_BEHIND``
    The default mode of an operation that maintains indexes: its commands go through a
    write-behind batch (:mod:`limpyd._batch`) under the field locks. Writes whose reply nobody
    reads are queued explicitly (``later(connection, ...).<command>(...)``) and sent with the
    next command that needs a reply; the server sees the commands of the spec, in its order.
``IMMEDIATE``
    Each command is sent as it is built: reads, and writes of a field without index on an
    instance known to exist (through the pipeline when one is open).

Nothing else decides how a write is sent: the callers ask :func:`for_model` or
:func:`for_field` and follow the answer.
"""

from __future__ import annotations

import enum
from typing import Any

from limpyd import _atomic
from limpyd.exceptions import ImplementationError

__all__ = ["Executor", "for_bulk", "for_field", "for_model"]


class Executor(enum.Enum):
    """How an operation's commands are sent (see the module's documentation)."""

    SCRIPT = "one atomic-writes script call"
    PIPELINE = "the user's pipeline"
    WRITE_BEHIND = "a write-behind batch under the field locks"
    IMMEDIATE = "each command when it is built"


def for_model(model: Any) -> Executor:
    """Return the executor of a creation, deletion or instance-hash write of ``model``."""
    if _atomic.in_pipeline(model):
        return Executor.PIPELINE
    if _atomic.atomic_enabled(model):
        return Executor.SCRIPT
    return Executor.WRITE_BEHIND


def for_field(field: Any, name: str) -> Executor:
    """Return the executor of the command ``name`` run on ``field`` (a field of an instance or a model)."""
    if name not in field.available_modifiers:
        return Executor.IMMEDIATE
    executor = for_model(field._model)
    if executor is Executor.SCRIPT:
        # indexable fields always; the others on a lazy instance, whose pk the script checks
        return executor if field.indexable or field._lazy_write() else Executor.IMMEDIATE
    return executor if field.indexable else Executor.IMMEDIATE


def for_bulk(model: Any) -> Executor:
    """Return the executor of ``create_many``/``delete_many`` on ``model``.

    The script, in both modes, whenever it can maintain every index of the model (a batch of
    rows per call); else each row is an operation of its own, with that operation's executor
    (``WRITE_BEHIND``, or ``PIPELINE`` inside a user pipeline).
    """
    if _atomic.in_pipeline(model):
        return Executor.PIPELINE
    try:
        _atomic.schema_of(model)
    except ImplementationError:  # an index without server-side form: one operation per row
        return Executor.WRITE_BEHIND
    if getattr(model, "_multi_fields_index_for_filtering", None):
        return Executor.WRITE_BEHIND
    return Executor.SCRIPT
