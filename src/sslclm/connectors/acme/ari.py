"""ACME Renewal Information (RFC 9773): the certificate identifier and the server's answer."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from sslclm.errors import CertificateFormatError, ConnectorError, InvalidInputError
from sslclm.pki import extract_info, load_certificate
from sslclm.spi import RenewalInfoResult

# RFC 9773 4.3.3: ask again after six hours when the server does not say.
DEFAULT_RETRY = timedelta(hours=6)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def serial_der_bytes(serial: int) -> bytes:
    """The content octets of the DER INTEGER encoding of a (non-negative) serial number."""
    length = serial.bit_length() // 8 + 1  # room for the sign bit, as DER requires
    return serial.to_bytes(length, "big", signed=True)


def cert_id(certificate_pem: bytes) -> str:
    """``base64url(AKI keyIdentifier) "." base64url(serial DER content)``, without padding (RFC 9773 4.1).

    Raises ``InvalidInputError`` (field ``certificate_pem``) when the certificate does not parse or
    has no authority key identifier to name its issuer by.
    """
    try:
        certificate = load_certificate(certificate_pem)
    except CertificateFormatError as exc:
        raise InvalidInputError(exc.message, field="certificate_pem") from None
    info = extract_info(certificate)
    if not info.authority_key_id:
        raise InvalidInputError(
            "the certificate has no authority key identifier, which renewal information needs",
            field="certificate_pem",
        )
    key_identifier = _b64url(bytes.fromhex(info.authority_key_id))
    return f"{key_identifier}.{_b64url(serial_der_bytes(certificate.serial_number))}"


def _timestamp(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{field} is missing")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{field} has no time zone")
    return parsed


def retry_after(header: str | None, now: datetime) -> timedelta:
    """The Retry-After header (seconds or an HTTP date) as a delay; the RFC default when absent."""
    if not header:
        return DEFAULT_RETRY
    header = header.strip()
    if header.isdigit():
        return timedelta(seconds=int(header))
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return DEFAULT_RETRY
    return max(timedelta(0), when - now)


def parse_renewal_info(body: Any, *, retry_header: str | None, now: datetime, url: str) -> RenewalInfoResult:
    """The suggested window of a renewalInfo response; a malformed one is a non-retryable error."""
    try:
        if not isinstance(body, dict) or not isinstance(body.get("suggestedWindow"), dict):
            raise ValueError("suggestedWindow is missing")
        window = body["suggestedWindow"]
        explanation = body.get("explanationURL")
        return RenewalInfoResult(
            window_start=_timestamp(window.get("start"), "suggestedWindow.start"),
            window_end=_timestamp(window.get("end"), "suggestedWindow.end"),
            explanation_url=explanation if isinstance(explanation, str) else None,
            retry_after=retry_after(retry_header, now),
        )
    except (ValueError, InvalidInputError) as exc:
        message = exc.message if isinstance(exc, InvalidInputError) else str(exc)
        raise ConnectorError(
            f"the renewal information at {url} is malformed: {message}", retryable=False
        ) from None
