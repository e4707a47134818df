"""What can still be read out of a damaged spool database, and what cannot, in points.

Why a module of its own: the spool opens and writes a healthy database; this reads a
broken one, where every query may fail at any page, so every read is one row at a time.

Batches are found by two independent routes, so that a damaged page of one does not hide
what the other still knows: the ``batches`` table's rowids (``min``/``max`` walk only the
edges of its tree) and the ``batch_id`` index (its own pages), which lists which rowids
existed. A row that cannot be read is a lost batch; its ``points`` column is read alone
(it lies before the data blob, often on a page that survived), else looked up by its
batch id in the size log (:class:`SizeLog`, a plain file beside the database, untouched
by whatever damaged it); only a batch found in neither is of unknown size. A row whose
CRC fails is lost too. Rows not found by either route at the end of the table cannot be
counted: ``end_unreadable`` says that more may be gone.

A zero-length database file beside a write-ahead log (a file truncated after a kill):
SQLite takes an empty file for a new database and deletes the log, losing every batch
committed since the last checkpoint. The log's frames carry whole pages and the database
size, so the file is first padded to that size with zeros: the pages the log holds read
from the log, the rest read as damaged.
"""

from __future__ import annotations

import sqlite3
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger()

_WAL_HEADER = struct.Struct(">IIII")  # magic, version, page size, checkpoint sequence
_WAL_FRAME = struct.Struct(">II")  # page number, database size in pages (commit frames)
_WAL_MAGIC = (0x377F0682, 0x377F0683)
_TABLES = ("state", "losses", "delivered", "lineage")
_NEWER_TABLES = frozenset({"lineage"})  # absent from spools of earlier versions: not a loss


@dataclass(slots=True)
class Salvaged:
    """The outcome of a salvage: batches kept and lost, lost ones in points if known."""

    kept_batches: int = 0
    lost_batches: int = 0
    lost_points: int = 0
    unknown_size_batches: int = 0  # of lost_batches, those whose points could not be read
    end_unreadable: bool = False  # the end of the table is gone: more may be lost, uncounted
    lost_other_rows: int = 0  # rows of delivered/state/losses that could not be read


class SizeLog:
    """``<batch_id> <points>`` lines, one per committed batch, appended beside the spool so
    that a salvage can count in points the batches whose rows are gone. Kept short: once it
    holds ``rewrite_after`` lines it is rewritten with the batches still spooled."""

    def __init__(self, path: Path, rewrite_after: int = 10_000) -> None:
        self.path = path
        self.rewrite_after = rewrite_after
        self._lines = _count_lines(path)
        self._failing = False

    def append(self, sizes: list[tuple[str, int]]) -> None:
        """Before the batches' commit (a line for a batch never committed is harmless).
        Never raises: it helps a salvage, and must not stop a commit."""
        text = "".join(f"{batch_id} {points}\n" for batch_id, points in sizes)
        try:
            with self.path.open("a", encoding="ascii") as out:
                out.write(text)
        except OSError as exc:
            if not self._failing:  # once per outage: the spool's own errors say the rest
                log.warning("batch size log not written", path=str(self.path), error=str(exc))
            self._failing = True
            return
        self._lines += len(sizes)
        self._failing = False

    def due(self) -> bool:
        return self._lines >= self.rewrite_after

    def rewrite(self, sizes: list[tuple[str, int]]) -> None:
        """Replace the log by the sizes of the batches still spooled (atomically)."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            temporary.write_text("".join(f"{b} {p}\n" for b, p in sizes), encoding="ascii")
            temporary.replace(self.path)
            self._lines = len(sizes)
        except OSError as exc:
            log.warning("batch size log not rewritten", path=str(self.path), error=str(exc))

    def read(self) -> dict[str, int]:
        """Every whole, readable line; a damaged one is skipped, and so is a torn last
        one ("b 12" cut to "b 1" must not read as 1)."""
        sizes: dict[str, int] = {}
        try:
            text = self.path.read_bytes().decode("ascii", errors="replace")
        except OSError:
            return sizes
        for line in text.split("\n")[:-1]:
            batch_id, _, points = line.partition(" ")
            if points.isdigit():
                sizes[batch_id] = int(points)
        return sizes


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def open_damaged(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to a damaged database moved aside, or None if SQLite cannot
    read it at all. ``writable_schema`` lets a file shorter than its header says open
    (SQLite would refuse it whole as malformed), so the pages before the cut are read."""
    _pad_to_wal(path)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.execute("PRAGMA writable_schema=ON")
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError:
        return None
    return db


def wal_database_pages(wal: Path) -> int:
    """The database size (in pages) the newest commit in a write-ahead log names; 0 if the
    log is missing, empty or not a log."""
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return 0
    if len(data) < 32:
        return 0
    magic, _, page_size, _ = _WAL_HEADER.unpack_from(data)
    if magic not in _WAL_MAGIC or page_size < 512 or page_size & (page_size - 1):
        return 0
    pages = 0
    for offset in range(32, len(data) - 24 - page_size + 1, 24 + page_size):
        _, size = _WAL_FRAME.unpack_from(data, offset)
        pages = max(pages, size)
    return pages


