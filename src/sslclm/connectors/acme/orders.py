"""Driving one ACME order from whatever state it is in to a downloaded certificate (RFC 8555 7.4).

The driver always starts from the order as the server reports it, so a call that resumes an order a
previous attempt created (a retried job, another worker) picks up where that one stopped: it answers
only authorizations still pending, finalizes only a ready order, and only polls one already
processing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from acme import messages
from cryptography import x509

from sslclm.errors import CARejectedError, CAUnavailableError, SslClmError

from .challenges import Prepared, Solver
from .transport import Session, problem_text


@dataclass(frozen=True)
class Timing:
    timeout: float  # seconds for the whole order in this call
    poll_interval: float


def _identifier(authorization: messages.Authorization) -> str:
    value = str(authorization.identifier.value)
    return f"*.{value}" if authorization.wildcard else value


def validation_failed(authorization: messages.Authorization) -> CARejectedError:
    """The rejection for an invalid authorization, naming the challenge that failed and why."""
    name = _identifier(authorization)
    for challenge in authorization.challenges:
        error = challenge.error
        if error is not None:
            return CARejectedError(
                f"validation of {name} failed: {challenge.chall.typ} challenge: {problem_text(error)}",
                field="names",
                identifier=name,
                challenge=challenge.chall.typ,
                acme_error=error.code or error.typ,
            )
    return CARejectedError(
        f"validation of {name} failed: the authorization is {authorization.status.name}",
        field="names",
        identifier=name,
    )


class OrderDriver:
    def __init__(
        self,
        session: Session,
        solver: Solver,
        timing: Timing,
        logger: logging.Logger,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.session = session
        self.solver = solver
        self.timing = timing
        self.logger = logger
        self.sleep = sleep
        self.deadline = time.monotonic() + timing.timeout

    def _expired(self, what: str) -> None:
        if time.monotonic() >= self.deadline:
            raise CAUnavailableError(
                f"{what} after {self.timing.timeout:g} s; the order stays open and a retry resumes it"
            )

    def run(self, url: str, csr: x509.CertificateSigningRequest) -> str:
        """The full chain PEM of the certificate the order at ``url`` yields."""
        order = self.session.get_order(url)
        finalized = False
        while True:
            status = order.status
            if status == messages.STATUS_VALID:
                if order.certificate is None:
                    raise CAUnavailableError("the order is valid but names no certificate yet")
                return self.session.download(order.certificate)
            if status == messages.STATUS_INVALID:
                detail = (
                    problem_text(order.error)
                    if order.error is not None
                    else self._failed_authorization(order)
                )
                raise CARejectedError(f"the ACME order failed: {detail}", acme_error=_code(order.error))
            if status == messages.STATUS_PENDING:
                # Authorizations just answered may take a moment to make the order ready.
                if not self._authorize(order):
                    self._pause(status)
            elif status == messages.STATUS_READY and not finalized:
                try:
                    order = self.session.finalize(order.finalize, csr)
                    finalized = True
                    continue
                except CAUnavailableError as exc:
                    # orderNotReady: another attempt is racing this one; poll and look again.
                    if exc.data.get("acme_error") != "orderNotReady":
                        raise
                    self._pause(status)
            else:
                self._pause(status)
            order = self.session.get_order(url)

    def _pause(self, status: messages.Status) -> None:
        self._expired(f"the order is still {status.name}")
        self.sleep(self.timing.poll_interval)

    def _failed_authorization(self, order: messages.Order) -> str:
        for url in order.authorizations:
            authorization = self.session.get_authorization(url)
            if authorization.status == messages.STATUS_INVALID:
                return validation_failed(authorization).message
        return "no reason given"

    def _pick(self, authorization: messages.Authorization) -> messages.ChallengeBody:
        wanted = self.solver.challenge_type
        for challenge in authorization.challenges:
            if challenge.chall.typ == wanted:
                return challenge
        offered = ", ".join(sorted(c.chall.typ for c in authorization.challenges)) or "none"
        hint = "; wildcard names need dns-01" if authorization.wildcard else ""
        name = _identifier(authorization)
        raise CARejectedError(
            f"the CA offers no {wanted} challenge for {name} (offered: {offered}){hint}",
            field="challenge",
        )

    def _authorize(self, order: messages.Order) -> bool:
        """Answer every pending authorization of ``order``; False when none was pending."""
        pending: list[tuple[str, messages.Authorization]] = []
        for url in order.authorizations:
            authorization = self.session.get_authorization(url)
            if authorization.status == messages.STATUS_PENDING:
                pending.append((url, authorization))
            elif authorization.status != messages.STATUS_VALID:
                raise validation_failed(authorization)
        if not pending:
            return False
        prepared: list[Prepared] = []
        try:
            for _, authorization in pending:
                prepared.append(self.solver.prepare(_identifier(authorization), self._pick(authorization)))
            self.solver.wait_until_ready(prepared)
            for item in prepared:
                # A challenge an earlier attempt already answered is being validated; answering it
                # again would be refused.
                if item.challenge.status == messages.STATUS_PENDING:
                    self.session.answer(item.challenge, item.response)
            for url, _ in pending:
                self._wait_for(url)
            return True
        finally:
            for item in prepared:
                try:
                    self.solver.cleanup(item)
                except SslClmError as exc:
                    self.logger.warning(
                        "could not remove the %s challenge for %s: %s",
                        self.solver.challenge_type,
                        item.identifier,
                        exc.message,
                    )

    def _wait_for(self, url: str) -> None:
        while True:
            authorization = self.session.get_authorization(url)
            if authorization.status == messages.STATUS_VALID:
                return
            if authorization.status != messages.STATUS_PENDING:
                raise validation_failed(authorization)
            self._expired(f"validation of {_identifier(authorization)} is still pending")
            self.sleep(self.timing.poll_interval)


def _code(error: messages.Error | None) -> str | None:
    if error is None:
        return None
    return error.code or error.typ
