"""Per-source clock model: maps a device's clock onto the gateway's reference clock.

A device that stamps its own samples (OPC UA SourceTimestamp, an MQTT payload time) may run
seconds fast and drift by tens of ppm; so may an OPC UA server, which then stamps both
SourceTimestamp and ServerTimestamp with its wrong clock. The reference is always the
gateway's clock, read when a frame is received. Each frame gives one observation per clock:
the largest ``stamp - reference`` among its rows, the sample that travelled with the least
delay. This is the NTP clock-filter idea: delays only ever add, so the minimum-delay
observation is the one nearest to the true offset. Where a server sends ServerTimestamps,
two clocks are modelled: the server's against the gateway and the device's against the
server's (which stamps next to the device, so that model is precise even when the network
path is not).

A server that stamps its answer to a request (an OPC UA Read response's header) gives round
trips instead: the stamp was taken between the request and the answer, so it is compared
with their midpoint and is off by at most half the round trip either way; the shortest round
trip is the one to trust (NTP's clock filter again). That beats a polled value's
ServerTimestamp, which is when the value was written: any time before the Read.

Observations fall into buckets of ``bucket_ns`` (1 s); each bucket keeps its least delayed
one, and a least-squares line through the buckets of the last ``window_ns`` gives the offset
and its drift (raised to the least delayed bucket for one-way observations, whose errors
are all delays). Uncertainty is the spread of the buckets about that line. Above the
source's ``clock_threshold`` (of the uncertainty when correcting, of the offset itself when
not) samples are flagged CLOCK_UNCERTAIN and a warning is logged once. Corrected samples of
the first frames, before the filter has seen enough of them, are flagged too.

Values that do not change carry no clock information: a polled Read returns the time of the
last change, which looks like a long delay. The minimum-delay filter discards such rows as
long as some value of the source changes within a bucket.
Everything is per frame or per bucket: no per-sample Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.config.model import SourceConfig
from agent.ops.health import ProblemLog
from agent.ops.metrics import Metrics

_CLOCK_UNCERTAIN = np.uint16(q.Flag.CLOCK_UNCERTAIN)
_PROBLEM = "clock"
_MIN_TOLERANCE_NS = 1_000_000.0  # delay jitter below this is never called an outlier
_SETTLING_OBSERVATIONS = 10
_FIT_BUCKETS = 10  # drift is fitted once the buckets span ten seconds
_SYNCHRONISED_NS = 5_000_000  # a server clock this close to the gateway's is left alone


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """Device clock = reference + offset_ns + drift * (reference - at_ns)."""

    offset_ns: float
    drift: float  # dimensionless: 1e-6 is 1 ppm
    at_ns: int
    uncertainty_ns: float

    def offset_at(self, reference_ns: np.ndarray) -> np.ndarray:
        return self.offset_ns + self.drift * (reference_ns - self.at_ns).astype(np.float64)

    def to_reference(self, device_ns: np.ndarray) -> np.ndarray:
        """Reference-clock times of device-clock times (inverse of the line above)."""
        elapsed = (device_ns - self.at_ns).astype(np.float64) - self.offset_ns
        return self.at_ns + np.round(elapsed / (1.0 + self.drift)).astype(np.int64)


class ClockModel:
    """Minimum-delay offset and drift estimator over a sliding window of buckets.

    Observations are one-way (a stamp taken some unknown delay before the reference, a
    receive time: the true offset is at least the observed one) or round trips (a stamp
    taken between a request and its answer, the reference their midpoint: the true offset
    is within half the round trip of the observed one, either way). A model that has seen
    a round trip is measured by round trips alone.
    """

    def __init__(self, window_ns: int = 60_000_000_000, bucket_ns: int = 1_000_000_000) -> None:
        self.window_ns = window_ns
        self.bucket_ns = bucket_ns
        # bucket index -> (reference ns, offset ns, round trip ns or 0) of its least delayed
        # observation; a delayed frame may land in an older bucket than the one before it
        self._buckets: dict[int, tuple[int, int, int]] = {}
        self._newest = 0
        self.round_trip = False
        self.observations = 0
        self.estimate: ClockEstimate | None = None

    @property
    def settled(self) -> bool:
        """Whether the minimum-delay filter has seen enough to mean anything: ten frames
        (a subscription's first notification carries the last-change times of values) over
        at least two buckets (one busy second can delay every frame in it)."""
        return self.observations >= _SETTLING_OBSERVATIONS and len(self._buckets) >= 2

    def observe(self, reference_ns: int, offset_ns: int, round_trip_ns: int = 0) -> None:
        """One stamp minus its reference; ``round_trip_ns`` > 0 makes it a round trip.

        A bucket keeps its largest one-way offset (the least delayed) or its shortest round
        trip (NTP's clock filter: the narrowest bound on the offset). One-way observations
        bound the offset on one side only: once round trips come, they are ignored.
        """
        if round_trip_ns > 0 and not self.round_trip:
            self.round_trip = True
            self._buckets.clear()
        elif round_trip_ns <= 0 and self.round_trip:
            return
        self.observations += 1
        bucket = reference_ns // self.bucket_ns
        kept = self._buckets.get(bucket)
        if kept is not None and (
            round_trip_ns >= kept[2] if self.round_trip else offset_ns <= kept[1]
        ):
            return  # a more delayed observation than the bucket's best: nothing changes
        self._buckets[bucket] = (reference_ns, offset_ns, round_trip_ns)
        if bucket > self._newest:
            self._newest = bucket
            oldest = bucket - self.window_ns // self.bucket_ns
            for stale in [b for b in self._buckets if b < oldest]:
                del self._buckets[stale]
        self.estimate = self._fit()

    def _fit(self) -> ClockEstimate:
        refs = np.array([kept[0] for kept in self._buckets.values()], np.int64)
        offsets = np.array([kept[1] for kept in self._buckets.values()], np.float64)
        at = int(refs.max())
        x = (refs - at).astype(np.float64)
        if len(refs) < _FIT_BUCKETS:  # a slope from a few seconds is noise: best offset only
            if self.round_trip:
                trips = [kept[2] for kept in self._buckets.values()]
                best = float(offsets[int(np.argmin(trips))])
            else:
                best = float(offsets.max())
            spread = float(offsets.max() - offsets.min())
            return ClockEstimate(best, 0.0, at, spread)
        offset, drift = _line(x, offsets)
        # A bucket that saw only delayed frames (a network hiccup) lies below the line, or
        # for round trips on either side of it: drop what is further off than the spread of
        # the rest, then fit again.
        residuals = offsets - (offset + drift * x)
        tolerance = max(3.0 * float(np.median(np.abs(residuals))), _MIN_TOLERANCE_NS)
        kept = np.abs(residuals) <= tolerance if self.round_trip else residuals >= -tolerance
        if kept.sum() >= 3 and not kept.all():
            x, offsets = x[kept], offsets[kept]
            offset, drift = _line(x, offsets)
        residuals = offsets - (offset + drift * x)
        spread = float(residuals.max() - residuals.min())
        if self.round_trip:  # errors either way: the line stays through their middle
            return ClockEstimate(offset, drift, at, spread)
        # Every one-way observation is the true offset less a delay: the line is raised
        # until it touches the least delayed one, not left through the middle of the delays.
        return ClockEstimate(offset + float(residuals.max()), drift, at, spread)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares intercept (at x = 0) and slope."""
    dx = x - x.mean()
    slope = float((dx * (y - y.mean())).sum() / (dx * dx).sum())
    return float(y.mean() - slope * x.mean()), slope


class SourceClock:
    """The time stage of one source: clock correction, then snapping to the sampling grid.

    Runs on every frame before the processing pipeline. A frame whose ``time`` is the
    device's clock (``Frame.device_clock``) is corrected when ``correct_clock`` is set;
    with ``snap`` it is rounded to each tag's sampling grid (polled frames were already put
    on their scheduled tick by the poller).

    Two clocks, once a server sends ServerTimestamps: the server's against the gateway's
    receive time, and the device's against the server's. The server stamps next to the
    device, so the second is precise to well under a millisecond; the first is what catches
    a server (a PLC's embedded one) whose own clock is off as a whole, which the second
    cannot see. A device time goes device -> server -> gateway. Without ServerTimestamps the
    device clock is modelled against the gateway directly.
    """

    def __init__(self, config: SourceConfig, metrics: Metrics, problems: ProblemLog) -> None:
        self.correct = config.correct_clock
        self.snap = config.snap
        self.threshold_ns = config.clock_threshold
        self.model = ClockModel(config.clock_window)  # the device against its reference
        self.server = ClockModel(config.clock_window)  # the server against the gateway
        self.grid_ns = np.array([tag.sampling_grid_ns() for tag in config.tags], np.int64)
        self.problems = problems
        labels = (config.name,)
        self._offset = metrics.clock_offset.labels(*labels)
        self._drift = metrics.clock_drift.labels(*labels)
        self._uncertainty = metrics.clock_uncertainty.labels(*labels)

    @property
    def via_server(self) -> bool:
        """Whether device times reach the gateway through the server's clock."""
        return self.server.estimate is not None

    def process(self, frame: Frame) -> Frame:
        """A frame without rows may still carry a round trip to the server's clock (an OPC
        UA subscription's clock probe): that is observed; with no rows, nothing of it is stored."""
        self._observe_server(frame)
        if not len(frame):
            return frame
        if frame.source_time is not None:
            self._observe_device(frame)
        if frame.device_clock and self.model.estimate is not None:
            self._apply(frame, self.model.estimate)
        if self.snap and frame.device_clock:
            grid = self.grid_ns[frame.tag]
            frame.time = (frame.time + grid // 2) // grid * grid
        return frame

    def _observe_server(self, frame: Frame) -> None:
        if frame.sent > 0:  # the server's clock at sending: no queueing delay in it
            trip = frame.received - frame.requested
            if frame.requested > 0 and trip > 0:  # answering a request: stamped within it
                midpoint = frame.requested + trip // 2
                self.server.observe(midpoint, frame.sent - midpoint, trip)
            else:
                self.server.observe(frame.received, frame.sent - frame.received)
        elif frame.server_time is not None and len(frame):
            _observe(self.server, frame.server_time, frame.received)

    def _observe_device(self, frame: Frame) -> None:
        device = frame.source_time
        assert device is not None
        if self.via_server:
            if frame.server_time is None:
                return
            # rows without a ServerTimestamp carry no device-vs-server information
            stamped = frame.server_time > 0
            _observe(self.model, np.where(stamped, device, 0), frame.server_time)
        else:
            _observe(self.model, device, frame.received)
        estimate = self.model.estimate
        if estimate is None:
            return
        total = self._total_offset(estimate)
        self._offset.set(total / 1e9)
        self._drift.set((estimate.drift + self._server_drift()) * 1e6)
        self._uncertainty.set(self._uncertainty_ns(estimate) / 1e9)

    def _server_skew(self) -> ClockEstimate | None:
        """The server clock's estimate when it is measurably off, else None.

        Against the gateway the server clock is only seen through network and scheduling
        delays (a polled value was stamped when written, read a little later), so a server
        within ``_SYNCHRONISED_NS`` counts as synchronised: correcting it would trade the
        device-vs-server model's sub-millisecond accuracy for that delay.
        """
        server = self.server.estimate
        if server is None or abs(server.offset_ns) <= _SYNCHRONISED_NS:
            return None
        return server

    def _server_drift(self) -> float:
        server = self._server_skew()
        return server.drift if server is not None else 0.0

    def _total_offset(self, estimate: ClockEstimate) -> float:
        """The device clock's offset against the gateway's, through the server's if any."""
        server = self._server_skew()
        return estimate.offset_ns + (server.offset_ns if server is not None else 0.0)

    def _uncertainty_ns(self, estimate: ClockEstimate) -> float:
        server = self._server_skew()
        return estimate.uncertainty_ns + (server.uncertainty_ns if server is not None else 0.0)

    def _to_gateway(self, device_ns: np.ndarray, estimate: ClockEstimate) -> np.ndarray:
        times = estimate.to_reference(device_ns)
        server = self._server_skew()
        return times if server is None else server.to_reference(times)

    def _apply(self, frame: Frame, estimate: ClockEstimate) -> None:
        """Correct the times (if configured) and flag them if they cannot be trusted."""
        server = self.server.estimate
        if self.correct:
            error_ns = self._uncertainty_ns(estimate)
            # only rows stamped by the device: others (a missing SourceTimestamp, an MQTT
            # payload without a time) are already on the gateway's clock
            stamped = None if frame.source_time is None else frame.source_time > 0
            if stamped is None or stamped.all():
                frame.time = self._to_gateway(frame.time, estimate)
            else:
                frame.time = np.where(stamped, self._to_gateway(frame.time, estimate), frame.time)
        else:  # whichever clock is off: the device's against its server, or the server's
            error_ns = max(
                abs(estimate.offset_ns), abs(server.offset_ns) if server is not None else 0.0
            )
        settled = self.model.settled and (server is None or self.server.settled)
        if self.correct and not settled:
            frame.quality = frame.quality | _CLOCK_UNCERTAIN  # expected at start: not logged
        elif error_ns > self.threshold_ns:
            frame.quality = frame.quality | _CLOCK_UNCERTAIN
            what = "clock uncertain" if self.correct else "device or server clock off"
            self.problems.fail(
                _PROBLEM,
                f"{what}: samples flagged clock-uncertain",
                offset_ms=round(self._total_offset(estimate) / 1e6, 3),
                server_offset_ms=round(server.offset_ns / 1e6, 3) if server is not None else None,
                uncertainty_ms=round(self._uncertainty_ns(estimate) / 1e6, 3),
                threshold_ms=self.threshold_ns / 1e6,
            )
        else:
            self.problems.ok(_PROBLEM)

    def describe(self) -> dict[str, float] | None:
        """The current estimate, for batch metadata; None before the first observation."""
        estimate = self.model.estimate
        if estimate is None:
            return None
        described: dict[str, float] = {
            "offset_ms": round(self._total_offset(estimate) / 1e6, 3),
            "drift_ppm": round((estimate.drift + self._server_drift()) * 1e6, 3),
            "uncertainty_ms": round(self._uncertainty_ns(estimate) / 1e6, 3),
            "corrected": self.correct,
        }
        if self.server.estimate is not None:
            described["server_offset_ms"] = round(self.server.estimate.offset_ns / 1e6, 3)
        return described


def _observe(model: ClockModel, stamps: np.ndarray, reference: np.ndarray | int) -> None:
    """Feed a frame's minimum-delay observation of ``stamps`` (0 = absent) to ``model``."""
    reference = np.broadcast_to(np.asarray(reference, np.int64), stamps.shape)
    offsets = np.where(stamps > 0, stamps - reference, np.iinfo(np.int64).min)
    best = int(offsets.argmax())
    if offsets[best] == np.iinfo(np.int64).min:
        return  # no row carried a stamp
    model.observe(int(reference[best]), int(offsets[best]))
