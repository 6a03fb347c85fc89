"""A fake Microsoft Entra ID token service for one tenant (the v2.0 endpoints MSAL uses), following the
documented client-credentials flow, in front of the fake Key Vault (:mod:`.azure_keyvault`):

- ``GET /{tenant}/v2.0/.well-known/openid-configuration`` — the OpenID discovery document MSAL reads;
- ``POST /{tenant}/oauth2/v2.0/token`` — client-credentials grant (``client_id``, ``client_secret``,
  ``scope`` ending in ``/.default``): ``{"token_type": "Bearer", "expires_in", "access_token"}``; errors
  are ``{"error", "error_description": "AADSTSnnnn: ...", "error_codes"}``; a wrong secret is 401
  ``invalid_client`` (AADSTS7000215).

Tokens are opaque; the vault asks :meth:`EntraIdApp.grant_for` what a token stands for.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from dataclasses import dataclass

from tests.support.fakes.base import App, Request, Response


@dataclass
class Grant:
    client_id: str
    tenant_id: str
    resource: str
    expires_at: float


class EntraIdApp(App):
    """The client-credentials flow of the Microsoft identity platform (v2.0 endpoints) for one tenant."""

    name = "entra-id"

    def __init__(self, tenant_id: str, clients: dict[str, str]) -> None:
        super().__init__()
        self.tenant_id = tenant_id
        self.clients = dict(clients)  # client id -> client secret
        self.grants: dict[str, Grant] = {}
        self.token_lifetime = 3599

    def error(self, status: int, message: str, code: str = "temporarily_unavailable") -> Response:
        number = int(m.group(1)) if (m := re.match(r"AADSTS(\d+)", message)) else 0
        return Response.json(
            status,
            {
                "error": code,
                "error_description": message,
                "error_codes": [number] if number else [],
                "trace_id": str(uuid.uuid4()),
                "correlation_id": str(uuid.uuid4()),
            },
        )

    def grant_for(self, token: str) -> Grant | None:
        with self.lock:
            grant = self.grants.get(token)
        return grant if grant is not None and grant.expires_at > time.time() else None

    def route(self, request: Request) -> Response:
        parts = request.path.strip("/").split("/")
        tenant = parts[0] if parts else ""
        rest = "/".join(parts[1:])
        if tenant != self.tenant_id:
            return self.error(400, f"AADSTS90002: Tenant '{tenant}' not found.", "invalid_request")
        base = f"https://{request.headers.get('Host', '127.0.0.1')}/{tenant}"
        if rest == "v2.0/.well-known/openid-configuration" and request.method == "GET":
            return Response.json(
                200,
                {
                    "issuer": f"{base}/v2.0",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    "jwks_uri": f"{base}/discovery/v2.0/keys",
                    "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                    "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
                    "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                    "tenant_region_scope": "EU",
                },
            )
        if rest == "oauth2/v2.0/token" and request.method == "POST":
            return self._token(request.form())
        return self.error(
            404, f"AADSTS900561: The endpoint only accepts POST requests ({rest})", "invalid_request"
        )

    def _token(self, form: dict[str, str]) -> Response:
        if form.get("grant_type") != "client_credentials":
            return self.error(
                400, "AADSTS70003: The app requested an unsupported grant type.", "unsupported_grant_type"
            )
        client_id = form.get("client_id", "")
        if client_id not in self.clients:
            return self.error(
                400,
                f"AADSTS700016: Application with identifier '{client_id}' was not found in the directory.",
                "unauthorized_client",
            )
        if not secrets.compare_digest(form.get("client_secret", ""), self.clients[client_id]):
            return self.error(
                401,
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request "
                "is the client secret value, not the client secret ID, for a secret added to app "
                f"'{client_id}'.",
                "invalid_client",
            )
        scopes = form.get("scope", "").split()
        resources = [s.removesuffix("/.default") for s in scopes if s.endswith("/.default")]
        if len(resources) != 1:
            return self.error(
                400,
                "AADSTS1002012: The provided value for scope is not valid. Client credential flows must have "
                "a scope value with /.default suffixed to the resource identifier (application ID URI).",
                "invalid_scope",
            )
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.grants[token] = Grant(
                client_id, self.tenant_id, resources[0].rstrip("/"), time.time() + self.token_lifetime
            )
        return Response.json(
            200,
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": token,
            },
        )
