"""Fields: every field type of limpyd, and the machinery they share (import path of every public name).

The code lives in ``limpyd._fields``, one concern per module: the command proxy
(``proxy``), the field base class and its write strategies (``base``), single-value fields
(``single``), multi-value fields (``multi``), the field lock (``lock``) and the value checks
(``values``). Field types and their commands are described in docs/models.rst.
"""

from __future__ import annotations

from limpyd._fields.base import RedisField
from limpyd._fields.lock import FieldLock, hold_released_locks, holds_lock
from limpyd._fields.multi import HashField, ListField, MultiValuesField, SetField, SortedSetField
from limpyd._fields.proxy import MetaRedisProxy, RedisProxyCommand
from limpyd._fields.single import AutoPKField, InstanceHashField, PKField, SingleValueField, StringField
from limpyd._fields.values import check_fresh_reply, check_value, field_label, write_hash

__all__ = [
    "InstanceHashField",
    "RedisField",
    "RedisProxyCommand",
    "MetaRedisProxy",
    "SortedSetField",
    "StringField",
    "ListField",
    "SetField",
    "PKField",
    "AutoPKField",
    "HashField",
]

# the classes and helpers are known by this module's name (reprs, docs, pickles), as before the split
for _shared in (
    RedisField,
    FieldLock,
    hold_released_locks,
    holds_lock,
    HashField,
    ListField,
    MultiValuesField,
    SetField,
    SortedSetField,
    MetaRedisProxy,
    RedisProxyCommand,
    AutoPKField,
    InstanceHashField,
    PKField,
    SingleValueField,
    StringField,
    check_fresh_reply,
    check_value,
    field_label,
    write_hash,
):
    _shared.__module__ = __name__
del _shared
