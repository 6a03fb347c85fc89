"""The Entrust gateway's settings, as an operator fills them in (the JSON schema drives the UI form)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from sslclm.spi import ApiCaBundle, ConnectorConfig, HttpsBaseUrl, RateLimitWaitSeconds


class EntrustConfig(ConnectorConfig):
    api_url: HttpsBaseUrl = Field(
        default="https://api.entrust.net/enterprise/v2",
        max_length=2000,
        description="Entrust Certificate Services Enterprise API v2 base URL.",
    )
    api_user: str = Field(min_length=1, max_length=200, description="API user name (HTTP Basic).")
    api_key: SecretStr = Field(description="API key of that user (HTTP Basic password).")
    client_certificate: str = Field(
        max_length=200_000,
        description="PEM of the API client certificate registered in the ECS portal (Administration > API).",
    )
    client_key: SecretStr = Field(description="Unencrypted PEM private key of the API client certificate.")
    cert_type: str = Field(
        default="STANDARD_SSL",
        pattern=r"^[A-Z0-9_]{1,64}$",
        description="Certificate type: STANDARD_SSL, ADVANTAGE_SSL, UC_SSL, EV_SSL, PRIVATE_SSL, ...",
    )
    client_id: int = Field(
        default=1, ge=1, description="ECS client (sub-account) the certificates belong to."
    )
    default_validity_days: int = Field(
        default=365, ge=1, le=397, description="Lifetime when the request does not ask for one."
    )
    ct_log: bool = Field(default=True, description="Log certificates to Certificate Transparency.")
    requester_name: str = Field(default="SSL-CLM", min_length=1, max_length=200)
    requester_email: str = Field(
        min_length=3, max_length=200, description="Requester e-mail ECS sends notices to."
    )
    requester_phone: str = Field(default="000-000-0000", min_length=1, max_length=50)
    signing_alg: Literal["SHA-2"] = "SHA-2"
    ca_bundle: ApiCaBundle = None
    request_timeout_seconds: float = Field(default=60.0, gt=0, le=600)
    poll_interval_seconds: float = Field(
        default=300.0, ge=0.1, le=86400, description="How soon to ask again about a request still pending."
    )
    max_rate_limit_wait_seconds: RateLimitWaitSeconds = 10.0

    @field_validator("client_certificate")
    @classmethod
    def _certificate_pem(cls, value: str) -> str:
        if "-----BEGIN CERTIFICATE-----" not in value:
            raise ValueError("must be a PEM certificate")
        return value

    @field_validator("client_key")
    @classmethod
    def _key_pem(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if "PRIVATE KEY-----" not in text or "ENCRYPTED" in text:
            raise ValueError("must be an unencrypted PEM private key")
        return value
