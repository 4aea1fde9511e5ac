"""Time each speedup function, compiled against the pure-Python twin (ratios py/cy)."""

from __future__ import annotations

import timeit
from typing import Dict, List, Tuple

from limpyd import _speedups_py

try:
    from limpyd import _speedups as _speedups_cy
except ImportError:  # not compiled: only the twin is timed
    _speedups_cy = None

MAKE_KEY_CASES: List[Tuple[str, tuple]] = [
    ("make_key(str, int, str)", ("shop:bike", 12345, "name")),
    ("make_key(str, str, str)", ("shop:bike", "12345", "name")),
    ("make_key(str x5) (index key)", ("shop:bike", "name", "rev", "key", "rosalie")),
]


def _best_ns(function, args: tuple, number: int = 200_000, repeat: int = 5) -> float:
    timer = timeit.Timer("f(*a)", globals={"f": function, "a": args})
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def run() -> List[Dict[str, object]]:
    """Return one row per case: nanoseconds per call for each implementation, and the ratio."""
    rows = []
    for label, args in MAKE_KEY_CASES:
        python_ns = _best_ns(_speedups_py.make_key, args)
        cython_ns = _best_ns(_speedups_cy.make_key, args) if _speedups_cy else None
        rows.append({
            "case": label,
            "python_ns": python_ns,
            "cython_ns": cython_ns,
            "ratio": (python_ns / cython_ns) if cython_ns else None,
        })
    return rows
