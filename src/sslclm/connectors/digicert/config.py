"""The DigiCert gateway's settings, as an operator fills them in (the JSON schema drives the UI form)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from sslclm.spi import ConnectorConfig


class DigiCertConfig(ConnectorConfig):
    api_url: str = Field(
        default="https://www.digicert.com/services/v2",
        max_length=2000,
        description=(
            "CertCentral Services API v2 base URL (https://certcentral.digicert.eu/services/v2 in the EU)."
        ),
    )
    api_key: SecretStr = Field(description="CertCentral API key, sent in the X-DC-DEVKEY header.")
    organization_id: int = Field(ge=1, description="The validated organization certificates are ordered for.")
    product_name_id: str = Field(
        default="ssl_basic",
        pattern=r"^[a-z0-9_]{1,64}$",
        description="Product to order (e.g. ssl_basic, ssl_plus, ssl_ev_basic, private_ssl_plus).",
    )
    signature_hash: Literal["sha256", "sha384", "sha512"] = "sha256"
    server_platform_id: int = Field(default=-1, description="Server platform id; -1 is 'other'.")
    default_validity_days: int = Field(
        default=397, ge=1, le=397, description="Order validity when the request does not ask for one."
    )
    skip_approval: bool = Field(
        default=True,
        description="Ask CertCentral to skip the account's order approval step (needs a key allowed to).",
    )
    payment_method: Literal["balance", "card", "profile"] | None = Field(
        default=None, description="Payment method; empty uses the account's default."
    )
    revoke_skip_approval: bool = Field(
        default=True,
        description="Revoke at once instead of filing a revocation request for an administrator.",
    )
    ca_bundle: str | None = Field(
        default=None,
        max_length=200_000,
        description=(
            "CA certificates for the API's TLS certificate: a PEM file path or PEM text. "
            "Empty: the system trust store."
        ),
    )
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    poll_interval_seconds: float = Field(
        default=300.0, ge=0.1, le=86400, description="How soon to ask again about an order still pending."
    )
    max_rate_limit_wait_seconds: float = Field(
        default=10.0,
        ge=0,
        le=300,
        description="A rate-limited call waits up to this long (per Retry-After) and is tried again once.",
    )

    @field_validator("api_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://") or any(c.isspace() for c in value) or len(value) <= 8:
            raise ValueError("must be an https:// URL without spaces")
        return value.rstrip("/")

    @field_validator("ca_bundle")
    @classmethod
    def _pem_or_path(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if "-----BEGIN CERTIFICATE-----" in value:
            return value
        if not PurePosixPath(value).is_absolute():
            raise ValueError("must be an absolute path to a PEM file or PEM certificates")
        return value
