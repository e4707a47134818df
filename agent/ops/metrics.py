"""Prometheus metrics of one agent, plus exact recent percentiles for the CLI and tests.

Each Agent gets its own CollectorRegistry so that several agents (tests, demo) can live in
one process. Histograms serve Prometheus; the small ring buffers in PollStats give exact
p50/p99 lateness for ``demo`` output and acceptance checks without scraping.
"""

from __future__ import annotations

import bisect
import itertools
import math
import platform
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from agent import __version__

# a ``*_created`` series per counter tells Prometheus nothing it uses and doubles the scrape
disable_created_metrics()  # type: ignore[no-untyped-call]

_go_float = cast(Callable[[float], str], floatToGoString)  # the 'le' label's spelling

_LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
_RTT_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0)


def describe_process(registry: CollectorRegistry) -> None:
    """``edge_agent_build_info`` (which version runs where, the first question on a call)
    and the process's CPU, memory and file descriptors, as Prometheus's own exporters name
    them (``process_*``, ``python_info``)."""
    build = Info(
        "edge_agent_build", "Version of the running agent and its Python", registry=registry
    )
    build.info({"version": __version__, "python": platform.python_version()})
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)


class Metrics:
    """The metric families of one agent."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        describe_process(r)
        self.polls = Counter("edge_agent_polls", "Polls started", ["source", "group"], registry=r)
        self.overruns = Counter(
            "edge_agent_poll_overruns",
            "Scheduled poll ticks skipped because the previous poll overran",
            ["source", "group"],
            registry=r,
        )
        self.lateness = LeanHistogram(
            "edge_agent_poll_lateness_seconds",
            "Delay between a poll's scheduled tick and its start",
            ["source", "group"],
            _LATENESS_BUCKETS,
            r,
        )
        self.rtt = LeanHistogram(
            "edge_agent_request_rtt_seconds",
            "Round-trip time of one device request",
            ["source"],
            _RTT_BUCKETS,
            r,
        )
        self.points_in = Counter(
            "edge_agent_points_in", "Samples received from sources", ["source"], registry=r
        )
        self.points_bad = Counter(
            "edge_agent_points_bad",
            "Samples received with bad quality, by reason",
            ["source", "reason"],
            registry=r,
        )
        self.payload_errors = Counter(
            "edge_agent_payload_errors",
            "Pushed payloads (or fields of them) rejected or flagged, by reason",
            ["source", "reason"],
            registry=r,
        )
        self.points_dropped = Counter(
            "edge_agent_points_dropped",
            "Samples removed by the pipeline (filters and compression), by reason",
            ["source", "reason"],
            registry=r,
        )
        self.source_up = Gauge(
            "edge_agent_source_up", "1 while the source is connected", ["source"], registry=r
        )
        self.clock_offset = Gauge(
            "edge_agent_clock_offset_seconds",
            "Estimated offset of the source's clock against the gateway's reference clock",
            ["source"],
            registry=r,
        )
        self.clock_drift = Gauge(
            "edge_agent_clock_drift_ppm",
            "Estimated drift of the source's clock",
            ["source"],
            registry=r,
        )
        self.clock_uncertainty = Gauge(
            "edge_agent_clock_uncertainty_seconds",
            "Largest distance of a clock observation from the fitted offset line",
            ["source"],
            registry=r,
        )
        self.completeness = Gauge(
            "edge_agent_completeness_ratio",
            "Samples received / expected by rate, in the source's last closed window",
            ["source"],
            registry=r,
        )
        self.validity = Gauge(
            "edge_agent_validity_ratio",
            "Share of received samples of good quality, in the source's last closed window",
            ["source"],
            registry=r,
        )
        self.latency = Gauge(
            "edge_agent_batch_latency_seconds",
            "Largest acquisition-to-batch latency of the source's samples in the last batch",
            ["source"],
            registry=r,
        )
        self.reconnects = Counter(
            "edge_agent_source_failures",
            "Source sessions that ended in an error and were restarted",
            ["source"],
            registry=r,
        )
        self.batches = Counter(
            "edge_agent_batches_written",
            "Batches acknowledged by an uplink",
            ["uplink"],
            registry=r,
        )
        self.batch_points = Counter(
            "edge_agent_batch_points", "Samples in batches written", ["uplink"], registry=r
        )
        self.uplink_unconfirmed = Counter(
            "edge_agent_uplink_unconfirmed_points",
            "Samples an uplink handed to the network without an acknowledgement from the "
            "receiver (Sparkplug data at QoS 0)",
            ["uplink"],
            registry=r,
        )
        self.uplink_errors = Counter(
            "edge_agent_uplink_errors", "Failed batch writes", ["uplink"], registry=r
        )
        self.spool_batches = Gauge(
            "edge_agent_spool_batches", "Batches held in the spool", registry=r
        )
        self.spool_bytes = Gauge(
            "edge_agent_spool_bytes", "Bytes of batches held in the spool", registry=r
        )
        self.backlog = Gauge(
            "edge_agent_uplink_backlog",
            "1 while the uplink has older (backlog) batches to replay",
            ["uplink"],
            registry=r,
        )
        self.replayed = Counter(
            "edge_agent_batches_replayed",
            "Backlog batches sent after an outage, flagged replayed",
            ["uplink"],
            registry=r,
        )
        self.points_lost = Counter(
            "edge_agent_points_lost",
            "Acquired samples that will not reach an uplink (for 'rejected': the uplink that "
            "refused them), by reason",
            ["reason"],
            registry=r,
        )
        self.uplink_up = Gauge(
            "edge_agent_uplink_up",
            "1 while the uplink delivers (or has nothing to deliver); 0 when it has not "
            "delivered for longer than health.uplink_max_age, or its task is failing",
            ["uplink"],
            registry=r,
        )
        self.spool_oldest_age = Gauge(
            "edge_agent_spool_oldest_age_seconds",
            "Age of the oldest batch held in the spool (0 when empty)",
            registry=r,
        )
        self.task_failures = Counter(
            "edge_agent_task_failures",
            "Long-lived agent tasks that ended in an exception and were restarted",
            ["task"],
            registry=r,
        )
        self.storage_errors = Counter(
            "edge_agent_storage_errors",
            "Failed writes to the frame log or the spool (disk full, I/O error), by operation",
            ["operation"],
            registry=r,
        )
        self.points_at_risk = Gauge(
            "edge_agent_points_at_risk",
            "Samples held only in memory because storage fails: a kill now would lose them",
            registry=r,
        )
        self.batches_quarantined = Counter(
            "edge_agent_batches_quarantined",
            "Batches moved to the quarantine (corrupt, or rejected by an uplink for good)",
            ["uplink", "reason"],
            registry=r,
        )
        self.source_healthy = Gauge(
            "edge_agent_source_healthy",
            "1 while the source delivers good samples; 0 when failing or degraded",
            ["source"],
            registry=r,
        )
        self.late_points = Counter(
            "edge_agent_points_late",
            "Samples that arrived after their window closed (sent in the next batch)",
            registry=r,
        )


def percentile(values: np.ndarray, pct: float) -> float:
    """``np.percentile`` (linear), from a two-element partition: the same figure at a
    tenth of the cost on the few hundred values of a window's figures, where
    ``np.percentile``'s general machinery dominated."""
    last = values.shape[0] - 1
    rank = last * pct / 100.0
    low = int(rank)
    high = min(low + 1, last)
    ranked = np.partition(values, (low, high))
    return float(ranked[low] + (ranked[high] - ranked[low]) * (rank - low))


