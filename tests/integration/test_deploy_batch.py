"""Deployments in batches (certificate.deploy-batch): pem-files stores in temporary directories and
Secrets Manager on moto's server, run by a real worker after real renewal batches."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from sslclm.audit.models import AuditEvent
from sslclm.audit.service import AuditContext, verify_chain
from sslclm.core.platform import Platform
from sslclm.deployments.models import Deployment, StoreBinding
from sslclm.deployments.service import (
    DEPLOY_BATCH_TASK,
    DEPLOY_TASK,
    BindingInput,
    create_binding,
    deploys_in_batch,
    enqueue_deployments_of,
)
from sslclm.deployments.tasks import fingerprint_of
from sslclm.inventory.models import Certificate
from sslclm.jobs.models import Job
from sslclm.jobs.queue import enqueue
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.workflows.managed import enqueue_due_renewals
from sslclm.workflows.models import ManagedCertificate
from tests.conftest import ApiUser
from tests.support.moto_server import REGION, moto_server, reset, store_config

API = "/api/v1"
COUNT = 3


def run_jobs(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=2, poll_interval=0.05).run_until_idle(timeout=120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture
def enrolled(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, tmp_path: Path
) -> dict[str, Any]:
    """``COUNT`` managed certificates of the built-in CA and a pem-files store in a temporary directory."""
    admin = api_users["admin"].headers
    made = client.post(
        f"{API}/ca-connections", json={"name": "internal", "type": "local", "config": {}}, headers=admin
    )
    assert made.status_code == 201, made.text
    profile = {"name": "web", "ca_connection": "internal", "validity_days": 30}
    assert client.post(f"{API}/profiles", json=profile, headers=admin).status_code == 201
    ids = []
    for n in range(COUNT):
        created = client.post(
            f"{API}/managed-certificates",
            json={"dns_names": [f"d{n}.example.com"], "profile": "web"},
            headers=api_users["operator"].headers,
        )
        assert created.status_code == 202, created.text
        ids.append(created.json()["id"])
    directory = tmp_path / "files"
    directory.mkdir()
    store = client.post(
        f"{API}/stores",
        json={"name": "files", "type": "pem-files", "config": {"directory": str(directory)}},
        headers=admin,
    )
    assert store.status_code == 201, store.text
    run_jobs(platform)
    return {"ids": ids, "directory": directory}


def bind(
    client: TestClient, operator: dict[str, str], managed_id: int, store: str, alias: str, **extra: Any
) -> int:
    bound = client.post(
        f"{API}/bindings",
        json={"managed_certificate": str(managed_id), "store": store, "alias": alias, **extra},
        headers=operator,
    )
    assert bound.status_code == 201, bound.text
    binding_id: int = bound.json()["id"]
    return binding_id


def renew_in_batch(platform: Platform, ids: list[int]) -> None:
    """Makes the managed certificates due and runs the scheduler's tick and every job it leads to."""
    with platform.sessions() as session:
        session.execute(
            update(ManagedCertificate)
            .where(ManagedCertificate.id.in_(ids))
            .values(renew_at=platform.clock() - timedelta(minutes=1))
        )
        assert enqueue_due_renewals(session, now=platform.clock()) == 1
        session.commit()
    run_jobs(platform)


def current_fingerprints(platform: Platform, ids: list[int]) -> dict[int, str]:
    with platform.sessions() as session:
        rows = session.execute(
            select(ManagedCertificate.id, Certificate.fingerprint_sha256)
            .join(Certificate, Certificate.id == ManagedCertificate.current_certificate_id)
            .where(ManagedCertificate.id.in_(ids))
        ).all()
    return {int(managed_id): str(fingerprint) for managed_id, fingerprint in rows}


def batch_jobs(platform: Platform) -> list[Job]:
    with platform.sessions() as session:
        jobs = list(session.execute(select(Job).where(Job.kind == DEPLOY_BATCH_TASK)).scalars())
        session.expunge_all()
    return jobs


