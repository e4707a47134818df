"""Payload timestamps to int64 ns UTC: epoch numbers in s/ms/us/ns, or ISO 8601 text.

Publishers disagree on units: PLC gateways send epoch milliseconds, Python scripts float
seconds, historians ISO strings, Go and Rust services nanoseconds. ``auto`` tells epoch
units apart by magnitude, which is unambiguous for any instant between 1973 and 2286:
present-day seconds are ~1.7e9, milliseconds ~1.7e12, microseconds ~1.7e15 and nanoseconds
~1.7e18, three orders of magnitude apart.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any, Literal

TimestampFormat = Literal["auto", "s", "ms", "us", "ns", "iso"]

_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
# below these magnitudes an epoch number is taken to be in s, ms, us; above, ns
_AUTO_LIMITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"))
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
# fromisoformat keeps 6 fractional digits; the 7th to 9th are kept here as extra ns
_FRACTION = re.compile(r"(\.\d{6})(\d{1,3})")


class TimestampError(ValueError):
    """A timestamp field that cannot be read as an instant."""


def auto_unit(number: float) -> str:
    magnitude = abs(number)
    for limit, unit in _AUTO_LIMITS:
        if magnitude < limit:
            return unit
    return "ns"


def epoch_ns(number: int | float, unit: str) -> int:
    """Nanoseconds for an epoch number; exact for integers, float precision otherwise."""
    if unit == "auto":
        unit = auto_unit(number)
    scale = _NS_PER_UNIT[unit]
    if isinstance(number, int):
        return number * scale
    scaled = number * scale
    if not math.isfinite(scaled):
        raise TimestampError(f"epoch time {number!r} is out of range")
    return round(scaled)


def iso_ns(text: str) -> int:
    """Nanoseconds for an ISO 8601 instant; a time without an offset is taken as UTC."""
    extra_ns = 0
    match = _FRACTION.search(text)
    if match is not None:
        digits = match.group(2)
        extra_ns = int(digits) * 10 ** (3 - len(digits))
        text = text[: match.start()] + match.group(1) + text[match.end() :]
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        raise TimestampError(f"not an ISO 8601 time: {text[:64]!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return (stamp - _EPOCH) // _MICROSECOND * 1000 + extra_ns


def timestamp_ns(raw: Any, fmt: TimestampFormat) -> int:
    """The instant a payload field denotes, in ns since the epoch; raises TimestampError.

    Numbers are epoch times (unit per ``fmt``, by magnitude for ``auto``); strings are ISO
    8601 for ``iso`` and ``auto``, and numeric strings are epoch times for a numeric format.
    """
    if type(raw) is int or type(raw) is float:
        if fmt == "iso":
            raise TimestampError(f"expected an ISO 8601 string, got the number {raw!r}")
        return epoch_ns(raw, fmt)
    if isinstance(raw, str):
        if fmt in ("iso", "auto"):
            return iso_ns(raw)
        try:
            number = float(raw)
        except ValueError:
            raise TimestampError(f"expected an epoch number in {fmt}, got {raw[:64]!r}") from None
        return epoch_ns(int(raw) if raw.strip().lstrip("-").isdigit() else number, fmt)
    raise TimestampError(f"expected an epoch number or ISO 8601 string, got {type(raw).__name__}")
