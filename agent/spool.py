"""The durable store-and-forward spool: nothing acquired is lost to a crash or an outage.

On-disk format: a frame log and one SQLite database, ``<data_dir>/spool.sqlite``, in WAL
mode.

Frames: every frame that reaches the batcher goes first to the frame log beside the
database (``spool.frames/``, :mod:`agent.framelog`), with one ``write()``: it reaches the
OS before the batcher sees the frame, so a killed process loses at most the poll in
flight (a power cut, the unsynced tail). A frame is a 4-byte little-endian header length,
a JSON header (``rows``, ``received``, the optional timestamp columns present, the text
column or null), then the raw little-endian columns: ``tag`` int32, ``time`` int64 ns,
``value`` float64, ``quality`` uint16, then ``source_time``/``server_time`` int64 if
listed.

The database's tables:

``batches(seq INTEGER PRIMARY KEY, batch_id TEXT UNIQUE, window_start INTEGER,
    points INTEGER, bytes INTEGER, created_ns INTEGER, data BLOB)``
    Closed batches in :mod:`agent.encoding` form (Parquet, zstd), committed with
    ``synchronous=FULL`` (fsync) together with the ``state`` that says which frames they
    consumed, before anything is sent; the frame log's segments they retired are deleted
    after that commit.
``delivered(seq INTEGER, uplink TEXT, PRIMARY KEY (seq, uplink))``
    Which uplink acknowledged which batch. A batch is deleted once every configured
    uplink has acknowledged it.
``state(key TEXT PRIMARY KEY, value INTEGER)``
    ``closed_until`` (the last batch boundary emitted) and ``last_frame`` (the newest
    frame id that was pending when it was emitted), which recovery needs.
``losses(reason TEXT PRIMARY KEY, batches INTEGER, points INTEGER)``
    Loss counters that survive restarts (e.g. ``overflow``).

Recovery: frames still in the log were not (or not wholly) in a committed batch. Frames
up to ``last_frame`` were pending at the last emission, so their rows before
``closed_until`` went out in it and the rest did not; newer frames are replayed whole.
A torn record at the end of the frame log is cut off on open (its CRC fails), and
SQLite's WAL checksums make a torn last commit vanish; a database that fails
``quick_check`` (a bad page) is moved aside and every row that can still be read is
copied into a fresh one, so the agent runs on with the valid part.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from agent.batch import Batch
from agent.encoding import encoded
from agent.frame import Frame
from agent.framelog import FrameLog

log = structlog.get_logger()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY, batch_id TEXT UNIQUE NOT NULL, window_start INTEGER NOT NULL,
    points INTEGER NOT NULL, bytes INTEGER NOT NULL, created_ns INTEGER NOT NULL, data BLOB
);
CREATE TABLE IF NOT EXISTS delivered (
    seq INTEGER NOT NULL, uplink TEXT NOT NULL, PRIMARY KEY (seq, uplink)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS losses (
    reason TEXT PRIMARY KEY, batches INTEGER NOT NULL, points INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    seq: int
    batch_id: str
    points: int
    created_ns: int


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a restart finds: frames to feed the batcher again, and where it had got to."""

    frames: list[tuple[int, Frame]]
    closed_until: int | None


