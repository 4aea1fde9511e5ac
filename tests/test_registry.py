"""Tests of the model registry and of model class creation.

The registry (``_creation_source``, ``use_database``), ``MetaRedisModel``, the class attributes
and the model-level API used on classes (docs/models.rst, docs/database.rst), and the hooks
downstream packages use (docs/extending.rst).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import threading
import time

import pytest
import redis

import limpyd.fields
from limpyd import model
from limpyd.collection import CollectionManager
from limpyd.database import RedisDatabase
from limpyd.exceptions import DoesNotExist, ImplementationError
from limpyd.fields import AutoPKField, InstanceHashField, PKField, RedisField
from limpyd.indexes import BaseIndex, EqualIndex
from limpyd.model import MetaRedisModel, RedisModel

THIS_FILE = __file__


def _line() -> int:
    """Return the line number of the caller."""
    return sys._getframe(1).f_lineno


@pytest.fixture
def other_database(redis_settings):
    """Return a second database object on db 1 of the private server."""
    return RedisDatabase(**dict(redis_settings, db=1))


# ---------------------------------------------------------------------- model module and class attributes


def test_model_module_namespace():
    assert model.__all__ == ["RedisModel"]
    for name in (
        "RedisModel",
        "MetaRedisModel",
        "RedisDatabase",
        "CollectionManager",
        "make_key",
        "LimpydException",
        "UniquenessError",
        "ImplementationError",
        "DoesNotExist",
    ):
        assert hasattr(model, name), name
    for name in limpyd.fields.__all__:
        assert getattr(model, name) is getattr(limpyd.fields, name)
    assert model.RedisDatabase is RedisDatabase
    assert model.make_key("a", 1, "clé") == "a:1:clé"


def test_redis_model_class_attributes():
    assert type(RedisModel) is MetaRedisModel
    assert RedisModel.namespace is None
    assert RedisModel.abstract is True
    assert RedisModel.lockable is True
    assert RedisModel.collection_manager is CollectionManager
    assert RedisModel.DoesNotExist is DoesNotExist
    assert RedisModel.default_indexes is None
    assert RedisModel.available_getters == {"hmget", "hgetall", "hkeys", "hvals", "hlen"}
    assert RedisModel.available_modifiers == {"hmset", "hdel"}
    assert not hasattr(RedisModel, "database")
    assert not hasattr(RedisModel, "_name")


def test_does_not_exist_is_shared_and_unknown_attributes_ignored(database, namespace):
    db = database

    class Job(model.RedisModel):
        database = db
        namespace = "attrs"
        cacheable = False
        queue_name = "q"

    class Queue(model.RedisModel):
        database = db
        namespace = "attrs"

    assert Job.DoesNotExist is Queue.DoesNotExist is DoesNotExist
    assert Job.cacheable is False
    assert Job.queue_name == "q"
    assert Job._fields == ["pk"]


# ---------------------------------------------------------------------- _name, abstract, namespace, database


def test_name_building(database):
    db = database

    class Bike(model.RedisModel):
        database = db
        namespace = "shop"

    class Car(model.RedisModel):
        database = db

    class WithPK(model.RedisModel):
        database = db
        namespace = "a:b"

    class Tandem(model.RedisModel):
        database = db
        namespace = "Shop"

    class NoneNamespace(model.RedisModel):
        database = db
        namespace = None

    assert Bike._name == "shop:bike"
    assert Car._name == ":car"
    assert Car.namespace == ""
    assert WithPK._name == "a:b:withpk"
    assert Tandem._name == "Shop:tandem"  # only the class name is lowercased
    assert NoneNamespace._name == ":nonenamespace"
    assert NoneNamespace.namespace == ""
    assert db._models == {
        "shop:bike": Bike,
        ":car": Car,
        "a:b:withpk": WithPK,
        "Shop:tandem": Tandem,
        ":nonenamespace": NoneNamespace,
    }


def test_abstract_is_not_inherited(database, namespace):
    db = database

    class Base(model.RedisModel):
        database = db
        namespace = "abs"
        abstract = True

    class Concrete(Base):
        pass

    class AbstractAgain(Concrete):
        abstract = True

    class ConcreteAgain(AbstractAgain):
        pass

    assert Base.abstract is True
    assert Concrete.abstract is False
    assert AbstractAgain.abstract is True
    assert ConcreteAgain.abstract is False
    assert not hasattr(Base, "_name")
    assert "_name" not in AbstractAgain.__dict__  # may inherit one, has none of its own
    assert ConcreteAgain._name == "abs:concreteagain"
    assert db._models == {"abs:concrete": Concrete, "abs:concreteagain": ConcreteAgain}


def test_abstract_model_without_namespace_keeps_none():
    class NoDatabaseNoNamespace(model.RedisModel):
        abstract = True

    assert NoDatabaseNoNamespace.namespace is None
    assert NoDatabaseNoNamespace._fields == ["pk"]  # abstract classes have a pk too


def test_namespace_is_inherited(database):
    db = database

    class Base(model.RedisModel):
        database = db
        namespace = "inherited"
        abstract = True

    class Child(Base):
        pass

    class GrandChild(Child):
        pass

    class Renamed(Child):
        namespace = "other"

    assert Child.namespace == "inherited"
    assert Child._name == "inherited:child"
    assert GrandChild._name == "inherited:grandchild"
    assert Renamed._name == "other:renamed"


def test_database_is_mandatory():
    with pytest.raises(ImplementationError, match=r"^You must define a database for the model Orphan"):

        class Orphan(model.RedisModel):
            namespace = "nodb"


def test_database_must_be_a_redis_database(redis_settings):
    with pytest.raises(ImplementationError, match=r"^You must define a database for the model Fake"):

        class Fake(model.RedisModel):
            database = dict(redis_settings)


# ---------------------------------------------------------------------- collisions


def test_same_name_same_namespace_is_refused(database):
    db = database

    first_line = _line() + 2

    class Bike(model.RedisModel):
        database = db
        namespace = "clash"

    first = Bike
    second_line = _line() + 3
    with pytest.raises(ImplementationError) as excinfo:

        class Bike(model.RedisModel):
            database = db
            namespace = "clash"

    expected = (
        'A model with namespace "clash" and name "Bike" is already defined on this database '
        '(Attempt on "%s" line %s ; Already defined on "%s" line %s)'
        % (THIS_FILE, second_line, THIS_FILE, first_line)
    )
    assert str(excinfo.value).startswith(expected)
    assert db._models["clash:bike"] is first


def test_collision_is_case_insensitive(database):
    db = database

    first_line = _line() + 2

    class Bike(model.RedisModel):
        database = db
        namespace = "case"

    second_line = _line() + 3
    with pytest.raises(ImplementationError) as excinfo:

        class bike(model.RedisModel):  # noqa: N801
            database = db
            namespace = "case"

    message = str(excinfo.value)
    assert message.startswith(
        'A model with namespace "case" and name "bike" is already defined on this database'
    )
    assert '"%s" line %s' % (THIS_FILE, first_line) in message
    assert '"%s" line %s' % (THIS_FILE, second_line) in message
    assert db._models == {"case:bike": Bike}


def test_collision_without_namespace(database):
    db = database

    class Plain(model.RedisModel):
        database = db

    with pytest.raises(ImplementationError, match=r'^A model with namespace "" and name "Plain" is already'):

        class Plain(model.RedisModel):
            database = db


def test_same_definition_twice_returns_the_first_class(database):
    db = database

    def declare():
        class Twice(model.RedisModel):
            database = db
            namespace = "twice"
            name = InstanceHashField()

        return Twice

    first = declare()
    second = declare()
    assert second is first
    assert db._models == {"twice:twice": first}
    assert first._fields == ["pk", "name"]
    assert first._redis_attr_name._model is first


def test_same_code_executed_twice_returns_the_first_class(database):
    source = (
        "from limpyd import model, fields\n"
        "class Executed(model.RedisModel):\n"
        "    database = db\n"
        "    namespace = 'exec'\n"
        "    name = fields.InstanceHashField()\n"
    )
    code = compile(source, "/virtual/models.py", "exec")
    first_namespace = {"db": database, "__name__": "virtual.models"}
    second_namespace = {"db": database, "__name__": "virtual.models"}
    exec(code, first_namespace)
    exec(code, second_namespace)
    assert second_namespace["Executed"] is first_namespace["Executed"]
    assert first_namespace["Executed"]._creation_source == ("/virtual/models.py", 2)

    # the same code from another file is another definition
    with pytest.raises(ImplementationError, match=re.escape('"/elsewhere/models.py" line 2')):
        exec(compile(source, "/elsewhere/models.py", "exec"), {"db": database, "__name__": "elsewhere"})


def test_same_module_imported_under_two_names_returns_the_first_class(database, tmp_path):
    path = tmp_path / "shared_models.py"
    path.write_text(
        "from limpyd.model import RedisModel\n"
        "\n"
        "class Plane(RedisModel):\n"
        "    database = db\n"
        "    namespace = 'imported'\n"
    )
    modules = []
    for module_name in ("pkg_a.shared_models", "shared_models"):
        spec = importlib.util.spec_from_file_location(module_name, str(path))
        module = importlib.util.module_from_spec(spec)
        module.db = database
        spec.loader.exec_module(module)
        modules.append(module)
    assert modules[1].Plane is modules[0].Plane
    assert modules[0].Plane.__module__ == "pkg_a.shared_models"
    assert modules[0].Plane._creation_source == (str(path), 3)


def test_same_name_different_namespaces_coexist(database):
    db = database

    class Bike(model.RedisModel):
        database = db
        namespace = "first"

    first = Bike

    class Bike(model.RedisModel):
        database = db
        namespace = "second"

    assert first is not Bike
    assert db._models == {"first:bike": first, "second:bike": Bike}


def test_same_name_different_databases_coexist(database, redis_settings):
    db = database
    db2 = RedisDatabase(**redis_settings)  # same server, another registry

    class Bike(model.RedisModel):
        database = db
        namespace = "dbs"

    first = Bike

    class Bike(model.RedisModel):
        database = db2
        namespace = "dbs"

    assert first is not Bike
    assert db._models == {"dbs:bike": first}
    assert db2._models == {"dbs:bike": Bike}


# ---------------------------------------------------------------------- _creation_source


def test_creation_source_is_the_class_statement(database):
    db = database

    line = _line() + 2

    class Located(model.RedisModel):
        database = db
        namespace = "src"
        name = InstanceHashField()

    assert Located._creation_source == (THIS_FILE, line)


def test_creation_source_of_a_multi_line_class_header(database):
    db = database

    line = _line() + 2

    class MultiLine(
        model.RedisModel,
    ):
        database = db
        namespace = "src"

    assert MultiLine._creation_source == (THIS_FILE, line)


def test_creation_source_with_a_user_metaclass(database):
    db = database
    seen = []

    class UserMeta(MetaRedisModel):
        def __new__(mcs, name, bases, attrs):
            seen.append(name)
            return super().__new__(mcs, name, bases, attrs)

    class DeeperMeta(UserMeta):
        def __new__(mcs, name, bases, attrs):
            return super().__new__(mcs, name, bases, attrs)

    line = _line() + 2

    class WithMeta(model.RedisModel, metaclass=UserMeta):
        database = db
        namespace = "src"

    deeper_line = _line() + 2

    class WithDeeperMeta(model.RedisModel, metaclass=DeeperMeta):
        database = db
        namespace = "src"

    assert seen == ["WithMeta", "WithDeeperMeta"]
    assert WithMeta._creation_source == (THIS_FILE, line)
    assert WithDeeperMeta._creation_source == (THIS_FILE, deeper_line)


_SIX_LIKE_SOURCE = """
def with_metaclass(meta, *bases):
    class metaclass(type):
        def __new__(cls, name, this_bases, d):
            return meta(name, bases, d)

        @classmethod
        def __prepare__(cls, name, this_bases):
            return meta.__prepare__(name, bases)

    return type.__new__(metaclass, "temporary_class", (), {})
