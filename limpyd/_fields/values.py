"""Value checks and helpers shared by the fields: what Redis can store, hash writes, labels."""

from __future__ import annotations

from typing import Any, Dict

from redis.exceptions import DataError, ResponseError

from limpyd.exceptions import LimpydException
from limpyd.utils import make_key


def write_hash(database: Any, key: str, mapping: Dict[str, Any]) -> Any:
    """Write ``mapping`` into the hash ``key`` with one command and return ``True`` (as ``HMSET`` did).

    ``HSET key f1 v1 ...`` (``HMSET`` is deprecated), or ``HMSET`` on a Redis < 4 refusing it; an empty
    mapping raises redis-py's ``DataError``. Inside a pipeline the pipeline object is returned.
    """
    connection = database.connection
    if not mapping:
        raise DataError("HSET requires at least one field to write into %r: got an empty mapping" % (key,))
    version = database.__dict__.get("_redis_version")  # known without a command once connected
    if (version is not None and version < (4,)) or database._limpyd_hmset_only:
        result = connection.execute_command(
            "HMSET", key, *[part for item in mapping.items() for part in item]
        )
        return True if isinstance(result, int) else result
    try:
        result = connection.hset(key, mapping=mapping)
    except ResponseError as exc:
        if "wrong number of arguments" not in str(exc):
            raise
        # Redis < 4 takes one field per HSET: HMSET is the one-command form there (remembered)
        database._limpyd_hmset_only = True
        result = connection.execute_command(
            "HMSET", key, *[part for item in mapping.items() for part in item]
        )
    return True if isinstance(result, int) else result


def field_label(field: Any) -> str:
    """Return ``Model.field`` for error messages (``<unbound>`` parts when not attached)."""
    model = getattr(field, "_model", None)
    return "%s.%s" % (
        model.__name__ if model is not None else "<no model>",
        getattr(field, "name", "<unnamed>"),
    )


def check_value(field: Any, value: Any, role: str = "value") -> None:
    """Raise redis-py's ``DataError`` naming the model, field and value if Redis cannot store ``value``.

    Done before any Redis command, so a bad value leaves Redis untouched: limpyd stores ``str``,
    ``bytes`` (UTF-8: everything is read back as ``str``), ``int`` and ``float``.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(
                "Invalid %s %r for %s: this str cannot be encoded in UTF-8 (%s). Remove the lone "
                "surrogates (e.g. value.encode('utf-8', 'replace').decode())."
                % (role, value, field_label(field), exc.reason)
            ) from None
        _check_index_values(field, value, role)
        return
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > 256:
            try:
                str(value)
            except ValueError:
                raise DataError(
                    "Invalid %s (an int of %d bits) for %s: Python cannot write it as decimal digits. Store "
                    "it as a hex str (hex(value)) or raise sys.set_int_max_str_digits()."
                    % (role, value.bit_length(), field_label(field))
                ) from None
        _check_index_values(field, value, role)
        return
    if isinstance(value, float):
        _check_index_values(field, value, role)
        return
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(
                "Invalid %s %r for %s: these bytes are not UTF-8, and limpyd reads every value back as "
                "str. Store text (or encode the bytes, e.g. base64) first."
                % (role, value, field_label(field))
            ) from None
        _check_index_values(field, value, role)
        return
    raise DataError(
        "Invalid %s %r (of type %s) for %s: Redis stores str, bytes, int or float. Convert it first "
        "(e.g. str(value)), or skip the field to store nothing."
        % (role, value, type(value).__name__, field_label(field))
    )


def _check_index_values(field: Any, value: Any, role: str) -> None:
    """Let each index of ``field`` refuse ``value`` before anything is written (``check_storable``)."""
    if role in ("value", "member") and getattr(field, "indexable", False):
        for index in field._indexes:
            index.check_storable(value)


def check_fresh_reply(field: Any, reply: Any) -> None:
    """Raise if a read of the pk an instance just allocated found data (left by another instance)."""
    if (
        reply is None
        or reply == {}
        or reply == []
        or reply == set()
        or (isinstance(reply, list) and all(value is None for value in reply))
    ):
        return
    instance = field._instance
    raise LimpydException(
        "%s.%s of the new pk %s already holds %r: keys of another instance with this pk are still in "
        "Redis (was %s reset?). Delete the keys matching %r, or set %s above the highest pk in use."
        % (
            type(instance).__name__,
            field.name,
            instance._pk,
            reply,
            make_key(instance._name, "max_pk"),
            make_key(instance._name, instance._pk, "*"),
            make_key(instance._name, "max_pk"),
        )
    )
