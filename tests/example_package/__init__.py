"""An example downstream package built on limpyd's extension points (docs/extending.rst).

It is written the way real downstream projects use limpyd 2.x internals, to document them and to
run them end to end in ``tests/test_example_package.py``:

- :mod:`example_package.extensions`: dynamic fields (``tags = DynamicSetField()`` gives
  ``tags_<part>`` fields on demand), ``dynamic_filter`` on collections, reverse-side writers for
  related fields;
- :mod:`example_package.catalog`: a small application using those extensions, on a database
  redirected with ``database.connect(**settings)``;
- :mod:`example_package.jobs`: a job queue (``Queue``, ``Job``, ``Error`` on a ``PipelineDatabase``
  made at import time) and a ``Worker`` that ``BLPOP``s the waiting lists of the queues.

No module here is named ``test_*``: pytest does not collect them.
"""
