"""TLS to the private broker's TLS listener: client certificates, host name check, untrusted CA."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from simulators.mqtt_broker import BrokerTls, PrivateBroker
from tests.conftest import agent_toml
from tests.protocols.mqtt.helpers import (
    broker_or_skip,
    publisher_on,
    running_agent,
    running_driver,
    wait_for,
)

Key = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: Key) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _certificate(
    subject: str,
    key: Key,
    issuer: tuple[x509.Name, Key] | None,
    usage: x509.ObjectIdentifier | None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_ca(directory: Path, name: str) -> tuple[Path, x509.Certificate, Key]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(name, key, None, None)
    path, _ = _write(directory, name, cert, key)
    return path, cert, key


def issue(
    directory: Path, stem: str, ca: tuple[x509.Certificate, Key], usage: x509.ObjectIdentifier
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(stem, key, (ca[0].subject, ca[1]), usage)
    return _write(directory, stem, cert, key)


class Pki:
    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.ca, ca_cert, ca_key = make_ca(directory, "plant-ca")
        self.other_ca, _, _ = make_ca(directory, "other-ca")
        self.server = issue(directory, "broker", (ca_cert, ca_key), ExtendedKeyUsageOID.SERVER_AUTH)
        self.client = issue(
            directory, "gateway", (ca_cert, ca_key), ExtendedKeyUsageOID.CLIENT_AUTH
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest_asyncio.fixture
async def tls_broker(tmp_path: Path, pki: Pki) -> AsyncIterator[PrivateBroker]:
    tls = BrokerTls(pki.ca, *pki.server, require_certificate=True)
    async with broker_or_skip(tmp_path / "broker", tls=tls) as broker:
        yield broker


def _tls_source(pki: Pki, broker: PrivateBroker, host: str, **extra: object) -> dict[str, object]:
    return {
        "url": broker.tls_url(host),
        "mqtt_version": broker.mqtt_version(),
        "ca_file": str(pki.ca),
        "certificate": str(pki.client[0]),
        "private_key": str(pki.client[1]),
        "topic": "plant/tls",
        "tags": [{"name": "PT101", "value": "$.v"}],
        **extra,
    }


@pytest.mark.parametrize(
    ("host", "insecure"),
    [("localhost", False), ("127.0.0.1", True)],  # the cert names localhost only
)
async def test_client_certificate_session_delivers_data(
    tls_broker: PrivateBroker, pki: Pki, host: str, insecure: bool
) -> None:
    source = _tls_source(pki, tls_broker, host, tls_insecure=insecure)
    publisher = await publisher_on(tls_broker)
    try:
        async with running_driver(source) as (_, collector):
            assert collector.connected, "TLS session with a client certificate is up"
            publisher.client.publish("plant/tls", json.dumps({"v": 42.5}), qos=1)
            await wait_for(lambda: len(collector.frame) == 1)
    finally:
        await publisher.close()
    assert collector.frame.value.tolist() == [42.5]


@pytest.mark.parametrize(
    ("wrong_ca", "host", "expected"),
    [
        (True, "localhost", "certificate of localhost"),  # a CA that did not sign it
        (False, "127.0.0.1", "IP address mismatch"),  # no tls_insecure: the name is checked
    ],
)
async def test_untrusted_broker_fails_clearly_once_and_keeps_retrying(
    tmp_path: Path, tls_broker: PrivateBroker, pki: Pki, wrong_ca: bool, host: str, expected: str
) -> None:
    ca = pki.other_ca if wrong_ca else pki.ca
    source = (
        f'[[sources]]\nname = "scada"\nprotocol = "mqtt"\nurl = "{tls_broker.tls_url(host)}"\n'
        f'ca_file = "{ca}"\ncertificate = "{pki.client[0]}"\nprivate_key = "{pki.client[1]}"\n'
        'backoff_initial = "100ms"\nbackoff_max = "200ms"\ntopic = "plant/tls"\n'
        '[[sources.tags]]\nname = "PT101"\n'
    )
    with structlog.testing.capture_logs() as logs:
        async with running_agent(agent_toml(tmp_path / "store", source)) as agent:
            await wait_for(lambda: agent.runners[0].failures >= 3)
            await asyncio.sleep(0)
    failures = [entry for entry in logs if entry["event"] == "source failed"]
    assert len(failures) == 1, "logged once, however often it is retried"
    assert "TLS" in failures[0]["error"]
    assert expected in failures[0]["error"]


# MQTT 3.1.1 CONNECT: clean session, keepalive 30 s, empty client id; either broker takes it
_CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 0])


async def test_a_client_without_a_certificate_gets_no_session(
    tls_broker: PrivateBroker, pki: Pki
) -> None:
    """require_certificate holds on either broker (on amqtt through its runner)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    try:
        reader, writer = await asyncio.open_connection(
            "localhost", tls_broker.tls_port, ssl=context
        )
        writer.write(_CONNECT)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4), 5)  # TLS 1.3: refused after the handshake
        writer.close()
    except (ssl.SSLError, ConnectionResetError):
        answer = b""
    assert answer == b"", "no CONNACK without a client certificate"
