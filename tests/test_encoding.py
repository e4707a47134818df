"""Batches as bytes (issue 17): the file names its lineage, leaves out what is derived and
keeps every column (one schema for the whole dataset); decoding gives back the batch as it
was; bytes of the earlier encoding (a spool written before the upgrade) still decode; the
spool keeps each record once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agent.acquisition.frame import Frame
from agent.store.encoding import batch_of, decode, encode, lineage_of
from agent.store.spool import Spool
from agent.windows.batch import Batch, Batcher, TagTable
from agent.windows.dataquality import QualityTally
from protocols._template.driver import TemplateSourceConfig

S = 1_000_000_000
T0 = 1_700_000_000 * S


def made(text: bool = False) -> list[Batch]:
    source = TemplateSourceConfig(
        name="dev", tags=[{"name": "x", "rate": "100ms", "unit": "bar"}, {"name": "y"}]
    )
    table = TagTable([source])
    now = [T0]
    tally = QualityTally(table.source_offset, table.tag_source, table.rate_ns, S, lambda: now[0])
    batcher = Batcher(table, S, 0, "gw", "cafe", tally)
    times = T0 + np.arange(20, dtype=np.int64) * S // 10
    words = np.full(20, None, object)
    if text:
        words[::2] = "OPEN"
    frame = Frame(
        np.zeros(20, np.int32), times, np.linspace(0, 1, 20), np.zeros(20, np.uint16), 0, words
    )
    tally.add(0, frame)
    batcher.add(0, frame)
    now[0] = T0 + 3 * S
    return batcher.flush()


def old_encoding(table: pa.Table) -> bytes:
    """How batches were encoded before issue 17: every column, dictionaries, the whole
    metadata (lineage JSON, quality figures, ISO bounds) in the footer."""
    sink = pa.BufferOutputStream()
    plain = table.replace_schema_metadata(None)
    writer = pq.ParquetWriter(
        sink,
        plain.schema,
        store_schema=False,
        compression="zstd",
        use_dictionary=["source", "tag", "quality"],
        column_encoding={"time": "DELTA_BINARY_PACKED"},
        write_statistics=["time"],
    )
    writer.write_table(plain)
    metadata = dict(table.schema.metadata or {})
    metadata.pop(b"edge_agent.lineage")
    writer.add_key_value_metadata({k.decode(): v.decode() for k, v in metadata.items()})
    writer.close()
    return bytes(sink.getvalue())


def test_the_file_names_the_lineage_and_decoding_gives_the_batch_back() -> None:
    batch = made()[0]
    digest, record = lineage_of(batch.table) or ("", "")
    assert digest == hashlib.sha256(record.encode()).hexdigest()[:24]
    data = encode(batch.table)
    stored = pq.ParquetFile(pa.BufferReader(data))
    kv = stored.metadata.metadata
    assert kv[b"edge_agent.lineage"].decode() == digest
    assert not {b"edge_agent.tags", b"edge_agent.quality", b"edge_agent.points"} & set(kv)
    assert stored.schema_arrow.names == batch.table.column_names  # none left out
    group = stored.metadata.row_group(0)
    assert group.column(0).statistics is None
    codecs = {group.column(i).path_in_schema: group.column(i).compression for i in range(8)}
    assert codecs["value"] == "ZSTD"
    assert codecs["text"] == "UNCOMPRESSED"  # all null: a zstd frame would only add bytes

    back = decode(data, {digest: record}.get)
    assert back.schema.metadata == batch.table.schema.metadata
    for name in batch.table.column_names:
        assert back[name].to_pylist() == batch.table[name].to_pylist(), name
    assert back.schema.field("text").type == pa.string()
    again = batch_of(back, data)
    assert (again.batch_id, again.quality) == (batch.batch_id, batch.quality)
    assert again.quality is not None
    assert again.quality["sources"]["dev"]["received"] == 10  # the first of two 1 s windows

    unknown = decode(data)  # a reader without the record still has the digest
    assert unknown.schema.metadata[b"edge_agent.lineage"].decode() == digest
    assert b"edge_agent.tags" not in unknown.schema.metadata
    inline = encode(batch.table, inline_lineage=True)
    assert decode(inline).schema.metadata == batch.table.schema.metadata


def test_a_column_with_values_stays_in_the_file() -> None:
    batch = made(text=True)[0]
    data = encode(batch.table)
    assert "text" in pq.ParquetFile(pa.BufferReader(data)).schema_arrow.names
    assert decode(data)["text"].to_pylist() == batch.table["text"].to_pylist()


def test_bytes_of_the_earlier_encoding_decode_to_the_same_batch() -> None:
    batch = made()[0]
    back = decode(old_encoding(batch.table))
    assert back.schema.metadata == batch.table.schema.metadata
    for name in batch.table.column_names:
        assert back[name].to_pylist() == batch.table[name].to_pylist(), name


def test_the_spool_keeps_each_record_once_and_puts_it_back(tmp_path: Path) -> None:
    batches = made()
    assert len(batches) >= 2
    spool = Spool(tmp_path / "spool.sqlite", ["u"])
    spool.commit_batches(batches, batches[-1].window_end_ns)
    spool.close()
    spool = Spool(tmp_path / "spool.sqlite", ["u"])  # the records outlive the process
    rows = spool.db.execute("SELECT digest, record FROM lineage").fetchall()
    assert len(rows) == 1
    for item, batch in zip(spool.pending("u"), batches, strict=True):
        assert (
            b"edge_agent.tags"
            not in pq.read_metadata(pa.BufferReader(spool.data(item.seq))).metadata
        )
        back = spool.batch(item.seq)
        assert back.table.schema.metadata == batch.table.schema.metadata
        assert json.loads(back.table.schema.metadata[b"edge_agent.tags"]) == {
            "dev/x": {"rate": "100ms", "unit": "bar"}
        }
    spool.close()
