"""The clock model against synthetic device clocks with known offset, drift and delays."""

from __future__ import annotations

import numpy as np
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.acquisition import quality as q
from agent.acquisition.clock import ClockModel, SourceClock
from agent.acquisition.frame import Frame, concat
from agent.ops.health import ProblemLog
from agent.ops.metrics import Metrics
from protocols._template.driver import TemplateSourceConfig

S = 1_000_000_000
MS = 1_000_000
T0 = 1_795_000_000 * S


def device_clock(true_ns: np.ndarray, offset_ns: int, drift_ppm: float) -> np.ndarray:
    return true_ns + offset_ns + np.round(drift_ppm * 1e-6 * (true_ns - T0)).astype(np.int64)


def feed(model: ClockModel, seconds: int, offset_ns: int, drift_ppm: float, seed: int) -> None:
    """Ten frames a second; a frame's freshest sample arrives 0.2 ms + an exponential delay
    (3 ms mean) after sampling, and one frame in ten is held up for up to 2 s."""
    rng = np.random.default_rng(seed)
    for k in range(seconds * 10):
        true = T0 + k * 100 * MS
        held = rng.random() < 0.1
        delay = int((rng.uniform(0, 2000) if held else 0.2 + rng.exponential(3.0)) * MS)
        device = int(device_clock(np.array([true]), offset_ns, drift_ppm)[0])
        model.observe(true + delay, device - (true + delay))


