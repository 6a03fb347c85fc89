"""``aws-secrets-manager``: one secret per alias holding the certificate, its chain and its key.

The secret's name comes from a template (``sslclm/{alias}`` by default). A replacement is a new
version of the same secret: Secrets Manager moves the ``AWSCURRENT`` label to it and ``AWSPREVIOUS``
to the version it replaced, whose value :meth:`SecretsManagerStore.restore_previous` puts back. The
version rolled back from is labelled ``SSLCLM_ROLLED_BACK`` so that a retried rollback sees it has
nothing left to do instead of flipping the values again.

A deployment costs one call (``PutSecretValue``); the secret is created, with its tags, only when that
call says it does not exist yet.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator

from sslclm.connectors.aws.client import (
    ALIAS_TAG,
    AwsClients,
    AwsConnectionConfig,
    aws_call,
    check_material,
    tag_list,
)
from sslclm.connectors.aws.paging import decode_cursor, encode_cursor, next_position
from sslclm.errors import ConflictError, ConnectorError, NotFoundError, SslClmError
from sslclm.spi.base import CHECK
from sslclm.spi.capabilities import Capability
from sslclm.spi.context import ConnectorContext
from sslclm.spi.files import check_alias, split_certificates
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

ROLLED_BACK = "SSLCLM_ROLLED_BACK"
_SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@{}-]{1,512}$")
_PEM_KEY = re.compile(
    rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----.+?-----END (?:[A-Z]+ )?PRIVATE KEY-----\r?\n?", re.S
)


class SecretsManagerConfig(AwsConnectionConfig):
    secret_name: str = Field(
        "sslclm/{alias}", description="Name of each alias's secret, a template holding {alias} once"
    )
    value_format: Literal["json", "pem-bundle"] = Field(
        "json",
        description="json: {certificate, chain, private_key}; pem-bundle: certificate, chain, key in one PEM",
    )
    include_private_key: bool = Field(True, description="Put the private key into the secret")
    kms_key_id: str | None = Field(
        None, description="KMS key that encrypts new secrets; empty: aws/secretsmanager"
    )
    description: str = Field("TLS certificate deployed by SSL-CLM", max_length=2048)
    recovery_window_days: int = Field(
        30, ge=7, le=30, description="Days a removed secret can still be restored (ignored when forced)"
    )
    force_delete_without_recovery: bool = Field(
        False, description="Remove secrets at once, without a recovery window"
    )

    @field_validator("secret_name")
    @classmethod
    def _template(cls, value: str) -> str:
        if value.count("{alias}") != 1 or value.count("{") != 1 or not _SECRET_NAME.match(value):
            raise ValueError("the name template holds {alias} once and only letters, digits and /_+=.@-")
        return value

    def name_for(self, alias: str) -> str:
        return self.secret_name.replace("{alias}", check_alias(alias))

    def alias_of(self, name: str) -> str | None:
        prefix, suffix = self.secret_name.split("{alias}")
        if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix):
            return name[len(prefix) : len(name) - len(suffix)]
        return None


def render_value(config: SecretsManagerConfig, leaf: bytes, chain: bytes, key: bytes | None) -> str:
    if config.value_format == "json":
        value = {"certificate": leaf.decode(), "chain": chain.decode()}
        if key is not None:
            value["private_key"] = key.decode()
        return json.dumps(value)
    return (leaf + chain + (key or b"")).decode()


def parse_value(secret: str) -> tuple[bytes, tuple[bytes, ...], bool] | None:
    """Leaf, chain and whether a key is there, from either format; None when it holds no certificate."""
    if secret.lstrip().startswith("{"):
        try:
            value = json.loads(secret)
            blocks = split_certificates(str(value.get("certificate", "")).encode())
            chain = split_certificates(str(value.get("chain", "")).encode())
            has_key = bool(value.get("private_key"))
        except (ValueError, AttributeError):
            return None
    else:
        blocks = split_certificates(secret.encode())
        chain, has_key = blocks[1:], bool(_PEM_KEY.search(secret.encode()))
        blocks = blocks[:1]
    if not blocks:
        return None
    return blocks[0], tuple(chain), has_key


class SecretsManagerStore(CertificateStore):
    """AWS Secrets Manager in one account and region; one secret per alias."""

    type_key = "aws-secrets-manager"
    display_name = "AWS Secrets Manager"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.INVENTORY, Capability.ADD, Capability.REMOVE}
    )
    Config = SecretsManagerConfig
    # PutSecretValue answers with the new version id once it is stored: no read-back needed to verify.
    confirms_writes = True

    def __init__(self, config: BaseModel, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self._clients = AwsClients(self.settings)

    @property
    def settings(self) -> SecretsManagerConfig:
        assert isinstance(self.config, SecretsManagerConfig)
        return self.config

    @property
    def secrets(self) -> Any:
        return self._clients.client("secretsmanager")

    @property
    def needs_private_key(self) -> bool:
        return self.settings.include_private_key

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        try:
            aws_call("list secrets", lambda: self.secrets.list_secrets(MaxResults=1))
        except SslClmError as exc:
            return CheckResult(ok=False, message=exc.message)
        return CheckResult(ok=True, message=f"Secrets Manager in {self.settings.region} answers")

    def _describe(self, name: str) -> dict[str, Any] | None:
        """The secret's metadata, or None when it does not exist or waits for deletion."""
        try:
            described: dict[str, Any] = aws_call(
                f"describe secret {name}", lambda: self.secrets.describe_secret(SecretId=name)
            )
        except NotFoundError:
            return None
        return None if described.get("DeletedDate") else described

    def add(self, request: AddRequest) -> AddResult:
        config = self.settings
        key = request.private_key_pem if config.include_private_key else None
        leaf = check_material(request.certificate_pem, key, key_required=config.include_private_key)
        chain = b"".join(block for pem in request.chain_pem for block in split_certificates(pem))
        name = config.name_for(request.alias)
        value = render_value(config, leaf, chain, key)
        if not request.overwrite and self._describe(name) is not None:
            raise ConflictError(f"secret '{name}' already exists", field="alias")
        try:
            self._put(name, value)
            return AddResult(alias=request.alias, replaced=True)
        except NotFoundError:
            pass
        except ConnectorError as exc:
            if exc.data.get("aws_code") != "InvalidRequestException" or not self._undelete(name):
                raise
            self._put(name, value)
            return AddResult(alias=request.alias, replaced=False)
        return AddResult(alias=request.alias, replaced=self._create(name, value, request.alias))

    def _put(self, name: str, value: str) -> None:
        aws_call(
            f"put a new version of secret {name}",
            lambda: self.secrets.put_secret_value(SecretId=name, SecretString=value),
        )

    def _create(self, name: str, value: str, alias: str) -> bool:
        """Creates the secret; True when another writer created it first (then this is a new version)."""
        ask: dict[str, Any] = {
            "Name": name,
            "SecretString": value,
            "Description": self.settings.description,
            "Tags": tag_list(self.settings, alias),
        }
        if self.settings.kms_key_id:
            ask["KmsKeyId"] = self.settings.kms_key_id
        try:
            aws_call(f"create secret {name}", lambda: self.secrets.create_secret(**ask))
        except ConnectorError as exc:
            if exc.data.get("aws_code") != "ResourceExistsException":
                raise
            self._put(name, value)
            return True
        return False

    def _undelete(self, name: str) -> bool:
        """Cancels a pending deletion (an alias removed and deployed again); False if none was pending."""
        try:
            described = aws_call(
                f"describe secret {name}", lambda: self.secrets.describe_secret(SecretId=name)
            )
        except NotFoundError:
            return False
        if not described.get("DeletedDate"):
            return False
        aws_call(f"restore secret {name}", lambda: self.secrets.restore_secret(SecretId=name))
        return True

    def restore_previous(self, alias: str) -> bool:
        """Makes the version the last ``add`` replaced current again (see ``RestorableStore``).

        A secret the last ``add`` created has no previous version: it is deleted without a recovery
        window, as it held nothing before. Returns False when there was nothing to put back.
        """
        name = self.settings.name_for(alias)
        described = self._describe(name)
        if described is None:
            return False
        stages: dict[str, list[str]] = described.get("VersionIdsToStages", {})
        current = next((v for v, labels in stages.items() if "AWSCURRENT" in labels), None)
        previous = next((v for v, labels in stages.items() if "AWSPREVIOUS" in labels), None)
        if previous is None:
            aws_call(
                f"delete secret {name}",
                lambda: self.secrets.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True),
            )
            return True
        if current is None or ROLLED_BACK in stages.get(previous, []):
            return False  # already rolled back
        # The previous value comes back as a new version rather than by moving AWSCURRENT to the old
        # one: every reader and every later PutSecretValue then agree on which version is current.
        earlier = aws_call(
            f"read the previous version of secret {name}",
            lambda: self.secrets.get_secret_value(SecretId=name, VersionId=previous),
        )
        self._put(name, str(earlier["SecretString"]))
        marked = next((v for v, labels in stages.items() if ROLLED_BACK in labels), None)
        move: dict[str, Any] = {"SecretId": name, "VersionStage": ROLLED_BACK, "MoveToVersionId": current}
        if marked is not None:
            move["RemoveFromVersionId"] = marked
        aws_call(
            f"label the rolled-back version of {name}",
            lambda: self.secrets.update_secret_version_stage(**move),
        )
        return True

    def _entry(self, name: str, alias: str, listed: dict[str, Any] | None = None) -> StoreEntry | None:
        try:
            answer = aws_call(
                f"read secret {name}",
                lambda: self.secrets.get_secret_value(SecretId=name, VersionStage="AWSCURRENT"),
            )
        except NotFoundError:
            return None
        except ConnectorError as exc:
            if exc.data.get("aws_code") == "InvalidRequestException":  # waiting for deletion
                return None
            raise
        parsed = parse_value(str(answer.get("SecretString") or ""))
        if parsed is None:
            return None
        leaf, chain, has_key = parsed
        details: dict[str, Any] = {
            "arn": answer.get("ARN"),
            "name": name,
            "version_id": answer.get("VersionId"),
        }
        modified = (listed or {}).get("LastChangedDate") or answer.get("CreatedDate")
        return StoreEntry(
            alias=alias,
            certificate_pem=leaf,
            chain_pem=chain,
            has_private_key=has_key,
            modified_at=modified,
            details=details,
        )

    def read_entry(self, alias: str) -> StoreEntry | None:
        """The entry under ``alias`` with one call."""
        return self._entry(self.settings.name_for(alias), alias)

    def inventory(self, request: InventoryRequest) -> InventoryResult:
        position = decode_cursor(request.cursor)
        limit = max(1, min(request.limit, self.settings.page_size))
        ask: dict[str, Any] = {"MaxResults": limit, "Filters": [{"Key": "tag-key", "Values": [ALIAS_TAG]}]}
        prefix = self.settings.secret_name.split("{alias}")[0]
        if prefix:
            ask["Filters"].append({"Key": "name", "Values": [prefix]})
        if position.token:
            ask["NextToken"] = position.token
        answer = aws_call("list secrets", lambda: self.secrets.list_secrets(**ask))
        listed = answer.get("SecretList", [])
        chosen = listed[position.skip : position.skip + limit]
        entries = []
        for secret in chosen:
            name = secret["Name"]
            # The name filter is a prefix match: a name outside the template is someone else's secret.
            alias = self.settings.alias_of(name)
            if alias is None:
                continue
            entry = self._entry(name, alias, secret)
            if entry is not None:
                entries.append(entry)
        following = next_position(position, len(chosen), len(listed), answer.get("NextToken") or None)
        return InventoryResult(
            entries=tuple(entries), next_cursor=encode_cursor(following) if following else None
        )

    def remove(self, request: RemoveRequest) -> RemoveResult:
        name = self.settings.name_for(request.alias)
        if self._describe(name) is None:
            raise NotFoundError(f"secret '{name}' does not exist", field="alias")
        ask: dict[str, Any] = {"SecretId": name}
        if self.settings.force_delete_without_recovery:
            ask["ForceDeleteWithoutRecovery"] = True
        else:
            ask["RecoveryWindowInDays"] = self.settings.recovery_window_days
        aws_call(f"delete secret {name}", lambda: self.secrets.delete_secret(**ask))
        return RemoveResult(alias=request.alias)
