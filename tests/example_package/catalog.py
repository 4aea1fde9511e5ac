"""A small catalog using :mod:`example_package.extensions`: dynamic fields and reverse writers.

The database is made at import time with the default settings and never contacted until used;
scripts redirect it with ``catalog.database.connect(host=..., db=...)``.

- ``book.get_field('tags_en').sadd('scifi')``: tags per language (``tags_<2-letter code>``), with
  an ``EqualIndex`` and a ``TextRangeIndex`` on each version;
- ``book.get_field('notes_fr').hmset(review='bien')``: notes per language, filtered by sub-key;
- ``person.books.sadd(book, dynamic_part='writer')``: authors per role (``authors_<role>``);
- ``person.edited_books.set(book)``, ``person.read_books.zadd({book: 4.5})``...: reverse writers.
"""

from __future__ import annotations

from limpyd.database import RedisDatabase
from limpyd.fields import InstanceHashField
from limpyd.indexes import EqualIndex, TextRangeIndex

from .extensions import (
    DynamicHashField,
    DynamicM2MSetField,
    DynamicSetField,
    ExtendedCollectionManagerWithDynamicFields,
    FKInstanceHashField,
    FKStringField,
    M2MListField,
    M2MSortedSetField,
    ModelWithDynamicFieldMixin,
    RelatedModel,
)

database = RedisDatabase()


class CatalogModel(ModelWithDynamicFieldMixin, RelatedModel):
    database = database
    namespace = "catalog"
    abstract = True
    collection_manager = ExtendedCollectionManagerWithDynamicFields


class Person(CatalogModel):
    name = InstanceHashField(indexable=True, unique=True)


class Book(CatalogModel):
    title = InstanceHashField(indexable=True)
    tags = DynamicSetField(indexable=True, indexes=[EqualIndex, TextRangeIndex], pattern="[a-z]{2}")
    notes = DynamicHashField(indexable=True)
    authors = DynamicM2MSetField(Person, related_name="books")
    editor = FKStringField(Person, related_name="edited_books")
    publisher = FKInstanceHashField(Person, related_name="published_books")
    readers = M2MSortedSetField(Person, related_name="read_books")
    borrowers = M2MListField(Person, related_name="borrowed_books")
