"""Model.audit(): every finding kind, every index type of limpyd and limpyd.contrib, read-only, rechecks."""

from __future__ import annotations

import redis
from _consistency import check_consistency

from limpyd import fields
from limpyd.contrib.collection import ExtendedCollectionManager
from limpyd.contrib.indexes import DateTimeIndex, EqualIndexWith, ScoredEqualIndex, SimpleDateTimeIndex
from limpyd.contrib.related import FKInstanceHashField, M2MSetField, RelatedModel
from limpyd.indexes import EqualIndex, NumberRangeIndex, TextRangeIndex
from limpyd.integrity import KINDS, audit
from limpyd.integrity import report as kinds


def _bench(Base):
    class Bench(Base):
        code = fields.InstanceHashField(unique=True)
        name = fields.StringField(indexable=True)
        plain = fields.InstanceHashField()
        tags = fields.SetField(indexable=True)

    for i in range(30):
        Bench(code="c%d" % i, name="n%d" % (i % 4), plain="p", tags=["a", "b", "t%d" % i])
    return Bench


def _dump(client: redis.Redis) -> dict:
    return {key: (client.type(key), client.dump(key)) for key in client.scan_iter()}


def test_clean_database_is_clean_and_audit_is_read_only(Base, client):
    Bench = _bench(Base)
    before = _dump(client)
    report = Bench.audit()
    assert report.clean, report.findings
    assert report.instances == 30 and report.counts == {}
    assert _dump(client) == before  # read-only
    assert check_consistency(client, [Bench]) == []


def test_every_kind_is_found(Base, client):
    Bench = _bench(Base)
    m = Bench._name
    client.srem("%s:name:n1" % m, "2")  # missing entry
    client.sadd("%s:name:n1" % m, "999")  # entry of a pk without instance
    client.sadd("%s:name:n2" % m, "1")  # entry whose value differs from the stored one
    client.hset("%s:5:hash" % m, "code", "c3")  # pk 4 holds c3: unique conflict (5 still indexed for c4)
    client.set("%s:77:name" % m, "x")  # orphan data
    client.set("%s:5:removed" % m, "x")  # key of a removed field
    client.hset("%s:3:hash" % m, "old", "1")  # entry of a removed InstanceHashField
    client.set("%s:lock-for-update:name" % m, "token")  # lock without expiry
    client.sadd("%s:__index__:equalindex:tmp:abc" % m, "1")  # leaked temporary key
    client.sadd("%s:collection" % m, "500")  # pk without data
    report = Bench.audit()
    found = {(f.kind, f.key, f.pk) for f in report.findings}
    assert (kinds.MISSING_ENTRY, "%s:name:n1" % m, "2") in found
    assert (kinds.STALE_ENTRY, "%s:name:n1" % m, "999") in found
    assert (kinds.WRONG_ENTRY, "%s:name:n2" % m, "1") in found
    assert (kinds.WRONG_ENTRY, "%s:code:c4" % m, "5") in found
    assert (kinds.ORPHAN_DATA, "%s:77:name" % m, "77") in found
    assert (kinds.UNKNOWN_KEY, "%s:5:removed" % m, "5") in found
    assert (kinds.UNKNOWN_KEY, "%s:3:hash" % m, "3") in found
    assert (kinds.OWNERLESS_LOCK, "%s:lock-for-update:name" % m, None) in found
    assert (kinds.TEMPORARY_KEY, "%s:__index__:equalindex:tmp:abc" % m, None) in found
    assert (kinds.EMPTY_PK, "%s:collection" % m, "500") in found
    conflict = report.by_kind(kinds.UNIQUE_CONFLICT)
    assert len(conflict) == 1 and conflict[0].pks == ["4", "5"] and conflict[0].value == "c3"
    assert report.counts[kinds.UNIQUE_CONFLICT] == 1
    assert set(report.counts) <= set(KINDS)
    assert report.total == len(report.findings)
    assert not report.clean
    # the independent checker sees problems too
    assert check_consistency(client, [Bench])


def test_lock_with_expiry_and_store_key_with_ttl_are_not_findings(Base, client):
    Bench = _bench(Base)
    client.set("%s:lock-for-update:name" % Bench._name, "t", px=5000)
    client.sadd("%s:__collection__:store:abc" % Bench._name, "1")
    client.expire("%s:__collection__:store:abc" % Bench._name, 60)
    assert Bench.audit().clean


def test_findings_beyond_max_findings_are_counted(Base, client):
    Bench = _bench(Base)
    for pk in range(1000, 1050):
        client.sadd("%s:name:zz" % Bench._name, pk)
    report = Bench.audit(max_findings=10, recheck_findings=False)
    assert len(report.findings) == 10 and report.truncated
    assert report.counts[kinds.STALE_ENTRY] == 50


