"""``edge-agent report DATASET``: the data-quality figures of a stored dataset, per tag.

Reads only the Parquet footers (schema metadata), never the samples, so a day of batches
is summarised in about the time it takes to list the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from agent.windows.batch import META_PREFIX
from agent.windows.dataquality import tag_figures


@dataclass
class TagSummary:
    received: float = 0.0
    expected: float = 0.0
    good: float = 0.0

    @property
    def completeness(self) -> float | None:
        return min(self.received / self.expected, 1.0) if self.expected else None

    @property
    def validity(self) -> float | None:
        return self.good / self.received if self.received else None


@dataclass
class SourceSummary:
    latency_p50_ms: list[float] = field(default_factory=list)
    latency_max_ms: float = 0.0
    clock_offset_ms: list[float] = field(default_factory=list)
    clock_uncertainty_ms: float = 0.0
    acquired_ns: int = 0  # an on-change source: how long acquired, and its session up
    up_ns: int = 0


@dataclass
class DatasetSummary:
    batches: int = 0
    without_figures: int = 0
    tags: dict[str, TagSummary] = field(default_factory=dict)
    sources: dict[str, SourceSummary] = field(default_factory=dict)

    def source_completeness(self, source: str) -> float | None:
        """Of the samples its tags owed, the share received; each tag's surplus capped, so
        one tag's extra samples do not hide another's missing ones. None if none owed
        (a source whose tags all arrive on change)."""
        owed = received = 0.0
        for tag, totals in self.tags.items():
            if tag.split("/", 1)[0] == source:  # "<source>/<tag>": no "/" in a source name
                owed += totals.expected
                received += min(totals.received, totals.expected)
        return received / owed if owed else None


def summarise(dataset: Path) -> DatasetSummary:
    summary = DatasetSummary()
    for path in sorted(dataset.rglob("*.parquet")):
        metadata = pq.read_schema(path).metadata or {}
        text = {k.decode(): v.decode() for k, v in metadata.items()}
        summary.batches += 1
        if f"{META_PREFIX}quality" not in text:
            summary.without_figures += 1
            continue
        quality = json.loads(text[f"{META_PREFIX}quality"])
        lineage = json.loads(text.get(f"{META_PREFIX}tags", "{}"))
        for tag, (received, expected, good) in tag_figures(quality, lineage).items():
            totals = summary.tags.setdefault(tag, TagSummary())
            totals.received += received
            totals.expected += expected
            totals.good += good
        for name, figures in quality["sources"].items():
            _add_source(summary.sources.setdefault(name, SourceSummary()), figures)
    return summary


def _add_source(totals: SourceSummary, figures: dict[str, Any]) -> None:
    totals.acquired_ns += figures.get("acquired_ns", 0)
    totals.up_ns += figures.get("up_ns", 0)
    if "latency_p50_ms" in figures:
        totals.latency_p50_ms.append(figures["latency_p50_ms"])
        totals.latency_max_ms = max(totals.latency_max_ms, figures["latency_max_ms"])
    clock = figures.get("clock")
    if clock:  # a clock model's estimate, or (no timestamps) the request midpoint's RTT/2
        if "offset_ms" in clock:
            totals.clock_offset_ms.append(clock["offset_ms"])
        totals.clock_uncertainty_ms = max(totals.clock_uncertainty_ms, clock["uncertainty_ms"])


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100 * ratio:.2f}%"


def format_summary(dataset: Path, summary: DatasetSummary) -> str:
    lines = [f"{dataset}: {summary.batches} batches"]
    if summary.without_figures:
        lines.append(f"  ({summary.without_figures} batches carry no quality figures)")
    width = max([len("tag"), *map(len, summary.tags)])
    lines.append(
        f"{'tag':<{width}}  {'received':>10} {'expected':>10} {'good':>10}"
        f"  {'complete':>9} {'valid':>9}"
    )
    for tag, totals in sorted(summary.tags.items()):
        lines.append(
            f"{tag:<{width}}  {totals.received:>10.0f} {totals.expected:>10.1f} "
            f"{totals.good:>10.0f}  {_percent(totals.completeness):>9} "
            f"{_percent(totals.validity):>9}"
        )
    for name, source in sorted(summary.sources.items()):
        parts = [f"source {name}:"]
        if (completeness := summary.source_completeness(name)) is not None:
            parts.append(f"complete {_percent(completeness)}")
        if source.acquired_ns:  # on change: no count owed, but was it listening?
            parts.append(f"session up {_percent(source.up_ns / source.acquired_ns)}")
        if source.latency_p50_ms:
            median = sorted(source.latency_p50_ms)[len(source.latency_p50_ms) // 2]
            parts.append(f"batch latency p50 {median:.1f} ms, max {source.latency_max_ms:.1f} ms")
        if source.clock_offset_ms:
            low, high = min(source.clock_offset_ms), max(source.clock_offset_ms)
            parts.append(f"clock offset {low:+.3f}..{high:+.3f} ms")
        if source.clock_uncertainty_ms:
            parts.append(f"time uncertainty up to {source.clock_uncertainty_ms:.3f} ms")
        lines.append(" ".join(parts[:1]) + " " + "; ".join(parts[1:]))
    return "\n".join(lines)
