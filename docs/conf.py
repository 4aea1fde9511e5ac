"""Sphinx configuration of limpyd's documentation (built in CI with warnings as errors)."""

from __future__ import annotations

import doctest
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import limpyd  # noqa: E402 - the installed (or checked-out) package being documented

project = "limpyd"
author = "the limpyd developers"
copyright = "2026, the limpyd developers"  # noqa: A001 - Sphinx's name
release = limpyd.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.coverage",
    "sphinx.ext.viewcode",
    "private_redis",
]

exclude_patterns = ["_build"]
nitpicky = False
html_theme = "alabaster"
html_static_path: list = []
html_theme_options = {"description": "An ORM for Redis", "fixed_sidebar": True}

autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"

# Every executed example runs against the private redis-server started by ``_ext/private_redis.py``
# (a unix socket in a temporary directory): ``connection_settings`` points to it, and each page
# starts on an empty server.
doctest_global_setup = """
import os
import redis
from limpyd.database import RedisDatabase

connection_settings = {"unix_socket_path": os.environ["LIMPYD_DOCS_REDIS_SOCKET"]}
redis.Redis(**connection_settings).flushall()
"""
# ``...`` stands for addresses and long outputs; line breaks in outputs are free
doctest_default_flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

coverage_show_missing_items = True
coverage_ignore_modules = [r"limpyd\._", r"limpyd\.contrib\._", r"limpyd\.integrity\._"]
coverage_modules = [
    "limpyd",
    "limpyd.database",
    "limpyd.model",
    "limpyd.fields",
    "limpyd.indexes",
    "limpyd.collection",
    "limpyd.exceptions",
    "limpyd.utils",
    "limpyd.speedups",
    "limpyd.contrib.database",
    "limpyd.contrib.collection",
    "limpyd.contrib.related",
    "limpyd.contrib.indexes",
]
coverage_statistics_to_stdout = True
