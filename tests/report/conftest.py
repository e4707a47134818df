"""Datasets for the report and export tests, each made once per session.

``dropout_run``: the real agent polling the Modbus PLC simulator at 100 ms, with an injected
dropout (the simulator stopped for 1.5 s) and spikes (one register served a value far off
its signal for a moment, flagged by the spike stage): the truth the report is held to is
what the test did and when.

``synthetic``: a dataset written with the agent's own pipeline, batcher and encoder from
known functions of time (simulators/dataset.py), so the export's values, units and fills
can be checked exactly.
"""

from __future__ import annotations

import asyncio
import json
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from agent.config.load import parse_config
from agent.store.lineage import file_lineage
from simulators.dataset import Outage, write_dataset
from simulators.modbus_plc import POINTS, ModbusPLCSimulator
from tests.conftest import agent_toml, running_agent

S = 1_000_000_000
SPIKE = 1_000_000.0  # rpm: a float32 exactly, far beyond any ramp of the spindle


_SPIKE_FILTER = "\nspike = { max_rate = 100000.0 }"  # rpm/s: a spindle ramps at ~4000


@dataclass(frozen=True)
class DropoutRun:
    store: Path
    stopped_ns: int  # the simulator stopped (no answer from here)
    restarted_ns: int  # and listened again
    spike_from_ns: int  # spindle_speed served SPIKE from here...
    spike_until_ns: int  # ...until here


async def _record(store: Path) -> DropoutRun:
    simulator = ModbusPLCSimulator(seed=5)
    port = await simulator.start("127.0.0.1", 0)
    blocks = [
        point.toml("100ms") + (_SPIKE_FILTER if point.name == "spindle_speed" else "")
        for point in POINTS
    ]
    source = (
        f'[[sources]]\nname = "plc1"\nprotocol = "modbus"\nurl = "modbus+tcp://127.0.0.1:{port}"\n'
        'backoff_initial = "100ms"\nbackoff_max = "200ms"\n\n' + "\n\n".join(blocks) + "\n"
    )
    try:
        async with running_agent(agent_toml(store, source)):
            await asyncio.sleep(2.0)
            spike_from = time.time_ns()
            simulator.hold("spindle_speed", SPIKE)
            await asyncio.sleep(0.35)
            simulator.hold("spindle_speed", None)
            spike_until = time.time_ns()
            await asyncio.sleep(1.0)
            await simulator.stop()
            stopped = time.time_ns()
            await asyncio.sleep(1.5)
            restarted = time.time_ns()
            await simulator.start("127.0.0.1", port)
            await asyncio.sleep(2.0)
    finally:
        await simulator.stop()
    return DropoutRun(store, stopped, restarted, spike_from, spike_until)


@pytest.fixture(scope="session")
def dropout_run(tmp_path_factory: pytest.TempPathFactory) -> DropoutRun:
    return asyncio.run(_record(tmp_path_factory.mktemp("dropout") / "data"))


# -- synthetic ------------------------------------------------------------------------------

T0 = 1_790_000_000 * S  # a whole minute: windows, periods and the grid all start here
SECONDS = 60
OUTAGE = (T0 + 20 * S, T0 + 23 * S)  # press: session lost for 3 s
SYNTHETIC_TOML = """
[agent]
gateway_id = "syn-gw"
metrics = ""
[batch]
window = "1s"
lateness = "100ms"
[[uplinks]]
type = "parquet"
path = "unused"

[[sources]]
name = "press"
protocol = "template"
  [[sources.tags]]
  name = "length"
  rate = "100ms"
  unit = "in"
  convert_to = "mm"
  description = "part length at the gauge"
  [[sources.tags]]
  name = "temp"
  rate = "100ms"
  unit = "degC"
  [[sources.tags]]
  name = "count"
  rate = "1s"
  resample = "previous"
  description = "parts made"
  [[sources.tags]]
  name = "torque"
  rate = "100ms"
  unit = "N.m"
  range = [0, 100]

[[sources]]
name = "line"
protocol = "template"
  [[sources.tags]]
  name = "speed"
  rate = "200ms"
  unit = "rpm"

[[sources]]
name = "scada"
protocol = "mqtt"
url = "mqtt://127.0.0.1:1883"
topic = "plant/{tag}"
  [[sources.tags]]
  name = "level"
  unit = "%"
"""


def synthetic_value(source: str, tag: str, times: np.ndarray) -> np.ndarray:
    """What the devices report at ``times`` (before the pipeline's unit conversion)."""
    seconds = (times - T0) / S
    if tag == "length":
        return 2.0 + 0.01 * seconds  # inches
    if tag == "temp":
        return 20.0 + 5.0 * np.sin(seconds / 10)
    if tag == "count":
        return np.floor(seconds / 5)
    if tag == "torque":  # one sample out of range at 40 s: flagged bad by the range stage
        return np.where(np.isclose(seconds, 40.0), 500.0, 10.0 + seconds)
    if tag == "level":
        return 50.0 + seconds / 60  # scada/level, %, sent on change (once a second here)
    return 1000.0 + 10.0 * seconds  # line/speed, rpm


@dataclass(frozen=True)
class Synthetic:
    store: Path
    lineage: dict[str, dict[str, object]]


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    store = tmp_path_factory.mktemp("synthetic") / "data"
    loaded = parse_config(tomllib.loads(SYNTHETIC_TOML), Path("synthetic.toml"))
    outage = Outage("press", *OUTAGE)
    config = loaded.config
    write_dataset(
        config.sources,
        synthetic_value,
        store,
        T0,
        T0 + SECONDS * S,
        window_ns=config.batch.window,
        lateness_ns=config.batch.lateness,
        gateway=config.agent.gateway_id,
        config_hash=loaded.config_hash,
        outages=[outage],
        jitter_ns=0,
    )
    lineage: dict[str, dict[str, object]] = {}
    for fragment in ds.dataset(store, format="parquet").get_fragments():
        lineage |= json.loads(file_lineage(fragment.path) or "{}")
    return Synthetic(store, lineage)
