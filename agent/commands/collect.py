"""``edge-agent collect``: the central side, from the broker's batch topics into the store.

A collector subscribes to ``$share/<group>/<topic_prefix>/+/batches`` (an MQTT 5 shared
subscription: every batch goes to one collector of the group, so running more collectors
shares the load) and writes each batch with the very uplink classes a gateway uses
(``parquet``, local or S3, or ``postgres``), so a batch delivered twice is stored once,
by batch id. The PUBACK is sent by hand (paho ``manual_ack``) only after the store's write
returned: a collector killed between receipt and write, or between write and ack, leaves
the message unacknowledged in its persistent session (fixed client id, clean start off),
and the broker delivers it again when that collector comes back.

A message that is not a batch is counted and logged once, then acknowledged, so it never
loops; a store that fails is retried with backoff while the message stays unacknowledged;
a lost broker connection is reconnected with backoff, which ends early once the broker
accepts connections again (``agent.acquisition.backoff``; ``[broker]`` ``backoff_initial``,
``backoff_max``, ``probe_interval``).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from agent.acquisition.backoff import Backoff
from agent.config.load import ConfigError, read_toml, validation_problems
from agent.config.model import CollectConfig
from agent.ops.health import ProblemLog
from agent.ops.tasks import TaskSupervisor, first_of
from agent.store.encoding import batch_of, decode
from agent.uplinks import Uplink, make_uplink
from agent.uplinks.mqtt import BATCH_SCHEMA
from agent.windows.batch import Batch
from protocols.mqtt.session import connect, make_client

log = structlog.get_logger("edge_agent.collect")


def load_collect_config(path: str | Path) -> CollectConfig:
    """Read and validate a collector's TOML file; raises ConfigError."""
    data = read_toml(Path(path))
    try:
        return CollectConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            str(path), validation_problems(exc, "", {"parquet", "postgres"})
        ) from None


class MalformedBatch(ValueError):
    """A message on a batch topic that is not a batch this collector can store."""


def parse_message(topic: str, payload: bytes | bytearray, properties: Properties | None) -> Batch:
    """The Batch a message carries; raises MalformedBatch with the reason."""
    user = dict(getattr(properties, "UserProperty", None) or [])
    schema = user.get("schema")
    if schema is not None and schema != BATCH_SCHEMA:
        raise MalformedBatch(f"unknown batch schema {schema!r}")
    try:
        batch = batch_of(decode(bytes(payload)))
    except Exception as exc:  # pyarrow raises several kinds on garbage
        raise MalformedBatch(f"not an edge-agent batch: {exc}") from None
    gateway = topic.split("/")[-2]
    if batch.gateway_id != gateway:
        raise MalformedBatch(f"batch of gateway {batch.gateway_id!r} on the topic of {gateway!r}")
    return batch


