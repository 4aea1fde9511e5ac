"""Worker process for the concurrency test: create instances with colliding unique values."""

from __future__ import annotations

import sys

from limpyd import fields, model
from limpyd.database import RedisDatabase
from limpyd.exceptions import UniquenessError


def define_model(database: RedisDatabase) -> type:
    """Return the model shared by the test and its workers (same namespace and name)."""
    shared_database = database

    class Racer(model.RedisModel):
        database = shared_database
        namespace = "race"
        code = fields.InstanceHashField(indexable=True, unique=True)
        group = fields.StringField(indexable=True)
        note = fields.InstanceHashField()
        tags = fields.SetField(indexable=True)

    return Racer


def main(socket_path: str, worker: int, attempts: int, values: int) -> None:
    """Try ``attempts`` creations with codes drawn from ``values`` distinct ones; print the counts."""
    Racer = define_model(RedisDatabase(unix_socket_path=socket_path))
    created = rejected = 0
    for attempt in range(attempts):
        code = "code-%d" % ((attempt * 7 + worker * 13) % values)
        try:
            Racer(code=code, group="g%d" % (attempt % 3), note="w%d" % worker, tags=["t1", "t%d" % worker])
            created += 1
        except UniquenessError:
            rejected += 1
    print(created, rejected)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
