"""Bulk creation and deletion: many instances per round trip (one script call per batch).

Rows and pks are streamed: at most ``batch_size`` of them are held at once. Models whose indexes
the atomic-writes script cannot maintain fall back to one operation per row, with the same
results and refusals (see docs/atomic-writes.rst).
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator, List, Optional, Tuple

from redis.exceptions import DataError

from limpyd import _atomic, _executors
from limpyd._executors import Executor
from limpyd.exceptions import BulkError, LimpydException

__all__ = ["create_many", "delete_many"]


def _chunks(items: Iterable[Any], size: int) -> Iterator[List[Any]]:
    iterator = iter(items)
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk


def _check_batch_size(model: Any, batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("batch_size=%r for %s: give an int >= 1" % (batch_size, model.__name__))


def _prepare_row(model: Any, row: Any, ttl: Optional[float], encoder: Any) -> dict:
    """Check ``row`` as a creation would (names, values), and return its request for the script."""
    if not isinstance(row, dict):
        raise TypeError("a row is a dict of field values, got %r" % (row,))
    pk_field = model.get_class_field("pk")
    fields_names = model._fields
    values = {}
    request: dict = {}
    for name, value in row.items():
        if name == "pk" or name == fields_names[0]:
            if pk_field._auto_increment:
                raise ValueError('The pk for %s is "auto-increment", you must not fill it' % model.__name__)
            pk_field.check_new_pk(value)
            request["pk"] = pk_field.normalize(value)
            continue
        if name not in fields_names:
            raise ValueError("`%s` is not a valid field name for `%s`." % (name, model.__name__))
        values[name] = value
        if value is not None and not (isinstance(value, (list, tuple, set, dict)) and not value):
            model.get_class_field(name).check_creation_value(value)
    if not pk_field._auto_increment and "pk" not in request:
        raise ValueError('The pk for %s is not "auto-increment", you must fill it' % model.__name__)
    request["f"] = _atomic.creation_fields(model, values, encoder)
    if ttl is not None:
        request["ttl"] = int(ttl * 1000)
    return request


class _Replies:
    """Collect the script's replies of the batches: pks in row order, refusals."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.pks: List[Any] = []
        self.refusals: List[Tuple[int, Exception]] = []

    def add(self, start: int, end: int, positions: List[int], reply: Any) -> None:
        created = {}
        for index, at in enumerate(positions):
            status, first, second, third = reply[4 * index : 4 * index + 4]
            if status == "ok":
                created[at] = first
            else:
                self.refusals.append((at, _atomic.refusal(self.model, status, first, second, third)))
        self.pks.extend(created.get(at) for at in range(start, end))


def create_many(
    model: Any, rows: Iterable[Any], batch_size: int = 1000, ttl: Optional[float] = None
) -> List[Any]:
    """Create the instances of ``rows``; see ``RedisModel.create_many``.

    With the script, a batch is sent before the next one is prepared, and its reply read after:
    the server writes one batch while the client prepares the next (one round trip per batch).
    """
    _check_batch_size(model, batch_size)
    if ttl is not None:
        model._check_expiring("create_many(ttl=...)")
    elif model._limpyd_default_ttl is not None:
        ttl = model._limpyd_default_ttl
    if _executors.for_bulk(model) is not Executor.SCRIPT:
        return _create_one_by_one(model, rows, batch_size, ttl)
    model._purge_due()
    replies = _Replies(model)
    encoder = model.database.connection.get_encoder()
    position = 0
    with _atomic.script_sender(model) as send:
        for chunk in _chunks(rows, batch_size):
            requests, positions = [], []
            for row in chunk:
                try:
                    requests.append(_prepare_row(model, row, ttl, encoder))
                    positions.append(position)
                except (LimpydException, ValueError, TypeError, DataError) as error:
                    replies.refusals.append((position, error))
                position += 1
            start = position - len(chunk)
            if requests:
                send(
                    {"op": "create_many", "rows": requests},
                    lambda reply, start=start, end=position, positions=positions: replies.add(
                        start, end, positions, reply
                    ),
                )
            else:
                replies.pks.extend([None] * len(chunk))
    if replies.refusals:
        replies.refusals.sort(key=lambda refusal: refusal[0])
        raise BulkError(replies.refusals, replies.pks)
    return replies.pks


def _create_one_by_one(model: Any, rows: Iterable[Any], batch_size: int, ttl: Optional[float]) -> List[Any]:
    """Create the rows one instance at a time (models the script cannot write)."""
    pks: List[Any] = []
    refusals: List[Tuple[int, Exception]] = []
    for position, row in enumerate(rows):
        try:
            instance = model(**row)
            if ttl is not None and ttl != model._limpyd_default_ttl:
                instance.expire_in(ttl)
            pks.append(instance.pk.get())
        except (LimpydException, ValueError, TypeError, DataError) as error:
            refusals.append((position, error))
            pks.append(None)
    if refusals:
        raise BulkError(refusals, pks)
    return pks


def delete_many(model: Any, pks: Iterable[Any], batch_size: int = 1000) -> int:
    """Delete the instances of ``pks``; see ``RedisModel.delete_many``."""
    _check_batch_size(model, batch_size)
    # a sharded model's unique values: each deletion releases its claims (limpyd._claims)
    scripted = _executors.for_bulk(model) is Executor.SCRIPT and not model._limpyd_claims
    normalize = model.get_field("pk").normalize
    deleted = 0
    for chunk in _chunks(pks, batch_size):
        if scripted:
            reply = _atomic.run(model, {"op": "delete_many", "pks": [normalize(pk) for pk in chunk]})
            deleted += int(reply[1])
            continue
        for pk in chunk:
            for instance in model.from_pks([pk]):
                instance.delete()
                deleted += 1
    return deleted
