"""``edge-agent demo``: the bundled simulators, the agent and a local Parquet store.

A Modbus PLC and an OPC UA CNC machine run in the same process on loopback and, where an
MQTT broker can run (mosquitto installed, or amqtt from the ``test`` extra), a SCADA system
publishes plant values through a private one, so a newcomer sees data flowing from every
protocol within seconds of installing, with no device and no config file to write.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from agent.acquisition.supervisor import SourceRunner
from agent.commands.signals import install_stop_signals
from agent.config.load import parse_config
from agent.ops.logs import configure
from agent.runtime import Agent
from simulators.modbus_plc import ModbusPLCSimulator
from simulators.mqtt_broker import broker_class
from simulators.mqtt_scada import MqttScadaSimulator
from simulators.opcua_cnc import OpcUaCncSimulator

_WATCH = {
    "plc1": ("spindle_speed", "torque"),
    "cnc1": ("spindle_speed", "axis_x"),
    "scada_json": ("PT101", "TT101"),
}


def demo_config(
    plc: ModbusPLCSimulator,
    cnc: OpcUaCncSimulator,
    out: Path,
    rate: str,
    scada: tuple[MqttScadaSimulator, str] | None = None,
) -> str:
    """The agent's config for the simulators; ``scada`` is the publisher and its broker's
    URL, when there is one."""
    return (
        '[agent]\ngateway_id = "demo-gw"\nmetrics = ""\n'
        f'data_dir = "{_state_dir(out)}"\n'
        '[batch]\nwindow = "1s"\nlateness = "300ms"\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{out}"\n\n'
        + plc.agent_config(rate, source="plc1")
        + "\n"
        + cnc.agent_config(rate, source="cnc1")
        + ("\n" + scada[0].agent_config(url=scada[1]) if scada is not None else "")
    )


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


def _latest(agent: Agent, source: str) -> str:
    """The newest written value of a few tags of one source, for the live line."""
    if not agent.written:
        return ""
    table = agent.written[-1].table
    table = table.filter(pc.equal(table["source"].cast(pa.string()), source))
    parts = []
    for name in _WATCH.get(source, ()):
        rows = table.filter(pc.equal(table["tag"].cast(pa.string()), name))
        if rows.num_rows:
            parts.append(f"{name}={rows['value'][-1].as_py():.1f}")
    return "  ".join(parts)


def _status_line(elapsed: float, agent: Agent, runner: SourceRunner) -> str:
    lateness = max(  # over the last 100 polls: start-up (sessions, first files) is past
        (s.lateness_s.percentile(99, last=100) for s in runner.ctx.all_poll_stats.values()),
        default=0.0,
    )
    timing = f"p99 poll lateness {lateness * 1e3:4.1f} ms" if lateness else "subscribed"
    return (
        f"{elapsed:5.1f}s  {runner.config.name} ({runner.config.protocol}): "
        f"{runner.points:>7} points  {timing}  {_latest(agent, runner.config.name)}"
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
        config = demo_config(plc, cnc, out, rate, scada)
        agent = Agent(parse_config(tomllib.loads(config), Path("<demo>")))
        stop = asyncio.Event()
        install_stop_signals(stop)
        devices = f"Modbus PLC on 127.0.0.1:{plc.port}, OPC UA CNC at {cnc.url}"
        if scada is not None:
            devices += f", MQTT SCADA via {scada[1]}"
        print(
            f"edge-agent demo: {devices}; "
            f"{len(agent.tag_table)} tags at {rate}, 1 s windows -> {out}/"
        )
        print("Ctrl-C stops early." if duration else "Ctrl-C stops.")
        task = asyncio.create_task(agent.run(stop))
        started = time.monotonic()
        try:
            while not stop.is_set() and (not duration or time.monotonic() - started < duration):
                await asyncio.sleep(1.0)
                elapsed = time.monotonic() - started
                for runner in agent.runners:
                    print(_status_line(elapsed, agent, runner), flush=True)
                print(f"{'':7}batches written: {agent.batches_written}", flush=True)
        finally:
            stop.set()
            await task
    print(f"\nWrote {agent.batches_written} batches, {agent.points_written} points under {out}/")
    print("Read them back:")
    print(
        '  python -c "import pyarrow.dataset as ds; '
        f"t = ds.dataset('{out}', partitioning='hive').to_table(); "
        "print(t.group_by(['source', 'tag']).aggregate([('value', 'count'), ('value', 'mean')]))\""
    )
    return 0


def run_demo(duration: float, out: Path, rate: str, seed: int) -> int:
    configure("warning")
    return asyncio.run(_demo(duration, out.resolve(), rate, seed))
