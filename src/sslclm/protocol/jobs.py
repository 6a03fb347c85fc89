"""The job kinds an agent runs, with their payloads and results."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DISCOVER_FILESYSTEM = "discover-filesystem"
PEM_KEYGEN = "pem-keygen"
PEM_INSTALL = "pem-install"
JOB_KINDS = (DISCOVER_FILESYSTEM, PEM_KEYGEN, PEM_INSTALL)


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
