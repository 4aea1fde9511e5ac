"""Collections: filter, sort and slice a model's instances (``limpyd.collection``)."""

from __future__ import annotations

from typing import Any

__all__ = ["CollectionManager"]


class CollectionManager:
    """Lazy collection of a model's primary keys (filters, sorting and slicing follow spec 21)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self._lazy_collection: dict = {"sets": set(), "pks": set()}

    def __call__(self, **filters: Any) -> "CollectionManager":
        if filters:
            raise NotImplementedError("collection filters arrive with the collections issue")
        return self
