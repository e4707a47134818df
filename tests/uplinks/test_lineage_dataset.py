"""A stored dataset names each batch's lineage by digest: DuckDB, a pyarrow dataset and the
report all get every batch's lineage back, through the records kept in ``_lineage``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from agent.acquisition.frame import Frame
from agent.config.model import ParquetUplinkConfig
from agent.report.dataset import DatasetReader, Selection
from agent.store.spool import Spool
from agent.uplinks.parquet import ParquetUplink
from agent.windows.batch import Batch, Batcher, TagTable
from protocols._template.driver import TemplateSourceConfig

S = 1_000_000_000
T0 = 1_700_000_000 * S


def batches(unit: str, first_window: int, windows: int) -> list[Batch]:
    """One-second batches of two tags; config ``unit`` for tag a; text in odd windows."""
    source = TemplateSourceConfig(
        name="wave",
        tags=[{"name": "a", "rate": "100ms", "unit": unit}, {"name": "b", "rate": "100ms"}],
    )
    batcher = Batcher(TagTable([source]), S, 0, "gw1", f"config-{unit}")
    for window in range(first_window, first_window + windows):
        times = T0 + window * S + np.tile(np.arange(10, dtype=np.int64) * S // 10, 2)
        tags = np.repeat(np.arange(2, dtype=np.int32), 10)
        text = np.full(20, None, object)
        if window % 2:
            text[10:] = "OPEN"
        frame = Frame(tags, times, np.arange(20.0) + window, np.zeros(20, np.uint16), 0, text)
        batcher.add(0, frame)
    return batcher.flush()


async def store_through_the_spool(made: list[Batch], tmp_path: Path) -> Path:
    """The agent's path: spool commit (encoded bytes), spool read, parquet uplink."""
    spool = Spool(tmp_path / "state" / "spool.sqlite", ["parquet"])
    spool.commit_batches(made, made[-1].window_end_ns)
    uplink = ParquetUplink(ParquetUplinkConfig(path=str(tmp_path / "store")))
    for item in spool.pending("parquet", limit=100):
        await uplink.send(spool.batch(item.seq))
    spool.close()
    return tmp_path / "store"


def lineage_by_batch(made: list[Batch]) -> dict[str, dict[str, Any]]:
    return {
        b.batch_id: json.loads(b.table.schema.metadata[b"edge_agent.tags"])  # type: ignore[index]
        for b in made
    }


async def test_every_batch_lineage_comes_back_through_duckdb_pyarrow_and_the_report(
    tmp_path: Path,
) -> None:
    made = batches("V", 0, 4) + batches("mV", 4, 4)  # a config change: two lineages
    root = await store_through_the_spool(made, tmp_path)
    expected = lineage_by_batch(made)
    assert expected[made[0].batch_id]["wave/a"]["unit"] == "V"
    assert expected[made[-1].batch_id]["wave/a"]["unit"] == "mV"
    files = sorted(root.rglob("*.parquet"))
    assert len(files) == 8

    # the files name the lineage, they do not repeat it; each record once, named by its hash
    for path in files:
        stored = pq.read_metadata(path).metadata
        assert b"edge_agent.tags" not in stored
        assert b"edge_agent.lineage" in stored
    records = {p.stem: p.read_text() for p in (root / "_lineage").glob("*.json")}
    assert len(records) == 2
    for digest, text in records.items():
        assert hashlib.sha256(text.encode()).hexdigest().startswith(digest)

    # DuckDB: the digest from each file's key-value metadata, the record by file name
    glob, lineage_glob = f"{root}/**/*.parquet", f"{root}/_lineage/*.json"
    rows = duckdb.sql(
        f"""
        WITH kv AS (
            SELECT file_name, decode(key) AS key, decode(value) AS value
            FROM parquet_kv_metadata('{glob}')
        ),
        records AS (
            SELECT regexp_extract(filename, '([0-9a-f]+)\\.json$', 1) AS digest, content
            FROM read_text('{lineage_glob}')
        )
        SELECT ids.value AS batch_id, records.content
        FROM kv AS ids
        JOIN kv AS refs ON refs.file_name = ids.file_name AND refs.key = 'edge_agent.lineage'
        JOIN records ON records.digest = refs.value
        WHERE ids.key = 'edge_agent.batch_id'
        """
    ).fetchall()
    assert {batch_id: json.loads(content) for batch_id, content in rows} == expected
    assert len(rows) == len(files)
    # and the samples, every column, read as DuckDB reads by default (the first file's
    # schema, which has no text value, but the text column: every file has every column)
    texts = duckdb.sql(f"SELECT count(*), count(text) FROM read_parquet('{glob}')").fetchall()
    assert texts == [(sum(b.points for b in made), 4 * 10)]

    # a pyarrow dataset: the digest from each fragment's file metadata
    dataset = ds.dataset(root, format="parquet", partitioning="hive")  # schema inferred
    got = {}
    for fragment in dataset.get_fragments():
        stored = fragment.metadata.metadata
        digest = stored[b"edge_agent.lineage"].decode()
        got[stored[b"edge_agent.batch_id"].decode()] = json.loads(records[digest])
    assert got == expected
    table = dataset.to_table()
    assert table.num_rows == sum(b.points for b in made)
    assert table["text"].to_pylist().count("OPEN") == 4 * 10

    # the report's reader resolves the digests on its own
    footers = {
        Path(s.footer.path).stem: json.loads(s.footer.lineage)
        for s in DatasetReader(root, Selection())
    }
    assert footers == expected


async def test_a_damaged_or_lost_record_leaves_its_batches_without_lineage_not_unread(
    tmp_path: Path,
) -> None:
    """Bit rot in a record (bytes flipped, not even UTF-8) or a record deleted: the report
    reads every batch and its samples; only the lineage of the batches naming that record
    is missing, never a wrong one."""
    made = batches("V", 0, 4) + batches("mV", 4, 4)
    root = await store_through_the_spool(made, tmp_path)
    expected = lineage_by_batch(made)
    records = sorted((root / "_lineage").glob("*.json"))
    damaged = records[0]
    damaged.write_bytes(b"\xff\xfe" + damaged.read_bytes()[2:])
    rotten = damaged.stem
    stored = list(DatasetReader(root, Selection(), columns=["tag", "value"]))
    assert len(stored) == len(made), "every batch read"
    assert sum(s.table.num_rows for s in stored if s.table is not None) == sum(
        b.points for b in made
    )
    for s in stored:
        digest = pq.read_metadata(s.footer.path).metadata[b"edge_agent.lineage"].decode()
        lineage = json.loads(s.footer.lineage)
        if digest == rotten:
            assert lineage == {}, "no lineage rather than a wrong one"
        else:
            assert lineage == expected[Path(s.footer.path).stem]

    records[1].unlink()  # and a record lost altogether
    footers = [s.footer for s in DatasetReader(root, Selection())]
    assert len(footers) == len(made)
    assert all(json.loads(f.lineage) == {} for f in footers)
