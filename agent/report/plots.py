"""The report page's Plotly figures, each a ``<div>`` with its script.

Every figure is drawn from figures computed over every sample; what is drawn is reduced to
what a screen shows, and each reduction says so under its figure: the heatmap to the
``HEATMAP_ROWS`` least complete tags, the gap timeline to the ``GAP_BARS`` longest gaps,
the bad-sample chart to the ``BAD_TAGS`` tags with the most.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from agent.report.figures import Report, TagRow, completeness_shares
from agent.report.markup import note

HEATMAP_ROWS = 200

GAP_BARS = 2000

BAD_TAGS = 60

_CONFIG = {"displaylogo": False, "responsive": True}


def as_div(figure: Any, div_id: str) -> str:
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


def _heatmap_rows(report: Report, tags: list[TagRow]) -> tuple[np.ndarray, list[TagRow]]:
    """The owed tags' completeness per bucket, the least complete first."""
    owed = [t for t in tags if t.expected]
    if report.footers.grid is None or not owed:
        return np.empty(0, np.int64), []
    share = completeness_shares(report)[[t.number for t in owed]]
    worst = np.nanmin(np.where(np.isnan(share), 1.0, share), axis=1, initial=1.0)
    order = np.lexsort(([t.name for t in owed], worst))[:HEATMAP_ROWS]
    return share[order], [owed[i] for i in order.tolist()]


def heatmap(report: Report, tags: list[TagRow]) -> str:
    import plotly.graph_objects as go

    share, shown = _heatmap_rows(report, tags)
    grid = report.footers.grid
    if grid is None or not shown:
        return note("No tag owes samples per rate (all arrive on change): nothing to show.")
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
    return as_div(figure, "heatmap")


def heatmap_note(report: Report, tags: list[TagRow]) -> str:
    grid = report.footers.grid
    owed = sum(1 for t in tags if t.expected)
    if grid is None:
        return ""
    text = (
        f"One cell per tag and {grid.width / 1e9:g} s of windows; blank: less than half a "
        "sample owed (not acquired then, or the last moments before a stop)."
    )
    if owed > HEATMAP_ROWS:
        text += f" The {HEATMAP_ROWS} least complete of {owed} tags owing samples are shown."
    return note(text)


def _ms(ns: list[int]) -> np.ndarray:
    return np.array(ns, np.float64) / 1e6


def source_quality(figures: dict[str, Any]) -> str:
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
    return as_div(figure, "source-quality")


def gap_timeline(figures: dict[str, Any]) -> str:
    import plotly.graph_objects as go

    gaps = figures["gaps"]
    if not gaps:
        return note("No gaps: every tag owing samples per rate received each one in time.")
    shown = sorted(gaps, key=lambda g: -g["seconds"])[:GAP_BARS]
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
    remark = ""
    if len(gaps) > GAP_BARS:
        remark = note(f"The {GAP_BARS} longest of {len(gaps)} gaps are drawn.")
    return as_div(figure, "gaps") + remark


def bad_chart(tags: list[TagRow]) -> str:
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
        return note("No bad or flagged sample in the range.")
    counted.sort(key=lambda tc: (-sum(tc[1].values()), tc[0].name))
    shown = counted[:BAD_TAGS]
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
    remark = ""
    if len(counted) > BAD_TAGS:
        remark = note(f"The {BAD_TAGS} tags with the most of {len(counted)} are drawn.")
    return as_div(figure, "bad") + remark


def clock(figures: dict[str, Any]) -> str:
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
    remark = note(
        "Offset of each device clock against the gateway's, with its uncertainty as a band; "
        "sources without timestamps show the uncertainty of stamping on the gateway."
    )
    return as_div(figure, "clock") + remark


def latency(figures: dict[str, Any]) -> str:
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
    return as_div(figure, "latency")
