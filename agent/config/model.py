"""Configuration models: the TOML file's shape, validated by pydantic.

Every key has a default except names and addresses, so a minimal config is a gateway with
one source and its tags. Unknown keys are rejected (``extra="forbid"``): in a plant, a
misspelt ``deadbnad`` that silently does nothing is worse than a refusal to start.
"""

from __future__ import annotations

import importlib.util
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Literal, TypeVar, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from agent.config.durations import Duration, Interval
from agent.config.secrets import read_secret, refuse_url_credentials
from agent.stages.units import UnitError, conversion

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
ResampleMethod = Literal["linear", "previous", "mean", "min", "max", "last"]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]


def installed(module: str) -> bool:
    """Whether an optional dependency can be imported, without importing it. A dotted name
    whose parent is missing (``google.protobuf`` without any ``google``) is not installed,
    where ``find_spec`` would raise."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _strict_scalar(field: FieldInfo) -> type | None:
    """bool, int or float when the field takes only that kind of scalar, else None.

    A field whose annotation admits ``str``, or that parses its value itself (a
    ``BeforeValidator`` such as a duration), accepts text.
    """
    if any(isinstance(m, BeforeValidator | PlainValidator) for m in field.metadata):
        return None
    members = set(get_args(field.annotation)) or {field.annotation}
    members.discard(type(None))
    for kind in (bool, int, float):
        if members and members <= {kind} | ({int} if kind is float else set()):
            return kind
    return None


_SCALAR_NAMES = {bool: "a boolean (true or false)", int: "an integer", float: "a number"}


def _quoted_scalar_error(kind: type, text: str) -> str:
    """Why a quoted scalar is refused, with "drop the quotes" only where that would do."""
    try:
        parsed = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = None
    fits = isinstance(parsed, kind) or (kind is float and isinstance(parsed, int))
    if isinstance(parsed, bool) and kind is not bool:
        fits = False
    hint = " (drop the quotes)" if fits else ""
    return f"expected {_SCALAR_NAMES[kind]}, got the string {text!r}{hint}"


class Section(BaseModel):
    """Base of every config table: strict about unknown keys, immutable once loaded.

    Numbers and booleans must be TOML numbers and booleans: ``unit_id = "1"`` or
    ``scale = "0.1"`` is a mistake (quoted by a spreadsheet export, say) that pydantic's
    lax mode would silently coerce. Keys whose type parses text on purpose (durations,
    deviations such as ``"0.5%"``) keep their strings.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_quoted_scalars(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str) or info.field_name is None:
            return value
        kind = _strict_scalar(cls.model_fields[info.field_name])
        if kind is not None:
            raise ValueError(_quoted_scalar_error(kind, value))
        return value


def _percent_or_number(value: object) -> object:
    """Accept ``2.0`` (absolute) or ``"0.5%"`` (of the tag's range span)."""
    if isinstance(value, str):
        text = value.strip()
        if not text.endswith("%"):
            raise ValueError(f'expected a number or a percentage such as "0.5%", got {value!r}')
        try:
            percent = float(text[:-1])
        except ValueError:
            raise ValueError(f'expected a percentage such as "0.5%", got {value!r}') from None
        if percent < 0:
            raise ValueError(f"expected a non-negative percentage, got {value!r}")
        return f"{percent:g}%"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f'expected a number or a percentage such as "0.5%", got {value!r}')
    if value < 0:
        raise ValueError(f"expected a non-negative deviation, got {value!r}")
    return float(value)


Deviation = Annotated[float | str, BeforeValidator(_percent_or_number)]
"""An absolute deviation in the tag's unit, or a percentage of its ``range`` span."""

Action = Literal["flag", "drop"]


