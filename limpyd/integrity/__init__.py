"""Integrity and operations: audit, repair, online index rebuilds and key statistics.

``audit(model)`` reports what the stored data and the indexes disagree on, ``repair(model)``
fixes it, ``rebuild_indexes(model)`` rebuilds indexes aside and swaps them in, ``stats(database)``
groups the keys of a database by model, field and index. The same functions are attached to
every model as classmethods (``Model.audit()``...; a field of the same name wins over them) and
are what the ``limpyd`` command runs (docs/operations.rst).
"""

from __future__ import annotations

from limpyd.integrity.audit import audit
from limpyd.integrity.rebuild import rebuild_indexes
from limpyd.integrity.repair import repair
from limpyd.integrity.report import KIND_DESCRIPTIONS, KINDS, AuditReport, Finding, RepairAction, RepairReport
from limpyd.integrity.stats import stats

__all__ = [
    "KINDS",
    "KIND_DESCRIPTIONS",
    "AuditReport",
    "Finding",
    "RepairAction",
    "RepairReport",
    "audit",
    "rebuild_indexes",
    "repair",
    "stats",
]
