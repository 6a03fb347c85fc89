"""The agent listener: HTTPS that asks for a client certificate from the agent CA, and the agent routes.

uvicorn does not hand the peer certificate to the application, and a header saying who the client
is could be sent by anyone. So ``sslclm serve --agent-port`` runs a second uvicorn server whose
HTTP protocol class reads the verified certificate from the TLS connection itself and puts it in the
ASGI scope as the TLS extension does (``scope["extensions"]["tls"]["client_cert_chain"]``). The
TLS layer verifies the chain against the agent CA only; the routes then bind the certificate to an
agent record (serial and fingerprint, not revoked) on every request.

The client certificate is optional at the TLS layer (``CERT_OPTIONAL``) for one reason: a new agent
registers before it has one. A certificate that is presented must still verify, or the handshake
fails; every route except ``/agent/v1/ca`` and ``/agent/v1/register`` refuses a request without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import asynccontextmanager
from typing import Annotated, Any, cast

import orjson
from fastapi import Depends, FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from sslclm.agents import hosting, queue, service
from sslclm.agents.ca import AgentCa, load_agent_ca
from sslclm.agents.models import Agent
from sslclm.agents.remote import applier
from sslclm.api.errors import install_error_handlers
from sslclm.core.platform import Platform
from sslclm.core.tls import ServerTls, internal_ca_pem
from sslclm.errors import AuthenticationError, SslClmError
from sslclm.pki.identity import IdentityFacts, identity_facts
from sslclm.protocol import (
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
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
from sslclm.protocol import AgentJob as AgentJobMessage

log = logging.getLogger(__name__)
PREFIX = "/agent/v1"
_FACTS_KEY = "sslclm.identity"
MAX_WAIT_SECONDS = 60
POLL_SECONDS = 1.0


class UnsupportedProtocolError(SslClmError):
    """The agent speaks a protocol version this server does not."""

    http_status = 426
    code = "unsupported-protocol"


class PeerCertificateProtocol(H11Protocol):
    """uvicorn's h11 protocol, with the verified client certificate in every request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        tls = {
            "server_cert": None,
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": None,
            "cipher_suite": None,
        }
        inner = self.app

        async def with_peer_certificate(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})["tls"] = tls
            await inner(scope, receive, send)

        self.app = with_peer_certificate


def _platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def _check_protocol(request: Request) -> None:
    sent = request.headers.get(PROTOCOL_HEADER)
    if sent is not None and sent != str(PROTOCOL_VERSION):
        raise UnsupportedProtocolError(
            f"this server speaks agent protocol {PROTOCOL_VERSION}, the agent sent {sent}; upgrade the agent"
        )


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def peer_facts(request: Request) -> IdentityFacts:
    """Serial and fingerprint of the verified certificate this connection came with (never a header)."""
    _check_protocol(request)
    tls = request.scope.get("extensions", {}).get("tls") or {}
    cached = tls.get(_FACTS_KEY)
    if cached is not None:
        return cast(IdentityFacts, cached)
    chain = tls.get("client_cert_chain") or []
    if not chain:
        raise AuthenticationError("this route needs the agent's client certificate (mutual TLS)")
    facts = identity_facts(chain[0].encode())
    # One parse per connection: the dict lives as long as the connection and its certificate.
    tls[_FACTS_KEY] = facts
    return facts


def current_agent(request: Request) -> Agent:
    """The agent the connection's certificate is bound to, checked against its record now."""
    facts = peer_facts(request)
    platform = _platform(request)
    with platform.sessions() as session:
        agent = service.authenticate(session, facts)
        session.expunge(agent)
    return agent


AgentDep = Annotated[Agent, Depends(current_agent)]


