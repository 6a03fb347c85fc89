"""Offline trust and hostname checks on a chain collected from a server.

The handshake itself never verifies anything (so invalid certificates are still collected); this
module then decides, from the DER the server sent, whether the chain builds to a root in a trust
store and whether the leaf matches the name that was asked for.

A walk over issuer names first names the common failures precisely (self-signed, untrusted root,
missing intermediate, expired leaf or intermediate); a chain that passes the walk then goes through
cryptography's RFC 5280 path validation, which has the last word (signatures, constraints, key
usage, weak algorithms). Results are cached per served chain: on large scans thousands of
endpoints serve the same chain, and the name check against a cached leaf is a set lookup.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import ssl
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import PublicKeyAlgorithmOID, SignatureAlgorithmOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from sslclm.connectors.tls_scan.results import TrustError
from sslclm.errors import InvalidInputError

__all__ = ["TrustResult", "TrustStore", "TrustVerifier", "default_ca_bundle", "match_hostname"]

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_BUNDLE_CANDIDATES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL, Fedora
    "/etc/ssl/cert.pem",  # macOS, BSD
)
_MAX_DEPTH = 10
_MIN_RSA_BITS = 2048
_WEAK_SIGNATURES = {
    SignatureAlgorithmOID.RSA_WITH_MD5: "md5WithRSAEncryption",
    SignatureAlgorithmOID.RSA_WITH_SHA1: "sha1WithRSAEncryption",
    x509.ObjectIdentifier("1.3.14.3.2.29"): "sha1WithRSA (OIW)",
    SignatureAlgorithmOID.ECDSA_WITH_SHA1: "ecdsa-with-SHA1",
    SignatureAlgorithmOID.DSA_WITH_SHA1: "dsaWithSHA1",
}


def default_ca_bundle() -> Path | None:
    """The system CA bundle OpenSSL was built to use, else the first of the usual places."""
    configured = ssl.get_default_verify_paths().cafile
    for candidate in (configured, *_BUNDLE_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


class TrustStore:
    """A set of trusted roots, indexed by subject for the issuer walk."""

    def __init__(self, roots: Iterable[x509.Certificate]) -> None:
        self.roots = tuple(dict.fromkeys(roots))
        self._store = Store(list(self.roots)) if self.roots else None
        self._subjects = {root.subject.public_bytes() for root in self.roots}
        self._anchors = frozenset(self.roots)  # certificates compare and hash by their DER

    def __len__(self) -> int:
        return len(self.roots)

    @classmethod
    def load(
        cls,
        bundles: Iterable[Path | str] | None = None,
        *,
        extra_roots: Iterable[Path | str] = (),
        extra_pem: bytes = b"",
        use_system: bool = True,
    ) -> TrustStore:
        """The system bundle (when ``use_system``) plus extra PEM files and PEM text.

        ``bundles`` replaces the system bundle. Certificates in a bundle that cannot be parsed are
        skipped (distribution bundles occasionally carry one); a missing file is an error.
        """
        files: list[Path] = []
        if bundles is not None:
            files.extend(Path(b) for b in bundles)
        elif use_system:
            system = default_ca_bundle()
            if system is not None:
                files.append(system)
        files.extend(Path(p) for p in extra_roots)
        roots: list[x509.Certificate] = []
        for path in files:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise InvalidInputError(
                    f"cannot read CA bundle {str(path)!r}: {exc.strerror}", field="ca_bundle"
                ) from exc
            roots.extend(_load_pem_certificates(data))
        roots.extend(_load_pem_certificates(extra_pem))
        return cls(roots)

    def is_anchor(self, certificate: x509.Certificate) -> bool:
        return certificate in self._anchors

    def has_subject(self, name: x509.Name) -> bool:
        return name.public_bytes() in self._subjects

    @property
    def store(self) -> Store | None:
        return self._store


def _load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    certificates = []
    with _lenient():
        for block in _PEM_CERT.findall(data):
            try:
                certificates.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                continue
    return certificates


@contextlib.contextmanager
def _lenient() -> Iterator[None]:
    """Silence cryptography's deprecation warnings for certificates others issued.

    Real roots and servers carry RFC 5280 violations (e.g. a zero or negative serial) that
    cryptography still parses but warns about; they are facts to record, not our code's fault.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        yield


