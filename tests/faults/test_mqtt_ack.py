"""SIGKILL of an agent subscribed with QoS 1/2 while a publisher sends numbered messages.

The agent runs as its own process (``edge-agent run``) with a persistent MQTT session and a
local Parquet store; a publisher in this process sends a sequence number on two topics,
one payload with its own timestamp (``{"n": 7, "ts": <epoch ms>}``) and one a plain number
(stamped at receipt, so a redelivery of it would get a new time). The agent is killed
again and again and restarted: messages it had not stored come again from its session,
those it had stored (not yet acknowledged) are dropped when they come again, so the store
holds every number published exactly once, for both topics.

On loopback an acknowledgement reaches the broker microseconds after the write, so a kill
rarely finds messages stored but unacknowledged. The agent therefore talks to the broker
through a relay that, for a moment before each kill, stops passing on what the agent
sends: the acknowledgements of that moment are lost with the process, as on a slow link.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from simulators.mqtt_broker import PrivateBroker, free_port
from tests.conftest import read_store
from tests.protocols.mqtt.helpers import needs_redelivery, publisher_on, wait_for

KILLS = 3
PERIOD_S = 0.004  # one message per topic every 4 ms
HOLD_S = 0.3  # the agent's acknowledgements lost before each kill


class AckBlackhole:
    """A TCP relay to the broker whose agent-to-broker direction can be cut off for the
    connections open now (:meth:`swallow`): the agent's packets are read and dropped."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._swallowing: list[list[bool]] = []  # one flag per connection

    async def __aenter__(self) -> AckBlackhole:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def swallow(self) -> None:
        for flag in self._swallowing:
            flag[0] = True

    async def _relay(self, agent_in: asyncio.StreamReader, agent_out: asyncio.StreamWriter) -> None:
        broker_in, broker_out = await asyncio.open_connection("127.0.0.1", self.broker_port)
        flag = [False]
        self._swallowing.append(flag)
        await asyncio.gather(
            _pipe(agent_in, broker_out, flag), _pipe(broker_in, agent_out, [False])
        )
        self._swallowing.remove(flag)


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, swallow: list[bool]
) -> None:
    try:
        while data := await reader.read(65536):
            if not swallow[0]:
                writer.write(data)
                await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def agent_config(
    tmp_path: Path, broker: PrivateBroker, relay_port: int, qos: int, metrics_port: int
) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\ngateway_id = "kill"\nmetrics = "127.0.0.1:{metrics_port}"\n'
        f'log_format = "json"\ndata_dir = "{tmp_path / "state"}"\n'
        '[batch]\nwindow = "500ms"\nlateness = "200ms"\n'
        '[spool]\ndrain_timeout = "3s"\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{tmp_path / "store"}"\n'
        f'[[sources]]\nname = "scada"\nprotocol = "mqtt"\nurl = "mqtt://127.0.0.1:{relay_port}"\n'
        f'mqtt_version = "{broker.mqtt_version()}"\nclean_session = false\nqos = {qos}\n'
        'client_id = "gw-kill"\nbackoff_initial = "100ms"\nbackoff_max = "200ms"\n'
        '[[sources.tags]]\nname = "stamped"\ntopic = "seq/stamped"\nvalue = "$.n"\n'
        'timestamp = "$.ts"\n'
        '[[sources.tags]]\nname = "plain"\ntopic = "seq/plain"\n'
    )
    return config


async def start_agent(config: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as stderr:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.commands.cli", "run", "-c", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip


def subscribed(metrics_port: int) -> bool:
    """The agent's MQTT source is connected (and so subscribed), by its /metrics."""
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return False
    return 'edge_agent_source_up{source="scada"} 1.0' in text


@contextlib.asynccontextmanager
async def numbers_published(broker: PrivateBroker, qos: int) -> AsyncIterator[list[int]]:
    """Publish 0, 1, 2... on both topics until the block ends; yields the count so far
    (one list item), final once every message is with the broker."""
    publisher = await publisher_on(broker)
    count = [0]
    infos = []

    async def publish_forever() -> None:
        while True:
            n = count[0]
            stamp = json.dumps({"n": n, "ts": time.time_ns() // 1_000_000})
            infos.append(publisher.client.publish("seq/stamped", stamp, qos=qos))
            infos.append(publisher.client.publish("seq/plain", str(n), qos=qos))
            count[0] = n + 1
            await asyncio.sleep(PERIOD_S)

    task = asyncio.create_task(publish_forever())
    try:
        yield count
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await wait_for(lambda: all(info.is_published() for info in infos), 30.0)
        await publisher.close()


def numbers(table: pa.Table, tag: str) -> list[int]:
    rows = table.filter(pc.equal(table["tag"].cast(pa.string()), tag))
    return sorted(rows["value"].to_numpy().astype(np.int64).tolist())


def store_holds(store: Path, count: int) -> bool:
    try:
        table = read_store(store)
    except (OSError, pa.ArrowInvalid):  # no file yet, or one being written
        return False
    return all(len(numbers(table, tag)) >= count for tag in ("stamped", "plain"))


def redeliveries_dropped(log: Path) -> int:
    """Messages the agent's runs logged as dropped redeliveries (JSON log lines)."""
    total = 0
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("event", "").startswith("redelivered messages dropped"):
                total += event["messages"]
    return total


@needs_redelivery
@pytest.mark.parametrize("qos", [1, 2])
async def test_sigkills_store_every_published_number_exactly_once(
    tmp_path: Path, mqtt_broker: PrivateBroker, qos: int
) -> None:
    metrics_port = free_port()
    log = tmp_path / "agent.log"
    async with AckBlackhole(mqtt_broker.port) as relay:
        config = agent_config(tmp_path, mqtt_broker, relay.port, qos, metrics_port)
        agent = await start_agent(config, log)
        try:
            await wait_for(lambda: subscribed(metrics_port), 30.0)
            async with numbers_published(mqtt_broker, qos) as count:
                for kill in range(KILLS):
                    await asyncio.sleep(1.3 + 0.37 * kill)  # never in step with the windows
                    relay.swallow()
                    await asyncio.sleep(HOLD_S)
                    agent.send_signal(signal.SIGKILL)
                    await agent.wait()
                    await asyncio.sleep(0.2)  # the broker queues what comes meanwhile
                    agent = await start_agent(config, log)
                await asyncio.sleep(1.0)
            published = count[0]
            await wait_for(lambda: store_holds(tmp_path / "store", published), 60.0)
            agent.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(agent.wait(), 30) == 0
        finally:
            if agent.returncode is None:
                agent.kill()
                await agent.wait()
    table = read_store(tmp_path / "store")
    expected = list(range(published))
    dropped = redeliveries_dropped(log)
    print(f"qos {qos}: {published} numbers per topic, {KILLS} kills, {dropped} dropped as stored")
    for tag in ("stamped", "plain"):
        stored = numbers(table, tag)
        assert len(stored) == len(set(stored)), f"{tag}: a number stored twice"
        assert stored == expected, f"{tag}: missing {sorted(set(expected) - set(stored))[:20]}"
    assert published > 100 * KILLS
    assert dropped > 0, "the kills hit stored, unacknowledged messages"
