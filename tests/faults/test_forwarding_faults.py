"""Faults between the spool and the uplinks: a poison batch, an uplink that is down, a
forwarder that crashes, a full spool under both overflow policies.

Each runs a real agent on the sequence-numbered Modbus source (tests/faults/harness.py)
with a parquet uplink; an uplink is made "down" by a regular file where its folder should
be (every write fails), and "up" again by removing that file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import tomllib
from pathlib import Path

import pytest

from agent.config.load import parse_config
from agent.runtime import Agent
from simulators.modbus_plc import ModbusPLCSimulator
from tests.faults.harness import balance, sequence_source, spool_losses
from tests.faults.outages import wait_for

pytestmark = pytest.mark.slow


def make_agent(tmp_path: Path, port: int, extra: str = "", uplink: str = "") -> Agent:
    text = (
        f'[agent]\ngateway_id = "gw"\nmetrics = ""\ndata_dir = "{tmp_path / "state"}"\n'
        '[batch]\nwindow = "500ms"\nlateness = "200ms"\n'
        f'[spool]\ndrain_timeout = "2s"\n{extra}\n'
        '[health]\nuplink_max_age = "2s"\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{tmp_path / "store"}"\n'
        f'backoff_initial = "100ms"\nbackoff_max = "300ms"\n{uplink}\n' + sequence_source(port)
    )
    return Agent(parse_config(tomllib.loads(text), Path("t.toml")))


def uplink_down(tmp_path: Path) -> Path:
    blocker = tmp_path / "store"
    blocker.write_bytes(b"not a folder")
    return blocker


async def run_for(agent: Agent, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 30)


def flip_a_byte(state: Path, nth: int) -> tuple[str, int]:
    """Flip one byte in the middle of the nth spooled batch's bytes (same length, so
    SQLite's own checks still pass); returns its batch id and points."""
    with sqlite3.connect(state / "spool.sqlite") as db:
        seq, batch_id, points, data = db.execute(
            "SELECT seq, batch_id, points, data FROM batches ORDER BY seq LIMIT 1 OFFSET ?",
            (nth,),
        ).fetchone()
        damaged = bytearray(data)
        damaged[len(damaged) // 2] ^= 0x40
        db.execute("UPDATE batches SET data = ? WHERE seq = ?", (bytes(damaged), seq))
    return batch_id, points


async def test_a_flipped_byte_in_a_spooled_batch_is_quarantined_and_the_rest_delivered(
    tmp_path: Path,
) -> None:
    async with ModbusPLCSimulator(seed=5) as plc:
        blocker = uplink_down(tmp_path)
        await run_for(make_agent(tmp_path, plc.port), 3.0)  # batches pile up in the spool
        poisoned, points = flip_a_byte(tmp_path / "state", 2)
        blocker.unlink()
        agent = make_agent(tmp_path, plc.port)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await wait_for(
            lambda: agent.spool.size()[0] == 0 and agent.batches_written > 3, 15.0, "spool emptied"
        )
        report = agent.health()
        stop.set()
        await asyncio.wait_for(task, 30)
        served = list(plc.served_sequence)
    assert report["quarantine"]["batches"] == 1
    assert report["quarantine"]["newest"][0]["batch_id"] == poisoned
    assert "corrupt" in report["quarantine"]["newest"][0]["reason"]
    assert agent.metrics.batches_quarantined.labels("parquet", "corrupt")._value.get() == 1
    assert agent.metrics.points_lost.labels("corrupt")._value.get() == points
    kept = list((tmp_path / "state" / "quarantine").iterdir())
    assert {p.suffix for p in kept} >= {".json"}, kept
    books = balance(served, tmp_path / "store", lost=points)
    assert books.duplicates == 0
    assert books.invented == 0
    assert 0 <= books.unaccounted <= 2, books  # the polls in flight at the two stops


async def test_an_uplink_down_too_long_is_reported_and_recovers_within_its_backoff(
    tmp_path: Path,
) -> None:
    async with ModbusPLCSimulator(seed=6) as plc:
        blocker = uplink_down(tmp_path)
        agent = make_agent(tmp_path, plc.port)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await wait_for(
            lambda: "uplink:parquet" in agent.health()["failed"], 10.0, "uplink reported down"
        )
        await wait_for(
            lambda: agent.metrics.uplink_up.labels("parquet")._value.get() == 0, 3.0, "uplink_up 0"
        )
        assert agent.metrics.spool_oldest_age._value.get() > 1.0
        assert not agent.health()["uplinks_ok"]
        blocker.unlink()
        back = time.monotonic()
        await wait_for(lambda: agent.health()["ok"], 10.0, "healthy again")
        resumed_s = time.monotonic() - back
        await wait_for(
            lambda: agent.metrics.uplink_up.labels("parquet")._value.get() == 1, 5.0, "uplink_up 1"
        )
        stop.set()
        await asyncio.wait_for(task, 30)
    assert resumed_s < 5.0


async def test_a_crashing_forwarder_is_restarted_and_a_crash_loop_ends_the_agent(
    tmp_path: Path,
) -> None:
    async with ModbusPLCSimulator(seed=7) as plc:
        agent = make_agent(tmp_path, plc.port)
        real = agent.spool.pending
        crashes = {"left": 1}

        def pending(*args: object, **kwargs: object) -> object:
            if crashes["left"]:
                crashes["left"] -= 1
                raise RuntimeError("injected")
            return real(*args, **kwargs)  # type: ignore[arg-type]

        agent.spool.pending = pending  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await wait_for(lambda: agent.batches_written >= 3, 15.0, "batches delivered")
        assert agent.metrics.task_failures.labels("uplink:parquet")._value.get() == 1
        crashes["left"] = 10**6  # now it cannot be kept alive
        await asyncio.wait_for(agent.tasks.fatal_event.wait(), 60)  # the agent gives up
        crashes["left"] = 0  # its stop still drains the spool
        await asyncio.wait_for(task, 30)
    assert agent.failed is not None
    assert "uplink:parquet" in agent.failed


@pytest.mark.parametrize("overflow", ["stop_acquiring", "drop_oldest"])
async def test_the_spool_cap_holds_and_every_drop_is_counted(tmp_path: Path, overflow: str) -> None:
    cap = 10_000  # about 12 batches (40,000 before issue 17 made them a quarter the size)
    extra = f'max_bytes = {cap}\noverflow = "{overflow}"'
    async with ModbusPLCSimulator(seed=8) as plc:
        blocker = uplink_down(tmp_path)
        agent = make_agent(tmp_path, plc.port, extra)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        sizes: list[int] = []
        paused_at: int | None = None  # time.time_ns() when the pause was first seen
        deadline = time.monotonic() + 12.0
        while time.monotonic() < deadline:
            sizes.append(agent.spool.size()[1])
            if paused_at is None and agent._paused:
                paused_at = time.time_ns()
            await asyncio.sleep(0.2)
        with sqlite3.connect(tmp_path / "state" / "spool.sqlite") as db:
            empty_while_paused = db.execute(
                "SELECT count(*) FROM batches WHERE points = 0 AND created_ns > ?",
                (paused_at or time.time_ns(),),
            ).fetchone()[0]
        assert "spool" in agent.health()["failed"]
        blocker.unlink()
        await wait_for(lambda: agent.spool.size()[0] == 0, 20.0, "spool emptied")
        stop.set()
        await asyncio.wait_for(task, 30)
        served = list(plc.served_sequence)
    # past the cap the sources pause; what was acquired still lands: the batch that crossed
    # it and the next window's (500 ms of one tag, lineage by reference: ~1.6 kB each)
    two_batches = 3_500
    assert max(sizes) <= cap + two_batches, max(sizes)
    assert empty_while_paused == 0
    lost = sum(spool_losses(tmp_path / "state").values())
    books = balance(served, tmp_path / "store", lost=lost)
    assert books.duplicates == 0
    assert books.invented == 0
    if overflow == "drop_oldest":
        assert lost > 0
        assert agent.metrics.points_lost.labels("overflow")._value.get() == lost
    else:
        assert lost == 0, "paused acquisition drops nothing: what is not read is not lost"
    assert 0 <= books.unaccounted <= 1, books
