# cython: language_level=3, embedsignature=True
"""Compiled implementation of limpyd's speedups.

Mirrors ``limpyd/_speedups_py.py`` (the specification) function by function: same names,
signatures, results, exception types and messages. Import the functions from
``limpyd.speedups``, which picks one of the two implementations once.
"""

from cpython.unicode cimport PyUnicode_DecodeASCII

from limpyd.exceptions import ImplementationError

__all__ = ["make_key", "register_model", "decode_scan_batch"]


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
