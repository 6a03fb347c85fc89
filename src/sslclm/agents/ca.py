"""The agent CA: a CA of its own, apart from the internal server CA, that issues agents' identities.

Kept beside the internal CA under ``$SSLCLM_HOME/tls``: ``agent-ca.pem`` (public) and
``agent-ca.key.enc`` (the key, sealed with the platform envelope). A separate CA means a server
certificate can never pass as an agent, and the agent listener trusts nothing else.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

from cryptography import x509
from cryptography.x509.oid import NameOID

from sslclm.core.platform import Platform
from sslclm.core.tls import _locked, _write_atomically, tls_dir
from sslclm.errors import ConfigurationError
from sslclm.pki import (
    SigningKey,
    certificate_to_pem,
    create_ca,
    load_certificate,
    load_private_key_der,
    private_key_to_pkcs8_der,
)
from sslclm.pki.ca_tools import load_csr
from sslclm.pki.identity import certificate_facts
from sslclm.pki.internal_ca import sign_csr

CA_CERT_FILE = "agent-ca.pem"
CA_KEY_FILE = "agent-ca.key.enc"
CA_KEY_AAD = b"agent-ca"
CA_VALID_DAYS = 3650
IDENTITY_VALID_DAYS = 7


@dataclass(frozen=True, slots=True)
class Identity:
    certificate_pem: str
    serial: str
    fingerprint: str
    not_after: datetime


@dataclass(frozen=True, slots=True)
class AgentCa:
    cert_file: Path
    cert_pem: bytes
    key: SigningKey

    def issue(self, csr_pem: str, name: str, *, now: datetime) -> Identity:
        """An identity certificate (clientAuth, CN = the agent's name) for the key in ``csr_pem``."""
        csr = load_csr(csr_pem.encode())
        ca_cert = load_certificate(self.cert_pem)
        cert = sign_csr(
            self.key,
            ca_cert,
            csr,
            valid_days=IDENTITY_VALID_DAYS,
            extended_key_usage=("clientAuth",),
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
            now=now,
        )
        return identity_of(cert)


def identity_of(cert: x509.Certificate) -> Identity:
    facts = certificate_facts(cert)
    return Identity(
        certificate_pem=certificate_to_pem(cert).decode(),
        serial=facts.serial,
        fingerprint=facts.fingerprint,
        not_after=facts.not_after,
    )


def load_agent_ca(platform: Platform) -> AgentCa:
    """The agent CA, created on first use."""
    directory = tls_dir(platform.settings)
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    with _locked(directory):
        if cert_path.exists() != key_path.exists():
            present, absent = (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
            raise ConfigurationError(
                f"{present} exists but {absent} is missing; restore it, or remove both to create a new "
                "agent CA (every agent must then register again)"
            )
        if not cert_path.exists():
            key, cert = create_ca(f"SSL-CLM agent CA {secrets.token_hex(4)}", valid_days=CA_VALID_DAYS)
            sealed = platform.envelope.encrypt(private_key_to_pkcs8_der(key), CA_KEY_AAD)
            _write_atomically(key_path, sealed, 0o600)
            _write_atomically(cert_path, certificate_to_pem(cert), 0o644)
        cert_pem = cert_path.read_bytes()
        sealed = key_path.read_bytes()
    key = cast(SigningKey, load_private_key_der(platform.envelope.decrypt(sealed, CA_KEY_AAD)))
    return AgentCa(cert_path, cert_pem, key)


def renew_after(not_after: datetime) -> datetime:
    """When an agent should ask for a new identity: with a third of its lifetime left."""
    return not_after - timedelta(days=IDENTITY_VALID_DAYS) / 3
