"""``audit(model)``: compare what a model stores with what its indexes hold, read-only.

Passes (each streams; memory depends on the chunk size and the findings kept, not on the number
of instances):

1. **instances**: a script walks the collection with ``SSCAN``, ``chunk_size`` pks per call,
   reads their fields and checks the entries of plain indexes itself
   (:mod:`limpyd.integrity._scripted`); the pks it flags, and the fields with other indexes, go
   through the reference check: the entries their values must have are computed through the index
   objects (:mod:`limpyd.integrity._schema`) and checked by one script call per few thousand
   entries (missing entries, wrong scores, other pks holding a unique value). The entries expected
   per field and the instance keys of the collection's pks are counted. A model with a field read
   by a custom getter goes through the reference check only (``SSCAN`` from here).
2. **keys**: ``SCAN`` of the model's key space (``<model._name>:*``): keys no field or index
   produces, locks and temporary keys without expiry; the members of each field's index keys are
   summed (one script call per batch of keys) and the instance keys counted. When that count is
   not the one of pass 1, the key space is scanned again for instance keys of pks outside the
   collection (orphan data).
3. **index entries**, only for the fields whose count of index members is not the count of
   entries expected: every index key of the field is read, and each member whose pk does not
   exist, or whose pk's values do not produce it, is reported.
4. **deadlines** of expiring models: due instances still stored, deadlines of unknown pks.

Every finding is checked again at the end (the same reads, for its pk or key only); those that
changed in the meantime are dropped.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from limpyd.integrity import _lua
from limpyd.integrity._lua import send as send_commands
from limpyd.integrity._schema import (
    INSTANCE_HASH,
    RESERVED_PARTS,
    STORE_PREFIX,
    TEMPORARY_PARTS,
    Entry,
    ModelPlan,
)
from limpyd.integrity._scripted import ScriptedCheck
from limpyd.integrity.report import (
    EMPTY_PK,
    EXPIRED_INSTANCE,
    MISSING_ENTRY,
    ORPHAN_DATA,
    ORPHAN_DEADLINE,
    OWNERLESS_LOCK,
    STALE_ENTRY,
    TEMPORARY_KEY,
    UNIQUE_CONFLICT,
    UNKNOWN_KEY,
    WRONG_ENTRY,
    AuditReport,
    Finding,
    _FindingCollector,
)
from limpyd.utils import make_key

__all__ = ["audit"]

Progress = Optional[Callable[[str, int, Optional[int]], None]]

#: check instances with :mod:`limpyd.integrity._scripted` where it can (``False``: all in Python)
SCRIPTED = True
#: entries per script call of the forward check
CHECK_BATCH = 3000
#: index keys per script call when counting or reading members
KEYS_BATCH = 500
#: a key with more members is read with SSCAN/ZSCAN, in chunks
BIG_KEY = 2000
TEXT_SEPARATOR = ":TEXT-RANGE-SEPARATOR:"


def glob_escape(text: str) -> str:
    """Return ``text`` with the glob characters of ``SCAN MATCH`` escaped."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def client_of(model: type) -> Any:
    """Return the plain client of the model's database (never a batch or pipeline client)."""
    database = model.database
    client = database.connection
    return getattr(client, "_limpyd_client", client)


# ---------------------------------------------------------------------------------------------
# pass 1: instances


def _check_entries(client: Any, entries: Sequence[Entry]) -> List[Tuple[int, str, Any]]:
    """Run the forward check on ``entries``; return ``(position, code, data)`` for each problem."""
    calls = []
    for start in range(0, len(entries), CHECK_BATCH):
        keys: List[str] = []
        args: List[Any] = [0]
        count = 0
        for entry in entries[start : start + CHECK_BATCH]:
            probe = entry.probe
            keys.append(entry.key)
            if probe is None:
                code = "s-" if entry.kind == "set" else "z-"
            elif probe[0] == "S":
                if probe[1] == entry.key:
                    code = "sS" if entry.kind == "set" else "zS"
                else:
                    code = ("s" if entry.kind == "set" else "z") + "T"
            else:
                code = ("s" if entry.kind == "set" else "z") + probe[0]
            args.append(code)
            args.append(entry.member)
            if entry.kind == "zset":
                args.append(repr(entry.score))
            if probe is not None:
                if probe[0] == "S" and probe[1] != entry.key:
                    keys.append(probe[1])
                elif probe[0] in ("L", "N"):
                    args.append(probe[1])
                    args.append(probe[2])
            count += 1
        args[0] = count
        calls.append((_lua.CHECK, keys, args))
    problems: List[Tuple[int, str, Any]] = []
    for offset, reply in zip(range(0, len(entries), CHECK_BATCH), _lua.run(client, calls)):
        for item in reply:
            problems.append((offset + int(item[0]) - 1, str(item[1]), item[2] if len(item) > 2 else None))
    return problems


