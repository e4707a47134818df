"""Wavelet denoising of block signals (vibration waveforms), with PyWavelets.

Each frame's samples of a tag are one block (a waveform read in one go) and are denoised
on their own: decompose, shrink the detail coefficients, reconstruct. The noise level is
estimated from the finest details (sigma = MAD / 0.6745, robust to the signal itself); the
threshold is the universal rule ``sigma * sqrt(2 ln n)`` (VisuShrink) or the minimax rule,
applied soft (default, no artefacts at the threshold) or hard. Denoised samples keep their
severity and get the DENOISED reason unless they already carry one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pywt

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame, concat
from agent.config.model import DenoiseConfig
from agent.stages.base import TagStage, usable

MAX_AUTO_LEVEL = 4
"""Automatic levels stop here: deeper levels shrink the signal's own bands (soft bias)."""


def threshold(details: np.ndarray, n: int, rule: str) -> float:
    sigma = float(np.median(np.abs(details))) / 0.6745
    if rule == "minimax":
        return sigma * (0.3936 + 0.1829 * math.log2(n)) if n > 32 else 0.0
    return sigma * math.sqrt(2 * math.log(n))


def denoise(values: np.ndarray, config: DenoiseConfig) -> np.ndarray | None:
    """The denoised block, or None if it is too short for one decomposition level."""
    wavelet = pywt.Wavelet(config.wavelet)
    deepest = pywt.dwt_max_level(values.shape[0], wavelet.dec_len)
    level = min(config.level or MAX_AUTO_LEVEL, deepest)
    if level < 1:
        return None
    coeffs = pywt.wavedec(values, wavelet, level=level)
    limit = threshold(coeffs[-1], values.shape[0], config.rule)
    shrunk = [coeffs[0], *(pywt.threshold(c, limit, mode=config.mode) for c in coeffs[1:])]
    return np.asarray(pywt.waverec(shrunk, wavelet)[: values.shape[0]])


class DenoiseStage(TagStage):
    name = "denoise"

    def __init__(self, configs: Sequence[DenoiseConfig | None]) -> None:
        super().__init__([c is not None for c in configs])
        self.configs = configs

    def apply(self, frame: Frame) -> Frame:
        ok = usable(frame)
        if not ok.any():
            return frame
        parts = [frame.take(~ok)]
        frame = frame.take(ok)
        order = np.lexsort((frame.time, frame.tag))
        frame = frame.take(order)
        tags, starts = np.unique(frame.tag, return_index=True)
        for tag, rows in zip(
            tags.tolist(), np.split(np.arange(len(frame)), starts[1:]), strict=True
        ):
            config = self.configs[tag]
            assert config is not None  # only active tags reach apply
            block = frame.take(rows)
            parts.append(block)
            smooth = denoise(block.value, config)
            if smooth is None:
                continue
            block.value = smooth
            reason = block.quality & q.REASON_MASK
            block.quality = np.where(
                reason == 0, block.quality | q.Reason.DENOISED, block.quality
            ).astype(np.uint16)
        return concat(parts)
