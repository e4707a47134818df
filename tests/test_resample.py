"""The wide, gap-filled output against numpy references, and end to end from a simulator."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.config.load import ConfigError, parse_config
from agent.runtime import Agent
from agent.windows.batch import Batch, Batcher, TagTable
from agent.windows.dataquality import QualityTally
from agent.windows.resample import Resampler
from protocols._template.driver import TemplateSourceConfig
from simulators.modbus_plc import POINTS, ModbusPLCSimulator
from tests.conftest import agent_toml

S = 1_000_000_000
MS = 1_000_000
T0 = 1_795_000_000 * S
NO_DATA = q.make(q.BAD, q.Reason.NO_DATA)
FILLED = q.make(q.GOOD, q.Reason.INTERPOLATED)


def table() -> TagTable:
    tags = [{"name": name, "rate": "100ms"} for name in ("lin", "prev", "avg", "hi")]
    return TagTable([TemplateSourceConfig(name="dev", tags=tags)])


def windows(samples: dict[int, tuple[np.ndarray, np.ndarray]], count: int) -> list[Batch]:
    """Closed 1 s batches of ``samples`` (tag -> times, values), in window order."""
    tags = table()
    tally = QualityTally(
        tags.source_offset, tags.tag_source, tags.rate_ns, S, clock=lambda: T0 + count * S
    )
    tally.started_ns = T0  # so that a window without samples still gets its (empty) batch
    batcher = Batcher(tags, S, 0, "gw", "cfg", tally)
    for tag, (times, values) in samples.items():
        frame = Frame(
            np.full(times.shape[0], tag, np.int32),
            times.astype(np.int64),
            values.astype(np.float64),
            np.zeros(times.shape[0], np.uint16),
        )
        batcher.add(0, frame)
    return batcher.close_due(T0 + count * S)


def resample(batches: list[Batch], period: int = 100 * MS, gap: int = 300 * MS) -> list[pa.Table]:
    resampler = Resampler(table(), ["linear", "previous", "mean", "max"], period, gap)
    wide = [w for batch in batches for w in resampler.feed(batch)] + resampler.flush()
    assert [w.window_start_ns for w in wide] == [b.window_start_ns for b in batches]
    return [w.table for w in wide]


def column(tables: list[pa.Table], name: str) -> np.ndarray:
    return np.concatenate([t[name].to_numpy(zero_copy_only=False) for t in tables])


def test_linear_matches_numpy_interp_across_windows_with_gaps_marked() -> None:
    rng = np.random.default_rng(4)
    times = np.sort(T0 + rng.choice(3 * S, 40, replace=False))
    times = times[(times < T0 + S + 200 * MS) | (times > T0 + 2 * S)]  # a 0.8 s hole
    values = np.sin(times / 1e8)
    tables = resample(windows({0: (times, values)}, 3))
    grid = column(tables, "time").astype(np.int64)
    assert (np.diff(grid) == 100 * MS).all()
    assert grid[0] == T0
    got = column(tables, "dev/lin").astype(np.float64)
    quality = column(tables, "dev/lin:quality")
    reference = np.interp(grid - T0, times - T0, values)  # float64 cannot hold ns epochs
    right = np.searchsorted(times, grid, side="left")
    left = np.searchsorted(times, grid, side="right") - 1
    inside = (left >= 0) & (right < times.shape[0])
    after, before = times[np.minimum(right, len(times) - 1)], times[np.maximum(left, 0)]
    span = np.where(inside, after - before, 0)
    fillable = inside & (span <= 300 * MS)
    np.testing.assert_allclose(got[fillable], reference[fillable], rtol=0, atol=1e-12)
    assert np.isnan(got[~fillable]).all()
    assert (quality[~fillable] == NO_DATA).all()
    assert (quality[fillable] == FILLED).all()
    hole = (grid > T0 + S + 200 * MS) & (grid < T0 + 2 * S)
    assert hole.sum() >= 7
    assert (quality[hole] == NO_DATA).all(), "the hole is marked, not bridged"


def test_previous_holds_and_aggregates_downsample() -> None:
    times = T0 + np.arange(0, S, 20 * MS)  # 50 Hz samples into a 100 ms grid
    values = np.arange(times.shape[0], dtype=np.float64)
    exact = T0 + np.array([0, 250 * MS])
    tables = resample(
        windows({1: (exact, np.array([1.0, 0.0])), 2: (times, values), 3: (times, values)}, 1)
    )
    held = column(tables, "dev/prev")
    held_quality = column(tables, "dev/prev:quality")
    assert held[:3].tolist() == [1.0, 1.0, 1.0]
    assert held_quality[:3].tolist() == [q.GOOD, FILLED, FILLED], "the first is a sample itself"
    assert held[3:6].tolist() == [0.0, 0.0, 0.0]
    assert np.isnan(held[6:]).all(), "held for max_gap (300 ms), then a gap"
    per_cell = values.reshape(10, 5)
    np.testing.assert_array_equal(column(tables, "dev/avg"), per_cell.mean(axis=1))
    np.testing.assert_array_equal(column(tables, "dev/hi"), per_cell.max(axis=1))
    assert (column(tables, "dev/avg:quality") == q.GOOD).all()
    assert (column(tables, "dev/lin:quality") == NO_DATA).all(), "a tag with no data"


def test_an_empty_window_is_all_gap_and_does_not_bridge_its_neighbours() -> None:
    times = T0 + np.array([0, 900, 2100, 2900]) * MS  # nothing in the window T0+1s..T0+2s
    tables = resample(windows({0: (times, np.array([1.0, 2.0, 3.0, 4.0]))}, 3), gap=2 * S)
    middle = tables[1]
    assert middle.num_rows == 10, "the empty window still has its grid"
    assert middle["time"].cast(pa.int64())[0].as_py() == T0 + S
    assert middle["dev/lin"].null_count == 0, "within max_gap (2 s) it is interpolated"
    tables = resample(windows({0: (times, np.array([1.0, 2.0, 3.0, 4.0]))}, 3), gap=S)
    assert (column(tables[1:2], "dev/lin:quality") == NO_DATA).all(), "beyond it: a gap"


def test_a_grid_that_does_not_divide_the_window_is_a_config_error(tmp_path: Path) -> None:
    text = agent_toml(tmp_path, '[[sources]]\nname = "s"\nprotocol = "template"\n')
    text += '[[sources.tags]]\nname = "t"\n[resample]\nperiod = "300ms"\n'
    with pytest.raises(ConfigError, match=r"resample\.period must divide batch\.window"):
        parse_config(tomllib.loads(text), Path("agent.toml"))


async def test_wide_output_from_a_simulator_matches_interpolated_truth(tmp_path: Path) -> None:
    simulator = ModbusPLCSimulator(seed=8)
    port = await simulator.start("127.0.0.1", 0)
    points = (POINTS[0], next(p for p in POINTS if p.type == "bool"))
    wide_path = tmp_path / "wide"
    extra = 'backoff_initial = "100ms"\nbackoff_max = "100ms"\n'
    text = agent_toml(
        tmp_path / "long", simulator.agent_config("100ms", points=points, extra=extra)
    )
    text += f'[resample]\nperiod = "50ms"\nmax_gap = "300ms"\npath = "{wide_path}"\n'
    agent = Agent(parse_config(tomllib.loads(text), Path("test.toml")))
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(1.5)
    await simulator.stop()  # a dropout: the grid must show it as a gap
    await asyncio.sleep(1.0)
    await simulator.start("127.0.0.1", port)
    await asyncio.sleep(1.5)
    stop.set()
    await running
    await simulator.stop()

    long = ds.dataset(tmp_path / "long", partitioning="hive").to_table()
    wide = ds.dataset(wide_path, partitioning="hive").to_table().sort_by("time")
    name = f"plc1/{points[0].name}"
    rows = long.filter(pa.compute.equal(long["tag"].cast(pa.string()), points[0].name))
    rows = rows.filter(pa.compute.equal(rows["quality"], q.GOOD)).sort_by("time")
    times = rows["time"].cast(pa.int64()).to_numpy()
    truth = simulator.truth(points[0].name, times)  # the seeded values at the sampled instants
    grid = wide["time"].cast(pa.int64()).to_numpy()
    got = wide[name].to_numpy(zero_copy_only=False).astype(np.float64)
    quality = wide[f"{name}:quality"].to_numpy()
    filled = quality != NO_DATA
    inside = (grid >= times[0]) & (grid <= times[-1])
    base = times[0]  # float64 cannot hold ns since the epoch exactly: interpolate relative
    reference = np.interp(grid[filled] - base, times - base, truth)
    np.testing.assert_allclose(got[filled], reference, atol=1e-9)
    assert filled[inside].mean() > 0.5
    gaps = np.flatnonzero(np.diff(times) > 300 * MS)
    assert gaps.size >= 1, "the dropout shows in the long form"
    for gap in gaps:
        hole = (grid > times[gap]) & (grid < times[gap + 1])
        assert hole.any()
        assert (quality[hole] == NO_DATA).all(), "and as marked gap cells in the wide one"
        assert np.isnan(got[hole]).all()
    discrete = wide[f"plc1/{points[1].name}"].to_numpy(zero_copy_only=False)
    assert set(np.unique(discrete[~np.isnan(discrete)])) <= {0.0, 1.0}, "held, not blended"


async def test_feature_tags_get_columns_held_over_their_window(tmp_path: Path) -> None:
    """Derived tags (``features``) are in the tag table after their source's tags: the wide
    output must give them columns too (the closer failed on every window when its list of
    methods came from the configured tags alone)."""
    simulator = ModbusPLCSimulator(seed=9)
    port = await simulator.start("127.0.0.1", 0)
    point = POINTS[0]
    wide_path = tmp_path / "wide"
    text = agent_toml(
        tmp_path / "long",
        f'[[sources]]\nname = "plc1"\nprotocol = "modbus"\nurl = "modbus+tcp://127.0.0.1:{port}"\n'
        f'[[sources.tags]]\nname = "{point.name}"\naddress = "{point.address}"\n'
        f'type = "{point.type}"\nrate = "100ms"\n'
        'features = { window = "500ms", stats = ["mean", "peak_to_peak"] }\n',
    )
    text += f'[resample]\nperiod = "100ms"\nmax_gap = "600ms"\npath = "{wide_path}"\n'
    agent = Agent(parse_config(tomllib.loads(text), Path("test.toml")))
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(3.5)
    stop.set()
    await running
    await simulator.stop()

    long = ds.dataset(tmp_path / "long", partitioning="hive").to_table()
    wide = ds.dataset(wide_path, partitioning="hive").to_table().sort_by("time")
    grid = wide["time"].cast(pa.int64()).to_numpy()
    for stat in ("mean", "peak_to_peak"):
        name = f"{point.name}.{stat}"
        rows = long.filter(pa.compute.equal(long["tag"].cast(pa.string()), name)).sort_by("time")
        stamps = rows["time"].cast(pa.int64()).to_numpy()
        values = rows["value"].to_numpy()
        assert stamps.size >= 3, f"{name}: features were computed"
        got = wide[f"plc1/{name}"].to_numpy(zero_copy_only=False).astype(np.float64)
        held = (grid >= stamps[0]) & (grid < stamps[-1])
        assert held.any()
        # each cell holds the latest feature value stamped at or before it
        latest = values[np.searchsorted(stamps, grid[held], side="right") - 1]
        np.testing.assert_array_equal(got[held], latest)
