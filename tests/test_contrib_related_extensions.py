"""``limpyd.contrib.related``, part 3: what downstream packages build on it (docs/extending.rst).

- an extensions package: reverse-side writers (``sadd``/``srem``/``lpush``/``zadd``… on the
  ``RelatedCollection`` side), dynamic related fields (copies attached at runtime, with their own
  related names and reverse collections), a ``RelatedCollection.__call__`` of another signature;
- a job-queue package: an abstract ``RelatedModel`` base on a ``PipelineDatabase`` redirected
  with ``use_database``;
- the ``RelatedFieldMetaclass`` wrapping rules (mixins first, subclasses, converting twice).
"""

from __future__ import annotations

import copy

import pytest
from _redis_dump import command_log, layout, locked

from limpyd.contrib.collection import ExtendedCollectionManager
from limpyd.contrib.database import PipelineDatabase
from limpyd.contrib.related import (
    FKInstanceHashField,
    FKStringField,
    M2MListField,
    M2MSetField,
    M2MSortedSetField,
    RelatedCollection,
    RelatedFieldMetaclass,
    RelatedFieldMixin,
    RelatedModel,
    re_identifier,
)
from limpyd.exceptions import DoesNotExist, ImplementationError
from limpyd.fields import PKField, SortedSetField, StringField
from limpyd.model import RedisModel

# ---------------------------------------------------------------------- reverse-side writers


class WritableRelatedCollection(RelatedCollection):
    """Reverse-side writers, written as an extensions package does (public API only)."""

    def _owner_field(self, owner):
        if not isinstance(owner, RedisModel):
            owner = self.related_field._model(owner)
        return owner.get_field(self.related_field.name)

    def sadd(self, *owners):
        return sum(self._owner_field(owner).sadd(self.instance) for owner in owners)

    def srem(self, *owners):
        return sum(self._owner_field(owner).srem(self.instance) for owner in owners)

    def lpush(self, *owners):
        for owner in owners:
            self._owner_field(owner).lpush(self.instance)

    def rpush(self, *owners):
        for owner in owners:
            self._owner_field(owner).rpush(self.instance)

    def lrem(self, *owners):
        for owner in owners:
            self._owner_field(owner).lrem(0, self.instance)

    def zadd(self, *args, **kwargs):
        # keys mapped to field objects by coerce_zadd_args' callback, as downstream does
        _, kwargs = SortedSetField.coerce_zadd_args(
            *args, values_callback=lambda *owners: [self._owner_field(owner) for owner in owners], **kwargs
        )
        mapping = kwargs.pop("mapping")
        return sum(
            field.zadd({self.instance: score}, values_callback=None, **kwargs)
            for field, score in mapping.items()
        )

    def zrem(self, *owners):
        for owner in owners:
            self._owner_field(owner).zrem(self.instance)

    def set(self, *owners):
        for owner in owners:
            field = self._owner_field(owner)
            field.proxy_set(self.instance)

    def delete(self, *owners):
        for owner in owners:
            self._owner_field(owner).delete()


class WM2MSetField(M2MSetField):
    related_collection_class = WritableRelatedCollection


class WM2MListField(M2MListField):
    related_collection_class = WritableRelatedCollection


class WM2MSortedSetField(M2MSortedSetField):
    related_collection_class = WritableRelatedCollection


class WFKStringField(FKStringField):
    related_collection_class = WritableRelatedCollection


class WFKInstanceHashField(FKInstanceHashField):
    related_collection_class = WritableRelatedCollection


@pytest.fixture
def writable(database, namespace):
    db, ns = database, namespace

    class Base(RelatedModel):
        database = db
        namespace = ns
        abstract = True

    class Tag(Base):
        id = PKField()

    class Article(Base):
        id = PKField()
        tags = WM2MSetField(Tag, related_name="articles")
        history = WM2MListField(Tag, related_name="histories")
        scores = WM2MSortedSetField(Tag, related_name="scored")
        main = WFKStringField(Tag, related_name="main_of")
        second = WFKInstanceHashField(Tag, related_name="second_of")

    return Tag, Article


