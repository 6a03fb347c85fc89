"""The opt-in ``cabf-lint`` check: pkilint over the stored certificates, through the API."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_cli_policy_report import Cli, cli

from conftest import ApiUser
from sslclm.policies.lints import lint_serverauth
from support.certs import make_ca, make_leaf

__all__ = ["cli"]  # the fixture, used by name

API = "/api/v1"


def _policy(params: str = "{}") -> str:
    return f"""\
name: public-tls
scope: {{kind: all}}
checks:
  - check: cabf-lint
    params: {params}
"""


@pytest.fixture
def imported(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    ca = make_ca("Lint Root")
    leaf = make_leaf(ca, "www.example.com", days=90)
    for name, issued in (("ca.pem", ca), ("leaf.pem", leaf)):
        response = client.post(
            f"{API}/certificates/import",
            files=[("files", (name, issued.pem))],
            headers=api_users["admin"].headers,
        )
        assert response.status_code in (200, 201), response.text


def _lint_violations(client: TestClient, user: ApiUser) -> list[dict[str, Any]]:
    found = client.get(f"{API}/policies/violations?check=cabf-lint", headers=user.headers).json()["items"]
    return list(found)


def _codes(violation: dict[str, Any]) -> list[str]:
    """The finding codes the reason lists (fewer than ten here, so all of them)."""
    return str(violation["reason"]).split(": ", 1)[1].split(", ")


def test_lint_findings_become_a_violation(
    client: TestClient, api_users: dict[str, ApiUser], imported: None
) -> None:
    admin = api_users["admin"]
    created = client.put(f"{API}/policies", content=_policy(), headers=admin.headers)
    assert created.status_code == 201, created.text
    found = _lint_violations(client, admin)
    # The leaf only: CA certificates and certificates without serverAuth are not linted.
    assert [v["common_name"] for v in found] == ["www.example.com"]
    violation = found[0]
    assert violation["severity"] == "medium"
    assert "CA/Browser Forum lint finding(s)" in violation["reason"]
    codes = _codes(violation)
    # The test leaf has no certificate policies extension, which the Baseline Requirements require.
    assert "cabf.serverauth.subscriber.certificate_policies_extension_absent (error)" in codes
    assert all(code.endswith(("(error)", "(fatal)")) for code in codes)


def test_ignored_codes_and_the_severity_floor(
    client: TestClient, api_users: dict[str, ApiUser], imported: None
) -> None:
    admin = api_users["admin"]
    client.put(f"{API}/policies", content=_policy(), headers=admin.headers)
    every = {code.split(" ")[0] for code in _codes(_lint_violations(client, admin)[0])}
    ignore = sorted(every - {"cabf.serverauth.subscriber.certificate_policies_extension_absent"})
    params = "{ignore: [" + ", ".join(ignore) + "]}"
    assert client.put(f"{API}/policies", content=_policy(params), headers=admin.headers).status_code == 200
    left = _codes(_lint_violations(client, admin)[0])
    assert left == ["cabf.serverauth.subscriber.certificate_policies_extension_absent (error)"]
    # Only fatal findings: the leaf decodes, so nothing is left to report.
    client.put(f"{API}/policies", content=_policy("{min_severity: fatal}"), headers=admin.headers)
    assert _lint_violations(client, admin) == []


def test_unknown_lint_parameters_are_refused(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    response = client.put(
        f"{API}/policies", content=_policy("{min_severity: loud}"), headers=api_users["admin"].headers
    )
    assert response.status_code == 422
    assert "min_severity" in response.text


def test_an_undecodable_certificate_is_one_fatal_finding() -> None:
    findings = lint_serverauth(b"\x30\x03\x02\x01\x01")
    assert [(f.severity, f.code) for f in findings] == [("fatal", "sslclm.lint.undecodable")]


def test_the_cli_lists_the_checks_with_their_parameters(cli: Cli) -> None:
    rows = json.loads(cli.ok("policy", "checks", "--format", "json").stdout)
    by_name = {row["check"]: row for row in rows}
    assert by_name["cabf-lint"]["parameters"] == 'min_severity="error", ignore'
    assert by_name["expiry"]["parameters"] == "warning_days=30, critical_days=7"
    assert by_name["cabf-lint"]["severity"] == "medium"


def test_the_baseline_leaves_the_lint_out() -> None:
    from sslclm.policies.document import BASELINE

    assert "cabf-lint" not in {entry.check for entry in BASELINE.checks}
    assert "expiry" in {entry.check for entry in BASELINE.checks}
