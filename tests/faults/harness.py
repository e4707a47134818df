"""A sequence-numbered source and the books it lets a fault test balance, sample by sample.

The Modbus simulator answers every read of ``SEQUENCE_AREA`` with a fresh number and keeps
the list it served: what the agent acquired. A fault test then checks, number by number,
that each one is in the store exactly once or counted lost, and nothing else is there.
Also used by ``bench/bench_faults.py``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from agent.acquisition import quality as q
from agent.uplinks.parquet import DATASET_SCHEMA
from simulators.modbus_plc import SEQUENCE_AREA


def sequence_source(port: int, rate: str = "100ms", short_backoff: bool = True) -> str:
    """The source config; ``short_backoff=False`` keeps the default backoff (a bench
    measuring recovery time with default settings)."""
    backoff = 'backoff_initial = "100ms"\nbackoff_max = "500ms"\n' if short_backoff else ""
    return (
        f'[[sources]]\nname = "plc"\nprotocol = "modbus"\n'
        f'url = "modbus+tcp://127.0.0.1:{port}"\ntimeout = "300ms"\n{backoff}'
        f'[[sources.tags]]\nname = "seq"\naddress = "hr:{SEQUENCE_AREA}"\ntype = "uint32"\n'
        f'rate = "{rate}"\n'
    )


def stored_numbers(store: Path) -> np.ndarray:
    """The good ``seq`` samples of a Parquet store, as integers (duplicates kept)."""
    if not any(store.rglob("*.parquet")):
        return np.zeros(0, np.int64)
    table = ds.dataset(
        store, format="parquet", partitioning="hive", schema=DATASET_SCHEMA
    ).to_table()
    rows = table.filter(pc.equal(table["tag"].cast(pa.string()), "seq"))
    severity = pc.bit_wise_and(rows["quality"], pa.scalar(q.SEVERITY_MASK, pa.uint16()))
    good = rows.filter(pc.equal(severity, q.GOOD))
    return good["value"].to_numpy().astype(np.int64)


def spool_losses(data_dir: Path) -> dict[str, int]:
    """Points the spool's ``losses`` table counts, by reason (they survive restarts)."""
    path = data_dir / "spool.sqlite"
    if not path.exists():
        return {}
    with sqlite3.connect(path) as db:
        return {reason: int(points) for reason, points in db.execute(
            "SELECT reason, points FROM losses"
        )}  # fmt: skip


def quarantined_points(data_dir: Path) -> int:
    """Points of the batches in ``<data_dir>/quarantine`` (their sidecars survive restarts;
    the spool's ``losses`` table does not count them)."""
    sidecars = (data_dir / "quarantine").glob("*.json")
    return sum(int(json.loads(path.read_text()).get("points", 0)) for path in sidecars)


@dataclass(frozen=True)
class Books:
    acquired: int  # numbers the simulator served
    stored: int  # distinct numbers in the store
    duplicates: int  # rows beyond the first of a number
    lost: int  # counted lost, all reasons
    invented: int  # numbers stored that were never served
    missing: list[int]  # served, not stored

    @property
    def unaccounted(self) -> int:
        """Served numbers neither stored nor counted lost (negative: counted twice)."""
        return self.acquired - self.stored - self.lost


def balance(served: list[int], store: Path, lost: int) -> Books:
    numbers = stored_numbers(store)
    unique = np.unique(numbers)
    served_set = set(served)
    return Books(
        acquired=len(served_set),
        stored=len(unique),
        duplicates=len(numbers) - len(unique),
        lost=lost,
        invented=len(set(unique.tolist()) - served_set),
        missing=sorted(served_set - set(unique.tolist())),
    )


@asynccontextmanager
async def agent_processes() -> AsyncIterator[
    Callable[[Path], Awaitable[asyncio.subprocess.Process]]
]:
    """Start ``edge-agent run -c CONFIG`` processes (stderr piped); whatever is still
    running when the block ends, a failed assertion included, is killed: a test that fails
    halfway must not leave an agent polling on."""
    started: list[asyncio.subprocess.Process] = []

    async def start(config: Path) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.commands.cli", "run", "-c", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.returncode is None:
                process.kill()
                await process.wait()
