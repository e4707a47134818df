"""MQTT simulator + private broker + agent over real sockets: shapes, mapping, sessions, fuzz.

On amqtt (MQTT 3.1.1 only) the tests speak 3.1.1; those needing more skip, naming it."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame, concat
from agent.runtime import Agent
from protocols.mqtt import session as mqtt_session
from protocols.mqtt.config import MqttSourceConfig
from protocols.mqtt.driver import MqttDriver
from protocols.sdk import DriverContext
from simulators.mqtt_broker import Feature, PrivateBroker
from simulators.mqtt_scada import PLANT, MqttScadaSimulator, PlantSignals
from tests.conftest import agent_toml, read_store
from tests.protocols.mqtt.helpers import (
    needs_broker,
    publisher_on,
    running_agent,
    running_driver,
    source_up,
    wait_for,
)

NS = 1_000_000_000
SKEW_NS = 3 * NS  # the publisher's clock runs 3 s ahead


async def publish_through_agent(
    simulator: MqttScadaSimulator,
    broker: PrivateBroker,
    tmp_path: Path,
    extra: str,
    ticks: int,
) -> Agent:
    """An agent subscribed to every shape of the simulator, which publishes ``ticks``
    ticks once the agent is up; the store is ``tmp_path / "store"``."""
    config = agent_toml(tmp_path / "store", simulator.agent_config(url=broker.url, extra=extra))
    async with running_agent(config) as agent:
        await wait_for(lambda: all(source_up(agent, r.config.name) for r in agent.runners))
        await simulator.start(broker.url)
        await wait_for(lambda: len(simulator.ticks) >= ticks)
        await simulator.stop()
        published = len(simulator.ticks) * len(PLANT) * len(simulator.shapes)
        await wait_for(lambda: sum(runner.points for runner in agent.runners) >= published)
    return agent


def _rows(table: pa.Table, source: str, tag: str) -> pa.Table:
    rows = table.filter(pc.equal(table["source"].cast(pa.string()), source))
    return rows.filter(pc.equal(rows["tag"].cast(pa.string()), tag))


async def test_each_payload_shape_arrives_with_seeded_values_and_payload_times(
    tmp_path: Path, mqtt_broker: PrivateBroker
) -> None:
    simulator = MqttScadaSimulator(
        seed=11, clock_offset_ns=SKEW_NS, mqtt_version=mqtt_broker.mqtt_version()
    )
    # the skewed payload times are what this test checks: not flagged clock-uncertain here
    agent = await publish_through_agent(
        simulator, mqtt_broker, tmp_path, 'clock_threshold = "10s"\n', ticks=15
    )
    table = read_store(tmp_path / "store")
    assert [runner.failures for runner in agent.runners] == [0, 0, 0]
    published = np.array(simulator.ticks)
    for tag in PLANT:
        for shape in ("json", "pattern"):
            rows = _rows(table, f"scada_{shape}", tag.name)
            assert (rows["quality"].to_numpy() == q.GOOD).all()
            times = rows["time"].cast(pa.int64()).to_numpy()
            # payload times (publisher clock, 3 s ahead), not receive times
            np.testing.assert_array_equal(np.sort(times - SKEW_NS), published)
            np.testing.assert_array_equal(
                rows["value"].to_numpy(), simulator.truth(tag.name, times - SKEW_NS)
            )
        plain = _rows(table, "scada_plain", tag.name)
        assert plain.num_rows == len(published)
        received = plain["time"].cast(pa.int64()).to_numpy()
        # no timestamp in the payload: receive time, after the tick and well before the skew
        assert (received >= published).all()
        assert (received < published + SKEW_NS).all()
        np.testing.assert_array_equal(
            plain["value"].to_numpy(), simulator.truth(tag.name, published)
        )


async def test_a_skewed_publisher_clock_is_corrected_onto_the_gateway_clock(
    tmp_path: Path, mqtt_broker: PrivateBroker
) -> None:
    simulator = MqttScadaSimulator(
        seed=12,
        clock_offset_ns=SKEW_NS,
        clock_drift_ppm=100.0,
        shapes=("json",),
        mqtt_version=mqtt_broker.mqtt_version(),
    )
    agent = await publish_through_agent(
        simulator, mqtt_broker, tmp_path, "correct_clock = true\n", ticks=25
    )
    table = read_store(tmp_path / "store")
    rows = _rows(table, "scada_json", PLANT[0].name)
    settled = rows.filter(pc.equal(rows["quality"], q.GOOD))
    assert settled.num_rows >= 10, "all but the first frames are trusted"
    corrected = settled["time"].cast(pa.int64()).to_numpy()
    published = np.array(simulator.ticks)
    # each corrected time lies within a few ms (the least publish delay seen) of its tick
    nearest = published[np.abs(corrected[:, None] - published[None, :]).argmin(axis=1)]
    assert np.abs(corrected - nearest).max() < 10_000_000
    assert agent.metrics.clock_offset.labels("scada_json")._value.get() > 2.9


@pytest.mark.parametrize(
    "version",
    ["3.1.1", pytest.param("5", marks=needs_broker(Feature.MQTT5, Feature.SHARED_SUBSCRIPTIONS))],
)
async def test_wildcards_topic_patterns_and_shared_subscriptions(
    mqtt_broker: PrivateBroker, version: str
) -> None:
    source = {
        "url": mqtt_broker.url,
        "mqtt_version": version,
        "qos": 2,
        "shared_group": "gateways" if version == "5" else None,
        "tags": [
            {"name": "PT101", "topic": "site/{area}/{tag}", "value": "$.v"},
            {"name": "TT101", "topic": "site/{area}/{tag}", "value": "$.v"},
            {"name": "any_level", "topic": "site/+/LT101", "value": "$.v"},
            {"name": "deep", "topic": "deep/#", "value": "$.a[1].b"},
        ],
    }
    publisher = await publisher_on(mqtt_broker)
    try:
        async with running_driver(source) as (driver, collector):
            for topic, payload in [
                ("site/boiler/PT101", {"v": 1.5}),
                ("site/turbine/TT101", {"v": 2}),
                ("site/boiler/LT101", {"v": 3}),
                ("site/boiler/XX999", {"v": 4}),  # {tag} names no configured tag
                ("deep/x/y/z", {"a": [0, {"b": 5}]}),
                ("elsewhere/PT101", {"v": 6}),  # not subscribed at all
            ]:
                publisher.client.publish(topic, json.dumps(payload), qos=2)
            await wait_for(lambda: driver.decoder.messages >= 5)
            await wait_for(lambda: len(collector.frame) >= 4)
    finally:
        await publisher.close()
    frame = collector.frame
    assert sorted(zip(frame.tag.tolist(), frame.value.tolist(), strict=True)) == [
        (0, 1.5),
        (1, 2.0),
        (2, 3.0),
        (3, 5.0),
    ]
    assert collector.errors() == {"unmapped_topic": 1.0}


@needs_broker(Feature.PERSISTENT_SESSIONS)
@pytest.mark.parametrize("version", ["3.1.1", pytest.param("5", marks=needs_broker(Feature.MQTT5))])
async def test_qos1_persistent_session_gets_what_was_published_during_a_broker_restart(
    tmp_path: Path, mqtt_broker: PrivateBroker, version: str
) -> None:
    source = (
        f'[[sources]]\nname = "scada"\nprotocol = "mqtt"\nurl = "{mqtt_broker.url}"\n'
        f'mqtt_version = "{version}"\nclean_session = false\nqos = 1\n'
        'client_id = "gw-persistent"\nbackoff_initial = "5s"\nbackoff_max = "5s"\n'
        'probe_interval = "0s"\n'  # the test needs the agent away while it publishes
        'topic = "plant/seq"\nvalue = "$.n"\n[[sources.tags]]\nname = "seq"\n'
    )
    config = agent_toml(tmp_path / "store", source, lateness="100ms")
    async with running_agent(config) as agent:
        await wait_for(lambda: source_up(agent, "scada"))
        publisher = await publisher_on(mqtt_broker)
        publisher.client.publish("plant/seq", json.dumps({"n": 0}), qos=1)
        await wait_for(lambda: agent.runners[0].points >= 1)
        await publisher.close()
        await mqtt_broker.restart()
        assert not source_up(agent, "scada")  # the agent is waiting out its backoff
        publisher = await publisher_on(mqtt_broker)
        for n in range(1, 21):
            publisher.client.publish("plant/seq", json.dumps({"n": n}), qos=1)
        await asyncio.sleep(0.3)
        await publisher.close()
        assert not source_up(agent, "scada"), "published while the agent was away"
        await wait_for(lambda: agent.runners[0].points >= 22)  # + the comm-error marker
    table = read_store(tmp_path / "store")
    good = table.filter(pc.equal(table["quality"], q.GOOD))
    assert sorted(good["value"].to_pylist()) == [float(n) for n in range(21)]
    assert agent.runners[0].failures == 1


async def test_fuzzed_stream_through_the_broker_counts_every_fault_and_keeps_good_data(
    mqtt_broker: PrivateBroker,
) -> None:
    simulator = MqttScadaSimulator(
        seed=5,
        fault_rate=0.35,
        shapes=("json", "pattern"),
        mqtt_version=mqtt_broker.mqtt_version(),
    )
    start = (time.time_ns() // NS - 60) * NS  # the last minute, as a replayed buffer would be
    messages = [m for k in range(60) for m in simulator.messages(start + k * NS)]
    assert sum(simulator.faults.values()) > 100  # a dense mix of every kind of fault
    assert set(simulator.faults) == {
        "malformed_json",
        "not_numeric",
        "missing_field",
        "bad_timestamp",
        "absurd_timestamp",
        "oversized",
    }
    json_source, pattern_source = (
        {key: value for key, value in source.items() if key != "name"}
        for source in tomllib.loads(simulator.agent_config(url=mqtt_broker.url))["sources"]
    )
    publisher = await publisher_on(mqtt_broker)
    try:
        async with (
            running_driver(json_source) as (json_d, json_c),
            running_driver(pattern_source) as (pat_d, pat_c),
        ):
            for topic, payload in messages:
                publisher.client.publish(topic, payload, qos=1)
            await wait_for(
                lambda: json_d.decoder.messages + pat_d.decoder.messages >= len(messages)
            )
            await asyncio.sleep(1.5)  # one housekeeping round moves counts to the metric
    finally:
        await publisher.close()
    counted: dict[str, float] = {}
    for collector in (json_c, pat_c):
        for reason, count in collector.errors().items():
            counted[reason] = counted.get(reason, 0) + count
    assert counted == {reason: float(n) for reason, n in simulator.faults.items()}
    good = sum(int((c.frame.quality == q.GOOD).sum()) for c in (json_c, pat_c))
    faulty_samples = sum(int((c.frame.quality != q.GOOD).sum()) for c in (json_c, pat_c))
    assert good + faulty_samples > 0.5 * 60 * 2 * len(PLANT)
    assert good > 0.5 * 60 * 2 * len(PLANT)  # the good majority kept flowing


async def test_simulate_mqtt_command_publishes_the_seeded_plant(
    mqtt_broker: PrivateBroker,
) -> None:
    names = [tag.name for tag in PLANT if tag.area == "boiler"]
    source = {
        "url": mqtt_broker.url,
        "mqtt_version": mqtt_broker.mqtt_version(),
        "topic": "cli/json/boiler",
        "value": "$.values.{tag}",
        "timestamp": "$.ts",
        "tags": [{"name": name} for name in names],
    }
    async with running_driver(source) as (_, collector):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.commands.cli",
            "simulate",
            "mqtt",
            "--broker",
            mqtt_broker.url,
            "--seed",
            "3",
            "--prefix",
            "cli",
            "--shapes",
            "json",
            "--period",
            "100ms",
            "--mqtt-version",
            mqtt_broker.mqtt_version(),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            banner = await process.stdout.readline()
            assert b"publishing to mqtt://127.0.0.1" in banner
            await wait_for(lambda: len(collector.frame) >= 3 * len(names))
        finally:
            process.terminate()
            assert await process.wait() == 0
    frame = collector.frame
    truth = PlantSignals(3)
    for index, name in enumerate(names):
        mine = frame.tag == index
        np.testing.assert_array_equal(
            frame.value[mine], truth.value(name, frame.time[mine]), err_msg=name
        )


async def test_clean_session_resubscribes_after_a_broker_restart(
    tmp_path: Path, mqtt_broker: PrivateBroker
) -> None:
    source = (
        f'[[sources]]\nname = "scada"\nprotocol = "mqtt"\nurl = "{mqtt_broker.url}"\n'
        f'mqtt_version = "{mqtt_broker.mqtt_version()}"\n'
        # the first retry comes after the broker is back (amqtt takes ~0.2 s to start):
        # one failure per restart
        'backoff_initial = "1s"\nbackoff_max = "1s"\n'
        'topic = "plant/seq"\nvalue = "$.n"\n[[sources.tags]]\nname = "seq"\n'
    )
    config = agent_toml(tmp_path / "store", source, lateness="100ms")
    async with running_agent(config) as agent:
        for n in range(3):  # before, after one restart, after a second
            await wait_for(lambda: source_up(agent, "scada"))
            publisher = await publisher_on(mqtt_broker)
            points = agent.runners[0].points
            publisher.client.publish("plant/seq", json.dumps({"n": n}), qos=1)
            await wait_for(lambda: agent.runners[0].points > points)  # noqa: B023
            await publisher.close()
            await mqtt_broker.restart()
    table = read_store(tmp_path / "store")
    good = table.filter(pc.equal(table["quality"], q.GOOD))
    assert good["value"].to_pylist() == [0.0, 1.0, 2.0]
    assert agent.runners[0].failures == 3


async def test_cancel_ends_run_promptly_while_a_tls_handshake_hangs() -> None:
    """The handshake runs in a thread that cannot be interrupted; run() must not wait."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, then never answer the TLS ClientHello

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = MqttSourceConfig.model_validate(
        {"name": "s", "url": f"mqtts://127.0.0.1:{port}", "topic": "t", "tags": [{"name": "x"}]}
    )
    try:
        task = asyncio.create_task(MqttDriver(config).run(DriverContext(config, _ignore)))
        await asyncio.sleep(0.5)
        assert not task.done(), "still in the handshake"
        assert held, "the driver did connect"
        started = time.monotonic()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert time.monotonic() - started < 1.0
        assert task.cancelled()
    finally:
        server.close()
        for writer in held:
            writer.close()


