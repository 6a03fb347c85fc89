"""Certificates in an Azure Key Vault, imported as PFX through the Azure SDK.

Each alias is one Key Vault certificate. Its name is the alias with every character Key Vault does not
allow in names (anything but 0-9, a-z, A-Z and '-') replaced by '-', after ``name_prefix``; the alias
itself is kept in the ``sslclm-alias`` tag, so two aliases that map to one name are told apart and
refused rather than overwriting each other. Every ``add`` imports a new version (Key Vault keeps them
all); ``restore_previous`` re-imports the version before the newest from its secret, which holds the
PFX with the key.
"""

from __future__ import annotations

import base64
import re
import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.identity import ClientSecretCredential
from azure.keyvault.certificates import (
    CertificateClient,
    CertificateContentType,
    CertificatePolicy,
    CertificateProperties,
    KeyVaultCertificate,
    WellKnownIssuerNames,
)
from azure.keyvault.secrets import SecretClient
from pydantic import BaseModel

from sslclm.connectors.azure_keyvault.config import AzureKeyVaultConfig
from sslclm.connectors.azure_keyvault.errors import azure_error, translated
from sslclm.errors import ConflictError, InvalidInputError, NotFoundError, SslClmError
from sslclm.pki import certificate_to_pem, compute_fingerprint, load_bundle, match_private_keys, to_pkcs12
from sslclm.spi.base import CHECK
from sslclm.spi.capabilities import Capability
from sslclm.spi.context import ConnectorContext
from sslclm.spi.rest import verify_setting
from sslclm.spi.store import (
    AddRequest,
    AddResult,
    CertificateStore,
    InventoryRequest,
    InventoryResult,
    RemoveRequest,
    RemoveResult,
    StoreEntry,
)
from sslclm.spi.types import CheckRequest, CheckResult

ALIAS_TAG = "sslclm-alias"
FINGERPRINT_TAG = "sslclm-fingerprint"
# Key Vault's ``created`` has one-second resolution; this number orders versions made in the same second.
SEQUENCE_TAG = "sslclm-sequence"
RESTORED_TAG = "sslclm-restored-from"  # on a version that undid another: the undone version's id
MAX_PAGE = 25  # Key Vault's largest page
_NOT_NAME = re.compile(r"[^0-9A-Za-z-]")
_MAX_NAME = 127


