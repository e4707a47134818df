"""Topic specs of tags: exact topics, ``+``/``#`` filters and ``{name}`` patterns.

A pattern such as ``plant/{area}/{tag}`` subscribes as ``plant/+/+``; its ``{tag}`` segment
names the tag a message belongs to, other ``{...}`` segments match any one level and only
document what the level holds. Matching a received topic against the specs happens once per
distinct topic (see ``mapping``); these are the rules it applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
TAG_PLACEHOLDER = "tag"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One tag topic: the subscription filter and how to match a received topic."""

    text: str
    levels: tuple[str, ...]  # "+" and "#" as in MQTT; placeholders are "+"
    tag_level: int | None  # index of the {tag} segment, if any

    @classmethod
    def parse(cls, text: str) -> TopicSpec:
        """Validate and parse a tag topic; raises ValueError saying what is wrong."""
        if not text:
            raise ValueError("a topic cannot be empty")
        if "\0" in text:
            raise ValueError("a topic cannot contain NUL")
        levels: list[str] = []
        tag_level: int | None = None
        parts = text.split("/")
        for index, part in enumerate(parts):
            placeholder = _PLACEHOLDER.match(part)
            if placeholder is not None:
                if placeholder.group(1) == TAG_PLACEHOLDER:
                    if tag_level is not None:
                        raise ValueError(f"{text!r} has more than one {{tag}} level")
                    tag_level = index
                levels.append("+")
            elif part == "#":
                if index != len(parts) - 1:
                    raise ValueError(f"'#' must be the last level of {text!r}")
                levels.append(part)
            elif part != "+" and set(part) & set("+#{}"):
                raise ValueError(
                    f"level {part!r} of {text!r}: '+', '#' and {{name}} fill a whole level"
                )
            else:
                levels.append(part)
        return cls(text, tuple(levels), tag_level)

    @property
    def filter(self) -> str:
        """The MQTT subscription filter."""
        return "/".join(self.levels)

    @property
    def is_exact(self) -> bool:
        return not set(self.levels) & {"+", "#"}

    def match(self, topic_levels: list[str]) -> str | None:
        """For a received topic split on "/": None if it does not match, else the derived
        tag name ("" when the spec has no {tag} level)."""
        levels = self.levels
        if levels and levels[-1] == "#":
            fixed = len(levels) - 1
            if len(topic_levels) < fixed:
                return None
        else:
            fixed = len(levels)
            if len(topic_levels) != fixed:
                return None
        # MQTT 4.7.2: wildcards at the first level do not match topics starting with "$"
        wild_first = fixed == 0 or levels[0] in ("+", "#")
        if wild_first and topic_levels and topic_levels[0].startswith("$"):
            return None
        for want, have in zip(levels[:fixed], topic_levels, strict=False):
            if want != "+" and want != have:
                return None
        return "" if self.tag_level is None else topic_levels[self.tag_level]


def covers(wide: str, narrow: str) -> bool:
    """True if every topic matching filter ``narrow`` also matches filter ``wide``."""
    wide_levels, narrow_levels = wide.split("/"), narrow.split("/")
    for index, want in enumerate(wide_levels):
        if want == "#":
            return True
        if index >= len(narrow_levels):
            return False
        have = narrow_levels[index]
        if have == "#" or (want != "+" and want != have):
            return False
    return len(wide_levels) == len(narrow_levels)


def minimal_filters(filters: list[str]) -> list[str]:
    """The filters not covered by another one, in their order.

    Overlapping subscriptions can make a broker deliver one message once per matching
    subscription (MQTT 5 allows it; shared subscriptions always do it), which would
    duplicate samples; the covered filters add nothing, so they are not subscribed.
    """
    unique = list(dict.fromkeys(filters))
    return [
        narrow
        for index, narrow in enumerate(unique)
        if not any(
            covers(wide, narrow) and (not covers(narrow, wide) or other < index)
            for other, wide in enumerate(unique)
            if other != index
        )
    ]