def test_recheck_drops_findings_fixed_meanwhile(Base, client):
    Bench = _bench(Base)
    client.srem("%s:name:n1" % Bench._name, "2")
    from limpyd.integrity._schema import ModelPlan
    from limpyd.integrity.audit import other_model_names, recheck

    report = Bench.audit()
    assert report.counts == {kinds.MISSING_ENTRY: 1}
    client.sadd("%s:name:n1" % Bench._name, "2")
    plan = ModelPlan(Bench)
    assert recheck(plan, Bench.database.connection, report.findings, other_model_names(Bench)) == []


def test_range_indexes_and_configured_equal_indexes(Base, client):
    class Ranged(Base):
        title = fields.StringField(
            indexable=True,
            unique=True,
            indexes=[TextRangeIndex, EqualIndex.configure(prefix="rev", transform=lambda v: v[::-1])],
        )
        age = fields.InstanceHashField(indexable=True, indexes=[NumberRangeIndex])
        info = fields.HashField(indexable=True, indexes=[EqualIndex, NumberRangeIndex])

    for i in range(10):
        Ranged(title="t%d" % i, age=i * 10, info={"k": str(i)})
    assert Ranged.audit().clean
    m = Ranged._name
    client.zadd("%s:age:number-range" % m, {"3": 99})  # wrong score
    client.zrem("%s:title:text-range" % m, "t1:TEXT-RANGE-SEPARATOR:2")  # missing
    client.srem("%s:title:rev:0t" % m, "1")  # missing (transformed value)
    client.zadd("%s:info:k:number-range" % m, {"42": 1})  # stale
    client.hset("%s:4:info" % m, "k", "x")  # value changed behind the indexes
    report = Ranged.audit()
    found = {(f.kind, f.key, f.pk) for f in report.findings}
    assert (kinds.WRONG_ENTRY, "%s:age:number-range" % m, "3") in found
    assert (kinds.MISSING_ENTRY, "%s:title:text-range" % m, "2") in found
    assert (kinds.MISSING_ENTRY, "%s:title:rev:0t" % m, "1") in found
    assert (kinds.STALE_ENTRY, "%s:info:k:number-range" % m, "42") in found
    assert (kinds.MISSING_ENTRY, "%s:info:k:x" % m, "4") in found
    assert (kinds.WRONG_ENTRY, "%s:info:k:3" % m, "4") in found


def test_text_range_unique_conflict(Base, client):
    class Titled(Base):
        title = fields.StringField(unique=True, indexes=[TextRangeIndex])

    Titled(title="a")
    Titled(title="b")
    client.set("%s:2:title" % Titled._name, "a")
    client.zadd("%s:title:text-range" % Titled._name, {"a:TEXT-RANGE-SEPARATOR:2": 0})
    report = Titled.audit()
    conflicts = report.by_kind(kinds.UNIQUE_CONFLICT)
    assert conflicts and conflicts[0].pks == ["1", "2"]


def test_contrib_indexes(Base, client):
    class Event(Base):
        collection_manager = ExtendedCollectionManager
        when = fields.StringField(indexable=True, indexes=[DateTimeIndex])
        simple = fields.InstanceHashField(indexable=True, indexes=[SimpleDateTimeIndex])
        prio = fields.InstanceHashField()
        kind = fields.InstanceHashField(
            indexable=True, indexes=[ScoredEqualIndex.configure(score_field="prio")]
        )
        a = fields.StringField(
            indexable=True, indexes=[EqualIndexWith.configure(other_fields=["b"], unique=True)]
        )
        b = fields.SetField()

    for i in range(5):
        Event(
            when="2015-12-1%d 15:16:17" % i,
            simple="2016-01-0%d 01:02:03" % (i + 1),
            prio=i,
            kind="k%d" % (i % 2),
            a="x%d" % i,
            b=["p", "q"],
        )
    assert Event.audit().clean
    # the expected keys exist (written by the library, found by the audit's own computation)
    assert client.zscore("%s:when:year:number-range" % Event._name, "2") == 2015.0
    m = Event._name
    client.zrem("%s:when:year:number-range" % m, "2")  # date part
    client.zadd("%s:kind:equal-scored:k0" % m, {"1": 50})  # wrong score
    client.srem("%s:a:equal-with:x3:q" % m, "4")  # multi-field combination
    client.zrem("%s:simple:time:time" % m, "01:02:03:TEXT-RANGE-SEPARATOR:1")
    report = Event.audit()
    found = {(f.kind, f.key, f.pk) for f in report.findings}
    assert (kinds.MISSING_ENTRY, "%s:when:year:number-range" % m, "2") in found
    assert (kinds.WRONG_ENTRY, "%s:kind:equal-scored:k0" % m, "1") in found
    assert (kinds.MISSING_ENTRY, "%s:a:equal-with:x3:q" % m, "4") in found
    assert (kinds.MISSING_ENTRY, "%s:simple:time:time" % m, "1") in found
    # the score field changes behind the index
    client.hset("%s:3:hash" % m, "prio", "7")
    found = {(f.kind, f.key, f.pk) for f in Event.audit().findings}
    assert (kinds.WRONG_ENTRY, "%s:kind:equal-scored:k0" % m, "3") in found


