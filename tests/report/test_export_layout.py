"""The export reads the files once, its columns those the lineage read so far names: a
tag that shows up halfway (a reload added it) joins the table then, empty before, and
a change that would alter the cells already written (here, a faster tag lowering the
default period) makes a second pass.

The datasets: the synthetic one's config for 1,000 s (past the export's first two chunks
of 480 s: the first part is written before the tag shows up), then the same config with
one more tag, ``line/feed`` (linear, as ``line/speed``), for 60 s.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from agent.commands.cli import main
from agent.config.load import parse_config
from simulators.dataset import write_dataset
from tests.report.conftest import SYNTHETIC_TOML, T0, synthetic_value

S = 1_000_000_000
HALF = T0 + 1000 * S
END = HALF + 60 * S
ROWS = 10_600  # at 100 ms
OLD_TAGS = ["line/speed", "press/count", "press/length", "press/temp", "press/torque"]


def _store(folder: Path, feed_rate: str) -> Path:
    """The synthetic config, then ``line/feed`` at ``feed_rate`` added halfway."""
    store = folder / "data"
    added = f'  [[sources.tags]]\n  name = "feed"\n  rate = "{feed_rate}"\n'
    before = SYNTHETIC_TOML
    after = SYNTHETIC_TOML.replace('  unit = "rpm"\n', f'  unit = "rpm"\n{added}')
    assert after != before
    for text, start, end in ((before, T0, HALF), (after, HALF, END)):
        loaded = parse_config(tomllib.loads(text), Path("synthetic.toml"))
        config = loaded.config
        write_dataset(
            config.sources,
            synthetic_value,
            store,
            start,
            end,
            window_ns=config.batch.window,
            lateness_ns=config.batch.lateness,
            gateway=config.agent.gateway_id,
            config_hash=loaded.config_hash,
            jitter_ns=0,
        )
    return store


@pytest.fixture(scope="module")
def added_later(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _store(tmp_path_factory.mktemp("added"), "100ms")


@pytest.fixture(scope="module")
def faster_later(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _store(tmp_path_factory.mktemp("faster"), "50ms")


def _export(store: Path, out: Path, *args: str) -> Path:
    assert main(["export", str(store), "--out", str(out), *args]) == 0
    return out


def _column(path: Path, name: str) -> np.ndarray:
    return pq.read_table(path)[name].to_numpy(zero_copy_only=False).astype(np.float64)


def test_a_tag_added_halfway_is_a_column_empty_before(added_later: Path, tmp_path: Path) -> None:
    out = _export(added_later, tmp_path / "all")
    table = pq.read_table(out / "data.parquet")
    assert table.column_names[:3] == ["time", "line/feed", "line/speed"], "sorted by name"
    grid = table["time"].cast("int64").to_numpy()
    assert grid.tolist() == (T0 + np.arange(ROWS) * 100_000_000).tolist()
    feed = _column(out / "data.parquet", "line/feed")
    assert np.isnan(feed[grid < HALF]).all(), "no sample before it was added: empty"
    truth = synthetic_value("line", "feed", grid)
    after = (grid >= HALF) & (grid < END - S)
    np.testing.assert_allclose(feed[after], truth[after], rtol=1e-12)
    assert not np.isnan(feed[after]).any()

    # the columns known from the start hold what they hold without the new one
    without = _export(added_later, tmp_path / "old", "--tags", "press/*", "--tags", "line/speed")
    for name in OLD_TAGS:
        np.testing.assert_array_equal(
            _column(out / "data.parquet", name), _column(without / "data.parquet", name)
        )
    assert not list(out.glob(".*")), "no part left behind"


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_table_in_parts_is_byte_identical_run_to_run(
    added_later: Path, tmp_path: Path, fmt: str
) -> None:
    args = ("--format", fmt, "--max-gap", "2s", "--normalize", "minmax")
    first = _export(added_later, tmp_path / "first", *args)
    second = _export(added_later, tmp_path / "second", *args)
    names = sorted(p.name for p in first.iterdir())
    assert f"data.{fmt}" in names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    if fmt == "parquet":
        feed = _column(first / "data.parquet", "line/feed")
        assert (np.nanmin(feed), np.nanmax(feed)) == pytest.approx((0.0, 1.0))


def test_a_faster_tag_added_later_makes_the_whole_grid_finer(
    faster_later: Path, tmp_path: Path
) -> None:
    out = _export(faster_later, tmp_path / "out")
    table = pq.read_table(out / "data.parquet")
    grid = table["time"].cast("int64").to_numpy()
    assert grid.tolist() == (T0 + np.arange(2 * ROWS) * 50_000_000).tolist(), "50 ms from the start"
    speed = _column(out / "data.parquet", "line/speed")  # 200 ms samples, linear in time
    truth = synthetic_value("line", "speed", grid) * np.pi / 30
    early = grid < HALF
    np.testing.assert_allclose(speed[early], truth[early], rtol=1e-12)
    assert not list(out.glob(".*")), "no part left behind"
