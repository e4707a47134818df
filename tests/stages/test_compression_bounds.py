"""Property tests: swinging door and deadband hold their error bounds across frame cuts."""

from __future__ import annotations

from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.acquisition.pipeline import SourcePipeline
from agent.config.model import TagConfig
from agent.stages import swinging_door
from agent.stages.deadband import DeadbandStage
from agent.stages.swinging_door import SwingingDoorStage
from tests.stages.helpers import T0, S, by_tag, frame, joined, split

FOREVER = 10**15  # no max_interval
values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def series(draw: st.DrawFn, max_tags: int = 3) -> tuple[Frame, list[int], list[float]]:
    """Interleaved series of a few tags, irregular strictly increasing times, frame cuts."""
    tags = draw(st.integers(1, max_tags))
    n = draw(st.integers(1, 120))
    tag = draw(st.lists(st.integers(0, tags - 1), min_size=n, max_size=n))
    gaps = draw(st.lists(st.integers(1, 10**10), min_size=n, max_size=n))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    value = draw(st.lists(values, min_size=n, max_size=n))
    times = T0 + np.cumsum(gaps)
    f = frame(tag, times, np.asarray(value) * scale / 1e6 * draw(st.floats(1, 1e6)))
    cuts = draw(st.lists(st.integers(0, n), max_size=8))
    deviations = draw(
        st.lists(st.floats(1e-6, 1e3).map(lambda d: d * scale), min_size=tags, max_size=tags)
    )
    return f, cuts, deviations


def interpolation_error(f: Frame, kept: Frame, tag: int) -> float:
    t, v, _ = by_tag(f, tag)
    kt, kv, _ = by_tag(kept, tag)
    assert np.isin(kt, t).all(), "kept points are original samples"
    assert np.array_equal(kv, v[np.searchsorted(t, kt)]), "with their original values"
    assert kt[0] == t[0], "the kept series starts with the input"
    assert kt[-1] == t[-1], "and ends with it"
    rel = (t - kt[0]).astype(np.float64)
    return float(np.abs(np.interp(rel, (kt - kt[0]).astype(np.float64), kv) - v).max())


def tolerance(v: np.ndarray, deviation: float) -> float:
    return 1e-9 * (float(np.abs(v).max()) + deviation)


@settings(max_examples=300, deadline=None)
@given(series())
def test_swinging_door_interpolation_stays_within_deviation(
    case: tuple[Frame, list[int], list[float]],
) -> None:
    f, cuts, deviations = case
    tags = len(deviations)
    stage = SwingingDoorStage(deviations, [FOREVER] * tags, [0] * tags, [True] * tags)
    kept = joined([*[stage.process(part) for part in split(f, cuts)], stage.flush()])
    for tag in np.unique(f.tag).tolist():
        error = interpolation_error(f, kept, tag)
        assert error <= deviations[tag] + tolerance(f.value, deviations[tag])


@settings(max_examples=100, deadline=None)
@given(series(), st.integers(1, 4))
def test_swinging_door_holds_the_bound_when_its_buffer_overflows(
    case: tuple[Frame, list[int], list[float]], buffer: int
) -> None:
    f, cuts, deviations = case
    tags = len(deviations)
    with mock.patch.object(swinging_door, "BUFFER", buffer):
        stage = SwingingDoorStage(deviations, [FOREVER] * tags, [0] * tags, [True] * tags)
        kept = joined([*[stage.process(part) for part in split(f, cuts)], stage.flush()])
    for tag in np.unique(f.tag).tolist():
        error = interpolation_error(f, kept, tag)
        assert error <= deviations[tag] + tolerance(f.value, deviations[tag])


@settings(max_examples=150, deadline=None)
@given(series(max_tags=1), st.integers(1, 10**11))
def test_swinging_door_max_interval_bounds_the_gap_between_kept_points(
    case: tuple[Frame, list[int], list[float]], max_interval: int
) -> None:
    f, cuts, deviations = case
    stage = SwingingDoorStage(deviations, [max_interval], [0], [True])
    kept = joined([*[stage.process(part) for part in split(f, cuts)], stage.flush()])
    assert interpolation_error(f, kept, 0) <= deviations[0] + tolerance(f.value, deviations[0])
    t, _, _ = by_tag(f, 0)
    kt, _, _ = by_tag(kept, 0)
    gaps = np.diff(kt)
    # a longer gap only where no sample arrived in between
    following = np.diff(t)[np.searchsorted(t, kt[:-1])]
    assert ((gaps <= max_interval) | (gaps == following)).all()