@pytest.mark.parametrize(
    ("type_key", "agent_id", "agent_label", "verify_host", "expected"),
    [
        ("pem-files", None, None, None, True),
        ("aws-secrets-manager", None, None, None, True),
        ("pkcs12", None, None, None, True),
        ("nginx", None, None, None, False),  # reloads: the single path reloads, verifies and rolls back
        ("haproxy", None, None, None, False),
        ("pem-files", None, None, "127.0.0.1", False),  # an endpoint to verify by a handshake
        ("pem-files", 7, None, None, False),  # run by an agent
        ("pem-files", None, "web-hosts", None, False),  # run by an agent with that label
        ("no-such-store", None, None, None, False),
    ],
)
def test_which_bindings_deploy_in_batches(
    type_key: str, agent_id: int | None, agent_label: str | None, verify_host: str | None, expected: bool
) -> None:
    decided = deploys_in_batch(type_key, agent_id=agent_id, agent_label=agent_label, verify_host=verify_host)
    assert decided is expected


def test_a_renewal_batch_deploys_its_bindings_in_one_batch_job(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, enrolled: dict[str, Any]
) -> None:
    operator = api_users["operator"].headers
    ids: list[int] = enrolled["ids"]
    directory: Path = enrolled["directory"]
    bindings = {
        managed_id: bind(client, operator, managed_id, "files", f"m{n}") for n, managed_id in enumerate(ids)
    }
    # A binding with an endpoint to verify keeps its own job (nothing listens there: it fails).
    checked = bind(
        client,
        operator,
        ids[0],
        "files",
        "checked",
        options={"verify_timeout": 0.2},
        verify={"host": "127.0.0.1", "port": free_port()},
    )
    run_jobs(platform)  # binding deploys right away, one job each
    assert batch_jobs(platform) == []
    renew_in_batch(platform, ids)

    [job] = batch_jobs(platform)
    assert job.status == "succeeded", job.last_error
    assert job.result == {"deployed": COUNT, "failed": 0, "handed_over": 0}
    assert sorted(binding_id for binding_id, _ in job.payload["items"]) == sorted(bindings.values())
    fingerprints = current_fingerprints(platform, ids)
    for n, managed_id in enumerate(ids):
        assert fingerprint_of((directory / f"m{n}.crt").read_bytes()) == fingerprints[managed_id]
        assert (directory / f"m{n}.key").stat().st_mode & 0o077 == 0
    with platform.sessions() as session:
        for managed_id, binding_id in bindings.items():
            binding = session.get(StoreBinding, binding_id)
            assert binding is not None
            assert binding.status == "deployed" and binding.error is None
            assert binding.last_deployed_fingerprint == fingerprints[managed_id]
            [row] = session.execute(
                select(Deployment).where(Deployment.job_id == job.id, Deployment.binding_id == binding_id)
            ).scalars()
            assert row.status == "succeeded" and row.fingerprint == fingerprints[managed_id]
        events = session.execute(
            select(AuditEvent.target_id, AuditEvent.summary).where(
                AuditEvent.action == "deployment.deployed", AuditEvent.actor == f"job:{job.id}"
            )
        ).all()
        assert sorted(int(target) for target, _ in events) == sorted(bindings.values())
        assert {summary["store"] for _, summary in events} == {"files"}
        # The binding with an endpoint went through its own certificate.deploy job again.
        single = (
            session.execute(
                select(Job.status).where(Job.kind == DEPLOY_TASK, Job.target == f"store_binding:{checked}")
            )
            .scalars()
            .all()
        )
        assert len(single) == 2 and set(single) == {"failed"}
        assert verify_chain(session).ok


