"""OPC UA driver (asyncua): subscriptions or polled reads, secure sessions, recovery.

Subscribe mode creates one subscription per rate group, publishing at that rate, with a
monitored item per tag whose queue holds what the rate owes per publish (one by default):
the publishing interval bounds what is delivered even from a server that reports every
change rather than sampling at the requested interval, and tags of different rates do not
share the fastest one's publishing. Each publish response becomes one frame in a single
pass, without asyncua's per-item callbacks. Poll mode issues one Read per rate
group, split to the server's MaxNodesPerRead. Either way a dead session (asyncua's
watchdog probe fails, the connection drops, the server restarts) ends ``run`` with an
error; the supervisor then reconnects with backoff and a fresh session re-resolves every
node and creates its monitored items anew. Nothing is invented for the outage: the gap
starts with one comm-error sample per tag. The driver only ever reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from asyncua import Client, ua
from asyncua.common.subscription import Subscription
from asyncua.ua.ua_binary import struct_from_binary

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame, concat
from agent.ops.metrics import PollStats
from protocols.opcua.config import OpcUaSourceConfig, OpcUaTagConfig
from protocols.opcua.security import SecurityError, configure_client
from protocols.opcua.values import ValueDecoder, ns_of
from protocols.sdk import DriverContext, PollGroup, PollingDriver, Tick, groups_by_rate

_TIMEOUT = q.make(q.BAD, q.Reason.TIMEOUT)
_REFUSED = q.make(q.BAD, q.Reason.SOURCE_STATUS)
_CLOSE_TIMEOUT_S = 0.5
_CLOCK_PROBE_S = 0.25  # a few round trips per 1 s clock bucket: the shortest is kept
# the first probes come quicker, so that the clock model settles (ten round trips over two
# buckets) within about a second of subscribing, as it did on the notifications' PublishTimes
_SETTLING_PROBE_S, _SETTLING_PROBES = 0.05, 20
_CLOCK_NODE = ua.NodeId(
    ua.Int32(ua.ObjectIds.Server_ServerStatus_CurrentTime)
)  # every server has it
_DEFAULT_PORT = 4840  # opc.tcp's registered port, for a url without one
_LIMITS = (
    ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
)
_ACCESS_CODES = {
    ua.StatusCodes.BadUserAccessDenied,
    ua.StatusCodes.BadIdentityTokenInvalid,
    ua.StatusCodes.BadIdentityTokenRejected,
}


def queue_size(publishing_ns: int, rate_ns: int) -> int:
    """How many samples a monitored item may hand over per publish: what its rate owes.

    Not one more for jitter: a server that does not sample at the requested interval but
    queues every change (asyncua's does; many embedded servers do) fills any queue, so each
    spare slot is a sample above the rate. With DiscardOldest the queue keeps the latest.
    """
    return max(1, math.ceil(publishing_ns / rate_ns))


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` in pieces of at most ``size`` (0 = no limit)."""
    if size <= 0 or len(items) <= size:
        return [items]
    return [items[i : i + size] for i in range(0, len(items), size)]


class _FrameSubscription(Subscription):
    """A subscription that hands each publish response's items over in one call."""

    def __init__(
        self,
        client: Client,
        params: ua.CreateSubscriptionParameters,
        on_items: Callable[[list[ua.MonitoredItemNotification], int], Awaitable[None]],
        on_status: Callable[[ua.StatusCode], None],
    ) -> None:
        super().__init__(client.uaclient.session, params, None, queue_maxsize=1)
        self._on_items = on_items
        self._on_status = on_status

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        # awaited by asyncua's publish loop before it acknowledges the message: awaiting
        # the agent's queue here is the backpressure
        self.last_publish_at = time.monotonic()
        message = publish_result.NotificationMessage
        if not message.NotificationData:
            return
        self.last_sequence_number = int(message.SequenceNumber)
        for notification in message.NotificationData:
            if isinstance(notification, ua.DataChangeNotification):
                await self._on_items(notification.MonitoredItems, ns_of(message.PublishTime) or 0)
            elif isinstance(notification, ua.StatusChangeNotification):
                self._on_status(notification.Status)


class OpcUaDriver(PollingDriver):
    config_model = OpcUaSourceConfig
    config: OpcUaSourceConfig

    def __init__(self, config: OpcUaSourceConfig) -> None:
        super().__init__(config)
        self.decoder = ValueDecoder(config.tags, config.timestamp)
        self._node_ids = [tag.node_id for tag in config.tags]
        self._client: Client | None = None
        self._ctx: DriverContext | None = None
        self._lost: asyncio.Future[str] | None = None
        self.max_nodes_per_read = 0
        self.max_items_per_call = 0
        self.subscriptions: list[_FrameSubscription] = []  # one per rate group

    def describe(self) -> str:
        return f", {self.config.url}, {self.config.mode} mode, security {self.config.security_mode}"

    def probe_address(self) -> tuple[str, int] | None:
        parts = urlsplit(self.config.url)
        return (parts.hostname or "", parts.port or _DEFAULT_PORT)

    # -- session -------------------------------------------------------------------------

    async def run(self, ctx: DriverContext) -> None:
        self._ctx = ctx
        if self.config.mode == "poll":
            await super().run(ctx)
            return
        await self.connect()
        ctx.set_connected(True)
        try:
            await self._subscribe(ctx)
            probe = asyncio.create_task(self._probe_clock(ctx))
            try:
                await self._session_alive()
            finally:
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe
        finally:
            ctx.set_connected(False)
            await self.close()

    async def connect(self) -> None:
        config = self.config
        client = Client(
            config.url, timeout=config.timeout / 1e9, watchdog_intervall=config.watchdog / 1e9
        )
        lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def on_lost(error: Exception) -> None:
            if not lost.done():
                lost.set_result(f"session lost: {error!r}")

        client.connection_lost_callback = on_lost
        data_dir = self._ctx.data_dir if self._ctx is not None else None
        try:
            if data_dir is not None:
                await configure_client(client, config, data_dir)
            else:
                raise SecurityError("no data_dir for certificates")  # pragma: no cover
            await client.connect()
        except ua.UaStatusCodeError as exc:
            await self._abandon(client)
            if exc.code in _ACCESS_CODES:
                raise ConnectionError(
                    f"{config.url} refused the user {config.username!r}: {exc}"
                ) from None
            raise ConnectionError(f"{config.url} refused the session: {exc}") from None
        except BaseException:
            await self._abandon(client)
            raise
        self._client = client
        self._lost = lost
        await self._read_limits()

    async def _abandon(self, client: Client) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), _CLOSE_TIMEOUT_S)

    async def close(self) -> None:
        client, self._client = self._client, None
        self.subscriptions = []
        if client is None:
            return
        try:
            await asyncio.wait_for(client.disconnect(), _CLOSE_TIMEOUT_S)
        except Exception:  # a dead server cannot close the session; drop the socket
            with contextlib.suppress(Exception):
                client.disconnect_socket()

    async def _session_alive(self) -> None:
        """Return never; raise ConnectionError when the session is found dead."""
        assert self._lost is not None
        raise ConnectionError(await self._lost)

    def session_tasks(self, ctx: DriverContext) -> list[Coroutine[Any, Any, None]]:
        return [self._session_alive()]

    async def _read_limits(self) -> None:
        client = self._require_client()
        params = ua.ReadParameters()
        params.NodesToRead = [self._read_value_id(ua.NodeId(ua.Int32(node))) for node in _LIMITS]
        try:
            values = await client.uaclient.read(params)
        except ua.UaStatusCodeError:
            return
        limits = [
            int(v.Value.Value)
            if v.StatusCode is not None and v.StatusCode.is_good() and v.Value and v.Value.Value
            else 0
            for v in values
        ]
        self.max_nodes_per_read, self.max_items_per_call = limits

    def _require_client(self) -> Client:
        if self._client is None:
            raise ConnectionError(f"not connected to {self.config.url}")
        return self._client

    @staticmethod
    def _read_value_id(node_id: ua.NodeId) -> ua.ReadValueId:
        item = ua.ReadValueId()
        item.NodeId = node_id
        item.AttributeId = ua.AttributeIds.Value
        return item

    # -- subscribe mode ----------------------------------------------------------------------

    async def _subscribe(self, ctx: DriverContext) -> None:
        client = self._require_client()
        tags = self.config.tags

        async def on_items(items: list[ua.MonitoredItemNotification], sent: int) -> None:
            received = time.time_ns()
            frame = self.decoder.decode(
                [item.ClientHandle - 1 for item in items], [item.Value for item in items], received
            )
            frame.sent = sent  # the server's clock at PublishTime: see agent/acquisition/clock.py
            self._report_undecodable(ctx)
            await ctx.emit(frame)

        def on_status(status: ua.StatusCode) -> None:
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(f"subscription ended by the server: {status.name}")

        indices: list[int] = []
        results: list[Any] = []
        for group in groups_by_rate(tags):
            publishing_ns = max(group.period_ns, self.config.publishing_interval or 0)
            params = self._subscription_params(client, publishing_ns)
            subscription = _FrameSubscription(client, params, on_items, on_status)
            await subscription.init()
            self.subscriptions.append(subscription)
            queue = queue_size(publishing_ns, group.period_ns)
            members = group.tags.tolist()
            requests = [self._item_request(index, tags[index], queue) for index in members]
            indices.extend(members)
            for part in chunks(requests, self.max_items_per_call):
                results.extend(await subscription.create_monitored_items(part))
        refused: list[int] = []
        for index, result in zip(indices, results, strict=True):
            key = f"item:{tags[index].name}"
            if isinstance(result, ua.StatusCode):
                refused.append(index)
                ctx.problems.fail(
                    key, "monitored item refused", node=tags[index].node, status=result.name
                )
            else:
                ctx.problems.ok(key)
        if refused:  # the refusal is data too: those tags get one bad sample now
            await ctx.emit(
                Frame.uniform(np.array(refused, np.int32), time.time_ns(), math.nan, _REFUSED)
            )

    async def _probe_clock(self, ctx: DriverContext) -> None:
        """Round trips to the server's clock while subscribed, as polled reads give.

        A PublishTime is one-way: it bounds the server clock on one side only, and the
        frame's delay to the gateway (the host's load) stays in the estimate. A small
        Read every ``_CLOCK_PROBE_S`` has its response header stamped within a measured
        round trip; the clock model keeps each second's shortest (the first probes come
        quicker, for the model to settle). The probe's frame has
        no rows: nothing of it reaches the dataset. A server that refuses the Read keeps
        the PublishTime readings (logged once).
        """
        client = self._require_client()
        params = ua.ReadParameters()
        params.NodesToRead = [self._read_value_id(_CLOCK_NODE)]
        probes = 0
        while True:
            await asyncio.sleep(_SETTLING_PROBE_S if probes < _SETTLING_PROBES else _CLOCK_PROBE_S)
            probes += 1
            requested = time.time_ns()
            try:
                _, answered = await read_answered(client, params)
            except ua.UaStatusCodeError as exc:
                ctx.problems.fail(
                    "clock_probe",
                    "clock probe Read refused: server clock by PublishTime",
                    detail=str(exc),
                )
                return
            except TimeoutError:  # a dying session: the watchdog will tell
                continue
            received = time.time_ns()
            if answered > 0:
                probe = Frame.empty()
                probe.requested, probe.sent, probe.received = requested, answered, received
                await ctx.emit(probe)

    @staticmethod
    def _subscription_params(client: Client, publishing_ns: int) -> ua.CreateSubscriptionParameters:
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = publishing_ns / 1e6
        params.RequestedLifetimeCount = 10_000
        params.RequestedMaxKeepAliveCount = client.get_keepalive_count(publishing_ns / 1e6)
        params.MaxNotificationsPerPublish = 0  # no limit: one publish carries a whole cycle
        params.PublishingEnabled = True
        params.Priority = 0
        return params

    @staticmethod
    def _item_request(index: int, tag: OpcUaTagConfig, queue: int) -> ua.MonitoredItemCreateRequest:
        parameters = ua.MonitoringParameters()
        parameters.ClientHandle = index + 1
        parameters.SamplingInterval = (tag.sampling_interval or tag.rate) / 1e6
        parameters.QueueSize = tag.queue_size or queue
        parameters.DiscardOldest = True
        data_filter = tag.deadband_filter
        if data_filter is not None:
            parameters.Filter = data_filter
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = OpcUaDriver._read_value_id(tag.node_id)
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = parameters
        return request

    def _report_undecodable(self, ctx: DriverContext) -> None:
        for tag, kind in self.decoder.undecodable:
            ctx.problems.fail(
                f"decode:{self.config.tags[tag].name}", "value of unsupported type", type=kind
            )
        self.decoder.undecodable.clear()

    # -- poll mode ----------------------------------------------------------------------------

    async def read(self, group: PollGroup, tick: Tick, stats: PollStats) -> Frame:
        client = self._require_client()
        assert self._ctx is not None
        frames = []
        for part in chunks(group.tags.tolist(), self.max_nodes_per_read):
            params = ua.ReadParameters()
            params.NodesToRead = [self._read_value_id(self._node_ids[i]) for i in part]
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            sent = time.time_ns()
            key = f"read:{group.name}"
            failure: tuple[int, str, str] | None = None
            try:
                values, answered = await read_answered(client, params)
            except TimeoutError:
                failure = (_TIMEOUT, "read timed out", f"{len(part)} nodes")
            except ua.UaStatusCodeError as exc:
                failure = (_REFUSED, "read refused", str(exc))
            received = time.time_ns()
            if failure is not None:  # the chunk's tags get a bad sample; the session lives on
                quality, event, detail = failure
                self._ctx.problems.fail(key, event, detail=detail)
                midpoint = (sent + received) // 2
                frames.append(
                    Frame.uniform(np.array(part, np.int32), midpoint, math.nan, quality, received)
                )
                continue
            stats.request_done(received - sent)
            self._ctx.problems.ok(key)
            frame = self.decoder.decode(part, values, received, (sent + received) // 2)
            frame.requested, frame.sent = sent, answered  # a round trip, see SourceClock
            frames.append(frame)
            self._report_undecodable(self._ctx)
        return concat(frames)

    @classmethod
    def conformance_peer(cls) -> Any:
        return _simulator_peer()


async def read_answered(
    client: Client, params: ua.ReadParameters
) -> tuple[list[ua.DataValue], int]:
    """The Read service's results and the server's clock when it answered (ns, 0 unknown).

    The response header's Timestamp (Part 4 7.33) is stamped while the request is in hand,
    between the request's sending and the response's arrival, whatever the values' own
    ServerTimestamps say (often when a value was last written): it is what measures the
    server clock. asyncua's ``read`` drops the header; this is that method keeping it.
    """
    request = ua.ReadRequest()
    request.Parameters = params
    data = await client.uaclient.session._send_request(request)
    response = struct_from_binary(ua.ReadResponse, data)
    response.ResponseHeader.ServiceResult.check()
    answered = ns_of(response.ResponseHeader.Timestamp) or 0
    return response.Results, max(answered, 0)  # a server without a clock sends 1601


@asynccontextmanager
async def _simulator_peer() -> Any:
    from simulators.opcua_cnc import OpcUaCncSimulator

    simulator = OpcUaCncSimulator(seed=1)
    await simulator.start("127.0.0.1", 0)
    try:
        yield {"url": simulator.url}
    finally:
        await simulator.stop()
