"""Building frames and replaying series through a stage, for the stage tests."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame, concat

S = 1_000_000_000
T0 = 1_700_000_000 * S


def frame(
    tags: Sequence[int] | np.ndarray,
    times: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    quality: Sequence[int] | np.ndarray | None = None,
) -> Frame:
    n = len(tags)
    return Frame(
        np.asarray(tags, np.int32),
        np.asarray(times, np.int64),
        np.asarray(values, np.float64),
        np.asarray(quality if quality is not None else np.full(n, q.GOOD), np.uint16),
        int(max(times)) if n else 0,
    )


def split(f: Frame, cuts: Sequence[int]) -> list[Frame]:
    """The frame cut into consecutive pieces at the given row positions."""
    edges = [0, *sorted({c for c in cuts if 0 < c < len(f)}), len(f)]
    return [f.take(np.arange(a, b)) for a, b in itertools.pairwise(edges)]


def by_tag(f: Frame, tag: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times, values and qualities of one tag, in time order."""
    mine = f.tag == tag
    order = np.argsort(f.time[mine], kind="stable")
    return f.time[mine][order], f.value[mine][order], f.quality[mine][order]


def joined(frames: Sequence[Frame]) -> Frame:
    return concat([f for f in frames if len(f)]) if any(len(f) for f in frames) else Frame.empty()
