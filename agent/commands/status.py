"""``edge-agent status``: the running agent on one screen, from its ``/status`` endpoint.

Per source: up, connecting, degraded or down and why, points per second, the p99 of poll
lateness, its last error; per uplink: up or down, the batches waiting for it and the age
of the oldest; the spool; clock offsets; the data quality of the last closed window.
``--watch`` redraws it every few seconds until Ctrl-C; ``--json`` prints the document.
Exit status: 0 every check passes, 1 something is degraded or down, 3 no agent answers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from typing import Any

from agent.commands.endpoint import (
    EXIT_UNREACHABLE,
    Unreachable,
    add_endpoint_arguments,
    ask,
    base_url,
)
from agent.config.load import ConfigError

EXIT_UNHEALTHY = 1
_CLEAR = "\x1b[H\x1b[2J"


def add_status_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "status",
        help="the running agent on one screen: sources, uplinks, spool, clocks, quality",
        description=(
            "Show the running agent on one screen, asked at its endpoint (agent.metrics, "
            "GET /status): per source up, connecting, degraded or down and why, points/s, "
            "poll lateness p99 and last error; per uplink up or down, backlog and oldest "
            "unsent batch; the spool; clock offsets; the last window's data quality. "
            "Exit status: 0 every check passes, 1 something is degraded or down, 3 no agent "
            "answers."
        ),
    )
    add_endpoint_arguments(parser)
    parser.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=float,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )
    parser.add_argument("--json", action="store_true", help="print the /status JSON document")
    parser.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    try:
        url = f"{base_url(args.config, args.url)}/status"
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except Unreachable as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.watch is None:
        return _once(url, args.json)
    try:
        while True:
            width = shutil.get_terminal_size().columns
            try:
                screen = render(ask(url).body, width)
            except Unreachable as exc:
                screen = f"{exc}\n(retrying)"
            print(f"{_CLEAR}{screen}\n\n{time.strftime('%H:%M:%S')}  Ctrl-C ends", flush=True)
            time.sleep(max(args.watch, 0.2))
    except KeyboardInterrupt:
        return 0


def _once(url: str, as_json: bool) -> int:
    try:
        document = ask(url).body
    except Unreachable as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNREACHABLE
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    print(json.dumps(document, indent=2) if as_json else render(document, width))
    return 0 if document.get("agent", {}).get("ok") else EXIT_UNHEALTHY


def render(status: dict[str, Any], width: int | None = None) -> str:
    """The status document as a screen of text, lines cut at ``width`` (a terminal's)."""
    agent = status["agent"]
    verdict = "OK" if agent["ok"] else "FAILING: " + ", ".join(agent["failed"])
    lines = [
        f"edge-agent {agent['version']}  gateway {agent['gateway_id']}  pid {agent['pid']}  "
        f"up {_duration(agent['uptime_s'])}  {verdict}",
        f"config {agent['config']} ({agent['config_hash']})",
    ]
    if (reload := agent.get("last_reload")) is not None:
        lines.append(f"last reload {reload['at']}: {reload['outcome']}: {reload['message']}")
    lines += ["", *_table(_source_rows(status["sources"]))]
    lines += ["", *_table(_uplink_rows(status["uplinks"]))]
    spool = status["spool"]
    paused = f"; acquisition PAUSED ({', '.join(spool['acquisition_paused'])})"
    lines += [
        "",
        f"spool: {spool['batches']} batches, {_bytes(spool['bytes'])}, oldest "
        f"{_duration(spool['oldest_s'])}; open windows {spool['open_window_points']} points; "
        f"at risk {spool['points_at_risk']}; quarantined {spool['quarantine']['batches']}"
        + (paused if spool["acquisition_paused"] else ""),
    ]
    for name, clock in status["clocks"].items():
        lines.append(
            f"clock {name}: offset {clock.get('offset_ms')} ms, drift {clock.get('drift_ppm')} "
            f"ppm, uncertainty {clock.get('uncertainty_ms')} ms"
            + (" (corrected)" if clock.get("corrected") else "")
        )
    if (quality := status.get("quality")) is not None:
        lines += ["", f"last window {quality['window_start']}"]
        for name, figures in quality["sources"].items():
            lines.append(f"  {name}: {_quality(figures)}")
    return "\n".join(line[:width] if width else line for line in lines)


def _source_rows(sources: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["SOURCE", "state", "points/s", "late p99", "tags", "endpoint", "why / last error"]]
    for source in sources:
        why = source["why"] or ""
        if source["last_error"] and source["state"] != "down":  # down: "why" says it
            why = f"{why}; " if why else ""
            why += f"last error {source['last_error_at']}: {source['last_error']}"
        rows.append(
            [
                source["name"],
                source["state"].upper() if source["state"] != "up" else "up",
                _number(source["points_per_s"]),
                "-" if source["lateness_p99_ms"] is None else f"{source['lateness_p99_ms']} ms",
                str(source["tags"]),
                f"{source['protocol']} {source['endpoint']}".strip(),
                why,
            ]
        )
    return rows


def _uplink_rows(uplinks: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["UPLINK", "state", "backlog", "oldest unsent", "to", "why"]]
    for uplink in uplinks:
        rows.append(
            [
                uplink["name"],
                "up" if uplink["state"] == "up" else "DOWN",
                str(uplink["backlog"]),
                _duration(uplink["oldest_unsent_s"]),
                f"{uplink['type']} {uplink['to']}",
                uplink["why"] or "",
            ]
        )
    return rows


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]).rstrip()
        for r in rows
    ]


def _quality(figures: dict[str, Any]) -> str:
    parts = [f"received {figures['received']}"]
    if figures.get("completeness") is not None:
        parts.append(f"complete {figures['completeness'] * 100:.1f} %")
    if figures.get("session_up") is not None:
        parts.append(f"session up {figures['session_up'] * 100:.1f} %")
    if figures.get("validity") is not None:
        parts.append(f"valid {figures['validity'] * 100:.1f} %")
    if "latency_p50_ms" in figures:
        parts.append(f"latency p50 {figures['latency_p50_ms']} ms")
    return ", ".join(parts)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h" if days else f"{hours}h{minutes:02d}m"


def _bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
