"""limpyd: an ORM for Redis (models, fields, indexes, collections).

Importing the package itself imports neither redis nor the submodules; ``from limpyd import
model, fields`` loads them as usual.
"""

from __future__ import annotations

EXACT_VERSION = "3.0.0"
VERSION = tuple(int(part) for part in EXACT_VERSION.split(".") if part.isdigit())
__version__ = EXACT_VERSION

__all__ = ["EXACT_VERSION", "VERSION", "__version__"]
