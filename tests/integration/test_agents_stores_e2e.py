"""Store bindings routed through a real agent process: PKCS#12, JKS, PEM and nginx on the agent's host,
keys made on the agent, validation of hosted stores, and paths the agent refuses.

One ``sslclm serve`` and one ``sslclm agent run`` (mutual TLS on loopback) serve the whole module.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sslclm.pki import create_ca, issue_server_certificate
from sslclm.pki.export import certificate_to_pem
from sslclm.pki.keys import private_key_to_pem
from tests.integration.test_agents_e2e import Stack, _api_token, free_port, wait_for

pytestmark = pytest.mark.slow

AGENT = "host-a"
P12_PASSWORD = "p12 store password"
JKS_PASSWORD = "jks store password"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("agent-stores")
    stack = Stack(tmp=tmp, home=tmp / "home", port=free_port(), agent_port=free_port())
    stack.start_server()
    stack.api_token = _api_token(stack)
    assert stack.register(AGENT, stack.token("edge"), "edge").returncode == 0
    base = stack.agent_dir(AGENT)
    config = yaml.safe_load((base / "agent.yaml").read_text())
    config.update(deploy_paths=[str(base / "deploy")], commands=["nginx"])
    (base / "agent.yaml").write_text(yaml.safe_dump(config))
    for name in ("p12", "jks", "pem", "nginx/certs", "nginx/logs"):
        (base / "deploy" / name).mkdir(parents=True)
    (tmp / "outside").mkdir()
    stack.run_agent(AGENT)
    with stack.api() as api:
        assert (
            api.post("/ca-connections", json={"name": "internal", "type": "local", "config": {}}).status_code
            == 201
        )
        profile = {"name": "web", "ca_connection": "internal", "validity_days": 30}
        assert api.post("/profiles", json=profile).status_code == 201
    wait_for(lambda: _agent(stack)["status"] == "online", what="the agent online")
    yield stack
    for process in stack.agents.values():
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=15)
    if stack.server is not None and stack.server.poll() is None:
        stack.stop_server()


def _agent(stack: Stack) -> dict[str, Any]:
    with stack.api() as api:
        return dict(api.get(f"/agents/{AGENT}").json())


def _deploy_dir(stack: Stack) -> Path:
    return stack.agent_dir(AGENT) / "deploy"


def _managed(stack: Stack, name: str) -> int:
    """A managed certificate whose first certificate the server has issued (key on the platform)."""
    with stack.api() as api:
        made = api.post(
            "/managed-certificates", json={"dns_names": [f"{name}.example.test"], "profile": "web"}
        )
        assert made.status_code == 202, made.text
        managed_id = int(made.json()["id"])
        wait_for(
            lambda: api.get(f"/managed-certificates/{managed_id}").json().get("current_certificate_id"),
            what="the first issuance",
        )
    return managed_id


def _store(stack: Stack, name: str, type_key: str, config: dict[str, Any], **host: str) -> None:
    with stack.api() as api:
        made = api.post("/stores", json={"name": name, "type": type_key, "config": config})
        assert made.status_code == 201, made.text
        hosted = api.put(f"/stores/{name}/host", json=host or {"agent": AGENT})
        assert hosted.status_code == 200, hosted.text


def _finished(stack: Stack, job_id: int) -> dict[str, Any]:
    with stack.api() as api:
        row: dict[str, Any] = wait_for(
            lambda: (job := api.get(f"/jobs/{job_id}").json())["status"] in ("succeeded", "failed") and job,
            what=f"job {job_id}",
        )
    return row


def _bind(stack: Stack, managed_id: int, store: str, alias: str, **extra: Any) -> dict[str, Any]:
    with stack.api() as api:
        body = {"managed_certificate": str(managed_id), "store": store, "alias": alias, **extra}
        made = api.post("/bindings", json=body)
        assert made.status_code == 201, made.text
        binding = made.json()
    _finished(stack, binding["job_id"])
    with stack.api() as api:
        return dict(api.get(f"/bindings/{binding['id']}").json())


def _fingerprint_of_pem(pem: str) -> str:
    """Of the first certificate: a full chain file holds the leaf, then its issuers when known."""
    end = "-----END CERTIFICATE-----"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.split(end, 1)[0] + end + "\n")).hexdigest()


def _served(port: int) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def _openssl_pkcs12(path: Path, *args: str) -> str:
    done = subprocess.run(
        ["openssl", "pkcs12", "-in", str(path), "-passin", f"pass:{P12_PASSWORD}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def _public_key_of(pem: str, kind: str) -> str:
    command = ["openssl", "x509", "-pubkey", "-noout"] if kind == "cert" else ["openssl", "pkey", "-pubout"]
    return subprocess.run(command, input=pem, capture_output=True, text=True, timeout=30, check=True).stdout


def test_pkcs12_jks_and_pem_through_the_agent(stack: Stack) -> None:
    deploy = _deploy_dir(stack)
    managed_id = _managed(stack, "www")
    _store(stack, "p12", "pkcs12", {"directory": str(deploy / "p12"), "password": P12_PASSWORD})
    _store(
        stack, "jks", "jks", {"path": str(deploy / "jks" / "keystore.jks"), "store_password": JKS_PASSWORD}
    )
    _store(stack, "pem", "pem-files", {"directory": str(deploy / "pem")}, label="edge")

    p12 = _bind(stack, managed_id, "p12", "www")
    assert p12["status"] == "deployed", p12
    expected = p12["last_deployed_fingerprint"]
    assert p12["deployments"][0]["status"] == "succeeded"
    certificate = _openssl_pkcs12(deploy / "p12" / "www.p12", "-nokeys", "-clcerts")
    assert _fingerprint_of_pem(certificate[certificate.index("-----BEGIN") :]) == expected
    key = _openssl_pkcs12(deploy / "p12" / "www.p12", "-nocerts", "-nodes")
    assert _public_key_of(key[key.index("-----BEGIN") :], "key") == _public_key_of(certificate, "cert")

    jks = _bind(stack, managed_id, "jks", "www")
    assert jks["status"] == "deployed", jks
    listing = subprocess.run(
        [
            "keytool",
            "-list",
            "-v",
            "-keystore",
            str(deploy / "jks" / "keystore.jks"),
            "-storepass",
            JKS_PASSWORD,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert re.search(r"Alias name: www", listing) and "PrivateKeyEntry" in listing
    assert expected.upper() in listing.replace(":", "")

    pem = _bind(stack, managed_id, "pem", "www")  # hosted by label: any agent labelled "edge"
    assert pem["status"] == "deployed", pem
    assert _fingerprint_of_pem((deploy / "pem" / "www.crt").read_text()) == expected
    assert oct((deploy / "pem" / "www.key").stat().st_mode & 0o777) == "0o600"

    # The sealed payloads (store passwords, the key) do not stay in the agent queue, and the audit
    # trail names the deployment as for a local store.
    with stack.api() as api:
        jobs = api.get(f"/agents/{AGENT}/jobs").json()
        events = api.get("/audit/events", params={"action": "deployment.deployed"}).json()["items"]
    assert {"store-deploy"} <= {job["kind"] for job in jobs}
    assert all(job["status"] == "succeeded" for job in jobs if job["kind"] == "store-deploy")
    assert len([e for e in events if str(e["target_id"]) in {str(p12["id"]), str(jks["id"])}]) == 2

    # Undeploy goes through the agent too.
    with stack.api() as api:
        job = api.post(f"/bindings/{pem['id']}/undeploy").json()["job_id"]
    assert _finished(stack, job)["status"] == "succeeded"
    assert not (deploy / "pem" / "www.crt").exists()


def test_validation_finds_drift_and_feeds_the_inventory(stack: Stack) -> None:
    deploy = _deploy_dir(stack)
    managed_id = _managed(stack, "drift")
    _store(stack, "pem-drift", "pem-files", {"directory": str(deploy / "pem")})
    binding = _bind(stack, managed_id, "pem-drift", "drift")
    assert binding["status"] == "deployed", binding
    key, ca = create_ca("hand-made CA")
    _, foreign = issue_server_certificate(key, ca, hostnames=["drift.example.test"])
    (deploy / "pem" / "drift.crt").write_bytes(certificate_to_pem(foreign))
    foreign_fp = _fingerprint_of_pem(certificate_to_pem(foreign).decode())

    with stack.api() as api:
        queued = api.post("/stores/pem-drift/validate")
        assert queued.status_code == 202, queued.text
        wait_for(
            lambda: api.get(f"/bindings/{binding['id']}").json()["status"] == "drifted", what="drift found"
        )
        found = api.get(f"/bindings/{binding['id']}").json()
        assert foreign_fp in found["error"]
        drift = api.get("/notifications/events", params={"kind": "deployment.drift"}).json()
        assert any(event["details"]["binding_id"] == binding["id"] for event in drift)
        seen = api.get(f"/certificates/{foreign_fp}")
        assert seen.status_code == 200, seen.text
        sightings = api.get("/sightings", params={"certificate_id": seen.json()["id"]}).json()
    assert f"{AGENT}:pem-drift/drift" in str(sightings)

    # From the command line: where it runs, back to the server, and then it cannot be validated here.
    shown = json.loads(stack.cli("store", "host", "pem-drift", "-o", "json").stdout)
    assert shown["agent"] == AGENT
    back = json.loads(stack.cli("store", "host", "pem-drift", "--server", "-o", "json").stdout)
    assert back["runs_on"] == "server"
    refused = stack.cli("store", "validate", "pem-drift", check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("error: ") and "not hosted" in refused.stderr


def test_a_key_made_on_the_agent_stays_there(stack: Stack) -> None:
    deploy = _deploy_dir(stack)
    managed_id = _managed(stack, "onhost")
    with stack.api() as api:
        enroll = api.post(
            f"/agents/{AGENT}/enroll",
            json={"managed_certificate_id": managed_id, "store": "web", "alias": "onhost"},
        )
        assert enroll.status_code == 202, enroll.text
    assert _finished(stack, enroll.json()["job_id"])["status"] == "succeeded"
    _store(stack, "p12-onhost", "pkcs12", {"directory": str(deploy / "p12"), "password": P12_PASSWORD})
    binding = _bind(stack, managed_id, "p12-onhost", "onhost")
    assert binding["status"] == "deployed", binding
    with stack.api() as api:
        certificate = api.get(f"/certificates/{binding['last_deployed_fingerprint']}").json()
    assert certificate["has_private_key"] is False  # the platform never held it
    key = _openssl_pkcs12(deploy / "p12" / "onhost.p12", "-nocerts", "-nodes")
    agent_copy = (stack.agent_dir(AGENT) / "store" / "onhost.key").read_text()
    assert _public_key_of(key[key.index("-----BEGIN") :], "key") == _public_key_of(agent_copy, "key")


def test_paths_outside_the_agents_configuration_are_refused(stack: Stack) -> None:
    managed_id = _managed(stack, "outside")
    outside = stack.tmp / "outside"
    _store(stack, "outside", "pem-files", {"directory": str(outside)})
    binding = _bind(stack, managed_id, "outside", "outside")
    assert binding["status"] == "failed"
    assert "outside the paths this agent may write" in binding["error"]
    assert binding["deployments"][0]["status"] == "failed"
    assert list(outside.iterdir()) == []
    with stack.api() as api:
        failed = api.get("/notifications/events", params={"kind": "job.failed"}).json()
    assert failed  # a failed deployment notifies as any failed job does


def _nginx_conf(prefix: Path, port: int, *, broken: bool = False) -> str:
    certs = prefix / "certs"
    return f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp_body; proxy_temp_path {prefix}/tmp_proxy;
    fastcgi_temp_path {prefix}/tmp_fcgi; uwsgi_temp_path {prefix}/tmp_uwsgi; scgi_temp_path {prefix}/tmp_scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {certs}/www.fullchain.pem;
        ssl_certificate_key {certs}/www.key;
        {"this_is_not_a_directive on;" if broken else ""}
        return 200 "ok";
    }}
}}
"""


