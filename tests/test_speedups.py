"""Parity and guard tests for the two speedups implementations.

Every table row goes through the module given by the ``speedups`` fixture (``py``: the pure-Python
twin, ``cy``: the compiled module) *and* through ``limpyd._speedups_py`` (the specification). Both
outcomes must be equal to each other and to the expected value: same result (value and types), or
same exception type, message and chaining.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

import limpyd
from limpyd import _speedups_py
from limpyd.exceptions import ImplementationError

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_EXTENSIONS = os.environ.get("LIMPYD_REQUIRE_EXTENSIONS", "").strip() not in ("", "0")
NO_EXTENSIONS = os.environ.get("LIMPYD_NO_EXTENSIONS", "").strip() not in ("", "0")


# ---------------------------------------------------------------------- outcome helpers


def _types(value: Any) -> Any:
    """Return the exact types of ``value`` and, for tuples and lists, of their items."""
    if type(value) in (tuple, list):
        return (type(value), tuple(_types(item) for item in value))
    return type(value)


def outcome(func: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple:
    """Return a comparable summary of calling ``func``: its result, or its exception."""
    try:
        result = func(*args, **kwargs)
    except Exception as exc:  # we compare whatever is raised
        cause = exc.__cause__
        return (
            "raise",
            type(exc),
            str(exc),
            type(cause) if cause is not None else None,
            exc.__suppress_context__,
        )
    return ("ok", _types(result), result)


def ok(value: Any) -> tuple:
    """Return the outcome expected for a call returning ``value``."""
    return ("ok", _types(value), value)


def raises(
    exc_type: type, message: str, cause: "type | None" = None, suppress_context: bool = False
) -> tuple:
    """Return the outcome expected for a call raising ``exc_type(message)``."""
    return ("raise", exc_type, message, cause, suppress_context)


def assert_parity(speedups: Any, name: str, args: tuple, expected: tuple) -> None:
    """Assert that ``name(*args)`` gives ``expected`` in the tested module and in the twin."""
    tested = outcome(getattr(speedups, name), *args)
    reference = outcome(getattr(_speedups_py, name), *args)
    assert tested == reference, "%s(%r) differs from the twin" % (name, args)
    assert tested == expected


# ---------------------------------------------------------------------- make_key


class Text(str):
    """A str subclass with an overridden ``__str__``."""

    def __str__(self) -> str:
        return "text(%s)" % str.__str__(self)


class PlainText(str):
    """A str subclass keeping ``str.__str__``."""


class Exploding:
    """An object whose ``__str__`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class NotAString:
    """An object whose ``__str__`` returns something that is not a str."""

    def __str__(self) -> Any:
        return 42


class SubclassStr:
    """An object whose ``__str__`` returns a str subclass (``str()`` keeps it, ``join`` does not)."""

    def __str__(self) -> str:
        return PlainText("sub")


class SubclassOwnStr:
    """An object whose ``__str__`` returns a str subclass that overrides ``__str__`` itself."""

    def __str__(self) -> str:
        return Text("v")


class Pk(int):
    """An int subclass with its own ``__str__`` (must not take the exact-int fast path)."""

    def __str__(self) -> str:
        return "pk%d" % int(self)


HUGE = 2**100

MAKE_KEY_CASES = [
    pytest.param((), ok(""), id="no-args"),
    pytest.param(("a",), ok("a"), id="one-str"),
    pytest.param(("",), ok(""), id="one-empty"),
    pytest.param(("a", 1, "clé"), ok("a:1:clé"), id="spec-example"),
    pytest.param(("ns", "bike", "collection"), ok("ns:bike:collection"), id="all-str"),
    pytest.param(("", "bike", "1", "name"), ok(":bike:1:name"), id="empty-namespace"),
    pytest.param(("a", "", "b"), ok("a::b"), id="empty-middle"),
    pytest.param(("", ""), ok(":"), id="two-empty"),
    pytest.param(("a:b", "c"), ok("a:b:c"), id="separator-inside"),
    pytest.param((":",), ok(":"), id="separator-alone"),
    pytest.param(("clé", "été"), ok("clé:été"), id="non-ascii"),
    pytest.param(("🚲", "😀x"), ok("🚲:😀x"), id="emoji"),
    pytest.param(("\x00", "\n"), ok("\x00:\n"), id="control-chars"),
    pytest.param((0,), ok("0"), id="int-zero"),
    pytest.param((1,), ok("1"), id="int-one"),
    pytest.param((-1,), ok("-1"), id="int-negative"),
    pytest.param((9,), ok("9"), id="int-9"),
    pytest.param((10,), ok("10"), id="int-10"),
    pytest.param((123456789,), ok("123456789"), id="int-many-digits"),
    pytest.param((2**63 - 1,), ok("9223372036854775807"), id="int-llong-max"),
    pytest.param((-(2**63),), ok("-9223372036854775808"), id="int-llong-min"),
    pytest.param((2**63,), ok("9223372036854775808"), id="int-llong-max+1"),
    pytest.param((-(2**63) - 1,), ok("-9223372036854775809"), id="int-llong-min-1"),
    pytest.param((2**64,), ok("18446744073709551616"), id="int-2**64"),
    pytest.param((HUGE,), ok(str(HUGE)), id="int-huge"),
    pytest.param((-HUGE,), ok(str(-HUGE)), id="int-huge-negative"),
    pytest.param(("ns", "bike", 12, "name"), ok("ns:bike:12:name"), id="int-pk-in-middle"),
    pytest.param(("a", 0, -5, HUGE), ok("a:0:-5:%d" % HUGE), id="ints-mixed"),
    pytest.param((True,), ok("True"), id="bool-true"),
    pytest.param(("a", False), ok("a:False"), id="bool-false"),
    pytest.param((Pk(7),), ok("pk7"), id="int-subclass"),
    pytest.param(("a", Pk(7)), ok("a:pk7"), id="int-subclass-second"),
    pytest.param((1.5,), ok("1.5"), id="float"),
    pytest.param(("a", 1.0, -0.0, float("inf")), ok("a:1.0:-0.0:inf"), id="floats"),
    pytest.param((None,), ok("None"), id="none"),
    pytest.param(("a", None), ok("a:None"), id="none-second"),
    pytest.param((b"x",), ok("b'x'"), id="bytes"),
    pytest.param(("a", "clé".encode()), ok("a:b'cl\\xc3\\xa9'"), id="bytes-non-ascii"),
    pytest.param((b"",), ok("b''"), id="bytes-empty"),
    pytest.param((Text("v"),), ok("text(v)"), id="str-subclass-own-str"),
    pytest.param(("a", Text("v")), ok("a:text(v)"), id="str-subclass-own-str-second"),
    pytest.param((Text("v"), "a"), ok("text(v):a"), id="str-subclass-own-str-first"),
    pytest.param((PlainText("p"),), ok("p"), id="str-subclass"),
    pytest.param((SubclassStr(),), ok("sub"), id="str-returns-str-subclass"),
    pytest.param(("a", SubclassStr()), ok("a:sub"), id="str-returns-str-subclass-second"),
    pytest.param((SubclassOwnStr(),), ok("v"), id="str-returns-str-subclass-own-str"),
    pytest.param((SubclassOwnStr(), 1), ok("v:1"), id="str-returns-str-subclass-own-str-first"),
    pytest.param((("t", 1),), ok("('t', 1)"), id="tuple-part"),
    pytest.param((Exploding(),), raises(RuntimeError, "no str for you"), id="str-raises"),
    pytest.param(("a", 1, Exploding()), raises(RuntimeError, "no str for you"), id="str-raises-last"),
    pytest.param(
        (NotAString(),), raises(TypeError, "__str__ returned non-string (type int)"), id="str-returns-int"
    ),
    pytest.param(
        ("a", NotAString()),
        raises(TypeError, "__str__ returned non-string (type int)"),
        id="str-returns-int-second",
    ),
    pytest.param(tuple("abcdefghij") * 100, ok(":".join("abcdefghij" * 100)), id="many-str"),
    pytest.param(tuple(range(1000)), ok(":".join(map(str, range(1000)))), id="many-ints"),
]


@pytest.mark.parametrize("args, expected", MAKE_KEY_CASES)
def test_make_key(speedups: Any, args: tuple, expected: tuple) -> None:
    assert_parity(speedups, "make_key", args, expected)


def test_make_key_result_is_exact_str(speedups: Any) -> None:
    for args in ((SubclassStr(),), (PlainText("p"),), (Text("v"),), (1,), ("a",), ()):
        assert type(speedups.make_key(*args)) is str, args


def test_make_key_rejects_keywords(speedups: Any) -> None:
    expected = raises(TypeError, "make_key() got an unexpected keyword argument 'sep'")
    assert (
        outcome(speedups.make_key, "a", sep="/") == outcome(_speedups_py.make_key, "a", sep="/") == expected
    )


# ---------------------------------------------------------------------- register_model


def fake_model(
    name: str, source: "tuple | None", module: str = "app.models", qualname: "str | None" = None
) -> type:
    """Return a small class standing for a model registered on a database."""
    attrs: dict = {"__module__": module, "__qualname__": qualname or name}
    if source is not None:
        attrs["_creation_source"] = source
    return type(name, (), attrs)


BIKE = fake_model("Bike", ("app/models.py", 12))
LOWER_BIKE = fake_model("bike", ("app/models.py", 12))
NO_SOURCE = fake_model("Bike", None, module="legacy")
NESTED = fake_model("Bike", ("app/models.py", 30), module="app.models", qualname="Shop.Bike")
NEW = fake_model("Bike", ("app/other.py", 7), module="app.other")

CONFLICT_TAIL = ": give one of them another `namespace` (or class name), or put it on another database."


def conflict_message(
    namespace: str, name: str, new: tuple, old: tuple, new_qualname: str, old_qualname: str
) -> str:
    """Return the full registry conflict message (both classes, their source locations and the fix)."""
    return (
        'A model with namespace "%s" and name "%s" is already defined on this database '
        '(Attempt on "%s" line %s ; Already defined on "%s" line %s). %s clashes with %s%s'
        % (namespace, name, new[0], new[1], old[0], old[1], new_qualname, old_qualname, CONFLICT_TAIL)
    )


# (registry, (name, model, namespace, class_name, qualified_name, creation_source), expected result)
REGISTER_CASES = [
    pytest.param(
        {}, ("shop:bike", NEW, "shop", "Bike", "app.other.Bike", ("app/other.py", 7)), ok(NEW), id="free-name"
    ),
    pytest.param(
        {"shop:car": BIKE},
        ("shop:bike", NEW, "shop", "Bike", "app.other.Bike", ("app/other.py", 7)),
        ok(NEW),
        id="other-name-taken",
    ),
    pytest.param(
        {"shop:bike": BIKE},
        ("shop:bike", NEW, "shop", "Bike", "app.models.Bike", ("app/models.py", 12)),
        ok(BIKE),
        id="same-definition-reimported",
    ),
    pytest.param(
        {"shop:bike": BIKE},
        ("shop:bike", NEW, "shop", "Bike", "app.models.Bike", ["app/models.py", 12]),
        raises(
            ImplementationError,
            conflict_message(
                "shop",
                "Bike",
                ["app/models.py", 12],
                ("app/models.py", 12),
                "app.models.Bike",
                "app.models.Bike",
            ),
        ),
        id="source-as-list-is-not-equal",
    ),
    pytest.param(
        {"shop:bike": BIKE},
        ("shop:bike", NEW, "shop", "Bike", "app.other.Bike", ("app/other.py", 7)),
        raises(
            ImplementationError,
            conflict_message(
                "shop",
                "Bike",
                ("app/other.py", 7),
                ("app/models.py", 12),
                "app.other.Bike",
                "app.models.Bike",
            ),
        ),
        id="different-source",
    ),
    pytest.param(
        {"shop:bike": BIKE},
        ("shop:bike", NEW, "shop", "Bike", "app.models.Bike", ("app/models.py", 13)),
        raises(
            ImplementationError,
            conflict_message(
                "shop",
                "Bike",
                ("app/models.py", 13),
                ("app/models.py", 12),
                "app.models.Bike",
                "app.models.Bike",
            ),
        ),
        id="same-file-other-line",
    ),
    pytest.param(
        {"shop:bike": BIKE},
        ("shop:bike", LOWER_BIKE, "shop", "bike", "app.models.bike", ("app/models.py", 12)),
        raises(
            ImplementationError,
            conflict_message(
                "shop",
                "bike",
                ("app/models.py", 12),
                ("app/models.py", 12),
                "app.models.bike",
                "app.models.Bike",
            ),
        ),
        id="different-class-name-same-source",
    ),
    pytest.param(
        {":bike": NESTED},
        (":bike", NEW, "", "Bike", "app.other.Bike", ("app/other.py", 7)),
        raises(
            ImplementationError,
            conflict_message(
                "",
                "Bike",
                ("app/other.py", 7),
                ("app/models.py", 30),
                "app.other.Bike",
                "app.models.Shop.Bike",
            ),
        ),
        id="empty-namespace-nested-qualname",
    ),
    pytest.param(
        {"shop:bike": NO_SOURCE},
        ("shop:bike", NEW, "shop", "Bike", "app.other.Bike", ("app/other.py", 7)),
        raises(
            ImplementationError,
            conflict_message(
                "shop",
                "Bike",
                ("app/other.py", 7),
                ("<unknown>", "<unknown>"),
                "app.other.Bike",
                "legacy.Bike",
            ),
        ),
        id="existing-without-source",
    ),
    pytest.param(
        {"clé:vélo": BIKE},
        ("clé:vélo", NEW, "clé", "Vélo", "app.other.Vélo", ("app/été.py", 7)),
        raises(
            ImplementationError,
            conflict_message(
                "clé", "Vélo", ("app/été.py", 7), ("app/models.py", 12), "app.other.Vélo", "app.models.Bike"
            ),
        ),
        id="non-ascii",
    ),
    pytest.param(
        {"shop:bike": BIKE},
        ("shop:bike", NEW, "shop", "Bike", "app.other.Bike", ("app/other.py",)),
        raises(IndexError, "tuple index out of range"),
        id="short-creation-source",
    ),
    pytest.param(
        None,
        ("shop:bike", NEW, "shop", "Bike", "app.other.Bike", ("app/other.py", 7)),
        raises(AttributeError, "'NoneType' object has no attribute 'get'"),
        id="registry-none",
    ),
]


@pytest.mark.parametrize("registry, args, expected", REGISTER_CASES)
def test_register_model(speedups: Any, registry: "dict | None", args: tuple, expected: tuple) -> None:
    copies = {}
    results = {}
    for label, module in (("tested", speedups), ("reference", _speedups_py)):
        copies[label] = None if registry is None else dict(registry)
        results[label] = outcome(module.register_model, copies[label], *args)
    assert results["tested"] == results["reference"]
    assert results["tested"] == expected
    assert copies["tested"] == copies["reference"]
    if registry is None:
        return
    name, model = args[0], args[1]
    if expected[0] == "ok" and name not in registry:
        assert copies["tested"] == {**registry, name: model}  # registered
    else:
        assert copies["tested"] == registry  # unchanged by a re-import or a conflict
    for key, value in registry.items():
        assert copies["tested"][key] is value


def test_register_model_message_prefix_and_classes(speedups: Any) -> None:
    registry = {"ns:name": fake_model("Name", ("file2", 34), module="pkg.old", qualname="Outer.Name")}
    with pytest.raises(ImplementationError) as info:
        speedups.register_model(registry, "ns:name", object, "NS", "Name", "pkg.new.Name", ("file", 12))
    message = str(info.value)
    assert message.startswith(
        'A model with namespace "NS" and name "Name" is already defined on this database '
        '(Attempt on "file" line 12 ; Already defined on "file2" line 34)'
    )
    assert "pkg.new.Name" in message and "pkg.old.Outer.Name" in message
    assert list(registry) == ["ns:name"]


def test_register_model_registers_the_same_object(speedups: Any) -> None:
    registry: dict = {}
    model = fake_model("Bike", ("f.py", 1))
    assert (
        speedups.register_model(registry, "ns:bike", model, "ns", "Bike", "app.models.Bike", ("f.py", 1))
        is model
    )
    assert registry["ns:bike"] is model
    again = fake_model("Bike", ("f.py", 1))
    assert (
        speedups.register_model(registry, "ns:bike", again, "ns", "Bike", "app.models.Bike", ("f.py", 1))
        is model
    )
    assert registry == {"ns:bike": model}


def test_register_model_accepts_any_mapping(speedups: Any) -> None:
    """The twin only needs ``get`` and item assignment: so must the compiled module."""

    class Registry(dict):
        pass

    registry = Registry()
    model = fake_model("Bike", ("f.py", 1))
    assert speedups.register_model(registry, "ns:bike", model, "ns", "Bike", "m.Bike", ("f.py", 1)) is model
    assert registry == {"ns:bike": model}


# ---------------------------------------------------------------------- decode_scan_batch


class Key(str):
    """A str subclass used as a key."""


HUGE_STR_KEYS = ["ns:model:%d:field" % i for i in range(100_000)]
HUGE_BYTES_KEYS = [key.encode() for key in HUGE_STR_KEYS]
LAST_CURSOR = 2**64 - 1

SCAN_CASES = [
    pytest.param([b"0", []], ok((0, [])), id="bytes-cursor-zero-empty"),
    pytest.param(["0", []], ok((0, [])), id="str-cursor-zero"),
    pytest.param([0, []], ok((0, [])), id="int-cursor-zero"),
    pytest.param([b"17", ["a", "b"]], ok((17, ["a", "b"])), id="bytes-cursor-str-keys"),
    pytest.param(["17", ["a"]], ok((17, ["a"])), id="str-cursor"),
    pytest.param([17, ["a"]], ok((17, ["a"])), id="int-cursor"),
    pytest.param([str(LAST_CURSOR).encode(), []], ok((LAST_CURSOR, [])), id="cursor-2**64-1"),
    pytest.param([" 5\n", []], ok((5, [])), id="cursor-with-spaces"),
    pytest.param(["0", [b"a", b"b"]], ok((0, ["a", "b"])), id="bytes-keys"),
    pytest.param(["0", ["clé".encode(), "🚲".encode()]], ok((0, ["clé", "🚲"])), id="bytes-keys-non-ascii"),
    pytest.param(["0", ["clé", "🚲"]], ok((0, ["clé", "🚲"])), id="str-keys-non-ascii"),
    pytest.param(["0", ["a", b"b", "c"]], ok((0, ["a", "b", "c"])), id="mixed-keys"),
    pytest.param(["0", ["a", "b", b"c"]], ok((0, ["a", "b", "c"])), id="mixed-bytes-last"),
    pytest.param(["0", [bytearray(b"ba")]], ok((0, ["ba"])), id="bytearray-key"),
    pytest.param(["0", [b""]], ok((0, [""])), id="empty-bytes-key"),
    pytest.param(["0", [""]], ok((0, [""])), id="empty-str-key"),
    pytest.param(["0", ["a:b:c"]], ok((0, ["a:b:c"])), id="separators-in-key"),
    pytest.param(["0", (b"a", "b")], ok((0, ["a", "b"])), id="tuple-of-keys"),
    pytest.param(["0", ("a", "b")], ok((0, ["a", "b"])), id="tuple-of-str-keys"),
    pytest.param(["0", ()], ok((0, [])), id="empty-tuple"),
    pytest.param(("3", ["a"]), ok((3, ["a"])), id="reply-tuple"),
    pytest.param(["0", [Key("k")]], ok((0, ["k"])), id="str-subclass-key"),
    pytest.param(["0", ["a", Text("k")]], ok((0, ["a", "text(k)"])), id="str-subclass-key-own-str"),
    pytest.param(["12", HUGE_STR_KEYS], ok((12, HUGE_STR_KEYS)), id="huge-str-batch"),
    pytest.param([b"12", HUGE_BYTES_KEYS], ok((12, HUGE_STR_KEYS)), id="huge-bytes-batch"),
    pytest.param(
        ["12", HUGE_STR_KEYS[:-1] + [b"last"]],
        ok((12, HUGE_STR_KEYS[:-1] + ["last"])),
        id="huge-batch-bytes-last",
    ),
    pytest.param(
        [],
        raises(
            ValueError,
            "A SCAN reply must be [cursor, keys], got 0 elements: []. "
            "Pass the unmodified reply of a SCAN command.",
        ),
        id="reply-empty",
    ),
    pytest.param(
        [b"0"],
        raises(
            ValueError,
            "A SCAN reply must be [cursor, keys], got 1 elements: [b'0']. "
            "Pass the unmodified reply of a SCAN command.",
        ),
        id="reply-short",
    ),
    pytest.param(
        [b"0", [], []],
        raises(
            ValueError,
            "A SCAN reply must be [cursor, keys], got 3 elements: [b'0', [], []]. "
            "Pass the unmodified reply of a SCAN command.",
        ),
        id="reply-long",
    ),
    pytest.param(None, raises(TypeError, "object of type 'NoneType' has no len()"), id="reply-none"),
    pytest.param(
        [b"abc", []],
        raises(
            ValueError,
            "Invalid SCAN cursor b'abc': expected the integer cursor Redis sends back "
            "(as bytes, str or int).",
            None,
            True,
        ),
        id="cursor-not-a-number",
    ),
    pytest.param(
        ["", []],
        raises(
            ValueError,
            "Invalid SCAN cursor '': expected the integer cursor Redis sends back (as bytes, str or int).",
            None,
            True,
        ),
        id="cursor-empty",
    ),
    pytest.param(
        ["1.5", []],
        raises(
            ValueError,
            "Invalid SCAN cursor '1.5': expected the integer cursor Redis sends back (as bytes, str or int).",
            None,
            True,
        ),
        id="cursor-decimal-str",
    ),
    pytest.param(
        [None, []],
        raises(
            ValueError,
            "Invalid SCAN cursor None: expected the integer cursor Redis sends back (as bytes, str or int).",
            None,
            True,
        ),
        id="cursor-none",
    ),
    pytest.param(
        [[1], []],
        raises(
            ValueError,
            "Invalid SCAN cursor [1]: expected the integer cursor Redis sends back (as bytes, str or int).",
            None,
            True,
        ),
        id="cursor-list",
    ),
    pytest.param(["0", None], raises(TypeError, "'NoneType' object is not iterable"), id="keys-none"),
    pytest.param(
        ["0", [b"ok", b"\xff\xfe"]],
        raises(
            ValueError,
            "SCAN returned the key b'\\xff\\xfe', which is not valid UTF-8: limpyd keys are str. "
            "Rename or delete that key, or scan it with a client not using limpyd.",
            UnicodeDecodeError,
            True,
        ),
        id="key-not-utf8",
    ),
    pytest.param(
        ["0", [bytearray(b"\xc3")]],
        raises(
            ValueError,
            "SCAN returned the key b'\\xc3', which is not valid UTF-8: limpyd keys are str. "
            "Rename or delete that key, or scan it with a client not using limpyd.",
            UnicodeDecodeError,
            True,
        ),
        id="bytearray-key-not-utf8",
    ),
    pytest.param(
        ["0", ["a", 1]],
        raises(TypeError, "Invalid key 1 of type int in a SCAN reply: expected str or bytes."),
        id="key-int",
    ),
    pytest.param(
        ["0", [None]],
        raises(TypeError, "Invalid key None of type NoneType in a SCAN reply: expected str or bytes."),
        id="key-none",
    ),
]


@pytest.mark.parametrize("reply, expected", SCAN_CASES)
def test_decode_scan_batch(speedups: Any, reply: Any, expected: tuple) -> None:
    assert_parity(speedups, "decode_scan_batch", (reply,), expected)


def test_decode_scan_batch_memoryview_key(speedups: Any) -> None:
    key = memoryview(b"a")  # its repr holds its address: the same object goes through both
    expected = raises(
        TypeError, "Invalid key %r of type memoryview in a SCAN reply: expected str or bytes." % key
    )
    assert_parity(speedups, "decode_scan_batch", (["0", ["a", key]],), expected)


@pytest.mark.parametrize(
    "keys", [[], ["a", "b"], ["clé"], HUGE_STR_KEYS], ids=["empty", "small", "non-ascii", "huge"]
)
def test_decode_scan_batch_returns_str_list_as_is(speedups: Any, keys: list) -> None:
    cursor, decoded = speedups.decode_scan_batch([b"0", keys])
    assert cursor == 0
    assert decoded is keys


def test_decode_scan_batch_copies_other_lists(speedups: Any) -> None:
    keys = ["a", b"b"]
    cursor, decoded = speedups.decode_scan_batch(["4", keys])
    assert decoded is not keys and decoded == ["a", "b"] and keys == ["a", b"b"]

    class KeyList(list):
        pass

    subclassed = KeyList(["a"])
    cursor, decoded = speedups.decode_scan_batch(["4", subclassed])
    assert type(decoded) is list and decoded == ["a"]


# ---------------------------------------------------------------------- guards


MODULE_NAMES = ["make_key", "register_model", "decode_scan_batch", "parse_scan_header", "decode_scan_keys"]


def _compiled_module() -> Any:
    """Return ``limpyd._speedups``, or skip (fail under REQUIRE) when it is not importable."""
    if NO_EXTENSIONS:
        pytest.skip("LIMPYD_NO_EXTENSIONS is set: the compiled module is not tested")
    try:
        return importlib.import_module("limpyd._speedups")
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            pytest.fail("LIMPYD_REQUIRE_EXTENSIONS is set but limpyd._speedups is not importable: %s" % exc)
        pytest.skip("limpyd._speedups is not compiled: %s" % exc)


def test_all_is_shared(speedups: Any) -> None:
    from limpyd import speedups as dispatcher

    assert speedups.__all__ == _speedups_py.__all__ == dispatcher.__all__ == MODULE_NAMES
    for name in MODULE_NAMES:
        assert callable(getattr(speedups, name))


def _bare(signature: inspect.Signature) -> inspect.Signature:
    """Return ``signature`` without annotations (the compiled module has none)."""
    return signature.replace(
        parameters=[p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_signatures_match(speedups: Any, name: str) -> None:
    reference = _bare(inspect.signature(getattr(_speedups_py, name)))
    assert _bare(inspect.signature(getattr(speedups, name))) == reference
    # embedsignature: the compiled docstring starts with the signature, with no C types in it
    func = getattr(speedups, name)
    if speedups is not _speedups_py:
        assert func.__doc__.splitlines()[0] == name + str(reference)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_docstrings_match(speedups: Any, name: str) -> None:
    reference = inspect.getdoc(getattr(_speedups_py, name))
    assert reference, "the twin must document %s" % name
    doc = inspect.getdoc(getattr(speedups, name))
    if speedups is not _speedups_py:
        signature_line, _, doc = doc.partition("\n\n")
        assert signature_line.startswith(name + "(")
    assert doc == reference


@pytest.mark.cython
def test_compiled_module_is_compiled() -> None:
    compiled = _compiled_module()
    assert compiled.__file__.endswith((".so", ".pyd"))
    for name in MODULE_NAMES:
        assert not inspect.isfunction(getattr(compiled, name)), "%s is a Python function" % name


def test_dispatcher_selection() -> None:
    from limpyd import speedups as dispatcher

    if REQUIRE_EXTENSIONS:
        assert dispatcher.IMPLEMENTATION == "cython"
        assert dispatcher.USING_EXTENSIONS is True
    elif NO_EXTENSIONS:
        assert dispatcher.IMPLEMENTATION == "python"
        assert dispatcher.USING_EXTENSIONS is False
    else:
        try:
            importlib.import_module("limpyd._speedups")
        except ImportError:
            compiled = False
        else:
            compiled = True
        assert dispatcher.USING_EXTENSIONS is compiled
        assert dispatcher.IMPLEMENTATION == ("cython" if compiled else "python")
    source = importlib.import_module("limpyd._speedups") if dispatcher.USING_EXTENSIONS else _speedups_py
    for name in MODULE_NAMES:
        assert getattr(dispatcher, name) is getattr(source, name)


def test_utils_uses_the_dispatcher() -> None:
    from limpyd import speedups as dispatcher
    from limpyd import utils

    assert utils.make_key is dispatcher.make_key


def _reload_dispatcher(monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """Import a fresh ``limpyd.speedups`` under ``env``; monkeypatch restores the original."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    original = sys.modules["limpyd.speedups"]
    monkeypatch.setattr(limpyd, "speedups", original, raising=False)
    monkeypatch.delitem(sys.modules, "limpyd.speedups")
    fresh = importlib.import_module("limpyd.speedups")
    assert fresh is not original
    return fresh


@pytest.mark.parametrize("value", ["1", "yes", "true", " 1 "])
def test_no_extensions_forces_python(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    fresh = _reload_dispatcher(monkeypatch, LIMPYD_NO_EXTENSIONS=value)
    assert fresh.IMPLEMENTATION == "python"
    assert fresh.USING_EXTENSIONS is False
    for name in MODULE_NAMES:
        assert getattr(fresh, name) is getattr(_speedups_py, name)


@pytest.mark.parametrize("value", ["0", "", " ", " 0 "])
def test_no_extensions_unset_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    fresh = _reload_dispatcher(monkeypatch, LIMPYD_NO_EXTENSIONS=value)
    try:
        compiled = importlib.import_module("limpyd._speedups")
    except ImportError:
        if REQUIRE_EXTENSIONS:
            pytest.fail("LIMPYD_REQUIRE_EXTENSIONS is set but limpyd._speedups is not importable")
        compiled = None
    if compiled is None:
        assert fresh.IMPLEMENTATION == "python" and fresh.USING_EXTENSIONS is False
    else:
        assert fresh.IMPLEMENTATION == "cython" and fresh.USING_EXTENSIONS is True
        assert fresh.make_key is compiled.make_key


def test_reload_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    original = sys.modules["limpyd.speedups"]
    with monkeypatch.context() as patch:
        fresh = _reload_dispatcher(patch, LIMPYD_NO_EXTENSIONS="1")
        assert sys.modules["limpyd.speedups"] is fresh
    assert sys.modules["limpyd.speedups"] is original
    assert limpyd.speedups is original


def test_pyx_mirrors_the_twin_in_order() -> None:
    """Sync rule: the ``.pyx`` defines the twin's public functions, in the same order."""
    twin = ast.parse((ROOT / "limpyd" / "_speedups_py.py").read_text(encoding="utf-8"))
    twin_names = [node.name for node in twin.body if isinstance(node, ast.FunctionDef)]
    pyx = (ROOT / "limpyd" / "_speedups.pyx").read_text(encoding="utf-8")
    pyx_names = re.findall(r"^c?p?def (\w+)\(", pyx, flags=re.MULTILINE)
    assert [name for name in twin_names if not name.startswith("_")] == MODULE_NAMES
    assert [name for name in pyx_names if not name.startswith("_")] == MODULE_NAMES
    helpers = re.findall(r"^cdef inline \w+ (\w+)\(", pyx, flags=re.MULTILINE)
    for name in twin_names:
        if name.startswith("_"):
            assert name in helpers, "the .pyx has no %s helper" % name


def _imports_of(path: Path) -> set:
    """Return the absolute module names imported by the Python file ``path``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import inside limpyd/
                base = "limpyd" + ("." + base if base else "")
            names.add(base)
            names.update("%s.%s" % (base, alias.name) for alias in node.names)
    return names


def test_only_the_dispatcher_imports_the_compiled_module() -> None:
    offenders = []
    for path in sorted((ROOT / "limpyd").rglob("*.py")):
        if path.name == "speedups.py" and path.parent.name == "limpyd":
            continue
        if "limpyd._speedups" in _imports_of(path):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
    assert "limpyd._speedups" in _imports_of(ROOT / "limpyd" / "speedups.py")


@pytest.mark.parametrize(
    "name, args",
    [
        ("register_model", ()),
        ("register_model", (None,) * 6),
        ("register_model", (None,) * 8),
        ("decode_scan_batch", ()),
        ("decode_scan_batch", ([b"0", []], None)),
    ],
)
def test_wrong_arity(speedups: Any, name: str, args: tuple) -> None:
    """Arity errors come from the interpreter: Cython words them its own way, only the type is shared."""
    tested = outcome(getattr(speedups, name), *args)
    reference = outcome(getattr(_speedups_py, name), *args)
    assert tested[:2] == reference[:2] == ("raise", TypeError)
    assert tested[2].startswith(name + "() ")
