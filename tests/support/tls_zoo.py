"""A loopback endpoint zoo for the TLS discovery tests: generated PKIs and real TLS servers.

Certificates are made with cryptography; servers are real asyncio TLS listeners on 127.0.0.1
(ephemeral ports) with ``@SECLEVEL=0`` so that they agree to serve SHA-1 and RSA-1024 certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)


def new_key(kind: str = "ec256") -> CertificateIssuerPrivateKeyTypes:
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    raise ValueError(kind)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def issue(
    common_name: str,
    *,
    issuer: Issued | None = None,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    ca: bool = False,
    names: Sequence[str] = (),
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    hash_algorithm: hashes.HashAlgorithm | None = None,
    authority_key_id: bool = True,
) -> Issued:
    """A certificate for ``common_name``; self-signed when ``issuer`` is None.

    ``names`` become SANs (IP literals as iPAddress); leaves get serverAuth, CAs get keyCertSign.
    """
    key = key or new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 90 * DAY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if issuer is not None and authority_key_id:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if names:
        general: list[x509.GeneralName] = []
        for name in names:
            try:
                general.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                general.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    if isinstance(hash_algorithm, hashes.SHA1):
        cert = _resign_sha1(cert, signer_key)
    return Issued(cert, key)


_SHA256_RSA = bytes.fromhex("300d06092a864886f70d01010b0500")
_SHA1_RSA = bytes.fromhex("300d06092a864886f70d0101050500")


def _resign_sha1(cert: x509.Certificate, signer_key: CertificateIssuerPrivateKeyTypes) -> x509.Certificate:
    """The same certificate signed with sha1WithRSAEncryption.

    cryptography no longer signs with SHA-1, yet servers still present such certificates: swap the
    (equal-length) algorithm identifier inside the TBS and sign the result with the RSA primitive.
    """
    assert isinstance(signer_key, rsa.RSAPrivateKey), "SHA-1 certificates are made by an RSA issuer"
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(_SHA256_RSA) == 1
    tbs = tbs.replace(_SHA256_RSA, _SHA1_RSA)
    signature = signer_key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 - on purpose
    body = tbs + _SHA1_RSA + _der(0x03, b"\x00" + signature)
    return x509.load_der_x509_certificate(_der(0x30, body))


def _der(tag: int, value: bytes) -> bytes:
    if len(value) < 0x80:
        return bytes([tag, len(value)]) + value
    length = len(value).to_bytes((len(value).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + value


@dataclass(frozen=True)
class Pki:
    """A root, an intermediate under it, and helpers to issue leaves below the intermediate."""

    root: Issued
    intermediate: Issued

    @classmethod
    def create(cls, label: str = "Zoo") -> Pki:
        root = issue(f"{label} Root CA", ca=True, not_after=NOW + 3650 * DAY)
        intermediate = issue(f"{label} Issuing CA", issuer=root, ca=True, not_after=NOW + 1825 * DAY)
        return cls(root, intermediate)

    def leaf(self, *names: str, **kwargs: object) -> Issued:
        return issue(names[0] if names else "leaf", issuer=self.intermediate, names=names, **kwargs)  # type: ignore[arg-type]


def write_identity(
    directory: Path, label: str, leaf: Issued, chain: Sequence[Issued] = ()
) -> tuple[Path, Path]:
    """Write ``leaf`` + ``chain`` (the order a server sends) and the key; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{label}.crt"
    key_path = directory / f"{label}.key"
    cert_path.write_bytes(leaf.pem + b"".join(c.pem for c in chain))
    key_path.write_bytes(leaf.key_pem)
    return cert_path, key_path


def server_context(
    cert_path: Path,
    key_path: Path,
    *,
    maximum_version: ssl.TLSVersion | None = None,
    minimum_version: ssl.TLSVersion | None = None,
    ciphers: str = "DEFAULT:@SECLEVEL=0",
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers(ciphers)  # before loading, so weak certificates are accepted
    context.load_cert_chain(cert_path, key_path)
    with warnings.catch_warnings():  # the stdlib deprecates TLS 1.0/1.1; old servers still speak them
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum_version is not None:
            context.minimum_version = minimum_version
        if maximum_version is not None:
            context.maximum_version = maximum_version
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def sni_context(default: ssl.SSLContext, by_name: dict[str, ssl.SSLContext]) -> ssl.SSLContext:
    """``default`` switching to ``by_name[sni]`` when the client asks for a known name."""

    def choose(sslobj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        if name in by_name:
            sslobj.context = by_name[name]

    default.sni_callback = choose  # type: ignore[assignment]
    return default


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _drain_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


class Server:
    """A real listener on 127.0.0.1 (or ::1) with an ephemeral port; closes every connection on exit."""

    def __init__(
        self,
        handler: Handler = _drain_until_eof,
        *,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self._host = host
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.active = 0
        self.peak = 0
        self.port = 0

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, self._host, 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handler(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the scanner aborts connections once it has what it needs; exit cancels the rest
        finally:
            self.active -= 1
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let the aborted transports run their connection_lost callbacks


def free_port() -> int:
    """A loopback port with nothing listening on it (bound and released)."""
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
