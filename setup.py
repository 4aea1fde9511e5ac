"""Declare the optional compiled speedups; all metadata lives in pyproject.toml.

``LIMPYD_NO_EXTENSIONS`` skips the extension, ``LIMPYD_REQUIRE_EXTENSIONS`` makes a failed
build fatal. Without a C compiler a normal install warns and stays pure Python.
"""

import os
import platform

from setuptools import Extension, setup


def _env_flag(name):
    """Return whether the env var ``name`` is set (non-empty and not ``0``)."""
    return os.environ.get(name, "").strip() not in ("", "0")


DISABLE = _env_flag("LIMPYD_NO_EXTENSIONS")
REQUIRE = _env_flag("LIMPYD_REQUIRE_EXTENSIONS")

if DISABLE and REQUIRE:
    raise RuntimeError(
        "LIMPYD_NO_EXTENSIONS and LIMPYD_REQUIRE_EXTENSIONS are both set: unset one of them"
    )

reasons = []
if DISABLE:
    reasons.append("LIMPYD_NO_EXTENSIONS is set")
if platform.python_implementation() != "CPython":
    reasons.append("the interpreter is %s, not CPython" % platform.python_implementation())
try:
    from Cython.Build import build_ext
except ImportError:
    build_ext = None
    reasons.append("Cython is not installed")

if reasons:
    if REQUIRE:
        raise RuntimeError(
            "LIMPYD_REQUIRE_EXTENSIONS is set but limpyd._speedups cannot be built: " + "; ".join(reasons)
        )
    ext_modules, cmdclass = [], {}
else:
    ext_modules = [Extension("limpyd._speedups", ["limpyd/_speedups.pyx"], optional=not REQUIRE)]
    cmdclass = {"build_ext": build_ext}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
