"""The small JSON-path subset MQTT tag mappings use: ``$``, ``.key``, ``['key']``, ``[0]``.

Payloads from SCADA systems and devices are shallow documents; a full JSONPath engine (filters,
slices, recursive descent) would cost a dependency and per-message interpretation for
nothing the mappings need. A path is compiled once, at config load, into a tuple of keys
and list indices, so evaluating it per message is a few subscript operations.
"""

from __future__ import annotations

import re
from typing import Any, Final

Path = tuple[str | int, ...]


class _Missing:
    """Marker for "the path does not exist in this document" (distinct from JSON null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

_STEP = re.compile(
    r"""\.(?P<name>[^.\[\]'"]+)"""  # .key
    r"""|\[(?P<index>-?\d+)\]"""  # [0]
    r"""|\[(?P<quote>['"])(?P<quoted>.*?)(?P=quote)\]"""  # ['key with . or spaces']
)


def compile_path(text: str) -> Path:
    """Compile ``$.values.TT101``, ``$.items[0].v`` or ``$['a.b']``; ``$`` is the root.

    Raises ValueError naming the position that does not parse.
    """
    if not text.startswith("$"):
        raise ValueError(f"a JSON path starts with '$' (e.g. \"$.values.TT101\"), got {text!r}")
    steps: list[str | int] = []
    position = 1
    while position < len(text):
        match = _STEP.match(text, position)
        if match is None:
            raise ValueError(
                f"cannot parse JSON path {text!r} at position {position} ({text[position:]!r}); "
                "supported: .key, ['key'], [index]"
            )
        if match.group("name") is not None:
            steps.append(match.group("name"))
        elif match.group("index") is not None:
            steps.append(int(match.group("index")))
        else:
            steps.append(match.group("quoted"))
        position = match.end()
    return tuple(steps)


def format_path(path: Path) -> str:
    """The canonical text of a compiled path (for logs and messages)."""
    parts = ["$"]
    for step in path:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _STEP.fullmatch(f".{step}"):
            parts.append(f".{step}")
        else:
            parts.append(f"[{step!r}]")
    return "".join(parts)


def walk(document: Any, path: Path) -> Any:
    """The value at ``path`` in a decoded JSON document, or MISSING.

    Only dicts are entered by key and only lists by index: a key into a list, an index into
    an object or anything into a scalar (a string included) is MISSING, never an exception.
    """
    node = document
    for step in path:
        if isinstance(step, str):
            if type(node) is not dict:
                return MISSING
            node = node.get(step, MISSING)
            if node is MISSING:
                return MISSING
        else:
            if type(node) is not list:
                return MISSING
            try:
                node = node[step]
            except IndexError:
                return MISSING
    return node
