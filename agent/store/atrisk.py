"""Frames the frame log could not take, and the ledger that keeps their loss countable.

While storage fails (disk full, I/O error, a read-only remount), acquisition goes on: a
frame whose write failed still reaches the batcher, and is kept here in memory, with the
frame id it would have had, to be written as soon as a write succeeds again. A batch
commit that holds its samples makes that unnecessary. Until one or the other happens its
samples are at risk: a kill would lose them, and then nothing could say so, since nothing
could be written when they were acquired.

So their number is kept in a ledger: a small file made once at start (its blocks
allocated then) and from then on only overwritten in place, which needs no free space.
A start that finds a non-zero count there counts exactly those samples lost (reason
``storage``). A count the spool could not yet record as a loss (the disk was still full
at that start) is carried in the same ledger until it can.

A start on a full disk has a second problem: SQLite cannot even open the spool without a
little space for its write-ahead log and index. A reserve file, allocated while space is
plentiful, is given back for that (:class:`SpaceReserve`) and made again later.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

log = structlog.get_logger()

_RECORD = struct.Struct("<8sqI")  # magic, points, CRC-32 of the first two
_MAGIC = b"EAATRISK"
_SIZE = 4096


@dataclass(slots=True)
class UnloggedFrame:
    frame_id: int
    source: int
    max_time: int
    times: np.ndarray
    payload: bytes

    def at_risk(self, last_frame: int, closed_until: int | None) -> int:
        """Samples of this frame no committed batch holds yet (see Spool.recover: rows
        of a frame at or below ``last_frame`` before ``closed_until`` went out)."""
        if closed_until is None or self.frame_id > last_frame:
            return int(self.times.shape[0])
        return int(np.count_nonzero(self.times >= closed_until))


class AtRiskLedger:
    """One number on disk, overwritten in place: samples a kill now would lose."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._written: int | None = None
        self.found = 0  # what the last run left: samples lost, not yet recorded
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            self.found = _decode(os.pread(self._fd, _RECORD.size, 0))
            if os.fstat(self._fd).st_size < _SIZE:
                os.posix_fallocate(self._fd, 0, _SIZE)
                os.fsync(self._fd)
            self._written = self.found
        except OSError as exc:
            log.error(
                "at-risk ledger unavailable: a kill while storage fails would lose samples "
                "uncounted",
                path=str(path),
                error=str(exc),
            )
            self.close()

    def read(self) -> int:
        """The count on disk now (another process's ledger, for a test or a bench)."""
        if self._fd is None:
            return 0
        return _decode(os.pread(self._fd, _RECORD.size, 0))

    def write(self, points: int) -> None:
        """Record the count; only writes when it changed, and never raises (the
        ledger helps accounting, it must not stop acquisition)."""
        if self._fd is None or points == self._written:
            return
        head = _MAGIC + points.to_bytes(8, "little", signed=True)
        try:
            os.pwrite(self._fd, _RECORD.pack(_MAGIC, points, zlib.crc32(head)), 0)
            self._written = points
        except OSError as exc:
            log.warning("at-risk ledger not updated", error=str(exc), points=points)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _decode(data: bytes) -> int:
    """The count of a ledger record; 0 for none, or one that fails its check."""
    if len(data) != _RECORD.size:
        return 0
    magic, points, crc = _RECORD.unpack(data)
    if magic != _MAGIC or crc != zlib.crc32(data[:16]) or points < 0:
        return 0
    return int(points)


class SpaceReserve:
    """A file holding ``size`` allocated bytes, deleted to give them back when they are
    needed, and made again (when space allows) afterwards."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    def ensure(self) -> None:
        """Make the reserve if it is missing; quietly not, if there is no room for it."""
        if self.path.exists():
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, self.size)
        except OSError:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            return
        os.close(fd)

    def release(self) -> bool:
        """Give the space back; True if there was a reserve to give."""
        try:
            self.path.unlink()
        except OSError:
            return False
        log.warning("disk full: the spool's reserve space released", path=str(self.path))
        return True
