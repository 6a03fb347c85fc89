"""Messages between agents and the server, shared by both sides (pydantic models, JSON on the wire).

The protocol is versioned: every request carries ``PROTOCOL_VERSION`` in the ``X-SSLCLM-Agent-Protocol``
header, and the server refuses versions it does not speak with 426. Fields may be added in a
compatible way (with defaults); anything else raises the version. This package imports only pydantic,
so the agent stays light.
"""

from __future__ import annotations

from sslclm.protocol.jobs import (
    DISCOVER_FILESYSTEM,
    JOB_KINDS,
    PEM_INSTALL,
    PEM_KEYGEN,
    DiscoverFilesystemPayload,
    DiscoverFilesystemResult,
    PemInstallPayload,
    PemInstallResult,
    PemKeygenPayload,
    PemKeygenResult,
    WireFinding,
)
from sslclm.protocol.messages import (
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    AgentCapabilities,
    AgentJob,
    HeartbeatRequest,
    HeartbeatResponse,
    JobBatch,
    JobResult,
    ProgressEvent,
    RegisterRequest,
    RegisterResponse,
    RenewRequest,
    RenewResponse,
    ResultAck,
)

__all__ = [
    "DISCOVER_FILESYSTEM",
    "JOB_KINDS",
    "PEM_INSTALL",
    "PEM_KEYGEN",
    "PROTOCOL_HEADER",
    "PROTOCOL_VERSION",
    "AgentCapabilities",
    "AgentJob",
    "DiscoverFilesystemPayload",
    "DiscoverFilesystemResult",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "JobBatch",
    "JobResult",
    "PemInstallPayload",
    "PemInstallResult",
    "PemKeygenPayload",
    "PemKeygenResult",
    "ProgressEvent",
    "RegisterRequest",
    "RegisterResponse",
    "RenewRequest",
    "RenewResponse",
    "ResultAck",
    "WireFinding",
]
