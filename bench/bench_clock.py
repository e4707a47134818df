"""Clock alignment at full length, and what snapping saves on the time column.

Why: the suite checks clock correction for a few seconds; a drifting clock shows its
error over minutes, when the offset has moved by 100 ppm x 600 s = 60 ms. This runs two
OPC UA CNC simulators, one whose server clock is +5 s off and drifts +100 ppm (it stamps
both SourceTimestamp and ServerTimestamp) and one with a correct server clock and a device
clock +5 s/+100 ppm, each read by a subscription and by polling, and two MQTT SCADA
publishers whose payload times run +5 s/+100 ppm, one in epoch milliseconds and one in
epoch microseconds, through a private broker; one agent with ``correct_clock = true``
reads all six, and the error of every stored timestamp against the simulator's true
sampling instant is reported per source. The publishers run as processes of their own
(``edge-agent simulate mqtt``), as devices do: in the agent's process each tick of theirs
waited behind the OPC UA simulators' publishing at the same instants, milliseconds between
a payload's time and its sending that no clock model can tell from the publisher's offset.

The second part runs the Modbus PLC simulator's tag mix at 100 ms with ``snap`` off and on
and reports the compressed bytes per point of the ``time`` column in the Parquet files.

    python bench/bench_clock.py --minutes 10 --snap-seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from agent.acquisition import quality as q
from agent.config.load import parse_config
from agent.ops.logs import configure
from agent.runtime import Agent
from simulators.modbus_plc import ModbusPLCSimulator
from simulators.mqtt_broker import private_broker
from simulators.mqtt_scada import MqttScadaSimulator
from simulators.opcua_cnc import NODES_BY_NAME, OpcUaCncSimulator

MS = 1_000_000
PERIOD = 100 * MS  # of the MQTT publishers
PUBLISHERS = ((11, "ms"), (12, "us"))  # (seed, payload time unit)
ROOT = Path(__file__).resolve().parents[1]  # the publishers import this tree's agent
SCALARS = tuple(NODES_BY_NAME[name] for name in ("axis_x", "axis_y", "axis_z", "spindle_speed"))


def config(store: Path, sources: str) -> str:
    return (
        f'[agent]\ngateway_id = "bench"\nmetrics = ""\nlog_level = "warning"\n'
        f'data_dir = "{store / "state"}"\n'  # its own spool: no other run's backlog
        f'[batch]\nwindow = "10s"\nlateness = "2s"\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{store / "data"}"\n\n{sources}'
    )


async def run(text: str, seconds: float) -> Agent:
    agent = Agent(parse_config(tomllib.loads(text), Path("<bench>")))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return agent


SKEWS = {  # both kinds at +5 s and +100 ppm
    "server": {"server_clock_offset_ns": 5_000_000_000, "server_clock_drift_ppm": 100.0},
    "device": {"clock_offset_ns": 5_000_000_000, "clock_drift_ppm": 100.0},
}


def print_errors(name: str, rows: pa.Table, true: Callable[[pa.Table], np.ndarray]) -> None:
    """One line: the error of every good row's ``time`` against ``true`` of its rows."""
    quality = rows["quality"].to_numpy()
    good = quality == q.GOOD
    times = rows["time"].cast(pa.int64()).to_numpy()[good]
    error = np.abs(times - true(rows.filter(pa.array(good)))) / MS
    settling = int(((quality & q.Flag.CLOCK_UNCERTAIN) != 0).sum())
    print(
        f"  {name:<16} {good.sum():>8} {settling:>8} {np.percentile(error, 50):>8.3f} "
        f"{np.percentile(error, 99):>8.3f} {error.max():>8.3f}"
    )


def source_truth(simulator: OpcUaCncSimulator) -> Callable[[pa.Table], np.ndarray]:
    """The true instants of OPC UA rows: their SourceTimestamps through the machine clock."""

    def true(rows: pa.Table) -> np.ndarray:
        return simulator.true_time(rows["source_time"].cast(pa.int64()).to_numpy())

    return true


