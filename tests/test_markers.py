"""The ``redis`` marker is applied to every test using the private server, and only to them."""

from __future__ import annotations

import pytest


def test_a_test_without_the_server_is_not_marked(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("redis") is None


def test_a_test_using_the_database_is_marked(request: pytest.FixtureRequest, database: object) -> None:
    assert request.node.get_closest_marker("redis") is not None


def test_a_test_using_a_fixture_built_on_the_server_is_marked(
    request: pytest.FixtureRequest, count_commands: object
) -> None:
    assert request.node.get_closest_marker("redis") is not None
