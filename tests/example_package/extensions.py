"""Extensions built on limpyd's extension points: dynamic fields and reverse-side writers.

Dynamic fields (docs/extending.rst)::

    class Book(ModelWithDynamicFieldMixin, RelatedModel):
        collection_manager = ExtendedCollectionManagerWithDynamicFields
        tags = DynamicSetField(indexable=True)

    book.get_field('tags_python').sadd('django')      # the field ``tags_python`` is made on demand
    Book.collection().dynamic_filter('tags', 'python', 'django')

The declared field (the *base*) holds no value of its own: each *part* gets its own field, a copy
of the base named ``tags_<part>``, created on first use at model level (``Book.get_field(name)``,
also when a filter names it) and at instance level (``book.get_field(name)``, also for keyword
arguments of the constructor). Those names are not listed in ``Book._fields``; an instance lists
the ones it used in a private copy of ``_fields``. The base's own key ``<ns>:book:<pk>:tags`` is
the instance's *inventory*: the set of the dynamic names written to, so that ``book.delete()``
deletes them all. Dynamic models are not meant to be subclassed (a subclass would see the
parent's dynamic versions).

Related fields get reverse-side writers: ``person.books.sadd(book)`` adds ``person`` to
``book.<field>``. Dynamic related fields give each version its own relation, registered at
runtime, reached from the target with ``person.books('<part>')``.
"""

from __future__ import annotations

import copy
import re
from typing import Any, List, Optional

from limpyd import fields, model
from limpyd.contrib import related
from limpyd.contrib.collection import ExtendedCollectionManager
from limpyd.contrib.related import RelatedCollection, RelatedModel, re_identifier
from limpyd.exceptions import ImplementationError

__all__ = [
    "RelatedModel",
    "ModelWithDynamicFieldMixin",
    "DynamicFieldMixin",
    "DynamicRelatedFieldMixin",
    "DynamicSetField",
    "DynamicHashField",
    "DynamicM2MSetField",
    "ExtendedCollectionManagerWithDynamicFields",
    "RelatedCollectionWithWriters",
    "DynamicRelatedCollection",
    "FKStringField",
    "FKInstanceHashField",
    "M2MSetField",
    "M2MListField",
    "M2MSortedSetField",
]


# ---------------------------------------------------------------------- dynamic fields


