"""The exception classes raised by limpyd (exactly the four of redis-limpyd 2.x)."""

from __future__ import annotations

__all__ = ["LimpydException", "UniquenessError", "ImplementationError", "DoesNotExist"]


class LimpydException(Exception):
    """Base class of every limpyd error; also raised for unsupported arguments and versions."""


class UniquenessError(LimpydException):
    """A unique value (unique field, unique index, existing pk) is already used."""


class DoesNotExist(LimpydException):
    """An instance was not found, or was deleted."""


class ImplementationError(LimpydException):
    """The library is misused or misconfigured (bad declaration, forbidden command)."""
