from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from sslclm.errors import (
    CARejectedError,
    CAUnavailableError,
    ConfigurationError,
    ConnectorError,
    InvalidInputError,
    NotFoundError,
)
from sslclm.jobs.retry import ExponentialBackoff, FixedDelay, NoRetry, is_retryable


class FlakyError(Exception):
    retryable = True


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (CAUnavailableError("timeout"), True),
        (CARejectedError("names not allowed"), False),
        (ConnectorError("garbage reply"), True),
        (ConnectorError("garbage reply", retryable=False), False),
        (InvalidInputError("bad CSR"), False),
        (NotFoundError("no profile"), False),
        (ConfigurationError("no CA"), False),
        (TimeoutError("read timed out"), True),
        (ConnectionResetError("reset"), True),
        (OperationalError("UPDATE jobs", {}, Exception("server closed the connection")), True),
        (IntegrityError("INSERT", {}, Exception("duplicate key")), False),
        (KeyError("missing"), False),
        (FlakyError(), True),
    ],
)
def test_retryable_comes_from_the_error(error: BaseException, retryable: bool) -> None:
    assert is_retryable(error) is retryable


def test_exponential_backoff_grows_and_caps() -> None:
    strategy = ExponentialBackoff(
        base=timedelta(seconds=10), factor=2, max_delay=timedelta(seconds=60), jitter=0
    )
    assert [strategy.delay(n).total_seconds() for n in range(1, 6)] == [10, 20, 40, 60, 60]
    assert strategy.delay(10_000) == timedelta(seconds=60)


def test_jitter_spreads_delays_within_bounds() -> None:
    strategy = ExponentialBackoff(base=timedelta(seconds=100), jitter=0.2, rng=random.Random(7))
    delays = {strategy.delay(1).total_seconds() for _ in range(200)}
    assert all(80 <= d <= 120 for d in delays)
    assert len(delays) > 100  # spread out, not one value


@pytest.mark.parametrize(
    ("error", "attempt", "retry", "reason"),
    [
        (CAUnavailableError(), 1, True, ""),
        (CAUnavailableError(), 2, True, ""),
        (CAUnavailableError(), 3, False, "gave up after 3 attempts"),
        (CARejectedError(), 1, False, "not retryable"),
        (ValueError("bug"), 1, False, "not retryable"),
    ],
)
def test_decide(error: Exception, attempt: int, retry: bool, reason: str) -> None:
    decision = ExponentialBackoff(max_attempts=3, jitter=0).decide(error, attempt)
    assert decision.retry is retry
    assert decision.reason == reason
    if retry:
        assert decision.delay > timedelta(0)


def test_per_job_max_attempts_overrides_the_strategy() -> None:
    strategy = FixedDelay(max_attempts=2, wait=timedelta(seconds=5))
    assert not strategy.decide(CAUnavailableError(), 2).retry
    decision = strategy.decide(CAUnavailableError(), 2, max_attempts=4)
    assert decision.retry and decision.delay == timedelta(seconds=5)


def test_no_retry_fails_the_first_time() -> None:
    assert not NoRetry().decide(CAUnavailableError(), 1).retry


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"jitter": 1.0}, {"jitter": -0.1}, {"factor": 0.5}])
def test_invalid_backoff_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ExponentialBackoff(**kwargs)  # type: ignore[arg-type]
