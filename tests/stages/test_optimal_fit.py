"""The benchmark's optimal door is the true minimum, and the doors it is compared with."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest


def _load() -> ModuleType:
    """bench/ is scripts, not a package: load the module from its file."""
    path = Path(__file__).resolve().parents[2] / "bench" / "bench_door.py"
    spec = importlib.util.spec_from_file_location("bench_door", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


door = _load()


def brute_force(t: np.ndarray, v: np.ndarray, deviation: float) -> int:
    """The fewest kept samples within the deviation, trying every subset by size."""
    n = t.shape[0]
    inner = range(1, n - 1)
    for size in range(n - 1):
        for middle in itertools.combinations(inner, size):
            kept = np.array([0, *middle, n - 1])
            if door.max_error(t, v, kept) <= deviation:
                return size + 2
    return n


def random_series(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Irregular times, a random walk on a trend; continuous values, so no exact ties."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.integers(1, 10**9, n)).astype(np.int64)
    v = np.cumsum(rng.normal(0, 1, n)) + rng.normal(0, 3) * np.arange(n)
    return t, v, float(rng.uniform(0.05, 2.0))


@pytest.mark.parametrize("seed", range(150))
def test_shortest_path_equals_brute_force_on_small_series(seed: int) -> None:
    t, v, deviation = random_series(seed, 3 + seed % 7)
    kept = door.optimal(t, v, deviation)
    assert kept[0] == 0
    assert kept[-1] == t.shape[0] - 1
    assert (np.diff(kept) > 0).all()
    assert door.max_error(t, v, kept) <= deviation
    assert kept.shape[0] == brute_force(t, v, deviation)


@pytest.mark.parametrize("seed", range(10))
def test_no_door_within_the_deviation_keeps_fewer_than_the_optimum(seed: int) -> None:
    t, v, deviation = random_series(seed, 400)
    best, ours = door.optimal(t, v, deviation), door.ours(t, v, deviation)
    assert door.max_error(t, v, ours) <= deviation * (1 + 1e-12)
    assert best.shape[0] <= ours.shape[0]


def test_textbook_door_archives_the_previous_sample_beyond_the_bound() -> None:
    t = np.arange(4, dtype=np.int64) * 10**9
    v = np.array([0.0, 1.8, 1.0, -5.0])
    # the doors stay open at 1.0 but its chord from 0.0 misses 1.8 by 1.3; -5.0 shuts them
    assert door.textbook(t, v, 1.0).tolist() == [0, 2, 3]
    assert door.max_error(t, v, door.textbook(t, v, 1.0)) == pytest.approx(1.3)
    assert door.max_error(t, v, door.optimal(t, v, 1.0)) <= 1.0


def test_noise_estimate_ignores_curvature_and_steps() -> None:
    k = np.arange(6000)
    rng = np.random.default_rng(3)
    sine = 40 * np.sin(2 * np.pi * k / 80)  # the Z axis: 80 samples per period
    steps = np.repeat(np.arange(60.0), 100)
    assert door.noise_sigma(sine + steps) < 0.01
    assert door.noise_sigma(sine + rng.normal(0, 0.3, k.shape[0])) == pytest.approx(0.3, rel=0.1)
