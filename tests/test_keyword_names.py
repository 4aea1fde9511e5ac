"""Field and hash-key names that are also parameter names of the command machinery."""

from __future__ import annotations

from limpyd.fields import HashField, InstanceHashField, SortedSetField


def test_hmset_and_zadd_accept_any_names(Base):
    class M(Base):
        name = InstanceHashField(indexable=True)
        command = InstanceHashField()
        h = HashField(indexable=True)
        z = SortedSetField(indexable=True)

    instance = M(name="a", command="b")
    assert instance.hmset(name="x", command="y") is True
    assert instance.hmget("name", "command") == ["x", "y"]
    assert instance.h.hmset(name="1", command="2", value="3") is True
    assert instance.h.hgetall() == {"name": "1", "command": "2", "value": "3"}
    assert instance.z.zadd(command=1.5, name=2) == 2
    assert instance.z.zmembers() == ["command", "name"]
    assert list(M.collection(name="x")) == [instance._pk]
    assert list(M.collection(h__command="2")) == [instance._pk]