def _json(model: Any, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def create_agent_app(platform: Platform, *, liveness: bool = True) -> FastAPI:
    """The ASGI app of the agent listener (it must run behind :class:`PeerCertificateProtocol`)."""
    ca_holder: dict[str, AgentCa] = {}

    def agent_ca() -> AgentCa:
        if "ca" not in ca_holder:
            ca_holder["ca"] = load_agent_ca(platform)
        return ca_holder["ca"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        agent_ca()
        sweeper = asyncio.create_task(_liveness_loop(platform)) if liveness else None
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper

    app = FastAPI(
        title="SSL-CLM agent endpoints", openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan
    )
    app.state.platform = platform
    install_error_handlers(app)
    server_ca = internal_ca_pem(platform).decode()

    @app.get(f"{PREFIX}/ca")
    def platform_ca() -> Response:
        """The CA the agent pins by fingerprint before it sends its token (public)."""
        return Response(
            orjson.dumps({"server_ca_pem": server_ca, "protocol_version": PROTOCOL_VERSION}),
            media_type="application/json",
        )

    @app.post(f"{PREFIX}/register")
    def register(body: RegisterRequest, request: Request) -> Response:
        """Authenticated by the one-time token in the body, not by a certificate (it has none yet)."""
        _check_protocol(request)
        with platform.sessions() as session:
            answer: RegisterResponse = service.register(
                session,
                agent_ca(),
                body,
                address=_address(request),
                server_ca_pem=server_ca,
                now=platform.clock(),
            )
            session.commit()
        return _json(answer, 201)

    @app.post(f"{PREFIX}/heartbeat")
    def heartbeat(body: HeartbeatRequest, request: Request) -> Response:
        # The busiest route: the identity check and the update share one transaction.
        facts = peer_facts(request)
        with platform.sessions() as session:
            agent = service.authenticate(session, facts)
            answer: HeartbeatResponse = service.heartbeat(
                session, agent, body, address=_address(request), now=platform.clock()
            )
            session.commit()
        return _json(answer)

    def _claim(agent: Agent, limit: int) -> list[AgentJobMessage]:
        with platform.sessions() as session:
            jobs = queue.claim(session, agent, now=platform.clock(), limit=limit)
            session.commit()
        return [hosting.opened(platform, job) for job in jobs]

    @app.get(f"{PREFIX}/jobs")
    async def fetch_jobs(
        request: Request,
        wait: Annotated[int, Query(ge=0, le=MAX_WAIT_SECONDS)] = 25,
        limit: Annotated[int, Query(ge=1, le=50)] = 10,
    ) -> Response:
        """Long poll: answers as soon as there is work, or with no jobs after ``wait`` seconds."""
        agent = await run_in_threadpool(current_agent, request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            jobs = await run_in_threadpool(_claim, agent, limit)
            if jobs or loop.time() >= deadline or await request.is_disconnected():
                return _json(JobBatch(jobs=jobs))
            await asyncio.sleep(min(POLL_SECONDS, max(deadline - loop.time(), 0)))

    @app.get(f"{PREFIX}/jobs/{{job_id}}")
    def get_job(job_id: int, agent: AgentDep) -> Response:
        with platform.sessions() as session:
            job = queue.job_for_agent(session, agent, job_id)
            message = AgentJobMessage(id=job.id, attempt=job.attempt, kind=job.kind, payload=job.payload)
        return _json(hosting.opened(platform, message))

    @app.post(f"{PREFIX}/jobs/{{job_id}}/progress", status_code=204)
    def progress(job_id: int, body: ProgressEvent, agent: AgentDep) -> Response:
        with platform.sessions() as session:
            queue.report_progress(session, agent, job_id, body, now=platform.clock())
            session.commit()
        return Response(status_code=204)

    @app.post(f"{PREFIX}/jobs/{{job_id}}/result")
    def result(job_id: int, body: JobResult, agent: AgentDep) -> Response:
        with platform.sessions() as session:
            ack: ResultAck = queue.accept_result(
                session, agent, job_id, body, now=platform.clock(), apply=applier(platform)
            )
            session.commit()
        return _json(ack)

    @app.post(f"{PREFIX}/identity/renew")
    def renew(body: RenewRequest, agent: AgentDep) -> Response:
        with platform.sessions() as session:
            pem, not_after = service.renew_identity(
                session, agent_ca(), agent, body.csr_pem, now=platform.clock()
            )
            session.commit()
        return _json(RenewResponse(certificate_pem=pem, not_after=not_after))

    return app


async def _liveness_loop(platform: Platform) -> None:
    """Marks quiet agents offline every heartbeat interval, so a listener notices within one interval
    (the ``agents.liveness`` task does the same every minute where no listener runs)."""
    while True:
        await asyncio.sleep(service.heartbeat_seconds())
        try:
            await run_in_threadpool(_sweep_once, platform)
        except Exception as exc:  # the database may be restarting; try again next interval
            log.warning("agent liveness sweep failed: %s", exc)


def _sweep_once(platform: Platform) -> None:
    with platform.sessions() as session:
        service.mark_offline(session, now=platform.clock())
        session.commit()


def agent_listener_config(
    platform: Platform, *, host: str, port: int, tls: ServerTls, log_level: str, liveness: bool = True
) -> Any:
    """The uvicorn configuration of the agent listener (server certificate, agent CA as client trust)."""
    import uvicorn

    ca = load_agent_ca(platform)
    return uvicorn.Config(
        create_agent_app(platform, liveness=liveness),
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        proxy_headers=False,  # the peer address is the agent's; no header can claim otherwise
        http=PeerCertificateProtocol,
        ssl_certfile=str(tls.cert_file),
        ssl_keyfile=str(tls.key_file),
        ssl_ca_certs=str(ca.cert_file),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        timeout_keep_alive=max(service.heartbeat_seconds() * 3, 75),
        lifespan="on",
    )


class FollowerServer:
    """Wraps a uvicorn server that leaves the process's signals to the main server."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        class _Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                yield

        self.server = _Quiet(config)

    async def serve(self) -> None:
        await self.server.serve()

    def stop(self) -> None:
        self.server.should_exit = True


def run_with_agent_listener(
    main_config: Any, agent_config: Any, on_exit: Callable[[], None] | None = None
) -> None:
    """Runs the API server and the agent listener in one event loop until the API server stops."""
    import uvicorn

    async def both() -> None:
        follower = FollowerServer(agent_config)
        agents = asyncio.create_task(follower.serve())
        try:
            await uvicorn.Server(main_config).serve()
        finally:
            follower.stop()
            await agents
            if on_exit is not None:
                on_exit()

    asyncio.run(both())
