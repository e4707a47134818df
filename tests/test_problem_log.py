"""A problem is logged when it starts, summarised while it lasts (where it costs data),
and totalled when it ends: never once per occurrence."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agent.ops.health import ProblemLog


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(("info", event, fields))


def test_totals_are_summed_summarised_and_given_in_the_recovered_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0]
    monkeypatch.setattr(time, "monotonic_ns", lambda: now[0])
    log = Lines()
    problems = ProblemLog(log, summary_s=60.0)
    for second in range(0, 150, 10):  # a drop every 10 s for 2.5 minutes
        now[0] = second * 1_000_000_000
        problems.fail("overflow", "spool full", totals={"batches": 1, "points": 5})
    now[0] = 155 * 1_000_000_000
    assert problems.ok("overflow")
    kinds = [(level, event) for level, event, _ in log.lines]
    assert kinds == [
        ("warning", "spool full"),
        ("warning", "spool full (still)"),
        ("warning", "spool full (still)"),
        ("info", "recovered"),
    ]
    assert log.lines[0][2] == {"problem": "overflow", "batches": 1, "points": 5}
    assert log.lines[1][2]["batches"] == 7  # at 60 s: the drops at 0, 10, ... 60
    assert log.lines[-1][2] == {
        "problem": "overflow",
        "lasted_s": 155.0,
        "occurrences": 15,
        "batches": 15,
        "points": 75,
    }


def test_without_a_summary_period_a_problem_logs_only_its_start_and_end() -> None:
    log = Lines()
    problems = ProblemLog(log)
    for _ in range(100):
        problems.fail("block", "read failed", error="timeout")
    problems.ok("block")
    assert [event for _, event, _ in log.lines] == ["read failed", "recovered"]
    assert log.lines[-1][2]["occurrences"] == 100


async def test_a_flapping_problem_is_one_episode_summarised_then_recovered_once_quiet() -> None:
    log = Lines()
    problems = ProblemLog(log, summary_s=0.3, settle_s=0.2)
    for _ in range(8):  # fails and recovers every 50 ms for 0.4 s: one episode
        problems.fail("block", "read failed", detail="SERVER DEVICE FAILURE (4)")
        problems.fail("block", "read failed", detail="SERVER DEVICE FAILURE (4)")
        problems.ok("block")
        await asyncio.sleep(0.05)
    assert not problems.is_open("block"), "health sees it recovered at once"
    assert [event for _, event, _ in log.lines] == ["read failed", "read failed (still)"]
    summary = log.lines[1][2]
    assert summary["outages"] >= 6
    assert summary["recent"] == summary["occurrences"] - 1, "failures since the first line"
    await asyncio.sleep(0.4)  # quiet for longer than settle_s
    assert [event for _, event, _ in log.lines][2:] == ["recovered"]
    recovered = log.lines[2][2]
    assert recovered["occurrences"] == 16
    assert recovered["outages"] == 8
    assert 0.3 < recovered["lasted_s"] < 0.5, "from the first failure to the last recovery"


async def test_an_outage_longer_than_the_settle_time_is_told_over_at_once() -> None:
    log = Lines()
    problems = ProblemLog(log, settle_s=0.1)
    problems.fail("session", "source failed", error="refused")
    await asyncio.sleep(0.15)
    problems.ok("session")
    assert [event for _, event, _ in log.lines] == ["source failed", "recovered"]
    assert "outages" not in log.lines[1][2]


async def test_a_recovery_still_settling_is_told_when_the_log_closes() -> None:
    log = Lines()
    problems = ProblemLog(log, settle_s=60.0)
    problems.fail("session", "source failed")
    problems.ok("session")
    assert [event for _, event, _ in log.lines] == ["source failed"]
    problems.close()
    assert [event for _, event, _ in log.lines] == ["source failed", "recovered"]
    assert problems.last is not None
    assert problems.last.event == "source failed"
