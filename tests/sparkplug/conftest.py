"""Fixtures of the Sparkplug tests: the Tahu peer's modules, a broker that queues QoS 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from simulators.mqtt_broker import Feature, PrivateBroker, broker_class, private_broker
from tests.sparkplug.peers import peer_modules


@pytest.fixture(scope="session")
def tahu_modules() -> Path:
    return peer_modules()


@pytest_asyncio.fixture
async def sparkplug_broker(tmp_path: Path) -> AsyncIterator[PrivateBroker]:
    """A private broker keeping QoS 0 messages (Sparkplug data) for persistent sessions."""
    cls = broker_class()
    if cls is None:
        pytest.skip("no MQTT broker (mosquitto or amqtt) is installed")
    reason = cls.lacks(Feature.QUEUED_QOS0, Feature.PERSISTENT_SESSIONS)
    if reason:
        pytest.skip(reason)
    async with private_broker(tmp_path / "broker", queue_qos0=True) as broker:
        yield broker
