"""The command proxy: ``available_getters/modifiers`` become methods routed to ``_call_<name>`` or redis-py.

Every Redis command of a model or field goes through ``_call_command``, then ``_call_<name>`` (the
per-command extension point) or ``_traverse_command`` (the redis-py method of the same name, with
the field's key prepended).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Set

from limpyd import _atomic
from limpyd._batch import (
    Pending,
    is_batched,
    later,
)
from limpyd._fields.values import check_fresh_reply, field_label
from limpyd._pool import direct, read_direct

#: reads whose redis-py method sends the command name, the key and the arguments as they are:
#: sent by ``limpyd._pool.read_direct`` (redis-py's connection handling and reply callback, without
#: its per-command layers) when nothing observes the redis-py method (``limpyd._pool.direct``)
DIRECT_READS = {"get": "GET", "hget": "HGET"}


class MetaRedisProxy(type):
    """Metaclass building a command method for each name of ``available_getters/modifiers``."""

    def __new__(mcs, name: str, bases: tuple, attrs: Dict[str, Any]) -> type:
        cls = super().__new__(mcs, name, bases, attrs)
        if any(mcs.class_can_have_commands(base) for base in bases):
            cls.available_getters = set(cls.available_getters)
            cls.available_modifiers = set(cls.available_modifiers)
            cls.available_commands = cls.available_getters | cls.available_modifiers
            for command in cls.available_commands:
                if not hasattr(cls, command):
                    setattr(cls, command, cls._make_command_method(command))
        return cls

    @staticmethod
    def class_can_have_commands(klass: type) -> bool:
        """Return whether ``klass`` derives from ``RedisProxyCommand`` (and so gets commands)."""
        proxy = globals().get("RedisProxyCommand")
        return proxy is not None and isinstance(klass, type) and issubclass(klass, proxy)


class RedisProxyCommand(metaclass=MetaRedisProxy):
    """Base of models and fields: dispatches commands to ``_call_<name>`` or to redis-py."""

    available_getters: Set[str] = set()
    available_modifiers: Set[str] = set()
    available_commands: Set[str] = set()

    @classmethod
    def _make_command_method(cls, command_name: str) -> Callable[..., Any]:
        """Return a method sending ``command_name`` through ``_call_command``."""

        def command(self: Any, *args: Any, **kwargs: Any) -> Any:
            return self._call_command(command_name, *args, **kwargs)

        command.__name__ = command_name
        command.__doc__ = "Run the Redis command %s (https://redis.io/commands/%s)." % (
            command_name.upper(),
            command_name,
        )
        return command

    def _call_command(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run the command ``name``: existence check for modifiers, then its ``_call_`` method."""
        obj = getattr(self, "_instance", self)
        if name in self.available_modifiers and obj._pk and not obj.connected:
            obj.connect()
        meth = getattr(self, "_call_" + name, self._traverse_command)
        return meth(name, *args, **kwargs)

    def _traverse_command(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the redis-py method ``name`` with the key first, then ``post_command``."""
        if name not in self.available_commands:
            raise AttributeError(
                "%s is not an available command for %s (%s): use one of %s"
                % (
                    name,
                    type(self).__name__,
                    self._command_owner_label(),
                    ", ".join(sorted(self.available_commands)),
                )
            )
        if "_limpyd_atomic" in self.__dict__ and name in self.available_modifiers:
            return self.post_command(
                sender=self,
                name=name,
                result=_atomic.modify(
                    self,
                    self._instance.pk.get(),
                    [self.name],
                    name,
                    (self.key,) + args,
                    kwargs,
                    self.__dict__["_limpyd_atomic"],
                ),
                args=args,
                kwargs=kwargs,
            )
        connection = self.connection
        key = self.key  # may allocate the pk: before the command is marked to be queued
        pending = self.__dict__.pop("_limpyd_pending", None)
        if pending is not None and is_batched(connection):
            queued = later(connection, on_reply=self._pending_reply(pending, name, args, kwargs))
            getattr(queued, name)(key, *args, **kwargs)
            return pending
        if self.__dict__.get("_limpyd_fresh_read") and is_batched(connection):
            queued = later(connection, on_reply=self._fresh_read_reply(name, args, kwargs), is_write=False)
            getattr(queued, name)(key, *args, **kwargs)
            return None
        command = DIRECT_READS.get(name)
        if command is not None and not kwargs and direct(connection, name):
            result = read_direct(connection, command, key, *args)
        else:
            result = getattr(connection, name)(key, *args, **kwargs)
        return self.post_command(sender=self, name=name, result=result, args=args, kwargs=kwargs)

    def _command_owner_label(self) -> str:
        """Return what runs the command, for error messages: ``field Model.name`` or ``model Model``."""
        from limpyd._fields.base import RedisField  # the base module imports this one

        if isinstance(self, RedisField):
            return "field %s" % field_label(self)
        return "model %s" % type(self).__name__

    def _fresh_read_reply(self, name: str, args: Any, kwargs: Any) -> Callable[[Any], None]:
        """Return the callback checking that a queued read of a just-allocated pk found nothing."""

        def on_reply(reply: Any) -> None:
            if isinstance(reply, Exception):
                raise reply
            reply = self.post_command(sender=self, name=name, result=reply, args=args, kwargs=kwargs)
            check_fresh_reply(self, reply)

        return on_reply

    def _pending_reply(self, pending: Pending, name: str, args: Any, kwargs: Any) -> Callable[[Any], None]:
        """Return the callback giving ``pending`` the (post-processed) reply of a queued command."""
        return pending.reply_handler(
            lambda reply: self.post_command(sender=self, name=name, result=reply, args=args, kwargs=kwargs)
        )

    def post_command(self, sender: Any, name: str, result: Any, args: Any, kwargs: Any) -> Any:
        """Return the result of a command (hook: its return value replaces the result)."""
        return result

    @classmethod
    def get_connection(cls) -> Any:
        """Return the Redis client of the model's database."""
        return cls.database.connection

    @property
    def connection(self) -> Any:
        """Return the Redis client, re-read at each call."""
        return self.get_connection()
