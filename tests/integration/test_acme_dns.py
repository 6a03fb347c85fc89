"""dns-01 against the real Pebble: TXT records published by RFC 2136 dynamic update (TSIG) to a real
DNS server on loopback that Pebble resolves through, or by an operator's hook script; wildcards; and
what happens when the DNS side fails."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sslclm.connectors.acme import AcmeGateway
from sslclm.errors import ConnectorError
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.testing import assert_valid_issuance, memory_context, new_issue_request
from tests.support.pebble import AcmeLab, acme_lab, free_port

HOOK = """
import os
import sys

import dns.name
import dns.query
import dns.tsig
import dns.update

server, port, zone, key_name, secret, action, name, value = sys.argv[1:]
if any(variable.startswith("SSLCLM_") for variable in os.environ):
    print("the platform's settings leaked into the hook", file=sys.stderr)
    sys.exit(4)
if action == "add" and name.startswith("_acme-challenge.fail-"):
    print("the DNS provider's API is down", file=sys.stderr)
    sys.exit(3)
keyring = {dns.name.from_text(key_name): dns.tsig.Key(key_name, secret)}
update = dns.update.UpdateMessage(zone, keyring=keyring, keyname=key_name)
relative = dns.name.from_text(name).relativize(dns.name.from_text(zone))
if action == "add":
    update.add(relative, 60, "TXT", f'"{value}"')
else:
    update.delete(relative, "TXT", f'"{value}"')
dns.query.tcp(update, server, port=int(port), timeout=5)
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeLab]:
    with acme_lab(tmp_path_factory.mktemp("pebble-dns")) as running:
        yield running


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}.acme.test"


def dns_gateway(lab: AcmeLab, tmp_path: Path, provider: dict[str, Any], **dns01: Any) -> AcmeGateway:
    config = lab.config(
        challenge="dns-01", dns01={"provider": provider, "propagation_poll_seconds": 0.1, **dns01}
    )
    gateway = ConnectorRegistry.from_entry_points().build_ca_gateway(
        "acme", config, memory_context(tmp_path / "acme")
    )
    assert isinstance(gateway, AcmeGateway)
    return gateway


def hook_provider(lab: AcmeLab, tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "dns-hook.py"
    script.write_text(HOOK)
    arguments = ["127.0.0.1", str(lab.dns.port), lab.zone, lab.tsig_name, lab.tsig_secret]
    return {"kind": "hook", "command": [sys.executable, str(script), *arguments], "timeout_seconds": 30}


def challenge_changes(lab: AcmeLab, name: str) -> list[tuple[str, str]]:
    record = f"_acme-challenge.{name.removeprefix('*.')}."
    return [(u.action, u.value) for u in lab.dns.updates if u.name == record]


def test_issue_with_rfc2136(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = dns_gateway(lab, tmp_path, lab.rfc2136())
    name = unique("dyn")
    request, key = new_issue_request((name,))
    result = gateway.issue(request)
    assert_valid_issuance(gateway, request, key, result, trust_anchors=[lab.pebble.root_pem()])
    changes = challenge_changes(lab, name)
    assert [action for action, _ in changes] == ["add", "delete"], "published, then removed"
    assert changes[0][1] == changes[1][1]
    assert lab.dns.txt(f"_acme-challenge.{name}.") == []


def test_wildcard_and_its_base_name_share_one_record_name(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = dns_gateway(lab, tmp_path, lab.rfc2136())
    base = unique("wild")
    request, key = new_issue_request((base, f"*.{base}"))
    result = gateway.issue(request)
    assert_valid_issuance(gateway, request, key, result, trust_anchors=[lab.pebble.root_pem()])
    added = {value for action, value in challenge_changes(lab, base) if action == "add"}
    assert len(added) == 2, "one TXT value per authorization under the same name"


def test_issue_with_a_hook_script(lab: AcmeLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSLCLM_KEK", "bWFzdGVyIGtleSBtdXN0IG5vdCBsZWFr")  # never handed to the hook
    gateway = dns_gateway(
        lab, tmp_path, hook_provider(lab, tmp_path), check_nameservers=[f"127.0.0.1:{lab.dns.port}"]
    )
    name = unique("hook")
    request, key = new_issue_request((name,))
    result = gateway.issue(request)
    assert_valid_issuance(gateway, request, key, result, trust_anchors=[lab.pebble.root_pem()])
    assert [action for action, _ in challenge_changes(lab, name)] == ["add", "delete"]


def test_a_failing_hook_is_a_retryable_error_with_its_reason(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = dns_gateway(lab, tmp_path, hook_provider(lab, tmp_path))
    with pytest.raises(
        ConnectorError, match="exited with status 3: the DNS provider's API is down"
    ) as caught:
        gateway.issue(new_issue_request((unique("fail"),))[0])
    assert caught.value.retryable


def test_a_missing_hook_program_is_not_retryable(lab: AcmeLab, tmp_path: Path) -> None:
    provider = {"kind": "hook", "command": [str(tmp_path / "no-such-hook")]}
    gateway = dns_gateway(lab, tmp_path, provider)
    with pytest.raises(ConnectorError, match="does not exist") as caught:
        gateway.issue(new_issue_request((unique("nohook"),))[0])
    assert not caught.value.retryable
    assert caught.value.field == "dns01.provider.command"


def test_a_record_that_never_appears_times_out(lab: AcmeLab, tmp_path: Path) -> None:
    silent = {"kind": "hook", "command": [sys.executable, "-c", "pass"]}
    gateway = dns_gateway(
        lab,
        tmp_path,
        silent,
        check_nameservers=[f"127.0.0.1:{lab.dns.port}"],
        propagation_timeout_seconds=0.5,
    )
    name = unique("late")
    with pytest.raises(ConnectorError, match=f"_acme-challenge.{name}. is not visible") as caught:
        gateway.issue(new_issue_request((name,))[0])
    assert caught.value.retryable


def test_a_wrong_tsig_secret_is_refused(lab: AcmeLab, tmp_path: Path) -> None:
    refused = lab.dns.refused_updates
    provider = lab.rfc2136(tsig_secret="d3Jvbmcgc2VjcmV0IHdyb25nIHNlY3JldA==")
    gateway = dns_gateway(lab, tmp_path, provider)
    with pytest.raises(ConnectorError, match="did not accept the TSIG key") as caught:
        gateway.issue(new_issue_request((unique("badkey"),))[0])
    assert not caught.value.retryable
    assert caught.value.field == "dns01.provider.tsig_key_name"
    assert "d3Jvbm" not in caught.value.message
    assert lab.dns.refused_updates == refused + 1


def test_a_name_outside_the_zone_is_refused_before_any_update(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = dns_gateway(lab, tmp_path, lab.rfc2136())
    name = f"elsewhere-{uuid.uuid4().hex[:8]}.sslclm.test"
    with pytest.raises(ConnectorError, match=r"is not in the zone acme\.test\.") as caught:
        gateway.issue(new_issue_request((name,))[0])
    assert caught.value.field == "dns01.provider.zone"
    assert challenge_changes(lab, name) == []


def test_an_unreachable_dns_server_is_retryable(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = dns_gateway(lab, tmp_path, lab.rfc2136(port=free_port(), timeout_seconds=2))
    with pytest.raises(ConnectorError, match=r"cannot reach DNS server|did not answer in time") as caught:
        gateway.issue(new_issue_request((unique("nodns"),))[0])
    assert caught.value.retryable
