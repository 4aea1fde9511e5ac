"""Time every speedup function, compiled against the pure-Python twin (ratios py/cy).

    python -m benchmarks.bench_speedups [--quick]

prints a JSON list of rows on stdout: ``{"case", "function", "python_ns", "cython_ns", "ratio"}``
(``cython_ns``/``ratio`` are ``null`` when the extension is not built). Every case runs through
both modules first and must give equal results, or the worker fails. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import timeit
from typing import Any, Callable, Dict, List, Optional, Tuple

from limpyd import _speedups_py

try:
    from limpyd import _speedups as _speedups_cy
except ImportError:  # not compiled: only the twin is timed
    _speedups_cy = None


class _Model:
    """A registered model, as ``register_model`` sees one."""

    _creation_source = ("models.py", 12)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


_KEYS = [b"shop:bike:%d:name" % index for index in range(1000)]
_REPLY = b"*2\r\n$6\r\n123456\r\n*1000\r\n" + b"".join(_bulk(key) for key in _KEYS)

#: (label, function name, arguments): every function of the speedups' __all__ appears
CASES: List[Tuple[str, str, Callable[[], tuple]]] = [
    ("make_key(str, int, str)", "make_key", lambda: ("shop:bike", 12345, "name")),
    ("make_key(str, str, str)", "make_key", lambda: ("shop:bike", "12345", "name")),
    ("make_key(str x5) (index key)", "make_key", lambda: ("shop:bike", "name", "rev", "key", "rosalie")),
    (
        "register_model(), a re-import",
        "register_model",
        lambda: ({"Bike": _Model}, "Bike", object, "shop", "_Model", "shop._Model", ("models.py", 12)),
    ),
    (
        "decode_scan_batch(), 1000 str keys",
        "decode_scan_batch",
        lambda: ([b"123", [key.decode() for key in _KEYS]],),
    ),
    ("decode_scan_batch(), 1000 bytes keys", "decode_scan_batch", lambda: ([b"123", list(_KEYS)],)),
    ("parse_scan_header(), a COUNT 1000 reply", "parse_scan_header", lambda: (_REPLY, 0)),
    ("decode_scan_keys(), 1000 keys", "decode_scan_keys", lambda: (_REPLY, 23, 1000)),
]


def _best_ns(function: Callable[..., Any], args: tuple, budget: float, repeat: int = 5) -> float:
    """Return the best time per call in ns, calibrating the loop count to about ``budget`` s a run."""
    timer = timeit.Timer("f(*a)", globals={"f": function, "a": args})
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= budget / 5 or number >= 10_000_000:
            break
        number *= 10
    number = max(1, int(number * (budget / max(elapsed, 1e-9))))
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def run(quick: bool = False) -> List[Dict[str, object]]:
    """Return one row per case: nanoseconds per call for each implementation, and the ratio."""
    budget = 0.02 if quick else 0.1
    rows = []
    start = time.perf_counter()
    for index, (label, name, make_args) in enumerate(CASES, 1):
        args = make_args()
        python_function = getattr(_speedups_py, name)
        cython_function = getattr(_speedups_cy, name) if _speedups_cy else None
        expected = python_function(*args)
        if cython_function is not None and cython_function(*args) != expected:
            sys.exit(
                "WRONG RESULT: compiled %s gives %r, the twin %r" % (label, cython_function(*args), expected)
            )
        python_ns = _best_ns(python_function, args, budget)
        cython_ns = _best_ns(cython_function, args, budget) if cython_function else None
        rows.append(
            {
                "case": label,
                "function": name,
                "python_ns": python_ns,
                "cython_ns": cython_ns,
                "ratio": (python_ns / cython_ns) if cython_ns else None,
            }
        )
        sys.stderr.write(
            "speedups: %d of %d (%s) done (%.1fs elapsed)\n"
            % (index, len(CASES), label, time.perf_counter() - start)
        )
        sys.stderr.flush()
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_speedups", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="time each case for about 0.1 s instead of 0.5 s"
    )
    args = parser.parse_args(argv)
    names = {name for _, name, _ in CASES}
    missing = sorted(set(_speedups_py.__all__) - names)
    if missing:
        sys.exit("bench_speedups has no case for %s: add one to CASES" % ", ".join(missing))
    print(json.dumps({"implementation": "cython" if _speedups_cy else "python", "rows": run(args.quick)}))


if __name__ == "__main__":
    main()