async def _ignore(frame: Frame) -> None:
    """No frame is expected."""


async def test_backpressure_stops_reading_the_socket_and_loses_nothing(
    mqtt_broker: PrivateBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mqtt_session, "_MAX_QUEUED_SAMPLES", 50)
    gate = asyncio.Event()
    taken: list[Frame] = []

    async def slow_agent(frame: Frame) -> None:
        await gate.wait()  # the agent's queue is full until the gate opens
        taken.append(frame)

    config = MqttSourceConfig.model_validate(
        {
            "name": "s",
            "url": mqtt_broker.url,
            "mqtt_version": mqtt_broker.mqtt_version(),
            "topic": "flood",
            "tags": [{"name": "n"}],
        }
    )
    driver = MqttDriver(config)
    ctx = DriverContext(config, slow_agent)
    task = asyncio.create_task(driver.run(ctx))
    publisher = await publisher_on(mqtt_broker)
    try:
        up = {"source": "s"}
        await wait_for(
            lambda: ctx.metrics.registry.get_sample_value("edge_agent_source_up", up) == 1
        )
        count = 5000
        for n in range(count):
            publisher.client.publish("flood", str(n), qos=1)
        await asyncio.sleep(1.0)
        stalled = driver.decoder.messages
        await asyncio.sleep(0.5)
        assert driver.decoder.messages == stalled < count, "reading paused, not buffering"
        gate.set()
        await wait_for(lambda: sum(map(len, taken)) == count)
    finally:
        await publisher.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert concat(taken).value.tolist() == [float(n) for n in range(count)]


@needs_broker(Feature.SHARED_SUBSCRIPTIONS)
async def test_gateways_in_one_share_group_split_the_messages_without_duplicates(
    mqtt_broker: PrivateBroker,
) -> None:
    def source(client_id: str) -> dict[str, object]:
        return {
            "url": mqtt_broker.url,
            "client_id": client_id,
            "shared_group": "collectors",
            "topic": "plant/seq",
            "value": "$.n",
            "tags": [{"name": "seq"}],
        }

    publisher = await publisher_on(mqtt_broker)
    try:
        async with (
            running_driver(source("gw-a")) as (first, a),
            running_driver(source("gw-b")) as (second, b),
        ):
            for n in range(200):
                publisher.client.publish("plant/seq", json.dumps({"n": n}), qos=1)
            await wait_for(lambda: first.decoder.messages + second.decoder.messages >= 200)
            await wait_for(lambda: len(a.frame) + len(b.frame) >= 200)
    finally:
        await publisher.close()
    got = a.frame.value.tolist() + b.frame.value.tolist()
    assert sorted(got) == [float(n) for n in range(200)]
    assert len(a.frame) > 0
    assert len(b.frame) > 0