def _holders(entry: Entry, members: Iterable[Any]) -> Set[str]:
    """Return the pks found by the uniqueness probe of ``entry``."""
    if entry.probe is not None and entry.probe[0] == "L":
        return {str(member).rsplit(TEXT_SEPARATOR, 1)[-1] for member in members}
    return {str(member) for member in members}


class _Analysis:
    """What the analysis of a chunk of pks found: findings, entries expected per field, pks with data."""

    def __init__(self) -> None:
        self.findings: List[Finding] = []
        self.expected: Dict[str, int] = {}
        self.missing: Dict[str, int] = {}
        self.instances = 0
        #: instance keys (field keys, instance hash) of the pks seen, counted by the scripted pass
        self.instance_keys = 0


def analyze_pks(
    plan: ModelPlan,
    client: Any,
    pks: Sequence[str],
    analysis: Optional[_Analysis] = None,
    check_empty: bool = True,
    fields: Optional[Sequence[str]] = None,
    reads: Optional[Sequence[str]] = None,
) -> _Analysis:
    """Read the values of ``pks`` (one round trip), check the entries they must have (one more).

    With ``fields``, only the entries of those fields are checked (their values read with those
    of ``reads``, all fields when ``None``) and nothing is said of the pks' keys: the scripted
    pass (:mod:`limpyd.integrity._scripted`) checked them, and the other fields.
    """
    analysis = analysis or _Analysis()
    entries: List[Entry] = []
    expected = analysis.expected
    if fields is not None:
        for pk, values, _, _ in plan.values(client, pks, reads):
            for entry in plan.entries(pk, values, fields):
                entries.append(entry)
                expected[entry.field] = expected.get(entry.field, 0) + 1
        _report_entries(client, entries, analysis)
        return analysis
    for pk, values, extra, wrong in plan.values(client, pks):
        analysis.instances += 1
        if check_empty and plan.fields and not wrong and not plan.has_data(values, extra):
            analysis.findings.append(
                Finding(
                    EMPTY_PK,
                    plan.collection_key,
                    pk=pk,
                    detail="pk %r is in the collection but nothing is stored for it" % pk,
                )
            )
        for name, value in extra.items():
            analysis.findings.append(
                Finding(
                    UNKNOWN_KEY,
                    make_key(plan.name, pk, INSTANCE_HASH),
                    pk=pk,
                    field=name,
                    member=name,
                    redis_type="hash",
                    detail="instance-hash entry %r is no InstanceHashField" % name,
                )
            )
        for key in wrong:
            analysis.findings.append(Finding(UNKNOWN_KEY, key, pk=pk, detail="key of the wrong Redis type"))
        for entry in plan.entries(pk, values):
            entries.append(entry)
            expected[entry.field] = expected.get(entry.field, 0) + 1
    _report_entries(client, entries, analysis)
    return analysis


