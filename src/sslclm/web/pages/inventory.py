"""The inventory: search, filters, sortable columns, keyset paging and bulk actions.

Listing goes through ``sslclm.inventory.query`` (the API's own query), so a page deep in a million
certificates costs what the first one does. Bulk actions change each selected certificate through
the same services the API uses, each change audited.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from pydantic import ValidationError
from sqlalchemy import select
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.auth.permissions import Permission
from sslclm.auth.principal import Principal
from sslclm.errors import InvalidInputError, SslClmError
from sslclm.inventory import query, service
from sslclm.inventory.export import stream_csv
from sslclm.inventory.models import Certificate, Issuer
from sslclm.web.common import (
    PAGE_SIZE,
    CertReader,
    WebPrincipal,
    action_refused,
    audit_context,
    error_message,
    redirect,
    render,
)
from sslclm.web.forms import validation_message
from sslclm.workflows import managed as managed_service
from sslclm.workflows.models import ManagedCertificate

router = APIRouter(include_in_schema=False)

FILTER_FIELDS = (
    "q",
    "expires_after",
    "expires_before",
    "issuer",
    "key_algorithm",
    "owner",
    "team",
    "tag",
    "source",
)
SORTABLE = {
    "common_name": "Common name",
    "issuer": "Issuer",
    "not_after": "Expires",
    "key_algorithm": "Key",
    "owner": "Owner",
    "team": "Team",
    "source": "Source",
}
MAX_BULK = 500


def parse_filter(request: Request) -> query.CertificateFilter:
    """The filter from the page's query string; empty fields mean "any"."""
    params = request.query_params
    values: dict[str, Any] = {name: params.get(name) for name in FILTER_FIELDS if params.get(name)}
    statuses = [s for s in params.getlist("status") if s]
    if statuses:
        values["status"] = statuses
    try:
        return query.CertificateFilter(**values)
    except ValidationError as exc:
        raise InvalidInputError(validation_message(exc), field="filter") from None


@router.get("/certificates")
def inventory(
    request: Request, principal: CertReader, session: SessionDep, platform: PlatformDep
) -> Response:
    params = request.query_params
    sort = params.get("sort", "not_after")
    descending = params.get("desc") == "1"
    error = None
    items: list[dict[str, Any]] = []
    next_cursor = None
    try:
        flt = parse_filter(request)
        if sort not in SORTABLE:
            raise InvalidInputError(f"cannot sort by '{sort}'", field="sort")
        page = query.list_certificates(
            session,
            flt,
            sort=sort,
            descending=descending,
            limit=PAGE_SIZE,
            cursor=params.get("cursor") or None,
            now=platform.clock(),
            expiring_days=platform.settings.expiring_days,
        )
        items, next_cursor = page.items, page.next_cursor
        filter_query = urlencode(
            [(k, v) for k, v in params.multi_items() if k in (*FILTER_FIELDS, "status") and v]
        )
    except SslClmError as exc:
        error = error_message(exc)
        filter_query = ""
    base = [(k, v) for k, v in params.multi_items() if k not in ("cursor", "done") and v]
    next_url = f"/ui/certificates?{urlencode([*base, ('cursor', next_cursor)])}" if next_cursor else None
    first_url = f"/ui/certificates?{urlencode(base)}" if params.get("cursor") else None
    sort_links = {}
    for key in SORTABLE:
        flip = "0" if key == sort and descending else ("1" if key == sort else "0")
        kept = [(k, v) for k, v in base if k not in ("sort", "desc")]
        sort_links[key] = f"/ui/certificates?{urlencode([*kept, ('sort', key), ('desc', flip)])}"
    return render(
        request,
        "inventory.html",
        {
            "items": items,
            "error": error,
            "params": params,
            "statuses": [s.value for s in query.Status],
            "chosen_statuses": params.getlist("status"),
            "sort": sort,
            "descending": descending,
            "sortable": SORTABLE,
            "sort_links": sort_links,
            "next_url": next_url,
            "first_url": first_url,
            "export_query": filter_query,
            "can_write": principal.can(Permission.CERT_WRITE),
            "can_issue": principal.can(Permission.CERT_ISSUE),
        },
        principal=principal,
        status_code=400 if error else 200,
    )


