"""Policies, their open violations (filtered, keyset-paged) and exemptions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import ValidationError
from sqlalchemy import select
from starlette.responses import Response

from sslclm.api.deps import SessionDep
from sslclm.errors import SslClmError
from sslclm.policies import service
from sslclm.policies.models import PolicyExemption
from sslclm.web.common import PAGE_SIZE, CertReader, error_message, render
from sslclm.web.forms import validation_message

router = APIRouter(include_in_schema=False)
FILTERS = ("severity", "check", "policy", "owner", "team")


@router.get("/policies")
def policies(request: Request, principal: CertReader, session: SessionDep) -> Response:
    params = request.query_params
    values = {name: params.get(name) for name in FILTERS if params.get(name)}
    cursor_text = params.get("cursor", "")
    error = None
    items: list[dict[str, object]] = []
    after = None
    try:
        flt = service.ViolationFilter(**values)  # type: ignore[arg-type]
        items, after = service.list_violations(
            session, flt, limit=PAGE_SIZE, after_id=int(cursor_text) if cursor_text.isdigit() else None
        )
    except ValidationError as exc:
        error = validation_message(exc)
    except SslClmError as exc:
        error = error_message(exc)
    keep = "".join(f"&{k}={v}" for k, v in values.items())
    exemptions = [
        service.exemption_view(row)
        for row in session.execute(
            select(PolicyExemption).order_by(PolicyExemption.id.desc()).limit(100)
        ).scalars()
    ]
    return render(
        request,
        "policies.html",
        {
            "policies": [service.policy_view(p) for p in service.list_policies(session)],
            "violations": items,
            "exemptions": exemptions,
            "values": values,
            "error": error,
            "next_url": f"/ui/policies?cursor={after}{keep}" if after else None,
            "export_query": "&".join(f"{k}={v}" for k, v in values.items()),
        },
        principal=principal,
        status_code=400 if error else 200,
    )