def _report_entries(client: Any, entries: List[Entry], analysis: _Analysis) -> None:
    """Check ``entries`` (script calls) and add the findings and missing counts to ``analysis``."""
    conflicted: Set[int] = set()
    problems = _check_entries(client, entries)
    for position, code, data in problems:
        if code == "c":
            entry = entries[position]
            others = _holders(entry, data) - {_pk_of(entry)}
            if others:
                conflicted.add(position)
                pk = _pk_of(entry)
                probe_key = entry.probe[1] if entry.probe[0] == "S" else entry.key
                analysis.findings.append(
                    Finding(
                        UNIQUE_CONFLICT,
                        probe_key,
                        pk=pk,
                        field=entry.field,
                        pks=sorted(others | {pk}, key=pk_sort_key),
                        value=_display(entry.value),
                        redis_type="set" if entry.probe[0] == "S" else "zset",
                        detail="unique value %r held by pks %s"
                        % (_display(entry.value), ", ".join(sorted(others | {pk}, key=pk_sort_key))),
                    )
                )
    for position, code, data in problems:
        entry = entries[position]
        if code in ("m", "x"):
            analysis.missing[entry.field] = analysis.missing.get(entry.field, 0) + 1
        if code in ("m", "x") and position not in conflicted:
            analysis.findings.append(
                Finding(
                    MISSING_ENTRY,
                    entry.key,
                    pk=_pk_of(entry),
                    field=entry.field,
                    member=entry.member,
                    score=entry.score,
                    redis_type=entry.kind,
                    value=_display(entry.value),
                    detail=("value %r of pk %s is not in its index" % (_display(entry.value), _pk_of(entry)))
                    + (" (the key holds another Redis type)" if code == "x" else ""),
                )
            )
        elif code == "w" and _score_differs(data, entry.score):
            analysis.findings.append(
                Finding(
                    WRONG_ENTRY,
                    entry.key,
                    pk=_pk_of(entry),
                    field=entry.field,
                    member=entry.member,
                    score=entry.score,
                    redis_type="zset",
                    value=_display(entry.value),
                    detail="member %r has score %s, its stored value gives %r"
                    % (entry.member, data, entry.score),
                )
            )


def _pk_of(entry: Entry) -> str:
    """Return the pk of an expected entry (text-range members carry it after the separator)."""
    member = entry.member
    if TEXT_SEPARATOR in member and entry.kind == "zset":
        return member.rsplit(TEXT_SEPARATOR, 1)[1]
    return member


def _display(value: Any) -> Any:
    if isinstance(value, tuple):
        return ":".join(":".join(map(str, part)) if isinstance(part, tuple) else str(part) for part in value)
    return value


def _score_differs(actual: Any, wanted: Optional[float]) -> bool:
    try:
        return float(actual) != wanted
    except (TypeError, ValueError):
        return True


def pk_sort_key(pk: str) -> Tuple[int, Any]:
    """Sort numeric pks by number (the oldest auto pk first), then the others as strings."""
    return (0, int(pk), "") if pk.isdigit() else (1, 0, pk)  # type: ignore[return-value]


def iter_collection(client: Any, plan: ModelPlan, chunk_size: int) -> Iterable[List[str]]:
    """Yield the pks of the collection, ``chunk_size`` at a time (``SSCAN``)."""
    cursor = 0
    buffer: List[str] = []
    while True:
        cursor, pks = client.sscan(plan.collection_key, cursor, count=chunk_size)
        buffer.extend(pks)
        while len(buffer) >= chunk_size:
            yield buffer[:chunk_size]
            buffer = buffer[chunk_size:]
        if int(cursor) == 0:
            break
    if buffer:
        yield buffer


def _scripted_instances(
    plan: ModelPlan,
    client: Any,
    scripted: ScriptedCheck,
    chunk_size: int,
    analysis: _Analysis,
    collector: _FindingCollector,
    progress: Progress,
    total: int,
) -> None:
    """Pass 1 by :data:`~limpyd.integrity._scripted.CHECK_CHUNK` calls; the pks it flags are analyzed in Python."""
    python_fields = scripted.python_fields
    cursor: Any = 0
    expected = analysis.expected
    while True:
        cursor, flagged, counts, keys, scanned, pks = scripted.run(
            client, cursor, chunk_size, bool(python_fields)
        )
        analysis.instances += scanned - len(flagged)
        analysis.instance_keys += keys
        for name, number in counts.items():
            expected[name] = expected.get(name, 0) + number
        if flagged:
            analyze_pks(plan, client, flagged, analysis)
        if python_fields and pks:
            if flagged:
                skip = set(flagged)
                pks = [pk for pk in pks if pk not in skip]
            analyze_pks(plan, client, pks, analysis, fields=python_fields, reads=scripted.python_reads)
        collector.extend(analysis.findings)
        del analysis.findings[:]
        if progress:
            progress("instances", analysis.instances, total)
        if int(cursor) == 0:
            break