def _selected(ids: list[str]) -> list[int]:
    chosen = sorted({int(i) for i in ids if i.isdigit()})
    if not chosen:
        raise InvalidInputError("select at least one certificate", field="ids")
    if len(chosen) > MAX_BULK:
        raise InvalidInputError(f"select at most {MAX_BULK} certificates at once", field="ids")
    return chosen


def _bulk_metadata(
    request: Request,
    principal: Principal,
    session: Any,
    platform: Any,
    ids: list[int],
    action: str,
    value: str,
) -> str:
    principal.require(Permission.CERT_WRITE)
    ctx = audit_context(request, principal)
    value = value.strip()
    if action == "tag":
        if not service.TAG.match(value):
            raise InvalidInputError("a tag is 1-128 letters, digits or _ . : / = -", field="value")
    elif len(value) > 255:
        raise InvalidInputError("an owner is at most 255 characters", field="value")
    for cert_id in ids:
        cert = service.get_certificate(session, cert_id)
        if action == "tag":
            patch = service.MetadataPatch(tags=[*service.tags_of(session, cert_id), value])
        else:
            patch = service.MetadataPatch(owner=value or None)
        service.update_metadata(session, ctx, cert, patch, now=platform.clock())
    return "tagged" if action == "tag" else "owner"


def _bulk_renew(request: Request, principal: Principal, session: Any, platform: Any, ids: list[int]) -> str:
    principal.require(Permission.CERT_ISSUE)
    ctx = audit_context(request, principal)
    rows = session.query(ManagedCertificate).filter(ManagedCertificate.current_certificate_id.in_(ids)).all()
    if not rows:
        raise InvalidInputError(
            "none of the selected certificates is managed, so none can be renewed", field="ids"
        )
    for row in rows:
        managed_service.request_issuance(session, ctx, platform, row, reason="renew")
    return "renew" if len(rows) == len(ids) else "renew-some"


def _bulk_export(session: Any, platform: Any, ids: list[int]) -> Response:
    """The selected certificates as CSV, in the columns of the inventory export (a read: not audited)."""
    now, window = platform.clock(), timedelta(days=platform.settings.expiring_days)
    stmt = (
        select(*query.SUMMARY_COLUMNS)
        .join(Issuer, Issuer.id == Certificate.issuer_id)
        .where(Certificate.id.in_(ids))
        .order_by(Certificate.id)
    )
    rows = session.connection().execute(stmt).all()
    tags = query.tags_for(session, [row.id for row in rows])
    items = [query.summarize(row, now, window, tags.get(row.id, ())) for row in rows]
    return Response(
        b"".join(stream_csv(items)),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="certificates-selected.csv"'},
    )


@router.post("/certificates/bulk")
def bulk_action(
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    action: Annotated[str, Form()] = "",
    value: Annotated[str, Form()] = "",
    ids: Annotated[list[str] | None, Form()] = None,
    back: Annotated[str, Form()] = "",
) -> Response:
    if not (principal.can(Permission.CERT_WRITE) or principal.can(Permission.CERT_ISSUE)):
        principal.require(Permission.CERT_WRITE)
    target = back if back.startswith("/ui/certificates") and "//" not in back else "/ui/certificates"
    try:
        chosen = _selected(ids or [])
        if action == "export":
            return _bulk_export(session, platform, chosen)
        if action in ("tag", "owner"):
            done = _bulk_metadata(request, principal, session, platform, chosen, action, value)
        elif action == "renew":
            done = _bulk_renew(request, principal, session, platform, chosen)
        else:
            raise InvalidInputError("choose an action: tag, owner, renew or export", field="action")
        session.commit()
    except SslClmError as exc:
        return action_refused(request, principal, session, exc, "Bulk action not done")
    return redirect(target, done)
