"""Extension points relied upon by downstream code: dynamic fields, command hooks, attach hooks.

docs/extending.rst.
"""

from __future__ import annotations

import copy

import pytest
from _redis_dump import command_log, layout, locked

from limpyd import model
from limpyd.exceptions import ImplementationError
from limpyd.fields import (
    HashField,
    InstanceHashField,
    ListField,
    MetaRedisProxy,
    RedisField,
    SetField,
    SortedSetField,
    StringField,
)
from limpyd.indexes import EqualIndex, TextRangeIndex

# ---------------------------------------------------------------------- a dynamic-fields extension


class DynamicFieldMixin:
    """Plain mixin put first: a declared field materialising ``<name>_<part>`` copies on demand."""

    _copy_conf = copy.deepcopy(RedisField._copy_conf)
    _copy_conf["attrs"].append("_dynamic_base")

    def __init__(self, *args, **kwargs):
        self.pattern = kwargs.pop("pattern", "%s_%s")  # popped before the cooperative call
        super().__init__(*args, **kwargs)
        self._dynamic_base = None

    def _attach_to_model(self, model):
        super()._attach_to_model(model)
        if self._dynamic_base is None:
            setattr(model, self.name, self)  # Model.tags gives the model-level field

    def _inventory(self):
        """Return the runtime SetField, named like the base field, listing the versions used."""
        inventory = SetField()
        inventory.name = self._dynamic_base or self.name
        inventory._attach_to_model(self._model)
        inventory._attach_to_instance(self._instance)
        return inventory

    def _call_command(self, name, *args, **kwargs):
        result = super()._call_command(name, *args, **kwargs)
        if (
            self._dynamic_base is not None
            and name in self.available_modifiers
            and name not in ("delete", "hdel")
        ):
            self._inventory().sadd(self.name)
        return result

    def delete(self):
        if self._dynamic_base is not None:
            return super().delete()
        inventory = self._inventory()
        for name in sorted(inventory.smembers()):
            self._instance.get_field(name).delete()
        return inventory.delete()


class DynamicSetField(DynamicFieldMixin, SetField):
    pass


class DynamicModelMixin:
    """Plain mixin put before the model base, overriding the field lookup classmethods."""

    @classmethod
    def _dynamic_base_field(cls, name):
        for base_name in cls._fields:
            field = getattr(cls, "_redis_attr_%s" % base_name)
            if isinstance(field, DynamicFieldMixin) and field._dynamic_base is None:
                prefix = field.pattern % (base_name, "")
                if name.startswith(prefix) and len(name) > len(prefix):
                    return field
        return None

    @classmethod
    def has_field(cls, name):
        return super().has_field(name) or cls._dynamic_base_field(name) is not None

    @classmethod
    def get_class_field(cls, name):
        try:
            return super().get_class_field(name)
        except AttributeError:
            base = cls._dynamic_base_field(name)
            if base is None:
                raise
            field = copy.copy(base)
            field.name = name
            field._dynamic_base = base.name
            field._attach_to_model(cls)
            setattr(cls, "_redis_attr_%s" % name, field)
            return field

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
            if id(self._fields) == id(type(self)._fields):
                self._fields = list(self._fields)
            self._fields.append(name)
            return field


@pytest.fixture
def Dyn(database):
    db = database

    class Dyn(DynamicModelMixin, model.RedisModel):
        database = db
        namespace = "ext"
        name = StringField()
        tags = DynamicSetField(indexable=True, indexes=[EqualIndex, TextRangeIndex])

    return Dyn


def test_dynamic_fields_at_model_level(Dyn):
    base = Dyn.get_field("tags")
    assert Dyn.tags is base  # re-set by _attach_to_model, not removed by the metaclass
    assert Dyn.has_field("tags_a") and not Dyn.has_field("tags_") and not Dyn.has_field("other_a")
    version = Dyn.get_field("tags_a")
    assert version is Dyn._redis_attr_tags_a is Dyn.get_field("tags_a")
    assert version.name == "tags_a" and version._model is Dyn and version._dynamic_base == "tags"
    assert type(version) is DynamicSetField and not hasattr(version, "_instance")
    assert version.index_classes == [EqualIndex, TextRangeIndex]
    assert "tags_a" not in Dyn._fields
    equal, text = version._indexes
    assert equal.field is version and text.field is version
    assert text.get_storage_key("v") == "ext:dyn:tags_a:text-range"
    assert equal.get_storage_key("v") == "ext:dyn:tags_a:v"
    with pytest.raises(AttributeError, match='^"nope" is not a field for the model "Dyn"$'):
        Dyn.get_field("nope")