# ---------------------------------------------------------------------------------------------
# pass 2: the key space


class _KeySpace:
    """Classify the keys of a model's key space and count its index members per field.

    With ``check_instances`` false, the instance keys (field keys, instance hash) are only
    counted (``instance_keys``): the audit compares that count with the one of the scripted pass
    and looks for orphan data only when they differ (a second scan with ``only_orphans``).
    """

    def __init__(
        self,
        plan: ModelPlan,
        client: Any,
        other_models: Sequence[str],
        check_instances: bool = True,
        only_orphans: bool = False,
        max_findings: int = 100_000,
    ) -> None:
        self.plan = plan
        self.client = client
        self.prefix = plan.name + ":"
        self.others = tuple(name + ":" for name in other_models)
        self.counts: Dict[str, int] = {}
        self.collector = _FindingCollector(max_findings)
        self.keys = 0
        self.instance_keys = 0
        self.check_instances = check_instances or only_orphans
        self.only_orphans = only_orphans
        self._index_keys: List[Tuple[str, str]] = []
        self._instance_keys: List[Tuple[str, str, str]] = []
        self._ttl_keys: List[Tuple[str, str]] = []
        self._fields = frozenset(plan.fields)
        self._indexed = frozenset(name for name, field_plan in plan.fields.items() if field_plan.indexes)
        #: last key part of instance keys
        self._instance_names = {
            name for name, field_plan in plan.fields.items() if field_plan.reader not in ("ihash",)
        }
        if plan.instancehash:
            self._instance_names.add(INSTANCE_HASH)

    @property
    def findings(self) -> List[Finding]:
        """Return the findings kept (see ``collector.overflow`` for those beyond the limit)."""
        return self.collector.findings()

    def feed(self, key: str) -> None:
        self.feed_many((key,))

    def feed_many(self, keys: Iterable[str]) -> None:
        """Classify ``keys`` (each key of the model's key space once)."""
        plen = len(self.prefix)
        others = self.others
        fields = self._fields
        indexed = self._indexed
        instance_names = self._instance_names
        only_orphans = self.only_orphans
        check_instances = self.check_instances
        index_keys = self._index_keys
        instance_keys = self._instance_keys
        for key in keys:
            if others and key.startswith(others):
                continue  # a model whose name starts with this one's
            self.keys += 1
            rest = key[plen:]
            head, _, tail = rest.partition(":")
            if head in RESERVED_PARTS:
                if not only_orphans:
                    self._reserved(key, head, tail)
                continue
            if tail and head in fields:
                if only_orphans:
                    continue
                if head in indexed:
                    index_keys.append((key, head))
                    if len(index_keys) >= KEYS_BATCH:
                        self._flush_index_keys()
                else:
                    detail = "key under the field %r, which has no index" % head
                    self.collector.add(Finding(UNKNOWN_KEY, key, field=head, detail=detail))
                continue
            pk, _, name = rest.rpartition(":")
            if pk and name in instance_names:
                self.instance_keys += 1
                if check_instances:
                    instance_keys.append((key, pk, name))
                    if len(instance_keys) >= KEYS_BATCH:
                        self._flush_instance_keys()
            elif not only_orphans:
                self.collector.add(
                    Finding(
                        UNKNOWN_KEY,
                        key,
                        pk=pk or None,
                        field=name or None,
                        detail="no field or index of %s produces this key" % self.plan.model.__name__,
                    )
                )

    def _reserved(self, key: str, head: str, tail: str) -> None:
        if not tail and head in ("collection", "max_pk", "__deadlines__"):
            return
        if head == "lock-for-update":
            self._ttl_keys.append((key, OWNERLESS_LOCK))
        elif head in TEMPORARY_PARTS:
            self._ttl_keys.append((key, TEMPORARY_KEY))
        elif head == "__rebuild__":
            return  # the state and aside keys of an index rebuild (limpyd.integrity.rebuild)
        else:
            self.collector.add(Finding(UNKNOWN_KEY, key, detail="unexpected key under a reserved part"))
        if len(self._ttl_keys) >= KEYS_BATCH:
            self._flush_ttl_keys()

    def _flush_index_keys(self) -> None:
        batch = self._index_keys[:]
        del self._index_keys[:]  # feed_many holds the list
        if not batch:
            return
        groups: Dict[str, int] = {}
        numbers = [groups.setdefault(field, len(groups) + 1) for _, field in batch]
        sums, odd = _lua.run(self.client, [(_lua.CARDS, [key for key, _ in batch], [*numbers, len(groups)])])[
            0
        ]
        counts = self.counts
        for field, number in groups.items():
            counts[field] = counts.get(field, 0) + int(sums[number - 1])
        for position, kind in zip(odd[::2], odd[1::2]):
            key, field = batch[int(position) - 1]
            self.collector.add(
                Finding(
                    UNKNOWN_KEY,
                    key,
                    field=field,
                    redis_type=str(kind),
                    detail="a %s where the indexes of %r keep sets and sorted sets" % (kind, field),
                )
            )

    def _flush_instance_keys(self) -> None:
        batch = self._instance_keys[:]
        del self._instance_keys[:]  # feed_many holds the list
        if not batch:
            return
        flags = _lua.run(
            self.client, [(_lua.IS_MEMBER, [self.plan.collection_key], [pk for _, pk, _ in batch])]
        )[0]
        for (key, pk, name), flag in zip(batch, flags):
            if not flag:
                self.collector.add(
                    Finding(
                        ORPHAN_DATA,
                        key,
                        pk=pk,
                        field=None if name == INSTANCE_HASH else name,
                        detail="pk %r is not in %s" % (pk, self.plan.collection_key),
                    )
                )

    def _flush_ttl_keys(self) -> None:
        batch = self._ttl_keys[:]
        del self._ttl_keys[:]  # feed_many holds the list
        if not batch:
            return
        for (key, kind), ttl in zip(
            batch, send_commands(self.client, [(("PTTL", key), {}) for key, _ in batch])
        ):
            if ttl == -1 and not (kind == TEMPORARY_KEY and key[len(self.prefix) :].startswith(STORE_PREFIX)):
                self.collector.add(Finding(kind, key, detail="no expiry: nothing will ever delete it"))

    def finish(self) -> None:
        self._flush_index_keys()
        self._flush_instance_keys()
        self._flush_ttl_keys()


