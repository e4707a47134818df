"""Metrics helpers: exact recent percentiles (demo, acceptance checks) and the bulk histogram."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from agent import __version__
from agent.ops.metrics import LeanHistogram, Metrics, Ring, percentile


def test_ring_keeps_the_most_recent_values_in_order() -> None:
    ring = Ring(size=4)
    for value in range(10):
        ring.add(float(value))
    assert ring.values().tolist() == [6.0, 7.0, 8.0, 9.0]
    assert ring.values(last=2).tolist() == [8.0, 9.0]
    assert ring.percentile(100, last=3) == 9.0
    assert ring.percentile(0, last=3) == 7.0


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1, max_size=300),
    pct=st.floats(0, 100),
)
def test_percentile_is_numpys_linear_percentile(values: list[float], pct: float) -> None:
    array = np.array(values)
    assert percentile(array, pct) == pytest.approx(
        float(np.percentile(array, pct)), rel=1e-12, abs=1e-6
    )


def test_bulk_histogram_scrapes_like_a_prometheus_histogram() -> None:
    """Same buckets (a value on a bound counts in it), count and sum as ``Histogram``."""
    bounds = (0.001, 0.01, 0.1, 1.0)
    values = np.array([0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 7.5])
    bulk_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    bulk = LeanHistogram("rtt_seconds", "RTT", ["source"], bounds, bulk_registry)
    reference = Histogram(
        "rtt_seconds", "RTT", ["source"], buckets=bounds, registry=reference_registry
    )
    for value in values:
        bulk.labels("plc").observe(float(value))
    bulk.labels("other").observe(float(values[0]))
    for value in values:
        reference.labels("plc").observe(float(value))
    reference.labels("other").observe(float(values[0]))

    def series(registry: CollectorRegistry) -> list[str]:
        return generate_latest(registry).decode().splitlines()

    assert series(bulk_registry) == series(reference_registry)


def test_an_agent_scrape_has_build_info_and_process_metrics_but_no_created_series() -> None:
    metrics = Metrics()
    metrics.points_in.labels("plc1").inc(3)
    text = generate_latest(metrics.registry).decode()
    assert 'edge_agent_build_info{python="' in text
    assert f'version="{__version__}"' in text
    for family in ("process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert f"\n{family} " in text, family
    assert "\nprocess_open_fds " in text
    assert 'edge_agent_points_in_total{source="plc1"} 3.0' in text
    assert "_created" not in text
