"""Exception reporting (deadband) with a heartbeat and the previous-value convention.

A sample is reported when it differs from the last reported value by more than the
deviation, when ``max_interval`` has passed since the last report (heartbeat), or when it
is the first usable sample after a bad sample. With an exception (not a heartbeat) the
sample held just before it is reported too (PI's ExcDev convention), so a ramp after a long flat
stretch is stored as flat-then-ramp instead of one long false slope.

Error bound: every suppressed sample is within ``deviation`` of the last reported value
before it (the sample-and-hold reading), and within ``2 * deviation`` of the straight line
between the reported samples around it (both ends of that line are within ``deviation`` of
the same reported value). Bad or non-finite samples are passed through and end the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.acquisition.frame import Frame, concat
from agent.stages.base import DropCounter, RoundStage, no_count, usable


class DeadbandStage(RoundStage):
    name = "deadband"

    def __init__(
        self,
        deviation: Sequence[float],
        max_interval: Sequence[int],
        active: Sequence[bool],
        count: DropCounter = no_count,
    ) -> None:
        super().__init__(active, count)
        n = self.active.shape[0]
        self.deviation = np.asarray(deviation, np.float64)
        self.max_interval = np.asarray(max_interval, np.int64)
        self.ref_value = np.zeros(n)
        self.ref_time = np.zeros(n, np.int64)
        self.has_ref = np.zeros(n, bool)
        self.last_time = np.zeros(n, np.int64)
        self.held_time = np.zeros(n, np.int64)
        self.held_value = np.zeros(n)
        self.held_quality = np.zeros(n, np.uint16)
        self.has_held = np.zeros(n, bool)

    def step(self, frame: Frame) -> Frame:
        tag, time, value = frame.tag, frame.time, frame.value
        fresh = time > self.last_time[tag]
        good = usable(frame) & fresh
        self.last_time[tag[fresh]] = time[fresh]
        exception = ~good | ~self.has_ref[tag]
        exception |= np.abs(value - self.ref_value[tag]) > self.deviation[tag]
        exception &= fresh  # an out-of-order sample passes through and leaves the state alone
        heartbeat = good & (time - self.ref_time[tag] >= self.max_interval[tag])
        report = exception | heartbeat
        held = exception & self.has_held[tag]
        hold = good & ~report
        # a held sample is dropped when a newer one replaces it or a heartbeat passes it by
        self.count(
            self.name, int(np.count_nonzero((hold | heartbeat & ~exception) & self.has_held[tag]))
        )
        out = frame.take(~hold)
        if held.any():
            t = tag[held]
            previous = Frame(
                t, self.held_time[t], self.held_value[t], self.held_quality[t], frame.received
            )
            out = concat([previous, out])
        t = tag[hold]
        self.held_time[t], self.held_value[t] = time[hold], value[hold]
        self.held_quality[t] = frame.quality[hold]
        self.has_held[tag[report]] = False
        self.has_held[t] = True
        t = tag[report]
        self.ref_value[t], self.ref_time[t] = value[report], time[report]
        self.has_ref[t] = good[report]
        return out

    def flush(self) -> Frame:
        """The held samples, e.g. on shutdown, so the stored series ends where the input did."""
        t = np.flatnonzero(self.has_held).astype(np.int32)
        self.has_held[:] = False
        return Frame(t, self.held_time[t], self.held_value[t], self.held_quality[t])
