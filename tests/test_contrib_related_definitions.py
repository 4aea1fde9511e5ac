"""``limpyd.contrib.related``, part 2: definitions — related names, targets, registration, errors.

``use_database``, how a related field attaches to its model and the ``database._relations``
registry (docs/contrib.rst, "Related models").
"""

from __future__ import annotations

import pytest

from limpyd.contrib.related import (
    FKInstanceHashField,
    FKStringField,
    M2MListField,
    M2MSetField,
    M2MSortedSetField,
    RelatedCollection,
    RelatedModel,
)
from limpyd.database import RedisDatabase
from limpyd.exceptions import ImplementationError
from limpyd.fields import PKField, StringField
from limpyd.model import RedisModel


@pytest.fixture
def RBase(database, namespace):
    db, ns = database, namespace

    class RBase(RelatedModel):
        database = db
        namespace = ns
        abstract = True

    return RBase


@pytest.fixture
def other_database(redis_settings):
    return RedisDatabase(**redis_settings)


# ---------------------------------------------------------------------- related names (step 1)


def test_default_related_name(RBase, database, namespace):
    class Person(RBase):
        pass

    class Customer(RBase):
        friend = FKStringField(Person)

    assert Customer.get_field("friend").related_name == "customer_set"
    assert database._relations[namespace + ":person"] == [(namespace + ":customer", "friend", "customer_set")]
    assert type(Person().customer_set) is RelatedCollection


def test_related_name_placeholders(database):
    db = database

    class Person(RelatedModel):
        database = db
        namespace = "shop-v2"

    class Customer(RelatedModel):
        database = db
        namespace = "shop-v2"
        a = FKStringField(Person, related_name="%(namespace)s_%(model)s_set")
        b = M2MSetField(Person, related_name="Explicit_Name")
        c = M2MListField(Person, related_name="%(model)s")
        d = M2MSortedSetField(Person, related_name="by_%(namespace)s")

    names = [Customer.get_field(name).related_name for name in "abcd"]
    assert names == ["shop_v2_customer_set", "explicit_name", "customer", "by_shop_v2"]  # lower-cased
    assert Person().related_collections == names


def test_related_name_unknown_placeholder(RBase, database):
    class Person(RBase):
        pass

    with pytest.raises(KeyError) as info:

        class Customer(RBase):
            friend = FKStringField(Person, related_name="%(app)s_friends")

    assert isinstance(info.value, ImplementationError)
    message = str(info.value)
    assert message.startswith(
        "Unknown placeholder %(app)s in the related_name '%(app)s_friends' of the field Customer.friend"
    )
    assert "%(namespace)s and %(model)s" in message
    assert database._relations == {}


def test_related_name_bad_template(RBase):
    class Person(RBase):
        pass

    with pytest.raises(
        ImplementationError,
        match=r"^The related_name '50%' of the field Customer.friend .*not a valid template",
    ):

        class Customer(RBase):
            friend = FKStringField(Person, related_name="50%")


@pytest.mark.parametrize("name", ["my-friends", "friends of %(model)s", "é!", "a.b"])
def test_related_name_not_an_identifier(RBase, database, name):
    class Person(RBase):
        pass

    with pytest.raises(ImplementationError) as info:

        class Customer(RBase):
            friend = M2MSetField(Person, related_name=name)

    final = name % {"model": "Customer"}
    assert str(info.value).startswith('The related_name "%s" is not a valid python identifier' % final)
    assert "Customer.friend" in str(info.value)
    assert database._relations == {}


def test_related_name_keeps_unicode_letters(RBase):
    class Person(RBase):
        pass

    class Customer(RBase):
        friend = M2MSetField(Person, related_name="amis_Été")

    assert Customer.get_field("friend").related_name == "amis_été"


# ---------------------------------------------------------------------- targets (step 2)


def test_target_forms(database, namespace):
    db, ns = database, namespace

    class Person(RelatedModel):
        database = db
        namespace = ns

    class Elsewhere(RelatedModel):
        database = db
        namespace = "Other:Space"

    class Owner(RelatedModel):
        database = db
        namespace = ns
        by_class = FKStringField(Person, related_name="r1")
        by_name = FKStringField("Person", related_name="r2")
        by_full_name = FKStringField(ns + ":Person", related_name="r3")
        by_other_namespace = FKStringField("Other:Space:ELSEWHERE", related_name="r4")
        itself = FKStringField("self", related_name="r5")

    targets = [
        Owner.get_field(name).related_to
        for name in ("by_class", "by_name", "by_full_name", "by_other_namespace", "itself")
    ]
    assert targets == [ns + ":person"] * 3 + ["other:space:elsewhere", ns + ":owner"]
    # the target is found case-insensitively (decision: upstream failed on an upper-case namespace)
    assert Owner.get_field("by_other_namespace").related_model is Elsewhere
    assert Owner.get_field("by_name").related_model is Person
    elsewhere = Elsewhere()
    elsewhere.pk.get()
    assert type(elsewhere.r4) is RelatedCollection
    owner = Owner(by_other_namespace=elsewhere)
    assert owner.by_other_namespace.instance() == elsewhere
    assert list(elsewhere.r4()) == [owner._pk]


