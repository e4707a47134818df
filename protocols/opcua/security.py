"""OPC UA application certificates, server trust and user credentials.

Layout under the agent's data_dir (the usual OPC UA PKI folders, so plant IT recognise it):

    pki/own/cert.der, pki/own/key.pem   the agent's application instance certificate,
                                        generated on first use (``edge-agent certs``)
    pki/trusted/                        server certificates trusted for secure sessions
    pki/rejected/                       certificates of servers that were refused

A server whose certificate is neither pinned (``server_certificate``) nor in the trust
folder is refused with a message saying which file to move to trust it, as UA-.NET and
Kepware do; the session is retried with backoff, so trusting it later needs no restart.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import cert_gen, security_policies
from asyncua.crypto.uacrypto import check_certificate
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from protocols.opcua.config import OpcUaSourceConfig

POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}


class SecurityError(ConnectionError):
    """A secure session cannot be set up; the message says what to change."""


@dataclass(frozen=True)
class Pki:
    root: Path

    @property
    def certificate(self) -> Path:
        return self.root / "own" / "cert.der"

    @property
    def private_key(self) -> Path:
        return self.root / "own" / "key.pem"

    @property
    def trusted(self) -> Path:
        return self.root / "trusted"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"


def application_uri() -> str:
    return f"urn:{socket.gethostname()}:edge-agent"


def thumbprint(der: bytes) -> str:
    """SHA-1 of the DER certificate, the thumbprint OPC UA tools display."""
    return hashlib.sha1(der).hexdigest()


def load_der(path: Path) -> bytes:
    data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return data


def describe_certificate(der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    return (
        f"subject {cert.subject.rfc4514_string()}, thumbprint {thumbprint(der)}, "
        f"valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"
    )


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def ensure_own_certificate(pki: Pki, regenerate: bool = False) -> None:
    """Create the agent's certificate and key unless a valid pair exists (or when asked).

    Synchronous on purpose: several sources starting at once must not interleave writes
    of one key pair (a key from one and a certificate from another make sessions fail).
    The certificate lives five years: a gateway's trust must not silently lapse yearly.
    """
    uri = application_uri()
    if not regenerate and pki.certificate.is_file() and pki.private_key.is_file():
        cert = x509.load_der_x509_certificate(pki.certificate.read_bytes())
        if not check_certificate(cert, uri, socket.gethostname()):
            return
    pki.certificate.parent.mkdir(parents=True, exist_ok=True)
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        uri,
        {},
        [x509.UniformResourceIdentifier(uri), x509.DNSName(socket.gethostname())],
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
        days=5 * 365,
    )
    _write_atomically(pki.private_key, cert_gen.dump_private_key_as_pem(key))
    _write_atomically(pki.certificate, cert.public_bytes(Encoding.DER))


def _first_certificate(chain: bytes) -> bytes:
    """The leaf certificate of a DER chain (servers may send several back to back)."""
    cert = x509.load_der_x509_certificate(chain[: _der_length(chain)])
    return cert.public_bytes(Encoding.DER)


def _der_length(data: bytes) -> int:
    if len(data) < 2 or data[0] != 0x30:
        return len(data)
    first = data[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    return 2 + count + int.from_bytes(data[2 : 2 + count], "big")


async def server_certificate(client: Client, config: OpcUaSourceConfig, pki: Pki) -> bytes:
    """The server's certificate for this session, once checked against the pin or trust list."""
    policy = POLICIES[config.security_policy]
    endpoints = await client.connect_and_get_server_endpoints()
    try:
        endpoint = Client.find_endpoint(endpoints, MODES[config.security_mode], policy.URI)
    except ua.UaError:
        offered = sorted(
            {f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints}
        )
        raise SecurityError(
            f"server offers no {config.security_policy}/{config.security_mode} endpoint; "
            f"it offers: {', '.join(offered)}"
        ) from None
    presented = _first_certificate(endpoint.ServerCertificate)
    if config.server_certificate is not None:
        pinned = load_der(config.server_certificate)
        if presented != pinned:
            raise SecurityError(
                f"server certificate ({describe_certificate(presented)}) is not the pinned "
                f"one in {config.server_certificate} (thumbprint {thumbprint(pinned)})"
            )
        return presented
    trust_dir = config.trust_dir or pki.trusted
    trust_dir.mkdir(parents=True, exist_ok=True)
    trusted = {thumbprint(load_der(path)) for path in trust_dir.iterdir() if path.is_file()}
    if thumbprint(presented) in trusted:
        return presented
    pki.rejected.mkdir(parents=True, exist_ok=True)
    rejected = pki.rejected / f"{thumbprint(presented)}.der"
    rejected.write_bytes(presented)
    raise SecurityError(
        f"server certificate is not trusted ({describe_certificate(presented)}); to trust it, "
        f"move {rejected} into {trust_dir} (or pin it with server_certificate)"
    )


async def configure_client(client: Client, config: OpcUaSourceConfig, data_dir: Path) -> None:
    """Security policy, certificates and user identity of a session, before connect()."""
    client.application_uri = application_uri()
    if config.security_policy != "None":
        pki = Pki(data_dir / "pki")
        if config.certificate is not None and config.private_key is not None:
            certificate, key = config.certificate, config.private_key
        else:
            ensure_own_certificate(pki)
            certificate, key = pki.certificate, pki.private_key
        await client.set_security(
            POLICIES[config.security_policy],
            str(certificate),
            str(key),
            server_certificate=await server_certificate(client, config, pki),
            mode=MODES[config.security_mode],
        )
    if config.username is not None:
        client.set_user(config.username)
        client.set_password(config.password())
