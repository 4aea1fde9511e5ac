# cython: language_level=3, embedsignature=True
"""Compiled implementation of limpyd's speedups.

Mirrors ``limpyd/_speedups_py.py`` (the specification) function by function: same names,
signatures, results, exception types and messages. Import the functions from
``limpyd.speedups``, which picks one of the two implementations once.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8
from libc.string cimport memcpy

from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF

cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void* PyUnicode_DATA(object unicode)
    void Py_SET_SIZE(object o, Py_ssize_t size)

from limpyd.exceptions import ImplementationError

__all__ = ["make_key", "register_model", "decode_scan_batch", "parse_scan_header", "decode_scan_keys"]


def make_key(*args):
    """Return the Redis key made of ``args`` converted with ``str`` and joined by ``":"``.

    No escaping is done: ``make_key("a", 1, "clé")`` is ``"a:1:clé"``. ``bytes`` parts become
    their ``str()`` repr (``"b'x'"``), as in redis-limpyd 2.x: never pass bytes.
    """
    cdef Py_ssize_t count = len(args)
    cdef Py_ssize_t index
    cdef list parts
    cdef object arg
    if count == 1:
        return _part_to_str(args[0])
    for index in range(count):
        if type(args[index]) is not str:
            break
    else:
        return _COLON.join(args)
    parts = [None] * count
    for index in range(count):
        parts[index] = _part_to_str(args[index])
    return _COLON.join(parts)


cdef str _COLON = ":"


cdef inline str _part_to_str(object arg):
    """Return ``str(arg)``, formatting exact ``int`` parts (pks) without the generic machinery."""
    cdef long long number
    cdef unsigned long long magnitude
    cdef char buffer[24]
    cdef int position = 23
    cdef object text
    if type(arg) is str:
        return <str>arg
    if type(arg) is int:
        try:
            number = arg
        except OverflowError:
            return str(arg)
        magnitude = <unsigned long long>(-(number + 1)) + 1 if number < 0 else <unsigned long long>number
        while True:
            position -= 1
            buffer[position] = <char>(48 + magnitude % 10)
            magnitude //= 10
            if magnitude == 0:
                break
        if number < 0:
            position -= 1
            buffer[position] = 45  # "-"
        return PyUnicode_DecodeASCII(buffer + position, 23 - position, NULL)
    text = str(arg)
    if type(text) is not str:  # __str__ returned a str subclass: ":".join() gives an exact str
        return str.__str__(text)
    return text


def register_model(
    registry,
    name,
    model,
    namespace,
    class_name,
    qualified_name,
    creation_source,
):
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


def decode_scan_batch(reply):
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
    cdef list key_list = keys
    cdef Py_ssize_t index
    for index in range(len(key_list)):
        if type(key_list[index]) is not str:
            return cursor, [_decode_key(key) for key in key_list]
    return cursor, key_list


cdef inline str _decode_key(key):
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
cdef Py_ssize_t _MAX_DIGITS = 18


cdef inline object _invalid_reply(bytes data, Py_ssize_t index, str expected):
    """Return the ``ValueError`` for a SCAN reply holding something else than ``expected`` at ``index``."""
    return ValueError(
        "Invalid SCAN reply: expected %s at byte %d, got %r. The connection is out of sync "
        "with Redis (a proxy or another reader on the same socket?): it is dropped."
        % (expected, index, data[index:index + 16])
    )


cdef inline Py_ssize_t _read_number(bytes data, Py_ssize_t position, str what, Py_ssize_t* value) except -2:
    """Return the offset after the ``digits CRLF`` at ``position`` (``*value``: the number), or -1 if incomplete."""
    cdef const unsigned char* buffer = data
    cdef Py_ssize_t end = len(data)
    cdef Py_ssize_t index = position
    cdef Py_ssize_t number = 0
    cdef unsigned char byte
    while True:
        if index >= end:
            return -1
        byte = buffer[index]
        if 48 <= byte <= 57:
            if index - position >= _MAX_DIGITS:
                raise _invalid_reply(data, index, "%s of at most %d digits" % (what, _MAX_DIGITS))
            number = number * 10 + (byte - 48)
            index += 1
            continue
        if byte == 13 and index > position:
            if index + 1 >= end:
                return -1
            if buffer[index + 1] == 10:
                value[0] = number
                return index + 2
            raise _invalid_reply(data, index, "CRLF after %s" % what)
        raise _invalid_reply(data, index, what)


cdef inline int _check_buffer(object data, object start, str function) except -1:
    """Raise ``TypeError``/``ValueError`` unless ``data`` is bytes and ``start`` an offset inside it."""
    if type(data) is not bytes:
        raise TypeError(
            "%s() reads a bytes buffer, got %s: pass the bytes received from the socket."
            % (function, type(data).__name__)
        )
    if type(start) is not int or start < 0 or start > len(data):
        raise ValueError(
            "%s(start=%r): start must be an int offset from 0 to len(data) (%d)." % (function, start, len(data))
        )
    return 0


def parse_scan_header(data, start):
    """Return ``(cursor, key_count, end)`` for the SCAN reply header starting at ``data[start]``.

    The header is ``*2``, the cursor (a bulk string, or an integer), then the ``*N`` of the keys
    array: ``cursor`` is its ASCII digits as ``bytes`` (``b"0"`` ends the scan), ``key_count`` is
    ``N`` and ``end`` the offset of the first key. Return ``None`` when ``data`` ends before the
    header does (read more bytes and call again). An error reply ``-MESSAGE`` gives
    ``(None, "MESSAGE", end)``. RESP2 and RESP3 send the same header; anything else raises
    ``ValueError`` naming the offset.
    """
    _check_buffer(data, start, "parse_scan_header")
    cdef bytes raw = data
    cdef const unsigned char* buffer = raw
    cdef Py_ssize_t end = len(raw)
    cdef Py_ssize_t position = start
    cdef Py_ssize_t newline, after, number = 0, length = 0, index
    cdef bytes cursor
    if position >= end:
        return None
    cdef unsigned char kind = buffer[position]
    if kind == 45:  # "-": an error reply, one line
        newline = raw.find(b"\r\n", position)
        if newline < 0:
            return None
        return None, raw[position + 1:newline].decode("utf-8", "replace"), newline + 2
    if kind != 42:
        raise _invalid_reply(raw, position, "a SCAN reply (*2)")
    after = _read_number(raw, position + 1, "the length of the reply", &number)
    if after < 0:
        return None
    if number != 2 or after - position != 4:
        raise _invalid_reply(raw, position, "a SCAN reply of 2 elements")
    position = after
    if position >= end:
        return None
    kind = buffer[position]
    if kind == 58:  # ":" an integer cursor
        after = _read_number(raw, position + 1, "a cursor", &number)
        if after < 0:
            return None
        cursor = PyBytes_FromStringAndSize(<const char*>buffer + position + 1, after - 2 - position - 1)
        position = after
    elif kind == 36:  # "$" a bulk string cursor
        after = _read_number(raw, position + 1, "the length of the cursor", &length)
        if after < 0:
            return None
        if length < 1 or length > _MAX_DIGITS:
            raise _invalid_reply(raw, position, "a cursor of 1 to %d digits" % _MAX_DIGITS)
        if after + length + 2 > end:
            return None
        for index in range(after, after + length):
            if not (48 <= buffer[index] <= 57):
                raise _invalid_reply(raw, after, "a cursor of 1 to %d digits" % _MAX_DIGITS)
        cursor = PyBytes_FromStringAndSize(<const char*>buffer + after, length)
        position = after + length
        if buffer[position] != 13 or buffer[position + 1] != 10:
            raise _invalid_reply(raw, position, "CRLF after the cursor")
        position += 2
    else:
        raise _invalid_reply(raw, position, "a cursor")
    if position >= end:
        return None
    if buffer[position] != 42:
        raise _invalid_reply(raw, position, "the keys array (*)")
    after = _read_number(raw, position + 1, "the number of keys", &number)
    if after < 0:
        return None
    return cursor, number, after


cdef inline object _decode_utf8_key(bytes raw, const unsigned char* buffer, Py_ssize_t first, Py_ssize_t length):
    """Return the ``str`` of the UTF-8 key of ``length`` bytes at ``raw[first]`` (``buffer`` is ``raw``'s bytes).

    ASCII keys (the common case) are copied into a new ``str`` without the UTF-8 decoder: the
    same string, in less than half the time.
    """
    cdef const unsigned char* key = buffer + first
    cdef Py_ssize_t index
    cdef unsigned char bits = 0
    cdef object text
    for index in range(length):
        bits |= key[index]
    if bits & 128:
        return _decode_utf8_text(raw, first, length)
    text = PyUnicode_New(length, 127)
    memcpy(PyUnicode_DATA(text), key, length)
    return text


cdef object _decode_utf8_text(bytes raw, Py_ssize_t first, Py_ssize_t length):
    """Return the ``str`` of the non-ASCII key of ``length`` bytes at ``raw[first]``, or raise ``ValueError``."""
    try:
        return PyUnicode_DecodeUTF8(<const char*>raw + first, length, NULL)
    except UnicodeDecodeError as exc:
        raise ValueError(
            "SCAN returned the key %r, which is not valid UTF-8: limpyd keys are str. "
            "Rename or delete that key, or scan it with a client not using limpyd." % (raw[first:first + length],)
        ) from exc


def decode_scan_keys(data, start, count):
    """Return ``(keys, end)``: up to ``count`` keys decoded from the bulk strings at ``data[start]``.

    Decoding stops at the first key ``data`` does not hold whole: ``end`` is the offset of that
    key (or just after the last one), where the next call starts once more bytes arrived. Keys
    are UTF-8, as ``decode_scan_batch`` wants them; a key that is not raises ``ValueError``, and
    so does anything but a bulk string.
    """
    _check_buffer(data, start, "decode_scan_keys")
    if type(count) is not int or count < 0:
        raise ValueError("decode_scan_keys(count=%r): count must be an int >= 0." % (count,))
    cdef bytes raw = data
    cdef const unsigned char* buffer = raw
    cdef Py_ssize_t end = len(raw)
    cdef Py_ssize_t position = start
    cdef Py_ssize_t remaining = end if count > end else count
    cdef Py_ssize_t index, digits_start, digits_stop, length, first, stop, decoded = 0
    cdef Py_ssize_t max_digits = _MAX_DIGITS
    cdef unsigned char byte
    # one slot per key the buffer can hold whole (6 bytes at least: "$0\r\n\r\n"), so the keys
    # decoded never outnumber the slots; the slots left empty are cut off at the end
    cdef Py_ssize_t slots = (end - position) // 6
    cdef list keys = PyList_New(remaining if remaining < slots else slots)
    cdef object key
    try:
        while decoded < remaining:
            if position >= end:
                break
            if buffer[position] != 36:  # "$"
                raise _invalid_reply(raw, position, "a key ($)")
            digits_start = position + 1
            index = digits_start
            digits_stop = digits_start + max_digits
            if digits_stop > end:
                digits_stop = end
            length = 0
            while index < digits_stop:
                byte = buffer[index]
                if byte < 48 or byte > 57:
                    break
                length = length * 10 + (byte - 48)
                index += 1
            if index >= end:
                break
            byte = buffer[index]
            if byte == 13 and index > digits_start:
                if index + 1 >= end:
                    break
                if buffer[index + 1] != 10:
                    raise _invalid_reply(raw, index, "CRLF after the length of a key")
            elif 48 <= byte <= 57:
                raise _invalid_reply(raw, index, "the length of a key of at most %d digits" % max_digits)
            else:
                raise _invalid_reply(raw, index, "the length of a key")
            first = index + 2
            stop = first + length
            if stop + 2 > end:
                break
            if buffer[stop] != 13 or buffer[stop + 1] != 10:
                raise _invalid_reply(raw, stop, "CRLF after a key")
            key = _decode_utf8_key(raw, buffer, first, length)
            Py_INCREF(key)
            PyList_SET_ITEM(keys, decoded, key)
            decoded += 1
            position = stop + 2
    finally:
        Py_SET_SIZE(keys, decoded)  # the slots not filled (NULL) are not part of the list
    return keys, position
