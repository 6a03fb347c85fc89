"""``/metrics``: job durations per kind and state over the recent window, and agents by status."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from conftest import ApiUser
from sslclm.agents.models import Agent, AgentStatus
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.jobs import queue
from sslclm.jobs.models import JobStatus
from sslclm.reporting.metrics import JOB_WINDOW, render


def _finished(platform: Platform, kind: str, status: JobStatus, seconds: float, ago: timedelta) -> None:
    """A job of ``kind`` that ran for ``seconds`` and ended ``ago`` before now."""
    end = platform.clock() - ago
    with session_scope(platform.sessions) as session:
        job = queue.enqueue(session, kind, {}, now=end - timedelta(seconds=seconds))
        job.status, job.finished_at, job.updated_at = status.value, end, end


def _agent(platform: Platform, name: str, status: AgentStatus) -> None:
    now = platform.clock()
    with session_scope(platform.sessions) as session:
        session.add(
            Agent(
                name=name,
                status=status.value,
                cert_serial=name,
                cert_fingerprint=name.ljust(64, "0"),
                cert_not_after=now + timedelta(days=30),
                registered_at=now,
            )
        )


def _samples(text: str, family: str) -> dict[str, float]:
    """``name{label="value",...}`` (labels sorted by name) -> value, for the samples of one family
    (in the text format a gauge histogram's _gcount and _gsum come as gauges of their own)."""
    found = {}
    for metrics in text_string_to_metric_families(text):
        for sample in metrics.samples:
            if sample.name != family and not sample.name.startswith(f"{family}_"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def test_job_durations_by_kind_and_state_cover_the_recent_window_only(platform: Platform) -> None:
    minute = timedelta(minutes=1)
    _finished(platform, "inventory.import", JobStatus.SUCCEEDED, 0.5, minute)
    _finished(platform, "inventory.import", JobStatus.SUCCEEDED, 20, minute)
    _finished(platform, "inventory.import", JobStatus.SUCCEEDED, 4000, 2 * minute)
    _finished(platform, "inventory.import", JobStatus.FAILED, 45, minute)
    # Finished before the window: not counted anywhere.
    _finished(platform, "discovery.scan", JobStatus.SUCCEEDED, 10, JOB_WINDOW + minute)
    with session_scope(platform.sessions) as session:
        queue.enqueue(session, "discovery.scan", {}, now=platform.clock())  # still queued

    text = render(platform).decode()
    assert "# TYPE sslclm_job_duration_seconds histogram" in text
    durations = _samples(text, "sslclm_job_duration_seconds")

    def bucket(state: str, le: str) -> float:
        return durations[
            f'sslclm_job_duration_seconds_bucket{{kind="inventory.import",le="{le}",state="{state}"}}'
        ]

    assert [bucket("succeeded", le) for le in ("1.0", "5.0", "30.0", "3600.0", "+Inf")] == [1, 1, 2, 2, 3]
    ok = 'kind="inventory.import",state="succeeded"'
    assert durations[f"sslclm_job_duration_seconds_gcount{{{ok}}}"] == 3.0
    assert abs(durations[f"sslclm_job_duration_seconds_gsum{{{ok}}}"] - 4020.5) < 0.01
    assert (bucket("failed", "30.0"), bucket("failed", "60.0")) == (0.0, 1.0)
    # Labels are the kind and the final state only: the old scan and the queued one add no series.
    assert not any("discovery.scan" in key for key in durations)
    assert 'sslclm_jobs{state="queued"} 1.0' in text


def test_agents_by_status_are_counted_on_each_render(
    platform: Platform, client: TestClient, api_users: dict[str, ApiUser]
) -> None:
    _agent(platform, "web-1", AgentStatus.ONLINE)
    _agent(platform, "web-2", AgentStatus.ONLINE)
    _agent(platform, "db-1", AgentStatus.OFFLINE)
    first = client.get("/metrics", headers=api_users["viewer"].headers)
    assert first.status_code == 200
    agents = _samples(first.text, "sslclm_agents")
    assert agents == {
        'sslclm_agents{status="online"}': 2.0,
        'sslclm_agents{status="offline"}': 1.0,
        'sslclm_agents{status="revoked"}': 0.0,
    }
    # Unlike the inventory counts, agents are not read from the snapshot.
    _agent(platform, "web-3", AgentStatus.ONLINE)
    assert 'sslclm_agents{status="online"} 3.0' in render(platform).decode()
