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
from agent.report.gaps import GapFinder, Gaps, reason_name
from agent.report.samples import SampleFigures
from agent.report.series import SeriesIndex
from agent.report.timegrid import TimeGrid

FORMAT = "edge-agent-report/1"
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
        widths = {}
        for gateway, starts in footers.windows.items():
            widths[gateway] = _window_width(starts)
        gaps = finder.result(footers.windows, widths, footers.last_ns or 0)
    return Report(dataset, selection, series, footers, sample_figures, gaps, reader.skipped)


def _window_width(starts: list[int]) -> int:
    """A gateway's window: the smallest step between its batches (0 if it has one)."""
    if len(starts) < 2:
        return 0
    steps = np.diff(np.unique(np.array(starts, np.int64)))
    return int(steps.min()) if steps.size else 0


def iso(ns: int | None) -> str | None:
    """UTC time to the millisecond, for people; the ``_ns`` fields beside are exact."""
    if ns is None:
        return None
    seconds, rest = divmod(int(ns), 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 1_000_000:03d}Z"


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


def to_dict(report: Report) -> dict[str, Any]:
    """Every figure as JSON-ready data (the ``--json`` output; the page is drawn from it
    and from the trends)."""
    tags = tag_rows(report)
    sources = source_rows(report, tags)
    footers = report.footers
    received = sum(t.received for t in tags)
    expected = sum(t.expected or 0.0 for t in tags)
    points = sum(t.points or 0 for t in tags) if report.samples is not None else footers.points
    device = sum(t.device_points or 0 for t in tags)
    summary: dict[str, Any] = {
        "from": iso(footers.first_ns),
        "to": iso(footers.last_ns),
        "from_ns": footers.first_ns,
        "to_ns": footers.last_ns,
        "gateways": report.series.gateways(),
        "sources": len(sources),
        "tags": len(tags),
        "batches": footers.batches,
        "batches_without_figures": footers.without_figures,
        "points": points,
        "bytes": footers.bytes,
        "bytes_per_point": round(footers.bytes / points, 3) if points else None,
        "received": received,
        "expected": round(expected, 3),
        "completeness": completeness_of(tags),
        "validity": ratio(sum(t.good for t in tags), received),
        "kept": ratio(device, received) if report.samples is not None else None,
        "skipped_files": [{"path": path, "why": why} for path, why in report.skipped],
    }
    if report.samples is not None and any(t.first_ns is not None for t in tags):
        summary["first_sample"] = iso(min(t.first_ns for t in tags if t.first_ns is not None))
        summary["last_sample"] = iso(max(t.last_ns for t in tags if t.last_ns is not None))
    return {
        "format": FORMAT,
        "dataset": str(report.dataset),
        "selection": {
            "from": iso(report.selection.from_ns),
            "to": iso(report.selection.to_ns),
            "tags": list(report.selection.tags),
        },
        "summary": summary,
        "sources": [_source_dict(row) for row in sources],
        "tags": [_tag_dict(row, report) for row in tags],
        "gaps": _gaps(report),
        "timeline": _timeline(report, tags),
        "source_timeline": _source_timeline(report, sources),
        "configs": [
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
        ],
    }


def _source_dict(row: SourceRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "gateway": row.gateway,
        "source": row.source,
        "tags": row.tags,
        "received": row.received,
        "expected": round(row.expected, 3),
        "good": row.good,
        "completeness": row.completeness,
        "validity": row.validity,
        "session_up": row.session_up,
        "latency_p50_ms": row.latency_p50_ms,
        "latency_max_ms": row.latency_max_ms,
        "clock_offset_ms": [row.offset_min_ms, row.offset_max_ms]
        if row.offset_min_ms is not None
        else None,
        "clock_uncertainty_ms": row.uncertainty_ms,
    }


