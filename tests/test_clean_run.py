"""Acceptance 4 of issue 14: a clean 30 s demo run is 100.0 % complete, with no empty batch.

The real demo (Modbus PLC, OPC UA CNC, and MQTT SCADA where a broker can run) writes a
Parquet dataset; ``edge-agent report`` must then show every tag owed per rate, and every
source, at 100.00 % (a polled one complete, a subscribed or published one with its session
up all along), and no file of the dataset may be a 0-row batch with empty lineage.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from agent.commands.cli import main
from agent.report.dataset import Selection
from agent.report.figures import compute, source_rows, tag_rows
from agent.store.encoding import decode
from agent.store.lineage import record_path

_TAG_LINE = re.compile(r"^(\S+/\S+)\s+(\d+)\s+([\d.]+|-)\s+(\d+)\s+(\S+)\s+(\S+)$")
_SOURCE_LINE = re.compile(r"^source (\S+): (complete|session up) (\S+);")


@pytest.mark.slow
def test_a_clean_30s_demo_run_is_complete_and_has_no_empty_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    assert main(["demo", "--duration", "30", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    report_text = capsys.readouterr().out

    tags = [m.groups() for line in report_text.splitlines() if (m := _TAG_LINE.match(line))]
    owed = [tag for tag in tags if tag[4] != "-"]
    assert {tag[0].split("/")[0] for tag in owed} >= {"plc1"}, "polled tags are owed"
    assert len(owed) >= 20
    for name, received, expected, _, complete, _ in owed:
        assert complete == "100.00%", f"{name}: {received} of {expected}"
        assert int(received) >= 290, f"{name}: about 30 s at 10 a second"
    report = compute(out, Selection())
    tag_figures = tag_rows(report)
    source_figures = {row.name: row for row in source_rows(report, tag_figures)}
    sources = {
        m.group(1): m.group(2, 3)
        for line in report_text.splitlines()
        if (m := _SOURCE_LINE.match(line))
    }
    assert set(sources) == set(source_figures), "a line per source, each with its figure"
    assert sources["plc1"] == ("complete", "100.00%")
    assert sources["cnc1"] == ("session up", "100.00%"), "subscribed: owes no count"
    assert {figure for _, figure in sources.values()} == {"100.00%"}, sources
    assert report.footers.without_figures == 0
    assert source_figures["plc1"].completeness == 1.0

    files = sorted(out.rglob("*.parquet"))
    assert len(files) >= 29
    for path in files:
        records = {}  # the records the file names, in the dataset's _lineage folder
        for record in (out / "_lineage").glob("*.json"):
            records[record.stem] = record.read_text()
        metadata = decode(path.read_bytes(), records.get).schema.metadata
        assert pq.ParquetFile(path).metadata.num_rows > 0, f"{path.name}: a 0-row batch"
        assert json.loads(metadata[b"edge_agent.tags"]), f"{path.name}: empty lineage"
        figures = json.loads(metadata[b"edge_agent.quality"])
        assert figures["span_ns"] > 0
    digest = ds.dataset(out, partitioning="hive").schema.metadata[b"edge_agent.lineage"].decode()
    lineage = json.loads((out / record_path(digest)).read_text())
    assert lineage, "the dataset's schema: a real batch's lineage, not an empty one's"
    assert set(lineage) <= {t.name for t in tag_figures}, "of tags the report knows"
