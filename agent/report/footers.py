"""What the batches' footers say, added up: acquisition figures per series and per source,
in total and over time, and which configs each gateway ran when.

Each footer gives, for its window, every tag's received/expected/good (restored from the
listed deviations and the lineage, see agent.windows.dataquality) and per source the
latency, clock estimate and session time. These are counted before any edge filter, so
they describe acquisition, not what was stored. Per file only a few array operations run;
the per-window records are buffered and folded into the time grids in bulk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.report.dataset import Footer
from agent.report.series import SeriesIndex
from agent.report.timegrid import TimeGrid
from agent.windows.dataquality import unlisted_figures

_FIGURES = ("received", "expected", "good")
MAX_BUCKETS = 480  # columns of the completeness heatmap: about one per pixel pair
_FLUSH = 200_000  # buffered entries before they are folded into the grids

# per source and window: what the footer's source entry gives, by grid field
_SOURCE_FIELDS: dict[str, Any] = {
    "acquired_ns": "sum",
    "up_ns": "sum",
    "latency_sum": "sum",
    "latency_n": "sum",
    "latency_max_ms": "max",
    "offset_sum": "sum",
    "offset_n": "sum",
    "offset_min": "min",
    "offset_max": "max",
    "uncertainty_ms": "max",
}


@dataclass
class ConfigSpan:
    first_ns: int
    last_ns: int
    batches: int = 0


@dataclass
class _Pending:
    """Per-window entries not yet folded into the grids."""

    rows: list[np.ndarray] = field(default_factory=list)
    times: list[np.ndarray] = field(default_factory=list)
    figures: list[np.ndarray] = field(default_factory=list)  # (3, n): received, expected, good
    sources: list[list[float]] = field(default_factory=list)  # [source, time, *fields]
    size: int = 0


class FooterFigures:
    def __init__(self, series: SeriesIndex, max_buckets: int = MAX_BUCKETS) -> None:
        self.series = series
        self.max_buckets = max_buckets
        self.batches = 0
        self.without_figures = 0
        self.bytes = 0
        self.points = 0
        self.first_ns: int | None = None  # the windows' range
        self.last_ns: int | None = None
        self.windows: dict[str, list[int]] = {}  # gateway -> window starts
        self.widths: dict[str, int] = {}  # gateway -> its (narrowest) window
        self.configs: dict[tuple[str, str], ConfigSpan] = {}
        self.source_keys: list[tuple[str, str]] = []
        self._source_number: dict[tuple[str, str], int] = {}
        self.latency_p50: dict[int, list[np.ndarray]] = {}
        self.grid: TimeGrid | None = None  # made at the first batch: its window is the width
        self.source_grid: TimeGrid | None = None
        self._pending = _Pending()

    def add(self, footer: Footer) -> None:
        self.batches += 1
        self.bytes += footer.size
        self.points += footer.points
        start, end = footer.window_start, footer.window_end
        self.first_ns = start if self.first_ns is None else min(self.first_ns, start)
        self.last_ns = end if self.last_ns is None else max(self.last_ns, end)
        self.windows.setdefault(footer.gateway, []).append(start)
        self.widths[footer.gateway] = min(self.widths.get(footer.gateway, end - start), end - start)
        span = self.configs.setdefault((footer.gateway, footer.config_hash), ConfigSpan(start, end))
        span.first_ns, span.last_ns = min(span.first_ns, start), max(span.last_ns, end)
        span.batches += 1
        view = self.series.view(footer)
        if footer.quality is None:
            self.without_figures += 1
            return
        if self.grid is None:
            self.grid = TimeGrid(end - start, self.max_buckets, dict.fromkeys(_FIGURES, "sum"))
            self.source_grid = TimeGrid(end - start, self.max_buckets, _SOURCE_FIELDS)
        quality = footer.quality
        counts, expected = unlisted_figures(quality["span_ns"], view.rate_ns)
        rows = view.series
        figures = np.stack([counts, expected, counts])
        listed = quality["tags"]
        if listed:
            positions, values, extra_rows, extra = [], [], [], []
            for name, figure in listed.items():
                position = view.names.get(name)
                if position is not None:
                    positions.append(position)
                    values.append(figure)
                    continue
                source, _, tag = name.partition("/")  # listed, but not in this batch's lineage
                number = self.series.number(footer.gateway, source, tag)
                if number >= 0:
                    extra_rows.append(number)
                    extra.append(figure)
            if positions:
                figures[:, positions] = np.array(values, np.float64).T
            if extra:
                rows = np.concatenate([rows, np.array(extra_rows, np.int64)])
                figures = np.concatenate([figures, np.array(extra, np.float64).T], axis=1)
        pending = self._pending
        pending.rows.append(rows)
        pending.times.append(np.full(rows.shape[0], start, np.int64))
        pending.figures.append(figures)
        pending.size += rows.shape[0]
        for name, entry in quality["sources"].items():
            pending.sources.append(self._source_entry(footer.gateway, name, start, entry))
        if pending.size >= _FLUSH:
            self.flush()

    def _source_entry(
        self, gateway: str, name: str, start: int, entry: dict[str, Any]
    ) -> list[float]:
        key = (gateway, name)
        number = self._source_number.get(key)
        if number is None:
            number = self._source_number[key] = len(self.source_keys)
            self.source_keys.append(key)
        clock = entry.get("clock") or {}
        offset = clock.get("offset_ms")
        latency = entry.get("latency_p50_ms")
        return [
            number,
            start,
            entry.get("acquired_ns", 0),
            entry.get("up_ns", 0),
            latency or 0.0,
            0 if latency is None else 1,
            entry.get("latency_max_ms", np.nan),
            offset or 0.0,
            0 if offset is None else 1,
            np.nan if offset is None else offset,
            np.nan if offset is None else offset,
            clock.get("uncertainty_ms", np.nan),
        ]

    def flush(self) -> None:
        """Fold the buffered entries into the grids (call once more after the last add)."""
        pending, self._pending = self._pending, _Pending()
        if self.grid is None or self.source_grid is None:
            return
        if pending.rows:
            rows = np.concatenate(pending.rows)
            buckets = self.grid.locate(np.concatenate(pending.times))
            figures = np.concatenate(pending.figures, axis=1)
            self.grid.grow(self.series.count)
            for index, name in enumerate(_FIGURES):
                self.grid.add(name, rows, buckets, figures[index])
        if pending.sources:
            table = np.array(pending.sources, np.float64)
            rows = table[:, 0].astype(np.int64)
            buckets = self.source_grid.locate(table[:, 1].astype(np.int64))
            self.source_grid.grow(len(self.source_keys))
            for index, name in enumerate(_SOURCE_FIELDS):
                self.source_grid.add(name, rows, buckets, table[:, 2 + index])
            for number in np.unique(rows).tolist():
                mine = (rows == number) & (table[:, 5] > 0)
                self.latency_p50.setdefault(number, []).append(table[mine, 4])

    def totals(self) -> np.ndarray:
        """(3, series): received, expected and good of each series over the whole range."""
        if self.grid is None:
            return np.zeros((3, self.series.count))
        self.grid.grow(self.series.count)
        return np.stack([self.grid.values(name).sum(axis=1) for name in _FIGURES])
