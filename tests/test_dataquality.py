"""Data-quality figures: the tally, the batch metadata, an injected dropout, and the report."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import tomllib
from pathlib import Path

import numpy as np
import pytest

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.commands.cli import main
from agent.config.load import parse_config
from agent.report.dataset import Selection
from agent.report.figures import TagRow, completeness_of, compute, tag_rows
from agent.runtime import Agent
from agent.windows.batch import Batch, Batcher, TagTable
from agent.windows.dataquality import QualityTally, tag_figures
from protocols._template.driver import TemplateSourceConfig
from simulators.modbus_plc import POINTS, ModbusPLCSimulator
from simulators.opcua_cnc import NODES, OpcUaCncSimulator
from tests.conftest import agent_toml, run_agent

S = 1_000_000_000
MS = 1_000_000
T0 = 1_795_000_000 * S


def tally(now: int) -> QualityTally:
    """Two sources: s0 with tags 0 (100 ms) and 1 (1 s), s1 with tag 2 (100 ms)."""
    return QualityTally(
        [0, 2],
        np.array([0, 0, 1], np.int32),
        np.array([100 * MS, S, 100 * MS]),
        S,
        clock=lambda: now,
    )


def frame(tags: list[int], time: int, quality: list[int]) -> Frame:
    n = len(tags)
    return Frame(
        np.array(tags, np.int32),
        np.full(n, time, np.int64),
        np.ones(n),
        np.array(quality, np.uint16),
        time,
    )


def test_on_change_tags_owe_no_count_per_rate() -> None:
    """A subscribed or published tag that held still is not incomplete: nothing is expected
    of it, and its samples do not make up for a polled tag's missing ones."""
    polled = TemplateSourceConfig(name="plc", tags=[{"name": "a", "rate": "100ms"}])
    subscribed = parse_config(
        tomllib.loads(
            '[[sources]]\nname = "scada"\nprotocol = "mqtt"\nurl = "mqtt://127.0.0.1:1"\n'
            'topic = "plant/{tag}"\n[[sources.tags]]\nname = "b"\nrate = "100ms"\n'
        ),
        Path("t.toml"),
    ).config.sources[0]
    table = TagTable([polled, subscribed])
    assert table.lineage[1]["on_change"] is True
    assert "on_change" not in table.lineage[0]
    counts = QualityTally(table.source_offset, table.tag_source, table.rate_ns, S, lambda: T0 + S)
    counts.started_ns = T0
    for k in range(5):  # the polled tag: half its samples; the published one: 3 changes
        counts.add(0, frame([0], T0 + k * 100 * MS, [q.GOOD]))
    for k in range(3):
        counts.add(1, frame([0], T0 + k * 300 * MS, [q.GOOD]))
    figures = counts.figures(T0, table.source_names, table.qualified, {}, {})
    assert figures["sources"]["plc"]["completeness"] == 0.5
    assert figures["sources"]["scada"]["expected"] == 0
    assert figures["sources"]["scada"]["completeness"] is None
    assert figures["sources"]["scada"]["received"] == 3
    lineage = {name: table.lineage[g] for g, name in enumerate(table.qualified)}
    restored = tag_figures(figures, lineage)
    assert restored["scada/b"] == [3, 0.0, 3], "listed with what it sent, owing nothing"
    assert restored["plc/a"] == [5, 10.0, 5]


