"""Figures per row (a series, a source) and time bucket, in one pass over data whose time
span is not known ahead.

Buckets are multiples of ``width`` since the epoch. When the data reaches past what
``max_buckets`` buckets of the current width cover, the width doubles (as often as needed)
and the buckets are folded two into one, so a minute and a day both end up with between
``max_buckets / 2`` and ``max_buckets`` buckets: the resolution a plot can show, whatever
the range. Folding is exact for sums, minima and maxima.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

Kind = Literal["sum", "min", "max"]
_FOLD = {"sum": np.add, "min": np.fmin, "max": np.fmax}
_EMPTY = {"sum": 0.0, "min": np.inf, "max": -np.inf}


class TimeGrid:
    def __init__(
        self, width_ns: int, max_buckets: int, fields: dict[str, Kind], dtype: type = np.float64
    ) -> None:
        self.width = width_ns
        self.max_buckets = max_buckets
        self.kinds = fields
        self.dtype = dtype
        self.origin: int | None = None  # start of bucket 0
        self.buckets = 0
        self.rows = 0
        self.data = {name: self._empty(name, 0, max_buckets) for name in fields}

    def _empty(self, name: str, rows: int, buckets: int) -> np.ndarray:
        return np.full((rows, buckets), _EMPTY[self.kinds[name]], self.dtype)

    def grow(self, rows: int) -> None:
        """Make room for ``rows`` rows (series are discovered as files are read)."""
        if rows <= self.rows:
            return
        capacity = next(iter(self.data.values())).shape[0]
        if rows > capacity:
            more = max(rows, 2 * capacity, 16) - capacity
            for name, array in self.data.items():
                self.data[name] = np.concatenate([array, self._empty(name, more, array.shape[1])])
        self.rows = rows

    def locate(self, times: np.ndarray) -> np.ndarray:
        """Bucket of each time (int64 ns), widening the buckets first if they must."""
        if not times.size:
            return np.empty(0, np.int64)
        self._cover(int(times.min()), int(times.max()))
        assert self.origin is not None
        return (times - self.origin) // self.width

    def _cover(self, low: int, high: int) -> None:
        if self.origin is None:
            self.origin = low // self.width * self.width
        start = min(self.origin, low)
        end = max(self.origin + self.buckets * self.width, high + 1)
        width = self.width
        while -(-(end - start // width * width) // width) > self.max_buckets:
            width *= 2
        origin = start // width * width
        buckets = -(-(end - origin) // width)
        if width != self.width or origin != self.origin:
            old = (
                self.origin + np.arange(self.buckets, dtype=np.int64) * self.width - origin
            ) // width
            for name, array in self.data.items():
                folded = self._empty(name, array.shape[0], self.max_buckets)
                columns: Any = (slice(None), old)
                _FOLD[self.kinds[name]].at(folded, columns, array[:, : self.buckets])
                self.data[name] = folded
            self.width, self.origin = width, origin
        self.buckets = buckets

    def add(self, name: str, rows: np.ndarray, buckets: np.ndarray, values: np.ndarray) -> None:
        _FOLD[self.kinds[name]].at(self.data[name], (rows, buckets), values.astype(self.dtype))

    def values(self, name: str) -> np.ndarray:
        """The field over the buckets in use: sums, or minima/maxima with NaN where empty."""
        array = self.data[name][: self.rows, : self.buckets]
        if self.kinds[name] == "sum":
            return array
        return np.where(np.isfinite(array), array, np.nan)

    def starts(self) -> np.ndarray:
        """Start of each bucket in use (int64 ns)."""
        origin = 0 if self.origin is None else self.origin
        return origin + np.arange(self.buckets, dtype=np.int64) * self.width
