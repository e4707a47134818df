"""The sparkplug source against the bundled edge node: its faults counted as they were
injected, the will of a vanished node, rebirth requests (opt-in), automatic tags kept."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet

from agent.acquisition import quality as q
from agent.runtime import Agent
from agent.store.lineage import file_lineage
from simulators.mqtt_broker import PrivateBroker
from simulators.sparkplug_node import SparkplugNodeSimulator
from tests.conftest import agent_toml, read_store, running_agent
from tests.protocols.mqtt.helpers import source_up, wait_for

_DEAD = q.make(q.BAD, q.Reason.COMM_ERROR)


def errors(agent: Agent, reason: str) -> float:
    value = agent.metrics.registry.get_sample_value(
        "edge_agent_payload_errors_total", {"source": "line1", "reason": reason}
    )
    return value or 0.0


def rows(table: pa.Table, tag: str) -> pa.Table:
    return table.filter(pc.equal(table["tag"].cast(pa.string()), tag)).sort_by("time")


async def test_injected_faults_are_counted_as_injected(
    tmp_path: Path, sparkplug_broker: PrivateBroker
) -> None:
    node = SparkplugNodeSimulator(seed=5, gap_every=7, ghost_device=True, malformed_every=4)
    store = tmp_path / "store"
    config = agent_toml(store, node.agent_config(url=sparkplug_broker.url))
    async with running_agent(config) as agent:
        await wait_for(lambda: source_up(agent, "line1"))
        await node.start(sparkplug_broker.url)
        await wait_for(lambda: len(node.ticks) >= 20)
        await node.stop()
        await asyncio.sleep(0.5)
    assert node.faults["sequence_gap"] > 0
    for reason in ("sequence_gap", "no_birth", "malformed"):
        assert errors(agent, reason) == node.faults[reason], reason
    assert errors(agent, "unsupported") == 1, "the Coolant's DataSet, in its one birth"
    table = read_store(store)
    speeds = rows(table, "spindle_speed")
    times = speeds["time"].cast(pa.int64()).to_numpy()
    published = set(node.ticks)
    assert set(times[:-1].tolist()) <= published | {times[0]}, "the node's own timestamps"
    assert len(times) - 2 >= len(node.ticks) - 1, "every tick's value (birth + NDEATH marker)"
    vibration = set(rows(table, "spindle_vibration")["time"].cast(pa.int64()).to_pylist())
    tick = node.ticks[0]
    assert {tick + 10_000_000 * i for i in range(8)} <= vibration, "a block, 10 ms apart"


async def test_a_vanished_node_is_dead_and_back_with_a_new_bdseq(
    tmp_path: Path, sparkplug_broker: PrivateBroker
) -> None:
    node = SparkplugNodeSimulator(seed=5)
    store = tmp_path / "store"
    config = agent_toml(store, node.agent_config(url=sparkplug_broker.url))
    async with running_agent(config) as agent:
        await wait_for(lambda: source_up(agent, "line1"))
        await node.start(sparkplug_broker.url)
        await wait_for(lambda: len(node.ticks) >= 5)
        await node.kill()  # the broker publishes the NDEATH will (after its keepalive check)
        await wait_for(lambda: errors(agent, "stale_death") > 0 or _dead(agent), 60)
        await node.reconnect()
        await wait_for(lambda: len(node.ticks) >= 10)
        await node.stop()
        await asyncio.sleep(0.5)
    assert errors(agent, "stale_death") == 0
    quality = rows(read_store(store), "coolant_temperature")["quality"].to_numpy() & 0xC0FF
    dead = [i for i, word in enumerate(quality.tolist()) if word == _DEAD]
    assert len(dead) == 2, "the will, and the NDEATH of the clean stop"
    assert dead[0] < len(quality) - 2, "values again after the reconnect's births"


def _dead(agent: Agent) -> bool:
    """A comm_error sample of the source has been counted (the will's marker)."""
    value = agent.metrics.registry.get_sample_value(
        "edge_agent_points_bad_total", {"source": "line1", "reason": "comm_error"}
    )
    return bool(value)


async def test_rebirth_requests_are_opt_in(tmp_path: Path, sparkplug_broker: PrivateBroker) -> None:
    """A gateway started after the node was born gets data it cannot decode: counted and
    waiting, unless it may ask for a rebirth."""
    for asks in (False, True):
        node = SparkplugNodeSimulator(seed=5)
        store = tmp_path / f"store-{asks}"
        extra = f"rebirth_requests = {str(asks).lower()}"
        config = agent_toml(store, node.agent_config(url=sparkplug_broker.url, extra=extra))
        await node.start(sparkplug_broker.url)
        async with running_agent(config) as agent:
            await wait_for(lambda: errors(agent, "no_birth") >= 3)
            await asyncio.sleep(1.5)  # time to ask, if it may
            points = agent.runners[0].points
        await node.stop()
        assert node.rebirth_requests == (1 if asks else 0)
        assert (points > 0) == asks


async def test_automatic_tags_keep_their_places_across_a_restart(
    tmp_path: Path, sparkplug_broker: PrivateBroker
) -> None:
    """Metrics named at run time: each keeps its tag (and its place, by which the frame log
    holds samples) across a restart; the wide output has columns for named tags only."""
    source = f"""
[[sources]]
name = "line1"
protocol = "sparkplug"
url = "{sparkplug_broker.url}"
group = "Plant1"
auto_tags = true
include = ["Line1/Spindle/*"]
auto_tag_slots = 20

[resample]
period = "100ms"
path = "{tmp_path / "wide"}"
"""
    store = tmp_path / "store"
    config = agent_toml(store, source)
    places = []
    for _ in range(2):
        node = SparkplugNodeSimulator(seed=5)
        async with running_agent(config) as agent:
            await wait_for(lambda: source_up(agent, "line1"))
            await node.start(sparkplug_broker.url)
            await wait_for(lambda: len(node.ticks) >= 5)  # noqa: B023
            await node.stop()
            await asyncio.sleep(0.3)
            table = agent.tag_table
            places.append(
                {table.qualified[g]: g for g in range(len(table)) if not table.placeholder[g]}
            )
    assert places[0] == places[1], "the same metric in the same place after the restart"
    assert set(places[0]) == {
        f"line1/Line1.Spindle.{name}"
        for name in ("Speed", "Load", "Running", "Parts", "Temperature", "Vibration", "State")
    }, "the Spindle's metrics by include, not the Coolant's"
    stored = read_store(store)
    assert set(stored["tag"].cast(pa.string()).to_pylist()) == {
        name.split("/", 1)[1] for name in places[0]
    }
    wide = read_store(tmp_path / "wide")
    columns = {c for c in wide.column_names if not c.endswith(":quality")}
    assert columns - {"gateway", "date"} == {"time", *places[0]}, "no column for a free place"
    lineage: dict[str, dict[str, object]] = {}
    for path in store.rglob("*.parquet"):
        lineage |= json.loads(file_lineage(path) or "{}")
    assert lineage["line1/Line1.Spindle.Speed"]["unit"] == "rpm", "from the birth"
