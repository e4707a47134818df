"""The mqtt uplink and ``edge-agent collect`` into a Parquet store, through a real broker."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.config.model import MqttUplinkConfig
from agent.report.dataset import DatasetReader, Selection
from agent.store.encoding import MEDIA_TYPE, decode, encode
from agent.uplinks import make_uplink
from agent.uplinks.mqtt import BATCH_SCHEMA, MqttUplink
from agent.uplinks.parquet import ParquetUplink
from agent.windows.batch import Batch
from protocols.mqtt.aio import AsyncMqttClient
from protocols.mqtt.session import make_client
from simulators.mqtt_broker import PrivateBroker
from tests.uplinks.helpers import (
    canonical,
    collect_config,
    make_batches,
    running,
    samples_of,
    stored,
    wait_for,
)


def uplink(broker: PrivateBroker, **extra: object) -> MqttUplink:
    config = MqttUplinkConfig.model_validate({"url": broker.url, "publish_timeout": "5s", **extra})
    made = make_uplink(config)
    assert isinstance(made, MqttUplink)
    return made


async def test_every_sample_arrives_once_and_a_resent_batch_is_stored_once(
    mqtt_broker: PrivateBroker, tmp_path: Path
) -> None:
    batches = make_batches(windows=6)
    store = tmp_path / "central"
    config = collect_config(mqtt_broker.url, {"type": "parquet", "path": str(store)}, "c1")
    async with running(config) as collector:
        sender = uplink(mqtt_broker)
        for batch in batches:
            await sender.send(batch)
        await sender.send(batches[2])  # a resend after a lost PUBACK looks like this
        await wait_for(lambda: collector.batches == len(batches) + 1)
        await sender.close()
    dataset = stored(store)
    assert len(dataset.files) == len(batches)
    assert canonical(dataset.to_table()).equals(samples_of(batches))
    assert collector.points == sum(b.points for b in batches) + batches[2].points
    assert collector.malformed == 0


async def test_batches_carry_topic_content_type_and_user_properties(
    mqtt_broker: PrivateBroker,
) -> None:
    received: asyncio.Queue[mqtt.MQTTMessage] = asyncio.Queue()
    listener = AsyncMqttClient(make_client(uplink(mqtt_broker).config, "listener"))
    listener.client.on_message = lambda client, userdata, message: received.put_nowait(message)
    await listener.connect("127.0.0.1", mqtt_broker.port, 10, 5)
    listener.client.subscribe("central/#", qos=1)
    await asyncio.sleep(0.2)
    batch = make_batches(windows=1, gateway="line1-gw01")[0]
    sender = uplink(mqtt_broker, topic_prefix="central")
    await sender.send(batch)
    message = await asyncio.wait_for(received.get(), 5)
    await sender.close()
    await listener.close()
    assert message.topic == "central/line1-gw01/batches"
    assert message.qos == 1
    assert message.properties.ContentType == MEDIA_TYPE
    assert dict(message.properties.UserProperty) == {
        "batch_id": batch.batch_id,
        "gateway_id": "line1-gw01",
        "schema": BATCH_SCHEMA,
        "encoding": "parquet+zstd",
    }
    assert canonical(decode(message.payload)).equals(canonical(batch.table))


async def test_the_lineage_travels_once_per_connection_and_the_collector_keeps_it(
    mqtt_broker: PrivateBroker, tmp_path: Path
) -> None:
    """The first batch of a digest on a connection carries the record, the others only
    name it; after a reconnect the first carries it again; the collector's store keeps
    the record beside the data and its report reads every batch's lineage."""
    received: asyncio.Queue[mqtt.MQTTMessage] = asyncio.Queue()
    listener = AsyncMqttClient(make_client(uplink(mqtt_broker).config, "listener"))
    listener.client.on_message = lambda client, userdata, message: received.put_nowait(message)
    await listener.connect("127.0.0.1", mqtt_broker.port, 10, 5)
    listener.client.subscribe("edge-agent/#", qos=1)
    await asyncio.sleep(0.2)
    batches = make_batches(windows=4)
    store = tmp_path / "central"
    config = collect_config(mqtt_broker.url, {"type": "parquet", "path": str(store)}, "c1")
    async with running(config) as collector:
        sender = uplink(mqtt_broker)
        for batch in batches[:3]:
            await sender.send(batch)
        await sender.close()  # the next send connects again
        await sender.send(batches[3])
        await sender.close()
        await wait_for(lambda: collector.batches == len(batches))
    payloads = [(await asyncio.wait_for(received.get(), 5)).payload for _ in batches]
    await listener.close()
    inline = [
        b"edge_agent.tags" in (pq.read_metadata(pa.BufferReader(p)).metadata) for p in payloads
    ]
    assert inline == [True, False, False, True]
    records = list((store / "_lineage").glob("*.json"))
    assert len(records) == 1
    expected = batches[0].table.schema.metadata[b"edge_agent.tags"].decode()
    assert records[0].read_text() == expected
    lineages = {s.footer.lineage for s in DatasetReader(store, Selection())}
    assert lineages == {expected}
    assert all(
        b"edge_agent.tags" not in pq.read_metadata(f).metadata for f in store.rglob("*.parquet")
    )


