"""Memory (issue 17): what the agent loads and what it keeps.

A protocol library is imported only when a configured source or uplink uses it, and the
agent keeps no batch once every uplink has it: the figures are in BENCHMARKS.md ("Memory
(issue 17)", ``bench/bench_memory.py``); these tests hold the mechanisms.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pyarrow as pa

from agent.ops.health import ProblemLog
from agent.ops.metrics import Metrics
from agent.store.forwarder import Forwarder
from agent.store.quarantine import Quarantine
from agent.store.spool import Spool
from agent.windows.batch import Batch
from simulators.modbus_plc import POINTS, ModbusPLCSimulator
from tests.conftest import agent_toml, run_agent

# libraries a Modbus source with a parquet uplink has no use for
FOREIGN = ("asyncua", "paho", "google.protobuf", "pywt", "plotly", "psycopg", "cryptography")

_RUN_AND_LIST_MODULES = """
import atexit, sys
from agent.commands.cli import main
def listing():
    import pyarrow
    pool = "pool:" + pyarrow.default_memory_pool().backend_name
    open(sys.argv[1], "w").write("\\n".join([pool, *sorted(sys.modules)]))
atexit.register(listing)
sys.exit(main(["run", "-c", sys.argv[2]]))
"""


async def test_a_modbus_config_never_imports_another_protocols_library(tmp_path: Path) -> None:
    """``edge-agent run`` in its own process, acquiring from a Modbus device and writing
    batches; at its exit none of the other drivers' or uplinks' libraries is loaded, and
    Arrow allocated from the system allocator (agent/ops/memory.py), not jemalloc."""
    async with ModbusPLCSimulator(seed=1) as plc:
        store = tmp_path / "store"
        config = tmp_path / "agent.toml"
        config.write_text(agent_toml(store, plc.agent_config("100ms", points=POINTS[:3])))
        modules = tmp_path / "modules.txt"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _RUN_AND_LIST_MODULES, str(modules), str(config), env=env
        )
        try:
            deadline = time.monotonic() + 60
            while not list(store.rglob("*.parquet")) and time.monotonic() < deadline:
                assert agent.returncode is None, "the agent ended early"
                await asyncio.sleep(0.2)
        finally:
            agent.send_signal(signal.SIGTERM)
            returncode = await asyncio.wait_for(agent.wait(), 30)
    assert returncode == 0
    assert list(store.rglob("*.parquet")), "the agent delivered batches"
    loaded = set(modules.read_text().split())
    assert "pymodbus" in loaded, "the list is the agent's"
    assert "pool:system" in loaded
    assert not [m for m in loaded if m.partition(".")[0] in FOREIGN or m in FOREIGN]


async def test_delivered_batches_are_not_kept(tmp_path: Path) -> None:
    """Once every uplink has a batch the agent lets it go: an observer sees each one, and
    nothing in the agent holds it any more (at 10,000 tags a batch is megabytes)."""
    async with ModbusPLCSimulator(seed=2) as plc:
        refs: list[weakref.ref[Batch]] = []
        text = agent_toml(tmp_path / "store", plc.agent_config("100ms", points=POINTS[:3]))
        agent = await run_agent(text, 3.0, on_delivered=lambda b: refs.append(weakref.ref(b)))
    gc.collect()
    assert len(refs) >= 2, "batches were delivered"
    assert agent.batches_written == len(refs)
    assert [ref for ref in refs if ref() is not None] == []


def _batch(n: int) -> Batch:
    return Batch(f"b{n}", "gw", n, n + 1, pa.table({"value": pa.array([float(n)])}))


def test_the_live_lane_cache_holds_batches_only_while_they_are_live(tmp_path: Path) -> None:
    """Batches committed while an uplink is down are not all kept decoded: the cache of
    the live lane forgets a batch once it is older than ``live_age`` (it is read back
    from the spool when its turn comes)."""
    forwarder = Forwarder(
        Spool(tmp_path / "spool.sqlite", ["u"]),
        [],
        Metrics(),
        ProblemLog(),
        replay_rate=10.0,
        live_age_ns=50_000_000,
        delivered=lambda batch: None,
        storage=ProblemLog(),
        quarantine=Quarantine(tmp_path / "quarantine"),
    )
    for n in range(3):
        forwarder.remember(_batch(n))
    assert list(forwarder._recent) == ["b0", "b1", "b2"]
    time.sleep(0.06)
    forwarder.remember(_batch(3))
    assert list(forwarder._recent) == ["b3"]


_FRAGMENT_AND_TRIM = """
import ctypes
from agent.ops import memory
memory.return_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def anon():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon"))
blocks = [libc.malloc(100_000) for _ in range(800)]  # under the mmap threshold: in the heap
for block in blocks:
    ctypes.memset(block, 1, 100_000)
for block in blocks[::2]:  # holes between live blocks: nothing at the top to cut off
    libc.free(block)
before = anon()
memory.trim()
print(before, anon())
"""


def test_trim_hands_free_heap_pages_back(tmp_path: Path) -> None:
    """40 MB freed in holes of glibc's heap stay resident until ``memory.trim`` (the closer
    calls it once a second under ``edge-agent run``)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", _FRAGMENT_AND_TRIM], env=env, capture_output=True, check=True
    )
    before_kib, after_kib = map(int, out.stdout.split())
    assert before_kib - after_kib >= 30_000, (before_kib, after_kib)
