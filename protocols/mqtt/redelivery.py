"""Which QoS 1/2 messages of a persistent session are stored already, so that the broker's
redelivery of them stores nothing twice.

A message is acknowledged only once the frame holding it is in the frame log. A gateway
killed, or cut off, between that write and the broker's receipt of the acknowledgement gets
the message again when its session resumes: re-sent with the DUP flag and its original
packet id (MQTT 3.1.1 and 5, section 4.4). So every stored message's packet id is
remembered with a 64-bit digest of its topic and payload, and a DUP message whose packet
id maps to the same digest is dropped (and acknowledged). A message without DUP is a first
delivery and always kept.

Why both and not either alone: a payload without a timestamp (``21.5``) repeats
legitimately, and the broker reuses a packet id once the message that had it is
acknowledged. Dropping a message wrongly would need the broker to give a stored message's
packet id to a message with the identical topic and payload, and the gateway to die before
storing that one. Packet ids mean something only within one session, so the table is
cleared whenever the broker's CONNACK says it kept no session.

In memory: one uint64 digest per possible packet id (512 KiB), 0 meaning none. On disk,
``<data_dir>/mqtt/<source>.delivered``: records of packet id (uint16) and digest (uint64),
little-endian, appended with one ``write()`` per frame after the frame log has the frame
and before the acknowledgements go out, and rewritten from the table (at most one record
per packet id) once it holds 128 Ki records (1.25 MiB). No fsync: like the frame log's
append, it survives a killed process, not a power cut. A torn last record is cut off on
open.

The one window left: a kill between the frame log's write and this one (the same loop
step, microseconds apart) leaves those messages stored but not remembered, and their
redelivery is stored a second time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

RECORD = np.dtype([("mid", "<u2"), ("digest", "<u8")])
_PACKET_IDS = 1 << 16
_MAX_RECORDS = 2 * _PACKET_IDS  # then the file is rewritten from the table (<= 64 Ki)


def message_digest(topic: str, payload: bytes | bytearray) -> int:
    """A non-zero 64-bit digest of a message's topic and payload."""
    hashed = hashlib.blake2b(topic.encode(), digest_size=8)
    hashed.update(b"\0")
    hashed.update(payload)
    return int.from_bytes(hashed.digest(), "little") or 1


class DeliveredLog:
    """Packet id -> digest of the last message with that id stored, persisted in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._table: npt.NDArray[np.uint64] = np.zeros(_PACKET_IDS, np.uint64)
        self._fd: int | None = None
        self.duplicates = 0  # redeliveries dropped, since the owner last took the count
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._file()
        with open(fd, "rb", closefd=False) as file:
            data = file.read()
        self._records = len(data) // RECORD.itemsize
        os.ftruncate(fd, self._records * RECORD.itemsize)  # a torn last record
        records = np.frombuffer(data, RECORD, self._records)
        self._set(records["mid"], records["digest"])

    def _file(self) -> int:
        """The file's descriptor, opened again after :meth:`close` (the table stays)."""
        if self._fd is None:
            flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o644)
        return self._fd

    def _set(self, mids: npt.NDArray[np.uint16], digests: npt.NDArray[np.uint64]) -> None:
        """Table entries for ``mids``; of repeated ids the last one counts."""
        ids, last = np.unique(mids[::-1], return_index=True)
        self._table[ids] = digests[::-1][last]

    def is_stored(self, mid: int, digest: int) -> bool:
        """True if the message ``mid`` with ``digest`` was stored; counts it as a duplicate."""
        if int(self._table[mid]) != digest:
            return False
        self.duplicates += 1
        return True

    @staticmethod
    def records(mids: list[int], digests: list[int]) -> npt.NDArray[np.void]:
        """The records of messages to :meth:`record`, made before the frame is emitted so
        that only the ``write()`` follows the frame log's."""
        records = np.empty(len(mids), RECORD)
        records["mid"] = mids
        records["digest"] = digests
        return records

    def record(self, records: npt.NDArray[np.void]) -> None:
        """Remember messages as stored: one write, and in memory (raises OSError; memory
        has them all the same, so only a kill before the next good write can duplicate)."""
        if not len(records):
            return
        try:
            if self._records + len(records) > _MAX_RECORDS:
                self._set(records["mid"], records["digest"])
                self._rewrite()
            else:
                self._append(records.tobytes())
        finally:
            self._set(records["mid"], records["digest"])

    def reset(self) -> None:
        """The broker kept no session: nothing known can be redelivered."""
        self._table[:] = 0
        os.ftruncate(self._file(), 0)
        self._records = 0

    def take_duplicates(self) -> int:
        count, self.duplicates = self.duplicates, 0
        return count

    def close(self) -> None:
        """Release the file (between sessions); the next write opens it again."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _append(self, data: bytes) -> None:
        fd = self._file()
        try:
            rest = memoryview(data)
            while rest:
                rest = rest[os.write(fd, rest) :]
        except OSError:
            with contextlib.suppress(OSError):  # no torn record before the next append
                os.ftruncate(fd, self._records * RECORD.itemsize)
            raise
        self._records += len(data) // RECORD.itemsize

    def _rewrite(self) -> None:
        """The file, from the table: write a new one beside it, then rename it over."""
        mids = np.flatnonzero(self._table)
        records = np.empty(len(mids), RECORD)
        records["mid"] = mids
        records["digest"] = self._table[mids]
        fresh = self.path.with_name(self.path.name + ".new")
        fresh.write_bytes(records.tobytes())
        fresh.replace(self.path)
        self.close()
        self._records = len(records)