class DynamicFieldMixin:
    """Put first in the bases of a field class: the field declares ``<name>_<part>`` fields.

    Keyword arguments, popped before the cooperative ``__init__``: ``format`` (default
    ``'%(field)s_%(part)s'``) builds a dynamic name, ``pattern`` (default ``[\\w.+-]+``) is the
    regular expression a part must match.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.format = kwargs.pop("format", "%(field)s_%(part)s")
        self.pattern = kwargs.pop("pattern", r"[\w.+-]+")
        super().__init__(*args, **kwargs)
        self._dynamic_base: Optional[str] = None  # on a dynamic version: the name of its base field

    def __copy__(self) -> Any:
        new = super().__copy__()
        new.format, new.pattern, new._dynamic_base = self.format, self.pattern, self._dynamic_base
        return new

    def _attach_to_model(self, model: type) -> None:
        if not issubclass(model, ModelWithDynamicFieldMixin):
            raise ImplementationError(
                "%s needs a model deriving from ModelWithDynamicFieldMixin (got %s.%s)"
                % (type(self).__name__, model.__module__, model.__qualname__)
            )
        super()._attach_to_model(model)
        if self._dynamic_base is None and getattr(self, "name", None):
            setattr(model, self.name, self)  # ``Book.tags`` gives the model-level base field

    # ------------------------------------------------------------------ names

    def get_name_for(self, part: str) -> str:
        """Return the name of the dynamic version of this field for ``part``."""
        if not re.fullmatch(self.pattern, str(part)):
            raise ValueError(
                "%r is not a valid dynamic part for the field %r (pattern %r)"
                % (part, self.name, self.pattern)
            )
        return self.format % {"field": self._dynamic_base or self.name, "part": part}

    def get_part_for(self, name: str) -> Optional[str]:
        """Return the part of ``name`` if it names a dynamic version of this base field, else ``None``."""
        prefix, _, suffix = (self.format % {"field": self.name, "part": "\0"}).partition("\0")
        part = name[len(prefix) : len(name) - len(suffix)]
        if name.startswith(prefix) and name.endswith(suffix) and re.fullmatch(self.pattern, part):
            return part
        return None

    def _create_dynamic_version(self, name: str) -> Any:
        """Return a new model-level version of this base field, named ``name``, attached at runtime."""
        field = copy.copy(self)
        field.name = name
        field._dynamic_base = self.name
        field._attach_to_model(self._model)
        setattr(self._model, "_redis_attr_%s" % name, field)
        return field

    def dynamic_names(self) -> List[str]:
        """Return the dynamic names written to by any instance (read from their inventories)."""
        names = set()
        match = self.format % {"field": self.name, "part": "*"}
        for pk in self._model.collection():
            names.update(self.get_for_instance(pk)._inventory().sscan(match, 100))
        return sorted(names)

    # ------------------------------------------------------------------ Redis

    def _inventory(self) -> fields.SetField:
        """Return the instance's inventory: a ``SetField`` named like the base field."""
        inventory = fields.SetField()
        inventory._attach_to_model(self._model)  # attached first, then named
        inventory._attach_to_instance(self._instance)
        inventory.name = self._dynamic_base or self.name
        return inventory

    def _call_command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._dynamic_base is None:
            raise ImplementationError(
                "The field %r is dynamic: use one of its versions, e.g. get_field(%r)"
                % (self.name, self.format % {"field": self.name, "part": "<part>"})
            )
        result = super()._call_command(name, *args, **kwargs)
        if name in self.available_modifiers and name not in ("delete", "hdel"):
            self._inventory().sadd(self.name)
        return result

    def delete(self) -> Any:
        """Delete this version; on the base field, every version listed in the inventory, then it."""
        if self._dynamic_base is not None:
            return super().delete()
        inventory = self._inventory()
        for name in sorted(inventory.smembers()):
            self._instance.get_field(name).delete()
        return inventory.delete()

    def clear_indexes(self, chunk_size: int = 1000, aggressive: bool = False) -> None:
        if self._dynamic_base is not None:
            return super().clear_indexes(chunk_size, aggressive)
        for name in self.dynamic_names():
            self._model.get_field(name).clear_indexes(chunk_size, aggressive)

    def rebuild_indexes(self, chunk_size: int = 1000, aggressive_clear: bool = False) -> None:
        if self._dynamic_base is not None:
            return super().rebuild_indexes(chunk_size, aggressive_clear)
        for name in self.dynamic_names():
            self._model.get_field(name).rebuild_indexes(chunk_size, aggressive_clear)


class DynamicSetField(DynamicFieldMixin, fields.SetField):
    pass


class DynamicHashField(DynamicFieldMixin, fields.HashField):
    pass


class ModelWithDynamicFieldMixin:
    """Put before ``RelatedModel`` (or ``RedisModel``): field lookups accept dynamic names."""

    @classmethod
    def _get_dynamic_base(cls, name: str) -> Optional[DynamicFieldMixin]:
        for base_name in cls._fields:
            field = getattr(cls, "_redis_attr_%s" % base_name)
            if (
                isinstance(field, DynamicFieldMixin)
                and field._dynamic_base is None
                and field.get_part_for(name)
            ):
                return field
        return None

    @classmethod
    def has_field(cls, name: str) -> bool:
        return super().has_field(name) or cls._get_dynamic_base(name) is not None

    @classmethod
    def get_class_field(cls, name: str) -> Any:
        try:
            return super().get_class_field(name)
        except AttributeError:  # a dynamic name not created yet (or an unknown name)
            base = cls._get_dynamic_base(name)
            if base is None:
                raise
            return base._create_dynamic_version(name)

    get_field = get_class_field

    def get_instance_field(self, name: str) -> Any:
        try:
            return super().get_instance_field(name)
        except AttributeError:
            if not self.has_field(name):
                raise
            field = copy.copy(type(self).get_class_field(name))
            field._attach_to_instance(self)
            setattr(self, name, field)
            if id(self._fields) == id(type(self)._fields):
                self._fields = list(self._fields)  # the instance lists its dynamic fields privately
            self._fields.append(name)
            return field


class CollectionManagerForModelWithDynamicFieldMixin:
    def dynamic_filter(self, field_name: str, dynamic_part: str, value: Any, index_suffix: str = "") -> Any:
        """Return the collection filtered on the ``dynamic_part`` version of ``field_name``.

        ``index_suffix`` is what follows the name in a filter key: ``'gte'``, ``'<subkey>__eq'``...
        """
        key = self.model.get_field(field_name).get_name_for(dynamic_part)
        if index_suffix:
            key += index_suffix if index_suffix.startswith("__") else "__" + index_suffix
        return self.filter(**{key: value})


