"""Delivered rate = configured rate, for OPC UA subscriptions and polled reads (issue 14).

The CNC simulator updates every 50 ms, faster than any rate here, so a subscription that
lets more than its rate through shows it at once (the bug: a 1 s tag gave two samples a
second, the last two 50 ms updates before each publish).
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from agent.acquisition import quality as q
from agent.config.load import parse_config
from agent.runtime import Agent
from protocols.opcua.driver import queue_size
from simulators.opcua_cnc import NODES_BY_NAME, OpcUaCncSimulator
from tests.conftest import agent_toml, read_store

NS = 1_000_000_000
WINDOW_NS = 30 * NS
# node -> (rate, samples owed in 30 s, tolerance); these axes move on every 50 ms update
RATES = {"axis_x": ("1s", 30, 1), "axis_y": ("100ms", 300, 3), "axis_z": ("10s", 3, 1)}
SLOW = "part_count"  # steps every 7 s: on change in subscribe mode, every poll in poll mode
MODES = ("subscribe", "poll")


def test_queue_holds_what_the_rate_owes_per_publish() -> None:
    assert queue_size(1 * NS, 1 * NS) == 1
    assert queue_size(NS // 10, NS // 10) == 1
    assert queue_size(1 * NS, NS // 10) == 10  # a longer publishing interval batches
    assert queue_size(1 * NS, 300_000_000) == 4
    assert queue_size(NS // 10, 1 * NS) == 1


def _source(simulator: OpcUaCncSimulator, mode: str) -> str:
    header = (
        f'[[sources]]\nname = "{mode}"\nprotocol = "opcua"\nurl = "{simulator.url}"\n'
        f'mode = "{mode}"\n'
    )
    tags = [NODES_BY_NAME[name].toml(rate) for name, (rate, _, _) in RATES.items()]
    tags.append(NODES_BY_NAME[SLOW].toml("100ms"))
    return header + "\n" + "\n\n".join(tags) + "\n"


async def _wait_for(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_every_rate_is_delivered_as_configured_in_both_modes(tmp_path: Path) -> None:
    simulator = OpcUaCncSimulator(seed=14)  # 50 ms updates, the bundled default
    await simulator.start("127.0.0.1", 0)
    text = agent_toml(tmp_path, "".join(_source(simulator, mode) for mode in MODES))
    agent = Agent(parse_config(tomllib.loads(text), Path("rates.toml")))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        # count over 30 s that begin once both sessions deliver, on a whole second
        await _wait_for(lambda: all(r.points > 0 for r in agent.runners), 30.0, "first samples")
        start = (time.time_ns() // NS + 2) * NS
        end = start + WINDOW_NS
        # a 1 s publish carries a sample up to ~1 s old; the batch waits 300 ms more
        await asyncio.sleep((end - time.time_ns()) / NS + 2.0)
    finally:
        stop.set()
        await task
        await simulator.stop()
    table = read_store(tmp_path)
    counts: dict[tuple[str, str], int] = {}
    for mode in MODES:
        rows = table.filter(pc.equal(table["source"].cast(pa.string()), mode))
        for name in (*RATES, SLOW):
            tag = rows.filter(pc.equal(rows["tag"].cast(pa.string()), name))
            times = tag["time"].cast(pa.int64()).to_numpy()
            inside = (times >= start) & (times < end)
            counts[mode, name] = int(inside.sum())
            assert (tag["quality"].to_numpy()[inside] == q.GOOD).all(), (mode, name)
            assert len(np.unique(times[inside])) == inside.sum(), f"{mode} {name}: duplicates"
            np.testing.assert_array_equal(
                tag["value"].to_numpy()[inside],
                simulator.truth(name, simulator.true_time(times[inside])),
                err_msg=f"{mode} {name}",
            )
            if mode == "subscribe" and name == SLOW:
                # on change: exactly the updates where the count stepped, nothing between
                first_step = -(-start // (7 * NS)) * 7 * NS
                np.testing.assert_array_equal(
                    np.sort(times[inside]), np.arange(first_step, end, 7 * NS), err_msg=mode
                )
    for mode in MODES:
        for name, (_, owed, tolerance) in RATES.items():
            assert abs(counts[mode, name] - owed) <= tolerance, (mode, name, counts)
    assert abs(counts["poll", SLOW] - 300) <= 3, counts
