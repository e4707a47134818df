"""The report as one self-contained HTML page (``edge-agent report --html FILE``).

OT networks have no internet, so the page carries Plotly's JavaScript itself and loads
nothing from anywhere: it opens from a USB stick. Plotly is the optional ``report`` extra
and imported only here. The figures are computed over every sample (agent/report/figures
.py); what the page draws is reduced to what a screen shows: trends to a min/max envelope
per time bucket, the heatmap to the tags that were not complete throughout first (at most
``_HEATMAP_ROWS``), the gap timeline to the longest gaps. Each reduction says so on the page.
"""

from __future__ import annotations

import base64
import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from agent.acquisition import quality as q
from agent.report.figures import Report, SourceRow, TagRow, source_rows, tag_rows, to_dict
from agent.report.samples import Markers
from agent.report.timegrid import TimeGrid

_HEATMAP_ROWS = 200
_GAP_BARS = 2000
_BAD_TAGS = 60
_TREND_VALUES = 4_000_000  # all tags' envelopes together: about 20 MB of page
_CONFIG = {"displaylogo": False, "responsive": True}


class PlotlyMissing(Exception):
    """The report extra is not installed."""


def require_plotly() -> None:
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise PlotlyMissing(
            "the HTML report needs Plotly: pip install 'edge-agent[report]'"
        ) from None


def write_html(report: Report, path: Path) -> None:
    path.write_text(render(report), encoding="utf-8")