def test_one_bad_item_fails_alone_and_a_rerun_adds_no_history(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, enrolled: dict[str, Any]
) -> None:
    operator = api_users["operator"].headers
    ids: list[int] = enrolled["ids"]
    directory: Path = enrolled["directory"]
    bindings = [bind(client, operator, managed_id, "files", f"m{n}") for n, managed_id in enumerate(ids)]
    run_jobs(platform)
    # The store cannot write m1's certificate: a directory stands where the file goes.
    (directory / "m1.crt").unlink()
    (directory / "m1.crt").mkdir()
    (directory / "m1.crt" / "keep").write_text("not ours\n")
    before = (directory / "m0.crt").stat().st_mtime_ns
    with platform.sessions() as session:
        current = {
            int(managed_id): int(certificate_id)
            for managed_id, certificate_id in session.execute(
                select(ManagedCertificate.id, ManagedCertificate.current_certificate_id).where(
                    ManagedCertificate.id.in_(ids)
                )
            )
            if certificate_id is not None
        }
        assert len(current) == COUNT
        assert enqueue_deployments_of(session, current, now=platform.clock()) == 1
        session.commit()
    run_jobs(platform)

    [job] = batch_jobs(platform)
    assert job.status == "succeeded", job.last_error
    assert job.result == {"deployed": COUNT - 1, "failed": 1, "handed_over": 0}
    assert (directory / "m0.crt").stat().st_mtime_ns != before  # written again
    assert (directory / "m1.crt" / "keep").read_text() == "not ours\n"

    def history() -> list[tuple[int, str, str | None]]:
        with platform.sessions() as session:
            return [
                (row.binding_id, row.status, row.error)
                for row in session.execute(
                    select(Deployment).where(Deployment.job_id == job.id).order_by(Deployment.binding_id)
                ).scalars()
            ]

    first = history()
    assert [(binding_id, status) for binding_id, status, _ in first] == [
        (bindings[0], "succeeded"),
        (bindings[1], "failed"),
        (bindings[2], "succeeded"),
    ]
    assert first[1][2] is not None and "deploying to store 'files' failed" in first[1][2]
    with platform.sessions() as session:
        failed = session.get(StoreBinding, bindings[1])
        assert failed is not None and failed.status == "failed" and failed.error == first[1][2]
        statuses = session.execute(
            select(StoreBinding.status).where(StoreBinding.id.in_([bindings[0], bindings[2]]))
        ).scalars()
        assert set(statuses) == {"deployed"}
        events = session.execute(
            select(AuditEvent.action, AuditEvent.target_id).where(AuditEvent.actor == f"job:{job.id}")
        ).all()
        assert sorted(events) == sorted(
            [
                ("deployment.deployed", str(bindings[0])),
                ("deployment.failed", str(bindings[1])),
                ("deployment.deployed", str(bindings[2])),
            ]
        )
        # The same step run again (as after a lost commit acknowledgement): no second history row.
        session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(
                status="queued", step="start", run_after=platform.clock(), lease_owner=None, finished_at=None
            )
        )
        session.commit()
    run_jobs(platform)
    [again] = batch_jobs(platform)
    assert again.status == "succeeded", again.last_error
    assert history() == first
    with platform.sessions() as session:
        assert session.execute(select(func.count()).select_from(Deployment)).scalar_one() == COUNT + len(
            first
        )
        assert verify_chain(session).ok


def test_secrets_manager_bindings_deploy_in_one_batch(
    client: TestClient,
    api_users: dict[str, ApiUser],
    platform: Platform,
    enrolled: dict[str, Any],
    moto_url: str,
) -> None:
    reset(moto_url)
    made = client.post(
        f"{API}/stores",
        json={"name": "secrets", "type": "aws-secrets-manager", "config": store_config(moto_url)},
        headers=api_users["admin"].headers,
    )
    assert made.status_code == 201, made.text
    ids: list[int] = enrolled["ids"]
    operator = api_users["operator"].headers
    for n, managed_id in enumerate(ids):
        bind(client, operator, managed_id, "secrets", f"s{n}")
    run_jobs(platform)  # the first deployments create the secrets
    renew_in_batch(platform, ids)

    [job] = batch_jobs(platform)
    assert job.status == "succeeded", job.last_error
    assert job.result == {"deployed": COUNT, "failed": 0, "handed_over": 0}
    sm = boto3.client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    fingerprints = current_fingerprints(platform, ids)
    for n, managed_id in enumerate(ids):
        value = json.loads(
            sm.get_secret_value(SecretId=f"sslclm/s{n}", VersionStage="AWSCURRENT")["SecretString"]
        )
        assert fingerprint_of(value["certificate"].encode()) == fingerprints[managed_id]
        assert "PRIVATE KEY" in value["private_key"]
    with platform.sessions() as session:
        statuses = (
            session.execute(select(Deployment.status).where(Deployment.job_id == job.id)).scalars().all()
        )
        assert statuses == ["succeeded"] * COUNT


