"""Expiring instances: gone for every reader once due, then purged with their index entries.

Every test runs in both write modes (default and ``atomic_writes``).
"""

from __future__ import annotations

import datetime
import re
import time

import pytest
from _consistency import check_consistency
from _redis_dump import command_log, raw_client

from limpyd import fields, model
from limpyd.exceptions import DoesNotExist, ImplementationError


def define(database, namespace, atomic, **settings):
    attrs = {
        "database": database,
        "namespace": namespace,
        "atomic_writes": atomic,
        "code": fields.InstanceHashField(unique=True),
        "name": fields.StringField(indexable=True),
        "tags": fields.SetField(indexable=True),
        "note": fields.InstanceHashField(),
        **settings,
    }
    return type("Item", (model.RedisModel,), attrs)


@pytest.fixture
def raw(redis_settings, database):
    client = raw_client(redis_settings)
    yield client
    client.close()


def test_due_instances_are_gone_for_every_reader(database, namespace, atomic, raw):
    Item = define(database, namespace, atomic, default_ttl=0.3)
    keep = Item(code="keep", name="n", tags=["t"])
    keep.persist()
    due = Item(code="due", name="n", tags=["t"], note="x")
    ttl = due.time_to_live()
    assert 0.1 < ttl <= 0.3
    assert keep.time_to_live() is None
    assert set(Item.collection(name="n")) == {keep.pk.get(), due.pk.get()}
    time.sleep(0.35)
    assert not Item.exists(pk=due.pk.get())
    with pytest.raises(DoesNotExist):
        Item(due.pk.get())
    assert list(Item.collection(name="n")) == [keep.pk.get()]
    assert len(Item.collection(tags="t")) == 1
    assert list(Item.collection().sort(by="code", alpha=True)) == [keep.pk.get()]
    again = Item(code="due")  # its unique value is free again
    again.persist()
    assert check_consistency(raw, [Item]) == []
    assert not [key for key in raw.keys(namespace + ":*") if ":%s:" % due.pk.get() in key]


def test_expire_in_at_and_persist(database, namespace, atomic):
    Item = define(database, namespace, atomic, expiring=True)
    item = Item(code="a")
    assert item.time_to_live() is None
    item.expire_in(100)
    assert 99 < item.time_to_live() <= 100
    item.expire_at(datetime.datetime.now() + datetime.timedelta(seconds=50))
    assert 49 < item.time_to_live() <= 50
    item.expire_at(time.time() + 20)
    assert 19 < item.time_to_live() <= 20
    assert item.persist() is True and item.persist() is False
    assert item.time_to_live() is None
    item.expire_in(0)
    assert Item.collection().sort() == []
    with pytest.raises(ValueError, match=r"expire_in\(-1\) on Item: give a number of seconds >= 0"):
        Item(code="b").expire_in(-1)


def test_purge_expired_is_bounded_and_repeatable(database, namespace, atomic, raw):
    Item = define(database, namespace, atomic, expiring=True)
    items = [Item(code="c%d" % n, name="n", tags=["t"]) for n in range(25)]
    for item in items:
        item.expire_in(0.2)
    time.sleep(0.25)
    assert Item.purge_expired(limit=10) == 10
    assert Item.purge_expired(limit=10) == 10
    assert Item.purge_expired(limit=10) == 5
    assert Item.purge_expired() == 0
    assert check_consistency(raw, [Item]) == []
    assert raw.keys(namespace + ":*") == [namespace + ":item:max_pk"]


def test_not_expiring_models_say_how_to_opt_in(database, namespace):
    Item = define(database, namespace, False)
    with pytest.raises(
        ImplementationError,
        match=r"^Item.expire_in\(\): the instances of Item do not expire\. "
        r"Declare expiring = True \(or default_ttl = <seconds>\)",
    ):
        Item(code="a").expire_in(10)
    with pytest.raises(ImplementationError, match="default_ttl = 0: give a number of seconds > 0"):
        define(database, namespace + "x", False, default_ttl=0)


def test_a_field_named_like_a_method_wins(database, namespace):
    Item = define(database, namespace, False, persist=fields.StringField(), default_ttl=fields.StringField())
    item = Item(code="a", persist="yes", default_ttl="field")
    assert item.persist.get() == "yes" and item.default_ttl.get() == "field"
    assert not Item._limpyd_expiring  # the field is no setting


def test_creation_writes_its_deadline_first(database, namespace, redis_settings):
    Item = define(database, namespace, False, default_ttl=60)
    client = raw_client(redis_settings)
    with command_log(client) as log:
        Item(code="a", name="n")
    deadline = [
        position for position, line in enumerate(log) if "__deadlines__" in line and line.startswith("zadd")
    ]
    first_value = [
        position
        for position, line in enumerate(log)
        if line.startswith("HSET ") or re.match(r"SET \S+:\d+:", line)
    ]
    assert deadline and first_value and deadline[0] < first_value[0], log


def test_expiring_models_need_indexes_the_purge_can_maintain(database, namespace):
    from limpyd.indexes import EqualIndex

    lower = EqualIndex.configure(transform=lambda value: value.lower())
    with pytest.raises(
        ImplementationError, match=r"Item\.label: its index EqualIndex has no server-side form"
    ):
        define(
            database,
            namespace,
            False,
            expiring=True,
            label=fields.StringField(indexable=True, indexes=[lower]),
        )


def test_due_instances_leave_slices_and_related_collections(database, namespace, atomic, raw):
    """Slices (sorted and not) and the reverse collections of related fields skip due instances."""
    from limpyd.contrib.related import FKInstanceHashField, RelatedModel

    Owner = type(
        "Owner", (RelatedModel,), {"database": database, "namespace": namespace, "name": fields.StringField()}
    )
    Pet = type(
        "Pet",
        (RelatedModel,),
        {
            "database": database,
            "namespace": namespace,
            "atomic_writes": atomic,
            "expiring": True,
            "owner": FKInstanceHashField(Owner, related_name="pets"),
            "name": fields.StringField(indexable=True),
        },
    )
    owner = Owner(name="o")
    pets = [Pet(owner=owner, name="p%d" % n) for n in range(6)]
    for pet in pets[::2]:
        pet.expire_in(0.05)
    alive = [pet.pk.get() for pet in pets[1::2]]
    time.sleep(0.1)
    assert sorted(owner.pets(), key=int) == alive
    assert len(owner.pets()) == 3
    assert list(Pet.collection().sort()[0:2]) == alive[:2]
    assert list(Pet.collection()[1:]) == alive[1:]
    assert list(Pet.collection().sort(by="-pk")[0:1]) == alive[-1:]
    assert list(Pet.collection(owner=owner.pk.get()).sort(by="name", alpha=True)[-2:]) == alive[-2:]
    assert check_consistency(raw, [Owner, Pet]) == []


def test_deleting_an_instance_removes_its_deadline(database, namespace, atomic, raw):
    """Both modes: a deleted instance leaves no deadline behind (the checker reports one)."""
    Item = define(database, namespace, atomic, expiring=True)
    kept, deleted = Item(code="k", name="kept"), Item(code="d", name="deleted")
    kept.expire_in(60)
    deleted.expire_in(60)
    pk = deleted.pk.get()
    deleted.delete()
    deadlines = raw.zrange(Item._name + ":__deadlines__", 0, -1)
    assert deadlines == [kept.pk.get()] and pk not in deadlines
    assert check_consistency(raw, [Item]) == []
