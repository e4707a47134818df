"""``edge-agent report`` and ``edge-agent export``: their arguments and what they run.

This module is imported with the CLI, so it imports nothing heavy at the top: the report
package when a command runs, plotly only when ``--html`` is asked.

``report DATASET`` prints the text table from the footers alone (fast); ``--json``,
``--csv`` and ``--html`` read every sample too. ``export DATASET --out DIR`` writes the
wide table and its data card (agent/report/export.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from agent.config.durations import parse_duration, parse_interval

if TYPE_CHECKING:
    from agent.report.dataset import Selection

EXIT_USAGE = 2
EXIT_FAILED = 1  # nothing to export, or an output the system refused


class UsageError(Exception):
    """An argument that cannot be used; printed as one line, exit status 2."""


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="a parquet uplink's folder, or one file of it")
    parser.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="write a self-contained page with plots (needs: pip install 'edge-agent[report]')",
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON ('-': stdout)")
    parser.add_argument(
        "--csv", metavar="FILE", help="write the per-tag figures as CSV ('-': stdout)"
    )
    _add_selection(parser)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="a parquet uplink's folder, or one file of it")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--period", help="time grid, e.g. 1s; None: the fastest tag's rate")
    parser.add_argument(
        "--format", choices=("parquet", "csv"), default="parquet", help="of the table file"
    )
    parser.add_argument(
        "--max-gap", default="0s", help="fill gaps up to this long (flagged); longer stay empty"
    )
    parser.add_argument("--normalize", choices=("minmax", "zscore"), help="scale each column")
    parser.add_argument(
        "--units", choices=("si", "stored"), default="si", help="convert to SI where known"
    )
    _add_selection(parser)


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="start", metavar="TIME", help="e.g. 2026-11-21T09:30Z")
    parser.add_argument("--to", dest="end", metavar="TIME", help="end of the range, exclusive")
    parser.add_argument(
        "--tags", action="append", default=[], metavar="GLOB", help='e.g. "plc1/*" (repeatable)'
    )


def parse_time(option: str, text: str) -> int:
    """UTC nanoseconds of an ISO 8601 time or date; a time without a zone is UTC."""
    try:
        stamp = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{option}: expected a time such as 2026-11-21T09:30:00Z or a date, got {text!r}"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    delta = stamp - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def selection_of(args: argparse.Namespace) -> Selection:
    from agent.report.dataset import Selection

    start = parse_time("--from", args.start) if args.start else None
    end = parse_time("--to", args.end) if args.end else None
    if start is not None and end is not None and end <= start:
        raise UsageError(f"--to {args.end} is not after --from {args.start}")
    globs = tuple(glob.strip() for text in args.tags for glob in text.split(",") if glob.strip())
    return Selection(start, end, globs)


def _output(name: str) -> contextlib.AbstractContextManager[IO[str]]:
    """A file to write, or standard output for "-" (left open)."""
    if name == "-":
        return contextlib.nullcontext(sys.stdout)
    return open(name, "w", encoding="utf-8")


def run_report(args: argparse.Namespace) -> int:
    from agent.report.dataset import NotADataset
    from agent.report.document import to_dict
    from agent.report.figures import compute
    from agent.report.html import PlotlyMissing
    from agent.report.text import format_text, write_csv

    try:
        selection = selection_of(args)
        if args.html is not None:
            from agent.report.html import require_plotly

            require_plotly()
        report = compute(args.dataset, selection, samples=bool(args.html or args.json or args.csv))
    except (UsageError, NotADataset, PlotlyMissing) as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.json:
            with _output(args.json) as out:
                json.dump(to_dict(report), out, indent=1, allow_nan=False)
                out.write("\n")
        if args.csv:
            with _output(args.csv) as out:
                write_csv(report, out)
        if args.html is not None:
            from agent.report.html import write_html

            write_html(report, args.html)
            print(f"report written to {args.html}", file=sys.stderr)
    except OSError as exc:
        print(f"cannot write the report: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not (args.json == "-" or args.csv == "-"):
        print(format_text(report))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from agent.report.dataset import NotADataset
    from agent.report.export import ExportOptions, GridTooWide, NothingToExport, export

    try:
        options = ExportOptions(
            selection=selection_of(args),
            period_ns=_duration("--period", args.period, parse_duration) if args.period else None,
            max_gap_ns=_duration("--max-gap", args.max_gap, parse_interval),
            format=args.format,
            normalize=args.normalize,
            si_units=args.units == "si",
        )
        written = export(args.dataset, args.out, options)
    except (UsageError, NotADataset, GridTooWide) as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except NothingToExport as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"cannot write the export: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for path in written:
        print(path)
    return 0


def _duration(option: str, text: str, parse: Callable[[str], int]) -> int:
    try:
        return parse(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
