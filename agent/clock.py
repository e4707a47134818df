"""Per-source clock model: maps a device's clock onto the gateway's reference clock.

A device that stamps its own samples (OPC UA SourceTimestamp, an MQTT payload time) may run
seconds fast and drift by tens of ppm. Each frame gives one observation: the largest
``device stamp - reference stamp`` among its rows, the sample that travelled with the least
delay. The reference is the OPC UA ServerTimestamp when the server sends one (it stamps as
the value arrives, next to the device) and otherwise the gateway's receive time. This is the
NTP clock-filter idea: delays only ever add, so the minimum-delay observation is the one
nearest to the true offset.

Observations fall into buckets of ``bucket_ns`` (1 s); each bucket keeps its minimum-delay one,
and a least-squares line through the buckets of the last ``window_ns`` gives the offset
and its drift. Uncertainty is the largest distance of a bucket from that line. Above the
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

from agent import quality as q
from agent.config import SourceConfig
from agent.frame import Frame
from agent.health import ProblemLog
from agent.metrics import Metrics

_CLOCK_UNCERTAIN = np.uint16(q.Flag.CLOCK_UNCERTAIN)
_PROBLEM = "clock"
_MIN_TOLERANCE_NS = 1_000_000.0  # delay jitter below this is never called an outlier
_SETTLING_OBSERVATIONS = 10
_FIT_BUCKETS = 10  # drift is fitted once the buckets span ten seconds


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
    """Minimum-delay offset and drift estimator over a sliding window of buckets."""

    def __init__(self, window_ns: int = 60_000_000_000, bucket_ns: int = 1_000_000_000) -> None:
        self.window_ns = window_ns
        self.bucket_ns = bucket_ns
        # bucket index -> (reference ns, offset ns) of its minimum-delay observation; a
        # delayed frame may land in an older bucket than the one before it
        self._buckets: dict[int, tuple[int, int]] = {}
        self._newest = 0
        self.observations = 0
        self.estimate: ClockEstimate | None = None

    @property
    def settled(self) -> bool:
        """Whether the minimum-delay filter has seen enough to mean anything: ten frames
        (a subscription's first notification carries the last-change times of values) over
        at least two buckets (one busy second can delay every frame in it)."""
        return self.observations >= _SETTLING_OBSERVATIONS and len(self._buckets) >= 2

    def observe(self, reference_ns: int, offset_ns: int) -> None:
        self.observations += 1
        bucket = reference_ns // self.bucket_ns
        kept = self._buckets.get(bucket)
        if kept is not None and offset_ns <= kept[1]:
            return  # a more delayed observation than the bucket's best: nothing changes
        self._buckets[bucket] = (reference_ns, offset_ns)
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
            best = float(offsets.max())
            spread = float(offsets.max() - offsets.min())
            return ClockEstimate(best, 0.0, at, spread)
        offset, drift = _line(x, offsets)
        # A bucket that saw only delayed frames (a network hiccup) lies below the line:
        # drop what is further below than the spread of the rest, then fit again.
        residuals = offsets - (offset + drift * x)
        tolerance = max(3.0 * float(np.median(np.abs(residuals))), _MIN_TOLERANCE_NS)
        kept = residuals >= -tolerance
        if kept.sum() >= 3 and not kept.all():
            x, offsets = x[kept], offsets[kept]
            offset, drift = _line(x, offsets)
        residual = float(np.abs(offsets - (offset + drift * x)).max())
        return ClockEstimate(offset, drift, at, residual)


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
    """

    def __init__(self, config: SourceConfig, metrics: Metrics, problems: ProblemLog) -> None:
        self.correct = config.correct_clock
        self.snap = config.snap
        self.threshold_ns = config.clock_threshold
        self.model = ClockModel(config.clock_window)
        self.grid_ns = np.array([tag.sampling_grid_ns() for tag in config.tags], np.int64)
        self.problems = problems
        labels = (config.name,)
        self._offset = metrics.clock_offset.labels(*labels)
        self._drift = metrics.clock_drift.labels(*labels)
        self._uncertainty = metrics.clock_uncertainty.labels(*labels)

    def process(self, frame: Frame) -> Frame:
        if not len(frame):
            return frame
        if frame.source_time is not None:
            self._observe(frame)
        if frame.device_clock and self.model.estimate is not None:
            self._apply(frame, self.model.estimate)
        if self.snap and frame.device_clock:
            grid = self.grid_ns[frame.tag]
            frame.time = (frame.time + grid // 2) // grid * grid
        return frame

    def _observe(self, frame: Frame) -> None:
        device = frame.source_time
        assert device is not None
        reference = np.full(len(frame), frame.received, np.int64)
        if frame.server_time is not None:
            reference = np.where(frame.server_time > 0, frame.server_time, reference)
        offsets = np.where(device > 0, device - reference, np.iinfo(np.int64).min)
        best = int(offsets.argmax())
        if offsets[best] == np.iinfo(np.int64).min:
            return  # no row carried a device stamp
        self.model.observe(int(reference[best]), int(offsets[best]))
        estimate = self.model.estimate
        assert estimate is not None
        self._offset.set(estimate.offset_ns / 1e9)
        self._drift.set(estimate.drift * 1e6)
        self._uncertainty.set(estimate.uncertainty_ns / 1e9)

    def _apply(self, frame: Frame, estimate: ClockEstimate) -> None:
        """Correct the times (if configured) and flag them if they cannot be trusted."""
        error_ns = estimate.uncertainty_ns if self.correct else abs(estimate.offset_ns)
        if self.correct:
            # only rows stamped by the device: others (a missing SourceTimestamp, an MQTT
            # payload without a time) are already on the gateway's clock
            stamped = None if frame.source_time is None else frame.source_time > 0
            if stamped is None or stamped.all():
                frame.time = estimate.to_reference(frame.time)
            else:
                frame.time = np.where(stamped, estimate.to_reference(frame.time), frame.time)
        if self.correct and not self.model.settled:
            frame.quality = frame.quality | _CLOCK_UNCERTAIN  # expected at start: not logged
        elif error_ns > self.threshold_ns:
            frame.quality = frame.quality | _CLOCK_UNCERTAIN
            what = "clock uncertain" if self.correct else "device clock off"
            self.problems.fail(
                _PROBLEM,
                f"{what}: samples flagged clock-uncertain",
                offset_ms=round(estimate.offset_ns / 1e6, 3),
                uncertainty_ms=round(estimate.uncertainty_ns / 1e6, 3),
                threshold_ms=self.threshold_ns / 1e6,
            )
        else:
            self.problems.ok(_PROBLEM)

    def describe(self) -> dict[str, float] | None:
        """The current estimate, for batch metadata; None before the first observation."""
        estimate = self.model.estimate
        if estimate is None:
            return None
        return {
            "offset_ms": round(estimate.offset_ns / 1e6, 3),
            "drift_ppm": round(estimate.drift * 1e6, 3),
            "uncertainty_ms": round(estimate.uncertainty_ns / 1e6, 3),
            "corrected": self.correct,
        }
