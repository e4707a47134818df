"""Checksums of spooled batches and of frame-log records: damage is found, never sent on,
and in the frame log costs only the damaged records, counted."""

from __future__ import annotations

import sqlite3
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.acquisition.frame import Frame
from agent.store.framelog import FrameLog
from agent.store.spool import CorruptBatch, Spool, frame_parts, frame_rows
from agent.windows.batch import Batcher, TagTable
from protocols._template.driver import TemplateSourceConfig

S = 1_000_000_000
MS = 1_000_000
T0 = 1_795_000_000 * S
POINTS = 10  # one frame of 10 samples, 100 ms apart: one 1 s window


def frame(start_ms: int, n: int = 4) -> Frame:
    times = T0 + (start_ms + np.arange(n) * 100) * MS
    return Frame(
        (np.arange(n) % 2).astype(np.int32),
        times.astype(np.int64),
        np.arange(n, dtype=np.float64),
        np.zeros(n, np.uint16),
        int(times[-1]),
    )


def spool_with_batches(path: Path, count: int) -> Spool:
    """A spool holding ``count`` batches of POINTS points each, one per second."""
    tags = TagTable([TemplateSourceConfig(name="dev", tags=[{"name": "a"}, {"name": "b"}])])
    spool = Spool(path, ["u"])
    batcher = Batcher(tags, S, 0, "gw", "cfg")
    for start in range(0, count * 1000, 1000):
        batcher.add(0, frame(start, POINTS))
    batches = batcher.close_due(T0 + count * S)
    assert batcher.closed_until is not None
    spool.commit_batches(batches, batcher.closed_until)
    return spool


def flip_blob_byte(path: Path, seq: int, at: int) -> None:
    """Flip one byte of a stored batch in place, keeping its length (bit rot)."""
    db = sqlite3.connect(path)
    (data,) = db.execute("SELECT data FROM batches WHERE seq = ?", (seq,)).fetchone()
    damaged = bytearray(data)
    damaged[at] ^= 0x01
    db.execute("UPDATE batches SET data = ? WHERE seq = ?", (bytes(damaged), seq))
    db.commit()
    db.close()


def test_every_batch_is_stored_with_the_crc_of_its_bytes(tmp_path: Path) -> None:
    spool = spool_with_batches(tmp_path / "spool.sqlite", 3)
    rows = spool.db.execute("SELECT data, crc FROM batches").fetchall()
    assert len(rows) == 3
    assert all(crc == zlib.crc32(data) for data, crc in rows)


