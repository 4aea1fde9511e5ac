"""A job queue on limpyd: ``Queue``, ``Job``, ``Error`` models and a ``Worker`` BLPOPing queue keys.

The models live on a ``PipelineDatabase()`` made at import time with the default settings (it is
never contacted); ``use_redis(**settings)`` moves them, with their relations, to a real server::

    use_redis(db=3)
    Job.add_job('send-mail:42', queue_name='mails', priority=1)
    Worker('mails', callback=send_mail, max_jobs=100).run()

A queue is a ``(name, priority)`` pair holding the pks of its jobs in lists (``waiting``,
``success``, ``errors``) and a sorted set (``delayed``, scored by timestamp). The worker pops the
waiting lists of all the queues of a name with one ``BLPOP``, highest priority first, and runs the
job with its callback (or the job's ``run(queue)`` method when a ``Job`` subclass defines one).
Optional hooks ``on_started``, ``on_success``, ``on_error``, ``on_skipped``, ``on_requeued`` and
``on_delayed`` are called when the job has them.
"""

from __future__ import annotations

import traceback as traceback_module
from datetime import datetime, timedelta
from typing import Any, Callable, List, Optional

from limpyd import EXACT_VERSION, fields
from limpyd.contrib.collection import ExtendedCollectionManager
from limpyd.contrib.database import PipelineDatabase
from limpyd.contrib.indexes import DateIndex, DateTimeIndex, ScoredEqualIndex, SimpleDateTimeIndex, TimeIndex
from limpyd.contrib.related import FKInstanceHashField, RelatedModel
from limpyd.database import DEFAULT_CONNECTION_SETTINGS, Lock
from limpyd.exceptions import DoesNotExist, ImplementationError


class STATUSES:
    WAITING = "waiting"
    DELAYED = "delayed"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    CANCELED = "canceled"


def now() -> datetime:
    """Return the current time (one place to change it in tests)."""
    return datetime.now()


database = PipelineDatabase()


class BaseJobsModel(RelatedModel):
    database = database
    namespace = "jobs"
    abstract = True
    collection_manager = ExtendedCollectionManager
    cacheable = False  # a plain class attribute: limpyd ignores it


def use_redis(db: int = 0, **settings: Any) -> PipelineDatabase:
    """Move the models to a new ``PipelineDatabase``: the default settings, with ``db`` and ``settings``."""
    connection_settings = DEFAULT_CONNECTION_SETTINGS.copy()
    connection_settings["db"] = db
    connection_settings.update(settings)
    new_database = PipelineDatabase(**connection_settings)
    BaseJobsModel.use_database(new_database)
    return new_database


def clean() -> int:
    """Delete every key of the jobs namespace; return how many there were."""
    keys = list(BaseJobsModel.database.scan_keys(BaseJobsModel.namespace + ":*", 100))
    if keys:
        BaseJobsModel.get_connection().delete(*keys)
    return len(keys)


class Queue(BaseJobsModel):
    name = fields.InstanceHashField(
        indexable=True, indexes=[ScoredEqualIndex.configure(score_field="priority")]
    )
    priority = fields.InstanceHashField(indexable=True, default=0)
    waiting = fields.ListField()
    success = fields.ListField()
    errors = fields.ListField()
    delayed = fields.SortedSetField()

    @classmethod
    def get_queue(cls, name: str, priority: int = 0) -> "Queue":
        queue, _ = cls.get_or_connect(name=name, priority=priority)
        return queue

    @classmethod
    def get_all(cls, name: str) -> List["Queue"]:
        """Return the queues named ``name``, by ascending priority (the order of the scored index)."""
        return list(cls.collection(name=name).instances())

    @classmethod
    def get_waiting_keys(cls, name: str) -> List[str]:
        """Return the keys of the waiting lists of the queues named ``name``, highest priority first."""
        return [queue.waiting.key for queue in reversed(cls.get_all(name))]

    def requeue_delayed_jobs(self) -> List[str]:
        """Move the delayed jobs whose time has come to the waiting list; return their pks."""
        ready = []
        while True:
            first = self.delayed.zrange(0, 0, withscores=True)  # [(job pk, timestamp)]
            if not first or first[0][1] > now().timestamp():
                return ready
            job_pk = first[0][0]
            self.delayed.zrem(job_pk)
            ready.append(job_pk)
            try:
                Job.get(job_pk).enqueue(self)
            except DoesNotExist:
                pass


