"""What every stage shares: the per-tag selection, drop counting and round splitting.

Stages keep per-tag state in numpy arrays indexed by tag, so a frame holding one sample
of each of thousands of tags (the 100 ms polling case) is one vector step. A frame with
several samples per tag (a block read) is split into rounds: round k holds the k-th
sample, in time order, of every tag that has one, so each round has unique tags and the
stage's recurrence advances all of them at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame, concat

DropCounter = Callable[[str, int], None]
"""``count(reason, n)``: the pipeline's hook into the drop counter (Prometheus)."""


def no_count(reason: str, n: int) -> None:
    """A DropCounter for stages used without metrics (tests, benchmarks)."""


class Stage(Protocol):
    name: str

    def process(self, frame: Frame) -> Frame: ...


def usable(frame: Frame) -> np.ndarray:
    """Samples a numeric filter may use: not bad and with a finite value."""
    return np.asarray(((frame.quality & q.SEVERITY_MASK) != q.BAD) & np.isfinite(frame.value))


def rounds(tags: np.ndarray, times: np.ndarray, tag_count: int) -> list[np.ndarray]:
    """Row indices split so that each part holds at most one row per tag, in time order."""
    n = tags.shape[0]
    if n == 0:
        return []
    counts = np.bincount(tags, minlength=tag_count)
    if counts.max() <= 1:
        return [np.arange(n)]
    order = np.lexsort((times, tags))
    sorted_tags = tags[order]
    first = np.flatnonzero(np.r_[True, sorted_tags[1:] != sorted_tags[:-1]])
    starts = np.repeat(first, np.diff(np.r_[first, n]))
    rank = np.arange(n) - starts
    by_rank = np.argsort(rank, kind="stable")
    edges = np.searchsorted(rank[by_rank], np.arange(1, int(rank.max()) + 1))
    return [order[part] for part in np.split(by_rank, edges)]


class TagStage:
    """Base of a stage configured for a subset of tags: rows of other tags pass untouched."""

    name = "stage"

    def __init__(self, active: Sequence[bool], count: DropCounter = no_count) -> None:
        self.active = np.asarray(active, bool)
        self.all_active = bool(self.active.all())
        self.count = count

    def process(self, frame: Frame) -> Frame:
        if not len(frame):
            return frame
        if self.all_active:
            return self.apply(frame)
        mine = self.active[frame.tag]
        if not mine.any():
            return frame
        return concat([frame.take(~mine), self.apply(frame.take(mine))])

    def apply(self, frame: Frame) -> Frame:
        """Process rows of active tags only."""
        raise NotImplementedError

    def drop(self, frame: Frame, mask: np.ndarray, reason: str) -> Frame:
        """The frame without the masked rows, counted under ``reason``."""
        n = int(np.count_nonzero(mask))
        if not n:
            return frame
        self.count(reason, n)
        return frame.take(~mask)


class RoundStage(TagStage):
    """A stateful stage whose recurrence runs one round (unique tags) at a time."""

    def apply(self, frame: Frame) -> Frame:
        parts = rounds(frame.tag, frame.time, self.active.shape[0])
        if len(parts) == 1:
            return self.step(frame)
        return concat([self.step(frame.take(part)) for part in parts])

    def step(self, frame: Frame) -> Frame:
        """Advance the state by one sample of each tag in ``frame`` (tags are unique)."""
        raise NotImplementedError