def test_tally_counts_received_and_good_but_not_gateway_placeholders() -> None:
    counts = tally(T0 + 5 * S)
    counts.started_ns = T0 - 10 * S
    for k in range(10):  # tag 0: one exception answer, one timeout placeholder
        quality = q.GOOD
        if k == 3:
            quality = q.make(q.BAD, q.Reason.DEVICE_EXCEPTION)
        if k == 4:
            quality = q.make(q.BAD, q.Reason.TIMEOUT)
        counts.add(0, frame([0], T0 + k * 100 * MS, [quality]))
    counts.add(0, frame([1], T0 + 500 * MS, [q.make(q.UNCERTAIN, q.Reason.SOURCE_STATUS)]))
    for k in range(11):  # s1's tag 0 is global tag 2; one sample more than its rate
        counts.add(1, frame([0], T0 + k * 90 * MS, [q.GOOD]))
    figures = counts.figures(T0, ["s0", "s1"], ["s0/a", "s0/b", "s1/c"], {}, {})
    assert figures["span_ns"] == S
    assert figures["sources"]["s0"]["received"] == 9 + 1
    assert figures["sources"]["s0"]["expected"] == 10 + 1
    assert figures["sources"]["s0"]["good"] == 8
    assert figures["sources"]["s1"]["completeness"] == 1.0, "capped at 1"
    assert figures["sources"]["s1"]["validity"] == 1.0
    assert figures["tags"] == {"s0/a": [9, 10.0, 8], "s0/b": [1, 1.0, 0], "s1/c": [11, 10.0, 11]}


def test_tags_not_listed_received_all_their_rate_promised() -> None:
    counts = tally(T0 + 5 * S)
    counts.started_ns = T0 - 10 * S
    for k in range(10):
        counts.add(0, frame([0, 1] if k == 0 else [0], T0 + k * 100 * MS, [q.GOOD] * (2 - bool(k))))
        counts.add(1, frame([0], T0 + k * 100 * MS, [q.GOOD]))
    counts.add(1, frame([0], T0 - 1, [q.GOOD]))  # late: for a window before this one
    figures = counts.figures(T0, ["s0", "s1"], ["s0/a", "s0/b", "s1/c"], {}, {})
    assert figures["tags"] == {}
    lineage = {"s0/a": {"rate": "100ms"}, "s0/b": {"rate": "1s"}, "s1/c": {"rate": "100ms"}}
    restored = tag_figures(figures, lineage)
    assert restored == {"s0/a": [10, 10, 10], "s0/b": [1, 1, 1], "s1/c": [10, 10, 10]}
    assert counts.figures(T0 + S, ["s0", "s1"], ["s0/a", "s0/b", "s1/c"], {}, {})["tags"] == {
        "s0/a": [0, 10.0, 0],
        "s0/b": [0, 1.0, 0],
        "s1/c": [0, 10.0, 0],
    }, "a window nobody reported in is all missing"


def test_a_window_the_agent_ran_only_part_of_expects_only_that_part() -> None:
    counts = tally(T0 + S)
    counts.started_ns = T0 + 600 * MS
    figures = counts.figures(T0, ["s0", "s1"], ["s0/a", "s0/b", "s1/c"], {}, {})
    assert figures["span_ns"] == 400 * MS
    assert figures["sources"]["s1"]["expected"] == 4.0
    assert figures["tags"]["s1/c"] == [0, 4.0, 0], "a tag that sent nothing is listed"
    assert figures["tags"]["s0/b"] == [0, 0.4, 0], "even when less than one sample was due"


def test_a_tag_slower_than_the_window_is_expected_in_every_window() -> None:
    """A 10 s tag in 1 s windows owes a tenth of a sample per window. The windows it sent
    nothing in hold no row of it, so their lineage does not name it: their figures must
    list it, or a report over the batches expects one sample where ten were due."""
    now = T0 + 100 * S
    counts = QualityTally([0], np.array([0], np.int32), np.array([10 * S]), S, lambda: now)
    counts.started_ns = T0
    lineage = {"dev/slow": {"rate": "10s"}}
    received = expected = 0.0
    for window in range(100):
        start = T0 + window * S
        if window % 10 == 0:
            counts.add(0, frame([0], start + 5 * MS, [q.GOOD]))
        figures = counts.figures(start, ["dev"], ["dev/slow"], {}, {})
        present = lineage if window % 10 == 0 else {}  # what the batch's lineage holds
        got, due, _ = tag_figures(figures, present)["dev/slow"]
        received, expected = received + got, expected + due
    assert received == 10
    assert expected == pytest.approx(10.0)