def test_dynamic_fields_in_kwargs_commands_filters_and_delete(Dyn, client):
    obj = Dyn(name="n", tags_a=["x"], tags_b=["y", "z"])
    assert obj._fields == ["pk", "name", "tags", "tags_a", "tags_b"]
    assert obj._fields is not Dyn._fields and Dyn._fields == ["pk", "name", "tags"]
    assert obj.tags_a._instance is obj and obj.get_field("tags_b") is obj.tags_b
    assert layout(client) == {
        "ext:dyn:collection": ("set", {"1"}),
        "ext:dyn:max_pk": ("string", "1"),
        "ext:dyn:1:name": ("string", "n"),
        "ext:dyn:1:tags": ("set", {"tags_a", "tags_b"}),
        "ext:dyn:1:tags_a": ("set", {"x"}),
        "ext:dyn:1:tags_b": ("set", {"y", "z"}),
        "ext:dyn:tags_a:x": ("set", {"1"}),
        "ext:dyn:tags_a:text-range": ("zset", [("x:TEXT-RANGE-SEPARATOR:1", 0.0)]),
        "ext:dyn:tags_b:y": ("set", {"1"}),
        "ext:dyn:tags_b:z": ("set", {"1"}),
        "ext:dyn:tags_b:text-range": (
            "zset",
            [("y:TEXT-RANGE-SEPARATOR:1", 0.0), ("z:TEXT-RANGE-SEPARATOR:1", 0.0)],
        ),
    }
    # commands on a version created on demand at instance level, with its own lock
    with command_log(client) as log:
        obj.get_field("tags_c").sadd("w")
    assert log == locked(
        "ext:dyn:lock-for-update:tags_c",
        [
            "SADD ext:dyn:tags_c:w 1",
            "ZADD ext:dyn:tags_c:text-range 0 w:TEXT-RANGE-SEPARATOR:1",
            "SADD ext:dyn:1:tags_c w",
        ],
    ) + ["SADD ext:dyn:1:tags tags_c"]
    # filters resolve dynamic names through get_field
    assert set(Dyn.collection(tags_a="x")) == {"1"}
    assert set(Dyn.collection(tags_b__gte="z")) == {"1"} and set(Dyn.collection(tags_b__gt="z")) == set()
    assert set(Dyn.collection(tags_c__startswith="w")) == {"1"}
    other = Dyn(tags_a=["x"])
    assert set(Dyn.collection(tags_a="x")) == {"1", "2"}
    # a lazy instance resolves the version too (get_for_instance, index reads)
    assert Dyn.get_field("tags_b").get_for_instance(1).smembers() == {"y", "z"}
    obj.delete()
    other.delete()
    assert layout(client) == {"ext:dyn:max_pk": ("string", "2")}


def test_dynamic_field_on_a_lazy_instance_checks_existence(Dyn):
    lazy = Dyn.lazy_connect(5)
    assert lazy.get_field("tags_q").smembers() == set()
    with pytest.raises(Dyn.DoesNotExist):
        lazy.get_field("tags_q").sadd("v")


def test_runtime_field_works_like_a_declared_one(database, client):
    db = database

    class M(model.RedisModel):
        database = db
        namespace = "rt"
        name = StringField()

    obj = M(name="x")
    extra = StringField()
    extra._attach_to_model(M)  # unnamed: attaching must not read the name
    extra.name = "extra"
    extra._attach_to_instance(obj)
    assert extra.set("v") is True and extra.get() == "v"
    assert extra.key == "rt:m:1:extra" and not extra.indexable
    assert layout(client)["rt:m:1:extra"] == ("string", "v")


