"""``edge-agent browse``: an OPC UA address space as ready-to-paste tag configuration.

Walks the hierarchy under Objects (the standard Server object excluded), and for every
data variable prints a ``[[sources.tags]]`` block with a name built from the browse path,
the node id, and the unit from the EngineeringUnits property, under a complete
``[[sources]]`` header. Data type, array shape and EURange go into comments, so the output
passes ``edge-agent check`` as pasted (``--config`` prints a whole config).
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from typing import Any

from asyncua import Client, ua

_SERVER_OBJECT = ua.NodeId(ua.Int32(ua.ObjectIds.Server))
_HAS_PROPERTY = ua.NodeId(ua.Int32(ua.ObjectIds.HasProperty))
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class Variable:
    name: str
    node: str
    data_type: str
    is_array: bool
    unit: str | None
    eu_range: tuple[float, float] | None


def tag_name(path: list[str]) -> str:
    """A config-safe tag name from a browse path: ["CNC", "Spindle Speed"] -> CNC.Spindle_Speed."""
    name = ".".join(_UNSAFE.sub("_", part).strip("_") or "_" for part in path)
    return name if re.match(r"^[A-Za-z0-9_]", name) else f"_{name}"


async def _properties(client: Client, node_id: ua.NodeId) -> dict[str, Any]:
    node = client.get_node(node_id)
    found: dict[str, Any] = {}
    for ref in await node.get_children_descriptions(refs=ua.ObjectIds.HasProperty):
        if ref.BrowseName.Name in ("EngineeringUnits", "EURange"):
            try:
                found[ref.BrowseName.Name] = await client.get_node(ref.NodeId).read_value()
            except ua.UaError:
                continue
    return found


async def _describe(client: Client, node_id: ua.NodeId, path: list[str]) -> Variable:
    node = client.get_node(node_id)
    try:
        data_type = (await node.read_data_type_as_variant_type()).name
    except (ua.UaError, ValueError):
        data_type = "unknown"
    try:
        is_array = await node.read_value_rank() >= 1
    except ua.UaError:
        is_array = False
    props = await _properties(client, node_id)
    units = props.get("EngineeringUnits")
    unit = units.DisplayName.Text if isinstance(units, ua.EUInformation) else None
    eu = props.get("EURange")
    eu_range = (float(eu.Low), float(eu.High)) if isinstance(eu, ua.Range) else None
    return Variable(tag_name(path), node_id.to_string(), data_type, is_array, unit, eu_range)


async def browse(client: Client, max_depth: int = 6, pattern: str | None = None) -> list[Variable]:
    """Data variables under Objects, depth-first, filtered by a glob on the tag name."""
    found: list[Variable] = []
    seen: set[ua.NodeId] = set()

    async def walk(node_id: ua.NodeId, path: list[str], depth: int) -> None:
        if depth > max_depth or node_id in seen:
            return
        seen.add(node_id)
        for ref in await client.get_node(node_id).get_children_descriptions():
            if ref.NodeId == _SERVER_OBJECT or ref.ReferenceTypeId == _HAS_PROPERTY:
                continue
            child_path = [*path, ref.BrowseName.Name]
            if ref.NodeClass == ua.NodeClass.Variable:
                variable = await _describe(client, ref.NodeId, child_path)
                if pattern is None or fnmatch.fnmatch(variable.name, pattern):
                    found.append(variable)
            if ref.NodeClass in (ua.NodeClass.Object, ua.NodeClass.Variable):
                await walk(ref.NodeId, child_path, depth + 1)

    await walk(client.nodes.objects.nodeid, [], 1)
    return found


def _quoted(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's), so node ids with quotes paste safely."""
    return json.dumps(text, ensure_ascii=False)


def _unique(names: list[str]) -> list[str]:
    """Names made unique (``a``, ``a_2``...): two browse paths can sanitise to one name."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        count = seen[name] = seen.get(name, 0) + 1
        unique.append(name if count == 1 else f"{name}_{count}")
    return unique


def to_toml(
    variables: list[Variable],
    url: str,
    rate: str = "1s",
    source: str = "opcua1",
    whole_config: bool = False,
) -> str:
    """A ``[[sources]]`` table with one ``[[sources.tags]]`` per variable, ready to paste;
    with ``whole_config``, preceded by the minimal rest of a config (a local dataset)."""
    lines = [f"# {len(variables)} variables browsed from {url}"]
    if whole_config:
        lines += [
            "# a whole config: check it with `edge-agent check -c FILE`",
            "",
            "[agent]",
            'data_dir = "./edge-agent-data"',
            "",
            "[[uplinks]]",
            'type = "parquet"',
            'path = "./edge-data"',
        ]
    lines += [
        "",
        "[[sources]]",
        f"name = {_quoted(source)}",
        'protocol = "opcua"',
        f"url = {_quoted(url)}",
        "",
    ]
    for variable, name in zip(variables, _unique([v.name for v in variables]), strict=True):
        notes = [f"{variable.data_type}{'[]' if variable.is_array else ''}"]
        if variable.is_array:
            notes.append('array: add sample_interval = "<element spacing>" for its timestamps')
        if variable.eu_range is not None:
            notes.append(f"EURange [{variable.eu_range[0]:g}, {variable.eu_range[1]:g}]")
        lines += [
            "  [[sources.tags]]",
            f"  name = {_quoted(name)}",
            f"  node = {_quoted(variable.node)}",
            f"  rate = {_quoted(rate)}",
        ]
        if variable.unit:
            lines.append(f"  unit = {_quoted(variable.unit)}")
        lines.append(f"  # {', '.join(notes)}")
        lines.append("")
    return "\n".join(lines)
