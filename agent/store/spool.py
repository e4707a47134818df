"""The durable store-and-forward spool: nothing acquired is lost to a crash or an outage.

On-disk format: a frame log and one SQLite database, ``<data_dir>/spool.sqlite``, in WAL
mode.

Frames: every frame that reaches the batcher goes first to the frame log beside the
database (``spool.frames/``, :mod:`agent.store.framelog`), with one ``write()``: it reaches the
OS before the batcher sees the frame, so a killed process loses at most the poll in
flight (a power cut, the unsynced tail). A frame is a 4-byte little-endian header length,
a JSON header (``rows``, ``received``, the optional timestamp columns present, the text
column or null), then the raw little-endian columns: ``tag`` int32, ``time`` int64 ns,
``value`` float64, ``quality`` uint16, then ``source_time``/``server_time`` int64 if
listed.

The database's tables:

``batches(seq INTEGER PRIMARY KEY, batch_id TEXT UNIQUE, window_start INTEGER,
    points INTEGER, bytes INTEGER, created_ns INTEGER, data BLOB, crc INTEGER)``
    Closed batches in :mod:`agent.store.encoding` form (Parquet, zstd), committed with
    ``synchronous=FULL`` (fsync) together with the ``state`` that says which frames they
    consumed, before anything is sent; the frame log's segments they retired are deleted
    after that commit. ``crc`` is the CRC-32 of ``data``, checked before a batch is
    decoded (:meth:`Spool.batch`): SQLite's own checks (``quick_check``) do not look inside
    a blob, so a flipped bit there would otherwise reach the store as wrong data. A spool
    of an earlier version gets the column on open; its rows have NULL (not verified).
``delivered(seq INTEGER, uplink TEXT, PRIMARY KEY (seq, uplink))``
    Which uplink acknowledged which batch. A batch is deleted once every configured
    uplink has acknowledged it.
``state(key TEXT PRIMARY KEY, value INTEGER)``
    ``closed_until`` (the last batch boundary emitted) and ``last_frame`` (the newest
    frame id that was pending when it was emitted), which recovery needs.
``layouts(first_frame INTEGER PRIMARY KEY, body TEXT)``
    How frames from ``first_frame`` on number their sources and tags (the agent's
    ``TagTable.layout()``: ``[[source, [[tag, lineage], ...]], ...]``), written when a
    start or a reload changes it, so that frames logged under an earlier config are
    replayed as the tags they were, by name. Only the rows frames still in the log need
    are kept.
``lineage(digest TEXT PRIMARY KEY, record TEXT)``
    The lineage records the batches name by digest (:mod:`agent.store.lineage`), each
    once, written in the transaction of the first batch naming it; :meth:`Spool.batch`
    puts the record back into the batch it decodes. A few per config: never deleted.
``losses(reason TEXT PRIMARY KEY, batches INTEGER, points INTEGER)``
    Loss counters that survive restarts: ``overflow``, ``spool_corrupt`` (batches a
    salvage could not keep, see :mod:`agent.store.salvage`), ``frame_log_corrupt`` (damaged
    frame records, ``batches`` counting records).

Recovery: frames still in the log were not (or not wholly) in a committed batch. Frames
up to ``last_frame`` were pending at the last emission, so their rows before
``closed_until`` went out in it and the rest did not; newer frames are replayed whole.
A torn record at the end of the frame log is cut off on open (its CRC fails), and
SQLite's WAL checksums make a torn last commit vanish; a database that fails
``quick_check`` (a bad page), is not a database at all, or is empty beside a non-empty
write-ahead log, is moved aside and every row that can still be read is copied into a
fresh one, so the agent runs on with the valid part; what was lost is counted in points
(:attr:`Spool.recovery_losses`, one log line, the ``losses`` table). A database another
process holds open is not touched: :class:`SpoolInUse`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from zlib import crc32

import numpy as np
import pyarrow as pa
import structlog

from agent.acquisition.frame import Frame
from agent.store.atrisk import AtRiskLedger, SpaceReserve, UnloggedFrame
from agent.store.encoding import batch_of, decode, encoded, lineage_of
from agent.store.framelog import FrameLog
from agent.store.salvage import Salvaged, SizeLog, open_damaged, salvage, wal_database_pages
from agent.windows.batch import Batch

log = structlog.get_logger()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY, batch_id TEXT UNIQUE NOT NULL, window_start INTEGER NOT NULL,
    points INTEGER NOT NULL, bytes INTEGER NOT NULL, created_ns INTEGER NOT NULL, data BLOB,
    crc INTEGER
);
CREATE TABLE IF NOT EXISTS delivered (
    seq INTEGER NOT NULL, uplink TEXT NOT NULL, PRIMARY KEY (seq, uplink)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS losses (
    reason TEXT PRIMARY KEY, batches INTEGER NOT NULL, points INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS lineage (digest TEXT PRIMARY KEY, record TEXT NOT NULL);
"""
# made when the first layout is recorded (a salvage does not carry it over: frames of an
# earlier layout are then replayed as the current config numbers them)
_LAYOUTS = (
    "CREATE TABLE IF NOT EXISTS layouts (first_frame INTEGER PRIMARY KEY, body TEXT NOT NULL)"
)


