"""Related models: foreign keys and many-to-many fields between models, with reverse collections.

A related field lives on its *owner* model and points to a *target* model (``to``)::

    class Player(RelatedModel):
        database = db
        name = StringField(unique=True)

    class Team(RelatedModel):
        database = db
        captain = FKInstanceHashField(Player, related_name='captained_teams')
        players = M2MSetField(Player)                  # reverse name: 'team_set'

    team.players.sadd(player1, player2)                # instances are accepted wherever a pk is
    team.captain.instance()                            # -> the Player
    team.players()                                     # -> a collection of the players
    player1.team_set()                                 # -> the collection of teams holding player1

Related fields store the target pks exactly as their base fields store values (an FK is a
``StringField`` / ``InstanceHashField``, an M2M a set / list / sorted set) and are always
indexable (the default ``EqualIndex``): the reverse collection of a target instance is the filter
``<related field>=<target pk>`` on the owner model. Relations are registered on the database, in
``database._relations`` = ``{target _name lower-cased: [(owner _name, field name, related name), ...]}``,
and every ``RelatedModel`` instance of a target gets one attribute per relation, named after the
related name, holding a :class:`RelatedCollection`. Either side may be a sharded model: its
relations are registered once, under its own name (its shard classes register none), see
``limpyd._sharded_related`` and docs/sharding.rst.

Deleting a ``RelatedModel`` instance first removes it from every related field pointing to it (FKs
are deleted, the pk is removed from M2M fields; the owners themselves are kept), then deletes its
own fields (docs/contrib.rst, Related models).

Choices beyond redis-limpyd 2.1.2 (see also the docstrings below):

- conversion of instances covers a superset of the spec's commands: every argument of ``lpushx`` /
  ``rpushx``, the value of the ``lrank`` / ``lcount`` / ``lcontains`` getters, ``linsert``'s pivot;
  ``zadd`` converts its keys unless the caller passes a callable ``values_callback`` (``None`` counts
  as not passed); creation values (``Team(players=[p1, p2])``, ``Team(ranking={p1: 1})``) may hold
  instances too;
- an unknown target raises, when used, an error that is both a ``KeyError`` (as upstream) and an
  ``ImplementationError`` naming the owner model, the field and the fix; an unknown placeholder in a
  ``related_name`` likewise is both a ``KeyError`` and an ``ImplementationError``;
- a related name that would shadow a field or an attribute of an already defined target model, and
  a ``to`` naming an abstract model, are refused at definition time (``ImplementationError``);
- attaching the very same relation twice (same owner, field and related name) is a no-op.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from limpyd._batch import batch_scope
from limpyd._cluster import name_on
from limpyd.contrib.collection import ExtendedCollectionManager
from limpyd.exceptions import ImplementationError
from limpyd.fields import (
    FieldLock,
    InstanceHashField,
    ListField,
    MetaRedisProxy,
    RedisField,
    SetField,
    SortedSetField,
    StringField,
)
from limpyd.model import RESERVED_FIELD_NAMES, RedisModel
from limpyd.sharding import sharded_model
from limpyd.utils import make_key, normalize

__all__ = [
    "RelatedModel",
    "RelatedCollection",
    "FKStringField",
    "FKInstanceHashField",
    "M2MSetField",
    "M2MListField",
    "M2MSortedSetField",
    "RelatedFieldMetaclass",
    "RelatedFieldMixin",
    "SimpleValueRelatedFieldMixin",
    "MultiValuesRelatedFieldMixin",
    "re_identifier",
]

#: characters that may not appear in a related name (used as ``re_identifier.sub('_', text)``)
re_identifier = re.compile(r"\W")

#: a relation, as registered in ``database._relations[<target _name>]``
Relation = Tuple[str, str, str]


class _NotFoundError(ImplementationError, KeyError):
    """A name that could not be resolved: an ``ImplementationError`` that is also a ``KeyError``.

    ``KeyError`` is what upstream raised (an unknown target model, an unknown placeholder in a
    related name); the message names the model, the field and the fix.
    """

    __str__ = Exception.__str__  # KeyError's would show the repr of the message


def _model_label(model: Any) -> str:
    return "%s.%s" % (model.__module__, model.__qualname__)


def _find_model(database: Any, name: str) -> Optional[type]:
    """Return the model registered on ``database`` as ``name``, compared case-insensitively."""
    models = getattr(database, "_models", {})
    model = models.get(name)
    if model is not None:
        return model
    lowered = name.lower()
    for model_name, model in models.items():
        if model_name.lower() == lowered:
            return model
    return None


def _check_related_name_free(
    relations: Iterable[Relation], model: Any, field_name: str, related_name: str, related_to: str
) -> bool:
    """Raise if ``related_name`` is taken on ``related_to`` by another relation; return whether the
    relation ``(model._name, field_name, related_name)`` itself is already registered."""
    for owner_name, other_field_name, other_related_name in relations:
        if other_related_name != related_name:
            continue
        if (owner_name, other_field_name) == (model._name, field_name):
            return True
        raise ImplementationError(
            "The related name defined for the field '%s.%s', named '%s', already exists on the model '%s' "
            "(tied to the field '%s.%s'): two relations to one model need distinct related names; pass "
            "related_name='...' to one of the fields (the placeholders %%(namespace)s and %%(model)s are "
            "replaced by the owner model's namespace and class name)"
            % (model.__name__, field_name, related_name, related_to, other_field_name, owner_name)
        )
    return False


# ---------------------------------------------------------------------- reverse side


class RelatedCollection:
    """The reverse side of a relation, set on each instance of the target model.

    ``player.team_set(**filters)`` is ``Team.collection(players=player._pk, **filters)``.
    ``instance`` is the target instance, ``related_field`` the model-level field of the owner
    model. Subclasses may change the signature of ``__call__`` (``remove_instance`` calls it with no
    argument) and add writers (``sadd``, ``lpush``...): ``related_field._model(pk)`` gives an owner
    instance, ``related_field.name`` the field to write through.
    """

    def __init__(self, instance: Any, related_field: Any) -> None:
        self.instance = instance
        self.related_field = related_field

    def __call__(self, **filters: Any) -> Any:
        """Return the collection of owner instances whose related field holds this instance."""
        filters[self.related_field.name] = self.instance._pk
        return self.related_field._model.collection(**filters)

    def remove_instance(self) -> None:
        """Remove this instance from the related field of every owner pointing to it.

        Under the lock of the related field: an FK pointing to the instance is deleted; the pk is
        removed (all occurrences) from an M2M field. The owners themselves are kept.
        """
        related_field = self.related_field
        if related_field._model._limpyd_shard_models is not None:  # a sharded owner: shard by shard
            from limpyd._sharded_related import remove_instance

            remove_instance(self)
            return
        with batch_scope(related_field._model.database):
            with FieldLock(related_field):
                pk = self.instance._pk
                for owner_pk in self():
                    owner = related_field._model(owner_pk)
                    field = owner.get_field(related_field.name)
                    remover = getattr(field, "_related_remover", None)
                    field._drop_next_result()
                    if remover is None:
                        field.delete()
                    elif remover == "lrem":
                        field.lrem(0, pk)
                    else:
                        getattr(field, remover)(pk)

    def __repr__(self) -> str:
        return "<%s of %r for %s.%s>" % (
            type(self).__name__,
            self.instance,
            self.related_field._model.__name__,
            self.related_field.name,
        )


# ---------------------------------------------------------------------- models


#: The attributes of a (related) model in 3.0 that a related name must not hide on the target's
#: instances. Frozen like ``limpyd.model.RESERVED_FIELD_NAMES``: a method added later (``audit``,
#: ``expire_in``, ``shard``...) loses to a related collection of its name on the instances (the
#: class keeps it), so relations that worked keep working.
_ATTRIBUTES_OF_3_0 = RESERVED_FIELD_NAMES | frozenset({"related_collections"})


class RelatedModel(RedisModel):
    """Base of models having related fields, and of models targeted by them.

    Each instance gets, for every relation targeting its model on its database, an attribute
    named after the relation's related name, holding a :class:`RelatedCollection`; their names
    are listed in ``related_collections``.
    """

    abstract = True
    collection_manager = ExtendedCollectionManager

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.related_collections = []
        database = self.database
        # an instance of a shard class: the relations name its sharded model (docs/sharding.rst)
        name = sharded_model(type(self))._name
        for owner_name, field_name, related_name in database._relations.get(name.lower(), []):
            owner = database._models[owner_name]
            field = owner.get_field(field_name)
            setattr(self, field.related_name, field.related_collection_class(self, field))
            self.related_collections.append(field.related_name)

    def _related_values(self, values: Dict[str, Any]) -> Dict[str, Any]:
        """Return ``values`` (of ``hmset``) with those of the related fields converted (instances: pks)."""
        for name, value in values.items():
            if self.has_field(name):
                field = self.get_field(name)
                if isinstance(field, RelatedFieldMixin):
                    values[name] = field.from_python(value)
        return values

    def _call_hmset(self, command: str, /, **values: Any) -> Any:
        """Set several InstanceHashFields at once; related ones accept instances (converted first)."""
        return super()._call_hmset(command, **self._related_values(values))

    def _hash_write_atomic(self, command: str, /, *names: str, **values: Any) -> Any:
        """``hmset``/``hdel`` with ``atomic_writes``: the values of related fields converted first."""
        if command == "hmset":
            values = self._related_values(values)
        return super()._hash_write_atomic(command, *names, **values)

    def delete(self) -> None:
        """Remove the instance from the related fields pointing to it, then delete it."""
        with batch_scope(self.database):
            # a failed creation is deleted from the constructor, before the reverse collections exist
            for name in getattr(self, "related_collections", ()):
                getattr(self, name).remove_instance()
            super().delete()

    @classmethod
    def use_database(cls, database: Any) -> List[type]:
        """Move the model (and its subclasses sharing its database) and the relations they own.

        The relations owned by the moved models go to the new database's ``_relations``; a
        related name already used there on the same target raises ``ImplementationError`` before
        anything is moved. Relations owned by models staying on the old database stay there: a
        reverse collection only exists when the owner and the target share a database.
        """
        old_database = getattr(cls, "database", None)
        old_relations: Dict[str, List[Relation]] = getattr(old_database, "_relations", None) or {}
        moving: List[Tuple[str, Relation]] = []
        if old_relations and old_database is not database:
            owners = {
                model._name: model for model in database._collect_models_to_move(cls) if not model.abstract
            }
            new_relations = database._relations
            for target, relations in old_relations.items():
                for relation in relations:
                    owner = owners.get(relation[0])
                    if owner is None:
                        continue
                    moving.append((target, relation))
                    _check_related_name_free(
                        new_relations.get(target, ()), owner, relation[1], relation[2], target
                    )
        moved = super().use_database(database)
        moved_names = {model._name for model in moved if not model.abstract}
        for target, relation in moving:
            if relation[0] not in moved_names:  # pragma: no cover - the same list as collected above
                continue
            old_relations[target].remove(relation)
            relations = database._relations.setdefault(target, [])
            if relation not in relations:
                relations.append(relation)
        return moved


# ---------------------------------------------------------------------- fields: machinery


def _convert_single(field: Any, args: tuple, kwargs: Dict[str, Any]) -> Tuple[tuple, Dict[str, Any]]:
    """Convert the value of a single-value command: first positional argument, or ``value=``."""
    if args:
        return (field.from_python(args[0]),) + tuple(args[1:]), kwargs
    if "value" in kwargs:
        kwargs["value"] = field.from_python(kwargs["value"])
    return args, kwargs


def _convert_many(field: Any, args: tuple, kwargs: Dict[str, Any]) -> Tuple[tuple, Dict[str, Any]]:
    """Convert every positional argument (the values of ``sadd``, ``lpush``, ``zrem``...)."""
    return tuple(field.from_python_many(*args)), kwargs


_CONVERTERS: Dict[str, Callable[..., Tuple[tuple, Dict[str, Any]]]] = {
    "single": _convert_single,
    "many": _convert_many,
}


class RelatedFieldMetaclass(MetaRedisProxy):
    """Metaclass of the related fields: wraps the commands taking target pks so they accept instances.

    On every class created with it (that can have commands), each command named in
    ``_commands_with_single_value_from_python`` (its first positional argument, or ``value=``)
    and in ``_commands_with_many_values_from_python`` (all positional arguments) is replaced by a
    method converting its values with ``from_python`` then calling the method it wraps: the one
    defined in the class body, else the parent class's. Inherited wrappers are not wrapped again;
    when they are (a body redefining a command), converting twice is harmless.
    """

    def __new__(mcs, name: str, bases: tuple, attrs: Dict[str, Any]) -> type:
        cls = super().__new__(mcs, name, bases, attrs)
        if any(mcs.class_can_have_commands(base) for base in bases):
            for kind, commands in (
                ("single", cls._commands_with_single_value_from_python),
                ("many", cls._commands_with_many_values_from_python),
            ):
                for command in commands:
                    mcs._wrap_command(cls, command, kind)
        return cls

    @staticmethod
    def _wrap_command(cls: type, command: str, kind: str) -> None:
        own = cls.__dict__.get(command)
        if own is None:
            inherited = getattr(cls, command, None)
            if inherited is None or getattr(inherited, "_limpyd_from_python", None) == kind:
                return
        convert = _CONVERTERS[kind]

        if own is not None:

            def method(self: Any, *args: Any, **kwargs: Any) -> Any:
                args, kwargs = convert(self, args, kwargs)
                return own(self, *args, **kwargs)
        else:

            def method(self: Any, *args: Any, **kwargs: Any) -> Any:
                args, kwargs = convert(self, args, kwargs)
                return getattr(super(cls, self), command)(*args, **kwargs)

        method.__name__ = command
        method.__qualname__ = "%s.%s" % (cls.__qualname__, command)
        method.__doc__ = (
            "Run the Redis command %s, model instances accepted as values (https://redis.io/commands/%s)."
            % (
                command.upper(),
                command,
            )
        )
        method._limpyd_from_python = kind  # type: ignore[attr-defined]
        setattr(cls, command, method)


_copy_conf = copy.deepcopy(RedisField._copy_conf)
_copy_conf["kwargs"] += [("to", "related_to"), "related_name"]


class RelatedFieldMixin(metaclass=RelatedFieldMetaclass):
    """Behaviour shared by the related fields: target, related name, registration, conversion.

    ``Field(to, *args, related_name=None, **kwargs)``: ``to`` is a ``RelatedModel`` subclass, a
    model name (``'Player'``, in the owner's namespace, or ``'namespace:Player'``) or ``'self'``;
    ``related_name`` names the reverse attribute on target instances (default ``'%(model)s_set'``;
    ``%(namespace)s`` and ``%(model)s`` are replaced by the owner's namespace and class name). The
    field is always indexable. Until the field is attached to a concrete model, ``related_to`` and
    ``related_name`` hold what was given; then they hold the final lower-cased names.
    """

    _copy_conf = _copy_conf
    related_collection_class = RelatedCollection
    _commands_with_single_value_from_python: frozenset = frozenset()
    _commands_with_many_values_from_python: frozenset = frozenset()

    def __init__(self, to: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["indexable"] = True
        self.related_to = to
        self.related_name = kwargs.get("related_name")
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ attachment

    def _attach_to_model(self, model: type) -> None:
        """Attach to ``model`` and register the relation on its database (concrete models only)."""
        super()._attach_to_model(model)
        if model.abstract:
            return  # the copies attached to the concrete subclasses register
        if "_limpyd_shard" in model.__dict__:
            # a shard class of a sharded model (docs/sharding.rst): the copy holds the final names
            # already, and the relation is the sharded model's, registered once by its own field
            return
        self.related_name = self._get_related_name()
        self.related_to = self._get_related_model_name()
        self._check_related_name_against_target()
        if self._assert_relation_does_not_exists():
            return
        database = model.database
        database._relations.setdefault(self.related_to, []).append(
            (model._name, self.name, self.related_name)
        )

    def _field_label(self) -> str:
        return "%s.%s" % (self._model.__name__, getattr(self, "name", "<unnamed>"))

    def _get_related_name(self) -> str:
        """Return the final related name: ``related_name`` (or ``'%(model)s_set'``) formatted, lower-cased."""
        model = self._model
        template = self.related_name or "%(model)s_set"
        try:
            name = template % {
                "namespace": re_identifier.sub("_", model.namespace or ""),
                "model": model.__name__,
            }
        except KeyError as exc:
            raise _NotFoundError(
                "Unknown placeholder %%(%s)s in the related_name %r of the field %s (model %s): only "
                "%%(namespace)s and %%(model)s are available"
                % (exc.args[0], template, self._field_label(), _model_label(model))
            ) from exc
        except (TypeError, ValueError) as exc:
            raise ImplementationError(
                "The related_name %r of the field %s (model %s) is not a valid template (%s): pass a str, "
                "using %%(namespace)s and %%(model)s as placeholders and %%%% for a literal %%"
                % (template, self._field_label(), _model_label(model), exc)
            ) from exc
        if re_identifier.sub("", name) != name:
            raise ImplementationError(
                'The related_name "%s" is not a valid python identifier: the field %s (model %s) needs a '
                "related_name made of letters, digits and underscores"
                % (name, self._field_label(), _model_label(model))
            )
        return name.lower()

    def _get_related_model_name(self) -> str:
        """Return the lower-cased ``_name`` of the target model, from ``to`` (a class or a string)."""
        to = self.related_to
        model = self._model
        if isinstance(to, type) and issubclass(to, RelatedModel):
            if to.abstract:
                raise ImplementationError(
                    "The `to` argument to the related field %s (model %s) is the abstract model %s: a "
                    "relation targets a concrete RelatedModel (one of its subclasses)"
                    % (self._field_label(), _model_label(model), _model_label(to))
                )
            name = to._name
        elif isinstance(to, str) and to:
            if to == "self":
                name = model._name
            elif ":" not in to:
                name = make_key(model.namespace, to)
            else:
                name = to
        else:
            raise ImplementationError(
                "The `to` argument to a related field must be a RelatedModel as a class or as a string "
                "(with or without namespace). Or simply 'self'. Got %r for the field %s (model %s)."
                % (to, self._field_label(), _model_label(model))
            )
        # a name given as a string takes the braces of the models' names on a cluster database
        return name_on(getattr(model.database, "is_cluster", False), name).lower()

    def _assert_relation_does_not_exists(self, database: Any = None) -> bool:
        """Raise ``ImplementationError`` if the related name is already used on the target.

        Checked on ``database`` (default: the model's). Returns whether this very relation is
        already registered there.
        """
        database = self._model.database if database is None else database
        relations = database._relations.get(self.related_to, ())
        return _check_related_name_free(relations, self._model, self.name, self.related_name, self.related_to)

    def _check_related_name_against_target(self) -> None:
        """Refuse a related name shadowing a field or an attribute of the target, if already defined."""
        target = _find_model(self._model.database, self.related_to)
        if target is None:
            return
        name = self.related_name
        is_field = name in getattr(target, "_fields", ())
        if is_field or (name in _ATTRIBUTES_OF_3_0 and hasattr(target, name)):
            what = "field" if is_field else "attribute"
            raise ImplementationError(
                "The related name '%s' of the field %s (model %s) would hide the %s '%s' of the model %s on "
                "its instances: pass another related_name=... to the field"
                % (name, self._field_label(), _model_label(self._model), what, name, _model_label(target))
            )

    # ------------------------------------------------------------------ target

    @property
    def related_model(self) -> type:
        """Return the target model, looked up (case-insensitively) on the owner model's database."""
        model = self._model
        if getattr(model, "abstract", False):
            raise ImplementationError(
                "The related field %s is attached to the abstract model %s: use the field of a concrete "
                "subclass" % (self._field_label(), _model_label(model))
            )
        target = _find_model(model.database, self.related_to)
        if target is None:
            raise _NotFoundError(
                "No model %r on the database of %s, targeted by its related field %s: define that RelatedModel "
                "(on the same database), or fix the field's `to` argument (a RelatedModel class, "
                "'[namespace:]ModelName' or 'self')"
                % (self.related_to, _model_label(model), self._field_label())
            )
        return target

    # ------------------------------------------------------------------ values

    def from_python(self, value: Any) -> Any:
        """Return ``value`` as stored: an instance gives its pk, a bound FK field its value."""
        if isinstance(value, RedisModel):
            return value._pk
        if isinstance(value, SimpleValueRelatedFieldMixin) and hasattr(value, "_instance"):
            return value.proxy_get()
        return normalize(value)

    def from_python_many(self, *values: Any) -> List[Any]:
        """Return the list of ``values`` converted by ``from_python``."""
        return [self.from_python(value) for value in values]

    @staticmethod
    def _pk_of(value: Any) -> Any:
        """Return the pk of an instance (no Redis command), anything else unchanged."""
        return value._pk if isinstance(value, RedisModel) else value


class SimpleValueRelatedFieldMixin(RelatedFieldMixin):
    """A foreign key: the field holds one pk of the target model."""

    def instance(self, lazy: bool = False) -> Any:
        """Return the target instance whose pk the field holds (``lazy``: not checked to exist).

        An empty field gives ``DoesNotExist`` (lazy: an instance whose pk is ``'None'``).
        """
        related_model = self.related_model
        value = self.proxy_get()
        return related_model.lazy_connect(value) if lazy else related_model(value)

    def check_creation_value(self, value: Any) -> None:
        """Raise ``DataError`` if ``value`` (a pk, an instance or a bound FK field) cannot be stored."""
        if isinstance(value, SimpleValueRelatedFieldMixin):
            return  # its value is read (and checked) when written
        super().check_creation_value(self._pk_of(value))


class MultiValuesRelatedFieldMixin(RelatedFieldMixin):
    """A many-to-many field: the field holds pks of the target model."""

    def __call__(self, **filters: Any) -> Any:
        """Return the collection of target instances held by the field, with ``filters`` applied.

        Built by the target's ``collection_manager`` (an ``ExtendedCollectionManager``), intersected
        with the field; the order of a list or sorted set is not kept.
        """
        related_model = self.related_model
        if related_model._limpyd_shard_models is not None:  # a sharded target (docs/sharding.rst)
            from limpyd._sharded_related import held_collection

            return held_collection(self, related_model, filters)
        return related_model.collection_manager(related_model)(**filters).intersect(self)

    def collection(self, **filters: Any) -> Any:
        """Return ``self(**filters)``: the collection of target instances held by the field."""
        return self(**filters)

    def check_creation_value(self, value: Any) -> None:
        """Raise ``DataError`` if ``value`` (pks or instances) cannot be stored."""
        if isinstance(value, (list, tuple, set)):
            value = [self._pk_of(item) for item in value]
        else:
            value = self._pk_of(value)
        super().check_creation_value(value)


# ---------------------------------------------------------------------- fields


class FKStringField(SimpleValueRelatedFieldMixin, StringField):
    """A foreign key stored in a string key ``<M._name>:<pk>:<field>``."""

    _commands_with_single_value_from_python = frozenset({"set", "setnx", "getset"})


class FKInstanceHashField(SimpleValueRelatedFieldMixin, InstanceHashField):
    """A foreign key stored as the entry ``<field>`` of the instance hash ``<M._name>:<pk>:hash``."""

    _commands_with_single_value_from_python = frozenset({"hset", "hsetnx"})


class M2MSetField(MultiValuesRelatedFieldMixin, SetField):
    """A many-to-many relation stored in a set ``<M._name>:<pk>:<field>``."""

    _commands_with_single_value_from_python = frozenset({"sismember"})
    _commands_with_many_values_from_python = frozenset({"sadd", "srem"})
    _related_remover = "srem"


class M2MListField(MultiValuesRelatedFieldMixin, ListField):
    """A many-to-many relation stored in a list ``<M._name>:<pk>:<field>`` (a pk may be there twice)."""

    _commands_with_single_value_from_python = frozenset({"lrank", "lcount", "lcontains"})
    _commands_with_many_values_from_python = frozenset({"lpush", "rpush", "lpushx", "rpushx"})
    _related_remover = "lrem"

    def linsert(self, where: Any, refvalue: Any, value: Any) -> Any:
        """Insert ``value`` before/after ``refvalue`` (both may be instances) (https://redis.io/commands/linsert)."""
        return super().linsert(where, self.from_python(refvalue), self.from_python(value))

    def lrem(self, count: Any, value: Any) -> Any:
        """Remove ``count`` occurrences of ``value`` (0: all; an instance is accepted) (https://redis.io/commands/lrem)."""
        return super().lrem(count, self.from_python(value))

    def lset(self, index: Any, value: Any) -> Any:
        """Replace the element at ``index`` by ``value`` (an instance is accepted) (https://redis.io/commands/lset)."""
        return super().lset(index, self.from_python(value))


class M2MSortedSetField(MultiValuesRelatedFieldMixin, SortedSetField):
    """A many-to-many relation stored in a sorted set ``<M._name>:<pk>:<field>`` (pk -> score)."""

    _commands_with_single_value_from_python = frozenset({"zscore", "zrank", "zrevrank"})
    _commands_with_many_values_from_python = frozenset({"zrem"})
    _related_remover = "zrem"

    def zadd(self, *args: Any, **kwargs: Any) -> Any:
        """Add members with their scores; instances are accepted as members (https://redis.io/commands/zadd).

        The members are converted by ``values_callback``: ``from_python_many`` unless the caller
        passes a callable of its own.
        """
        if kwargs.get("values_callback") is None:
            kwargs["values_callback"] = self.from_python_many
        return super().zadd(*args, **kwargs)

    def zincrby(self, amount: Any, value: Any) -> Any:
        """Increment the score of ``value`` (an instance is accepted) by ``amount`` (https://redis.io/commands/zincrby)."""
        return super().zincrby(amount, self.from_python(value))

    def proxy_set(self, value: Any) -> Any:
        """Write ``value``: a ``{member: score}`` dict (members may be instances) goes to ``zadd(mapping)``."""
        if isinstance(value, dict):
            return self.zadd(dict(value))
        return super().proxy_set(value)

    def check_creation_value(self, value: Any) -> None:
        """Raise ``DataError`` unless ``value`` is a ``{member: score}`` dict (members may be instances)."""
        if isinstance(value, dict):
            value = {self._pk_of(member): score for member, score in value.items()}
        SortedSetField.check_creation_value(self, value)