# ---------------------------------------------------------------------- command hooks


class InventoryMixin:
    """Downstream-like wrapper of ``_call_command`` recording the modifiers that succeeded."""

    def _call_command(self, name, *args, **kwargs):
        result = super()._call_command(name, *args, **kwargs)
        if name in self.available_modifiers and name not in ("delete", "hdel"):
            self._instance.recorded.append((self.name, name))
        return result


class InvString(InventoryMixin, StringField):
    pass


class InvHash(InventoryMixin, InstanceHashField):
    pass


class InvSortedSet(InventoryMixin, SortedSetField):
    pass


def test_call_command_override_sees_every_command(database):
    db = database

    class M(model.RedisModel):
        database = db
        namespace = "inv"
        s = InvString(indexable=True)
        ih = InvHash()
        z = InvSortedSet()

        def __init__(self, *args, **kwargs):
            self.recorded = []
            super().__init__(*args, **kwargs)

    obj = M(s="a", ih="b", z={"m": 1})  # creation goes through proxy_set, so through _call_command
    assert obj.recorded == [("s", "set"), ("ih", "hset"), ("z", "zadd")]
    obj.s.get()
    obj.s.append("x")
    obj.ih.hsetnx("c")
    obj.z.zincrby(2, "m")
    obj.delete()
    assert obj.recorded == [
        ("s", "set"),
        ("ih", "hset"),
        ("z", "zadd"),
        ("s", "append"),
        ("ih", "hsetnx"),
        ("z", "zincrby"),
    ]


def test_call_command_override_can_refuse_commands(database, client):
    db = database

    class ReadOnly(StringField):
        def _call_command(self, name, *args, **kwargs):
            if name in self.available_modifiers:
                raise ImplementationError("%s is read-only" % self.name)
            return super()._call_command(name, *args, **kwargs)

    class M(model.RedisModel):
        database = db
        namespace = "ro"
        s = ReadOnly()

    obj = M()
    with pytest.raises(ImplementationError, match="^s is read-only$"):
        obj.s.set("x")
    assert obj.s.get() is None


def test_post_command_changes_results(database):
    db = database
    calls = []

    class M(model.RedisModel):
        database = db
        namespace = "pc"
        s = StringField()
        ih = InstanceHashField()
        tags = SetField()

        def post_command(self, sender, name, result, args, kwargs):
            calls.append((sender, name, args, kwargs))
            if name in sender.available_getters and isinstance(result, str):
                return result.upper()
            if name == "smembers":
                return sorted(result)
            if name == "hmget":
                return dict(zip(args, result))
            return result

    obj = M(s="x", ih="y", tags=["b", "a"])
    calls.clear()
    assert obj.s.get() == "X"
    assert obj.ih.hget() == "Y"
    assert obj.tags.smembers() == ["a", "b"]
    assert obj.hmget("ih") == {"ih": "y"}
    assert obj.s.getrange(0, 0) == "X"
    assert obj.tags.sadd("c") == 1
    assert calls == [
        (obj.s, "get", (), {}),
        (obj.ih, "hget", ("ih",), {}),
        (obj.tags, "smembers", (), {}),
        (obj, "hmget", ("ih",), {}),
        (obj.s, "getrange", (0, 0), {}),
        (obj.tags, "sadd", ("c",), {}),
    ]


def test_make_command_method_override(database):
    db = database
    made = []

    class Wrapping(SetField):
        available_modifiers = SetField.available_modifiers | {"smove"}

        @classmethod
        def _make_command_method(cls, name):
            made.append(name)
            base = super()._make_command_method(name)

            def method(self, *args, **kwargs):
                args = [getattr(arg, "_pk", arg) for arg in args]  # instances become their pk
                return base(self, *args, **kwargs)

            return method

    assert made == ["smove"]

    class Target(model.RedisModel):
        database = db
        namespace = "mk"
        tags = Wrapping()

    source, dest = Target(tags=["1"]), Target()
    dest.pk.get()
    assert source.tags.smove(dest.tags.key, source) is True
    assert dest.tags.smembers() == {"1"} and source.tags.smembers() == set()