@dataclass(frozen=True, slots=True)
class TrustResult:
    trusted: bool
    error_kind: TrustError | None = None
    error: str | None = None
    hostname_match: bool | None = None


@dataclass(frozen=True, slots=True)
class _ChainVerdict:
    trusted: bool
    error_kind: TrustError | None
    error: str | None
    dns_names: frozenset[str]
    ip_addresses: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]


class TrustVerifier:
    """Checks served chains against one trust store at one point in time, with a bounded cache."""

    def __init__(self, store: TrustStore, at: datetime, *, cache_size: int = 4096) -> None:
        self.store = store
        self.at = at
        self._cache: OrderedDict[tuple[bytes, ...], _ChainVerdict] = OrderedDict()
        self._cache_size = cache_size

    def check(self, chain: Sequence[bytes], name: str) -> TrustResult:
        """Judge ``chain`` (leaf first, DER) as served for ``name`` (a DNS name or IP literal)."""
        if not chain:
            return TrustResult(False, TrustError.UNPARSABLE, "the server sent no certificate", None)
        key = tuple(chain)
        verdict = self._cache.get(key)
        if verdict is None:
            with _lenient():
                verdict = self._judge(key, name)
            self._cache[key] = verdict
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        if verdict.error_kind is TrustError.UNPARSABLE:
            return TrustResult(False, verdict.error_kind, verdict.error, None)
        matches = _matches(name, verdict.dns_names, verdict.ip_addresses)
        return TrustResult(verdict.trusted, verdict.error_kind, verdict.error, matches)

    def _judge(self, chain: tuple[bytes, ...], name: str) -> _ChainVerdict:
        try:
            certificates = [x509.load_der_x509_certificate(der) for der in chain]
        except ValueError as exc:
            message = f"the server sent a certificate that cannot be parsed: {_one_line(str(exc))}"
            return _ChainVerdict(False, TrustError.UNPARSABLE, message, frozenset(), frozenset())
        leaf = certificates[0]
        dns_names, ip_addresses, has_san = _leaf_names(leaf)
        problem = self._walk(certificates)
        if problem is None:
            problem = self._validate(certificates, name, dns_names, ip_addresses, has_san)
        if problem is None:
            return _ChainVerdict(True, None, None, dns_names, ip_addresses)
        return _ChainVerdict(False, problem[0], problem[1], dns_names, ip_addresses)

    def _walk(self, certificates: list[x509.Certificate]) -> tuple[TrustError, str] | None:
        """Follow issuer names from the leaf; name the first structural or validity problem."""
        leaf = certificates[0]
        expiry = self._validity_problem(leaf, is_leaf=True)
        if expiry is not None:
            return expiry
        served = certificates[1:]
        path = [leaf]
        current = leaf
        for _ in range(_MAX_DEPTH):
            if self.store.is_anchor(current) or self.store.has_subject(current.issuer):
                break
            if current.issuer == current.subject:
                if current is leaf:
                    return TrustError.SELF_SIGNED, f"self-signed certificate {_name(leaf.subject)}"
                return TrustError.UNTRUSTED_ROOT, f"untrusted root {_name(current.subject)}"
            issuer = next((c for c in served if c.subject == current.issuer and c not in path), None)
            if issuer is None:
                return (
                    TrustError.MISSING_INTERMEDIATE,
                    f"missing intermediate: issuer {_name(current.issuer)} was not served"
                    " and is not a trusted root",
                )
            path.append(issuer)
            current = issuer
        else:
            return TrustError.INVALID, f"chain longer than {_MAX_DEPTH} certificates"
        for intermediate in path[1:]:
            if self.store.is_anchor(intermediate):
                break
            problem = self._validity_problem(intermediate, is_leaf=False)
            if problem is not None:
                return problem
        for certificate in path:
            if self.store.is_anchor(certificate):
                break  # a root's self-signature and key are vouched for by the store, not checked
            weakness = _weakness(certificate)
            if weakness is not None:
                return TrustError.WEAK_ALGORITHM, weakness
        return None

    def _validity_problem(
        self, certificate: x509.Certificate, *, is_leaf: bool
    ) -> tuple[TrustError, str] | None:
        if self.at > certificate.not_valid_after_utc:
            when = certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%SZ")
            if is_leaf:
                return TrustError.EXPIRED, f"certificate expired on {when}"
            return (
                TrustError.EXPIRED_INTERMEDIATE,
                f"intermediate {_name(certificate.subject)} expired on {when}",
            )
        if self.at < certificate.not_valid_before_utc:
            when = certificate.not_valid_before_utc.strftime("%Y-%m-%d %H:%M:%SZ")
            if is_leaf:
                return TrustError.NOT_YET_VALID, f"certificate not valid before {when}"
            return (
                TrustError.EXPIRED_INTERMEDIATE,
                f"intermediate {_name(certificate.subject)} not valid before {when}",
            )
        return None

    def _validate(
        self,
        certificates: list[x509.Certificate],
        name: str,
        dns_names: frozenset[str],
        ip_addresses: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address],
        has_san: bool,
    ) -> tuple[TrustError, str] | None:
        store = self.store.store
        if store is None:
            return TrustError.UNTRUSTED_ROOT, "the trust store is empty"
        # Validate the chain under a name the leaf does carry, so that a wrong hostname is reported
        # as hostname_match=False and not as an untrusted chain.
        subject = _subject_for(name, dns_names, ip_addresses, has_san)
        verifier = PolicyBuilder().store(store).time(self.at).build_server_verifier(subject)
        try:
            verifier.verify(certificates[0], certificates[1:])
        except VerificationError as exc:
            return TrustError.INVALID, _one_line(str(exc))
        return None


