"""Pick the speedups implementation once, at import: compiled ``_speedups`` or the Python twin.

This is the only module importing ``limpyd._speedups``; everything else imports the functions
from here (``from limpyd.speedups import make_key``). ``LIMPYD_NO_EXTENSIONS`` (non-empty and
not ``0``) forces the pure-Python twin even when the compiled module exists; otherwise a missing
compiled module falls back to the twin silently: the runtime never fails over it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

__all__ = ["make_key", "register_model", "decode_scan_batch", "parse_scan_header", "decode_scan_keys"]


def _env_flag(name: str) -> bool:
    """Return whether the env var ``name`` is set (non-empty and not ``0``)."""
    return os.environ.get(name, "").strip() not in ("", "0")


NO_EXTENSIONS = _env_flag("LIMPYD_NO_EXTENSIONS")

if TYPE_CHECKING or NO_EXTENSIONS:
    from limpyd._speedups_py import (
        decode_scan_batch,
        decode_scan_keys,
        make_key,
        parse_scan_header,
        register_model,
    )

    USING_EXTENSIONS = False
else:
    try:
        from limpyd._speedups import (
            decode_scan_batch,
            decode_scan_keys,
            make_key,
            parse_scan_header,
            register_model,
        )

        USING_EXTENSIONS = True
    except ImportError:  # no compiler at install time, or a non-CPython interpreter
        from limpyd._speedups_py import (
            decode_scan_batch,
            decode_scan_keys,
            make_key,
            parse_scan_header,
            register_model,
        )

        USING_EXTENSIONS = False

IMPLEMENTATION: Literal["cython", "python"] = "cython" if USING_EXTENSIONS else "python"