def test_windows_without_a_single_sample_still_report_what_they_missed() -> None:
    table = TagTable([TemplateSourceConfig(name="dev", tags=[{"name": "a", "rate": "100ms"}])])
    counts = QualityTally(
        table.source_offset, table.tag_source, table.rate_ns, S, clock=lambda: T0 + 3 * S
    )
    counts.started_ns = T0
    batcher = Batcher(table, S, 0, "gw", "cfg", counts)
    sample = frame([0], T0 + 2 * S + 5 * MS, [q.GOOD])  # one sample, in the last window
    counts.add(0, sample)
    batcher.add(0, sample)
    batches = batcher.close_due(T0 + 3 * S)
    assert [b.window_start_ns - T0 for b in batches] == [0, S, 2 * S]
    assert [b.points for b in batches] == [0, 0, 1]
    assert [b.quality["sources"]["dev"]["received"] for b in batches if b.quality] == [0, 0, 1]
    assert [b.quality["sources"]["dev"]["expected"] for b in batches if b.quality] == [10.0] * 3


def test_a_restart_after_a_long_stop_does_not_emit_the_windows_it_slept_through() -> None:
    table = TagTable([TemplateSourceConfig(name="dev", tags=[{"name": "a", "rate": "100ms"}])])
    now = T0 + 86_400 * S  # restarted a day after the last window it had closed
    counts = QualityTally(
        table.source_offset, table.tag_source, table.rate_ns, S, clock=lambda: now + 2 * S
    )
    counts.started_ns = now
    batcher = Batcher(table, S, 0, "gw", "cfg", counts)
    batcher.restore(T0 + S)  # what the spool remembered
    batches = batcher.close_due(now + 2 * S)
    assert [b.window_start_ns - now for b in batches] == [0, S]


def test_a_tag_is_owed_samples_from_its_first_one_not_from_the_agent_start() -> None:
    """Connecting and the first poll due on the tag's grid take time nothing could have
    been sampled in: the tag owes from its first sample, another tag of the same source
    from its own; a window before any of them is owed nothing."""
    counts = tally(T0 + 2 * S)
    counts.grace_ns = np.full(3, 60 * S)
    counts.started_ns = T0 - 700 * MS
    for k in range(3, 10):  # s0/a from .3 s
        counts.add(0, frame([0], T0 + k * 100 * MS, [q.GOOD]))
    counts.add(1, frame([0], T0 + 600 * MS, [q.GOOD]))  # s1/c from .6 s
    assert counts.acquired_ns(T0 - S) == 0, "the window the agent started in: no batch"
    assert counts.acquired_ns(T0) == 700 * MS
    figures = counts.figures(T0, ["s0", "s1"], ["s0/a", "s0/b", "s1/c"], {}, {})
    assert figures["span_ns"] == 700 * MS
    assert figures["sources"]["s0"]["completeness"] == 1.0
    assert figures["tags"] == {"s0/b": [0, 0.0, 0], "s1/c": [1, 4.0, 1]}, "own spans listed"
    lineage = {"s0/a": {"rate": "100ms"}, "s0/b": {"rate": "1s"}, "s1/c": {"rate": "100ms"}}
    assert tag_figures(figures, lineage) == {
        "s0/a": [7, 7.0, 7],
        "s0/b": [0, 0.0, 0],
        "s1/c": [1, 4.0, 1],
    }


def test_a_source_that_never_connects_owes_from_its_first_failure() -> None:
    """The comm-error marker of a failed session is its tags' first sample: from then on
    they are owed, and show 0 %, not nothing."""
    counts = tally(T0 + 2 * S)
    counts.grace_ns = np.full(3, 60 * S)
    counts.started_ns = T0
    failed = q.make(q.BAD, q.Reason.COMM_ERROR)
    counts.add(1, frame([0], T0 + 500 * MS, [failed]))
    figures = counts.figures(T0, ["s0", "s1"], ["s0/a", "s0/b", "s1/c"], {}, {})
    assert figures["sources"]["s1"]["completeness"] == 0.0
    assert figures["tags"]["s1/c"] == [0, 5.0, 0]
    assert figures["sources"]["s0"]["expected"] == 0, "s0 has not started, nor its grace run"


