"""The quarantine: poison batches kept on disk with why, counted across restarts, never
overwritten, a full disk reported to the caller."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.store.quarantine import Quarantine
from agent.store.spool import CorruptBatch
from tests.faults.test_spool_integrity import POINTS, flip_blob_byte, spool_with_batches


def test_a_corrupt_spooled_batch_is_kept_with_its_reason_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = spool_with_batches(path, 2)
    first, _ = spool.pending("u")
    flip_blob_byte(path, first.seq, 100)
    with pytest.raises(CorruptBatch) as caught:
        spool.batch(first.seq)
    error = caught.value
    assert error.data is not None
    quarantine = Quarantine(tmp_path / "quarantine")
    kept = quarantine.put(error.batch_id, error.data, error.reason, None, error.points)
    assert kept == tmp_path / "quarantine" / f"{first.batch_id}.parquet"
    assert kept.read_bytes() == error.data
    sidecar = json.loads(kept.with_suffix(".json").read_text())
    assert sidecar["reason"].startswith("CRC mismatch")
    assert (sidecar["uplink"], sidecar["points"]) == (None, POINTS)
    assert sidecar["crc"] == zlib.crc32(error.data)
    assert quarantine.count() == (1, POINTS)
    assert [e["batch_id"] for e in quarantine.entries()] == [first.batch_id]
    spool.remove(first.seq)
    assert len(spool.pending("u")) == 1


def test_counts_survive_a_restart_and_nothing_is_overwritten(tmp_path: Path) -> None:
    directory = tmp_path / "quarantine"
    valid = pq_bytes(tmp_path)
    first = Quarantine(directory)
    a = first.put("b1", valid, "rejected: schema", "mqtt", 7)
    b = first.put("b1", b"\x00garbage", "does not decode", "http", 7)
    c = first.put("b1", valid, "rejected: schema", "http", 7)
    assert [a.name, b.name, c.name] == ["b1.parquet", "b1-2.bin", "b1-3.parquet"]
    assert a.read_bytes() == valid, "the first is not overwritten"
    again = Quarantine(directory)
    assert again.count() == (3, 21)
    entries = again.entries(newest=2)
    assert [e["file"] for e in entries] == ["b1-3.parquet", "b1-2.bin"]
    assert entries[1]["uplink"] == "http"


def test_an_unreadable_sidecar_still_counts_as_a_batch(tmp_path: Path) -> None:
    directory = tmp_path / "quarantine"
    Quarantine(directory).put("b1", b"x", "r", None, 5)
    (directory / "b2.json").write_text("{not json")
    assert Quarantine(directory).count() == (2, 5)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB filesystem (tmpfs), where the test may mount one (root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_raises_leaves_no_half_entry_and_passes(small_disk: Path) -> None:
    quarantine = Quarantine(small_disk / "quarantine")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 15 * 4096)  # one 4 KiB page left: the bytes fit, the sidecar not
    with pytest.raises(OSError, match="No space left") as caught:
        quarantine.put("b1", b"\1" * 4000, "r", None, 3)
    assert caught.value.errno == errno.ENOSPC
    assert list((small_disk / "quarantine").iterdir()) == [], "no bytes without a sidecar"
    assert quarantine.count() == (0, 0)
    filler.unlink()  # space freed: the same put goes through
    assert quarantine.put("b1", b"\1" * 4000, "r", None, 3).name == "b1.bin"
    assert Quarantine(small_disk / "quarantine").count() == (1, 3)


def test_a_full_disk_at_the_write_layer_raises_and_leaves_no_half_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, ENOSPC injected at the sidecar's fsync, for where no tmpfs can be mounted."""
    quarantine = Quarantine(tmp_path / "quarantine")
    real_fsync = os.fsync
    calls = 0

    def fsync(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the sidecar's
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left"):
        quarantine.put("b1", b"data", "r", None, 3)
    monkeypatch.undo()
    assert list((tmp_path / "quarantine").iterdir()) == []
    assert quarantine.count() == (0, 0)
    assert quarantine.put("b1", b"data", "r", None, 3).name == "b1.bin", "the name is free"


def pq_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    return path.read_bytes()
