"""Answering ACME challenges: http-01 through the platform's responder or a webroot, dns-01 through a
TXT publisher. A solver sets up what the CA will look at, waits until it is in place, and removes it
after validation, whatever the outcome.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from acme import challenges, messages
from josepy.jwk import JWK

from sslclm.errors import ConnectorError
from sslclm.spi import StateStore

from .config import AcmeConfig
from .dns01 import TxtPublisher, nameservers_for, publisher_for, wait_until_visible

HTTP01_STATE = "http01/"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,190}$")


def http01_response(state: StateStore, token: str) -> bytes | None:
    """The key authorization to serve at ``/.well-known/acme-challenge/<token>``, or None (answer 404).

    This is the platform's http-01 responder: mount it on port 80 of every name the connection
    certifies; it reads the ACME connection's own state store, so any worker may have set the token.
    """
    if not _TOKEN.match(token):
        return None
    return state.get(HTTP01_STATE + token)


@dataclass(frozen=True)
class Prepared:
    """One challenge made ready: what was set up (to remove it afterwards) and the answer to send."""

    identifier: str
    challenge: messages.ChallengeBody
    response: challenges.ChallengeResponse
    location: str  # the token, file path or record name that was set up
    value: str  # the key authorization or TXT value put there


class Solver(Protocol):
    challenge_type: str

    def prepare(self, identifier: str, challenge: messages.ChallengeBody) -> Prepared: ...

    def wait_until_ready(self, prepared: Sequence[Prepared]) -> None: ...

    def cleanup(self, prepared: Prepared) -> None: ...


class Http01Responder:
    """Puts the key authorization into the connection's state for :func:`http01_response`."""

    challenge_type = "http-01"

    def __init__(self, state: StateStore, account_key: JWK) -> None:
        self.state = state
        self.account_key = account_key

    def prepare(self, identifier: str, challenge: messages.ChallengeBody) -> Prepared:
        response, key_authorization = challenge.response_and_validation(self.account_key)
        token = challenge.chall.encode("token")
        self.state.put(HTTP01_STATE + token, key_authorization.encode())
        return Prepared(identifier, challenge, response, token, key_authorization)

    def wait_until_ready(self, prepared: Sequence[Prepared]) -> None:
        return None

    def cleanup(self, prepared: Prepared) -> None:
        self.state.delete(HTTP01_STATE + prepared.location)


class Http01Webroot:
    """Writes ``<webroot>/.well-known/acme-challenge/<token>`` for a web server that serves it."""

    challenge_type = "http-01"

    def __init__(self, webroot: Path, account_key: JWK) -> None:
        self.directory = webroot / ".well-known" / "acme-challenge"
        self.account_key = account_key

    def prepare(self, identifier: str, challenge: messages.ChallengeBody) -> Prepared:
        response, key_authorization = challenge.response_and_validation(self.account_key)
        token = challenge.chall.encode("token")
        if not _TOKEN.match(token):
            raise ConnectorError(f"the CA sent an unusable http-01 token for {identifier}", retryable=False)
        path = self.directory / token
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o755)
            tmp = path.with_name(f".{token}.tmp")
            tmp.write_text(key_authorization)
            tmp.chmod(0o644)  # the web server usually runs as another user
            os.replace(tmp, path)
        except OSError as exc:
            raise ConnectorError(
                f"cannot write the http-01 token to {path}: {exc.strerror}",
                retryable=False,
                field="http01.webroot",
            ) from None
        return Prepared(identifier, challenge, response, str(path), key_authorization)

    def wait_until_ready(self, prepared: Sequence[Prepared]) -> None:
        return None

    def cleanup(self, prepared: Prepared) -> None:
        Path(prepared.location).unlink(missing_ok=True)


class Dns01Solver:
    """Publishes ``_acme-challenge.<name>`` TXT records and waits until name servers answer them."""

    challenge_type = "dns-01"

    def __init__(self, settings: AcmeConfig, account_key: JWK) -> None:
        assert settings.dns01 is not None
        self.settings = settings.dns01
        self.publisher: TxtPublisher = publisher_for(settings.dns01)
        self.account_key = account_key

    def prepare(self, identifier: str, challenge: messages.ChallengeBody) -> Prepared:
        response, value = challenge.response_and_validation(self.account_key)
        chall = challenge.chall
        assert isinstance(chall, challenges.DNS01)
        # A wildcard's record goes under the base domain (RFC 8555 8.4).
        fqdn = chall.validation_domain_name(identifier.removeprefix("*.")).rstrip(".") + "."
        self.publisher.add(fqdn, value)
        return Prepared(identifier, challenge, response, fqdn, value)

    def wait_until_ready(self, prepared: Sequence[Prepared]) -> None:
        records = [(p.location, p.value) for p in prepared]
        wait_until_visible(records, nameservers_for(self.settings, self.publisher), self.settings)

    def cleanup(self, prepared: Prepared) -> None:
        self.publisher.remove(prepared.location, prepared.value)


def solver_for(settings: AcmeConfig, state: StateStore, account_key: JWK) -> Solver:
    if settings.challenge == "dns-01":
        return Dns01Solver(settings, account_key)
    if settings.http01.mode == "webroot":
        assert settings.http01.webroot is not None
        return Http01Webroot(Path(settings.http01.webroot), account_key)
    return Http01Responder(state, account_key)
