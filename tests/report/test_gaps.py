"""Gap finding on a polled tag's samples: jitter in the stamps is no gap, a missed tick is."""

from __future__ import annotations

import numpy as np

from agent.acquisition import quality as q
from agent.report.chunk import Chunk
from agent.report.dataset import Footer, Selection
from agent.report.gaps import GapFinder, reason_name
from agent.report.series import SeriesIndex

MS = 1_000_000
T0 = 1_790_000_000_000_000_000


def finder(lineage: str) -> GapFinder:
    series = SeriesIndex(Selection())
    series.view(Footer("f", 0, "gw", T0, T0 + 10**9, "h", 0, lineage, None))
    return GapFinder(series)


def chunk(times_ms: list[float], quality: list[int] | None = None) -> Chunk:
    times = T0 + (np.array(times_ms) * MS).astype(np.int64)
    return Chunk(
        np.zeros(times.size, np.int64),
        times,
        np.ones(times.size),
        np.array(quality or [0] * times.size, np.uint16),
    )


END = T0 + 40_000 * MS  # where the data ends


def gaps_of(found: GapFinder) -> list[tuple[int, int, str, int]]:
    gaps = found.result({}, {}, END)
    return [
        (int((a - T0) // MS), int((b - T0) // MS), reason_name(int(r)), int(m))
        for a, b, r, m in zip(gaps.start, gaps.end, gaps.reason, gaps.missing, strict=True)
    ]


def test_round_trips_that_vary_are_no_gap_but_a_missed_tick_is() -> None:
    found = finder('{"plc/a":{"rate":"100ms"}}')
    # stamped at the request's midpoint: 5 ms after its tick, then 70 ms (a slow answer),
    # then 2 ms: 165 ms apart, yet every tick has its sample ...
    found.add(chunk([5, 170, 202, 305]))
    # ... and here the tick at 500 ms has none
    found.add(chunk([404, 603, 701]))
    assert gaps_of(found) == [(404, 603, "no_data", 1)]


def test_a_placeholder_names_the_reason_and_gaps_span_chunks() -> None:
    found = finder('{"plc/a":{"rate":"100ms"}}')
    timeout = q.make(q.BAD, q.Reason.TIMEOUT)
    found.add(chunk([0, 100, 200, 300], [0, 0, timeout, timeout]))
    found.add(chunk([400, 501, 600], [timeout, 0, 0]))
    assert gaps_of(found) == [(100, 501, "timeout", 3)]


def test_an_on_change_tag_has_a_gap_only_where_the_gateway_marked_one() -> None:
    found = finder('{"scada/a":{"rate":"1s","on_change":true}}')
    lost = q.make(q.BAD, q.Reason.COMM_ERROR)
    found.add(chunk([0, 5000, 9000, 9500, 12000], [0, 0, lost, lost, 0]))
    found.add(chunk([30000, 31000]))  # silent for 18 s: it did not change, no gap
    found.add(chunk([32000], [lost]))  # lost again, and not back before the data ends
    assert gaps_of(found) == [(9000, 12000, "comm_error", -1), (32000, 40000, "comm_error", -1)]
    assert found.result({}, {}, END).open.tolist() == [False, True]
