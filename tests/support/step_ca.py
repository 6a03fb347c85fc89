"""Runs a real step-ca (Smallstep's certificate authority) on loopback for the step-ca gateway's tests.

The server is built once from Debian's Go sources by ``scripts/build-step-ca.sh`` (cached under
``.cache/step-ca``). Everything ``step ca init`` would make is made here instead, so no ``step`` CLI is
needed: a root and an intermediate CA, a JWK provisioner (P-256 key, its private half encrypted as a
PBES2 JWE under a password, exactly as step-ca stores it in ``encryptedKey``), a bbolt database (so
revocations and used tokens are recorded) and the ``ca.json`` tying them together.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc import jwe
from joserfc.jwk import ECKey, OctKey

from tests.support.pebble import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-step-ca.sh"
PROVISIONER_PASSWORD = "correct horse battery staple"
# step CLI's defaults for the provisioner key's JWE (go.step.sm/crypto/jose).
JWE_REGISTRY = jwe.JWERegistry(algorithms=["PBES2-HS256+A128KW", "A256GCM"])
PBES2_COUNT = 100_000


def build_step_ca() -> Path:
    """The step-ca binary, built on first use. Fails (not skips) the test when it cannot be built,
    since ``make test`` installs what the build needs.
    """
    try:
        completed = subprocess.run(
            [str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail("building step-ca took more than 30 minutes")
    if completed.returncode != 0:
        pytest.fail(f"building step-ca failed ({completed.returncode}): {completed.stderr[-3000:]}")
    binary = Path(completed.stdout.strip().splitlines()[-1])
    if not binary.is_file():
        pytest.fail(f"scripts/build-step-ca.sh printed {binary}, which does not exist")
    return binary


@dataclass(frozen=True)
class Provisioner:
    """A JWK provisioner: the private key as step's ``step crypto jwk create`` makes it."""

    name: str
    key: ECKey
    password: str = PROVISIONER_PASSWORD

    @property
    def kid(self) -> str:
        return self.key.thumbprint()

    @property
    def private_jwk(self) -> str:
        return json.dumps({**self.key.as_dict(private=True), "kid": self.kid, "use": "sig", "alg": "ES256"})

    def public_jwk(self) -> dict[str, Any]:
        return {**self.key.as_dict(private=False), "kid": self.kid, "use": "sig", "alg": "ES256"}

    def encrypted_key(self, password: str | None = None) -> str:
        header = {"alg": "PBES2-HS256+A128KW", "enc": "A256GCM", "cty": "jwk+json", "p2c": PBES2_COUNT}
        secret = OctKey.import_key((password or self.password).encode())
        return jwe.encrypt_compact(header, self.private_jwk.encode(), secret, registry=JWE_REGISTRY)


def new_provisioner(name: str) -> Provisioner:
    return Provisioner(name=name, key=ECKey.generate_key("P-256"))


@dataclass
class StepCA:
    url: str
    root_pem: bytes
    root_path: Path
    intermediate_pem: bytes
    provisioner: Provisioner
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def root_fingerprint(self) -> str:
        return x509.load_pem_x509_certificate(self.root_pem).fingerprint(hashes.SHA256()).hex()

    def config(self, **overrides: Any) -> dict[str, Any]:
        """A ``step-ca`` gateway config for this CA with the decrypted provisioner key."""
        config: dict[str, Any] = {
            "ca_url": self.url,
            "root_pem": self.root_pem.decode(),
            "provisioner": self.provisioner.name,
            "provisioner_kid": self.provisioner.kid,
            "provisioner_jwk": self.provisioner.private_jwk,
        }
        config.update(overrides)
        return config

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.root_pem.decode())

    def get(self, path: str) -> httpx.Response:
        with httpx.Client(verify=self.ssl_context(), timeout=10) as client:
            return client.get(f"{self.url}{path}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SSL-CLM Tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    path_length: int,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name = issuer[0].subject if issuer else _name(subject)
    signer = issuer[1] if issuer else key
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        .sign(signer, hashes.SHA256())
    )


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@contextmanager
def run_step_ca(
    directory: Path,
    *,
    provisioner_name: str = "sslclm@example.test",
    claims: Mapping[str, Any] | None = None,
) -> Iterator[StepCA]:
    """Start step-ca with a fresh PKI under ``directory``; stop it on exit.

    ``claims`` override the provisioner's (by default certificates of 5 minutes to 90 days, 30 by
    default, renewable).
    """
    binary = build_step_ca()
    directory.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_certificate("SSL-CLM Test step-ca Root CA", root_key, issuer=None, path_length=1)
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate = _ca_certificate(
        "SSL-CLM Test step-ca Intermediate CA", intermediate_key, issuer=(root, root_key), path_length=0
    )
    root_path, intermediate_path, key_path = (
        directory / "root_ca.crt",
        directory / "intermediate_ca.crt",
        directory / "intermediate_ca_key",
    )
    root_path.write_bytes(_pem(root))
    intermediate_path.write_bytes(_pem(intermediate))
    key_path.write_bytes(
        intermediate_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)

    provisioner = new_provisioner(provisioner_name)
    port = free_port()
    ca_json = {
        "root": str(root_path),
        "crt": str(intermediate_path),
        "key": str(key_path),
        "address": f"127.0.0.1:{port}",
        "dnsNames": ["127.0.0.1", "localhost"],
        "logger": {"format": "text"},
        "db": {"type": "bbolt", "dataSource": str(directory / "db.bolt")},
        "authority": {
            "provisioners": [
                {
                    "type": "JWK",
                    "name": provisioner.name,
                    "key": provisioner.public_jwk(),
                    "encryptedKey": provisioner.encrypted_key(),
                    "claims": {
                        "minTLSCertDuration": "5m",
                        "maxTLSCertDuration": "2160h",
                        "defaultTLSCertDuration": "720h",
                        **(claims or {}),
                    },
                }
            ]
        },
        "tls": {"minVersion": 1.2, "maxVersion": 1.3, "renegotiation": False},
    }
    config_path = directory / "ca.json"
    config_path.write_text(json.dumps(ca_json, indent=2))
    command = [str(binary), str(config_path)]
    log = directory / "step-ca.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env={**os.environ, "HOME": str(directory)},
            start_new_session=True,
        )
    step_ca = StepCA(
        url=f"https://127.0.0.1:{port}",
        root_pem=_pem(root),
        root_path=root_path,
        intermediate_pem=_pem(intermediate),
        provisioner=provisioner,
        log=log,
        process=process,
    )
    try:
        _wait_until_ready(step_ca)
        yield step_ca
    finally:
        stop(process)


def _wait_until_ready(step_ca: StepCA) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if step_ca.process.poll() is not None:
            pytest.fail(f"step-ca exited with {step_ca.process.returncode}: {step_ca.log_tail()}")
        try:
            if step_ca.get("/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"step-ca did not answer at {step_ca.url}: {step_ca.log_tail()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
