"""The agent's store jobs: what it refuses to touch, and a deployment that must roll back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sslclm.agent.config import AgentConfig
from sslclm.agent.jobs import JobRunner
from sslclm.agent.stores import fingerprint_of_pem
from sslclm.errors import ConnectorError, InvalidInputError, PermissionDeniedError
from sslclm.protocol import STORE_DEPLOY, STORE_INVENTORY, STORE_REMOVE
from sslclm.spi.testing import new_add_request


def _runner(tmp_path: Path) -> JobRunner:
    (tmp_path / "allowed").mkdir()
    config = AgentConfig(state_dir=str(tmp_path / "state"), deploy_paths=[str(tmp_path / "allowed")])
    return JobRunner(config, tmp_path / "state")


def _deploy(alias: str, store: dict[str, Any], **extra: Any) -> dict[str, Any]:
    request = new_add_request(alias)
    assert request.private_key_pem is not None
    return {
        "store": store,
        "alias": alias,
        "certificate_pem": request.certificate_pem.decode(),
        "chain_pem": [pem.decode() for pem in request.chain_pem],
        "private_key_pem": request.private_key_pem.decode(),
        **extra,
    }


@pytest.mark.parametrize(
    ("store", "refusal"),
    [
        ({"type": "pem-files", "config": {"directory": "/etc"}}, "outside the paths this agent may write"),
        ({"type": "jks", "config": {"path": "/tmp/x.jks", "store_password": "pw"}}, "outside the paths"),
        (
            {"type": "nginx", "config": {"directory": "{allowed}", "nginx": "/bin/sh"}},
            "may not run '/bin/sh'",
        ),
        (
            {"type": "nginx", "config": {"directory": "{allowed}", "config_file": "/etc/passwd"}},
            "outside the paths this agent is configured for",
        ),
        (
            {"type": "pem-files", "config": {"directory": "{allowed}/../elsewhere"}},
            "outside the paths this agent may write",
        ),
    ],
)
def test_what_the_agent_refuses(tmp_path: Path, store: dict[str, Any], refusal: str) -> None:
    runner = _runner(tmp_path)
    allowed = str(tmp_path / "allowed")
    config = {key: value.replace("{allowed}", allowed) for key, value in store["config"].items()}
    target = {"name": "s", "type": store["type"], "config": config}
    for kind, payload in (
        (STORE_DEPLOY, _deploy("www", target)),
        (STORE_REMOVE, {"store": target, "alias": "www"}),
        (STORE_INVENTORY, {"store": target, "aliases": ["www"]}),
    ):
        with pytest.raises(PermissionDeniedError, match=refusal):
            runner.run(kind, payload, lambda message: None)
    assert not (tmp_path / "elsewhere").exists()


def test_unknown_types_and_missing_keys_are_refused(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    allowed = str(tmp_path / "allowed")
    with pytest.raises(InvalidInputError, match="does not run 'haproxy' stores"):
        runner.run(
            STORE_DEPLOY,
            _deploy("www", {"name": "h", "type": "haproxy", "config": {"directory": allowed}}),
            lambda message: None,
        )
    payload = _deploy("www", {"name": "p", "type": "pem-files", "config": {"directory": allowed}})
    payload.update(private_key_pem=None, key_ref="ab" * 32)
    with pytest.raises(InvalidInputError, match="this agent does not either"):
        runner.run(STORE_DEPLOY, payload, lambda message: None)
    assert list((tmp_path / "allowed").iterdir()) == []


def test_a_failed_verification_puts_the_previous_files_back(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    store = {"name": "p", "type": "pem-files", "config": {"directory": str(tmp_path / "allowed")}}
    first = _deploy("www", store)
    done = runner.run(STORE_DEPLOY, first, lambda message: None)
    assert done["fingerprint"] == fingerprint_of_pem(first["certificate_pem"].encode())
    # Nothing listens on port 1: the handshake fails, and the first certificate is put back.
    second = _deploy("www", store, verify={"host": "127.0.0.1", "port": 1, "timeout": 0.5})
    with pytest.raises(ConnectorError, match="restored the previous content"):
        runner.run(STORE_DEPLOY, second, lambda message: None)
    held = (tmp_path / "allowed" / "www.crt").read_bytes()
    assert fingerprint_of_pem(held) == done["fingerprint"]
    listed = runner.run(STORE_INVENTORY, {"store": store, "aliases": ["www", "gone"]}, lambda message: None)
    assert listed["held"] == {"www": done["fingerprint"], "gone": None}
