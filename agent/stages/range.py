"""Threshold filter: values outside a tag's physically possible ``[min, max]``.

Out-of-range samples are flagged bad with the OUT_OF_RANGE reason (kept, so the dataset
shows where the instrument misbehaved), or dropped when the tag says ``range_action =
"drop"``; counted either way under the same reason (flagged ones by the runner's count
of bad samples, dropped ones here).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.stages.base import DropCounter, TagStage, no_count, usable

OUT_OF_RANGE = q.make(q.BAD, q.Reason.OUT_OF_RANGE)


class RangeStage(TagStage):
    name = "out_of_range"

    def __init__(
        self,
        low: Sequence[float],
        high: Sequence[float],
        drop: Sequence[bool],
        active: Sequence[bool],
        count: DropCounter = no_count,
    ) -> None:
        super().__init__(active, count)
        self.low = np.asarray(low, np.float64)
        self.high = np.asarray(high, np.float64)
        self.drop_it = np.asarray(drop, bool)

    def apply(self, frame: Frame) -> Frame:
        value, tag = frame.value, frame.tag
        outside = usable(frame) & ((value < self.low[tag]) | (value > self.high[tag]))
        if not outside.any():
            return frame
        dropped = outside & self.drop_it[tag]
        flagged = outside & ~dropped
        frame.quality = np.where(flagged, OUT_OF_RANGE, frame.quality).astype(np.uint16)
        return self.drop(frame, dropped, self.name)