def test_the_migration_matches_the_deployment_models(platform: Platform) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from sslclm.core.migrate import alembic_config
    from sslclm.core.models import Base

    with platform.engine.begin() as connection:
        config = alembic_config(platform.engine)
        config.attributes["connection"] = connection
        command.downgrade(config, "0011")
        command.upgrade(config, "head")
    with platform.engine.connect() as connection:
        diffs = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
    assert [d for d in diffs if "deployments" in repr(d) or "store_bindings" in repr(d)] == []


def test_a_store_that_cannot_be_reached_retries_the_batch_then_fails_each_binding(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, enrolled: dict[str, Any]
) -> None:
    # Nothing listens there: every call is refused at once, which AWS clients treat as retryable.
    config = store_config(f"http://127.0.0.1:{free_port()}", max_attempts=1, connect_timeout=1)
    made = client.post(
        f"{API}/stores",
        json={"name": "down", "type": "aws-secrets-manager", "config": config},
        headers=api_users["admin"].headers,
    )
    assert made.status_code == 201, made.text
    ids: list[int] = enrolled["ids"][:2]
    with platform.sessions() as session:
        bindings = [
            create_binding(
                session,
                AuditContext(actor="test"),
                platform,
                BindingInput(managed=managed_id, store="down", alias=f"x{n}", options={}),
                deploy=False,
            )[0].id
            for n, managed_id in enumerate(ids)
        ]
        current = dict(
            session.execute(
                select(ManagedCertificate.id, ManagedCertificate.current_certificate_id).where(
                    ManagedCertificate.id.in_(ids)
                )
            ).all()
        )
        items = [
            [binding_id, current[managed_id]] for binding_id, managed_id in zip(bindings, ids, strict=True)
        ]
        payload = {"store_id": made.json()["id"], "items": items}
        retried = enqueue(session, DEPLOY_BATCH_TASK, payload, now=platform.clock()).id
        last = enqueue(session, DEPLOY_BATCH_TASK, payload, now=platform.clock(), max_attempts=1).id
        session.commit()
    run_jobs(platform)

    with platform.sessions() as session:
        waiting = session.get(Job, retried)
        assert waiting is not None and waiting.status == "queued" and waiting.attempts == 1
        assert waiting.last_error is not None and "Could not connect" in waiting.last_error
        assert session.execute(select(Deployment.id).where(Deployment.job_id == retried)).all() == []
        failed = session.get(Job, last)
        assert failed is not None and failed.status == "failed"
        rows = session.execute(
            select(Deployment.binding_id, Deployment.status).where(Deployment.job_id == last)
        ).all()
        assert sorted(rows) == sorted((binding_id, "failed") for binding_id in bindings)
        for binding_id in bindings:
            binding = session.get(StoreBinding, binding_id)
            assert binding is not None and binding.status == "failed"
            assert (
                binding.error is not None and "this attempt of the batch added was put back" in binding.error
            )
        events = session.execute(
            select(AuditEvent.target_id).where(
                AuditEvent.action == "deployment.failed", AuditEvent.actor == f"job:{last}"
            )
        ).scalars()
        assert sorted(int(str(target)) for target in events) == sorted(bindings)
        assert verify_chain(session).ok
