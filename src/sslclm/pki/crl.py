"""Reading certificate revocation lists fetched from distribution points.

Unlike :func:`sslclm.pki.ca_tools.read_crl` (which always has the issuer at hand), a CRL fetched for
the inventory may come from a CA whose certificate the inventory does not hold: the signature is then
reported as unknown rather than as bad.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from sslclm.errors import InvalidInputError


@dataclass(frozen=True, slots=True)
class CrlContent:
    issuer: str  # RFC 4514, as the inventory spells issuer names
    this_update: datetime
    next_update: datetime | None
    crl_number: int | None
    revoked: dict[str, datetime]  # serial in the inventory's lowercase hex -> revocation date
    # True: signed by one of the candidate issuer certificates; False: none of them signed it;
    # None: no candidate was given.
    signature_valid: bool | None


def _serial_hex(serial: int) -> str:
    return format(serial, "x") if serial >= 0 else "-" + format(-serial, "x")


def load_crl(data: bytes, issuer_certificates: Sequence[bytes] = ()) -> CrlContent:
    """Parses a DER or PEM CRL and checks its signature against the candidate issuers (DER).

    Raises :class:`~sslclm.errors.InvalidInputError` when ``data`` is not a CRL.
    """
    try:
        loaded = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----BEGIN")
            else x509.load_der_x509_crl(data)
        )
        issuer = loaded.issuer.rfc4514_string()
    except ValueError as exc:
        raise InvalidInputError(f"not a CRL: {str(exc)[:200]}", field="crl") from exc
    try:
        number: int | None = loaded.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (x509.ExtensionNotFound, ValueError):
        number = None
    revoked = {_serial_hex(entry.serial_number): entry.revocation_date_utc for entry in loaded}
    valid: bool | None = None
    for der in issuer_certificates:
        try:
            candidate = x509.load_der_x509_certificate(der)
        except ValueError:
            continue
        key = candidate.public_key()
        if not isinstance(
            key,
            rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey,
        ):
            continue
        valid = bool(candidate.subject == loaded.issuer and loaded.is_signature_valid(key))
        if valid:
            break
    return CrlContent(
        issuer=issuer,
        this_update=loaded.last_update_utc,
        next_update=loaded.next_update_utc,
        crl_number=number,
        revoked=revoked,
        signature_valid=valid,
    )
