"""The sparkplug uplink read by an independent host application: Eclipse Tahu's
JavaScript ``sparkplug-payload`` on MQTT.js, through a real broker (acceptance 2 of
issue 18)."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from simulators.mqtt_broker import PrivateBroker
from tests.conftest import agent_toml, read_store, running_agent
from tests.protocols.mqtt.helpers import wait_for
from tests.sparkplug.peers import NodeProcess, node_script

SOURCES = """
[[sources]]
name = "press"
protocol = "template"
amplitude = 10.0

  [[sources.tags]]
  name = "wave"
  signal = "sine"
  rate = "100ms"
  unit = "bar"

  [[sources.tags]]
  name = "sawtooth"
  signal = "ramp"
  period = 5.0
  rate = "500ms"

[[uplinks]]
type = "sparkplug"
url = "{url}"
group = "Edge"
primary_host = "scada"
backoff_max = "500ms"
"""


def births(host: NodeProcess, kind: str) -> list[dict[str, Any]]:
    return [line for line in host.lines if f"/{kind}/" in line.get("topic", "")]


def received_data(host: NodeProcess) -> list[tuple[str, dict[str, Any]]]:
    """(tag name, metric) of every DDATA metric, by the aliases of the DBIRTH before it."""
    names: dict[int, str] = {}
    out = []
    for line in host.lines:
        topic = line.get("topic", "")
        if "/DBIRTH/" in topic:
            names = {m["alias"]: m["name"] for m in line["payload"]["metrics"]}
        elif "/DDATA/" in topic:
            out += [(names[m["alias"]], m) for m in line["payload"]["metrics"]]
    return out


async def test_host_gets_births_every_sample_once_and_history_after_its_outage(
    tmp_path: Path, sparkplug_broker: PrivateBroker, tahu_modules: Path
) -> None:
    store = tmp_path / "store"
    config = agent_toml(store, SOURCES.format(url=sparkplug_broker.url), lateness="200ms")
    async with node_script(tahu_modules, "host.js", sparkplug_broker.url, "Edge", "scada") as host:
        await host.wait_for(lambda line: line.get("event") == "online")
        async with running_agent(config) as agent:
            await wait_for(lambda: bool(received_data(host)))
            await asyncio.sleep(1.5)
            await host.command(cmd="offline")
            await host.wait_for(lambda line: line.get("event") == "offline")
            offline_at = time.time_ns()
            await asyncio.sleep(3.5)  # batches wait in the spool meanwhile
            back_at = time.time_ns()
            await host.command(cmd="online")
            await wait_for(lambda: len(births(host, "NBIRTH")) >= 2)
            await asyncio.sleep(2.0)
            await host.command(cmd="rebirth", node="test-gw")  # NCMD Node Control/Rebirth
            await wait_for(lambda: len(births(host, "NBIRTH")) >= 3)
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.5)  # the last DDATA of the stop's flush reaches the host

    node_births = births(host, "NBIRTH")
    assert [m["name"] for m in node_births[0]["payload"]["metrics"]] == [
        "bdSeq",
        "Node Control/Rebirth",
    ]
    bdseqs = [
        m["value"] for b in node_births for m in b["payload"]["metrics"] if m["name"] == "bdSeq"
    ]
    assert bdseqs[1] == bdseqs[0] + 1, "a new session after the host's outage, bdSeq + 1"
    assert births(host, "NDEATH"), "the node died when its primary host went offline"
    device = births(host, "DBIRTH")[0]
    assert device["topic"] == "spBv1.0/Edge/DBIRTH/test-gw/press"
    metrics = {m["name"]: m for m in device["payload"]["metrics"]}
    assert set(metrics) == {"wave", "sawtooth"}, "every tag of the source is a metric"
    assert metrics["wave"]["properties"]["engUnit"]["value"] == "bar"
    assert metrics["wave"]["properties"]["rate"]["value"] == "100ms"
    assert metrics["wave"]["type"] == "Double"

    stored = read_store(store)
    truth = collections.Counter(
        zip(
            stored["tag"].cast(pa.string()).to_pylist(),
            (stored["time"].cast(pa.int64()).to_numpy() // 1_000_000).tolist(),
            stored["value"].to_pylist(),
            strict=True,
        )
    )
    data = received_data(host)
    got = collections.Counter((name, m["timestamp"], m["value"]) for name, m in data)
    assert got == truth, "every stored sample arrives once, with its timestamp and value"
    historical = [m["timestamp"] for _, m in data if m.get("isHistorical")]
    assert historical, "the outage's batches were sent as historical metrics"
    assert offline_at // 1_000_000 - 3000 < min(historical)
    assert max(historical) < back_at // 1_000_000
    rebirth = births(host, "NBIRTH")[2]["payload"]
    assert rebirth["seq"] == 0, "a rebirth starts the sequence again"
    assert [m["value"] for m in rebirth["metrics"] if m["name"] == "bdSeq"] == [bdseqs[1]]
    unconfirmed = agent.metrics.registry.get_sample_value(
        "edge_agent_uplink_unconfirmed_points_total", {"uplink": "sparkplug"}
    )
    assert unconfirmed == sum(truth.values()), "QoS 0: every sample sent, none confirmed"
