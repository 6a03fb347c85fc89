"""The CycloneDX CBOM, the PDF summary and the summary's JSON/CSV through the API."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from fastapi.testclient import TestClient
from pypdf import PdfReader

from conftest import ApiUser
from support.certs import Issued, make_ca, make_leaf

API = "/api/v1"
POLICY = """\
name: pdf-policy
checks:
  - check: expiry
    params: {warning_days: 30, critical_days: 7}
"""


@pytest.fixture
def estate(client: TestClient, api_users: dict[str, ApiUser]) -> dict[str, Issued]:
    root = make_ca("Report Root", key_kind="rsa")
    certs = {
        "root": root,
        "rsa": make_leaf(root, "rsa.report.example", days=20, key_kind="rsa"),
        "ec": make_leaf(root, "ec.report.example", days=5),
        "ec-later": make_leaf(root, "later.report.example", days=200),
    }
    for name, issued in certs.items():
        response = client.post(
            f"{API}/certificates/import",
            files=[("files", (f"{name}.pem", issued.pem))],
            headers=api_users["admin"].headers,
        )
        assert response.status_code in (200, 201), response.text
    return certs


def _components(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["bom-ref"]: c for c in document["components"]}


def test_the_cbom_is_valid_cyclonedx_1_6_with_keys_algorithms_and_issuers(
    client: TestClient, api_users: dict[str, ApiUser], estate: dict[str, Issued]
) -> None:
    viewer = api_users["viewer"]
    assert client.get(f"{API}/reports/cbom").status_code == 401
    response = client.get(f"{API}/reports/cbom", headers=viewer.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/vnd.cyclonedx+json")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(response.text) is None
    document = response.json()
    assert document["specVersion"] == "1.6"
    components = _components(document)

    rsa = components[f"certificate:{estate['rsa'].fingerprint}"]
    assert rsa["type"] == "cryptographic-asset" and rsa["name"] == "rsa.report.example"
    cert_props = rsa["cryptoProperties"]["certificateProperties"]
    assert cert_props["signatureAlgorithmRef"] == "algorithm:signature:sha256WithRSAEncryption"
    key = components[cert_props["subjectPublicKeyRef"]]
    material = key["cryptoProperties"]["relatedCryptoMaterialProperties"]
    assert material["type"] == "public-key" and material["size"] == 2048
    algorithm = components[material["algorithmRef"]]
    assert algorithm["name"] == "RSA-2048"
    assert algorithm["cryptoProperties"]["oid"] == "1.2.840.113549.1.1.1"
    assert algorithm["cryptoProperties"]["algorithmProperties"]["parameterSetIdentifier"] == "2048"
    ec_key = components[
        components[f"certificate:{estate['ec'].fingerprint}"]["cryptoProperties"]["certificateProperties"][
            "subjectPublicKeyRef"
        ]
    ]
    ec_algorithm = components[ec_key["cryptoProperties"]["relatedCryptoMaterialProperties"]["algorithmRef"]]
    assert ec_algorithm["name"] == "EC-secp256r1"
    assert ec_algorithm["cryptoProperties"]["algorithmProperties"]["curve"] == "secp256r1"

    depends = {d["ref"]: set(d.get("dependsOn", [])) for d in document["dependencies"]}
    root_ref = f"certificate:{estate['root'].fingerprint}"
    assert depends[f"certificate:{estate['rsa'].fingerprint}"] == {
        cert_props["subjectPublicKeyRef"],
        "algorithm:signature:sha256WithRSAEncryption",
        root_ref,
    }
    assert depends[cert_props["subjectPublicKeyRef"]] == {material["algorithmRef"]}
    assert root_ref not in depends[root_ref]  # self-signed: no dependency on itself

    first = client.get(f"{API}/reports/cbom?limit=2", headers=viewer.headers)
    assert first.status_code == 200 and first.headers["x-certificates"] == "2"
    after = first.headers["x-next-after-id"]
    rest = client.get(f"{API}/reports/cbom?limit=2&after_id={after}", headers=viewer.headers)
    assert rest.headers["x-certificates"] == "2" and "x-next-after-id" not in rest.headers
    paged = {r for r in _components(first.json()) | _components(rest.json()) if r.startswith("certificate:")}
    assert paged == {r for r in components if r.startswith("certificate:")}
    bad = client.get(f"{API}/reports/cbom?limit=0", headers=viewer.headers)
    assert bad.status_code == 422 and bad.json()["field"] == "limit"


def test_the_pdf_summary_and_its_figures_as_json_and_csv(
    client: TestClient, api_users: dict[str, ApiUser], estate: dict[str, Issued]
) -> None:
    admin, viewer = api_users["admin"], api_users["viewer"]
    assert client.put(f"{API}/policies", content=POLICY, headers=admin.headers).status_code == 201

    figures = client.get(f"{API}/reports/summary", headers=viewer.headers).json()
    assert figures["totals"]["certificates"] == 4
    assert sum(r["total"] for r in figures["expiry_forecast"]) == 2  # 5 and 20 days; 200 is past 90
    [policy_row] = figures["compliance"]
    assert policy_row["policy"] == "pdf-policy" and policy_row["total"] == 2

    rows = list(
        csv.DictReader(
            io.StringIO(client.get(f"{API}/reports/summary?format=csv", headers=viewer.headers).text)
        )
    )
    assert {"section": "total", "key": "certificates", "value": "4"} in rows
    assert {"section": "compliance", "key": "pdf-policy", "value": "2"} in rows

    response = client.get(f"{API}/reports/summary.pdf", headers=viewer.headers)
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    reader = PdfReader(io.BytesIO(response.content))
    assert 1 <= len(reader.pages) <= 3
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert "Certificates by status (total 4)" in text
    assert "Expiry forecast, next 90 days" in text and "pdf-policy" in text
    assert "ec.report.example" in text  # the riskiest: expires in 5 days
    for status in figures["totals"]["by_status"]:
        assert status["status"] in text
    assert client.get(f"{API}/reports/summary.pdf").status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "expiry-forecast?per=week",
        "breakdown?by=key_algorithm",
        "compliance",
        "top-risks",
        "risk?by=team",
        "summary",
    ],
)
def test_every_report_answers_csv_and_json(
    client: TestClient, api_users: dict[str, ApiUser], estate: dict[str, Issued], path: str
) -> None:
    headers = api_users["viewer"].headers
    separator = "&" if "?" in path else "?"
    as_json = client.get(f"{API}/reports/{path}", headers=headers)
    as_csv = client.get(f"{API}/reports/{path}{separator}format=csv", headers=headers)
    assert as_json.status_code == 200 and as_csv.status_code == 200, (as_json.text, as_csv.text)
    json.loads(as_json.text)
    assert as_csv.headers["content-type"].startswith("text/csv")
