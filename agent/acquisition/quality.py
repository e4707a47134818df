"""Sample quality codes, one uint16 per sample.

The layout follows OPC UA's StatusCode severity so that values from OPC UA servers map
without loss and downstream tools can test ``quality >> 14`` alone:

    bits 15-14  severity   00 good, 01 uncertain, 10 bad
    bits 13-8   flags      conditions that combine with any reason (late, replayed, ...)
    bits  7-0   reason     why a sample is not plain good (one code per sample)

Bad samples are kept and flagged rather than dropped, so a dataset can account for every
gap; drops are counted elsewhere with the same reason codes.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

SEVERITY_MASK = 0xC000
FLAG_MASK = 0x3F00
REASON_MASK = 0x00FF

GOOD = 0x0000
UNCERTAIN = 0x4000
BAD = 0x8000


class Reason(IntEnum):
    """Why a sample is not plain good; the low byte of the quality word."""

    NONE = 0
    COMM_ERROR = 1  # connection lost or refused: the gap starts here
    TIMEOUT = 2  # the device did not answer in time
    DEVICE_EXCEPTION = 3  # the device answered with an error (e.g. Modbus exception)
    DECODE_ERROR = 4  # the reply could not be decoded as the configured type
    OUT_OF_RANGE = 5
    SPIKE = 6
    INTERPOLATED = 7
    SOURCE_STATUS = 8  # the source itself reported non-good status
    DENOISED = 9  # value replaced by the wavelet denoiser's estimate
    NO_DATA = 10  # no sample to fill this cell of the resampled grid from: a gap
    NOT_FINITE = 11  # the source sent NaN or an infinity as a value


class Flag(IntEnum):
    """Conditions that combine with any reason; bits 13-8 of the quality word."""

    LATE = 0x0100
    REPLAYED = 0x0200
    CLOCK_UNCERTAIN = 0x0400


def make(severity: int, reason: Reason = Reason.NONE, flags: int = 0) -> int:
    """Compose one quality word; used for constants, not per sample."""
    return (severity & SEVERITY_MASK) | (flags & FLAG_MASK) | int(reason)


def is_good(quality: np.ndarray) -> np.ndarray:
    """Vectorised good-severity test over a quality column."""
    return np.asarray((quality & SEVERITY_MASK) == GOOD)


_REASON_NAMES = {int(reason): reason.name.lower() for reason in Reason}


def reason_name(reason: int) -> str:
    """Lower-case name of a reason code, or ``reasonN`` for one this version doesn't know."""
    return _REASON_NAMES.get(reason, f"reason{reason}")


def describe(quality: int) -> str:
    """Human-readable form for logs and reports, e.g. ``bad:timeout+late``."""
    severity = {GOOD: "good", UNCERTAIN: "uncertain", BAD: "bad"}.get(
        quality & SEVERITY_MASK, "invalid"
    )
    parts = [severity]
    reason = quality & REASON_MASK
    if reason:
        parts.append(reason_name(reason))
    text = ":".join(parts)
    flags = [flag.name.lower() for flag in Flag if quality & flag]
    return "+".join([text, *flags])
