"""Log a problem once when it starts and once when it ends, however often it repeats.

A device that times out ten times a second must not flood the journal, but plant IT must
see when it started, what it was, and that it is over: one warning, one "recovered" line
with how long it lasted and how many times it happened. A problem that loses data (a full
spool dropping batches) adds up what it cost: ``totals`` given with each occurrence are
summed, logged in a summary every ``summary_s`` while it lasts, and in the final line.

A flaky device fails and recovers over and over (a Modbus exception every few seconds, a
connection dropped every four): logged per failure and per recovery, that was a pair of
lines per hiccup. With ``settle_s`` a problem is one *episode* until it has stayed away
that long: a recovery sooner than ``settle_s`` after the failure began is not logged at
once, a failure within ``settle_s`` of a recovery continues the episode silently, a
flapping episode is summarised every ``summary_s`` (how many failures since the last
line), and "recovered" is logged once it has stayed away ``settle_s``, with the failures
and outages of the whole episode. A longer outage still logs "recovered" the moment it
ends. :meth:`ProblemLog.close` tells the recoveries still settling (at a stop).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

SETTLE_S = 10.0  # sources and uplinks: a problem back within this is the same episode
FLAP_SUMMARY_S = 60.0  # a flapping episode's count of failures, this often


@dataclass(slots=True)
class _Episode:
    event: str  # the first failure's event, for the summaries
    since_mono_ns: int
    summarised_mono_ns: int
    count: int = 0  # fail() calls in the episode
    counted_at_summary: int = 0
    outages: int = 1  # failing stretches in the episode
    failing_since_ns: int = 0  # this stretch's start (while failing)
    failing: bool = True
    recovered_mono_ns: int = 0  # the last recovery (while settling)
    settle: asyncio.TimerHandle | None = None
    totals: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LastFailure:
    """The most recent failure of a component, for ``edge-agent status``."""

    key: str
    event: str
    details: dict[str, Any]
    at_ns: int  # wall clock


class ProblemLog:
    """Open problems of one component, keyed by what failed (a block, a connection...)."""

    def __init__(
        self, log: Any | None = None, summary_s: float | None = None, settle_s: float | None = None
    ) -> None:
        self.log = log if log is not None else structlog.get_logger()
        self._episodes: dict[str, _Episode] = {}
        self._summary_ns = None if summary_s is None else int(summary_s * 1e9)
        self._settle_ns = None if settle_s is None else int(settle_s * 1e9)
        if self._settle_ns is not None and self._summary_ns is None:
            self._summary_ns = int(FLAP_SUMMARY_S * 1e9)
        self.last: LastFailure | None = None

    def fail(
        self, key: str, event: str, totals: dict[str, int] | None = None, **details: Any
    ) -> bool:
        """Record one occurrence; logs only the first of an episode (and, with
        ``summary_s``, a summary now and then). True if it began a failing stretch."""
        now = time.monotonic_ns()
        self.last = LastFailure(key, event, details, time.time_ns())
        episode = self._episodes.get(key)
        began = episode is None or not episode.failing
        if episode is None:
            # the first line tells the first failure: summaries count from the next one
            episode = self._episodes[key] = _Episode(
                event, now, now, counted_at_summary=1, failing_since_ns=now
            )
            self.log.warning(event, problem=key, **(totals or {}), **details)
        elif not episode.failing:  # back within settle_s: the same episode, not a new line
            if episode.settle is not None:
                episode.settle.cancel()
                episode.settle = None
            episode.failing = True
            episode.failing_since_ns = now
            episode.outages += 1
        episode.count += 1
        for name, value in (totals or {}).items():
            episode.totals[name] = episode.totals.get(name, 0) + value
        if self._summary_ns is not None and now - episode.summarised_mono_ns >= self._summary_ns:
            self._summarise(key, episode, now)
        return began

    def _summarise(self, key: str, episode: _Episode, now: int) -> None:
        episode.summarised_mono_ns = now
        recent = episode.count - episode.counted_at_summary
        episode.counted_at_summary = episode.count
        flapping = {"outages": episode.outages, "recent": recent} if episode.outages > 1 else {}
        self.log.warning(
            f"{episode.event} (still)",
            problem=key,
            lasted_s=round((now - episode.since_mono_ns) / 1e9, 3),
            occurrences=episode.count,
            **flapping,
            **episode.totals,
        )

    def ok(self, key: str) -> bool:
        """End the failing stretch if one is open; True if one was. "recovered" is logged
        now, or once the problem has stayed away ``settle_s`` (see the module docstring)."""
        episode = self._episodes.get(key)
        if episode is None or not episode.failing:
            return False
        now = time.monotonic_ns()
        episode.failing = False
        episode.recovered_mono_ns = now
        settle = self._settle_ns
        if settle is None or (episode.outages == 1 and now - episode.failing_since_ns >= settle):
            self._recovered(key, episode)
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to wait on: told now
            self._recovered(key, episode)
            return True
        episode.settle = loop.call_later(settle / 1e9, self._recovered, key, episode)
        return True

    def _recovered(self, key: str, episode: _Episode) -> None:
        if self._episodes.get(key) is not episode or episode.failing:
            return
        del self._episodes[key]
        flapping = {"outages": episode.outages} if episode.outages > 1 else {}
        self.log.info(
            "recovered",
            problem=key,
            lasted_s=round((episode.recovered_mono_ns - episode.since_mono_ns) / 1e9, 3),
            occurrences=episode.count,
            **flapping,
            **episode.totals,
        )

    def close(self) -> None:
        """Tell the recoveries still settling now (the component stops)."""
        for key, episode in list(self._episodes.items()):
            if not episode.failing:
                if episode.settle is not None:
                    episode.settle.cancel()
                self._recovered(key, episode)

    def is_open(self, key: str) -> bool:
        episode = self._episodes.get(key)
        return episode is not None and episode.failing

    def since_s(self, key: str) -> float | None:
        """How long the problem's episode has been going on while it fails, or None."""
        episode = self._episodes.get(key)
        if episode is None or not episode.failing:
            return None
        return (time.monotonic_ns() - episode.since_mono_ns) / 1e9

    @property
    def open_keys(self) -> list[str]:
        return [key for key, episode in self._episodes.items() if episode.failing]