def nearest_tick(rows: pa.Table) -> np.ndarray:
    """The true instants of MQTT rows: the publisher's tick (a multiple of its 100 ms
    period) nearest each stored time; the errors are milliseconds."""
    times = rows["time"].cast(pa.int64()).to_numpy()
    return (times + PERIOD // 2) // PERIOD * PERIOD


def print_least_delays(rows: pa.Table) -> None:
    """What bounds a one-way clock model: the least delay from a tick to the agent's receipt
    in each minute (the model cannot tell it from the publisher's offset)."""
    true = nearest_tick(rows)
    delay = rows["received_time"].cast(pa.int64()).to_numpy() - true
    minute = (true - true.min()) // (60 * 1000 * MS)
    least = np.array([delay[minute == m].min() for m in np.unique(minute)]) / MS
    print(
        f"  {'':<16} least tick-to-receipt delay per minute: min {least.min():.3f}, "
        f"median {np.median(least):.3f}, max {least.max():.3f} ms"
    )


@contextlib.asynccontextmanager
async def publishers(url: str, mqtt_version: str) -> AsyncIterator[None]:
    """The MQTT publishers of ``PUBLISHERS`` running against ``url``, stopped at the end."""
    started = []
    try:
        for seed, unit in PUBLISHERS:
            command = (
                f"{sys.executable} -m agent.commands.cli simulate mqtt --broker {url} "
                f"--seed {seed} --shapes json --period {PERIOD}ns --clock-offset 5s "
                f"--clock-drift-ppm 100 --epoch-unit {unit} --mqtt-version {mqtt_version}"
            )
            started.append(
                await asyncio.create_subprocess_exec(
                    *command.split(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=ROOT,
                )
            )
        yield
    finally:
        for process in started:
            process.terminate()
        for process in started:
            await process.wait()


async def clock_accuracy(minutes: float) -> None:
    simulators = {
        skew: OpcUaCncSimulator(seed=seed, update_ns=100 * MS, **kwargs)  # type: ignore[arg-type]
        for seed, (skew, kwargs) in enumerate(SKEWS.items(), 1)
    }
    sources = {
        f"{skew}-{mode}": (simulator, mode)
        for skew, simulator in simulators.items()
        for mode in ("subscribe", "poll")
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        async with (
            simulators["server"],
            simulators["device"],
            private_broker(store / "broker") as broker,
        ):
            blocks = "".join(
                simulator.agent_config(
                    source=name, nodes=SCALARS, extra=f'mode = "{mode}"\ncorrect_clock = true\n'
                )
                for name, (simulator, mode) in sources.items()
            ) + "".join(
                MqttScadaSimulator(seed, shapes=("json",)).agent_config(
                    f"mqtt-{unit}", broker.url, "correct_clock = true\n"
                )
                for seed, unit in PUBLISHERS
            )
            async with publishers(broker.url, broker.mqtt_version()):
                await run(config(store, blocks), minutes * 60)
        table = ds.dataset(store / "data", partitioning="hive").to_table()
    print(
        f"clock: {minutes:g} min; server clock +5 s/+100 ppm (both stamps), and a device "
        "+5 s/+100 ppm behind a correct server, each read by subscription and by polling; "
        "MQTT payload times +5 s/+100 ppm in epoch ms and in epoch us"
    )
    print(
        f"  {'source':<16} {'samples':>8} {'settling':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    source = table["source"].cast(pa.string())
    for name, (simulator, _) in sources.items():
        rows = table.filter(pc.equal(source, name))
        print_errors(name, rows, source_truth(simulator))
    for _, unit in PUBLISHERS:
        name = f"mqtt-{unit}_json"
        rows = table.filter(pc.equal(source, name))
        print_errors(name, rows, nearest_tick)
        print_least_delays(rows.filter(pc.equal(rows["quality"], q.GOOD)))


def time_column_bytes(store: Path) -> tuple[int, int]:
    """Compressed bytes of the time column and the number of rows, over a dataset."""
    size = rows = 0
    for path in store.rglob("*.parquet"):
        metadata = pq.ParquetFile(path).metadata
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            rows += row_group.num_rows
            for column in range(row_group.num_columns):
                chunk = row_group.column(column)
                if chunk.path_in_schema == "time":
                    size += chunk.total_compressed_size
    return size, rows


async def snap_savings(seconds: float) -> None:
    print(f"time column, Modbus PLC tag mix at 100 ms, 10 s windows, {seconds:g} s per run")
    for snap in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            async with ModbusPLCSimulator(seed=3) as plc:
                extra = f"snap = {str(snap).lower()}\n"
                await run(config(Path(tmp), plc.agent_config("100ms", extra=extra)), seconds)
            size, rows = time_column_bytes(Path(tmp) / "data")
        print(
            f"  snap = {str(snap).lower():<5}  {rows:>7} points  {size:>8} bytes  "
            f"{size / rows:.3f} bytes/point"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="clock run length")
    parser.add_argument("--snap-seconds", type=float, default=30.0, help="each snap run; 0 = none")
    args = parser.parse_args()
    configure("warning")
    if args.snap_seconds > 0:
        asyncio.run(snap_savings(args.snap_seconds))
    asyncio.run(clock_accuracy(args.minutes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
