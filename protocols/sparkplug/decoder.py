"""Sparkplug B messages to columnar samples, and the host application's view of each node.

Per edge node the decoder keeps what the specification asks a host application to track:
the node's birth (its metrics' names, aliases and data types, and ``bdSeq``), each
device's birth, and the message sequence number. Messages arrive in the broker's order.

- **NBIRTH** replaces the node's alias table and forgets its devices' (they are born again
  after it); **DBIRTH** replaces one device's. Birth metrics carry current values: they
  are samples too. A birth binds each metric to a tag (explicitly mapped, or an automatic
  tag) and tells the agent the tag's unit and data type (the batch lineage).
- **NDATA/DDATA** name metrics by alias (or by name) from the birth; a metric the birth did
  not declare, or data from a node or device without a birth, is counted ``no_birth`` and
  dropped, never guessed. Each metric keeps its own timestamp (else the payload's).
- **NDEATH** (also the will the broker publishes for a node that vanished) whose ``bdSeq``
  matches the node's birth marks every tag of the node and its devices bad ``comm_error``
  at the moment it is received; one with another ``bdSeq`` is a stale will of an earlier
  session (``stale_death``) and changes nothing. **DDEATH** does the same for one device.
- ``seq`` must grow by one (mod 256) from message to message of a node; a jump is counted
  ``sequence_gap`` (messages were lost) and decoding goes on.

Nothing in a payload can raise out of :meth:`SparkplugDecoder.decode`; every problem is a
reason in ``edge_agent_payload_errors_total``:

====================  ===================================================================
oversized             message over ``max_payload``: dropped unread
malformed             not a Sparkplug protobuf payload, a birth metric without a name, an
                      array whose bytes do not fit its type
unmapped_topic        not ``spBv1.0/<group>/<type>/<node>[/<device>]``
no_birth              data (or a DBIRTH) without the birth it needs, per message
sequence_gap          ``seq`` not the previous one plus one
unknown_datatype      a birth metric with a data type code the specification lacks
unsupported           DataSet, Template, Bytes, File metrics (logged once with their names)
duplicate_alias       a birth declaring one alias twice: neither metric is reachable by it
absurd_timestamp      a time beyond ``max_clock_skew`` of receipt (historical ones: in the
                      future): stored at receive time, uncertain and clock-uncertain
stale_death           a death whose ``bdSeq`` is not the current birth's: ignored
name_clash            an automatic tag whose name another tag has: not mapped
no_slot               every ``auto_tag_slots`` place taken: the metric is not mapped
====================  ===================================================================
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import structlog

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from protocols.mqtt.session import UNMAPPED_TOPIC
from protocols.sparkplug.config import ANY, SparkplugSourceConfig, SparkplugTagConfig
from protocols.sparkplug.schema import BD_SEQ, COMMANDS, NAMESPACE, DataType, payload_class
from protocols.sparkplug.store import BirthStore, TagCatalogue
from protocols.sparkplug.values import (
    ArrayError,
    Kind,
    is_known,
    kind_of,
    signed32,
    signed64,
    unpack_array,
    unpack_strings,
)

OVERSIZED = "oversized"
MALFORMED = "malformed"
NO_BIRTH = "no_birth"
SEQUENCE_GAP = "sequence_gap"
UNKNOWN_DATATYPE = "unknown_datatype"
UNSUPPORTED = "unsupported"
DUPLICATE_ALIAS = "duplicate_alias"
ABSURD_TIMESTAMP = "absurd_timestamp"
STALE_DEATH = "stale_death"
NAME_CLASH = "name_clash"
NO_SLOT = "no_slot"

_GOOD = q.GOOD
_NULL = q.make(q.BAD, q.Reason.SOURCE_STATUS)  # the node says it has no value
_DEAD = q.make(q.BAD, q.Reason.COMM_ERROR)
_ABSURD = q.make(q.UNCERTAIN) | int(q.Flag.CLOCK_UNCERTAIN)
_BAD_ARRAY = q.make(q.BAD, q.Reason.DECODE_ERROR)
_MAX_MS = (1 << 63) // 1_000_000  # later than this does not fit int64 nanoseconds
_EXAMPLE_CHARS = 120
_MAX_CACHED_TOPICS = 100_000
_DOUBLE, _FLOAT, _BOOLEAN, _TEXT = Kind.DOUBLE, Kind.FLOAT, Kind.BOOLEAN, Kind.TEXT
_SIGNED32, _NARROW, _UNSIGNED32 = Kind.SIGNED32, Kind.NARROW, Kind.UNSIGNED32
_SIGNED64, _UNSIGNED64 = Kind.SIGNED64, Kind.UNSIGNED64
_INVALID_NAME = re.compile(r"[^A-Za-z0-9_.\-]")

Describe = Callable[[int, str | None, dict[str, Any]], None]
Route = tuple[str, str, str, str | None, tuple[str, str]]


class Binding(NamedTuple):
    """One born metric: where its samples go (tag -1: nowhere) and how to read it (a tuple:
    the hot loop unpacks it in one step)."""

    tag: int
    kind: Kind
    datatype: int
    interval: int  # ns between the elements of an array metric


@dataclass(slots=True)
class Table:
    """The metrics of one birth certificate, by alias and by name."""

    aliases: dict[int, Binding] = field(default_factory=dict)
    names: dict[str, Binding] = field(default_factory=dict)
    # data names metrics by alias when the birth declared aliases (the specification's
    # rule); read the alias first then, unless alias 0 is declared (a metric without an
    # alias field reads as 0 and must then be looked up by name first)
    alias_first: bool = False

    def tags(self) -> Iterator[int]:
        return (b.tag for b in self.names.values() if b.tag >= 0)


@dataclass(slots=True)
class Node:
    """A host application's state of one edge node: its birth, devices, bdSeq and seq."""

    table: Table | None = None  # None: not born, or dead
    bdseq: int | None = None
    seq: int | None = None
    devices: dict[str, Table] = field(default_factory=dict)


