"""The exception classes raised by limpyd: the four of redis-limpyd 2.x, and BulkError (bulk writes)."""

from __future__ import annotations

#: the names of redis-limpyd 2.x (star-imported by limpyd.database, model, collection); BulkError,
#: new in 3.x, is imported by name
__all__ = ["LimpydException", "UniquenessError", "ImplementationError", "DoesNotExist"]


class LimpydException(Exception):
    """Base class of every limpyd error; also raised for unsupported arguments and versions."""


class UniquenessError(LimpydException):
    """A unique value (unique field, unique index, existing pk) is already used."""


class DoesNotExist(LimpydException):
    """An instance was not found, or was deleted."""


class ImplementationError(LimpydException):
    """The library is misused or misconfigured (bad declaration, forbidden command)."""


class BulkError(LimpydException):
    """Rows of a bulk creation were refused; the others were created.

    ``refusals`` lists ``(position in the rows, the error refusing it)``; ``pks`` holds the pk of
    each row, ``None`` for the refused ones.
    """

    def __init__(self, refusals: list, pks: list) -> None:
        self.refusals = refusals
        self.pks = pks
        shown = "; ".join("row %d: %s" % (position, error) for position, error in refusals[:5])
        more = " (and %d more)" % (len(refusals) - 5) if len(refusals) > 5 else ""
        super().__init__(
            "%d row(s) refused, the %d others created: %s%s"
            % (len(refusals), sum(pk is not None for pk in pks), shown, more)
        )
