"""Chaos: the agent SIGKILLed again and again while its uplink's broker restarts.

A Modbus register whose every read returns a fresh sequence number makes the check exact:
the central store must hold every number the agent acquired once, and nothing more; the
only numbers allowed to be missing are those of a poll in flight at each kill. The agent
runs as its own process (``edge-agent run``), sends to a private broker over the mqtt
uplink (MQTT 5; the collector's session must survive the broker's restarts), and a
collector in this process writes what arrives to Parquet. Shortened here;
``bench/bench_chaos.py`` runs it for longer.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent.acquisition import quality as q
from simulators.modbus_plc import SEQUENCE_AREA, ModbusPLCSimulator
from simulators.mqtt_broker import Feature, PrivateBroker
from tests.protocols.mqtt.helpers import needs_broker
from tests.uplinks.helpers import collect_config, running, stored

# bench/bench_chaos.py runs this test with more of both
KILLS = int(os.environ.get("EDGE_AGENT_CHAOS_KILLS", "3"))
BROKER_RESTARTS = int(os.environ.get("EDGE_AGENT_CHAOS_BROKER_RESTARTS", "2"))


def agent_config(tmp_path: Path, plc: ModbusPLCSimulator, broker: PrivateBroker) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\ngateway_id = "chaos"\nmetrics = ""\nlog_format = "json"\n'
        f'data_dir = "{tmp_path / "state"}"\n'
        '[batch]\nwindow = "500ms"\nlateness = "200ms"\n'
        f'[spool]\ndrain_timeout = "3s"\n'
        f'[[uplinks]]\ntype = "mqtt"\nurl = "{broker.url}"\nclient_id = "chaos-gw"\n'
        'publish_timeout = "2s"\n'
        f'[[sources]]\nname = "plc"\nprotocol = "modbus"\n'
        f'url = "modbus+tcp://127.0.0.1:{plc.port}"\ntimeout = "300ms"\n'
        'backoff_initial = "100ms"\nbackoff_max = "200ms"\n'
        f'[[sources.tags]]\nname = "seq"\naddress = "hr:{SEQUENCE_AREA}"\ntype = "uint32"\n'
        'rate = "100ms"\n'
    )
    return config


async def start_agent(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.commands.cli", "run", "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


@needs_broker(Feature.MQTT5, Feature.PERSISTENT_SESSIONS)
async def test_sigkills_and_broker_restarts_lose_only_polls_in_flight_and_store_nothing_twice(
    tmp_path: Path, mqtt_broker: PrivateBroker
) -> None:
    central = tmp_path / "central"
    collector = collect_config(
        mqtt_broker.url, {"type": "parquet", "path": str(central)}, "chaos-collector"
    )
    collector = collector.model_copy(
        update={"broker": collector.broker.model_copy(update={"shared_group": ""})}
    )
    async with ModbusPLCSimulator(seed=9) as plc, running(collector):
        config = agent_config(tmp_path, plc, mqtt_broker)
        agent = await start_agent(config)
        restarts_left = BROKER_RESTARTS
        for kill in range(KILLS):
            await asyncio.sleep(1.6 + 0.37 * kill)  # never in step with the 500 ms windows
            if restarts_left:
                await mqtt_broker.restart()  # the uplink loses its broker too
                restarts_left -= 1
            await asyncio.sleep(0.4)
            agent.send_signal(signal.SIGKILL)
            await agent.wait()
            agent = await start_agent(config)
        await asyncio.sleep(2.5)
        agent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(agent.wait(), 30) == 0
        served = np.array(plc.served_sequence)
        await asyncio.sleep(1.0)  # the collector writes what the last drain published
    table = stored(central).to_table()
    rows = table.filter(pc.equal(table["tag"].cast(pa.string()), "seq"))
    good = rows.filter(pc.equal(rows["quality"], q.GOOD))
    numbers = good["value"].to_numpy().astype(np.int64)
    assert len(served) >= 20 * KILLS
    assert len(numbers) == len(np.unique(numbers)), "no sample stored twice"
    assert set(numbers.tolist()) <= set(served.tolist()), "nothing invented"
    missing = sorted(set(served.tolist()) - set(numbers.tolist()))
    print(f"chaos: {len(served)} served, {len(numbers)} stored once, missing {missing}")
    # each kill may lose the poll in flight (the request served, its frame not yet spooled)
    assert len(missing) <= 2 * KILLS, f"lost {missing}"