def test_reverse_side_writers(writable, client, namespace):
    Tag, Article = writable
    a1, a2 = Article(id="a1"), Article(id="a2")
    tag = Tag(id="python")
    assert type(
        tag.articles
    ) is WritableRelatedCollection and tag.articles.related_field is Article.get_field("tags")
    assert tag.articles.sadd(a1, "a2") == 2
    tag.histories.rpush(a1, a2)
    tag.histories.lpush(a1)
    assert tag.scored.zadd({a1: 1.5, "a2": 3}) == 2
    tag.main_of.set(a1, a2)
    tag.second_of.set("a2")
    n = namespace + ":article"
    assert layout(client) == {
        namespace + ":tag:collection": ("set", {"python"}),
        n + ":collection": ("set", {"a1", "a2"}),
        n + ":a1:tags": ("set", {"python"}),
        n + ":a2:tags": ("set", {"python"}),
        n + ":tags:python": ("set", {"a1", "a2"}),
        n + ":a1:history": ("list", ["python", "python"]),
        n + ":a2:history": ("list", ["python"]),
        n + ":history:python": ("set", {"a1", "a2"}),
        n + ":a1:scores": ("zset", [("python", 1.5)]),
        n + ":a2:scores": ("zset", [("python", 3.0)]),
        n + ":scores:python": ("set", {"a1", "a2"}),
        n + ":a1:main": ("string", "python"),
        n + ":a2:main": ("string", "python"),
        n + ":main:python": ("set", {"a1", "a2"}),
        n + ":a2:hash": ("hash", {"second": "python"}),
        n + ":second:python": ("set", {"a2"}),
    }
    assert (
        set(tag.articles()) == set(tag.histories()) == set(tag.scored()) == set(tag.main_of()) == {"a1", "a2"}
    )
    assert tag.articles.srem(a1) == 1
    tag.histories.lrem(a1)
    tag.scored.zrem("a2")
    tag.main_of.delete(a2)
    tag.second_of.delete(a2)
    assert set(tag.articles()) == {"a2"} and set(tag.histories()) == {"a2"} and set(tag.scored()) == {"a1"}
    assert set(tag.main_of()) == {"a1"} and set(tag.second_of()) == set()
    assert a1.history.lmembers() == [] and a2.history.lmembers() == ["python"]


def test_reverse_writer_commands(writable, client, namespace):
    """A reverse-side write costs the owner check plus exactly the owner field's commands."""
    Tag, Article = writable
    Article(id="a1")
    tag = Tag(id="t")
    n = namespace + ":article"
    with command_log(client) as log:
        tag.articles.sadd("a1")
    assert log == ["SISMEMBER %s:collection a1" % n] + locked(
        n + ":lock-for-update:tags", ["SADD %s:tags:t a1" % n, "SADD %s:a1:tags t" % n]
    )
    with command_log(client) as log:
        tag.scored.zadd({"a1": 2})
    assert log == ["SISMEMBER %s:collection a1" % n] + locked(
        n + ":lock-for-update:scores", ["SADD %s:scores:t a1" % n, "ZADD %s:a1:scores 2 t" % n]
    )


def test_zadd_with_an_explicit_none_callback(writable):
    Tag, Article = writable
    tag = Tag(id="t")
    article = Article(id="a")
    assert article.scores.zadd({tag: 1}, values_callback=None) == 1
    assert article.scores.zadd(mapping={tag: 2}, values_callback=None, ch=True) == 1
    assert article.scores.zrange(0, 0, withscores=True) == [("t", 2.0)]


def test_coerce_zadd_args_with_field_keys(writable):
    """``coerce_zadd_args`` called directly, keys mapped to bound field objects (docs/extending.rst)."""
    Tag, Article = writable
    a1, a2 = Article(id="a1"), Article(id="a2")
    mapping = {a1: 1, a2: 2}
    args, kwargs = SortedSetField.coerce_zadd_args(
        mapping, values_callback=lambda *keys: [k.scores for k in keys]
    )
    assert args == [] and kwargs["mapping"] == {a1.scores: 1, a2.scores: 2} and mapping is kwargs["mapping"]
    assert {field._instance._pk: score for field, score in kwargs["mapping"].items()} == {"a1": 1, "a2": 2}


def test_writer_collection_on_the_field_class(writable):
    Tag, Article = writable
    assert Article.get_field("tags").related_collection_class is WritableRelatedCollection
    assert M2MSetField.related_collection_class is RelatedCollection  # the base class is untouched
    tag = Tag(id="t")
    assert all(type(getattr(tag, name)) is WritableRelatedCollection for name in tag.related_collections)


