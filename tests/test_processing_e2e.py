"""Modbus simulator -> agent with filters -> Parquet: the stored points, interpolated,
reconstruct the seeded signal at every polled instant within each tag's configured bound."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.config.load import parse_config
from agent.runtime import Agent
from agent.store.lineage import file_lineage
from simulators.modbus_plc import POINTS_BY_NAME, ModbusPLCSimulator
from tests.conftest import agent_toml, read_store

FILTERS = {
    # tag: (processing keys, bound on |linear interpolation - sample|)
    "spindle_speed": ('range = [0, 24000]\nswinging_door = { deviation = "0.5%" }', 120.0),
    "feed_rate": ("deadband = 15.0", 30.0),  # linear reading of a deadband: twice it
    "coolant_temp": ('convert_to = "degF"\nswinging_door = { deviation = 0.02 }', 0.02),
    "vibration_rms": ('features = { window = "1s", stats = ["rms", "mean"] }', 0.0),
}


def truth_matches(
    simulator: ModbusPLCSimulator, name: str, times: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """Per sample: does some scan within +-200 ms of its time serve exactly its value?"""
    offsets = np.arange(-20, 21, dtype=np.int64) * simulator.signals.scan_ns
    candidates = times[:, None] + offsets[None, :]
    truth = simulator.truth(name, candidates.ravel()).reshape(candidates.shape)
    if name == "coolant_temp":
        truth = truth * 9 / 5 + 32
    return np.isclose(truth, values[:, None], rtol=0, atol=1e-9).any(axis=1)


async def test_filtered_store_reconstructs_the_simulator_truth(tmp_path: Path) -> None:
    simulator = ModbusPLCSimulator(seed=11)
    await simulator.start("127.0.0.1", 0)
    tags = "\n".join(
        f"{POINTS_BY_NAME[name].toml('100ms')}\n{keys}\n" for name, (keys, _) in FILTERS.items()
    )
    source = simulator.agent_config("100ms", points=()) + tags
    agent = Agent(
        parse_config(tomllib.loads(agent_toml(tmp_path, source, lateness="3s")), Path("t.toml"))
    )
    names = [tag.name for tag in agent.sources[0].tags]
    polled: list[Frame] = []
    scale = agent.runners[0].pipeline.stages[0]
    convert = scale.process

    def record(frame: Frame) -> Frame:  # what enters the filters, in engineering units
        out = convert(frame)
        polled.append(Frame(out.tag.copy(), out.time.copy(), out.value.copy(), out.quality))
        return out

    scale.process = record  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(4.0)
    stop.set()
    await task
    await simulator.stop()

    table = read_store(tmp_path)
    stored_tags = table["tag"].cast("string").to_numpy(zero_copy_only=False)
    stored_times = table["time"].cast("int64").to_numpy()
    stored_values = table["value"].to_numpy()
    severity = table["quality"].to_numpy() & q.SEVERITY_MASK
    assert (severity == q.GOOD).all()
    tag = np.concatenate([f.tag for f in polled])
    time = np.concatenate([f.time for f in polled])
    value = np.concatenate([f.value for f in polled])
    for index, name in enumerate(names):
        mine = tag == index
        t, v = time[mine], value[mine]
        assert t.size >= 30, name
        assert truth_matches(simulator, name, t, v).all(), f"{name}: input is not the truth"
        keep = stored_tags == name
        kt, kv = stored_times[keep], stored_values[keep]
        order = np.argsort(kt)
        kt, kv = kt[order], kv[order]
        bound = FILTERS[name][1]
        error = np.abs(np.interp(t - t[0], kt - t[0], kv) - v)
        assert error.max() <= bound + 1e-9, f"{name}: {error.max()} > {bound}"
        if bound:
            assert keep.sum() < mine.sum(), f"{name}: the filter kept every sample"
    # features: one rms and one mean per whole second of vibration_rms
    vib = tag == names.index("vibration_rms")
    windows = time[vib] // 1_000_000_000
    rms = stored_tags == "vibration_rms.rms"
    starts = stored_times[rms] // 1_000_000_000
    assert set(starts.tolist()) == set(windows.tolist())
    for second, stored in zip(starts.tolist(), stored_values[rms].tolist(), strict=True):
        samples = value[vib][windows == second]
        assert np.isclose(stored, np.sqrt(np.mean(samples**2)), rtol=1e-9)
    files = sorted(tmp_path.glob("gateway=test-gw/date=*/*.parquet"))
    lineage: dict[str, Any] = {}  # a batch describes the tags it holds
    for file in files:
        lineage |= json.loads(file_lineage(file) or "{}")
    assert lineage["plc1/spindle_speed"]["swinging_door"]["deviation"] == 120.0
    assert lineage["plc1/coolant_temp"]["unit"] == "degF"
    dropped = agent.metrics.registry.get_sample_value(
        "edge_agent_points_dropped_total", {"source": "plc1", "reason": "swinging_door"}
    )
    assert dropped is not None
    assert dropped > 0
    assert pc.sum(pc.equal(table["tag"].cast("string"), "vibration_rms.mean")).as_py() > 0