def test_hooks_are_called_in_the_documented_order(database):
    db = database
    order = []

    class Traced(StringField):
        def _call_command(self, name, *args, **kwargs):
            order.append("_call_command %s" % name)
            return super()._call_command(name, *args, **kwargs)

        def _call_set(self, command, *args, **kwargs):
            order.append("_call_set")
            return super()._call_set(command, *args, **kwargs)

        def _traverse_command(self, name, *args, **kwargs):
            order.append("_traverse_command %s" % name)
            return super()._traverse_command(name, *args, **kwargs)

        def index(self, value=None, only_index=None):
            order.append("index %s" % value)
            return super().index(value, only_index)

        def deindex(self, value=None, only_index=None):
            order.append("deindex %s" % value)
            return super().deindex(value, only_index)

    class M(model.RedisModel):
        database = db
        namespace = "ord"
        s = Traced(indexable=True)

        def connect(self):
            order.append("connect")
            return super().connect()

        def post_command(self, sender, name, result, args, kwargs):
            order.append("post_command %s" % name)
            return result

    M().pk.get()
    obj = M.lazy_connect(1)
    obj.s.get()
    obj.s.set("a")
    obj.s.set("b")
    assert order == [
        "_call_command get",
        "_traverse_command get",
        "post_command get",
        # modifier of an indexable field: connect check first (lock taken), then S: read, (de)index, write
        "_call_command set",
        "connect",
        "_call_set",
        "_call_command get",
        "_traverse_command get",
        "post_command get",
        "index a",
        "_traverse_command set",
        "post_command set",
        "_call_command set",
        "_call_set",
        "_call_command get",
        "_traverse_command get",
        "post_command get",
        "deindex a",
        "index b",
        "_traverse_command set",
        "post_command set",
    ]


def test_attach_hooks_order_and_state(database):
    db = database
    seen = []

    class Watching(StringField):
        def _attach_to_model(self, model):
            seen.append(
                (
                    "model",
                    model.__name__,
                    self.name,
                    model.__dict__.get(self.name),
                    "_redis_attr_%s" % self.name in model.__dict__,
                )
            )
            super()._attach_to_model(model)

        def _attach_to_instance(self, instance):
            seen.append(("instance", type(instance).__name__, "_pk" in instance.__dict__))
            super()._attach_to_instance(instance)

    class Parent(model.RedisModel):
        database = db
        namespace = "att"
        w = Watching()

    class Child(Parent):
        pass

    instance = Child()
    assert seen == [
        # own field: named, plain class attribute already deleted, _redis_attr_ not set yet
        ("model", "Parent", "w", None, False),
        # inherited field: a copy attached to the subclass
        ("model", "Child", "w", None, False),
    ]
    instance.w  # the fields of an instance are made (and attached) on first access
    assert seen[2:] == [("instance", "Child", True)]
    instance.w
    assert len(seen) == 3
    assert Child.get_field("w") is not Parent.get_field("w") and Child.get_field("w")._model is Child


def test_attach_to_model_may_refuse_a_model(database):
    db = database

    class Picky(StringField):
        def _attach_to_model(self, model):
            if model.namespace != "ok":
                raise ImplementationError("Picky fields need the 'ok' namespace")
            super()._attach_to_model(model)

    with pytest.raises(ImplementationError, match="^Picky fields need the 'ok' namespace$"):

        class Bad(model.RedisModel):
            database = db
            namespace = "ko"
            p = Picky()


def test_copy_override_and_unknown_kwargs(database):
    db = database

    class Related(SetField):
        def __init__(self, *args, **kwargs):
            self.related_name = kwargs.get("related_name")  # unknown to limpyd, ignored by RedisField
            super().__init__(*args, **kwargs)

        def __copy__(self):
            new = super().__copy__()
            new.related_name = self.related_name
            new._private = getattr(self, "_private", None)
            return new

    field = Related(related_name="owners", indexable=True)
    field._private = "p"

    class M(model.RedisModel):
        database = db
        namespace = "cp"
        r = field

    class Sub(M):
        pass

    for copied in (Sub.get_field("r"), M().r, Sub().r):
        assert copied.related_name == "owners" and copied._private == "p" and copied.indexable