def _pad_to_wal(path: Path) -> None:
    wal = path.with_name(path.name + "-wal")
    pages = wal_database_pages(wal) if path.stat().st_size == 0 else 0
    if pages:
        with wal.open("rb") as log:
            page_size = _WAL_HEADER.unpack(log.read(_WAL_HEADER.size))[2]
        with path.open("r+b") as file:
            file.truncate(pages * page_size)


def salvage(
    old: sqlite3.Connection | None, new: sqlite3.Connection, sizes: dict[str, int]
) -> Salvaged:
    """Copy every readable row of ``old`` into ``new`` (same schema, possibly without the
    newer columns) and count what could not be copied (``sizes``: the size log's points
    by batch id)."""
    result = Salvaged()
    if old is None:
        result.end_unreadable = True
        return result
    for table in _TABLES:
        if table in _NEWER_TABLES and not _exists(old, table):
            continue
        for row in _scan(old, table):
            if row is None:
                result.lost_other_rows += 1
            else:
                _insert(new, table, row)
    _salvage_batches(old, new, result, sizes)
    # a lost batch's seq may be handed out again: no acknowledgement may carry over to it
    new.execute("DELETE FROM delivered WHERE seq NOT IN (SELECT seq FROM batches)")
    return result


def _salvage_batches(
    old: sqlite3.Connection, new: sqlite3.Connection, out: Salvaged, sizes: dict[str, int]
) -> None:
    indexed, index_complete = _indexed_rowids(old)
    low, high = _one(old, "min(rowid)"), _one(old, "max(rowid)")
    ends = (low, high, min(indexed, default=None), max(indexed, default=None))
    known = [r for r in ends if r is not None]
    out.end_unreadable = high is None and not index_complete
    if not known:
        return
    for rowid in range(min(known), max(known) + 1):
        try:
            cursor = old.execute("SELECT * FROM batches WHERE rowid = ?", (rowid,))
            row = cursor.fetchone()
        except sqlite3.DatabaseError:
            if index_complete and rowid not in indexed:
                continue  # a gap (a batch deleted once delivered) on a damaged page
            points = _one(old, "points", rowid)
            if points is None and rowid in indexed:
                points = sizes.get(indexed[rowid])
            out.lost_batches += 1
            out.lost_points += points or 0
            out.unknown_size_batches += points is None
            continue
        if row is None:
            continue
        named = dict(zip([d[0] for d in cursor.description], row, strict=True))
        crc, data = named.get("crc"), named["data"]
        if crc is not None and (data is None or zlib.crc32(data) != crc):
            out.lost_batches += 1
            out.lost_points += int(named["points"])
            continue
        _insert(new, "batches", named)
        out.kept_batches += 1


def _indexed_rowids(db: sqlite3.Connection) -> tuple[dict[int, str], bool]:
    """The rowids the ``batch_id`` index lists, with their batch ids, as far as it can be
    read; and whether to its end."""
    found: dict[int, str] = {}
    try:
        for rowid, batch_id in db.execute(
            "SELECT rowid, batch_id FROM batches INDEXED BY sqlite_autoindex_batches_1"
        ):
            found[int(rowid)] = str(batch_id)
    except sqlite3.DatabaseError:
        return found, False
    return found, True


def _one(db: sqlite3.Connection, what: str, rowid: int | None = None) -> int | None:
    """One integer of ``batches`` (a bound, or a row's column), or None where the page is
    unreadable."""
    query = f"SELECT {what} FROM batches"
    try:
        if rowid is None:
            row = db.execute(query).fetchone()
        else:
            row = db.execute(f"{query} WHERE rowid = ?", (rowid,)).fetchone()
    except sqlite3.DatabaseError:
        return None
    return None if row is None or row[0] is None else int(row[0])


def _exists(db: sqlite3.Connection, table: str) -> bool:
    """Whether the schema names the table (an unreadable schema: assume it does)."""
    try:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return db.execute(query, (table,)).fetchone() is not None
    except sqlite3.DatabaseError:
        return True


def _scan(db: sqlite3.Connection, table: str) -> Iterator[dict[str, object] | None]:
    """A small table's rows as far as they can be read; None marks where reading stopped."""
    try:
        cursor = db.execute(f"SELECT * FROM {table}")
        names = [d[0] for d in cursor.description]
        for row in cursor:
            yield dict(zip(names, row, strict=True))
    except sqlite3.DatabaseError:
        yield None


def _insert(db: sqlite3.Connection, table: str, row: dict[str, object]) -> None:
    names = ",".join(row)
    marks = ",".join("?" * len(row))
    db.execute(f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({marks})", tuple(row.values()))
