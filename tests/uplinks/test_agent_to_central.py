"""A whole agent polling the Modbus simulator, with a local Parquet uplink and the mqtt
uplink side by side, and ``edge-agent collect`` writing the central store: the central
store holds exactly what the gateway stored locally, sample for sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.commands.collect import Collector
from simulators.modbus_plc import POINTS, ModbusPLCSimulator
from simulators.mqtt_broker import PrivateBroker
from tests.conftest import agent_toml, read_store, run_agent
from tests.uplinks.conftest import PgSchema
from tests.uplinks.helpers import canonical, collect_config, running, stored, wait_for
from tests.uplinks.test_postgres import stored_samples


async def run_gateway(
    plc: ModbusPLCSimulator, broker: PrivateBroker, local: Path, collector: Collector
) -> int:
    """Run the agent for a few windows; returns the number of batches it stored locally."""
    # snapped to the poll grid: PostgreSQL keeps microseconds, these times have none finer
    sources = plc.agent_config("100ms", points=POINTS[:4], extra="snap = true\n")
    mqtt = f'[[uplinks]]\ntype = "mqtt"\nurl = "{broker.url}"\n\n'
    await run_agent(agent_toml(local, mqtt + sources), 2.5)
    written = len(stored(local).files)
    assert written >= 2
    await wait_for(lambda: collector.batches == written)
    return written


async def test_agent_batches_reach_a_central_parquet_store_exactly(
    modbus_plc: ModbusPLCSimulator, mqtt_broker: PrivateBroker, tmp_path: Path
) -> None:
    central = tmp_path / "central"
    config = collect_config(mqtt_broker.url, {"type": "parquet", "path": str(central)}, "c1")
    async with running(config) as collector:
        written = await run_gateway(modbus_plc, mqtt_broker, tmp_path / "local", collector)
    assert len(stored(central).files) == written
    assert canonical(stored(central).to_table()).equals(canonical(read_store(tmp_path / "local")))


async def test_agent_batches_reach_postgres_exactly(
    modbus_plc: ModbusPLCSimulator,
    mqtt_broker: PrivateBroker,
    pg_schema: PgSchema,
    tmp_path: Path,
) -> None:
    store: dict[str, Any] = pg_schema.store()
    async with running(collect_config(mqtt_broker.url, store, "c1")) as collector:
        await run_gateway(modbus_plc, mqtt_broker, tmp_path / "local", collector)
    local = canonical(read_store(tmp_path / "local"))
    assert local.num_rows > 0
    assert (await stored_samples(pg_schema)).equals(local)


pytestmark = pytest.mark.slow