class SpikeConfig(Section):
    """Rate-of-change limit and/or a causal Hampel test (median/MAD of the last samples)."""

    max_rate: float | None = Field(default=None, gt=0, description="units per second")
    window: int = Field(default=0, ge=0, description="Hampel window in samples; 0 = off")
    threshold: float = Field(default=3.0, gt=0, description="Hampel limit in robust sigmas")
    min_deviation: float = Field(default=0.0, ge=0, description="ignore smaller departures")
    action: Action = "flag"

    @model_validator(mode="after")
    def _some_test(self) -> SpikeConfig:
        if self.max_rate is None and self.window < 3:
            raise ValueError("spike needs max_rate and/or a Hampel window of at least 3")
        return self


class FillConfig(Section):
    max_gap: Duration = Field(description="longest gap that is interpolated")


class DenoiseConfig(Section):
    wavelet: str = "db4"
    level: int = Field(default=0, ge=0, description="decomposition levels; 0 = automatic")
    rule: Literal["universal", "minimax"] = "universal"
    mode: Literal["soft", "hard"] = "soft"

    @field_validator("wavelet")
    @classmethod
    def _known_wavelet(cls, name: str) -> str:
        import pywt  # deferred: only configs that denoise pay for the import

        if name not in pywt.wavelist(kind="discrete"):
            raise ValueError(f"unknown discrete wavelet {name!r} (e.g. db4, sym8, haar)")
        return name


class DeadbandConfig(Section):
    deviation: Deviation
    max_interval: Duration = Field(default=600_000_000_000, description="heartbeat")


class SwingingDoorConfig(Section):
    deviation: Deviation
    min_interval: Duration | None = None
    max_interval: Duration = Field(default=600_000_000_000)


Feature = Literal["mean", "variance", "rms", "peak", "peak_to_peak", "crest_factor", "kurtosis"]
FEATURES: tuple[Feature, ...] = (
    "mean",
    "variance",
    "rms",
    "peak",
    "peak_to_peak",
    "crest_factor",
    "kurtosis",
)


class FeaturesConfig(Section):
    window: Duration = Field(default=1_000_000_000)
    stats: list[Feature] = Field(default_factory=lambda: list(FEATURES), min_length=1)


def _deadband_shorthand(value: object) -> object:
    """``deadband = 5.0`` or ``"0.5%"`` is short for ``{ deviation = ... }``."""
    return {"deviation": value} if isinstance(value, int | float | str) else value


