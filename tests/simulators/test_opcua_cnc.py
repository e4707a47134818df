"""The OPC UA CNC simulator against a bare asyncua client over real TCP.

Every value a client reads must equal ``truth(name, true_time(SourceTimestamp))`` exactly:
that is what lets the driver's tests compare the store with what the machine produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import time
import tomllib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asyncua import Client, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography.x509.oid import ExtendedKeyUsageOID

from protocols.opcua.driver import read_answered
from simulators.opcua_cnc import (
    NAMESPACE,
    NODES,
    NODES_BY_NAME,
    SECURITY_POLICIES,
    OpcUaCncSimulator,
    eu_information,
)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MICROSECOND = dt.timedelta(microseconds=1)


def ns_of(stamp: dt.datetime | None) -> int:
    assert stamp is not None
    return (stamp - EPOCH) // MICROSECOND * 1000


def server_tasks() -> set[asyncio.Task[Any]]:
    """Running tasks whose coroutine belongs to the asyncua server or the simulator."""
    found = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if "asyncua/server" in filename or "opcua_cnc" in filename:
            found.add(task)
    return found


@contextlib.asynccontextmanager
async def running(simulator: OpcUaCncSimulator) -> AsyncIterator[OpcUaCncSimulator]:
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


def check_value(simulator: OpcUaCncSimulator, name: str, value: ua.DataValue) -> int:
    """Assert one DataValue equals the truth at its stamp; returns the true tick instant."""
    node = NODES_BY_NAME[name]
    stamp = ns_of(value.SourceTimestamp)
    tick = int(simulator.tick_of(simulator.true_time(stamp)))
    assert tick % simulator.update_ns == 0
    assert stamp == int(simulator.source_timestamp_ns(tick)), name
    assert value.Value is not None
    assert value.Value.VariantType == ua.VariantType[node.type], name
    got = value.Value.Value
    expected = simulator.truth(name, simulator.true_time(stamp))
    if node.array:
        assert len(got) == simulator.vibration_samples
        assert np.array_equal(np.array(got, np.float64), expected[0]), name
    elif node.type == "String":
        assert got == expected[0] == simulator.signals.program
    else:
        assert float(got) == expected[0], (name, got, expected[0])
    return tick


async def read_all(client: Client, nodes: Iterable[str]) -> list[ua.DataValue]:
    return await client.read_attributes([client.get_node(node_id) for node_id in nodes])


# -- values and address space ----------------------------------------------------------------


async def test_every_node_reads_its_seeded_truth_exactly() -> None:
    async with running(OpcUaCncSimulator(seed=5)) as simulator, Client(simulator.url) as client:
        assert await client.get_namespace_index(NAMESPACE) == 2
        ticks = set()
        for _ in range(4):  # several ticks, one Read request each
            values = await read_all(client, (node.node_id for node in NODES))
            before_read = time.time_ns()
            for node, value in zip(NODES, values, strict=True):
                tick = check_value(simulator, node.name, value)
                assert tick <= before_read, "never a value from the future"
                served = ns_of(value.ServerTimestamp)
                assert 0 <= served - tick < 1_000_000_000, "ServerTimestamp: the write's wall time"
                ticks.add(tick)
            await asyncio.sleep(0.06)
        assert len(ticks) >= 3, "values move on every update_ns"
        assert simulator.skipped_ticks == 0
        assert simulator.read_requests >= 4


async def test_address_space_browses_to_exactly_the_nodes_with_their_types(
    opcua_cnc: OpcUaCncSimulator,
) -> None:
    async with Client(opcua_cnc.url) as client:
        cnc = await client.nodes.objects.get_child("2:CNC")
        found: dict[str, Any] = {}
        pending = [cnc]
        while pending:
            for child in await pending.pop().get_children():
                if await child.read_node_class() == ua.NodeClass.Object:
                    pending.append(child)
                else:
                    found[child.nodeid.to_string()] = child
        assert set(found) == {node.node_id for node in NODES}
        for node in NODES:
            variable = found[node.node_id]
            data_type = await variable.read_data_type()
            assert data_type == ua.NodeId(int(ua.VariantType[node.type])), node.name
            rank = await variable.read_attribute(ua.AttributeIds.ValueRank)
            assert rank.Value is not None
            assert rank.Value.Value == (1 if node.array else -1), node.name
            level = await variable.read_attribute(ua.AttributeIds.AccessLevel)
            assert level.Value is not None
            assert level.Value.Value == ua.AccessLevel.CurrentRead.mask, "read-only"


async def test_eu_range_and_engineering_units_are_readable(opcua_cnc: OpcUaCncSimulator) -> None:
    async with Client(opcua_cnc.url) as client:
        analog = [node for node in NODES if node.unit is not None]
        assert {node.name for node in analog} >= {
            "spindle_speed",
            "spindle_torque",
            "axis_x",
            "axis_y",
            "axis_z",
            "spindle_temp",
            "coolant_temp",
            "vibration",
        }
        for node in analog:
            variable = client.get_node(node.node_id)
            units = await (await variable.get_child("0:EngineeringUnits")).read_value()
            assert isinstance(units, ua.EUInformation)
            assert units.DisplayName.Text == node.unit
            assert units == eu_information(node.unit or "")
            assert node.eu_range is not None
            eu_range = await (await variable.get_child("0:EURange")).read_value()
            assert (eu_range.Low, eu_range.High) == node.eu_range
            type_definition = await variable.read_type_definition()
            assert type_definition == ua.NodeId(ua.ObjectIds.AnalogItemType)
        speed = await (
            await client.get_node(NODES_BY_NAME["spindle_speed"].node_id).get_child(
                "0:EngineeringUnits"
            )
        ).read_value()
        assert speed.UnitId == int.from_bytes(b"RPM", "big"), "UNECE common code"


async def test_vibration_array_is_the_block_starting_at_its_stamp() -> None:
    simulator = OpcUaCncSimulator(seed=9)
    async with running(simulator), Client(simulator.url) as client:
        variable = client.get_node(NODES_BY_NAME["vibration"].node_id)
        dimensions = await variable.read_attribute(ua.AttributeIds.ArrayDimensions)
        assert dimensions.Value is not None
        assert dimensions.Value.Value == [500]
        value = await variable.read_data_value()
    tick = check_value(simulator, "vibration", value)
    assert value.Value is not None
    block = np.array(value.Value.Value, np.float64)
    assert np.array_equal(block, simulator.truth_block(tick))
    assert np.array_equal(block.astype(np.float32).astype(np.float64), block), "Float precision"
    times = simulator.block_times(tick)
    assert times[0] == tick, "the FIRST sample is at the tick"
    assert set(np.diff(times)) == {100_000}, "10 kHz"
    assert times[-1] + 100_000 == tick + simulator.update_ns, "blocks tile time at the defaults"
    assert np.array_equal(
        simulator.truth_block(tick), simulator.signals.vibration(times).astype(np.float32)
    )
    assert 0.05 < block.std() < 5.0, "a waveform, not a constant"


async def test_subscription_delivers_every_tick_with_its_truth() -> None:
    simulator = OpcUaCncSimulator(seed=2, update_ns=50_000_000)
    received: list[tuple[str, ua.DataValue]] = []
    names = {NODES_BY_NAME[name].node_id: name for name in ("axis_x", "axis_y", "vibration")}

    class Handler:
        def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
            received.append((names[node.nodeid.to_string()], data.monitored_item.Value))

    async with running(simulator), Client(simulator.url) as client:
        subscription = await client.create_subscription(50, Handler())
        await subscription.subscribe_data_change([client.get_node(n) for n in names])
        await asyncio.sleep(1.0)
        await subscription.delete()
    ticks: dict[str, list[int]] = {name: [] for name in names.values()}
    for name, value in received:
        ticks[name].append(check_value(simulator, name, value))
    for name, seen in ticks.items():
        assert len(seen) >= 15, name
        assert seen == sorted(set(seen)), "one notification per tick, in order"
        # a tick the simulator itself skipped (an overrun on a loaded machine) is no miss
        allowed = (2 + simulator.skipped_ticks) * simulator.update_ns
        assert max(np.diff(seen)) <= allowed, f"{name}: no tick missed"


# -- clock -----------------------------------------------------------------------------------


def test_clock_model_round_trips_and_is_documented() -> None:
    for offset, drift in ((0, 0.0), (5_000_000_000, 100.0), (-1_234_567_000, -250.0)):
        simulator = OpcUaCncSimulator(seed=1, clock_offset_ns=offset, clock_drift_ppm=drift)
        epoch = simulator.clock_epoch_ns
        ticks = epoch + np.arange(-1000, 200_000, 997, dtype=np.int64) * simulator.update_ns
        source = simulator.source_clock(ticks)
        expected = ticks + offset + np.round(drift * 1e-6 * (ticks - epoch)).astype(np.int64)
        assert np.array_equal(source, expected)
        assert np.array_equal(simulator.true_time(source), ticks)
        stamps = simulator.source_timestamp_ns(ticks)
        assert (stamps % 1000 == 0).all(), "SourceTimestamp carries whole microseconds"
        assert np.array_equal(simulator.tick_of(simulator.true_time(stamps)), ticks)


async def test_clock_offset_and_drift_shift_source_timestamps_only() -> None:
    offset, drift = 5_000_000_000, 100.0
    simulator = OpcUaCncSimulator(seed=4, clock_offset_ns=offset, clock_drift_ppm=drift)
    epoch = simulator.clock_epoch_ns
    speed = NODES_BY_NAME["axis_x"].node_id
    async with running(simulator), Client(simulator.url) as client:
        first = await client.get_node(speed).read_data_value()
        await asyncio.sleep(0.6)
        second = await client.get_node(speed).read_data_value()
    for value in (first, second):
        tick = check_value(simulator, "axis_x", value)
        stamp, served = ns_of(value.SourceTimestamp), ns_of(value.ServerTimestamp)
        skew = stamp - tick
        assert skew == (offset + round(drift * 1e-6 * (tick - epoch))) // 1000 * 1000
        assert abs(stamp - served - offset) < 200_000_000, "ServerTimestamp is not skewed"
    drift_first = ns_of(first.SourceTimestamp) - check_value(simulator, "axis_x", first)
    drift_second = ns_of(second.SourceTimestamp) - check_value(simulator, "axis_x", second)
    assert 40_000 <= drift_second - drift_first <= 80_000, "100 ppm of ~0.6 s"


@pytest.mark.parametrize("offset", [0, 5_000_000_000])
async def test_a_read_response_is_stamped_by_the_server_clock_while_it_is_answered(
    offset: int,
) -> None:
    simulator = OpcUaCncSimulator(seed=4, server_clock_offset_ns=offset, server_clock_drift_ppm=100)
    params = ua.ReadParameters()
    item = ua.ReadValueId()
    item.NodeId = ua.NodeId.from_string(NODES_BY_NAME["axis_x"].node_id)
    item.AttributeId = ua.AttributeIds.Value
    params.NodesToRead = [item]
    async with running(simulator), Client(simulator.url) as client:
        for _ in range(5):
            requested = time.time_ns()
            values, answered = await read_answered(client, params)
            received = time.time_ns()
            assert len(values) == 1
            true = int(simulator.true_time(answered))  # no device skew: the server clock
            assert requested - 1000 <= true <= received  # stamps truncated to whole us
            server = ns_of(values[0].ServerTimestamp)
            assert server <= answered, "a value is stamped when written, before the read"


# -- lifecycle -------------------------------------------------------------------------------


async def test_restart_keeps_the_port_drops_sessions_and_accepts_new_clients() -> None:
    simulator = OpcUaCncSimulator(seed=3)
    before = server_tasks()
    started = time.perf_counter()
    port = await simulator.start()
    first_start = time.perf_counter() - started
    speed = client_node = NODES_BY_NAME["spindle_speed"].node_id
    old = Client(simulator.url, timeout=2)
    await old.connect()
    try:
        subscription = await old.create_subscription(50, None)
        await subscription.subscribe_data_change(old.get_node(client_node))
        started = time.perf_counter()
        await simulator.restart()
        restart_s = time.perf_counter() - started
        print(f"first start {first_start:.3f} s, restart {restart_s:.3f} s")
        assert restart_s < 2.0, "a restart takes milliseconds once namespace 0 is cached"
        assert simulator.port == port
        with pytest.raises((ua.UaError, ConnectionError, asyncio.TimeoutError, OSError)):
            await old.get_node(speed).read_value()
        async with Client(simulator.url) as new:
            check_value(simulator, "spindle_speed", await new.get_node(speed).read_data_value())
    finally:
        with contextlib.suppress(Exception):
            await old.disconnect()
        await simulator.stop()
    assert server_tasks() <= before


async def test_no_server_task_outlives_stop_even_with_an_orphaned_subscription() -> None:
    before = set(asyncio.all_tasks())
    simulator = OpcUaCncSimulator(seed=3)
    await simulator.start()
    polite = Client(simulator.url)
    await polite.connect()
    await polite.get_node(NODES_BY_NAME["running"].node_id).read_value()
    await polite.disconnect()
    assert set(asyncio.all_tasks()) - before == server_tasks() - before
    lingering = Client(simulator.url, timeout=2)
    await lingering.connect()
    subscription = await lingering.create_subscription(50, None)
    await subscription.subscribe_data_change(lingering.get_node(NODES_BY_NAME["axis_x"].node_id))
    assert simulator.drop_connections() == 1  # asyncua keeps the subscribed session
    await asyncio.sleep(0.05)
    assert server_tasks() - before, "the orphaned session and subscription still run"
    await simulator.stop()
    assert not server_tasks() - before
    with contextlib.suppress(Exception):
        await lingering.disconnect()
    await asyncio.sleep(0)
    assert not server_tasks() - before


async def test_reads_over_max_nodes_per_read_are_refused_and_writes_are_counted() -> None:
    simulator = OpcUaCncSimulator(seed=1, max_nodes_per_read=5)
    async with running(simulator), Client(simulator.url) as client:
        limit = client.get_node(
            ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)
        )
        assert await limit.read_value() == 5
        nodes = [node.node_id for node in NODES]
        assert len(await read_all(client, nodes[:5])) == 5
        with pytest.raises(ua.uaerrors.BadTooManyOperations):
            await read_all(client, nodes[:6])
        with pytest.raises(ua.UaStatusCodeError):
            await client.get_node(NODES_BY_NAME["spindle_speed"].node_id).write_value(1.0)
    assert simulator.write_attempts == 1, "the attempt is counted, the value unchanged"


# -- security --------------------------------------------------------------------------------


async def client_certificate(directory: Path) -> tuple[Path, Path, str]:
    uri = "urn:edge-agent:test-client"
    key, cert = directory / "client_key.pem", directory / "client_cert.der"
    await cert_gen.setup_self_signed_certificate(
        key, cert, uri, socket.gethostname(), [ExtendedKeyUsageOID.CLIENT_AUTH], {}
    )
    return key, cert, uri


async def secure_client(
    simulator: OpcUaCncSimulator, key: Path, cert: Path, uri: str, user: str | None, password: str
) -> Client:
    client = Client(simulator.url, timeout=5)
    client.application_uri = uri
    assert simulator.server_certificate_path is not None
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        certificate=str(cert),
        private_key=str(key),
        server_certificate=str(simulator.server_certificate_path),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    if user is not None:
        client.set_user(user)
        client.set_password(password)
    return client


async def test_security_with_its_own_certificate_and_user_logins(tmp_path: Path) -> None:
    simulator = OpcUaCncSimulator(
        seed=8, security=True, cert_dir=tmp_path / "server", users={"operator": "s3cret"}
    )
    key, cert, uri = await client_certificate(tmp_path)
    async with running(simulator):
        assert simulator.server_certificate_path == tmp_path / "server" / "server_cert.der"
        assert simulator.server_certificate_path.is_file()
        probe = Client(simulator.url)  # discovery needs no session
        await probe.connect_sessionless()
        try:
            endpoints = await probe.get_endpoints()
        finally:
            await probe.disconnect_sessionless()
        offered = {(e.SecurityPolicyUri.rsplit("#", 1)[1], e.SecurityMode) for e in endpoints}
        assert ("None", ua.MessageSecurityMode.None_) not in offered
        assert len(offered) == len(SECURITY_POLICIES)
        assert all(e.EndpointUrl == simulator.url for e in endpoints)

        client = await secure_client(simulator, key, cert, uri, "operator", "s3cret")
        async with client:
            value = await client.get_node(NODES_BY_NAME["program"].node_id).read_data_value()
            check_value(simulator, "program", value)

        for user, password, error in (
            ("operator", "wrong", ua.uaerrors.BadUserAccessDenied),
            ("intruder", "s3cret", ua.uaerrors.BadUserAccessDenied),
            (None, "", ua.uaerrors.BadIdentityTokenRejected),  # anonymous
        ):
            refused = await secure_client(simulator, key, cert, uri, user, password)
            with pytest.raises(error):
                await refused.connect()
            with contextlib.suppress(Exception):
                await refused.disconnect()

        plain = Client(simulator.url, timeout=2)
        with pytest.raises((ua.UaError, asyncio.TimeoutError, ConnectionError)):
            await plain.connect()
        with contextlib.suppress(Exception):
            await plain.disconnect()
        # the certificate survives a restart, so a pinned copy stays valid
        pinned = simulator.server_certificate_path.read_bytes()
        await simulator.restart()
        assert simulator.server_certificate_path.read_bytes() == pinned


# -- load and configuration ------------------------------------------------------------------


async def test_bulk_tags_follow_their_truth_and_tick_cost_is_reported() -> None:
    simulator = OpcUaCncSimulator(seed=6, update_ns=100_000_000, bulk_tags=3000)
    started = time.perf_counter()
    async with running(simulator), Client(simulator.url) as client:
        print(f"\nstart with 3000 bulk tags: {time.perf_counter() - started:.2f} s")
        ids = [f"ns=2;s=Bulk.{i}" for i in (0, 1, 1499, 2999)]
        values = await read_all(client, ids)
        for index, value in zip((0, 1, 1499, 2999), values, strict=True):
            stamp = ns_of(value.SourceTimestamp)
            assert value.Value is not None
            assert value.Value.Value == simulator.bulk_truth(simulator.true_time(stamp))[index]
        ticks, spent = simulator.ticks, simulator.tick_seconds
        await asyncio.sleep(1.0)
        idle = (simulator.tick_seconds - spent) / max(1, simulator.ticks - ticks)
        subscription = await client.create_subscription(100, None)
        nodes = [client.get_node(f"ns=2;s=Bulk.{i}") for i in range(3000)]
        await subscription.subscribe_data_change(nodes, queuesize=1)
        ticks, spent = simulator.ticks, simulator.tick_seconds
        await asyncio.sleep(1.0)
        monitored = (simulator.tick_seconds - spent) / max(1, simulator.ticks - ticks)
        await subscription.delete()
    print(
        f"tick cost at 3000 bulk tags, 100 ms: {idle * 1e3:.1f} ms unmonitored "
        f"({idle / 0.1:.0%} of a core), {monitored * 1e3:.1f} ms with 3000 monitored items "
        f"({monitored / 0.1:.0%}); skipped ticks {simulator.skipped_ticks}"
    )
    assert simulator.bulk_truth(np.array([0, 10**9])).shape == (2, 3000)


def test_agent_config_lists_every_node_with_its_unit() -> None:
    simulator = OpcUaCncSimulator(seed=1, bulk_tags=3)
    simulator.port = 4840
    config = tomllib.loads(simulator.agent_config("250ms", extra='timestamp = "source"\n'))
    (source,) = config["sources"]
    assert source["protocol"] == "opcua"
    assert source["url"] == "opc.tcp://127.0.0.1:4840/edge-agent/cnc"
    assert source["timestamp"] == "source"
    tags = {tag["name"]: tag for tag in source["tags"]}
    assert set(tags) == set(NODES_BY_NAME)
    for node in NODES:
        assert tags[node.name]["node"] == node.node_id
        # the waveform at its block period: a slower rate would skip whole blocks
        assert tags[node.name]["rate"] == ("50000000ns" if node.array else "250ms")
        assert tags[node.name].get("unit") == node.unit
    bulk = tomllib.loads(simulator.agent_config(nodes=simulator.bulk_nodes()))
    assert [tag["node"] for tag in bulk["sources"][0]["tags"]] == [
        "ns=2;s=Bulk.0",
        "ns=2;s=Bulk.1",
        "ns=2;s=Bulk.2",
    ]


def test_truth_is_a_pure_function_of_seed_and_time() -> None:
    t = np.arange(0, 60 * 10**9, 50_000_000, dtype=np.int64) + 1_700_000_000 * 10**9
    one, again, other = (OpcUaCncSimulator(seed=s) for s in (1, 1, 2))
    for node in NODES:
        if node.type == "String":
            continue
        assert np.array_equal(one.truth(node.name, t[:50]), again.truth(node.name, t[:50]))
    assert not np.array_equal(one.truth("spindle_torque", t), other.truth("spindle_torque", t))
    running_values = set(np.unique(one.truth("running", t)))
    assert running_values <= {0.0, 1.0}
    assert one.truth("program", t[:3]).tolist() == [one.signals.program] * 3
    assert one.truth("vibration", t[:4]).shape == (4, 500)
    with pytest.raises(ValueError, match="microseconds"):
        OpcUaCncSimulator(update_ns=1_500)
