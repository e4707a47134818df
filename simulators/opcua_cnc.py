"""An OPC UA CNC machine, served by asyncua, with seeded signals, clock faults and security.

The address space (NODES) is what the OPC UA driver is tested against: spindle, axes,
temperatures, status and alarm words, a program name, a part counter and a vibration
waveform published as a Float array block, each analog value an ``AnalogItemType`` with
``EngineeringUnits`` and ``EURange``. Optional ``Bulk.{i}`` variables load a subscription with
thousands of monitored items.

Time model. *True time* is this host's wall clock (``time.time_ns()``). Values are published
on absolute ticks ``t_k = k * update_ns`` of true time (never ``sleep(period)``; an overrun
skips ticks and counts them) and every value is ``signal(t_k)`` from :class:`CncSignals`, a
pure function of (seed, t_k). The machine's own clock, which stamps ``SourceTimestamp``, may
be skewed and drift::

    source_clock(t) = t + clock_offset_ns + round(clock_drift_ppm * 1e-6 * (t - clock_epoch_ns))

with ``clock_epoch_ns`` fixed when the simulator object is created (a server restart does
not reset the machine's clock). The server's own clock may be off too
(``server_clock_offset_ns``, ``server_clock_drift_ppm``), as in a PLC whose embedded OPC UA
server runs on the PLC's wrong clock: it stamps ``ServerTimestamp`` (wall time at the write,
on the server's clock), each publish response's PublishTime and every response header's
Timestamp, and the device clock is synchronised to it, so ``source_clock`` adds both skews.
asyncua carries DateTime as a Python ``datetime``, so the published ``SourceTimestamp`` is
``source_clock(t_k)`` truncated to whole microseconds. :meth:`true_time` inverts the clock
and :meth:`truth` returns exactly the published value, so a test maps ``truth(name,
true_time(SourceTimestamp))`` and compares with ``==``.

Lifecycle: ``start()`` builds a fresh asyncua ``Server``, ``stop()`` tears it down including
sessions whose subscriptions would outlive the TCP connection, and ``restart()`` does both on
the same port, so clients lose their session and subscriptions as with a real server
restart. Building the standard OPC UA address space costs about 1.5 s in asyncua; it is built
once per process and cloned for each server, so every start after the first takes
milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import gc
import hmac
import ipaddress
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, cast

import numpy as np
from asyncua import Server, ua
from asyncua.common.callback import CallbackService, CallbackType, ServerItemCallback
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import (
    AddressSpace,
    AttributeValue,
    NodeData,
    NodeManagementService,
)
from asyncua.server.internal_server import InternalServer
from asyncua.server.standard_address_space import standard_address_space
from asyncua.server.uaprocessor import UaProcessor
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from simulators.signals import NS, CncSignals

NAMESPACE = "urn:edge-agent:cnc"
APPLICATION_URI = "urn:edge-agent:simulators:opcua-cnc"
APPLICATION_NAME = "edge-agent CNC simulator"
ENDPOINT_PATH = "/edge-agent/cnc"
NAMESPACE_INDEX = 2  # NAMESPACE is registered first, after ns 0 (OPC UA) and ns 1 (server)
# A published SourceTimestamp is truncated to whole microseconds, so the inverse clock may
# land up to ~1 us before the tick it stamps; truth() attributes such instants to that tick.
STAMP_SLACK_NS = 2_000
_logger = logging.getLogger(__name__)
SECURITY_POLICIES = (
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
)


@dataclass(frozen=True)
class Node:
    """One simulated variable: its node id, OPC UA type, signal, unit and EURange.

    ``type`` is an OPC UA VariantType name; ``array`` marks the waveform block (one Float
    array of ``vibration_samples`` values per update).
    """

    name: str
    node_id: str
    type: str
    signal: str
    unit: str | None = None
    eu_range: tuple[float, float] | None = None
    array: bool = False

    @property
    def identifier(self) -> str:
        """The string identifier, e.g. ``CNC.Spindle.Speed``."""
        return self.node_id.split(";s=", 1)[1]

    @property
    def variant_type(self) -> ua.VariantType:
        return ua.VariantType[self.type]

    def toml(self, rate: str) -> str:
        lines = [
            "[[sources.tags]]",
            f'name = "{self.name}"',
            f'node = "{self.node_id}"',
            f'rate = "{rate}"',
        ]
        if self.unit:
            lines.append(f'unit = "{self.unit}"')
        return "\n".join(lines)


def _node(
    name: str,
    identifier: str,
    kind: str,
    signal: str,
    unit: str | None = None,
    eu_range: tuple[float, float] | None = None,
    array: bool = False,
) -> Node:
    return Node(name, f"ns={NAMESPACE_INDEX};s={identifier}", kind, signal, unit, eu_range, array)


NODES: tuple[Node, ...] = (
    _node("spindle_speed", "CNC.Spindle.Speed", "Double", "spindle_speed", "rpm", (0.0, 24000.0)),
    _node("spindle_torque", "CNC.Spindle.Torque", "Float", "torque", "N.m", (0.0, 60.0)),
    _node(
        "spindle_temp", "CNC.Spindle.Temperature", "Double", "spindle_temp", "degC", (0.0, 100.0)
    ),
    _node("vibration", "CNC.Spindle.Vibration", "Float", "vibration", "mm/s", (-10.0, 10.0), True),
    _node("axis_x", "CNC.Axis.X", "Double", "axis_x", "mm", (-200.0, 200.0)),
    _node("axis_y", "CNC.Axis.Y", "Double", "axis_y", "mm", (-150.0, 150.0)),
    _node("axis_z", "CNC.Axis.Z", "Double", "axis_z", "mm", (-120.0, 20.0)),
    _node("feed_rate", "CNC.Axis.FeedRate", "Double", "feed_rate", "mm/min", (0.0, 5000.0)),
    _node("coolant_temp", "CNC.Coolant.Temperature", "Float", "coolant_temp", "degC", (0.0, 60.0)),
    _node("status", "CNC.Status", "UInt16", "status_word"),
    _node("alarm_code", "CNC.AlarmCode", "UInt32", "alarm_code"),
    _node("running", "CNC.Running", "Boolean", "running"),
    _node("program", "CNC.Program", "String", "program"),
    _node("part_count", "CNC.PartCount", "Int32", "part_count"),
)
NODES_BY_NAME = {node.name: node for node in NODES}
_BULK_GROUP = 100  # bulk variables per folder
_FOLDERS = ("CNC.Spindle", "CNC.Axis", "CNC.Coolant")  # objects under CNC grouping the nodes
# unit -> (UNECE common code, description): OPC UA Part 8 EUInformation for each unit used
_UNITS = {
    "rpm": ("RPM", "revolutions per minute"),
    "N.m": ("NU", "newton metre"),
    "mm": ("MMT", "millimetre"),
    "mm/min": ("H81", "millimetre per minute"),
    "mm/s": ("C16", "millimetre per second"),
    "degC": ("CEL", "degree Celsius"),
}
_UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"
_DTYPES: dict[str, type[np.generic]] = {
    "Double": np.float64,
    "Float": np.float32,
    "UInt16": np.uint16,
    "UInt32": np.uint32,
    "Int32": np.int32,
    "Boolean": np.bool_,
}


def _id(identifier: int | str, namespace: int = 0) -> ua.NodeId:
    """A NodeId from a plain int or str (asyncua annotates its own int/str subclasses)."""
    return ua.NodeId(identifier, namespace)  # type: ignore[arg-type]


def eu_information(unit: str) -> ua.EUInformation:
    """EngineeringUnits for ``unit``: DisplayName is the unit as configured in the agent."""
    code, description = _UNITS.get(unit, ("", unit))
    unit_id = 0
    for char in code:  # Part 8: the UNECE common code packed into an Int32, one byte a char
        unit_id = (unit_id << 8) | ord(char)
    return ua.EUInformation(
        NamespaceUri=_UNECE_URI,
        UnitId=unit_id if code else -1,
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(description),
    )


def quantize(node: Node, values: np.ndarray) -> np.ndarray:
    """Engineering values as the node's OPC UA type holds them, back in float64.

    Float nodes keep float32 precision, integer nodes are rounded and wrapped like the
    type, booleans become 0.0/1.0: exactly what a client decodes.
    """
    if node.type == "Double":
        return np.asarray(values, np.float64)
    if node.type == "Float":
        return np.asarray(values).astype(np.float32).astype(np.float64)
    if node.type == "Boolean":
        return (np.asarray(values) != 0).astype(np.float64)
    return np.round(values).astype(np.int64).astype(_DTYPES[node.type]).astype(np.float64)


def _python_value(node: Node, value: float) -> Any:
    if node.type in ("Double", "Float"):
        return value
    if node.type == "Boolean":
        return bool(value)
    return int(value)


def _datetime(ns: int) -> dt.datetime:
    """A UTC datetime, truncated to the microsecond like every OPC UA stamp asyncua sends."""
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ns // 1000)


class _PublishedValue(ua.DataValue):
    """A DataValue that nothing mutates once published, so a deep copy can be itself.

    asyncua deep-copies the new DataValue for every monitored item on every write (about
    20-40 us each): 3000 monitored items at 10 Hz would keep a core busy on copies alone.
    """

    __slots__ = ()

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        return self


async def _store(slot: AttributeValue, value: ua.DataValue) -> None:
    """What ``AddressSpace.write_attribute_value`` does for a Value attribute, minus lookups.

    The node lookup, the bad-status and variant type checks are redundant here (the types
    are right by construction); the value is stored and every monitored item is notified.
    """
    slot.value = value
    slot.value_callback = None
    if slot.datachange_callbacks:
        for handle, callback in list(slot.datachange_callbacks.items()):
            try:
                await callback(handle, value)
            except Exception:
                _logger.exception("datachange callback %s failed", handle)


# -- the standard address space, built once per process ------------------------------------

_standard_lock = threading.Lock()
_standard_nodes: list[dict[ua.NodeId, NodeData]] = []


def _standard_template() -> dict[ua.NodeId, NodeData]:
    """The ~6000 nodes of namespace 0 as asyncua generates them (about 1.5 s, once)."""
    with _standard_lock:
        if not _standard_nodes:
            aspace = AddressSpace()
            standard_address_space.fill_address_space(  # type: ignore[no-untyped-call]
                NodeManagementService(aspace)
            )
            _standard_nodes.append(aspace._nodes)
        return _standard_nodes[0]


def _clone_nodes(template: dict[ua.NodeId, NodeData]) -> dict[ua.NodeId, NodeData]:
    """Per-server copies of the node records; DataValues and references are immutable here.

    Attribute values are replaced (never mutated) on write, and the template has no method
    or value callbacks, so fresh NodeData/AttributeValue shells are all a server needs: its
    monitored items and writes never reach the template or another server.
    """
    enabled = gc.isenabled()
    gc.disable()  # 80k small allocations otherwise trigger full collections: 45 ms -> 250 ms
    try:
        nodes: dict[ua.NodeId, NodeData] = {}
        for nodeid, data in template.items():
            clone = NodeData(nodeid)
            clone.attributes = {
                attr: AttributeValue(cast(ua.DataValue, value.value))
                for attr, value in data.attributes.items()
            }
            clone.references = list(data.references)
            nodes[nodeid] = clone
        return nodes
    finally:
        if enabled:
            gc.enable()


class _FastInternalServer(InternalServer):
    """asyncua's InternalServer, loading namespace 0 from the per-process template.

    ``response_clock`` is the server's clock that stamps every response header (see
    :func:`_send_stamped_response`); None leaves asyncua's stamp (the host clock).
    """

    response_clock: Callable[[], dt.datetime] | None = None

    async def load_standard_address_space(self, shelf_file: Path | None = None) -> None:
        template = await asyncio.to_thread(_standard_template)
        self.aspace._nodes = _clone_nodes(template)


_send_response: Callable[..., None] = UaProcessor.send_response


def _send_stamped_response(
    self: UaProcessor,
    requesthandle: Any,
    seqhdr: Any,
    response: Any,
    msgtype: bytes = ua.MessageType.SecureMessage,
) -> None:
    """Stamp a response header (Part 4 7.33: the time the server sent the response) with
    the simulated server's clock, which may be off, as a real server's would be.

    asyncua stamps it with the host's clock when it builds the response, and has no
    per-server hook for it: this replaces UaProcessor.send_response for every server in
    the process, and changes only those of this simulator.
    """
    clock = getattr(self.iserver, "response_clock", None)
    if clock is not None:
        response.ResponseHeader.Timestamp = clock()
    _send_response(self, requesthandle, seqhdr, response, msgtype)


UaProcessor.send_response = _send_stamped_response  # type: ignore[method-assign]


class _DictUserManager(UserManager):
    """Username/password logins checked against a dict; anything else is refused."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = dict(users)

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        expected = self.users.get(username or "")
        if expected is None or password is None:
            return None
        if not hmac.compare_digest(expected.encode(), password.encode()):
            return None
        return User(role=UserRole.User, name=username)