def test_mixins_with_a_metaclass_derived_from_meta_redis_proxy():
    class RelatedFieldMetaclass(MetaRedisProxy):
        pass

    class Mixin(metaclass=RelatedFieldMetaclass):
        available_modifiers = ["custom"]

    assert not hasattr(Mixin, "custom")

    class Field(Mixin, ListField):
        pass

    assert type(Field) is RelatedFieldMetaclass and callable(Field.custom)


def test_lockable_is_writable(database, count_commands, client):
    db = database

    class M(model.RedisModel):
        database = db
        namespace = "lw"
        s = StringField(indexable=True)

    obj = M()
    obj.pk.get()
    obj.s.lockable = False
    with count_commands(3):
        obj.s.set("x")


def test_downstream_call_shapes(database, client):
    db = database

    class M(model.RedisModel):
        database = db
        namespace = "ds"
        fk = InstanceHashField()
        items = ListField()
        tags = SetField()
        scores = SortedSetField()
        h = HashField()

    obj = M()
    obj.fk.hset(1)
    assert obj.fk.hincrby(2) == 3
    obj.items.lpush("a", "b")
    obj.items.rpush("a")
    assert obj.items.lrem(0, "a") == 2 and obj.items.llen() == 1 and obj.items.lrange(0, -1) == ["b"]
    obj.tags.sadd("x", "y")
    assert sorted(obj.tags.sscan("x*", 10)) == ["x"]
    obj.scores.zadd({"m": 1})
    obj.scores.zadd(mapping={"n": 0}, values_callback=None, ch=True)
    obj.scores.zadd(**{"o": 2})
    assert obj.scores.zrange(0, 0, withscores=True) == [("n", 0.0)]
    assert obj.scores.zrange(0, -1) == ["n", "m", "o"] and obj.scores.zcard() == 3
    assert obj.scores.zrem("n") == 1
    assert obj.h.hmset(**{"k": "v"}) is True and obj.h.hget("k") == "v"
    for field in (obj.fk, obj.items, obj.tags, obj.scores, obj.h):
        field.delete()
    assert set(layout(client)) == {"ds:m:collection", "ds:m:max_pk"}


DOWNSTREAM_NAMES = [
    "name",
    "priority",
    "status",
    "identifier",
    "start",
    "end",
    "tries",
    "queued",
    "added",
    "type",
    "code",
    "message",
    "traceback",
    "date",
    "time",
    "date_time",
    "waiting",
    "success",
    "errors",
    "delayed",
    "delayed_until",
    "cancel_on_error",
    "job_pk",
    "job_model_repr",
    "queue_name",
    "on_started",
    "on_success",
    "on_error",
    "on_skipped",
    "on_requeued",
    "on_delayed",
    "duration",
    "ident",
    "datetime",
    "run",
    "requeue",
    "set_fields",
]


@pytest.mark.parametrize("name", DOWNSTREAM_NAMES)
def test_model_base_has_no_attribute_named_like_downstream_fields(name):
    assert not hasattr(model.RedisModel, name)


def test_downstream_instance_usage(database):
    db = database

    class Job(model.RedisModel):
        database = db
        namespace = "jq"
        status = StringField()
        queued = InstanceHashField()

    job = Job(status="waiting")
    job._cached_status = "waiting"  # arbitrary attributes: no __slots__, no __setattr__ restriction
    assert job._cached_status == "waiting"
    assert not hasattr(job, "on_error")
    assert job._name == "jq:job" and job.database is db
    assert Job.make_key("jq", 1) == job.make_key("jq", 1) == "jq:1"
    assert job.pk.get() == job._pk == "1"
    assert Job.get("1") == job and Job.get(1) == job
    with pytest.raises(Job.DoesNotExist):
        Job.get(2)
    lazy = Job.lazy_connect(7)
    with pytest.raises(Job.DoesNotExist):  # a model-level modifier checks existence too
        lazy.hmset(queued="1")