# ---------------------------------------------------------------------- dynamic related fields


class DynamicRelatedMixin:
    """A plain mixin put first: a declared related field materialising ``<name>_<part>`` copies."""

    def __init__(self, *args, **kwargs):
        self.pattern = kwargs.pop("pattern", "%s_%s")  # popped before the cooperative call
        super().__init__(*args, **kwargs)
        self._dynamic_base = None

    def __copy__(self):
        new = super().__copy__()
        new._dynamic_base = self._dynamic_base
        new.pattern = self.pattern
        return new

    def get_name_for(self, part):
        return self.pattern % (self._dynamic_base or self.name, part)

    def _get_related_name(self):
        if self._dynamic_base is not None:
            base = self._model.get_class_field(self._dynamic_base)
            part = self.name[len(self._dynamic_base) + 1 :]
            self.related_name = "%s__%s__%s" % (base.related_name, re_identifier.sub("_", part), id(self))
        return super()._get_related_name()

    def dynamic_version(self, part):
        """Return the model-level copy for ``part``, created and attached at runtime if needed."""
        name = self.get_name_for(part)
        model = self._model
        existing = model.__dict__.get("_redis_attr_" + name)
        if existing is not None:
            return existing
        field = copy.copy(self)
        field.name = name
        field._dynamic_base = self.name
        field._attach_to_model(model)
        setattr(model, "_redis_attr_" + name, field)
        return field


class DynamicM2MSetField(DynamicRelatedMixin, M2MSetField):
    pass


class DynamicFKStringField(DynamicRelatedMixin, FKStringField):
    pass


class DynamicModelMixin:
    """Model mixin put first: accepts ``<dynamic field>_<part>`` names and creates them on demand."""

    @classmethod
    def _dynamic_base_field(cls, name):
        for base_name in cls._fields:
            base = getattr(cls, "_redis_attr_" + base_name)
            if (
                isinstance(base, DynamicRelatedMixin)
                and base._dynamic_base is None
                and name.startswith(base_name + "_")
            ):
                return base, name[len(base_name) + 1 :]
        return None, None

    @classmethod
    def has_field(cls, name):
        return super().has_field(name) or cls._dynamic_base_field(name)[0] is not None

    @classmethod
    def get_class_field(cls, name):
        try:
            return super().get_class_field(name)
        except AttributeError:
            base, part = cls._dynamic_base_field(name)
            if base is None:
                raise
            return base.dynamic_version(part)

    get_field = get_class_field

    def get_instance_field(self, name):
        try:
            return super().get_instance_field(name)
        except AttributeError:
            if not self.has_field(name):
                raise
            field = copy.copy(type(self).get_class_field(name))
            field._attach_to_instance(self)
            setattr(self, name, field)
            return field


class DynamicRelatedCollection(RelatedCollection):
    """A reverse collection whose ``__call__`` takes the dynamic part first (another signature)."""

    def __call__(self, dynamic_part=None, **filters):
        name = (
            self.related_field.name if dynamic_part is None else self.related_field.get_name_for(dynamic_part)
        )
        filters[name] = self.instance._pk
        return self.related_field._model.collection(**filters)


class DynamicCollM2MSetField(DynamicRelatedMixin, M2MSetField):
    related_collection_class = DynamicRelatedCollection


@pytest.fixture
def dynamic(database, namespace):
    db, ns = database, namespace

    class Person(DynamicModelMixin, RelatedModel):
        database = db
        namespace = ns
        id = PKField()

    class Photo(DynamicModelMixin, RelatedModel):
        database = db
        namespace = ns
        id = PKField()
        people = DynamicM2MSetField(Person, related_name="photos")
        author = DynamicFKStringField("Person", related_name="%(model)s_authored")
        seen = DynamicCollM2MSetField(Person, related_name="seen_in")

    return Person, Photo