def test_a_tag_that_delivers_nothing_at_all_is_owed_after_its_grace() -> None:
    counts = QualityTally(
        [0], np.array([0, 0], np.int32), np.array([100 * MS, S]), S, lambda: T0 + 10 * S
    )
    counts.started_ns = T0
    counts.grace_ns = np.array([2 * S + 100 * MS, 2 * S + S])  # as the agent sets it
    assert counts.acquired_ns(T0 + S) == 0
    figures = counts.figures(T0 + 2 * S, ["dev"], ["dev/a", "dev/b"], {}, {})
    assert figures["tags"] == {"dev/a": [0, 9.0, 0], "dev/b": [0, 0.0, 0]}
    assert figures["sources"]["dev"]["completeness"] == 0.0
    figures = counts.figures(T0 + 3 * S, ["dev"], ["dev/a", "dev/b"], {}, {})
    assert figures["tags"] == {"dev/a": [0, 10.0, 0], "dev/b": [0, 1.0, 0]}


def test_nothing_is_owed_after_acquisition_stopped() -> None:
    counts = tally(T0 + 10 * S)
    counts.started_ns = T0
    counts.add(0, frame([0, 1], T0, [q.GOOD, q.GOOD]))
    counts.stop(T0 + S + 250 * MS)
    figures = counts.figures(T0 + S, ["s0", "s1"], ["s0/a", "s0/b", "s1/c"], {}, {})
    assert figures["span_ns"] == 250 * MS
    assert figures["sources"]["s0"]["expected"] == 2.5 + 0.25
    assert counts.acquired_ns(T0 + 2 * S) == 0, "a window after the stop is no batch"


def test_an_on_change_source_reports_how_long_its_session_was_up() -> None:
    """A subscription owes no count, but a failed session is time nothing could arrive:
    from the failure's marker to the next sample received it is down; a source that never
    connects is down from its first failure on, and shown so, not left out."""
    now = [T0 + 10 * S]
    counts = QualityTally([0, 1], np.array([0, 1], np.int32), np.zeros(2), S, lambda: now[0])
    counts.started_ns = T0
    failed = q.make(q.BAD, q.Reason.COMM_ERROR)
    counts.add(0, frame([0], T0 + 200 * MS, [q.GOOD]))  # subscribed at .2 s
    counts.add(0, frame([0], T0 + S + 500 * MS, [failed]))  # the session fails at 1.5 s
    counts.add(0, frame([0], T0 + 2 * S + 250 * MS, [q.GOOD]))  # and is back at 2.25 s
    counts.add(1, frame([0], T0 + 400 * MS, [failed]))  # never connects
    names = ["sub", "dead"]
    figures = [counts.figures(T0 + k * S, names, ["sub/a", "dead/b"], {}, {}) for k in range(3)]
    sub = [f["sources"]["sub"] for f in figures]
    assert [(f["acquired_ns"], f["up_ns"]) for f in sub] == [
        (800 * MS, 800 * MS),
        (S, 500 * MS),
        (S, 750 * MS),
    ]
    assert [f["session_up"] for f in sub] == [1.0, 0.5, 0.75]
    assert [f["sources"]["dead"]["session_up"] for f in figures] == [0.0, 0.0, 0.0]
    assert all(f["sources"]["sub"]["completeness"] is None for f in figures), "none owed"
    assert counts.acquired_ns(T0 - S) == 0
    counts.stop(T0 + 3 * S + 100 * MS)
    assert counts.acquired_ns(T0 + 3 * S) == 100 * MS
    assert counts.acquired_ns(T0 + 4 * S) == 0


