"""Log a problem once when it starts and once when it ends, however often it repeats.

A device that times out ten times a second must not flood the journal, but plant IT must
see when it started, what it was, and that it is over: one warning, one "recovered" line
with how long it lasted and how many times it happened.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog


@dataclass(slots=True)
class _Open:
    since_mono_ns: int
    count: int


class ProblemLog:
    """Open problems of one component, keyed by what failed (a block, a connection...)."""

    def __init__(self, log: Any | None = None) -> None:
        self.log = log if log is not None else structlog.get_logger()
        self._open: dict[str, _Open] = {}

    def fail(self, key: str, event: str, **details: Any) -> bool:
        """Record one occurrence; logs only the first of a run. True if it was the first."""
        current = self._open.get(key)
        if current is not None:
            current.count += 1
            return False
        self._open[key] = _Open(time.monotonic_ns(), 1)
        self.log.warning(event, problem=key, **details)
        return True

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
        )
        return True

    def is_open(self, key: str) -> bool:
        return key in self._open

    @property
    def open_keys(self) -> list[str]:
        return list(self._open)
