"""Read certificates and private keys from whatever file a user or a host hands us.

:func:`load_bundle` recognises the format from the content (the file name is only used in
messages): PEM (any mix of certificates, PKCS#7 and private keys, other blocks skipped), DER
certificate or private key, PKCS#7 in DER, PKCS#12/PFX, and Java JKS/JCEKS keystores. Anything
else is a :class:`~sslclm.errors.CertificateFormatError` with a one-line reason; a password that
does not open the file is a :class:`~sslclm.errors.WrongPasswordError`. Messages never contain key
material or passwords.
"""

from __future__ import annotations

import binascii
import re
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from types import ModuleType
from typing import Any, NoReturn

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.utils import CryptographyDeprecationWarning

from sslclm.errors import CertificateFormatError, InvalidInputError, WrongPasswordError
from sslclm.pki import _der
from sslclm.pki.info import CertificateInfo
from sslclm.pki.keys import PrivateKey

__all__ = ["DEFAULT_MAX_SIZE", "BundleFormat", "LoadedBundle", "load_bundle", "load_certificate"]

#: Larger inputs are refused before any parsing (a 10 MB PEM bundle already holds ~5,000 certificates).
DEFAULT_MAX_SIZE = 10 * 1024 * 1024


class BundleFormat(StrEnum):
    PEM = "PEM"
    DER = "DER"
    PKCS7 = "PKCS7"
    PKCS12 = "PKCS12"
    JKS = "JKS"
    JCEKS = "JCEKS"


@dataclass(frozen=True, slots=True)
class LoadedBundle:
    """What one file holds: its format, its distinct certificates in file order, and its private keys.

    ``ders`` holds each certificate's DER, parallel to ``certificates``; :meth:`infos` uses it so
    the DER is not re-encoded (about 10% faster than calling ``extract_info`` per certificate).
    """

    format: str
    certificates: list[x509.Certificate]
    private_keys: list[PrivateKey]
    ders: list[bytes] = field(default_factory=list, repr=False)

    def infos(self) -> list[CertificateInfo]:
        """:func:`~sslclm.pki.extract_info` of every certificate, without re-encoding their DER."""
        from sslclm.pki.parse import extract_info

        if len(self.ders) == len(self.certificates):
            return [extract_info(c, der=d) for c, d in zip(self.certificates, self.ders, strict=True)]
        return [extract_info(cert) for cert in self.certificates]


def load_bundle(
    data: bytes,
    *,
    password: str | bytes | None = None,
    filename: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
) -> LoadedBundle:
    """Every certificate and private key in ``data``, whatever its format.

    ``password`` opens PKCS#12 files, Java keystores and encrypted PEM/DER private keys. Duplicate
    certificates are returned once. A well-formed container that holds nothing (an empty keystore or
    PKCS#7) gives an empty bundle; data that is no supported format at all raises.

    Raises:
        CertificateFormatError: ``data`` is empty, larger than ``max_size``, truncated, corrupt, or
            in no supported format. The message says which, in one line.
        WrongPasswordError: ``data`` is a protected keystore or key and ``password`` is missing or
            does not open it.
    """
    return _Reader(bytes(data), password, filename).read(max_size)


def load_certificate(data: bytes) -> x509.Certificate:
    """Exactly one certificate from PEM or DER data (the first one, if a PEM holds several).

    Raises CertificateFormatError if there is none.
    """
    bundle = _Reader(bytes(data), None, None).read(DEFAULT_MAX_SIZE, keys=False)
    if not bundle.certificates:
        _fail(None, "no certificate found (the data holds only private keys)")
    return bundle.certificates[0]


# --- internals -------------------------------------------------------------------------------------

_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9][A-Z0-9 #/._-]*)-----")
_CERT_LABELS = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"})
_PKCS7_LABELS = frozenset({b"PKCS7", b"PKCS #7 SIGNED DATA", b"CMS"})
_KEY_LABELS = frozenset(
    {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"DSA PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"}
)
_B64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]+")
_JKS_MAGIC = b"\xfe\xed\xfe\xed"
_JCEKS_MAGIC = b"\xce\xce\xce\xce"
_OID_PKCS7_DATA = _der.encode_oid("1.2.840.113549.1.7.1")
_OID_PKCS7_SIGNED = _der.encode_oid("1.2.840.113549.1.7.2")
_MAX_DETAIL = 160


def _fail(
    filename: str | None, message: str, error: type[InvalidInputError] = CertificateFormatError
) -> NoReturn:
    data: dict[str, Any] = {"filename": filename} if filename else {}
    raise error(f"{filename}: {message}" if filename else message, field="file", **data)


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _size(n: int) -> str:
    return f"{n / 1048576:.1f} MB" if n >= 1048576 else f"{n} bytes"