def test_related_fields(database, namespace, client):
    db, ns = database, namespace

    class Person(RelatedModel):
        database = db
        namespace = ns
        name = fields.StringField(indexable=True)

    class Group(RelatedModel):
        database = db
        namespace = ns
        owner = FKInstanceHashField(Person, indexable=True)
        members = M2MSetField(Person, related_name="membership")

    alice, bob = Person(name="alice"), Person(name="bob")
    Group(owner=alice, members=[alice, bob])
    assert Group.audit().clean and Person.audit().clean
    client.srem("%s:owner:%s" % (Group._name, alice.pk.get()), "1")
    client.srem("%s:members:%s" % (Group._name, bob.pk.get()), "1")
    found = {(f.kind, f.key) for f in Group.audit().findings}
    assert (kinds.MISSING_ENTRY, "%s:owner:%s" % (Group._name, alice.pk.get())) in found
    assert (kinds.MISSING_ENTRY, "%s:members:%s" % (Group._name, bob.pk.get())) in found


def test_models_nested_in_the_key_space_of_another(Base, client):
    class Bike(Base):
        name = fields.StringField(indexable=True)

    class Sub(Base):
        namespace = Bike._name  # its keys start with Bike's name
        name = fields.StringField(indexable=True)

    Bike(name="a")
    Sub(name="b")
    assert Bike.audit().clean and Sub.audit().clean


def test_field_named_audit_wins_over_the_method(Base):
    class Shadow(Base):
        audit = fields.StringField(indexable=True)
        repair = fields.InstanceHashField()

    instance = Shadow(audit="x", repair="y")
    assert instance.audit.get() == "x" and instance.repair.hget() == "y"
    assert Shadow.collection(audit="x") == {instance.pk.get()}
    assert audit(Shadow).clean  # the function stays usable


def test_expiring_model_deadlines(Base, client):
    class Session(Base):
        expiring = True
        token = fields.InstanceHashField(indexable=True)

    first = Session(token="a")
    Session(token="b")
    first.expire_in(1000)
    assert Session.audit().clean
    deadlines = "%s:__deadlines__" % Session._name
    client.zadd(deadlines, {first.pk.get(): 1})  # due long ago, still stored
    client.zadd(deadlines, {"404": 1})
    found = {(f.kind, f.pk) for f in Session.audit().findings}
    assert (kinds.EXPIRED_INSTANCE, first.pk.get()) in found
    assert (kinds.ORPHAN_DEADLINE, "404") in found


