"""Durations written as strings in the config ("100ms", "10s", "5m"), held as int nanoseconds.

Integer nanoseconds keep tick arithmetic exact: a 100 ms grid never drifts by float
rounding, however long the agent runs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "min": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|min|m|h|d)\s*$")
EXPECTED = 'a duration string such as "100ms", "10s" or "5m"'


def parse_duration(text: Any) -> int:
    """Nanoseconds for a duration string; raises ValueError naming what was expected."""
    if not isinstance(text, str):
        raise ValueError(f"expected {EXPECTED}, got {text!r}")
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"expected {EXPECTED}, got {text!r}")
    number, unit = match.groups()
    ns = round(float(number) * _UNITS_NS[unit])
    if ns <= 0:
        raise ValueError(f"expected a positive duration, got {text!r}")
    return ns


def parse_interval(text: Any) -> int:
    """Like parse_duration, but zero ("0s", "0", or the number 0) is allowed: it turns off
    what the interval paces."""
    if (type(text) is int and text == 0) or text == "0":
        return 0
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is not None and float(match.group(1)) == 0:
        return 0
    return parse_duration(text)


def format_duration(ns: int) -> str:
    """The shortest exact spelling of a duration, for summaries and metadata."""
    if ns == 0:
        return "0s"
    for unit in ("h", "m", "s", "ms", "us"):
        size = _UNITS_NS[unit]
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
"""A config field holding a positive duration in nanoseconds, written as a string."""

Interval = Annotated[
    int,
    BeforeValidator(parse_interval),
    PlainSerializer(format_duration, return_type=str),
]
"""A duration that may also be zero ("0s"), meaning off."""
