"""Gap filling: linear interpolation across short gaps, on the tag's sampling grid.

When a usable sample arrives ``k`` sampling periods after the previous usable one (rounded,
so poll jitter does not invent points) and the gap is at most ``max_gap``, the ``k - 1``
missing samples are inserted, evenly spaced in the gap, with values on the straight line
between its ends and quality uncertain/INTERPOLATED, so a model can tell them from
measurements. Longer gaps stay gaps: inventing minutes of data hides an outage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame, concat
from agent.stages.base import RoundStage, usable

INTERPOLATED = q.make(q.UNCERTAIN, q.Reason.INTERPOLATED)


class FillStage(RoundStage):
    name = "fill"

    def __init__(
        self,
        rate: Sequence[int],
        max_gap: Sequence[int],
        active: Sequence[bool],
    ) -> None:
        super().__init__(active)
        n = self.active.shape[0]
        self.rate = np.asarray(rate, np.int64)
        self.max_gap = np.asarray(max_gap, np.int64)
        self.last_time = np.zeros(n, np.int64)
        self.last_value = np.zeros(n)
        self.has_last = np.zeros(n, bool)

    def step(self, frame: Frame) -> Frame:
        tag, time = frame.tag, frame.time
        ok = usable(frame) & (time > self.last_time[tag])
        gap = time - self.last_time[tag]
        missing = np.rint(gap / self.rate[tag]).astype(np.int64) - 1
        fill = ok & self.has_last[tag] & (missing >= 1) & (gap <= self.max_gap[tag])
        before = self.last_value[tag]
        t = tag[ok]
        self.last_time[t], self.last_value[t], self.has_last[t] = time[ok], frame.value[ok], True
        if not fill.any():
            return frame
        rows = np.flatnonzero(fill)
        counts = missing[rows]
        row = np.repeat(rows, counts)
        k = np.arange(row.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts) + 1
        span = counts[np.repeat(np.arange(rows.shape[0]), counts)] + 1
        start_time = time[row] - gap[row]
        start_value = before[row]
        fraction = k / span
        filled = Frame(
            tag[row],
            start_time + gap[row] * k // span,
            start_value + (frame.value[row] - start_value) * fraction,
            np.full(row.shape[0], INTERPOLATED, np.uint16),
            frame.received,
        )
        return concat([filled, frame])
