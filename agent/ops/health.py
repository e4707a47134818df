"""Log a problem once when it starts and once when it ends, however often it repeats.

A device that times out ten times a second must not flood the journal, but plant IT must
see when it started, what it was, and that it is over: one warning, one "recovered" line
with how long it lasted and how many times it happened. A problem that loses data (a full
spool dropping batches) adds up what it cost: ``totals`` given with each occurrence are
summed, logged in a summary every ``summary_s`` while it lasts, and in the final line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import structlog


@dataclass(slots=True)
class _Open:
    since_mono_ns: int
    count: int
    summarised_mono_ns: int
    totals: dict[str, int] = field(default_factory=dict)


class ProblemLog:
    """Open problems of one component, keyed by what failed (a block, a connection...)."""

    def __init__(self, log: Any | None = None, summary_s: float | None = None) -> None:
        self.log = log if log is not None else structlog.get_logger()
        self._open: dict[str, _Open] = {}
        self._summary_ns = None if summary_s is None else int(summary_s * 1e9)

    def fail(
        self, key: str, event: str, totals: dict[str, int] | None = None, **details: Any
    ) -> bool:
        """Record one occurrence; logs only the first of a run (and, with ``summary_s``,
        a summary now and then). True if it was the first."""
        now = time.monotonic_ns()
        current = self._open.get(key)
        first = current is None
        if current is None:
            current = self._open[key] = _Open(now, 0, now)
            self.log.warning(event, problem=key, **(totals or {}), **details)
        current.count += 1
        for name, value in (totals or {}).items():
            current.totals[name] = current.totals.get(name, 0) + value
        if (
            not first
            and self._summary_ns is not None
            and now - current.summarised_mono_ns >= self._summary_ns
        ):
            current.summarised_mono_ns = now
            self.log.warning(
                f"{event} (still)",
                problem=key,
                lasted_s=round((now - current.since_mono_ns) / 1e9, 3),
                occurrences=current.count,
                **current.totals,
            )
        return first

    def ok(self, key: str) -> bool:
        """Close the problem if open, logging "recovered". True if one was open."""
        current = self._open.pop(key, None)
        if current is None:
            return False
        self.log.info(
            "recovered",
            problem=key,
            lasted_s=round((time.monotonic_ns() - current.since_mono_ns) / 1e9, 3),
            occurrences=current.count,
            **current.totals,
        )
        return True

    def is_open(self, key: str) -> bool:
        return key in self._open

    def since_s(self, key: str) -> float | None:
        """How long the problem has been open, or None."""
        current = self._open.get(key)
        return None if current is None else (time.monotonic_ns() - current.since_mono_ns) / 1e9

    @property
    def open_keys(self) -> list[str]:
        return list(self._open)
