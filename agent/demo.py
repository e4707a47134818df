"""``edge-agent demo``: the bundled simulators, the agent and a local Parquet store.

A Modbus PLC and an OPC UA CNC machine run in the same process on loopback, so a newcomer
sees data flowing from both protocols within seconds of installing, with no device and no
config file to write.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from agent.cli import install_stop_signals
from agent.config_load import parse_config
from agent.logs import configure
from agent.runtime import Agent
from agent.supervisor import SourceRunner
from simulators.modbus_plc import ModbusPLCSimulator
from simulators.opcua_cnc import OpcUaCncSimulator

_WATCH = {"plc1": ("spindle_speed", "torque"), "cnc1": ("spindle_speed", "axis_x")}


def demo_config(plc: ModbusPLCSimulator, cnc: OpcUaCncSimulator, out: Path, rate: str) -> str:
    return (
        '[agent]\ngateway_id = "demo-gw"\nmetrics = ""\n'
        f'data_dir = "{out.parent / ".edge-demo-state"}"\n'
        '[batch]\nwindow = "1s"\nlateness = "300ms"\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{out}"\n\n'
        + plc.agent_config(rate, source="plc1")
        + "\n"
        + cnc.agent_config(rate, source="cnc1")
    )


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
    plc = ModbusPLCSimulator(seed)
    cnc = OpcUaCncSimulator(seed)
    await plc.start("127.0.0.1", 0)
    await cnc.start("127.0.0.1", 0)
    agent = Agent(parse_config(tomllib.loads(demo_config(plc, cnc, out, rate)), Path("<demo>")))
    stop = asyncio.Event()
    install_stop_signals(stop)
    print(
        f"edge-agent demo: Modbus PLC on 127.0.0.1:{plc.port} and OPC UA CNC at {cnc.url}, "
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
        await cnc.stop()
        await plc.stop()
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
