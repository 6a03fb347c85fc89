from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from pathlib import Path

import jks
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from sslclm.errors import CertificateFormatError, InvalidInputError, WrongPasswordError
from sslclm.pki import (
    LoadedBundle,
    extract_info,
    load_bundle,
    load_certificate,
    match_private_keys,
    parse_certificate,
    public_key_sha256,
)

from .conftest import Issued, build_jceks, cn, issue, new_key

Write = Callable[[str, bytes], Path]
PASSWORD = "Sup3r-secret!"


def load_file(path: Path, password: str | bytes | None = None) -> LoadedBundle:
    return load_bundle(path.read_bytes(), password=password, filename=path.name)


def ders(bundle: LoadedBundle) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in bundle.certificates]


def error_of(path: Path, password: str | None = None) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as caught:
        load_file(path, password)
    return caught.value


# --- PEM -------------------------------------------------------------------------------------------


def test_pem_bundle_with_chain_and_pkcs8_key(write: Write, leaf: Issued, root: Issued) -> None:
    path = write("chain.pem", b"subject=leaf\n" + leaf.pem + root.pem + leaf.key_pem())
    bundle = load_file(path)
    assert bundle.format == "PEM"
    assert ders(bundle) == [leaf.der, root.der]
    assert bundle.ders == [leaf.der, root.der]
    assert len(bundle.private_keys) == 1
    assert match_private_keys(bundle.certificates, bundle.private_keys) == {0: bundle.private_keys[0]}
    assert [i.fingerprint_sha256 for i in bundle.infos()] == [
        i.fingerprint_sha256 for i in (load_bundle(leaf.pem).infos()[0], load_bundle(root.pem).infos()[0])
    ]


@pytest.mark.parametrize(
    ("kind", "fmt"),
    # "traditional" is PKCS#1 for RSA and SEC1 for EC; Ed25519 keys exist only as PKCS#8.
    [("rsa", "pkcs8"), ("rsa", "traditional"), ("ec", "pkcs8"), ("ec", "traditional"), ("ed25519", "pkcs8")],
)
def test_pem_private_key_formats(write: Write, kind: str, fmt: str) -> None:
    issued = issue(cn(f"{kind}.example"), key=new_key(kind))
    bundle = load_file(write("key.pem", issued.key_pem(fmt) + issued.pem))
    assert public_key_sha256(bundle.private_keys[0]) == public_key_sha256(issued.key)
    assert match_private_keys(bundle.certificates, bundle.private_keys) == {0: bundle.private_keys[0]}


@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
def test_encrypted_pem_key_needs_the_password(write: Write, leaf: Issued, fmt: str) -> None:
    path = write("enc.pem", leaf.pem + leaf.key_pem(fmt, password=PASSWORD.encode()))
    bundle = load_file(path, PASSWORD)
    assert public_key_sha256(bundle.private_keys[0]) == public_key_sha256(leaf.key)
    assert load_file(path, PASSWORD.encode()).private_keys  # bytes work as well

    missing = error_of(path)
    assert isinstance(missing, WrongPasswordError)
    assert (
        str(missing)
        == "enc.pem: PEM block #2 ("
        + ("ENCRYPTED PRIVATE KEY" if fmt == "pkcs8" else "EC PRIVATE KEY")
        + ") is encrypted: a password is required"
    )
    wrong = error_of(path, "not-it")
    assert isinstance(wrong, WrongPasswordError)
    assert "wrong password" in str(wrong) and "enc.pem" in str(wrong)
    assert "not-it" not in str(wrong)


def test_unrelated_pem_blocks_are_skipped(write: Write, leaf: Issued) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(cn("csr.example"))
        .sign(leaf.key, hashes.SHA256())
    )
    public = leaf.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    data = csr.public_bytes(serialization.Encoding.PEM) + public + params + leaf.pem
    bundle = load_file(write("mixed.pem", data))
    assert ders(bundle) == [leaf.der]
    assert bundle.private_keys == []


def test_pem_with_only_unrelated_blocks_is_rejected(write: Write, leaf: Issued) -> None:
    public = leaf.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    err = error_of(write("pub.pem", public))
    assert type(err) is CertificateFormatError
    assert str(err) == "pub.pem: no certificate or private key in the PEM data (found only: PUBLIC KEY)"


def test_duplicate_certificates_are_returned_once(write: Write, leaf: Issued, root: Issued) -> None:
    bundle = load_file(write("dup.pem", leaf.pem + root.pem + leaf.pem))
    assert ders(bundle) == [leaf.der, root.der]