class Collector:
    """One collector process: a broker session at a time, one store."""

    def __init__(self, config: CollectConfig, store: Uplink | None = None) -> None:
        self.config = config
        self.store = store if store is not None else make_uplink(config.store)
        broker = config.broker
        self.client_id = broker.client_id or f"edge-agent-collect-{socket.gethostname()}"
        share = f"$share/{broker.shared_group}/" if broker.shared_group else ""
        self.topic = f"{share}{broker.topic_prefix}/+/batches"
        self.batches = 0  # written (a redelivered batch counts again: the store dedups)
        self.points = 0
        self.malformed = 0
        self.sessions = 0  # broker sessions subscribed so far: more than one = reconnects
        self.subscribed = asyncio.Event()  # set while a session is subscribed
        self.problems = ProblemLog(log)
        self.backoff = self._backoff()  # of broker reconnects
        self.failed: str | None = None  # why the collector gave up, for a non-zero exit

    def _backoff(self) -> Backoff:
        broker = self.config.broker
        return Backoff(
            broker.backoff_initial / 1e9, broker.backoff_max / 1e9, broker.probe_interval / 1e9
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Collect until ``stop`` is set, reconnecting with backoff. An unexpected failure
        is logged with its traceback and the collector started again; one that keeps
        failing sets ``failed`` and returns (the command then exits non-zero)."""
        failures = Counter(
            "edge_agent_task_failures", "Collector restarts", ["task"], registry=CollectorRegistry()
        )
        supervisor = TaskSupervisor(failures)
        supervisor.start("collector", lambda _: self._collect(stop), finishes=True)
        task = supervisor.task("collector")
        assert task is not None
        await first_of(task, supervisor.fatal_event.wait())
        await supervisor.stop()
        self.failed = supervisor.fatal

    async def _collect(self, stop: asyncio.Event) -> None:
        broker = (self.config.broker.host, self.config.broker.port)
        while not stop.is_set():
            try:
                await self._session(stop)
            except ConnectionError as exc:
                delay = self.backoff.next_delay()
                self.problems.fail(
                    "broker", "broker connection failed", error=str(exc), retry_in_s=round(delay, 2)
                )
                await self.backoff.wait(delay, broker, stop)
        log.info(
            "collector stopped",
            batches=self.batches,
            points=self.points,
            malformed=self.malformed,
            sessions=self.sessions,
        )

    async def _session(self, stop: asyncio.Event) -> None:
        """One connection: returns on stop, raises ConnectionError when it is lost."""
        broker = self.config.broker
        messages: asyncio.Queue[mqtt.MQTTMessage] = asyncio.Queue()
        subscribed: asyncio.Future[list[ReasonCode]] = asyncio.get_running_loop().create_future()

        def on_subscribe(
            client: Any, userdata: Any, mid: int, codes: list[ReasonCode], props: Any
        ) -> None:
            if not subscribed.done():
                subscribed.set_result(codes)

        client = make_client(broker, self.client_id, clean_session=False, manual_ack=True)
        client.on_message = lambda client, userdata, message: messages.put_nowait(message)
        client.on_subscribe = on_subscribe
        connection, _ = await connect(
            client, broker, clean_start=False, properties=self._connect_properties()
        )
        timeout_s = broker.connect_timeout / 1e9
        try:
            client.subscribe(self.topic, options=SubscribeOptions(qos=1))
            try:
                codes = await asyncio.wait_for(subscribed, timeout_s)
            except TimeoutError:
                raise ConnectionError("the broker did not answer the SUBSCRIBE") from None
            if codes[0].is_failure:
                raise ConnectionError(f"the broker refused {self.topic}: {codes[0]}")
            self.problems.ok("broker")
            self.backoff.reset()
            self.sessions += 1
            self.subscribed.set()
            log.info("collecting", topic=self.topic, client_id=self.client_id)
            async with asyncio.TaskGroup() as tasks:
                work = tasks.create_task(self._work(client, messages))
                stopped = tasks.create_task(stop.wait())
                await asyncio.wait((stopped, connection.lost), return_when=asyncio.FIRST_COMPLETED)
                work.cancel()  # a write it was in is idempotent; its message is not acked
                stopped.cancel()
            if not stop.is_set():
                raise ConnectionError(connection.lost.result())
        finally:
            self.subscribed.clear()
            await connection.close()

    def _connect_properties(self) -> Properties:
        broker = self.config.broker
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = round(broker.session_expiry / 1e9)
        properties.ReceiveMaximum = broker.max_inflight
        return properties

    async def _work(self, client: mqtt.Client, messages: asyncio.Queue[mqtt.MQTTMessage]) -> None:
        """Store messages in arrival order and acknowledge each after its write returned."""
        while True:
            message = await messages.get()
            try:
                batch = await asyncio.to_thread(
                    parse_message, message.topic, message.payload, message.properties
                )
            except (MalformedBatch, UnicodeDecodeError) as exc:
                self.malformed += 1
                self.problems.fail("malformed", "malformed message dropped", error=str(exc))
            else:
                await self._store(batch)
            client.ack(message.mid, message.qos)

    async def _store(self, batch: Batch) -> None:
        backoff = self._backoff()
        while True:
            try:
                await self.store.send(batch)
            except Exception as exc:  # the store is down: keep the message, retry
                self.problems.fail("store", "store write failed", error=str(exc))
                await asyncio.sleep(backoff.next_delay())
                continue
            self.problems.ok("store")
            self.batches += 1
            self.points += batch.points
            return
