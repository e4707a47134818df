"""Range, spike and fill against seeded ground truth: what was injected is what is found."""

from __future__ import annotations

import numpy as np
import pytest

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.stages.base import rounds
from agent.stages.fill import INTERPOLATED, FillStage
from agent.stages.range import OUT_OF_RANGE, RangeStage
from agent.stages.spike import SPIKE, SpikeStage
from tests.stages.helpers import T0, by_tag, frame, joined

MS = 1_000_000
RATE = 100 * MS


class Drops:
    """A DropCounter that remembers."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, reason: str, n: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n


def seeded(n: int, seed: int, tags: int = 1) -> tuple[Frame, np.ndarray]:
    """``tags`` noisy sines on a 100 ms grid, one frame per poll, tag-major within a poll."""
    rng = np.random.default_rng(seed)
    k = np.arange(n)
    truth = 50 + 20 * np.sin(2 * np.pi * k / 300)[:, None] + np.arange(tags)[None, :]
    noisy = truth + rng.normal(0, 0.2, truth.shape)
    times = T0 + np.repeat(k * RATE, tags)
    return frame(np.tile(np.arange(tags), n), times, noisy.ravel()), noisy


def polls(f: Frame, tags: int) -> list[Frame]:
    return [f.take(np.arange(i, i + tags)) for i in range(0, len(f), tags)]


def test_rounds_hold_one_sample_per_tag_in_time_order() -> None:
    tags = np.array([2, 0, 2, 1, 2, 0], np.int32)
    times = np.array([30, 5, 10, 7, 20, 1], np.int64)
    parts = rounds(tags, times, 3)
    assert [sorted(tags[p].tolist()) for p in parts] == [[0, 1, 2], [0, 2], [2]]
    assert [times[p][tags[p] == 2].tolist() for p in parts] == [[10], [20], [30]]
    assert [times[p][tags[p] == 0].tolist() for p in parts[:2]] == [[1], [5]]


@pytest.mark.parametrize("action", ["flag", "drop"])
def test_range_flags_or_drops_exactly_the_injected_values(action: str) -> None:
    f, _ = seeded(2000, seed=1, tags=2)
    rng = np.random.default_rng(2)
    bad = rng.choice(len(f), 40, replace=False)
    f.value[bad] = np.where(rng.random(40) < 0.5, -500.0, 500.0)
    drops = Drops()
    stage = RangeStage([0, 0], [100, 100], [action == "drop"] * 2, [True, True], drops)
    out = stage.process(f.take(np.arange(len(f))))
    if action == "flag":
        assert len(out) == len(f)
        assert np.flatnonzero(out.quality == OUT_OF_RANGE).tolist() == sorted(bad.tolist())
        assert drops.counts == {}
    else:
        assert len(out) == len(f) - 40
        assert not np.isin(f.time[bad] + f.tag[bad], out.time + out.tag).all()
        assert (np.abs(out.value) < 100).all()
        assert drops.counts == {"out_of_range": 40}


def test_hampel_finds_injected_spikes_without_false_alarms() -> None:
    tags = 3
    f, _ = seeded(3000, seed=3, tags=tags)  # up to 0.42 per poll: a trend Hampel must follow
    rng = np.random.default_rng(4)
    hits = rng.choice(np.arange(100, len(f)), 30, replace=False)
    f.value[hits] += rng.choice([-1, 1], 30) * rng.uniform(3, 6, 30)  # 15-30 sigma
    off, on = [False] * tags, [True] * tags
    stage = SpikeStage([np.inf] * tags, [31] * tags, [8.0] * tags, [0.0] * tags, off, on)
    out = joined([stage.process(p) for p in polls(f, tags)])
    spikes = out.quality == SPIKE
    flagged = set(zip(out.tag[spikes].tolist(), out.time[spikes].tolist(), strict=True))
    assert flagged == set(zip(f.tag[hits].tolist(), f.time[hits].tolist(), strict=True))


def test_rate_limit_drops_spikes_and_accepts_a_real_step_later() -> None:
    k = np.arange(200)
    value = np.where(k < 100, 10.0, 30.0) + 0.01 * k  # a step of 20 at k = 100
    value[[40, 41, 150]] += 50.0
    f = frame(np.zeros(200, int), T0 + k * RATE, value)
    drops = Drops()
    stage = SpikeStage([50.0], [0], [3.0], [0.0], [True], [True], drops)  # 50 units/s = 5/poll
    out = joined([stage.process(p) for p in polls(f, 1)])
    missing = sorted(set(k.tolist()) - set(((out.time - T0) // RATE).tolist()))
    # the step of 20.04 needs more than 0.4 s of allowance: 4 samples after it are dropped
    assert missing == [40, 41, 100, 101, 102, 103, 150]
    assert drops.counts == {"spike": 7}


def test_fill_interpolates_short_gaps_on_the_grid_and_leaves_long_ones() -> None:
    f, noisy = seeded(400, seed=5, tags=2)
    jitter = np.random.default_rng(6).integers(-3 * MS, 3 * MS, len(f))
    f.time += jitter
    gone = np.zeros(len(f), bool)
    short = [(0, 50, 53), (1, 120, 121), (0, 200, 204)]  # (tag, first, last) missing polls
    long_gap = (1, 300, 320)
    for tag, a, b in [*short, long_gap]:
        gone[np.arange(a, b + 1) * 2 + tag] = True
    stage = FillStage([RATE, RATE], [600 * MS, 600 * MS], [True, True])
    out = joined([stage.process(p) for p in polls(f.take(~gone), 2) if len(p)])
    # polls() cut by rows: after removal a poll may hold one tag; stages do not care
    filled = out.quality == INTERPOLATED
    for tag, a, b in short:
        t, v, quality = by_tag(out, tag)
        inside = (t > T0 + (a - 1) * RATE + 10 * MS) & (t < T0 + (b + 1) * RATE - 10 * MS)
        assert (quality[inside] == INTERPOLATED).all()
        assert inside.sum() == b - a + 1
        assert np.abs(t[inside] - (T0 + np.arange(a, b + 1) * RATE)).max() <= 6 * MS
        # between the two measured ends, on the straight line
        lo, hi = noisy[a - 1, tag], noisy[b + 1, tag]
        line = lo + (hi - lo) * np.arange(1, b - a + 2) / (b - a + 2)
        assert v[inside] == pytest.approx(line, abs=1e-9)
    assert filled.sum() == sum(b - a + 1 for _, a, b in short), "the 2 s gap stays a gap"
    assert (out.quality[~filled] == q.GOOD).all()