def test_crlf_and_trusted_certificate_pem(write: Write, leaf: Issued) -> None:
    crlf = leaf.pem.replace(b"\n", b"\r\n")
    assert ders(load_file(write("crlf.pem", crlf))) == [leaf.der]
    # OpenSSL's "TRUSTED CERTIFICATE": the certificate followed by trust settings.
    aux = b"\x30\x0c\x30\x0a\x06\x08\x2b\x06\x01\x05\x05\x07\x03\x01"
    body = base64.encodebytes(leaf.der + aux)
    trusted = b"-----BEGIN TRUSTED CERTIFICATE-----\n" + body + b"-----END TRUSTED CERTIFICATE-----\n"
    assert ders(load_file(write("trusted.pem", trusted))) == [leaf.der]


def test_utf16_pem_and_headerless_base64(write: Write, leaf: Issued) -> None:
    utf16 = b"\xff\xfe" + leaf.pem.decode().encode("utf-16-le")
    assert ders(load_file(write("win.pem", utf16))) == [leaf.der]
    bare = base64.encodebytes(leaf.der)
    bundle = load_file(write("bare.b64", bare))
    assert (bundle.format, ders(bundle)) == ("DER", [leaf.der])


def test_load_key_only_pem(write: Write, leaf: Issued) -> None:
    bundle = load_file(write("key.pem", leaf.key_pem()))
    assert bundle.certificates == [] and len(bundle.private_keys) == 1


# --- DER and PKCS#7 --------------------------------------------------------------------------------


def test_der_certificate(write: Write, leaf: Issued) -> None:
    bundle = load_file(write("leaf.cer", leaf.der))
    assert (bundle.format, ders(bundle), bundle.private_keys) == ("DER", [leaf.der], [])


def test_der_certificate_with_a_trailing_newline(write: Write, leaf: Issued) -> None:
    assert ders(load_file(write("leaf.der", leaf.der + b"\n"))) == [leaf.der]


def test_der_private_keys(write: Write, leaf: Issued) -> None:
    bundle = load_file(write("key.der", leaf.pkcs8_der))
    assert bundle.format == "DER" and len(bundle.private_keys) == 1
    encrypted = leaf.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSWORD.encode()),
    )
    path = write("key-enc.der", encrypted)
    assert public_key_sha256(load_file(path, PASSWORD).private_keys[0]) == public_key_sha256(leaf.key)
    assert isinstance(error_of(path), WrongPasswordError)
    assert isinstance(error_of(path, "nope"), WrongPasswordError)


@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.DER])
def test_pkcs7_bundle(write: Write, leaf: Issued, root: Issued, encoding: serialization.Encoding) -> None:
    data = pkcs7.serialize_certificates([leaf.cert, root.cert], encoding)
    bundle = load_file(write("chain.p7b", data))
    assert bundle.format == "PKCS7"
    assert sorted(ders(bundle)) == sorted([leaf.der, root.der])


def test_pem_file_mixing_pkcs7_and_certificates_is_pem(write: Write, leaf: Issued, root: Issued) -> None:
    data = pkcs7.serialize_certificates([root.cert], serialization.Encoding.PEM) + leaf.pem
    bundle = load_file(write("mix.pem", data))
    assert bundle.format == "PEM" and sorted(ders(bundle)) == sorted([leaf.der, root.der])


# --- PKCS#12 ---------------------------------------------------------------------------------------