async def test_send_raises_while_the_broker_is_down_and_reconnects_after(
    mqtt_broker: PrivateBroker, tmp_path: Path
) -> None:
    batches = make_batches(windows=2)
    store = tmp_path / "central"
    config = collect_config(mqtt_broker.url, {"type": "parquet", "path": str(store)}, "c1")
    sender = uplink(mqtt_broker, connect_timeout="1s")
    await sender.send(batches[0])  # queued for nobody: connects the uplink
    await mqtt_broker.stop()
    with pytest.raises(ConnectionError):
        await sender.send(batches[1])
    await mqtt_broker.start()
    async with running(config) as collector:
        await sender.send(batches[1])
        await wait_for(lambda: collector.batches == 1)
    await sender.close()
    assert canonical(stored(store).to_table()).equals(samples_of(batches[1:]))


@pytest.mark.parametrize("group", ["", "g"])
async def test_collector_reconnects_after_a_broker_restart(
    group: str, mqtt_broker: PrivateBroker, tmp_path: Path
) -> None:
    """Unshared (``""``), the collector's persistent session also keeps what was published
    while it was away. In a share group, mosquitto drops what is published while no member
    is connected (the README says so), so there the batches after its return are checked."""
    batches = make_batches(windows=4)
    store = tmp_path / "central"
    config = collect_config(mqtt_broker.url, {"type": "parquet", "path": str(store)}, "c1")
    config = config.model_copy(
        update={"broker": config.broker.model_copy(update={"shared_group": group})}
    )
    async with running(config) as collector:
        sender = uplink(mqtt_broker)
        await sender.send(batches[0])
        await wait_for(lambda: collector.batches == 1)
        await mqtt_broker.restart()  # the collector's session survives (broker persistence)
        if group:
            await wait_for(lambda: collector.sessions == 2)
        await sender.send(batches[1])  # the uplink reconnects by itself on this send
        await sender.send(batches[2])
        await wait_for(lambda: collector.sessions == 2)
        await sender.send(batches[3])
        await wait_for(lambda: collector.batches == 4)
        await sender.close()
    assert canonical(stored(store).to_table()).equals(samples_of(batches))


async def test_two_collectors_sharing_the_subscription_split_the_load(
    mqtt_broker: PrivateBroker, tmp_path: Path
) -> None:
    batches = make_batches(windows=6, gateway="gw1") + make_batches(windows=6, gateway="gw2")
    store = {"type": "parquet", "path": str(tmp_path / "central")}
    first = collect_config(mqtt_broker.url, store, "c1")
    second = collect_config(mqtt_broker.url, store, "c2")
    async with running(first) as one, running(second) as two:
        sender = uplink(mqtt_broker)
        for batch in batches:
            await sender.send(batch)
        await wait_for(lambda: one.batches + two.batches == len(batches))
        await asyncio.sleep(0.2)  # a duplicate delivery would show up now
        await sender.close()
    assert one.batches > 0
    assert two.batches > 0
    assert one.batches + two.batches == len(batches)
    dataset = stored(tmp_path / "central")
    assert len(dataset.files) == len(batches)
    assert canonical(dataset.to_table()).equals(samples_of(batches))