def test_scripted_check_finds_what_the_python_check_finds(Base, client, monkeypatch):
    """The scripted pass only routes pks: with it or without it the findings are the same."""
    import importlib

    audit_module = importlib.import_module("limpyd.integrity.audit")  # the package exports the function

    class Mixed(Base):
        code = fields.InstanceHashField(unique=True)
        name = fields.StringField(indexable=True)
        title = fields.StringField(unique=True, indexes=[TextRangeIndex])
        rank = fields.InstanceHashField(unique=True, indexes=[NumberRangeIndex])
        size = fields.StringField(indexable=True, indexes=[NumberRangeIndex, EqualIndex])
        tags = fields.SetField(indexable=True)
        steps = fields.ListField(indexable=True)
        scores = fields.SortedSetField(indexable=True)
        info = fields.HashField(indexable=True)
        rev = fields.StringField(indexable=True, indexes=[EqualIndex.configure(transform=lambda v: v[::-1])])
        plain = fields.StringField()

    for i in range(40):
        Mixed(
            code="c%d" % i,
            name="n%d" % (i % 5),
            title="t%d" % i,
            rank=i,
            size="%d.5" % (i % 3),
            tags=["a", "t%d" % (i % 7)],
            steps=["s", "s", "x%d" % (i % 2)],
            scores={"z%d" % (i % 3): i},
            info={"k": "v%d" % (i % 2)},
            rev="r%d" % i,
            plain="p",
        )
    m = Mixed._name

    from limpyd.integrity import _scripted

    init = _scripted.ScriptedCheck.__init__

    def before_6_2(self, plan):  # Redis < 6.2: no SMISMEMBER/ZMSCORE, one ZSCORE per entry
        init(self, plan)
        self.variadic = False

    def both() -> set:
        found = []
        for scripted, variadic in ((True, True), (True, False), (False, True)):
            monkeypatch.setattr(audit_module, "SCRIPTED", scripted)
            monkeypatch.setattr(_scripted.ScriptedCheck, "__init__", init if variadic else before_6_2)
            found.append({f.identity() + (f.detail,) for f in audit(Mixed).findings})
        assert found[0] == found[1] == found[2]
        return found[0]

    assert both() == set()
    from limpyd.integrity._schema import ModelPlan
    from limpyd.integrity._scripted import ScriptedCheck

    check = ScriptedCheck(ModelPlan(Mixed))
    assert check.available and sorted(check.python_fields) == ["info", "rev"]
    cursor, flagged, counts, keys, scanned, pks = check.run(audit_module.client_of(Mixed), 0, 1000, True)
    assert (str(cursor), flagged, scanned, len(pks)) == ("0", [], 40, 40)  # clean: nothing sent to Python
    assert (
        counts["tags"] == 80 and counts["steps"] == 80 and counts["size"] == 80 and keys == 40 * 10
    )  # hash + 9 keys
    client.srem("%s:name:n1" % m, "2")
    client.sadd("%s:name:n1" % m, "3")
    client.hset("%s:5:hash" % m, "code", "c6")
    client.hset("%s:8:hash" % m, mapping={"rank": "9", "gone": "1"})
    client.set("%s:9:title" % m, "t10")
    client.zadd("%s:title:text-range" % m, {"t10:TEXT-RANGE-SEPARATOR:9": 0})
    client.set("%s:10:size" % m, " 1.5")
    client.set("%s:11:size" % m, "abc")
    client.zadd("%s:size:number-range" % m, {"12": 7})
    client.srem("%s:tags:a" % m, "13")
    client.srem("%s:steps:s" % m, "14")
    client.srem("%s:scores:z0" % m, "15")
    client.hset("%s:16:info" % m, "k", "other")
    client.srem("%s:rev:71r" % m, "18")
    client.delete("%s:19:plain" % m)
    client.set("%s:20:tags" % m, "not a set")
    client.sadd("%s:collection" % m, "500")
    client.set("%s:600:name" % m, "n1")
    client.set("%s:name" % m, "x")
    found = both()
    kinds_found = {identity[0] for identity in found}
    assert {kinds.MISSING_ENTRY, kinds.WRONG_ENTRY, kinds.UNIQUE_CONFLICT, kinds.EMPTY_PK} <= kinds_found
    assert {kinds.ORPHAN_DATA, kinds.UNKNOWN_KEY} <= kinds_found


def test_scripted_check_on_a_cluster(namespace, monkeypatch, request):
    """On a Redis Cluster ({ns:model} keys) the scripted pass finds what the Python check finds."""
    import importlib

    import pytest
    from _cluster import CLUSTER_DISABLED

    from limpyd import model

    if CLUSTER_DISABLED:
        pytest.skip("LIMPYD_TEST_CLUSTER=0")
    db = request.getfixturevalue("cluster_database")
    audit_module = importlib.import_module("limpyd.integrity.audit")

    class Clustered(model.RedisModel):
        database = db
        code = fields.InstanceHashField(unique=True)
        name = fields.StringField(indexable=True)
        title = fields.StringField(unique=True, indexes=[TextRangeIndex])
        rank = fields.InstanceHashField(indexable=True, indexes=[NumberRangeIndex])
        tags = fields.SetField(indexable=True)
        rev = fields.StringField(indexable=True, indexes=[EqualIndex.configure(transform=lambda v: v[::-1])])

    Clustered.namespace = namespace
    for i in range(30):
        Clustered(
            code="c%d" % i, name="n%d" % (i % 4), title="t%d" % i, rank=i, tags=["a", "t%d" % i], rev="r"
        )
    m = Clustered._name
    assert m.startswith("{") and m.endswith("}")
    client = db.connection

    def both() -> set:
        found = []
        for scripted in (True, False):
            monkeypatch.setattr(audit_module, "SCRIPTED", scripted)
            found.append({f.identity() + (f.detail,) for f in audit(Clustered).findings})
        assert found[0] == found[1]
        return found[0]

    assert both() == set()
    client.srem("%s:name:n1" % m, "2")
    client.hset("%s:5:hash" % m, "code", "c6")
    client.zadd("%s:rank:number-range" % m, {"7": 70})
    client.srem("%s:tags:a" % m, "8")
    client.set("%s:600:name" % m, "n1")
    client.sadd("%s:collection" % m, "500")
    found = both()
    assert {identity[0] for identity in found} >= {
        kinds.MISSING_ENTRY,
        kinds.WRONG_ENTRY,
        kinds.UNIQUE_CONFLICT,
        kinds.ORPHAN_DATA,
        kinds.EMPTY_PK,
    }
    Clustered.repair(dry_run=False, delete_orphans=True)
    assert both() == set()
