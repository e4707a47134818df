"""A damaged spool database at start: the agent's Spool opens, keeps what is valid, says
what happened, and counts what it lost in points (and persists that count)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path

import pyarrow as pa
import pytest

from agent.store.salvage import SizeLog, wal_database_pages
from agent.store.spool import Spool, SpoolInUse
from simulators.modbus_plc import POINTS as MODBUS_POINTS
from simulators.modbus_plc import ModbusPLCSimulator
from tests.conftest import agent_toml, read_store, run_agent
from tests.faults.test_spool_integrity import POINTS, spool_with_batches

BATCHES = 80  # at about 1 kB a batch (issue 17), enough that they fill most of the file


def batch_ids(spool: Spool) -> list[str]:
    return [p.batch_id for p in spool.pending("u", limit=1000)]


def damaged_then_reopened(path: Path, damage: bytes | None, at: int | None) -> Spool:
    """The closed spool at ``path`` with ``damage`` written over it at ``at`` (the whole
    file when ``at`` is None; the file cut to ``at`` bytes when ``damage`` is None),
    opened again."""
    raw = bytearray(path.read_bytes())
    if damage is None:
        raw = raw[:at]
    elif at is None:
        raw = bytearray(damage)
    else:
        raw[at : at + len(damage)] = damage
    path.write_bytes(bytes(raw))
    return Spool(path, ["u"])


def assert_accounted(spool: Spool) -> None:
    """Every batch is kept or counted lost; lost points exact where their size is known."""
    losses = spool.recovery_losses
    kept = len(batch_ids(spool))
    assert kept + losses["spool_corrupt_batches"] == BATCHES
    known = losses["spool_corrupt_batches"] - losses["spool_unknown_size_batches"]
    assert losses["spool_corrupt_points"] == POINTS * known
    assert spool.losses().get("spool_corrupt", (0, 0)) == (
        losses["spool_corrupt_batches"],
        losses["spool_corrupt_points"],
    ), "persisted"
    assert spool.db.execute("PRAGMA quick_check").fetchone()[0] == "ok"


def test_a_half_truncated_spool_keeps_the_first_half_and_counts_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spool.sqlite"
    spool_with_batches(path, BATCHES).close()
    size = path.stat().st_size
    spool = damaged_then_reopened(path, None, size // 2)
    assert spool.salvaged is not None
    assert 0 < len(batch_ids(spool)) < BATCHES
    assert spool.recovery_losses["spool_corrupt_batches"] > 0
    assert spool.recovery_losses["spool_end_unreadable"] == 0, "the batch_id index knew them"
    assert spool.recovery_losses["spool_unknown_size_batches"] == 0, "the size log knew them"
    assert_accounted(spool)
    out = capsys.readouterr().out
    assert out.count("spool damaged") == 1, "one log line"
    assert f"is truncated: {size // 2} bytes of the {size} its header names" in out
    assert "batches_lost=" in out


def test_64_garbage_bytes_in_the_middle_lose_only_the_batches_they_hit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spool.sqlite"
    spool_with_batches(path, BATCHES).close()
    size = path.stat().st_size
    smallest = sqlite3.connect(path).execute("SELECT min(bytes) FROM batches").fetchone()[0]
    spool = damaged_then_reopened(path, b"\xa5" * 64, size // 2)
    kept = len(batch_ids(spool))
    # at most the batches of the page they hit (one ~3 kB batch a page before issue 17,
    # four of ~1 kB now), and a neighbour's cell that spills into it
    hit = max(3, 4096 // smallest + 1)
    assert 0 < spool.recovery_losses["spool_corrupt_batches"] <= hit
    assert kept >= BATCHES - hit
    assert_accounted(spool)
    assert "is damaged: database disk image is malformed" in capsys.readouterr().out


def test_a_file_that_is_not_sqlite_is_moved_aside_and_a_new_spool_started(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spool.sqlite"
    spool_with_batches(path, BATCHES).close()
    spool = damaged_then_reopened(path, b"not a database at all\n" * 200, None)
    assert batch_ids(spool) == []
    assert spool.recovery_losses["spool_end_unreadable"] == 1, "nothing can be counted"
    assert spool.recovery_losses["spool_corrupt_batches"] == 0
    assert "is not an SQLite database (overwritten?)" in capsys.readouterr().out
    assert list(tmp_path.glob("spool.sqlite.damaged-*")), "kept aside"
    assert spool.db.execute("PRAGMA quick_check").fetchone()[0] == "ok"


def test_a_flipped_blob_in_a_damaged_spool_is_counted_with_its_points(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = spool_with_batches(path, BATCHES)
    seq = spool.pending("u")[0].seq
    data = bytearray(spool.data(seq))
    data[len(data) // 2] ^= 1
    spool.db.execute("UPDATE batches SET data = ? WHERE seq = ?", (bytes(data), seq))
    spool.close()
    raw = bytearray(path.read_bytes())
    raw[-4096:] = b"\xff" * 4096  # and a bad last page, so that the file is salvaged
    path.write_bytes(bytes(raw))
    reopened = Spool(path, ["u"])
    assert reopened.salvaged is not None
    assert reopened.salvaged.lost_batches >= 1
    assert reopened.salvaged.unknown_size_batches < reopened.salvaged.lost_batches
    assert_accounted(reopened)
    kept = {p.seq for p in reopened.pending("u", limit=1000)}
    assert seq not in kept, "the rotten batch is not carried over"
    for kept_seq in kept:
        row = reopened.db.execute("SELECT data, crc FROM batches WHERE seq = ?", (kept_seq,))
        blob, crc = row.fetchone()
        assert zlib.crc32(blob) == crc


KILLED = """
import os, sys
from pathlib import Path
from tests.faults.test_spool_integrity import spool_with_batches
spool_with_batches(Path(sys.argv[1]), int(sys.argv[2]))
os._exit(0)  # killed: no close, no checkpoint; the batches are in the write-ahead log
"""


def killed_spool(path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", KILLED, str(path), str(BATCHES)], cwd=root, check=True)
    assert Path(f"{path}-wal").stat().st_size > 0


def test_a_zero_length_spool_beside_its_log_is_recovered_from_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spool.sqlite"
    killed_spool(path)
    assert wal_database_pages(Path(f"{path}-wal")) > 0
    path.write_bytes(b"")
    spool = Spool(path, ["u"])
    assert spool.salvaged is not None
    assert len(batch_ids(spool)) == BATCHES, "SQLite alone would have deleted the log"
    assert_accounted(spool)
    out = capsys.readouterr().out
    assert "is empty (0 bytes: truncated) beside a write-ahead log" in out
    assert "locked" not in out


def test_a_zero_length_spool_without_a_log_starts_empty_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spool.sqlite"
    path.write_bytes(b"")
    spool = Spool(path, ["u"])
    assert spool.salvaged is None
    assert batch_ids(spool) == []
    assert "spool database file was empty (0 bytes)" in capsys.readouterr().out


def test_a_spool_another_process_holds_is_not_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What "database is locked" meant: another connection holds the file (here an
    empty one, which SQLite must lock exclusively to turn into a WAL database)."""
    path = tmp_path / "spool.sqlite"
    path.write_bytes(b"")
    holder = sqlite3.connect(path, timeout=0.1)
    holder.execute("BEGIN")
    holder.execute("SELECT count(*) FROM sqlite_master").fetchone()
    spool_files = sorted(os.listdir(tmp_path))
    with pytest.raises(SpoolInUse, match="locked by another process"):
        Spool(path, ["u"])
    assert "empty" not in capsys.readouterr().out
    holder.close()
    left = sorted(name for name in os.listdir(tmp_path) if name != "spool.lock")
    assert left == spool_files, "nothing moved aside"


