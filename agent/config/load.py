"""Reading a config file into validated models, with errors a plant engineer can act on.

Each error names the file, the key path (``sources[0].tags[2].address``) and what was
expected, on one line, so ``edge-agent check`` output can go straight into a ticket.
Sources are validated by their own driver's model, found by ``protocol``.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.config.model import AgentConfig, SourceConfig
from protocols.registry import DriverNotFound, load_driver
from protocols.sdk import Driver


class ConfigError(Exception):
    """One or more problems in a config file; ``str()`` gives one line per problem."""

    def __init__(self, file: str, problems: Iterable[tuple[str, str]]) -> None:
        self.file = file
        self.problems = list(problems)
        super().__init__(
            "\n".join(
                f"{file}: {key}: {msg}" if key else f"{file}: {msg}" for key, msg in self.problems
            )
        )


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config with the driver class of each source and a hash for lineage."""

    path: Path
    config: AgentConfig
    drivers: dict[str, type[Driver]]
    config_hash: str


def key_path(loc: Iterable[int | str], prefix: str = "") -> str:
    """``('sources', 0, 'tags', 2, 'address')`` -> ``sources[0].tags[2].address``."""
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def validation_problems(
    error: ValidationError, prefix: str, skip: set[str]
) -> list[tuple[str, str]]:
    problems = []
    for item in error.errors(include_url=False):
        loc = [part for part in item["loc"] if part not in skip]
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        elif item["type"] == "uplink_type":  # the table is the input: show only its type
            message += f" (got {item['input'].get('type')!r})"
        elif "input" in item and item["type"] not in ("value_error",):
            message += f" (got {item['input']!r})"
        message = message.removeprefix("Value error, ")
        problems.append((key_path(loc, prefix), message))
    return problems


def _validate_source(index: int, raw: Any) -> tuple[SourceConfig, type[Driver]]:
    prefix = f"sources[{index}]"
    if not isinstance(raw, Mapping):
        raise _Problems([(prefix, "expected a table ([[sources]])")])
    protocol = raw.get("protocol")
    if protocol is None:
        raise _Problems([(f"{prefix}.protocol", 'required key is missing (e.g. "modbus")')])
    if not isinstance(protocol, str):
        raise _Problems([(f"{prefix}.protocol", f"expected a protocol name, got {protocol!r}")])
    try:
        driver = load_driver(protocol)
    except DriverNotFound as exc:
        raise _Problems([(f"{prefix}.protocol", str(exc))]) from None
    try:
        return driver.config_model.model_validate(dict(raw)), driver
    except ValidationError as exc:
        raise _Problems(validation_problems(exc, prefix, set())) from None


class _Problems(Exception):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems


def parse_config(data: Mapping[str, Any], path: Path) -> LoadedConfig:
    """Validate an already-parsed TOML document; raises ConfigError."""
    problems: list[tuple[str, str]] = []
    sources: list[SourceConfig] = []
    drivers: dict[str, type[Driver]] = {}
    raw_sources = data.get("sources", [])
    if not isinstance(raw_sources, list):
        problems.append(("sources", "expected an array of tables ([[sources]])"))
        raw_sources = []
    for index, raw in enumerate(raw_sources):
        try:
            source, driver = _validate_source(index, raw)
        except _Problems as exc:
            problems.extend(exc.problems)
            continue
        sources.append(source)
        drivers[source.name] = driver
    if not raw_sources and not problems:
        problems.append(("sources", "at least one [[sources]] table is required"))
    rest = {key: value for key, value in data.items() if key != "sources"}
    config: AgentConfig | None = None
    try:
        config = AgentConfig.model_validate({**rest, "sources": sources})
    except ValidationError as exc:
        own = validation_problems(exc, "", {"parquet", "mqtt", "postgres", "sparkplug"})
        if problems:  # an empty or short source list is the consequence of those problems
            own = [p for p in own if p[0] != "sources"]
        problems.extend(own)
    if problems or config is None:
        raise ConfigError(str(path), problems)
    return LoadedConfig(path, config, drivers, config_hash(config))


def config_hash(config: AgentConfig) -> str:
    """Short stable hash of the validated config, stored in every batch as lineage."""
    canonical = json.dumps(
        config.model_dump(mode="json", serialize_as_any=True), sort_keys=True, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's document; raises ConfigError when it is missing or not TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), [("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [("", f"cannot read: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [("", f"invalid TOML: {exc}")]) from None


def load_config(path: str | Path) -> LoadedConfig:
    """Read and validate a TOML config file; raises ConfigError."""
    path = Path(path)
    return parse_config(read_toml(path), path)
