"""Denoise (SNR gain on a seeded noisy sine) and features (against numpy's formulas)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.acquisition import quality as q
from agent.config.model import FEATURES, DenoiseConfig, FeaturesConfig
from agent.stages.denoise import DenoiseStage
from agent.stages.features import FeatureStage
from tests.stages.helpers import T0, by_tag, frame, joined, split

US = 1_000


def snr_db(truth: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(truth**2) / np.mean((estimate - truth) ** 2)))


@pytest.mark.parametrize(
    "config",
    [DenoiseConfig(), DenoiseConfig(wavelet="sym8", rule="minimax"), DenoiseConfig(mode="hard")],
)
def test_denoise_raises_the_snr_of_a_noisy_sine(config: DenoiseConfig) -> None:
    n = 2048  # one block: 2048 samples at 10 kHz
    t = np.arange(n) / 10_000
    truth = np.sin(2 * np.pi * 50 * t) + 0.5 * np.sin(2 * np.pi * 120 * t + 1)
    noisy = truth + np.random.default_rng(7).normal(0, 0.3, n)
    stage = DenoiseStage([config, None])
    other = np.arange(5.0)
    f = frame(
        [0] * n + [1] * 5, [*(T0 + np.arange(n) * 100 * US), *(T0 + np.arange(5))], [*noisy, *other]
    )
    out = stage.process(f)
    _, value, quality = by_tag(out, 0)
    gain = snr_db(truth, value) - snr_db(truth, noisy)
    assert gain >= 6.0, f"{gain:.1f} dB"
    assert (quality == q.make(q.GOOD, q.Reason.DENOISED)).all()
    assert by_tag(out, 1)[1].tolist() == other.tolist(), "other tags pass untouched"


def test_a_block_too_short_to_decompose_is_left_alone() -> None:
    f = frame([0] * 4, T0 + np.arange(4), [1.0, 5.0, 2.0, 7.0])
    out = DenoiseStage([DenoiseConfig()]).process(f)
    assert out.value.tolist() == [1.0, 5.0, 2.0, 7.0]
    assert (out.quality == q.GOOD).all()


def reference(x: np.ndarray) -> list[float]:
    """FEATURES by the textbook formulas."""
    mean = x.mean()
    variance = x.var()
    rms = np.sqrt(np.mean(x**2))
    peak = np.abs(x).max()
    kurtosis = np.mean((x - mean) ** 4) / variance**2
    return [mean, variance, rms, peak, np.ptp(x), peak / rms, kurtosis]


def test_features_match_numpy_per_window_across_frames() -> None:
    rng = np.random.default_rng(8)
    n = 5000
    tags = rng.integers(0, 3, n)
    times = T0 + np.sort(rng.integers(0, 4_000_000_000, n))
    offset = np.array([0.0, 1000.0, -5.0])[tags]  # a large offset tests the shifted sums
    values = offset + rng.standard_t(5, n) * np.array([1.0, 0.01, 3.0])[tags]
    values[::97] = np.nan  # unusable samples are left out
    f = frame(tags, times, values)
    window = 500_000_000
    every = FeaturesConfig.model_validate({"window": "500ms"})
    two = FeaturesConfig.model_validate({"window": "500ms", "stats": ["rms", "kurtosis"]})
    stage = FeatureStage([every, every, two], first_derived=3)
    out = joined([*(stage.process(p) for p in split(f, list(range(0, n, 333)))), stage.flush()])
    assert set(out.tag.tolist()) == set(range(3, 3 + 7 + 7 + 2))
    names = {3 + i: (0, s) for i, s in enumerate(FEATURES)}
    names |= {10 + i: (1, s) for i, s in enumerate(FEATURES)}
    names |= {17: (2, "rms"), 18: (2, "kurtosis")}
    for derived, (tag, stat) in names.items():
        t, v, quality = by_tag(out, derived)
        mine = (tags == tag) & np.isfinite(values)
        windows = np.unique(times[mine] // window)
        assert t.tolist() == (windows * window).tolist(), "one sample per window, at its start"
        expected = [reference(values[mine & (times // window == w)]) for w in windows]
        column = [row[FEATURES.index(stat)] for row in expected]
        assert v == pytest.approx(column, rel=1e-7), (tag, stat)
        assert (quality == q.GOOD).all()
