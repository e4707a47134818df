"""Running the MQTT driver or a whole agent inside a test, and waiting on conditions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.acquisition.frame import Frame, concat
from agent.runtime import Agent
from protocols.mqtt.aio import AsyncMqttClient
from protocols.mqtt.config import MqttSourceConfig
from protocols.mqtt.driver import MqttDriver
from protocols.sdk import DriverContext
from simulators.mqtt_broker import (
    BrokerTls,
    Feature,
    PrivateBroker,
    broker_class,
    private_broker,
)
from simulators.mqtt_scada import connect_publisher
from tests.conftest import running_agent as running_agent

BROKER = broker_class()  # what private_broker starts here: mosquitto, amqtt or none


def needs_broker(*features: Feature) -> pytest.MarkDecorator:
    """Skip a test on a broker that lacks one of ``features`` (amqtt), naming what."""
    reason = BROKER.lacks(*features) if BROKER is not None else None
    return pytest.mark.skipif(reason is not None, reason=reason or "")


# amqtt 0.12 forgets an unacknowledged QoS 1/2 message when its subscriber disconnects
# (and after 5 s without PUBACK) instead of redelivering it; mosquitto redelivers
needs_redelivery = pytest.mark.skipif(
    BROKER is not None and BROKER.name == "amqtt",
    reason="the amqtt broker drops unacknowledged messages instead of redelivering them",
)


def broker_or_skip(
    directory: Path, tls: BrokerTls | None = None, users: dict[str, str] | None = None
) -> PrivateBroker:
    """``private_broker`` for a fixture of its own; skips where no broker is installed."""
    if BROKER is None:
        pytest.skip("no MQTT broker (mosquitto or amqtt) is installed")
    return private_broker(directory, tls, users)


async def publisher_on(broker: PrivateBroker) -> AsyncMqttClient:
    """A test publisher speaking the newest MQTT version ``broker`` does."""
    return await connect_publisher(broker.url, mqtt_version=broker.mqtt_version())


async def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``condition`` until true; fail the test after ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {seconds} s")
        await asyncio.sleep(0.05)


def source_up(agent: Agent, source: str) -> bool:
    return agent.metrics.registry.get_sample_value("edge_agent_source_up", {"source": source}) == 1


class Collector:
    """A DriverContext sink for running the driver alone."""

    def __init__(self, config: MqttSourceConfig) -> None:
        self.frames: list[Frame] = []
        self.ctx = DriverContext(config, self.emit)
        self.connected = False
        original = self.ctx.set_connected

        def set_connected(connected: bool) -> None:
            self.connected = connected
            original(connected)

        self.ctx.set_connected = set_connected  # type: ignore[method-assign]

    async def emit(self, frame: Frame) -> None:
        self.frames.append(frame)

    @property
    def frame(self) -> Frame:
        return concat(self.frames)

    def errors(self) -> dict[str, float]:
        counts: dict[str, float] = {}
        for metric in self.ctx.metrics.registry.collect():
            if metric.name == "edge_agent_payload_errors":
                for sample in metric.samples:
                    if sample.name.endswith("_total"):
                        counts[sample.labels["reason"]] = sample.value
        return counts


@asynccontextmanager
async def running_driver(source: dict[str, Any]) -> AsyncIterator[tuple[MqttDriver, Collector]]:
    config = MqttSourceConfig.model_validate({"name": "scada", **source})
    driver = MqttDriver(config)
    collector = Collector(config)
    task = asyncio.create_task(driver.run(collector.ctx))
    try:
        await wait_for(lambda: collector.connected or task.done())
        yield driver, collector
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
