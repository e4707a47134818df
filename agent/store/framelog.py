"""The frame log: every acquired frame, appended with one ``write()`` before the batcher
sees it, so a killed process loses at most the poll in flight.

Why a log of plain files and not rows of the spool's SQLite database: a frame is written
once, read only after a crash, and dropped a few seconds later, wholesale, once the batch
holding its samples is committed. A committed SQLite insert per poll cost about 2.5 times
a ``write()`` of the same bytes, and deleting the rows again cost as much once more: at
1,000 Modbus tags every 100 ms that was about 4 % of the agent's CPU.

On-disk format: a directory of segment files ``<first frame id, 20 digits>.log``. A
segment is a sequence of records, each a 28-byte little-endian header, ``<IIqiq``:

- payload length (bytes),
- CRC-32 of the rest of the header and the payload,
- frame id (ascending across segments and restarts),
- source index,
- the frame's latest sample time (int64 ns),

then the payload, a frame in :func:`agent.store.spool.frame_parts` form. A new segment starts
after every batch commit (:meth:`FrameLog.rotate`); a segment is deleted once every frame
in it is retired (:meth:`FrameLog.retire`).

A torn record (a kill in the middle of a ``write()``, a power cut before the page cache
reached the disk) fails its length or CRC check: the segment is cut there when the log is
opened, and the records before it are kept. It is not counted as lost: it is the poll in
flight, which nobody had been told was stored.

Damage in the middle of a segment (bad sectors, a stray write) is different: valid
records follow it. Reading resynchronises on the next offset where a header's frame id,
source and length are plausible and its CRC checks (the candidates found with one numpy
pass over the bytes, not a Python loop per byte), so only the damaged records are lost.
They are counted exactly, by frame id: ids are consecutive within a segment and the first
is in its name. Their samples are counted where a damaged record's own header and
payload header still read; the rest are records of unknown size, and bytes.

On open, a segment with damage in its middle is rewritten without it (a temporary file,
fsync, rename, fsync of the directory): the damage is then counted once, on the open that
found it, not again on every later open while the segment waits to be retired, and
later reads need no scan. Appends never scan: the cost is paid only on open.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from agent.store.durable import replace_durably

log = structlog.get_logger()

_HEADER = struct.Struct("<IIqiq")
_CHECKED = struct.Struct("<qiq")  # the header fields the CRC covers, before the payload
_MAX_SOURCE = 1 << 16  # a plausible source index, for spotting a header in damaged bytes
_SCAN_WINDOW = 1 << 20  # bytes searched at a time for the next header after damage


@dataclass(slots=True)
class Damage:
    """What opening the log found wrong (see the module docstring)."""

    records: int = 0  # damaged records in the middle of a segment: lost
    points: int = 0  # their samples, where their headers could be read
    unknown_size_records: int = 0  # of ``records``, those whose sample count is unknown
    bytes: int = 0  # bytes of damage skipped in the middle of segments
    torn_records: int = 0  # torn tails cut off (not counted as lost)

    def __bool__(self) -> bool:
        return bool(self.records or self.bytes or self.torn_records)

    def add(self, other: Damage) -> None:
        self.records += other.records
        self.points += other.points
        self.unknown_size_records += other.unknown_size_records
        self.bytes += other.bytes
        self.torn_records += other.torn_records


@dataclass(slots=True)
class _Scan:
    """One segment's records (offset, end) and the damage between them."""

    records: list[tuple[int, int]] = field(default_factory=list)
    damage: Damage = field(default_factory=Damage)
    torn_at: int | None = None  # where a torn tail starts


@dataclass(slots=True)
class _Segment:
    path: Path
    last_id: int
    max_time: int


@dataclass(frozen=True, slots=True)
class LoggedFrame:
    frame_id: int
    source: int
    max_time: int
    payload: bytes


