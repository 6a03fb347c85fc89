"""Connectors: CA connections and stores, forms generated from each type's config schema, checks,
and the connector types that failed to load (shown with their error, never crashing the page)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.auth.permissions import Permission
from sslclm.errors import InvalidInputError, SslClmError
from sslclm.spi.capabilities import ConnectorKind
from sslclm.web.common import CertReader, WebPrincipal, audit_context, error_message, redirect, render
from sslclm.web.pages.agent_stores import runs_on
from sslclm.web.schema_form import config_from_form, form_fields
from sslclm.workflows import connections

router = APIRouter(include_in_schema=False)
# The kinds configured as connections on this screen (notifiers and discovery sources have their own).
KINDS = {"ca-gateway": "CA connections", "cert-store": "Stores", "discovery-source": "Discovery sources"}


def _kind(value: str) -> ConnectorKind:
    if value not in KINDS:
        raise InvalidInputError(f"unknown connector kind '{value[:30]}'", field="kind")
    return ConnectorKind(value)


def _overview(session: Session) -> dict[str, Any]:
    registry = connections.connector_registry()
    sections = []
    for kind, title in KINDS.items():
        described = registry.describe(ConnectorKind(kind))
        sections.append(
            {
                "kind": kind,
                "title": title,
                "rows": [
                    {
                        "row": row,
                        "config": connections.masked_config(row, registry),
                        # Only a store can be hosted on an agent.
                        "runs_on": runs_on(session, row) if kind == ConnectorKind.CERT_STORE.value else None,
                    }
                    for row in connections.list_connections(session, ConnectorKind(kind))
                ],
                "types": described["types"],
                "failures": described["failures"],
            }
        )
    return {"sections": sections, "error": None}


@router.get("/connectors")
def overview(request: Request, principal: CertReader, session: SessionDep) -> Response:
    return render(request, "connectors.html", _overview(session), principal=principal)


def _type_of(kind: ConnectorKind, type_key: str) -> dict[str, Any]:
    for described in connections.connector_registry().describe(kind)["types"]:
        if described["type"] == type_key:
            return dict(described)
    raise InvalidInputError(f"no {kind.value} connector type '{type_key[:64]}' is installed", field="type")


@router.get("/connectors/{kind}/new/{type_key}")
def new_form(kind: str, type_key: str, request: Request, principal: WebPrincipal) -> Response:
    principal.require(Permission.CONNECTION_MANAGE)
    described = _type_of(_kind(kind), type_key)
    fields = form_fields(described["config_schema"])
    return render(
        request,
        "connector_form.html",
        {"kind": kind, "described": described, "fields": fields, "values": {}, "error": None},
        principal=principal,
    )


@router.post("/connectors/{kind}/new/{type_key}")
async def create(
    kind: str,
    type_key: str,
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
) -> Response:
    principal.require(Permission.CONNECTION_MANAGE)
    connector_kind = _kind(kind)
    described = _type_of(connector_kind, type_key)
    schema = described["config_schema"]
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    try:
        config = config_from_form(schema, form)
        row = connections.create_connection(
            session,
            audit_context(request, principal),
            platform,
            kind=connector_kind.value,
            name=form.get("name", "").strip(),
            type_key=type_key,
            config=config,
        )
        if connector_kind is ConnectorKind.CA_GATEWAY:
            connections.ensure_crl_url(
                session,
                audit_context(request, principal),
                platform,
                row,
                platform.settings.public_url or str(request.base_url),
            )
        session.commit()
    except SslClmError as exc:
        session.rollback()
        # Secrets are never echoed back into the page.
        values = {k: v for k, v in form.items() if k != "csrf_token" and "password" not in k}
        for field in form_fields(schema):
            if field.widget == "password":
                values.pop(field.input_name, None)
        return render(
            request,
            "connector_form.html",
            {
                "kind": kind,
                "described": described,
                "fields": form_fields(schema),
                "values": values,
                "error": error_message(exc),
            },
            principal=principal,
            status_code=exc.http_status,
        )
    return redirect("/ui/connectors", "created")


@router.post("/connectors/{connection_id}/check")
def check(
    connection_id: int, request: Request, principal: WebPrincipal, session: SessionDep, platform: PlatformDep
) -> Response:
    try:
        principal.require(Permission.CONNECTION_MANAGE)
        row = connections.get_connection(session, connection_id)
        connections.check_connection(session, audit_context(request, principal), platform, row)
        session.commit()
    except SslClmError as exc:
        session.rollback()
        context = _overview(session)
        context["error"] = error_message(exc)
        return render(request, "connectors.html", context, principal=principal, status_code=exc.http_status)
    return redirect("/ui/connectors", "checked")
