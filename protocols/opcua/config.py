"""Config model of an OPC UA source and its tags."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from asyncua import ua
from pydantic import Field, field_validator, model_validator

from agent.config.durations import Duration
from agent.config.model import SourceConfig, TagConfig, UserCredentials
from agent.config.secrets import refuse_url_credentials

SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"]
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class OpcUaTagConfig(TagConfig):
    node: str = Field(description='node id, e.g. "ns=2;s=CNC.Spindle.Speed" or "i=2258"')
    sampling_interval: Duration | None = Field(
        default=None, description="server-side sampling (subscribe mode); default: rate"
    )
    queue_size: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="default: the samples the rate owes per publishing interval (1)",
    )
    server_deadband: float | str | None = Field(
        default=None, description='DataChangeFilter deadband: absolute (0.5) or percent ("1%")'
    )
    sample_interval: Duration | None = Field(
        default=None, description="spacing of the elements of an array value (block signals)"
    )

    def sampling_grid_ns(self) -> int:
        """Array elements are snapped to their own spacing, scalars to the tag's rate."""
        return self.sample_interval or self.rate

    @field_validator("node")
    @classmethod
    def _node_id(cls, value: str) -> str:
        try:
            ua.NodeId.from_string(value)
        except Exception:
            raise ValueError(
                f'expected a node id such as "ns=2;s=Machine.Speed" or "i=2258", got {value!r}'
            ) from None
        return value

    @field_validator("server_deadband")
    @classmethod
    def _deadband(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, str) and not _PERCENT.match(value):
            raise ValueError(f'expected a number or a percentage such as "0.5%", got {value!r}')
        if isinstance(value, float | int) and value < 0:
            raise ValueError("a deadband cannot be negative")
        return value

    @property
    def node_id(self) -> ua.NodeId:
        return ua.NodeId.from_string(self.node)

    @property
    def deadband_filter(self) -> ua.DataChangeFilter | None:
        """The server-side DataChangeFilter this tag asks for, if any."""
        if self.server_deadband is None:
            return None
        data_filter = ua.DataChangeFilter()
        data_filter.Trigger = ua.DataChangeTrigger.StatusValue
        if isinstance(self.server_deadband, str):
            match = _PERCENT.match(self.server_deadband)
            assert match is not None  # validated above
            data_filter.DeadbandType = ua.DeadbandType.Percent
            data_filter.DeadbandValue = float(match.group(1))
        else:
            data_filter.DeadbandType = ua.DeadbandType.Absolute
            data_filter.DeadbandValue = float(self.server_deadband)
        return data_filter


class OpcUaSourceConfig(SourceConfig, UserCredentials):
    protocol: Literal["opcua"] = "opcua"
    url: str = Field(description="opc.tcp://host:port[/path]")
    mode: Literal["subscribe", "poll"] = "subscribe"
    timestamp: Literal["source", "server", "gateway"] = "source"
    publishing_interval: Duration | None = Field(
        default=None,
        description="publishing interval of each rate group's subscription, if longer than "
        "its rate (several samples per message); default: the group's rate",
    )
    timeout: Duration = Field(default=5_000_000_000, description="per-request timeout")
    watchdog: Duration = Field(
        default=2_000_000_000, description="how often the session's liveness is probed"
    )
    security_policy: SecurityPolicy = "None"
    security_mode: SecurityMode = "None"
    certificate: Path | None = Field(
        default=None, description="client certificate (DER); generated under data_dir if unset"
    )
    private_key: Path | None = None
    server_certificate: Path | None = Field(
        default=None, description="pin the server's certificate (DER or PEM file)"
    )
    trust_dir: Path | None = Field(
        default=None, description="trusted server certificates; default <data_dir>/pki/trusted"
    )
    tags: list[OpcUaTagConfig] = Field(min_length=1)  # type: ignore[assignment]

    @property
    def reports_on_change(self) -> bool:
        return self.mode == "subscribe"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        refuse_url_credentials(value)
        if not value.startswith("opc.tcp://") or len(value) <= len("opc.tcp://"):
            raise ValueError(f'expected "opc.tcp://host:port[/path]", got {value!r}')
        return value

    @model_validator(mode="after")
    def _security(self) -> OpcUaSourceConfig:
        if (self.security_policy == "None") != (self.security_mode == "None"):
            raise ValueError(
                'security_policy and security_mode go together: both "None" or both set '
                f"(got {self.security_policy!r} and {self.security_mode!r})"
            )
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        if self.correct_clock and self.timestamp != "source":
            raise ValueError(
                'correct_clock maps the SourceTimestamp clock: it needs timestamp = "source"'
            )
        return self
