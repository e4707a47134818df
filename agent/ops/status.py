"""The running agent on one page: the JSON behind ``GET /status`` and ``edge-agent status``.

``/healthz`` answers a yes/no for a probe; this says what plant IT asks when something is
off: per source whether it is up, degraded or down and why, how fast data comes in and
how late polls start, its last error; per uplink whether it delivers and how much waits
for it; the spool; each source's clock; and the data quality of the last closed window.
Everything is read from the agent's own objects when asked: nothing here runs per sample.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.ops.metrics import Metrics
from protocols.sdk import rate_summary, without_credentials

if TYPE_CHECKING:
    from agent.acquisition.supervisor import SourceRunner
    from agent.runtime import Agent

_RATE_WINDOW_S = 10.0  # points/s is measured over about this long


class RateMeter:
    """Points per second per source, from counters sampled once a second."""

    def __init__(self) -> None:
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def sample(self, name: str, points: int, now: float) -> None:
        samples = self._samples.setdefault(name, deque())
        samples.append((now, points))
        while len(samples) > 2 and now - samples[1][0] >= _RATE_WINDOW_S:
            samples.popleft()

    def rate(self, name: str) -> float | None:
        samples = self._samples.get(name)
        if not samples or len(samples) < 2:
            return None
        (t0, p0), (t1, p1) = samples[0], samples[-1]
        return (p1 - p0) / (t1 - t0) if t1 > t0 else None

    def keep(self, names: set[str]) -> None:
        """Forget the sources no longer configured."""
        for name in [n for n in self._samples if n not in names]:
            del self._samples[name]


def forget_series(metrics: Metrics, label: str, value: str) -> None:
    """Remove every series labelled ``label=value`` (a source or an uplink a reload took
    out), so that its last values do not go on looking current in Prometheus."""
    for family in vars(metrics).values():
        names = getattr(family, "_labelnames", None) or getattr(family, "labelnames", None)
        if not names or label not in names or not hasattr(family, "remove"):
            continue
        position = list(names).index(label)
        series = {
            tuple(sample.labels[name] for name in names)
            for metric in family.collect()
            for sample in metric.samples
            if all(name in sample.labels for name in names)
        }
        for values in series:
            if values[position] == value:
                family.remove(*values)


def status_document(agent: Agent) -> dict[str, Any]:
    health = agent.health()
    config = agent.loaded.config
    now_ns = time.time_ns()
    count, size, oldest = agent.spool.size()
    reload = None
    if agent.last_reload is not None:
        at_ns, result = agent.last_reload
        reload = {"at": _iso(at_ns), "outcome": result.outcome, "message": result.message}
    quality = None
    if agent.last_quality is not None:
        window_start, figures = agent.last_quality
        quality = {"window_start": _iso(window_start), "sources": figures.get("sources", {})}
    return {
        "agent": {
            "gateway_id": config.agent.gateway_id,
            "version": __version__,
            "pid": os.getpid(),
            "config": str(agent.loaded.path),
            "config_hash": agent.loaded.config_hash,
            "started": _iso(agent.started_ns),
            "uptime_s": round((now_ns - agent.started_ns) / 1e9, 1),
            "ok": health["ok"],
            "failed": health["failed"],
            "last_reload": reload,
        },
        "sources": [_source(agent, runner, health["checks"]) for runner in agent.runners],
        "uplinks": [
            _uplink(agent, uplink.name, health["checks"], now_ns) for uplink in agent.uplinks
        ],
        "spool": {
            "batches": count,
            "bytes": size,
            "oldest_s": None if oldest is None else round((now_ns - oldest) / 1e9, 1),
            "open_window_points": health["pending_points"],
            "points_at_risk": health["points_at_risk"],
            "acquisition_paused": sorted(agent.paused),
            "quarantine": health["quarantine"],
        },
        "clocks": {
            runner.config.name: runner.clock.describe()
            for runner in agent.runners
            if runner.clock.describe() is not None
        },
        "quality": quality,
        "checks": health["checks"],
    }


def _source(agent: Agent, runner: SourceRunner, checks: dict[str, str]) -> dict[str, Any]:
    config = runner.config
    problem = checks.get(f"source:{config.name}", "ok")
    if problem != "ok":
        state = "degraded" if problem.startswith("degraded") else "down"
    else:
        state = "up" if runner.ctx.connected else "connecting"
    lateness = [
        stats.lateness_s.percentile(99, last=256)
        for stats in runner.ctx.all_poll_stats.values()
        if stats.polls
    ]
    rate = agent.rates.rate(config.name)
    last = runner.ctx.problems.last
    if last is not None:
        details = ", ".join(f"{key} {value}" for key, value in last.details.items())
        error, error_at = f"{last.event} ({last.key}{': ' if details else ''}{details})", last.at_ns
    else:
        error, error_at = runner.last_error, runner.error_at_ns
    return {
        "name": config.name,
        "protocol": config.protocol,
        "endpoint": without_credentials(str(getattr(config, "url", ""))),
        "tags": len(config.tags),
        "rates": rate_summary(config.tags),
        "state": state,
        "why": None if problem == "ok" else problem,
        "points": runner.points,
        "points_per_s": None if rate is None else round(rate, 1),
        "lateness_p99_ms": round(max(lateness) * 1e3, 2) if lateness else None,
        "failures": runner.failures,
        "last_error": error or None,
        "last_error_at": _iso(error_at) if error_at else None,
    }


def _uplink(agent: Agent, name: str, checks: dict[str, str], now_ns: int) -> dict[str, Any]:
    config = next(u for u in agent.loaded.config.uplinks if u.name == name)
    problem = checks.get(f"uplink:{name}", "ok")
    backlog, oldest = agent.spool.unsent(name)
    return {
        "name": name,
        "type": config.type,
        "to": without_credentials(config.target),
        "state": "up" if problem == "ok" else "down",
        "why": None if problem == "ok" else problem,
        "backlog": backlog,
        "oldest_unsent_s": None if oldest is None else round((now_ns - oldest) / 1e9, 1),
    }


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat(timespec="milliseconds")
