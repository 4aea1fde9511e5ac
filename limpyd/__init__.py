"""limpyd: an ORM for Redis (models, fields, indexes, collections).

Importing the package itself imports neither redis nor the submodules; ``from limpyd import
model, fields`` loads them as usual.
"""

from __future__ import annotations

#: the one source of the version: the build reads this literal (``pyproject.toml``, ``dynamic``)
__version__ = "3.0.0"
#: the version as a string, as redis-limpyd 2.x named it
EXACT_VERSION = __version__
#: the purely numeric dot-separated parts of the version, as ints (``"3.0.1rc1"`` gives ``(3, 0)``)
VERSION = tuple(int(part) for part in EXACT_VERSION.split(".") if part.isdigit())

__all__ = ["EXACT_VERSION", "VERSION", "__version__"]