def test_target_without_namespace(database):
    db = database

    class Person(RelatedModel):
        database = db

    class Owner(RelatedModel):
        database = db
        friend = FKStringField("Person")

    assert Owner.get_field("friend").related_to == ":person"
    assert Owner.get_field("friend").related_model is Person


@pytest.mark.parametrize("to", [42, None, "", object(), RedisModel, StringField])
def test_bad_target(RBase, database, to):
    with pytest.raises(ImplementationError) as info:

        class Owner(RBase):
            friend = FKStringField(to)

    message = str(info.value)
    assert message.startswith(
        "The `to` argument to a related field must be a RelatedModel as a class or as a string (with or without "
        "namespace). Or simply 'self'."
    )
    assert "Owner.friend" in message and repr(to) in message
    assert database._relations == {}


def test_plain_model_class_target(RBase, database, namespace):
    db = database

    class Plain(RedisModel):
        database = db
        namespace = "x"

    with pytest.raises(
        ImplementationError, match="^The `to` argument to a related field must be a RelatedModel"
    ):

        class Owner(RBase):
            friend = M2MSetField(Plain)


def test_abstract_target_class(RBase):
    with pytest.raises(
        ImplementationError,
        match=r"^The `to` argument to the related field Owner.friend .* is the abstract model",
    ):

        class Owner(RBase):
            friend = M2MSetField(RBase)


def test_lazy_reference_to_a_later_model(RBase, database, namespace):
    class Owner(RBase):
        friend = FKInstanceHashField("Person")
        friends = M2MSetField("Person", related_name="fans")

    owner = Owner(friend="p1", friends=["p1", "p2"])  # no target needed to write
    assert owner.friends.smembers() == {"p1", "p2"}

    class Person(RBase):
        id = PKField()

    p1 = Person(id="p1")
    assert owner.friend.instance() == p1
    assert list(owner.friends()) == ["p1"]
    assert list(p1.fans()) == [owner._pk] and list(p1.owner_set()) == [owner._pk]


def test_target_never_defined(RBase, namespace, count_commands):
    class Owner(RBase):
        friend = FKStringField("Ghost")
        friends = M2MSetField("Ghost", related_name="fans")

    owner = Owner(friend="g1", friends=["g1"])
    for call in (
        owner.friend.instance,
        owner.friends,
        owner.friends.collection,
        lambda: owner.friend.instance(lazy=True),
    ):
        with count_commands(0):  # fails before reading anything
            with pytest.raises(KeyError) as info:
                call()
        assert isinstance(info.value, ImplementationError)
        message = str(info.value)
        assert message.startswith("No model '%s:ghost' on the database of " % namespace)
        assert "Owner.friend" in message and "`to`" in message


def test_related_model_of_an_abstract_owner(RBase):
    class Person(RBase):
        pass

    class AbstractOwner(RBase):
        abstract = True
        friend = FKStringField(Person)

    with pytest.raises(ImplementationError, match="abstract model"):
        AbstractOwner.get_field("friend").related_model


# ---------------------------------------------------------------------- registration (step 3)


def test_two_fks_without_names_collide(RBase, database, namespace):
    class Person(RBase):
        pass

    with pytest.raises(ImplementationError) as info:

        class Team(RBase):
            captain = FKStringField(Person)
            coach = FKStringField(Person)

    assert str(info.value).startswith(
        "The related name defined for the field 'Team.coach', named 'team_set', already exists on the model "
        "'%s:person' (tied to the field 'captain.%s:team')" % (namespace, namespace)
    )
    assert "related_name=" in str(info.value)
    # nothing of the failed class stays registered (neither the model nor its first relation)
    assert database._relations == {namespace + ":person": []}
    assert namespace + ":team" not in database._models

    class Team(RBase):
        captain = FKStringField(Person)
        coach = FKStringField(Person, related_name="coached")

    assert [r[2] for r in database._relations[namespace + ":person"]] == ["team_set", "coached"]
    assert database._models[namespace + ":team"] is Team


def test_same_related_name_from_two_models(RBase, namespace):
    class Person(RBase):
        pass

    class Team(RBase):
        members = M2MSetField(Person, related_name="groups")

    with pytest.raises(
        ImplementationError,
        match="^The related name defined for the field 'Club.members', named "
        "'groups', already exists on the model '%s:person' \\(tied to the "
        "field 'members.%s:team'\\)" % (namespace, namespace),
    ):

        class Club(RBase):
            members = M2MSetField(Person, related_name="Groups")


