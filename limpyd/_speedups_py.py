"""Pure-Python reference implementation of limpyd's speedups.

This module is the specification: ``limpyd/_speedups.pyx`` mirrors it function by function, with
the same names, signatures, results, exception types and messages. Import the functions from
``limpyd.speedups``, which picks one of the two implementations once.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from limpyd.exceptions import ImplementationError

__all__ = ["make_key", "register_model", "decode_scan_batch", "parse_scan_header", "decode_scan_keys"]


def make_key(*args: Any) -> str:
    """Return the Redis key made of ``args`` converted with ``str`` and joined by ``":"``.

    No escaping is done: ``make_key("a", 1, "clé")`` is ``"a:1:clé"``. ``bytes`` parts become
    their ``str()`` repr (``"b'x'"``), as in redis-limpyd 2.x: never pass bytes.
    """
    return ":".join(map(str, args))


def register_model(
    registry: Dict[str, Any],
    name: str,
    model: Any,
    namespace: str,
    class_name: str,
    qualified_name: str,
    creation_source: Tuple[str, int],
) -> Any:
    """Return the model class to use for ``name`` in ``registry``, registering ``model`` if free.

    A model already registered under ``name`` is "the same model" (a harmless re-import) when
    both its class ``__name__`` and its ``_creation_source`` equal ``class_name`` and
    ``creation_source``: it is returned and ``model`` is dropped. Any other clash raises
    ``ImplementationError`` naming both definitions (class, file and line) and the fix.
    """
    existing = registry.get(name)
    if existing is None:
        registry[name] = model
        return model
    existing_source = getattr(existing, "_creation_source", None)
    if existing.__name__ == class_name and existing_source == creation_source:
        return existing
    if existing_source is None:
        existing_source = ("<unknown>", "<unknown>")
    raise ImplementationError(
        'A model with namespace "%s" and name "%s" is already defined on this database '
        '(Attempt on "%s" line %s ; Already defined on "%s" line %s). '
        "%s clashes with %s.%s: give one of them another `namespace` (or class name), "
        "or put it on another database."
        % (
            namespace,
            class_name,
            creation_source[0],
            creation_source[1],
            existing_source[0],
            existing_source[1],
            qualified_name,
            existing.__module__,
            existing.__qualname__,
        )
    )


def decode_scan_batch(reply: Sequence[Any]) -> Tuple[int, List[str]]:
    """Return ``(cursor, keys)`` from one raw ``SCAN`` reply ``[cursor, [key, ...]]``.

    The cursor may come as ``bytes``, ``str`` or ``int``; keys as ``str`` (clients created with
    ``decode_responses=True``) or UTF-8 ``bytes``. The keys list is returned as is when it
    already holds only ``str``, so a batch costs no per-key work in the common case.
    """
    if len(reply) != 2:
        raise ValueError(
            "A SCAN reply must be [cursor, keys], got %d elements: %r. "
            "Pass the unmodified reply of a SCAN command." % (len(reply), reply)
        )
    raw_cursor, keys = reply
    try:
        cursor = int(raw_cursor)
    except (TypeError, ValueError):
        raise ValueError(
            "Invalid SCAN cursor %r: expected the integer cursor Redis sends back "
            "(as bytes, str or int)." % (raw_cursor,)
        ) from None
    if type(keys) is not list:
        keys = list(keys)
    for key in keys:
        if type(key) is not str:
            return cursor, [_decode_key(key) for key in keys]
    return cursor, keys


def _decode_key(key: Any) -> str:
    """Return ``key`` as ``str``, decoding UTF-8 ``bytes``."""
    if type(key) is str:
        return key
    if isinstance(key, (bytes, bytearray)):
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                "SCAN returned the key %r, which is not valid UTF-8: limpyd keys are str. "
                "Rename or delete that key, or scan it with a client not using limpyd." % (bytes(key),)
            ) from exc
    if isinstance(key, str):
        return str(key)
    raise TypeError(
        "Invalid key %r of type %s in a SCAN reply: expected str or bytes." % (key, type(key).__name__)
    )


# ---------------------------------------------------------------------- raw SCAN replies
#
# ``limpyd._scan`` reads SCAN replies straight from the connection's socket: it reads the cursor
# from the first bytes of a reply, sends the next SCAN, then decodes the keys while Redis works.
# These two functions are its RESP reader. ``data`` is a ``bytes`` buffer that may end anywhere:
# both report how far they got (a byte offset), so the bytes of the next reply are never lost.

#: digits accepted in a RESP length or cursor (a longer number is a broken reply, not a big one)
_MAX_DIGITS = 18


def _invalid_reply(data: bytes, index: int, expected: str) -> ValueError:
    """Return the ``ValueError`` for a SCAN reply holding something else than ``expected`` at ``index``."""
    return ValueError(
        "Invalid SCAN reply: expected %s at byte %d, got %r. The connection is out of sync "
        "with Redis (a proxy or another reader on the same socket?): it is dropped."
        % (expected, index, data[index : index + 16])
    )


def _read_number(data: bytes, position: int, what: str) -> Any:
    """Return ``(digits, after)`` for the ``digits CRLF`` at ``position``, or ``None`` if incomplete."""
    end = len(data)
    index = position
    while True:
        if index >= end:
            return None
        byte = data[index]
        if 48 <= byte <= 57:
            if index - position >= _MAX_DIGITS:
                raise _invalid_reply(data, index, "%s of at most %d digits" % (what, _MAX_DIGITS))
            index += 1
            continue
        if byte == 13 and index > position:
            if index + 1 >= end:
                return None
            if data[index + 1] == 10:
                return data[position:index], index + 2
            raise _invalid_reply(data, index, "CRLF after %s" % what)
        raise _invalid_reply(data, index, what)


def _check_buffer(data: Any, start: Any, function: str) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``data`` is bytes and ``start`` an offset inside it."""
    if type(data) is not bytes:
        raise TypeError(
            "%s() reads a bytes buffer, got %s: pass the bytes received from the socket."
            % (function, type(data).__name__)
        )
    if type(start) is not int or start < 0 or start > len(data):
        raise ValueError(
            "%s(start=%r): start must be an int offset from 0 to len(data) (%d)."
            % (function, start, len(data))
        )