def _scan_key_space(
    plan: ModelPlan,
    client: Any,
    others: Sequence[str],
    progress: Progress,
    check_instances: bool = True,
    only_orphans: bool = False,
    max_findings: int = 100_000,
) -> _KeySpace:
    """Scan the model's key space into a :class:`_KeySpace` (finished)."""
    space = _KeySpace(plan, client, others, check_instances, only_orphans, max_findings)
    keys = iter(plan.model.database.scan_keys(glob_escape(plan.name + ":") + "*"))
    while True:
        batch = list(itertools.islice(keys, 10_000))
        if not batch:
            break
        space.feed_many(batch)
        if progress:
            progress("orphans" if only_orphans else "keys", space.keys, None)
    space.finish()
    return space


# ---------------------------------------------------------------------------------------------
# pass 3: index entries of the fields whose counts differ


def _index_members(client: Any, keys: Sequence[str]) -> Iterable[Tuple[str, str, str, Optional[float]]]:
    """Yield ``(key, type, member, score)`` for every member of the set/zset ``keys``."""
    reply = _lua.run(client, [(_lua.MEMBERS, list(keys), [BIG_KEY])])[0]
    for key, item in zip(keys, reply):
        kind = str(item[0])
        if kind not in ("set", "zset"):
            continue
        if len(item) > 2:
            members = item[2]
            if kind == "set":
                for member in members:
                    yield key, kind, str(member), None
            else:
                for position in range(0, len(members), 2):
                    yield key, kind, str(members[position]), float(members[position + 1])
        elif kind == "set":
            for member in client.sscan_iter(key, count=1000):
                yield key, kind, str(member), None
        else:
            for member, score in client.zscan_iter(key, count=1000):
                yield key, kind, str(member), float(score)


