"""External account binding against a real Pebble that requires it (externalAccountBindingRequired with
its own MAC keys): no binding, a wrong key and the right one."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sslclm.connectors.acme import AcmeGateway
from sslclm.errors import CARejectedError
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.testing import assert_valid_issuance, memory_context, new_issue_request
from tests.support.pebble import AcmeLab, acme_lab

KID = "sslclm-kid-1"
HMAC_KEY = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeLab]:
    with acme_lab(tmp_path_factory.mktemp("pebble-eab"), eab_keys={KID: HMAC_KEY}) as running:
        yield running


def gateway_for(lab: AcmeLab, tmp_path: Path, **overrides: Any) -> AcmeGateway:
    gateway = ConnectorRegistry.from_entry_points().build_ca_gateway(
        "acme", lab.config(**overrides), memory_context(tmp_path / "acme")
    )
    assert isinstance(gateway, AcmeGateway)
    lab.challenges.lookup = gateway.http01_response
    return gateway


def request_for(label: str) -> Any:
    return new_issue_request((f"{label}-{uuid.uuid4().hex[:10]}.acme.test",))


def test_registration_with_the_binding(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = gateway_for(lab, tmp_path, eab_kid=KID, eab_hmac_key=HMAC_KEY)
    first = gateway.check()
    assert first.ok and first.details["external_account_required"] is True
    request, key = request_for("eab")
    result = gateway.issue(request)
    assert_valid_issuance(gateway, request, key, result, trust_anchors=[lab.pebble.root_pem()])
    assert gateway.check().details["account_status"] == "valid"


def test_without_a_binding_the_gateway_says_what_is_missing(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = gateway_for(lab, tmp_path)
    check = gateway.check()
    assert not check.ok and "external account binding" in check.message
    with pytest.raises(CARejectedError, match="requires external account binding") as caught:
        gateway.issue(request_for("noeab")[0])
    assert caught.value.field == "eab_kid"


@pytest.mark.parametrize(
    ("kid", "hmac_key"),
    [
        (KID, base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()),
        ("unknown-kid", HMAC_KEY),
    ],
)
def test_a_wrong_binding_is_rejected_by_the_server(
    lab: AcmeLab, tmp_path: Path, kid: str, hmac_key: str
) -> None:
    gateway = gateway_for(lab, tmp_path, eab_kid=kid, eab_hmac_key=hmac_key)
    with pytest.raises(CARejectedError, match="register account: ") as caught:
        gateway.issue(request_for("badeab")[0])
    assert not caught.value.retryable
    assert HMAC_KEY not in caught.value.message
