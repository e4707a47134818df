"""Samples of many batch files as one set of numpy columns, grouped by series.

At 1 s windows a file holds a second of data, and per-file work costs more in call overhead
than in arithmetic, so files are gathered into chunks of a few hundred thousand rows first:
their tables are concatenated, their per-file dictionaries unified once, and every column
converted in one go. A stable sort by series keeps each series' rows in file order, which is
time order (but for rows that arrived late, flagged LATE and stored in a later batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from agent.report.dataset import Selection
from agent.report.series import SeriesIndex

CHUNK_ROWS = 500_000
_INT64 = np.iinfo(np.int64)


@dataclass(frozen=True)
class Chunk:
    series: np.ndarray  # int64, ascending
    time: np.ndarray  # int64 ns
    value: np.ndarray  # float64, NaN for text and bad samples
    quality: np.ndarray  # uint16

    def __len__(self) -> int:
        return int(self.series.shape[0])

    def runs(self) -> np.ndarray:
        """Index of the first row of each series' run."""
        return np.flatnonzero(np.r_[True, self.series[1:] != self.series[:-1]])


class ChunkBuilder:
    """Gathers batch samples (columns time, source, tag, value, quality) into chunks."""

    def __init__(self, series: SeriesIndex, selection: Selection, rows: int = CHUNK_ROWS) -> None:
        self.series = series
        self.low = _INT64.min if selection.from_ns is None else selection.from_ns
        self.high = _INT64.max if selection.to_ns is None else selection.to_ns
        self.rows = rows
        self._tables: list[pa.Table] = []
        self._gateways: list[str] = []
        self._size = 0

    def add(self, gateway: str, table: pa.Table) -> Chunk | None:
        """Add one batch's samples; a chunk once enough rows are gathered, else None."""
        if table.num_rows:
            self._tables.append(table)
            self._gateways.append(gateway)
            self._size += table.num_rows
        return self.take() if self._size >= self.rows else None

    def take(self) -> Chunk | None:
        """The rows gathered so far (in the selection's range and tags), None if none."""
        if not self._tables:
            return None
        tables, gateways = self._tables, self._gateways
        self._tables, self._gateways, self._size = [], [], 0
        joined = pa.concat_tables(tables).unify_dictionaries()

        def column(name: str) -> np.ndarray:
            parts = [chunk.to_numpy(zero_copy_only=False) for chunk in joined[name].chunks]
            return np.concatenate(parts)

        names = sorted(set(gateways))
        number = {name: index for index, name in enumerate(names)}
        gateway = np.repeat(
            np.array([number[g] for g in gateways], np.int64), [t.num_rows for t in tables]
        )
        series = self.series.row_series(names, gateway, joined["source"], joined["tag"])
        time = column("time").view(np.int64)
        keep = (series >= 0) & (time >= self.low) & (time < self.high)
        order = np.flatnonzero(keep)
        kept = series[order]
        if self.series.count <= 65_536:  # numpy's stable sort of 16-bit keys is a radix sort
            kept = kept.astype(np.uint16)
        order = order[np.argsort(kept, kind="stable")]
        return Chunk(series[order], time[order], column("value")[order], column("quality")[order])
