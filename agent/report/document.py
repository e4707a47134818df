"""The report as one JSON document (``--json``), and the data the HTML page draws from.

Every figure of agent/report/figures.py, plus the time lines: completeness and validity
per source and time bucket, per tag for the tags not complete throughout, and latency,
clock and session per source. Times are given twice: ISO 8601 for people, ``_ns`` exact.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from agent.report.figures import (
    Report,
    SourceRow,
    TagRow,
    completeness_of,
    completeness_shares,
    config_history,
    iso,
    owed_share,
    ratio,
    source_rows,
    tag_rows,
)
from agent.report.gaps import reason_name

FORMAT = "edge-agent-report/1"


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
        "configs": config_history(footers),
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
            "completeness": _listed(owed_share(capped[owed].sum(0), expected[owed].sum(0))),
            "validity": _ratios(good[rows].sum(axis=0), received[rows].sum(axis=0)),
        }
    per_tag = {}
    shares = completeness_shares(report)
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
