"""Data-quality figures per batch: completeness, validity, timeliness, clock.

Samples are tallied as the sources deliver them, before any filter thins them out, so the
figures describe acquisition: a deadband that sends one value in ten does not make a tag
look 10 % complete. Per window and tag:

- ``received``: samples that carry a value or a device's answer; the gateway's own
  placeholders for a poll that got no answer (comm error, timeout) do not count;
- ``good``: received samples of good quality;
- ``expected``: the part of the window the tag was being acquired, divided by its rate.

A tag is being acquired from its first sample (a value, or the placeholder of a poll or a
session that failed), and until the agent stops acquiring. Counting from the agent's start
would call the wait for a session and for the first poll due on the tag's grid missing,
so a clean run could never be complete; counting only from the first value would let a
device that never answers owe nothing. A tag that has delivered nothing at all by
``grace`` after the start (a driver stuck before its first answer or failure) is owed
from then. A window in which no tag was being acquired (before the first sample, after
the stop) has no figures to give and is not a batch (:meth:`QualityTally.acquired_ns`).

A source whose tags arrive on change (a subscription, a publisher) owes no count, but it
can be down: its ``session_up`` is the share of the time since its first frame (or failed
session) during which its session was up, i.e. not between a failed session's marker and
the next sample received, so one that never connects shows 0, not nothing.

completeness = received / expected and validity = good / received. Timeliness is the
acquisition-to-batch latency of the batch's rows, per source. A batch carries the totals
per source and, per tag, only the tags that deviate (not the rounded expected number, not
all good, or nothing at all where anything was due), so a healthy 10,000-tag gateway does
not write 10,000 entries per window; :func:`tag_figures` restores every tag's figures from
that and the lineage.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.config.durations import parse_duration
from agent.ops.metrics import percentile

_NOT_RECEIVED = (int(q.Reason.COMM_ERROR), int(q.Reason.TIMEOUT))
_NEVER = np.iinfo(np.int64).max  # a tag not acquired yet


class _Sessions:
    """When each on-change source's session was down, on the gateway's receive clock
    (device stamps of a subscription's first values may be hours old)."""

    def __init__(self) -> None:
        self.since: dict[int, int] = {}  # source -> its first frame
        self.down: dict[int, int] = {}  # source -> since when, while down
        self.outages: list[tuple[int, int, int]] = []  # (source, from, until), ended

    def note(self, source: int, at: int, received: bool) -> None:
        self.since.setdefault(source, at)
        down = self.down.get(source)
        if received and down is not None:
            del self.down[source]
            self.outages.append((source, down, at))
        elif not received and down is None:
            self.down[source] = at

    def up_ns(self, source: int, low: int, high: int) -> tuple[int, int]:
        """(acquired, up) ns of the source between ``low`` and ``high``."""
        low = max(low, self.since.get(source, high))
        if high <= low:
            return 0, 0
        periods = [(a, b) for s, a, b in self.outages if s == source]
        if source in self.down:
            periods.append((self.down[source], high))
        down = sum(max(0, min(b, high) - max(a, low)) for a, b in periods)
        return high - low, high - low - down

    def renumber(self, moved: dict[int, int]) -> None:
        """Sources got new numbers (``moved``: old -> new); the others are forgotten."""
        self.since = {moved[s]: at for s, at in self.since.items() if s in moved}
        self.down = {moved[s]: at for s, at in self.down.items() if s in moved}
        self.outages = [(moved[s], a, b) for s, a, b in self.outages if s in moved]

    def forget_before(self, ns: int) -> None:
        self.outages = [outage for outage in self.outages if outage[2] > ns]


class QualityTally:
    """Counts received and good samples per (window, global tag) as frames arrive, and
    when each tag was first acquired.

    ``grace`` (ns, one value or one per tag) is how long after ``started_ns`` a tag may
    take to deliver its first sample before it is owed anyway; 0 owes every tag from the
    start."""

    def __init__(
        self,
        source_offset: list[int],
        tag_source: np.ndarray,
        rate_ns: np.ndarray,
        window_ns: int,
        clock: Callable[[], int] = time.time_ns,
        grace_ns: int | np.ndarray = 0,
    ) -> None:
        self.source_offset = source_offset
        self.tag_source = tag_source
        # a rate of 0 marks a tag nobody acquires (a derived feature): nothing expected
        self.rate_ns = np.where(rate_ns > 0, rate_ns, np.inf).astype(np.float64)
        self.window_ns = window_ns
        self.clock = clock
        self.started_ns = clock()
        self.stopped_ns: int | None = None  # set when acquisition ends: nothing owed after
        self.grace_ns = np.broadcast_to(np.asarray(grace_ns, np.int64), tag_source.shape)
        self.first_ns = np.full(tag_source.shape[0], _NEVER, np.int64)  # first sample per tag
        # per tag, when it stopped being acquired (a reload took it out): owed nothing after
        self.until_ns = np.full(tag_source.shape[0], _NEVER, np.int64)
        owed = np.isfinite(self.rate_ns)
        self.on_change = [not owed[tag_source == i].any() for i in range(len(source_offset))]
        self.live_sources = len(source_offset)
        self.slot_end = [*source_offset[1:], tag_source.shape[0]]  # a source's tags: a range
        self.sessions = _Sessions()
        self._unstarted = set(range(len(source_offset)))  # sources with a tag not sampled yet
        self._windows: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def retable(
        self,
        source_offset: list[int],
        tag_source: np.ndarray,
        rate_ns: np.ndarray,
        live_tags: int,
        moved: np.ndarray,
        grace_ns: np.ndarray,
        now_ns: int,
    ) -> None:
        """Carry the tallies over to a new tag table after a reload (``moved``: old index
        -> new or -1, see ``TagTable.moved_from``; the first ``live_tags`` tags are
        acquired, the rest retired). A tag that goes on keeps when it was first acquired
        and what its open windows counted; a new one is owed from its first sample, or
        from ``grace_ns`` after now at the latest; a retired one owes nothing after now.
        On-change sessions follow their source by name: :meth:`source_moved`."""
        size = tag_source.shape[0]
        kept = moved >= 0
        to = moved[kept]

        def carry(old: np.ndarray, fill: int) -> np.ndarray:
            new = np.full(size, fill, old.dtype)
            new[to] = old[kept]
            return new

        live = np.arange(size) < live_tags
        self.first_ns = carry(self.first_ns, _NEVER)
        self.until_ns = np.where(live, _NEVER, np.minimum(carry(self.until_ns, _NEVER), now_ns))
        new_tag = np.ones(size, bool)
        new_tag[to] = False
        grace = np.broadcast_to(np.asarray(grace_ns, np.int64), (size,))
        self.grace_ns = np.where(new_tag, now_ns - self.started_ns + grace, carry(self.grace_ns, 0))
        for window, (received, good) in list(self._windows.items()):
            self._windows[window] = (carry(received, 0), carry(good, 0))
        self.source_offset = source_offset
        self.slot_end = [*source_offset[1:], live_tags]
        self.tag_source = tag_source
        self.rate_ns = np.where(rate_ns > 0, rate_ns, np.inf).astype(np.float64)
        owed = np.isfinite(self.rate_ns)
        self.on_change = [not owed[tag_source == i].any() for i in range(len(source_offset))]
        self.live_sources = len(source_offset)
        self._unstarted = {
            i
            for i, (low, high) in enumerate(zip(source_offset, self.slot_end, strict=True))
            if (self.first_ns[low:high] == _NEVER).any()
        }

    def counted_tags(self) -> np.ndarray:
        """Tags with samples counted in windows not yet closed."""
        counted = [np.flatnonzero(received | good) for received, good in self._windows.values()]
        return np.unique(np.concatenate(counted)) if counted else np.zeros(0, np.int64)

    def source_moved(self, moved: dict[int, int]) -> None:
        """Sessions of on-change sources follow their source to its new slot (by name)."""
        self.sessions.renumber(moved)

    def stop(self, at_ns: int) -> None:
        """Acquisition ended at ``at_ns``: the windows still to close owe nothing after it."""
        self.stopped_ns = at_ns

    def add(self, source_index: int, frame: Frame) -> None:
        if not len(frame):
            return
        gtag = frame.tag + self.source_offset[source_index]
        if source_index in self._unstarted:  # until each of its tags has had a sample
            new = self.first_ns[gtag] == _NEVER
            if new.any():
                np.minimum.at(self.first_ns, gtag[new], frame.time[new])
                low, high = self.source_offset[source_index], self.slot_end[source_index]
                if (self.first_ns[low:high] != _NEVER).all():
                    self._unstarted.discard(source_index)
        windows = frame.time // self.window_ns * self.window_ns
        first = int(windows[0])
        if not frame.quality.any() and (windows == first).all():
            # the usual case, one poll of good samples in one window: a single count
            counts = np.bincount(gtag, minlength=self.tag_source.shape[0])
            self._add_counts(first, counts, counts)
            if self.on_change[source_index]:
                self.sessions.note(source_index, frame.received or int(frame.time[-1]), True)
            return
        reason = frame.quality & q.REASON_MASK
        bad = frame.quality >= q.BAD
        received = ~(bad & np.isin(reason, _NOT_RECEIVED))
        good = received & (frame.quality & q.SEVERITY_MASK == q.GOOD)
        if self.on_change[source_index]:
            at = frame.received or int(frame.time[-1])
            self.sessions.note(source_index, at, bool(received.any()))
        for start in np.unique(windows).tolist():
            rows = windows == start
            self._count(start, gtag[rows], received[rows], good[rows])

    def _count(self, window: int, gtag: np.ndarray, received: np.ndarray, good: np.ndarray) -> None:
        size = self.tag_source.shape[0]
        self._add_counts(
            window,
            np.bincount(gtag[received], minlength=size),
            np.bincount(gtag[good], minlength=size),
        )

    def _add_counts(self, window: int, received: np.ndarray, good: np.ndarray) -> None:
        counts = self._windows.get(window)
        if counts is None:
            size = self.tag_source.shape[0]
            counts = self._windows[window] = (np.zeros(size, np.int64), np.zeros(size, np.int64))
        counts[0][:] += received
        counts[1][:] += good

    def _spans(self, window_start: int) -> np.ndarray:
        """Per tag, the ns of the window during which it was being acquired."""
        owed = np.isfinite(self.rate_ns)  # an on-change tag is owed nothing before it sends
        deadline = np.where(owed, self.started_ns + self.grace_ns, _NEVER)
        low = np.maximum(np.minimum(self.first_ns, deadline), window_start)
        high = np.minimum(min(window_start + self.window_ns, self._end()), self.until_ns)
        return np.maximum(high - low, 0)

    def _end(self) -> int:
        return self.clock() if self.stopped_ns is None else self.stopped_ns

    def _sessions_up(self, window_start: int) -> dict[int, tuple[int, int]]:
        """Per on-change source: (acquired, up) ns in the window."""
        high = min(window_start + self.window_ns, self._end())
        return {
            index: self.sessions.up_ns(index, window_start, high)
            for index, on_change in enumerate(self.on_change)
            if on_change
        }

    def acquired_ns(self, window_start: int) -> int:
        """How long any tag was being acquired in the window: 0 means it is not a batch."""
        sessions = [acquired for acquired, _ in self._sessions_up(window_start).values()]
        return max(int(self._spans(window_start).max(initial=0)), *sessions, 0)

    def figures(
        self,
        window_start: int,
        source_names: list[str],
        qualified: list[str],
        latency_ns: dict[int, np.ndarray],
        clocks: dict[int, dict[str, Any]],
    ) -> dict[str, Any]:
        """The window's figures, and forget windows up to it (late tallies are dropped:
        the late rows themselves travel flagged in the next batch)."""
        received, good = self._windows.pop(window_start, (None, None))
        for stale in [w for w in self._windows if w < window_start]:
            del self._windows[stale]
        size = self.tag_source.shape[0]
        if received is None or good is None:
            received, good = np.zeros(size, np.int64), np.zeros(size, np.int64)
        spans = self._spans(window_start)
        span = int(spans.max(initial=0))
        sessions = self._sessions_up(window_start)
        self.sessions.forget_before(window_start)
        expected = spans / self.rate_ns
        owed = np.isfinite(self.rate_ns)  # tags that owe one sample per rate
        # a tag that sent nothing is listed even if the rounded promise was 0 (a slow tag's
        # window, a partial one): the batch's lineage names only the tags it holds, so
        # tag_figures could not give it the fraction it was expected; so is one acquired
        # for less of the window than the batch's span (its first window)
        deviating = (received != np.round(expected)) | (good != received)
        deviating |= (received == 0) & (expected > 0)
        deviating |= owed & (spans != span)
        sources: dict[str, Any] = {}
        for index, name in enumerate(source_names):
            mine = self.tag_source == index
            n_expected = float(expected[mine].sum())
            n_received = int(received[mine].sum())
            n_owed = int(received[mine & owed].sum())  # what completeness counts
            n_good = int(good[mine].sum())
            if index >= self.live_sources and not (n_received or n_expected):
                continue  # a source a reload took out, with nothing in this window
            figures: dict[str, Any] = {
                "received": n_received,
                "expected": round(n_expected, 3),
                "good": n_good,
                "completeness": round(min(n_owed / n_expected, 1.0), 4) if n_expected else None,
                "validity": round(n_good / n_received, 4) if n_received else None,
            }
            latency = latency_ns.get(index)
            if latency is not None and latency.size:
                figures["latency_p50_ms"] = round(percentile(latency, 50) / 1e6, 3)
                figures["latency_max_ms"] = round(float(latency.max()) / 1e6, 3)
            if index in sessions and sessions[index][0]:
                acquired, up = sessions[index]
                figures |= {"acquired_ns": acquired, "up_ns": up}
                figures["session_up"] = round(up / acquired, 4)
            if index in clocks:
                figures["clock"] = clocks[index]
            sources[name] = figures
        tags = {
            qualified[g]: [int(received[g]), round(float(expected[g]), 3), int(good[g])]
            for g in np.flatnonzero(deviating).tolist()
        }
        return {"span_ns": span, "sources": sources, "tags": tags}


def owed_rate_ns(described: dict[str, Any]) -> float:
    """The period a tag owes one sample per, from its lineage: inf for a derived (feature)
    or on-change tag, which owes none."""
    if "rate" not in described or described.get("on_change"):
        return math.inf
    return float(parse_duration(described["rate"]))


def unlisted_figures(span_ns: int, rate_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(received = good, expected) of the tags a batch does not list: acquired for the
    whole span, they received, all good, exactly the rounded number their rate promised."""
    expected = span_ns / rate_ns
    return np.round(expected), expected


def tag_figures(quality: dict[str, Any], lineage: dict[str, Any]) -> dict[str, list[float]]:
    """[received, expected, good] of every tag of a batch, from its two metadata entries:
    deviating tags are listed, the others are :func:`unlisted_figures`."""
    owed = {tag: owed_rate_ns(described) for tag, described in lineage.items()}
    owed = {tag: rate for tag, rate in owed.items() if math.isfinite(rate)}
    counts, expected = unlisted_figures(quality["span_ns"], np.fromiter(owed.values(), float))
    figures = {
        tag: [n, e, n] for tag, n, e in zip(owed, counts.tolist(), expected.tolist(), strict=True)
    }
    for tag, listed in quality["tags"].items():
        figures[tag] = [float(value) for value in listed]
    return figures
