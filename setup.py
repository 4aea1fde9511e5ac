"""Declare the optional compiled speedups; a skipped build says why in one stderr line (docs/install.rst)."""

import os
import platform
import sys

from setuptools import Extension, setup

NAME = "limpyd._speedups"


def _env_flag(name):
    """Return whether the env var ``name`` is set (non-empty and not ``0``)."""
    return os.environ.get(name, "").strip() not in ("", "0")


def _say_skipped(reason):
    """Print the one stderr line telling why the extension is not built."""
    print(f"limpyd: {NAME} not built ({reason}): the pure-Python twin will be used", file=sys.stderr)


DISABLE = _env_flag("LIMPYD_NO_EXTENSIONS")
REQUIRE = _env_flag("LIMPYD_REQUIRE_EXTENSIONS")
if DISABLE and REQUIRE:
    raise RuntimeError("LIMPYD_NO_EXTENSIONS and LIMPYD_REQUIRE_EXTENSIONS are both set: unset one of them")

reasons = ["LIMPYD_NO_EXTENSIONS is set"] if DISABLE else []
if platform.python_implementation() != "CPython":
    reasons.append(f"the interpreter is {platform.python_implementation()}, not CPython")
try:
    from Cython.Build import build_ext as CythonBuildExt
except ImportError:
    reasons.append("Cython is not installed")

if reasons:
    if REQUIRE:
        raise RuntimeError(
            f"LIMPYD_REQUIRE_EXTENSIONS is set but {NAME} cannot be built: {'; '.join(reasons)}"
        )
    _say_skipped("; ".join(reasons))
    ext_modules, cmdclass = [], {}
else:

    class BuildExt(CythonBuildExt):
        """Cython's ``build_ext`` (which keeps ``optional``), saying in one line why it failed."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # no compiler, missing headers: the twin is used instead
                if not ext.optional:
                    raise
                detail = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                _say_skipped(f"the build failed: {detail}")

    ext_modules = [Extension(NAME, ["limpyd/_speedups.pyx"], optional=not REQUIRE)]
    cmdclass = {"build_ext": BuildExt}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
