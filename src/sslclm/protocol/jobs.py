"""The job kinds an agent runs, with their payloads and results."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DISCOVER_FILESYSTEM = "discover-filesystem"
PEM_KEYGEN = "pem-keygen"
PEM_INSTALL = "pem-install"
STORE_DEPLOY = "store-deploy"
STORE_REMOVE = "store-remove"
STORE_INVENTORY = "store-inventory"
JOB_KINDS = (DISCOVER_FILESYSTEM, PEM_KEYGEN, PEM_INSTALL, STORE_DEPLOY, STORE_REMOVE, STORE_INVENTORY)
# Kinds whose payload holds secrets (store passwords, private keys): the server keeps them sealed at
# rest and unseals them only to hand them to the agent over the mutual-TLS channel.
SEALED_KINDS = (STORE_DEPLOY, STORE_REMOVE, STORE_INVENTORY)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class DiscoverFilesystemPayload(_Body):
    paths: list[str] = Field(default_factory=list, max_length=1000, description="Empty: the configured paths")
    include: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    max_depth: int = Field(default=64, ge=0, le=1000)


class WireFinding(_Body):
    certificate_der_b64: str
    chain_der_b64: list[str] = Field(default_factory=list)
    location: str
    path: str | None = None
    host: str | None = None
    details: dict[str, object] = Field(default_factory=dict)


class DiscoverFilesystemResult(_Body):
    findings: list[WireFinding]
    problems: int = 0


class PemKeygenPayload(_Body):
    """Make a key on the host for ``store`` and return only its CSR."""

    store: str = Field(max_length=100, description="Name of a pem-files store in the agent's configuration")
    alias: str = Field(max_length=128)
    key_type: str = "EC-P256"
    common_name: str | None = None
    dns_names: list[str] = Field(default_factory=list)
    ip_addresses: list[str] = Field(default_factory=list)


class PemKeygenResult(_Body):
    csr_pem: str
    public_key_sha256: str


class PemInstallPayload(_Body):
    store: str = Field(max_length=100)
    alias: str = Field(max_length=128)
    certificate_pem: str
    chain_pem: list[str] = Field(default_factory=list)
    public_key_sha256: str  # the key made by the pem-keygen job, kept on the host


class PemInstallResult(_Body):
    fingerprint: str
    replaced: bool


class SealedPayload(_Body):
    """How the server stores a payload of a ``SEALED_KINDS`` job: sealed, with the ids it needs."""

    sealed: str = Field(max_length=4_000_000)
    connection_id: int | None = None
    binding_id: int | None = None


class StoreTarget(_Body):
    """A platform store connection run on the agent: its connector type and full configuration."""

    name: str = Field(max_length=150, description="The store's name on the platform (for messages)")
    type: str = Field(max_length=64, description="Connector type key, e.g. pkcs12")
    config: dict[str, object] = Field(default_factory=dict)


class VerifyTarget(_Body):
    host: str = Field(max_length=255)
    port: int = Field(ge=1, le=65535)
    sni: str | None = Field(default=None, max_length=255)
    timeout: float = Field(default=15.0, gt=0, le=300)


class StoreDeployPayload(_Body):
    """Put a certificate into a store on the agent's host: add, reload, verify, or roll back."""

    store: StoreTarget
    alias: str = Field(max_length=128)
    certificate_pem: str
    chain_pem: list[str] = Field(default_factory=list, max_length=10)
    private_key_pem: str | None = Field(default=None, description="The key, when the platform holds it")
    key_ref: str | None = Field(
        default=None, max_length=64, description="SHA-256 of the public key of a key this agent made"
    )
    verify: VerifyTarget | None = None


class StoreDeployResult(_Body):
    fingerprint: str
    replaced: bool


class StoreRemovePayload(_Body):
    store: StoreTarget
    alias: str = Field(max_length=128)


class StoreRemoveResult(_Body):
    removed: bool


class StoreInventoryPayload(_Body):
    """Read what the store holds: every entry (up to ``limit``) and each of ``aliases`` directly."""

    store: StoreTarget
    aliases: list[str] = Field(default_factory=list, max_length=10_000)
    limit: int = Field(default=10_000, ge=0, le=100_000)


class WireEntry(_Body):
    alias: str
    certificate_pem: str
    chain_pem: list[str] = Field(default_factory=list)


class StoreInventoryResult(_Body):
    entries: list[WireEntry] = Field(default_factory=list)
    # Per asked alias: the SHA-256 of the certificate held there, or None when it holds nothing.
    held: dict[str, str | None] = Field(default_factory=dict)
    problems: dict[str, str] = Field(default_factory=dict, description="Aliases that could not be read")
    truncated: bool = False