class ExtendedCollectionManagerWithDynamicFields(
    CollectionManagerForModelWithDynamicFieldMixin, ExtendedCollectionManager
):
    pass


# ---------------------------------------------------------------------- reverse-side writers


class RelatedCollectionWithWriters(RelatedCollection):
    """The reverse side of a relation, with writers: ``person.books.sadd(book1, book2)``.

    Owners are given as instances or pks; each writer calls the command on the owner's related
    field with this collection's instance as value.
    """

    def _field_name(self, dynamic_part: Optional[str] = None) -> str:
        if dynamic_part is not None:
            raise ValueError("%s is not a dynamic field: no dynamic part expected" % self.related_field.name)
        return self.related_field.name

    def _owner_field(self, owner: Any, dynamic_part: Optional[str] = None) -> Any:
        if not isinstance(owner, model.RedisModel):
            owner = self.related_field._model(owner)
        return owner.get_field(self._field_name(dynamic_part))

    def sadd(self, *owners: Any, dynamic_part: Optional[str] = None) -> int:
        return sum(self._owner_field(owner, dynamic_part).sadd(self.instance) for owner in owners)

    def srem(self, *owners: Any, dynamic_part: Optional[str] = None) -> int:
        return sum(self._owner_field(owner, dynamic_part).srem(self.instance) for owner in owners)

    def lpush(self, *owners: Any) -> None:
        for owner in owners:
            self._owner_field(owner).lpush(self.instance)

    def rpush(self, *owners: Any) -> None:
        for owner in owners:
            self._owner_field(owner).rpush(self.instance)

    def lrem(self, *owners: Any) -> None:
        for owner in owners:
            self._owner_field(owner).lrem(0, self.instance)

    def zadd(self, *args: Any, **kwargs: Any) -> int:
        """Add this instance to the sorted set of each owner: ``zadd({owner: score, ...})``."""
        _, kwargs = fields.SortedSetField.coerce_zadd_args(
            *args, values_callback=lambda *owners: [self._owner_field(owner) for owner in owners], **kwargs
        )
        mapping = kwargs.pop("mapping")  # {owner field: score}
        return sum(
            field.zadd(mapping={self.instance: score}, values_callback=None, **kwargs)
            for field, score in mapping.items()
        )

    def zrem(self, *owners: Any) -> None:
        for owner in owners:
            self._owner_field(owner).zrem(self.instance)

    def set(self, *owners: Any) -> None:
        """Point the foreign key of each owner to this instance."""
        for owner in owners:
            self._owner_field(owner).proxy_set(self.instance)

    def delete(self, *owners: Any) -> None:
        """Empty the foreign key of each owner pointing to this instance."""
        for owner in owners:
            field = self._owner_field(owner)
            if field.proxy_get() == field.from_python(self.instance):
                field.delete()


class DynamicRelatedCollection(RelatedCollectionWithWriters):
    """The reverse side of a dynamic related field: ``person.books('writer')`` (no part: the base)."""

    def _field_name(self, dynamic_part: Optional[str] = None) -> str:
        if dynamic_part is None:
            return self.related_field.name
        return self.related_field.get_name_for(dynamic_part)

    def __call__(self, dynamic_part: Optional[str] = None, **filters: Any) -> Any:
        filters[self._field_name(dynamic_part)] = self.instance._pk
        return self.related_field._model.collection(**filters)


class DynamicRelatedFieldMixin(DynamicFieldMixin):
    """A dynamic related field: each version registers its own relation, with a unique related name."""

    def _get_related_name(self) -> str:
        if self._dynamic_base is not None:
            base = self._model.get_class_field(self._dynamic_base)
            part = re_identifier.sub("_", base.get_part_for(self.name))
            self.related_name = "%s__%s__%s" % (base.related_name, part, id(self))
        return super()._get_related_name()


class FKStringField(related.FKStringField):
    related_collection_class = RelatedCollectionWithWriters


class FKInstanceHashField(related.FKInstanceHashField):
    related_collection_class = RelatedCollectionWithWriters


class M2MSetField(related.M2MSetField):
    related_collection_class = RelatedCollectionWithWriters


class M2MListField(related.M2MListField):
    related_collection_class = RelatedCollectionWithWriters


class M2MSortedSetField(related.M2MSortedSetField):
    related_collection_class = RelatedCollectionWithWriters


class DynamicM2MSetField(DynamicRelatedFieldMixin, related.M2MSetField):
    related_collection_class = DynamicRelatedCollection