class SpoolInUse(OSError):
    """Another process holds the spool (another agent on the same ``data_dir``, or one
    still stopping): it is neither opened nor salvaged. An OSError, so that ``run`` exits
    with one line and a status systemd retries (the other one may be on its way out)."""


class CorruptBatch(Exception):
    """A spooled batch whose bytes fail their CRC or do not decode: a poison batch, to be
    quarantined (``data``: the bytes as stored, None if unreadable) and never sent."""

    def __init__(
        self, seq: int, batch_id: str, reason: str, points: int, data: bytes | None
    ) -> None:
        super().__init__(f"spooled batch {batch_id} (seq {seq}) is corrupt: {reason}")
        self.seq = seq
        self.batch_id = batch_id
        self.reason = reason
        self.points = points
        self.data = data


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    seq: int
    batch_id: str
    points: int
    created_ns: int


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a restart finds: frames to feed the batcher again, and where it had got to.
    ``layouts`` has, per frame, the layout it was logged under (None: not recorded, as
    in a spool of an earlier version)."""

    frames: list[tuple[int, Frame]]
    closed_until: int | None
    layouts: list[str | None] = field(default_factory=list)


_WAL_LIMIT = 4 << 20  # bytes the WAL file keeps after a checkpoint
_RESERVE_BYTES = 1 << 20  # freed to open the spool on a full disk (see agent.store.atrisk)
# SQLite's answers that say the disk refused a write, not that the database is damaged
# (a truncated file is an I/O error too, SQLITE_IOERR_SHORT_READ: damage, salvaged)
_STORAGE_REFUSED = {
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_IOERR_WRITE,
    sqlite3.SQLITE_IOERR_FSYNC,
    sqlite3.SQLITE_IOERR_TRUNCATE,
    sqlite3.SQLITE_IOERR_SHMOPEN,
    sqlite3.SQLITE_IOERR_SHMSIZE,
    sqlite3.SQLITE_IOERR_NOMEM,
}

_FIXED = (("tag", "<i4"), ("time", "<i8"), ("value", "<f8"), ("quality", "<u2"))
_STAMP = "<i8"
_ROW_BYTES = sum(np.dtype(dtype).itemsize for _, dtype in _FIXED)

# what Spool.recovery_losses holds: the damage found when the spool was opened
RECOVERY_KEYS = (
    "spool_corrupt_batches",  # batches a salvage could not keep (incl. those of unknown size)
    "spool_corrupt_points",  # their points, where their size could be read
    "spool_unknown_size_batches",  # of spool_corrupt_batches, those of unknown size
    "spool_end_unreadable",  # 1: the end of the batches table is gone, more may be lost
    "frame_log_corrupt_records",  # damaged records with valid ones after them
    "frame_log_corrupt_points",  # their samples, where a record's header could be read
    "frame_log_unknown_size_records",  # of frame_log_corrupt_records, those of unknown size
    "frame_log_corrupt_bytes",  # bytes skipped in the middle of segments
    "frame_log_torn_records",  # torn tails cut off: the poll in flight, never acknowledged
)


def frame_parts(frame: Frame) -> list[bytes | memoryview]:
    """A frame's encoding (see the module doc) as the buffers to write one after the
    other: the arrays themselves where they are little-endian and contiguous, no copy."""
    stamps = [name for name in ("source_time", "server_time") if getattr(frame, name) is not None]
    header = {
        "rows": len(frame),
        "received": frame.received,
        "stamps": stamps,
        "text": None if frame.text is None else frame.text.tolist(),
    }
    head = json.dumps(header).encode()
    columns = [*_FIXED, *((name, _STAMP) for name in stamps)]
    return [
        len(head).to_bytes(4, "little"),
        head,
        *(np.ascontiguousarray(getattr(frame, n), dtype).data for n, dtype in columns),
    ]


def frame_rows(payload: bytes) -> int | None:
    """The sample count a frame's header states, if the header is readable and agrees
    with the payload's length; None otherwise. For counting a damaged record's samples."""
    try:
        size = int.from_bytes(payload[:4], "little")
        header = json.loads(payload[4 : 4 + size])
        rows, stamps = header["rows"], header["stamps"]
        width = _ROW_BYTES + np.dtype(_STAMP).itemsize * len(stamps)
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(rows, int) or 4 + size + rows * width != len(payload):
        return None
    return rows


def decode_frame(data: bytes) -> Frame:
    size = int.from_bytes(data[:4], "little")
    header = json.loads(data[4 : 4 + size])
    rows, offset = header["rows"], 4 + size
    columns: dict[str, np.ndarray] = {}
    for name, dtype in [*_FIXED, *((stamp, _STAMP) for stamp in header["stamps"])]:
        width = np.dtype(dtype).itemsize * rows
        columns[name] = np.frombuffer(data, dtype, rows, offset).astype(dtype[1:])
        offset += width
    frame = Frame(
        columns["tag"], columns["time"], columns["value"], columns["quality"], header["received"]
    )
    frame.source_time = columns.get("source_time")
    frame.server_time = columns.get("server_time")
    if header["text"] is not None:
        frame.text = np.array(header["text"], dtype=object)
    return frame


class Spool:
    """The spool database of one agent; every method is a short synchronous transaction."""

    def __init__(self, path: Path, uplinks: list[str]) -> None:
        self.path = path
        self.uplinks = uplinks
        path.parent.mkdir(parents=True, exist_ok=True)
        self.recovery_losses: dict[str, int] = dict.fromkeys(RECOVERY_KEYS, 0)
        self._lock = _lock_exclusively(path.with_name(f"{path.stem}.lock"))
        self.reserve = SpaceReserve(path.with_name(f"{path.stem}.reserve"), _RESERVE_BYTES)
        self.sizes = SizeLog(path.with_name(f"{path.stem}.sizes"))
        try:
            self.salvaged = self._open_checked()
        except BaseException:
            os.close(self._lock)
            raise
        self.reserve.ensure()
        self.frame_log = FrameLog(path.with_name(f"{path.stem}.frames"), frame_rows)
        self._count_frame_log_damage()
        row = self.db.execute("SELECT value FROM state WHERE key = 'last_frame'").fetchone()
        self.frame_log.start_after(int(row[0]) if row else 0)
        self._last_frame = 0
        # frames whose write failed, oldest first (agent.store.atrisk), and the ledger of what a
        # kill would lose of them plus what a kill of the last run lost, not yet recorded
        self.unlogged: list[UnloggedFrame] = []
        self.last_error: OSError | None = None
        self.ledger = AtRiskLedger(path.with_name(f"{path.stem}.at-risk"))
        self.carried_loss = self.ledger.found
        self._committed: tuple[int, int | None] = (0, None)  # last_frame, closed_until
        self._lineage: dict[str, str] = {}  # records known to be in the lineage table

    # -- opening and salvage ----------------------------------------------------------------

    def _connect(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # a checkpoint shrinks the WAL file back to this: on a full disk, that space is
        # what the frame log needs (pages freed inside the database are reused by SQLite)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(batches)")}
        if "crc" not in columns:  # a spool of an earlier version: its rows stay unverified
            db.execute("ALTER TABLE batches ADD COLUMN crc INTEGER")
        return db

    def _open_checked(self) -> Salvaged | None:
        """Open the database; if it is damaged, salvage it (None if it was not)."""
        empty = self.path.exists() and self.path.stat().st_size == 0
        wal = self.path.with_name(f"{self.path.name}-wal")
        if empty and wal_database_pages(wal):
            # SQLite would take the empty file for a new database and delete the log
            return self._salvage(
                f"{self.path.name} is empty (0 bytes: truncated) beside a write-ahead log of "
                f"{wal.stat().st_size} bytes: the batches the log holds are read from it"
            )
        try:
            db = self._connect(self.path)
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            extended = getattr(exc, "sqlite_errorcode", 0)
            code = extended & 0xFF  # the primary result code
            if code == sqlite3.SQLITE_BUSY:
                raise SpoolInUse(
                    errno.EBUSY,
                    f"{self.path} is locked by another process: is another agent running "
                    "on this data_dir, or the previous one still stopping?",
                ) from exc
            if code in _STORAGE_REFUSED or extended in _STORAGE_REFUSED:
                # not damage: the disk is full or failing. Opening needs a little space
                # (the WAL's index and log files): the reserve made for this moment
                if self.reserve.release():
                    return self._open_checked()
                raise OSError(
                    errno.ENOSPC if code == sqlite3.SQLITE_FULL else errno.EIO,
                    f"cannot open the spool {self.path}: {exc}",
                ) from exc
            verdict, db = str(exc), None
        if db is not None and verdict == "ok":
            self.db = db
            if empty:
                log.warning(
                    "spool database file was empty (0 bytes): a new spool is started in it; "
                    "if it held batches, their number is unknown",
                    path=str(self.path),
                )
            return None
        if db is not None:
            db.close()
        return self._salvage(_describe(self.path, verdict))

    def _salvage(self, problem: str) -> Salvaged:
        damaged = self.path.with_name(f"{self.path.name}.damaged-{time.time_ns()}")
        self.path.rename(damaged)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(damaged.with_name(damaged.name + suffix))
        self.db = self._connect(self.path)
        old = open_damaged(damaged)
        with _transaction(self.db):
            result = salvage(old, self.db, self.sizes.read())
            _count_loss(self.db, "spool_corrupt", result.lost_batches, result.lost_points)
        if old is not None:
            old.close()
        self.recovery_losses.update(
            spool_corrupt_batches=result.lost_batches,
            spool_corrupt_points=result.lost_points,
            spool_unknown_size_batches=result.unknown_size_batches,
            spool_end_unreadable=int(result.end_unreadable),
        )
        log.error(
            "spool damaged: the readable batches kept, the lost ones counted in points, "
            "the damaged file moved aside",
            problem=problem,
            batches_kept=result.kept_batches,
            batches_lost=result.lost_batches,
            points_lost=result.lost_points,
            batches_lost_of_unknown_size=result.unknown_size_batches,
            end_of_table_unreadable=result.end_unreadable,
            other_rows_lost=result.lost_other_rows,
            moved_to=str(damaged),
        )
        return result

    def _count_frame_log_damage(self) -> None:
        """Take the frame log's open-time damage into ``recovery_losses`` and, damage in
        the middle of a segment being samples lost, into the ``losses`` table."""
        damage = self.frame_log.damage
        self.recovery_losses.update(
            frame_log_corrupt_records=damage.records,
            frame_log_corrupt_points=damage.points,
            frame_log_unknown_size_records=damage.unknown_size_records,
            frame_log_corrupt_bytes=damage.bytes,
            frame_log_torn_records=damage.torn_records,
        )
        if damage.records:
            with _transaction(self.db):
                _count_loss(self.db, "frame_log_corrupt", damage.records, damage.points)

    # -- frames ------------------------------------------------------------------------------

    def append_frame(self, source: int, frame: Frame) -> bool:
        """Log a frame; False if it could not be written (``last_error`` says why): it is
        then held in memory and written before the next frame that can be."""
        max_time = int(frame.time.max())
        parts = frame_parts(frame)
        if not self.unlogged or self._write_unlogged():
            try:
                self._last_frame = self.frame_log.append(source, max_time, parts)
                self.last_error = None
                return True
            except OSError as exc:
                self.last_error = exc
        frame_id = self.frame_log.reserve_id()
        self.unlogged.append(
            UnloggedFrame(frame_id, source, max_time, frame.time.copy(), b"".join(parts))
        )
        self._last_frame = frame_id
        self._update_ledger()
        return False

    def _write_unlogged(self) -> bool:
        """Write the held frames in order; True once none is left."""
        while self.unlogged:
            held = self.unlogged[0]
            try:
                self.frame_log.append(held.source, held.max_time, [held.payload], held.frame_id)
            except OSError as exc:
                self.last_error = exc
                return False
            self.unlogged.pop(0)
        self._update_ledger()
        return True

    @property
    def at_risk_points(self) -> int:
        """Samples only memory holds: a kill now would lose them."""
        last_frame, closed_until = self._committed
        return sum(held.at_risk(last_frame, closed_until) for held in self.unlogged)

    @property
    def unlogged_bytes(self) -> int:
        return sum(len(held.payload) for held in self.unlogged)

    def _update_ledger(self) -> None:
        self.ledger.write(self.carried_loss + self.at_risk_points)

    def record_carried_loss(self) -> int:
        """Put what a kill of the last run lost into ``losses`` (reason ``storage``);
        returns the samples recorded now (0 if none, or if the disk still refuses)."""
        points = self.carried_loss
        if not points:
            return 0
        try:
            with _transaction(self.db):
                _count_loss(self.db, "storage", 0, points)
        except sqlite3.Error as exc:
            log.warning("a loss of the last run not yet recorded", points=points, error=str(exc))
            return 0
        log.error(
            "samples lost: the agent was stopped while storage failed and only memory held them",
            points=points,
        )
        self.carried_loss = 0
        self._update_ledger()
        return points

    def recover(self) -> Recovered:
        """The frames a restart must feed the batcher again (see the module docstring)."""
        state = dict(self.db.execute("SELECT key, value FROM state").fetchall())
        closed_until = state.get("closed_until")
        last_frame = state.get("last_frame", 0)
        frames: list[tuple[int, Frame]] = []
        layouts: list[str | None] = []
        stored: list[tuple[int, str]] = []
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'layouts'").fetchone():
            stored = self.db.execute("SELECT first_frame, body FROM layouts ORDER BY 1").fetchall()
        for logged in self.frame_log.frames():
            frame = decode_frame(logged.payload)
            if closed_until is not None and logged.frame_id <= last_frame:
                frame = frame.take(frame.time >= closed_until)  # the rest went out already
            if len(frame):
                frames.append((logged.source, frame))
                layouts.append(_layout_at(stored, logged.frame_id))
            self._last_frame = logged.frame_id
        self._committed = (last_frame, closed_until)
        return Recovered(frames, closed_until, layouts)

    def set_layout(self, body: str) -> None:
        """Record how the frames logged from now on number their tags, if that changed;
        drop the layouts no frame in the log needs any more. A failure is logged (frames
        would then be replayed as the current config numbers them, as before layouts)."""
        try:
            self.db.execute(_LAYOUTS)
            newest = self.db.execute(
                "SELECT body FROM layouts ORDER BY first_frame DESC LIMIT 1"
            ).fetchone()
            if newest is not None and newest[0] == body:
                return
            oldest = min([self.frame_log.first_id, *(held.frame_id for held in self.unlogged)])
            with _transaction(self.db):
                self.db.execute(
                    "INSERT OR REPLACE INTO layouts VALUES (?, ?)", (self.frame_log.next_id, body)
                )
                self.db.execute(
                    "DELETE FROM layouts WHERE first_frame < (SELECT max(first_frame) FROM "
                    "layouts WHERE first_frame <= ?)",
                    (oldest,),
                )
        except sqlite3.Error as exc:
            log.warning("tag layout not recorded", error=str(exc))

    def set_uplinks(self, uplinks: list[str]) -> int:
        """The uplinks a batch waits for from now on (a reload added or took out some):
        acknowledgements of the others are forgotten, and the batches every remaining
        uplink has are let go; returns how many."""
        self.uplinks = list(uplinks)
        marks = ",".join("?" * len(uplinks))
        with _transaction(self.db):
            self.db.execute(f"DELETE FROM delivered WHERE uplink NOT IN ({marks})", uplinks)
            done = [
                seq
                for (seq,) in self.db.execute(
                    "SELECT seq FROM delivered GROUP BY seq HAVING count(*) >= ?",
                    (len(uplinks),),
                ).fetchall()
            ]
            self.db.executemany("DELETE FROM batches WHERE seq = ?", [(seq,) for seq in done])
            self.db.executemany("DELETE FROM delivered WHERE seq = ?", [(seq,) for seq in done])
        return len(done)

    # -- batches -----------------------------------------------------------------------------

    def commit_batches(self, batches: list[Batch], closed_until: int) -> None:
        """Store closed batches (their encoded bytes) with fsync, then retire the frame
        log's segments (and held frames) they hold entirely. Raises ``sqlite3.Error`` or
        ``OSError`` when storage fails; nothing is committed then, and the same batches
        (with any closed since) can be committed again later."""
        now = time.time_ns()
        if self.sizes.due():
            self.sizes.rewrite(self.db.execute("SELECT batch_id, points FROM batches").fetchall())
        self.sizes.append([(b.batch_id, b.points) for b in batches])
        records = dict(pair for b in batches if (pair := lineage_of(b.table)) is not None)
        new = {d: r for d, r in records.items() if d not in self._lineage}
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            with _transaction(self.db):
                self.db.executemany("INSERT OR IGNORE INTO lineage VALUES (?, ?)", new.items())
                self.db.executemany(
                    "INSERT OR IGNORE INTO batches "
                    "(batch_id, window_start, points, bytes, created_ns, data, crc) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (b.batch_id, b.window_start_ns, b.points, len(data), now, data, crc32(data))
                        for b, data in ((b, encoded(b)) for b in batches)
                    ],
                )
                self.db.executemany(
                    "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                    [("closed_until", closed_until), ("last_frame", self._last_frame)],
                )
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("PRAGMA synchronous=NORMAL")
        self._committed = (self._last_frame, closed_until)
        self._lineage.update(new)
        self.reserve.ensure()
        self.unlogged = [
            held
            for held in self.unlogged
            if held.frame_id > self._last_frame or held.max_time >= closed_until
        ]
        self._update_ledger()
        self.frame_log.rotate()
        self.frame_log.retire(self._last_frame, closed_until)

    def reclaim(self) -> None:
        """Hand space back to the filesystem: checkpoint the WAL and truncate it. Called
        while storage fails; errors are expected then and ignored."""
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def pending(
        self, uplink: str, created_from: int | None = None, limit: int = 16
    ) -> list[SpooledBatch]:
        """Batches the uplink has not acknowledged, oldest first; with ``created_from``,
        only those closed since then (the live lane). Without their bytes: see ``data``."""
        rows = self.db.execute(
            "SELECT seq, batch_id, points, created_ns FROM batches b "
            "WHERE created_ns >= ? AND NOT EXISTS "
            "(SELECT 1 FROM delivered d WHERE d.seq = b.seq AND d.uplink = ?) "
            "ORDER BY seq LIMIT ?",
            (created_from if created_from is not None else 0, uplink, limit),
        ).fetchall()
        return [SpooledBatch(*row) for row in rows]

    def unsent(self, uplink: str) -> tuple[int, int | None]:
        """(batches, created_ns of the oldest) the uplink has not acknowledged."""
        count, oldest = self.db.execute(
            "SELECT count(*), min(created_ns) FROM batches b WHERE NOT EXISTS "
            "(SELECT 1 FROM delivered d WHERE d.seq = b.seq AND d.uplink = ?)",
            (uplink,),
        ).fetchone()
        return int(count), None if oldest is None else int(oldest)

    def data(self, seq: int) -> bytes:
        """A spooled batch's encoded bytes, their CRC verified (read only when the batch is
        not at hand). Raises CorruptBatch on a mismatch, KeyError if it is gone."""
        return self._verified(seq)[2]

    def batch(self, seq: int) -> Batch:
        """A spooled batch, verified and decoded: whatever is wrong with its bytes (a CRC
        mismatch, Parquet or metadata that do not decode, another batch's identity) raises
        CorruptBatch, so no caller needs to know the ways a batch can be broken."""
        batch_id, points, data = self._verified(seq)
        try:
            batch = batch_of(decode(data, self.lineage), data)
        except (pa.ArrowException, ValueError, KeyError, TypeError, OSError) as exc:
            reason = f"does not decode: {type(exc).__name__}: {exc}"
            raise CorruptBatch(seq, batch_id, reason, points, data) from exc
        if batch.batch_id != batch_id or batch.points != points:
            reason = f"decodes as {batch.batch_id} with {batch.points} points, not {points}"
            raise CorruptBatch(seq, batch_id, reason, points, data)
        return batch

    def lineage(self, digest: str) -> str | None:
        """The lineage record of a digest, if a batch committed here named it."""
        record = self._lineage.get(digest)
        if record is None:
            row = self.db.execute("SELECT record FROM lineage WHERE digest = ?", (digest,))
            found = row.fetchone()
            if found is not None:
                record = self._lineage[digest] = str(found[0])
        return record

    def _verified(self, seq: int) -> tuple[str, int, bytes]:
        row = self.db.execute(
            "SELECT batch_id, points, data, crc FROM batches WHERE seq = ?", (seq,)
        ).fetchone()
        if row is None:
            raise KeyError(f"batch {seq} is no longer in the spool")
        batch_id, points, data, crc = row
        if data is None:
            raise CorruptBatch(seq, batch_id, "no data", points, None)
        data = bytes(data)
        if crc is not None and crc32(data) != crc:
            reason = f"CRC mismatch (stored {crc:08x}, computed {crc32(data):08x})"
            raise CorruptBatch(seq, batch_id, reason, points, data)
        return batch_id, points, data

    def remove(self, seq: int) -> None:
        """Take a batch out of the spool for good, acknowledged or not (a poison batch
        that is in quarantine for every uplink)."""
        with _transaction(self.db):
            self.db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            self.db.execute("DELETE FROM delivered WHERE seq = ?", (seq,))

    def acknowledge(self, uplink: str, seq: int) -> bool:
        """Record an uplink's acknowledgement; drop the batch once every uplink has it
        (and say so)."""
        with _transaction(self.db):
            self.db.execute("INSERT OR IGNORE INTO delivered VALUES (?, ?)", (seq, uplink))
            acked = self.db.execute(
                "SELECT count(*) FROM delivered WHERE seq = ? AND uplink IN "
                f"({','.join('?' * len(self.uplinks))})",
                (seq, *self.uplinks),
            ).fetchone()[0]
            if acked < len(self.uplinks):
                return False
            self.db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            self.db.execute("DELETE FROM delivered WHERE seq = ?", (seq,))
        return True

    # -- caps --------------------------------------------------------------------------------

    def size(self) -> tuple[int, int, int | None]:
        """(batches, bytes, created_ns of the oldest) held."""
        count, size, oldest = self.db.execute(
            "SELECT count(*), coalesce(sum(bytes), 0), min(created_ns) FROM batches"
        ).fetchone()
        return int(count), int(size), None if oldest is None else int(oldest)

    def drop_oldest(
        self, max_bytes: int, max_age_ns: int, now_ns: int, keep: Collection[int] = ()
    ) -> tuple[int, int]:
        """Delete the oldest batches until within the caps; returns (batches, points) lost.
        Batches in ``keep`` (in flight to an uplink: they may yet be delivered, and must
        not be both delivered and counted lost) are spared."""
        dropped_batches = dropped_points = 0
        with _transaction(self.db):
            _, size, _ = self.size()
            for seq, points, nbytes, created in self.db.execute(
                "SELECT seq, points, bytes, created_ns FROM batches ORDER BY seq"
            ).fetchall():
                if size <= max_bytes and now_ns - created <= max_age_ns:
                    break
                if seq in keep:
                    continue
                self.db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
                self.db.execute("DELETE FROM delivered WHERE seq = ?", (seq,))
                size -= nbytes
                dropped_batches += 1
                dropped_points += points
            _count_loss(self.db, "overflow", dropped_batches, dropped_points)
        return dropped_batches, dropped_points

    def losses(self) -> dict[str, tuple[int, int]]:
        rows = self.db.execute("SELECT reason, batches, points FROM losses").fetchall()
        return {reason: (int(b), int(p)) for reason, b, p in rows}

    def close(self) -> None:
        self.frame_log.close()
        self.ledger.close()
        self.db.close()
        os.close(self._lock)


def _layout_at(stored: list[tuple[int, str]], frame_id: int) -> str | None:
    """The layout in force for a frame: the newest recorded at or before its id."""
    found = None
    for first_frame, body in stored:
        if first_frame > frame_id:
            break
        found = body
    return found


def _lock_exclusively(path: Path) -> int:
    """An exclusive lock on ``path`` for as long as the process holds the spool: SQLite
    in WAL mode lets a second agent open a healthy spool, and two agents writing one frame
    log would corrupt it. The kernel drops the lock when the process dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # a POSIX record lock: held per process, so one process may open its spool again
        # (as tests of a restart do); another process may not
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise SpoolInUse(
            errno.EBUSY,
            f"{path.parent} is in use by another process: is another agent running on this "
            "data_dir, or the previous one still stopping?",
        ) from None
    return fd


class _transaction:
    """BEGIN ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        # a failed COMMIT (disk full) may have ended the transaction already
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")


def _count_loss(db: sqlite3.Connection, reason: str, batches: int, points: int) -> None:
    """Add to a persistent loss counter (inside the caller's transaction)."""
    if batches or points:
        db.execute(
            "INSERT INTO losses VALUES (?, ?, ?) ON CONFLICT(reason) DO UPDATE "
            "SET batches = batches + excluded.batches, points = points + excluded.points",
            (reason, batches, points),
        )


def _describe(path: Path, verdict: str) -> str:
    """A damaged database's problem in words: SQLite's verdict, and whether the file is
    shorter than its header says (a truncation) or not a database at all."""
    with path.open("rb") as file:
        head = file.read(100)
    if not head.startswith(b"SQLite format 3\0"):
        return f"{path.name} is not an SQLite database (overwritten?): {verdict}"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    expected = int.from_bytes(head[28:32], "big") * page_size
    actual = path.stat().st_size
    if actual < expected:
        return f"{path.name} is truncated: {actual} bytes of the {expected} its header names"
    return f"{path.name} is damaged: {verdict}"
