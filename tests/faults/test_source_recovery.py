"""Recovery time: a device, a server or the broker away for ``OUTAGE_S`` (10 s here, 60 s
in the bench), then back on the same port; with default settings, data flows again
within 5 s of its return. The probe that ends the backoff early is tested alone, against
plain sockets: end to end, a backoff may also happen to end on its own just after the
peer's return, so there only the time is asserted."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.acquisition.backoff import Backoff, accepts
from agent.acquisition.supervisor import SESSION
from agent.config.model import MqttUplinkConfig
from agent.uplinks.mqtt import MqttUplink
from protocols.modbus.config import ModbusSourceConfig
from protocols.modbus.driver import ModbusDriver
from simulators.modbus_plc import POINTS, ModbusPLCSimulator
from simulators.mqtt_broker import Feature, PrivateBroker, free_port
from simulators.opcua_cnc import NODES, OpcUaCncSimulator
from tests.conftest import agent_toml, read_store
from tests.faults.outages import (
    OUTAGE_S,
    RESUME_WITHIN_S,
    first_good_after,
    mqtt_level_source,
    report,
    running_agent,
    wait_for,
)
from tests.protocols.mqtt.helpers import needs_broker, publisher_on
from tests.uplinks.helpers import collect_config, make_batches, running


async def _listen(port: int) -> asyncio.Server:
    return await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)


# -- the probe alone ----------------------------------------------------------------------


async def test_accepts_tells_a_listening_port_from_a_closed_one() -> None:
    port = free_port()
    assert not await accepts(("127.0.0.1", port), 1.0)
    async with await _listen(port):
        assert await accepts(("127.0.0.1", port), 1.0)


async def test_a_wait_ends_soon_after_a_refusing_peer_starts_listening() -> None:
    port = free_port()
    backoff = Backoff(1.0, 60.0, 0.2, random.Random(1))
    backoff.attempt = 6
    waiting = asyncio.create_task(backoff.wait(30.0, ("127.0.0.1", port)))
    await asyncio.sleep(1.0)  # several refused probes
    assert not waiting.done()
    async with await _listen(port):
        back = time.monotonic()
        assert await asyncio.wait_for(waiting, 5.0), "cut short by the probe"
        assert time.monotonic() - back < 1.0
    assert backoff.attempt == 0, "the backoff starts again from its initial delay"
    assert backoff.cut_short == 1


async def test_a_peer_that_accepts_all_along_gets_the_full_backoff() -> None:
    """It refuses sessions, not connections (a wrong password): probing changes nothing."""
    port = free_port()
    backoff = Backoff(1.0, 60.0, 0.1, random.Random(2))
    async with await _listen(port):
        start = time.monotonic()
        assert not await backoff.wait(1.0, ("127.0.0.1", port))
        assert time.monotonic() - start >= 0.99


async def test_without_an_address_or_with_probing_off_the_delay_runs_in_full() -> None:
    port = free_port()
    for address, interval in ((None, 0.1), (("127.0.0.1", port), 0.0)):
        backoff = Backoff(1.0, 60.0, interval)
        start = time.monotonic()
        assert not await backoff.wait(0.5, address)
        assert time.monotonic() - start >= 0.49


async def test_stop_ends_a_wait_at_once() -> None:
    stop = asyncio.Event()
    backoff = Backoff(1.0, 60.0, 1.0)
    waiting = asyncio.create_task(backoff.wait(30.0, ("127.0.0.1", free_port()), stop))
    await asyncio.sleep(0.2)
    stop.set()
    assert not await asyncio.wait_for(waiting, 1.0)


def test_delays_double_up_to_the_maximum_with_jitter() -> None:
    backoff = Backoff(1.0, 8.0, 1.0, random.Random(3))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_probe_interval_defaults_to_1s_and_0s_turns_probing_off() -> None:
    source = {
        "name": "p",
        "url": "modbus+tcp://127.0.0.1",
        "tags": [{"name": "a", "address": "hr:0"}],
    }
    assert ModbusSourceConfig.model_validate(source).probe_interval == 1_000_000_000
    off = ModbusSourceConfig.model_validate({**source, "probe_interval": "0s"})
    assert off.probe_interval == 0
    assert off.model_dump(mode="json")["probe_interval"] == "0s"
    assert ModbusDriver(off).probe_address() == ("127.0.0.1", 502)
    with pytest.raises(ValidationError, match="duration"):
        ModbusSourceConfig.model_validate({**source, "probe_interval": "-1s"})
    broker = collect_config("mqtt://127.0.0.1", {"type": "parquet"}, "c").broker
    assert (broker.backoff_initial, broker.probe_interval) == (200_000_000, 1_000_000_000)


# -- real peers, default settings -----------------------------------------------------------


async def test_modbus_source_resumes_within_5s_of_the_plc_return(tmp_path: Path) -> None:
    plc = ModbusPLCSimulator(seed=11)
    await plc.start("127.0.0.1", 0)
    sources = plc.agent_config("100ms", points=POINTS[:2])  # no backoff keys: the defaults
    try:
        async with running_agent(agent_toml(tmp_path / "store", sources)) as agent:
            runner = agent.runners[0]
            await wait_for(lambda: runner.points >= 10, 10.0, "first samples")
            await plc.stop()
            await wait_for(lambda: runner.failures >= 2, 10.0, "the outage noticed")
            await asyncio.sleep(OUTAGE_S - 1)
            assert (runner.problem() or "").startswith("session failed: ConnectionError")
            await plc.start(plc.host, plc.port)
            back_ns = time.time_ns()
            await wait_for(
                lambda: not runner.ctx.problems.is_open(SESSION), RESUME_WITHIN_S, "resumed"
            )
            await asyncio.sleep(0.5)
    finally:
        await plc.stop()
    resumed_s = first_good_after(read_store(tmp_path / "store"), POINTS[0].name, back_ns)
    report("modbus device", resumed_s)
    assert resumed_s < RESUME_WITHIN_S


async def test_opcua_subscription_resumes_within_5s_of_the_server_return(tmp_path: Path) -> None:
    server = OpcUaCncSimulator(seed=12, update_ns=100_000_000)
    await server.start("127.0.0.1", 0)
    moving = tuple(node for node in NODES if node.name == "axis_x")  # changes every tick
    sources = server.agent_config("100ms", nodes=moving, extra='mode = "subscribe"\n')
    try:
        async with running_agent(agent_toml(tmp_path / "store", sources)) as agent:
            runner = agent.runners[0]
            await wait_for(lambda: runner.points >= 10, 15.0, "first samples")
            await server.stop()
            await wait_for(lambda: runner.failures >= 1, 10.0, "the outage noticed")
            await asyncio.sleep(OUTAGE_S)
            await server.start(server.host, server.port)
            back_ns = time.time_ns()
            await wait_for(
                lambda: not runner.ctx.problems.is_open(SESSION), RESUME_WITHIN_S, "resumed"
            )
            await asyncio.sleep(0.5)
    finally:
        await server.stop()
    resumed_s = first_good_after(read_store(tmp_path / "store"), "axis_x", back_ns)
    report("opcua server (subscribe mode)", resumed_s)
    assert resumed_s < RESUME_WITHIN_S


@needs_broker(Feature.MQTT5)
async def test_collector_resumes_within_5s_of_the_broker_return(
    mqtt_broker: PrivateBroker, tmp_path: Path
) -> None:
    batches = make_batches(windows=2)
    config = collect_config(
        mqtt_broker.url, {"type": "parquet", "path": str(tmp_path / "central")}, "c1"
    )
    assert config.broker.backoff_max == 30_000_000_000  # the defaults
    async with running(config) as collector:
        sender = MqttUplink(MqttUplinkConfig(url=mqtt_broker.url, publish_timeout="5s"))
        await sender.send(batches[0])
        await wait_for(lambda: collector.batches == 1, 10.0, "first batch")
        await mqtt_broker.stop()
        await wait_for(lambda: not collector.subscribed.is_set(), 10.0, "the outage noticed")
        await asyncio.sleep(OUTAGE_S)
        await mqtt_broker.start()
        resumed_s = await wait_for(lambda: collector.sessions == 2, RESUME_WITHIN_S, "resumed")
        await sender.send(batches[1])  # the uplink reconnects by itself on this send
        await wait_for(lambda: collector.batches == 2, 10.0, "a batch after the return")
        await sender.close()
    report("broker (collector)", resumed_s)


async def test_mqtt_source_resubscribes_within_5s_of_the_broker_return(
    mqtt_broker: PrivateBroker, tmp_path: Path
) -> None:
    source = mqtt_level_source(mqtt_broker)
    async with running_agent(agent_toml(tmp_path / "store", source)) as agent:
        runner = agent.runners[0]
        await wait_for(lambda: runner.ctx.connected, 10.0, "connected")
        await mqtt_broker.stop()
        await wait_for(lambda: runner.failures >= 1, 10.0, "the outage noticed")
        await asyncio.sleep(OUTAGE_S)
        await mqtt_broker.start()
        resumed_s = await wait_for(lambda: runner.ctx.connected, RESUME_WITHIN_S, "resumed")
        publisher = await publisher_on(mqtt_broker)
        publisher.client.publish("plant/level", "42.5", qos=1)
        await wait_for(lambda: runner.points >= 2, 5.0, "a message after the return")
        await publisher.close()
    report("broker (mqtt source)", resumed_s)


async def test_simulators_restart_on_the_same_port_at_once() -> None:
    """SO_REUSEADDR on both listeners: a port with connections in TIME_WAIT binds again."""
    plc = ModbusPLCSimulator(seed=13)
    port = await plc.start("127.0.0.1", 0)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    await plc.restart()
    assert plc.port == port
    assert await accepts(("127.0.0.1", port), 1.0)
    writer.close()
    await plc.stop()

    server = OpcUaCncSimulator(seed=13)
    port = await server.start("127.0.0.1", 0)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    await server.restart()
    assert server.port == port
    assert await accepts(("127.0.0.1", port), 1.0)
    writer.close()
    await server.stop()
