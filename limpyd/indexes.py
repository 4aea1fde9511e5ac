"""Indexes: find instances by field values (``limpyd.indexes``).

This module must not import ``limpyd.database`` at module level (the database imports
``EqualIndex`` from here). The index classes' Redis behaviour (storage, filtering, uniqueness,
clear/rebuild) is specified in spec 20; this module holds their declaration-time contract.
"""

from __future__ import annotations

from typing import Any, Dict, Set, Tuple

__all__ = ["BaseIndex", "EqualIndex"]


class BaseIndex:
    """Base of every index: one object per (model field, index class), shared by its instances."""

    handled_suffixes: Set[Any] = set()
    handle_uniqueness = False
    key = None
    prefix = None
    transform = None
    filter_single_field = True
    configurable_attrs = {"prefix", "transform", "handle_uniqueness", "key", "name"}
    supported_key_types: Set[str] = set()

    def __init__(self, field: Any) -> None:
        self.field = field
        self._reset_cache()

    def _reset_cache(self) -> None:
        """Start an empty rollback cache (what was indexed/deindexed, per pk)."""
        self._rollback_cache: Dict[Any, Dict[str, Set[Tuple[Any, ...]]]] = {}

    @property
    def connection(self) -> Any:
        """Return the Redis client of the indexed field's model."""
        return self.field.connection

    @property
    def model(self) -> Any:
        """Return the model of the indexed field."""
        return self.field._model

    def __repr__(self) -> str:
        return object.__repr__(self)[:-2] + " (field=" + repr(self.field) + ")>"

    @classmethod
    def _field_model_ready(cls, model: type, field: Any) -> None:
        """Hook called once the model of ``field`` is built (multi-field indexes use it)."""

    @classmethod
    def handle_configurable_attrs(cls, **kwargs: Any) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
        """Return ``(name, attrs, remaining_kwargs)`` extracted from ``configure``'s arguments."""
        name = kwargs.pop("name", None) or cls.__name__
        attrs: Dict[str, Any] = {}
        for attr in ("prefix", "handle_uniqueness", "key"):
            if attr in kwargs and attr in cls.configurable_attrs:
                attrs[attr] = kwargs.pop(attr)
        if "transform" in kwargs and "transform" in cls.configurable_attrs:
            attrs["transform"] = staticmethod(kwargs.pop("transform"))
        return name, attrs, kwargs

    @classmethod
    def configure(cls, **kwargs: Any) -> type:
        """Return a new subclass of this index class with the given attributes set."""
        name, attrs, remaining = cls.handle_configurable_attrs(**kwargs)
        if remaining:
            raise TypeError(
                "%s.configure only accepts these named arguments: %s"
                % (cls.__name__, ", ".join(sorted(cls.configurable_attrs)))
            )
        return type(name, (cls,), attrs)


class EqualIndex(BaseIndex):
    """The default index: one Redis set of pks per value (``N:<field>:<value>``)."""

    handled_suffixes = {None, "eq", "in"}
    handle_uniqueness = True
    supported_key_types = {"set"}