class Job(BaseJobsModel):
    identifier = fields.InstanceHashField(indexable=True)
    status = fields.InstanceHashField(indexable=True)
    priority = fields.InstanceHashField(default=0)
    added = fields.InstanceHashField(indexable=True, indexes=[DateTimeIndex])
    start = fields.InstanceHashField()
    end = fields.InstanceHashField(indexable=True, indexes=[SimpleDateTimeIndex])
    tries = fields.InstanceHashField(default=0)
    delayed_until = fields.InstanceHashField(indexable=True, indexes=[SimpleDateTimeIndex])
    queued = fields.InstanceHashField(indexable=True)  # "1" while in a waiting list or a delayed set
    cancel_on_error = fields.InstanceHashField()
    queue = FKInstanceHashField(Queue, related_name="jobs")

    # plain class attributes, ignored by limpyd
    queue_model = Queue
    queue_name = "default"
    always_cancel_on_error = False

    @classmethod
    def add_job(
        cls,
        identifier: str,
        queue_name: Optional[str] = None,
        priority: int = 0,
        delayed_until: Optional[datetime] = None,
        cancel_on_error: bool = False,
    ) -> "Job":
        """Return the job ``identifier`` waiting in the queue ``(queue_name, priority)``, created if needed."""
        queue = cls.queue_model.get_queue(queue_name or cls.queue_name, priority)
        try:  # already waiting (or delayed) in this queue
            return cls.collection(identifier=identifier, queue=queue, queued="1").instances()[0]
        except IndexError:
            pass
        job = cls(
            identifier=identifier,
            queue=queue,
            priority=priority,
            added=str(now()),
            cancel_on_error=int(cancel_on_error),
        )
        job.enqueue(queue, delayed_until)
        return job

    def enqueue(self, queue: Queue, delayed_until: Optional[datetime] = None) -> None:
        """Put the job in the waiting list of ``queue``, or in its delayed set until ``delayed_until``."""
        if delayed_until is not None and delayed_until > now():
            self.hmset(status=STATUSES.DELAYED, delayed_until=str(delayed_until), queued="1")
            queue.delayed.zadd(**{self.pk.get(): delayed_until.timestamp()})
            if hasattr(self, "on_delayed"):
                self.on_delayed(queue)
        else:
            self.hdel("delayed_until")
            self.hmset(status=STATUSES.WAITING, queued="1")
            queue.waiting.rpush(self.pk.get())

    def requeue(self, queue: Queue, delay: Optional[timedelta] = None) -> None:
        self.enqueue(queue, now() + delay if delay else None)
        if hasattr(self, "on_requeued"):
            self.on_requeued(queue)

    def set_fields(self, **values: Any) -> None:
        """Set several fields with one ``HMSET``, keeping the status at hand in ``_cached_status``."""
        self.hmset(**values)
        if "status" in values:
            self._cached_status = values["status"]

    @property
    def ident(self) -> str:
        return self.make_key(self._name, self.pk.get())

    @property
    def duration(self) -> Optional[timedelta]:
        start, end = self.hmget("start", "end")
        if not (start and end):
            return None
        return datetime.fromisoformat(end) - datetime.fromisoformat(start)

    def delete(self) -> None:
        """Delete the job, its errors, and its pk from the lists of its queue."""
        for error in self.errors().instances():
            error.delete()
        queue_pk = self.queue.hget()
        if queue_pk:
            queue = Queue.lazy_connect(queue_pk)
            for name in ("waiting", "success", "errors"):
                queue.get_field(name).lrem(0, self.pk.get())
            queue.delayed.zrem(self.pk.get())
        super().delete()


class Error(BaseJobsModel):
    job = FKInstanceHashField(Job, related_name="errors")
    job_model_repr = fields.InstanceHashField()
    job_pk = fields.InstanceHashField(indexable=True)
    identifier = fields.InstanceHashField(indexable=True)
    queue_name = fields.InstanceHashField(indexable=True)
    date_time = fields.InstanceHashField(indexable=True, indexes=[SimpleDateTimeIndex])
    date = fields.InstanceHashField(indexable=True, indexes=[DateIndex])
    time = fields.InstanceHashField(indexable=True, indexes=[TimeIndex])
    type = fields.InstanceHashField(indexable=True)
    code = fields.InstanceHashField(indexable=True)
    message = fields.InstanceHashField()
    traceback = fields.StringField()

    @classmethod
    def add_error(cls, queue_name: str, job: Job, error: Exception, trace: Optional[str] = None) -> "Error":
        when = str(now())  # 'YYYY-MM-DD HH:MM:SS[.ffffff]'
        return cls(
            job=job,
            job_model_repr=job._name,
            job_pk=job.pk.get(),
            identifier=job.identifier.hget(),
            queue_name=queue_name,
            date_time=when,
            date=when[:10],
            time=when[11:19],
            type=error.__class__.__name__,
            code=getattr(error, "code", None),
            message=str(error),
            traceback=trace,
        )

    def get_job(self) -> Job:
        """Return the job, found by its model name in the database's registry."""
        job_model_repr = self.job_model_repr.hget()
        job_model = self.database._models.get(job_model_repr)
        if job_model is None:
            raise DoesNotExist("No job model %r on the database of %s" % (job_model_repr, self.ident))
        return job_model.get(self.job_pk.hget())

    @property
    def ident(self) -> str:
        return self.make_key(self._name, self.pk.get())


