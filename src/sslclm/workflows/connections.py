"""Configured connector instances: validation, secrets sealed at rest, building live connectors, checks."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any

import orjson
from pydantic import BaseModel, SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.core.platform import Platform
from sslclm.errors import ConflictError, InvalidInputError, NotFoundError
from sslclm.spi.ca import CAGateway
from sslclm.spi.capabilities import ConnectorKind
from sslclm.spi.context import ConnectorContext, EnvelopeSealer
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.types import CheckResult
from sslclm.workflows.models import Connection
from sslclm.workflows.state_store import DatabaseStateStore

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,149}$")
MASK = "********"


@cache
def connector_registry() -> ConnectorRegistry:
    """Every installed connector type, loaded once per process from entry points."""
    return ConnectorRegistry.from_entry_points()


def _kind(value: str) -> ConnectorKind:
    try:
        return ConnectorKind(value)
    except ValueError:
        allowed = ", ".join(k.value for k in ConnectorKind)
        raise InvalidInputError(
            f"unknown connector kind '{value}'; choose one of {allowed}", field="kind"
        ) from None


def _secrets_aad(connection_id: int) -> str:
    return f"connection:{connection_id}:secrets"


def split_config(model: BaseModel) -> tuple[dict[str, Any], dict[str, str]]:
    """The config as JSON without its secrets, and the secrets alone (to be sealed)."""
    public = model.model_dump(mode="json")
    secrets: dict[str, str] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            secrets[name] = value.get_secret_value()
            public.pop(name, None)
    return public, secrets


def masked_config(connection: Connection, registry: ConnectorRegistry | None = None) -> dict[str, Any]:
    """The config as shown to users: secrets replaced by a mask when set."""
    shown = dict(connection.config)
    if connection.sealed_secrets:
        registry = registry or connector_registry()
        try:
            cls = registry.get(ConnectorKind(connection.kind), connection.type_key).cls
            for name, field in cls.Config.model_fields.items():
                if field.annotation is not None and "SecretStr" in str(field.annotation):
                    shown[name] = MASK
        except NotFoundError:
            shown["secrets"] = MASK
    return shown


def get_connection(session: Session, ref: str | int, kind: ConnectorKind | None = None) -> Connection:
    text = str(ref)
    stmt = select(Connection)
    if kind is not None:
        stmt = stmt.where(Connection.kind == kind.value)
    stmt = stmt.where(Connection.id == int(text)) if text.isdigit() else stmt.where(Connection.name == text)
    found = session.execute(stmt).scalar_one_or_none()
    if found is None:
        raise NotFoundError(f"no connection '{text}'", field="connection")
    return found


def list_connections(session: Session, kind: ConnectorKind | None = None) -> Sequence[Connection]:
    stmt = select(Connection).order_by(Connection.kind, Connection.name)
    if kind is not None:
        stmt = stmt.where(Connection.kind == kind.value)
    return session.execute(stmt).scalars().all()


def create_connection(
    session: Session,
    ctx: AuditContext,
    platform: Platform,
    *,
    kind: str,
    name: str,
    type_key: str,
    config: dict[str, Any],
    registry: ConnectorRegistry | None = None,
) -> Connection:
    connector_kind = _kind(kind)
    if not NAME.match(name):
        raise InvalidInputError("name must be 1-150 letters, digits or . _ - ", field="name")
    if session.execute(select(Connection.id).where(Connection.kind == kind, Connection.name == name)).first():
        raise ConflictError(f"a {kind} connection named '{name}' already exists", field="name")
    model = (registry or connector_registry()).validate_config(connector_kind, type_key, config)
    public, secrets = split_config(model)
    now = platform.clock()
    connection = Connection(
        kind=kind, name=name, type_key=type_key, config=public, created_at=now, updated_at=now, enabled=True
    )
    session.add(connection)
    session.flush()
    if secrets:
        connection.sealed_secrets = platform.envelope.encrypt(
            orjson.dumps(secrets), _secrets_aad(connection.id).encode()
        )
    record(
        session,
        ctx,
        "connection.create",
        "connection",
        connection.id,
        {"kind": kind, "name": name, "type": type_key, "config": public, "secrets": sorted(secrets)},
    )
    return connection


def update_connection(
    session: Session,
    ctx: AuditContext,
    platform: Platform,
    connection: Connection,
    config: dict[str, Any],
    registry: ConnectorRegistry | None = None,
) -> Connection:
    """Replaces the config; secret fields left out or sent as the mask keep their sealed value."""
    merged = {**connection.config, **unseal_secrets(platform, connection)}
    merged.update({k: v for k, v in config.items() if v != MASK})
    model = (registry or connector_registry()).validate_config(
        ConnectorKind(connection.kind), connection.type_key, merged
    )
    public, secrets = split_config(model)
    before = dict(connection.config)
    connection.config = public
    connection.sealed_secrets = (
        platform.envelope.encrypt(orjson.dumps(secrets), _secrets_aad(connection.id).encode())
        if secrets
        else None
    )
    connection.updated_at = platform.clock()
    _forget_instance(platform, connection.id)
    record(
        session,
        ctx,
        "connection.update",
        "connection",
        connection.id,
        {"name": connection.name, "before": before, "after": public},
    )
    return connection


def unseal_secrets(platform: Platform, connection: Connection) -> dict[str, str]:
    if not connection.sealed_secrets:
        return {}
    raw = platform.envelope.decrypt(connection.sealed_secrets, _secrets_aad(connection.id).encode())
    secrets: dict[str, str] = orjson.loads(raw)
    return secrets


# Keyed by database as well as id: one process may serve several platforms (tests, tools).
_instances: dict[tuple[str, int], tuple[datetime, Any]] = {}
_instances_lock = threading.Lock()


def _instance_key(platform: Platform, connection_id: int) -> tuple[str, int]:
    return (platform.engine.url.render_as_string(hide_password=True), connection_id)


def _forget_instance(platform: Platform, connection_id: int) -> None:
    with _instances_lock:
        _instances.pop(_instance_key(platform, connection_id), None)


def connector_context(platform: Platform, connection: Connection) -> ConnectorContext:
    scope = state_scope(connection)
    data_dir = platform.settings.home / "connectors" / str(connection.id)
    return ConnectorContext(
        connection_id=str(connection.id),
        state=DatabaseStateStore(platform.sessions, scope, platform.clock),
        secrets=EnvelopeSealer(platform.envelope, scope),
        data_dir=data_dir,
        logger=logging.getLogger(f"sslclm.connector.{connection.type_key}.{connection.id}"),
        clock=platform.clock,
    )


def build_connector(
    platform: Platform, connection: Connection, registry: ConnectorRegistry | None = None
) -> Any:
    """A live connector for ``connection``, reused per process until the connection changes."""
    with _instances_lock:
        cached = _instances.get(_instance_key(platform, connection.id))
        if cached is not None and cached[0] == connection.updated_at:
            return cached[1]
    config = {**connection.config, **unseal_secrets(platform, connection)}
    context = connector_context(platform, connection)
    context.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    instance = (registry or connector_registry()).build(
        ConnectorKind(connection.kind), connection.type_key, config, context
    )
    with _instances_lock:
        _instances[_instance_key(platform, connection.id)] = (connection.updated_at, instance)
    return instance


def state_scope(connection: Connection) -> str:
    """The key of a connection's own state in ``connector_state``."""
    return f"{connection.kind}:{connection.id}"


