"""The stored shard count of a sharded model: ``<model>:__shards__`` (docs/sharding.rst).

The shard of an instance depends on the count (``crc32(pk) % shards``), so a process declaring
another count than the one the data was written with would look for every instance in the wrong
shard. The first creation of a sharded model in a process stores the declared count if nothing is
stored (``SET key N NX GET``, one command); a read before any creation only reads it (``GET``).
What was read is kept per database (and per connection settings), so each model costs at most one
command per process, and when the stored count differs from the declared one every operation of
the model raises :class:`ImplementationError` naming both and the fix (``limpyd reshard``).
"""

from __future__ import annotations

from typing import Any, Dict, Union

from limpyd.exceptions import ImplementationError
from limpyd.utils import make_key

__all__ = ["KEY_PART", "check", "count_key", "read", "remember"]

#: the last part of the key holding the stored count (``<namespace>:<model>:__shards__``)
KEY_PART = "__shards__"

_UNKNOWN = object()


def count_key(model: Any) -> str:
    """Return the key of the stored shard count of ``model`` (a sharded model, by its ``_name``)."""
    return make_key(model._name, KEY_PART)


def _seen(database: Any) -> Dict[str, Union[int, str, None]]:
    """Return ``{model _name: stored count or None}`` read on ``database`` for its current settings.

    ``connect()`` with new settings replaces ``connection_settings``: what was read before is
    forgotten then (another server, or the cluster names of the models).
    """
    cache = database.__dict__.get("_limpyd_stored_shards")
    if cache is None or cache[0] is not database.connection_settings:
        cache = database.__dict__["_limpyd_stored_shards"] = (database.connection_settings, {})
    return cache[1]


#: what ``__shards__`` holds while ``limpyd reshard`` runs: ``resharding <from> to <to>``
RESHARDING = "resharding "


def _parse(model: Any, value: Any) -> Union[int, str, None]:
    """Return the stored count, or the ``resharding ...`` marker of a reshard running."""
    if value is None:
        return None
    if isinstance(value, str) and value.startswith(RESHARDING):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImplementationError(
            "The key %s holds %r, not a shard count: set it to the count the data of %s.%s was "
            "written with (docs/sharding.rst, Resharding)."
            % (count_key(model), value, model.__module__, model.__qualname__)
        ) from None


def read(model: Any) -> Union[int, str, None]:
    """Return the count stored for ``model`` (``None`` if nothing is stored), read now."""
    return _parse(model, model.database.connect().get(count_key(model)))


def _store_if_missing(model: Any) -> Union[int, str, None]:
    """Store the declared count unless a count is stored; return the count stored before (or None)."""
    database = model.database
    client = database.connect()  # the plain client: never a write-behind view nor a user pipeline
    key, declared = count_key(model), model._limpyd_shards
    if database.redis_version >= (7, 0):
        return _parse(model, client.set(key, declared, nx=True, get=True))
    if client.set(key, declared, nx=True):
        return None
    return _parse(model, client.get(key))


def check(model: Any, write: bool = False) -> None:
    """Raise ``ImplementationError`` if the count stored for the sharded ``model`` is not its declared one.

    ``write``: the caller creates instances, so the declared count is stored if none is. The
    first call per model and database sends one command; the next ones send nothing.
    """
    seen = _seen(model.database)
    declared = model._limpyd_shards
    stored = seen.get(model._name, _UNKNOWN)
    if stored == declared:
        return
    if stored is _UNKNOWN or (stored is None and write):
        stored = _store_if_missing(model) if write else read(model)
        seen[model._name] = declared if (write and stored is None) else stored
    if stored is not None and stored != declared:
        raise mismatch(model, stored)


def remember(model: Any, count: Union[int, str, None]) -> None:
    """Note that ``count`` (or a ``resharding ...`` marker) is now stored for ``model`` (reshard)."""
    _seen(model.database)[model._name] = count


def mismatch(model: Any, stored: Union[int, str]) -> ImplementationError:
    """Return the error of a model whose declared count is not the stored ``stored``."""
    path = "%s.%s" % (model.__module__, model.__qualname__)
    if isinstance(stored, str):
        return ImplementationError(
            "%s is being resharded (%s holds %r): wait until `limpyd reshard` finishes, or run "
            "`limpyd --models %s reshard %s --shards <count>` again to finish a run that stopped "
            "(docs/sharding.rst, Resharding)." % (path, count_key(model), stored, model.__module__, path)
        )
    return ImplementationError(
        "%s declares shards = %d but its data is stored in %d shards (%s): declare shards = %d, "
        "or move the data with `limpyd --models %s reshard %s --shards %d` (docs/sharding.rst, "
        "Resharding)."
        % (
            path,
            model._limpyd_shards,
            stored,
            count_key(model),
            stored,
            model.__module__,
            path,
            model._limpyd_shards,
        )
    )