def _pfx(leaf: Issued, root: Issued, password: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    assert isinstance(leaf.key, ec.EllipticCurvePrivateKey)
    return pkcs12.serialize_key_and_certificates(b"server", leaf.key, leaf.cert, [root.cert], encryption)


def test_pkcs12_with_password(write: Write, leaf: Issued, root: Issued) -> None:
    path = write("server.pfx", _pfx(leaf, root, PASSWORD.encode()))
    bundle = load_file(path, PASSWORD)
    assert bundle.format == "PKCS12"
    assert ders(bundle) == [leaf.der, root.der]
    assert match_private_keys(bundle.certificates, bundle.private_keys) == {0: bundle.private_keys[0]}


def test_pkcs12_without_password(write: Write, leaf: Issued, root: Issued) -> None:
    path = write("open.p12", _pfx(leaf, root, None))
    assert ders(load_file(path)) == [leaf.der, root.der]
    # A password given for an unprotected file does no harm.
    assert ders(load_file(path, "whatever")) == [leaf.der, root.der]


def test_pkcs12_wrong_or_missing_password(write: Write, leaf: Issued, root: Issued) -> None:
    path = write("server.pfx", _pfx(leaf, root, PASSWORD.encode()))
    wrong = error_of(path, "wrong-password")
    assert isinstance(wrong, WrongPasswordError)
    assert str(wrong) == "server.pfx: wrong password for the PKCS#12 file"
    assert wrong.data == {"filename": "server.pfx"}
    missing = error_of(path)
    assert isinstance(missing, WrongPasswordError)
    assert str(missing) == "server.pfx: the PKCS#12 file is password-protected: a password is required"


def test_pkcs12_with_only_certificates(write: Write, leaf: Issued, root: Issued) -> None:
    data = pkcs12.serialize_key_and_certificates(
        None, None, None, [leaf.cert, root.cert], serialization.BestAvailableEncryption(b"pw")
    )
    bundle = load_file(write("certs.p12", data), "pw")
    assert ders(bundle) == [leaf.der, root.der] and bundle.private_keys == []


# --- Java keystores --------------------------------------------------------------------------------


def _jks(leaf: Issued, root: Issued, password: str) -> bytes:
    entries = [
        jks.PrivateKeyEntry.new("server", [leaf.der, root.der], leaf.pkcs8_der, "pkcs8"),
        jks.TrustedCertEntry.new("root", root.der),
        jks.TrustedCertEntry.new("other", issue(cn("Other Root")).der),
    ]
    data: bytes = jks.KeyStore.new("jks", entries).saves(password)
    return data


def test_jks_with_key_entry_and_trusted_certificates(write: Write, leaf: Issued, root: Issued) -> None:
    bundle = load_file(write("keystore.jks", _jks(leaf, root, PASSWORD)), PASSWORD)
    assert bundle.format == "JKS"
    assert ders(bundle)[:2] == [leaf.der, root.der] and len(bundle.certificates) == 3
    assert match_private_keys(bundle.certificates, bundle.private_keys) == {0: bundle.private_keys[0]}


def test_jks_wrong_and_missing_password(write: Write, leaf: Issued, root: Issued) -> None:
    path = write("keystore.jks", _jks(leaf, root, PASSWORD))
    wrong = error_of(path, "changeit")
    assert isinstance(wrong, WrongPasswordError)
    assert str(wrong) == "keystore.jks: wrong password for the JKS keystore"
    assert isinstance(error_of(path), WrongPasswordError)


def test_jks_truncated_is_a_format_error(write: Write, leaf: Issued, root: Issued) -> None:
    data = _jks(leaf, root, PASSWORD)
    err = error_of(write("cut.jks", data[: len(data) // 2]), PASSWORD)
    assert type(err) is CertificateFormatError
    assert str(err).startswith("cut.jks: corrupt JKS keystore")


def test_jceks_with_key_entry_and_trusted_certificates(write: Write, leaf: Issued, root: Issued) -> None:
    data = build_jceks(
        PASSWORD, key_entries=[("server", leaf.pkcs8_der, [leaf.der, root.der])], trusted=[("root", root.der)]
    )
    bundle = load_file(write("keystore.jceks", data), PASSWORD)
    assert bundle.format == "JCEKS"
    assert ders(bundle) == [leaf.der, root.der]
    assert public_key_sha256(bundle.private_keys[0]) == public_key_sha256(leaf.key)
    wrong = error_of(write("keystore.jceks", data), "bad")
    assert isinstance(wrong, WrongPasswordError) and "JCEKS" in str(wrong)


def test_jceks_key_with_its_own_password(write: Write, leaf: Issued) -> None:
    data = build_jceks(PASSWORD, key_entries=[("server", leaf.pkcs8_der, [leaf.der])], key_password="other")
    err = error_of(write("two.jceks", data), PASSWORD)
    assert isinstance(err, WrongPasswordError)
    assert "'server'" in str(err) and "own password" in str(err)


# --- rejections ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b" \n\t\n", "empty file (only whitespace)"),
        (
            b"hello, this is not a certificate\n",
            "not a certificate: text without any -----BEGIN ...----- PEM block",
        ),
        (
            bytes(range(256)) * 4,
            "not a certificate: unrecognised binary data (DER/PKCS#7/PKCS#12/JKS all failed)",
        ),
        (b"-----BEGIN CERTIFICATE-----\nMIIB\n", "truncated PEM: BEGIN CERTIFICATE without END"),
        (b"-----BEGIN CERTIF", "truncated PEM: malformed or incomplete -----BEGIN line"),
        (b"AAAA\n-----END CERTIFICATE-----\n", "truncated PEM: END CERTIFICATE without BEGIN"),
        (
            b"-----BEGIN CERTIFICATE-----\nMII*notbase64*\n-----END CERTIFICATE-----\n",
            "broken PEM: PEM block #1 (CERTIFICATE) is not valid base64",
        ),
        (b"\x30\x82\x04\x00\x30\x82", "truncated DER: the header declares 1028 bytes but the file has 6"),
    ],
    ids=["empty", "whitespace", "text", "binary", "no-end", "cut-begin", "no-begin", "base64", "short-der"],
)
def test_unreadable_input_is_rejected_with_a_clear_message(
    write: Write, content: bytes, message: str
) -> None:
    err = error_of(write("input.crt", content))
    assert type(err) is CertificateFormatError
    assert str(err) == f"input.crt: {message}"
    assert "\n" not in str(err)


def test_truncated_pem_chain(write: Write, leaf: Issued, root: Issued) -> None:
    data = leaf.pem + root.pem
    err = error_of(write("chain.pem", data[: len(data) - 40]))
    assert str(err) == "chain.pem: truncated PEM: BEGIN CERTIFICATE without END"


def test_pem_block_that_is_not_a_certificate(write: Write) -> None:
    body = base64.encodebytes(b"\x30\x03\x02\x01\x05")
    err = error_of(write("bad.pem", b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"))
    assert str(err).startswith("bad.pem: PEM block #1 (CERTIFICATE) is not a valid certificate: ")


def test_corrupt_private_key_block(write: Write, leaf: Issued) -> None:
    bad = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    err = error_of(write("bad-key.pem", leaf.pem + bad))
    assert str(err) == "bad-key.pem: PEM block #2 (PRIVATE KEY) is not a valid private key"


def test_random_50_mb_is_refused_quickly(write: Write) -> None:
    path = write("random.bin", os.urandom(50 * 1024 * 1024))
    data = path.read_bytes()
    started = time.perf_counter()
    with pytest.raises(CertificateFormatError) as caught:
        load_bundle(data, filename="random.bin")
    assert time.perf_counter() - started < 1.0
    assert str(caught.value) == "random.bin: file too large: 50.0 MB exceeds the 10.0 MB limit"


def test_random_data_under_the_limit_is_rejected_quickly(write: Write) -> None:
    data = write("random.bin", b"\x01" + os.urandom(9 * 1024 * 1024)).read_bytes()
    started = time.perf_counter()
    with pytest.raises(CertificateFormatError, match="unrecognised binary data"):
        load_bundle(data)
    assert time.perf_counter() - started < 1.0


def test_size_limit_is_configurable(leaf: Issued) -> None:
    with pytest.raises(CertificateFormatError, match="file too large"):
        load_bundle(leaf.pem, max_size=100)
    assert load_bundle(leaf.pem, max_size=len(leaf.pem)).certificates


def test_messages_without_file_name(leaf: Issued) -> None:
    with pytest.raises(CertificateFormatError) as caught:
        load_bundle(b"")
    assert str(caught.value) == "empty file"
    assert caught.value.data == {}


# --- load_certificate ------------------------------------------------------------------------------


def test_load_certificate_pem_and_der(leaf: Issued, root: Issued) -> None:
    assert load_certificate(leaf.pem) == leaf.cert
    assert load_certificate(leaf.der) == leaf.cert
    assert load_certificate(leaf.pem + root.pem) == leaf.cert
    assert load_certificate(leaf.key_pem() + leaf.pem) == leaf.cert


@pytest.mark.parametrize("data", [b"", b"junk", b"-----BEGIN CERTIFICATE-----\n"])
def test_load_certificate_rejects_non_certificates(data: bytes) -> None:
    with pytest.raises(CertificateFormatError):
        load_certificate(data)


def test_load_certificate_rejects_a_key(leaf: Issued) -> None:
    with pytest.raises(CertificateFormatError):
        load_certificate(leaf.key_pem())


def test_negative_serial_certificate_loads_without_warnings(write: Write) -> None:
    issued = issue(cn("old.example"), serial=0x7F)
    der = issued.der
    header = b"\xa0\x03\x02\x01\x02\x02\x01\x7f"  # version v3, then serial 127
    assert header in der
    negative = der.replace(header, header[:-1] + b"\x80", 1)  # serial -128, as some old CAs issued
    bundle = load_file(write("old.cer", negative))  # the suite runs with warnings as errors
    infos = [*bundle.infos(), extract_info(bundle.certificates[0]), parse_certificate(negative)]
    assert [i.serial for i in infos] == ["-80"] * 3
    assert infos[0].common_name == "old.example"