def render(report: Report) -> str:
    from plotly.offline import get_plotlyjs

    figures = to_dict(report)
    tags = tag_rows(report)
    sources = source_rows(report, tags)
    sections = [
        _summary(figures),
        _sources_table(sources),
        _section("Completeness over time", _heatmap(report, tags), _heatmap_note(report, tags)),
        _section("Completeness, session and validity per source", _source_quality(figures)),
        _section("Gaps", _gap_timeline(figures), _gap_table(figures)),
        _section("Bad and flagged samples by reason", _bad_chart(tags)),
        _section("Clock offset and uncertainty", _clock(figures)),
        _section("Acquisition-to-batch latency", _latency(figures)),
        _trends(report, tags),
        _lineage(figures),
    ]
    trend_js = resources.files("agent.report").joinpath("trend.js").read_text(encoding="utf-8")
    title = html.escape(f"edge-agent report: {report.dataset}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n"
        f"<script>{get_plotlyjs()}</script>\n</head>\n<body>\n"
        f"<h1>{title}</h1>\n" + "\n".join(sections) + f"\n<script>{trend_js}</script>\n"
        "</body>\n</html>\n"
    )


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #666; font-size: 0.85em; } .bad { color: #b00; }
code { font-size: 0.9em; } select { font-size: 0.95em; margin: 0.5em 0; }
"""


def _section(title: str, *parts: str) -> str:
    return f"<section>\n<h2>{html.escape(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]], numeric: frozenset[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="n">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def _figure(figure: Any, div_id: str) -> str:
    import plotly.io as pio

    figure.update_layout(
        template="none",
        paper_bgcolor="white",
        plot_bgcolor="white",
        font={"family": "system-ui, sans-serif", "size": 12},
        margin={"l": 60, "r": 20, "t": 30, "b": 40},
    )
    figure.update_xaxes(gridcolor="#eee", automargin=True)
    figure.update_yaxes(gridcolor="#eee", automargin=True)
    return str(
        pio.to_html(figure, include_plotlyjs=False, full_html=False, div_id=div_id, config=_CONFIG)
    )


def _summary(figures: dict[str, Any]) -> str:
    s = figures["summary"]
    rows = [
        ["time range", f"{s['from']} to {s['to']}"],
        ["samples", f"{s.get('first_sample', '-')} to {s.get('last_sample', '-')}"],
        ["gateways", html.escape(", ".join(s["gateways"]))],
        ["sources, tags", f"{s['sources']}, {s['tags']}"],
        ["batches", _number(s["batches"])],
        ["points stored", _number(s["points"])],
        ["bytes on disk", f"{_number(s['bytes'])} ({_number(s['bytes_per_point'], 2)} per point)"],
        ["received, expected", f"{_number(s['received'])}, {_number(s['expected'], 1)}"],
        ["completeness, validity", f"{_percent(s['completeness'])}, {_percent(s['validity'])}"],
        ["kept by the edge filters", _percent(s["kept"])],
    ]
    if s["batches_without_figures"]:
        rows.append(["batches without figures", str(s["batches_without_figures"])])
    for skipped in s["skipped_files"]:
        rows.append(["skipped", html.escape(f"{skipped['path']}: {skipped['why']}")])
    return _section("Summary", _table(["", ""], rows))


def _sources_table(sources: list[SourceRow]) -> str:
    rows = [
        [
            html.escape(r.name),
            str(r.tags),
            _percent(r.completeness),
            _percent(r.session_up),
            _percent(r.validity),
            _number(r.latency_p50_ms, 1),
            _number(r.latency_max_ms, 1),
            "-"
            if r.offset_min_ms is None
            else f"{r.offset_min_ms:+.3f} .. {r.offset_max_ms or 0.0:+.3f}",
            _number(r.uncertainty_ms, 3),
        ]
        for r in sources
    ]
    header = [
        "source",
        "tags",
        "complete",
        "session up",
        "valid",
        "latency p50 ms",
        "latency max ms",
        "clock offset ms",
        "uncertainty ms",
    ]
    return _section("Sources", _table(header, rows, frozenset(range(1, 9))))


def _heatmap_rows(report: Report, tags: list[TagRow]) -> tuple[np.ndarray, list[TagRow]]:
    """The owed tags' completeness per bucket, the least complete first."""
    grid = report.footers.grid
    owed = [t for t in tags if t.expected]
    if grid is None or not owed:
        return np.empty(0, np.int64), []
    received, expected = grid.values("received"), grid.values("expected")
    rows = np.array([t.number for t in owed], np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(
            expected[rows] > 0, np.minimum(received[rows] / expected[rows], 1.0), np.nan
        )
    worst = np.nan_to_num(np.nanmin(np.where(np.isnan(share), 1.0, share), axis=1), nan=1.0)
    order = np.lexsort(([t.name for t in owed], worst))[:_HEATMAP_ROWS]
    return share[order], [owed[i] for i in order.tolist()]


def _heatmap(report: Report, tags: list[TagRow]) -> str:
    import plotly.graph_objects as go

    share, shown = _heatmap_rows(report, tags)
    grid = report.footers.grid
    if grid is None or not shown:
        return _note("No tag owes samples per rate (all arrive on change): nothing to show.")
    x = (grid.starts() + grid.width // 2) / 1e6
    figure = go.Figure(
        go.Heatmap(
            z=share,
            x=x,
            y=[t.name for t in shown],
            zmin=0,
            zmax=1,
            colorscale=[[0, "#b2182b"], [0.9, "#fddbc7"], [0.99, "#d9f0d3"], [1, "#1b7837"]],
            colorbar={"title": {"text": "complete"}, "tickformat": ".0%"},
            hovertemplate="%{y}<br>%{x}<br>%{z:.2%}<extra></extra>",
        )
    )
    figure.update_layout(height=max(260, 16 * len(shown) + 100), yaxis={"autorange": "reversed"})
    figure.update_xaxes(type="date")
    return _figure(figure, "heatmap")


def _heatmap_note(report: Report, tags: list[TagRow]) -> str:
    grid = report.footers.grid
    owed = sum(1 for t in tags if t.expected)
    if grid is None:
        return ""
    text = f"One cell per tag and {grid.width / 1e9:g} s of windows; blank: nothing owed."
    if owed > _HEATMAP_ROWS:
        text += f" The {_HEATMAP_ROWS} least complete of {owed} tags owing samples are shown."
    return _note(text)


def _ms(ns: list[int]) -> np.ndarray:
    return np.array(ns, np.float64) / 1e6


def _source_quality(figures: dict[str, Any]) -> str:
    import plotly.graph_objects as go

    figure = go.Figure()
    timeline, sessions = figures["timeline"], figures["source_timeline"]
    for name, series in timeline["sources"].items():
        x = _ms(timeline["start_ns"]) + (timeline["width_ns"] or 0) / 2e6
        if any(v is not None for v in series["completeness"]):
            figure.add_scatter(x=x, y=series["completeness"], name=f"{name} complete", mode="lines")
        figure.add_scatter(
            x=x, y=series["validity"], name=f"{name} valid", mode="lines", line={"dash": "dot"}
        )
    for name, series in sessions["sources"].items():
        if any(v is not None for v in series["session_up"]):
            x = _ms(sessions["start_ns"]) + (sessions["width_ns"] or 0) / 2e6
            figure.add_scatter(
                x=x,
                y=series["session_up"],
                name=f"{name} session up",
                mode="lines",
                line={"dash": "dash"},
            )
    figure.update_layout(height=320, yaxis={"tickformat": ".0%", "rangemode": "tozero"})
    figure.update_xaxes(type="date")
    return _figure(figure, "source-quality")


def _gap_timeline(figures: dict[str, Any]) -> str:
    import plotly.graph_objects as go

    gaps = figures["gaps"]
    if not gaps:
        return _note("No gaps: every tag owing samples per rate received each one in time.")
    shown = sorted(gaps, key=lambda g: -g["seconds"])[:_GAP_BARS]
    figure = go.Figure()
    for reason in sorted({g["reason"] for g in shown}):
        mine = [g for g in shown if g["reason"] == reason]
        figure.add_bar(
            base=[g["start_ns"] / 1e6 for g in mine],
            x=[max(g["seconds"] * 1e3, 1.0) for g in mine],
            y=[g["tag"] for g in mine],
            orientation="h",
            name=reason,
            customdata=[[g["start"], g["end"], g["seconds"]] for g in mine],
            hovertemplate="%{y}<br>%{customdata[0]} to %{customdata[1]}<br>"
            "%{customdata[2]} s<extra>" + reason + "</extra>",
        )
    rows = len({g["tag"] for g in shown})
    figure.update_layout(
        height=max(260, 16 * rows + 120), barmode="overlay", yaxis={"autorange": "reversed"}
    )
    figure.update_xaxes(type="date")
    note = ""
    if len(gaps) > _GAP_BARS:
        note = _note(f"The {_GAP_BARS} longest of {len(gaps)} gaps are drawn.")
    return _figure(figure, "gaps") + note


def _gap_table(figures: dict[str, Any]) -> str:
    gaps = sorted(figures["gaps"], key=lambda g: -g["seconds"])[:50]
    if not gaps:
        return ""
    rows = [
        [
            html.escape(g["tag"]),
            g["start"],
            g["end"] + (" (open)" if g["open"] else ""),
            f"{g['seconds']:.3f}",
            "-" if g["missing"] is None else str(g["missing"]),
            html.escape(g["reason"]),
        ]
        for g in gaps
    ]
    title = "The longest gaps" if len(figures["gaps"]) > 50 else "All gaps"
    return f"<h3>{title}</h3>" + _table(
        ["tag", "from", "to", "seconds", "missing samples", "reason"], rows, frozenset({3, 4})
    )


def _bad_chart(tags: list[TagRow]) -> str:
    import plotly.graph_objects as go

    counted = [
        (
            t,
            {
                **{f"bad:{k}": v for k, v in (t.bad or {}).items()},
                **{f"flagged:{k}": v for k, v in (t.flagged or {}).items()},
            },
        )
        for t in tags
    ]
    counted = [(t, c) for t, c in counted if c]
    if not counted:
        return _note("No bad or flagged sample in the range.")
    counted.sort(key=lambda tc: (-sum(tc[1].values()), tc[0].name))
    shown = counted[:_BAD_TAGS]
    figure = go.Figure()
    for reason in sorted({r for _, c in shown for r in c}):
        figure.add_bar(
            y=[t.name for t, _ in shown],
            x=[c.get(reason, 0) for _, c in shown],
            name=reason,
            orientation="h",
        )
    figure.update_layout(
        height=max(260, 18 * len(shown) + 120),
        barmode="stack",
        yaxis={"autorange": "reversed"},
        xaxis={"title": {"text": "samples"}},
    )
    note = ""
    if len(counted) > _BAD_TAGS:
        note = _note(f"The {_BAD_TAGS} tags with the most of {len(counted)} are drawn.")
    return _figure(figure, "bad") + note


def _clock(figures: dict[str, Any]) -> str:
    import plotly.graph_objects as go

    timeline = figures["source_timeline"]
    x = _ms(timeline["start_ns"]) + (timeline["width_ns"] or 0) / 2e6
    figure = go.Figure()
    for name, series in timeline["sources"].items():
        offset = np.array([math.nan if v is None else v for v in series["clock_offset_ms"]])
        spread = np.array([math.nan if v is None else v for v in series["clock_uncertainty_ms"]])
        if np.isfinite(offset).any():
            figure.add_scatter(
                x=x,
                y=offset + np.nan_to_num(spread),
                mode="lines",
                line={"width": 0},
                showlegend=False,
                hoverinfo="skip",
            )
            figure.add_scatter(
                x=x,
                y=offset - np.nan_to_num(spread),
                mode="lines",
                line={"width": 0},
                fill="tonexty",
                showlegend=False,
                hoverinfo="skip",
                fillcolor="rgba(100,100,200,0.15)",
            )
            figure.add_scatter(x=x, y=offset, mode="lines", name=f"{name} offset")
        elif np.isfinite(spread).any():
            figure.add_scatter(
                x=x, y=spread, mode="lines", name=f"{name} uncertainty", line={"dash": "dot"}
            )
    figure.update_layout(height=320, yaxis={"title": {"text": "ms"}})
    figure.update_xaxes(type="date")
    note = _note(
        "Offset of each device clock against the gateway's, with its uncertainty as a band; "
        "sources without timestamps show the uncertainty of stamping on the gateway."
    )
    return _figure(figure, "clock") + note


def _latency(figures: dict[str, Any]) -> str:
    import plotly.graph_objects as go

    timeline = figures["source_timeline"]
    x = _ms(timeline["start_ns"]) + (timeline["width_ns"] or 0) / 2e6
    figure = go.Figure()
    for name, series in timeline["sources"].items():
        figure.add_scatter(x=x, y=series["latency_p50_ms"], mode="lines", name=f"{name} p50")
        figure.add_scatter(
            x=x,
            y=series["latency_max_ms"],
            mode="lines",
            name=f"{name} max",
            line={"dash": "dot"},
        )
    figure.update_layout(height=300, yaxis={"title": {"text": "ms"}, "rangemode": "tozero"})
    figure.update_xaxes(type="date")
    return _figure(figure, "latency")


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, "<f4").tobytes()).decode()