def reverse_check(
    plan: ModelPlan, client: Any, members: Sequence[Tuple[str, str, str, Optional[float]]], fields: Set[str]
) -> List[Finding]:
    """Return the findings for index members whose pk does not exist or does not produce them."""
    by_pk: Dict[str, List[Tuple[str, str, str, Optional[float]]]] = {}
    for item in members:
        member = item[2]
        pk = member.rsplit(TEXT_SEPARATOR, 1)[1] if item[1] == "zset" and TEXT_SEPARATOR in member else member
        by_pk.setdefault(pk, []).append(item)
    existing = in_collection(plan, client, list(by_pk))
    expected: Set[Tuple[str, str]] = set()
    if existing:
        names = [name for name in plan.fields if plan.fields[name].indexes and name in fields]
        for pk, values, _, _ in plan.values(client, existing):
            for entry in plan.entries(pk, values, names):
                expected.add((entry.key, entry.member))
    existing_set = set(existing)
    findings = []
    for pk, items in by_pk.items():
        for key, kind, member, score in items:
            field = key[len(plan.name) + 1 :].split(":", 1)[0]
            if pk not in existing_set:
                findings.append(
                    Finding(
                        STALE_ENTRY,
                        key,
                        pk=pk,
                        field=field,
                        member=member,
                        score=score,
                        redis_type=kind,
                        detail="pk %r of this entry has no instance" % pk,
                    )
                )
            elif (key, member) not in expected:
                findings.append(
                    Finding(
                        WRONG_ENTRY,
                        key,
                        pk=pk,
                        field=field,
                        member=member,
                        score=score,
                        redis_type=kind,
                        detail="pk %r exists but its stored values do not produce this entry" % pk,
                    )
                )
    return findings


def _scan_field_entries(
    plan: ModelPlan, client: Any, field: str, collector: _FindingCollector, progress: Progress
) -> None:
    database = plan.model.database
    pattern = glob_escape(make_key(plan.name, field, "")) + "*"
    batch: List[str] = []
    members: List[Tuple[str, str, str, Optional[float]]] = []
    done = 0

    def flush_members() -> None:
        nonlocal members
        if members:
            collector.extend(reverse_check(plan, client, members, {field}))
            members = []

    def flush_keys() -> None:
        nonlocal batch, done
        for item in _index_members(client, batch):
            members.append(item)
            if len(members) >= 5000:
                flush_members()
        done += len(batch)
        batch = []
        if progress:
            progress("entries:%s" % field, done, None)

    for key in database.scan_keys(pattern):
        batch.append(key)
        if len(batch) >= KEYS_BATCH:
            flush_keys()
    if batch:
        flush_keys()
    flush_members()


# ---------------------------------------------------------------------------------------------
# pass 4: deadlines


def _check_deadlines(
    plan: ModelPlan, client: Any, members: Sequence[Tuple[str, float]], now_ms: float
) -> List[Finding]:
    alive = set(in_collection(plan, client, [pk for pk, _ in members]))
    findings = []
    for pk, deadline in members:
        if pk not in alive:
            findings.append(
                Finding(
                    ORPHAN_DEADLINE,
                    plan.deadlines_key,
                    pk=pk,
                    member=pk,
                    redis_type="zset",
                    detail="deadline of pk %r, which is not in the collection" % pk,
                )
            )
        elif deadline <= now_ms:
            findings.append(
                Finding(
                    EXPIRED_INSTANCE,
                    plan.deadlines_key,
                    pk=pk,
                    member=pk,
                    redis_type="zset",
                    detail="pk %r was due %.0f ms ago" % (pk, now_ms - deadline),
                )
            )
    return findings


def _server_ms(client: Any) -> float:
    seconds, micros = client.time()
    return seconds * 1000.0 + micros / 1000.0


def _deadlines(plan: ModelPlan, client: Any) -> List[Finding]:
    if not client.exists(plan.deadlines_key):
        return []
    now = _server_ms(client)
    findings: List[Finding] = []
    chunk: List[Tuple[str, float]] = []
    for pk, score in client.zscan_iter(plan.deadlines_key, count=1000):
        chunk.append((str(pk), float(score)))
        if len(chunk) >= 1000:
            findings.extend(_check_deadlines(plan, client, chunk, now))
            chunk = []
    findings.extend(_check_deadlines(plan, client, chunk, now))
    return findings


