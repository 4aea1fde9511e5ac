"""``python -m limpyd``: the ``limpyd`` command (:mod:`limpyd.cli`)."""

from __future__ import annotations

import sys

from limpyd.cli import main

if __name__ == "__main__":
    sys.exit(main())