@pytest.fixture(scope="module")
def nginx(stack: Stack) -> Iterator[tuple[Path, int]]:
    prefix = _deploy_dir(stack) / "nginx"
    port = free_port()
    key, ca = create_ca("first nginx CA")
    first_key, first = issue_server_certificate(key, ca, hostnames=["www.example.test"])
    (prefix / "certs" / "www.fullchain.pem").write_bytes(certificate_to_pem(first))
    (prefix / "certs" / "www.key").write_bytes(private_key_to_pem(first_key))
    conf = prefix / "nginx.conf"
    conf.write_text(_nginx_conf(prefix, port))
    subprocess.run(["nginx", "-p", str(prefix), "-c", str(conf)], check=True, timeout=30)
    try:
        yield prefix, port
    finally:
        subprocess.run(["nginx", "-p", str(prefix), "-c", str(conf), "-s", "stop"], check=False, timeout=30)
        deadline = time.monotonic() + 10
        while (prefix / "nginx.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def test_nginx_reload_handshake_and_rollback_on_the_agent(stack: Stack, nginx: tuple[Path, int]) -> None:
    prefix, port = nginx
    before = _served(port)
    managed_id = _managed(stack, "edge")
    config = {
        "directory": str(prefix / "certs"),
        "config_file": str(prefix / "nginx.conf"),
        "prefix": str(prefix),
    }
    _store(stack, "nginx-edge", "nginx", config)
    verify = {"host": "127.0.0.1", "port": port}
    binding = _bind(stack, managed_id, "nginx-edge", "www", verify=verify)
    assert binding["status"] == "deployed", binding
    deployed = binding["last_deployed_fingerprint"]
    assert deployed != before and _served(port) == deployed

    # A configuration that no longer passes `nginx -t`: the new files are taken back, nothing reloads.
    (prefix / "nginx.conf").write_text(_nginx_conf(prefix, port, broken=True))
    with stack.api() as api:
        renewed = api.post(f"/managed-certificates/{managed_id}/renew")
        assert renewed.status_code in (200, 202), renewed.text
        wait_for(
            lambda: (row := api.get(f"/bindings/{binding['id']}").json())["status"] == "failed" and row,
            what="the failed deployment",
        )
        failed = api.get(f"/bindings/{binding['id']}").json()
    assert "nginx -t" in failed["error"] and "restored the previous content" in failed["error"]
    assert _fingerprint_of_pem((prefix / "certs" / "www.fullchain.pem").read_text()) == deployed
    assert _served(port) == deployed