# ---------------------------------------------------------------------------------------------
# reads shared by the recheck, the repair and the rebuild


def in_collection(plan: ModelPlan, client: Any, pks: Sequence[str]) -> List[str]:
    """Return the pks of ``pks`` that are in the collection (one script call per 1000)."""
    alive: List[str] = []
    calls = [
        (_lua.IS_MEMBER, [plan.collection_key], list(pks[start : start + 1000]))
        for start in range(0, len(pks), 1000)
    ]
    for call, flags in zip(calls, _lua.run(client, calls)):
        alive.extend(pk for pk, flag in zip(call[2], flags) if flag)
    return alive


def analyze_alive(plan: ModelPlan, client: Any, pks: Iterable[str], check_empty: bool = True) -> _Analysis:
    """Analyze (:func:`analyze_pks`) those of ``pks`` still in the collection, 1000 at a time."""
    analysis = _Analysis()
    unique = list(dict.fromkeys(pks))
    for start in range(0, len(unique), 1000):
        analyze_pks(
            plan, client, in_collection(plan, client, unique[start : start + 1000]), analysis, check_empty
        )
    return analysis


def check_present_entries(
    plan: ModelPlan, client: Any, entries: Sequence[Tuple[str, Optional[str], Optional[str], Optional[float]]]
) -> List[Finding]:
    """Return the findings (:func:`reverse_check`) of the index ``entries`` (key, type, member, score) still there."""
    findings: List[Finding] = []
    for start in range(0, len(entries), 1000):
        chunk = entries[start : start + 1000]
        replies = send_commands(
            client,
            [
                (("SISMEMBER", key, member) if kind == "set" else ("ZSCORE", key, member), {})
                for key, kind, member, _ in chunk
            ],
        )
        still = [
            item
            for item, reply in zip(chunk, replies)
            if not isinstance(reply, Exception) and reply not in (0, None, False)
        ]
        fields = {key[len(plan.name) + 1 :].split(":", 1)[0] for key, _, _, _ in still}
        findings.extend(reverse_check(plan, client, still, fields))  # type: ignore[arg-type]
    return findings


# ---------------------------------------------------------------------------------------------
# recheck


def recheck(
    plan: ModelPlan, client: Any, candidates: List[Finding], other_models: Sequence[str]
) -> List[Finding]:
    """Return the ``candidates`` still true now (each checked again with the same reads)."""
    if not candidates:
        return []
    fresh: List[Finding] = []
    # instances: entries, conflicts, empty pks, unknown hash entries
    pks: List[str] = []
    for finding in candidates:
        if (
            finding.kind in (MISSING_ENTRY, UNIQUE_CONFLICT, EMPTY_PK)
            or (finding.kind in (WRONG_ENTRY,) and finding.score is not None)
            or (finding.kind == UNKNOWN_KEY and finding.member is not None and finding.pk is not None)
        ):
            if finding.pk is not None:
                pks.append(finding.pk)
    fresh.extend(analyze_alive(plan, client, pks).findings)
    # entries found in the indexes
    entries = [
        (f.key, f.redis_type, f.member, f.score)
        for f in candidates
        if f.kind in (STALE_ENTRY, WRONG_ENTRY) and f.member is not None
    ]
    fresh.extend(check_present_entries(plan, client, entries))
    # keys
    keyed = [
        f
        for f in candidates
        if f.kind in (ORPHAN_DATA, TEMPORARY_KEY, OWNERLESS_LOCK)
        or (f.kind == UNKNOWN_KEY and f.member is None)
    ]
    if keyed:
        space = _KeySpace(plan, client, other_models)
        existing = send_commands(client, [(("EXISTS", f.key), {}) for f in keyed])
        for finding, exists in zip(keyed, existing):
            if exists:
                space.feed(finding.key)
        space.finish()
        fresh.extend(space.findings)
    # deadlines
    dead = [f.pk for f in candidates if f.kind in (EXPIRED_INSTANCE, ORPHAN_DEADLINE)]
    if dead:
        scores = send_commands(client, [(("ZSCORE", plan.deadlines_key, pk), {}) for pk in dead])
        present = [(pk, float(score)) for pk, score in zip(dead, scores) if score is not None]
        fresh.extend(_check_deadlines(plan, client, present, _server_ms(client)))
    current = {finding.identity(): finding for finding in fresh}
    return [current[finding.identity()] for finding in candidates if finding.identity() in current]