def test_only_windows_with_acquisition_time_become_batches() -> None:
    """No 0-row batch for the window the agent started in before its first sample, nor
    for one after the stop; a window of an outage in between is a batch (0 % complete)."""
    table = TagTable([TemplateSourceConfig(name="dev", tags=[{"name": "a", "rate": "100ms"}])])
    counts = QualityTally(
        table.source_offset, table.tag_source, table.rate_ns, S, lambda: T0 + 5 * S, 60 * S
    )
    counts.started_ns = T0 + 900 * MS
    batcher = Batcher(table, S, 0, "gw", "cfg", counts)
    for start in (T0 + S, T0 + 3 * S):  # the first poll is due at 1 s; windows 1 and 3
        sample = frame([0], start, [q.GOOD])
        counts.add(0, sample)
        batcher.add(0, sample)
    assert batcher.close_due(T0 + S) == [], "window 0: started, nothing acquired yet"
    counts.stop(T0 + 3 * S + 50 * MS)
    batches = batcher.close_due(T0 + 5 * S)
    assert [b.window_start_ns - T0 for b in batches] == [S, 2 * S, 3 * S]
    assert [b.points for b in batches] == [1, 0, 1]
    assert [b.quality["span_ns"] for b in batches if b.quality] == [S, S, 50 * MS]
    assert batches[1].quality is not None
    assert batches[1].quality["sources"]["dev"]["completeness"] == 0.0


def test_a_source_is_as_complete_as_its_owed_tags_with_no_tag_covering_for_another() -> None:
    def tag(name: str, received: float, expected: float | None) -> TagRow:
        source, _, short = name.partition("/")
        return TagRow(0, name, "gw", source, short, {}, received, expected, received)

    plc = [tag("plc/a", 110, 100), tag("plc/b", 90, 100)]  # one too many each way
    assert completeness_of(plc) == 0.95
    assert completeness_of([tag("plc.2/c", 0, 50)]) == 0.0
    assert completeness_of([tag("scada/d", 7, None)]) is None, "on change: owes none"


async def test_completeness_and_validity_match_an_injected_dropout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    simulator = ModbusPLCSimulator(seed=11, exception_rate=0.2)
    port = await simulator.start("127.0.0.1", 0)
    # a generous timeout: a loaded machine must not turn a slow answer into a missing one
    extra = 'timeout = "2s"\nbackoff_initial = "100ms"\nbackoff_max = "100ms"\n'
    text = agent_toml(tmp_path, simulator.agent_config("100ms", points=POINTS[:1], extra=extra))
    written: list[Batch] = []
    agent = Agent(parse_config(tomllib.loads(text), Path("test.toml")), on_delivered=written.append)
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(2.0)
    await simulator.stop()  # the dropout: about ten polls find nobody
    await asyncio.sleep(1.0)
    await simulator.start("127.0.0.1", port)
    await asyncio.sleep(2.0)
    stop.set()
    await running
    await simulator.stop()

    batches = written
    sources = [b.quality["sources"]["plc1"] for b in batches if b.quality is not None]
    received = sum(s["received"] for s in sources)
    good = sum(s["good"] for s in sources)
    expected = sum(s["expected"] for s in sources)
    assert simulator.exceptions >= 3, "the seeded simulator injected exceptions"
    # within one sample per interruption (the dropout, the agent's stop): a request the
    # simulator counted may be in flight when its connection goes
    assert abs(received - simulator.requests) <= 2
    assert abs(good - (simulator.requests - simulator.exceptions)) <= 2
    assert 40 <= expected <= 52, "about 5 s at 10 samples a second"
    assert 6 <= expected - received <= 16, "the 1 s dropout is what is missing"
    stored = json.loads(batches[-1].table.schema.metadata[b"edge_agent.quality"])
    assert stored == batches[-1].quality

    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    tag = f"plc1/{POINTS[0].name}"
    line = next(line for line in out.splitlines() if line.startswith(tag))
    assert line.split()[1:4] == [str(received), f"{expected:.1f}", str(good)]
    (totals,) = [t for t in tag_rows(compute(tmp_path, Selection())) if t.name == tag]
    assert totals.completeness == pytest.approx(received / expected, rel=1e-4)
    # the same figure, to the line's rounding: the footers keep each window's expected
    # count to 3 decimals, so a sum of them may sit on the other side of a .005 boundary
    (shown,) = re.findall(r"^source plc1: complete ([\d.]+)%;", out, re.MULTILINE)
    assert float(shown) == pytest.approx(100 * min(received / expected, 1.0), abs=0.006)
    assert "; batch latency p50" in out
    assert "time uncertainty up to" in out, "Modbus: stamped at the midpoint, +/- RTT/2"
    assert stored["sources"]["plc1"]["clock"]["uncertainty_ms"] > 0


