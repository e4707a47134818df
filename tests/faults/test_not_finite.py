"""Non-finite values (NaN, +inf, -inf) from any payload are stored bad (``not_finite``)
and counted: float32 registers of the Modbus simulator holding them, plain-text MQTT
payloads spelling them, and the check itself on a frame."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.acquisition.supervisor import mark_not_finite
from agent.runtime import Agent
from simulators.modbus_plc import POINTS_BY_NAME, ModbusPLCSimulator
from simulators.mqtt_broker import PrivateBroker
from tests.conftest import agent_toml, read_store, run_agent
from tests.faults.outages import mqtt_level_source, running_agent, wait_for
from tests.protocols.mqtt.helpers import publisher_on

NOT_FINITE = q.make(q.BAD, q.Reason.NOT_FINITE)


def _by_tag(table: pa.Table, name: str) -> pa.Table:
    return table.filter(pc.equal(table["tag"].cast(pa.string()), name))


def _bad_not_finite(agent: Agent, source: str) -> float:
    value = agent.metrics.registry.get_sample_value(
        "edge_agent_points_bad_total", {"source": source, "reason": "not_finite"}
    )
    return float(value or 0.0)


def test_only_good_and_uncertain_numeric_samples_are_marked() -> None:
    late = int(q.Flag.LATE)
    values = [1.0, math.nan, math.inf, -math.inf, math.nan, math.nan, math.nan, 2.0]
    quality = [
        q.GOOD,
        q.GOOD,
        q.GOOD,
        q.UNCERTAIN | late,  # the flag stays, the severity and reason change
        q.make(q.BAD, q.Reason.TIMEOUT),  # already bad: keeps its own reason
        q.GOOD,  # a text sample: NaN in the value column by design
        q.GOOD,
        q.GOOD,
    ]
    n = len(values)
    text = np.full(n, None, dtype=object)
    text[5] = "OPEN"
    frame = Frame(
        np.arange(n, dtype=np.int32),
        np.full(n, 1, np.int64),
        np.array(values),
        np.array(quality, np.uint16),
        1,
        text,
    )
    driver_quality = frame.quality
    assert mark_not_finite(frame) == 4
    assert frame.quality.tolist() == [
        q.GOOD,
        NOT_FINITE,
        NOT_FINITE,
        NOT_FINITE | late,
        q.make(q.BAD, q.Reason.TIMEOUT),
        q.GOOD,
        NOT_FINITE,
        q.GOOD,
    ]
    assert frame.quality.dtype == np.uint16
    assert np.isnan(frame.value[1:7]).all(), "bad samples carry NaN, never an infinity"
    assert frame.value[[0, 7]].tolist() == [1.0, 2.0]
    assert driver_quality[1] == q.GOOD, "the driver's own array is not written into"
    assert mark_not_finite(Frame.empty()) == 0


async def test_modbus_float32_registers_holding_nan_and_inf_are_stored_bad(
    tmp_path: Path,
) -> None:
    plc = ModbusPLCSimulator(seed=31)
    plc.hold("spindle_speed", math.nan)
    plc.hold("torque", math.inf)
    plc.hold("vibration_rms", -math.inf)
    await plc.start("127.0.0.1", 0)
    points = tuple(
        POINTS_BY_NAME[name]
        for name in ("spindle_speed", "torque", "vibration_rms", "coolant_temp", "program")
    )
    try:
        agent = await run_agent(
            agent_toml(tmp_path / "store", plc.agent_config("100ms", points=points)), 2.5
        )
    finally:
        await plc.stop()
    table = read_store(tmp_path / "store")
    marked = 0
    for name in ("spindle_speed", "torque", "vibration_rms"):
        rows = _by_tag(table, name)
        assert rows.num_rows >= 10
        assert (rows["quality"].to_numpy() == NOT_FINITE).all(), name
        assert np.isnan(rows["value"].to_numpy()).all(), name
        marked += rows.num_rows
    for name in ("coolant_temp", "program"):  # a number and a text tag, untouched
        rows = _by_tag(table, name)
        assert rows.num_rows >= 10
        assert (rows["quality"].to_numpy() == q.GOOD).all(), name
    runner = agent.runners[0]
    assert runner.not_finite == marked
    assert _bad_not_finite(agent, "plc1") == marked
    assert runner.problem() is None, "bad values are not a failing session"


async def test_mqtt_plain_text_nan_and_infinities_are_stored_bad(
    tmp_path: Path, mqtt_broker: PrivateBroker
) -> None:
    spellings = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]  # numbers to JSON
    source = mqtt_level_source(mqtt_broker)
    async with running_agent(agent_toml(tmp_path / "store", source)) as agent:
        runner = agent.runners[0]
        await wait_for(lambda: _up(agent), 10.0, "subscribed")
        publisher = await publisher_on(mqtt_broker)
        for payload in ["inf", *spellings, "42.5"]:  # "inf" is no JSON: a payload error
            publisher.client.publish("plant/level", payload, qos=1)
        await wait_for(lambda: runner.points >= len(spellings) + 1, 10.0, "all received")
        await wait_for(lambda: _payload_errors(agent) == 1, 5.0, "the payload error counted")
        await publisher.close()
        await asyncio.sleep(0.1)
    rows = _by_tag(read_store(tmp_path / "store"), "level")
    quality = rows["quality"].to_numpy()
    values = rows["value"].to_numpy()
    assert (quality == q.GOOD).sum() == 1
    assert values[quality == q.GOOD].tolist() == [42.5]
    assert (quality == NOT_FINITE).sum() == len(spellings), quality.tolist()
    assert np.isnan(values[quality == NOT_FINITE]).all()
    assert _bad_not_finite(agent, "scada") == len(spellings)


def _payload_errors(agent: Agent) -> float:
    value = agent.metrics.registry.get_sample_value(
        "edge_agent_payload_errors_total", {"source": "scada", "reason": "malformed_json"}
    )
    return float(value or 0.0)


def _up(agent: Agent) -> bool:
    return agent.metrics.registry.get_sample_value("edge_agent_source_up", {"source": "scada"}) == 1