# ---------------------------------------------------------------------------------------------
# the audit


def _merge(collector: _FindingCollector, other: _FindingCollector) -> None:
    """Add the findings of ``other`` to ``collector``, and its count of findings beyond the limit."""
    collector.extend(other.findings())
    for kind, number in other.overflow.items():
        collector.overflow[kind] = collector.overflow.get(kind, 0) + number


def other_model_names(model: type) -> List[str]:
    """Return the names of the models of the same database whose key space is inside this one's."""
    prefix = model._name + ":"
    return sorted(name for name in getattr(model.database, "_models", {}) if name.startswith(prefix))


def audit(
    model: type,
    chunk_size: int = 1000,
    max_findings: int = 100_000,
    progress: Progress = None,
    recheck_findings: bool = True,
) -> AuditReport:
    """Return the :class:`~limpyd.integrity.report.AuditReport` of ``model`` (read-only).

    ``chunk_size`` pks are read per round trip; at most ``max_findings`` findings are kept (all
    are counted); ``progress(phase, done, total)`` is called after each chunk (``total`` may be
    ``None``). With ``recheck_findings`` (default), every finding is checked again at the end and
    dropped if it does not hold any more.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError("audit(chunk_size=%r): give an int >= 1" % (chunk_size,))
    if model._limpyd_shard_models is not None:  # sharded: shard after shard, one report
        from limpyd.integrity import sharded

        return sharded.audit(model, chunk_size, max_findings, progress, recheck_findings)
    started = time.perf_counter()
    plan = ModelPlan(model)
    client = client_of(model)
    report = AuditReport(model="%s.%s (%s)" % (model.__module__, model.__qualname__, plan.name))
    report.notes.extend(plan.notes)
    collector = _FindingCollector(max_findings)
    others = other_model_names(model)

    total = int(client.scard(plan.collection_key))
    analysis = _Analysis()
    scripted = ScriptedCheck(plan) if SCRIPTED else None
    counted = scripted is not None and scripted.available
    if counted:
        _scripted_instances(plan, client, scripted, chunk_size, analysis, collector, progress, total)  # type: ignore[arg-type]
    else:
        for pks in iter_collection(client, plan, chunk_size):
            analyze_pks(plan, client, pks, analysis)
            collector.extend(analysis.findings)
            del analysis.findings[:]
            if progress:
                progress("instances", analysis.instances, total)
    report.instances = analysis.instances

    space = _scan_key_space(
        plan, client, others, progress, check_instances=not counted, max_findings=max_findings
    )
    _merge(collector, space.collector)
    report.keys = space.keys
    if counted and space.instance_keys != analysis.instance_keys:
        # instance keys the collection's pks do not account for (or keys changed meanwhile)
        orphans = _scan_key_space(
            plan, client, others, progress, only_orphans=True, max_findings=max_findings
        )
        _merge(collector, orphans.collector)

    unsupported = {note.split(" on ", 1)[1].split(":", 1)[0].rsplit(".", 1)[-1] for note in plan.notes}
    for field_plan in plan.indexed:
        name = field_plan.name
        if name in unsupported:
            continue
        wanted = analysis.expected.get(name, 0) - analysis.missing.get(name, 0)
        if space.counts.get(name, 0) != wanted:
            _scan_field_entries(plan, client, name, collector, progress)

    collector.extend(_deadlines(plan, client))

    findings = collector.findings()
    if recheck_findings:
        findings = recheck(plan, client, findings, others)
    report.findings = findings
    counts: Dict[str, int] = {}
    for finding in findings:
        counts[finding.kind] = counts.get(finding.kind, 0) + 1
    for kind, number in collector.overflow.items():
        counts[kind] = counts.get(kind, 0) + number
    report.truncated = bool(collector.overflow)
    report.counts = counts
    report.seconds = time.perf_counter() - started
    return report