class _Reader:
    """One load: the data, its password and file name, and what has been found so far."""

    def __init__(self, data: bytes, password: str | bytes | None, filename: str | None) -> None:
        self.data = data
        self.password = password
        self.filename = filename
        self.certificates: list[x509.Certificate] = []
        self.ders: list[bytes] = []
        self.keys: list[PrivateKey] = []
        self._seen: set[bytes] = set()

    # -- driver --

    def read(self, max_size: int, *, keys: bool = True) -> LoadedBundle:
        data = self.data
        if len(data) > max_size:
            self.fail(f"file too large: {_size(len(data))} exceeds the {_size(max_size)} limit")
        if not data.strip():
            self.fail("empty file" if not data else "empty file (only whitespace)")
        with warnings.catch_warnings():
            # cryptography warns about things real certificates do (e.g. a non-positive serial);
            # they are still worth inventorying. Once per file, this filter is cheap.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            fmt = self._read_any(data, keys=keys, depth=0)
        return LoadedBundle(str(fmt), self.certificates, self.keys, self.ders)

    def _read_any(self, data: bytes, *, keys: bool, depth: int) -> BundleFormat:
        head = data[:4]
        if head == _JKS_MAGIC:
            return self._read_java_keystore(data, BundleFormat.JKS)
        if head == _JCEKS_MAGIC:
            return self._read_java_keystore(data, BundleFormat.JCEKS)
        if head[:2] in (b"\xff\xfe", b"\xfe\xff") and depth == 0:  # PEM saved as UTF-16 (Windows)
            try:
                text = data.decode("utf-16").encode("ascii")
            except (UnicodeDecodeError, UnicodeEncodeError):
                text = b""
            if text:
                return self._read_any(text, keys=keys, depth=depth + 1)
        if data[:1] == b"\x30":
            length = _der.declared_length(data)
            if length is not None and length <= len(data) and not data[length:].strip(b"\r\n\t \x00"):
                return self._read_der(data[:length], keys=keys)
            if length is not None and length > len(data) and b"-----BEGIN " not in data:
                self.fail(f"truncated DER: the header declares {length} bytes but the file has {len(data)}")
        if b"-----BEGIN " in data or b"-----END " in data:
            return self._read_pem(data, keys=keys)
        if depth == 0 and _looks_like_text(data):
            compact = b"".join(data.split())
            if _B64_TEXT.fullmatch(compact) and len(compact) % 4 == 0:
                try:
                    raw = binascii.a2b_base64(compact, strict_mode=True)
                except binascii.Error:
                    raw = b""
                if raw[:1] == b"\x30" or raw[:4] in (_JKS_MAGIC, _JCEKS_MAGIC):
                    return self._read_any(raw, keys=keys, depth=depth + 1)
            self.fail("not a certificate: text without any -----BEGIN ...----- PEM block")
        self.fail("not a certificate: unrecognised binary data (DER/PKCS#7/PKCS#12/JKS all failed)")

    def fail(self, message: str, error: type[InvalidInputError] = CertificateFormatError) -> NoReturn:
        _fail(self.filename, message, error)

    def add_certificate(self, der: bytes, what: str) -> None:
        try:
            cert = x509.load_der_x509_certificate(der)
        except (ValueError, x509.InvalidVersion) as exc:
            self.fail(f"{what} is not a valid certificate: {_detail(exc)}")
        self.add_loaded(cert, der)

    def add_loaded(self, cert: x509.Certificate, der: bytes | None = None) -> None:
        if der is None:
            der = cert.public_bytes(serialization.Encoding.DER)
        if der not in self._seen:
            self._seen.add(der)
            self.certificates.append(cert)
            self.ders.append(der)

    def secret(self) -> bytes | None:
        if self.password is None:
            return None
        return self.password.encode("utf-8") if isinstance(self.password, str) else self.password

    # -- PEM --

    def _read_pem(self, data: bytes, *, keys: bool) -> BundleFormat:
        labels: list[str] = []
        found_pkcs7 = found_other = False  # other: certificate or key blocks
        pos = 0
        index = 0
        while True:
            begin = data.find(b"-----BEGIN ", pos)
            stray_end = data.find(b"-----END ", pos, begin if begin >= 0 else len(data))
            if stray_end >= 0:
                stray = data[stray_end + 9 : stray_end + 60].split(b"-----")[0]
                self.fail(f"truncated PEM: END {stray.decode('ascii', 'replace')} without BEGIN")
            if begin < 0:
                break
            match = _PEM_BEGIN.match(data, begin)
            if match is None:
                self.fail("truncated PEM: malformed or incomplete -----BEGIN line")
            label = match.group(1)
            name = label.decode("ascii")
            end_marker = b"-----END " + label + b"-----"
            end = data.find(end_marker, match.end())
            next_begin = data.find(b"-----BEGIN ", match.end(), end if end >= 0 else len(data))
            if end < 0 or next_begin >= 0:
                self.fail(f"truncated PEM: BEGIN {name} without END")
            index += 1
            labels.append(name)
            block_end = end + len(end_marker)
            what = f"PEM block #{index} ({name})"
            if label in _CERT_LABELS:
                der = self._pem_body(data, match.end(), end, what)
                if label == b"TRUSTED CERTIFICATE":  # OpenSSL: certificate followed by trust settings
                    der = der[: _der.declared_length(der) or len(der)]
                self.add_certificate(der, what)
                found_other = True
            elif label in _PKCS7_LABELS:
                found_pkcs7 = True
                self._read_pkcs7(self._pem_body(data, match.end(), end, what), what)
            elif label in _KEY_LABELS:
                if keys:
                    self._read_pem_key(data[begin:block_end], label, what)
                found_other = True
            pos = block_end
        if not self.certificates and not self.keys and not found_pkcs7:
            skipped = ", ".join(dict.fromkeys(labels))
            self.fail(f"no certificate or private key in the PEM data (found only: {skipped})")
        return BundleFormat.PKCS7 if found_pkcs7 and not found_other else BundleFormat.PEM

    def _pem_body(self, data: bytes, start: int, end: int, what: str) -> bytes:
        body = data[start:end]
        if b":" in body:  # RFC 1421 headers (rare outside encrypted keys): skip those lines
            body = b"\n".join(line for line in body.splitlines() if b":" not in line)
        try:
            return binascii.a2b_base64(b"".join(body.split()), strict_mode=True)
        except binascii.Error:
            self.fail(f"broken PEM: {what} is not valid base64")

    def _read_pem_key(self, block: bytes, label: bytes, what: str) -> None:
        encrypted = label == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in block[:200]
        secret = self.secret() if encrypted else None
        if encrypted and secret is None:
            self.fail(f"{what} is encrypted: a password is required", WrongPasswordError)
        try:
            self.keys.append(serialization.load_pem_private_key(block, secret))
        except UnsupportedAlgorithm:
            self.fail(f"{what} uses an unsupported key algorithm")
        except (ValueError, TypeError):
            if encrypted:
                self.fail(f"wrong password for the encrypted {what}", WrongPasswordError)
            self.fail(f"{what} is not a valid private key")

    # -- DER family --

    def _read_der(self, data: bytes, *, keys: bool) -> BundleFormat:
        try:
            first_tag, first_start, first_end = _der.read_tlv(data, _der.read_tlv(data, 0)[1])
        except _der.DerError:
            self.fail("not a certificate: unrecognised binary data (DER/PKCS#7/PKCS#12/JKS all failed)")
        if first_tag == _der.TAG_OID:
            if data[first_start:first_end] != _OID_PKCS7_SIGNED:
                self.fail("unsupported PKCS#7: only signedData (a .p7b/.p7c certificate bundle) is read")
            self._read_pkcs7(data, "PKCS#7 data")
            return BundleFormat.PKCS7
        if (
            first_tag == _der.TAG_INTEGER
            and data[first_start:first_end] == b"\x03"
            and _is_pfx(data, first_end)
        ):
            return self._read_pkcs12(data)
        if first_tag == _der.TAG_SEQUENCE:
            try:
                cert = x509.load_der_x509_certificate(data)
            except (ValueError, x509.InvalidVersion) as exc:
                if keys and self._try_der_key(data):
                    return BundleFormat.DER
                self.fail(f"DER data is not a valid certificate: {_detail(exc)}")
            self.add_loaded(cert, data)
            return BundleFormat.DER
        if first_tag == _der.TAG_INTEGER and keys and self._try_der_key(data):
            return BundleFormat.DER
        self.fail("not a certificate: unrecognised binary data (DER/PKCS#7/PKCS#12/JKS all failed)")

    def _try_der_key(self, data: bytes) -> bool:
        """A DER private key (PKCS#8, PKCS#1, SEC1; encrypted PKCS#8 with the password)."""
        try:
            key = serialization.load_der_private_key(data, None)
        except TypeError:  # encrypted PKCS#8
            secret = self.secret()
            if secret is None:
                self.fail("the DER private key is encrypted: a password is required", WrongPasswordError)
            try:
                key = serialization.load_der_private_key(data, secret)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                self.fail("wrong password for the encrypted DER private key", WrongPasswordError)
        except (ValueError, UnsupportedAlgorithm):
            return False
        self.keys.append(key)
        return True

    def _read_pkcs7(self, der: bytes, what: str) -> None:
        try:
            with warnings.catch_warnings():
                # BER-encoded bundles (some Windows exports) parse after a warning; accept them quietly.
                warnings.filterwarnings("ignore", message="PKCS#7 certificates could not be parsed as DER")
                certs = pkcs7.load_der_pkcs7_certificates(der)
        except (ValueError, x509.InvalidVersion) as exc:
            self.fail(f"{what} is not a valid PKCS#7 certificate bundle: {_detail(exc)}")
        for cert in certs:
            self.add_loaded(cert)

    def _read_pkcs12(self, data: bytes) -> BundleFormat:
        secret = self.secret()
        # Files exported "without a password" use either no password or an empty one.
        attempts = [secret, None, b""] if secret else [None, b""]
        loaded = None
        for attempt in attempts:
            try:
                loaded = pkcs12.load_pkcs12(data, attempt)
                break
            except ValueError as exc:
                if "Invalid password" not in str(exc):
                    self.fail(f"corrupt PKCS#12 file: {_detail(exc)}")
            except UnsupportedAlgorithm as exc:
                self.fail(f"PKCS#12 file uses an unsupported algorithm: {_detail(exc)}")
        if loaded is None:
            if secret is None:
                self.fail(
                    "the PKCS#12 file is password-protected: a password is required", WrongPasswordError
                )
            self.fail("wrong password for the PKCS#12 file", WrongPasswordError)
        if loaded.cert is not None:
            self.add_loaded(loaded.cert.certificate)
        for extra in loaded.additional_certs:
            self.add_loaded(extra.certificate)
        if loaded.key is not None:
            self.keys.append(loaded.key)
        return BundleFormat.PKCS12

    # -- Java keystores --

    def _read_java_keystore(self, data: bytes, fmt: BundleFormat) -> BundleFormat:
        jks = import_pyjks()
        kind = fmt.value
        if self.password is None:
            self.fail(
                f"the {kind} keystore is password-protected: a password is required", WrongPasswordError
            )
        try:
            password = self.password if isinstance(self.password, str) else self.password.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"wrong password for the {kind} keystore", WrongPasswordError)
        try:
            store = jks.KeyStore.loads(data, password, try_decrypt_keys=False)
        except jks.util.KeystoreSignatureException:
            self.fail(f"wrong password for the {kind} keystore", WrongPasswordError)
        except (jks.util.KeystoreException, ValueError, IndexError, UnicodeDecodeError) as exc:
            self.fail(f"corrupt {kind} keystore: {_detail(exc)}")
        for alias, entry in store.entries.items():
            if isinstance(entry, jks.PrivateKeyEntry):
                self._read_java_key_entry(jks, alias, entry, password, kind)
            elif isinstance(entry, jks.TrustedCertEntry):
                self.add_certificate(bytes(entry.cert), f"trusted certificate entry '{alias}'")
            # Secret (symmetric) key entries hold no certificate: skipped.
        return fmt

    def _read_java_key_entry(self, jks: ModuleType, alias: str, entry: Any, password: str, kind: str) -> None:
        try:
            entry.decrypt(password)
        except Exception:  # any failure here means the entry has its own password
            # The store's integrity check already passed with this password, so the data is intact.
            self.fail(
                f"private key entry '{alias}' of the {kind} keystore has its own password, "
                "different from the store password",
                WrongPasswordError,
            )
        try:
            key = serialization.load_der_private_key(bytes(entry.pkey_pkcs8), None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            self.fail(f"private key entry '{alias}' of the {kind} keystore holds an unsupported key")
        for number, (_type, der) in enumerate(entry.cert_chain, start=1):
            self.add_certificate(bytes(der), f"certificate #{number} of key entry '{alias}'")
        self.keys.append(key)


def _is_pfx(data: bytes, pos: int) -> bool:
    """PFX ::= SEQUENCE { version INTEGER (3), authSafe ContentInfo (data or signedData), ... }."""
    try:
        tag, start, end = _der.read_tlv(data, pos)
        if tag != _der.TAG_SEQUENCE:
            return False
        oid_tag, oid_start, oid_end = _der.read_tlv(data, start, end)
    except _der.DerError:
        return False
    return oid_tag == _der.TAG_OID and data[oid_start:oid_end] in (_OID_PKCS7_DATA, _OID_PKCS7_SIGNED)


def _looks_like_text(data: bytes) -> bool:
    sample = data[:4096]
    return not sample.translate(None, b"\t\n\r\x0c" + bytes(range(0x20, 0x7F)))


def import_pyjks() -> ModuleType:
    """The ``jks`` module (pyjks), imported on first use so that plain PEM users never load it."""
    with warnings.catch_warnings():
        # pyjks and its dependencies (pyasn1, javaobj) may warn about deprecated APIs on import.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        import jks
    module: ModuleType = jks
    return module
