"""The parquet uplink on S3-compatible storage: moto's server, started by the test."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
import pytest
from pydantic import ValidationError

from agent.config.model import MqttUplinkConfig, ParquetUplinkConfig
from agent.uplinks import make_uplink
from agent.uplinks.mqtt import MqttUplink
from agent.uplinks.parquet import DATASET_SCHEMA, ParquetUplink
from simulators.mqtt_broker import PrivateBroker
from tests.uplinks.conftest import S3Server
from tests.uplinks.helpers import (
    canonical,
    collect_config,
    make_batches,
    running,
    samples_of,
    wait_for,
)


def s3_store(s3: S3Server, tmp_path: Path) -> dict[str, object]:
    """Keys from a file (access) and the environment (secret), as in a plant."""
    access = tmp_path / "access-key"
    access.write_text(s3.access_key + "\n")
    return {
        "type": "parquet",
        "path": f"s3://{s3.bucket}/plant-a",
        "endpoint": s3.endpoint,
        "region": "us-east-1",
        "access_key_file": str(access),
        "secret_key_env": "EDGE_TEST_S3_SECRET",
    }


def stored(s3: S3Server) -> ds.Dataset:
    return ds.dataset(
        f"{s3.bucket}/plant-a",
        filesystem=s3.filesystem(),
        format="parquet",
        partitioning="hive",
        schema=DATASET_SCHEMA,
    )


async def test_batches_land_once_per_batch_id_in_the_bucket(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_TEST_S3_SECRET", s3_server.secret_key)
    batches = make_batches(windows=3)
    uplink = make_uplink(ParquetUplinkConfig.model_validate(s3_store(s3_server, tmp_path)))
    assert isinstance(uplink, ParquetUplink)
    for batch in batches:
        await uplink.send(batch)
    await uplink.send(batches[0])  # same key again: replaced, not added
    dataset = stored(s3_server)
    assert sorted(dataset.files) == sorted(
        f"{s3_server.bucket}/plant-a/gateway=gw1/date=2023-11-14/{b.batch_id}.parquet"
        for b in batches
    )
    assert canonical(dataset.to_table()).equals(samples_of(batches))


async def test_a_refused_write_raises_and_writes_nothing(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_TEST_S3_SECRET", s3_server.secret_key)
    uplink = make_uplink(ParquetUplinkConfig.model_validate(s3_store(s3_server, tmp_path)))
    # moto accepts any key pair; a bucket that does not exist is what it refuses
    bad = ParquetUplink(
        ParquetUplinkConfig.model_validate(
            {**s3_store(s3_server, tmp_path), "path": "s3://no-such-bucket/x"}
        )
    )
    with pytest.raises(OSError, match="no-such-bucket"):
        await bad.send(make_batches(windows=1)[0])
    await uplink.send(make_batches(windows=1)[0])
    assert len(stored(s3_server).files) == 1


async def test_a_missing_secret_fails_the_send_not_the_start(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGE_TEST_S3_SECRET", raising=False)
    uplink = make_uplink(ParquetUplinkConfig.model_validate(s3_store(s3_server, tmp_path)))
    batch = make_batches(windows=1)[0]
    with pytest.raises(KeyError, match="EDGE_TEST_S3_SECRET"):
        await uplink.send(batch)
    monkeypatch.setenv("EDGE_TEST_S3_SECRET", s3_server.secret_key)
    await uplink.send(batch)  # the retry, once the secret is there
    assert canonical(stored(s3_server).to_table()).equals(samples_of([batch]))


async def test_collect_writes_mqtt_batches_to_s3(
    mqtt_broker: PrivateBroker,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGE_TEST_S3_SECRET", s3_server.secret_key)
    batches = make_batches(windows=3)
    config = collect_config(mqtt_broker.url, s3_store(s3_server, tmp_path), "c1")
    async with running(config) as collector:
        sender = make_uplink(MqttUplinkConfig(url=mqtt_broker.url))
        assert isinstance(sender, MqttUplink)
        for batch in batches:
            await sender.send(batch)
        await wait_for(lambda: collector.batches == len(batches))
        await sender.close()
    assert canonical(stored(s3_server).to_table()).equals(samples_of(batches))


def test_s3_keys_belong_to_an_s3_path_and_come_in_pairs() -> None:
    with pytest.raises(ValidationError, match="for an s3:// path"):
        ParquetUplinkConfig(path="./data", endpoint="http://127.0.0.1:9000")
    with pytest.raises(ValidationError, match="secret key"):
        ParquetUplinkConfig(path="s3://bucket", access_key_env="KEY")
    with pytest.raises(ValidationError, match="names a bucket"):
        ParquetUplinkConfig(path="s3://")
    with pytest.raises(ValidationError, match="endpoint"):
        ParquetUplinkConfig(path="s3://bucket", endpoint="127.0.0.1:9000")
