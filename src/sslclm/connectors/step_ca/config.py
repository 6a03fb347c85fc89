"""The step-ca gateway's settings, as an operator fills them in (the JSON schema drives the UI form)."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator, model_validator

from sslclm.spi import CaBundle, ConnectorConfig
from sslclm.spi.config_fields import https_base_url

from .tokens import check_private_jwk

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


class StepCaConfig(ConnectorConfig):
    ca_url: str = Field(
        max_length=2000, description="The step-ca's base URL, e.g. https://ca.internal:9000 (no /1.0)."
    )
    root_pem: CaBundle = Field(
        default=None,
        max_length=200_000,
        description=(
            "The step-ca's root certificate(s), which sign its TLS certificate and every certificate it "
            "issues: an absolute path to a PEM file or the PEM text (step's root_ca.crt)."
        ),
    )
    root_fingerprint: str | None = Field(
        default=None,
        description=(
            "SHA-256 fingerprint of the root certificate in hex, as `step ca bootstrap --fingerprint` "
            "takes it. Without root_pem the root is fetched from the CA once and kept only if it "
            "matches; with root_pem it must match one of those certificates."
        ),
    )
    provisioner: str = Field(
        min_length=1, max_length=255, description="Name of the JWK provisioner that signs the tokens."
    )
    provisioner_kid: str | None = Field(
        default=None,
        max_length=255,
        description="Key ID of the provisioner's key; empty: the key's own kid, else its JWK thumbprint.",
    )
    provisioner_jwk: SecretStr | None = Field(
        default=None,
        description="The provisioner's private key as a JWK (JSON), already decrypted.",
    )
    provisioner_encrypted_key: str | None = Field(
        default=None,
        max_length=20_000,
        description=(
            "The provisioner's encrypted private key (the compact JWE of ca.json's encryptedKey). "
            "Empty with a password: fetched from the CA's /provisioners list."
        ),
    )
    provisioner_password: SecretStr | None = Field(
        default=None, description="Password that decrypts the provisioner's encrypted key."
    )
    default_validity_hours: int | None = Field(
        default=None,
        ge=1,
        le=24 * 3650,
        description=(
            "Lifetime of a certificate when the request names none; empty: the provisioner's "
            "defaultTLSCertDuration. The provisioner's min/max durations still apply."
        ),
    )
    token_lifetime_seconds: int = Field(
        default=300, ge=30, le=3600, description="How long each one-time token is valid."
    )
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=600)

    @field_validator("ca_url")
    @classmethod
    def _https(cls, value: str) -> str:
        value = https_base_url(value.strip())
        if "?" in value or "#" in value:
            raise ValueError("must not carry a query or fragment")
        return value

    @field_validator("root_fingerprint")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        normalized = value.strip().replace(":", "").lower()
        if not _FINGERPRINT.match(normalized):
            raise ValueError("must be a SHA-256 fingerprint: 64 hex digits (colons allowed)")
        return normalized

    @field_validator("provisioner_jwk")
    @classmethod
    def _private_jwk(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        check_private_jwk(value.get_secret_value())
        return value

    @field_validator("provisioner_encrypted_key")
    @classmethod
    def _compact_jwe(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if value.strip().count(".") != 4:
            raise ValueError("must be a compact JWE (five dot-separated parts)")
        return value.strip()

    @model_validator(mode="after")
    def _consistent(self) -> StepCaConfig:
        if self.root_pem is None and self.root_fingerprint is None:
            raise ValueError("name the CA's root: root_pem or root_fingerprint")
        has_jwk = self.provisioner_jwk is not None
        has_password = self.provisioner_password is not None
        if has_jwk == has_password:
            raise ValueError(
                "give the provisioner key either decrypted (provisioner_jwk) or encrypted "
                "(provisioner_password, with provisioner_encrypted_key or fetched from the CA)"
            )
        if self.provisioner_encrypted_key is not None and not has_password:
            raise ValueError("provisioner_encrypted_key needs provisioner_password")
        return self