"""


def test_creation_source_through_six_with_metaclass(database):
    six_namespace = {"__name__": "six"}
    exec(compile(_SIX_LIKE_SOURCE, "/virtual/six.py", "exec"), six_namespace)
    with_metaclass = six_namespace["with_metaclass"]
    db = database

    line = _line() + 2

    class SixModel(with_metaclass(MetaRedisModel, model.RedisModel)):
        database = db
        namespace = "src"

    assert SixModel._creation_source == (THIS_FILE, line)


# ---------------------------------------------------------------------- use_database


def test_use_database_moves_a_concrete_model(database, other_database, redis_settings):
    db = database

    class Moving(model.RedisModel):
        database = db
        namespace = "move"

    assert Moving.use_database(other_database) == [Moving]
    assert Moving.database is other_database
    assert "database" in Moving.__dict__
    assert other_database._models == {"move:moving": Moving}
    assert db._models == {}

    # the commands now go to db 1
    assert Moving().pk.get() == "1"
    client_db1 = redis.Redis(**dict(redis_settings, db=1), decode_responses=True)
    try:
        assert client_db1.get("move:moving:max_pk") == "1"
    finally:
        client_db1.close()
    assert db.connection.get("move:moving:max_pk") is None

    # the old database accepts another model of that name now
    class Moving(model.RedisModel):
        database = db
        namespace = "move"

    assert db._models == {"move:moving": Moving}


def test_use_database_is_a_no_op_when_already_there(database):
    db = database

    class Staying(model.RedisModel):
        database = db
        namespace = "move"

    assert Staying.use_database(db) == []
    assert Staying.database is db
    assert db._models == {"move:staying": Staying}


def test_use_database_moves_subclasses_of_an_abstract_base(database, other_database, redis_settings):
    db = database
    third = RedisDatabase(**redis_settings)

    class Base(model.RedisModel):
        database = db
        namespace = "tree"
        abstract = True

    class A(Base):
        pass

    class B(Base):
        pass

    class C(A):
        pass

    class D(C):
        pass

    class Elsewhere(Base):
        database = third

    class BelowElsewhere(Elsewhere):
        pass

    class E(B):
        pass

    moved = Base.use_database(other_database)
    assert moved == [Base, A, C, D, B, E]
    for moved_model in moved:
        assert moved_model.database is other_database
        assert "database" in moved_model.__dict__
    assert other_database._models == {
        "tree:a": A,
        "tree:b": B,
        "tree:c": C,
        "tree:d": D,
        "tree:e": E,
    }
    assert db._models == {}
    assert Elsewhere.database is third
    assert BelowElsewhere.database is third
    assert third._models == {"tree:elsewhere": Elsewhere, "tree:belowelsewhere": BelowElsewhere}


def test_use_database_moves_concrete_subclasses_of_a_concrete_model(database, other_database):
    db = database

    class Parent(model.RedisModel):
        database = db
        namespace = "conc"

    class Child(Parent):
        pass

    assert Parent.use_database(other_database) == [Parent, Child]
    assert other_database._models == {"conc:parent": Parent, "conc:child": Child}
    assert db._models == {}

    # moving the child back alone leaves the parent where it is
    assert Child.use_database(db) == [Child]
    assert Parent.database is other_database
    assert db._models == {"conc:child": Child}
    assert other_database._models == {"conc:parent": Parent}


def test_use_database_on_an_abstract_model_without_database(database, other_database):
    class NoDatabase(model.RedisModel):
        abstract = True
        namespace = "nodb"

    class AlsoAbstract(NoDatabase):
        abstract = True

    class OwnDatabase(NoDatabase):
        database = other_database

    assert NoDatabase.use_database(database) == [NoDatabase, AlsoAbstract]
    assert NoDatabase.database is database
    assert AlsoAbstract.database is database
    assert OwnDatabase.database is other_database
    assert database._models == {}
    assert other_database._models == {"nodb:owndatabase": OwnDatabase}

    class NowConcrete(AlsoAbstract):
        pass

    assert database._models == {"nodb:nowconcrete": NowConcrete}


def test_use_database_collision_on_the_target(database, other_database):
    db = database

    class Clashing(model.RedisModel):
        database = other_database
        namespace = "move"

    target = Clashing

    class Clashing(model.RedisModel):
        database = db
        namespace = "move"

    with pytest.raises(ImplementationError, match=r'^A model with namespace "move" and name "Clashing"'):
        Clashing.use_database(other_database)
    assert Clashing.database is db
    assert db._models == {"move:clashing": Clashing}
    assert other_database._models == {"move:clashing": target}


def test_use_database_is_a_classmethod_returning_a_list(database, other_database):
    db = database

    class Listed(model.RedisModel):
        database = db
        namespace = "move"

    assert isinstance(inspect.getattr_static(RedisModel, "use_database"), classmethod)
    moved = Listed.use_database(other_database)
    assert type(moved) is list
    assert moved == [Listed]


# ---------------------------------------------------------------------- thread safety


def test_models_declared_from_threads(database):
    threads_count, per_thread = 8, 25
    barrier = threading.Barrier(threads_count)
    errors = []
    created = {}

    def declare(thread_index):
        try:
            barrier.wait()
            for index in range(per_thread):
                name = "Threaded%d_%d" % (thread_index, index)
                cls = MetaRedisModel(
                    name,
                    (RedisModel,),
                    {
                        "__module__": __name__,
                        "__qualname__": name,
                        "database": database,
                        "namespace": "threads",
                    },
                )
                created[cls._name] = cls
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=declare, args=(index,)) for index in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(database._models) == threads_count * per_thread
    assert database._models == created


def test_same_model_declared_from_threads(database):
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    results = []

    class SlowRegistry(dict):
        """A registry whose lookups are slow, so that unserialized registrations would race."""

        def get(self, *args):
            value = super().get(*args)
            time.sleep(0.002)
            return value

    database._models = SlowRegistry()

    def declare():
        barrier.wait()

        class Racing(model.RedisModel):
            database = barrier_database
            namespace = "race"

        results.append(Racing)

    barrier_database = database
    threads = [threading.Thread(target=declare) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == threads_count
    assert len(set(results)) == 1
    assert database._models == {"race:racing": results[0]}


# ---------------------------------------------------------------------- fields


def test_fields_order_pk_first(database):
    db = database

    class Bike(model.RedisModel):
        database = db
        namespace = "fields"
        name = InstanceHashField()
        wheels = InstanceHashField()
        passengers = InstanceHashField()

    class MotorBike(Bike):
        power = InstanceHashField()

    assert Bike._fields == ["pk", "name", "wheels", "passengers"]
    assert MotorBike._fields == ["pk", "name", "wheels", "passengers", "power"]
    assert Bike._instancehash_fields == ["name", "wheels", "passengers"]
    assert MotorBike._instancehash_fields == ["name", "wheels", "passengers", "power"]
    assert type(Bike._fields) is list
    assert MotorBike._fields is not Bike._fields
    assert MotorBike._instancehash_fields is not Bike._instancehash_fields
    assert [field.name for field in Bike.get_class_fields()] == Bike._fields
    assert [field.name for field in MotorBike.get_fields()] == MotorBike._fields


def test_fields_ordered_by_creation_not_by_name(database):
    db = database
    created_first = InstanceHashField()
    created_second = InstanceHashField()

    class Ordered(model.RedisModel):
        database = db
        namespace = "fields"
        zeta = InstanceHashField()
        alpha = InstanceHashField()
        b = created_second
        a = created_first

    assert Ordered._fields == ["pk", "a", "b", "zeta", "alpha"]
    assert Ordered._redis_attr_a is created_first
    assert created_first.name == "a"
    assert created_first._model is Ordered


def test_auto_pk(database):
    db = database

    class AutoPk(model.RedisModel):
        database = db
        namespace = "fields"
        name = InstanceHashField()

    pk = AutoPk.get_field("pk")
    assert type(pk) is AutoPKField
    assert pk._auto_added is True
    assert pk.name == "pk"
    assert pk._model is AutoPk
    assert AutoPk._redis_attr_pk is pk


def test_declared_auto_pk_renames_the_pk(database):
    db = database

    class WithId(model.RedisModel):
        database = db
        namespace = "fields"
        name = InstanceHashField()
        id = AutoPKField()

    assert WithId._fields == ["id", "name"]
    assert "pk" not in WithId._fields
    assert WithId.has_field("pk")
    assert WithId.has_field("id")
    assert WithId.get_field("pk") is WithId.get_field("id")
    assert WithId._redis_attr_pk is WithId._redis_attr_id
    assert WithId.get_field("pk")._auto_added is False
    assert WithId._field_is_pk("pk") and WithId._field_is_pk("id")
    assert not WithId._field_is_pk("name")

    instance = WithId()
    assert instance.pk is instance.id
    assert instance.get_field("pk") is instance.id
    assert instance.pk.get() == "1"


def test_own_pk_replaces_an_inherited_auto_pk(database):
    db = database

    class Base(model.RedisModel):
        database = db
        namespace = "fields"
        abstract = True
        name = InstanceHashField()

    class Keyed(Base):
        ident = PKField()

    assert Base._fields == ["pk", "name"]
    assert Keyed._fields == ["ident", "name"]
    assert type(Keyed.get_field("pk")) is PKField
    assert Keyed.get_field("pk") is Keyed._redis_attr_ident


def test_two_pk_fields_are_refused(database):
    db = database

    with pytest.raises(ImplementationError, match=r"^Only one PKField field is allowed on TwoPks"):

        class TwoPks(model.RedisModel):
            database = db
            namespace = "fields"
            first = PKField()
            second = AutoPKField()


def test_explicit_inherited_pk_cannot_be_replaced(database):
    db = database

    class Base(model.RedisModel):
        database = db
        namespace = "fields"
        abstract = True
        ident = PKField()

    with pytest.raises(ImplementationError, match=r"^Only one PKField field is allowed on Child"):

        class Child(Base):
            other = AutoPKField()

    class Inheriting(Base):
        name = InstanceHashField()

    assert Inheriting._fields == ["ident", "name"]


def test_inherited_fields_are_copied(database):
    db = database

    class Parent(model.RedisModel):
        database = db
        namespace = "fields"
        name = InstanceHashField()

    class Child(Parent):
        other = InstanceHashField()

    class GrandChild(Child):
        pass

    for name in ("pk", "name"):
        objects = [Parent.get_field(name), Child.get_field(name), GrandChild.get_field(name)]
        assert len({id(field) for field in objects}) == 3
        assert [field._model for field in objects] == [Parent, Child, GrandChild]
        assert all(field.name == name for field in objects)
    assert Child.get_field("other") is not GrandChild.get_field("other")
    assert GrandChild.get_field("other")._model is GrandChild
    assert type(GrandChild.get_field("name")) is InstanceHashField


def test_field_class_attributes_are_removed(database):
    db = database
    field = InstanceHashField()

    class Stripped(model.RedisModel):
        database = db
        namespace = "fields"
        name = field
        _private = InstanceHashField()

    # the declared field moves to _redis_attr_<name>; the class attribute now makes the field of
    # an instance on first access, and gives the model-level field on the class
    assert Stripped.__dict__["name"] is not field and Stripped.name is field
    assert Stripped._redis_attr_name is field
    # names starting with "_" are no fields
    assert Stripped._fields == ["pk", "name"]
    assert isinstance(Stripped.__dict__["_private"], InstanceHashField)
    assert not hasattr(Stripped, "_redis_attr__private")


def test_fields_of_a_mixin_are_not_fields(database):
    db = database

    class Mixin:
        extra = InstanceHashField()

    class Mixed(Mixin, model.RedisModel):
        database = db
        namespace = "fields"
        name = InstanceHashField()

    assert Mixed._fields == ["pk", "name"]
    assert not Mixed.has_field("extra")


def test_attach_to_model_may_set_the_plain_attribute_again(database):
    db = database
    present_when_attached = []

    class ModelLevelField(InstanceHashField):
        def _attach_to_model(self, model_class):
            super()._attach_to_model(model_class)
            present_when_attached.append((model_class.__name__, self.name in model_class.__dict__))
            setattr(model_class, self.name, self)

    class Tagged(model.RedisModel):
        database = db
        namespace = "fields"
        tags = ModelLevelField()

    class SubTagged(Tagged):
        pass

    assert present_when_attached == [("Tagged", False), ("SubTagged", False)]
    assert Tagged.tags is Tagged._redis_attr_tags
    assert SubTagged.tags is SubTagged._redis_attr_tags
    assert SubTagged._fields == ["pk", "tags"]


def test_get_class_field(database):
    db = database

    class Lookup(model.RedisModel):
        database = db
        namespace = "fields"
        name = InstanceHashField()

    assert Lookup.get_class_field("name") is Lookup._redis_attr_name
    assert Lookup.get_field("pk") is Lookup._redis_attr_pk
    assert RedisModel.__dict__["get_field"] is RedisModel.__dict__["get_class_field"]
    with pytest.raises(AttributeError) as excinfo:
        Lookup.get_class_field("nope")
    assert str(excinfo.value) == '"nope" is not a field for the model "Lookup"'
    with pytest.raises(AttributeError) as excinfo:
        Lookup().get_field("nope")
    assert str(excinfo.value) == '"nope" is not a field for the model "Lookup"'


def test_get_class_field_dispatches_to_an_overridden_has_field(database):
    db = database
    created = []

    class Dynamic(model.RedisModel):
        database = db
        namespace = "fields"
        name = InstanceHashField()

        @classmethod
        def has_field(cls, name):
            return name.startswith("dyn_") or super().has_field(name)

    with pytest.raises(AttributeError, match="_redis_attr_dyn_x"):
        Dynamic.get_class_field("dyn_x")

    class Creating(Dynamic):
        @classmethod
        def get_class_field(cls, name):
            try:
                return super().get_class_field(name)
            except AttributeError:
                if not name.startswith("dyn_"):
                    raise
                field = InstanceHashField()
                field.name = name
                field._attach_to_model(cls)
                setattr(cls, "_redis_attr_%s" % name, field)
                created.append(name)
                return field

        get_field = get_class_field

    field = Creating.get_field("dyn_a")
    assert Creating.get_field("dyn_a") is field
    assert created == ["dyn_a"]
    assert Creating._fields == ["pk", "name"]
    with pytest.raises(AttributeError, match='"other" is not a field for the model "Creating"'):
        Creating.get_field("other")


def test_has_field(database):
    db = database

    class Having(model.RedisModel):
        database = db
        namespace = "fields"
        name = InstanceHashField()

    assert Having.has_field("pk")
    assert Having.has_field("name")
    assert not Having.has_field("nope")
    assert not Having.has_field("_redis_attr_name")


def test_make_key_and_sort_wildcard(database):
    db = database

    class Keys(model.RedisModel):
        database = db
        namespace = "keys"

    class NoNamespace(model.RedisModel):
        database = db

    assert Keys.make_key("a", 1, "clé") == "a:1:clé"
    assert Keys.make_key() == ""
    assert Keys.sort_wildcard() == "keys:keys:*:hash"
    assert NoNamespace.sort_wildcard() == ":nonamespace:*:hash"


def test_scan_model_keys(database):
    db = database

    class Scanned(model.RedisModel):
        database = db
        namespace = "scan"
        name = InstanceHashField()

    class Inner(model.RedisModel):  # namespace "scan:scanned": its keys match "scan:scanned:*" too
        database = db
        namespace = "scan:scanned"

    class Unrelated(model.RedisModel):
        database = db
        namespace = "scan"

    for _ in range(3):
        Scanned().pk.get()
    Inner().pk.get()
    Unrelated().pk.get()
    db.connection.hset("scan:scanned:1:hash", "name", "x")

    expected = {
        "scan:scanned:collection",
        "scan:scanned:max_pk",
        "scan:scanned:1:hash",
        "scan:scanned:inner:collection",
        "scan:scanned:inner:max_pk",
    }
    assert set(Scanned.scan_model_keys()) == expected
    assert set(Scanned.scan_model_keys(count=1)) == expected
    assert set(Scanned.scan_model_keys(2)) == expected
    assert set(Unrelated.scan_model_keys()) == {"scan:unrelated:collection", "scan:unrelated:max_pk"}


def test_scan_model_keys_calls_scan_keys_positionally(database, monkeypatch):
    db = database
    calls = []

    class Recorded(model.RedisModel):
        database = db
        namespace = "scan"

    def scan_keys(*args, **kwargs):
        calls.append((args, kwargs))
        return iter(["x"])

    monkeypatch.setattr(db, "scan_keys", scan_keys)
    assert list(Recorded.scan_model_keys(5)) == ["x"]
    assert list(Recorded.scan_model_keys()) == ["x"]
    assert calls == [(("scan:recorded:*", 5), {}), (("scan:recorded:*", None), {})]


# ---------------------------------------------------------------------- default indexes


class _OtherIndex(EqualIndex):
    pass


class _FieldClassIndex(EqualIndex):
    pass


class _IndexedByDefaultField(InstanceHashField):
    default_indexes = [_FieldClassIndex]


def test_get_default_indexes_model_then_database(database):
    db = database

    class NoIndexesDatabase(RedisDatabase):
        default_indexes = None

    class FromDatabase(model.RedisModel):
        database = db
        namespace = "idx"

    class FromModel(model.RedisModel):
        database = db
        namespace = "idx"
        default_indexes = [_OtherIndex]

    class Empty(model.RedisModel):
        database = NoIndexesDatabase(**db.connection_settings)
        namespace = "idx"

    assert FromDatabase.get_default_indexes() == [EqualIndex]
    assert FromModel.get_default_indexes() == [_OtherIndex]
    assert Empty.get_default_indexes() == []


def test_indexable_fields_get_default_index_classes(database):
    db = database

    class Indexed(model.RedisModel):
        database = db
        namespace = "idx"
        from_database = InstanceHashField(indexable=True)
        declared = InstanceHashField(indexable=True, indexes=[_OtherIndex])
        from_field_class = _IndexedByDefaultField(indexable=True)
        not_indexable = InstanceHashField()

    class ModelDefaults(model.RedisModel):
        database = db
        namespace = "idx"
        default_indexes = [_OtherIndex]
        from_model = InstanceHashField(indexable=True)
        from_field_class = _IndexedByDefaultField(indexable=True)

    assert Indexed.get_field("from_database").index_classes == [EqualIndex]
    assert Indexed.get_field("from_database").index_classes is not RedisDatabase.default_indexes
    assert Indexed.get_field("declared").index_classes == [_OtherIndex]
    assert Indexed.get_field("from_field_class").index_classes == [_FieldClassIndex]
    assert Indexed.get_field("not_indexable").index_classes == []
    assert ModelDefaults.get_field("from_model").index_classes == [_OtherIndex]
    assert ModelDefaults.get_field("from_model").index_classes is not ModelDefaults.default_indexes
    assert ModelDefaults.get_field("from_field_class").index_classes == [_FieldClassIndex]


def test_abstract_model_without_database_and_default_indexes_fails():
    with pytest.raises(AttributeError):

        class Abstract(model.RedisModel):
            abstract = True
            namespace = "idx"
            name = InstanceHashField(indexable=True)


def test_indexable_field_without_any_index_class(database):
    class NoIndexesDatabase(RedisDatabase):
        default_indexes = None

    no_indexes = NoIndexesDatabase(**database.connection_settings)
    with pytest.raises(
        ImplementationError, match=r"^InstanceHashField field is indexable but has no indexes attached"
    ):

        class Unindexed(model.RedisModel):
            database = no_indexes
            namespace = "idx"
            name = InstanceHashField(indexable=True)


def test_field_model_ready_hook_and_multi_fields_indexes(database):
    db = database
    ready_calls = []

    class Recording(EqualIndex):
        @classmethod
        def _field_model_ready(cls, model_class, field):
            ready_calls.append((cls, model_class, field.name, field is model_class.get_field(field.name)))

    class MultiField(BaseIndex):
        filter_single_field = False

        @classmethod
        def _field_model_ready(cls, model_class, field):
            ready_calls.append((cls, model_class, field.name, field is model_class.get_field(field.name)))

    class Hooked(model.RedisModel):
        database = db
        namespace = "idx"
        plain = InstanceHashField()
        single = InstanceHashField(indexable=True, indexes=[Recording])
        multi = InstanceHashField(indexable=True, indexes=[Recording, MultiField])

    assert ready_calls == [
        (Recording, Hooked, "single", True),
        (Recording, Hooked, "multi", True),
        (MultiField, Hooked, "multi", True),
    ]
    multi_indexes = Hooked._multi_fields_index_for_filtering
    assert len(multi_indexes) == 1
    assert type(multi_indexes[0]) is MultiField
    assert multi_indexes[0].field is Hooked.get_field("multi")

    del ready_calls[:]

    class SubHooked(Hooked):
        pass

    assert ready_calls == [
        (Recording, SubHooked, "single", True),
        (Recording, SubHooked, "multi", True),
        (MultiField, SubHooked, "multi", True),
    ]
    assert SubHooked._multi_fields_index_for_filtering[0].field is SubHooked.get_field("multi")


# ---------------------------------------------------------------------- instances: no surprise writes


def test_blank_instance_writes_nothing(database, count_commands):
    db = database

    class Blank(model.RedisModel):
        database = db
        namespace = "inst"
        name = InstanceHashField()

    with count_commands(0):
        instance = Blank()
    assert instance._pk is None
    assert instance.connected is False
    assert db.connection.dbsize() == 0


def test_first_pk_get_allocates_with_two_commands(database, count_commands):
    db = database

    class Allocated(model.RedisModel):
        database = db
        namespace = "inst"

    instance = Allocated()
    stats_before = db.connection.info("commandstats")
    with count_commands(2):
        assert instance.pk.get() == "1"
    stats_after = db.connection.info("commandstats")
    for command in ("incrby", "sadd"):
        key = "cmdstat_%s" % command
        assert stats_after[key]["calls"] - stats_before.get(key, {}).get("calls", 0) == 1, command
    with count_commands(0):
        assert instance.pk.get() == "1"
    assert instance.connected is True
    assert instance._pk == "1"
    assert db.connection.get("inst:allocated:max_pk") == "1"
    assert db.connection.smembers("inst:allocated:collection") == {"1"}
    assert Allocated().pk.get() == "2"


def test_loading_by_pk_costs_one_command(database, count_commands):
    db = database

    class Loaded(model.RedisModel):
        database = db
        namespace = "inst"

    Loaded().pk.get()
    with count_commands(1):
        instance = Loaded(1)
    assert instance._pk == "1"
    assert instance.connected is True

    with count_commands(1):
        with pytest.raises(DoesNotExist) as excinfo:
            Loaded(42)
    assert str(excinfo.value) == "No Loaded found with pk 42"


def test_lazy_connect_costs_nothing(database, count_commands):
    db = database

    class Lazy(model.RedisModel):
        database = db
        namespace = "inst"

    with count_commands(0):
        instance = Lazy.lazy_connect(5)
    assert instance._pk == "5"
    assert instance.connected is False


def test_repr_never_writes(database, count_commands):
    db = database

    class Shown(model.RedisModel):
        database = db
        namespace = "inst"

    instance = Shown()
    with count_commands(0):
        text = repr(instance)
    assert text == object.__repr__(instance)[:-1] + " (pk=None)>"
    assert re.fullmatch(r"<[\w.<>]+\.Shown object at 0x[0-9a-fA-F]+ \(pk=None\)>", text), text
    assert db.connection.dbsize() == 0

    instance.pk.get()
    with count_commands(0):
        assert repr(instance).endswith(" (pk=1)>")

    lazy = Shown.lazy_connect(99)
    with count_commands(0):
        assert repr(lazy).endswith(" (pk=99)>")

    del instance._pk  # the state of a deleted instance
    with count_commands(0):
        assert repr(instance).endswith(" (pk=None)>")


def test_field_is_a_redis_field_subclass_only():
    class NotAField:
        pass

    class Holder(model.RedisModel):
        abstract = True
        something = NotAField()

    assert Holder._fields == ["pk"]
    assert isinstance(Holder.__dict__["something"], NotAField)
    assert issubclass(InstanceHashField, RedisField)
