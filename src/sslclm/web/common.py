"""What every page shares: rendering with the security headers, the signed-in user, permission checks.

Pages authenticate through the API's own ``get_principal`` (session cookie, CSRF token checked on
every POST), so the UI can never allow what the API refuses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.responses import Response

from sslclm.api.deps import get_principal
from sslclm.audit.service import AuditContext
from sslclm.auth.permissions import Permission
from sslclm.auth.principal import Principal
from sslclm.core.clock import as_utc
from sslclm.errors import AuthenticationError, SslClmError

SECURITY_HEADERS = {
    # No inline script or style anywhere: every asset is a file under /ui/static.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
PAGE_SIZE = 50

# Fixed messages a redirect may ask a page to show: the query names one, never carries text.
NOTICES = {
    "tagged": "Tags updated.",
    "owner": "Owner updated.",
    "renew": "Renewal requested; follow its job below.",
    "renew-some": "Renewal requested for the managed certificates among the selection.",
    "revoke": "Revocation requested; follow its job below.",
    "enrolled": "Enrollment requested; follow its job below.",
    "deploy": "Deployment requested; follow its job below.",
    "undeploy": "Removal from the store requested; follow its job below.",
    "imported": "Certificates imported.",
    "retried": "Job queued again.",
    "cancelled": "Cancellation requested.",
    "scan": "Scan queued.",
    "validate": "Validation queued for the agent hosting the store; its job shows on the agent's page.",
    "checked": "Connection checked.",
    "created": "Created.",
    "approved": "Approved.",
    "rejected": "Rejected.",
    "revoked": "Revoked.",
    "updated": "Saved.",
    "deleted": "Deleted.",
}


class LoginRequiredError(AuthenticationError):
    """Log in to see this page."""


async def web_principal(request: Request) -> Principal:
    """``get_principal`` for pages: a failure shows the login form instead of a JSON problem."""
    try:
        return await get_principal(request)
    except AuthenticationError as exc:
        raise LoginRequiredError(exc.message) from None


WebPrincipal = Annotated[Principal, Depends(web_principal)]


def page_requires(permission: Permission) -> Callable[[Principal], Awaitable[Principal]]:
    """Like the API's ``require``: the same permission matrix, a page-friendly login failure."""

    async def checker(principal: WebPrincipal) -> Principal:
        principal.require(permission)
        return principal

    checker.required_permission = permission  # type: ignore[attr-defined]
    return checker


CertReader = Annotated[Principal, Depends(page_requires(Permission.CERT_READ))]
CertWriter = Annotated[Principal, Depends(page_requires(Permission.CERT_WRITE))]
CertIssuer = Annotated[Principal, Depends(page_requires(Permission.CERT_ISSUE))]


def audit_context(request: Request, principal: Principal) -> AuditContext:
    return AuditContext(
        actor=principal.actor,
        request_id=getattr(request.state, "request_id", None),
        source_address=request.client.host if request.client else None,
    )


def templates(request: Request) -> Jinja2Templates:
    found: Jinja2Templates = request.app.state.templates
    return found


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    principal: Principal | None = None,
    status_code: int = 200,
) -> Response:
    notice = NOTICES.get(request.query_params.get("done", ""))
    full = {"principal": principal, "notice": notice, "Permission": Permission, **context}
    return templates(request).TemplateResponse(
        request, name, full, status_code=status_code, headers=SECURITY_HEADERS
    )


def redirect(url: str, done: str | None = None) -> RedirectResponse:
    """After a successful POST: see the result page (303, so a reload does not post again)."""
    if done:
        url = f"{url}{'&' if '?' in url else '?'}{urlencode({'done': done})}"
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def error_message(exc: SslClmError) -> str:
    field = exc.field
    return f"{field}: {exc.message}" if field and field not in exc.message else exc.message


def action_refused(
    request: Request, principal: Principal, session: Session, exc: SslClmError, title: str = "Not done"
) -> Response:
    """The error page for a form action the platform refused; what the action had changed is rolled back."""
    session.rollback()
    return render(
        request,
        "error.html",
        {"title": title, "message": error_message(exc)},
        principal=principal,
        status_code=exc.http_status,
    )


def format_time(value: datetime | None) -> str:
    if value is None:
        return "—"
    return as_utc(value).strftime("%Y-%m-%d %H:%M UTC")


def format_day(value: datetime | None) -> str:
    if value is None:
        return "—"
    return as_utc(value).strftime("%Y-%m-%d")


def query_without(request: Request, *names: str, **changes: str | None) -> str:
    """The current page's query string with some parameters dropped or replaced (sorting, paging)."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in names and k not in changes]
    params += [(k, v) for k, v in changes.items() if v is not None]
    return urlencode(params)
