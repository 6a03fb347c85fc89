"""The Azure Key Vault store's settings, as an operator fills them in (the JSON schema drives the UI form)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from sslclm.spi import CaBundle, ConnectorConfig, HttpsBaseUrl

PUBLIC_CLOUD_AUTHORITY = "https://login.microsoftonline.com"


class AzureKeyVaultConfig(ConnectorConfig):
    vault_url: HttpsBaseUrl = Field(
        max_length=2000, description="The vault's URL, e.g. https://my-vault.vault.azure.net"
    )
    tenant_id: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^[0-9A-Za-z.\-]+$",
        description="Microsoft Entra tenant (directory) id of the application.",
    )
    client_id: str = Field(
        min_length=1, max_length=200, description="Application (client) id of the service principal."
    )
    client_secret: SecretStr = Field(
        description="A client secret of the application (its value, not its id)."
    )
    authority_host: HttpsBaseUrl = Field(
        default=PUBLIC_CLOUD_AUTHORITY,
        max_length=2000,
        description=(
            "Microsoft Entra authority: https://login.microsoftonline.us (US Government), "
            "https://login.chinacloudapi.cn (China), or a private cloud's."
        ),
    )
    disable_instance_discovery: bool = Field(
        default=False,
        description=(
            "Skip Entra instance discovery; needed for authority hosts it does not know "
            "(Azure Stack, private clouds)."
        ),
    )
    verify_challenge_resource: bool = Field(
        default=True,
        description=(
            "Refuse a vault whose authentication challenge names a resource outside the vault's domain. "
            "Turn off only for a vault reached under a name other than its own."
        ),
    )
    verify_tls: bool = Field(
        default=True, description="Verify the TLS certificates of the vault and the authority host."
    )
    ca_bundle: CaBundle = Field(
        default=None,
        max_length=200_000,
        description="CA certificates to trust instead of the system store: a PEM file path or PEM text.",
    )
    name_prefix: str = Field(
        default="",
        max_length=60,
        pattern=r"^[0-9A-Za-z-]*$",
        description="Put before every certificate name derived from an alias (letters, digits, '-').",
    )
    protect_pfx: bool = Field(
        default=True,
        description=(
            "Send the PFX encrypted with a fresh random password (Key Vault keeps the key, not the password)."
        ),
    )
    purge_on_remove: bool = Field(
        default=False,
        description=(
            "After removing a certificate, purge it from the soft-deleted certificates so its name is free "
            "at once (needs the purge permission; impossible with purge protection)."
        ),
    )
    api_version: Literal["7.4", "7.5", "7.6"] = "7.5"
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    max_retries: int = Field(
        default=3,
        ge=0,
        le=10,
        description="How often the SDK itself retries a throttled (429), failing (5xx) or unreachable call.",
    )

    @field_validator("client_id")
    @classmethod
    def _no_spaces(cls, value: str) -> str:
        if re.search(r"\s", value):
            raise ValueError("must not contain spaces")
        return value
