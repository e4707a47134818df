"""Agent CPU cost per Modbus point, next to a bare pymodbus poll loop doing the same reads.

Why: the agent adds scheduling, frames, a pipeline, batching and Parquet writing on top of
the protocol library. This measures what that costs where it matters on a small gateway,
CPU seconds per 1000 points acquired, against the floor: a bare ``AsyncModbusTcpClient``
loop issuing the same block reads on the same 100 ms grid (goal: agent <= 1.25x bare).

The agent has pymodbus decode read replies with numpy (``protocols.modbus.replies``), which
a bare loop written as pymodbus's documentation shows does not. So a third loop, ``bare+np``,
is the bare loop with the same reply classes: agent/bare is what running the agent costs
beside a plain pymodbus script, agent/bare+np what the agent's own work costs.

For each tag count, a simulator runs in a separate process (its CPU is not counted) serving
N float32 tags at hr:1000, hr:1002, ... In this process, ``--repeat`` rounds each run the
bare loop, the bare+np loop, then the agent (``Agent.run``: one Modbus source, a Parquet
uplink, 1 s windows), each in a fresh event loop: ``--warmup`` seconds unmeasured (the
first batch is written ~3 s in), then ``--duration`` seconds over which process CPU time
(user + system, all threads) and points acquired are counted. Summaries are medians over
the rounds.

    python bench/bench_modbus.py --tags 1000,10000 --duration 20 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pymodbus
from pymodbus.client import AsyncModbusTcpClient

from agent.config.durations import parse_duration
from agent.config.load import LoadedConfig, parse_config
from agent.ops.logs import configure
from agent.runtime import Agent
from protocols.modbus.blocks import plan_blocks
from protocols.modbus.config import ModbusSourceConfig
from protocols.modbus.replies import use_numpy_replies

BULK_BASE = 1000  # simulators.modbus_plc.BULK_BASE
GOAL = 1.25
LOOPS = ["bare", "bare+np", "agent"]


@dataclass
class Counters:
    """Cumulative counts of a run; a measurement is the difference of two snapshots."""

    points: int = 0
    polls: int = 0
    overruns: int = 0
    stop: bool = False  # tells the bare loop to end


@dataclass
class Result:
    loop: str
    tags: int
    seconds: float
    cpu_s: float
    sim_cpu_s: float
    counts: Counters

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_s / self.counts.points * 1000 if self.counts.points else float("nan")

    def row(self) -> str:
        c, s = self.counts, self.seconds
        return (
            f"{self.tags:>6} {self.loop:<7} {self.cpu_s:>6.2f} {100 * self.cpu_s / s:>6.1f} "
            f"{c.points:>9} {self.cpu_per_1000:>14.5f} {c.polls:>6} {c.overruns:>8} "
            f"{c.points / self.tags / s:>7.2f} {100 * self.sim_cpu_s / s:>6.1f}"
        )


HEADER = (
    f"{'tags':>6} {'loop':<7} {'CPU s':>6} {'CPU %':>6} {'points':>9} {'CPU s/1000 pt':>14} "
    f"{'polls':>6} {'overruns':>8} {'Hz/tag':>7} {'sim %':>6}"
)


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU of this process (all threads), or of process ``pid`` via /proc."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    loop: str, tags: int, sim_pid: int, counters: Callable[[], Counters], args: argparse.Namespace
) -> Result:
    """Wait out the warm-up, then count CPU and points over ``--duration`` seconds."""
    await asyncio.sleep(args.warmup)
    start, cpu0, sim0, c0 = time.monotonic(), cpu_seconds(), cpu_seconds(sim_pid), counters()
    await asyncio.sleep(args.duration)
    cpu1, sim1, c1 = cpu_seconds(), cpu_seconds(sim_pid), counters()
    delta = Counters(c1.points - c0.points, c1.polls - c0.polls, c1.overruns - c0.overruns)
    return Result(loop, tags, time.monotonic() - start, cpu1 - cpu0, sim1 - sim0, delta)


async def bare_loop(
    server: tuple[str, int],
    blocks: list[tuple[int, int]],
    period_s: float,
    counts: Counters,
    numpy_replies: bool,
) -> None:
    """The floor: the agent's block reads on absolute ticks, each decoded to float32.

    Ended by ``counts.stop``, not by cancellation, which pymodbus can swallow on Python 3.11.
    """
    host, port = server
    client = AsyncModbusTcpClient(host, port=port, timeout=1.0, retries=0, reconnect_delay=0)
    if numpy_replies:
        use_numpy_replies(client)
    if not await client.connect():
        raise ConnectionError(f"cannot connect to {host}:{port}")
    try:
        start, tick = time.monotonic(), 0
        while not counts.stop:
            delay = start + tick * period_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            counts.polls += 1
            for address, count in blocks:
                response = await client.read_holding_registers(address, count=count, device_id=1)
                if not response.isError():
                    values = np.asarray(response.registers, ">u2").view(">f4")
                    counts.points += values.shape[0]
            following = max(tick + 1, int((time.monotonic() - start) / period_s))
            counts.overruns += following - tick - 1
            tick = following
    finally:
        client.close()


async def run_bare(
    host: str, port: int, loaded: LoadedConfig, sim_pid: int, args: argparse.Namespace, loop: str
) -> Result:
    source = loaded.config.sources[0]
    assert isinstance(source, ModbusSourceConfig)
    planned = plan_blocks(
        source.tags, range(len(source.tags)), source.max_gap, source.max_registers, source.max_bits
    )
    blocks = [(block.start, block.count) for block in planned]  # what ModbusDriver reads
    counts = Counters()
    numpy_replies = loop == "bare+np"
    poller = asyncio.create_task(
        bare_loop((host, port), blocks, args.period_s, counts, numpy_replies)
    )
    snapshot = lambda: Counters(counts.points, counts.polls, counts.overruns)  # noqa: E731
    try:
        return await measure(loop, len(source.tags), sim_pid, snapshot, args)
    finally:
        counts.stop = True
        await poller


async def run_agent(loaded: LoadedConfig, sim_pid: int, args: argparse.Namespace) -> Result:
    agent = Agent(loaded)
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))

    def snapshot() -> Counters:
        counts = Counters(points=sum(runner.points for runner in agent.runners))
        for runner in agent.runners:
            for stats in runner.ctx.all_poll_stats.values():
                counts.polls += stats.polls
                counts.overruns += stats.overruns
        return counts

    try:
        result = await measure("agent", len(agent.tag_table), sim_pid, snapshot, args)
    finally:
        stop.set()
        await running
        leftovers = await cancel_leftovers()
    acquired = snapshot().points
    if leftovers or agent.points_written != acquired:
        print(
            f"  note: {leftovers} task(s) outlived the agent's stop; it wrote "
            f"{agent.points_written} of {acquired} points acquired"
        )
    return result


async def cancel_leftovers() -> int:
    """Cancel, again and again, tasks still running after ``Agent.run`` returned.

    On Python 3.11, ``asyncio.wait_for`` (used by pymodbus for every request) swallows a
    cancel that lands just as the response arrives (CPython gh-86296); before PollingDriver
    checked ``cancelling()`` a poll task could outlive the stop and hang ``asyncio.run``.
    Kept as a guard: a regression shows up as a note, not as a hung benchmark.
    """
    current = asyncio.current_task()
    leftovers = pending = {task for task in asyncio.all_tasks() if task is not current}
    for _ in range(100):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    return len(leftovers)


def agent_config(port: int, tags: int, rate: str, out: Path) -> LoadedConfig:
    tag_tables = "".join(
        f'[[sources.tags]]\nname = "bulk{i}"\naddress = "hr:{BULK_BASE + 2 * i}"\n'
        f'type = "float32"\nrate = "{rate}"\n'
        for i in range(tags)
    )
    text = (
        f'[agent]\ngateway_id = "bench"\nmetrics = ""\nlog_level = "warning"\n'
        f'data_dir = "{out / "data"}"\n\n[batch]\nwindow = "1s"\n\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{out / "parquet"}"\n\n'
        f'[[sources]]\nname = "plc"\nprotocol = "modbus"\n'
        f'url = "modbus+tcp://127.0.0.1:{port}"\n\n{tag_tables}'
    )
    return parse_config(tomllib.loads(text), Path("<bench>"))


@contextlib.contextmanager
def simulator(tags: int) -> Iterator[tuple[str, int, int]]:
    """A simulator process serving ``tags`` bulk float32 tags; yields host, port and pid."""
    command = [sys.executable, "-m", "agent.commands.cli", "simulate", "modbus", "--port", "0"]
    process = subprocess.Popen([*command, "--bulk-tags", str(tags)], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        match = re.search(r"listening on ([\d.]+):(\d+)", line)
        if match is None:
            raise RuntimeError(f"the simulator did not report its port: {line!r}")
        yield match.group(1), int(match.group(2)), process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def run_all(args: argparse.Namespace) -> list[Result]:
    loops = LOOPS if args.only is None else [args.only]
    results: list[Result] = []
    for tags in args.tags:
        with tempfile.TemporaryDirectory() as tmp, simulator(tags) as (host, port, pid):
            loaded = agent_config(port, tags, args.rate, Path(tmp))
            for round_ in range(1, args.repeat + 1):
                for loop in loops:
                    print(f"{tags} tags, round {round_}/{args.repeat}: {loop} ...", flush=True)
                    if loop.startswith("bare"):
                        result = asyncio.run(run_bare(host, port, loaded, pid, args, loop))
                    else:
                        result = asyncio.run(run_agent(loaded, pid, args))
                    results.append(result)
    return results


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\n{os.cpu_count()} CPUs, Python {platform.python_version()}, pymodbus "
        f"{pymodbus.__version__}, numpy {np.__version__}; every tag at {args.rate}; "
        f"warm-up {args.warmup:g} s, measured {args.duration:g} s, {args.repeat} round(s)\n"
    )
    print(HEADER + "\n" + "-" * len(HEADER))
    for result in results:
        print(result.row())
    print("\nCPU s per 1000 points: medians, and agent/bare of each round (run back to back)")
    for tags in args.tags:
        runs = {
            loop: [r.cpu_per_1000 for r in results if (r.tags, r.loop) == (tags, loop)]
            for loop in LOOPS
        }
        line = "  ".join(f"{loop} {statistics.median(v):.5f}" for loop, v in runs.items() if v)
        print(f"{tags:>6} tags: {line}")
        for floor in ("bare", "bare+np"):
            if not (runs[floor] and runs["agent"]):
                continue
            ratios = [a / b for a, b in zip(runs["agent"], runs[floor], strict=True)]
            ratio = statistics.median(ratios)
            verdict = ""
            if floor == "bare":  # the goal: beside a plain pymodbus script
                verdict = f" ({'within' if ratio <= GOAL else 'ABOVE'} the {GOAL}x goal)"
            rounds = " ".join(f"{r:.2f}" for r in ratios)
            print(f"{'':>13}agent/{floor:<8} {rounds}: median {ratio:.2f}x{verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tags", default="1000,10000", help="comma-separated tag counts")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds per run")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of the three loops")
    parser.add_argument("--rate", default="100ms", help="poll period of every tag")
    parser.add_argument("--only", choices=LOOPS, help="run one loop (profiling)")
    args = parser.parse_args()
    args.tags = [int(n) for n in args.tags.split(",")]
    args.period_s = parse_duration(args.rate) / 1e9
    configure("warning")
    report(run_all(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
