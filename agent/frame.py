"""The columnar unit of data that flows from drivers through the pipeline to batches.

A Frame holds many samples of one source as parallel numpy columns, so a Modbus block read
or an OPC UA notification burst costs a handful of array operations instead of one Python
object per sample. ``tag`` indexes the source's tag table (the order of its configured tags).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agent import quality as q

TAG_DTYPE = np.dtype(np.int32)
TIME_DTYPE = np.dtype(np.int64)
VALUE_DTYPE = np.dtype(np.float64)
QUALITY_DTYPE = np.dtype(np.uint16)


class FrameError(ValueError):
    """A frame whose columns do not fit together; raised by :meth:`Frame.check`."""


@dataclass(slots=True)
class Frame:
    """Samples of one source: parallel columns plus the time the batch of them arrived.

    ``text`` is the side column for string/enum tags: an object array aligned with the
    other columns (None where the sample is numeric), present only when needed.
    """

    tag: np.ndarray
    time: np.ndarray
    value: np.ndarray
    quality: np.ndarray
    received: int = 0
    text: np.ndarray | None = field(default=None)

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
        return Frame(
            self.tag[index],
            self.time[index],
            self.value[index],
            self.quality[index],
            self.received,
            None if self.text is None else self.text[index],
        )

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
        if self.text is not None and (self.text.ndim != 1 or self.text.shape[0] != n):
            raise FrameError(f"text column must be 1-D with {n} rows")
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
    text: np.ndarray | None = None
    if any(f.text is not None for f in frames):
        text = np.concatenate(
            [f.text if f.text is not None else np.full(len(f), None, object) for f in frames]
        )
    return Frame(
        np.concatenate([f.tag for f in frames]),
        np.concatenate([f.time for f in frames]),
        np.concatenate([f.value for f in frames]),
        np.concatenate([f.quality for f in frames]),
        max(f.received for f in frames),
        text,
    )