def test_same_related_name_on_two_targets(RBase, database, namespace):
    class Person(RBase):
        pass

    class Place(RBase):
        pass

    class Event(RBase):
        guests = M2MSetField(Person, related_name="events")
        venues = M2MSetField(Place, related_name="events")

    assert sorted(database._relations) == [namespace + ":person", namespace + ":place"]


def test_same_related_name_on_two_databases(database, other_database, namespace):
    db, other, ns = database, other_database, namespace

    class Person(RelatedModel):
        database = db
        namespace = ns

    class Team(RelatedModel):
        database = db
        namespace = ns
        members = M2MSetField(Person)

    class Club(RelatedModel):
        database = other
        namespace = ns
        members = M2MSetField("Person", related_name="team_set")

    assert other._relations == {ns + ":person": [(ns + ":club", "members", "team_set")]}
    assert db._relations == {ns + ":person": [(ns + ":team", "members", "team_set")]}


def test_reattaching_the_same_relation_is_harmless(RBase, database, namespace):
    class Person(RBase):
        pass

    class Team(RBase):
        members = M2MSetField(Person)

    field = Team.get_field("members")
    field._attach_to_model(Team)
    assert database._relations[namespace + ":person"] == [(namespace + ":team", "members", "team_set")]
    assert field._assert_relation_does_not_exists() is True


def test_related_name_hiding_a_field_or_attribute_of_the_target(RBase, database, namespace):
    class Person(RBase):
        name = StringField()

    for related_name, what in (
        ("name", "field"),
        ("delete", "attribute"),
        ("pk", "field"),
        ("fields", "attribute"),
    ):
        with pytest.raises(ImplementationError) as info:

            class Team(RBase):
                members = M2MSetField(Person, related_name=related_name)

        message = str(info.value)
        assert message.startswith("The related name '%s' of the field Team.members" % related_name)
        assert "would hide the %s '%s'" % (what, related_name) in message and "related_name=" in message
    assert database._relations == {}


def test_abstract_owner_registers_nothing(RBase, database, namespace):
    class Person(RBase):
        pass

    class Membership(RBase):
        abstract = True
        person = FKStringField(Person, related_name="%(model)s_memberships")
        sponsor = FKStringField("self", related_name="sponsored_%(model)s")

    assert database._relations == {}
    field = Membership.get_field("person")
    assert field.related_name == "%(model)s_memberships" and field.related_to is Person  # raw until attached

    class Gold(Membership):
        pass

    class Silver(Membership):
        pass

    n = namespace
    assert database._relations == {
        n + ":person": [
            (n + ":gold", "person", "gold_memberships"),
            (n + ":silver", "person", "silver_memberships"),
        ],
        n + ":gold": [(n + ":gold", "sponsor", "sponsored_gold")],
        n + ":silver": [(n + ":silver", "sponsor", "sponsored_silver")],
    }
    assert (
        Membership.get_field("person").related_name == "%(model)s_memberships"
    )  # the abstract one is untouched
    person = Person()
    person.pk.get()
    gold = Gold(person=person)
    assert list(person.gold_memberships()) == [gold._pk] and list(person.silver_memberships()) == []
    assert gold.related_collections == ["sponsored_gold"]


def test_concrete_subclass_of_a_concrete_owner(RBase, namespace):
    """A concrete subclass copies the final names: it needs related names of its own (clash)."""

    class Person(RBase):
        pass

    class Team(RBase):
        members = M2MSetField(Person)

    with pytest.raises(
        ImplementationError,
        match="^The related name defined for the field 'SubTeam.members', named 'team_set'",
    ):

        class SubTeam(Team):
            pass


def test_failed_class_is_not_registered(RBase, database, namespace):
    class Person(RBase):
        pass

    with pytest.raises(ImplementationError):

        class Team(RBase):
            captain = FKStringField(Person, related_name="captained")
            bad = M2MSetField(42)

    assert database._relations == {namespace + ":person": []}
    assert namespace + ":team" not in database._models
    assert Person().related_collections == []

    class Team(RBase):
        captain = FKStringField(Person, related_name="captained")

    assert database._models[namespace + ":team"] is Team
    assert Person().related_collections == ["captained"]


def test_failed_plain_model_is_not_registered(database, namespace):
    """The core rule behind the previous test: a model whose fields fail is unregistered."""
    db, ns = database, namespace

    with pytest.raises(ImplementationError):

        class Failing(RedisModel):
            database = db
            namespace = ns
            default_indexes = []  # an indexable field with no index: refused when the model is built
            name = StringField(indexable=True)

    assert ns + ":failing" not in db._models

    class Failing(RedisModel):
        database = db
        namespace = ns
        name = StringField(indexable=True)

    assert db._models[ns + ":failing"] is Failing


