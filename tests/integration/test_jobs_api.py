"""Job views and actions through the API (permissions, errors, audit) and the ``sslclm jobs`` CLI."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import ApiUser
from sslclm.audit.models import AuditEvent
from sslclm.cli.main import build_app
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.errors import CARejectedError
from sslclm.jobs import Done, Next, StepContext, TaskRegistry, Worker, enqueue

API = "/api/v1/jobs"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry() -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task("demo.issue")
    def issue(ctx: StepContext) -> Next:
        ctx.progress("CSR built")
        return Next("sign")

    @issue.step("sign")
    def sign(ctx: StepContext) -> Done:
        if ctx.payload.get("refuse"):
            raise CARejectedError("name not allowed by the profile")
        return Done({"serial": "01"})

    return registry


def enqueue_jobs(platform: Platform, *payloads: dict[str, object]) -> list[int]:
    with session_scope(platform.sessions) as session:
        return [
            enqueue(
                session, "demo.issue", payload, now=platform.clock(), target=f"managed_certificate:{n}"
            ).id
            for n, payload in enumerate(payloads)
        ]


def run(platform: Platform, registry: TaskRegistry) -> None:
    Worker(platform, registry=registry, poll_interval=0.05).run_until_idle(timeout=60)


def test_list_and_show(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, registry: TaskRegistry
) -> None:
    ok, refused, waiting = enqueue_jobs(platform, {}, {"refuse": True}, {})
    with session_scope(platform.sessions) as session:
        enqueue(session, "demo.other", {}, now=platform.clock())
    run(platform, registry)
    viewer = api_users["viewer"].headers

    page = client.get(API, headers=viewer, params={"kind": "demo.issue", "limit": 2}).json()
    assert [item["id"] for item in page["items"]] == [waiting, refused]
    assert page["next_cursor"] == refused
    rest = client.get(
        API, headers=viewer, params={"kind": "demo.issue", "cursor": page["next_cursor"]}
    ).json()
    assert [item["id"] for item in rest["items"]] == [ok] and rest["next_cursor"] is None

    failed = client.get(API, headers=viewer, params={"status": "failed"}).json()["items"]
    assert [(job["id"], job["last_error"]) for job in failed] == [
        (refused, "ca-rejected: name not allowed by the profile")
    ]
    by_target = client.get(API, headers=viewer, params={"target": "managed_certificate:0"}).json()["items"]
    assert [job["id"] for job in by_target] == [ok]

    detail = client.get(f"{API}/{ok}", headers=viewer).json()
    assert detail["status"] == "succeeded" and detail["step"] == "sign"
    assert detail["result"] == {"serial": "01"} and detail["payload"] == {}
    assert [event["message"] for event in detail["events"]] == ["CSR built"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "done"}, "status"),
        ({"limit": 0}, "limit"),
        ({"bogus": 1}, "bogus"),
        ({"cursor": -1}, "cursor"),
    ],
)
def test_bad_queries_name_the_field(
    client: TestClient, api_users: dict[str, ApiUser], params: dict[str, object], field: str
) -> None:
    response = client.get(API, headers=api_users["viewer"].headers, params=params)
    assert response.status_code == 422
    assert response.json()["field"] == field


def test_unknown_job_is_404(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    response = client.get(f"{API}/999", headers=api_users["viewer"].headers)
    assert response.status_code == 404
    assert response.json()["detail"] == "no job 999"


def test_retry_and_cancel_need_write_permission_and_are_audited(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, registry: TaskRegistry
) -> None:
    (refused,) = enqueue_jobs(platform, {"refuse": True})
    run(platform, registry)
    (queued,) = enqueue_jobs(platform, {})

    for role in ("viewer", "auditor"):
        response = client.post(f"{API}/{refused}/retry", headers=api_users[role].headers)
        assert response.status_code == 403
    assert client.post(f"{API}/{refused}/retry").status_code == 401

    operator = api_users["operator"].headers
    retried = client.post(f"{API}/{refused}/retry", headers=operator)
    assert retried.status_code == 200
    assert (retried.json()["status"], retried.json()["step"], retried.json()["attempts"]) == (
        "queued",
        "sign",
        0,
    )
    again = client.post(f"{API}/{refused}/retry", headers=operator)
    assert again.status_code == 409
    assert "only failed or cancelled jobs can be retried" in again.json()["detail"]

    cancelled = client.post(f"{API}/{queued}/cancel", headers=operator)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.post(f"{API}/{queued}/cancel", headers=operator).status_code == 409
    assert client.post(f"{API}/12345/cancel", headers=operator).status_code == 404

    with platform.sessions() as session:
        events = session.execute(
            select(AuditEvent.actor, AuditEvent.action, AuditEvent.target_id).where(
                AuditEvent.target_type == "job"
            )
        ).all()
    assert [tuple(event) for event in events] == [
        ("operator-user (token 2)", "job.retry", str(refused)),
        ("operator-user (token 2)", "job.cancel", str(queued)),
    ]


@pytest.fixture
def cli_env(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    settings = platform.settings
    monkeypatch.setenv("SSLCLM_HOME", str(settings.home))
    monkeypatch.setenv("SSLCLM_DATABASE_URL", settings.resolved_database_url)
    assert settings.master_key is not None
    monkeypatch.setenv("SSLCLM_MASTER_KEY", settings.master_key.get_secret_value())
    monkeypatch.setenv("COLUMNS", "200")  # tables are not folded into narrow cells
    return CliRunner()


def cli(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(build_app(), list(args), catch_exceptions=False)


def test_cli_list_show_retry_cancel(cli_env: CliRunner, platform: Platform, registry: TaskRegistry) -> None:
    (refused,) = enqueue_jobs(platform, {"refuse": True})
    run(platform, registry)
    (queued,) = enqueue_jobs(platform, {})

    listed = cli(cli_env, "jobs", "list", "--output", "json")
    assert listed.exit_code == 0, listed.output
    assert [(job["id"], job["status"]) for job in orjson.loads(listed.stdout)] == [
        (queued, "queued"),
        (refused, "failed"),
    ]
    table = cli(cli_env, "jobs", "list", "--status", "failed")
    assert table.exit_code == 0 and "demo.issue" in table.stdout and "ca-rejected" in table.stdout

    shown = cli(cli_env, "jobs", "show", str(refused), "-o", "json")
    detail = orjson.loads(shown.stdout)
    assert detail["last_error"] == "ca-rejected: name not allowed by the profile"
    assert [event["message"] for event in detail["events"]][-1].startswith("failed (not retryable)")
    assert "History" in cli(cli_env, "jobs", "show", str(refused)).stdout

    retried = cli(cli_env, "jobs", "retry", str(refused))
    assert retried.exit_code == 0 and retried.stdout.strip() == f"job {refused} queued again at step 'sign'"
    cancelled = cli(cli_env, "jobs", "cancel", str(queued))
    assert cancelled.exit_code == 0 and cancelled.stdout.strip() == f"job {queued} cancelled"

    with platform.sessions() as session:
        actions = session.execute(
            select(AuditEvent.action, AuditEvent.actor).where(AuditEvent.target_type == "job")
        ).all()
    assert [action for action, _ in actions] == ["job.retry", "job.cancel"]
    assert all(actor.startswith("cli:") for _, actor in actions)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["jobs", "show", "404"], "error: no job 404"),
        (["jobs", "list", "--status", "done"], "error: unknown status 'done'; use one of queued, running"),
        (["jobs", "cancel", "0"], "error: Invalid value for 'job_id'"),
        (["worker", "--import", "no.such.tasks"], "error: cannot import task module 'no.such.tasks'"),
    ],
)
def test_cli_errors_are_one_line(cli_env: CliRunner, args: list[str], message: str) -> None:
    result = cli(cli_env, *args)
    assert result.exit_code in (1, 2)
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.output


def test_cli_worker_until_idle_runs_imported_tasks(
    cli_env: CliRunner, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO))  # so that `--import tests.support.jobs_tasks` resolves
    with session_scope(platform.sessions) as session:
        job_id = enqueue(session, "test.crash", {"work_seconds": 0}, now=platform.clock()).id
    # The crash test's task writes to these two tables.
    serial = "SERIAL" if platform.engine.dialect.name == "postgresql" else "INTEGER"
    with platform.engine.begin() as connection:
        connection.exec_driver_sql(
            f"CREATE TABLE crash_attempts (id {serial} PRIMARY KEY, job_id BIGINT, step TEXT, pid INTEGER)"
        )
        connection.exec_driver_sql("CREATE TABLE crash_effects (job_id BIGINT PRIMARY KEY, pid INTEGER)")
    result = cli(cli_env, "worker", "--until-idle", "--import", "tests.support.jobs_tasks", "--no-scheduler")
    assert result.exit_code == 0, result.output
    assert "1 succeeded, 0 failed" in result.stderr
    shown = orjson.loads(cli(cli_env, "jobs", "show", str(job_id), "-o", "json").stdout)
    assert shown["status"] == "succeeded"