def _trend_data(report: Report, tags: list[TagRow]) -> dict[str, Any]:
    """Each stored tag's envelope, merged to fit the page's budget, and its markers."""
    samples = report.samples
    assert samples is not None
    grid = samples.trend
    shown = [t for t in tags if t.points]
    buckets = max(grid.buckets, 1)
    merge = max(1, math.ceil(2 * buckets * len(shown) / _TREND_VALUES))
    count = -(-buckets // merge)
    low_all, high_all = grid.values("min"), grid.values("max")
    markers = samples.markers()
    entries = []
    for tag in shown:
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
                "markers": _markers(markers, tag, low, grid, merge),
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
    markers: Markers, tag: TagRow, low: np.ndarray, grid: TimeGrid, merge: int
) -> list[dict[str, Any]]:
    """Bad and flagged samples at their value, or (a placeholder has none) at the bottom
    of the envelope where they happened."""
    mine = markers.series == tag.number
    if not mine.any():
        return []
    time, value, quality = markers.time[mine], markers.value[mine], markers.quality[mine]
    bucket = np.clip((time - (grid.origin or 0)) // (grid.width * merge), 0, low.shape[0] - 1)
    finite = np.isfinite(value)
    fallback = np.where(
        np.isfinite(low[bucket]), low[bucket], np.nanmin(low) if np.isfinite(low).any() else 0.0
    )
    y = np.where(finite, value, fallback)
    bad = (quality & q.SEVERITY_MASK) == q.BAD
    kinds = []
    for is_bad, name, symbol, color in (
        (True, "bad", "x", "#c00"),
        (False, "flagged", "circle-open", "#e80"),
    ):
        rows = bad == is_bad
        if rows.any():
            kinds.append(
                {
                    "name": name,
                    "symbol": symbol,
                    "color": color,
                    "x": (time[rows] / 1e6).tolist(),
                    "y": [float(v) for v in y[rows]],
                    "text": [q.describe(int(w)) for w in quality[rows].tolist()],
                }
            )
    return kinds


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


def _trends(report: Report, tags: list[TagRow]) -> str:
    if report.samples is None:
        return ""
    data = _trend_data(report, tags)
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return _section(
        "Trends",
        '<label>tag <select id="trend-tag"></select></label>',
        '<div id="trend" class="plotly-graph-div" style="height:420px"></div>',
        '<p id="trend-note" class="note"></p>',
        f'<script type="application/json" id="trend-data">{payload}</script>',
    )


def _lineage(figures: dict[str, Any]) -> str:
    rows = []
    for tag in figures["tags"]:
        lineage = dict(tag["lineage"])
        unit = lineage.pop("unit", "")
        conversion = ""
        if "source_unit" in lineage:
            conversion = f"{lineage.pop('source_unit')} → {unit}"
        scale = lineage.pop("scale", None)
        offset = lineage.pop("offset", None)
        if scale is not None or offset is not None:
            conversion += f" (raw * {scale if scale is not None else 1} + {offset or 0})"
        rate = lineage.pop("rate", "")
        lineage.pop("description", None)
        changes = tag["lineage_changes"]
        rows.append(
            [
                html.escape(tag["name"]),
                html.escape(unit or ""),
                html.escape(conversion),
                html.escape(rate),
                f"<code>{html.escape(json.dumps(lineage, sort_keys=True))}</code>"
                if lineage
                else "",
                str(max(len(changes) - 1, 0)),
                html.escape(tag["description"] or ""),
            ]
        )
    configs = [
        [
            html.escape(c["gateway"]),
            f"<code>{html.escape(c['config_hash'])}</code>",
            c["from"],
            c["to"],
            str(c["batches"]),
        ]
        for c in figures["configs"]
    ]
    return _section(
        "Lineage",
        _table(
            ["tag", "unit", "conversion", "rate", "processing", "changes", "description"],
            rows,
            frozenset({5}),
        ),
        "<h3>Config history</h3>",
        _table(["gateway", "config hash", "from", "to", "batches"], configs, frozenset({4})),
    )
