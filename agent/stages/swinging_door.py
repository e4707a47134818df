"""Swinging-door trend compression that holds its error bound exactly.

Kept points are original samples, and the straight line between two consecutive kept
points stays within ``deviation`` of every sample between them. The textbook form ("when
the doors cross, archive the previous point") does not guarantee this: the doors say some
line from the archived point fits every sample so far, not that the line to the previous
point does, and the error reaches about twice the deviation.

Here, from the last archived point A, every later sample i confines the slope of the next
segment to ``[(v_i - d - v_A) / dt_i, (v_i + d - v_A) / dt_i]``; the running intersection is
``[lo, hi]``. A sample P is a valid end point when its own slope from A lies in the
intersection over the samples strictly between A and P; then the segment A-P is within
``d`` of all of them. When the intersection empties (or ``max_interval`` or the buffer
limit is reached), the most recent valid end point C is archived, becomes the new A, and
the samples after C are fed again from it. Only the samples after the latest valid end
point need to be kept, so the per-tag buffer is short on smooth signals.

State lives in arrays indexed by tag. With one sample per tag (a poll) the common case,
doors still open, is a few 1-D operations across all tags; the tags whose doors close, and
blocks of many samples per tag, form one padded matrix (a row per tag) that is settled
with one vector pass per archived point.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.acquisition.frame import QUALITY_DTYPE, TAG_DTYPE, Frame, concat
from agent.stages.base import DropCounter, RoundStage, no_count, usable

BUFFER = 64
"""Samples kept per tag after its latest valid end point; a full buffer forces an archive."""

BLOCK = 4
"""Tags with at least this many samples in a frame are fed as a block, fewer in rounds."""


class _Emitted:
    """Archived points collected during one step, joined into a frame at the end."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(
        self, tag: np.ndarray, time: np.ndarray, value: np.ndarray, quality: np.ndarray
    ) -> None:
        if tag.size:
            self.parts.append((tag, time, value, quality))

    def frame(self, received: int) -> Frame:
        if not self.parts:
            return Frame.empty()
        tag, time, value, quality = (
            np.concatenate(column) for column in zip(*self.parts, strict=True)
        )
        return Frame(tag.astype(TAG_DTYPE), time, value, quality.astype(QUALITY_DTYPE), received)


