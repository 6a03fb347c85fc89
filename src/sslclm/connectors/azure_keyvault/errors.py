"""Azure SDK exceptions turned into the errors the platform acts on.

- the vault or Microsoft Entra ID refused the credentials (401, 403, an AADSTS error from the token
  endpoint): non-retryable, naming "credentials refused";
- throttled (429), failing (408, 5xx), unreachable or too slow: retryable (``request_sent=False`` when the
  connection failed before the request left, ``outcome_unknown=True`` when it may have been acted on);
- any other refusal (400 bad content, 409 a name in the deleted state): non-retryable with Key Vault's
  own message.

The SDK's exceptions carry the vault's ``{"error": {"code", "message"}}``; messages are cut to one line
and never include request bodies, so a PFX or its password cannot reach a log through them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from sslclm.errors import ConnectorError

CREDENTIALS_HINT = "check tenant_id, client_id and client_secret and the application's access to the vault"
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    line = lines[0] if lines else type(exc).__name__
    # The SDK prefixes "(Code) "; keep Key Vault's message, it names the problem.
    return line[:400]


def _vault_code(exc: HttpResponseError) -> str | None:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return str(code) if code else None


def _transport_error(exc: AzureError, action: str) -> ConnectorError:
    reason = _first_line(exc)
    if isinstance(exc, ServiceResponseError):
        return ConnectorError(
            f"{action}: Key Vault did not answer ({reason})", retryable=True, outcome_unknown=True
        )
    hint = "; check verify_tls and ca_bundle" if "CERTIFICATE_VERIFY_FAILED" in reason else ""
    return ConnectorError(
        f"{action}: cannot reach Key Vault or Microsoft Entra ID ({reason}){hint}",
        retryable=True,
        request_sent=False,
    )


def azure_error(exc: AzureError, action: str) -> ConnectorError:
    """The platform's error for an exception the Azure SDK raised while doing ``action``."""
    if isinstance(exc, ClientAuthenticationError) and exc.response is None:
        # Raised by the credential: the token endpoint refused (AADSTS...) or could not be reached.
        if isinstance(exc.__cause__, ServiceRequestError | ServiceResponseError):
            return _transport_error(exc.__cause__, action)
        reason = _first_line(exc)
        if "AADSTS" not in reason and ("connect" in reason.lower() or "timed out" in reason.lower()):
            return _transport_error(exc, action)
        return ConnectorError(
            f"{action}: credentials refused by Microsoft Entra ID ({reason}); {CREDENTIALS_HINT}",
            retryable=False,
        )
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        status = int(exc.status_code)
        reason = _first_line(exc)
        if status in (401, 403):
            return ConnectorError(
                f"{action}: credentials refused by the vault (HTTP {status}: {reason}); {CREDENTIALS_HINT}",
                retryable=False,
                http_status_code=status,
            )
        if status in _TRANSIENT_STATUSES:
            return ConnectorError(
                f"{action}: Key Vault answered HTTP {status} ({reason})",
                retryable=True,
                http_status_code=status,
            )
        if status == 409 and "deleted" in reason:
            reason += "; purge or recover it in the vault, or set purge_on_remove for the future"
        return ConnectorError(
            f"{action}: Key Vault refused the request (HTTP {status}: {reason})",
            retryable=False,
            http_status_code=status,
            vault_code=_vault_code(exc),
        )
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return _transport_error(exc, action)
    return ConnectorError(f"{action}: {_first_line(exc)}", retryable=True)


@contextmanager
def translated(action: str, *, absent_ok: bool = False) -> Iterator[None]:
    """Runs the block, re-raising any Azure SDK exception as the platform's error for ``action``.

    With ``absent_ok`` a 404 (``ResourceNotFoundError``) passes through for the caller to handle.
    """
    try:
        yield
    except AzureError as exc:
        if absent_ok and isinstance(exc, ResourceNotFoundError):
            raise
        raise azure_error(exc, action) from None