class TagConfig(Section):
    """Keys every tag has, whatever its protocol; drivers subclass it to add addressing.

    The processing keys (``convert_to`` ... ``features``) configure the pipeline stages,
    which run in a fixed order; each is off unless set.
    """

    name: Name
    rate: Duration = Field(default=1_000_000_000, description="sampling period")
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    description: str = ""
    convert_to: str | None = None
    resolution: float | None = Field(
        default=None,
        gt=0,
        description="the instrument's resolution in the tag's converted unit: values rounded to it",
    )
    range: tuple[float, float] | None = None
    range_action: Action = "flag"
    spike: SpikeConfig | None = None
    fill: FillConfig | None = None
    denoise: DenoiseConfig | None = None
    deadband: Annotated[DeadbandConfig | None, BeforeValidator(_deadband_shorthand)] = None
    swinging_door: SwingingDoorConfig | None = None
    features: FeaturesConfig | None = None

    @field_validator("convert_to")
    @classmethod
    def _convertible(cls, target: str | None, info: ValidationInfo) -> str | None:
        if target is None:
            return None
        source = info.data.get("unit")
        if source is None:
            raise ValueError('convert_to needs the tag\'s unit (e.g. unit = "in")')
        try:
            conversion(source, target)
        except UnitError as exc:
            raise ValueError(str(exc)) from None
        return target

    @field_validator("range")
    @classmethod
    def _ordered(cls, bounds: tuple[float, float] | None) -> tuple[float, float] | None:
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"expected [min, max] with min < max, got {list(bounds)}")
        return bounds

    @model_validator(mode="after")
    def _percent_needs_range(self) -> TagConfig:
        for key in ("deadband", "swinging_door"):
            section = getattr(self, key)
            if section is not None and isinstance(section.deviation, str) and not self.range:
                raise ValueError(
                    f"{key}.deviation {section.deviation!r} is a percentage of the range span:"
                    " set range = [min, max]"
                )
        return self

    def absolute(self, deviation: float | str) -> float:
        """A deviation in the tag's unit: percentages are of the ``range`` span."""
        if isinstance(deviation, str):
            assert self.range is not None  # checked by _percent_needs_range
            return float(deviation[:-1]) / 100 * (self.range[1] - self.range[0])
        return deviation

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
    probe_interval: Interval = Field(
        default=1_000_000_000,
        description="during a longer backoff, test the endpoint this often; 0 = never",
    )
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

    @property
    def reports_on_change(self) -> bool:
        """Whether the tags arrive when they change (a subscription, a publisher) rather
        than once per ``rate``: then a window owes no count of samples, and completeness
        by rate would call a value that held still missing."""
        return False

    @property
    def placeholder_tags(self) -> int:
        """How many of the last tags are places the driver names at run time
        (``DriverContext.describe_tag``), e.g. Sparkplug's automatic tags: until named they
        have no column in the wide output."""
        return 0

    @field_validator("tags")
    @classmethod
    def _unique_tag_names(cls, tags: list[TagConfig]) -> list[TagConfig]:
        seen: set[str] = set()
        for tag in tags:
            if tag.name in seen:
                raise ValueError(f"tag name {tag.name!r} is used twice in this source")
            seen.add(tag.name)
        for tag in tags:  # features add derived tags <tag>.<stat> to the source
            for stat in tag.features.stats if tag.features else []:
                if f"{tag.name}.{stat}" in seen:
                    raise ValueError(
                        f"tag name {tag.name}.{stat!s} is used twice in this source "
                        f"(features of {tag.name!r} derive it)"
                    )
                seen.add(f"{tag.name}.{stat}")
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
        parts = urlsplit(refuse_url_credentials(value))
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
    """The durable spool between batches and uplinks (see agent/store/spool.py)."""

    max_bytes: int = Field(default=1 << 30, ge=1, description="cap on spooled batch bytes")
    max_age: Duration = Field(default=7 * 86_400_000_000_000, description="cap on batch age")
    overflow: Literal["drop_oldest", "stop_acquiring"] = Field(
        default="drop_oldest",
        description="at a cap: delete the oldest batches (counted as lost) or pause the sources",
    )
    replay_rate: float = Field(
        default=10.0, gt=0, description="backlog batches per second per uplink, beside live ones"
    )
    drain_timeout: Duration = Field(
        default=10_000_000_000, description="on stop, how long uplinks get to take the spool"
    )
    memory_max_bytes: int = Field(
        default=64 << 20,
        ge=1,
        description="while storage fails: batches and frames held in memory before "
        "acquisition pauses",
    )


class HealthSection(Section):
    """When /healthz and the metrics call something down."""

    uplink_max_age: Duration = Field(
        default=60_000_000_000,
        description="an uplink with batches to send that delivered none for this long is down",
    )


class BatchSection(Section):
    window: Duration = Field(default=1_000_000_000)
    lateness: Duration = Field(default=2_000_000_000)


class UplinkRetry(Section):
    """How an uplink retries: what counts as a hung send, and the backoff between tries."""

    send_timeout: Duration = Field(
        default=60_000_000_000, description="a send not acknowledged within this has failed"
    )
    backoff_initial: Duration = Field(default=500_000_000)
    backoff_max: Duration = Field(
        default=4_000_000_000,
        description="longest pause between tries: a store that is back is used within it",
    )


class ParquetUplinkConfig(UplinkRetry):
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
        keys = "access_key_file/_env + secret_key_file/_env"
        refuse_url_credentials(self.path, keys)
        if self.endpoint is not None:
            refuse_url_credentials(self.endpoint, keys)
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


class MqttUplinkConfig(MqttConnection, UplinkRetry):
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


