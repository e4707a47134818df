"""Configuration models: the TOML file's shape, validated by pydantic.

Every key has a default except names and addresses, so a minimal config is a gateway with
one source and its tags. Unknown keys are rejected (``extra="forbid"``): in a plant, a
misspelt ``deadbnad`` that silently does nothing is worse than a refusal to start.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.durations import Duration

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
ResampleMethod = Literal["linear", "previous", "mean", "min", "max", "last"]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]


class Section(BaseModel):
    """Base of every config table: strict about unknown keys, immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TagConfig(Section):
    """Keys every tag has, whatever its protocol; drivers subclass it to add addressing."""

    name: Name
    rate: Duration = Field(default=1_000_000_000, description="sampling period")
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    description: str = ""

    resample: ResampleMethod | None = Field(
        default=None, description="method in the wide output; default: linear, previous for bool"
    )

    def sampling_grid_ns(self) -> int:
        """The grid ``snap`` rounds this tag's device-clock times to: its rate."""
        return self.rate

    def resample_method(self) -> str:
        """The configured method, or the default for the tag's kind (drivers refine it)."""
        return self.resample or "linear"


class SourceConfig(Section):
    """Keys every source has; a driver's config model subclasses it (see protocols.sdk)."""

    name: Name
    protocol: str
    enabled: bool = True
    backoff_initial: Duration = Field(default=1_000_000_000)
    backoff_max: Duration = Field(default=60_000_000_000)
    snap: bool = Field(default=False, description="put sample times on the tags' sampling grid")
    correct_clock: bool = Field(
        default=False, description="map device timestamps onto the gateway clock"
    )
    clock_threshold: Duration = Field(
        default=100_000_000,
        description="flag samples clock-uncertain beyond this clock error (offset if not "
        "correcting, estimate uncertainty if correcting)",
    )
    clock_window: Duration = Field(
        default=60_000_000_000, description="history the clock model fits offset and drift on"
    )
    tags: list[TagConfig] = Field(min_length=1)

    @field_validator("tags")
    @classmethod
    def _unique_tag_names(cls, tags: list[TagConfig]) -> list[TagConfig]:
        seen: set[str] = set()
        for tag in tags:
            if tag.name in seen:
                raise ValueError(f"tag name {tag.name!r} is used twice in this source")
            seen.add(tag.name)
        return tags


class UserCredentials(Section):
    """Mixin for sources that log in with a user name: the password is never inline.

    It comes from a file (a mounted secret) or an environment variable (systemd
    ``LoadCredential``/``Environment``), so a config file can be shared without leaking it.
    """

    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _password_source(self) -> UserCredentials:
        if self.username is None and (self.password_file or self.password_env):
            raise ValueError("a password needs a username")
        if self.username is not None and not (self.password_file or self.password_env):
            raise ValueError("username needs password_file or password_env (never inline)")
        return self

    def password(self) -> str:
        """The password from its file or environment variable; raises OSError/KeyError."""
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        assert self.password_env is not None
        try:
            return os.environ[self.password_env]
        except KeyError:
            raise KeyError(f"environment variable {self.password_env} is not set") from None


class AgentSection(Section):
    gateway_id: Name = Field(default_factory=lambda: socket.gethostname().split(".")[0])
    data_dir: Path = Path("./edge-agent-data")
    metrics: str = Field(
        default="127.0.0.1:9464",
        description='host:port for /metrics and /healthz; "" disables the endpoint',
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"
    queue_frames: int = Field(default=4096, ge=16)

    @field_validator("metrics")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f'expected "host:port" or "", got {value!r}')
        return value


class ResampleSection(Section):
    """The optional wide output: every tag on one grid, beside the long-form dataset."""

    period: Duration
    max_gap: Duration = Field(
        default=1_000_000_000, description="longest stretch without samples that is filled"
    )
    path: str = "./edge-data-wide"


class SpoolSection(Section):
    """The durable spool between batches and uplinks (see agent/spool.py)."""

    max_bytes: int = Field(default=1 << 30, ge=1, description="cap on spooled batch bytes")
    max_age: Duration = Field(default=7 * 86_400_000_000_000, description="cap on batch age")
    overflow: Literal["drop_oldest", "stop_acquiring"] = Field(
        default="drop_oldest",
        description="at a cap: delete the oldest batches (counted as lost) or pause the sources",
    )
    replay_rate: float = Field(
        default=10.0, gt=0, description="backlog batches per second per uplink, beside live ones"
    )


class BatchSection(Section):
    window: Duration = Field(default=1_000_000_000)
    lateness: Duration = Field(default=2_000_000_000)


class ParquetUplinkConfig(Section):
    type: Literal["parquet"] = "parquet"
    name: Name = "parquet"
    path: str = "./edge-data"
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = "zstd"
    compression_level: int | None = Field(default=None, ge=1, le=22)


UplinkConfig = Annotated[ParquetUplinkConfig, Field(discriminator="type")]


_Named = TypeVar("_Named", SourceConfig, ParquetUplinkConfig)


class AgentConfig(Section):
    """The whole file. ``sources`` holds each driver's own validated model."""

    agent: AgentSection = Field(default_factory=AgentSection)
    batch: BatchSection = Field(default_factory=BatchSection)
    sources: list[SourceConfig] = Field(min_length=1)
    uplinks: list[UplinkConfig] = Field(default_factory=lambda: [ParquetUplinkConfig()])
    resample: ResampleSection | None = None
    spool: SpoolSection = Field(default_factory=SpoolSection)

    @model_validator(mode="after")
    def _resample_grid(self) -> AgentConfig:
        if self.resample is None:
            return self
        if self.batch.window % self.resample.period:
            raise ValueError("resample.period must divide batch.window (one grid per window)")
        if self.batch.window + 2 * self.resample.max_gap >= 1 << 40:
            raise ValueError("batch.window + 2 x resample.max_gap must stay under 18 minutes")
        return self

    @field_validator("sources", "uplinks")
    @classmethod
    def _unique_names(cls, items: list[_Named], info: ValidationInfo) -> list[_Named]:
        first_index: dict[str, int] = {}
        for index, item in enumerate(items):
            if item.name in first_index:
                raise ValueError(
                    f"name {item.name!r} of {info.field_name}[{index}] is already used by "
                    f"{info.field_name}[{first_index[item.name]}]"
                )
            first_index[item.name] = index
        return items