class FrameLog:
    """Append-only segments of frames (see the module docstring). ``rows`` tells the
    sample count of a payload, or None if it cannot: for counting damaged records."""

    def __init__(
        self, directory: Path, rows: Callable[[bytes], int | None] = lambda _: None
    ) -> None:
        self.directory = directory
        self._rows = rows
        directory.mkdir(parents=True, exist_ok=True)
        self._segments: list[_Segment] = []
        self.damage = Damage()
        for stale in directory.glob("*.log.tmp"):  # a repair cut short: its .log is whole
            stale.unlink()
        for path in sorted(directory.glob("*.log")):
            records = self._open_segment(path)
            if records:
                last = records[-1].frame_id
                self._segments.append(_Segment(path, last, max(r.max_time for r in records)))
            else:
                path.unlink()
        if self.damage:
            (log.error if self.damage.records or self.damage.bytes else log.warning)(
                "frame log damaged: valid records kept, damaged ones skipped and counted, "
                "torn tails cut off",
                corrupt_records=self.damage.records,
                corrupt_points=self.damage.points,
                corrupt_records_of_unknown_size=self.damage.unknown_size_records,
                corrupt_bytes=self.damage.bytes,
                torn_records=self.damage.torn_records,
                directory=str(directory),
            )
        self.next_id = self._segments[-1].last_id + 1 if self._segments else 1
        self._fd: int | None = None
        self._size = 0  # bytes of whole records in the open segment

    @property
    def torn_records(self) -> int:
        return self.damage.torn_records

    def start_after(self, frame_id: int) -> None:
        """Never hand out an id at or below ``frame_id`` (one a committed batch names),
        even when every segment that held it is gone."""
        self.next_id = max(self.next_id, frame_id + 1)

    def append(
        self,
        source: int,
        max_time: int,
        payload: Sequence[bytes | memoryview],
        frame_id: int | None = None,
    ) -> int:
        """Write one frame, given as the buffers its payload is made of (gathered by
        ``writev``, not joined first: a 1,000-tag poll is 22 kB); ``frame_id`` re-writes
        a frame an earlier failed write had reserved its id for (:meth:`reserve_id`).

        A failed write (disk full, I/O error) raises ``OSError`` and leaves the segment
        as it was: what part of the record reached the file is cut off again, so the
        next record does not follow a torn one; a segment that cannot even be cut is
        closed and the next record starts a new one.
        """
        if frame_id is None:
            frame_id = self.reserve_id()
        crc = zlib.crc32(_CHECKED.pack(frame_id, source, max_time))
        size = 0
        for part in payload:
            crc = zlib.crc32(part, crc)
            size += len(part) if isinstance(part, bytes) else part.nbytes
        record = [_HEADER.pack(size, crc, frame_id, source, max_time), *payload]
        if self._fd is None:
            path = self.directory / f"{frame_id:020d}.log"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._size = 0
            self._segments.append(_Segment(path, frame_id, max_time))
        try:
            written = os.writev(self._fd, record)
            if written < _HEADER.size + size:  # a short write: finish it, or the log is torn
                rest = b"".join(record)[written:]
                while rest:
                    rest = rest[os.write(self._fd, rest) :]
        except OSError:
            self._cut_back()
            raise
        self._size += _HEADER.size + size
        segment = self._segments[-1]
        segment.last_id = max(segment.last_id, frame_id)
        segment.max_time = max(segment.max_time, max_time)
        return frame_id

    @property
    def first_id(self) -> int:
        """The oldest frame id the log still holds (the next one if it holds none)."""
        for segment in self._segments:
            first = _first_id(segment.path)
            if first is not None:
                return first
        return self.next_id

    def reserve_id(self) -> int:
        """The next frame id, taken: frame ids stay in acquisition order even for a frame
        whose write failed and that is written later."""
        frame_id = self.next_id
        self.next_id = frame_id + 1
        return frame_id

    def _cut_back(self) -> None:
        """After a failed write: truncate the open segment to its last whole record."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self.rotate()  # leave the torn tail to the CRC check at the next open

    def rotate(self) -> None:
        """Later frames go to a new segment, so that this one can be retired whole."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def retire(self, last_frame: int, closed_until: int) -> None:
        """Delete the closed segments whose every frame is at or below ``last_frame`` and
        ended before ``closed_until``: a committed batch holds all their samples."""
        open_segment = self._segments[-1] if self._fd is not None else None
        kept = []
        for segment in self._segments:
            done = segment.last_id <= last_frame and segment.max_time < closed_until
            if done and segment is not open_segment:
                try:
                    segment.path.unlink(missing_ok=True)
                    continue
                except OSError:  # a read-only or failing disk: retired at a later commit
                    pass
            kept.append(segment)
        self._segments = kept

    def frames(self) -> Iterator[LoggedFrame]:
        """Every frame still in the log, oldest first."""
        for segment in list(self._segments):
            yield from self._read(segment.path)

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    def close(self) -> None:
        self.rotate()

    def _read(self, path: Path) -> Iterator[LoggedFrame]:
        data = path.read_bytes()
        for offset, end in _scan(data, _first_id(path), self._rows).records:
            yield _logged(data, offset, end)

    def _open_segment(self, path: Path) -> list[LoggedFrame]:
        """A segment's valid records; its damage counted, and repaired on disk: a torn
        tail cut off, damage in the middle rewritten away (see the module docstring)."""
        data = path.read_bytes()
        scan = _scan(data, _first_id(path), self._rows)
        self.damage.add(scan.damage)
        try:
            if scan.damage.bytes:
                replace_durably(path, [data[offset:end] for offset, end in scan.records])
            elif scan.torn_at is not None:
                with path.open("r+b") as file:
                    file.truncate(scan.torn_at)
        except OSError as exc:  # reads skip the damage anyway; the next open counts it again
            log.error(
                "frame log: a damaged segment cannot be repaired", segment=str(path), error=str(exc)
            )
        return [_logged(data, offset, end) for offset, end in scan.records]


