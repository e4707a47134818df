"""The columnar unit of data that flows from drivers through the pipeline to batches.

A Frame holds many samples of one source as parallel numpy columns, so a Modbus block read
or an OPC UA notification burst costs a handful of array operations instead of one Python
object per sample. ``tag`` indexes the source's tag table (the order of its configured tags).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.acquisition import quality as q

TAG_DTYPE = np.dtype(np.int32)
TIME_DTYPE = np.dtype(np.int64)
VALUE_DTYPE = np.dtype(np.float64)
QUALITY_DTYPE = np.dtype(np.uint16)


class FrameError(ValueError):
    """A frame whose columns do not fit together; raised by :meth:`Frame.check`."""


# Optional side columns and what a row that lacks one holds once frames are joined.
_OPTIONAL_FILL: dict[str, object] = {"text": None, "source_time": 0, "server_time": 0}


@dataclass(slots=True)
class Frame:
    """Samples of one source: parallel columns plus the time the batch of them arrived.

    ``text`` is the side column for string/enum tags: an object array aligned with the
    other columns (None where the sample is numeric), present only when needed.
    ``source_time`` and ``server_time`` keep the timestamps a device reported (OPC UA
    SourceTimestamp and ServerTimestamp, int64 ns, 0 where absent) next to ``time``, the
    one the config chose, so a dataset can still see both and a clock model can compare
    them with ``received``; drivers of sources without timestamps leave them None.
    ``device_clock`` says whose clock ``time`` is on: the device's (the agent may correct it
    and snaps it by rounding) or the gateway's (a poller snaps it to its scheduled tick).
    ``sent`` is the server's clock when it sent the frame (an OPC UA PublishTime, or a Read
    response's header Timestamp), 0 if unknown: it measures the server clock without the
    time a value waited in a publishing queue or since its last write, which a
    ServerTimestamp includes. ``requested`` is the gateway's clock when it sent the request
    the frame answers (a polled Read), 0 for what came unasked: ``sent`` was then stamped
    between ``requested`` and ``received``, a round trip whose midpoint it is compared with.
    """

    tag: np.ndarray
    time: np.ndarray
    value: np.ndarray
    quality: np.ndarray
    received: int = 0
    text: np.ndarray | None = field(default=None)
    source_time: np.ndarray | None = field(default=None)
    server_time: np.ndarray | None = field(default=None)
    device_clock: bool = False  # ``time`` is on the device's clock, not the gateway's
    sent: int = 0
    requested: int = 0

    def __len__(self) -> int:
        return int(self.tag.shape[0])

    @classmethod
    def empty(cls) -> Frame:
        return cls(
            np.empty(0, TAG_DTYPE),
            np.empty(0, TIME_DTYPE),
            np.empty(0, VALUE_DTYPE),
            np.empty(0, QUALITY_DTYPE),
        )

    @classmethod
    def uniform(
        cls,
        tags: np.ndarray,
        time_ns: int,
        value: float,
        quality: int,
        received: int | None = None,
    ) -> Frame:
        """One sample per tag, all with the same time, value and quality (e.g. a comm loss)."""
        n = int(tags.shape[0])
        return cls(
            tags.astype(TAG_DTYPE, copy=False),
            np.full(n, time_ns, TIME_DTYPE),
            np.full(n, value, VALUE_DTYPE),
            np.full(n, quality, QUALITY_DTYPE),
            time_ns if received is None else received,
        )

    def take(self, index: np.ndarray) -> Frame:
        """Rows selected by a boolean mask or an index array, as a new frame."""
        taken = Frame(
            self.tag[index], self.time[index], self.value[index], self.quality[index], self.received
        )
        taken.device_clock = self.device_clock
        taken.sent = self.sent
        taken.requested = self.requested
        for name in _OPTIONAL_FILL:
            column = getattr(self, name)
            if column is not None:
                setattr(taken, name, column[index])
        return taken

    def check(self, tag_count: int) -> None:
        """Raise FrameError unless the columns have the right dtypes, lengths and tag range.

        Drivers are third-party code; this is what the conformance suite and the debug
        path use to catch a malformed frame at its source rather than in a batch later.
        """
        n = len(self)
        columns = {
            "tag": (self.tag, TAG_DTYPE),
            "time": (self.time, TIME_DTYPE),
            "value": (self.value, VALUE_DTYPE),
            "quality": (self.quality, QUALITY_DTYPE),
        }
        for name, (column, dtype) in columns.items():
            if not isinstance(column, np.ndarray) or column.ndim != 1:
                raise FrameError(f"column {name!r} must be a 1-D numpy array")
            if column.dtype != dtype:
                raise FrameError(f"column {name!r} has dtype {column.dtype}, expected {dtype}")
            if column.shape[0] != n:
                raise FrameError(f"column {name!r} has {column.shape[0]} rows, expected {n}")
        for name in _OPTIONAL_FILL:
            column = getattr(self, name)
            if column is not None and (column.ndim != 1 or column.shape[0] != n):
                raise FrameError(f"{name} column must be 1-D with {n} rows")
        for name in ("source_time", "server_time"):
            column = getattr(self, name)
            if column is not None and column.dtype != TIME_DTYPE:
                raise FrameError(f"column {name!r} has dtype {column.dtype}, expected {TIME_DTYPE}")
        if n and (int(self.tag.min()) < 0 or int(self.tag.max()) >= tag_count):
            raise FrameError(f"tag index outside the source's tag table of {tag_count}")
        if n and int(self.time.min()) <= 0:
            raise FrameError("time must be positive nanoseconds since the Unix epoch")
        if n and (self.quality & q.SEVERITY_MASK == 0xC000).any():
            raise FrameError("quality severity 11 is not defined")


def concat(frames: Sequence[Frame]) -> Frame:
    """Join frames of the same source into one; ``received`` is the latest of them."""
    if not frames:
        return Frame.empty()
    if len(frames) == 1:
        return frames[0]
    joined = Frame(
        np.concatenate([f.tag for f in frames]),
        np.concatenate([f.time for f in frames]),
        np.concatenate([f.value for f in frames]),
        np.concatenate([f.quality for f in frames]),
        max(f.received for f in frames),
    )
    joined.device_clock = any(f.device_clock for f in frames)
    joined.sent = max(f.sent for f in frames)
    # the earliest request of the parts: [requested, received] still spans each part's round
    # trip, so the latest ``sent`` lies within it
    requests = [f.requested for f in frames if f.requested > 0]
    joined.requested = min(requests) if requests else 0
    for name, fill in _OPTIONAL_FILL.items():
        setattr(
            joined,
            name,
            join_optional([getattr(f, name) for f in frames], [len(f) for f in frames], fill),
        )
    return joined


def join_optional(
    columns: Sequence[np.ndarray | None], lengths: Sequence[int], fill: object
) -> np.ndarray | None:
    """Concatenate an optional column of several parts; parts without it become ``fill``."""
    present = [c for c in columns if c is not None]
    if not present:
        return None
    dtype = present[0].dtype
    return np.concatenate(
        [
            c if c is not None else np.full(n, fill, dtype)
            for c, n in zip(columns, lengths, strict=True)
        ]
    )
