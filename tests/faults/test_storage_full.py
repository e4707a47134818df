"""Disk full, I/O errors and a kill while they last: acquisition goes on, nothing acquired
vanishes uncounted, and everything resumes by itself when storage accepts writes again.

Two ways in: ``OSError(ENOSPC)`` / SQLite's "database or disk is full" injected at the
write layer (runs everywhere), and a real, small tmpfs filled to the last byte (needs
root to mount; ``.ci/run`` runs as root)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.store import framelog
from agent.store.atrisk import AtRiskLedger
from agent.store.spool import Spool
from simulators.modbus_plc import ModbusPLCSimulator
from tests.faults.harness import agent_processes, balance, sequence_source, spool_losses
from tests.faults.outages import running_agent, wait_for

pytestmark = pytest.mark.slow


def config_text(store: Path, state: Path, port: int, memory: str = "64MiB") -> str:
    memory_bytes = 64 << 20 if memory == "64MiB" else int(memory)
    return (
        f'[agent]\ngateway_id = "full"\nmetrics = ""\ndata_dir = "{state}"\n'
        'log_format = "json"\n'
        '[batch]\nwindow = "500ms"\nlateness = "200ms"\n'
        f'[spool]\ndrain_timeout = "3s"\nmemory_max_bytes = {memory_bytes}\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{store}"\nbackoff_max = "500ms"\n\n'
        + sequence_source(port)
    )


class Injected:
    """Storage that refuses writes while ``on``: the frame log's ``writev`` raises
    ``OSError(code)``, a batch commit raises SQLite's error of the same kind."""

    def __init__(self, code: int, sqlite_error: str) -> None:
        self.on = False
        self.code = code
        self.sqlite_error = sqlite_error


