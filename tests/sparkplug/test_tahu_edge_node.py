"""The sparkplug source against an independent edge node: Eclipse Tahu's JavaScript
``sparkplug-client``, through a real broker (acceptance 1 of issue 18)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from agent.acquisition import quality as q
from agent.runtime import Agent
from agent.store.lineage import file_lineage
from simulators.mqtt_broker import PrivateBroker
from tests.conftest import agent_toml, read_store, running_agent
from tests.protocols.mqtt.helpers import source_up, wait_for
from tests.sparkplug.peers import NodeProcess, node_script

SOURCE = """
[[sources]]
name = "plant"
protocol = "sparkplug"
url = "{url}"
group = "Plant1"
edge_node = "Tahu1"
auto_tags = true
clean_session = false
client_id = "edge-agent-test-plant"

  [[sources.tags]]
  name = "press_pressure"
  metric = "Pressure"
  device = "Press"
"""
_DEAD = q.make(q.BAD, q.Reason.COMM_ERROR)


def unflagged(word: Any) -> int:
    """Severity and reason of a quality word, without the flags (clock-uncertain...)."""
    return int(word) & ~q.FLAG_MASK


def unit(name: str, value: str) -> dict[str, Any]:
    return {"engUnit": {"type": "String", "value": value}}


def press_birth(t: int, base: int) -> list[dict[str, Any]]:
    """The Press device's birth; ``base`` moves every alias (a rebirth that changes them)."""
    return [
        {"name": "Pressure", "alias": base, "type": "Double", "value": 1.5, "timestamp": t,
         "properties": unit("Pressure", "bar")},
        {"name": "Temp", "alias": base + 1, "type": "Int16", "value": -7, "timestamp": t,
         "properties": unit("Temp", "degC")},
        {"name": "Mode", "alias": base + 2, "type": "String", "value": "AUTO", "timestamp": t},
        {"name": "Count", "alias": base + 3, "type": "UInt32", "value": 42, "timestamp": t},
        {"name": "Ok", "alias": base + 4, "type": "Boolean", "value": True, "timestamp": t},
        {"name": "Recipe", "alias": base + 5, "type": "DataSet", "value": {
            "numOfColumns": 1, "columns": ["step"], "types": ["Int32"], "rows": [[1]]}},
    ]  # fmt: skip


def data(alias: int, kind: str, value: Any, t: int) -> dict[str, Any]:
    return {"alias": alias, "type": kind, "value": value, "timestamp": t}


def uptime(alias: int, value: int, t: int) -> dict[str, Any]:
    return data(alias, "UInt64", value, t) | {"name": "Uptime"}


def payload_errors(agent: Agent, reason: str) -> float:
    value = agent.metrics.registry.get_sample_value(
        "edge_agent_payload_errors_total", {"source": "plant", "reason": reason}
    )
    return value or 0.0


def series(table: pa.Table, tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any]]:
    rows = table.filter(pa.compute.equal(table["tag"].cast(pa.string()), tag))
    rows = rows.sort_by("time")
    return (
        rows["time"].cast(pa.int64()).to_numpy(),
        rows["value"].to_numpy(zero_copy_only=False),
        rows["quality"].to_numpy(),
        rows["text"].to_pylist(),
    )


def lineage(store: Path) -> dict[str, Any]:
    """The per-tag lineage of the newest batch file."""
    newest = max(store.rglob("*.parquet"), key=lambda p: p.name)
    return dict(json.loads(file_lineage(newest) or "{}"))


async def born_node(modules: Path, broker: PrivateBroker, t: int) -> Any:
    return node_script(modules, "edge_node.js", broker.url, "Plant1", "Tahu1", "tahu-test-node")


async def connected(node: NodeProcess) -> None:
    await node.wait_for(lambda line: line.get("event") == "connected")


