"""The report as text (the default: a table per tag and a line per source) and as CSV (the
per-tag figures, one row per tag, for a spreadsheet)."""

from __future__ import annotations

import csv
from typing import IO, Any

from agent.report.figures import Report, iso, source_rows, tag_rows


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100 * ratio:.2f}%"


def format_text(report: Report) -> str:
    footers = report.footers
    tags = tag_rows(report)
    lines = [f"{report.dataset}: {footers.batches} batches"]
    if footers.first_ns is not None:
        megabytes = footers.bytes / 1e6
        per_point = (
            f", {footers.bytes / footers.points:.1f} bytes per point" if footers.points else ""
        )
        lines.append(
            f"  {iso(footers.first_ns)} to {iso(footers.last_ns)}; "
            f"gateways {', '.join(report.series.gateways())}; {len(tags)} tags, "
            f"{footers.points} points, {megabytes:.1f} MB{per_point}"
        )
    if footers.without_figures:
        lines.append(f"  ({footers.without_figures} batches carry no quality figures)")
    for path, why in report.skipped[:5]:
        lines.append(f"  skipped {path}: {why}")
    if len(report.skipped) > 5:
        lines.append(f"  ... and {len(report.skipped) - 5} more files skipped")
    width = max([len("tag"), *(len(t.name) for t in tags)])
    lines.append(
        f"{'tag':<{width}}  {'received':>10} {'expected':>10} {'good':>10}"
        f"  {'complete':>9} {'valid':>9}"
    )
    for tag in tags:
        expected = "-" if tag.expected is None else f"{tag.expected:.1f}"
        lines.append(
            f"{tag.name:<{width}}  {tag.received:>10.0f} {expected:>10} "
            f"{tag.good:>10.0f}  {_percent(tag.completeness):>9} {_percent(tag.validity):>9}"
        )
    for source in source_rows(report, tags):
        parts = [f"source {source.name}:"]
        if source.completeness is not None:
            parts.append(f"complete {_percent(source.completeness)}")
        if source.acquired_ns:  # on change: no count owed, but was it listening?
            parts.append(f"session up {_percent(source.session_up)}")
        if source.latency_p50_ms is not None:
            parts.append(
                f"batch latency p50 {source.latency_p50_ms:.1f} ms, "
                f"max {source.latency_max_ms or 0.0:.1f} ms"
            )
        if source.offset_min_ms is not None and source.offset_max_ms is not None:
            parts.append(
                f"clock offset {source.offset_min_ms:+.3f}..{source.offset_max_ms:+.3f} ms"
            )
        if source.uncertainty_ms:
            parts.append(f"time uncertainty up to {source.uncertainty_ms:.3f} ms")
        lines.append(" ".join(parts[:1]) + " " + "; ".join(parts[1:]))
    return "\n".join(lines)


_COLUMNS = [
    "name",
    "gateway",
    "source",
    "tag",
    "unit",
    "rate",
    "on_change",
    "received",
    "expected",
    "good",
    "completeness",
    "validity",
    "points",
    "kept",
    "gaps",
    "gap_seconds",
    "first",
    "last",
]


def write_csv(report: Report, out: IO[str]) -> None:
    """One row per tag; the bad and flagged samples in one column per reason
    (``bad:spike``, ``flagged:late`` ...), so a spreadsheet can sum them."""
    tags = tag_rows(report)
    bad = sorted({reason for t in tags for reason in t.bad or {}})
    flagged = sorted({reason for t in tags for reason in t.flagged or {}})
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_COLUMNS + [f"bad:{r}" for r in bad] + [f"flagged:{r}" for r in flagged])
    for tag in tags:
        values: dict[str, Any] = {
            "name": tag.name,
            "gateway": tag.gateway,
            "source": tag.source,
            "tag": tag.tag,
            "unit": tag.lineage.get("unit", ""),
            "rate": tag.lineage.get("rate", ""),
            "on_change": bool(tag.lineage.get("on_change")),
            "received": int(tag.received),
            "expected": "" if tag.expected is None else round(tag.expected, 3),
            "good": int(tag.good),
            "completeness": tag.completeness,
            "validity": tag.validity,
            "points": tag.points,
            "kept": tag.kept,
            "gaps": tag.gap_count,
            "gap_seconds": tag.gap_seconds,
            "first": iso(tag.first_ns),
            "last": iso(tag.last_ns),
        }
        row = ["" if values[c] is None else values[c] for c in _COLUMNS]
        row += [(tag.bad or {}).get(r, 0) for r in bad]
        row += [(tag.flagged or {}).get(r, 0) for r in flagged]
        writer.writerow(row)
