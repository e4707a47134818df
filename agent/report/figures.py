"""The report of a dataset: one pass over its files, then every figure the text table, the
JSON, the CSV and the HTML page show.

Without ``samples`` only the footers are read (the default text table: a day of batches in
the time it takes to open the files); with them every sample is read once as well, for
the stored points, the bad and flagged samples by reason, the gaps and the trends.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.acquisition import quality as q
from agent.report.chunk import Chunk, ChunkBuilder
from agent.report.dataset import DatasetReader, Selection
from agent.report.footers import FooterFigures
from agent.report.gaps import GapFinder, Gaps
from agent.report.samples import SampleFigures
from agent.report.series import SeriesIndex
from agent.report.timegrid import TimeGrid

SAMPLE_COLUMNS = ["time", "source", "tag", "value", "quality"]
_PLACEHOLDERS = (int(q.Reason.COMM_ERROR), int(q.Reason.TIMEOUT))


@dataclass
class Report:
    dataset: Path
    selection: Selection
    series: SeriesIndex
    footers: FooterFigures
    samples: SampleFigures | None
    gaps: Gaps | None
    skipped: list[tuple[str, str]]


def compute(dataset: Path, selection: Selection, samples: bool = False) -> Report:
    """Read the dataset once: footers always, samples if asked."""
    series = SeriesIndex(selection)
    footers = FooterFigures(series)
    reader = DatasetReader(dataset, selection, SAMPLE_COLUMNS if samples else None)
    sample_figures = SampleFigures(series) if samples else None
    finder = GapFinder(series) if samples else None
    builder = ChunkBuilder(series, selection)

    def consume(chunk: Chunk | None) -> None:
        if chunk is not None and sample_figures is not None and finder is not None:
            sample_figures.add(chunk)
            finder.add(chunk)

    for stored in reader:
        footers.add(stored.footer)
        if stored.table is not None:
            consume(builder.add(stored.footer.gateway, stored.table))
    consume(builder.take())
    footers.flush()
    gaps = None
    if finder is not None:
        gaps = finder.result(footers.windows, footers.widths, footers.last_ns or 0)
    return Report(dataset, selection, series, footers, sample_figures, gaps, reader.skipped)


def iso(ns: int | None) -> str | None:
    """UTC time to the millisecond, for people; the ``_ns`` fields beside are exact."""
    if ns is None:
        return None
    seconds, rest = divmod(int(ns), 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 1_000_000:03d}Z"


def config_history(footers: FooterFigures) -> list[dict[str, Any]]:
    """Which config each gateway ran when, oldest first per gateway: the same list in the
    JSON report and the data card, so a reader can match a hash across both."""
    return [
        {
            "gateway": gateway,
            "config_hash": config_hash,
            "from": iso(span.first_ns),
            "to": iso(span.last_ns),
            "batches": span.batches,
        }
        for (gateway, config_hash), span in sorted(
            footers.configs.items(), key=lambda item: (item[0][0], item[1].first_ns)
        )
    ]


def ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 6) if whole else None


@dataclass(frozen=True)
class TagRow:
    """One series' figures, for the table, the CSV and the page."""

    number: int
    name: str
    gateway: str
    source: str
    tag: str
    lineage: dict[str, Any]
    received: float
    expected: float | None  # None: the series owes no count (on change, derived)
    good: float
    points: int | None = None  # stored samples, when the samples were read
    device_points: int | None = None  # of them, those the device delivered
    bad: dict[str, int] | None = None
    flagged: dict[str, int] | None = None
    gap_count: int | None = None
    gap_seconds: float | None = None
    first_ns: int | None = None
    last_ns: int | None = None

    @property
    def completeness(self) -> float | None:
        if not self.expected:
            return None
        return round(min(self.received / self.expected, 1.0), 6)

    @property
    def validity(self) -> float | None:
        return ratio(self.good, self.received)

    @property
    def kept(self) -> float | None:
        """Of the samples received, the share stored: what the edge filters kept."""
        return None if self.device_points is None else ratio(self.device_points, self.received)


def tag_rows(report: Report) -> list[TagRow]:
    """Every selected series' figures, sorted by name."""
    series = report.series
    totals = report.footers.totals()
    names = series.names()
    by_quality = _by_quality(report)
    gap_totals = _gap_totals(report)
    rows = []
    for number, (gateway, source, tag) in enumerate(series.keys):
        lineage = series.lineage(number)
        owed = math.isfinite(series.rate_ns[number])
        row: dict[str, Any] = {
            "number": number,
            "name": names[number],
            "gateway": gateway,
            "source": source,
            "tag": tag,
            "lineage": lineage,
            "received": float(totals[0, number]),
            "expected": float(totals[1, number]) if owed else None,
            "good": float(totals[2, number]),
        }
        if report.samples is not None:
            bad, flagged, placeholders = by_quality.get(number, ({}, {}, 0))
            points = int(report.samples.points[number])
            row |= {
                "points": points,
                "device_points": points - placeholders,
                "bad": bad,
                "flagged": flagged,
                "gap_count": gap_totals.get(number, (0, 0.0))[0],
                "gap_seconds": round(gap_totals.get(number, (0, 0.0))[1], 3),
            }
            if points:
                row["first_ns"] = int(report.samples.first[number])
                row["last_ns"] = int(report.samples.last[number])
        rows.append(TagRow(**row))
    return sorted(rows, key=lambda r: r.name)


