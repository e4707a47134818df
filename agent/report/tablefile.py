"""Writing the export's table: Parquet or CSV, chunk by chunk, byte-identical for the
same rows (no clock, no host, no thread-dependent layout in either), and rewriting it with
every value column normalised once the whole column's statistics are known."""

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
    and how many cells only the gap bridging filled."""

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

    def add(self, values: np.ndarray, filled: np.ndarray) -> None:
        """``values``: (cells, columns), NaN where empty."""
        present = ~np.isnan(values)
        count = present.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, np.nansum(values, axis=0) / np.maximum(count, 1), 0.0)
            m2 = np.nansum((values - mean) ** 2, axis=0)
        total = self.count + count
        delta = mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean = np.where(total > 0, self.mean + delta * count / np.maximum(total, 1), 0.0)
            self.m2 = self.m2 + m2 + delta**2 * self.count * count / np.maximum(total, 1)
        self.count = total
        self.low = np.fmin(self.low, np.nanmin(np.where(present, values, np.inf), axis=0))
        self.high = np.fmax(self.high, np.nanmax(np.where(present, values, -np.inf), axis=0))
        self.filled += filled.sum(axis=0)

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


def rescale(
    source: Path,
    target: Path,
    names: list[str],
    offset: np.ndarray,
    scale: np.ndarray,
    format: str,
) -> None:
    """Rewrite the plain table (always Parquet: cheaper to write and read back than CSV)
    as ``format`` with every value column normalised."""
    index = {name: i for i, name in enumerate(names)}
    file = pq.ParquetFile(source)
    schema = file.schema_arrow
    writer = TableWriter(target, schema, format)
    try:
        for group in range(file.num_row_groups):
            table = file.read_row_group(group)
            arrays = []
            for name in table.column_names:
                column = table[name]
                if name in index:
                    i = index[name]
                    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
                    column = pa.array(
                        (values - offset[i]) / scale[i], pa.float64(), from_pandas=True
                    )
                arrays.append(column)
            writer.write(pa.Table.from_arrays(arrays, schema=schema))
    finally:
        writer.close()