def test_a_flipped_byte_makes_that_batch_corrupt_and_only_that_one(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = spool_with_batches(path, 3)
    first, second, third = spool.pending("u")
    original = spool.data(second.seq)
    flip_blob_byte(path, second.seq, len(original) // 2)
    assert spool.db.execute("PRAGMA quick_check").fetchone()[0] == "ok", "SQLite cannot see it"
    with pytest.raises(CorruptBatch) as caught:
        spool.batch(second.seq)
    error = caught.value
    assert (error.seq, error.batch_id, error.points) == (second.seq, second.batch_id, POINTS)
    assert error.reason.startswith("CRC mismatch")
    assert error.data is not None
    assert len(error.data) == len(original)
    assert error.data != original
    with pytest.raises(CorruptBatch):
        spool.data(second.seq)
    assert [spool.batch(p.seq).batch_id for p in (first, third)] == [
        first.batch_id,
        third.batch_id,
    ]
    assert spool.batch(first.seq).points == POINTS


def test_bytes_with_a_good_crc_that_do_not_decode_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = spool_with_batches(path, 2)
    first, second = spool.pending("u")
    junk = b"PAR1" + bytes(range(200)) + b"PAR1"
    spool.db.execute(
        "UPDATE batches SET data = ?, crc = ? WHERE seq = ?", (junk, zlib.crc32(junk), first.seq)
    )
    with pytest.raises(CorruptBatch, match="does not decode") as caught:
        spool.batch(first.seq)
    assert caught.value.data == junk
    # another batch's valid bytes under this batch's row: the identity gives it away
    other = spool.data(second.seq)
    spool.db.execute(
        "UPDATE batches SET data = ?, crc = ? WHERE seq = ?",
        (other, zlib.crc32(other), first.seq),
    )
    with pytest.raises(CorruptBatch, match=f"decodes as {second.batch_id}"):
        spool.batch(first.seq)


def test_a_spool_of_the_previous_version_opens_and_its_rows_stay_unverified(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.sqlite"
    spool = spool_with_batches(path, 2)
    first, _ = spool.pending("u")
    spool.close()
    old = sqlite3.connect(path)  # the old schema: batches without the crc column
    old.executescript(
        "CREATE TABLE b2 AS SELECT seq, batch_id, window_start, points, bytes, created_ns, data "
        "FROM batches; DROP TABLE batches; "
        "CREATE TABLE batches (seq INTEGER PRIMARY KEY, batch_id TEXT UNIQUE NOT NULL, "
        "window_start INTEGER NOT NULL, points INTEGER NOT NULL, bytes INTEGER NOT NULL, "
        "created_ns INTEGER NOT NULL, data BLOB); INSERT INTO batches SELECT * FROM b2; "
        "DROP TABLE b2;"
    )
    old.close()
    reopened = Spool(path, ["u"])
    assert reopened.salvaged is None
    assert reopened.db.execute("SELECT count(*) FROM batches WHERE crc IS NULL").fetchone() == (2,)
    assert reopened.batch(first.seq).batch_id == first.batch_id


def test_remove_takes_a_batch_out_for_every_uplink(tmp_path: Path) -> None:
    spool = spool_with_batches(tmp_path / "spool.sqlite", 2)
    spool.uplinks = ["u", "v"]
    first, second = spool.pending("u")
    assert not spool.acknowledge("u", first.seq)
    spool.remove(first.seq)
    assert [p.seq for p in spool.pending("v")] == [second.seq]
    assert spool.db.execute("SELECT count(*) FROM delivered").fetchone() == (0,)
    with pytest.raises(KeyError):
        spool.batch(first.seq)


# -- the frame log -------------------------------------------------------------------------


def logged(tmp_path: Path, count: int) -> tuple[Path, list[tuple[int, int]]]:
    """A frame log of ``count`` 4-sample frames in one segment: its segment and the byte
    range of each record."""
    log = FrameLog(tmp_path / "frames", frame_rows)
    ranges, offset = [], 0
    for i in range(count):
        parts = frame_parts(frame(i * 400))
        log.append(0, T0 + i, parts)
        end = offset + 28 + sum(memoryview(p).nbytes for p in parts)
        ranges.append((offset, end))
        offset = end
    log.close()
    (segment,) = (tmp_path / "frames").glob("*.log")
    return segment, ranges


def frame_ids(log: FrameLog) -> list[int]:
    return [f.frame_id for f in log.frames()]


def test_garbage_in_the_middle_of_a_segment_costs_only_the_records_it_hits(
    tmp_path: Path,
) -> None:
    segment, ranges = logged(tmp_path, 6)
    data = bytearray(segment.read_bytes())
    hit = ranges[2][1] - 32  # 64 bytes across the end of record 3 and start of record 4
    data[hit : hit + 64] = b"\xa5" * 64
    segment.write_bytes(bytes(data))
    log = FrameLog(tmp_path / "frames", frame_rows)
    assert frame_ids(log) == [1, 2, 5, 6]
    damage = log.damage
    assert damage.records == 2
    assert damage.torn_records == 0
    assert damage.bytes == ranges[3][1] - ranges[2][0], "records 3 and 4 skipped, to the byte"
    # record 3's header and payload header still read (the garbage is in its values):
    # 4 samples; record 4's header is garbage: a record of unknown size
    assert (damage.points, damage.unknown_size_records) == (4, 1)
    # repaired on disk: the next open finds nothing, the records are all there
    again = FrameLog(tmp_path / "frames", frame_rows)
    assert not again.damage
    assert frame_ids(again) == [1, 2, 5, 6]


def test_a_damaged_record_whose_header_reads_is_counted_in_samples(tmp_path: Path) -> None:
    segment, ranges = logged(tmp_path, 3)
    data = bytearray(segment.read_bytes())
    data[ranges[1][1] - 3] ^= 0xFF  # a flipped bit in record 2's values, not its header
    segment.write_bytes(bytes(data))
    log = FrameLog(tmp_path / "frames", frame_rows)
    assert frame_ids(log) == [1, 3]
    assert (log.damage.records, log.damage.points, log.damage.unknown_size_records) == (1, 4, 0)


def test_damage_to_the_first_record_is_counted_from_the_segment_name(tmp_path: Path) -> None:
    segment, _ = logged(tmp_path, 3)
    data = bytearray(segment.read_bytes())
    data[5] ^= 0xFF  # record 1's CRC field
    segment.write_bytes(bytes(data))
    log = FrameLog(tmp_path / "frames", frame_rows)
    assert frame_ids(log) == [2, 3]
    assert (log.damage.records, log.damage.points) == (1, 4)


def test_a_torn_tail_is_cut_and_not_counted_as_lost(tmp_path: Path) -> None:
    segment, ranges = logged(tmp_path, 3)
    segment.write_bytes(segment.read_bytes()[: ranges[2][1] - 10])
    log = FrameLog(tmp_path / "frames", frame_rows)
    assert frame_ids(log) == [1, 2]
    assert (log.damage.torn_records, log.damage.records, log.damage.points) == (1, 0, 0)
    assert segment.stat().st_size == ranges[1][1]


def test_the_spool_reports_frame_log_damage_once_and_persists_it(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, ["u"])
    for start in range(0, 2000, 400):
        spool.append_frame(0, frame(start))
    spool.close()
    (segment,) = (tmp_path / "spool.frames").glob("*.log")
    data = bytearray(segment.read_bytes())
    record = len(data) // 5  # five records of one size
    data[3 * record - 10 : 3 * record - 2] = bytes(8)  # in the third one's values
    segment.write_bytes(bytes(data))
    reopened = Spool(path, ["u"])
    losses = reopened.recovery_losses
    assert losses["frame_log_corrupt_records"] == 1
    assert losses["frame_log_corrupt_points"] == 4
    assert losses["frame_log_unknown_size_records"] == 0
    assert losses["frame_log_corrupt_bytes"] == record
    assert len(reopened.recover().frames) == 4
    reopened.close()
    assert Spool(path, ["u"]).recovery_losses["frame_log_corrupt_records"] == 0
    assert Spool(path, ["u"]).losses()["frame_log_corrupt"][0] == 1, "counted once, kept"


def test_resync_scans_a_large_damaged_segment_quickly(tmp_path: Path) -> None:
    """Ten 1 MB records and a damaged one: the scan is numpy over the bytes, not a
    Python loop per byte (that took seconds)."""
    log = FrameLog(tmp_path / "frames", lambda _: None)
    for i in range(10):
        log.append(0, i, [bytes([i]) * (1 << 20)])
    log.close()
    (segment,) = (tmp_path / "frames").glob("*.log")
    data = bytearray(segment.read_bytes())
    data[40] ^= 0xFF  # the first record's payload
    segment.write_bytes(bytes(data))
    started = time.perf_counter()
    reopened = FrameLog(tmp_path / "frames")
    elapsed = time.perf_counter() - started
    assert frame_ids(reopened) == list(range(2, 11))
    assert elapsed < 2.0, f"{elapsed:.2f} s"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=2, max_size=12),
    garbage=st.lists(
        st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=120), st.booleans()),
        max_size=4,
    ),
    data=st.data(),
)
def test_resync_recovers_every_record_garbage_does_not_touch(
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[int],
    garbage: list[tuple[int, bytes, bool]],
    data: st.DataObject,
) -> None:
    """Random records, random garbage written over them or inserted between them (never
    into the last record, which would make it a torn tail): every record the garbage does
    not touch is read back intact, and exactly the touched ones are counted lost."""
    directory = tmp_path_factory.mktemp("frames")
    log = FrameLog(directory)
    payloads = [data.draw(st.binary(min_size=n, max_size=n)) for n in sizes]
    for i, payload in enumerate(payloads):
        log.append(data.draw(st.integers(0, 7)), i, [payload])
    log.close()
    (segment,) = directory.glob("*.log")
    content = bytearray(segment.read_bytes())
    ranges, offset = [], 0
    for payload in payloads:
        ranges.append([offset, offset + 28 + len(payload)])
        offset = ranges[-1][1]
    touched: set[int] = set()
    last_start = ranges[-1][0]
    for position, junk, insert in sorted(garbage, reverse=True):
        at = position % (last_start + 1 if insert else max(1, last_start - len(junk) + 1))
        if insert:
            content[at:at] = junk
            touched.update(i for i, (a, b) in enumerate(ranges) if a < at < b)
            for r in ranges:
                r[0] += len(junk) * (r[0] >= at)
                r[1] += len(junk) * (r[1] > at)
        else:
            content[at : at + len(junk)] = junk
            touched.update(i for i, (a, b) in enumerate(ranges) if a < at + len(junk) and at < b)
    touched.discard(len(payloads) - 1)
    segment.write_bytes(bytes(content))
    reopened = FrameLog(directory)
    read = {f.frame_id: f.payload for f in reopened.frames()}
    for i, payload in enumerate(payloads):
        if i not in touched:
            assert read.get(i + 1) == payload, f"record {i + 1} untouched, yet lost"
        elif i + 1 in read:  # overwritten with the same bytes by chance
            assert read[i + 1] == payload
    assert reopened.damage.records == len(payloads) - len(read)
    assert reopened.damage.torn_records == 0
