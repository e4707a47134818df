"""What only the stored samples show: how many each series kept, the bad and flagged ones
by reason, and each series' trend for display.

Every figure is computed over every sample. Only the trend is reduced, to the minimum and
maximum of the usable samples (not bad, finite) per series and time bucket, a min/max
envelope that keeps every excursion visible at any zoom the page offers, and the bad or
flagged samples to one marker per series, bucket and kind (the first), so a day of 10,000
tags stays a page a browser opens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.acquisition import quality as q
from agent.report.chunk import Chunk
from agent.report.series import SeriesIndex
from agent.report.timegrid import TimeGrid

TREND_BUCKETS = 1000  # per series; the page may merge them further (see html)
_BASE_NS = 1_000_000  # finest trend bucket: 1 ms (it doubles to fit the range)
BAD, FLAGGED = 1, 2  # marker kinds


@dataclass(frozen=True)
class Markers:
    series: np.ndarray  # int64
    time: np.ndarray  # int64 ns
    value: np.ndarray  # float64 (NaN for a placeholder)
    quality: np.ndarray  # uint16


class SampleFigures:
    def __init__(self, series: SeriesIndex, buckets: int = TREND_BUCKETS) -> None:
        self.series = series
        self.points = np.zeros(0, np.int64)
        self.first = np.zeros(0, np.int64)
        self.last = np.zeros(0, np.int64)
        self.trend = TimeGrid(_BASE_NS, buckets, {"min": "min", "max": "max"}, np.float32)
        self._codes: list[tuple[np.ndarray, np.ndarray]] = []  # (series << 16 | quality, n)
        self._markers: list[Markers] = []
        self._marker_rows = 0

    def _grow(self) -> None:
        more = self.series.count - self.points.shape[0]
        if more > 0:
            self.points = np.r_[self.points, np.zeros(more, np.int64)]
            self.first = np.r_[self.first, np.full(more, np.iinfo(np.int64).max)]
            self.last = np.r_[self.last, np.full(more, np.iinfo(np.int64).min)]
        self.trend.grow(self.series.count)

    def add(self, chunk: Chunk) -> None:
        self._grow()
        runs = chunk.runs()
        owners = chunk.series[runs]
        self.points[owners] += np.diff(np.r_[runs, len(chunk)])
        self.first[owners] = np.minimum(self.first[owners], np.minimum.reduceat(chunk.time, runs))
        self.last[owners] = np.maximum(self.last[owners], np.maximum.reduceat(chunk.time, runs))
        flagged = chunk.quality != 0
        codes, counts = np.unique(
            (chunk.series[flagged] << 16) | chunk.quality[flagged], return_counts=True
        )
        self._codes.append((codes, counts))
        bad = (chunk.quality & q.SEVERITY_MASK) == q.BAD
        usable = ~bad & np.isfinite(chunk.value)
        self._add_trend(chunk.series[usable], chunk.time[usable], chunk.value[usable])
        kind = np.where(bad, BAD, FLAGGED)[flagged]
        self._add_markers(
            Markers(
                chunk.series[flagged],
                chunk.time[flagged],
                chunk.value[flagged],
                chunk.quality[flagged],
            ),
            kind,
        )

    def _add_trend(self, series: np.ndarray, time: np.ndarray, value: np.ndarray) -> None:
        if not series.size:
            return
        bucket = self.trend.locate(time)
        cell = series * (self.trend.max_buckets + 1) + bucket
        runs = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
        self.trend.add("min", series[runs], bucket[runs], np.minimum.reduceat(value, runs))
        self.trend.add("max", series[runs], bucket[runs], np.maximum.reduceat(value, runs))

    def _add_markers(self, markers: Markers, kind: np.ndarray) -> None:
        if not markers.series.size:
            return
        self._markers.append(_first_per_cell(markers, kind, self.trend))
        self._marker_rows += self._markers[-1].series.size
        if self._marker_rows > 4 * max(self.series.count, 1) * self.trend.max_buckets:
            self._markers = [self.markers()]
            self._marker_rows = self._markers[0].series.size

    def markers(self) -> Markers:
        """One marker per series, trend bucket and kind (bad, or flagged), the first."""
        if not self._markers:
            empty = np.empty(0, np.int64)
            return Markers(empty, empty, np.empty(0), np.empty(0, np.uint16))
        columns = zip(*(_columns(m) for m in self._markers), strict=True)
        joined = Markers(*(np.concatenate(column) for column in columns))
        kind = np.where((joined.quality & q.SEVERITY_MASK) == q.BAD, BAD, FLAGGED)
        return _first_per_cell(joined, kind, self.trend)

    def by_quality(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(series, quality word, count) of every sample not plain good."""
        if not self._codes:
            empty = np.empty(0, np.int64)
            return empty, empty, empty
        codes = np.concatenate([c for c, _ in self._codes])
        counts = np.concatenate([n for _, n in self._codes])
        unique, inverse = np.unique(codes, return_inverse=True)
        totals = np.bincount(inverse, weights=counts).astype(np.int64)
        return unique >> 16, unique & 0xFFFF, totals


def _columns(markers: Markers) -> tuple[np.ndarray, ...]:
    return markers.series, markers.time, markers.value, markers.quality


def _first_per_cell(markers: Markers, kind: np.ndarray, grid: TimeGrid) -> Markers:
    bucket = grid.locate(markers.time)
    cell = (markers.series * (grid.max_buckets + 1) + bucket) * 4 + kind
    order = np.lexsort((markers.time, cell))
    keep = order[np.r_[True, cell[order][1:] != cell[order][:-1]]]
    return Markers(
        markers.series[keep], markers.time[keep], markers.value[keep], markers.quality[keep]
    )
