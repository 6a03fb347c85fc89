"""``aws-acm``: certificates imported into AWS Certificate Manager, found again by an alias tag.

ACM names a certificate by an ARN it chooses, so the alias lives in the tag ``sslclm:alias``. The
ARN found for an alias is remembered in the connector's state (a listing of the whole account per
deployment would cost one call per certificate); a remembered ARN is checked against its tag before
use, so a certificate deleted or retagged by hand is looked up afresh.

A replacement is a re-import under the same ARN, which keeps the ARN, and with it every load
balancer and CloudFront distribution that uses it. ACM refuses tags on a re-import, so they are
applied again by a separate call afterwards (some implementations drop them on re-import).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field

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
from sslclm.pki import load_certificate
from sslclm.spi.base import CHECK
from sslclm.spi.capabilities import Capability
from sslclm.spi.context import ConnectorContext
from sslclm.spi.files import split_certificates
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

# ACM lists only RSA-2048 certificates unless asked for the other key types.
KEY_TYPES = (
    "RSA_1024",
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "EC_prime256v1",
    "EC_secp384r1",
    "EC_secp521r1",
)
_ARN_STATE = "arn:"


def issuer_path(leaf: bytes, chain: list[bytes]) -> tuple[bytes, ...]:
    """The chain certificates that issue one another upward from ``leaf``, in order.

    ACM answers with the chain it was given, but some implementations append a certificate of their
    own that issues nothing in it; the inventory and the drift check should not see that one.
    """
    path: list[bytes] = []
    child = load_certificate(leaf)
    for block in chain:
        if child.issuer == child.subject:  # a root issues only itself
            break
        parent = load_certificate(block)
        if parent.subject != child.issuer:
            break
        path.append(block)
        child = parent
    return tuple(path)


class AcmConfig(AwsConnectionConfig):
    include_issued: bool = Field(
        True, description="List certificates ACM issued itself, not only imported ones, in the inventory"
    )


class AcmStore(CertificateStore):
    """AWS Certificate Manager in one account and region."""

    type_key = "aws-acm"
    display_name = "AWS Certificate Manager"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.INVENTORY, Capability.ADD, Capability.REMOVE}
    )
    Config = AcmConfig
    needs_private_key = True  # ACM terminates TLS for the services that use it, so it holds the key
    # ImportCertificate answers only once the certificate is stored: no read-back needed to verify.
    confirms_writes = True

    def __init__(self, config: BaseModel, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self._clients = AwsClients(self.settings)

    @property
    def settings(self) -> AcmConfig:
        assert isinstance(self.config, AcmConfig)
        return self.config

    @property
    def acm(self) -> Any:
        return self._clients.client("acm")

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        try:
            aws_call("list certificates", lambda: self.acm.list_certificates(MaxItems=1))
        except SslClmError as exc:
            return CheckResult(ok=False, message=exc.message)
        return CheckResult(ok=True, message=f"ACM in {self.settings.region} answers")

    # --- alias -> ARN ------------------------------------------------------------------------------

    def _tags(self, arn: str) -> dict[str, str]:
        answer = aws_call(
            f"read the tags of {arn}", lambda: self.acm.list_tags_for_certificate(CertificateArn=arn)
        )
        return {tag["Key"]: tag.get("Value", "") for tag in answer.get("Tags", [])}

    def _list_page(self, token: str | None, size: int) -> tuple[list[dict[str, Any]], str | None]:
        ask: dict[str, Any] = {"MaxItems": size, "Includes": {"keyTypes": list(KEY_TYPES)}}
        if token:
            ask["NextToken"] = token
        answer = aws_call("list certificates", lambda: self.acm.list_certificates(**ask))
        summaries = [
            summary
            for summary in answer.get("CertificateSummaryList", [])
            if self.settings.include_issued or summary.get("Type", "IMPORTED") == "IMPORTED"
        ]
        return summaries, answer.get("NextToken") or None

    def find_arn(self, alias: str) -> str | None:
        """The ARN of the certificate tagged with ``alias``, or None."""
        remembered = self.context.state.get(_ARN_STATE + alias)
        if remembered is not None:
            arn = remembered.decode()
            try:
                if self._tags(arn).get(ALIAS_TAG) == alias:
                    return arn
            except NotFoundError:
                pass
            self.context.state.delete(_ARN_STATE + alias)
        token: str | None = None
        while True:
            summaries, token = self._list_page(token, self.settings.page_size)
            for summary in summaries:
                arn = summary["CertificateArn"]
                with_tags = self._tags(arn)
                if with_tags.get(ALIAS_TAG) == alias:
                    self.context.state.put(_ARN_STATE + alias, arn.encode())
                    return str(arn)
            if token is None:
                return None

    # --- the store -------------------------------------------------------------------------------

    def add(self, request: AddRequest) -> AddResult:
        leaf = check_material(request.certificate_pem, request.private_key_pem, key_required=True)
        assert request.private_key_pem is not None
        arn = self.find_arn(request.alias)
        if arn is not None and not request.overwrite:
            raise ConflictError(f"alias '{request.alias}' already exists as {arn}", field="alias")
        chain = b"".join(block for pem in request.chain_pem for block in split_certificates(pem))
        ask: dict[str, Any] = {"Certificate": leaf, "PrivateKey": request.private_key_pem}
        if chain:
            ask["CertificateChain"] = chain
        tags = tag_list(self.settings, request.alias)
        if arn is None:
            ask["Tags"] = tags
        else:
            ask["CertificateArn"] = arn
        action = f"import the certificate for '{request.alias}'"
        imported = aws_call(action, lambda: self.acm.import_certificate(**ask))["CertificateArn"]
        if arn is not None:
            aws_call(
                f"tag {imported}",
                lambda: self.acm.add_tags_to_certificate(CertificateArn=imported, Tags=tags),
            )
        self.context.state.put(_ARN_STATE + request.alias, str(imported).encode())
        return AddResult(alias=request.alias, replaced=arn is not None)

    def _entry(self, arn: str, alias: str, summary: dict[str, Any] | None = None) -> StoreEntry | None:
        try:
            answer = aws_call(f"read {arn}", lambda: self.acm.get_certificate(CertificateArn=arn))
        except NotFoundError:
            return None
        except ConnectorError as exc:
            if exc.data.get("aws_code") == "RequestInProgressException":  # issuance still pending
                return None
            raise
        details: dict[str, Any] = {"arn": arn}
        for key in ("Type", "Status", "KeyAlgorithm", "InUse"):
            if summary and key in summary:
                details[key.lower()] = summary[key]
        leaf = answer["Certificate"].encode()
        return StoreEntry(
            alias=alias,
            certificate_pem=leaf,
            chain_pem=issuer_path(leaf, split_certificates(answer.get("CertificateChain", "").encode())),
            has_private_key=True,
            details=details,
        )

    def read_entry(self, alias: str) -> StoreEntry | None:
        """The entry under ``alias`` without listing the account (the ARN is usually remembered)."""
        arn = self.find_arn(alias)
        return self._entry(arn, alias) if arn is not None else None

    def inventory(self, request: InventoryRequest) -> InventoryResult:
        position = decode_cursor(request.cursor)
        limit = max(1, min(request.limit, self.settings.page_size))
        summaries, next_token = self._list_page(position.token, limit)
        chosen = summaries[position.skip : position.skip + limit]
        entries = []
        for summary in chosen:
            arn = summary["CertificateArn"]
            # Certificates not put here by the platform are listed under their ARN's id.
            alias = self._tags(arn).get(ALIAS_TAG) or arn.rsplit("/", 1)[-1]
            entry = self._entry(arn, alias, summary)
            if entry is not None:
                entries.append(entry)
        following = next_position(position, len(chosen), len(summaries), next_token)
        return InventoryResult(
            entries=tuple(entries), next_cursor=encode_cursor(following) if following else None
        )

    def remove(self, request: RemoveRequest) -> RemoveResult:
        arn = self.find_arn(request.alias)
        if arn is None:
            raise NotFoundError(f"alias '{request.alias}' is not in ACM", field="alias")
        aws_call(f"delete {arn}", lambda: self.acm.delete_certificate(CertificateArn=arn))
        self.context.state.delete(_ARN_STATE + request.alias)
        return RemoveResult(alias=request.alias)
