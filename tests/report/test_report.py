"""``edge-agent report``: the figures against what was injected, and the text, CSV and JSON.

Acceptance 1 of issue 16: the JSON report of a short real run with a dropout and spikes
gives the dropout as a gap (start, length, reason), the bad samples by reason and the
completeness the injected truth implies.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from agent.acquisition import quality as q
from agent.commands.cli import main
from simulators.modbus_plc import POINTS
from tests.conftest import read_store
from tests.report.conftest import OUTAGE, SPIKE, T0, DropoutRun, Synthetic

MS = 1_000_000
S = 1_000_000_000


def report_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["report", *args, "--json", "-"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_json_report_gives_the_injected_dropout_spikes_and_completeness(
    dropout_run: DropoutRun, capsys: pytest.CaptureFixture[str]
) -> None:
    figures = report_json(capsys, str(dropout_run.store))
    stored = read_store(dropout_run.store)
    tags = {tag["name"]: tag for tag in figures["tags"]}
    names = {f"plc1/{point.name}" for point in POINTS}
    assert set(tags) == names

    # the dropout: one gap per tag, from the last sample before the stop to the first after
    # the restart, for the lost connection; nothing else is a gap
    gaps = figures["gaps"]
    assert sorted(g["tag"] for g in gaps) == sorted(names), gaps
    for gap in gaps:
        assert gap["reason"] == "comm_error"
        assert not gap["open"]
        assert dropout_run.stopped_ns - 250 * MS <= gap["start_ns"] <= dropout_run.stopped_ns
        assert dropout_run.restarted_ns <= gap["end_ns"] <= dropout_run.restarted_ns + S
        length = (gap["end_ns"] - gap["start_ns"]) / S
        assert gap["seconds"] == pytest.approx(length, abs=1e-6)
        assert gap["missing"] == pytest.approx(length * 10 - 1, abs=1)
        assert gap["missing"] >= 14, "1.5 s off at 10 samples a second"

    for name, tag in tags.items():
        rows = stored.filter(pc.equal(stored["tag"].cast("string"), name.split("/", 1)[1]))
        quality = rows["quality"].to_numpy()
        reason = quality & q.REASON_MASK
        bad = (quality & q.SEVERITY_MASK) == q.BAD
        # bad samples by reason: as stored
        expected_bad = {
            q.reason_name(int(code)): int(np.count_nonzero(bad & (reason == code)))
            for code in np.unique(reason[bad]).tolist()
        }
        assert tag["bad"] == expected_bad, name
        assert tag["bad"]["comm_error"] == 1, "the gateway's marker of the lost session"
        marker = rows["time"].cast("int64").to_numpy()[bad & (reason == q.Reason.COMM_ERROR)]
        gap = next(g for g in gaps if g["tag"] == name)
        assert gap["start_ns"] <= marker[0] <= gap["end_ns"]
        # completeness: every received sample counted, the dropout's missing
        placeholders = int(np.count_nonzero(bad & np.isin(reason, [1, 2])))
        assert tag["received"] == rows.num_rows - placeholders
        assert tag["points"] == rows.num_rows
        assert tag["completeness"] == pytest.approx(tag["received"] / tag["expected"], abs=1e-4)
        missing = tag["expected"] - tag["received"]
        assert missing == pytest.approx(gap["missing"], abs=2.5), name

    # the spikes: the samples served the held value, flagged by the spike stage, only there
    spindle = stored.filter(pc.equal(stored["tag"].cast("string"), "spindle_speed"))
    held = spindle["value"].to_numpy(zero_copy_only=False) == SPIKE
    times = spindle["time"].cast("int64").to_numpy()[held]
    assert 2 <= held.sum() <= 5, "0.35 s at 10 polls a second"
    assert dropout_run.spike_from_ns <= times.min()
    assert times.max() <= dropout_run.spike_until_ns + 150 * MS
    assert tags["plc1/spindle_speed"]["bad"]["spike"] == held.sum()
    assert all("spike" not in tags[n]["bad"] for n in names - {"plc1/spindle_speed"})

    summary = figures["summary"]
    assert summary["points"] == stored.num_rows
    assert summary["bytes"] == sum(f.stat().st_size for f in dropout_run.store.rglob("*.parquet"))
    assert summary["tags"] == len(POINTS)
    owed = sum(t["expected"] for t in tags.values())
    assert summary["completeness"] == pytest.approx(
        sum(min(t["received"], t["expected"]) for t in tags.values()) / owed, abs=1e-4
    )
    (source,) = figures["sources"]
    assert source["completeness"] == pytest.approx(summary["completeness"], abs=1e-6)
    assert source["latency_p50_ms"] > 0


def test_the_text_table_shows_a_dash_for_what_an_on_change_tag_owes(
    synthetic: Synthetic, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(synthetic.store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    level = next(line for line in lines if line.startswith("scada/level "))
    assert level.split()[1:] == ["60", "-", "60", "-", "100.00%"]
    length = next(line for line in lines if line.startswith("press/length "))
    assert length.split()[1:] == ["570", "600.0", "570", "95.00%", "100.00%"]
    assert "source scada: session up 100.00%;" in "\n".join(lines)


def test_a_single_file_a_time_range_and_tag_globs_select(
    synthetic: Synthetic, capsys: pytest.CaptureFixture[str]
) -> None:
    first = sorted(synthetic.store.rglob("*.parquet"))[0]
    one = report_json(capsys, str(first))
    assert one["summary"]["batches"] == 1
    assert {t["name"]: t["points"] for t in one["tags"]}["press/length"] == 10

    start, end = "2026-09-21T14:13:30Z", "2026-09-21T14:13:40Z"  # T0 + 10 s .. + 20 s
    ranged = report_json(capsys, str(synthetic.store), "--from", start, "--to", end)
    assert ranged["summary"]["batches"] == 10
    assert ranged["summary"]["from_ns"] == T0 + 10 * S
    length = {t["name"]: t for t in ranged["tags"]}["press/length"]
    assert (length["points"], length["received"], length["expected"]) == (100, 100, 100)

    picked = report_json(capsys, str(synthetic.store), "--tags", "press/*", "--tags", "*/speed")
    assert sorted(t["name"] for t in picked["tags"]) == [
        "line/speed",
        "press/count",
        "press/length",
        "press/temp",
        "press/torque",
    ]
    assert {s["name"] for s in picked["sources"]} == {"press", "line"}


def test_the_csv_has_a_row_per_tag_and_a_column_per_reason(
    synthetic: Synthetic, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(synthetic.store), "--csv", "-"]) == 0
    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert set(rows) == set(synthetic.lineage)
    torque = rows["press/torque"]
    assert torque["bad:out_of_range"] == "1", "the sample at 40 s, flagged by the range stage"
    assert torque["bad:comm_error"] == "1"
    assert (torque["gaps"], torque["gap_seconds"]) == ("1", "3.1")
    assert rows["scada/level"]["expected"] == ""
    assert rows["line/speed"]["completeness"] == "1.0"


def test_the_gap_of_a_slow_tag_runs_between_its_samples_and_says_why(
    synthetic: Synthetic, capsys: pytest.CaptureFixture[str]
) -> None:
    figures = report_json(capsys, str(synthetic.store))
    gaps = {g["tag"]: g for g in figures["gaps"]}
    assert set(gaps) == {"press/count", "press/length", "press/temp", "press/torque"}
    count = gaps["press/count"]  # 1 s rate: last sample at 19 s, next at 23 s
    assert (count["start_ns"], count["end_ns"]) == (T0 + 19 * S, OUTAGE[1])
    assert (count["missing"], count["reason"]) == (3, "comm_error")
    length = gaps["press/length"]
    assert (length["start_ns"], length["end_ns"], length["missing"]) == (
        OUTAGE[0] - 100 * MS,
        OUTAGE[1],
        30,
    )


def copy_store(store: Path, target: Path) -> list[Path]:
    """A copy of a dataset; its files, in window order."""
    files = sorted(store.rglob("*.parquet"))
    for path in [*files, *store.glob("_lineage/*.json")]:  # the data and its lineage records
        copied = target / path.relative_to(store)
        copied.parent.mkdir(parents=True, exist_ok=True)
        copied.write_bytes(path.read_bytes())
    return [target / path.relative_to(store) for path in files]


def test_a_gap_while_the_agent_wrote_no_batch_is_not_acquired(
    synthetic: Synthetic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = copy_store(synthetic.store, tmp_path / "data")
    for path in files[40:45]:  # 40 s .. 45 s: the agent was not running
        path.unlink()
    gaps = report_json(capsys, str(tmp_path / "data"))["gaps"]
    absent = [g for g in gaps if g["reason"] == "not_acquired"]
    assert {g["tag"] for g in absent} == {
        "line/speed",
        "press/count",
        "press/length",
        "press/temp",
        "press/torque",
    }, "every tag owing samples; the on-change one owes none"
    length = next(g for g in absent if g["tag"] == "press/length")
    assert (length["start_ns"], length["end_ns"]) == (T0 + 40 * S - 100 * MS, T0 + 45 * S)


def test_a_damaged_file_is_skipped_and_named_not_fatal(
    synthetic: Synthetic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "data"
    files = copy_store(synthetic.store, copy)
    broken = files[5]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    (copy / "notes.parquet").write_bytes(b"not parquet at all")
    figures = report_json(capsys, str(copy))
    skipped = {Path(s["path"]).name for s in figures["summary"]["skipped_files"]}
    assert skipped == {broken.name, "notes.parquet"}
    assert figures["summary"]["batches"] == len(files) - 1
    assert main(["report", str(copy)]) == 0
    assert f"skipped {broken}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "yesterday"], "--from: expected a time such as"),
        (["--from", "2026-09-21T14:14Z", "--to", "2026-09-21T14:13Z"], "is not after --from"),
    ],
)
def test_unusable_arguments_exit_2_with_one_line(
    synthetic: Synthetic, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["report", str(synthetic.store), *args]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_dataset_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