def _generate_certificate(key_path: Path, cert_path: Path) -> None:
    """A self-signed application certificate (DER) and key (PEM) for the server."""
    key = cert_gen.generate_private_key()
    hostname = socket.gethostname()
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(APPLICATION_URI),
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    certificate = cert_gen.generate_self_signed_app_certificate(
        key,
        APPLICATION_NAME,
        {},
        names,
        extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=365,
    )
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    cert_path.write_bytes(certificate.public_bytes(Encoding.DER))


def _certificate_usable(cert_path: Path) -> bool:
    try:
        certificate = x509.load_der_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    return certificate.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=1)


class OpcUaCncSimulator:
    """The simulated CNC. ``await start(host, port)`` returns the bound port (0 = any).

    ``security=True`` offers only signed/encrypted endpoints (SECURITY_POLICIES) with a
    self-signed certificate generated on first start into ``cert_dir`` (a temporary
    directory if None) and accepts any client certificate (no trust list: a simulator for
    tests, not a hardened server). ``users`` restricts logins to those username/password
    pairs and rejects anonymous ones; without it anonymous logins are accepted.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        update_ns: int = 50_000_000,
        clock_offset_ns: int = 0,
        clock_drift_ppm: float = 0.0,
        server_clock_offset_ns: int = 0,
        server_clock_drift_ppm: float = 0.0,
        security: bool = False,
        cert_dir: Path | None = None,
        users: dict[str, str] | None = None,
        bulk_tags: int = 0,
        max_nodes_per_read: int | None = None,
        refuse_reads: bool = False,
        vibration_samples: int = 500,
        vibration_rate_hz: int = 10_000,
    ) -> None:
        if update_ns <= 0 or update_ns % 1000:
            raise ValueError("update_ns must be a positive whole number of microseconds")
        if vibration_rate_hz <= 0 or 1_000_000 % vibration_rate_hz:
            raise ValueError("vibration_rate_hz must divide 1 MHz (samples on whole us)")
        self.signals = CncSignals(seed, scan_ns=update_ns)
        self.seed = seed
        self.update_ns = update_ns
        self.clock_offset_ns = clock_offset_ns
        self.clock_drift_ppm = clock_drift_ppm
        self.server_clock_offset_ns = server_clock_offset_ns
        self.server_clock_drift_ppm = server_clock_drift_ppm
        self.clock_epoch_ns = time.time_ns() // update_ns * update_ns
        self.security = security
        self.cert_dir = cert_dir
        self.users = dict(users) if users is not None else None
        self.bulk_tags = bulk_tags
        self.max_nodes_per_read = max_nodes_per_read
        self.refuse_reads = refuse_reads  # a server without the Read service (subscribe only)
        self.vibration_samples = vibration_samples
        self.vibration_rate_hz = vibration_rate_hz
        self.host = "127.0.0.1"
        self.port = 0
        self.ticks = 0  # ticks published since construction
        self.skipped_ticks = 0  # ticks lost to overruns (the loop was late by a period)
        self.tick_seconds = 0.0  # time spent publishing (it never yields): the cost per tick
        self.read_requests = 0  # Read service calls from clients
        self.write_attempts = 0  # the agent must never write; tests assert this stays 0
        self._server: Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._temp_dir: tempfile.TemporaryDirectory[str] | None = None
        self._scalar_ids = [_id(node.identifier, NAMESPACE_INDEX) for node in NODES]
        self._bulk_ids = [_id(f"Bulk.{i}", NAMESPACE_INDEX) for i in range(bulk_tags)]
        self._slots: list[AttributeValue] = []
        self._bulk_slots: list[AttributeValue] = []
        self._last_status_second = -1

    # -- clock ----------------------------------------------------------------------------

    def _skewed(self, true_ns: np.ndarray | int, offset_ns: int, drift_ppm: float) -> np.ndarray:
        t = np.asarray(true_ns, np.int64)
        drift = np.round(drift_ppm * 1e-6 * (t - self.clock_epoch_ns).astype(np.float64))
        return t + np.int64(offset_ns) + drift.astype(np.int64)

    @property
    def _source_skew(self) -> tuple[int, float]:
        """The machine clock's offset and drift against true time: its own plus its server's."""
        return (
            self.clock_offset_ns + self.server_clock_offset_ns,
            self.clock_drift_ppm + self.server_clock_drift_ppm,
        )

    def server_clock(self, true_ns: np.ndarray | int) -> np.ndarray:
        """The server's clock at true instants (int64 ns): what stamps ServerTimestamp."""
        return self._skewed(true_ns, self.server_clock_offset_ns, self.server_clock_drift_ppm)

    def source_clock(self, true_ns: np.ndarray | int) -> np.ndarray:
        """The machine's clock at true instants (int64 ns, before microsecond truncation)."""
        return self._skewed(true_ns, *self._source_skew)

    def source_timestamp_ns(self, true_ns: np.ndarray | int) -> np.ndarray:
        """The SourceTimestamp published for true instants, as int64 ns (whole microseconds)."""
        return self.source_clock(true_ns) // 1000 * 1000

    def true_time(self, source_ns: np.ndarray | int) -> np.ndarray:
        """Inverse of :meth:`source_clock`: true int64 ns for machine-clock ns."""
        offset_ns, drift_ppm = self._source_skew
        s = np.asarray(source_ns, np.int64)
        elapsed = (s - np.int64(offset_ns) - self.clock_epoch_ns).astype(np.float64)
        return self.clock_epoch_ns + np.round(elapsed / (1.0 + drift_ppm * 1e-6)).astype(np.int64)

    def tick_of(self, true_ns: np.ndarray | int) -> np.ndarray:
        """The tick whose values are in force at true instants (see STAMP_SLACK_NS)."""
        t = np.asarray(true_ns, np.int64)
        return (t + STAMP_SLACK_NS) // self.update_ns * self.update_ns

    # -- truth -------------------------------------------------------------------------------

    def truth(self, name: str, true_ns: np.ndarray | int) -> np.ndarray:
        """Exactly what node ``name`` held at true instants ``true_ns``.

        float64 values at the node type's precision (booleans 0.0/1.0); an object array of
        str for the String node; for the vibration array one row of samples per instant.
        """
        node = NODES_BY_NAME[name]
        ticks = self.tick_of(np.atleast_1d(np.asarray(true_ns, np.int64)))
        if node.type == "String":
            return np.full(ticks.shape, self.signals.program, dtype=object)
        if node.array:
            times = ticks[:, None] + self._block_offsets()[None, :]
            return quantize(node, self.signals.vibration(times))
        return quantize(node, self.signals.functions[node.signal](ticks))

    def _block_offsets(self) -> np.ndarray:
        period = NS // self.vibration_rate_hz
        return np.arange(self.vibration_samples, dtype=np.int64) * period

    def block_times(self, true_start_ns: int) -> np.ndarray:
        """True instants (int64 ns) of each element of the block published at that tick.

        The FIRST element is sampled at the tick t_k, element i at t_k + i / rate: with the
        defaults (500 samples at 10 kHz, 50 ms updates) blocks tile time without gaps.
        """
        return int(self.tick_of(true_start_ns)) + self._block_offsets()

    def truth_block(self, true_start_ns: int) -> np.ndarray:
        """The vibration block published at the tick in force at ``true_start_ns``."""
        return quantize(
            NODES_BY_NAME["vibration"], self.signals.vibration(self.block_times(true_start_ns))
        )

    def bulk_truth(self, true_ns: np.ndarray | int) -> np.ndarray:
        """Values of ``Bulk.{i}``: shape (bulk_tags,) for one instant, (n, bulk_tags) for n."""
        ticks = self.tick_of(true_ns)
        if ticks.ndim == 0:
            return self.signals.bulk(int(ticks), self.bulk_tags)
        return np.stack([self.signals.bulk(int(t), self.bulk_tags) for t in ticks])

    def bulk_nodes(self) -> tuple[Node, ...]:
        """The ``Bulk.{i}`` variables as Nodes, e.g. for ``agent_config(nodes=...)``."""
        return tuple(
            _node(f"bulk_{i}", f"Bulk.{i}", "Double", "bulk") for i in range(self.bulk_tags)
        )

    # -- address space ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{ENDPOINT_PATH}"

    @property
    def server_certificate_path(self) -> Path | None:
        """The server's DER certificate (for clients to pin), once security has started."""
        directory = self._certificate_dir()
        return directory / "server_cert.der" if directory is not None else None

    def _certificate_dir(self) -> Path | None:
        if self.cert_dir is not None:
            return self.cert_dir
        if self._temp_dir is not None:
            return Path(self._temp_dir.name)
        return None

    def _add_object(
        self, items: list[ua.AddNodesItem], identifier: str, parent: ua.NodeId, folder: bool
    ) -> None:
        name = identifier.rsplit(".", 1)[-1]
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = _id(identifier, NAMESPACE_INDEX)
        item.BrowseName = ua.QualifiedName(name, NAMESPACE_INDEX)
        item.NodeClass = ua.NodeClass.Object
        item.ParentNodeId = parent
        item.ReferenceTypeId = _id(ua.ObjectIds.Organizes if folder else ua.ObjectIds.HasComponent)
        item.TypeDefinition = _id(
            ua.ObjectIds.FolderType if folder else ua.ObjectIds.BaseObjectType
        )
        attrs = ua.ObjectAttributes()
        attrs.DisplayName = ua.LocalizedText(name)
        attrs.Description = ua.LocalizedText(name)
        item.NodeAttributes = attrs
        items.append(item)

    def _add_variable(
        self,
        items: list[ua.AddNodesItem],
        nodeid: ua.NodeId,
        name: str,
        parent: ua.NodeId,
        variant: ua.Variant,
        datatype: ua.NodeId,
        *,
        type_definition: int = ua.ObjectIds.BaseDataVariableType,
        prop: bool = False,
        length: int | None = None,
    ) -> None:
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = nodeid
        item.BrowseName = ua.QualifiedName(name, 0 if prop else NAMESPACE_INDEX)
        item.NodeClass = ua.NodeClass.Variable
        item.ParentNodeId = parent
        item.ReferenceTypeId = _id(ua.ObjectIds.HasProperty if prop else ua.ObjectIds.HasComponent)
        item.TypeDefinition = _id(ua.ObjectIds.PropertyType if prop else type_definition)
        attrs = ua.VariableAttributes()
        attrs.DisplayName = ua.LocalizedText(name)
        attrs.Description = ua.LocalizedText(name)
        attrs.DataType = datatype
        attrs.Value = variant
        if length is None:
            attrs.ValueRank = ua.ValueRank.Scalar
        else:
            attrs.ValueRank = ua.ValueRank.OneDimension
            attrs.ArrayDimensions = [length]
        attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
        attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
        attrs.MinimumSamplingInterval = 0.0 if prop else self.update_ns / 1e6
        attrs.Historizing = False
        attrs.WriteMask = 0
        attrs.UserWriteMask = 0
        item.NodeAttributes = attrs
        items.append(item)

    def _address_space_items(self) -> list[ua.AddNodesItem]:
        """AddNodes items for the CNC object tree and the bulk folder, in one batch."""
        items: list[ua.AddNodesItem] = []
        objects = _id(ua.ObjectIds.ObjectsFolder)
        cnc = _id("CNC", NAMESPACE_INDEX)
        self._add_object(items, "CNC", objects, folder=False)
        for folder in _FOLDERS:
            self._add_object(items, folder, cnc, folder=False)
        for node, nodeid in zip(NODES, self._scalar_ids, strict=True):
            vtype = node.variant_type
            length = self.vibration_samples if node.array else None
            initial: Any = ua.get_default_value(vtype)
            if length is not None:
                initial = [0.0] * length
            parent = _id(node.identifier.rsplit(".", 1)[0], NAMESPACE_INDEX)
            type_definition = ua.ObjectIds.BaseDataVariableType
            if node.eu_range is not None:  # AnalogItemType makes EURange mandatory
                type_definition = ua.ObjectIds.AnalogItemType
            elif node.unit is not None:
                type_definition = ua.ObjectIds.BaseAnalogType
            self._add_variable(
                items,
                nodeid,
                node.identifier.rsplit(".", 1)[1],
                parent,
                ua.Variant(initial, vtype),
                _id(int(vtype)),
                type_definition=type_definition,
                length=length,
            )
            if node.eu_range is not None:
                low, high = node.eu_range
                self._add_variable(
                    items,
                    _id(f"{node.identifier}.EURange", NAMESPACE_INDEX),
                    "EURange",
                    nodeid,
                    ua.Variant(ua.Range(Low=low, High=high), ua.VariantType.ExtensionObject),
                    _id(ua.ObjectIds.Range),
                    prop=True,
                )
            if node.unit is not None:
                self._add_variable(
                    items,
                    _id(f"{node.identifier}.EngineeringUnits", NAMESPACE_INDEX),
                    "EngineeringUnits",
                    nodeid,
                    ua.Variant(eu_information(node.unit), ua.VariantType.ExtensionObject),
                    _id(ua.ObjectIds.EUInformation),
                    prop=True,
                )
        if self.bulk_tags:
            # asyncua scans a parent's references on every AddNodes (quadratic in children:
            # 3000 under one folder take ~10 s), so the variables sit in folders of 100
            self._add_object(items, "Bulk", objects, folder=True)
            bulk = _id("Bulk", NAMESPACE_INDEX)
            double = _id(ua.ObjectIds.Double)
            for first in range(0, self.bulk_tags, _BULK_GROUP):
                self._add_object(items, f"Bulk.{first}-{first + _BULK_GROUP - 1}", bulk, True)
            for i, nodeid in enumerate(self._bulk_ids):
                first = i // _BULK_GROUP * _BULK_GROUP
                group = _id(f"Bulk.{first}-{first + _BULK_GROUP - 1}", NAMESPACE_INDEX)
                self._add_variable(
                    items, nodeid, str(i), group, ua.Variant(0.0, ua.VariantType.Double), double
                )
        return items

    # -- publishing --------------------------------------------------------------------------

    async def _publish(self, server: Server, tick: int) -> None:
        """Store every node's value for tick ``tick`` with its stamps, and notify monitors."""
        began = time.perf_counter()
        # Any: asyncua annotates stamps as its DateTime subclass, but encodes any datetime
        source: Any = _datetime(int(self.source_timestamp_ns(tick)))
        served: Any = _datetime(int(self.server_clock(time.time_ns())))
        good = ua.StatusCode()
        t = np.array([tick], np.int64)
        for node, slot in zip(NODES, self._slots, strict=True):
            if node.type == "String":
                value: Any = self.signals.program
            elif node.array:
                value = self.truth_block(tick).tolist()
            else:
                sample = quantize(node, self.signals.functions[node.signal](t))[0]
                value = _python_value(node, float(sample))
            variant = ua.Variant(value, node.variant_type)
            await _store(slot, _PublishedValue(variant, good, source, served))
        if self._bulk_slots:
            double = ua.VariantType.Double
            values = self.signals.bulk(tick, self.bulk_tags).tolist()
            for slot, number in zip(self._bulk_slots, values, strict=True):
                await _store(
                    slot, _PublishedValue(ua.Variant(number, double), good, source, served)
                )
        second = tick // NS
        if second != self._last_status_second:
            # asyncua's own 1 s clock task is disabled (it makes stop() take a second)
            self._last_status_second = second
            await self._write_server_time(server, served)
        self.ticks += 1
        self.tick_seconds += time.perf_counter() - began

    async def _write_server_time(self, server: Server, now: dt.datetime) -> None:
        aspace = server.iserver.aspace
        status_id = _id(ua.ObjectIds.Server_ServerStatus)
        current = aspace.read_attribute_value(status_id, ua.AttributeIds.Value)
        if current.Value is not None and current.Value.Value is not None:
            status = copy.copy(current.Value.Value)
            status.CurrentTime = now
            await aspace.write_attribute_value(
                status_id, ua.AttributeIds.Value, ua.DataValue(ua.Variant(status))
            )
        await aspace.write_attribute_value(
            _id(ua.ObjectIds.Server_ServerStatus_CurrentTime),
            ua.AttributeIds.Value,
            ua.DataValue(ua.Variant(now, ua.VariantType.DateTime)),
        )

    async def _run(self, server: Server) -> None:
        """Publish on absolute ticks of true time; an overrun skips ticks and counts them."""
        period = self.update_ns
        k = time.time_ns() // period + 1
        while True:
            delay = k * period - time.time_ns()
            if delay > 0:
                await asyncio.sleep(delay / NS)
                continue  # check again: never publish a tick before its instant
            latest = time.time_ns() // period
            if latest > k:
                self.skipped_ticks += int(latest - k)
                k = latest
            try:
                await self._publish(server, k * period)
            except Exception:  # values would silently freeze: say why, stop() re-raises it
                _logger.exception("publishing tick %d failed", k * period)
                raise
            k += 1

    # -- lifecycle ---------------------------------------------------------------------------

    async def _certificate_paths(self) -> tuple[Path, Path]:
        directory = self._certificate_dir()
        if directory is None:
            self._temp_dir = tempfile.TemporaryDirectory(prefix="edge-agent-opcua-")
            directory = Path(self._temp_dir.name)
        key_path, cert_path = directory / "server_key.pem", directory / "server_cert.der"

        def ensure() -> None:
            directory.mkdir(parents=True, exist_ok=True)
            if not (key_path.is_file() and _certificate_usable(cert_path)):
                _generate_certificate(key_path, cert_path)

        await asyncio.to_thread(ensure)
        return key_path, cert_path

    def _on_read(self, event: Any, _service: CallbackService) -> None:
        """PreRead hook: count client reads and enforce MaxNodesPerRead (asyncua does not)."""
        if not isinstance(event, ServerItemCallback) or not event.is_external:
            return
        self.read_requests += 1
        if self.refuse_reads:
            raise ServiceError(ua.StatusCodes.BadServiceUnsupported)
        limit = self.max_nodes_per_read
        if limit is not None and len(event.request_params.NodesToRead) > limit:
            raise ServiceError(ua.StatusCodes.BadTooManyOperations)

    def _on_write(self, event: Any, _service: CallbackService) -> None:
        if isinstance(event, ServerItemCallback) and event.is_external:
            self.write_attempts += 1

    async def _build_server(self, host: str, port: int) -> Server:
        user_manager = _DictUserManager(self.users) if self.users is not None else None
        iserver = _FastInternalServer(user_manager=user_manager)
        iserver.response_clock = lambda: _datetime(int(self.server_clock(time.time_ns())))
        server = Server(iserver=iserver)
        server.disable_clock()
        await server.init()
        server.set_server_name(APPLICATION_NAME)
        server.product_uri = APPLICATION_URI
        await server.set_application_uri(APPLICATION_URI)
        index = await server.register_namespace(NAMESPACE)
        if index != NAMESPACE_INDEX:
            raise RuntimeError(f"{NAMESPACE} registered as ns={index}, expected {NAMESPACE_INDEX}")
        server.set_endpoint(f"opc.tcp://{host}:{port}{ENDPOINT_PATH}")
        if self.security:
            key_path, cert_path = await self._certificate_paths()
            await server.load_certificate(cert_path)
            await server.load_private_key(key_path)
            server.set_security_policy(list(SECURITY_POLICIES))
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if self.users is not None:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        else:
            server.set_identity_tokens([ua.AnonymousIdentityToken])
        results = await server.iserver.isession.add_nodes(self._address_space_items())
        for result in results:
            result.StatusCode.check()
        if self.max_nodes_per_read is not None:
            await server.iserver.aspace.write_attribute_value(
                _id(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead),
                ua.AttributeIds.Value,
                ua.DataValue(ua.Variant(self.max_nodes_per_read, ua.VariantType.UInt32)),
            )
        server.subscribe_server_callback(CallbackType.PreRead, self._on_read)
        server.subscribe_server_callback(CallbackType.PreWrite, self._on_write)
        self._stamp_publish_times(server)
        return server

    def _stamp_publish_times(self, server: Server) -> None:
        """Stamp each publish response's PublishTime with the server's (maybe skewed) clock.

        asyncua stamps it with the host's clock; a server whose clock is off stamps it
        with that clock like everything else, and it is what a client measures the server
        clock by without the time values wait in the publishing queue.
        """
        service = server.iserver.subscription_service
        create = service.create_subscription

        async def create_subscription(
            params: ua.CreateSubscriptionParameters,
            callback: Callable[..., Awaitable[None]],
            session_id: ua.NodeId,
            request_callback: Callable[..., Any] | None = None,
        ) -> ua.CreateSubscriptionResult:
            async def stamped(result: ua.PublishResult, *rest: Any) -> None:
                result.NotificationMessage.PublishTime = _datetime(
                    int(self.server_clock(time.time_ns()))
                )
                await callback(result, *rest)

            return await create(params, stamped, session_id, request_callback)

        service.create_subscription = create_subscription  # type: ignore[method-assign]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Build a fresh server, publish the current tick, then listen; returns the port."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        server = await self._build_server(host, port)
        aspace = server.iserver.aspace
        value_attr = ua.AttributeIds.Value
        self._slots = [aspace[nodeid].attributes[value_attr] for nodeid in self._scalar_ids]
        self._bulk_slots = [aspace[nodeid].attributes[value_attr] for nodeid in self._bulk_ids]
        self._last_status_second = -1
        await self._publish(server, time.time_ns() // self.update_ns * self.update_ns)
        await server.start()
        try:
            listener = server.bserver._server if server.bserver is not None else None
            if not isinstance(listener, asyncio.Server) or not listener.sockets:
                raise RuntimeError("asyncua did not open a listening socket")
            bound = int(listener.sockets[0].getsockname()[1])
        except BaseException:
            await server.stop()
            raise
        self.host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        self.port = bound
        url = self.url  # endpoints were described before the port was known
        server.set_endpoint(url)
        for endpoint in server.iserver.endpoints:
            endpoint.EndpointUrl = url
            endpoint.Server.DiscoveryUrls = [url]
        self._server = server
        self._ticker = asyncio.create_task(self._run(server), name="opcua-cnc-ticker")
        return bound

    async def stop(self) -> None:
        """Stop publishing and listening, and end every session, like a machine powering off.

        asyncua keeps sessions that have subscriptions alive after their connection drops
        (for reconnects, Part 4 6.7) and never closes them on stop(); here they are closed so
        no task of this server outlives it.
        """
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        server, self._server = self._server, None
        if server is None:
            return
        await server.stop()
        iserver = server.iserver
        for session in list(iserver._external_sessions.values()):
            await session.close_session(True)
        subscriptions = iserver.subscription_service
        if subscriptions.subscriptions:
            await subscriptions.delete_subscriptions(list(subscriptions.subscriptions))
        for _ in range(3):  # let cancelled connection tasks run to completion
            await asyncio.sleep(0)

    async def restart(self, downtime_s: float = 0.0) -> None:
        """A server restart on the same port: sessions and subscriptions are gone after it."""
        host, port = self.host, self.port
        await self.stop()
        if downtime_s:
            await asyncio.sleep(downtime_s)
        await self.start(host, port)

    def drop_connections(self) -> int:
        """Close the client connections, keep listening and keep sessions; returns how many."""
        if self._server is None:
            return 0
        transports = list(self._server.iserver.asyncio_transports)
        for transport in transports:
            transport.close()
        return len(transports)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def agent_config(
        self,
        rate: str = "100ms",
        *,
        source: str = "cnc1",
        nodes: tuple[Node, ...] = NODES,
        extra: str = "",
    ) -> str:
        """A [[sources]] TOML block that reads ``nodes`` from this simulator. The vibration
        waveform is read at the server's block period whatever ``rate`` says: a subscription
        delivers one value per rate, and a slower rate would skip whole blocks."""
        header = f'[[sources]]\nname = "{source}"\nprotocol = "opcua"\nurl = "{self.url}"\n{extra}'
        spacing = f'\nsample_interval = "{round(1e9 / self.vibration_rate_hz)}ns"'
        block_rate = f"{self.update_ns}ns"
        blocks = [
            node.toml(block_rate) + spacing if node.array else node.toml(rate) for node in nodes
        ]
        return header + "\n" + "\n\n".join(blocks) + "\n"


__all__ = [
    "APPLICATION_URI",
    "NAMESPACE",
    "NODES",
    "NODES_BY_NAME",
    "SECURITY_POLICIES",
    "STAMP_SLACK_NS",
    "Node",
    "OpcUaCncSimulator",
    "eu_information",
    "quantize",
]
