"""HTTPS to the agent listener: the pinned first contact (registration) and mutual TLS afterwards."""

from __future__ import annotations

import hashlib
import ssl
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from sslclm.errors import (
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    PermissionDeniedError,
    SslClmError,
)
from sslclm.pki.identity import pem_to_der
from sslclm.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION

Model = TypeVar("Model", bound=BaseModel)
HEADERS = {PROTOCOL_HEADER: str(PROTOCOL_VERSION), "User-Agent": "sslclm-agent"}


class ServerUnavailableError(SslClmError):
    """The server could not be reached or answered with a server error; try again later."""

    http_status = 503
    code = "server-unavailable"


def normalize_fingerprint(value: str) -> str:
    cleaned = value.strip().lower().replace(":", "")
    if cleaned.startswith("sha256/"):
        cleaned = cleaned[len("sha256/") :]
    if len(cleaned) != 64 or any(c not in "0123456789abcdef" for c in cleaned):
        raise ConfigurationError(
            "--ca-fingerprint must be a SHA-256 fingerprint (64 hex digits, colons allowed)"
        )
    return cleaned


def fetch_pinned_ca(server: str, fingerprint: str, *, timeout: float = 15.0) -> str:
    """The server's CA, accepted only if its SHA-256 fingerprint is the one the operator gave.

    This first request is not verified (the agent trusts nothing yet); what it returns is checked
    against the pin, and everything after it — the token included — goes over TLS verified
    against that CA.
    """
    wanted = normalize_fingerprint(fingerprint)
    try:
        with httpx.Client(verify=False, timeout=timeout, headers=HEADERS) as client:  # noqa: S501
            response = client.get(f"{server}/agent/v1/ca")
    except httpx.HTTPError as exc:
        raise ServerUnavailableError(f"cannot reach {server}: {exc}") from None
    if response.status_code != 200:
        raise ServerUnavailableError(f"{server} answered {response.status_code} for its CA")
    ca_pem = str(response.json().get("server_ca_pem", ""))
    got = hashlib.sha256(pem_to_der(ca_pem)).hexdigest()
    if got != wanted:
        raise AuthenticationError(
            f"the server's CA has fingerprint {got}, not the one given; refusing to send the token"
        )
    return ca_pem


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        detail = str(response.json().get("detail") or response.json().get("title") or response.text)
    except ValueError:
        detail = response.text[:300]
    status = response.status_code
    if status == 401:
        raise AuthenticationError(detail)
    if status == 403:
        raise PermissionDeniedError(detail)
    if status == 409:
        raise ConflictError(detail)
    if status >= 500:
        raise ServerUnavailableError(f"server error {status}: {detail}")
    raise SslClmError(f"{status}: {detail}")


class AgentClient:
    """One keep-alive connection pool to the listener; every call presents the identity."""

    def __init__(self, server: str, context: ssl.SSLContext, *, timeout: float = 30.0) -> None:
        self.server = server
        self._client = httpx.Client(verify=context, timeout=timeout, headers=HEADERS)

    def close(self) -> None:
        self._client.close()

    def call(
        self, method: str, path: str, body: BaseModel | None, answer: type[Model] | None, **params: Any
    ) -> Model | None:
        try:
            response = self._client.request(
                method,
                f"{self.server}{path}",
                content=body.model_dump_json() if body is not None else None,
                headers={"Content-Type": "application/json"} if body is not None else None,
                params=params or None,
                timeout=httpx.Timeout(30.0, read=float(params.get("wait", 0)) + 30.0),
            )
        except (httpx.TransportError, ssl.SSLError) as exc:
            raise ServerUnavailableError(f"cannot reach {self.server}: {exc}") from None
        _raise_for(response)
        if answer is None:
            return None
        return answer.model_validate_json(response.content)


def post_registration(server: str, ca_pem: str, body: BaseModel, answer: type[Model]) -> Model:
    context = ssl.create_default_context(cadata=ca_pem)
    with httpx.Client(verify=context, timeout=30.0, headers=HEADERS) as client:
        try:
            response = client.post(
                f"{server}/agent/v1/register",
                content=body.model_dump_json(),
                headers={"Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise ServerUnavailableError(f"cannot reach {server}: {exc}") from None
    _raise_for(response)
    return answer.model_validate_json(response.content)
