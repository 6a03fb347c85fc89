"""HTTPS calls to a CA's REST API for connectors, every failure turned into the error the platform acts on.

- the server answered 401/403: :class:`CARejectedError` naming the credentials (retrying will not help);
- 429: one wait of ``Retry-After`` seconds when that is short, then :class:`CAUnavailableError` carrying
  ``retry_after_seconds``; 408 and 5xx: :class:`CAUnavailableError`; other 4xx: :class:`CARejectedError`
  with the CA's own messages;
- no answer: :class:`CAUnavailableError`. ``request_sent=False`` when the connection failed before the
  request left (refused, DNS, TLS handshake), ``outcome_unknown=True`` when it may have reached the
  CA (read timeout, connection dropped) — an order placed then may exist;
- a 2xx body that is not the JSON the API promises: non-retryable :class:`ConnectorError`
  (``outcome_unknown=True``, since the server did act on the request).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests
import requests.auth
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

from sslclm.errors import CARejectedError, CAUnavailableError, ConnectorError, InvalidInputError, SslClmError


def verify_setting(ca_bundle: str | None, data_dir: Path) -> bool | str:
    """What ``requests`` verifies the server against: the system store, a PEM file, or PEM text (written
    once to a file of its own, since requests takes trust anchors from files only)."""
    if ca_bundle is None:
        return True
    if "-----BEGIN CERTIFICATE-----" not in ca_bundle:
        if not Path(ca_bundle).is_file():
            raise InvalidInputError(f"the CA bundle {ca_bundle} does not exist", field="ca_bundle")
        return ca_bundle
    path = data_dir / f"ca-bundle-{hashlib.sha256(ca_bundle.encode()).hexdigest()[:16]}.pem"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(ca_bundle)
        tmp.replace(path)
    return str(path)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _never_sent(exc: requests.exceptions.RequestException) -> bool:
    if isinstance(exc, requests.exceptions.SSLError | requests.exceptions.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


def transport_error(exc: requests.exceptions.RequestException, action: str, vendor: str) -> SslClmError:
    if isinstance(exc, requests.exceptions.SSLError):
        return CAUnavailableError(
            f"{action}: TLS with {vendor} failed ({_first_line(exc)}); check ca_bundle", request_sent=False
        )
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        if _never_sent(exc):
            return CAUnavailableError(
                f"{action}: cannot reach {vendor} ({_first_line(exc)})", request_sent=False
            )
        return CAUnavailableError(
            f"{action}: {vendor} did not answer ({_first_line(exc)})", outcome_unknown=True
        )
    return ConnectorError(f"{action}: {_first_line(exc)}", retryable=False, request_sent=False)


def retry_after_seconds(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def vendor_messages(response: requests.Response) -> tuple[str, list[str]]:
    """The CA's error messages and codes: ``{"errors": [{"code", "message"}]}`` (DigiCert, Entrust) or
    ``{"code", "description"}`` (Sectigo)."""
    try:
        body = response.json()
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and errors:
            texts = [str(e.get("message") or e.get("code")) for e in errors if isinstance(e, dict)]
            codes = [str(e.get("code")) for e in errors if isinstance(e, dict) and e.get("code")]
            return "; ".join(texts), codes
        if isinstance(body, dict) and body.get("description"):
            return str(body["description"]), [str(body.get("code"))]
    except ValueError:
        pass
    return (response.reason or f"HTTP {response.status_code}"), []


def http_error(response: requests.Response, action: str, vendor: str, credentials: str) -> SslClmError:
    status = response.status_code
    text, codes = vendor_messages(response)
    where = f"{action}: {vendor} answered HTTP {status}"
    if status in (401, 403):
        return CARejectedError(
            f"{where} ({text}); check {credentials} and its permissions", http_status_code=status
        )
    if status == 429:
        wait = retry_after_seconds(response)
        later = f"; retry after {wait:g} s" if wait is not None else ""
        return CAUnavailableError(
            f"{where}: rate limit reached ({text}){later}", http_status_code=status, retry_after_seconds=wait
        )
    if status == 408 or status >= 500:
        return CAUnavailableError(f"{where} ({text})", http_status_code=status)
    return CARejectedError(f"{where}: {text}", http_status_code=status, vendor_codes=codes)


def json_of(response: requests.Response, action: str, vendor: str) -> Any:
    try:
        return response.json()
    except ValueError:
        kind = response.headers.get("Content-Type", "no content type")
        raise ConnectorError(
            f"{action}: {vendor} answered {kind} instead of the JSON of its API; check the URL",
            retryable=False,
            outcome_unknown=True,
        ) from None


class Transport:
    """One base URL and credential; each call opens and closes its own connection pool, so an
    instance is safe to share between threads."""

    def __init__(
        self,
        *,
        vendor: str,
        credentials: str,
        base_url: str,
        headers: Mapping[str, str],
        verify: bool | str,
        timeout: float,
        max_rate_limit_wait: float,
        auth: requests.auth.AuthBase | tuple[str, str] | None = None,
        cert: tuple[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.vendor = vendor
        self.credentials = credentials  # named in the message when the CA refuses them
        self.auth = auth
        self.cert = cert
        self.base_url = base_url
        self.headers = dict(headers)
        self.verify = verify
        self.timeout = timeout
        self.max_rate_limit_wait = max_rate_limit_wait
        self.sleep = sleep

    def call(
        self,
        method: str,
        path: str,
        *,
        action: str,
        body: Any = None,
        params: Mapping[str, str | int] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> requests.Response:
        for attempt in (1, 2):
            try:
                response = requests.request(
                    method,
                    self.base_url + path,
                    headers=self.headers,
                    json=body,
                    data=data,
                    params=params,
                    timeout=self.timeout,
                    verify=self.verify,
                    auth=self.auth,
                    cert=self.cert,
                )
            except requests.exceptions.RequestException as exc:
                raise transport_error(exc, action, self.vendor) from None
            if response.status_code == 429 and attempt == 1:
                wait = retry_after_seconds(response)
                if wait is not None and wait <= self.max_rate_limit_wait:
                    # A 429 means the request was not processed, so repeating it is safe.
                    self.sleep(wait)
                    continue
            if response.status_code >= 400:
                raise http_error(response, action, self.vendor, self.credentials)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def json(self, method: str, path: str, *, action: str, **kwargs: Any) -> Any:
        return json_of(self.call(method, path, action=action, **kwargs), action, self.vendor)
