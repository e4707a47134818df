"""Clock alignment end to end: skewed, drifting device clocks land on the gateway's clock.

Shortened here; ``bench/bench_clock.py`` runs the same check for ten minutes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from agent.acquisition import quality as q
from agent.windows.batch import Batch
from simulators.modbus_plc import POINTS, ModbusPLCSimulator
from simulators.opcua_cnc import NODES_BY_NAME, OpcUaCncSimulator
from tests.conftest import agent_toml, read_store, run_agent

MS = 1_000_000
GRID = 100 * MS
SCALARS = tuple(NODES_BY_NAME[name] for name in ("axis_x", "axis_y", "spindle_speed"))


def rows_of(table: pa.Table, source: str, tag: str) -> pa.Table:
    return table.filter(
        pc.and_(
            pc.equal(table["source"].cast(pa.string()), source),
            pc.equal(table["tag"].cast(pa.string()), tag),
        )
    )


def ns(column: pa.ChunkedArray) -> np.ndarray:
    return column.cast(pa.int64()).to_numpy()


@pytest.mark.parametrize("offset_s", [5, -5])
async def test_a_skewed_drifting_source_clock_is_corrected_to_within_2_ms(
    tmp_path: Path, offset_s: int
) -> None:
    simulator = OpcUaCncSimulator(
        seed=7, update_ns=GRID, clock_offset_ns=offset_s * 1_000_000_000, clock_drift_ppm=100.0
    )
    async with simulator:
        agent = await run_agent(
            agent_toml(
                tmp_path, simulator.agent_config(nodes=SCALARS, extra="correct_clock = true\n")
            ),
            5.0,
        )
    table = read_store(tmp_path)
    good = table.filter(pc.equal(table["quality"], q.GOOD))
    assert good.num_rows >= 2 * 20  # axis_x and axis_y move on every 100 ms tick
    # only the first frames, before the minimum-delay filter settles, are flagged
    settling = table.filter(pc.not_equal(table["quality"], q.GOOD))
    assert (settling["quality"].to_numpy() == q.GOOD | q.Flag.CLOCK_UNCERTAIN).all()
    assert ns(settling["time"]).max() < ns(good["time"]).min() + 200 * MS
    true = simulator.true_time(ns(good["source_time"]))
    error_ms = np.abs(ns(good["time"]) - true) / MS
    # The residual error is the smallest server-side delay the filter has seen so far: well
    # under 1 ms on an idle machine, more when tests share the CPUs (the bench holds 2 ms
    # over ten minutes on an idle one).
    assert np.percentile(error_ms, 99) <= 2.0, f"p99 error {np.percentile(error_ms, 99):.3f} ms"
    assert error_ms.max() <= 5.0, f"max error {error_ms.max():.3f} ms"
    offset = agent.metrics.clock_offset.labels("cnc1")._value.get()
    assert offset == pytest.approx(offset_s, abs=0.005)


async def test_two_sources_sampled_at_the_same_instants_get_identical_timestamps(
    tmp_path: Path,
) -> None:
    plc = ModbusPLCSimulator(seed=3)
    cnc = OpcUaCncSimulator(seed=3, update_ns=GRID, clock_offset_ns=-5_000_000_000)
    async with plc, cnc:
        sources = plc.agent_config(
            "100ms", points=POINTS[:1], extra="snap = true\n"
        ) + cnc.agent_config(nodes=SCALARS[:1], extra="snap = true\ncorrect_clock = true\n")
        await run_agent(agent_toml(tmp_path, sources), 4.0)
    table = read_store(tmp_path)
    modbus = ns(rows_of(table, "plc1", POINTS[0].name)["time"])
    opcua = rows_of(table, "cnc1", SCALARS[0].name)
    opcua = opcua.filter(pc.equal(opcua["quality"], q.GOOD))  # not the settling frames
    opcua_times = ns(opcua["time"])
    # every sample sits on the 100 ms grid; the OPC UA ones on the true instant sampled
    assert (modbus % GRID == 0).all()
    assert (opcua_times % GRID == 0).all()
    true_ticks = (cnc.true_time(ns(opcua["source_time"])) + GRID // 2) // GRID * GRID
    np.testing.assert_array_equal(opcua_times, true_ticks)
    # over the span both sources covered, they share nearly every grid instant
    low, high = max(modbus.min(), opcua_times.min()), min(modbus.max(), opcua_times.max())
    span = set(range(int(low), int(high) + 1, GRID))
    assert len(span) >= 25
    shared = span & set(modbus.tolist()) & set(opcua_times.tolist())
    assert len(shared) >= 0.8 * len(span)


async def test_two_agents_started_at_different_times_cut_identical_windows(
    tmp_path: Path,
) -> None:
    async with ModbusPLCSimulator(seed=5) as plc:
        source = plc.agent_config("100ms", points=POINTS[:2])
        early: list[Batch] = []
        second: list[Batch] = []
        first = asyncio.create_task(
            run_agent(agent_toml(tmp_path / "a", source), 3.5, on_delivered=early.append)
        )
        await asyncio.sleep(0.37)  # not a multiple of anything the agents use
        await run_agent(agent_toml(tmp_path / "b", source), 3.0, on_delivered=second.append)
        await first
    windows_a = {b.window_start_ns for b in early}
    windows_b = {b.window_start_ns for b in second}
    assert all(start % 1_000_000_000 == 0 for start in windows_a | windows_b)
    assert len(windows_a & windows_b) >= 2, "the windows both agents saw are the same windows"
    for batch in early + second:
        times = ns(batch.table["time"])
        late = (batch.table["quality"].to_numpy() & q.Flag.LATE) != 0
        assert (times[~late] >= batch.window_start_ns).all()
        assert (times[~late] < batch.window_end_ns).all()
