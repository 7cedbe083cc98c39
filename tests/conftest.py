from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Broker, Subscriber, stop_leftovers


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