def _weakness(certificate: x509.Certificate) -> str | None:
    """SHA-1/MD5 signatures and RSA keys under 2048 bits, which browsers and OpenSSL's defaults refuse."""
    algorithm = certificate.signature_algorithm_oid
    if algorithm in _WEAK_SIGNATURES:
        return f"weak signature: {_name(certificate.subject)} is signed with {_WEAK_SIGNATURES[algorithm]}"
    if certificate.public_key_algorithm_oid == PublicKeyAlgorithmOID.RSAES_PKCS1_v1_5:
        bits = getattr(certificate.public_key(), "key_size", 0)
        if bits < _MIN_RSA_BITS:
            return f"weak key: {_name(certificate.subject)} has a {bits}-bit RSA key"
    return None


def match_hostname(leaf_der: bytes, name: str) -> bool:
    """Whether the certificate's subjectAltNames cover ``name`` (RFC 6125; no CN fallback)."""
    with _lenient():
        dns_names, ip_addresses, _ = _leaf_names(x509.load_der_x509_certificate(leaf_der))
    return _matches(name, dns_names, ip_addresses)


def _leaf_names(
    leaf: x509.Certificate,
) -> tuple[frozenset[str], frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]:
    try:
        extension = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return frozenset(), frozenset(), False
    except ValueError:
        return frozenset(), frozenset(), False  # a malformed extension matches nothing
    san = extension.value
    dns = frozenset(n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName))
    ips = frozenset(
        value
        for value in san.get_values_for_type(x509.IPAddress)
        if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address))
    )
    return dns, ips, True


def _matches(
    name: str,
    dns_names: frozenset[str],
    ip_addresses: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> bool:
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return address in ip_addresses
    wanted = name.lower().rstrip(".")
    if wanted in dns_names:
        return True
    first, dot, rest = wanted.partition(".")
    # A wildcard covers exactly one whole left-most label, and never a bare public suffix like "*.com".
    return bool(first and dot and "." in rest and f"*.{rest}" in dns_names)


def _subject_for(
    name: str,
    dns_names: frozenset[str],
    ip_addresses: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address],
    has_san: bool,
) -> DNSName | IPAddress:
    if has_san and not _matches(name, dns_names, ip_addresses):
        for dns in sorted(dns_names):
            candidate = "x" + dns[1:] if dns.startswith("*.") else dns
            return DNSName(candidate)
        for address in sorted(ip_addresses, key=str):
            return IPAddress(address)
    try:
        return IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    return DNSName(name)


def _name(name: x509.Name) -> str:
    return repr(name.rfc4514_string())


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."
