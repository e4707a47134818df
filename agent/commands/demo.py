"""``edge-agent demo``: the bundled simulators, the agent and a local Parquet store.

A Modbus PLC and an OPC UA CNC machine run in the same process on loopback and, where an
MQTT broker can run (mosquitto installed, or amqtt from the ``test`` extra), a SCADA system
publishes plant values through a private one and a Sparkplug B edge node publishes a
machining line there too (with the ``sparkplug`` extra), so a newcomer sees data flowing
from every protocol within seconds of installing, with no device and no config file to
write. What cannot run here is named and left out; the rest goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import time
import tomllib
from collections import deque
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from agent.acquisition.supervisor import SourceRunner
from agent.commands.signals import install_stop_signals
from agent.config.load import parse_config
from agent.ops.logs import configure
from agent.runtime import Agent
from agent.windows.batch import Batch
from protocols.sparkplug.schema import protobuf_installed
from simulators.modbus_plc import ModbusPLCSimulator
from simulators.mqtt_broker import broker_class
from simulators.mqtt_scada import MqttScadaSimulator
from simulators.opcua_cnc import OpcUaCncSimulator
from simulators.sparkplug_node import SparkplugNodeSimulator

_WATCH = {
    "plc1": ("spindle_speed", "torque"),
    "cnc1": ("spindle_speed", "axis_x"),
    "scada_json": ("PT101", "TT101"),
    "line1": ("spindle_speed", "coolant_temperature"),
}


def demo_config(
    plc: ModbusPLCSimulator,
    cnc: OpcUaCncSimulator,
    out: Path,
    rate: str,
    scada: tuple[MqttScadaSimulator, str] | None = None,
    line: SparkplugNodeSimulator | None = None,
) -> str:
    """The agent's config for the simulators; ``scada`` is the publisher and its broker's
    URL, when there is one, ``line`` the Sparkplug node on that broker."""
    return (
        '[agent]\ngateway_id = "demo-gw"\nmetrics = ""\n'
        f'data_dir = "{_state_dir(out)}"\n'
        '[batch]\nwindow = "1s"\nlateness = "300ms"\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{out}"\n\n'
        + plc.agent_config(rate, source="plc1")
        + "\n"
        + cnc.agent_config(rate, source="cnc1")
        + ("\n" + scada[0].agent_config(url=scada[1]) if scada is not None else "")
        + ("\n" + line.agent_config(url=scada[1]) if scada is not None and line else "")
    )


_MARKER = ".edge-demo"  # a dot file: pyarrow datasets and the report skip it


def _state_dir(out: Path) -> Path:
    return out.parent / ".edge-demo-state"


async def _start_scada(
    stack: contextlib.AsyncExitStack, seed: int, out: Path
) -> tuple[MqttScadaSimulator, str] | None:
    """The SCADA publisher on a private broker, or None (and why) if no broker can run."""
    broker_type = broker_class()
    if broker_type is None:
        print(
            "MQTT left out: no broker here (install mosquitto, or amqtt with "
            "pip install 'edge-agent[test]')"
        )
        return None
    broker = await stack.enter_async_context(broker_type(_state_dir(out) / "broker"))
    scada = MqttScadaSimulator(seed, shapes=("json",), mqtt_version=broker.mqtt_version())
    await scada.start(broker.url)
    stack.push_async_callback(scada.stop)
    return scada, broker.url


def _sparkplug_node(seed: int, scada: tuple[MqttScadaSimulator, str] | None) -> Any:
    """The Sparkplug edge node for the private broker, or None (and why) if it cannot run."""
    if scada is None:
        return None
    if not protobuf_installed():
        print("Sparkplug left out: pip install 'edge-agent[sparkplug]' (protobuf)")
        return None
    # once a second, as a line publishes: the demo's CPU stays with the polled PLC
    return SparkplugNodeSimulator(seed, period_ns=1_000_000_000, mqtt_version=scada[0].mqtt_version)


async def _start_when_subscribed(
    stack: contextlib.AsyncExitStack, agent: Agent, line: SparkplugNodeSimulator, url: str
) -> None:
    """Births are not retained: the node starts once the agent's source has subscribed."""
    runner = next(r for r in agent.runners if r.config.protocol == "sparkplug")
    deadline = time.monotonic() + 10.0
    while not runner.ctx.connected and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await line.start(url)
    stack.push_async_callback(line.stop)


def _latest(newest: deque[Batch], source: str) -> str:
    """The newest written value of a few tags of one source, for the live line."""
    if not newest:
        return ""
    table = newest[0].table
    table = table.filter(pc.equal(table["source"].cast(pa.string()), source))
    parts = []
    for name in _WATCH.get(source, ()):
        rows = table.filter(pc.equal(table["tag"].cast(pa.string()), name))
        if rows.num_rows:
            parts.append(f"{name}={rows['value'][-1].as_py():.1f}")
    return "  ".join(parts)