async def test_an_agent_on_a_truncated_spool_runs_and_sends_what_was_kept(
    tmp_path: Path,
) -> None:
    state = tmp_path / "store-state"
    path = state / "spool.sqlite"
    spool_with_batches(path, BATCHES).close()  # uplink "u" is not the agent's: all unsent
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    store = tmp_path / "store"
    async with ModbusPLCSimulator(seed=3) as plc:
        text = agent_toml(store, plc.agent_config("100ms", points=MODBUS_POINTS[:2]), "500ms")
        agent = await run_agent(text, 3.0)
    losses = agent.spool.recovery_losses
    kept = BATCHES - losses["spool_corrupt_batches"]
    assert 0 < kept < BATCHES
    table = read_store(store)
    sources = table["source"].cast(pa.string()).to_pylist()
    assert sources.count("dev") == kept * POINTS, "the kept batches went out"
    assert sources.count("plc1") == agent.runners[0].points, "and acquisition ran on"


def test_without_its_size_log_a_truncated_spool_reports_the_batches_of_unknown_size(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.sqlite"
    spool_with_batches(path, BATCHES).close()
    path.with_name("spool.sizes").unlink()
    spool = damaged_then_reopened(path, None, path.stat().st_size // 2)
    losses = spool.recovery_losses
    assert losses["spool_unknown_size_batches"] > 0
    assert_accounted(spool)


def test_the_size_log_skips_a_torn_line_and_is_rewritten_short(tmp_path: Path) -> None:
    sizes = SizeLog(tmp_path / "spool.sizes", rewrite_after=3)
    sizes.append([("a", 10), ("b", 20)])
    with sizes.path.open("a") as out:
        out.write("c 3")  # torn: "c 35\n" cut short must not read as 3
    assert SizeLog(sizes.path).read() == {"a": 10, "b": 20}
    with sizes.path.open("a") as out:
        out.write("x\n")  # and a damaged line is skipped
    assert SizeLog(sizes.path).read() == {"a": 10, "b": 20}
    sizes.append([("d", 4)])
    assert sizes.due()
    sizes.rewrite([("d", 4)])
    assert sizes.read() == {"d": 4}
    assert not sizes.due()
