"""Envelope messages: registration, heartbeat, job fetch, progress, results, identity renewal."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = 1
PROTOCOL_HEADER = "X-SSLCLM-Agent-Protocol"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
LABEL_PATTERN = r"^[a-z0-9][a-z0-9._:-]{0,62}$"


class Message(BaseModel):
    # Unknown fields are ignored, so a newer peer may add fields without breaking an older one.
    model_config = ConfigDict(extra="ignore", frozen=True)


class AgentCapabilities(Message):
    """What the agent declares about itself at registration and in heartbeats."""

    connectors: list[str] = Field(default_factory=list, max_length=100, description="Connector type keys")
    job_kinds: list[str] = Field(default_factory=list, max_length=100)
    os: str = Field(default="", max_length=100)
    version: str = Field(default="", max_length=50)
    hostname: str = Field(default="", max_length=255)
    paths: list[str] = Field(default_factory=list, max_length=1000, description="Paths it may read or write")


class RegisterRequest(Message):
    token: str = Field(min_length=8, max_length=200)
    name: str = Field(pattern=NAME_PATTERN)
    csr_pem: str = Field(max_length=20_000)
    labels: list[str] = Field(default_factory=list, max_length=50)
    capabilities: AgentCapabilities = Field(default_factory=lambda: AgentCapabilities())


class RegisterResponse(Message):
    agent_id: int
    name: str
    certificate_pem: str
    agent_ca_pem: str  # the issuer of the identity; the agent presents it as its client chain
    server_ca_pem: str  # the CA the agent pins for the server from now on
    not_after: datetime
    heartbeat_seconds: int


class HeartbeatRequest(Message):
    status: Literal["ok", "degraded"] = "ok"
    version: str = Field(default="", max_length=50)
    capabilities: AgentCapabilities | None = None
    running_jobs: list[int] = Field(default_factory=list, max_length=1000)
    pending_results: int = 0


class HeartbeatResponse(Message):
    agent_id: int
    server_time: datetime
    heartbeat_seconds: int
    renew_after: datetime  # when the agent should ask for a new identity


class AgentJob(Message):
    id: int
    attempt: int
    kind: str
    payload: dict[str, Any]


class JobBatch(Message):
    jobs: list[AgentJob]


class ProgressEvent(Message):
    attempt: int
    message: str = Field(max_length=2000)


class JobResult(Message):
    """A finished job; (job id, attempt) makes the upload idempotent."""

    attempt: int = Field(ge=1)
    status: Literal["succeeded", "failed"]
    error: str | None = Field(default=None, max_length=2000)
    result: dict[str, Any] = Field(default_factory=dict)


class ResultAck(Message):
    job_id: int
    attempt: int
    recorded: bool  # False when this result had been recorded before (a repeated upload)


class RenewRequest(Message):
    csr_pem: str = Field(max_length=20_000)


class RenewResponse(Message):
    certificate_pem: str
    not_after: datetime
