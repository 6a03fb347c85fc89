"""All of SSL-CLM's cryptography: parsing, formats, keys, CSRs and the internal CA.

Nothing outside this package imports ``cryptography.hazmat``; connectors use only this package,
``sslclm.spi`` and ``sslclm.errors``.
"""

from __future__ import annotations

from sslclm.pki.export import certificate_to_pem, chain_to_pem, to_jks, to_pkcs12
from sslclm.pki.formats import DEFAULT_MAX_SIZE, BundleFormat, LoadedBundle, load_bundle, load_certificate
from sslclm.pki.info import CertificateInfo
from sslclm.pki.internal_ca import build_csr, create_ca, issue_server_certificate, sign_csr
from sslclm.pki.keys import (
    KEY_TYPES,
    PrivateKey,
    PublicKey,
    SigningKey,
    generate_private_key,
    load_private_key_der,
    match_private_keys,
    private_key_to_pem,
    private_key_to_pkcs8_der,
    public_key_sha256,
)
from sslclm.pki.parse import compute_fingerprint, extract_info, parse_certificate

__all__ = [
    "DEFAULT_MAX_SIZE",
    "KEY_TYPES",
    "BundleFormat",
    "CertificateInfo",
    "LoadedBundle",
    "PrivateKey",
    "PublicKey",
    "SigningKey",
    "build_csr",
    "certificate_to_pem",
    "chain_to_pem",
    "compute_fingerprint",
    "create_ca",
    "extract_info",
    "generate_private_key",
    "issue_server_certificate",
    "load_bundle",
    "load_certificate",
    "load_private_key_der",
    "match_private_keys",
    "parse_certificate",
    "private_key_to_pem",
    "private_key_to_pkcs8_der",
    "public_key_sha256",
    "sign_csr",
    "to_jks",
    "to_pkcs12",
]
