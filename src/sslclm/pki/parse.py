"""Turn an X.509 certificate into :class:`CertificateInfo`, fast.

Discovery and import push tens of thousands of certificates a second through here, so the work is
arranged to do each expensive thing once: the DER is hashed with hashlib (not re-encoded per digest),
the SubjectPublicKeyInfo is sliced out of the DER instead of building a key object and serialising it
back, plain names and plain extensions are read from the DER (``_plain_extensions``), and any other
extension list is parsed once by cryptography and dispatched by type. A malformed extension never
fails the whole certificate: that extension's fields are left empty.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa, x448, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from sslclm.pki import _der
from sslclm.pki._plain_extensions import (
    EKU_NAMES_BY_OID,
    KEY_USAGE_BITS,
    ExtensionFields,
    read_plain_extensions,
)
from sslclm.pki.info import CertificateInfo

__all__ = ["compute_fingerprint", "extract_info", "parse_certificate"]

_COMMON_NAME = NameOID.COMMON_NAME
_OCSP = AuthorityInformationAccessOID.OCSP
_CA_ISSUERS = AuthorityInformationAccessOID.CA_ISSUERS

_EKU_NAMES = {x509.ObjectIdentifier(oid): name for oid, name in EKU_NAMES_BY_OID}

# SubjectPublicKeyInfo algorithm OIDs (DER value bytes) -> our name.
_RSA = _der.encode_oid("1.2.840.113549.1.1.1")
_RSA_PSS = _der.encode_oid("1.2.840.113549.1.1.10")
_EC = _der.encode_oid("1.2.840.10045.2.1")
_DSA = _der.encode_oid("1.2.840.10040.4.1")
# Fixed-size keys; sizes as OpenSSL reports them (EVP_PKEY_get_bits).
_FIXED_SIZE_KEYS: dict[bytes, tuple[str, int]] = {
    _der.encode_oid("1.3.101.112"): ("Ed25519", 256),
    _der.encode_oid("1.3.101.113"): ("Ed448", 456),
    _der.encode_oid("1.3.101.110"): ("X25519", 253),
    _der.encode_oid("1.3.101.111"): ("X448", 448),
}
# Named curves -> (cryptography's curve name, key size).
_CURVES: dict[bytes, tuple[str, int]] = {
    _der.encode_oid(oid): (name, size)
    for oid, name, size in (
        ("1.2.840.10045.3.1.7", "secp256r1", 256),
        ("1.3.132.0.34", "secp384r1", 384),
        ("1.3.132.0.35", "secp521r1", 521),
        ("1.3.132.0.33", "secp224r1", 224),
        ("1.2.840.10045.3.1.1", "secp192r1", 192),
        ("1.3.132.0.10", "secp256k1", 256),
        ("1.3.36.3.3.2.8.1.1.7", "brainpoolP256r1", 256),
        ("1.3.36.3.3.2.8.1.1.11", "brainpoolP384r1", 384),
        ("1.3.36.3.3.2.8.1.1.13", "brainpoolP512r1", 512),
    )
}

KeyFacts = tuple[str, int | None, str | None]


def compute_fingerprint(der: bytes) -> str:
    """SHA-256 fingerprint of a certificate's DER as lowercase hex: the inventory's key."""
    return hashlib.sha256(der).hexdigest()


def parse_certificate(der: bytes) -> CertificateInfo:
    """Load one DER certificate and extract its facts (the fastest path when the DER is at hand).

    Raises ``ValueError`` if cryptography cannot load the DER; callers that need a
    :class:`~sslclm.errors.CertificateFormatError` use :func:`sslclm.pki.load_certificate`.
    """
    layout = _layout(der)
    try:
        if layout is not None and _positive_serial(der, layout):
            cert = x509.load_der_x509_certificate(der)
        else:
            with warnings.catch_warnings():  # cryptography warns about non-positive serials
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                cert = x509.load_der_x509_certificate(der)
    except x509.InvalidVersion as exc:
        raise ValueError(str(exc)) from exc
    return _extract(cert, der, layout)


def extract_info(cert: x509.Certificate, *, der: bytes | None = None) -> CertificateInfo:
    """Every fact the inventory records about ``cert``.

    ``der`` may be passed when the caller already holds the certificate's DER, which saves
    re-encoding it; it must be the DER of ``cert``.

    The work is done on a private copy of the certificate: cryptography caches the Python objects
    it builds for names and extensions inside the certificate object, and thousands of long-lived
    certificates carrying those caches make the garbage collector slow everything down. ``cert``
    itself is left as light as it came.
    """
    if der is None:
        der = cert.public_bytes(Encoding.DER)
    layout = _layout(der)
    work = cert
    if layout is not None and _positive_serial(der, layout):  # else a copy would warn again on load
        try:
            work = x509.load_der_x509_certificate(der)
        except (ValueError, x509.InvalidVersion):  # not for DER cryptography produced; be safe anyway
            work = cert
    return _extract(work, der, layout)


def _layout(der: bytes) -> _der.CertificateLayout | None:
    try:
        return _der.certificate_layout(der)
    except _der.DerError:
        return None


def _positive_serial(der: bytes, layout: _der.CertificateLayout) -> bool:
    start, end = layout.serial
    return not der[start] & 0x80 and (end - start > 1 or der[start] != 0)


def _extract(cert: x509.Certificate, der: bytes, layout: _der.CertificateLayout | None) -> CertificateInfo:
    try:
        return _extract_once(cert, der, layout)
    except Warning:
        # Only reached when warnings are errors (as in the test suite). cryptography warns about
        # things real certificates do (non-positive serials, over-long country names); they are
        # still worth inventorying, so do it again with its warnings silenced. Free otherwise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _extract_once(cert, der, layout)


def _extract_once(
    cert: x509.Certificate, der: bytes, layout: _der.CertificateLayout | None
) -> CertificateInfo:
    if layout is not None:
        spki = der[layout.spki[0] : layout.spki[1]]
        subject_der = der[layout.subject[0] : layout.subject[1]]
        issuer_der = der[layout.issuer[0] : layout.issuer[1]]
        same_names = subject_der == issuer_der
        subject_dn, common_name = _name_facts(subject_der, cert, _SUBJECT)
        issuer_dn = _name_facts(issuer_der, cert, _ISSUER)[0]
        try:
            key = _key_facts_from_spki(spki)
        except _der.DerError:
            key = None
        if key is None:
            key = _key_facts_from_object(cert)
    else:
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        same_names = _safe_name_eq(cert)
        subject_dn, common_name = _describe_name(cert, _SUBJECT)
        issuer_dn = _describe_name(cert, _ISSUER)[0]
        key = _key_facts_from_object(cert)

    sig_oid = cert.signature_algorithm_oid
    sig_name = sig_oid._name
    if sig_name == "Unknown OID":
        sig_name = sig_oid.dotted_string
    if layout is not None:
        serial = int.from_bytes(der[layout.serial[0] : layout.serial[1]], "big", signed=True)
    else:
        serial = cert.serial_number

    ext = _extension_fields(cert, der, layout)

    fingerprint = hashlib.sha256(der).hexdigest()
    self_signed = same_names and _is_self_signed(cert, fingerprint)

    return CertificateInfo(
        fingerprint_sha256=fingerprint,
        fingerprint_sha1=hashlib.sha1(der, usedforsecurity=False).hexdigest(),
        serial=format(serial, "x") if serial >= 0 else "-" + format(-serial, "x"),
        subject=subject_dn,
        issuer=issuer_dn,
        common_name=common_name,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_algorithm=key[0],
        key_size=key[1],
        key_curve=key[2],
        signature_algorithm=sig_name,
        sans=tuple(ext.sans),
        key_usage=ext.key_usage,
        extended_key_usage=ext.extended_key_usage,
        is_ca=ext.is_ca,
        path_length=ext.path_length,
        authority_key_id=ext.authority_key_id,
        subject_key_id=ext.subject_key_id,
        crl_distribution_points=tuple(ext.crl_distribution_points),
        ocsp_urls=tuple(ext.ocsp_urls),
        ca_issuer_urls=tuple(ext.ca_issuer_urls),
        self_signed=self_signed,
        public_key_sha256=hashlib.sha256(spki).hexdigest(),
        der=der,
    )


# --- names -----------------------------------------------------------------------------------------


_SUBJECT = True
_ISSUER = False
_NAME_CACHE_SIZE = 4096
# Name DER -> (RFC 4514 string, last CN). Issuer names repeat across thousands of certificates and
# building cryptography's Name objects is the most expensive part of parsing after the extensions.
_name_cache: dict[bytes, tuple[str, str | None]] = {}


def _name_facts(name_der: bytes, cert: x509.Certificate, which: bool) -> tuple[str, str | None]:
    facts = _name_cache.get(name_der)
    if facts is None:
        try:
            facts = _describe_plain_name(name_der)
        except (_der.DerError, UnicodeDecodeError, IndexError):
            facts = _describe_name(cert, which)
        if len(_name_cache) >= _NAME_CACHE_SIZE:
            _name_cache.clear()  # crude, but O(1) amortised and bounded; hot issuers come right back
        _name_cache[name_der] = facts
    return facts


# What a plain name may hold: single-valued RDNs of the attributes RFC 4514 names, with string
# values that need no escaping. Anything else (a '+' RDN, another OID, a BMPString, a value with
# a character RFC 4514 escapes) goes through cryptography's objects, which format it.
_RFC4514_SHORT_NAMES = {
    _der.encode_oid(oid.dotted_string): short
    for oid, short in (
        (NameOID.COMMON_NAME, "CN"),
        (NameOID.LOCALITY_NAME, "L"),
        (NameOID.STATE_OR_PROVINCE_NAME, "ST"),
        (NameOID.ORGANIZATION_NAME, "O"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "OU"),
        (NameOID.COUNTRY_NAME, "C"),
        (NameOID.STREET_ADDRESS, "STREET"),
        (NameOID.DOMAIN_COMPONENT, "DC"),
        (NameOID.USER_ID, "UID"),
    )
}
_COMMON_NAME_DER = _der.encode_oid(_COMMON_NAME.dotted_string)
# PrintableString's alphabet (X.680) less RFC 4514's specials: such bytes read the same in any decoder.
_PRINTABLE_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()-./:=?")
_RFC4514_SPECIALS = frozenset('\\"+,;<>\x00')


def _describe_plain_name(name_der: bytes) -> tuple[str, str | None]:
    """The RFC 4514 string and last CN of a plain name, read from its DER.

    Gives what ``Name.rfc4514_string()`` gives, without building cryptography's Name objects (the
    subject is a new name for nearly every certificate, so the cache of issuer names does not
    help there). Raises :class:`_der.DerError` for a name that is not plain. The lengths inside a
    plain name's RDNs are short-form (under 128 bytes), read inline: this runs once a certificate.
    """
    tag, pos, end = _der.read_tlv(name_der, 0)
    if tag != _der.TAG_SEQUENCE:
        raise _der.DerError("a Name is a SEQUENCE")
    parts: list[str] = []
    common_name: str | None = None
    while pos < end:
        # SET { SEQUENCE { OID, value } }, each header two bytes.
        headers = (name_der[pos], name_der[pos + 2], name_der[pos + 4])
        if headers != (_der.TAG_SET, _der.TAG_SEQUENCE, _der.TAG_OID):
            raise _der.DerError("not a single-valued RDN")
        rdn_end = pos + 2 + name_der[pos + 1]
        oid_end = pos + 6 + name_der[pos + 5]
        oid = name_der[pos + 6 : oid_end]
        short = _RFC4514_SHORT_NAMES.get(oid)
        value_end = oid_end + 2 + name_der[oid_end + 1]
        if (
            short is None
            or rdn_end > end
            or pos + 4 + name_der[pos + 3] != rdn_end
            or value_end != rdn_end
            or value_end == oid_end + 2
        ):
            raise _der.DerError("not a plain attribute")  # also a long-form length (0x80 and up)
        raw = name_der[oid_end + 2 : value_end]
        tag = name_der[oid_end]
        if tag == _der.TAG_UTF8_STRING:
            value = raw.decode("utf-8")
            if not _RFC4514_SPECIALS.isdisjoint(value):
                raise _der.DerError("a value RFC 4514 escapes")
        elif tag in (_der.TAG_PRINTABLE_STRING, _der.TAG_IA5_STRING) and _PRINTABLE_PLAIN.issuperset(raw):
            value = raw.decode("ascii")
        else:
            raise _der.DerError("not a plain string value")
        if value[0] in "# " or value[-1] == " ":
            raise _der.DerError("a value RFC 4514 escapes")
        parts.append(f"{short}={value}")
        if oid == _COMMON_NAME_DER:
            common_name = value  # the last CN is the most specific one
        pos = rdn_end
    parts.reverse()
    return ",".join(parts), common_name


def _describe_name(cert: x509.Certificate, which: bool) -> tuple[str, str | None]:
    try:
        name = cert.subject if which else cert.issuer
        dn = name.rfc4514_string()
    except ValueError:  # an attribute value cryptography refuses to decode
        return "", None
    common_name: str | None = None
    for attr in name:
        if attr.oid == _COMMON_NAME:  # the last CN is the most specific one
            value = attr.value
            common_name = value if isinstance(value, str) else value.decode("utf-8", "replace")
    return dn, common_name


def _safe_name_eq(cert: x509.Certificate) -> bool:
    try:
        return cert.subject == cert.issuer
    except ValueError:
        return False


# --- self-signature --------------------------------------------------------------------------------

_SELF_SIGNED_CACHE_SIZE = 4096
# Fingerprint -> verdict. The same roots turn up in every chain file, and verifying an RSA-4096
# signature costs more than parsing the rest of the certificate.
_self_signed_cache: dict[str, bool] = {}


def _is_self_signed(cert: x509.Certificate, fingerprint: str) -> bool:
    verdict = _self_signed_cache.get(fingerprint)
    if verdict is None:
        verdict = _verify_own_signature(cert)
        if len(_self_signed_cache) >= _SELF_SIGNED_CACHE_SIZE:
            _self_signed_cache.clear()
        _self_signed_cache[fingerprint] = verdict
    return verdict


def _verify_own_signature(cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(cert)
        return True
    except (InvalidSignature, TypeError, UnsupportedAlgorithm):
        return False
    except ValueError:
        pass  # e.g. "Unsupported signature algorithm" for the SHA-1 roots still found everywhere
    # Verify by hand with whatever hash and padding the certificate names.
    try:
        key = cert.public_key()
        signature, tbs = cert.signature, cert.tbs_certificate_bytes
        params = cert.signature_algorithm_parameters
        if isinstance(key, rsa.RSAPublicKey) and isinstance(params, padding.PKCS1v15 | padding.PSS):
            key.verify(signature, tbs, params, cert.signature_hash_algorithm)  # type: ignore[arg-type]
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
            key.verify(signature, tbs, params)
        elif isinstance(key, dsa.DSAPublicKey) and cert.signature_hash_algorithm is not None:
            key.verify(signature, tbs, cert.signature_hash_algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, tbs)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


# --- public key ------------------------------------------------------------------------------------


def _key_facts_from_spki(spki: bytes) -> KeyFacts | None:
    """Algorithm, size and curve read straight from SubjectPublicKeyInfo DER; None if unfamiliar."""
    _, start, end = _der.read_tlv(spki, 0)
    algid_tag, algid_start, algid_end = _der.read_tlv(spki, start, end)
    oid_tag, oid_start, oid_end = _der.read_tlv(spki, algid_start, algid_end)
    if algid_tag != _der.TAG_SEQUENCE or oid_tag != _der.TAG_OID:
        raise _der.DerError("malformed AlgorithmIdentifier")
    oid = spki[oid_start:oid_end]
    if oid in (_RSA, _RSA_PSS):
        bits_tag, bits_start, bits_end = _der.read_tlv(spki, algid_end, end)
        if bits_tag != _der.TAG_BIT_STRING:
            raise _der.DerError("malformed subjectPublicKey")
        _, seq_start, seq_end = _der.read_tlv(spki, bits_start + 1, bits_end)
        int_tag, n_start, n_end = _der.read_tlv(spki, seq_start, seq_end)
        while n_start < n_end and spki[n_start] == 0:
            n_start += 1
        if int_tag != _der.TAG_INTEGER or n_start == n_end:
            raise _der.DerError("malformed RSA modulus")
        return "RSA", (n_end - n_start - 1) * 8 + spki[n_start].bit_length(), None
    if oid == _EC:
        if oid_end == algid_end:
            return None
        tag, p_start, p_end = _der.read_tlv(spki, oid_end, algid_end)
        curve = _CURVES.get(spki[p_start:p_end]) if tag == _der.TAG_OID else None
        return None if curve is None else ("EC", curve[1], curve[0])
    fixed = _FIXED_SIZE_KEYS.get(oid)
    if fixed is not None:
        return fixed[0], fixed[1], None
    if oid == _DSA and oid_end < algid_end:
        tag, p_start, p_end = _der.read_tlv(spki, oid_end, algid_end)
        if tag == _der.TAG_SEQUENCE:
            int_tag, n_start, n_end = _der.read_tlv(spki, p_start, p_end)
            while n_start < n_end and spki[n_start] == 0:
                n_start += 1
            if int_tag == _der.TAG_INTEGER and n_start < n_end:
                return "DSA", (n_end - n_start - 1) * 8 + spki[n_start].bit_length(), None
    return None


def _key_facts_from_object(cert: x509.Certificate) -> KeyFacts:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return cert.public_key_algorithm_oid.dotted_string, None, None
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size, None
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.curve.key_size, key.curve.name
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256, None
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456, None
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size, None
    if isinstance(key, x25519.X25519PublicKey):
        return "X25519", 253, None
    if isinstance(key, x448.X448PublicKey):
        return "X448", 448, None
    return cert.public_key_algorithm_oid.dotted_string, None, None


# --- extensions ------------------------------------------------------------------------------------


def _general_name(gn: x509.GeneralName) -> str:
    kind = type(gn)
    if kind is x509.DNSName:
        return "DNS:" + gn.value  # type: ignore[no-any-return]
    if kind is x509.IPAddress:
        return "IP:" + str(gn.value)
    if kind is x509.RFC822Name:
        return "email:" + gn.value  # type: ignore[no-any-return]
    if kind is x509.UniformResourceIdentifier:
        return "URI:" + gn.value  # type: ignore[no-any-return]
    if isinstance(gn, x509.DirectoryName):
        return "dirName:" + gn.value.rfc4514_string()
    if isinstance(gn, x509.OtherName):
        return f"other:{gn.type_id.dotted_string}:{_other_name_value(gn.value)}"
    if isinstance(gn, x509.RegisteredID):
        return "other:registeredID:" + gn.value.dotted_string
    return "other:" + repr(gn)


def _other_name_value(value: bytes) -> str:
    """A readable form of an otherName value: the text of a string type (e.g. a UPN), else hex."""
    try:
        tag, start, end = _der.read_tlv(value, 0)
    except _der.DerError:
        return value.hex()
    if tag in (_der.TAG_UTF8_STRING, _der.TAG_IA5_STRING, _der.TAG_PRINTABLE_STRING) and end == len(value):
        try:
            return value[start:end].decode("utf-8")
        except UnicodeDecodeError:
            pass
    return value.hex()


def _uris(names: Iterable[x509.GeneralName] | None) -> list[str]:
    if not names:
        return []
    return [gn.value for gn in names if isinstance(gn, x509.UniformResourceIdentifier)]


class _Extensions(ExtensionFields):
    """Extension-derived fields, filled by one pass over cryptography's extension list."""

    __slots__ = ()

    def collect(self, cert: x509.Certificate, der: bytes, layout: _der.CertificateLayout | None) -> None:
        try:
            values: Iterable[Any] = [ext.value for ext in cert.extensions]
        except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
            # One bad extension spoils cryptography's whole list; parse them one by one instead.
            values = _isolated_extension_values(der, layout)
        seen: set[type] = set()
        for value in values:
            kind = type(value)
            handler = _HANDLERS.get(kind)
            if handler is None or kind in seen:
                continue
            seen.add(kind)
            try:  # noqa: SIM105 - try/except is cheaper than contextlib.suppress on this hot path
                handler(self, value)
            except (ValueError, TypeError, AttributeError):
                pass  # leave this extension's fields empty; the rest of the certificate is still useful

    def _san(self, value: x509.SubjectAlternativeName) -> None:
        dns = x509.DNSName
        self.sans = ["DNS:" + gn.value if type(gn) is dns else _general_name(gn) for gn in value]

    def _key_usage(self, value: x509.KeyUsage) -> None:
        names = [flag for flag in KEY_USAGE_BITS if getattr(value, flag)]
        if value.key_agreement:  # encipher/decipher_only are only defined with keyAgreement
            if value.encipher_only:
                names.append("encipher_only")
            if value.decipher_only:
                names.append("decipher_only")
        self.key_usage = tuple(names)

    def _eku(self, value: x509.ExtendedKeyUsage) -> None:
        get = _EKU_NAMES.get
        self.extended_key_usage = tuple(get(oid) or oid.dotted_string for oid in value)

    def _basic_constraints(self, value: x509.BasicConstraints) -> None:
        self.is_ca = value.ca
        self.path_length = value.path_length

    def _aki(self, value: x509.AuthorityKeyIdentifier) -> None:
        if value.key_identifier is not None:
            self.authority_key_id = value.key_identifier.hex()

    def _ski(self, value: x509.SubjectKeyIdentifier) -> None:
        self.subject_key_id = value.digest.hex()

    def _crl_dp(self, value: x509.CRLDistributionPoints) -> None:
        urls: list[str] = []
        for point in value:
            urls.extend(_uris(point.full_name))
        self.crl_distribution_points = urls

    def _aia(self, value: x509.AuthorityInformationAccess) -> None:
        ocsp: list[str] = []
        ca_issuers: list[str] = []
        for desc in value:
            loc = desc.access_location
            if isinstance(loc, x509.UniformResourceIdentifier):
                if desc.access_method == _OCSP:
                    ocsp.append(loc.value)
                elif desc.access_method == _CA_ISSUERS:
                    ca_issuers.append(loc.value)
        self.ocsp_urls = ocsp
        self.ca_issuer_urls = ca_issuers


