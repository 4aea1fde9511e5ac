"""The executor of each write operation (limpyd._executors): the choice, and what the server then runs."""

from __future__ import annotations

import pytest
from _redis_dump import command_log

from limpyd import _executors, fields, model
from limpyd._executors import Executor
from limpyd.contrib.database import PipelineDatabase
from limpyd.indexes import EqualIndex


def define(database, namespace, atomic, **extra):
    attrs = {
        "database": database,
        "namespace": namespace,
        "atomic_writes": atomic,
        "name": fields.StringField(indexable=True),
        "note": fields.StringField(),
        "tags": fields.SetField(indexable=True),
        **extra,
    }
    return type("Item", (model.RedisModel,), attrs)


def script_calls(log):
    return [entry for entry in log if entry.split()[0].upper() in ("FCALL", "EVALSHA", "EVAL")]


def test_default_mode_choices(database, namespace):
    Item = define(database, namespace, False)
    item = Item(name="a", note="n")
    assert _executors.for_model(Item) is Executor.WRITE_BEHIND
    assert _executors.for_field(item.name, "set") is Executor.WRITE_BEHIND
    assert _executors.for_field(item.tags, "sadd") is Executor.WRITE_BEHIND
    assert _executors.for_field(item.note, "set") is Executor.IMMEDIATE  # no index to maintain
    assert _executors.for_field(item.name, "get") is Executor.IMMEDIATE  # a read


def test_atomic_mode_choices(database, namespace):
    Item = define(database, namespace, True)
    item = Item(name="a", note="n")
    assert _executors.for_model(Item) is Executor.SCRIPT
    assert _executors.for_field(item.name, "set") is Executor.SCRIPT
    assert _executors.for_field(item.tags, "srem") is Executor.SCRIPT
    assert _executors.for_field(item.note, "set") is Executor.IMMEDIATE  # connected, no index
    assert _executors.for_field(Item(item.pk.get()).note, "set") is Executor.IMMEDIATE  # connect() checked it
    lazy = Item.lazy_connect(item.pk.get())
    assert _executors.for_field(lazy.note, "set") is Executor.SCRIPT  # the script checks the pk
    assert _executors.for_field(lazy.note, "get") is Executor.IMMEDIATE


@pytest.mark.parametrize("atomic", [False, True])
def test_a_user_pipeline_takes_every_write(redis_settings, database, namespace, atomic):
    pdb = PipelineDatabase(**redis_settings)
    Item = define(pdb, namespace, atomic)
    item = Item(name="a")
    with pdb.pipeline():
        assert _executors.for_model(Item) is Executor.PIPELINE
        assert _executors.for_field(item.name, "set") is Executor.PIPELINE
        assert _executors.for_bulk(Item) is Executor.PIPELINE
        assert _executors.for_field(item.note, "set") is Executor.IMMEDIATE  # queued in the pipeline
    assert _executors.for_model(Item) is (Executor.SCRIPT if atomic else Executor.WRITE_BEHIND)


def test_bulk_uses_the_script_in_both_modes_unless_an_index_has_no_server_side_form(database, namespace):
    assert _executors.for_bulk(define(database, namespace + "d", False)) is Executor.SCRIPT
    assert _executors.for_bulk(define(database, namespace + "a", True)) is Executor.SCRIPT
    Own = type("Own", (EqualIndex,), {"normalize_value": lambda self, value: str(value).upper()})
    Custom = define(database, namespace + "c", False, name=fields.StringField(indexable=True, indexes=[Own]))
    assert _executors.for_bulk(Custom) is Executor.WRITE_BEHIND


@pytest.mark.parametrize("atomic", [False, True])
def test_the_server_runs_what_the_executor_says(database, namespace, client, atomic):
    Item = define(database, namespace, atomic)
    item = Item(name="a", note="n", tags=["x"])
    with command_log(client) as log:
        item.name.set("b")
    scripted = [entry for entry in script_calls(log) if "lock" not in entry.lower()]
    top_level = [entry for entry in log if entry.split()[0].isupper()]
    if atomic:  # one script call; the commands inside it are lower-cased in the log
        assert len(scripted) == 1 and top_level == scripted
    else:  # the spec's commands, sent by the client, under the field lock
        names = [entry.split()[0] for entry in top_level]
        assert "SET" in names and "SREM" in names and "SADD" in names
        assert any(entry.startswith("SET") and "lock-for-update" in entry for entry in top_level)
    assert Item.collection(name="b") == {item.pk.get()}
    with command_log(client) as log:
        item.note.set("m")  # no index: sent as built, in both modes
    assert [entry.split()[0] for entry in log] == ["SET"]
