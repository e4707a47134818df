"""Per-source processing between a driver and the batcher.

Stages run in a fixed order (scale/offset/unit, range, spike, fill, denoise, deadband,
swinging door, features); each is vectorised over a whole frame. This module holds the
stages that exist so far: the linear scale and offset, applied as one gather-multiply-add
over the frame rather than per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.config import TagConfig
from agent.frame import Frame


class ScaleStage:
    """value = raw * scale + offset, with per-tag constants looked up by tag index."""

    def __init__(self, tags: Sequence[TagConfig]) -> None:
        self.scale = np.array([tag.scale for tag in tags], np.float64)
        self.offset = np.array([tag.offset for tag in tags], np.float64)
        self.is_identity = bool((self.scale == 1.0).all() and (self.offset == 0.0).all())

    def process(self, frame: Frame) -> Frame:
        if self.is_identity or not len(frame):
            return frame
        frame.value = frame.value * self.scale[frame.tag] + self.offset[frame.tag]
        return frame


class SourcePipeline:
    """The stages configured for one source, applied to each frame it emits."""

    def __init__(self, tags: Sequence[TagConfig]) -> None:
        self.stages = [ScaleStage(tags)]

    def process(self, frame: Frame) -> Frame:
        for stage in self.stages:
            frame = stage.process(frame)
        return frame
