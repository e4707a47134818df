"""DataValues to frames: status mapping, timestamp choice, strings, arrays, bad types."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from asyncua import ua

from agent.acquisition import quality as q
from agent.commands.cli import main
from protocols.opcua.config import OpcUaSourceConfig, OpcUaTagConfig
from protocols.opcua.values import ValueDecoder, ns_of, quality_of

SOURCE = dt.datetime(2026, 11, 21, 9, 30, 0, 123456, tzinfo=dt.UTC)
SERVER = SOURCE + dt.timedelta(milliseconds=3)


def value(
    raw: object, status: int = ua.StatusCodes.Good, source: dt.datetime | None = SOURCE
) -> ua.DataValue:
    return ua.DataValue(
        ua.Variant(raw),
        StatusCode=ua.StatusCode(status),
        SourceTimestamp=source,
        ServerTimestamp=SERVER,
    )


def tags(*extra: dict[str, object]) -> list[OpcUaTagConfig]:
    return [
        OpcUaTagConfig(name=f"t{i}", node=f"ns=2;i={i}", **options)  # type: ignore[arg-type]
        for i, options in enumerate(extra)
    ]


def test_ns_of_is_exact_to_the_microsecond() -> None:
    assert ns_of(SOURCE) == 1_795_253_400_123_456_000
    assert ns_of(None) is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (ua.StatusCodes.Good, q.GOOD),
        (ua.StatusCodes.UncertainLastUsableValue, q.make(q.UNCERTAIN, q.Reason.SOURCE_STATUS)),
        (ua.StatusCodes.BadSensorFailure, q.make(q.BAD, q.Reason.SOURCE_STATUS)),
        (ua.StatusCodes.BadCommunicationError, q.make(q.BAD, q.Reason.COMM_ERROR)),
        (ua.StatusCodes.BadTimeout, q.make(q.BAD, q.Reason.TIMEOUT)),
        (ua.StatusCodes.BadOutOfRange, q.make(q.BAD, q.Reason.OUT_OF_RANGE)),
    ],
)
def test_status_severity_maps_to_quality(status: int, expected: int) -> None:
    assert quality_of(status) == expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("source", ns_of(SOURCE)), ("server", ns_of(SERVER)), ("gateway", 42)],
)
def test_timestamp_policy_picks_the_configured_time(policy: str, expected: int) -> None:
    frame = ValueDecoder(tags({}), policy).decode([0], [value(1.5)], received=42)
    assert frame.time.tolist() == [expected]


def test_missing_source_timestamp_falls_back_to_server_time() -> None:
    frame = ValueDecoder(tags({}), "source").decode([0], [value(1.5, source=None)], received=1)
    assert frame.time.tolist() == [ns_of(SERVER)]


@pytest.mark.parametrize("policy", ["source", "server", "gateway"])
def test_both_device_timestamps_are_kept_whatever_the_policy(policy: str) -> None:
    values = [value(1.5), value(2.5, source=None), value("text")]
    frame = ValueDecoder(tags({}, {}, {}), policy).decode([0, 1, 2], values, received=42)
    frame.check(3)
    assert frame.source_time is not None
    assert frame.server_time is not None
    assert frame.source_time.tolist() == [ns_of(SOURCE), 0, ns_of(SOURCE)], "0 = not sent"
    assert frame.server_time.tolist() == [ns_of(SERVER)] * 3
    assert frame.received == 42


def test_mixed_values_strings_arrays_and_unsupported_types() -> None:
    decoder = ValueDecoder(tags({}, {}, {"sample_interval": "1ms"}, {}, {}), "source")
    values = [
        value(True),
        value("O1234"),
        value([1.0, 2.0, 3.0]),
        value(ua.LocalizedText("not a number")),
        value(7, ua.StatusCodes.BadSensorFailure),
    ]
    frame = decoder.decode([0, 1, 2, 3, 4], values, received=1)
    frame.check(5)
    by_tag = {tag: frame.take(frame.tag == tag) for tag in range(5)}
    assert by_tag[0].value.tolist() == [1.0]
    assert by_tag[1].text is not None
    assert by_tag[1].text.tolist() == ["O1234"]
    assert np.isnan(by_tag[1].value).all()
    block = by_tag[2]
    assert block.value.tolist() == [1.0, 2.0, 3.0]
    assert (np.diff(block.time) == 1_000_000).all(), "elements spaced by sample_interval"
    assert block.time[0] == ns_of(SOURCE)
    assert block.source_time is not None
    assert block.server_time is not None
    assert (block.source_time == ns_of(SOURCE)).all(), "the DataValue's stamps, per element"
    assert (block.server_time == ns_of(SERVER)).all()
    assert by_tag[3].quality.tolist() == [q.make(q.BAD, q.Reason.DECODE_ERROR)]
    assert decoder.undecodable == [(3, "LocalizedText")]
    assert by_tag[4].quality.tolist() == [q.make(q.BAD, q.Reason.SOURCE_STATUS)]
    assert by_tag[4].value.tolist() == [7.0], "the bad value is kept, flagged"


def test_password_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    base = {"name": "s", "url": "opc.tcp://h:4840", "tags": [{"name": "t", "node": "i=2258"}]}
    from_file = OpcUaSourceConfig.model_validate(
        {**base, "username": "u", "password_file": str(secret)}
    )
    assert from_file.password() == "from-file"
    monkeypatch.setenv("EDGE_PW", "from-env")
    from_env = OpcUaSourceConfig.model_validate(
        {**base, "username": "u", "password_env": "EDGE_PW"}
    )
    assert from_env.password() == "from-env"
    with pytest.raises(ValueError, match="never inline"):
        OpcUaSourceConfig.model_validate({**base, "username": "u"})


def test_certs_command_creates_then_shows_the_same_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\ndata_dir = "{tmp_path / "state"}"\n[[sources]]\nname = "s"\n'
        'protocol = "template"\n[[sources.tags]]\nname = "t"\n'
    )
    assert main(["certs", "-c", str(config)]) == 0
    first = capsys.readouterr().out
    cert = tmp_path / "state" / "pki" / "own" / "cert.der"
    assert cert.is_file()
    assert "thumbprint" in first
    assert main(["certs", "-c", str(config)]) == 0
    assert capsys.readouterr().out == first, "an existing certificate is kept"
    assert main(["certs", "-c", str(config), "--regenerate"]) == 0
    assert capsys.readouterr().out != first
