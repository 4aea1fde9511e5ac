"""Related fields (``limpyd.contrib.related``) to and from sharded models (docs/sharding.rst).

A relation is declared once, for the sharded model: its shard classes (``<model>@k``) carry
copies of its related fields, which register nothing (``RelatedFieldMixin._attach_to_model``),
and an instance of a shard class finds the relations naming its target under the sharded
model's name (``RelatedModel.__init__``). So:

- an FK to a sharded model stores the target's pk; ``field.instance()`` builds it through the
  sharded model, which routes to the pk's shard;
- the reverse collection of a relation owned by a sharded model is the collection of the sharded
  model filtered by the related field: a :class:`~limpyd.sharding.ShardedCollection`, every shard
  filtered (the index entries of an owner live in its shard) and merged;
- deleting a target removes it from its owners shard by shard (:func:`remove_instance`), each
  under the lock of that shard's field;
- the collection of the targets held by an M2M field pointing to a sharded model is that
  model's collection intersected with the field (:func:`held_collection`).
"""

from __future__ import annotations

from typing import Any, Dict, List

from limpyd._batch import batch_scope
from limpyd.fields import FieldLock

__all__ = ["held_collection", "remove_instance"]


def remove_instance(related_collection: Any) -> None:
    """Remove the target of ``related_collection`` from the related field of every owner pointing
    to it, the owner model being sharded (``RelatedCollection.remove_instance``).

    The owners are read once from every shard (the reverse collection); then each shard holding
    some is read again under the lock of its own field (the lock its writers take), and its
    owners lose the target: an FK is deleted, the pk removed (all occurrences) from an M2M field.
    The owners themselves are kept.
    """
    related_field = related_collection.related_field
    model = related_field._model
    pk = related_collection.instance._pk
    shards: Dict[int, List[Any]] = {}
    for owner_pk in related_collection():
        shards.setdefault(model.shard_of(owner_pk), []).append(owner_pk)
    with batch_scope(model.database):
        for number in sorted(shards):
            shard = model.shard_model(number)
            with FieldLock(shard.get_class_field(related_field.name)):
                for owner_pk in shard.collection(**{related_field.name: pk}):
                    owner = shard(owner_pk)
                    field = owner.get_field(related_field.name)
                    remover = getattr(field, "_related_remover", None)
                    field._drop_next_result()
                    if remover is None:
                        field.delete()
                    elif remover == "lrem":
                        field.lrem(0, pk)
                    else:
                        getattr(field, remover)(pk)


def held_collection(field: Any, related_model: Any, filters: Dict[str, Any]) -> Any:
    """Return the collection of the instances of the sharded ``related_model`` held by the bound
    M2M ``field``, with ``filters`` (``MultiValuesRelatedFieldMixin.__call__``).

    The collection of the model intersected with the field, as for an unsharded target: a
    ``ShardedExtendedCollection`` (``limpyd._sharded_extended``: the field is read on the client
    at evaluation, and only the shards holding some of its pks are asked).

    A sorted-set field gives the order of its scores, as for an unsharded target.
    """
    return related_model.collection(**filters).intersect(field)
