from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Broker, Subscriber


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real Mosquitto on a free loopback port."""
    running = Broker(tmp_path / "broker").start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    sub = Subscriber(broker.port, "buildings/#").start()
    try:
        yield sub
    finally:
        sub.stop()