@pytest.fixture
def injected(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Injected:
    fault = Injected(*getattr(request, "param", (errno.ENOSPC, "database or disk is full")))
    real_writev = os.writev
    real_commit = Spool.commit_batches

    def writev(fd: int, buffers: list[bytes]) -> int:
        if fault.on:
            raise OSError(fault.code, os.strerror(fault.code))
        return real_writev(fd, buffers)

    def commit(self: Spool, *args: object) -> None:
        if fault.on:
            raise sqlite3.OperationalError(fault.sqlite_error)
        real_commit(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(framelog.os, "writev", writev)
    monkeypatch.setattr(Spool, "commit_batches", commit)
    return fault


@pytest.mark.parametrize(
    "injected",
    [
        (errno.ENOSPC, "database or disk is full"),
        (errno.EIO, "disk I/O error"),
        (errno.EROFS, "attempt to write a readonly database"),
    ],
    ids=["ENOSPC", "EIO", "EROFS"],
    indirect=True,
)
async def test_injected_storage_errors_hold_in_memory_and_resume_with_nothing_lost(
    tmp_path: Path, injected: Injected
) -> None:
    store, state = tmp_path / "store", tmp_path / "state"
    async with (
        ModbusPLCSimulator(seed=3) as plc,
        running_agent(config_text(store, state, plc.port)) as agent,
    ):
        await asyncio.sleep(1.5)
        injected.on = True
        await wait_for(lambda: bool(agent.storage_problems.open_keys), 15.0, "storage failing")
        served_before = len(plc.served_sequence)
        await asyncio.sleep(2.0)
        report = agent.health()
        assert not report["ok"]
        assert any(k.startswith("storage:") for k in report["failed"])
        assert report["points_at_risk"] > 0, "what only memory holds is on the books"
        assert len(plc.served_sequence) > served_before + 10, "acquisition went on"
        assert agent.metrics.storage_errors.labels("frame_log")._value.get() > 0
        injected.on = False
        await wait_for(lambda: not agent.storage_problems.open_keys, 15.0, "storage recovered")
        await wait_for(lambda: agent.health()["ok"], 15.0, "healthy again")
        assert agent.spool.at_risk_points == 0
        await asyncio.sleep(1.0)
    assert_stored_once(list(plc.served_sequence), store, state)


def assert_stored_once(served: list[int], store: Path, state: Path) -> None:
    """Every number served is in the store exactly once, nothing counted lost (the one
    allowed gap: the poll in flight when the agent stopped)."""
    books = balance(served, store, lost=sum(spool_losses(state).values()))
    assert books.duplicates == 0
    assert books.invented == 0
    assert books.lost == 0
    assert books.missing == [] or books.missing == served[-1:], books.missing


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Fill the filesystem to the last byte; returns the filler to delete."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for step in (65536, 4096, 512, 1):  # unbuffered: nothing left to flush at close
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * step)
    finally:
        os.close(fd)
    return filler


async def test_a_real_full_disk_a_kill_while_full_and_a_clean_stop_balance_the_books(
    tmp_path: Path, small_disk: Path
) -> None:
    """data_dir on a 4 MiB tmpfs: filled while the agent runs, killed (SIGKILL) while full,
    restarted while still full, the space freed, stopped with SIGTERM: every number the PLC
    served is stored once or counted lost (the ledger's count for the killed run)."""
    store, state = tmp_path / "store", small_disk / "state"
    async with ModbusPLCSimulator(seed=4) as plc, agent_processes() as start_agent:
        config = tmp_path / "agent.toml"
        config.write_text(config_text(store, state, plc.port))
        agent = await start_agent(config)
        await asyncio.sleep(2.0)
        filler = fill(small_disk)
        ledger = AtRiskLedger(state / "spool.at-risk")  # what the agent's own ledger says
        deadline = time.monotonic() + 15.0
        while not ledger.read() and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            fill(small_disk)  # again: the agent gives back its WAL's space, and uses it
        assert ledger.read(), "samples held in memory only, on the books"
        ledger.close()
        await asyncio.sleep(0.5)
        agent.send_signal(signal.SIGKILL)
        await agent.wait()
        agent = await start_agent(config)  # still full
        await asyncio.sleep(2.5)
        filler.unlink()
        await asyncio.sleep(3.0)
        agent.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(agent.communicate(), 30)
        assert agent.returncode == 0, stderr.decode()[-2000:]
        assert b"Traceback" not in stderr
        served = list(plc.served_sequence)
    losses = spool_losses(state)
    books = balance(served, store, lost=sum(losses.values()))
    print(f"full disk: {books}, losses {losses}")
    assert books.duplicates == 0
    assert books.invented == 0
    assert losses.get("storage", 0) > 0, "the kill while full lost what only memory held"
    # each start/stop may lose the poll in flight: the request served, its frame not taken
    assert 0 <= books.unaccounted <= 2, books


async def test_a_stop_while_storage_fails_is_clean_and_the_next_start_counts_the_loss(
    tmp_path: Path, injected: Injected
) -> None:
    """SIGTERM's path (stop, flush) while nothing can be written: no exception, exit
    clean; what only memory held is counted lost by the next start, exactly."""
    store, state = tmp_path / "store", tmp_path / "state"
    async with ModbusPLCSimulator(seed=13) as plc:
        text = config_text(store, state, plc.port)
        async with running_agent(text) as agent:
            await asyncio.sleep(1.5)
            injected.on = True
            await asyncio.sleep(2.0)
            at_risk = agent.spool.at_risk_points
        assert agent.failed is None  # the stop above raised nothing either
        injected.on = False
        async with running_agent(text) as again:
            await asyncio.sleep(2.0)
        served = list(plc.served_sequence)
    losses = spool_losses(state)
    assert at_risk > 0
    assert losses == {"storage": losses["storage"]}
    assert again.metrics.points_lost.labels("storage")._value.get() == losses["storage"]
    books = balance(served, store, lost=losses["storage"])
    assert books.duplicates == 0
    assert books.invented == 0
    assert 0 <= books.unaccounted <= 2, books  # the polls in flight at the two stops


async def test_acknowledgements_the_spool_cannot_record_are_held_and_nothing_is_sent_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = {"on": False}
    real_ack = Spool.acknowledge

    def acknowledge(self: Spool, uplink: str, seq: int) -> bool:
        if failing["on"]:
            raise sqlite3.OperationalError("database or disk is full")
        return real_ack(self, uplink, seq)

    monkeypatch.setattr(Spool, "acknowledge", acknowledge)
    store, state = tmp_path / "store", tmp_path / "state"
    async with ModbusPLCSimulator(seed=14) as plc:
        async with running_agent(config_text(store, state, plc.port)) as agent:
            await asyncio.sleep(1.5)
            failing["on"] = True
            failed = "storage:spool_acknowledge"
            await wait_for(lambda: failed in agent.health()["failed"], 15.0, "acks failing")
            sent_before = agent.metrics.batches.labels("parquet")._value.get()
            await asyncio.sleep(2.0)
            assert agent.metrics.batches.labels("parquet")._value.get() > sent_before + 2, (
                "live batches still go out while their acknowledgements wait"
            )
            failing["on"] = False
            await wait_for(lambda: agent.health()["ok"], 15.0, "healthy again")
            await wait_for(lambda: agent.spool.size()[0] == 0, 15.0, "spool emptied")
        served = list(plc.served_sequence)
    sent = agent.metrics.batches.labels("parquet")._value.get()
    assert agent.batches_written == sent, "every batch sent once, each counted delivered"
    assert_stored_once(served, store, state)