_HANDLERS: dict[type, Callable[[_Extensions, Any], None]] = {
    x509.SubjectAlternativeName: _Extensions._san,
    x509.KeyUsage: _Extensions._key_usage,
    x509.ExtendedKeyUsage: _Extensions._eku,
    x509.BasicConstraints: _Extensions._basic_constraints,
    x509.AuthorityKeyIdentifier: _Extensions._aki,
    x509.SubjectKeyIdentifier: _Extensions._ski,
    x509.CRLDistributionPoints: _Extensions._crl_dp,
    x509.AuthorityInformationAccess: _Extensions._aia,
}


def _extension_fields(
    cert: x509.Certificate, der: bytes, layout: _der.CertificateLayout | None
) -> ExtensionFields:
    if layout is not None:
        try:
            return read_plain_extensions(der, layout.extensions)
        except (_der.DerError, IndexError):
            pass  # not plain: cryptography reads them below
    ext = _Extensions()
    ext.collect(cert, der, layout)
    return ext


def _isolated_extension_values(der: bytes, layout: _der.CertificateLayout | None) -> list[Any]:
    """Parse each extension on its own so that one malformed extension loses only itself.

    cryptography has no public way to decode a single extension, so for each one we rebuild the
    certificate with only that extension and let cryptography parse it. The signature no longer
    matches, which is fine: nothing is verified at load time. This is the slow path, taken only for
    certificates whose extension list cryptography rejects.
    """
    if layout is None or layout.extensions is None:
        return []
    try:
        ext_start, ext_end = layout.extensions
        _, seq_start, seq_end = _der.read_tlv(der, ext_start)
        _, list_start, list_end = _der.read_tlv(der, seq_start, seq_end)
        entries = _der.children(der, list_start, list_end)
    except _der.DerError:
        return []
    tbs_start, tbs_end = layout.tbs
    _, tbs_value_start, _ = _der.read_tlv(der, tbs_start)
    head = der[tbs_value_start:ext_start]
    tail = der[ext_end:tbs_end]
    after = der[layout.after_tbs[0] : layout.after_tbs[1]]
    values: list[Any] = []
    for _tag, tlv_start, _vstart, vend in entries:
        one = _der.encode_tlv(0xA3, _der.encode_tlv(_der.TAG_SEQUENCE, der[tlv_start:vend]))
        tbs = _der.encode_tlv(_der.TAG_SEQUENCE, head + one + tail)
        try:
            rebuilt = x509.load_der_x509_certificate(_der.encode_tlv(_der.TAG_SEQUENCE, tbs + after))
            values.extend(ext.value for ext in rebuilt.extensions)
        except (ValueError, x509.InvalidVersion, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
            continue
    return values