async def test_values_names_units_times_deaths_gaps_and_rebirth(
    tmp_path: Path, sparkplug_broker: PrivateBroker, tahu_modules: Path
) -> None:
    import pyarrow.parquet  # noqa: F401  (pa.parquet in lineage())

    store = tmp_path / "store"
    config = agent_toml(store, SOURCE.format(url=sparkplug_broker.url))
    t = time.time_ns() // 1_000_000
    async with running_agent(config) as agent:
        await wait_for(lambda: source_up(agent, "plant"))
        runner = agent.runners[0]
        async with await born_node(tahu_modules, sparkplug_broker, t) as node:
            await connected(node)
            await node.command(cmd="nbirth", metrics=[uptime(1, 7, t)])
            await node.command(cmd="dbirth", device="Press", metrics=press_birth(t, 10))
            for i in range(1, 4):
                await node.command(
                    cmd="ddata",
                    device="Press",
                    metrics=[
                        data(10, "Double", 1.5 + i, t + 10 * i),
                        data(11, "Int16", -7 - i, t + 10 * i),
                        data(12, "String", f"STEP{i}", t + 10 * i),
                        data(13, "UInt32", 42 + i, t + 10 * i),
                    ],
                )
            await node.command(cmd="skip_seq")  # a message lost on the way: a gap
            await node.command(
                cmd="ddata", device="Press", metrics=[data(10, "Double", 9.0, t + 50)]
            )
            # a rebirth that moves every alias: the new table replaces the old one
            await node.command(cmd="nbirth", metrics=[uptime(101, 8, t + 60)])
            await node.command(cmd="dbirth", device="Press", metrics=press_birth(t + 60, 110))
            await node.command(
                cmd="ddata", device="Press", metrics=[data(110, "Double", 20.0, t + 70)]
            )
            await node.command(  # alias 10 is gone with the old birth: counted, not guessed
                cmd="ddata", device="Press", metrics=[data(10, "Double", 666.0, t + 80)]
            )
            # a store-and-forward flush: a minute old, into windows closed long ago
            await node.command(
                cmd="ddata",
                device="Press",
                metrics=[data(111, "Int16", -1, t - 60_000) | {"isHistorical": True}],
            )
            await wait_for(lambda: runner.points >= 27)
            await node.command(cmd="ddeath", device="Press")
            await wait_for(lambda: runner.points >= 32)
            await node.command(cmd="stop")  # NDEATH
            await wait_for(lambda: runner.points >= 33)
    table = read_store(store)
    assert payload_errors(agent, "sequence_gap") == 1
    assert payload_errors(agent, "no_birth") == 1
    assert payload_errors(agent, "unsupported") == 2, "Recipe (a DataSet) in both births"
    assert payload_errors(agent, "malformed") == 0

    times, values, qualities, _ = series(table, "press_pressure")
    assert values[:-1].tolist() == [1.5, 2.5, 3.5, 4.5, 9.0, 1.5, 20.0]
    assert (times[:-1] // 1_000_000).tolist() == [t, t + 10, t + 20, t + 30, t + 50, t + 60, t + 70]
    assert math.isnan(values[-1])
    assert unflagged(qualities[-1]) == _DEAD, "DDEATH: the device's tags bad"
    assert (qualities[:-1] & q.SEVERITY_MASK == q.GOOD).all()

    temp_times, temps, temp_quality, _ = series(table, "Tahu1.Press.Temp")  # automatic
    assert temps[0] == -1.0, "the historical value, at its own time"
    assert temp_times[0] // 1_000_000 == t - 60_000
    assert temp_quality[0] & q.Flag.LATE, "its window was closed: flagged late"
    assert temps[1:-1].tolist() == [-7.0, -8.0, -9.0, -10.0, -7.0]
    assert not (temp_quality[1:] & q.Flag.LATE).any()
    assert unflagged(temp_quality[-1]) == _DEAD
    _, _, _, modes = series(table, "Tahu1.Press.Mode")
    assert modes[:-1] == ["AUTO", "STEP1", "STEP2", "STEP3", "AUTO"]
    assert series(table, "Tahu1.Press.Count")[1][:-1].tolist() == [42, 43, 44, 45, 42]
    assert series(table, "Tahu1.Press.Ok")[1][:-1].tolist() == [1.0, 1.0]
    assert not len(series(table, "Tahu1.Press.Recipe")[0])

    _, uptimes, uptime_quality, _ = series(table, "Tahu1.Uptime")
    assert uptimes[:2].tolist() == [7.0, 8.0]
    assert unflagged(uptime_quality[-1]) == _DEAD, "NDEATH: the node's tags bad"

    tags = lineage(store)
    assert tags["plant/press_pressure"]["unit"] == "bar"
    assert tags["plant/press_pressure"]["sparkplug"]["metric"] == "Tahu1/Press/Pressure"
    assert tags["plant/Tahu1.Press.Temp"]["unit"] == "degC"
    assert tags["plant/Tahu1.Press.Temp"]["sparkplug"]["datatype"] == "Int16"


@pytest.mark.slow
async def test_nothing_lost_across_a_restart_with_a_persistent_session(
    tmp_path: Path, sparkplug_broker: PrivateBroker, tahu_modules: Path
) -> None:
    """Data published while the agent is down arrives after its restart, and is decoded
    by the aliases of a birth the agent saw before it stopped (kept on disk)."""
    store = tmp_path / "store"
    config = agent_toml(store, SOURCE.format(url=sparkplug_broker.url))
    t = time.time_ns() // 1_000_000
    sent: list[float] = []

    async def publish(node: NodeProcess, count: int) -> None:
        for _ in range(count):
            value = float(len(sent))
            sent.append(value)
            await node.command(
                cmd="ddata", device="Press", metrics=[data(10, "Double", value, t + len(sent))]
            )

    async with await born_node(tahu_modules, sparkplug_broker, t) as node:
        await connected(node)
        async with running_agent(config) as agent:
            await wait_for(lambda: source_up(agent, "plant"))
            await node.command(cmd="nbirth", metrics=[uptime(1, 7, t)])
            await node.command(cmd="dbirth", device="Press", metrics=press_birth(t, 10))
            await publish(node, 5)
            await wait_for(lambda: agent.runners[0].points >= 11)
        await publish(node, 10)  # the agent is away: the broker queues them for its session
        async with running_agent(config) as agent:
            await wait_for(lambda: agent.runners[0].points >= 10)
            await publish(node, 5)
            await wait_for(lambda: agent.runners[0].points >= 15)
        assert payload_errors(agent, "no_birth") == 0
    _, values, qualities, _ = series(read_store(store), "press_pressure")
    assert values.tolist() == [1.5, *sent], "the birth value, then every value once, in order"
    assert (qualities & q.SEVERITY_MASK == q.GOOD).all()
