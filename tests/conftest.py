from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Broker, Subscriber, stop_leftovers


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked ``long(seconds)`` first, the longest first.

    pytest -n hands whole files to its workers in the order of their first
    test here (``--dist loadfile``, pyproject.toml), so the files with long
    tests start at once and run beside the many short ones, instead of
    starting late with nothing left to run beside them. The order changes
    nothing else."""

    def seconds(item: pytest.Item) -> float:
        mark = item.get_closest_marker("long")
        return float(mark.args[0]) if mark else 0.0

    items.sort(key=lambda item: -seconds(item))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _nothing_left_running() -> Iterator[None]:
    """Whatever a test started and did not stop (it failed half-way) is
    stopped here, so no Mosquitto or agent outlives its test."""
    yield
    stop_leftovers()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real Mosquitto on a free loopback port."""
    with Broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    with Subscriber(broker.port, "buildings/#") as sub:
        yield sub
