"""Writing the export's table: Parquet or CSV, chunk by chunk, byte-identical for the
same rows (no clock, no host, no thread-dependent layout in either), and the final rewrite
of its parts: their columns unified (a tag first seen later is empty before) and every
value column normalised once the whole column's statistics are known."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

TIME = pa.timestamp("ns", tz="UTC")


@dataclass
class ColumnStats:
    """Per column over the exported cells: count, mean and M2 (Chan's merge), min, max,
    and how many cells only the gap bridging filled. Columns are added as they become
    known (the export numbers them by series): one never added stays empty."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    low: np.ndarray
    high: np.ndarray
    filled: np.ndarray

    @classmethod
    def empty(cls, width: int) -> ColumnStats:
        return cls(
            np.zeros(width, np.int64),
            np.zeros(width),
            np.zeros(width),
            np.full(width, np.inf),
            np.full(width, -np.inf),
            np.zeros(width, np.int64),
        )

    def take(self, columns: np.ndarray) -> ColumnStats:
        """These columns' figures, in this order (one past the known ones: empty)."""
        width = int(columns.max(initial=-1)) + 1
        grown = self._grown(width)
        return ColumnStats(
            grown.count[columns],
            grown.mean[columns],
            grown.m2[columns],
            grown.low[columns],
            grown.high[columns],
            grown.filled[columns],
        )

    def _grown(self, width: int) -> ColumnStats:
        more = width - self.count.shape[0]
        if more <= 0:
            return self
        empty = ColumnStats.empty(more)
        return ColumnStats(
            *(
                np.concatenate([mine, extra])
                for mine, extra in zip(self._arrays(), empty._arrays(), strict=True)
            )
        )

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return self.count, self.mean, self.m2, self.low, self.high, self.filled

    def add(self, values: np.ndarray, filled: np.ndarray, at: np.ndarray) -> None:
        """``values``: (cells, columns), NaN where empty; ``at``: each column's place."""
        grown = self._grown(int(at.max(initial=-1)) + 1)
        self.count, self.mean, self.m2 = grown.count, grown.mean, grown.m2
        self.low, self.high, self.filled = grown.low, grown.high, grown.filled
        present = ~np.isnan(values)
        count = present.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, np.nansum(values, axis=0) / np.maximum(count, 1), 0.0)
            m2 = np.nansum((values - mean) ** 2, axis=0)
        before, before_mean = self.count[at], self.mean[at]
        total = before + count
        delta = mean - before_mean
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean[at] = np.where(
                total > 0, before_mean + delta * count / np.maximum(total, 1), 0.0
            )
            self.m2[at] = self.m2[at] + m2 + delta**2 * before * count / np.maximum(total, 1)
        self.count[at] = total
        self.low[at] = np.fmin(self.low[at], np.nanmin(np.where(present, values, np.inf), axis=0))
        self.high[at] = np.fmax(
            self.high[at], np.nanmax(np.where(present, values, -np.inf), axis=0)
        )
        self.filled[at] += filled.sum(axis=0)

    def normalization(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """(offset, scale) per column: normalised = (value - offset) / scale; a constant or
        empty column gets scale 1."""
        if method == "minmax":
            offset = np.where(self.count > 0, self.low, 0.0)
            scale = np.where(self.count > 0, self.high - self.low, 1.0)
        else:
            offset = self.mean
            scale = np.sqrt(self.m2 / np.maximum(self.count, 1))
        return offset, np.where(scale > 0, scale, 1.0)


class TableWriter:
    """Parquet (zstd, one row group per chunk) or CSV; both deterministic."""

    def __init__(self, path: Path, schema: pa.Schema, format: str) -> None:
        self.parquet = format == "parquet"
        if self.parquet:
            self.writer: Any = pq.ParquetWriter(path, schema, compression="zstd")
        else:
            self.writer = pacsv.CSVWriter(path, schema.remove_metadata())

    def write(self, table: pa.Table) -> None:
        if self.parquet:
            self.writer.write_table(table)
        else:
            self.writer.write_table(table.replace_schema_metadata(None))

    def close(self) -> None:
        self.writer.close()


def rewrite(
    parts: list[Path],
    target: Path,
    schema: pa.Schema,
    format: str,
    scaling: tuple[list[str], np.ndarray, np.ndarray] | None = None,
) -> None:
    """Write the table's parts (Parquet: cheaper to write and read back than CSV) as one
    table of ``schema`` in ``format``, row group by row group: a column a part lacks is
    empty there (a ``:filled`` one false), and with ``scaling`` (names, offset, scale)
    every value column is normalised."""
    index = {name: i for i, name in enumerate(scaling[0])} if scaling is not None else {}
    writer = TableWriter(target, schema, format)
    try:
        for part in parts:
            file = pq.ParquetFile(part)
            for group in range(file.num_row_groups):
                table = file.read_row_group(group)
                arrays = [_column(table, field, index, scaling) for field in schema]
                writer.write(pa.Table.from_arrays(arrays, schema=schema))
    finally:
        writer.close()


def _column(
    table: pa.Table,
    field: pa.Field,
    index: dict[str, int],
    scaling: tuple[list[str], np.ndarray, np.ndarray] | None,
) -> pa.ChunkedArray | pa.Array:
    if field.name not in table.column_names:
        if field.nullable:
            return pa.nulls(table.num_rows, field.type)
        return pa.array(np.zeros(table.num_rows, bool), field.type)
    column = table[field.name]
    if scaling is None or field.name not in index:
        return column
    i = index[field.name]
    _, offset, scale = scaling
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    return pa.array((values - offset[i]) / scale[i], pa.float64(), from_pandas=True)