class AzureKeyVaultStore(CertificateStore):
    """An Azure Key Vault; each alias is one certificate (with all its versions)."""

    type_key = "azure-keyvault"
    display_name = "Azure Key Vault"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.INVENTORY, Capability.ADD, Capability.REMOVE}
    )
    Config = AzureKeyVaultConfig
    needs_private_key = True  # Key Vault imports a certificate only together with its key

    def __init__(self, config: BaseModel, context: ConnectorContext) -> None:
        super().__init__(config, context)
        # Built on first use and kept: the credential caches its token for every later call.
        self._credential: ClientSecretCredential | None = None
        self._certificate_client: CertificateClient | None = None
        self._secret_client: SecretClient | None = None

    @property
    def settings(self) -> AzureKeyVaultConfig:
        assert isinstance(self.config, AzureKeyVaultConfig)
        return self.config

    # --- SDK clients ------------------------------------------------------------------------------------

    def _transport_options(self) -> dict[str, Any]:
        settings = self.settings
        verify: bool | str = (
            verify_setting(settings.ca_bundle, self.context.data_dir) if settings.verify_tls else False
        )
        return {
            "connection_verify": verify,
            "connection_timeout": settings.timeout_seconds,
            "read_timeout": settings.timeout_seconds,
            "retry_total": settings.max_retries,
        }

    def credential(self) -> ClientSecretCredential:
        if self._credential is None:
            settings = self.settings
            self._credential = ClientSecretCredential(
                settings.tenant_id,
                settings.client_id,
                settings.client_secret.get_secret_value(),
                authority=settings.authority_host,
                disable_instance_discovery=settings.disable_instance_discovery,
                **self._transport_options(),
            )
        return self._credential

    def _vault_options(self) -> dict[str, Any]:
        return {
            "api_version": self.settings.api_version,
            "verify_challenge_resource": self.settings.verify_challenge_resource,
            **self._transport_options(),
        }

    @property
    def certificate_client(self) -> CertificateClient:
        if self._certificate_client is None:
            self._certificate_client = CertificateClient(
                self.settings.vault_url, self.credential(), **self._vault_options()
            )
        return self._certificate_client

    @property
    def secret_client(self) -> SecretClient:
        if self._secret_client is None:
            self._secret_client = SecretClient(
                self.settings.vault_url, self.credential(), **self._vault_options()
            )
        return self._secret_client

    # --- names ----------------------------------------------------------------------------------------

    def certificate_name(self, alias: str) -> str:
        """The Key Vault certificate name ``alias`` is stored under."""
        name = self.settings.name_prefix + _NOT_NAME.sub("-", alias)
        if not 1 <= len(name) <= _MAX_NAME:
            raise InvalidInputError(
                f"the alias gives a Key Vault name of {len(name)} characters; at most {_MAX_NAME} fit",
                field="alias",
            )
        return name

    @staticmethod
    def _alias_of(certificate: KeyVaultCertificate) -> str:
        tags = (certificate.properties.tags if certificate.properties else None) or {}
        return tags.get(ALIAS_TAG) or str(certificate.name)

    def _latest(self, name: str, action: str) -> KeyVaultCertificate | None:
        try:
            with translated(action, absent_ok=True):
                return self.certificate_client.get_certificate(name)
        except ResourceNotFoundError:
            return None

    def _held(self, alias: str, action: str) -> KeyVaultCertificate | None:
        """The newest version under ``alias``; None when absent. ``ConflictError`` when the certificate
        of that name belongs to another alias."""
        name = self.certificate_name(alias)
        current = self._latest(name, action)
        if current is None:
            return None
        owner = self._alias_of(current)
        if owner != alias:
            raise ConflictError(
                f"the Key Vault certificate '{name}' holds alias '{owner}', not '{alias}'", field="alias"
            )
        return current

    # --- the SPI ----------------------------------------------------------------------------------------

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        try:
            pages = self.certificate_client.list_properties_of_certificates(max_page_size=1).by_page()
            next(pages, None)
        except AzureError as exc:
            return CheckResult(ok=False, message=azure_error(exc, "listing certificates").message)
        except SslClmError as exc:  # e.g. the configured CA bundle file is missing
            return CheckResult(ok=False, message=exc.message)
        return CheckResult(
            ok=True,
            message=f"{self.settings.vault_url} accepted the credentials and lists certificates",
            details={"vault_url": self.settings.vault_url, "api_version": self.settings.api_version},
        )

    def inventory(self, request: InventoryRequest) -> InventoryResult:
        size = max(1, min(request.limit, MAX_PAGE))
        entries: list[StoreEntry] = []
        with translated("listing certificates"):
            pages = self.certificate_client.list_properties_of_certificates(max_page_size=size).by_page(
                continuation_token=request.cursor
            )
            page = list(next(pages, []))
            # by_page's iterator carries the vault's nextLink once a page is read.
            next_cursor: str | None = getattr(pages, "continuation_token", None)
            for properties in page:
                try:
                    certificate = self.certificate_client.get_certificate(str(properties.name))
                except ResourceNotFoundError:
                    continue  # deleted between the listing and the read
                entry = self._entry(certificate)
                if entry is not None:
                    entries.append(entry)
        return InventoryResult(entries=tuple(entries), next_cursor=next_cursor or None)

    def read_entry(self, alias: str) -> StoreEntry | None:
        """The entry under ``alias`` with one read instead of a walk through the inventory."""
        try:
            current = self._held(alias, "reading the certificate")
        except ConflictError:
            return None
        return self._entry(current) if current is not None else None

    def add(self, request: AddRequest) -> AddResult:
        name = self.certificate_name(request.alias)
        password = secrets.token_urlsafe(24) if self.settings.protect_pfx else None
        pfx, fingerprint = self._pfx(request, password)
        current = self._held(request.alias, "reading the certificate")
        if current is not None and not request.overwrite:
            raise ConflictError(f"the vault already holds '{request.alias}' (certificate '{name}')")
        tags = {
            ALIAS_TAG: request.alias,
            FINGERPRINT_TAG: fingerprint,
            SEQUENCE_TAG: str(self._sequence(current) + 1),
        }
        with translated(f"importing '{name}' into the vault"):
            self.certificate_client.import_certificate(
                name, pfx, password=password, policy=self._policy(CertificateContentType.pkcs12), tags=tags
            )
        return AddResult(alias=request.alias, replaced=current is not None)

    def remove(self, request: RemoveRequest) -> RemoveResult:
        current = self._held(request.alias, "reading the certificate")
        if current is None:
            raise NotFoundError(f"the vault holds nothing under '{request.alias}'", field="alias")
        self._delete(str(current.name))
        return RemoveResult(alias=request.alias)

    def restore_previous(self, alias: str) -> bool:
        """Re-imports the version before the newest one (see ``RestorableStore``).

        When the newest version is the only one, the last ``add`` created the certificate, so it is
        deleted. A retried restore changes nothing: the newest version then says what it undid.
        """
        name = self.certificate_name(alias)
        versions = self._versions(name)
        if not versions:
            return False
        newest = versions[-1]
        if RESTORED_TAG in (newest.tags or {}):
            return True
        if len(versions) == 1:
            self._delete(name)
            return True
        previous = versions[-2]
        with translated(f"reading the previous version of '{name}'"):
            secret = self.secret_client.get_secret(name, previous.version)
        content_type = secret.properties.content_type or CertificateContentType.pkcs12
        value = secret.value or ""
        material = (
            base64.b64decode(value) if content_type == CertificateContentType.pkcs12 else value.encode()
        )
        tags = {
            **(previous.tags or {}),
            RESTORED_TAG: str(newest.version),
            SEQUENCE_TAG: str(max(self._sequence_of(v) for v in versions) + 1),
        }
        with translated(f"re-importing the previous version of '{name}'"):
            self.certificate_client.import_certificate(
                name, material, policy=self._policy(CertificateContentType(content_type)), tags=tags
            )
        return True

    # --- helpers ----------------------------------------------------------------------------------------

    @staticmethod
    def _pfx(request: AddRequest, password: str | None) -> tuple[bytes, str]:
        """The PFX Key Vault imports, and the certificate's fingerprint; the input checked first."""
        bundle = load_bundle(request.certificate_pem)
        leaf = bundle.certificates
        if not leaf:
            raise InvalidInputError("the certificate PEM holds no certificate", field="certificate")
        chain = load_bundle(b"".join(request.chain_pem)).certificates if request.chain_pem else []
        if request.private_key_pem is None:
            raise InvalidInputError(
                "Key Vault imports a certificate only together with its private key", field="private_key"
            )
        keys = load_bundle(request.private_key_pem).private_keys
        matched = match_private_keys(leaf[:1], keys)
        if 0 not in matched:
            raise InvalidInputError("the private key does not belong to the certificate", field="private_key")
        pfx = to_pkcs12(matched[0], leaf[0], chain, password=password, friendly_name=request.alias)
        return pfx, compute_fingerprint(bundle.ders[0])

    @staticmethod
    def _policy(content_type: CertificateContentType) -> CertificatePolicy:
        # The key stays exportable: the version's secret is what a later rollback re-imports.
        return CertificatePolicy(
            issuer_name=WellKnownIssuerNames.unknown, content_type=content_type, exportable=True
        )

    @staticmethod
    def _sequence_of(properties: CertificateProperties) -> int:
        value = (properties.tags or {}).get(SEQUENCE_TAG, "")
        return int(value) if value.isdigit() else 0

    def _sequence(self, current: KeyVaultCertificate | None) -> int:
        if current is None or current.properties is None:
            return 0
        return self._sequence_of(current.properties)

    def _versions(self, name: str) -> list[CertificateProperties]:
        """Every version, oldest first (Key Vault lists them in no particular order)."""
        try:
            with translated(f"listing the versions of '{name}'", absent_ok=True):
                versions = list(self.certificate_client.list_properties_of_certificate_versions(name))
        except ResourceNotFoundError:
            return []
        epoch = datetime.min.replace(tzinfo=UTC)
        return sorted(versions, key=lambda v: (v.created_on or epoch, self._sequence_of(v)))

    def _delete(self, name: str) -> None:
        try:
            with translated(f"deleting '{name}'", absent_ok=True):
                poller = self.certificate_client.begin_delete_certificate(name)
                if self.settings.purge_on_remove:
                    # The name is purgeable only once the deletion is complete.
                    poller.wait(timeout=self.settings.timeout_seconds)
                    self.certificate_client.purge_deleted_certificate(name)
        except ResourceNotFoundError:
            raise NotFoundError(f"the vault holds no certificate '{name}'", field="alias") from None

    def _entry(self, certificate: KeyVaultCertificate) -> StoreEntry | None:
        if not certificate.cer:
            return None  # a pending certificate request, nothing issued yet
        properties = certificate.properties
        if properties is None:
            return None
        return StoreEntry(
            alias=self._alias_of(certificate),
            certificate_pem=certificate_to_pem(bytes(certificate.cer)),
            has_private_key=certificate.key_id is not None,
            modified_at=properties.updated_on,
            details={
                "name": str(certificate.name),
                "version": properties.version,
                "enabled": properties.enabled,
                "expires_on": properties.expires_on.isoformat() if properties.expires_on else None,
                "tags": dict(properties.tags or {}),
            },
        )
