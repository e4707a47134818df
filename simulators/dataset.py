"""A stored dataset written the way the agent writes one, without running it for a day.

A benchmark of ``edge-agent report`` over 24 hours cannot wait 24 hours for the agent to
acquire them. This drives the agent's own pieces, the tag table, each source's pipeline
(units, range, spike ... stages), the quality tally, the batcher and the Parquet encoder,
with frames computed from a value function, window after window on a simulated clock. The
files are therefore the agent's files: the same schema, lineage, quality figures, batch ids
and encoding. Left out are the drivers, the clock models (a steady synthetic estimate is
written instead) and the spool.

Outages are injected the way the agent records them: a lost session leaves one bad
``comm_error`` sample per tag at its start and nothing until it ends; a device that stops
answering leaves one bad ``timeout`` sample per tag and poll.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame, concat
from agent.acquisition.pipeline import SourcePipeline
from agent.config.model import SourceConfig
from agent.store.encoding import encode, lineage_of
from agent.store.lineage import record_path
from agent.uplinks.parquet import batch_path
from agent.windows.batch import Batch, Batcher, TagTable
from agent.windows.dataquality import QualityTally
from simulators.signals import uniform

ValueFunction = Callable[[str, str, np.ndarray], np.ndarray]
"""``values(source, tag, times_ns)``: float64 values, or an object array of str for a text tag."""

_GRACE_NS = 10_000_000_000  # as the agent: a tag owes samples at the latest 10 s after start


@dataclass(frozen=True)
class Outage:
    """``source`` delivers nothing good from ``start_ns`` until ``end_ns``."""

    source: str
    start_ns: int
    end_ns: int
    reason: Literal["comm_error", "timeout"] = "comm_error"


@dataclass
class _Source:
    index: int
    config: SourceConfig
    pipeline: SourcePipeline
    rates: list[tuple[int, np.ndarray]]  # (rate ns, local tag indices)


def write_dataset(
    sources: Sequence[SourceConfig],
    values: ValueFunction,
    out: Path,
    start_ns: int,
    end_ns: int,
    *,
    window_ns: int = 1_000_000_000,
    lateness_ns: int = 300_000_000,
    gateway: str = "synthetic-gw",
    config_hash: str = "synthetic",
    outages: Sequence[Outage] = (),
    jitter_ns: int = 2_000_000,
) -> int:
    """Acquire ``sources`` from ``start_ns`` to ``end_ns`` on a simulated clock and write
    every batch under ``out`` in the parquet uplink's layout; returns how many."""
    sources = [source for source in sources if source.enabled]
    window, lateness = window_ns, lateness_ns
    now = start_ns
    table = TagTable(sources)
    tally = QualityTally(
        table.source_offset,
        table.tag_source,
        table.rate_ns,
        window,
        clock=lambda: now,
        grace_ns=_GRACE_NS + table.rate_ns,
    )
    clocks = _steady_clocks(sources)
    batcher = Batcher(table, window, lateness, gateway, config_hash, tally, lambda: clocks)
    states = [_source_state(index, source) for index, source in enumerate(sources)]
    written = 0
    recorded: set[str] = set()

    def publish(batches: list[Batch]) -> None:
        nonlocal written
        for batch in batches:
            path = out / batch_path(batch)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode(batch.table))
            lineage = lineage_of(batch.table)  # beside the data, as the parquet uplink keeps it
            if lineage is not None and lineage[0] not in recorded:
                (out / record_path(lineage[0])).parent.mkdir(exist_ok=True)
                (out / record_path(lineage[0])).write_text(lineage[1])
                recorded.add(lineage[0])
            written += 1

    for low in range(start_ns // window * window, end_ns, window):
        high = min(low + window, end_ns)
        for state in states:
            frame = _frame(state, values, max(low, start_ns), high, outages, jitter_ns)
            if len(frame):
                tally.add(state.index, frame)
                batcher.add(state.index, state.pipeline.process(frame))
        now = high + lateness + 1_000_000
        publish(batcher.close_due(now))
    tally.stop(end_ns)
    for state in states:
        batcher.add(state.index, state.pipeline.flush())
    publish(batcher.flush())
    return written


def _source_state(index: int, source: SourceConfig) -> _Source:
    rates: dict[int, list[int]] = {}
    for local, tag in enumerate(source.tags):
        rates.setdefault(tag.rate, []).append(local)
    return _Source(
        index,
        source,
        SourcePipeline(source.tags),
        [(rate, np.array(tags, np.int32)) for rate, tags in sorted(rates.items())],
    )


def _steady_clocks(sources: Sequence[SourceConfig]) -> dict[int, dict[str, Any]]:
    """What a settled clock model reports: a device clock a little off for the sources that
    stamp their samples, half a round trip of uncertainty for those that do not."""
    return {
        index: (
            {"offset_ms": -0.4 - index, "drift_ppm": 0.0, "uncertainty_ms": 0.4, "corrected": False}
            if source.reports_on_change
            else {"uncertainty_ms": 0.3}
        )
        for index, source in enumerate(sources)
    }


def _frame(
    state: _Source,
    values: ValueFunction,
    low: int,
    high: int,
    outages: Sequence[Outage],
    jitter_ns: int,
) -> Frame:
    """Every poll of one source in [low, high), as one frame ordered poll by poll."""
    tags, times = [], []
    for rate, members in state.rates:
        ticks = np.arange(-(-low // rate) * rate, high, rate, dtype=np.int64)
        tags.append(np.tile(members, ticks.shape[0]))
        times.append(np.repeat(ticks, members.shape[0]))
    tag = np.concatenate(tags)
    tick = np.concatenate(times)
    time = tick + (uniform(state.index, 7, tick) * jitter_ns).astype(np.int64)
    order = np.lexsort((tag, time))
    tag, time = tag[order], time[order]
    value = np.full(tag.shape[0], np.nan)
    text: np.ndarray | None = None
    for local, config in enumerate(state.config.tags):
        rows = tag == local
        computed = values(state.config.name, config.name, time[rows])
        if computed.dtype == object:
            text = np.full(tag.shape[0], None, object) if text is None else text
            text[rows] = computed
        else:
            value[rows] = computed
    quality = np.zeros(tag.shape[0], np.uint16)
    keep = np.ones(tag.shape[0], bool)
    markers = []
    for outage in outages:
        if outage.source != state.config.name:
            continue
        inside = (time >= outage.start_ns) & (time < outage.end_ns)
        if outage.reason == "timeout":
            value[inside] = np.nan
            quality[inside] = q.make(q.BAD, q.Reason.TIMEOUT)
            if text is not None:
                text[inside] = None
        else:
            keep &= ~inside
            if low <= outage.start_ns < high:  # the session's end: one marker per tag
                count = len(state.config.tags)
                markers.append(
                    Frame.uniform(
                        np.arange(count, dtype=np.int32),
                        outage.start_ns,
                        np.nan,
                        q.make(q.BAD, q.Reason.COMM_ERROR),
                    )
                )
    frame = Frame(tag, time, value, quality, int(time[-1]) if time.size else high, text)
    frame = frame.take(keep)
    if markers:
        frame = concat([frame, *markers])
        frame = frame.take(np.argsort(frame.time, kind="stable"))
    return frame
