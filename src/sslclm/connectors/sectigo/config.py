"""The Sectigo gateway's settings, as an operator fills them in (the JSON schema drives the UI form)."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from sslclm.spi import ApiCaBundle, ConnectorConfig, HttpsBaseUrl, RateLimitWaitSeconds


class SectigoConfig(ConnectorConfig):
    api_url: HttpsBaseUrl = Field(
        default="https://cert-manager.com/api",
        max_length=2000,
        description="Sectigo Certificate Manager REST API base URL (ending in /api).",
    )
    customer_uri: str = Field(
        min_length=1,
        max_length=200,
        description="The customer URI of the SCM login page (https://cert-manager.com/customer/<uri>).",
    )
    login: str = Field(min_length=1, max_length=200, description="Login of an API administrator.")
    password: SecretStr = Field(description="Password of that administrator.")
    org_id: int = Field(ge=1, description="Organization (or department) the certificates are enrolled for.")
    cert_type: str | None = Field(
        default=None,
        max_length=200,
        description="Name of the SSL certificate type to enroll (as listed by /ssl/v1/types).",
    )
    cert_type_id: int | None = Field(
        default=None, ge=1, description="Id of the certificate type, instead of its name."
    )
    term_days: int | None = Field(
        default=None,
        ge=1,
        le=3650,
        description=(
            "Term to enroll; empty: the longest term of the type within the requested validity "
            "(the shortest term when the request names none)."
        ),
    )
    external_requester: str | None = Field(
        default=None, max_length=200, description="E-mail address(es) SCM sends notifications to."
    )
    ca_bundle: ApiCaBundle = None
    request_timeout_seconds: float = Field(default=60.0, gt=0, le=600)
    poll_interval_seconds: float = Field(
        default=300.0,
        ge=0.1,
        le=86400,
        description="How soon to ask again about a certificate still pending.",
    )
    max_rate_limit_wait_seconds: RateLimitWaitSeconds = 10.0

    @model_validator(mode="after")
    def _one_type(self) -> SectigoConfig:
        if (self.cert_type is None) == (self.cert_type_id is None):
            raise ValueError("name the certificate type by cert_type or cert_type_id (one of them)")
        return self
