"""Configuration models: the TOML file's shape, validated by pydantic.

Every key has a default except names and addresses, so a minimal config is a gateway with
one source and its tags. Unknown keys are rejected (``extra="forbid"``): in a plant, a
misspelt ``deadbnad`` that silently does nothing is worse than a refusal to start.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Literal, TypeVar
from urllib.parse import urlsplit

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
        return read_secret(self.password_file, self.password_env)


def read_secret(file: Path | None, env: str | None) -> str:
    """A secret from a file (stripped) or else an environment variable; raises OSError/KeyError."""
    if file is not None:
        return file.read_text(encoding="utf-8").strip()
    assert env is not None
    try:
        return os.environ[env]
    except KeyError:
        raise KeyError(f"environment variable {env} is not set") from None


_MQTT_SCHEMES = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}


class MqttConnection(UserCredentials):
    """Mixin: where an MQTT broker is and how to log in, shared by the MQTT source, the
    ``mqtt`` uplink and ``edge-agent collect``, so all three take the same TLS keys."""

    url: str = Field(description="mqtt://host[:1883] or mqtts://host[:8883] (TLS)")
    client_id: str | None = Field(
        default=None, description="fixed for persistent sessions; default: one per role"
    )
    keepalive: Duration = Field(default=30_000_000_000)
    connect_timeout: Duration = Field(default=10_000_000_000)
    ca_file: Path | None = Field(default=None, description="CA bundle (PEM); default: system")
    certificate: Path | None = Field(default=None, description="client certificate (PEM)")
    private_key: Path | None = None
    tls_insecure: bool = Field(
        default=False, description="skip the server host name check (the chain is still checked)"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in _MQTT_SCHEMES or not parts.hostname:
            raise ValueError(
                f'expected "mqtt://host[:port]" or "mqtts://host[:port]", got {value!r}'
            )
        try:
            parts.port  # noqa: B018  (raises on a port that is not a number)
        except ValueError:
            raise ValueError(f"bad port in {value!r}") from None
        return value

    @model_validator(mode="after")
    def _tls_keys(self) -> MqttConnection:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        has_tls_keys = self.ca_file or self.certificate or self.tls_insecure
        if has_tls_keys and not self.tls:
            raise ValueError("ca_file, certificate and tls_insecure need an mqtts:// url")
        return self

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme in ("mqtts", "ssl")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or _MQTT_SCHEMES[parts.scheme]


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


class BatchSection(Section):
    window: Duration = Field(default=1_000_000_000)
    lateness: Duration = Field(default=2_000_000_000)


class ParquetUplinkConfig(Section):
    """A dataset on a local path, or on S3-compatible storage with ``path = "s3://..."``."""

    type: Literal["parquet"] = "parquet"
    name: Name = "parquet"
    path: str = "./edge-data"
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = "zstd"
    compression_level: int | None = Field(default=None, ge=1, le=22)
    endpoint: str | None = Field(
        default=None, description="S3: http(s)://host:port of the object store; default: AWS"
    )
    region: str | None = Field(default=None, description="S3 region")
    access_key_file: Path | None = None
    access_key_env: str | None = None
    secret_key_file: Path | None = None
    secret_key_env: str | None = None

    @model_validator(mode="after")
    def _s3_keys(self) -> ParquetUplinkConfig:
        s3_keys = [
            self.endpoint,
            self.region,
            self.access_key_file,
            self.access_key_env,
            self.secret_key_file,
            self.secret_key_env,
        ]
        if not self.is_s3:
            if any(key is not None for key in s3_keys):
                raise ValueError("endpoint, region and *_key_* are for an s3:// path")
            return self
        if not self.path.removeprefix("s3://").strip("/"):
            raise ValueError('an S3 path names a bucket: "s3://bucket[/prefix]"')
        has_access = self.access_key_file is not None or self.access_key_env is not None
        has_secret = self.secret_key_file is not None or self.secret_key_env is not None
        if has_access != has_secret:
            raise ValueError("an access key needs its secret key, and the other way round")
        if self.endpoint is not None and urlsplit(self.endpoint).scheme not in ("http", "https"):
            raise ValueError(f'endpoint: expected "http(s)://host:port", got {self.endpoint!r}')
        return self

    @property
    def is_s3(self) -> bool:
        return self.path.startswith("s3://")

    def access_key(self) -> tuple[str, str] | None:
        """(access key, secret key) from their files or variables; None: the default chain."""
        if self.access_key_file is None and self.access_key_env is None:
            return None
        return (
            read_secret(self.access_key_file, self.access_key_env),
            read_secret(self.secret_key_file, self.secret_key_env),
        )

    @property
    def target(self) -> str:
        return self.path


class MqttUplinkConfig(MqttConnection):
    """Batches published to a central broker, read there by ``edge-agent collect``."""

    type: Literal["mqtt"] = "mqtt"
    name: Name = "mqtt"
    topic_prefix: str = Field(
        default="edge-agent", description="batches go to <topic_prefix>/<gateway_id>/batches"
    )
    publish_timeout: Duration = Field(
        default=30_000_000_000, description="no PUBACK within this: the send failed"
    )

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        if not value or set(value) & set("+#") or value.startswith("$"):
            raise ValueError(f"a topic prefix has no '+' or '#' and no leading '$', got {value!r}")
        return value.strip("/")

    @property
    def target(self) -> str:
        return f"{self.url} {self.topic_prefix}/<gateway>/batches"


class PostgresUplinkConfig(UserCredentials):
    """Samples COPYed into PostgreSQL (TimescaleDB when present); needs the postgres extra."""

    type: Literal["postgres"] = "postgres"
    name: Name = "postgres"
    dsn: str = Field(description='libpq connection string, e.g. "postgresql://host:5432/db"')
    db_schema: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=63)] = Field(
        default="public", description="schema of the samples and batches tables"
    )
    connect_timeout: Duration = Field(default=10_000_000_000)

    @model_validator(mode="after")
    def _psycopg_installed(self) -> PostgresUplinkConfig:
        # checked with the config, so a missing extra is a config error, not a traceback
        if importlib.util.find_spec("psycopg") is None:
            raise ValueError("needs psycopg: pip install 'edge-agent[postgres]'")
        return self

    @property
    def target(self) -> str:
        """The dsn without a password someone wrote into it, for ``check`` and logs."""
        dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", self.dsn)
        dsn = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)
        return f"{dsn} schema {self.db_schema}"


UplinkConfig = Annotated[
    ParquetUplinkConfig | MqttUplinkConfig | PostgresUplinkConfig, Field(discriminator="type")
]
StoreConfig = Annotated[ParquetUplinkConfig | PostgresUplinkConfig, Field(discriminator="type")]


class CollectBrokerConfig(MqttConnection):
    """The central broker a collector reads gateways' batches from."""

    topic_prefix: str = Field(default="edge-agent", description="as the gateways' mqtt uplink")
    shared_group: str = Field(
        default="edge-agent-collect",
        pattern=r"^[^/+#]*$",
        description='collectors sharing the work; "" subscribes unshared (see README)',
    )
    session_expiry: Duration = Field(
        default=86_400_000_000_000,
        description="how long the broker keeps the collector's unacknowledged batches",
    )
    max_inflight: int = Field(default=16, ge=1, le=65535, description="unacknowledged batches")


class CollectConfig(Section):
    """``edge-agent collect``: one broker subscription, one store."""

    broker: CollectBrokerConfig
    store: StoreConfig
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"


_Named = TypeVar(
    "_Named", SourceConfig, ParquetUplinkConfig, MqttUplinkConfig, PostgresUplinkConfig
)


def _default_uplinks() -> list[UplinkConfig]:
    return [ParquetUplinkConfig()]


class AgentConfig(Section):
    """The whole file. ``sources`` holds each driver's own validated model."""

    agent: AgentSection = Field(default_factory=AgentSection)
    batch: BatchSection = Field(default_factory=BatchSection)
    sources: list[SourceConfig] = Field(min_length=1)
    uplinks: list[UplinkConfig] = Field(default_factory=_default_uplinks)
    resample: ResampleSection | None = None

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