def _logged(data: bytes, offset: int, end: int) -> LoggedFrame:
    _, _, frame_id, source, max_time = _HEADER.unpack_from(data, offset)
    return LoggedFrame(frame_id, source, max_time, data[offset + _HEADER.size : end])


def _first_id(path: Path) -> int | None:
    """The first frame id of a segment, from its name (None if it is not a number)."""
    return int(path.stem) if path.stem.isdigit() else None


def _valid_end(data: bytes, offset: int) -> int | None:
    """The end of the record at ``offset`` if its length fits and its CRC checks."""
    if offset + _HEADER.size > len(data):
        return None
    size, crc, *_ = _HEADER.unpack_from(data, offset)
    start = offset + _HEADER.size
    end = start + size
    if end > len(data):
        return None
    checked = zlib.crc32(memoryview(data)[offset + 8 : start])
    return end if zlib.crc32(memoryview(data)[start:end], checked) == crc else None


def _scan(data: bytes, first_id: int | None, rows: Callable[[bytes], int | None]) -> _Scan:
    """Walk a segment's records, resynchronising after damage (see the module docstring)."""
    scan = _Scan()
    offset, last_id = 0, None if first_id is None else first_id - 1
    while offset < len(data):
        end = _valid_end(data, offset)
        if end is not None:
            scan.records.append((offset, end))
            last_id = _HEADER.unpack_from(data, offset)[2]
            offset = end
            continue
        found = _next_record(data, offset + 1, last_id)
        if found is None:  # nothing valid after it: a torn tail
            scan.torn_at = offset
            scan.damage.torn_records += 1
            break
        next_id = _HEADER.unpack_from(data, found)[2]
        _count_damage(data, offset, found, last_id, next_id, rows, scan.damage)
        offset = found
    return scan


def _next_record(data: bytes, start: int, last_id: int | None) -> int | None:
    """The first offset at or after ``start`` where a valid record begins. Candidates are
    offsets whose header is plausible (length within the file, a small source index, a
    frame id above the last valid one and below what the damaged bytes could hold),
    found by reading the header fields at every offset at once as strided numpy views;
    only those are CRC-checked."""
    for window in range(start, len(data) - _HEADER.size + 1, _SCAN_WINDOW):
        count = min(_SCAN_WINDOW, len(data) - _HEADER.size + 1 - window)
        offsets = np.arange(window, window + count)
        source = _column(data, window + 16, count, "<i4")
        ids = _column(data, window + 8, count, "<i8")
        plausible = _column(data, window, count, "<u4") <= len(data) - _HEADER.size - offsets
        plausible &= (source >= 0) & (source < _MAX_SOURCE) & (ids > (last_id or 0))
        if last_id is not None:  # records fill at least a header each
            plausible &= ids <= last_id + 1 + (offsets - start + 1) // _HEADER.size
        for candidate in np.flatnonzero(plausible):
            offset = window + int(candidate)
            if _valid_end(data, offset) is not None:
                return offset
    return None


def _column(data: bytes, at: int, count: int, dtype: str) -> np.ndarray:
    """The ``dtype`` value starting at each of ``count`` consecutive byte offsets."""
    return np.ndarray((count,), dtype, data, at, (1,))


def _count_damage(
    data: bytes,
    start: int,
    stop: int,
    last_id: int | None,
    next_id: int,
    rows: Callable[[bytes], int | None],
    damage: Damage,
) -> None:
    """Count the records lost in ``data[start:stop]``: by frame id where the id before it
    is known; the samples of those whose own header and payload header still read."""
    damage.bytes += stop - start
    offset, expected, known, points = start, None if last_id is None else last_id + 1, 0, 0
    while offset + _HEADER.size <= stop:  # walk the records whose headers survived
        size, _, frame_id, _, _ = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + size
        if frame_id != expected or end > stop:
            break
        count = rows(data[offset + _HEADER.size : end])
        if count is None:
            break
        known, points, offset = known + 1, points + count, end
        expected = frame_id + 1
    lost = next_id - last_id - 1 if last_id is not None else known + 1
    lost = max(lost, known)
    damage.records += lost
    damage.points += points
    damage.unknown_size_records += lost - known
