"""Make docs/report.png, the picture of ``edge-agent report --html`` in the README.

The demo's devices (Modbus PLC, OPC UA CNC, MQTT SCADA through a private broker) and the
agent run for 90 s, with what a report is for injected: the PLC stopped for 8 s (a dropout)
and its spindle speed served an impossible value for half a second (spikes, flagged by a
spike filter configured for it); the CNC's axis is compressed by a swinging door, so its
trend shows the kept points against the deviation band. Then the report is written and
chromium takes the screenshot. Needs the report extra, mosquitto and chromium:

    python docs/report_screenshot.py            # about two minutes
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from agent.commands.cli import main
from agent.config.load import parse_config
from agent.runtime import Agent
from simulators.modbus_plc import ModbusPLCSimulator
from simulators.mqtt_broker import broker_class
from simulators.mqtt_scada import MqttScadaSimulator
from simulators.opcua_cnc import NODES, OpcUaCncSimulator

DOCS = Path(__file__).resolve().parent


async def record(out: Path) -> None:
    broker_type = broker_class()
    assert broker_type is not None, "needs mosquitto or amqtt"
    plc, cnc = ModbusPLCSimulator(seed=2), OpcUaCncSimulator(seed=2)
    port = await plc.start("127.0.0.1", 0)
    await cnc.start("127.0.0.1", 0)
    async with broker_type(out.parent / "broker") as broker:
        scada = MqttScadaSimulator(2, shapes=("json",), mqtt_version=broker.mqtt_version())
        await scada.start(broker.url)
        plc_block = plc.agent_config("100ms", extra='backoff_max = "1s"\n').replace(
            'name = "spindle_speed"', 'name = "spindle_speed"\nspike = { max_rate = 100000.0 }'
        )
        scalar = tuple(node for node in NODES if not node.array)
        cnc_block = cnc.agent_config("100ms", nodes=scalar).replace(
            'name = "axis_x"', 'name = "axis_x"\nswinging_door = { deviation = 0.5 }'
        )
        state = out.parent / "state"
        text = (
            f'[agent]\ngateway_id = "line1-gw01"\nmetrics = ""\ndata_dir = "{state}"\n'
            f'[batch]\nwindow = "1s"\nlateness = "300ms"\n'
            f'[[uplinks]]\ntype = "parquet"\npath = "{out}"\n\n'
            f"{plc_block}\n{cnc_block}\n{scada.agent_config(url=broker.url)}"
        )
        agent = Agent(parse_config(tomllib.loads(text), Path("example.toml")))
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(30)
        plc.hold("spindle_speed", 1_000_000.0)
        await asyncio.sleep(0.5)
        plc.hold("spindle_speed", None)
        await asyncio.sleep(20)
        await plc.stop()
        await asyncio.sleep(8)
        await plc.start("127.0.0.1", port)
        await asyncio.sleep(32)
        stop.set()
        await running
        await scada.stop()
    await cnc.stop()
    await plc.stop()


def screenshot(page: Path, png: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser is not None, "needs chromium"
    subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1400,2300",
            "--virtual-time-budget=5000",
            f"--screenshot={png}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
    )


def run() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # the page's title names the dataset as given: "edge-data"
        data = Path(scratch) / "edge-data"
        asyncio.run(record(data))
        page = Path(scratch) / "report.html"
        assert main(["report", "edge-data", "--html", str(page)]) == 0
        screenshot(page, DOCS / "report.png")
    print(f"wrote {DOCS / 'report.png'}", file=sys.stderr)


if __name__ == "__main__":
    run()
