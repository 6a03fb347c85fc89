"""The bare parse rate: the corpus through ``cryptography`` alone, touching every field we extract.

This is the reference the importer is judged against, so it does what the platform's parser must
do and nothing more: load each PEM bundle, read every field the inventory records, hash the DER
twice for the fingerprints, and keep nothing once a certificate is done (holding many parsed
objects alive makes the garbage collector slow everything down).
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

_SHA256 = hashes.SHA256()
_SHA1 = hashes.SHA1()  # noqa: S303 - SHA-1 fingerprints are part of what the inventory records


def touch(cert: x509.Certificate) -> int:
    """Reads every field the platform extracts; returns a number so nothing is optimised away."""
    n = len(cert.subject.rfc4514_string()) + len(cert.issuer.rfc4514_string())
    n += cert.serial_number & 1
    n += cert.not_valid_before_utc.day + cert.not_valid_after_utc.day
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        n += key.key_size
    elif isinstance(key, ec.EllipticCurvePublicKey):
        n += key.curve.key_size + len(key.curve.name)
    n += len(cert.signature_algorithm_oid.dotted_string)
    for ext in cert.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            n += sum(len(str(gn.value)) for gn in value)
        elif isinstance(value, x509.KeyUsage):
            n += value.digital_signature + value.key_encipherment + value.key_cert_sign
        elif isinstance(value, x509.ExtendedKeyUsage):
            n += sum(len(oid.dotted_string) for oid in value)
        elif isinstance(value, x509.BasicConstraints):
            n += value.ca + (value.path_length or 0)
        elif isinstance(value, x509.AuthorityKeyIdentifier):
            n += len(value.key_identifier or b"")
        elif isinstance(value, x509.SubjectKeyIdentifier):
            n += len(value.digest)
        elif isinstance(value, x509.CRLDistributionPoints):
            n += sum(len(str(gn.value)) for point in value for gn in point.full_name or ())
        elif isinstance(value, x509.AuthorityInformationAccess):
            n += sum(len(str(desc.access_location.value)) for desc in value)
    n += len(cert.fingerprint(_SHA256)) + len(cert.fingerprint(_SHA1))
    return n


def parse_file(path: Path | str) -> int:
    """Parses one bundle; returns its certificate count."""
    with open(path, "rb") as handle:
        data = handle.read()
    certs = x509.load_pem_x509_certificates(data)
    count = 0
    checksum = 0
    # Pop as we go so each parsed certificate is freed once touched.
    certs.reverse()
    while certs:
        checksum += touch(certs.pop())
        count += 1
    return count if checksum >= 0 else -1


@dataclass(frozen=True, slots=True)
class ParseRate:
    processes: int
    certificates: int
    seconds: float
    cpu_seconds: float  # user + system time of the parsing processes: robust to a busy machine

    @property
    def rate(self) -> float:
        return self.certificates / self.seconds

    @property
    def per_core(self) -> float:
        return self.rate / self.processes

    @property
    def per_cpu_second(self) -> float:
        return self.certificates / self.cpu_seconds


def measure(files: Sequence[Path], processes: int = 1) -> ParseRate:
    """Parses every file, in one process or spread over ``processes`` worker processes."""
    if processes <= 1:
        cpu = time.process_time()
        started = time.perf_counter()
        total = sum(parse_file(path) for path in files)
        return ParseRate(1, total, time.perf_counter() - started, time.process_time() - cpu)
    ctx = multiprocessing.get_context("spawn")
    before = _children_cpu()
    with ctx.Pool(processes) as pool:
        # Pool start-up is excluded from the timing: it is not part of parsing.
        pool.map(_noop, range(processes))
        started = time.perf_counter()
        total = sum(pool.imap_unordered(parse_file, [str(p) for p in files], chunksize=1))
        seconds = time.perf_counter() - started
    # The workers' time is known once they are reaped, start-up included (well under a second).
    return ParseRate(processes, total, seconds, _children_cpu() - before)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _noop(_: int) -> None:
    return None