class PostgresUplinkConfig(UserCredentials, UplinkRetry):
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
        if not installed("psycopg"):
            raise ValueError("needs psycopg: pip install 'edge-agent[postgres]'")
        return self

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, value: str) -> str:
        return refuse_url_credentials(value, allow_user=True)

    @property
    def target(self) -> str:
        """Where batches go, for ``check`` and logs (the dsn holds no password: see above)."""
        return f"{self.dsn} schema {self.db_schema}"


def _uplink_type(value: object) -> object:
    """The ``type`` key that picks an uplink's model (a callable discriminator, because a
    field-name one forbids the before-validator every Section has)."""
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


def _by_type(types: str) -> Discriminator:
    return Discriminator(
        _uplink_type,
        custom_error_type="uplink_type",
        custom_error_message=f"expected type = {types}",
    )


class SparkplugUplinkConfig(MqttConnection, UplinkRetry):
    """The gateway as a Sparkplug B edge node: each source a device, each tag a metric."""

    type: Literal["sparkplug"] = "sparkplug"
    name: Name = "sparkplug"
    group: str = Field(description="Sparkplug group id the gateway's edge node is in")
    edge_node: str | None = Field(default=None, description="edge node id; default: gateway_id")
    primary_host: str | None = Field(
        default=None,
        description="host application id whose STATE the node follows: data waits in the "
        "spool while it is offline and goes out as historical metrics when it returns",
    )
    data_qos: Literal[0, 1] = Field(
        default=0, description="QoS of DDATA: 0 as the specification says, 1 to be acknowledged"
    )
    max_metrics: int = Field(default=1000, ge=1, description="samples per DDATA message")
    publish_timeout: Duration = Field(
        default=30_000_000_000, description="births and data not out (QoS 1: acked) by then"
    )

    @field_validator("group", "edge_node", "primary_host")
    @classmethod
    def _sparkplug_id(cls, value: str | None) -> str | None:
        if value is not None and (not value or set(value) & set("/+#")):
            raise ValueError(f"a Sparkplug id has no '/', '+' or '#', got {value!r}")
        return value

    @model_validator(mode="after")
    def _protobuf_installed(self) -> SparkplugUplinkConfig:
        if not installed("google.protobuf"):
            raise ValueError("needs the protobuf package: pip install 'edge-agent[sparkplug]'")
        return self

    @property
    def target(self) -> str:
        return f"{self.url} spBv1.0/{self.group}/<type>/{self.edge_node or '<gateway>'}"


UplinkConfig = Annotated[
    Annotated[ParquetUplinkConfig, Tag("parquet")]
    | Annotated[MqttUplinkConfig, Tag("mqtt")]
    | Annotated[PostgresUplinkConfig, Tag("postgres")]
    | Annotated[SparkplugUplinkConfig, Tag("sparkplug")],
    _by_type('"parquet", "mqtt", "postgres" or "sparkplug"'),
]
StoreConfig = Annotated[
    Annotated[ParquetUplinkConfig, Tag("parquet")]
    | Annotated[PostgresUplinkConfig, Tag("postgres")],
    _by_type('"parquet" or "postgres"'),
]


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
    backoff_initial: Duration = Field(
        default=200_000_000, description="first delay of broker reconnects and store retries"
    )
    backoff_max: Duration = Field(default=30_000_000_000)
    probe_interval: Interval = Field(
        default=1_000_000_000,
        description="during a longer reconnect backoff, test the broker this often; 0 = never",
    )


class CollectConfig(Section):
    """``edge-agent collect``: one broker subscription, one store."""

    broker: CollectBrokerConfig
    store: StoreConfig
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"


_Named = TypeVar(
    "_Named",
    SourceConfig,
    ParquetUplinkConfig,
    MqttUplinkConfig,
    PostgresUplinkConfig,
    SparkplugUplinkConfig,
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
    spool: SpoolSection = Field(default_factory=SpoolSection)
    health: HealthSection = Field(default_factory=HealthSection)

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
