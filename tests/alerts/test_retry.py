"""The retry decision on its own: backoff, Retry-After, the retry window — plain values in, a decision out."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from pipeline.alerts.retry import Decision, RetryPolicy, decide, parse_retry_after

NOW = 1_700_000_000.0
POLICY = RetryPolicy(base_s=5, cap_s=3600, give_up_after_s=86400, min_delay_s=1)


def after(
    status_code: int | None, retry_after: str | None = None, *, first: float | None = None, retries: int = 0
) -> Decision:
    return decide(
        status_code,
        retry_after,
        now=NOW,
        started=NOW - 0.5,
        first_attempt_at=first,
        retries=retries,
        policy=POLICY,
        rng=random.Random(7),
    )


def test_backoff_is_seeded_and_capped() -> None:
    policy = RetryPolicy(base_s=5, cap_s=3600)
    a = [policy.backoff(n, random.Random(1)) for n in range(1, 30)]
    b = [policy.backoff(n, random.Random(1)) for n in range(1, 30)]
    assert a == b
    rng = random.Random(3)
    for n in range(1, 60):
        delay = policy.backoff(n, rng)
        assert policy.min_delay_s <= delay <= min(3600, 5 * 2 ** (n - 1))


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("30", now) == 30
    assert parse_retry_after(" 0 ", now) == 0
    assert parse_retry_after(format_datetime(datetime.fromtimestamp(now + 60, tz=UTC), usegmt=True), now) == 60
    assert parse_retry_after(format_datetime(datetime.fromtimestamp(now - 60, tz=UTC), usegmt=True), now) == 0
    assert parse_retry_after("99999999999", now) == 7 * 24 * 3600
    for bad in (None, "", "soon", "-5", "1.5", "Mon, 99 Foo 2025"):
        assert parse_retry_after(bad, now) is None


def test_2xx_is_delivered_and_due_now() -> None:
    for code in (200, 201, 204, 299):
        decision = after(code)
        assert (decision.outcome, decision.next_attempt_at) == ("delivered", NOW)


def test_410_disables() -> None:
    assert after(410).outcome == "disabled"


@pytest.mark.parametrize("code", [None, 300, 400, 404, 429, 500, 503])
def test_anything_else_is_retried_with_the_policys_backoff(code: int | None) -> None:
    decision = after(code, retries=3)
    expected = POLICY.backoff(4, random.Random(7))
    assert decision.outcome == "retry"
    assert decision.next_attempt_at == pytest.approx(NOW + expected)


def test_the_first_attempt_starts_the_retry_window() -> None:
    assert after(500).first_attempt_at == NOW - 0.5
    assert after(500, first=NOW - 100).first_attempt_at == NOW - 100


def test_retry_after_is_honoured_only_on_429_and_503() -> None:
    assert after(429, "120").next_attempt_at == NOW + 120
    assert after(503, "0").next_attempt_at == NOW + POLICY.min_delay_s  # never sooner than min_delay_s
    later = format_datetime(datetime.fromtimestamp(NOW + 900, tz=UTC), usegmt=True)
    assert after(503, later).next_attempt_at == pytest.approx(NOW + 900)
    assert after(500, "120").next_attempt_at == pytest.approx(NOW + POLICY.backoff(1, random.Random(7)))
    assert after(429, "soon").next_attempt_at == pytest.approx(NOW + POLICY.backoff(1, random.Random(7)))


def test_gives_up_once_the_window_has_passed() -> None:
    assert after(500, first=NOW - 86400).outcome == "failed"
    assert after(429, "5", first=NOW - 86400).outcome == "failed"
    retried = after(500, first=NOW - 86400 + 2, retries=20)
    assert retried.outcome == "retry"
    assert retried.next_attempt_at <= NOW + 2  # never past the window's end


def test_a_retry_after_beyond_the_window_fails() -> None:
    assert after(503, "3600", first=NOW - 86400 + 60).outcome == "failed"
    assert after(503, "30", first=NOW - 86400 + 60).outcome == "retry"
