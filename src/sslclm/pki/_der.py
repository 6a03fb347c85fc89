"""A minimal DER reader for the few places where going through cryptography's objects is slow or lossy.

It only walks structure (tag, length, value offsets); cryptography stays the authority on whether a
certificate is valid. Everything here raises :class:`DerError` on anything unexpected so callers can
fall back to the slow, fully checked path.
"""

from __future__ import annotations

from typing import NamedTuple

TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OID = 0x06
TAG_UTF8_STRING = 0x0C
TAG_PRINTABLE_STRING = 0x13
TAG_IA5_STRING = 0x16
TAG_SEQUENCE = 0x30
TAG_SET = 0x31


class DerError(ValueError):
    """The bytes are not the DER structure we expected."""


def read_tlv(buf: bytes, pos: int, end: int | None = None) -> tuple[int, int, int]:
    """Read one TLV at ``pos``; return ``(tag, value_start, value_end)``.

    Only single-byte tags and definite lengths (as DER requires) are accepted.
    """
    if end is None:
        end = len(buf)
    if pos + 2 > end:
        raise DerError("truncated DER header")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte DER tag")
    first = buf[pos + 1]
    if first < 0x80:
        start = pos + 2
        stop = start + first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise DerError("unsupported DER length")
        start = pos + 2 + count
        if start > end:
            raise DerError("truncated DER length")
        stop = start + int.from_bytes(buf[pos + 2 : start], "big")
    if stop > end:
        raise DerError("DER value runs past its container")
    return tag, start, stop


def encode_tlv(tag: int, value: bytes) -> bytes:
    """Encode one TLV with a DER definite length."""
    length = len(value)
    if length < 0x80:
        return bytes((tag, length)) + value
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(raw))) + raw + value


def declared_length(buf: bytes) -> int | None:
    """Total length of the first TLV in ``buf`` according to its header, or None if unreadable.

    Reads at most six bytes, so it is cheap on arbitrarily large input.
    """
    if len(buf) < 2 or buf[0] & 0x1F == 0x1F:
        return None
    first = buf[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4 or len(buf) < 2 + count:
        return None
    return 2 + count + int.from_bytes(buf[2 : 2 + count], "big")


def children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The TLVs inside ``buf[start:end]`` as ``(tag, tlv_start, value_start, value_end)``."""
    out: list[tuple[int, int, int, int]] = []
    pos = start
    while pos < end:
        tag, vstart, vend = read_tlv(buf, pos, end)
        out.append((tag, pos, vstart, vend))
        pos = vend
    return out


def encode_oid(dotted: str) -> bytes:
    """DER value bytes (no tag/length) of an object identifier."""
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


class CertificateLayout(NamedTuple):
    """Byte offsets ``(start, end)`` of the parts of a certificate, found without building objects."""

    tbs: tuple[int, int]  # whole TBSCertificate TLV
    serial: tuple[int, int]  # the INTEGER's value bytes
    issuer: tuple[int, int]  # whole Name TLV
    subject: tuple[int, int]
    spki: tuple[int, int]  # whole SubjectPublicKeyInfo TLV
    extensions: tuple[int, int] | None  # whole [3] TLV
    after_tbs: tuple[int, int]  # signatureAlgorithm + signatureValue


def certificate_layout(der: bytes) -> CertificateLayout:
    """Locate the TBS fields of a DER certificate. Raises DerError if the shape is unexpected."""
    tag, cstart, cend = read_tlv(der, 0)
    if tag != TAG_SEQUENCE or cend != len(der):
        raise DerError("not a single DER SEQUENCE")
    tag, pos, tend = read_tlv(der, cstart, cend)
    if tag != TAG_SEQUENCE:
        raise DerError("TBSCertificate is not a SEQUENCE")
    tag, start, end = read_tlv(der, pos, tend)
    if tag == 0xA0:  # explicit version
        pos = end
        tag, start, end = read_tlv(der, pos, tend)
    serial = (start, end)
    if tag != TAG_INTEGER or start == end:
        raise DerError("serial number is not an INTEGER")
    _, _, pos = read_tlv(der, end, tend)  # signature AlgorithmIdentifier
    issuer_start = pos
    _, _, pos = read_tlv(der, pos, tend)
    issuer = (issuer_start, pos)
    _, _, pos = read_tlv(der, pos, tend)  # validity
    subject_start = pos
    _, _, pos = read_tlv(der, pos, tend)
    subject = (subject_start, pos)
    spki_start = pos
    tag, _, pos = read_tlv(der, pos, tend)
    if tag != TAG_SEQUENCE:
        raise DerError("subjectPublicKeyInfo is not a SEQUENCE")
    spki = (spki_start, pos)
    extensions = None
    while pos < tend:
        field_start = pos
        tag, _, pos = read_tlv(der, pos, tend)
        if tag == 0xA3:
            extensions = (field_start, pos)
    return CertificateLayout((cstart, tend), serial, issuer, subject, spki, extensions, (tend, cend))