async def test_a_device_that_never_answers_is_reported_0_percent_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source refused from its first connect is in the figures at 0 %, beside a healthy
    one at 100 %: it is owed from its first failure, not left out of the report."""
    with socket.socket() as free:  # a loopback port nobody listens on: connects refused
        free.bind(("127.0.0.1", 0))
        dead_port = free.getsockname()[1]
    simulator = ModbusPLCSimulator(seed=3)
    await simulator.start("127.0.0.1", 0)
    extra = 'backoff_initial = "100ms"\nbackoff_max = "200ms"\n'
    sources = simulator.agent_config("100ms", points=POINTS[:2], extra=extra) + (
        simulator.agent_config(
            "100ms",
            source="gone",
            points=POINTS[:2],
            extra=extra,
            url=f"modbus+tcp://127.0.0.1:{dead_port}",
        )
    )
    try:
        written: list[Batch] = []
        await run_agent(agent_toml(tmp_path, sources), 3.0, on_delivered=written.append)
    finally:
        await simulator.stop()
    figures = [b.quality["sources"] for b in written if b.quality is not None]
    assert all(f["gone"]["completeness"] == 0.0 for f in figures if f["gone"]["expected"])
    assert sum(f["gone"]["expected"] for f in figures) >= 40, "owed from its first failure"
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "source gone: complete 0.00%;" in out
    assert "source plc1: complete 100.00%;" in out
    for point in POINTS[:2]:
        line = next(line for line in out.splitlines() if line.startswith(f"gone/{point.name} "))
        received, _, _, complete = line.split()[1:5]
        assert (received, complete) == ("0", "0.00%")


async def test_a_subscription_that_drops_out_reports_its_session_down_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An OPC UA server that powers off for 1.5 s: the subscription owes no count, but the
    time from its failed session to the first value after the reconnect is down."""
    simulator = OpcUaCncSimulator(seed=5)
    port = await simulator.start("127.0.0.1", 0)
    extra = 'backoff_initial = "100ms"\nbackoff_max = "200ms"\n'
    moving = tuple(node for node in NODES if node.name == "axis_x")
    text = agent_toml(tmp_path, simulator.agent_config("100ms", nodes=moving, extra=extra))
    written: list[Batch] = []
    agent = Agent(parse_config(tomllib.loads(text), Path("test.toml")), on_delivered=written.append)
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.sleep(2.0)
        await simulator.stop()
        await asyncio.sleep(1.5)
        await simulator.start("127.0.0.1", port)
        runner = agent.runners[0]
        for _ in range(100):  # back within a few seconds; allow for a loaded machine
            await asyncio.sleep(0.1)
            if runner.failures and runner.problem() is None and runner.ctx.connected:
                break
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await running
        await simulator.stop()
    figures = [b.quality["sources"]["cnc1"] for b in written if b.quality is not None]
    acquired = sum(f.get("acquired_ns", 0) for f in figures)
    down = acquired - sum(f.get("up_ns", 0) for f in figures)
    assert runner.failures >= 1
    assert 1.4 * S <= down <= 6 * S, "the 1.5 s off, and the reconnect"
    assert acquired >= 4 * S
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("source cnc1:"))
    assert f"session up {100 * (acquired - down) / acquired:.2f}%;" in line
