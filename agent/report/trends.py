"""The report page's trends: every tag's stored values as a min/max envelope per time
bucket, its bad and flagged samples marked, drawn one tag at a time by trend.js.

The envelopes of all tags together are kept to about ``TREND_VALUES`` numbers (float32,
base64) by merging adjacent buckets, so a day of 10,000 tags stays a page a browser opens;
a tag compressed at the edge (deadband, swinging door) gets its deviation band drawn
around the envelope, against which the kept points can be judged.
"""

from __future__ import annotations

import base64
import functools
import json
import math
from typing import Any

import numpy as np

from agent.acquisition import quality as q
from agent.report.figures import Report, TagRow
from agent.report.markup import section
from agent.report.samples import Markers
from agent.report.timegrid import TimeGrid

TREND_VALUES = 4_000_000  # all tags' envelopes together: about 20 MB of page


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, "<f4").tobytes()).decode()


def _trend_data(report: Report, tags: list[TagRow]) -> dict[str, Any]:
    """Each stored tag's envelope, merged to fit the page's budget, and its markers."""
    samples = report.samples
    assert samples is not None
    grid = samples.trend
    shown = [t for t in tags if t.points]
    buckets = max(grid.buckets, 1)
    merge = max(1, math.ceil(2 * buckets * len(shown) / TREND_VALUES))
    count = -(-buckets // merge)
    low_all, high_all = grid.values("min"), grid.values("max")
    markers = samples.markers()
    by_series = np.argsort(markers.series, kind="stable")
    series_sorted = markers.series[by_series]
    entries = []
    for tag in shown:
        lo, hi = np.searchsorted(series_sorted, [tag.number, tag.number + 1]).tolist()
        low = _merged(low_all[tag.number], merge, count, np.fmin)
        high = _merged(high_all[tag.number], merge, count, np.fmax)
        band, label = _band(tag.lineage)
        entries.append(
            {
                "name": tag.name,
                "unit": tag.lineage.get("unit", ""),
                "min": _b64(low),
                "max": _b64(high),
                "band": band,
                "band_label": label,
                "markers": _markers(markers, by_series[lo:hi], low, grid, merge),
                "note": _trend_note(tag, band, label),
            }
        )
    # shown first: the tag with the most bad or flagged samples, else the most points
    first = max(
        range(len(shown)),
        key=lambda i: (sum((shown[i].bad or {}).values()), shown[i].points or 0),
        default=0,
    )
    return {
        "start": (grid.origin or 0) / 1e6,
        "width": grid.width * merge / 1e6,
        "first": first,
        "tags": entries,
    }


def _merged(values: np.ndarray, merge: int, count: int, reduce: Any) -> np.ndarray:
    padded = np.full(count * merge, np.nan, np.float32)
    padded[: values.shape[0]] = values
    with np.errstate(all="ignore"):
        return reduce.reduce(padded.reshape(count, merge), axis=1)


def _band(lineage: dict[str, Any]) -> tuple[float | None, str]:
    """The deviation a compressing stage kept every point within, and its name."""
    for key in ("swinging_door", "deadband"):
        if isinstance(lineage.get(key), dict) and "deviation" in lineage[key]:
            return float(lineage[key]["deviation"]), f"{key.replace('_', ' ')} deviation"
    return None, ""


def _markers(
    markers: Markers, rows: np.ndarray, low: np.ndarray, grid: TimeGrid, merge: int
) -> list[dict[str, Any]]:
    """One tag's bad and flagged samples (``rows`` of ``markers``), the first of each kind
    per bucket of the page's envelope, at their value, or (a placeholder has none) at the
    bottom of the envelope where they happened."""
    if not rows.size:
        return []
    time, value, quality = markers.time[rows], markers.value[rows], markers.quality[rows]
    bucket = np.clip((time - (grid.origin or 0)) // (grid.width * merge), 0, low.shape[0] - 1)
    bad = (quality & q.SEVERITY_MASK) == q.BAD
    cell = bucket * 2 + bad
    order = np.lexsort((time, cell))
    first = order[np.r_[True, cell[order][1:] != cell[order][:-1]]]
    time, value, quality, bucket, bad = (c[first] for c in (time, value, quality, bucket, bad))
    bottom = np.nanmin(low) if np.isfinite(low).any() else 0.0
    y = np.where(np.isfinite(value), value, np.where(np.isfinite(low[bucket]), low[bucket], bottom))
    kinds = []
    for is_bad, name, symbol, color in (
        (True, "bad", "x", "#c00"),
        (False, "flagged", "circle-open", "#e80"),
    ):
        mine = bad == is_bad
        if mine.any():
            kinds.append(
                {
                    "name": name,
                    "symbol": symbol,
                    "color": color,
                    "x": (time[mine] / 1e6).tolist(),
                    "y": y[mine].astype(float).tolist(),
                    "text": [_described(w) for w in quality[mine].tolist()],
                }
            )
    return kinds


@functools.cache
def _described(quality: int) -> str:
    return q.describe(quality)


def _trend_note(tag: TagRow, band: float | None, label: str) -> str:
    parts = [f"{tag.points:,} points stored"]
    if tag.kept is not None:
        parts.append(f"{100 * tag.kept:.2f} % of the {tag.received:,.0f} received")
    if band is not None:
        parts.append(f"dotted: ±{band:g} {label} around the envelope")
    parts.append(
        "shaded: min to max per time bucket; markers: the first bad or flagged sample per bucket"
    )
    return "; ".join(parts) + "."


def trends_section(report: Report, tags: list[TagRow]) -> str:
    if report.samples is None:
        return ""
    data = _trend_data(report, tags)
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return section(
        "Trends",
        '<label>tag <select id="trend-tag"></select></label>',
        '<div id="trend" class="plotly-graph-div" style="height:420px"></div>',
        '<p id="trend-note" class="note"></p>',
        f'<script type="application/json" id="trend-data">{payload}</script>',
    )