_FIXED = (("tag", "<i4"), ("time", "<i8"), ("value", "<f8"), ("quality", "<u2"))
_STAMP = "<i8"


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
        self.salvaged = self._open_checked()
        self.frame_log = FrameLog(path.with_name(f"{path.stem}.frames"))
        row = self.db.execute("SELECT value FROM state WHERE key = 'last_frame'").fetchone()
        self.frame_log.start_after(int(row[0]) if row else 0)
        self._last_frame = 0

    # -- opening and salvage ----------------------------------------------------------------

    def _connect(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        return db

    def _open_checked(self) -> int | None:
        """Open the database; if it is damaged, salvage it. Returns rows lost, or None."""
        try:
            db = self._connect(self.path)
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            verdict = str(exc)
            db = None
        if verdict == "ok" and db is not None:
            self.db = db
            return None
        if db is not None:
            db.close()
        return self._salvage(verdict)

    def _salvage(self, verdict: str) -> int:
        damaged = self.path.with_name(f"{self.path.name}.damaged-{time.time_ns()}")
        self.path.rename(damaged)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(damaged.with_name(damaged.name + suffix))
        self.db = self._connect(self.path)
        kept = lost = 0
        try:
            old = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
        except sqlite3.DatabaseError:
            old = None
        for table in ("batches", "delivered", "state", "losses"):
            for row, ok in _readable_rows(old, table):
                if not ok:
                    lost += 1
                    continue
                marks = ",".join("?" * len(row))
                self.db.execute(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", row)
                kept += 1
        if old is not None:
            old.close()
        log.error(
            "spool damaged: valid rows kept, the damaged file moved aside",
            problem=verdict,
            kept_rows=kept,
            unreadable_rows=lost,
            moved_to=str(damaged),
        )
        return lost

    # -- frames ------------------------------------------------------------------------------

    def append_frame(self, source: int, frame: Frame) -> None:
        self._last_frame = self.frame_log.append(source, int(frame.time.max()), frame_parts(frame))

    def recover(self) -> Recovered:
        """The frames a restart must feed the batcher again (see the module docstring)."""
        state = dict(self.db.execute("SELECT key, value FROM state").fetchall())
        closed_until = state.get("closed_until")
        last_frame = state.get("last_frame", 0)
        frames: list[tuple[int, Frame]] = []
        for logged in self.frame_log.frames():
            frame = decode_frame(logged.payload)
            if closed_until is not None and logged.frame_id <= last_frame:
                frame = frame.take(frame.time >= closed_until)  # the rest went out already
            if len(frame):
                frames.append((logged.source, frame))
            self._last_frame = logged.frame_id
        return Recovered(frames, closed_until)

    # -- batches -----------------------------------------------------------------------------

    def commit_batches(self, batches: list[Batch], closed_until: int) -> None:
        """Store closed batches (their encoded bytes) with fsync, then retire the frame
        log's segments they hold entirely."""
        now = time.time_ns()
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            with _transaction(self.db):
                self.db.executemany(
                    "INSERT OR IGNORE INTO batches "
                    "(batch_id, window_start, points, bytes, created_ns, data) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (b.batch_id, b.window_start_ns, b.points, len(data), now, data)
                        for b, data in ((b, encoded(b)) for b in batches)
                    ],
                )
                self.db.executemany(
                    "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                    [("closed_until", closed_until), ("last_frame", self._last_frame)],
                )
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.frame_log.rotate()
        self.frame_log.retire(self._last_frame, closed_until)

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

    def data(self, seq: int) -> bytes:
        """A spooled batch's encoded bytes (read only when the batch is not at hand)."""
        row = self.db.execute("SELECT data FROM batches WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise KeyError(f"batch {seq} is no longer in the spool")
        return bytes(row[0])

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

    def drop_oldest(self, max_bytes: int, max_age_ns: int, now_ns: int) -> tuple[int, int]:
        """Delete the oldest batches until within the caps; returns (batches, points) lost."""
        dropped_batches = dropped_points = 0
        with _transaction(self.db):
            _, size, _ = self.size()
            for seq, points, nbytes, created in self.db.execute(
                "SELECT seq, points, bytes, created_ns FROM batches ORDER BY seq"
            ).fetchall():
                if size <= max_bytes and now_ns - created <= max_age_ns:
                    break
                self.db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
                self.db.execute("DELETE FROM delivered WHERE seq = ?", (seq,))
                size -= nbytes
                dropped_batches += 1
                dropped_points += points
            if dropped_batches:
                self.db.execute(
                    "INSERT INTO losses VALUES ('overflow', ?, ?) ON CONFLICT(reason) DO UPDATE "
                    "SET batches = batches + excluded.batches, points = points + excluded.points",
                    (dropped_batches, dropped_points),
                )
        return dropped_batches, dropped_points

    def losses(self) -> dict[str, tuple[int, int]]:
        rows = self.db.execute("SELECT reason, batches, points FROM losses").fetchall()
        return {reason: (int(b), int(p)) for reason, b, p in rows}

    def close(self) -> None:
        self.frame_log.close()
        self.db.close()


class _transaction:
    """BEGIN ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _readable_rows(
    db: sqlite3.Connection | None, table: str
) -> Iterator[tuple[tuple[object, ...], bool]]:
    """Rows of a damaged table one by one by rowid; (row, False) marks an unreadable one."""
    if db is None:
        return
    try:
        bounds = db.execute(f"SELECT min(rowid), max(rowid) FROM {table}").fetchone()
    except sqlite3.DatabaseError:
        bounds = None
    if bounds is None or bounds[0] is None:
        # the table's index pages may be gone: try a plain scan, as far as it goes
        try:
            for row in db.execute(f"SELECT * FROM {table}"):
                yield tuple(row), True
        except sqlite3.DatabaseError:
            yield (), False
        return
    for rowid in range(int(bounds[0]), int(bounds[1]) + 1):
        try:
            row = db.execute(f"SELECT * FROM {table} WHERE rowid = ?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            yield (), False
            continue
        if row is not None:
            yield tuple(row), True
