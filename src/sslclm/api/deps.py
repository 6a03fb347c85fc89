"""Request dependencies: the platform, a database session, the caller and their permissions."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext
from sslclm.auth.models import ApiToken, User, WebSession
from sslclm.auth.permissions import Permission, role_within
from sslclm.auth.principal import Principal
from sslclm.auth.secrets import TOKEN_PREFIX, hash_token
from sslclm.core.clock import as_utc
from sslclm.core.platform import Platform
from sslclm.errors import AuthenticationError, PermissionDeniedError

SESSION_COOKIE = "sslclm_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A verified token is trusted for a few seconds per process, so a busy client costs one lookup
# per interval instead of one per request; revocation on this node clears it at once.
TOKEN_CACHE_SECONDS = 5.0
LAST_USED_RESOLUTION = timedelta(minutes=1)


# The dependencies that do no I/O are coroutines: FastAPI runs a plain function dependency in
# its thread pool, and each such hop costs a request more than the work itself.


async def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


async def get_session(platform: PlatformDep) -> AsyncIterator[Session]:
    session = platform.sessions()  # connects on first use, in the endpoint's thread
    try:
        yield session
    finally:
        # Closing hands the connection back to the pool with a rollback: a round trip, so not
        # on the event loop.
        await run_in_threadpool(session.close)


SessionDep = Annotated[Session, Depends(get_session)]


class TokenCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, token_hash: str) -> Principal | None:
        entry = self._entries.get(token_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, token_hash: str, principal: Principal) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[token_hash] = (time.monotonic() + TOKEN_CACHE_SECONDS, principal)

    def forget_token(self, token_id: int) -> None:
        for key, (_, principal) in list(self._entries.items()):
            if principal.token_id == token_id:
                self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


def _principal_from_token(platform: Platform, cache: TokenCache, raw: str) -> Principal:
    if not raw.startswith(TOKEN_PREFIX):
        raise AuthenticationError("malformed bearer token")
    digest = hash_token(raw)
    cached = cache.get(digest)
    if cached is not None:
        return cached
    now = platform.clock()
    with platform.sessions() as session:
        row = session.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == digest)
        ).first()
        if row is None:
            raise AuthenticationError("unknown bearer token")
        token, user = row
        if token.revoked_at is not None:
            raise AuthenticationError("this API token was revoked")
        if token.expires_at is not None and as_utc(token.expires_at) <= now:
            raise AuthenticationError("this API token has expired")
        if user.disabled:
            raise AuthenticationError("this user is disabled")
        if token.last_used_at is None or now - as_utc(token.last_used_at) > LAST_USED_RESOLUTION:
            session.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
            session.commit()
        # A token never acts above its owner's current role (the owner may have been demoted since).
        role = token.role if role_within(token.role, user.role) else user.role
        principal = Principal(user.id, user.username, role, "token", token_id=token.id)
    cache.put(digest, principal)
    return principal


def _principal_from_cookie(platform: Platform, raw: str) -> Principal:
    now = platform.clock()
    with platform.sessions() as session:
        row = session.execute(
            select(WebSession, User)
            .join(User, User.id == WebSession.user_id)
            .where(WebSession.id_hash == hash_token(raw))
        ).first()
        if row is None:
            raise AuthenticationError("session expired or signed out; log in again")
        web_session, user = row
        if as_utc(web_session.expires_at) <= now or user.disabled:
            raise AuthenticationError("session expired or signed out; log in again")
        return Principal(user.id, user.username, user.role, "session", csrf_token=web_session.csrf_token)


async def _csrf_token_sent(request: Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get("csrf_token")
        return value if isinstance(value, str) else None
    return None


# Declares the bearer scheme in the OpenAPI document (the docs page's Authorize button); the header
# itself is read below, where a session cookie is the alternative.
_bearer_scheme = HTTPBearer(auto_error=False, description="An API token: sslclm token create")


async def get_principal(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)] = None,
) -> Principal:
    platform: Platform = request.app.state.platform
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise AuthenticationError("use 'Authorization: Bearer <token>'")
        principal = _principal_from_token(platform, request.app.state.token_cache, credentials.strip())
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise AuthenticationError("authentication required: send a bearer token or log in")
        principal = _principal_from_cookie(platform, cookie)
        if request.method not in SAFE_METHODS:
            sent = await _csrf_token_sent(request)
            if not sent or sent != principal.csrf_token:
                raise PermissionDeniedError("missing or wrong CSRF token", field=CSRF_HEADER)
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require(permission: Permission) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets the request through only with ``permission``."""

    async def checker(principal: CurrentPrincipal) -> Principal:
        principal.require(permission)
        return principal

    checker.required_permission = permission  # type: ignore[attr-defined]
    return checker


async def audit_context(request: Request, principal: CurrentPrincipal) -> AuditContext:
    return AuditContext(
        actor=principal.actor,
        request_id=getattr(request.state, "request_id", None),
        source_address=request.client.host if request.client else None,
    )


AuditDep = Annotated[AuditContext, Depends(audit_context)]