def _status_line(runner: SourceRunner, elapsed: float, newest: deque[Batch]) -> str:
    lateness = max(  # over the last 100 polls: start-up (sessions, first files) is past
        (s.lateness_s.percentile(99, last=100) for s in runner.ctx.all_poll_stats.values()),
        default=0.0,
    )
    timing = f"p99 poll lateness {lateness * 1e3:4.1f} ms" if lateness else "subscribed"
    return (
        f"{elapsed:5.1f}s  {runner.config.name} ({runner.config.protocol}): "
        f"{runner.points:>7} points  {timing}  {_latest(newest, runner.config.name)}"
    )


async def _demo(duration: float, out: Path, rate: str, seed: int) -> int:
    async with contextlib.AsyncExitStack() as stack:
        plc = ModbusPLCSimulator(seed)
        cnc = OpcUaCncSimulator(seed)
        await plc.start("127.0.0.1", 0)
        stack.push_async_callback(plc.stop)
        await cnc.start("127.0.0.1", 0)
        stack.push_async_callback(cnc.stop)
        scada = await _start_scada(stack, seed, out)
        line = _sparkplug_node(seed, scada)
        config = demo_config(plc, cnc, out, rate, scada, line)
        newest: deque[Batch] = deque(maxlen=1)  # the last delivered batch, for the live line
        loaded = parse_config(tomllib.loads(config), Path("<demo>"))
        agent = Agent(loaded, on_delivered=newest.append)
        stop = asyncio.Event()
        install_stop_signals(stop)
        devices = f"Modbus PLC on 127.0.0.1:{plc.port}, OPC UA CNC at {cnc.url}"
        if scada is not None:
            devices += f", MQTT SCADA via {scada[1]}"
        if scada is not None and line is not None:
            devices += f", Sparkplug B node {line.group}/{line.node} there too"
        print(
            f"edge-agent demo: {devices}; "
            f"{len(agent.tag_table)} tags at {rate}, 1 s windows -> {out}/"
        )
        print("Ctrl-C stops early." if duration else "Ctrl-C stops.")
        task = asyncio.create_task(agent.run(stop))
        if scada is not None and line is not None:
            await _start_when_subscribed(stack, agent, line, scada[1])
        started = time.monotonic()
        try:
            while not stop.is_set() and (not duration or time.monotonic() - started < duration):
                await asyncio.sleep(1.0)
                elapsed = time.monotonic() - started
                for runner in agent.runners:
                    print(_status_line(runner, elapsed, newest), flush=True)
                print(f"{'':7}batches written: {agent.batches_written}", flush=True)
        finally:
            stop.set()
            await task
    print(f"\nWrote {agent.batches_written} batches, {agent.points_written} points under {out}/")
    print(f"Per-tag summary of what was stored:\n  {_edge_agent()} report {out}")
    print(f"As one wide table with a data card:\n  {_edge_agent()} export {out} --out {out}-export")
    _write_report(out)
    return 0


def _write_report(out: Path) -> None:
    """The HTML quality report of what the demo wrote, beside it; without Plotly (the
    report extra) how to get it instead."""
    from agent.report.html import PlotlyMissing, require_plotly

    try:
        require_plotly()
    except PlotlyMissing:
        print(
            "For a quality report with plots: pip install 'edge-agent[report]', then\n"
            f"  {_edge_agent()} report {out} --html report.html"
        )
        return
    from agent.report.dataset import Selection
    from agent.report.figures import compute
    from agent.report.html import write_html

    page = out.with_name(f"{out.name}-report.html")
    write_html(compute(out, Selection(), samples=True), page)
    print(f"Quality report (open it in a browser):\n  {page}")


def _edge_agent() -> str:
    """How to call edge-agent again as this process was called: on PATH, or by the full
    path of the venv's script when the venv is not activated."""
    script = Path(sys.executable).parent / "edge-agent"
    on_path = shutil.which("edge-agent")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "edge-agent"
    return str(script) if script.exists() else f"{sys.executable} -m agent.commands.cli"


def _prepare(out: Path, append: bool) -> str:
    """Start a fresh dataset (the previous demo's is replaced) unless ``append``; a folder
    the demo did not write is never deleted. Returns what was done, for the first line."""
    state = _state_dir(out)
    if out.exists() and any(out.iterdir()):
        if append:
            return f"appending to the earlier run's dataset in {out}/"
        if not (out / _MARKER).exists():
            raise DemoRefused(
                f"{out} holds files edge-agent demo did not write: choose another --out "
                "(or --append to add to it)"
            )
        shutil.rmtree(out)
        shutil.rmtree(state, ignore_errors=True)
        started = f"a fresh dataset in {out}/ (the earlier run's was replaced; --append keeps it)"
    else:
        started = f"a fresh dataset in {out}/"
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("written by edge-agent demo: a new demo run replaces it\n")
    return started


class DemoRefused(Exception):
    """The demo will not write where it was asked to (see :func:`_prepare`)."""


def run_demo(duration: float, out: Path, rate: str, seed: int, append: bool = False) -> int:
    configure("warning")
    out = out.resolve()
    try:
        started = _prepare(out, append)
    except DemoRefused as exc:
        print(f"edge-agent demo: {exc}", file=sys.stderr)
        return 2
    print(f"edge-agent demo: {started}; agent state (spool, frame log) in {_state_dir(out)}/")
    return asyncio.run(_demo(duration, out, rate, seed))
