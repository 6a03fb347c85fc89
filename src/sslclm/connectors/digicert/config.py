"""The DigiCert gateway's settings, as an operator fills them in (the JSON schema drives the UI form)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from sslclm.spi import ApiCaBundle, ConnectorConfig, HttpsBaseUrl, RateLimitWaitSeconds


class DigiCertConfig(ConnectorConfig):
    api_url: HttpsBaseUrl = Field(
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
    ca_bundle: ApiCaBundle = None
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    poll_interval_seconds: float = Field(
        default=300.0, ge=0.1, le=86400, description="How soon to ask again about an order still pending."
    )
    max_rate_limit_wait_seconds: RateLimitWaitSeconds = 10.0
