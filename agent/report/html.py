"""The report as one self-contained HTML page (``edge-agent report --html FILE``).

OT networks have no internet, so the page carries Plotly's JavaScript itself and loads
nothing from anywhere: it opens from a USB stick. Plotly is the optional ``report`` extra
and imported only when a page is made. The figures are computed over every sample
(agent/report/figures.py); the plots (agent/report/plots.py) and the trends
(agent/report/trends.py, drawn by trend.js) reduce what is drawn to what a screen shows.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

from agent.report import plots
from agent.report.document import to_dict
from agent.report.figures import Report, SourceRow, source_rows, tag_rows
from agent.report.markup import number, percent, section, table
from agent.report.trends import trends_section


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
        section(
            "Completeness over time", plots.heatmap(report, tags), plots.heatmap_note(report, tags)
        ),
        section("Completeness, session and validity per source", plots.source_quality(figures)),
        section("Gaps", plots.gap_timeline(figures), _gap_table(figures)),
        section("Bad and flagged samples by reason", plots.bad_chart(tags)),
        section("Clock offset and uncertainty", plots.clock(figures)),
        section("Acquisition-to-batch latency", plots.latency(figures)),
        trends_section(report, tags),
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


def _summary(figures: dict[str, Any]) -> str:
    s = figures["summary"]
    rows = [
        ["time range", f"{s['from']} to {s['to']}"],
        ["samples", f"{s.get('first_sample', '-')} to {s.get('last_sample', '-')}"],
        ["gateways", html.escape(", ".join(s["gateways"]))],
        ["sources, tags", f"{s['sources']}, {s['tags']}"],
        ["batches", number(s["batches"])],
        ["points stored", number(s["points"])],
        ["bytes on disk", f"{number(s['bytes'])} ({number(s['bytes_per_point'], 2)} per point)"],
        ["received, expected", f"{number(s['received'])}, {number(s['expected'], 1)}"],
        ["completeness, validity", f"{percent(s['completeness'])}, {percent(s['validity'])}"],
        ["kept by the edge filters", percent(s["kept"])],
    ]
    if s["batches_without_figures"]:
        rows.append(["batches without figures", str(s["batches_without_figures"])])
    for skipped in s["skipped_files"]:
        rows.append(["skipped", html.escape(f"{skipped['path']}: {skipped['why']}")])
    return section("Summary", table(["", ""], rows))


def _sources_table(sources: list[SourceRow]) -> str:
    rows = [
        [
            html.escape(r.name),
            str(r.tags),
            percent(r.completeness),
            percent(r.session_up),
            percent(r.validity),
            number(r.latency_p50_ms, 1),
            number(r.latency_max_ms, 1),
            "-"
            if r.offset_min_ms is None
            else f"{r.offset_min_ms:+.3f} .. {r.offset_max_ms or 0.0:+.3f}",
            number(r.uncertainty_ms, 3),
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
    return section("Sources", table(header, rows, frozenset(range(1, 9))))


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
    return f"<h3>{title}</h3>" + table(
        ["tag", "from", "to", "seconds", "missing samples", "reason"], rows, frozenset({3, 4})
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
    return section(
        "Lineage",
        table(
            ["tag", "unit", "conversion", "rate", "processing", "changes", "description"],
            rows,
            frozenset({5}),
        ),
        "<h3>Config history</h3>",
        table(["gateway", "config hash", "from", "to", "batches"], configs, frozenset({4})),
    )
