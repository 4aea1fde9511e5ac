"""The example downstream package (``tests/example_package``), run end to end (docs/extending.rst).

``jobs``: queues, jobs and errors on a ``PipelineDatabase()`` made at import time and moved with
``use_database``; a worker ``BLPOP``ing the waiting lists. ``catalog``: dynamic fields, dynamic
filters and reverse-side writers from ``extensions``, on a database redirected with
``connect(**settings)``. Each test leaves indexes that ``rebuild_indexes()`` does not change.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
import redis
from _redis_dump import dump, layout
from example_package import catalog, extensions, jobs
from example_package.catalog import Book, Person
from example_package.jobs import STATUSES, Error, Job, Queue, Worker

import limpyd
from limpyd.database import DEFAULT_CONNECTION_SETTINGS, Lock
from limpyd.exceptions import DoesNotExist, ImplementationError, LimpydException

START = datetime(2024, 2, 29, 13, 14, 15, 123456)
HOOKS = ("on_started", "on_success", "on_error", "on_skipped", "on_requeued", "on_delayed", "run")


@pytest.fixture
def jobs_db(database, redis_settings):
    """Move the jobs models to the private server, and back to their import-time database after."""
    db = jobs.use_redis(**redis_settings)
    yield db
    jobs.BaseJobsModel.use_database(jobs.database)


@pytest.fixture
def catalog_db(database, redis_settings):
    """Redirect the catalog database to the private server, and back to the default settings after."""
    yield catalog.database.connect(**redis_settings)
    catalog.database.reset(**DEFAULT_CONNECTION_SETTINGS)


class Clock:
    def __init__(self) -> None:
        self.current = START

    def __call__(self) -> datetime:
        return self.current

    def advance(self, **delta: float) -> None:
        self.current += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(jobs, "now", clock)
    return clock


def indexed_fields(*models):
    for model in models:
        for name in model._fields:
            field = model.get_field(name)
            if field.indexable:
                yield field


def assert_indexes_consistent(client, *models):
    """Rebuilding every index changes nothing, also after deleting every index key first."""
    before = dump(client)
    for field in indexed_fields(*models):
        field.rebuild_indexes()
    assert dump(client) == before
    for field in indexed_fields(*models):
        field.clear_indexes(aggressive=True)
    assert dump(client) != before
    for field in indexed_fields(*models):
        field.rebuild_indexes()
    assert dump(client) == before


def failing(job, queue):
    raise ValueError("cannot run %s" % job.identifier.hget())


def pks(*instances):
    return [instance.pk.get() for instance in instances]


# ---------------------------------------------------------------------- jobs: databases


def test_import_never_contacts_redis():
    """Both modules build their models on a database made at import time, never contacted."""
    code = (
        "import redis\n"
        "def refuse(*args, **kwargs):\n"
        "    raise AssertionError('Redis contacted at import time')\n"
        "redis.connection.AbstractConnection.connect = refuse\n"
        "redis.Redis.execute_command = refuse\n"
        "from example_package import catalog, jobs\n"
        "print(jobs.database.connection_settings, sorted(jobs.database._models), sorted(jobs.database._relations))\n"
        "print(catalog.database.connection_settings, sorted(catalog.database._models))\n"
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")])),
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "{'host': 'localhost', 'port': 6379, 'db': 0} ['jobs:error', 'jobs:job', 'jobs:queue'] ['jobs:job', 'jobs:queue']",
        "{'host': 'localhost', 'port': 6379, 'db': 0} ['catalog:book', 'catalog:person']",
    ]


def test_use_database_moves_models_and_relations(jobs_db, count_commands):
    assert jobs.database is not jobs_db and jobs.database.connection_settings == DEFAULT_CONNECTION_SETTINGS
    assert jobs.BaseJobsModel.database is Queue.database is Job.database is Error.database is jobs_db
    assert sorted(jobs_db._models) == ["jobs:error", "jobs:job", "jobs:queue"] and jobs.database._models == {}
    assert jobs_db._relations == {
        "jobs:queue": [("jobs:job", "queue", "jobs")],
        "jobs:job": [("jobs:error", "job", "errors")],
    }
    assert jobs.database._relations == {"jobs:queue": [], "jobs:job": []}
    with count_commands(0):
        assert jobs.BaseJobsModel.use_database(jobs_db) == []  # a cheap no-op
        assert set(jobs.BaseJobsModel.use_database(jobs.database)) == {jobs.BaseJobsModel, Queue, Job, Error}
        jobs.BaseJobsModel.use_database(jobs_db)
    assert Queue(name="q").jobs.related_field is Job.get_field("queue")


def test_worker_banner_and_lock(jobs_db, client):
    assert limpyd.VERSION == (3, 0, 0) and Lock is redis.lock.Lock is redis.client.Lock
    assert all(issubclass(error, LimpydException) for error in (DoesNotExist, ImplementationError))
    worker = Worker("default")
    assert worker.banner() == "limpyd %s, redis %s on %s:%s, db %s" % (
        limpyd.EXACT_VERSION,
        client.info()["redis_version"],
        jobs_db.connection_settings["host"],
        jobs_db.connection_settings["port"],
        jobs_db.connection_settings["db"],
    )
    assert worker.lock_name == "jobs:worker:worker:default"
    client.set(worker.lock_name, "another worker")
    with pytest.raises(ImplementationError, match="already runs"):
        worker.run()
    client.delete(worker.lock_name)
    assert worker.run() == 0
    assert not client.exists(worker.lock_name)  # the lock key is exactly the name given to Lock


# ---------------------------------------------------------------------- jobs: the worker


def test_worker_runs_jobs_by_queue_priority(jobs_db, clock, client):
    ran = []

    def callback(job, queue):
        ran.append((job.identifier.hget(), queue.priority.hget()))
        if job.identifier.hget() == "bad":
            raise ValueError("bad job")

    low1, low2 = Job.add_job("low1"), Job.add_job("low2")
    high, bad = Job.add_job("high", priority=5), Job.add_job("bad", priority=5)
    assert Job.add_job("low1") == low1  # already waiting: not added twice
    low_queue, high_queue = Queue.get_queue("default"), Queue.get_queue("default", 5)
    assert Queue.get_waiting_keys("default") == [
        "jobs:queue:%s:waiting" % pk for pk in pks(high_queue, low_queue)
    ]
    assert high_queue.waiting.lrange(0, -1) == pks(high, bad) and low_queue.waiting.lrange(0, -1) == pks(
        low1, low2
    )

    assert Worker("default", callback=callback, max_jobs=3).run() == 3  # bounded by max_jobs
    assert Worker("default", callback=callback).run() == 1  # stopped by the BLPOP timeout
    assert ran == [("high", "5"), ("bad", "5"), ("low1", "0"), ("low2", "0")]
    assert [Job(pk).status.hget() for pk in pks(low1, low2, high, bad)] == [
        "success",
        "success",
        "success",
        "error",
    ]
    assert set(Job.collection(status=STATUSES.SUCCESS)) == set(pks(low1, low2, high))
    assert list(Job.collection(status=STATUSES.ERROR, queue=high_queue)) == pks(bad)
    assert low_queue.success.lrange(0, -1) == pks(low1, low2) and high_queue.success.lrange(0, -1) == pks(
        high
    )
    assert (
        high_queue.errors.lrange(0, -1) == pks(bad)
        and low_queue.waiting.llen() == high_queue.waiting.llen() == 0
    )
    assert set(low_queue.jobs()) == set(pks(low1, low2)) and Job(high.pk.get()).queue.instance() == high_queue
    assert Job(bad.pk.get()).hmget("tries", "queued", "start", "end") == ["1", "0", str(START), str(START)]
    assert Job(bad.pk.get()).duration == timedelta(0)

    error = Error.get(job=bad)
    assert list(Job(bad.pk.get()).errors()) == [error.pk.get()] and error.job.instance() == bad
    assert error.get_job() == bad and error.job_model_repr.hget() == "jobs:job"
    assert error.hmget("type", "message", "queue_name", "identifier", "date", "time", "date_time") == [
        "ValueError",
        "bad job",
        "default",
        "bad",
        "2024-02-29",
        "13:14:15",
        str(START),
    ]
    assert error.code.hget() is None and error.traceback.get().endswith("ValueError: bad job\n")
    assert (error.ident, bad.ident) == ("jobs:error:%s" % error.pk.get(), "jobs:job:%s" % bad.pk.get())
    assert error.get_connection() is Error.get_connection() is jobs_db.connection
    error.job_model_repr.hset("jobs:unknown")
    with pytest.raises(DoesNotExist, match="No job model 'jobs:unknown'"):
        error.get_job()
    assert_indexes_consistent(client, Queue, Job, Error)


def test_failed_jobs_are_requeued_until_max_tries(jobs_db, clock, client):
    job = Job.add_job("flaky")
    assert Worker("default", callback=failing, max_tries=3).run() == 3
    job = Job(job.pk.get())
    assert job.hmget("status", "tries", "queued") == ["error", "3", "0"]
    assert len(job.errors()) == 3 and set(Error.collection(job_pk=job.pk.get())) == set(job.errors())
    assert Queue.get_queue("default").errors.lrange(0, -1) == pks(job, job, job)

    def fails_once(job, queue):
        if job.tries.hget() == "1":
            failing(job, queue)

    retried = Job.add_job("retried")
    assert Worker("default", callback=fails_once, max_tries=2).run() == 2
    assert (
        Job(retried.pk.get()).hmget("status", "tries") == ["success", "2"]
        and len(Job(retried.pk.get()).errors()) == 1
    )
    assert_indexes_consistent(client, Queue, Job, Error)


def test_delayed_jobs_and_retry_delay(jobs_db, clock, client):
    later = Job.add_job("later", delayed_until=START + timedelta(minutes=5))
    queue = Queue.get_queue("default")
    timestamp = (START + timedelta(minutes=5)).timestamp()
    assert later.hmget("status", "queued", "delayed_until") == [
        "delayed",
        "1",
        str(START + timedelta(minutes=5)),
    ]
    assert (
        queue.delayed.zrange(0, -1, withscores=True) == [(later.pk.get(), timestamp)]
        and queue.waiting.llen() == 0
    )
    assert queue.delayed.zrange(0, -1) == pks(later)
    assert list(Job.collection(delayed_until__date="2024-02-29")) == pks(later)
    assert list(Job.collection(delayed_until__time__gte="13:19")) == pks(later)
    assert list(Job.collection(delayed_until__time__gte="13:20")) == []
    assert Job.add_job("later") == later  # delayed counts as queued

    worker = Worker(
        "default", callback=lambda job, queue: None, max_tries=2, retry_delay=timedelta(seconds=30)
    )
    assert worker.run() == 0
    clock.advance(minutes=5)
    assert worker.run() == 1
    assert later.hmget("status", "delayed_until") == ["success", None] and queue.delayed.zcard() == 0
    assert list(Job.collection(delayed_until__date="2024-02-29")) == []

    again = Job.add_job("again")
    worker.callback = failing
    assert worker.run() == 1
    assert again.hmget("status", "tries", "delayed_until") == [
        "delayed",
        "1",
        str(clock.current + timedelta(seconds=30)),
    ]
    assert worker.run() == 0
    clock.advance(seconds=30)
    assert worker.run() == 1 and again.hmget("status", "tries") == ["error", "2"]
    assert_indexes_consistent(client, Queue, Job, Error)


def test_cancel_on_error_and_skipped_jobs(jobs_db, clock, monkeypatch):
    canceled = Job.add_job("canceled", cancel_on_error=True)
    assert Worker("default", callback=failing, max_tries=5).run() == 1
    assert canceled.status.hget() == "canceled" and len(canceled.errors()) == 1

    monkeypatch.setattr(Job, "always_cancel_on_error", True)
    always = Job.add_job("always")
    assert Worker("default", callback=failing, max_tries=5).run() == 1
    assert always.hmget("status", "tries") == ["canceled", "1"]

    ran = []
    skipped = Job.add_job("skipped")
    skipped.status.hset(STATUSES.CANCELED)
    Queue.get_queue("default").waiting.rpush("999")  # a job deleted without leaving its queue
    assert Worker("default", callback=lambda job, queue: ran.append(job)).run() == 2
    assert ran == [] and skipped.hmget("status", "queued", "tries") == ["canceled", "0", "0"]


def test_optional_hooks_are_probed_on_the_job(jobs_db, clock, monkeypatch):
    job = Job.add_job("hooked")
    assert not any(hasattr(job, name) for name in HOOKS)  # limpyd defines none of these names
    calls = []

    def hook(name):
        return lambda job, *args: calls.append(
            (name, job.pk.get(), getattr(job, "_cached_status", None)) + args
        )

    for name in HOOKS[:-1]:
        monkeypatch.setattr(Job, name, hook(name), raising=False)
    queue = Queue.get_queue("default")
    assert Worker("default", callback=lambda job, queue: "result").run() == 1
    assert calls == [
        ("on_started", job.pk.get(), "running", queue),
        ("on_success", job.pk.get(), "success", queue, "result"),
    ]

    calls.clear()
    error = ValueError("failed")

    def run(job, queue):
        raise error

    monkeypatch.setattr(Job, "run", run, raising=False)
    Job.add_job("run-method")
    assert Worker("default", max_tries=2, retry_delay=timedelta(minutes=1)).run() == 1  # no callback: job.run
    pk = Job.collection(identifier="run-method").instances()[0].pk.get()
    assert calls == [
        ("on_started", pk, "running", queue),
        ("on_error", pk, "error", queue, error),
        ("on_delayed", pk, "error", queue),
        ("on_requeued", pk, "error", queue),
    ]


def test_queues_ordered_by_priority_with_a_scored_index(jobs_db, count_commands):
    q3, q1, q2 = Queue.get_queue("q", 3), Queue.get_queue("q", 1), Queue.get_queue("q", 2)
    assert Queue.get_or_connect(name="q", priority=1) == (q1, False)
    assert [queue.priority.hget() for queue in Queue.get_all("q")] == ["1", "2", "3"]
    index = Queue.get_field("name").get_index()
    assert index.get_storage_key("q") == "jobs:queue:name:equal-scored:q"
    assert Queue.get_connection().zrange(index.get_storage_key("q"), 0, -1, withscores=True) == [
        (q1.pk.get(), 1.0),
        (q2.pk.get(), 2.0),
        (q3.pk.get(), 3.0),
    ]
    q1.priority.hset(9)
    assert Queue.get_waiting_keys("q") == [q.waiting.key for q in (q1, q3, q2)]
    assert Queue.get(int(q1.waiting.key.split(":")[-2])) == q1  # what the worker does with BLPOP's key
    with pytest.raises(ValueError):
        Queue.get_or_connect(name="q")  # several queues match
    with pytest.raises(DoesNotExist):
        Queue.get("404")


def test_date_time_indexes(jobs_db, clock, client):
    first = Job.add_job("first")
    clock.advance(days=1, hours=2)  # 2024-03-01 15:14:15
    second = Job.add_job("second")
    worker = Worker("default", callback=failing)
    assert worker.run() == 2
    first_error, second_error = Error.get(job=first), Error.get(job=second)
    clock.advance(days=-2)  # an error on 2024-02-28 15:14:15
    third = Job.add_job("third")
    worker.run()
    third_error = Error.get(job=third)

    def errors(**filters):
        return set(Error.collection(**filters))

    assert errors(date_time__date__gt="2024-02-28") == set(pks(first_error, second_error))
    assert errors(date_time="2024-03-01 15:14:15") == set(pks(first_error, second_error))
    assert errors(date_time__time__startswith="15") == set(pks(first_error, second_error, third_error))
    assert errors(date="2024-02-28") == set(pks(third_error))
    assert errors(date__month=3) == set(pks(first_error, second_error))
    assert errors(date__day__gte=28, date__year=2024) == set(pks(third_error))
    assert errors(date__lt="2024-03-01") == set(pks(third_error))
    assert (
        errors(time="15:14:15") == errors(time__hour=15) == set(pks(first_error, second_error, third_error))
    )
    assert errors(time__minute__lt=14) == set()
    assert set(Job.collection(added__hour=13)) == set(pks(first))
    assert set(Job.collection(added__date="2024-03-01", added__minute=14)) == set(pks(second))
    assert set(Job.collection(added__year=2024, added__second=15)) == set(pks(first, second, third))
    assert set(Job.collection(end__date__gte="2024-03-01")) == set(pks(first, second))
    assert_indexes_consistent(client, Queue, Job, Error)


def test_deletion_cascades(jobs_db, clock, client):
    kept = Job.add_job("kept")
    Worker("default", callback=lambda job, queue: None).run()
    doomed = Job.add_job("doomed")
    Worker("default", callback=failing, max_tries=2).run()
    waiting = Job.add_job("waiting")
    queue = Queue.get_queue("default")
    assert len(doomed.errors()) == 2 and queue.errors.lrange(0, -1) == pks(doomed, doomed)

    Job(doomed.pk.get()).delete()  # the example's own cascade: its errors, its queue's lists
    assert len(Error.collection()) == 0 and queue.errors.llen() == 0
    with pytest.raises(DoesNotExist):
        Job(doomed.pk.get())
    Job(waiting.pk.get()).delete()
    assert queue.waiting.llen() == 0 and queue.success.lrange(0, -1) == pks(kept)
    assert not [
        key for key in client.keys() if ":%s:" % doomed.pk.get() in key and key.startswith("jobs:job:")
    ]

    other = Job.add_job("other", queue_name="other")
    Queue(queue.pk.get()).delete()  # limpyd's rule: the jobs stay, their foreign key is emptied
    assert Job(kept.pk.get()).queue.hget() is None and list(Job.collection(queue=queue.pk.get())) == []
    assert Job(other.pk.get()).queue.instance() == Queue.get_queue("other")
    assert_indexes_consistent(client, Queue, Job, Error)
    count = len(client.keys("jobs:*"))
    assert count > 0 and jobs.clean() == count and client.keys("jobs:*") == []
    Queue.get_queue("again")
    jobs_db.connection.flushdb()
    assert client.dbsize() == 0


# ---------------------------------------------------------------------- catalog: dynamic fields


def test_dynamic_fields_at_model_level(catalog_db, redis_settings, count_commands):
    assert (
        catalog_db is catalog.database.connection and catalog.database.connection_settings == redis_settings
    )
    assert Book.tags is Book.get_field("tags") and not hasattr(Book.tags, "_instance")
    with count_commands(0):
        field = Book.get_field("tags_de")
    assert field is Book.get_field("tags_de") is Book._redis_attr_tags_de and isinstance(
        field, extensions.DynamicSetField
    )
    assert (field.name, field._model, field._dynamic_base, hasattr(field, "_instance")) == (
        "tags_de",
        Book,
        "tags",
        False,
    )
    assert "tags_de" not in Book._fields and Book.has_field("tags_de")
    assert not Book.has_field("tags_") and not Book.has_field(
        "tags_eng"
    )  # the parts of ``tags`` have 2 letters
    assert [type(index).__name__ for index in field._indexes] == ["EqualIndex", "TextRangeIndex"]
    assert field._indexes[0] is not Book.tags._indexes[0] and field._indexes[0].field is field
    assert Book.get_field("notes_de").get_name_for("fr") == "notes_fr"
    with pytest.raises(AttributeError):
        Book.get_field("unknown")
    with pytest.raises(ValueError, match="not a valid dynamic part"):
        Book.tags.get_name_for("eng")
    with pytest.raises(ImplementationError, match="ModelWithDynamicFieldMixin"):

        class Plain(limpyd.model.RedisModel):
            database = catalog.database
            namespace = "catalog-errors"
            tags = extensions.DynamicSetField()


def test_dynamic_fields_at_instance_level(catalog_db, client, count_commands):
    book = Book(title="Dune", tags_en=["scifi", "desert"], notes_fr={"review": "bien"})
    assert book._fields is not Book._fields and book._fields[-2:] == ["tags_en", "notes_fr"]
    assert Book._fields == [
        "pk",
        "title",
        "tags",
        "notes",
        "authors",
        "editor",
        "publisher",
        "readers",
        "borrowers",
    ]
    with count_commands(0):
        field = book.get_field("tags_fr")
    assert field._instance is book and field is book.tags_fr and book._fields[-1] == "tags_fr"
    field.sadd("sf")
    with pytest.raises(ImplementationError, match="is dynamic"):
        book.tags.sadd("scifi")
    assert layout(client) == {
        "catalog:book:collection": ("set", {"1"}),
        "catalog:book:max_pk": ("string", "1"),
        "catalog:book:1:hash": ("hash", {"title": "Dune"}),
        "catalog:book:title:Dune": ("set", {"1"}),
        "catalog:book:1:tags": ("set", {"tags_en", "tags_fr"}),
        "catalog:book:1:tags_en": ("set", {"scifi", "desert"}),
        "catalog:book:tags_en:scifi": ("set", {"1"}),
        "catalog:book:tags_en:desert": ("set", {"1"}),
        "catalog:book:tags_en:text-range": (
            "zset",
            [("desert:TEXT-RANGE-SEPARATOR:1", 0.0), ("scifi:TEXT-RANGE-SEPARATOR:1", 0.0)],
        ),
        "catalog:book:1:tags_fr": ("set", {"sf"}),
        "catalog:book:tags_fr:sf": ("set", {"1"}),
        "catalog:book:tags_fr:text-range": ("zset", [("sf:TEXT-RANGE-SEPARATOR:1", 0.0)]),
        "catalog:book:1:notes": ("set", {"notes_fr"}),
        "catalog:book:1:notes_fr": ("hash", {"review": "bien"}),
        "catalog:book:notes_fr:review:bien": ("set", {"1"}),
    }
    fresh = Book(book.pk.get())
    assert fresh._fields is Book._fields and fresh.get_field("tags_en").smembers() == {"scifi", "desert"}
    assert Book.get_field("tags").dynamic_names() == ["tags_en", "tags_fr"]
    assert_indexes_consistent(client, Book, Person)

    Book(book.pk.get()).delete()  # versions found in the inventories, with their index entries
    assert layout(client) == {"catalog:book:max_pk": ("string", "1")}


def test_dynamic_filters(catalog_db, client, count_commands, monkeypatch):
    dune = Book(title="Dune", tags_en=["scifi"], notes_fr={"review": "bien"})
    emma = Book(title="Emma", tags_en=["romance"], tags_fr=["roman"], notes_fr={"review": "superbe"})
    with count_commands(0):
        collection = Book.collection(title="Emma").dynamic_filter("tags", "fr", "roman")
        by_range = Book.collection().dynamic_filter("tags", "en", "r", "gte").sort(by="title", alpha=True)
    assert type(collection) is type(by_range) is extensions.ExtendedCollectionManagerWithDynamicFields
    assert list(collection) == pks(emma) and list(Book.collection(tags_en="scifi")) == pks(dune)
    assert list(by_range) == pks(dune, emma) and list(by_range.filter(title="Dune")) == pks(dune)
    assert list(Book.collection().dynamic_filter("tags", "en", "sc", "__startswith")) == pks(dune)
    assert list(Book.collection().dynamic_filter("notes", "fr", "superbe", "review__eq")) == pks(emma)
    assert list(Book.collection().dynamic_filter("notes", "fr", "bien", "review").instances()) == [dune]
    assert list(Book.collection(tags_en__lt="s", notes_fr__review="superbe")) == pks(emma)
    assert list(Book.collection().dynamic_filter("tags", "de", "x")) == []
    monkeypatch.delattr(Book, "_redis_attr_tags_it", raising=False)
    assert list(Book.collection(tags_it="x")) == []  # the filter itself creates the field, through get_field
    assert Book.__dict__["_redis_attr_tags_it"]._dynamic_base == "tags"
    assert list(Book.collection().dynamic_filter("tags", "en", "scifi").values_list("title", flat=True)) == [
        "Dune"
    ]
    intersected = Book.collection().intersect(pks(emma)).dynamic_filter("notes", "fr", "bien", "review")
    assert (
        type(intersected) is extensions.ExtendedCollectionManagerWithDynamicFields and list(intersected) == []
    )
    assert dune.get_field("notes_fr").hget("review") == "bien"


# ---------------------------------------------------------------------- catalog: related fields


def test_reverse_side_writers(catalog_db, client):
    ann = Person(name="ann")
    first, second = Book(title="First"), Book(title="Second")
    ann.edited_books.set(first, second.pk.get())
    ann.published_books.set(first)
    assert ann.read_books.zadd({first: 4.5, second.pk.get(): 3}) == 2
    ann.borrowed_books.rpush(first, first)
    ann.borrowed_books.lpush(second)
    assert [first.editor.get(), second.editor.get(), first.publisher.hget()] == [ann.pk.get()] * 3
    assert first.readers.zrange(0, -1, withscores=True) == [(ann.pk.get(), 4.5)]
    assert first.borrowers.lrange(0, -1) == [ann.pk.get()] * 2 and second.borrowers.lrange(0, -1) == [
        ann.pk.get()
    ]
    assert (
        set(ann.edited_books())
        == set(ann.read_books())
        == set(ann.borrowed_books())
        == set(pks(first, second))
    )
    assert list(ann.published_books()) == pks(first)

    ann.edited_books.delete(second)
    ann.read_books.zrem(first)
    ann.borrowed_books.lrem(first)
    assert list(ann.edited_books()) == pks(first) and list(ann.read_books()) == pks(second)
    assert list(ann.borrowed_books()) == pks(second) and first.borrowers.llen() == 0
    assert list(Book.collection(readers=ann)) == pks(second)
    assert ann.read_books.zadd(mapping={second: 5}, ch=True) == 1 and second.readers.zscore(ann) == 5.0
    with pytest.raises(LimpydException, match="nx argument to ZADD is not supported by limpyd"):
        ann.read_books.zadd(mapping={second: 6}, nx=True)
    assert_indexes_consistent(client, Book, Person)

    Person(ann.pk.get()).delete()  # removed from every related field pointing to it
    assert [first.editor.get(), first.publisher.hget(), second.readers.zcard(), second.borrowers.llen()] == [
        None,
        None,
        0,
        0,
    ]
    assert len(Book.collection()) == 2


def test_dynamic_related_fields(catalog_db, client):
    ann, bob = Person(name="ann"), Person(name="bob")
    book = Book(title="Book")
    assert ann.books.sadd(book, dynamic_part="writer") == 1
    ann.books.sadd(book.pk.get(), dynamic_part="illustrator")
    bob.books.sadd(book, dynamic_part="writer")
    assert type(ann.books) is extensions.DynamicRelatedCollection
    assert (
        list(ann.books("writer")) == list(ann.books("illustrator")) == pks(book) and list(ann.books()) == []
    )
    authors = book.get_field("authors_writer")()  # built by Person's collection manager
    assert type(authors) is extensions.ExtendedCollectionManagerWithDynamicFields and set(authors) == set(
        pks(ann, bob)
    )
    assert list(Book.collection().dynamic_filter("authors", "writer", bob)) == pks(book)
    other = Book(title="Other", authors_illustrator=[bob], readers={bob: 2})  # instances as creation values
    assert list(bob.books("illustrator")) == pks(other) and list(bob.read_books()) == pks(other)

    writer = Book.get_field("authors_writer")
    related_name = "books__writer__%d" % id(writer)
    assert writer.related_name == related_name and writer.related_to == "catalog:person"
    assert ("catalog:book", "authors_writer", related_name) in catalog.database._relations["catalog:person"]
    fresh = Person(ann.pk.get())  # instances created after the runtime relation get its reverse side
    assert related_name in fresh.related_collections and list(getattr(fresh, related_name)()) == pks(book)
    assert book.get_field("authors").dynamic_names() == ["authors_illustrator", "authors_writer"]
    assert_indexes_consistent(client, Book, Person)

    fresh.delete()
    book = Book(book.pk.get())
    assert book.get_field("authors_writer").smembers() == {bob.pk.get()}
    assert book.get_field("authors_illustrator").smembers() == set()
    assert list(Book.collection(authors_writer=ann.pk.get())) == []
    book.delete()
    other.delete()
    assert sorted(client.keys("catalog:book:*")) == ["catalog:book:max_pk"]


def test_whole_run_leaves_consistent_indexes(jobs_db, catalog_db, clock, client):
    """Jobs and catalog together: a worker run, dynamic and related writes, deletions."""
    for name in ("a", "b", "c"):
        Job.add_job(name, priority=ord(name) % 3)
    Job.add_job("d", delayed_until=START + timedelta(seconds=1))
    worker = Worker(
        "default",
        callback=lambda job, queue: job.identifier.hget() == "b" and failing(job, queue),
        max_tries=2,
        retry_delay=timedelta(seconds=2),
    )
    assert worker.run() == 3
    clock.advance(seconds=5)
    assert worker.run() == 2
    ann = Person(name="ann")
    book = Book(title="T", tags_en=["x", "y"], notes_de={"k": "v"})
    ann.books.sadd(book, dynamic_part="editor")
    ann.read_books.zadd({book: 1})
    Book(title="U", tags_es=["z"]).delete()
    Job.get(identifier="c").delete()
    assert [job.status.hget() for job in Job.collection().sort(by="identifier", alpha=True).instances()] == [
        "success",
        "error",
        "success",
    ]
    assert_indexes_consistent(client, Queue, Job, Error, Book, Person)