# ---------------------------------------------------------------------- use_database


def test_use_database_moves_owned_relations(database, other_database, namespace):
    db, other, ns = database, other_database, namespace

    class Base(RelatedModel):
        database = db
        namespace = ns
        abstract = True

    class Person(Base):
        pass

    class Team(Base):
        members = M2MSetField(Person)

    class Club(Base):
        members = M2MSetField(Person, related_name="clubs")

    person = Person()
    assert person.related_collections == ["team_set", "clubs"]
    assert Team.use_database(other) == [Team]
    assert db._relations == {ns + ":person": [(ns + ":club", "members", "clubs")]}
    assert other._relations == {ns + ":person": [(ns + ":team", "members", "team_set")]}
    # owner and target on different databases: no reverse collection on either side
    person = Person()
    assert person.related_collections == ["clubs"] and not hasattr(person, "team_set")
    with pytest.raises(AttributeError):
        person.team_set
    assert Team.use_database(other) == [] and other._relations[ns + ":person"] == [
        (ns + ":team", "members", "team_set")
    ]
    # moving the target too brings them together again
    assert Person.use_database(other) == [Person]
    assert Person().related_collections == ["team_set"]
    # moving back
    Team.use_database(db)
    Person.use_database(db)
    assert Person().related_collections == ["clubs", "team_set"]
    assert other._relations == {ns + ":person": []}


def test_use_database_of_an_abstract_base(database, other_database, namespace):
    db, other, ns = database, other_database, namespace

    class Base(RelatedModel):
        database = db
        namespace = ns
        abstract = True

    class Person(Base):
        friends = M2MSetField("self", related_name="friend_of")

    class Team(Base):
        members = M2MSetField(Person)

    class Stay(RelatedModel):
        database = db
        namespace = ns
        person = FKStringField(Person, related_name="stays")

    moved = Base.use_database(other)
    assert set(moved) == {Base, Person, Team}
    assert other._relations == {
        ns + ":person": [(ns + ":person", "friends", "friend_of"), (ns + ":team", "members", "team_set")]
    }
    assert db._relations == {ns + ":person": [(ns + ":stay", "person", "stays")]}
    person = Person()
    person.pk.get()
    team = Team(members=[person])
    assert person.related_collections == ["friend_of", "team_set"] and list(person.team_set()) == [team._pk]
    assert Team.database is other and Stay.database is db


def test_use_database_checks_related_names_before_moving(database, other_database, namespace):
    db, other, ns = database, other_database, namespace

    class Person(RelatedModel):
        database = db
        namespace = ns

    class Team(RelatedModel):
        database = db
        namespace = ns
        members = M2MSetField(Person, related_name="groups")

    class Club(RelatedModel):
        database = other
        namespace = ns
        members = M2MSetField("Person", related_name="groups")

    with pytest.raises(
        ImplementationError,
        match="^The related name defined for the field 'Team.members', named "
        "'groups', already exists on the model '%s:person'" % ns,
    ):
        Team.use_database(other)
    # nothing moved
    assert Team.database is db and db._models[ns + ":team"] is Team and ns + ":team" not in other._models
    assert db._relations == {ns + ":person": [(ns + ":team", "members", "groups")]}
    assert other._relations == {ns + ":person": [(ns + ":club", "members", "groups")]}


def test_use_database_without_relations(database, other_database, namespace):
    """Decision: a moved model that owns no relation does not raise (upstream: KeyError)."""
    db, other, ns = database, other_database, namespace

    class Person(RelatedModel):
        database = db
        namespace = ns

    class Lonely(RelatedModel):
        database = db
        namespace = ns

    class Team(RelatedModel):
        database = db
        namespace = ns
        members = M2MSetField(Person)

    assert Lonely.use_database(other) == [Lonely]
    assert other._relations == {}
    assert Person.use_database(other) == [Person]  # a target owning nothing
    assert db._relations == {ns + ":person": [(ns + ":team", "members", "team_set")]}

    class Alone(RelatedModel):
        database = other
        namespace = ns

    third = RedisDatabase(**other.connection_settings)
    assert Alone.use_database(third) == [Alone] and third._relations == {}


@pytest.mark.parametrize("related_name", ["audit", "expire_in", "shard", "time_to_live"])
def test_related_name_of_a_method_added_after_3_0_wins_on_the_instances(RBase, related_name):
    """Relations named like a method added after 3.0 keep working: the collection hides the method
    on the target's instances only (the class keeps it), as a field of that name would."""

    class Person(RBase):
        name = StringField()

    class Team(RBase):
        members = M2MSetField(Person, related_name=related_name)

    person = Person(name="p")
    team = Team()
    team.members.sadd(person)
    assert list(getattr(person, related_name)()) == [team.pk.get()]
    assert related_name in dir(Person) and related_name not in Person.__dict__  # the class keeps its own
