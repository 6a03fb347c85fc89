"""The AD CS gateway's settings, as an operator fills them in (the JSON schema drives the UI form)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from sslclm.spi import CaBundle, ConnectorConfig, HttpsBaseUrl


class AdcsConfig(ConnectorConfig):
    url: HttpsBaseUrl = Field(
        max_length=2000,
        description="The Web Enrollment site of the CA, e.g. https://ca01.corp.example/certsrv.",
    )
    template: str = Field(
        min_length=1,
        max_length=200,
        description="Certificate template name (not its display name), e.g. WebServer.",
    )
    username: str = Field(
        min_length=1,
        max_length=200,
        description="Account that may enroll on the template (DOMAIN\\user for NTLM).",
    )
    password: SecretStr = Field(description="Password of that account.")
    auth: Literal["ntlm", "basic"] = Field(
        default="ntlm",
        description="'ntlm': Windows Integrated authentication (IIS default); 'basic': Basic over HTTPS.",
    )
    ca_bundle: CaBundle = Field(
        default=None,
        max_length=200_000,
        description=(
            "CA certificates for the site's TLS certificate: a PEM file path or PEM text. "
            "Empty: the system trust store."
        ),
    )
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    poll_interval_seconds: float = Field(
        default=300.0,
        ge=0.1,
        le=86400,
        description="How soon to ask again about a request waiting for a CA manager's approval.",
    )

    @field_validator("template")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if any(c in value for c in "\r\n:"):
            raise ValueError("must be a template name without line breaks or colons")
        return value.strip()
