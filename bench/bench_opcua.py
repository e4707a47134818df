"""Agent CPU per OPC UA notification next to a bare asyncua subscription, and poll cycles.

Why: subscriptions are how most OPC UA data arrives, and asyncua already spends most of a
notification's cost decoding it. This measures what the agent adds on top (frames,
batching, Parquet), against the floor: a bare asyncua subscription whose handler only
counts (goal: agent <= 1.25x bare). It also measures a polled Read of N nodes per 100 ms
tick: p50/p99 of the Read round trip, the cycle a poll group needs.

The simulator runs in its own process (``edge-agent simulate opcua --bulk-tags N``), so
its CPU is not counted; bare and agent run one after the other against it.

    python bench/bench_opcua.py --items 1000,3000 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncua
from asyncua import Client
from bench_modbus import cpu_seconds

from agent.config.load import parse_config
from agent.ops.logs import configure
from agent.runtime import Agent

GOAL = 1.25


@contextlib.contextmanager
def simulator(items: int, update: str) -> Iterator[tuple[str, int]]:
    """A simulator process with ``items`` bulk variables; yields its URL and pid."""
    command = [sys.executable, "-m", "agent.commands.cli", "simulate", "opcua", "--port", "0"]
    command += ["--bulk-tags", str(items), "--update", update]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        match = re.search(r"listening on (opc\.tcp://\S+)", line)
        if match is None:
            raise RuntimeError(f"the simulator did not report its URL: {line!r}")
        yield match.group(1), process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


async def measure(count: Any, sim_pid: int, args: argparse.Namespace) -> tuple[float, int, float]:
    """(CPU s, notifications, simulator CPU s) over ``--duration`` after ``--warmup``."""
    await asyncio.sleep(args.warmup)
    cpu0, sim0, n0 = cpu_seconds(), cpu_seconds(sim_pid), count()
    await asyncio.sleep(args.duration)
    return cpu_seconds() - cpu0, count() - n0, cpu_seconds(sim_pid) - sim0


class CountingHandler:
    """The bare floor: asyncua's callback API, doing nothing but count."""

    def __init__(self) -> None:
        self.notifications = 0

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.notifications += 1


async def run_bare(
    url: str, items: int, sim_pid: int, args: argparse.Namespace
) -> tuple[float, int, float]:
    handler = CountingHandler()
    async with Client(url, timeout=30) as client:
        subscription = await client.create_subscription(100, handler)
        nodes = [client.get_node(f"ns=2;s=Bulk.{i}") for i in range(items)]
        for start in range(0, items, 1000):
            await subscription.subscribe_data_change(
                nodes[start : start + 1000], sampling_interval=100
            )
        result = await measure(lambda: handler.notifications, sim_pid, args)
        await subscription.delete()
    return result


def agent_text(url: str, items: int, out: Path, mode: str) -> str:
    tags = "".join(
        f'[[sources.tags]]\nname = "bulk{i}"\nnode = "ns=2;s=Bulk.{i}"\nrate = "100ms"\n'
        for i in range(items)
    )
    return (
        f'[agent]\ngateway_id = "bench"\nmetrics = ""\nlog_level = "warning"\n'
        f'data_dir = "{out / "data"}"\n\n[batch]\nwindow = "1s"\n\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{out / "parquet"}"\n\n'
        f'[[sources]]\nname = "cnc"\nprotocol = "opcua"\nurl = "{url}"\nmode = "{mode}"\n'
        f'timeout = "30s"\n\n{tags}'
    )


async def run_agent(
    url: str, items: int, sim_pid: int, args: argparse.Namespace, mode: str = "subscribe"
) -> tuple[tuple[float, int, float], Agent]:
    with tempfile.TemporaryDirectory() as tmp:
        text = agent_text(url, items, Path(tmp), mode)
        agent = Agent(parse_config(tomllib.loads(text), Path("<bench>")))
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        try:
            result = await measure(lambda: agent.runners[0].points, sim_pid, args)
        finally:
            stop.set()
            await running
    return result, agent


def row(name: str, items: int, result: tuple[float, int, float], seconds: float) -> str:
    cpu, notes, sim = result
    per = cpu / notes * 1e6 if notes else float("nan")
    return (
        f"{items:>6} {name:<6} {cpu:>6.2f} {100 * cpu / seconds:>6.1f} {notes:>9} "
        f"{per:>12.1f} {notes / items / seconds:>7.2f} {100 * sim / seconds:>6.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--items", default="1000,3000", help="monitored items, comma-separated")
    parser.add_argument("--poll-nodes", type=int, default=1000, help="nodes per polled Read")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    configure("warning")
    header = (
        f"{'items':>6} {'loop':<6} {'CPU s':>6} {'CPU %':>6} {'notifs':>9} "
        f"{'CPU us/notif':>12} {'Hz/item':>7} {'sim %':>6}"
    )
    lines, medians = [header, "-" * len(header)], []
    for items in [int(n) for n in args.items.split(",")]:
        per: dict[str, list[float]] = {"bare": [], "agent": []}
        with simulator(items, "100ms") as (url, pid):
            for round_ in range(args.repeat):
                for name in ("bare", "agent"):
                    print(f"{items} items, round {round_ + 1}: {name} ...", flush=True)
                    if name == "bare":
                        result = asyncio.run(run_bare(url, items, pid, args))
                    else:
                        result = asyncio.run(run_agent(url, items, pid, args))[0]
                    lines.append(row(name, items, result, args.duration))
                    per[name].append(result[0] / max(result[1], 1))
        ratio = statistics.median(per["agent"]) / statistics.median(per["bare"])
        medians.append(
            f"{items:>6} items: bare {statistics.median(per['bare']) * 1e6:.1f} us/notif, "
            f"agent {statistics.median(per['agent']) * 1e6:.1f} us/notif, agent/bare "
            f"{ratio:.2f}x ({'within' if ratio <= GOAL else 'ABOVE'} the {GOAL}x goal)"
        )
    with simulator(args.poll_nodes, "100ms") as (url, pid):
        print(f"poll: {args.poll_nodes} nodes per Read at 100 ms ...", flush=True)
        (cpu, points, _), agent = asyncio.run(
            run_agent(url, args.poll_nodes, pid, args, mode="poll")
        )
        stats = agent.runners[0].ctx.all_poll_stats["100ms"]
        rtt_p50, rtt_p99 = stats.rtt_s.percentile(50) * 1e3, stats.rtt_s.percentile(99) * 1e3
        poll_line = (
            f"poll {args.poll_nodes} nodes/Read at 100 ms: Read round trip p50 {rtt_p50:.1f} ms, "
            f"p99 {rtt_p99:.1f} ms, lateness p99 {stats.lateness_s.percentile(99) * 1e3:.1f} ms, "
            f"overruns {stats.overruns} of {stats.polls} polls, "
            f"{cpu / max(points, 1) * 1e6:.1f} us CPU/point"
        )
    print(
        f"\nasyncua {asyncua.__version__ if hasattr(asyncua, '__version__') else '2.x'}, "
        f"warm-up {args.warmup:g} s, measured {args.duration:g} s, {args.repeat} round(s)\n"
    )
    print("\n".join(lines))
    print("\n" + "\n".join(medians))
    print(poll_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
