"""What the server does with an agent's result, in the transaction that accepts it.

- ``discover-filesystem``: every finding goes into the inventory as a ``file`` sighting whose
  location is ``<agent name>:<path>`` and whose details name the agent (two hosts may hold the same
  path), through the same inventory writer as every other discovery.
- ``pem-keygen`` and ``pem-install``: steps of a remote enrollment; the waiting server job is
  resumed with what the agent answered (see ``sslclm.agents.tasks``).
- ``store-deploy`` and ``store-remove``: the waiting ``certificate.deploy`` job is resumed (see
  ``sslclm.agents.deploy``); ``store-inventory``: compared with the bindings and written into the
  inventory (see ``sslclm.agents.validation``). Their sealed payloads are dropped once done.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from sqlalchemy.orm import Session

from sslclm.agents.hosting import forget_payload
from sslclm.agents.models import Agent, AgentJob
from sslclm.agents.queue import ResultApplier
from sslclm.agents.validation import apply_inventory
from sslclm.core.platform import Platform
from sslclm.discovery.connectors import _describe_sightings
from sslclm.errors import ConflictError, InvalidInputError
from sslclm.inventory.writer import InventoryWriter, ParsedFile
from sslclm.jobs.models import Job, JobStatus
from sslclm.jobs.queue import resume
from sslclm.pki import parse_certificate
from sslclm.protocol import DISCOVER_FILESYSTEM, STORE_INVENTORY, DiscoverFilesystemResult, JobResult
from sslclm.spi import Finding, Sighting, SightingKind

MAX_FINDINGS = 100_000


def _der(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError("a finding's certificate is not base64", field="result") from None


def record_findings(
    session: Session, platform: Platform, agent: Agent, result: DiscoverFilesystemResult, now: datetime
) -> int:
    """Writes the findings into the inventory; returns how many certificates were new."""
    if len(result.findings) > MAX_FINDINGS:
        raise InvalidInputError(f"at most {MAX_FINDINGS} findings per result", field="result")
    files: list[ParsedFile] = []
    findings: list[Finding] = []
    for wire in result.findings:
        ders = [_der(wire.certificate_der_b64), *(_der(c) for c in wire.chain_der_b64)]
        try:
            infos = [parse_certificate(der) for der in ders]
        except ValueError:
            continue  # the agent parsed it; a certificate we cannot read is skipped, not fatal
        location = f"{agent.name}:{wire.location}"
        details = {**wire.details, "agent": agent.name, "agent_id": agent.id}
        sighting = Sighting(
            kind=SightingKind.FILE,
            seen_at=now,
            location=location,
            host=wire.host or agent.hostname,
            path=wire.path,
            details=details,
        )
        files.append(ParsedFile(location, infos, format=str(wire.details.get("format") or "") or None))
        findings.append(Finding(certificate_der=ders[0], sighting=sighting, chain_der=tuple(ders[1:])))
    if not files:
        return 0
    writer = InventoryWriter(platform, source=f"agent:{agent.name}", sighting_kind=SightingKind.FILE.value)
    written = writer.write(session, files, now=now)
    _describe_sightings(session, SightingKind.FILE.value, findings)
    return written.inserted


def resume_waiting_job(session: Session, job: AgentJob, result: JobResult, now: datetime) -> None:
    """Hands the agent's answer to the server job that waits for it."""
    if job.job_id is None:
        return
    waiting = session.get(Job, job.job_id)
    if waiting is None or waiting.status != JobStatus.WAITING:
        raise ConflictError(f"job {job.job_id} no longer waits for agent job {job.id}", field="job_id")
    state: dict[str, object] = {
        f"agent_{job.kind.replace('-', '_')}": result.result,
        "agent_error": result.error,
    }
    resume(session, waiting.id, now=now, state=state, message=f"agent job {job.id} {result.status}")


def applier(platform: Platform) -> ResultApplier:
    """The function ``accept_result`` calls to apply a result of any kind."""

    def apply(session: Session, agent: Agent, job: AgentJob, result: JobResult) -> None:
        now = platform.clock()
        if job.kind == DISCOVER_FILESYSTEM and result.status == "succeeded":
            parsed = DiscoverFilesystemResult.model_validate(result.result)
            inserted = record_findings(session, platform, agent, parsed, now)
            # Only a summary stays on the job row: the inventory holds the certificates.
            job.result = {
                "findings": len(parsed.findings),
                "new_certificates": inserted,
                "problems": parsed.problems,
            }
            session.flush()
        if job.kind == STORE_INVENTORY:
            job.result = apply_inventory(
                session, platform, agent, job, result.status, result.result, result.error
            )
        forget_payload(job)
        session.flush()
        resume_waiting_job(session, job, result, now)

    return apply
