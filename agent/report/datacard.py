"""The data card of an export: what a data scientist gets and how it was made, as
``datacard.json`` (for tools) and ``DATACARD.md`` (for people).

It lists every tag with its unit (as stored and as exported, and the conversion between),
description, rate, resampling method, the whole processing lineage from the edge (scale,
unit conversion, filters, compression) and its changes over the range, the acquisition
quality figures from the batches, how many grid cells hold a value or were filled, and the
normalisation parameters; and for the whole table the time range, the grid, the gateways
and the config hashes they ran. No wall-clock time is written: the same input gives the
same card.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.report.figures import Report, TagRow, config_history, iso

if TYPE_CHECKING:
    from agent.report.export import Column, ExportOptions
    from agent.report.tablefile import ColumnStats

FORMAT = "edge-agent-datacard/1"


def datacard(
    report: Report,
    columns: list[Column],
    rows: dict[int, TagRow],
    stats: ColumnStats,
    normalization: dict[str, Any] | None,
    grid: dict[str, Any],
    options: ExportOptions,
    cells: int,
) -> dict[str, Any]:
    footers = report.footers
    tags = []
    for index, column in enumerate(columns):
        row = rows[column.number]
        with_value = int(stats.count[index])
        tags.append(
            {
                "column": column.name,
                "filled_column": f"{column.name}:filled" if options.max_gap_ns else None,
                "gateway": row.gateway,
                "source": row.source,
                "tag": row.tag,
                "description": row.lineage.get("description", ""),
                "unit": column.unit,
                "stored_unit": row.lineage.get("unit"),
                "unit_conversion": {
                    "from": row.lineage.get("unit"),
                    "to": column.unit,
                    "factor": column.factor,
                    "offset": column.offset,
                }
                if column.converted
                else None,
                "rate": row.lineage.get("rate"),
                "on_change": bool(row.lineage.get("on_change")),
                "method": column.method,
                "lineage": row.lineage,
                "lineage_changes": [
                    {"since": iso(change["since_ns"]), **change}
                    for change in report.series.changes(row.number)
                ],
                "quality": {
                    "received": row.received,
                    "expected": None if row.expected is None else round(row.expected, 3),
                    "good": row.good,
                    "completeness": row.completeness,
                    "validity": row.validity,
                },
                "cells": {
                    "total": cells,
                    "with_value": with_value,
                    "filled": int(stats.filled[index]),
                    "empty": cells - with_value,
                },
                "normalization": (normalization or {}).get("columns", {}).get(column.name),
            }
        )
    return {
        "format": FORMAT,
        "generated_by": f"edge-agent {__version__}",
        "dataset": {
            "source": str(report.dataset),
            "batches": footers.batches,
            "bytes": footers.bytes,
            "gateways": report.series.gateways(),
            "configs": config_history(footers),
        },
        "time_range": {
            "from": iso(grid["from_ns"]),
            "to": iso(grid["to_ns"]),
            "from_ns": grid["from_ns"],
            "to_ns": grid["to_ns"],
        },
        "sampling": {
            **grid,
            "grid": "time = from + k * period (UTC); one row per instant",
            "methods": "per tag: linear interpolation between the samples around an instant, "
            "previous (hold), or mean/min/max/last of the samples in [t, t + period)",
            "gaps": "a cell is empty where the usable samples around it are further apart than "
            "the tag's own spacing (1.5 rates; on change: held up to 5 min; compressed: its "
            "max_interval); bad samples are never used"
            + (
                f"; gaps up to {grid['max_gap']} are filled and flagged in <tag>:filled"
                if options.max_gap_ns
                else ""
            ),
        },
        "units": "SI where the unit is known (see unit_conversion per tag)"
        if options.si_units
        else "as stored",
        "normalization": None
        if normalization is None
        else {k: v for k, v in normalization.items() if k != "columns"},
        "tags": tags,
    }


def datacard_markdown(card: dict[str, Any]) -> str:
    sampling = card["sampling"]
    lines = [
        "# Data card",
        "",
        f"Exported by {card['generated_by']} from `{card['dataset']['source']}` "
        f"({card['dataset']['batches']} batches, {card['dataset']['bytes']:,} bytes).",
        "",
        f"- **Time range:** {card['time_range']['from']} to {card['time_range']['to']} (UTC)",
        f"- **Grid:** every {sampling['period']}, {sampling['rows']:,} rows, "
        f"file `{sampling['file']}` ({sampling['format']})",
        f"- **Gaps:** {sampling['gaps']}",
        f"- **Units:** {card['units']}",
        f"- **Gateways:** {', '.join(card['dataset']['gateways'])}",
    ]
    if sampling["late_samples_left_out"]:
        lines.append(
            f"- **Left out:** {sampling['late_samples_left_out']} samples stored too late "
            "for their part of the grid"
        )
    if card["normalization"]:
        lines.append(
            f"- **Normalisation:** {card['normalization']['method']}, "
            f"{card['normalization']['formula']} (per column below, and normalization.json)"
        )
    lines += [
        "",
        "## Tags",
        "",
        "| column | unit | description | rate | method | completeness | validity "
        "| cells with value | filled |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for tag in card["tags"]:
        cells = tag["cells"]
        share = cells["with_value"] / cells["total"] if cells["total"] else 0.0
        lines.append(
            f"| `{tag['column']}` | {_unit(tag)} | {tag['description'] or ''} | "
            f"{tag['rate'] or ''}{' (on change)' if tag['on_change'] else ''} | {tag['method']} | "
            f"{_percent(tag['quality']['completeness'])} | "
            f"{_percent(tag['quality']['validity'])} | {100 * share:.2f} % | {cells['filled']} |"
        )
    lines += ["", "## Processing (lineage from the edge)", ""]
    for tag in card["tags"]:
        lineage = json.dumps(tag["lineage"], sort_keys=True)
        lines.append(f"- `{tag['column']}`: `{lineage}`")
        for change in tag["lineage_changes"][1:]:
            lines.append(
                f"  - since {change['since']}: `{json.dumps(change['lineage'], sort_keys=True)}`"
            )
        if tag["normalization"]:
            n = tag["normalization"]
            lines.append(f"  - normalised: offset {n['offset']!r}, scale {n['scale']!r}")
    lines += [
        "",
        "## Config hashes",
        "",
        "| gateway | config hash | from | to | batches |",
        "|---|---|---|---|---|",
    ]
    for config in card["dataset"]["configs"]:
        lines.append(
            f"| {config['gateway']} | `{config['config_hash']}` | {config['from']} | "
            f"{config['to']} | {config['batches']} |"
        )
    return "\n".join(lines) + "\n"


def _unit(tag: dict[str, Any]) -> str:
    conversion = tag["unit_conversion"]
    if conversion:
        return f"{conversion['to']} (stored in {conversion['from']})"
    return tag["unit"] or ""


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"
