"""QoS 1/2 messages acknowledged only once stored, and no redelivery stored twice.

The driver runs against a private broker with a persistent session, under a small
supervisor loop like the agent's, emitting into a sink the test holds back or fails;
the table of stored messages lives in a real ``data_dir``. The agent process killed
for real is in ``tests/faults/test_mqtt_ack.py``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.acquisition.frame import Frame, concat
from protocols.mqtt.config import MqttSourceConfig
from protocols.mqtt.driver import DUPLICATE, MqttDriver
from protocols.sdk import DriverContext
from simulators.mqtt_broker import Feature, PrivateBroker
from tests.protocols.mqtt.helpers import needs_broker, needs_redelivery, publisher_on, wait_for

MESSAGES = 50


class Sink:
    """What the agent does with a frame: held back while ``gate`` is clear (a slow or
    paused spool), raising while ``failing`` (a storage fault), else stored."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing = False
        self.refused = 0

    async def emit(self, frame: Frame) -> None:
        await self.gate.wait()
        if self.failing:
            self.refused += 1
            raise OSError(28, "No space left on device")
        self.frames.append(frame)

    def values(self) -> list[float]:
        return sorted(concat(self.frames).value.tolist()) if self.frames else []


class Source:
    """A driver run again and again like the agent's supervisor does, ``failures`` counted."""

    def __init__(self, config: MqttSourceConfig, sink: Sink, data_dir: Path) -> None:
        self.driver = MqttDriver(config)
        self.ctx = DriverContext(config, sink.emit, data_dir=data_dir)
        self.failures = 0

    async def supervise(self) -> None:
        while True:
            try:
                await self.driver.run(self.ctx)
            except Exception:
                self.failures += 1
            await asyncio.sleep(0.1)

    def metric(self, name: str, **labels: str) -> float:
        value = self.ctx.metrics.registry.get_sample_value(name, {"source": "s", **labels})
        return value or 0.0

    @property
    def up(self) -> bool:
        return self.metric("edge_agent_source_up") == 1

    @property
    def duplicates(self) -> float:
        return self.metric("edge_agent_payload_errors_total", reason=DUPLICATE)


def source_config(broker: PrivateBroker, qos: int) -> MqttSourceConfig:
    return MqttSourceConfig.model_validate(
        {
            "name": "s",
            "url": broker.url,
            "mqtt_version": broker.mqtt_version(),
            "client_id": "gw-durable",
            "clean_session": False,
            "qos": qos,
            "topic": "plant/seq",
            "value": "$.n",
            "tags": [{"name": "seq"}],
        }
    )


@contextlib.asynccontextmanager
async def supervised(
    broker: PrivateBroker, qos: int, sink: Sink, data_dir: Path
) -> AsyncIterator[Source]:
    source = Source(source_config(broker, qos), sink, data_dir)
    task = asyncio.create_task(source.supervise())
    try:
        await wait_for(lambda: source.up)
        yield source
    finally:
        task.cancel()  # the agent stopping: nothing held back is emitted or acknowledged
        await asyncio.gather(task, return_exceptions=True)


async def publish(broker: PrivateBroker, qos: int, count: int = MESSAGES) -> None:
    """``count`` numbered messages, returning once the broker has them all."""
    publisher = await publisher_on(broker)
    try:
        infos = [
            publisher.client.publish("plant/seq", json.dumps({"n": n}), qos=qos)
            for n in range(count)
        ]
        await wait_for(lambda: all(info.is_published() for info in infos))
    finally:
        await publisher.close()


@needs_redelivery
@pytest.mark.parametrize("qos", [1, 2])
async def test_messages_held_back_at_a_stop_are_delivered_again_to_the_next_start(
    tmp_path: Path, mqtt_broker: PrivateBroker, qos: int
) -> None:
    """Acknowledged on receipt (paho's default; for QoS 2 the PUBREC paho sends at once),
    the burst the agent had not stored when it stopped would be gone."""
    held = Sink()
    async with supervised(mqtt_broker, qos, held, tmp_path) as source:
        held.gate.clear()
        await publish(mqtt_broker, qos)
        await wait_for(lambda: source.driver.decoder.messages >= MESSAGES)
    assert held.frames == []
    sink = Sink()
    async with supervised(mqtt_broker, qos, sink, tmp_path) as source:
        await wait_for(lambda: len(sink.values()) >= MESSAGES)
        await asyncio.sleep(0.3)  # nothing more comes
        assert sink.values() == [float(n) for n in range(MESSAGES)]
        assert source.duplicates == 0


@needs_broker(Feature.PERSISTENT_SESSIONS)
@pytest.mark.parametrize("qos", [1, 2])
async def test_a_burst_stored_after_its_session_was_lost_is_not_stored_again(
    tmp_path: Path, mqtt_broker: PrivateBroker, qos: int
) -> None:
    """The sink is slow while the broker restarts: the frames are stored once the session
    is gone, their acknowledgements never reach the broker, and it redelivers them all."""
    sink = Sink()
    async with supervised(mqtt_broker, qos, sink, tmp_path) as source:
        sink.gate.clear()
        await publish(mqtt_broker, qos)
        await wait_for(lambda: source.driver.decoder.messages >= MESSAGES)
        await mqtt_broker.restart()
        await wait_for(lambda: not source.up)
        sink.gate.set()
        await wait_for(lambda: source.duplicates >= MESSAGES, 20.0)
        await asyncio.sleep(0.3)
        assert source.failures == 1
        assert source.duplicates == MESSAGES
        assert source.driver.decoder.messages == MESSAGES, "redeliveries are not decoded"
    assert sink.values() == [float(n) for n in range(MESSAGES)]


@needs_redelivery
async def test_a_storage_fault_acknowledges_nothing_and_the_redelivery_is_stored_once(
    tmp_path: Path, mqtt_broker: PrivateBroker
) -> None:
    sink = Sink()
    async with supervised(mqtt_broker, 1, sink, tmp_path) as source:
        sink.failing = True
        await publish(mqtt_broker, 1)
        await wait_for(lambda: source.failures >= 2)  # the fault ends sessions
        sink.failing = False
        await wait_for(lambda: len(sink.values()) >= MESSAGES, 20.0)
        await asyncio.sleep(0.3)
        assert sink.refused >= 2
        assert source.duplicates == 0
    assert sink.values() == [float(n) for n in range(MESSAGES)]
