"""Reading a stored dataset: each file opened once, its footer and samples together, in
window order, a few files ahead of the consumer.

A dataset is a folder of the parquet uplink's files
(``gateway=<id>/date=<day>/<batch_id>.parquet``), or one such file. A batch id begins with
its window's start, so sorting the files by name sorts them by time, and a ``--from/--to``
range passes over files outside it without opening them. Each file's footer (lineage and
quality figures) is read in the same open as its samples: a pyarrow dataset scan would read
every footer a second time, since its batches carry the dataset's schema metadata and not
their file's, and at 1 s windows a day is 86,400 files whose opening is most of the cost.
Only the columns asked for are decoded, only row groups whose ``time`` statistics meet the
range, and rows outside the range are dropped; memory holds a few files at a time. pyarrow
releases the GIL while decoding, so two threads read ahead while the caller adds up.

A footer names its lineage record by digest (:mod:`agent.store.lineage`): the record is
read once per digest from the ``_lineage`` folder of the dataset (found from the file
upwards); an older file that holds it inline is read as it is. A damaged or missing record
leaves its batches without lineage (never with a wrong one); their samples are read.

A file that is not a readable edge-agent batch (truncated, foreign) is skipped and listed in
``DatasetReader.skipped`` with the reason: a damaged file does not stop a report.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import os
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from agent.store.encoding import expand
from agent.store.lineage import LineageFolder
from agent.windows.batch import META_PREFIX, SCHEMA

# names the parquet uplink gives: <window start>Z-<content hash>.parquet
_BATCH_NAME = re.compile(r"^(\d{8}T\d{6}\.\d{3})Z-[0-9a-f]+\.parquet$")
_WIDEST_WINDOW_NS = 86_400 * 1_000_000_000  # a file named before --from may still reach it
_AHEAD = 16  # files decoded ahead of the consumer


@dataclass(frozen=True)
class Selection:
    """What to look at: a time range [from, to) and globs on ``source/tag`` names."""

    from_ns: int | None = None
    to_ns: int | None = None
    tags: tuple[str, ...] = ()

    def wants(self, name: str) -> bool:
        return not self.tags or any(fnmatch.fnmatchcase(name, glob) for glob in self.tags)

    def overlaps(self, start_ns: int, end_ns: int) -> bool:
        return (self.from_ns is None or end_ns > self.from_ns) and (
            self.to_ns is None or start_ns < self.to_ns
        )


@dataclass(frozen=True)
class Footer:
    """What one batch file says of itself."""

    path: str
    size: int
    gateway: str
    window_start: int
    window_end: int
    config_hash: str
    points: int
    lineage: str  # the JSON text as stored: parsed once per distinct text by SeriesIndex
    quality: dict[str, Any] | None


@dataclass(frozen=True)
class Stored:
    footer: Footer
    table: pa.Table | None  # the columns asked for, rows within the range; None if none asked


class NotADataset(Exception):
    """The path is neither a folder nor a Parquet file."""


def dataset_files(path: Path) -> list[str]:
    """The batch files of a dataset folder, or the one file, in window order. Plain
    strings from os.walk: pathlib costs a second per 86,400 files."""
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        raise NotADataset(f"{path}: no such file or folder")
    files = [
        os.path.join(folder, name)
        for folder, _, names in os.walk(path)
        for name in names
        if name.endswith(".parquet") and not name.startswith(".")
    ]
    return sorted(files, key=lambda p: (os.path.basename(p), p))


def _stamp(ns: int) -> str:
    """The start of a batch file's name for a window starting at ``ns``: such names sort
    as their times do, so a range is checked by comparing strings."""
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}.{rest // 1_000_000:03d}"


class DatasetReader:
    """Iterates over a dataset's batches as :class:`Stored`, in window order."""

    def __init__(
        self,
        path: Path,
        selection: Selection,
        columns: list[str] | None = None,
        threads: int = 2,
        quality: bool = True,
    ) -> None:
        """``columns``: the samples' columns to read (None: footers only); ``quality``:
        whether to parse the footers' quality figures."""
        self.selection = selection
        self.columns = columns
        self.quality = quality
        self.threads = threads
        low, high = selection.from_ns, selection.to_ns
        self._low = "" if low is None else _stamp(low - _WIDEST_WINDOW_NS)
        self._high = "~" if high is None else _stamp(high)  # "~" sorts after every digit
        self.files = [p for p in dataset_files(path) if self._may_overlap(p)]
        self._dictionaries = [c for c in ("source", "tag") if c in (columns or [])]
        self._schema = pa.schema([SCHEMA.field(name) for name in columns or []])
        self.skipped: list[tuple[str, str]] = []  # (path, why)
        self.outside = 0  # batches whose window lies outside the range
        self.lineage = LineageFolder()  # records named by digest, in the dataset's _lineage

    def _may_overlap(self, path: str) -> bool:
        name = os.path.basename(path)
        if not _BATCH_NAME.match(name):
            return True  # not named by its window: its footer will tell
        return self._low <= name[:19] < self._high

    def __iter__(self) -> Iterator[Stored]:
        with ThreadPoolExecutor(self.threads, thread_name_prefix="report-read") as pool:
            pending: deque[tuple[str, Future[Stored | str | None]]] = deque()
            files = iter(self.files)
            try:
                for path in files:
                    pending.append((path, pool.submit(self._read, path)))
                    if len(pending) >= _AHEAD:
                        yield from self._take(pending.popleft())
                while pending:
                    yield from self._take(pending.popleft())
            finally:
                for _, future in pending:
                    future.cancel()

    def _take(self, item: tuple[str, Future[Stored | str | None]]) -> Iterator[Stored]:
        path, future = item
        result = future.result()
        if isinstance(result, str):
            self.skipped.append((path, result))
        elif result is None:
            self.outside += 1
        else:
            yield result

    def _read(self, path: str) -> Stored | str | None:
        """The batch, None if outside the range, or why it cannot be read. The file is
        read whole in one call and decoded from memory without pre-buffering: for files of
        a few kB, pyarrow's own reads of footer and column chunks (handed to its I/O
        threads) cost more than the decoding, in wall time most of all on a busy machine."""
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            file = pq.ParquetFile(
                pa.BufferReader(data), read_dictionary=self._dictionaries, pre_buffer=False
            )
            footer = self._footer(path, len(data), file.metadata)
            if isinstance(footer, str):
                return footer
            if not self.selection.overlaps(footer.window_start, footer.window_end):
                return None
            return Stored(footer, self._samples(file) if self.columns else None)
        except (OSError, pa.ArrowException, ValueError, KeyError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def _footer(self, path: str, size: int, metadata: pq.FileMetaData) -> Footer | str:
        return _footer_of(path, size, metadata, self.quality, self.lineage)

    def _samples(self, file: pq.ParquetFile) -> pa.Table:
        """The columns asked for, of the row groups that meet the range (the rows outside
        it are left to the caller, which drops them in bulk: see agent/report/chunk.py)."""
        assert self.columns is not None
        groups = list(range(file.metadata.num_row_groups))
        low, high = self.selection.from_ns, self.selection.to_ns
        if low is not None or high is not None:
            groups = [g for g in groups if _meets(file.metadata.row_group(g), low, high)]
        table = file.read_row_groups(groups, columns=self.columns, use_threads=False)
        if not table.schema.equals(self._schema):
            table = table.cast(self._schema)  # an older or foreign layout: raises if it cannot
        return table.replace_schema_metadata(None)


def _meets(group: pq.RowGroupMetaData, low: int | None, high: int | None) -> bool:
    """Whether a row group's ``time`` statistics meet [low, high); True without them."""
    for index in range(group.num_columns):
        column = group.column(index)
        if column.path_in_schema != "time":
            continue
        stats = column.statistics
        if stats is None or not stats.has_min_max:
            return True
        first, last = int(stats.min_raw), int(stats.max_raw)
        return (low is None or last >= low) and (high is None or first < high)
    return True


def _footer_of(
    path: str, size: int, metadata: pq.FileMetaData, quality: bool, lineage: LineageFolder
) -> Footer | str:
    raw = metadata.metadata or {}
    stored = {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"edge_agent.")}
    if f"{META_PREFIX}window_start_ns" not in stored:
        return "not an edge-agent batch (no edge_agent.window_start_ns)"
    meta = expand(stored, metadata.num_rows, lambda digest: lineage.find(path, digest))
    figures = meta.get(f"{META_PREFIX}quality") if quality else None
    return Footer(
        path,
        size,
        meta.get(f"{META_PREFIX}gateway_id", ""),
        int(meta[f"{META_PREFIX}window_start_ns"]),
        int(meta[f"{META_PREFIX}window_end_ns"]),
        meta.get(f"{META_PREFIX}config_hash", ""),
        int(meta[f"{META_PREFIX}points"]),
        meta.get(f"{META_PREFIX}tags", "{}"),
        json.loads(figures) if figures is not None else None,
    )
