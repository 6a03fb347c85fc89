"""The extension fields the inventory records, read straight from a certificate's DER.

cryptography builds a Python object for every extension, every general name and every access
description; for a certificate with a few dozen DNS names that is the most expensive part of a
parse. Nearly every certificate's extensions are plain: each recorded extension once, DNS names,
IP addresses, e-mail addresses and URIs as general names, well-known extended key usages. Those
are read here from the bytes. Anything else raises :class:`DerError`, and the caller parses the
certificate's extensions through cryptography, which stays the authority on odd ones.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from sslclm.pki import _der
from sslclm.pki._der import DerError

_OCTET_STRING = 0x04
_BOOLEAN = 0x01
_TRUE = 0xFF
# Context tags of GeneralName (RFC 5280 4.2.1.6), implicit, primitive.
_GN_EMAIL = 0x81
_GN_DNS = 0x82
_GN_URI = 0x86
_GN_IP = 0x87
_CONSTRUCTED_0 = 0xA0
_EXTENSIONS_WRAPPER = 0xA3  # extensions [3] EXPLICIT in TBSCertificate
_KEY_ID = 0x80

_SAN = _der.encode_oid("2.5.29.17")
_KEY_USAGE = _der.encode_oid("2.5.29.15")
_EKU = _der.encode_oid("2.5.29.37")
_BASIC_CONSTRAINTS = _der.encode_oid("2.5.29.19")
_AKI = _der.encode_oid("2.5.29.35")
_SKI = _der.encode_oid("2.5.29.14")
_CRL_DP = _der.encode_oid("2.5.29.31")
_AIA = _der.encode_oid("1.3.6.1.5.5.7.1.1")
_OCSP = _der.encode_oid("1.3.6.1.5.5.7.48.1")
_CA_ISSUERS = _der.encode_oid("1.3.6.1.5.5.7.48.2")

# Bit positions of KeyUsage (RFC 5280 4.2.1.3), in the names cryptography gives them.
KEY_USAGE_BITS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)
_KEY_AGREEMENT_BIT = 4
_ENCIPHER_ONLY_BIT = 7
_DECIPHER_ONLY_BIT = 8

# Extended key usages recorded by name; any other is recorded as its dotted OID.
EKU_NAMES_BY_OID = (
    ("1.3.6.1.5.5.7.3.1", "serverAuth"),
    ("1.3.6.1.5.5.7.3.2", "clientAuth"),
    ("1.3.6.1.5.5.7.3.3", "codeSigning"),
    ("1.3.6.1.5.5.7.3.4", "emailProtection"),
    ("1.3.6.1.5.5.7.3.8", "timeStamping"),
    ("1.3.6.1.5.5.7.3.9", "OCSPSigning"),
)
_EKU_NAMES = {_der.encode_oid(oid): name for oid, name in EKU_NAMES_BY_OID}


class ExtensionFields:
    """The extension-derived fields of one certificate; empty until an extension fills them."""

    __slots__ = (
        "authority_key_id",
        "ca_issuer_urls",
        "crl_distribution_points",
        "extended_key_usage",
        "is_ca",
        "key_usage",
        "ocsp_urls",
        "path_length",
        "sans",
        "subject_key_id",
    )

    def __init__(self) -> None:
        self.sans: Sequence[str] = ()
        self.key_usage: tuple[str, ...] = ()
        self.extended_key_usage: tuple[str, ...] = ()
        self.is_ca = False
        self.path_length: int | None = None
        self.authority_key_id: str | None = None
        self.subject_key_id: str | None = None
        self.crl_distribution_points: Sequence[str] = ()
        self.ocsp_urls: Sequence[str] = ()
        self.ca_issuer_urls: Sequence[str] = ()


# What one extension sets: (field, value) pairs, values immutable so that they can be shared.
Updates = tuple[tuple[str, Any], ...]
_Reader = Callable[[bytes, int, int], Updates]

_CACHE_SIZE = 4096
# (extension OID, value DER) -> updates. Key usage, EKU, basic constraints, AKI, CRL distribution
# points and AIA repeat across every certificate of an issuer or profile; read each once.
_updates_cache: dict[tuple[bytes, bytes], Updates] = {}


def _items(der: bytes, pos: int, end: int) -> list[tuple[int, int, int]]:
    """The ``(tag, value_start, value_end)`` of each TLV in ``der[pos:end]``."""
    out: list[tuple[int, int, int]] = []
    while pos < end:
        length = der[pos + 1]
        if length < 0x80:  # the short form, inline: this runs for every general name
            start = pos + 2
            stop = start + length
            if stop > end:
                raise DerError("DER value runs past its container")
            out.append((der[pos], start, stop))
        else:
            item = _der.read_tlv(der, pos, end)
            out.append(item)
            stop = item[2]
        pos = stop
    return out


def _only(der: bytes, start: int, end: int, tag: int) -> tuple[int, int]:
    """The value of the single TLV that fills ``der[start:end]``, which must carry ``tag``."""
    found, vstart, vend = _der.read_tlv(der, start, end)
    if found != tag or vend != end:
        raise DerError(f"expected one TLV of tag {tag:#x}")
    return vstart, vend


def _ascii(der: bytes, start: int, end: int) -> str:
    raw = der[start:end]
    if not raw or not raw.isascii():
        raise DerError("an IA5String must be non-empty ASCII here")
    return raw.decode("ascii")


def read_plain_extensions(der: bytes, extensions: tuple[int, int] | None) -> ExtensionFields:
    """The fields of the ``[3]`` extensions TLV at ``extensions`` (offsets into ``der``).

    Raises :class:`DerError` (or ``IndexError`` on bytes cut short) for anything not plain.
    """
    fields = ExtensionFields()
    if extensions is None:
        return fields
    wrapper_start, wrapper_end = _only(der, extensions[0], extensions[1], _EXTENSIONS_WRAPPER)
    start, end = _only(der, wrapper_start, wrapper_end, _der.TAG_SEQUENCE)
    seen: set[bytes] = set()
    for tag, ext_start, ext_end in _items(der, start, end):
        # Extension ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
        oid_length = der[ext_start + 1]
        pos = ext_start + 2 + oid_length
        if tag != _der.TAG_SEQUENCE or der[ext_start] != _der.TAG_OID or oid_length >= 0x80 or pos > ext_end:
            raise DerError("a malformed extension")
        oid = der[ext_start + 2 : pos]
        if oid in seen:
            raise DerError("a repeated extension")
        seen.add(oid)
        value_tag, value_start, value_end = _der.read_tlv(der, pos, ext_end)
        if value_tag == _BOOLEAN:  # critical: DER leaves out the default FALSE
            if value_end != value_start + 1 or der[value_start] != _TRUE:
                raise DerError("a critical flag DER does not allow")
            value_tag, value_start, value_end = _der.read_tlv(der, value_end, ext_end)
        if value_tag != _OCTET_STRING or value_end != ext_end:
            raise DerError("an extension value is one OCTET STRING")
        if oid == _SAN:
            fields.sans = _san(der, value_start, value_end)
        elif oid == _SKI:
            ski_start, ski_end = _only(der, value_start, value_end, _OCTET_STRING)
            fields.subject_key_id = der[ski_start:ski_end].hex()
        elif oid in _SHARED_READERS:
            for name, value in _shared_updates(oid, der[value_start:value_end]):
                setattr(fields, name, value)
    return fields


def _shared_updates(oid: bytes, value: bytes) -> Updates:
    key = (oid, value)
    updates = _updates_cache.get(key)
    if updates is None:
        updates = _SHARED_READERS[oid](value, 0, len(value))
        if len(_updates_cache) >= _CACHE_SIZE:
            _updates_cache.clear()  # bounded; the hot profiles come straight back
        _updates_cache[key] = updates
    return updates


def _general_name(der: bytes, tag: int, start: int, end: int) -> str:
    if tag == _GN_IP and end - start in (4, 16):
        return "IP:" + str(ipaddress.ip_address(der[start:end]))
    if tag == _GN_EMAIL:
        return "email:" + _ascii(der, start, end)
    if tag == _GN_URI:
        return "URI:" + _ascii(der, start, end)
    raise DerError("a general name read through cryptography")


def _san(der: bytes, start: int, end: int) -> tuple[str, ...]:
    start, end = _only(der, start, end, _der.TAG_SEQUENCE)
    names = _items(der, start, end)
    if not names:
        raise DerError("an empty SubjectAltName")
    sans: list[str] = []
    for tag, vstart, vend in names:
        if tag == _GN_DNS:  # nearly every name: inline
            raw = der[vstart:vend]
            if not raw or not raw.isascii():
                raise DerError("a DNS name must be non-empty ASCII here")
            sans.append("DNS:" + raw.decode("ascii"))
        else:
            sans.append(_general_name(der, tag, vstart, vend))
    return tuple(sans)


def _key_usage(der: bytes, start: int, end: int) -> Updates:
    start, end = _only(der, start, end, _der.TAG_BIT_STRING)
    if start == end:
        raise DerError("a BIT STRING has its unused-bits byte")
    unused, bits = der[start], der[start + 1 : end]
    if unused > 7 or (not bits and unused) or (bits and bits[-1] & ((1 << unused) - 1)):
        raise DerError("a BIT STRING's unused bits")

    def is_set(bit: int) -> bool:
        index = bit >> 3
        return index < len(bits) and bool(bits[index] & (0x80 >> (bit & 7)))

    names = [name for bit, name in enumerate(KEY_USAGE_BITS) if is_set(bit)]
    encipher_only, decipher_only = is_set(_ENCIPHER_ONLY_BIT), is_set(_DECIPHER_ONLY_BIT)
    if encipher_only or decipher_only:
        if not is_set(_KEY_AGREEMENT_BIT):
            raise DerError("encipher/decipher only without key agreement")
        if encipher_only:
            names.append("encipher_only")
        if decipher_only:
            names.append("decipher_only")
    return (("key_usage", tuple(names)),)


def _eku(der: bytes, start: int, end: int) -> Updates:
    start, end = _only(der, start, end, _der.TAG_SEQUENCE)
    names: list[str] = []
    for tag, vstart, vend in _items(der, start, end):
        name = _EKU_NAMES.get(der[vstart:vend]) if tag == _der.TAG_OID else None
        if name is None:
            raise DerError("an extended key usage named by its dotted OID")
        names.append(name)
    if not names:
        raise DerError("an empty ExtendedKeyUsage")
    return (("extended_key_usage", tuple(names)),)


def _basic_constraints(der: bytes, start: int, end: int) -> Updates:
    start, end = _only(der, start, end, _der.TAG_SEQUENCE)
    items = _items(der, start, end)
    if not items:
        return ()  # cA FALSE, no path length
    tag, vstart, vend = items[0]
    if tag != _BOOLEAN or vend != vstart + 1 or der[vstart] != _TRUE or len(items) > 2:
        raise DerError("BasicConstraints other than cA TRUE and a path length")
    if len(items) == 1:
        return (("is_ca", True),)
    tag, vstart, vend = items[1]
    if tag != _der.TAG_INTEGER or vend != vstart + 1 or der[vstart] >= 0x80:
        raise DerError("a path length over 127")
    return (("is_ca", True), ("path_length", der[vstart]))


def _aki(der: bytes, start: int, end: int) -> Updates:
    start, end = _only(der, start, end, _der.TAG_SEQUENCE)
    items = _items(der, start, end)
    if len(items) > 1 or (items and items[0][0] != _KEY_ID):
        raise DerError("an AuthorityKeyIdentifier naming the issuer")
    return (("authority_key_id", der[items[0][1] : items[0][2]].hex()),) if items else ()


def _crl_dp(der: bytes, start: int, end: int) -> Updates:
    start, end = _only(der, start, end, _der.TAG_SEQUENCE)
    urls: list[str] = []
    for tag, vstart, vend in _items(der, start, end):
        if tag != _der.TAG_SEQUENCE:
            raise DerError("a DistributionPoint is a SEQUENCE")
        # distributionPoint [0] { fullName [0] GeneralNames } and nothing else.
        name_start, name_end = _only(der, vstart, vend, _CONSTRUCTED_0)
        full_start, full_end = _only(der, name_start, name_end, _CONSTRUCTED_0)
        for gn_tag, gn_start, gn_end in _items(der, full_start, full_end):
            if gn_tag != _GN_URI:
                raise DerError("a CRL distribution point other than a URI")
            urls.append(_ascii(der, gn_start, gn_end))
    return (("crl_distribution_points", tuple(urls)),)


def _aia(der: bytes, start: int, end: int) -> Updates:
    start, end = _only(der, start, end, _der.TAG_SEQUENCE)
    ocsp: list[str] = []
    ca_issuers: list[str] = []
    for tag, vstart, vend in _items(der, start, end):
        items = _items(der, vstart, vend) if tag == _der.TAG_SEQUENCE else []
        if len(items) != 2 or items[0][0] != _der.TAG_OID or items[1][0] != _GN_URI:
            raise DerError("an access description other than a method and a URI")
        method = der[items[0][1] : items[0][2]]
        url = _ascii(der, items[1][1], items[1][2])
        if method == _OCSP:
            ocsp.append(url)
        elif method == _CA_ISSUERS:
            ca_issuers.append(url)
    return (("ocsp_urls", tuple(ocsp)), ("ca_issuer_urls", tuple(ca_issuers)))


_SHARED_READERS: dict[bytes, _Reader] = {
    _KEY_USAGE: _key_usage,
    _EKU: _eku,
    _BASIC_CONSTRAINTS: _basic_constraints,
    _AKI: _aki,
    _CRL_DP: _crl_dp,
    _AIA: _aia,
}
