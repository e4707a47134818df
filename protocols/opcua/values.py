"""OPC UA DataValues to columnar frames, for both subscriptions and polled reads.

asyncua hands over one decoded DataValue per item; this is the single place that turns a
batch of them into numpy columns: values to float64 (strings to the text side column,
arrays to blocks of samples), the configured timestamp to int64 ns UTC, and the StatusCode
to the quality word (OPC UA severity kept in the top bits).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from asyncua import ua

from agent import quality as q
from agent.frame import Frame, concat
from protocols.opcua.config import OpcUaTagConfig

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_DECODE_ERROR = q.make(q.BAD, q.Reason.DECODE_ERROR)
_SCALAR_TYPES = {float, int, bool, type(None)}
# status codes that have a reason of their own; any other non-good code is SOURCE_STATUS
_STATUS_REASONS = {
    ua.StatusCodes.BadCommunicationError: q.Reason.COMM_ERROR,
    ua.StatusCodes.BadTimeout: q.Reason.TIMEOUT,
    ua.StatusCodes.BadOutOfRange: q.Reason.OUT_OF_RANGE,
    ua.StatusCodes.UncertainEngineeringUnitsExceeded: q.Reason.OUT_OF_RANGE,
}


def ns_of(stamp: dt.datetime | None) -> int | None:
    """Nanoseconds since the epoch of an asyncua (aware, UTC) datetime."""
    if stamp is None:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return (stamp - _EPOCH) // _MICROSECOND * 1000


def quality_of(status: int) -> int:
    """Quality word for an OPC UA StatusCode value (severity bits map one to one)."""
    severity = (status >> 30) & 0b11
    if severity == 0:
        return q.GOOD
    reason = _STATUS_REASONS.get(status & 0xFFFF0000, q.Reason.SOURCE_STATUS)
    return q.make(q.UNCERTAIN if severity == 1 else q.BAD, reason)


class ValueDecoder:
    """Turns (tag index, DataValue) pairs of one source into a Frame."""

    def __init__(self, tags: Sequence[OpcUaTagConfig], timestamp: str) -> None:
        self.timestamp = timestamp
        self.sample_interval = [tag.sample_interval or 0 for tag in tags]
        self.undecodable: list[tuple[int, str]] = []  # (tag, type name) seen since last read

    def _time(self, value: ua.DataValue, received: int) -> int:
        if self.timestamp == "source":
            return ns_of(value.SourceTimestamp) or ns_of(value.ServerTimestamp) or received
        if self.timestamp == "server":
            return ns_of(value.ServerTimestamp) or ns_of(value.SourceTimestamp) or received
        return received

    def decode(
        self,
        tags: Sequence[int],
        values: Sequence[ua.DataValue],
        received: int,
        gateway_time: int | None = None,
    ) -> Frame:
        """One frame for the pairs; ``gateway_time`` stands in for receive time if given."""
        local = received if gateway_time is None else gateway_time
        fast = self._decode_scalars(tags, values, received, local)
        return fast if fast is not None else self._decode_any(tags, values, received, local)

    def _decode_scalars(
        self, tags: Sequence[int], values: Sequence[ua.DataValue], received: int, local: int
    ) -> Frame | None:
        """The common case in a few list passes: numbers with the wanted timestamp present.

        Returns None (use the general path) on strings, arrays, other types or a missing
        timestamp; a numeric-looking string must not become a number.
        """
        raws = [v.Value.Value if v.Value is not None else None for v in values]
        if not set(map(type, raws)) <= _SCALAR_TYPES:
            return None
        n = len(raws)
        if self.timestamp == "gateway":
            times = np.full(n, local, np.int64)
        else:
            stamps: list[Any] = [
                v.SourceTimestamp if self.timestamp == "source" else v.ServerTimestamp
                for v in values
            ]
            try:
                micros = np.fromiter(((s - _EPOCH) // _MICROSECOND for s in stamps), np.int64, n)
            except TypeError:  # a missing or naive timestamp: the general path handles it
                return None
            times = micros * 1000
        codes = [v.StatusCode.value if v.StatusCode is not None else 0 for v in values]
        qualities = (
            np.array([quality_of(c) for c in codes], np.uint16)
            if any(codes)
            else np.zeros(n, np.uint16)
        )
        return Frame(
            np.asarray(tags, np.int32), times, np.array(raws, np.float64), qualities, received
        )

    def _decode_any(
        self, tags: Sequence[int], values: Sequence[ua.DataValue], received: int, local: int
    ) -> Frame:
        n = len(tags)
        times = np.empty(n, np.int64)
        numbers = np.empty(n, np.float64)
        qualities = np.empty(n, np.uint16)
        texts: np.ndarray | None = None
        blocks: list[Frame] = []
        keep = np.ones(n, bool)
        for row, (tag, value) in enumerate(zip(tags, values, strict=True)):
            status = value.StatusCode.value if value.StatusCode is not None else 0
            times[row] = self._time(value, local)
            qualities[row] = quality_of(status)
            raw: Any = value.Value.Value if value.Value is not None else None
            if raw is None:
                numbers[row] = math.nan
            elif isinstance(raw, bool | int | float):
                numbers[row] = raw
            elif isinstance(raw, str):
                numbers[row] = math.nan
                if texts is None:
                    texts = np.full(n, None, dtype=object)
                texts[row] = raw
            elif isinstance(raw, list | tuple):
                blocks.append(self._block(tag, raw, int(times[row]), int(qualities[row]), received))
                keep[row] = False
            else:
                numbers[row] = math.nan
                qualities[row] = _DECODE_ERROR
                self.undecodable.append((tag, type(raw).__name__))
        frame = Frame(np.asarray(tags, np.int32), times, numbers, qualities, received, texts)
        if blocks:
            return concat([frame.take(keep), *blocks]) if keep.any() else concat(blocks)
        return frame

    def _block(
        self, tag: int, items: Sequence[Any], start: int, quality: int, received: int
    ) -> Frame:
        """An array value as a block of samples: element i at start + i * sample_interval."""
        try:
            values = np.asarray(items, dtype=np.float64)
        except (TypeError, ValueError):
            self.undecodable.append((tag, "array"))
            return Frame.uniform(
                np.array([tag], np.int32), start, math.nan, _DECODE_ERROR, received
            )
        n = values.shape[0]
        return Frame(
            np.full(n, tag, np.int32),
            start + np.arange(n, dtype=np.int64) * self.sample_interval[tag],
            values,
            np.full(n, quality, np.uint16),
            received,
        )
