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

then the payload, a frame in :func:`agent.spool.frame_parts` form. A new segment starts
after every batch commit (:meth:`FrameLog.rotate`); a segment is deleted once every frame
in it is retired (:meth:`FrameLog.retire`).

A torn record (a kill in the middle of a ``write()``, a power cut before the page cache
reached the disk) fails its length or CRC check: the segment is cut there when the log is
opened, and the records before it are kept.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger()

_HEADER = struct.Struct("<IIqiq")
_CHECKED = struct.Struct("<qiq")  # the header fields the CRC covers, before the payload


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
    """Append-only segments of frames (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._segments: list[_Segment] = []
        self.torn_records = 0
        for path in sorted(directory.glob("*.log")):
            records = list(self._read(path, repair=True))
            if records:
                last = records[-1].frame_id
                self._segments.append(_Segment(path, last, max(r.max_time for r in records)))
            else:
                path.unlink()
        self.next_id = self._segments[-1].last_id + 1 if self._segments else 1
        self._fd: int | None = None

    def start_after(self, frame_id: int) -> None:
        """Never hand out an id at or below ``frame_id`` (one a committed batch names),
        even when every segment that held it is gone."""
        self.next_id = max(self.next_id, frame_id + 1)

    def append(self, source: int, max_time: int, payload: Sequence[bytes | memoryview]) -> int:
        """Write one frame, given as the buffers its payload is made of (gathered by
        ``writev``, not joined first: a 1,000-tag poll is 22 kB)."""
        frame_id = self.next_id
        crc = zlib.crc32(_CHECKED.pack(frame_id, source, max_time))
        size = 0
        for part in payload:
            crc = zlib.crc32(part, crc)
            size += len(part) if isinstance(part, bytes) else part.nbytes
        record = [_HEADER.pack(size, crc, frame_id, source, max_time), *payload]
        if self._fd is None:
            path = self.directory / f"{frame_id:020d}.log"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._segments.append(_Segment(path, frame_id, max_time))
        written = os.writev(self._fd, record)
        if written < _HEADER.size + size:  # a short write: finish it, or the log is torn here
            rest = b"".join(record)[written:]
            while rest:
                rest = rest[os.write(self._fd, rest) :]
        segment = self._segments[-1]
        segment.last_id = frame_id
        segment.max_time = max(segment.max_time, max_time)
        self.next_id = frame_id + 1
        return frame_id

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
                segment.path.unlink(missing_ok=True)
            else:
                kept.append(segment)
        self._segments = kept

    def frames(self) -> Iterator[LoggedFrame]:
        """Every frame still in the log, oldest first."""
        for segment in list(self._segments):
            yield from self._read(segment.path, repair=False)

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    def close(self) -> None:
        self.rotate()

    def _read(self, path: Path, repair: bool) -> Iterator[LoggedFrame]:
        data = path.read_bytes()
        offset = 0
        while offset + _HEADER.size <= len(data):
            size, crc, frame_id, source, max_time = _HEADER.unpack_from(data, offset)
            start, end = offset + _HEADER.size, offset + _HEADER.size + size
            payload = data[start:end]
            checked = data[offset + 8 : start]
            if end > len(data) or zlib.crc32(payload, zlib.crc32(checked)) != crc:
                break
            yield LoggedFrame(frame_id, source, max_time, payload)
            offset = end
        if offset < len(data) and repair:
            self.torn_records += 1
            log.warning(
                "frame log: a torn record cut off, the frames before it kept",
                segment=str(path),
                kept_bytes=offset,
                cut_bytes=len(data) - offset,
            )
            with path.open("r+b") as file:
                file.truncate(offset)