def ca_gateway_by_id(
    platform: Platform, session: Session, connection_id: int, updated_at: datetime
) -> CAGateway:
    """The live gateway of CA connection ``connection_id``; its row is read only when not built yet."""
    with _instances_lock:
        cached = _instances.get(_instance_key(platform, connection_id))
    if cached is not None and cached[0] == updated_at:
        gateway: CAGateway = cached[1]
        return gateway
    connection = session.get(Connection, connection_id)
    if connection is None:
        raise NotFoundError(f"CA connection {connection_id} no longer exists", field="ca_connection")
    return build_ca_gateway(platform, connection)


def build_ca_gateway(platform: Platform, connection: Connection) -> CAGateway:
    if connection.kind != ConnectorKind.CA_GATEWAY.value:
        raise InvalidInputError(
            f"connection '{connection.name}' is not a CA connection", field="ca_connection"
        )
    gateway: CAGateway = build_connector(platform, connection)
    return gateway


def check_connection(
    session: Session, ctx: AuditContext, platform: Platform, connection: Connection
) -> CheckResult:
    """Runs the connector's credentials and reachability check and keeps the outcome on the row."""
    if connection.hosted_on_agent:
        # Its files and programs are on the agent's host: a check run here would test the wrong machine.
        raise ConflictError(
            f"store '{connection.name}' is hosted on an agent; check it there with 'sslclm store validate'",
            field="store",
        )
    connector = build_connector(platform, connection)
    try:
        result: CheckResult = connector.check()
    except Exception as exc:  # a failing check is a result to show, not an error of this request
        result = CheckResult(
            ok=False, message=f"{type(exc).__name__}: {getattr(exc, 'message', str(exc))[:300]}"
        )
    connection.last_check_at = platform.clock()
    connection.last_check_ok = result.ok
    connection.last_check_message = result.message
    record(
        session,
        ctx,
        "connection.check",
        "connection",
        connection.id,
        {"ok": result.ok, "message": result.message},
    )
    return result


def http01_answer(session: Session, platform: Platform, token: str) -> bytes | None:
    """The key authorization any enabled ACME connection has set up for ``token``, or None.

    Each connection keeps its open http-01 challenges in its own state (written by whichever worker
    runs the order), so the platform's one responder looks in each of them.
    """
    # Imported here: the acme library is only needed once a challenge is actually fetched.
    from sslclm.connectors.acme import http01_response

    rows = session.execute(
        select(Connection.id, Connection.kind).where(
            Connection.kind == ConnectorKind.CA_GATEWAY.value,
            Connection.type_key == "acme",
            Connection.enabled.is_(True),
        )
    ).all()
    for connection_id, kind in rows:
        answer = http01_response(
            DatabaseStateStore(platform.sessions, f"{kind}:{connection_id}", platform.clock), token
        )
        if answer is not None:
            return answer
    return None


def ensure_crl_url(
    session: Session, ctx: AuditContext, platform: Platform, connection: Connection, base_url: str | None
) -> None:
    """Points a built-in CA's CRL distribution point at the platform's own CRL route under ``base_url``.

    Without a base URL (the CLI with no ``SSLCLM_PUBLIC_URL``) the certificates carry no CRL URL;
    setting ``crl_url`` later fixes it for certificates issued from then on.
    """
    if connection.type_key != "local" or connection.config.get("crl_url") or not base_url:
        return
    config = {
        **connection.config,
        "crl_url": f"{base_url.rstrip('/')}/api/v1/ca-connections/{connection.id}/crl",
    }
    update_connection(session, ctx, platform, connection, config)
