"""What a reload changes: the running config against the new one, before anything is done.

A reload restarts only the sources and uplinks whose config changed and applies the
settings that can change live (``agent.log_level``/``log_format``, ``[spool]``,
``[health]``). Some keys cannot change under a running agent without half-applying: the
gateway id and the window grid are in every batch id and open window, ``data_dir`` holds
the spool the agent has open, ``agent.metrics`` is the endpoint a reload may have come
through, and the wide output's grid is cut to the window. A new config that changes one
of them is refused as a whole, the running one stays, and the log says which keys need a
restart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agent.config.durations import format_duration
from agent.config.model import AgentConfig

RESTART_ONLY: dict[str, Callable[[AgentConfig], object]] = {
    "agent.gateway_id": lambda config: config.agent.gateway_id,
    "agent.data_dir": lambda config: config.agent.data_dir.resolve(),
    "agent.metrics": lambda config: config.agent.metrics,
    "batch.window": lambda config: config.batch.window,
    "batch.lateness": lambda config: config.batch.lateness,
    "resample": lambda config: config.resample,
}
LIVE_SETTINGS: dict[str, Callable[[AgentConfig], object]] = {
    "agent.log_level": lambda config: config.agent.log_level,
    "agent.log_format": lambda config: config.agent.log_format,
    "spool": lambda config: config.spool,
    "health": lambda config: config.health,
}


class _Named(Protocol):
    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class Changes:
    """Named items (sources or uplinks) of two configs, sorted by what a reload does."""

    kept: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @classmethod
    def between(cls, old: Sequence[_Named], new: Sequence[_Named]) -> Changes:
        before = {item.name: item for item in old}
        after = {item.name: item for item in new}
        changes = cls()
        for name, item in after.items():
            if name not in before:
                changes.added.append(name)
            elif before[name] == item:
                changes.kept.append(name)
            else:
                changes.changed.append(name)
        changes.removed.extend(name for name in before if name not in after)
        return changes

    @property
    def restarted(self) -> list[str]:
        """Stopped for good or to start again with their new config."""
        return [*self.changed, *self.removed]

    @property
    def started(self) -> list[str]:
        return [*self.changed, *self.added]


@dataclass(frozen=True)
class ReloadPlan:
    refused: list[str]  # "batch.window: 1s -> 2s", keys only a restart can change
    sources: Changes
    uplinks: Changes
    settings: list[str]  # live settings that changed

    @property
    def unchanged(self) -> bool:
        return not (
            self.refused
            or self.settings
            or self.sources.changed
            or self.sources.added
            or self.sources.removed
            or self.uplinks.changed
            or self.uplinks.added
            or self.uplinks.removed
        )

    def summary(self) -> dict[str, list[str]]:
        """The non-empty lists, for the log line and the ``reload`` command's answer."""
        lists = {
            "sources_restarted": self.sources.changed,
            "sources_added": self.sources.added,
            "sources_removed": self.sources.removed,
            "uplinks_restarted": self.uplinks.changed,
            "uplinks_added": self.uplinks.added,
            "uplinks_removed": self.uplinks.removed,
            "settings": self.settings,
        }
        return {key: value for key, value in lists.items() if value}


def plan_reload(old: AgentConfig, new: AgentConfig) -> ReloadPlan:
    """What going from ``old`` to ``new`` takes (disabled sources count as absent)."""
    refused = [
        f"{key}: {_show(value(old))} -> {_show(value(new))}"
        for key, value in RESTART_ONLY.items()
        if value(old) != value(new)
    ]
    settings = [key for key, value in LIVE_SETTINGS.items() if value(old) != value(new)]
    return ReloadPlan(
        refused,
        Changes.between(
            [s for s in old.sources if s.enabled], [s for s in new.sources if s.enabled]
        ),
        Changes.between(old.uplinks, new.uplinks),
        settings,
    )


def _show(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, int) and not isinstance(value, bool):  # the durations (ns)
        return format_duration(value)
    return str(value)


Outcome = Literal["applied", "unchanged", "invalid", "refused"]


@dataclass(frozen=True)
class ReloadResult:
    """A reload's answer, logged by the agent and returned to ``edge-agent reload``."""

    outcome: Outcome
    message: str
    config: str
    config_hash: str
    changes: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "message": self.message,
            "config": self.config,
            "config_hash": self.config_hash,
            "changes": self.changes,
        }
