"""The ring buffer behind exact recent percentiles (demo, acceptance checks)."""

from __future__ import annotations

from agent.metrics import Ring


def test_ring_keeps_the_most_recent_values_in_order() -> None:
    ring = Ring(size=4)
    for value in range(10):
        ring.add(float(value))
    assert ring.values().tolist() == [6.0, 7.0, 8.0, 9.0]
    assert ring.values(last=2).tolist() == [8.0, 9.0]
    assert ring.percentile(100, last=3) == 9.0
    assert ring.percentile(0, last=3) == 7.0
