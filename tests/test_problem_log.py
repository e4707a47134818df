"""A problem is logged when it starts, summarised while it lasts (where it costs data),
and totalled when it ends: never once per occurrence."""

from __future__ import annotations

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