class SwingingDoorStage(RoundStage):
    name = "swinging_door"

    def __init__(
        self,
        deviation: Sequence[float],
        max_interval: Sequence[int],
        min_interval: Sequence[int],
        active: Sequence[bool],
        count: DropCounter = no_count,
    ) -> None:
        super().__init__(active, count)
        n = self.active.shape[0]
        self.deviation = np.asarray(deviation, np.float64)
        self.max_interval = np.asarray(max_interval, np.int64)
        self.min_interval = np.asarray(min_interval, np.int64)
        self.last_time = np.zeros(n, np.int64)
        self.has_anchor = np.zeros(n, bool)
        self.anchor_time = np.zeros(n, np.int64)
        self.anchor_value = np.zeros(n)
        self.lo = np.full(n, -np.inf)
        self.hi = np.full(n, np.inf)
        # buffer[:, 0] is the latest valid end point, the rest the samples after it
        self.buf_time = np.zeros((n, BUFFER + 1), np.int64)
        self.buf_value = np.zeros((n, BUFFER + 1))
        self.buf_quality = np.zeros((n, BUFFER + 1), np.uint16)
        self.buf_n = np.zeros(n, np.int64)

    def apply(self, frame: Frame) -> Frame:
        """Blocks of a tag's good samples in time order are fed at once, the rest in rounds.

        A block read holds many samples per tag; feeding them one round at a time would
        cost a vector step per sample. Tags whose samples here are all usable, newer than
        their state and not throttled go through :meth:`_settle` as one row of samples.
        """
        counts = np.bincount(frame.tag, minlength=self.active.shape[0])
        if counts.max() < BLOCK:
            return super().apply(frame)
        frame = frame.take(np.lexsort((frame.time, frame.tag)))
        tag = frame.tag
        start = np.r_[True, tag[1:] != tag[:-1]]
        previous = np.where(start, self.last_time[tag], np.r_[0, frame.time[:-1]])
        irregular = ~usable(frame) | (frame.time <= previous)
        awkward = np.bincount(tag[irregular], minlength=counts.shape[0]) > 0
        simple = (counts >= BLOCK) & ~awkward & (self.min_interval == 0) & self.has_anchor
        rows = simple[tag]
        if not rows.any():
            return super().apply(frame)
        block = frame.take(rows)
        tags, first, k = np.unique(block.tag, return_index=True, return_counts=True)
        emitted = _Emitted()
        self._feed(tags, k, block, emitted)
        self.last_time[tags] = block.time[first + k - 1]
        parts = [emitted.frame(frame.received)]
        if not rows.all():
            parts.append(super().apply(frame.take(~rows)))
        return concat(parts)

    # -- the step over one round --------------------------------------------------------

    def step(self, frame: Frame) -> Frame:
        tag, time = frame.tag, frame.time
        fresh = time > self.last_time[tag]
        ok = usable(frame)
        throttled = fresh & ok & (time - self.last_time[tag] < self.min_interval[tag])
        self.count("min_interval", int(np.count_nonzero(throttled)))
        accepted = fresh & ~throttled
        self.last_time[tag[accepted]] = time[accepted]
        good = accepted & ok
        emitted = _Emitted()
        broken = accepted & ~ok  # a bad sample ends the trend: cover what is pending first
        if broken.any():
            ended = tag[broken]
            self._flush(ended, emitted)
            self.has_anchor[ended] = False
        first = good & ~self.has_anchor[tag]
        if first.any():
            t = tag[first]
            self._anchor(t, time[first], frame.value[first])
            self.buf_n[t] = 0
        follow = good & ~first
        passed = frame.take(~good & ~throttled)  # bad and out-of-order ones are kept as is
        if follow.any():
            self._add(frame.take(follow), emitted)
        return concat([emitted.frame(frame.received), frame.take(first), passed])

    def _anchor(self, tags: np.ndarray, time: np.ndarray, value: np.ndarray) -> None:
        self.has_anchor[tags] = True
        self.anchor_time[tags] = time
        self.anchor_value[tags] = value
        self.lo[tags] = -np.inf
        self.hi[tags] = np.inf

    def _add(self, frame: Frame, emitted: _Emitted) -> None:
        """Feed one sample per tag: a vector update where the doors stay open, else settle.

        Where the new sample leaves the slope interval non-empty (most samples of a smooth
        signal) only the interval and the buffer change, which is a few 1-D operations
        across all tags; the others go through :meth:`_settle`, grouped by buffer width.
        """
        tags, time, value = frame.tag, frame.time, frame.value
        n = self.buf_n[tags]
        dt = (time - self.anchor_time[tags]).astype(np.float64)
        base, dev = self.anchor_value[tags], self.deviation[tags]
        lo, hi = self.lo[tags], self.hi[tags]
        slope = (value - base) / dt
        valid = (slope >= lo) & (slope <= hi)
        lo = np.maximum(lo, (value - dev - base) / dt)
        hi = np.minimum(hi, (value + dev - base) / dt)
        closes = (lo > hi) | (dt > self.max_interval[tags]) | (n >= BUFFER)
        closes &= n > 0
        easy = ~closes
        t, valid, n_easy = tags[easy], valid[easy], n[easy]
        self.lo[t], self.hi[t] = lo[easy], hi[easy]
        self.count(self.name, int(n_easy[valid].sum()))  # a new end point retires the buffer
        col = np.where(valid, 0, n_easy)
        self.buf_time[t, col], self.buf_value[t, col] = time[easy], value[easy]
        self.buf_quality[t, col] = frame.quality[easy]
        self.buf_n[t] = np.where(valid, 1, n_easy + 1)
        if closes.any():
            rows = np.flatnonzero(closes)
            self._feed(tags[rows], np.ones(rows.size, np.int64), frame.take(rows), emitted)

    def _feed(self, tags: np.ndarray, k: np.ndarray, new: Frame, emitted: _Emitted) -> None:
        """Settle ``k[i]`` new samples of each of ``tags`` behind its buffer.

        ``new`` holds the samples grouped by tag in the order of ``tags``, each group in
        time order. Rows are grouped by padded width (powers of two) to bound the padding.
        """
        n = self.buf_n[tags] + k
        width = 1 << np.ceil(np.log2(n)).astype(np.int64)
        first = np.cumsum(k) - k
        for w in np.unique(width).tolist():
            rows = np.flatnonzero(width == w)
            t, kk = tags[rows], k[rows]
            span = min(w, BUFFER + 1)
            times = np.zeros((rows.size, w), np.int64)
            values = np.zeros((rows.size, w))
            quality = np.zeros((rows.size, w), np.uint16)
            times[:, :span] = self.buf_time[t, :span]
            values[:, :span] = self.buf_value[t, :span]
            quality[:, :span] = self.buf_quality[t, :span]
            row = np.repeat(np.arange(rows.size), kk)
            rank = np.arange(int(kk.sum())) - np.repeat(np.cumsum(kk) - kk, kk)
            source = np.repeat(first[rows], kk) + rank
            col = np.repeat(self.buf_n[t], kk) + rank
            times[row, col] = new.time[source]
            values[row, col] = new.value[source]
            quality[row, col] = new.quality[source]
            self._settle(t, times, values, quality, n[rows], emitted)

    def _settle(
        self,
        tags: np.ndarray,
        times: np.ndarray,
        values: np.ndarray,
        quality: np.ndarray,
        n: np.ndarray,
        emitted: _Emitted,
    ) -> None:
        """Feed ``n`` buffered samples per tag from its anchor; archive while the doors close.

        Column 0 is always a valid end point: either the previous one, or the first sample
        after a fresh anchor. ``self.lo``/``self.hi`` of a fresh anchor are unbounded.
        """
        while tags.size:
            width = times.shape[1]
            cols = np.arange(width)
            inside = cols[None, :] < n[:, None]
            dt = np.where(inside, times - self.anchor_time[tags][:, None], 1).astype(np.float64)
            base = self.anchor_value[tags][:, None]
            dev = self.deviation[tags][:, None]
            slope = (values - base) / dt
            lo_i = np.where(inside, (values - dev - base) / dt, -np.inf)
            hi_i = np.where(inside, (values + dev - base) / dt, np.inf)
            lo = np.maximum.accumulate(np.column_stack([self.lo[tags], lo_i]), axis=1)
            hi = np.minimum.accumulate(np.column_stack([self.hi[tags], hi_i]), axis=1)
            valid = (slope >= lo[:, :-1]) & (slope <= hi[:, :-1])
            valid[:, 0] = True
            valid &= inside
            closes = (lo[:, 1:] > hi[:, 1:]) | (dt > self.max_interval[tags][:, None])
            latest_valid = np.maximum.accumulate(np.where(valid, cols[None, :], 0), axis=1)
            closes |= cols[None, :] - latest_valid >= BUFFER  # the buffer would overflow
            closes &= inside
            closes[:, 0] = False
            stop = np.where(closes.any(axis=1), closes.argmax(axis=1), width)
            before = valid & (cols[None, :] < stop[:, None])
            end = width - 1 - before[:, ::-1].argmax(axis=1)  # the last valid end point
            self.count(self.name, int(end.sum()))
            rows = np.arange(tags.size)
            done = stop == width
            if done.any():
                d, t = rows[done], tags[done]
                self.lo[t], self.hi[t] = lo[d, n[d]], hi[d, n[d]]
                keep = np.minimum(end[d][:, None] + cols[None, :], width - 1)
                span = min(width, BUFFER + 1)
                self.buf_time[t, :span] = times[d[:, None], keep][:, :span]
                self.buf_value[t, :span] = values[d[:, None], keep][:, :span]
                self.buf_quality[t, :span] = quality[d[:, None], keep][:, :span]
                self.buf_n[t] = n[d] - end[d]
            b = rows[~done]
            if not b.size:
                return
            t, e = tags[b], end[b]
            emitted.add(t, times[b, e], values[b, e], quality[b, e])
            self._anchor(t, times[b, e], values[b, e])
            tags, n = t, n[b] - e - 1
            rest = np.minimum(e[:, None] + 1 + np.arange(int(n.max()))[None, :], width - 1)
            pick = b[:, None], rest
            times, values, quality = times[pick], values[pick], quality[pick]

    def _flush(self, tags: np.ndarray, emitted: _Emitted) -> None:
        """Archive until each tag's newest sample is archived, holding the bound."""
        tags = tags[self.buf_n[tags] > 0]
        while tags.size:
            n = self.buf_n[tags]
            emitted.add(
                tags,
                self.buf_time[tags, 0],
                self.buf_value[tags, 0],
                self.buf_quality[tags, 0],
            )
            self._anchor(tags, self.buf_time[tags, 0], self.buf_value[tags, 0])
            self.buf_n[tags] = 0
            more = n > 1
            t = tags[more]
            if t.size:
                w = int(n[more].max())
                self._settle(
                    t,
                    self.buf_time[t, 1:w].copy(),
                    self.buf_value[t, 1:w].copy(),
                    self.buf_quality[t, 1:w].copy(),
                    n[more] - 1,
                    emitted,
                )
            tags = t[self.buf_n[t] > 0]

    def flush(self) -> Frame:
        """Archive every tag's pending samples, e.g. on shutdown; the trends go on after."""
        emitted = _Emitted()
        self._flush(np.flatnonzero(self.buf_n > 0), emitted)
        return emitted.frame(0)
