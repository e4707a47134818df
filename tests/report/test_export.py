"""Acceptance 3 of issue 16: ``edge-agent export`` against the source dataset.

The synthetic dataset's devices report known functions of time on exact ticks, so every
cell of the wide table has a known value: linear signals interpolate exactly, the 1 s
counter is held, the press source's 3 s outage and the out-of-range torque sample are
empty cells, or, with ``--max-gap``, filled cells flagged as such.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from agent.commands.cli import main
from tests.report.conftest import OUTAGE, SECONDS, T0, Synthetic, synthetic_value

S = 1_000_000_000
PERIOD = 100_000_000
GRID = T0 + np.arange(SECONDS * 10, dtype=np.int64) * PERIOD
OUTAGE_FROM, OUTAGE_TO = OUTAGE
IN_OUTAGE = (GRID >= OUTAGE_FROM) & (GRID < OUTAGE_TO)


def export(store: Path, out: Path, *args: str) -> Path:
    assert main(["export", str(store), "--out", str(out), "--period", "100ms", *args]) == 0
    return out


def column(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy(zero_copy_only=False).astype(np.float64)


def test_values_are_on_the_grid_in_si_units_with_gaps_left_empty(
    synthetic: Synthetic, tmp_path: Path
) -> None:
    out = export(synthetic.store, tmp_path / "out")
    table = pq.read_table(out / "data.parquet")
    assert table["time"].cast("int64").to_numpy().tolist() == GRID.tolist()
    assert table.column_names == ["time", *sorted(synthetic.lineage)]

    length = column(table, "press/length")  # inches on the device, mm stored, m exported
    truth = synthetic_value("press", "length", GRID) * 0.0254
    np.testing.assert_allclose(length[~IN_OUTAGE], truth[~IN_OUTAGE], rtol=1e-12)
    assert np.isnan(length[IN_OUTAGE]).all(), "the outage: 30 empty cells, nothing invented"
    temp = column(table, "press/temp")  # degC -> K
    truth = synthetic_value("press", "temp", GRID) + 273.15
    np.testing.assert_allclose(temp[~IN_OUTAGE], truth[~IN_OUTAGE], rtol=1e-12)
    speed = column(table, "line/speed")  # rpm at 200 ms -> rad/s, interpolated in between
    truth = synthetic_value("line", "speed", GRID) * math.pi / 30
    np.testing.assert_allclose(speed[:-1], truth[:-1], rtol=1e-12)
    assert np.isnan(speed[-1]), "past its last sample (59.8 s) a linear tag has no value"
    count = column(table, "press/count")  # 1 s, held: each cell the last count before it
    last_sample = np.where(IN_OUTAGE, T0 + 19 * S, GRID // S * S)
    held = synthetic_value("press", "count", last_sample)
    hold_ok = ~((GRID > T0 + 19 * S + 1_500_000_000) & (GRID < OUTAGE_TO))
    np.testing.assert_array_equal(count[hold_ok], held[hold_ok])
    assert np.isnan(count[~hold_ok]).all(), "held 1.5 s past its last sample, no longer"
    torque = column(table, "press/torque")
    at_40 = GRID == T0 + 40 * S
    assert np.isnan(torque[at_40]).all(), "the out-of-range sample is bad: a gap"
    level = column(table, "scada/level")  # %, on change: held, unit kept (not in the table)
    np.testing.assert_array_equal(level, synthetic_value("scada", "level", GRID // S * S))

    card = json.loads((out / "datacard.json").read_text())
    tags = {tag["column"]: tag for tag in card["tags"]}
    assert set(tags) == set(synthetic.lineage)
    for name, tag in tags.items():
        assert tag["lineage"] == synthetic.lineage[name], "every tag with its lineage"
    assert tags["press/length"]["unit"] == "m"
    assert tags["press/length"]["unit_conversion"] == {
        "from": "mm",
        "to": "m",
        "factor": pytest.approx(1e-3),
        "offset": 0.0,
    }
    assert tags["press/length"]["lineage"]["source_unit"] == "in", "the edge's conversion"
    assert tags["press/length"]["description"] == "part length at the gauge"
    assert tags["press/temp"]["unit_conversion"]["offset"] == pytest.approx(273.15)
    assert tags["scada/level"]["unit_conversion"] is None
    assert (tags["scada/level"]["method"], tags["press/count"]["method"]) == (
        "previous",
        "previous",
    )
    assert tags["press/length"]["cells"] == {
        "total": GRID.size,
        "with_value": GRID.size - 30,
        "filled": 0,
        "empty": 30,
    }
    assert tags["press/length"]["quality"]["completeness"] == pytest.approx(0.95)
    assert card["sampling"]["period"] == "100ms"
    assert card["dataset"]["gateways"] == ["syn-gw"]
    assert [c["config_hash"] for c in card["dataset"]["configs"]] != []
    markdown = (out / "DATACARD.md").read_text()
    for name in synthetic.lineage:
        assert f"`{name}`" in markdown


def test_gaps_up_to_max_gap_are_filled_and_flagged(synthetic: Synthetic, tmp_path: Path) -> None:
    out = export(synthetic.store, tmp_path / "out", "--max-gap", "5s")
    table = pq.read_table(out / "data.parquet")
    length, filled = column(table, "press/length"), table["press/length:filled"].to_numpy()
    truth = synthetic_value("press", "length", GRID) * 0.0254
    np.testing.assert_allclose(length, truth, rtol=1e-12)  # linear: the fill is exact here
    np.testing.assert_array_equal(filled, IN_OUTAGE)
    torque_filled = table["press/torque:filled"].to_numpy()
    np.testing.assert_array_equal(torque_filled, IN_OUTAGE | (GRID == T0 + 40 * S))
    assert not table["line/speed:filled"].to_numpy().any()
    card = json.loads((out / "datacard.json").read_text())
    tags = {tag["column"]: tag for tag in card["tags"]}
    assert tags["press/length"]["cells"]["filled"] == 30
    assert tags["press/length"]["filled_column"] == "press/length:filled"


@pytest.mark.parametrize("method", ["zscore", "minmax"])
def test_normalisation_parameters_are_written_and_applied(
    synthetic: Synthetic, tmp_path: Path, method: str
) -> None:
    plain = pq.read_table(export(synthetic.store, tmp_path / "plain") / "data.parquet")
    out = export(synthetic.store, tmp_path / "scaled", "--normalize", method)
    scaled = pq.read_table(out / "data.parquet")
    parameters = json.loads((out / "normalization.json").read_text())
    card = json.loads((out / "datacard.json").read_text())
    assert parameters["method"] == method
    for name in synthetic.lineage:
        values = column(plain, name)
        expected = (
            (np.nanmean(values), np.nanstd(values))
            if method == "zscore"
            else (np.nanmin(values), np.nanmax(values) - np.nanmin(values))
        )
        got = parameters["columns"][name]
        assert (got["offset"], got["scale"]) == pytest.approx(expected, rel=1e-9)
        tag = next(t for t in card["tags"] if t["column"] == name)
        assert tag["normalization"] == got
        result = column(scaled, name)
        np.testing.assert_allclose(result, (values - got["offset"]) / got["scale"], rtol=1e-12)
        if method == "minmax":
            assert (np.nanmin(result), np.nanmax(result)) == pytest.approx((0.0, 1.0))
    assert not list(out.glob(".*")), "no temporary file left behind"


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_the_same_input_gives_byte_identical_output(
    synthetic: Synthetic, tmp_path: Path, fmt: str
) -> None:
    args = ("--format", fmt, "--max-gap", "2s", "--normalize", "zscore")
    first = export(synthetic.store, tmp_path / "first", *args)
    second = export(synthetic.store, tmp_path / "second", *args)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(["DATACARD.md", "datacard.json", "normalization.json", f"data.{fmt}"])
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_the_csv_holds_the_same_values_as_the_parquet(synthetic: Synthetic, tmp_path: Path) -> None:
    parquet = pq.read_table(export(synthetic.store, tmp_path / "p") / "data.parquet")
    csv_out = export(synthetic.store, tmp_path / "c", "--format", "csv")
    text = (csv_out / "data.csv").read_text().splitlines()
    assert text[0].split(",")[:3] == ['"time"', '"line/speed"', '"press/count"']
    assert text[1].startswith("2026-09-21 14:13:20.000000000Z,")
    table = pacsv.read_csv(csv_out / "data.csv")
    for name in synthetic.lineage:
        np.testing.assert_array_equal(column(table, name), column(parquet, name))


def test_from_to_and_tags_select_the_grid(synthetic: Synthetic, tmp_path: Path) -> None:
    out = export(
        synthetic.store,
        tmp_path / "out",
        "--from",
        "2026-09-21T14:13:30Z",
        "--to",
        "2026-09-21T14:13:35Z",
        "--tags",
        "press/len*",
    )
    table = pq.read_table(out / "data.parquet")
    assert table.column_names == ["time", "press/length"]
    assert table.num_rows == 50
    assert table["time"].cast("int64")[0].as_py() == T0 + 10 * S


def test_nothing_to_export_is_said_not_written(synthetic: Synthetic, tmp_path: Path) -> None:
    assert main(["export", str(synthetic.store), "--out", str(tmp_path), "--tags", "nope/*"]) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-gap", "10m"], "--period 100ms with gaps bridged up to 10m: the period plus"),
        (["--period", "soon"], "--period: expected a duration string"),
        (["--normalize", "max"], "invalid choice: 'max'"),
    ],
)
def test_an_export_it_cannot_make_exits_2_and_writes_nothing(
    synthetic: Synthetic,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "out"
    with_period = [] if "--period" in args else ["--period", "100ms"]
    try:
        status = main(["export", str(synthetic.store), "--out", str(out), *with_period, *args])
    except SystemExit as exit:  # argparse refuses a choice itself
        status = exit.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