def test_dynamic_copies_register_their_relation_at_runtime(dynamic, database, namespace, client):
    Person, Photo = dynamic
    alice = Person(id="alice")
    assert alice.related_collections == ["photos", "photo_authored", "seen_in"]
    photo = Photo(id="ph")
    field = photo.get_field("people_2020")  # created now: model-level copy attached, then instance copy
    model_field = Photo.get_field("people_2020")
    assert isinstance(field, DynamicM2MSetField) and field._instance is photo and model_field._model is Photo
    assert model_field.related_to == namespace + ":person"  # the copy's lower-cased target, accepted as is
    related_name = "photos__2020__%d" % id(model_field)
    assert model_field.related_name == related_name and field.related_name == related_name
    assert database._relations[namespace + ":person"][-1] == (
        namespace + ":photo",
        "people_2020",
        related_name,
    )
    assert "people_2020" not in Photo._fields  # dynamic fields are not listed
    field.sadd(alice, "bob")
    n = namespace + ":photo"
    assert client.smembers(n + ":ph:people_2020") == {"alice", "bob"}
    assert client.smembers(n + ":people_2020:alice") == {"ph"}
    # instances created afterwards get the new reverse attribute; older ones do not
    assert not hasattr(alice, related_name)
    alice = Person("alice")
    assert alice.related_collections == ["photos", "photo_authored", "seen_in", related_name]
    assert list(getattr(alice, related_name)()) == ["ph"]
    assert list(Photo.collection(people_2020=alice)) == ["ph"]
    assert list(photo.people_2020()) == ["alice"]


def test_dynamic_fk_and_deletion(dynamic, client, namespace):
    Person, Photo = dynamic
    alice, bob = Person(id="alice"), Person(id="bob")
    photo = Photo(id="ph")
    photo.get_field("author_front").set(alice)
    photo.get_field("people_x").sadd(alice, bob)
    photo.get_field("people").sadd(alice)
    assert photo.author_front.instance() == alice
    alice = Person("alice")
    assert len(alice.related_collections) == 5
    alice.delete()
    n = namespace + ":photo"
    assert layout(client) == {
        namespace + ":person:collection": ("set", {"bob"}),
        n + ":collection": ("set", {"ph"}),
        n + ":ph:people_x": ("set", {"bob"}),
        n + ":people_x:bob": ("set", {"ph"}),
    }


def test_reverse_collection_with_another_call_signature(dynamic):
    Person, Photo = dynamic
    alice = Person(id="alice")
    photo = Photo(id="ph", seen=[alice])
    photo.get_field("seen_paris").sadd(alice)
    other = Photo(id="other")
    other.get_field("seen_rome").sadd(alice)
    alice = Person("alice")
    assert type(alice.seen_in) is DynamicRelatedCollection
    assert list(alice.seen_in()) == ["ph"] and list(alice.seen_in("rome")) == ["other"]
    assert list(alice.seen_in("paris")) == ["ph"]
    # remove_instance() calls self() with no argument: the base field's relation
    alice.seen_in.remove_instance()
    assert photo.seen.smembers() == set() and photo.seen_paris.smembers() == {"alice"}


def test_dynamic_mixin_sees_every_command_converted(database, namespace):
    """A mixin's ``_call_command`` override sees every command, with instances already converted."""
    db, ns = database, namespace
    seen = []

    class RecordingMixin:
        def _call_command(self, name, *args, **kwargs):
            seen.append((name, args))
            return super()._call_command(name, *args, **kwargs)

    class RecordingM2MSetField(RecordingMixin, M2MSetField):
        pass

    class Person(RelatedModel):
        database = db
        namespace = ns
        id = PKField()

    class Group(RelatedModel):
        database = db
        namespace = ns
        members = RecordingM2MSetField(Person)

    assert type(RecordingM2MSetField) is RelatedFieldMetaclass
    alice = Person(id="alice")
    group = Group(members=[alice])
    group.members.srem(alice)
    group.members.delete()
    # delete() reads the stored values to deindex them, through a lazy copy of the field: seen too
    assert seen == [("sadd", ("alice",)), ("srem", ("alice",)), ("delete", ()), ("smembers", ())]


# ---------------------------------------------------------------------- metaclass rules


