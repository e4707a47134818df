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

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame, concat
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


def stamps_ns(values: Sequence[ua.DataValue], attribute: str) -> np.ndarray:
    """One timestamp attribute of every DataValue as int64 ns, 0 where the server sent none."""
    stamps: list[Any] = [getattr(v, attribute) for v in values]
    try:
        micros = np.fromiter(((s - _EPOCH) // _MICROSECOND for s in stamps), np.int64, len(stamps))
    except TypeError:  # a missing or naive timestamp: the slow path copes with both
        return np.array([ns_of(s) or 0 for s in stamps], np.int64)
    return micros * 1000


class ValueDecoder:
    """Turns (tag index, DataValue) pairs of one source into a Frame.

    Both device timestamps travel in the frame's ``source_time``/``server_time`` columns
    whatever ``timestamp`` chooses for ``time``, so the dataset and the clock model keep them.
    """

    def __init__(self, tags: Sequence[OpcUaTagConfig], timestamp: str) -> None:
        self.timestamp = timestamp
        self.sample_interval = [tag.sample_interval or 0 for tag in tags]
        self.undecodable: list[tuple[int, str]] = []  # (tag, type name) seen since last read
        self._arrays: dict[int, Sequence[Any]] = {}  # row -> array value of the frame in hand

    def _choose(self, source: np.ndarray, server: np.ndarray, local: int) -> np.ndarray:
        """The configured timestamp, falling back to the other one, then to receive time."""
        if self.timestamp == "gateway":
            return np.full(source.shape[0], local, np.int64)
        first, second = (source, server) if self.timestamp == "source" else (server, source)
        return np.where(first > 0, first, np.where(second > 0, second, local))

    def decode(
        self,
        tags: Sequence[int],
        values: Sequence[ua.DataValue],
        received: int,
        gateway_time: int | None = None,
    ) -> Frame:
        """One frame for the pairs; ``gateway_time`` stands in for receive time if given."""
        local = received if gateway_time is None else gateway_time
        source = stamps_ns(values, "SourceTimestamp")
        server = stamps_ns(values, "ServerTimestamp")
        times = self._choose(source, server, local)
        frame = self._decode_scalars(tags, values, times, received)
        if frame is None:
            frame = self._decode_any(tags, values, times, received)
        frame.source_time = source
        frame.server_time = server
        frame.device_clock = self.timestamp != "gateway"
        return self._expand_arrays(frame) if self._arrays else frame

    def _decode_scalars(
        self, tags: Sequence[int], values: Sequence[ua.DataValue], times: np.ndarray, received: int
    ) -> Frame | None:
        """The common case in a few list passes: every value a number (or empty).

        Returns None (use the general path) on strings, arrays or other types; a
        numeric-looking string must not become a number.
        """
        raws = [v.Value.Value if v.Value is not None else None for v in values]
        if not set(map(type, raws)) <= _SCALAR_TYPES:
            return None
        codes = [v.StatusCode.value if v.StatusCode is not None else 0 for v in values]
        qualities = (
            np.array([quality_of(c) for c in codes], np.uint16)
            if any(codes)
            else np.zeros(len(raws), np.uint16)
        )
        return Frame(
            np.asarray(tags, np.int32), times, np.array(raws, np.float64), qualities, received
        )

    def _decode_any(
        self, tags: Sequence[int], values: Sequence[ua.DataValue], times: np.ndarray, received: int
    ) -> Frame:
        """Row by row for strings, arrays and odd types; arrays wait in ``_arrays``."""
        n = len(tags)
        numbers = np.empty(n, np.float64)
        qualities = np.empty(n, np.uint16)
        texts: np.ndarray | None = None
        for row, (tag, value) in enumerate(zip(tags, values, strict=True)):
            status = value.StatusCode.value if value.StatusCode is not None else 0
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
                numbers[row] = math.nan
                self._arrays[row] = raw
            else:
                numbers[row] = math.nan
                qualities[row] = _DECODE_ERROR
                self.undecodable.append((tag, type(raw).__name__))
        return Frame(np.asarray(tags, np.int32), times, numbers, qualities, received, texts)

    def _expand_arrays(self, frame: Frame) -> Frame:
        """Replace each array-valued row by a block of samples, one per element.

        Element i lands at the row's time + i * the tag's ``sample_interval`` and keeps the
        row's quality and device timestamps.
        """
        arrays, self._arrays = self._arrays, {}
        keep = np.ones(len(frame), bool)
        keep[list(arrays)] = False
        blocks = [frame.take(keep)]
        for row, items in arrays.items():
            tag = int(frame.tag[row])
            try:
                values = np.asarray(items, dtype=np.float64)
            except (TypeError, ValueError):
                self.undecodable.append((tag, "array"))
                bad = frame.take(np.array([row]))
                bad.quality[:] = _DECODE_ERROR
                blocks.append(bad)
                continue
            block = frame.take(np.full(values.shape[0], row))
            block.time = (
                block.time + np.arange(values.shape[0], dtype=np.int64) * self.sample_interval[tag]
            )
            block.value = values
            blocks.append(block)
        return concat(blocks)
