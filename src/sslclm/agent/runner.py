"""``sslclm agent run``: heartbeats, long-polled jobs, results kept on disk until acknowledged.

Three loops share one identity: a heartbeat thread, the job loop (fetch, run, spool, upload) and
the renewal check inside the heartbeat. A result is written to ``<state_dir>/results`` before the
first upload and deleted only when the server acknowledged it, so a server that is down, restarts or
loses the answer gets the same result again later; the server applies it once per (job, attempt).
"""

from __future__ import annotations

import json
import logging
import platform as host_platform
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

from sslclm import __version__
from sslclm.agent.client import AgentClient, ServerUnavailableError, fetch_pinned_ca, post_registration
from sslclm.agent.config import AgentConfig
from sslclm.agent.identity import Identity, private_dir, write_private
from sslclm.agent.jobs import JobRunner
from sslclm.agent.stores import store_types
from sslclm.errors import AuthenticationError, ConfigurationError, PermissionDeniedError, SslClmError
from sslclm.pki.identity import csr_for_pem_key, identity_facts, new_identity_request
from sslclm.protocol import (
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

log = logging.getLogger(__name__)
MAX_BACKOFF = 60.0


def capabilities(config: AgentConfig, runner: JobRunner) -> AgentCapabilities:
    return AgentCapabilities(
        connectors=["filesystem", *store_types()],
        job_kinds=runner.kinds,
        os=f"{host_platform.system()} {host_platform.release()}",
        version=__version__,
        hostname=socket.gethostname(),
        paths=config.allowed_paths(),
    )


def register(config: AgentConfig, token: str, ca_fingerprint: str) -> RegisterResponse:
    """First contact: pin the server's CA, send the CSR and the token, keep the identity owner-only."""
    if config.server is None:
        raise ConfigurationError("no server URL: pass --server or set server in the configuration")
    state = Path(config.state_dir)
    private_dir(state)
    identity = Identity(state / "identity")
    if identity.exists:
        raise ConfigurationError(
            f"{identity.directory} already holds an identity; remove it to register again"
        )
    name = config.name or socket.gethostname()
    ca_pem = fetch_pinned_ca(config.server, ca_fingerprint)
    key_pem, csr_pem = new_identity_request(name)
    runner = JobRunner(config, state)
    body = RegisterRequest(
        token=token,
        name=name,
        csr_pem=csr_pem,
        labels=config.labels,
        capabilities=capabilities(config, runner),
    )
    answer = post_registration(config.server, ca_pem, body, RegisterResponse)
    identity.save(
        key_pem=key_pem,
        cert_pem=answer.certificate_pem,
        agent_ca_pem=answer.agent_ca_pem,
        server_ca_pem=answer.server_ca_pem,
        meta={"agent_id": answer.agent_id, "name": answer.name, "server": config.server},
    )
    return answer


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state = Path(config.state_dir)
        self.identity = Identity(self.state / "identity")
        self.identity.check()
        meta = self.identity.meta()
        self.server: str = config.server or str(meta["server"])
        self.name = str(meta["name"])
        self.runner = JobRunner(config, self.state)
        self.results = private_dir(self.state / "results")
        self.stopping = threading.Event()
        self.heartbeat_seconds = 30
        self.renew_after: datetime | None = None
        self._client_lock = threading.Lock()
        self._client = AgentClient(self.server, self.identity.ssl_context())
        self._running: set[int] = set()
        self.refused: str | None = None  # why the server turned this agent away, if it did

    # --- plumbing ----------------------------------------------------------------------------------

    def client(self) -> AgentClient:
        with self._client_lock:
            return self._client

    def _reconnect(self) -> None:
        with self._client_lock:
            old, self._client = self._client, AgentClient(self.server, self.identity.ssl_context())
        old.close()

    def stop(self) -> None:
        self.stopping.set()

    # --- heartbeat and identity ----------------------------------------------------------------------

    def heartbeat(self) -> HeartbeatResponse:
        body = HeartbeatRequest(
            version=__version__,
            capabilities=capabilities(self.config, self.runner),
            running_jobs=sorted(self._running),
            pending_results=len(list(self.results.glob("*.json"))),
        )
        answer = self.client().call("POST", "/agent/v1/heartbeat", body, HeartbeatResponse)
        assert answer is not None
        self.heartbeat_seconds = answer.heartbeat_seconds
        self.renew_after = answer.renew_after
        return answer

    def renew_if_due(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        facts = identity_facts(self.identity.cert_pem())
        due = self.renew_after if self.renew_after is not None else facts.not_after
        if now < due:
            return False
        csr = csr_for_pem_key(self.identity.key_pem(), self.name)
        answer = self.client().call(
            "POST", "/agent/v1/identity/renew", RenewRequest(csr_pem=csr), RenewResponse
        )
        assert answer is not None
        self.identity.replace_certificate(answer.certificate_pem)
        self._reconnect()
        log.info("identity renewed until %s", answer.not_after.isoformat())
        return True

    def _heartbeat_loop(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                self.heartbeat()
                self.renew_if_due()
                backoff = 1.0
                wait = float(self.heartbeat_seconds)
            except (AuthenticationError, PermissionDeniedError) as exc:
                log.error("the server refuses this agent: %s", exc.message)
                self.refused = exc.message
                self.stop()
                return
            except SslClmError as exc:
                log.warning("heartbeat failed: %s (retrying in %.0f s)", exc.message, backoff)
                wait, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
            self.stopping.wait(wait)

    # --- results on disk ---------------------------------------------------------------------------

    def _result_path(self, job: AgentJob) -> Path:
        return self.results / f"{job.id}-{job.attempt}.json"

    def spool(self, job: AgentJob, result: JobResult) -> Path:
        path = self._result_path(job)
        write_private(path, json.dumps({"job_id": job.id, "result": result.model_dump(mode="json")}).encode())
        return path

    def upload_pending(self) -> int:
        """Uploads every spooled result; returns how many remain (the server could not be reached)."""
        remaining = 0
        for path in sorted(self.results.glob("*.json")):
            data = json.loads(path.read_text())
            result = JobResult.model_validate(data["result"])
            try:
                self.client().call("POST", f"/agent/v1/jobs/{data['job_id']}/result", result, ResultAck)
            except ServerUnavailableError:
                remaining += 1
                continue
            except SslClmError as exc:
                # Refused for good (stale attempt, job cancelled): keeping it would retry forever.
                log.warning("result of job %s dropped: %s", data["job_id"], exc.message)
            path.unlink(missing_ok=True)
        return remaining

    # --- jobs --------------------------------------------------------------------------------------

    def execute(self, job: AgentJob) -> JobResult:
        def progress(message: str) -> None:
            try:
                self.client().call(
                    "POST",
                    f"/agent/v1/jobs/{job.id}/progress",
                    ProgressEvent(attempt=job.attempt, message=message),
                    None,
                )
            except SslClmError as exc:  # progress is best effort; the result is what counts
                log.info("progress of job %s not sent: %s", job.id, exc.message)

        self._running.add(job.id)
        try:
            data = self.runner.run(job.kind, dict(job.payload), progress)
            return JobResult(attempt=job.attempt, status="succeeded", result=data)
        except SslClmError as exc:
            return JobResult(attempt=job.attempt, status="failed", error=exc.message[:2000])
        except Exception as exc:
            return JobResult(
                attempt=job.attempt, status="failed", error=f"{type(exc).__name__}: {exc}"[:2000]
            )
        finally:
            self._running.discard(job.id)

    def fetch(self) -> list[AgentJob]:
        batch = self.client().call("GET", "/agent/v1/jobs", None, JobBatch, wait=self.config.poll_seconds)
        assert batch is not None
        return list(batch.jobs)

    def run_forever(self) -> None:
        beat = threading.Thread(target=self._heartbeat_loop, name="sslclm-agent-heartbeat", daemon=True)
        beat.start()
        backoff = 1.0
        log.info("agent %s talking to %s", self.name, self.server)
        while not self.stopping.is_set():
            try:
                if self.upload_pending():
                    raise ServerUnavailableError("results still waiting for the server")
                for job in self.fetch():
                    if self._result_path(job).exists():
                        continue  # finished before; its upload is pending
                    result = self.execute(job)
                    self.spool(job, result)
                    self.upload_pending()
                backoff = 1.0
            except (AuthenticationError, PermissionDeniedError) as exc:
                log.error("the server refuses this agent: %s", exc.message)
                self.refused = exc.message
                self.stop()
                break
            except SslClmError as exc:
                log.warning("%s (retrying in %.0f s)", exc.message, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        self.client().close()