class LeanHistogram:
    """A labelled Prometheus histogram whose ``observe`` is one bisect and two additions.

    Why: the RTT of every device request (17 per poll at 1,000 Modbus tags) and the
    lateness of every poll are observed on the event loop's hot path, where
    ``prometheus_client``'s ``Histogram.observe`` (a lock per value it touches and a
    Python loop over the buckets) was a visible share of the agent's CPU. Registered as a
    custom collector, so a scrape shows the same ``_bucket``/``_count``/``_sum`` series a
    ``Histogram`` would. Only the event loop observes; a scrape from the metrics server's
    thread copies the counts, and may see a count one observation ahead of the sum."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = [*map(float, buckets), math.inf]
        self._le = [_go_float(bound) for bound in self.bounds]
        self._children: dict[tuple[str, ...], LeanHistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> LeanHistogramChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = LeanHistogramChild(self.bounds)
        return child

    def remove(self, *values: str) -> None:
        """Drop one labelled series (a source or uplink a reload took out)."""
        self._children.pop(values, None)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            cumulative = list(itertools.accumulate(list(child.counts)))
            family.add_metric(
                list(values), list(zip(self._le, cumulative, strict=True)), child.total
            )
        yield family


class LeanHistogramChild:
    """The counts of one label set of a :class:`LeanHistogram`."""

    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, bounds: list[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # a bucket counts the values <= its bound, as Prometheus's "le" says
        self.counts[bisect.bisect_left(self._bounds, value)] += 1
        self.total += value


class Ring:
    """Fixed-size ring of recent float samples for exact percentiles."""

    def __init__(self, size: int = 4096) -> None:
        self._data = np.zeros(size, np.float64)
        self._count = 0

    def add(self, value: float) -> None:
        self._data[self._count % self._data.shape[0]] = value
        self._count += 1

    def values(self, last: int | None = None) -> np.ndarray:
        """Stored samples, or only the ``last`` n of them, oldest first."""
        size = self._data.shape[0]
        n = min(self._count, size if last is None else min(last, size))
        return self._data[(np.arange(self._count - n, self._count)) % size]

    def percentile(self, pct: float, last: int | None = None) -> float:
        values = self.values(last)
        return percentile(values, pct) if values.size else 0.0


class PollStats:
    """Statistics of one poll group: the scheduler and driver report into it."""

    def __init__(self, metrics: Metrics, source: str, group: str) -> None:
        self.source = source
        self.group = group
        self.polls = 0
        self.overruns = 0
        self.lateness_s = Ring()
        self.rtt_s = Ring()
        self._polls = metrics.polls.labels(source, group)
        self._overruns = metrics.overruns.labels(source, group)
        self._lateness = metrics.lateness.labels(source, group)
        self._rtt = metrics.rtt.labels(source)

    def poll_started(self, lateness_ns: int, skipped: int) -> None:
        self.polls += 1
        self._polls.inc()
        seconds = lateness_ns / 1e9
        self.lateness_s.add(seconds)
        self._lateness.observe(seconds)
        if skipped:
            self.overruns += skipped
            self._overruns.inc(skipped)

    def request_done(self, rtt_ns: int) -> None:
        seconds = rtt_ns / 1e9
        self.rtt_s.add(seconds)
        self._rtt.observe(seconds)
