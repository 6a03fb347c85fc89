"""The agent rules on both databases: one-time tokens, per-agent jobs, results accepted once, liveness."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sslclm.agents import queue, service
from sslclm.agents.ca import load_agent_ca
from sslclm.agents.models import Agent, AgentJob
from sslclm.agents.remote import applier
from sslclm.audit.service import AuditContext
from sslclm.core.platform import Platform
from sslclm.errors import AuthenticationError, ConflictError, NotFoundError, PermissionDeniedError
from sslclm.pki.identity import IdentityFacts, identity_facts, new_identity_request
from sslclm.protocol import AgentCapabilities, JobResult, RegisterRequest

CTX = AuditContext(actor="test")


def _register(platform: Platform, name: str, *, labels: tuple[str, ...] = ()) -> Agent:
    ca = load_agent_ca(platform)
    with platform.sessions() as session:
        now = platform.clock()
        token = service.create_token(
            session, CTX, labels=list(labels), description="", ttl=timedelta(hours=1), now=now
        )
        _, csr = new_identity_request(name)
        body = RegisterRequest(
            token=token.secret,
            name=name,
            csr_pem=csr,
            labels=list(labels),
            capabilities=AgentCapabilities(job_kinds=["discover-filesystem"]),
        )
        answer = service.register(session, ca, body, address="127.0.0.1", server_ca_pem="", now=now)
        session.commit()
        facts = identity_facts(answer.certificate_pem.encode())
        agent = service.authenticate(session, facts)
        session.expunge(agent)
        return agent


def test_a_token_registers_one_agent_only(platform: Platform) -> None:
    ca = load_agent_ca(platform)
    with platform.sessions() as session:
        token = service.create_token(
            session, CTX, labels=[], description="", ttl=timedelta(hours=1), now=platform.clock()
        )
        session.commit()
    for name, expected in (("one", None), ("two", "used")):
        _, csr = new_identity_request(name)
        body = RegisterRequest(token=token.secret, name=name, csr_pem=csr)
        with platform.sessions() as session:
            if expected is None:
                service.register(session, ca, body, address=None, server_ca_pem="", now=platform.clock())
                session.commit()
            else:
                with pytest.raises(AuthenticationError, match=expected):
                    service.register(session, ca, body, address=None, server_ca_pem="", now=platform.clock())


def test_an_agent_gets_only_its_own_jobs_and_a_result_counts_once(platform: Platform) -> None:
    first, second = _register(platform, "first", labels=("web",)), _register(platform, "second")
    with platform.sessions() as session:
        mine = queue.dispatch(
            session, CTX, kind="discover-filesystem", payload={}, agent=first, now=platform.clock()
        )
        by_label = queue.dispatch(
            session, CTX, kind="discover-filesystem", payload={}, label="web", now=platform.clock()
        )
        session.commit()
        ids = {mine.id, by_label.id}
    with platform.sessions() as session:
        assert queue.claim(session, second, now=platform.clock()) == []
        claimed = queue.claim(session, first, now=platform.clock())
        session.commit()
    assert {job.id for job in claimed} == ids
    with platform.sessions() as session, pytest.raises(PermissionDeniedError):
        queue.job_for_agent(session, second, mine.id)
    result = JobResult(attempt=1, status="succeeded", result={"findings": []})
    acks = []
    for _ in range(2):
        with platform.sessions() as session:
            acks.append(
                queue.accept_result(
                    session, first, mine.id, result, now=platform.clock(), apply=applier(platform)
                )
            )
            session.commit()
    assert [ack.recorded for ack in acks] == [True, False]
    with platform.sessions() as session, pytest.raises(ConflictError, match="stale"):
        stale = JobResult(attempt=2, status="succeeded", result={"findings": []})
        queue.accept_result(session, first, by_label.id, stale, now=platform.clock(), apply=applier(platform))
    with platform.sessions() as session:
        row = session.get(AgentJob, mine.id)
        assert (
            row is not None
            and row.status == "succeeded"
            and row.result
            == {
                "findings": 0,
                "new_certificates": 0,
                "problems": 0,
            }
        )


def test_quiet_agents_go_offline_and_revoked_ones_are_refused(platform: Platform) -> None:
    agent = _register(platform, "quiet")
    later = platform.clock() + timedelta(minutes=10)
    with platform.sessions() as session:
        stale = service.mark_offline(session, now=later, interval_seconds=30)
        session.commit()
    assert [a.name for a in stale] == ["quiet"]
    with platform.sessions() as session:
        service.revoke_agent(session, CTX, "quiet", now=later)
        session.commit()
        stored = session.get(Agent, agent.id)
        assert stored is not None
        with pytest.raises(PermissionDeniedError, match="revoked"):
            service.authenticate(session, _facts_of(stored))


def _facts_of(agent: Agent) -> IdentityFacts:
    return IdentityFacts(
        serial=agent.cert_serial,
        fingerprint=agent.cert_fingerprint,
        not_after=agent.cert_not_after,
        common_name=agent.name,
    )


def test_a_renewed_identity_replaces_the_old_certificate(platform: Platform) -> None:
    agent = _register(platform, "renewing")
    old = _facts_of(agent)
    ca = load_agent_ca(platform)
    _, csr = new_identity_request("renewing")
    with platform.sessions() as session:
        pem, not_after = service.renew_identity(session, ca, agent, csr, now=platform.clock())
        session.commit()
    new = identity_facts(pem.encode())
    assert new.fingerprint != old.fingerprint and not_after == new.not_after
    with platform.sessions() as session:
        assert service.authenticate(session, new).id == agent.id
        with pytest.raises(AuthenticationError, match="no registered agent"):
            service.authenticate(session, old)


def test_an_agent_reference_too_long_for_an_id_is_not_found(platform: Platform) -> None:
    agent = _register(platform, "digits-host")
    with platform.sessions() as session:
        assert service.get_agent(session, str(agent.id)).name == "digits-host"
        with pytest.raises(NotFoundError):
            service.get_agent(session, "9" * 60)