@settings(max_examples=300, deadline=None)
@given(series())
def test_deadband_holds_its_bounds(case: tuple[Frame, list[int], list[float]]) -> None:
    """Sample-and-hold is within the deviation; the linear trend within twice it."""
    f, cuts, deviations = case
    tags = len(deviations)
    stage = DeadbandStage(deviations, [FOREVER] * tags, [True] * tags)
    kept = joined([*[stage.process(part) for part in split(f, cuts)], stage.flush()])
    for tag in np.unique(f.tag).tolist():
        t, v, _ = by_tag(f, tag)
        kt, kv, _ = by_tag(kept, tag)
        tol = tolerance(v, deviations[tag])
        assert interpolation_error(f, kept, tag) <= 2 * deviations[tag] + tol
        held = kv[np.searchsorted(kt, t, side="right") - 1]
        assert np.abs(held - v).max() <= deviations[tag] + tol


def test_a_bad_sample_is_kept_and_ends_the_trend() -> None:
    k = np.arange(30)
    value = k * 1.0  # a straight line: only its ends are needed
    quality = np.zeros(30, int)
    quality[10] = q.make(q.BAD, q.Reason.COMM_ERROR)
    value[10] = np.nan
    stage = SwingingDoorStage([0.1], [FOREVER], [0], [True])
    kept = joined([stage.process(frame([0] * 30, T0 + k * S, value, quality)), stage.flush()])
    assert sorted(((kept.time - T0) // S).tolist()) == [0, 9, 10, 11, 29]
    assert kept.quality[kept.time == T0 + 10 * S].tolist() == [quality[10]]


def test_swinging_door_min_interval_drops_bursts_before_the_door() -> None:
    dropped: list[int] = []
    stage = SwingingDoorStage([0.1], [FOREVER], [S], [True], lambda r, n: dropped.append(n))
    times = T0 + np.array([0, 300, 600, 1000, 1500, 2000, 2100]) * 1_000_000
    kept = joined([stage.process(frame([0] * 7, times, [0, 9, 9, 0, 0, 5, 0])), stage.flush()])
    assert ((kept.time - T0) // 1_000_000).tolist() == [0, 1000, 2000]
    assert sum(dropped) >= 4  # three inside 1 s of an accepted sample, one by the door


def test_deadband_heartbeat_and_previous_value() -> None:
    times = T0 + np.arange(8) * S
    values = [0.0, 0.1, 0.2, 0.3, 5.0, 5.0, 5.0, 5.0]
    stage = DeadbandStage([1.0], [3 * S], [True])
    kept = stage.process(frame([0] * 8, times, values))
    # 0 first; 5.0 is an exception, sent with the held 0.3 before it; 7 s is a heartbeat
    assert sorted(((kept.time - T0) // S).tolist()) == [0, 3, 4, 7]


@settings(max_examples=150, deadline=None)
@given(series(), st.floats(0.0, 2.0))
def test_deadband_then_swinging_door_hold_the_summed_bound(
    case: tuple[Frame, list[int], list[float]], share: float
) -> None:
    """Between two deadband outputs both interpolations are straight and differ by at most
    the door's deviation at the ends, so the pipeline is within 2 * deadband + deviation."""
    f, cuts, deviations = case
    tags = [
        TagConfig.model_validate(
            {"name": f"t{i}", "deadband": d * share, "swinging_door": {"deviation": d}}
        )
        for i, d in enumerate(deviations)
    ]
    pipeline = SourcePipeline(tags)
    kept = joined([*[pipeline.process(part) for part in split(f, cuts)], pipeline.flush()])
    for tag in np.unique(f.tag).tolist():
        bound = 2 * deviations[tag] * share + deviations[tag]
        assert interpolation_error(f, kept, tag) <= bound + tolerance(f.value, bound)