def _tag_dict(row: TagRow, report: Report) -> dict[str, Any]:
    lineage = row.lineage
    entry: dict[str, Any] = {
        "name": row.name,
        "gateway": row.gateway,
        "source": row.source,
        "tag": row.tag,
        "unit": lineage.get("unit"),
        "description": lineage.get("description"),
        "rate": lineage.get("rate"),
        "on_change": bool(lineage.get("on_change")),
        "received": row.received,
        "expected": None if row.expected is None else round(row.expected, 3),
        "good": row.good,
        "completeness": row.completeness,
        "validity": row.validity,
    }
    if report.samples is not None:
        entry |= {
            "points": row.points,
            "kept": row.kept,
            "first": iso(row.first_ns),
            "last": iso(row.last_ns),
            "bad": row.bad,
            "flagged": row.flagged,
            "gaps": row.gap_count,
            "gap_seconds": row.gap_seconds,
        }
    entry["lineage"] = lineage
    entry["lineage_changes"] = [
        {"since": iso(change["since_ns"]), **change} for change in report.series.changes(row.number)
    ]
    return entry


def _gaps(report: Report) -> list[dict[str, Any]]:
    gaps = report.gaps
    if gaps is None:
        return []
    names = report.series.names()
    found = []
    for index in range(gaps.series.shape[0]):
        start, end = int(gaps.start[index]), int(gaps.end[index])
        missing = int(gaps.missing[index])
        found.append(
            {
                "tag": names[int(gaps.series[index])],
                "start": iso(start),
                "end": iso(end),
                "start_ns": start,
                "end_ns": end,
                "seconds": round((end - start) / 1e9, 6),
                "missing": missing if missing >= 0 else None,
                "reason": reason_name(int(gaps.reason[index])),
                "open": bool(gaps.open[index]),
            }
        )
    return found


def _timeline(report: Report, tags: list[TagRow]) -> dict[str, Any]:
    """Completeness and validity per time bucket: per source, and per tag for the tags
    not complete throughout (the others would be a row of ones)."""
    grid = report.footers.grid
    if grid is None:
        return {"start_ns": [], "width_ns": None, "sources": {}, "tags": {}}
    grid.grow(report.series.count)
    received, expected, good = (grid.values(name) for name in ("received", "expected", "good"))
    capped = np.minimum(received, expected)
    sources: dict[str, Any] = {}
    several = len(report.series.gateways()) > 1
    keys = sorted({(t.gateway, t.source) for t in tags})
    for gateway, source in keys:
        mine = [t for t in tags if (t.gateway, t.source) == (gateway, source)]
        rows = np.array([t.number for t in mine], np.int64)
        owed = np.array([t.number for t in mine if t.expected], np.int64)
        name = f"{gateway}:{source}" if several else source
        sources[name] = {
            "completeness": _ratios(capped[owed].sum(axis=0), expected[owed].sum(axis=0)),
            "validity": _ratios(good[rows].sum(axis=0), received[rows].sum(axis=0)),
        }
    per_tag = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(expected > 0, capped / expected, np.nan)
    for tag in tags:
        share = shares[tag.number]
        if tag.expected and np.nanmin(share, initial=1.0) < 1.0:
            per_tag[tag.name] = _listed(share)
    return {
        "start_ns": grid.starts().tolist(),
        "width_ns": grid.width,
        "sources": sources,
        "tags": per_tag,
    }


def _ratios(part: np.ndarray, whole: np.ndarray) -> list[float | None]:
    return [ratio(p, w) for p, w in zip(part.tolist(), whole.tolist(), strict=True)]


def _source_timeline(report: Report, sources: list[SourceRow]) -> dict[str, Any]:
    """Latency, clock and session figures per source and time bucket (null where a bucket
    has none)."""
    grid = report.footers.source_grid
    if grid is None:
        return {"start_ns": [], "width_ns": None, "sources": {}}
    found: dict[str, Any] = {}
    for row in sources:
        at = row.number
        values = {name: grid.values(name)[at] for name in grid.kinds}
        with np.errstate(invalid="ignore", divide="ignore"):
            found[row.name] = {
                "session_up": _listed(values["up_ns"] / values["acquired_ns"]),
                "latency_p50_ms": _listed(values["latency_sum"] / values["latency_n"]),
                "latency_max_ms": _listed(values["latency_max_ms"]),
                "clock_offset_ms": _listed(values["offset_sum"] / values["offset_n"]),
                "clock_uncertainty_ms": _listed(values["uncertainty_ms"]),
            }
    return {"start_ns": grid.starts().tolist(), "width_ns": grid.width, "sources": found}


def _listed(values: np.ndarray) -> list[float | None]:
    return [round(v, 6) if math.isfinite(v) else None for v in values.tolist()]