def _by_quality(report: Report) -> dict[int, tuple[dict[str, int], dict[str, int], int]]:
    """Per series: bad samples by reason, flagged ones (uncertain by reason, and the flags),
    and how many rows were not the device's (placeholders, interpolated)."""
    found: dict[int, tuple[dict[str, int], dict[str, int], int]] = {}
    if report.samples is None:
        return found
    for series, word, count in zip(*(c.tolist() for c in report.samples.by_quality()), strict=True):
        bad, flagged, made = found.setdefault(series, ({}, {}, 0))
        reason = q.reason_name(word & q.REASON_MASK)
        if word & q.SEVERITY_MASK == q.BAD:
            bad[reason] = bad.get(reason, 0) + count
        elif word & q.REASON_MASK:
            flagged[reason] = flagged.get(reason, 0) + count
        for flag in q.Flag:
            if word & flag:
                flagged[flag.name.lower()] = flagged.get(flag.name.lower(), 0) + count
        if (word & q.REASON_MASK) in _PLACEHOLDERS and word & q.SEVERITY_MASK == q.BAD:
            made += count  # the gateway's marker of a failed poll or session
        elif word & q.REASON_MASK == q.Reason.INTERPOLATED:
            made += count  # a fill stage's
        found[series] = (bad, flagged, made)
    return found


def _gap_totals(report: Report) -> dict[int, tuple[int, float]]:
    if report.gaps is None:
        return {}
    totals: dict[int, tuple[int, float]] = {}
    seconds = (report.gaps.end - report.gaps.start) / 1e9
    for series, length in zip(report.gaps.series.tolist(), seconds.tolist(), strict=True):
        count, total = totals.get(series, (0, 0.0))
        totals[series] = (count + 1, total + length)
    return totals


def completeness_of(tags: list[TagRow]) -> float | None:
    """Of the samples the tags owed, the share received; each tag's surplus capped, so one
    tag's extra samples do not hide another's missing ones. None if none owed (tags that
    all arrive on change)."""
    owed = [t for t in tags if t.expected]
    expected = sum(t.expected or 0.0 for t in owed)
    return ratio(sum(min(t.received, t.expected or 0.0) for t in owed), expected)


@dataclass(frozen=True)
class SourceRow:
    number: int  # in FooterFigures.source_keys
    name: str
    gateway: str
    source: str
    tags: int
    received: float
    expected: float
    good: float
    completeness: float | None  # see completeness_of
    acquired_ns: float
    up_ns: float
    latency_p50_ms: float | None
    latency_max_ms: float | None
    offset_min_ms: float | None
    offset_max_ms: float | None
    uncertainty_ms: float | None

    @property
    def validity(self) -> float | None:
        return ratio(self.good, self.received)

    @property
    def session_up(self) -> float | None:
        return ratio(self.up_ns, self.acquired_ns)


def source_rows(report: Report, tags: list[TagRow]) -> list[SourceRow]:
    """Per source of the selected tags, sorted by name."""
    footers = report.footers
    grid = footers.source_grid
    several = len(report.series.gateways()) > 1
    rows = []
    for number, (gateway, source) in enumerate(footers.source_keys):
        mine = [t for t in tags if (t.gateway, t.source) == (gateway, source)]
        if not mine:
            continue

        p50 = footers.latency_p50.get(number, [])
        p50s = np.concatenate(p50) if p50 else np.empty(0)
        rows.append(
            SourceRow(
                number,
                f"{gateway}:{source}" if several else source,
                gateway,
                source,
                len(mine),
                sum(t.received for t in mine),
                sum(t.expected or 0.0 for t in mine),
                sum(t.good for t in mine),
                completeness_of(mine),
                _total(grid, "acquired_ns", number, np.sum) or 0.0,
                _total(grid, "up_ns", number, np.sum) or 0.0,
                float(np.sort(p50s)[p50s.size // 2]) if p50s.size else None,
                _total(grid, "latency_max_ms", number, np.max),
                _total(grid, "offset_min", number, np.min),
                _total(grid, "offset_max", number, np.max),
                _total(grid, "uncertainty_ms", number, np.max),
            )
        )
    return sorted(rows, key=lambda r: r.name)


def _total(grid: TimeGrid | None, field: str, row: int, reduce: Any) -> float | None:
    """A source's field over all buckets (None where no batch gave it)."""
    if grid is None:
        return None
    values = grid.values(field)[row]
    finite = values[np.isfinite(values)]
    return float(reduce(finite)) if finite.size else None


def completeness_shares(report: Report) -> np.ndarray:
    """(series, buckets): the share of what each series owed that it received, NaN where
    it owed less than half a sample (a bucket it was hardly acquired in: the last moments
    before a stop would read 0 %)."""
    grid = report.footers.grid
    if grid is None:
        return np.empty((report.series.count, 0))
    grid.grow(report.series.count)
    received, expected = grid.values("received"), grid.values("expected")
    return owed_share(np.minimum(received, expected), expected)


def owed_share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(whole >= 0.5, part / whole, np.nan)