class WriteThenHang:
    """A store that writes, then never returns: the collector dies before its PUBACK."""

    def __init__(self, store: ParquetUplink) -> None:
        self.name = store.name
        self.store = store
        self.written = asyncio.Event()

    async def send(self, batch: Batch) -> None:
        await self.store.send(batch)
        self.written.set()
        await asyncio.Event().wait()


async def test_a_collector_stopped_between_write_and_ack_gets_the_batch_again(
    mqtt_broker: PrivateBroker, tmp_path: Path
) -> None:
    batch = make_batches(windows=1)[0]
    store = tmp_path / "central"
    config = collect_config(mqtt_broker.url, {"type": "parquet", "path": str(store)}, "c1")
    hanging = WriteThenHang(ParquetUplink(config.store))  # type: ignore[arg-type]
    async with running(config, hanging) as collector:
        sender = uplink(mqtt_broker)
        await sender.send(batch)
        await sender.close()
        await asyncio.wait_for(hanging.written.wait(), 5)
    assert collector.batches == 0  # written, never acknowledged
    async with running(config) as again:  # same client id: the broker's session redelivers
        await wait_for(lambda: again.batches == 1)
    dataset = stored(store)
    assert len(dataset.files) == 1
    assert canonical(dataset.to_table()).equals(samples_of([batch]))


async def test_malformed_messages_are_counted_acked_and_skipped(
    mqtt_broker: PrivateBroker, tmp_path: Path
) -> None:
    good = make_batches(windows=1, gateway="gw1")[0]
    store = tmp_path / "central"
    config = collect_config(mqtt_broker.url, {"type": "parquet", "path": str(store)}, "c1")
    async with running(config) as collector:
        publisher = AsyncMqttClient(make_client(uplink(mqtt_broker).config, "publisher"))
        await publisher.connect("127.0.0.1", mqtt_broker.port, 10, 5)
        publisher.client.publish("edge-agent/gw1/batches", b"not parquet", qos=1)
        publisher.client.publish("edge-agent/gw9/batches", encode(good.table), qos=1)  # wrong gw
        await wait_for(lambda: collector.malformed == 2)
        sender = uplink(mqtt_broker)
        await sender.send(good)
        await wait_for(lambda: collector.batches == 1)
        await sender.close()
        await publisher.close()
    async with running(config) as again:  # acked: nothing comes back
        await asyncio.sleep(0.3)
    assert again.malformed == 0
    assert again.batches == 0
    assert canonical(stored(store).to_table()).equals(samples_of([good]))


async def test_collect_command_runs_from_a_config_file_until_sigterm(
    mqtt_broker: PrivateBroker, tmp_path: Path
) -> None:
    store = tmp_path / "central"
    config = tmp_path / "collect.toml"
    config.write_text(
        f'log_format = "json"\n[broker]\nurl = "{mqtt_broker.url}"\nclient_id = "cli"\n'
        f'[store]\ntype = "parquet"\npath = "{store}"\n'
    )
    batches = make_batches(windows=3)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.commands.cli", "collect", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        while b'"collecting"' not in await asyncio.wait_for(process.stdout.readline(), 20):
            pass
        sender = uplink(mqtt_broker)
        for batch in batches:
            await sender.send(batch)
        await sender.close()
        await wait_for(lambda: store.exists() and len(stored(store).files) == 3, 20)
    finally:
        process.terminate()
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    assert b'"collector stopped"' in output
    assert canonical(stored(store).to_table()).equals(samples_of(batches))