def test_metaclass_wraps_a_mixin_method_and_a_body_method(database, namespace):
    db, ns = database, namespace
    calls = []

    class LoggingMixin:
        def sadd(self, *values):
            calls.append(("mixin", values))
            return super().sadd(*values)

    class MixedField(LoggingMixin, M2MSetField):
        pass

    class BodyField(M2MSetField):
        def srem(self, *values):
            calls.append(("body", values))
            return super().srem(*values)

    class PlainSub(M2MSetField):
        pass

    assert PlainSub.sadd is M2MSetField.sadd and PlainSub.sismember is M2MSetField.sismember  # not re-wrapped
    assert MixedField.sadd is not LoggingMixin.sadd  # wrapped on the class created with the metaclass

    class Person(RelatedModel):
        database = db
        namespace = ns
        id = PKField()

    class Group(RelatedModel):
        database = db
        namespace = ns
        a = MixedField(Person, related_name="a_groups")
        b = BodyField(Person, related_name="b_groups")
        c = PlainSub(Person, related_name="c_groups")

    alice = Person(id="alice")
    group = Group(a=[alice], b=[alice], c=[alice])
    assert group.b.srem(alice) == 1 and group.c.srem(alice) == 1
    assert calls == [("mixin", ("alice",)), ("body", ("alice",))]  # converted before their code runs
    assert group.a.smembers() == {"alice"} and group.b.smembers() == set() == group.c.smembers()
    assert group.a.sadd.__doc__.startswith("Run the Redis command SADD")


def test_metaclass_leaves_plain_mixins_alone():
    class Mixin(RelatedFieldMixin):
        _commands_with_many_values_from_python = frozenset({"sadd"})

    assert type(Mixin) is RelatedFieldMetaclass
    assert not hasattr(Mixin, "sadd") and not hasattr(Mixin, "available_commands")


def test_command_methods_dispatch_through_call_command():
    field = M2MSetField("x")
    calls = []
    field._call_command = lambda name, *args, **kwargs: calls.append((name, args, kwargs))
    field.sadd("a", "b")
    field.smembers()
    assert calls == [("sadd", ("a", "b"), {}), ("smembers", (), {})]


# ---------------------------------------------------------------------- a job-queue package


def test_abstract_base_on_a_pipeline_database_redirected(database, redis_settings, namespace):
    """An abstract base on ``PipelineDatabase()`` (default settings, never contacted), moved later."""
    ns = namespace

    class BaseJobsModel(RelatedModel):
        database = PipelineDatabase()
        namespace = ns
        abstract = True
        collection_manager = ExtendedCollectionManager
        cacheable = False

    class Queue(BaseJobsModel):
        name = StringField(indexable=True)

    class Job(BaseJobsModel):
        identifier = StringField(indexable=True)
        queue = FKInstanceHashField(Queue, related_name="jobs")

    class Error(BaseJobsModel):
        job = FKInstanceHashField(Job, related_name="errors")
        message = StringField()

    default_db = BaseJobsModel.database
    assert sorted(default_db._relations) == [ns + ":job", ns + ":queue"]
    real = PipelineDatabase(**redis_settings)
    moved = BaseJobsModel.use_database(real)
    assert set(moved) == {BaseJobsModel, Queue, Job, Error}
    assert default_db._relations == {ns + ":queue": [], ns + ":job": []}
    assert real._relations == {
        ns + ":queue": [(ns + ":job", "queue", "jobs")],
        ns + ":job": [(ns + ":error", "job", "errors")],
    }
    assert BaseJobsModel.use_database(real) == []  # a cheap no-op
    queue = Queue(name="q")
    job = Job(identifier="j1", queue=queue)
    error = Error(job=job, message="boom")
    assert job.queue.instance() == queue and list(Queue(queue._pk).jobs()) == [job._pk]
    assert list(Job(job._pk).errors()) == [error._pk]
    assert hasattr(job, "errors") and not hasattr(job, "on_error") and not hasattr(queue, "queue_name")
    Job(job._pk).delete()
    assert error.job.hget() is None and list(Queue(queue._pk).jobs()) == []
    with pytest.raises(DoesNotExist):
        Job(job._pk)


def test_related_model_adds_no_public_attribute():
    """RelatedModel adds only ``__init__``, ``delete`` and ``use_database`` to RedisModel (docs/extending.rst)."""
    public = {name for name in vars(RelatedModel) if not name.startswith("_")}
    assert public == {
        "abstract",
        "collection_manager",
        "delete",
        "use_database",
        "available_getters",
        "available_modifiers",
        "available_commands",
    }
    assert RelatedModel.available_commands == RedisModel.available_commands


def test_definition_errors_are_implementation_errors_naming_the_fix(database, namespace):
    db, ns = database, namespace
    with pytest.raises(ImplementationError, match="pass another related_name"):

        class Person(RelatedModel):
            database = db
            namespace = ns
            friends = M2MSetField("self", related_name="connect")