@settings(deadline=None, max_examples=20)
@given(
    offset_ms=st.integers(-5000, 5000),
    drift_ppm=st.floats(-200, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_offset_and_drift_recovered_within_a_millisecond(
    offset_ms: int, drift_ppm: float, seed: int
) -> None:
    model = ClockModel(window_ns=60 * S, bucket_ns=2 * S)
    feed(model, 90, offset_ms * MS, drift_ppm, seed)
    estimate = model.estimate
    assert estimate is not None
    true = T0 + np.arange(80, 100) * S  # the last 10 s seen and 10 s beyond
    corrected = estimate.to_reference(device_clock(true, offset_ms * MS, drift_ppm))
    assert np.abs(corrected - true).max() <= 1 * MS
    assert estimate.drift * 1e6 == pytest.approx(drift_ppm, abs=10)


def feed_round_trips(
    model: ClockModel, seconds: int, offset_ns: int, drift_ppm: float, seed: int
) -> None:
    """Ten requests a second, each answered after 0.3 ms + an exponential delay (3 ms mean),
    one in ten held up for up to 2 s; the server stamps its answer anywhere in between."""
    rng = np.random.default_rng(seed)
    for k in range(seconds * 10):
        requested = T0 + k * 100 * MS
        held = rng.random() < 0.1
        trip = int((rng.uniform(0, 2000) if held else 0.3 + rng.exponential(3.0)) * MS)
        stamped = requested + int(rng.uniform(0, trip))
        server = int(device_clock(np.array([stamped]), offset_ns, drift_ppm)[0])
        midpoint = requested + trip // 2
        model.observe(midpoint, server - midpoint, trip)


@settings(deadline=None, max_examples=20)
@given(
    offset_ms=st.integers(-5000, 5000),
    drift_ppm=st.floats(-200, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trips_recover_offset_and_drift_within_a_millisecond(
    offset_ms: int, drift_ppm: float, seed: int
) -> None:
    model = ClockModel(window_ns=60 * S, bucket_ns=2 * S)
    feed_round_trips(model, 90, offset_ms * MS, drift_ppm, seed)
    estimate = model.estimate
    assert estimate is not None
    true = T0 + np.arange(80, 100) * S
    corrected = estimate.to_reference(device_clock(true, offset_ms * MS, drift_ppm))
    assert np.abs(corrected - true).max() <= 1 * MS
    assert estimate.drift * 1e6 == pytest.approx(drift_ppm, abs=10)


def test_a_bucket_keeps_its_shortest_round_trip() -> None:
    """A request held up 20 ms on its way in and answered at once looks 10 ms fast from
    its midpoint: the largest offset (the one-way rule) would take it, the shortest round
    trip does not."""
    model = ClockModel()
    model.observe(T0 + 10 * MS, 3 * S + 10 * MS, 20 * MS)
    model.observe(T0 + 50 * MS, 3 * S + 200_000, 1 * MS)
    model.observe(T0 + 90 * MS, 3 * S - 1 * MS, 4 * MS)
    assert model.estimate is not None
    assert model.estimate.offset_ns == 3 * S + 200_000


def test_once_round_trips_come_one_way_observations_are_ignored() -> None:
    model = ClockModel()
    model.observe(T0, 3 * S - 5 * MS)  # one-way: bounded below only
    model.observe(T0 + 10 * MS, 3 * S, 1 * MS)
    model.observe(T0 + 20 * MS, 3 * S + 2 * MS)  # one-way again: ignored
    assert model.round_trip
    assert model.estimate is not None
    assert model.estimate.offset_ns == 3 * S


def test_a_single_bucket_gives_its_minimum_delay_offset_and_no_drift() -> None:
    model = ClockModel()
    model.observe(T0 + 40 * MS, 3 * S - 40 * MS)
    model.observe(T0 + 90 * MS, 3 * S - 1 * MS)  # the least delayed one wins
    model.observe(T0 + 150 * MS, 3 * S - 20 * MS)
    assert model.estimate is not None
    assert model.estimate.offset_ns == 3 * S - 1 * MS
    assert model.estimate.drift == 0.0


def test_old_buckets_leave_the_window() -> None:
    model = ClockModel(window_ns=10 * S, bucket_ns=1 * S)
    for k in range(30):  # the clock jumps by 1 s at k = 15: only the new offset remains
        model.observe(T0 + k * S, (0 if k < 15 else 1 * S) - 1 * MS)
    assert model.estimate is not None
    assert model.estimate.offset_ns == pytest.approx(1 * S - 1 * MS, abs=1)
    assert model.estimate.uncertainty_ns < 1


def source(**keys: object) -> TemplateSourceConfig:
    return TemplateSourceConfig.model_validate(
        {"name": "dev", "tags": [{"name": "a", "rate": "100ms"}, {"name": "b", "rate": "1s"}]}
        | keys
    )


def stamped_frame(true_ns: int, offset_ns: int, delay_ns: int) -> Frame:
    """Two samples (tags a and b) stamped by a device clock ``offset_ns`` fast."""
    device = np.array([true_ns + offset_ns] * 2, np.int64)
    frame = Frame(
        np.array([0, 1], np.int32),
        device.copy(),
        np.array([1.0, 2.0]),
        np.zeros(2, np.uint16),
        true_ns + delay_ns,
    )
    frame.source_time = device
    frame.device_clock = True
    return frame


def test_source_clock_corrects_snaps_and_reports() -> None:
    metrics = Metrics()
    stage = SourceClock(
        source(correct_clock=True, snap=True), metrics, ProblemLog(structlog.get_logger())
    )
    for k in range(50):
        true = T0 + k * 100 * MS
        out = stage.process(stamped_frame(true, 5 * S, 3 * MS))
    # corrected to within the 3 ms delay, then snapped: tag a to its 100 ms grid, b to 1 s
    assert out.time.tolist() == [true, (true + S // 2) // S * S]
    assert (out.quality == q.GOOD).all()
    assert metrics.clock_offset.labels("dev")._value.get() == pytest.approx(5 - 0.003, abs=1e-6)
    described = stage.describe()
    assert described is not None
    assert described["offset_ms"] == pytest.approx(4997.0)
    assert described["corrected"] is True


def test_an_uncorrected_clock_beyond_the_threshold_is_flagged_and_logged_once() -> None:
    stage = SourceClock(
        source(clock_threshold="50ms"), Metrics(), ProblemLog(structlog.get_logger())
    )
    with structlog.testing.capture_logs() as logs:
        frames = [stage.process(stamped_frame(T0 + k * S, 2 * S, MS)) for k in range(5)]
    assert all((f.quality & q.Flag.CLOCK_UNCERTAIN).all() for f in frames)
    assert frames[-1].time.tolist() == [T0 + 4 * S + 2 * S] * 2, "not corrected when not asked"
    assert len([e for e in logs if "clock" in e["event"]]) == 1


def test_gateway_time_frames_are_left_alone() -> None:
    stage = SourceClock(
        source(correct_clock=True, snap=True), Metrics(), ProblemLog(structlog.get_logger())
    )
    stage.process(stamped_frame(T0, 5 * S, MS))
    polled = Frame.uniform(np.array([0, 1], np.int32), T0 + 123 * MS, 1.0, q.GOOD)
    assert stage.process(polled).time.tolist() == [T0 + 123 * MS] * 2


def served_frame(true_ns: int, server_ns: int, device_ns: int, delay_ns: int, sent: int) -> Frame:
    """A frame whose value a server stamped ``server_ns`` (its clock) and its device
    ``device_ns``, received ``delay_ns`` after the true sampling instant."""
    frame = stamped_frame(true_ns, device_ns - true_ns, delay_ns)
    frame.server_time = np.full(2, server_ns, np.int64)
    frame.sent = sent
    return frame


def feed_served(stage: SourceClock, server_offset: int, device_offset: int, sent: bool) -> Frame:
    """Fifty frames at 100 ms: the server stamps 0.1 ms after sampling, sends 40 ms later (a
    publishing queue) and the frame arrives 0.3 ms after that."""
    for k in range(50):
        true = T0 + k * 100 * MS
        server = true + 100_000 + server_offset
        sending = server + 40 * MS
        out = stage.process(
            served_frame(
                true,
                server,
                true + server_offset + device_offset,
                40 * MS + 400_000,
                sending if sent else 0,
            )
        )
    return out


@pytest.mark.parametrize(("server_offset", "device_offset"), [(5 * S, 0), (0, 5 * S), (-5 * S, 0)])
def test_server_and_device_clocks_are_both_mapped_to_the_gateway(
    server_offset: int, device_offset: int
) -> None:
    stage = SourceClock(source(correct_clock=True), Metrics(), ProblemLog(structlog.get_logger()))
    out = feed_served(stage, server_offset, device_offset, sent=True)
    true = T0 + 49 * 100 * MS
    # the device-vs-server model is exact here; the server's is off by the 0.3 ms transit
    assert np.abs(out.time - true).max() <= 400_000
    assert (out.quality == q.GOOD).all()
    described = stage.describe()
    assert described is not None
    assert described["offset_ms"] == pytest.approx((server_offset + device_offset) / MS, abs=0.5)


def test_a_synchronised_server_keeps_the_device_models_accuracy() -> None:
    """Without PublishTimes the server is seen through its 40 ms queue: within the
    synchronised band it is left alone rather than 'corrected' by the queueing delay."""
    stage = SourceClock(source(correct_clock=True), Metrics(), ProblemLog(structlog.get_logger()))
    for k in range(50):
        true = T0 + k * 100 * MS
        out = stage.process(served_frame(true, true + 100_000, true + 2 * S, 3 * MS, 0))
    assert np.abs(out.time - (T0 + 49 * 100 * MS)).max() <= 200_000


@pytest.mark.parametrize(
    ("server_offset", "device_offset", "flagged"),
    [(2 * S, 0, True), (0, 2 * S, True), (-2 * S, 2 * S, True), (0, 0, False)],
)
def test_whichever_clock_is_off_is_flagged_without_correction(
    server_offset: int, device_offset: int, flagged: bool
) -> None:
    stage = SourceClock(
        source(clock_threshold="50ms"), Metrics(), ProblemLog(structlog.get_logger())
    )
    with structlog.testing.capture_logs() as logs:
        out = feed_served(stage, server_offset, device_offset, sent=True)
    assert ((out.quality & q.Flag.CLOCK_UNCERTAIN) != 0).all() == flagged
    assert len([e for e in logs if "clock" in e["event"]]) == int(flagged)


def polled_frame(true_ns: int, server_offset: int, age_ns: int, trip_ns: int) -> Frame:
    """A Read sent at ``true_ns`` and answered ``trip_ns`` later; the server's values were
    written ``age_ns`` before the request (their ServerTimestamps), its response header
    stamped a quarter of the way through the round trip."""
    written = true_ns - age_ns + server_offset
    frame = stamped_frame(true_ns - age_ns, server_offset, trip_ns + age_ns)
    frame.server_time = np.full(2, written, np.int64)
    frame.requested = true_ns
    frame.sent = true_ns + trip_ns // 4 + server_offset
    return frame


def test_a_polled_server_is_measured_by_its_responses_not_its_values_ages() -> None:
    """Values written 30-80 ms before each Read would put a model of ServerTimestamps
    against receive times 30 ms off, and the response header's stamp against the receive
    time alone three quarters of the shortest round trip (0.75 ms); from the round trip's
    midpoint it is a quarter (0.25 ms)."""
    stage = SourceClock(source(correct_clock=True), Metrics(), ProblemLog(structlog.get_logger()))
    rng = np.random.default_rng(5)
    for k in range(50):
        true = T0 + k * 100 * MS
        age = int(rng.uniform(30, 80) * MS)
        out = stage.process(polled_frame(true, 5 * S, age, int(rng.uniform(1, 3) * MS)))
    assert stage.server.round_trip
    assert np.abs(out.time - (true - age)).max() <= 400_000
    assert (out.quality == q.GOOD).all()
    described = stage.describe()
    assert described is not None
    assert described["server_offset_ms"] == pytest.approx(5000.0, abs=1.0)


def test_a_read_split_in_chunks_is_one_round_trip_spanning_them() -> None:
    first = polled_frame(T0, 5 * S, 0, 2 * MS)
    second = polled_frame(T0 + 3 * MS, 5 * S, 0, 2 * MS)
    joined = concat([first, second])
    assert (joined.requested, joined.received, joined.sent) == (
        first.requested,
        second.received,
        second.sent,
    )
    assert joined.requested < joined.sent - 5 * S < joined.received
    assert joined.take(np.array([0])).requested == first.requested