def parse_scan_header(data: bytes, start: int) -> Any:
    """Return ``(cursor, key_count, end)`` for the SCAN reply header starting at ``data[start]``.

    The header is ``*2``, the cursor (a bulk string, or an integer), then the ``*N`` of the keys
    array: ``cursor`` is its ASCII digits as ``bytes`` (``b"0"`` ends the scan), ``key_count`` is
    ``N`` and ``end`` the offset of the first key. Return ``None`` when ``data`` ends before the
    header does (read more bytes and call again). An error reply ``-MESSAGE`` gives
    ``(None, "MESSAGE", end)``. RESP2 and RESP3 send the same header; anything else raises
    ``ValueError`` naming the offset.
    """
    _check_buffer(data, start, "parse_scan_header")
    end = len(data)
    if start >= end:
        return None
    kind = data[start]
    if kind == 45:  # "-": an error reply, one line
        newline = data.find(b"\r\n", start)
        if newline < 0:
            return None
        return None, data[start + 1 : newline].decode("utf-8", "replace"), newline + 2
    if kind != 42:
        raise _invalid_reply(data, start, "a SCAN reply (*2)")
    number = _read_number(data, start + 1, "the length of the reply")
    if number is None:
        return None
    if number[0] != b"2":
        raise _invalid_reply(data, start, "a SCAN reply of 2 elements")
    position = number[1]
    if position >= end:
        return None
    kind = data[position]
    if kind == 58:  # ":" an integer cursor
        number = _read_number(data, position + 1, "a cursor")
        if number is None:
            return None
        cursor, position = number
    elif kind == 36:  # "$" a bulk string cursor
        number = _read_number(data, position + 1, "the length of the cursor")
        if number is None:
            return None
        length = int(number[0])
        start_of_cursor = number[1]
        if length < 1 or length > _MAX_DIGITS:
            raise _invalid_reply(data, position, "a cursor of 1 to %d digits" % _MAX_DIGITS)
        if start_of_cursor + length + 2 > end:
            return None
        cursor = data[start_of_cursor : start_of_cursor + length]
        if not cursor.isdigit():
            raise _invalid_reply(data, start_of_cursor, "a cursor of 1 to %d digits" % _MAX_DIGITS)
        position = start_of_cursor + length
        if data[position : position + 2] != b"\r\n":
            raise _invalid_reply(data, position, "CRLF after the cursor")
        position += 2
    else:
        raise _invalid_reply(data, position, "a cursor")
    if position >= end:
        return None
    if data[position] != 42:
        raise _invalid_reply(data, position, "the keys array (*)")
    number = _read_number(data, position + 1, "the number of keys")
    if number is None:
        return None
    return cursor, int(number[0]), number[1]


