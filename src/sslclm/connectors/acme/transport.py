"""One ACME conversation over the ``acme`` library, with the server's problems mapped to SSL-CLM errors.

Every request goes through :func:`call`, which retries ``badNonce`` (RFC 8555 6.5: the server rejected
the nonce before acting, so repeating is safe; Pebble rejects a share of good nonces on purpose) and
turns what the library raises into :class:`~sslclm.errors.CARejectedError` (will not succeed by
retrying), :class:`~sslclm.errors.CAUnavailableError` (may succeed later) or
:class:`~sslclm.errors.ConnectorError` (the server answered something ACME does not allow).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import requests
from acme import challenges, client, messages
from acme import errors as acme_errors
from cryptography import x509
from josepy.errors import DeserializationError
from josepy.interfaces import JSONDeSerializable

from sslclm.errors import CARejectedError, CAUnavailableError, ConnectorError, SslClmError

T = TypeVar("T")

BAD_NONCE_ATTEMPTS = 8
PEM_CHAIN = "application/pem-certificate-chain"

# Problems that repeating the same request will not fix.
REJECTED = frozenset(
    {
        "accountDoesNotExist",
        "alreadyRevoked",
        "badCSR",
        "badPublicKey",
        "badRevocationReason",
        "badSignatureAlgorithm",
        "caa",
        "compound",
        "connection",
        "dns",
        "externalAccountRequired",
        "incorrectResponse",
        "invalidContact",
        "malformed",
        "rejectedIdentifier",
        "tls",
        "unauthorized",
        "unknownHost",
        "unsupportedContact",
        "unsupportedIdentifier",
        "userActionRequired",
    }
)
# Problems of the server's state or load: worth another try later.
UNAVAILABLE = frozenset({"badNonce", "rateLimited", "serverInternal", "orderNotReady"})


def problem_text(error: messages.Error) -> str:
    """The server's explanation, as specific as it gives it (detail, else title, else the type)."""
    return str(error.detail or error.title or error.description or error.typ)


def translate(exc: BaseException, action: str) -> SslClmError:
    """The SSL-CLM error for what the ``acme`` library or ``requests`` raised while doing ``action``."""
    if isinstance(exc, SslClmError):
        return exc
    if isinstance(exc, messages.Error):
        code = exc.code or exc.typ
        message = f"{action}: {problem_text(exc)}"
        if exc.code in UNAVAILABLE:
            return CAUnavailableError(message, acme_error=code)
        if exc.code in REJECTED:
            return CARejectedError(message, acme_error=code)
        return ConnectorError(message, retryable=False, acme_error=code)
    if isinstance(exc, acme_errors.ConflictError):
        return CARejectedError(f"{action}: the server reports a conflict with {exc.location}")
    if isinstance(exc, acme_errors.ClientError) and exc.args and isinstance(exc.args[0], requests.Response):
        return _http_status_error(exc.args[0], action)
    if isinstance(exc, requests.exceptions.SSLError):
        return CAUnavailableError(
            f"{action}: TLS with the ACME server failed ({_first_line(exc)}); check ca_bundle"
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return CAUnavailableError(f"{action}: the ACME server did not answer in time")
    if isinstance(exc, requests.exceptions.RequestException):
        return CAUnavailableError(f"{action}: cannot reach the ACME server ({_first_line(exc)})")
    if isinstance(exc, DeserializationError | ValueError | KeyError | TypeError):
        return ConnectorError(
            f"{action}: the ACME server answered something that is not valid ACME ({_first_line(exc)})",
            retryable=False,
        )
    if isinstance(exc, acme_errors.Error):
        return ConnectorError(f"{action}: {_first_line(exc) or type(exc).__name__}", retryable=False)
    raise exc


def _http_status_error(response: requests.Response, action: str) -> SslClmError:
    status = response.status_code
    where = response.url or "the ACME server"
    if status >= 500 or status == 429:
        return CAUnavailableError(f"{action}: HTTP {status} from {where}")
    if 400 <= status < 500:
        return CARejectedError(f"{action}: HTTP {status} from {where}", http_status_code=status)
    return ConnectorError(f"{action}: unexpected HTTP {status} from {where}", retryable=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def call(action: str, operation: Callable[[], T], *, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run one request; repeat it on ``badNonce``; translate whatever else goes wrong."""
    for attempt in range(BAD_NONCE_ATTEMPTS):
        try:
            return operation()
        except messages.Error as exc:
            if exc.code == "badNonce" and attempt + 1 < BAD_NONCE_ATTEMPTS:
                sleep(0.05 * attempt)
                continue
            raise translate(exc, action) from None
        except (acme_errors.Error, requests.exceptions.RequestException, DeserializationError) as exc:
            raise translate(exc, action) from None
        except (ValueError, KeyError, TypeError) as exc:
            # The library parses the server's JSON as it goes; garbage surfaces as these.
            raise translate(exc, action) from None
    raise CAUnavailableError(f"{action}: the ACME server kept rejecting nonces")  # pragma: no cover


def _order(response: requests.Response) -> messages.Order:
    return cast(messages.Order, messages.Order.from_json(response.json()))


class Session:
    """A directory and a signed-request channel for one operation (one ``ClientNetwork`` each, since
    its nonce pool is not thread-safe and a gateway instance may serve several threads).
    """

    def __init__(self, directory: messages.Directory, net: client.ClientNetwork) -> None:
        self.directory = directory
        self.net = net
        self.client = client.ClientV2(directory, net)

    def close(self) -> None:
        self.net.session.close()

    def has(self, resource: str) -> bool:
        try:
            self.directory[resource]
        except KeyError:
            return False
        return True

    def _post(self, url: str, obj: JSONDeSerializable | None, **kwargs: Any) -> requests.Response:
        return self.net.post(url, obj, new_nonce_url=self.directory["newNonce"], **kwargs)

    def get_order(self, url: str) -> messages.Order:
        return call("fetch order", lambda: _order(self._post(url, None)))

    def get_authorization(self, url: str) -> messages.Authorization:
        return call(
            "fetch authorization",
            lambda: cast(
                messages.Authorization, messages.Authorization.from_json(self._post(url, None).json())
            ),
        )

    def new_order(self, identifiers: Sequence[messages.Identifier]) -> tuple[str, messages.Order]:
        def send() -> tuple[str, messages.Order]:
            response = self._post(self.directory["newOrder"], messages.NewOrder(identifiers=identifiers))
            location = response.headers.get("Location")
            if not location:
                raise ValueError("the new order has no Location")
            return location, _order(response)

        return call("new order", send)

    def answer(self, challenge: messages.ChallengeBody, response: challenges.ChallengeResponse) -> None:
        call("answer challenge", lambda: self.client.answer_challenge(challenge, response))

    def finalize(self, url: str, csr: x509.CertificateSigningRequest) -> messages.Order:
        return call(
            "finalize order",
            lambda: _order(self._post(url, messages.CertificateRequest(csr=csr))),
        )

    def download(self, url: str) -> str:
        return call("download certificate", lambda: self._post(url, None).text)

    def revoke(self, certificate: x509.Certificate, reason: int) -> None:
        call("revoke", lambda: self.client.revoke(certificate, reason))

    def get(
        self, action: str, url: str, *, accept: str = client.ClientNetwork.JSON_CONTENT_TYPE
    ) -> requests.Response:
        """An unauthenticated GET (renewalInfo, a management API)."""
        return call(action, lambda: self.net.get(url, content_type=accept, headers={"Accept": accept}))
