"""The local CA's settings, as an operator fills them in."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from sslclm.spi import ConnectorConfig

CAKeyType = Literal["EC-P256", "EC-P384", "RSA-2048", "RSA-3072", "RSA-4096"]


class LocalCAConfig(ConnectorConfig):
    name: str = Field(
        default="SSL-CLM Local",
        min_length=1,
        max_length=48,
        description="Prefix of the CA names: '<name> Root CA' and '<name> Issuing CA'.",
    )
    key_type: CAKeyType = Field(
        default="EC-P256",
        description="Key type of the root and issuing CA, chosen when they are created on first use.",
    )
    root_validity_days: int = Field(default=3650, ge=30, le=36500, description="Lifetime of the root CA.")
    issuing_validity_days: int = Field(
        default=1825, ge=30, le=36500, description="Lifetime of the issuing CA (capped at the root's)."
    )
    max_validity_days: int = Field(
        default=398, ge=1, le=3650, description="Longest lifetime a certificate may be issued with."
    )
    default_validity_days: int = Field(
        default=90, ge=1, le=3650, description="Lifetime when the request does not ask for one."
    )
    crl_url: str | None = Field(
        default=None,
        max_length=2000,
        description="CRL distribution point URL put in each certificate; the platform serves the CRL there.",
    )
    crl_validity_hours: int = Field(
        default=168, ge=1, le=8760, description="How long a published CRL stays valid (its nextUpdate)."
    )

    @field_validator("default_validity_days")
    @classmethod
    def _within_maximum(cls, value: int, info: ValidationInfo) -> int:
        maximum = info.data.get("max_validity_days")
        if maximum is not None and value > maximum:
            raise ValueError(f"must not exceed max_validity_days ({maximum})")
        return value

    @field_validator("crl_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")) or any(c.isspace() for c in value):
            raise ValueError("must be an http:// or https:// URL without spaces")
        return value
