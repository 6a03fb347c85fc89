"""Parsing files into inventory rows: the part of an import that runs in parser processes.

Kept apart from the writer so that a parser process imports only this, ``sslclm.pki`` and
``orjson``: started by ``forkserver``, it does not carry the database layer, the web framework or
the importing process's pages, and its memory is the parse's own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from sslclm.errors import SslClmError
from sslclm.inventory.bulk import stored_datetime
from sslclm.pki import (
    CertificateInfo,
    load_bundle,
    match_private_keys,
    private_key_to_pkcs8_der,
    public_key_sha256,
)

# A certificate as a plain tuple, in the column order of ``bulk.CERTIFICATE_COLUMNS`` up to
# ``search_text``, with the issuer's DN where the issuer id goes, datetimes as stored text and
# JSON columns serialised: what a parser process sends back (a tuple pickles several times
# faster than a slotted dataclass) and what the bulk insert needs, less the per-import values.
CertificateRow = tuple[Any, ...]
ROW_ISSUER = 5


@dataclass(slots=True)
class ParsedFile:
    """One file's certificates and the private keys that match them; or why it was rejected.

    Certificates come either as :class:`CertificateInfo` objects (``certificates``) or, from the
    importer's parser processes, already as rows (``rows``); the writer takes both.
    """

    path: str
    certificates: list[CertificateInfo] = field(default_factory=list)
    keys: list[tuple[str, bytes]] = field(default_factory=list)  # (public key SHA-256, PKCS#8 DER)
    error: str | None = None
    format: str | None = None
    rows: list[CertificateRow] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.certificates) + len(self.rows)


@dataclass(frozen=True, slots=True)
class Piece:
    """What one parser task reads: a whole file, or the bytes ``start:stop`` of a large PEM bundle.

    A part starts at a ``-----BEGIN CERTIFICATE-----`` line and ends where the next part starts;
    ``last`` marks the final part of its file (and every whole file).
    """

    path: str
    start: int = -1
    stop: int = -1
    last: bool = True

    @property
    def whole(self) -> bool:
        return self.start < 0


def parse_file_bytes(path: str, data: bytes, password: str | None, *, as_rows: bool = False) -> ParsedFile:
    """Parses one file; with ``as_rows`` its certificates come back as rows ready to insert."""
    try:
        bundle = load_bundle(data, password=password, filename=path)
        infos = bundle.infos()
        matched = match_private_keys(bundle.certificates, bundle.private_keys) if bundle.private_keys else {}
        keys = []
        for key in {id(k): k for k in matched.values()}.values():
            keys.append((public_key_sha256(key), private_key_to_pkcs8_der(key)))
    except SslClmError as exc:
        # The reason is reported beside the path; pki's messages may already start with it.
        return ParsedFile(path, error=exc.message.removeprefix(f"{path}: "))
    except (ValueError, TypeError) as exc:
        return ParsedFile(path, error=f"unparseable: {type(exc).__name__}: {str(exc)[:200]}")
    if not infos:
        return ParsedFile(path, error="no certificate found in the file")
    if as_rows:
        return ParsedFile(path, keys=keys, format=bundle.format, rows=[certificate_row(i) for i in infos])
    return ParsedFile(path, infos, keys, format=bundle.format)


def os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    return f"unreadable: {exc.strerror or type(exc).__name__}"


def parse_path(path: str, password: str | None, max_bytes: int) -> ParsedFile:
    """Reads and parses one file; every failure becomes a one-line reason, never an exception."""
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            return ParsedFile(
                path, error=f"too large: {size / 1e6:.1f} MB exceeds the {max_bytes / 1e6:.0f} MB limit"
            )
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        return ParsedFile(path, error=os_reason(exc))
    # Rows, not CertificateInfo objects: they cross the process boundary and go straight to the driver.
    return parse_file_bytes(path, data, password, as_rows=True)


def parse_piece(piece: Piece, password: str | None, max_bytes: int) -> ParsedFile:
    if piece.whole:
        return parse_path(piece.path, password, max_bytes)
    try:
        with open(piece.path, "rb") as handle:
            handle.seek(piece.start)
            data = handle.read(piece.stop - piece.start)
    except OSError as exc:
        return ParsedFile(piece.path, error=os_reason(exc))
    return parse_file_bytes(piece.path, data, password, as_rows=True)


def parse_pieces(pieces: Sequence[Piece], password: str | None, max_bytes: int) -> list[ParsedFile]:
    """One parser task: its pieces' results, in order."""
    return [parse_piece(piece, password, max_bytes) for piece in pieces]


def _json(values: Sequence[str]) -> str:
    return orjson.dumps(list(values)).decode()


def certificate_row(info: CertificateInfo) -> CertificateRow:
    """``info`` as a :data:`CertificateRow`."""
    return (
        info.fingerprint_sha256,
        info.fingerprint_sha1,
        info.serial,
        info.subject,
        info.common_name,
        info.issuer,
        stored_datetime(info.not_before),
        stored_datetime(info.not_after),
        info.key_algorithm,
        info.key_size,
        info.key_curve,
        info.signature_algorithm,
        _json(info.sans),
        _json(info.key_usage),
        _json(info.extended_key_usage),
        info.is_ca,
        info.path_length,
        info.authority_key_id,
        info.subject_key_id,
        _json(info.crl_distribution_points),
        _json(info.ocsp_urls),
        _json(info.ca_issuer_urls),
        info.self_signed,
        info.public_key_sha256,
        info.der,
        search_text(info),
    )


def search_text(info: CertificateInfo) -> str:
    """The subject DN and the SAN values, lower-cased: what the trigram index holds (the issuer,
    serial and fingerprint are searched through their own indexes: ``inventory.search``)."""
    parts = [info.subject]
    parts.extend(san.split(":", 1)[-1] for san in info.sans)
    return "\n".join(parts).lower()