def auto_tag_name(path: str) -> str:
    """A valid tag name for a metric path: '/' becomes '.', other odd characters '_'."""
    name = _INVALID_NAME.sub("_", path.replace("/", "."))
    if not name or name[0] in ".-":
        name = "_" + name
    if len(name) > 128:
        name = name[:111] + "-" + hashlib.blake2b(path.encode(), digest_size=8).hexdigest()
    return name


class SparkplugDecoder:
    """Decodes one source's Sparkplug messages into column lists; never raises on input."""

    def __init__(self, config: SparkplugSourceConfig) -> None:
        self.config = config
        self.payload_class = payload_class()
        self.max_payload = config.max_payload
        self.max_skew_ns = config.max_clock_skew
        self.nodes: dict[tuple[str, str], Node] = {}
        self._routes: dict[str, Route] = {}
        explicit = config.explicit_tags
        self._explicit: dict[str, list[tuple[int, SparkplugTagConfig]]] = {}
        for index, tag in enumerate(explicit):
            assert tag.metric is not None  # checked by the config
            self._explicit.setdefault(tag.metric, []).append((index, tag))
        self._first_slot = len(explicit)
        self._names = {tag.name for tag in explicit}
        self._rates = [tag.rate for tag in config.tags]
        self.describe: Describe = lambda tag, name, lineage: None
        self.log: Any = structlog.get_logger().bind(source=config.name)
        self.births: BirthStore | None = None  # set by attach(): persistence on
        self.catalogue: TagCatalogue | None = None
        self.store_error: OSError | None = None  # the last failed write, for the driver's log
        self._logged_unsupported: set[tuple[str, str, str | None]] = set()
        self._tags: list[int] = []
        self._times: list[int] = []
        self._values: list[float] = []
        # row -> (quality, node clock stamp) of the rows that are not good or whose stamp is
        # not their time (0: none, or historical); the others need no column entry of their own
        self._odd: dict[int, tuple[int, int]] = {}
        self._texts: dict[int, str] = {}  # row -> text of string metrics
        # nodes to ask for a rebirth (only with rebirth_requests): missing births, gaps
        self.rebirth_wanted: set[tuple[str, str]] = set()
        self.errors: dict[str, int] = {}
        self.examples: dict[str, str] = {}
        self.messages = 0

    # -- setup ---------------------------------------------------------------------------------

    def attach(
        self, births: BirthStore, catalogue: TagCatalogue | None, describe: Describe
    ) -> None:
        """Persist from now on, name the automatic tags the catalogue remembers, and replay
        the kept births into the alias tables (no samples: their values were stored)."""
        self.births, self.catalogue, self.describe = births, catalogue, describe
        if catalogue is not None:
            for path, (slot, name) in catalogue.by_path.items():
                self.describe(self._first_slot + slot, name, {"sparkplug": {"metric": path}})
                self._names.add(name)
        for topic, payload in births.load():
            self.decode(topic, payload, 0, restoring=True)

    def filters(self) -> list[str]:
        config = self.config
        node = f"{NAMESPACE}/{config.group}/+/{config.edge_node}"
        return [node, f"{node}/{config.device}"]

    # -- per message ---------------------------------------------------------------------------

    def reject(self, reason: str, topic: str, detail: str) -> None:
        count = self.errors.get(reason)
        if count is None:
            self.errors[reason] = 1
            self.examples[reason] = f"{topic[:_EXAMPLE_CHARS]}: {detail[:_EXAMPLE_CHARS]}"
        else:
            self.errors[reason] = count + 1

    def decode(
        self, topic: str, payload: bytes | bytearray, received: int, restoring: bool = False
    ) -> None:
        """Append the samples of one message; count what is wrong with it. ``restoring``:
        a kept birth replayed at start (tables only)."""
        self.messages += 1
        route = self._routes.get(topic)
        if route is None:
            route = self._route(topic)
            if route is None:
                return
        kind, group, node_id, device, key = route
        if not kind:
            return  # a command to the node, not data; a passive host has nothing to do
        if len(payload) > self.max_payload:
            self.reject(OVERSIZED, topic, f"{len(payload)} bytes > {self.max_payload}")
            return
        try:
            message = self.payload_class.FromString(
                payload if type(payload) is bytes else bytes(payload)
            )
        except Exception as exc:  # protobuf's DecodeError, or worse from a broken payload
            self.reject(MALFORMED, topic, f"not a Sparkplug B payload: {exc}")
            return
        node = self.nodes.get(key)
        if node is None:
            node = self.nodes[key] = Node()
        if kind == "NDEATH":
            self._node_death(node, group, node_id, message, topic, received)
            return
        if kind == "NBIRTH" or restoring:
            node.seq = None if restoring else message.seq
        else:
            seq, last = message.seq, node.seq
            if last is not None and seq != (last + 1) % 256:
                self.reject(SEQUENCE_GAP, topic, f"seq {seq} after {last}")
                self._want_rebirth(key)
            node.seq = seq
        table = node.table
        if kind == "DDATA":  # the common case first
            known = node.devices.get(device or "") if table is not None else None
            if known is None:
                self.reject(NO_BIRTH, topic, "DDATA before the device's DBIRTH, or the NBIRTH")
                self._want_rebirth(key)
            else:
                self._data(known, message, topic, received)
        elif kind == "NBIRTH":
            node.table = self._birth(group, node_id, None, message, topic)
            node.devices.clear()
            self._keep(group, node_id, None, topic, payload, restoring)
            if not restoring:
                self._data(node.table, message, topic, received)
        elif table is None:
            self.reject(NO_BIRTH, topic, f"{kind} before the node's NBIRTH")
            self._want_rebirth(key)
        elif kind == "NDATA":
            self._data(table, message, topic, received)
        elif kind == "DBIRTH":
            assert device is not None
            born = node.devices[device] = self._birth(group, node_id, device, message, topic)
            self._keep(group, node_id, device, topic, payload, restoring)
            if not restoring:
                self._data(born, message, topic, received)
        else:  # DDEATH
            assert device is not None
            gone = node.devices.pop(device, None)
            if gone is not None:
                self._mark_dead(gone.tags(), received)
            self._forget(group, node_id, device)

    def _want_rebirth(self, key: tuple[str, str]) -> None:
        if self.config.rebirth_requests:
            self.rebirth_wanted.add(key)

    def _route(self, topic: str) -> Route | None:
        """(message type, group, node, device, node key) of a topic, cached; the type is ""
        for a command (NCMD, DCMD); None, the topic counted, if it is no Sparkplug topic."""
        levels = topic.split("/")
        if len(levels) not in (4, 5) or levels[0] != NAMESPACE:
            self.reject(UNMAPPED_TOPIC, topic, "not spBv1.0/<group>/<type>/<node>[/<device>]")
            return None
        kind = levels[2]
        device = levels[4] if len(levels) == 5 else None
        if kind in COMMANDS:
            kind = ""
        elif (device is None) != (kind[:1] == "N") or kind[1:] not in ("BIRTH", "DATA", "DEATH"):
            self.reject(UNMAPPED_TOPIC, topic, f"message type {kind!r} on this topic")
            return None
        if len(self._routes) >= _MAX_CACHED_TOPICS:  # a topic flood must not grow memory
            self._routes.clear()
        route = self._routes[topic] = (kind, levels[1], levels[3], device, (levels[1], levels[3]))
        return route

    def _node_death(
        self, node: Node, group: str, node_id: str, message: Any, topic: str, received: int
    ) -> None:
        bdseq = next((_integer(m) for m in message.metrics if m.name == BD_SEQ), None)
        if node.table is None or (bdseq is not None and bdseq != node.bdseq):
            self.reject(STALE_DEATH, topic, f"bdSeq {bdseq}, the node's birth has {node.bdseq}")
            return
        tags = set(node.table.tags())
        for table in node.devices.values():
            tags.update(table.tags())
        self._mark_dead(sorted(tags), received)
        node.table, node.seq = None, None
        node.devices.clear()
        self._forget(group, node_id, None)

    def _mark_dead(self, tags: Iterator[int] | list[int], received: int) -> None:
        for tag in tags:
            self._append(tag, received, math.nan, _DEAD, 0)

    # -- births ---------------------------------------------------------------------------------

    def _birth(self, group: str, node: str, device: str | None, message: Any, topic: str) -> Table:
        table = Table()
        twice: set[int] = set()
        unsupported: list[str] = []
        for metric in message.metrics:
            name = metric.name
            if not name:
                self.reject(MALFORMED, topic, "a birth metric without a name")
                continue
            if name == BD_SEQ and device is None:
                self.nodes[(group, node)].bdseq = _integer(metric)
                continue
            datatype = int(metric.datatype)
            if not is_known(datatype):
                self.reject(UNKNOWN_DATATYPE, topic, f"{name}: data type {datatype}")
                continue
            kind = kind_of(datatype)
            if kind is Kind.UNSUPPORTED:
                unsupported.append(f"{name} ({DataType(datatype).name})")
                self.reject(UNSUPPORTED, topic, f"{name}: {DataType(datatype).name}")
                binding = Binding(-1, kind, datatype, 0)
            else:
                binding = self._bind(group, node, device, name, datatype, metric)
            table.names[name] = binding
            if metric.HasField("alias"):
                alias = int(metric.alias)
                if alias in table.aliases:
                    twice.add(alias)
                table.aliases[alias] = binding
        for alias in twice:
            del table.aliases[alias]
            self.reject(DUPLICATE_ALIAS, topic, f"alias {alias} declared twice")
        table.alias_first = bool(table.aliases) and 0 not in table.aliases
        key = (group, node, device)
        if unsupported and key not in self._logged_unsupported:
            self._logged_unsupported.add(key)
            self.log.warning(
                "Sparkplug metrics of unsupported types are not stored",
                topic=topic,
                metrics=unsupported,
            )
        return table

    def _bind(
        self, group: str, node: str, device: str | None, name: str, datatype: int, metric: Any
    ) -> Binding:
        """The tag a born metric feeds (-1: none), described to the agent."""
        tag, config = self._explicit_tag(node, device, name)
        path = f"{node}/{device}/{name}" if device is not None else f"{node}/{name}"
        if self.config.group == ANY:
            path = f"{group}/{path}"
        if tag < 0 and self.config.auto_tags:
            tag = self._auto_tag(path, name, topic=f"{group}/{node}/{device or ''}")
        kind = kind_of(datatype)
        if tag < 0:
            return Binding(-1, kind, datatype, 0)
        interval = (config.sample_interval if config else None) or self.config.sample_interval
        lineage: dict[str, Any] = {
            "sparkplug": {"metric": path, "datatype": DataType(datatype).name},
        }
        unit = _property(metric, "engUnit", "engUnits", "EngUnit")
        if unit is not None and (config is None or config.unit is None):
            lineage["unit"] = unit
        if kind in (Kind.TEXT, Kind.STRING_ARRAY):
            lineage["text"] = True
        self.describe(tag, None, lineage)
        return Binding(tag, kind, datatype, interval or self._rates[tag])

    def _explicit_tag(
        self, node: str, device: str | None, name: str
    ) -> tuple[int, SparkplugTagConfig | None]:
        for index, tag in self._explicit.get(name, ()):
            want_node = tag.edge_node or self.config.edge_node
            want_device = tag.device if tag.device is not None else self.config.device
            if want_node not in (ANY, node):
                continue
            if device is None and want_device == "":
                return index, tag
            if device is not None and want_device in (ANY, device):
                return index, tag
        return -1, None

    def _auto_tag(self, path: str, name: str, topic: str) -> int:
        if name == BD_SEQ or self.catalogue is None:  # no catalogue: not attached yet
            return -1
        config = self.config
        if not any(fnmatch.fnmatchcase(path, glob) for glob in config.include):
            return -1
        if any(fnmatch.fnmatchcase(path, glob) for glob in config.exclude):
            return -1
        catalogue = self.catalogue
        assert catalogue is not None
        known = catalogue.by_path.get(path)
        if known is not None:
            return self._first_slot + known[0]
        tag_name = auto_tag_name(path)
        if tag_name in self._names:
            self.reject(NAME_CLASH, topic, f"{path}: tag name {tag_name!r} is taken")
            return -1
        try:
            slot = catalogue.assign(path, tag_name)
        except OSError as exc:
            self.store_error = exc
            return -1
        if slot is None:
            self.reject(NO_SLOT, topic, f"{path}: all {catalogue.slots} auto_tag_slots taken")
            return -1
        self._names.add(tag_name)
        tag = self._first_slot + slot
        self.describe(tag, tag_name, {})
        return tag

    def _keep(
        self,
        group: str,
        node: str,
        device: str | None,
        topic: str,
        payload: bytes | bytearray,
        restoring: bool,
    ) -> None:
        if self.births is None or restoring:
            return
        try:
            self.births.save(group, node, device, topic, bytes(payload))
        except OSError as exc:
            self.store_error = exc

    def _forget(self, group: str, node: str, device: str | None) -> None:
        if self.births is None:
            return
        try:
            self.births.forget(group, node, device)
        except OSError as exc:
            self.store_error = exc

    # -- data -----------------------------------------------------------------------------------

    def _data(self, table: Table, message: Any, topic: str, received: int) -> None:
        """The hot path: per metric one dict lookup, the time, two flags and the one value
        field its birth's data type says; the columns are appended to through local names
        (a method call per sample cost a third of the time)."""
        default_ms = int(message.timestamp)
        names, aliases, alias_first = table.names, table.aliases, table.alias_first
        skew = self.max_skew_ns
        low_ms, high_ms = (received - skew) // 1_000_000, (received + skew) // 1_000_000
        tags, times, values = self._tags.append, self._times.append, self._values.append
        rows, odd, texts = self._tags, self._odd, self._texts
        unknown = 0
        absurd = 0
        for metric in message.metrics:
            binding = aliases.get(metric.alias) if alias_first else None
            if binding is None:
                name = metric.name
                binding = names.get(name) if name else aliases.get(metric.alias)
                if binding is None:
                    if name != BD_SEQ:
                        unknown += 1
                    continue
            tag, kind, datatype, _ = binding
            if tag < 0:
                continue
            ms = metric.timestamp or default_ms
            historical = metric.is_historical
            if low_ms <= ms <= high_ms and not historical:
                time_ns = ms * 1_000_000
                quality = stamp = -1  # good, stamped with its own time: nothing to note
            else:
                time_ns, stamp, quality = self._odd_time(ms, historical, received)
                absurd += quality == _ABSURD
            if metric.is_null:
                flags = quality & q.FLAG_MASK if quality > 0 else 0  # a clock flag stays
                odd[len(rows)] = (_NULL | flags, time_ns if stamp < 0 else stamp)
                tags(tag)
                times(time_ns)
                values(math.nan)
                continue
            if kind is _DOUBLE:
                value = metric.double_value
            elif kind is _FLOAT:
                value = metric.float_value
            elif kind is _SIGNED32:  # int_value; some encoders use long_value
                raw = metric.int_value
                if raw:
                    value = raw - 4294967296 if raw >= 2147483648 else raw
                else:
                    value = signed64(metric.long_value)
            elif kind is _NARROW:
                raw = metric.int_value
                value = signed32(raw, datatype) if raw else signed64(metric.long_value)
            elif kind is _UNSIGNED32:  # UInt32 is long_value in Tahu, int_value elsewhere
                value = metric.int_value or metric.long_value
            elif kind is _BOOLEAN:
                value = 1.0 if metric.boolean_value else 0.0
            elif kind is _SIGNED64:
                value = signed64(metric.long_value)
            elif kind is _UNSIGNED64:
                value = metric.long_value
            elif kind is _TEXT:
                texts[len(rows)] = metric.string_value
                value = math.nan
            else:
                stamp = time_ns if stamp < 0 else stamp
                self._array(binding, metric, topic, time_ns, max(quality, 0), stamp)
                continue
            if quality >= 0:
                odd[len(rows)] = (quality, stamp)
            tags(tag)
            times(time_ns)
            values(value)
        if unknown:
            self.reject(NO_BIRTH, topic, f"{unknown} metrics no birth declared")
        if absurd:
            self.reject(ABSURD_TIMESTAMP, topic, f"{absurd} metric times beyond max_clock_skew")

    def _odd_time(self, ms: int, historical: bool, received: int) -> tuple[int, int, int]:
        """(time, node clock stamp, quality) of a metric without a time, with a historical
        one, or with one beyond ``max_clock_skew`` (then the receive time, flagged)."""
        if not ms:
            return received, 0, _GOOD
        if ms > _MAX_MS:
            return received, 0, _ABSURD
        time_ns = ms * 1_000_000
        if historical:  # old on purpose: no measure of the node's clock, only no future
            return (
                (received, 0, _ABSURD)
                if time_ns > received + self.max_skew_ns
                else (time_ns, 0, _GOOD)
            )
        return received, 0, _ABSURD

    def _append(self, tag: int, time_ns: int, value: float, quality: int, stamp: int) -> None:
        if quality != _GOOD or stamp != time_ns:
            self._odd[len(self._tags)] = (quality, stamp)
        self._tags.append(tag)
        self._times.append(time_ns)
        self._values.append(value)

    def _array(
        self, binding: Binding, metric: Any, topic: str, time_ns: int, quality: int, stamp: int
    ) -> None:
        """One sample per element, ``interval`` apart from the metric's time."""
        data = metric.bytes_value
        texts: list[str] | None = None
        try:
            if binding.kind is Kind.STRING_ARRAY:
                texts = unpack_strings(data)
                values = np.full(len(texts), math.nan)
            else:
                values = unpack_array(binding.datatype, data)
        except ArrayError as exc:
            self.reject(MALFORMED, topic, f"{DataType(binding.datatype).name}: {exc}")
            self._append(binding.tag, time_ns, math.nan, _BAD_ARRAY, stamp)
            return
        first = len(self._tags)
        n = values.shape[0]
        self._tags.extend([binding.tag] * n)
        self._times.extend(range(time_ns, time_ns + n * binding.interval, binding.interval))
        self._values.extend(values.tolist())
        self._odd.update(dict.fromkeys(range(first, first + n), (quality, stamp)))
        if texts is not None:
            self._texts.update(zip(range(first, first + n), texts, strict=True))

    # -- hand-over ------------------------------------------------------------------------------

    def take_frame(self, received: int) -> Frame | None:
        if not self._tags:
            return None
        times = np.array(self._times, np.int64)
        quality = np.zeros(times.shape[0], np.uint16)
        stamps = times.copy()
        if self._odd:
            rows = np.fromiter(self._odd.keys(), np.int64, len(self._odd))
            noted = np.array(list(self._odd.values()), np.int64).reshape(-1, 2)
            quality[rows] = noted[:, 0]
            stamps[rows] = noted[:, 1]
            self._odd = {}
        frame = Frame(
            np.array(self._tags, np.int32),
            times,
            np.array(self._values, np.float64),
            quality,
            received,
        )
        if stamps.any():  # the node's clock: the clock model's input
            frame.source_time = stamps
            frame.device_clock = True
        if self._texts:
            frame.text = np.full(len(frame), None, dtype=object)
            frame.text[list(self._texts)] = list(self._texts.values())
            self._texts = {}
        self._tags, self._times, self._values = [], [], []
        return frame

    def take_errors(self) -> tuple[dict[str, int], dict[str, str]]:
        errors, examples = self.errors, self.examples
        self.errors, self.examples = {}, {}
        return errors, examples


def _integer(metric: Any) -> int | None:
    """An integer metric's value (bdSeq is UInt64 by the specification, Int32 in some)."""
    which = metric.WhichOneof("value")
    if which in ("long_value", "int_value"):
        return int(getattr(metric, which))
    return None


def _property(metric: Any, *keys: str) -> str | None:
    """A string property of a birth metric (engineering unit), if it has one."""
    if not metric.HasField("properties"):
        return None
    properties = metric.properties
    for key, value in zip(properties.keys, properties.values, strict=False):
        if key in keys and value.WhichOneof("value") == "string_value":
            return str(value.string_value)
    return None