class Worker:
    """Run the jobs of the queues named ``queue_name``, highest priority first.

    ``run()`` handles at most ``max_jobs`` jobs and stops as soon as no job came within
    ``timeout`` seconds (``BLPOP``'s timeout): it never loops forever. A failed job is requeued
    (after ``retry_delay`` if given) until it was tried ``max_tries`` times, unless it must be
    canceled on error.
    """

    def __init__(
        self,
        queue_name: str,
        callback: Optional[Callable[[Job, Queue], Any]] = None,
        max_jobs: int = 10,
        timeout: float = 0.1,
        max_tries: int = 1,
        retry_delay: Optional[timedelta] = None,
        name: str = "worker",
    ) -> None:
        self.queue_name, self.callback, self.max_jobs, self.timeout = queue_name, callback, max_jobs, timeout
        self.max_tries, self.retry_delay = max_tries, retry_delay
        self.lock_name = Queue.make_key(Queue.namespace, "worker", name, queue_name)

    def banner(self) -> str:
        settings = Queue.database.connection_settings
        client = Queue.get_connection()
        return "limpyd %s, redis %s on %s:%s, db %s" % (
            EXACT_VERSION,
            client.info()["redis_version"],
            settings["host"],
            settings["port"],
            client.connection_pool.connection_kwargs["db"],
        )

    def run(self) -> int:
        """Handle waiting jobs until ``max_jobs`` were popped or none came in time; return the count."""
        client = Queue.get_connection()
        if client.exists(self.lock_name):
            raise ImplementationError(
                "A worker already runs on the queue %r (lock %s)" % (self.queue_name, self.lock_name)
            )
        handled = 0
        with Lock(client, self.lock_name, timeout=60):
            while handled < self.max_jobs:
                for queue in Queue.get_all(self.queue_name):
                    queue.requeue_delayed_jobs()
                keys = Queue.get_waiting_keys(self.queue_name)
                popped = client.blpop(keys, self.timeout) if keys else None
                if popped is None:
                    break
                key, job_pk = popped
                self.handle(Queue.get(int(key.split(":")[-2])), job_pk)
                handled += 1
        return handled

    def handle(self, queue: Queue, job_pk: str) -> Optional[Job]:
        try:
            job = Job.get(job_pk)
        except DoesNotExist:  # deleted while waiting
            return None
        if job.status.hget() == STATUSES.CANCELED:
            job.queued.hset("0")
            self._hook(job, "on_skipped", queue)
            return job
        job.set_fields(status=STATUSES.RUNNING, start=str(now()), queued="0")
        job.tries.hincrby(1)
        self._hook(job, "on_started", queue)
        try:
            result = job.run(queue) if hasattr(job, "run") else self.callback(job, queue)
        except Exception as exc:
            self.job_error(job, queue, exc)
        else:
            job.set_fields(status=STATUSES.SUCCESS, end=str(now()))
            queue.success.rpush(job.pk.get())
            self._hook(job, "on_success", queue, result)
        return job

    def job_error(self, job: Job, queue: Queue, exc: Exception) -> None:
        job.set_fields(status=STATUSES.ERROR, end=str(now()))
        Error.add_error(queue.name.hget(), job, exc, trace=traceback_module.format_exc())
        queue.errors.rpush(job.pk.get())
        self._hook(job, "on_error", queue, exc)
        if job.always_cancel_on_error or job.cancel_on_error.hget() == "1":
            job.status.hset(STATUSES.CANCELED)
        elif int(job.tries.hget()) < self.max_tries:
            job.requeue(queue, self.retry_delay)

    @staticmethod
    def _hook(job: Job, name: str, *args: Any) -> None:
        if hasattr(job, name):  # optional: limpyd defines no attribute with these names
            getattr(job, name)(*args)
