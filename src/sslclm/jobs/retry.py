"""Retry strategies: whether a failed step runs again, and after how long.

A strategy is an object on the task (``@task("renew", retry=ExponentialBackoff(max_attempts=8))``).
It decides from the exception and the attempt number; the queue applies the decision.

Which errors are retryable is a property of the error, not of the task:

- an exception with a boolean ``retryable`` attribute says so itself (``ConnectorError`` and its
  subclasses: ``CAUnavailableError`` is retryable, ``CARejectedError`` is not);
- any other ``SslClmError`` is a decision of the platform (invalid input, not found, forbidden)
  that trying again cannot change: not retryable;
- timeouts, dropped connections and database operational errors are transient: retryable;
- anything else is a bug: the job fails at once with the reason, instead of repeating the bug.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.exc import DBAPIError, OperationalError

from sslclm.errors import SslClmError

DEFAULT_MAX_ATTEMPTS = 5


def is_retryable(exc: BaseException) -> bool:
    """Whether trying the same step again later may succeed (see the module docstring)."""
    flag = getattr(exc, "retryable", None)
    if isinstance(flag, bool):
        return flag
    if isinstance(exc, SslClmError):
        return False
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (TimeoutError, ConnectionError))


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry: bool
    delay: timedelta = timedelta(0)
    reason: str = ""


class RetryStrategy(ABC):
    """Decides what happens after a step raised on its ``attempt``-th try (1-based)."""

    max_attempts: int

    @abstractmethod
    def delay(self, attempt: int) -> timedelta:
        """How long to wait before try ``attempt + 1``."""

    def decide(self, exc: BaseException, attempt: int, max_attempts: int | None = None) -> RetryDecision:
        limit = self.max_attempts if max_attempts is None else max_attempts
        if not is_retryable(exc):
            return RetryDecision(False, reason="not retryable")
        if attempt >= limit:
            return RetryDecision(False, reason=f"gave up after {attempt} attempts")
        return RetryDecision(True, self.delay(attempt))


@dataclass(frozen=True)
class ExponentialBackoff(RetryStrategy):
    """``base * factor**(attempt-1)``, capped at ``max_delay``, each delay spread by ±``jitter``.

    Jitter keeps a thousand jobs that failed together (a CA outage) from all coming back in the
    same second and failing together again.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base: timedelta = timedelta(seconds=10)
    factor: float = 2.0
    max_delay: timedelta = timedelta(hours=1)
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.factor < 1:
            raise ValueError("factor must be at least 1")

    def delay(self, attempt: int) -> timedelta:
        exponent = max(attempt - 1, 0)
        # Capping the exponent keeps huge attempt counts from overflowing the float.
        grown = self.base.total_seconds() * self.factor ** min(exponent, 64)
        seconds = min(grown, self.max_delay.total_seconds())
        if self.jitter:
            seconds *= 1 + self.rng.uniform(-self.jitter, self.jitter)
        return timedelta(seconds=seconds)


@dataclass(frozen=True)
class FixedDelay(RetryStrategy):
    """The same wait before every retry."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    wait: timedelta = timedelta(seconds=30)

    def delay(self, attempt: int) -> timedelta:
        return self.wait


@dataclass(frozen=True)
class NoRetry(RetryStrategy):
    """One try: any error fails the job."""

    max_attempts: int = 1

    def delay(self, attempt: int) -> timedelta:
        return timedelta(0)
