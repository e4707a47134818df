"""Gaps: stretches of a series without a received sample, when, how long and why.

A received sample is one the device delivered (any quality) that no stage made up; the
gateway's own placeholders for a poll or session that failed (bad ``comm_error`` or
``timeout``) are not received but say why nothing was. Two kinds of series:

- *timed* ones owe one sample per rate and keep every one (no deadband, swinging door or
  dropping filter): a gap is two consecutive received samples with a tick of the rate
  between them that has none (see :func:`_missing`), from the first to the second,
  whether or not a placeholder says why;
- the others (on change, compressed, thinned) may rightly stay silent, so only a
  placeholder starts a gap; it runs from the first placeholder to the next received sample.

The reason is the first placeholder's, else ``not_acquired`` where the agent wrote no batch
for part of the gap (it was not running), else ``no_data``. A gap still open at the end of
the data ends there and is marked ``open``. Series are followed across chunks by carrying
each one's last received time and first pending placeholder.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.acquisition import quality as q
from agent.config.durations import parse_duration
from agent.report.chunk import Chunk
from agent.report.series import SeriesIndex

_NONE = np.iinfo(np.int64).min
_PLACEHOLDERS = (int(q.Reason.COMM_ERROR), int(q.Reason.TIMEOUT))
_THINNING = ("deadband", "swinging_door")


def spacing_ns(lineage: dict[str, Any]) -> float:
    """The rate a series keeps every sample of, inf if it may rightly skip some."""
    if "rate" not in lineage or lineage.get("on_change") or "derived_from" in lineage:
        return math.inf
    if any(key in lineage for key in _THINNING) or lineage.get("range_action") == "drop":
        return math.inf
    if (lineage.get("spike") or {}).get("action") == "drop":
        return math.inf
    return float(parse_duration(lineage["rate"]))


@dataclass(frozen=True)
class Gaps:
    series: np.ndarray  # int64
    start: np.ndarray  # int64 ns
    end: np.ndarray
    reason: np.ndarray  # a Reason code, or one of the codes below
    missing: np.ndarray  # int64: samples owed and not received (timed series), else -1
    open: np.ndarray  # bool: still open where the data ends


NO_DATA = 0  # no placeholder, the agent running: the device sent nothing
NOT_ACQUIRED = -1  # no placeholder, and windows without a batch: the agent was not running


def reason_name(code: int) -> str:
    if code == NO_DATA:
        return "no_data"
    if code == NOT_ACQUIRED:
        return "not_acquired"
    return q.reason_name(code)


class GapFinder:
    def __init__(self, series: SeriesIndex) -> None:
        self.series = series
        self.last = np.empty(0, np.int64)  # per series: last received sample
        self.pending = np.empty(0, np.int64)  # first placeholder since then
        self.pending_reason = np.empty(0, np.int64)
        self._spacing: list[float] = []  # per lineage variant
        self._found: list[tuple[np.ndarray, ...]] = []

    def _grow(self) -> None:
        more = self.series.count - self.last.shape[0]
        if more > 0:
            self.last = np.r_[self.last, np.full(more, _NONE, np.int64)]
            self.pending = np.r_[self.pending, np.full(more, _NONE, np.int64)]
            self.pending_reason = np.r_[self.pending_reason, np.zeros(more, np.int64)]

    def spacing(self) -> np.ndarray:
        """Per series, :func:`spacing_ns` of its current lineage."""
        while len(self._spacing) < len(self.series.variants):
            self._spacing.append(spacing_ns(self.series.variants[len(self._spacing)]))
        variant = self.series.current[: self.series.count]
        table = np.array([*self._spacing, math.inf])  # -1 (never described): inf
        return table[np.where(variant >= 0, variant, len(self._spacing))]

    def add(self, chunk: Chunk) -> None:
        self._grow()
        severity = chunk.quality & q.SEVERITY_MASK
        reason = (chunk.quality & q.REASON_MASK).astype(np.int64)
        placeholder = (severity == q.BAD) & np.isin(reason, _PLACEHOLDERS)
        received = ~placeholder & (reason != q.Reason.INTERPOLATED)
        at = np.flatnonzero(received)
        s, t = chunk.series[at], chunk.time[at]
        first = np.r_[True, s[1:] != s[:-1]] if at.size else np.empty(0, bool)
        previous = np.empty_like(t)
        previous[1:] = t[:-1]
        previous[first] = self.last[s[first]]
        # the first placeholder before each received sample, since the one before it
        marks = np.flatnonzero(placeholder)
        target = np.searchsorted(at, marks)
        bound = target < at.size
        bound[bound] = s[target[bound]] == chunk.series[marks[bound]]
        mark_time = np.full(at.size, _NONE, np.int64)
        mark_reason = np.zeros(at.size, np.int64)
        targets, earliest = np.unique(target[bound], return_index=True)
        mark_time[targets] = chunk.time[marks[bound]][earliest]
        mark_reason[targets] = reason[marks[bound]][earliest]
        carried = first & (self.pending[s] != _NONE)  # placeholders from an earlier chunk
        mark_time[carried] = self.pending[s[carried]]
        mark_reason[carried] = self.pending_reason[s[carried]]
        spacing = self.spacing()[s]
        known = previous != _NONE
        marked = mark_time != _NONE
        timed = np.isfinite(spacing) & known
        missing = np.full(at.size, -1, np.int64)
        missing[timed] = _missing(previous[timed], t[timed], spacing[timed].astype(np.int64))
        gap = (missing >= 1) | marked
        start = np.where(timed, previous, mark_time)
        gaps = (s[gap], start[gap], t[gap], mark_reason[gap], missing[gap])
        self._found.append((*gaps, np.zeros(int(gap.sum()), bool)))
        # carry: the latest received sample, and placeholders with none after them yet
        if at.size:
            latest = np.maximum.reduceat(t, np.flatnonzero(first))
            owners = s[first]
            self.last[owners] = np.maximum(self.last[owners], latest)
            self.pending[owners] = _NONE
        trailing = marks[~bound]
        if trailing.size:
            owners, earliest = np.unique(chunk.series[trailing], return_index=True)
            unset = self.pending[owners] == _NONE
            self.pending[owners[unset]] = chunk.time[trailing[earliest[unset]]]
            self.pending_reason[owners[unset]] = reason[trailing[earliest[unset]]]

    def result(self, windows: dict[str, list[int]], widths: dict[str, int], end_ns: int) -> Gaps:
        """Every gap found; ``windows`` are each gateway's batch starts and ``widths`` its
        window, to tell the agent's absence; gaps still open end at ``end_ns``."""
        self._grow()
        still = np.flatnonzero(self.pending != _NONE)
        parts = [
            *self._found,
            (
                still,
                self.pending[still],
                np.full(still.size, end_ns, np.int64),
                self.pending_reason[still],
                np.full(still.size, -1, np.int64),
                np.ones(still.size, bool),
            ),
        ]
        series, start, end, reason, missing, open_ = (
            np.concatenate(column) for column in zip(*parts, strict=True)
        )
        series = series.astype(np.int64)
        reason = reason.astype(np.int64)
        for starts in windows.values():
            starts.sort()
        unexplained = np.flatnonzero(reason == NO_DATA)
        for index in unexplained.tolist():
            gateway = self.series.keys[int(series[index])][0]
            if _agent_absent(
                windows.get(gateway, []), widths.get(gateway, 0), start[index], end[index]
            ):
                reason[index] = NOT_ACQUIRED
        order = np.lexsort((start, series))
        return Gaps(
            series[order],
            start[order],
            end[order],
            reason[order],
            missing[order],
            open_[order],
        )


def _missing(previous: np.ndarray, time: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Samples owed between two received ones. A polled sample is stamped after its tick
    (Modbus: the request's midpoint), so counting the ticks between them is exact however
    the round trips vary, where the interval alone would see a gap in a slow answer after
    a fast one; counting by the interval too keeps device-stamped samples that sit on a
    tick boundary from looking a tick apart. The smaller count is taken."""
    by_tick = time // rate - previous // rate - 1
    by_interval = np.round((time - previous) / rate).astype(np.int64) - 1
    return np.minimum(by_tick, by_interval)


def _agent_absent(starts: list[int], width: int, low: int, high: int) -> bool:
    """Whether a window lying wholly inside (low, high) has no batch."""
    if not width:
        return False
    first = -(-low // width) * width
    last = high // width * width - width
    if last < first:
        return False
    present = bisect.bisect_right(starts, last) - bisect.bisect_left(starts, first)
    return present < (last - first) // width + 1
