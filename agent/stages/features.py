"""Windowed statistics of a tag, emitted as derived tags (``<tag>.rms`` ...).

Windows are aligned to multiples of ``window`` on the clock, like batches, and a window's
figures are emitted when the first sample of a later window arrives (or on flush), stamped
with the window start. They are computed from the full-rate cleaned signal, before deadband
and swinging door, because statistics of a thinned series are biased. Per tag and window
only sums are kept (count, power sums about a per-tag shift for numerical stability,
extremes), so a window of any length costs constant state and every frame is a few grouped
reductions across all tags. Variance is the population variance; kurtosis is Pearson's
(3 for a normal distribution); crest factor is peak / RMS.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.acquisition import quality as q
from agent.acquisition.frame import TAG_DTYPE, Frame, concat
from agent.config.model import FEATURES, FeaturesConfig
from agent.stages.base import usable

_SUMS = 5  # n, and the sums of (x - shift) ** 1..4


class FeatureStage:
    """Keeps each tag's open window; ``process`` returns the derived samples of closed ones."""

    name = "features"

    def __init__(self, configs: Sequence[FeaturesConfig | None], first_derived: int) -> None:
        n = len(configs)
        self.window = np.array([c.window if c else 1 for c in configs], np.int64)
        self.active = np.array([c is not None for c in configs])
        # derived[tag, feature] is the derived tag's index in the source's table, or -1
        self.derived = np.full((n, len(FEATURES)), -1, np.int64)
        next_index = first_derived
        for tag, config in enumerate(configs):
            for stat in config.stats if config else []:
                self.derived[tag, FEATURES.index(stat)] = next_index
                next_index += 1
        self.open = np.full(n, -1, np.int64)  # window number of the open window, -1 = none
        self.shift = np.zeros(n)
        self.has_shift = np.zeros(n, bool)
        self.sums = np.zeros((n, _SUMS))
        self.low = np.full(n, np.inf)
        self.high = np.full(n, -np.inf)

    def process(self, frame: Frame) -> Frame:
        take = self.active[frame.tag] & usable(frame)
        if not take.any():
            return Frame.empty()
        tag, value = frame.tag[take], frame.value[take]
        window = frame.time[take] // self.window[tag]
        late = window < self.open[tag]  # a window already emitted cannot change any more
        tag, value, window = tag[~late], value[~late], window[~late]
        new = ~self.has_shift[tag]
        self.shift[tag[new]], self.has_shift[tag[new]] = value[new], True
        order = np.lexsort((window, tag))
        tag, value, window = tag[order], value[order], window[order]
        starts = np.flatnonzero(np.r_[True, (tag[1:] != tag[:-1]) | (window[1:] != window[:-1])])
        g_tag, g_window = tag[starts], window[starts]
        x = value - self.shift[tag]
        powers = np.column_stack([np.ones_like(x), x, x * x, x**3, x**4])
        sums = np.add.reduceat(powers, starts, axis=0)
        low = np.minimum.reduceat(value, starts)
        high = np.maximum.reduceat(value, starts)
        # a group continuing a tag's open window absorbs it
        cont = g_window == self.open[g_tag]
        sums[cont] += self.sums[g_tag[cont]]
        low[cont] = np.minimum(low[cont], self.low[g_tag[cont]])
        high[cont] = np.maximum(high[cont], self.high[g_tag[cont]])
        first = np.r_[True, g_tag[1:] != g_tag[:-1]]
        last = np.r_[g_tag[1:] != g_tag[:-1], True]
        # an open window that no group continues is closed by the tag's first new window
        ends = first & ~cont & (self.open[g_tag] >= 0)
        e_tag = g_tag[ends]
        closed = [
            self._emit(
                e_tag, self.open[e_tag], self.sums[e_tag], self.low[e_tag], self.high[e_tag]
            ),
            self._emit(g_tag[~last], g_window[~last], sums[~last], low[~last], high[~last]),
        ]
        t = g_tag[last]
        self.open[t], self.sums[t], self.low[t], self.high[t] = (
            g_window[last],
            sums[last],
            low[last],
            high[last],
        )
        return (
            concat([part for part in closed if len(part)])
            if any(map(len, closed))
            else Frame.empty()
        )

    def flush(self) -> Frame:
        """Emit every open window, e.g. on shutdown."""
        t = np.flatnonzero(self.open >= 0)
        out = self._emit(t, self.open[t], self.sums[t], self.low[t], self.high[t])
        self.open[t] = -1
        return out

    def _emit(
        self,
        tag: np.ndarray,
        window: np.ndarray,
        sums: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
    ) -> Frame:
        if not tag.size:
            return Frame.empty()
        stats = statistics(self.shift[tag], sums, low, high)
        time = window * self.window[tag]
        parts = []
        for feature, values in enumerate(stats):
            index = self.derived[tag, feature]
            mine = index >= 0
            if mine.any():
                parts.append(
                    Frame(
                        index[mine].astype(TAG_DTYPE),
                        time[mine],
                        values[mine],
                        np.full(int(mine.sum()), q.GOOD, np.uint16),
                    )
                )
        return concat(parts) if parts else Frame.empty()


def statistics(
    shift: np.ndarray, sums: np.ndarray, low: np.ndarray, high: np.ndarray
) -> list[np.ndarray]:
    """The FEATURES, in order, from per-window power sums about ``shift``."""
    n = sums[:, 0]
    m1, m2, m3, m4 = (sums[:, k] / n for k in range(1, 5))
    variance = np.maximum(m2 - m1**2, 0.0)
    central4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    mean = shift + m1
    rms = np.sqrt(np.maximum(m2 + 2 * shift * m1 + shift**2, 0.0))
    peak = np.maximum(np.abs(low), np.abs(high))
    with np.errstate(divide="ignore", invalid="ignore"):
        crest = np.where(rms > 0, peak / rms, np.nan)
        kurtosis = np.where(variance > 0, central4 / variance**2, np.nan)
    return [mean, variance, rms, peak, high - low, crest, kurtosis]
