"""The ``azure-keyvault`` store: certificates imported into an Azure Key Vault as PFX, with their versions."""

from __future__ import annotations

from sslclm.connectors.azure_keyvault.config import AzureKeyVaultConfig
from sslclm.connectors.azure_keyvault.store import AzureKeyVaultStore

__all__ = ["AzureKeyVaultConfig", "AzureKeyVaultStore"]