def decode_scan_keys(data: bytes, start: int, count: int) -> Tuple[List[str], int]:
    """Return ``(keys, end)``: up to ``count`` keys decoded from the bulk strings at ``data[start]``.

    Decoding stops at the first key ``data`` does not hold whole: ``end`` is the offset of that
    key (or just after the last one), where the next call starts once more bytes arrived. Keys
    are UTF-8, as ``decode_scan_batch`` wants them; a key that is not raises ``ValueError``, and
    so does anything but a bulk string.
    """
    _check_buffer(data, start, "decode_scan_keys")
    if type(count) is not int or count < 0:
        raise ValueError("decode_scan_keys(count=%r): count must be an int >= 0." % (count,))
    end = len(data)
    position = start
    keys: List[str] = []
    if count > 1 and end - start > 8:
        # Fast path, with C-level loops only: split at CRLF, then check that the pieces alternate
        # "$<len(key)>" and key (a key holding CRLF breaks that, and the loop below takes over).
        tail = data[start:]
        ascii_only = tail.isascii()
        if ascii_only:  # the common case: split as str, the pieces are the keys already
            parts = tail.decode("ascii").split("\r\n", 2 * min(count, end))
        else:
            parts = tail.split(b"\r\n", 2 * min(count, end))
        whole = (len(parts) - 1) // 2  # pairs followed by their CRLF
        if whole > count:
            whole = count
        heads = parts[0 : 2 * whole : 2]
        values = parts[1 : 2 * whole : 2]
        lengths = list(map(len, values))
        header = "$%d" if ascii_only else b"$%d"
        expected = {length: header % length for length in set(lengths)}  # a few distinct lengths
        if heads == list(map(expected.__getitem__, lengths)):
            stop = start + sum(map(len, heads)) + sum(lengths) + 4 * whole
            try:
                keys = values if ascii_only else list(map(bytes.decode, values))
            except UnicodeDecodeError:
                keys = []  # the loop below names the key
            else:
                position = stop
                count -= whole
    append = keys.append
    find = data.find
    while count:
        if position >= end:
            break
        if data[position] != 36:  # "$"
            raise _invalid_reply(data, position, "a key ($)")
        newline = find(b"\r\n", position + 1, position + 22)
        digits = data[position + 1 : newline]
        if newline < 0 or not digits.isdigit() or len(digits) > _MAX_DIGITS:
            number = _read_number(data, position + 1, "the length of a key")
            if number is None:
                break
            digits = number[0]
            newline = number[1] - 2
        first = newline + 2
        stop = first + int(digits)
        if stop + 2 > end:
            break
        if data[stop] != 13 or data[stop + 1] != 10:
            raise _invalid_reply(data, stop, "CRLF after a key")
        try:
            append(data[first:stop].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(
                "SCAN returned the key %r, which is not valid UTF-8: limpyd keys are str. "
                "Rename or delete that key, or scan it with a client not using limpyd." % (data[first:stop],)
            ) from exc
        position = stop + 2
        count -= 1
    return keys, position
