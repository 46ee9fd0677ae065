"""When a webhook delivery is tried again, and when it is given up: a pure decision on plain values.

2xx = delivered; 410 = the endpoint is disabled; 429/503 with ``Retry-After`` wait as told (at least
``min_delay_s``); anything else (other status codes, timeouts, refused connections — no status code) is
retried with exponential backoff and full jitter, until ``give_up_after_s`` has passed since the first
attempt — then the delivery has ``failed``. A receiver that asks for more time than the retry window has
left fails it too. No I/O: :meth:`~pipeline.alerts.service.AlertsService.attempt` records what
:func:`decide` says.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Literal

Outcome = Literal["delivered", "retry", "failed", "disabled"]

#: The longest ``Retry-After`` honoured.
MAX_RETRY_AFTER_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: the n-th retry waits uniform(0, min(cap, base * 2**(n-1)))."""

    base_s: float = 5.0
    cap_s: float = 3600.0
    give_up_after_s: float = 24 * 3600.0
    min_delay_s: float = 1.0

    def backoff(self, failures: int, rng: random.Random) -> float:
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(max(failures, 1) - 1, 40))
        return max(self.min_delay_s, rng.uniform(0.0, ceiling))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date); None if absent or bad."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # isdigit() alone admits '²', which float() refuses
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    if moment.tzinfo is None:  # "-0000": UTC by RFC 9110's rules for HTTP dates
        moment = moment.replace(tzinfo=UTC)
    return min(max(0.0, moment.timestamp() - now), MAX_RETRY_AFTER_S)


@dataclass(frozen=True, slots=True)
class Decision:
    """What becomes of a delivery after one attempt: its outcome, when it is due next (``now`` unless it is
    retried) and when its current run of attempts began (the retry window counts from there)."""

    outcome: Outcome
    next_attempt_at: float
    first_attempt_at: float


def decide(
    status_code: int | None,
    retry_after: str | None,
    *,
    now: float,
    started: float,
    first_attempt_at: float | None,
    retries: int,
    policy: RetryPolicy,
    rng: random.Random,
) -> Decision:
    """The outcome of an attempt that began at ``started`` and ended at ``now`` with ``status_code`` (None: no
    response) and ``Retry-After`` header ``retry_after``, for a delivery that already failed ``retries`` times
    since ``first_attempt_at`` (None: this was the first attempt). ``rng`` draws the backoff's jitter."""
    first = first_attempt_at if first_attempt_at is not None else started
    next_at = now
    outcome: Outcome
    if status_code is not None and 200 <= status_code < 300:
        outcome = "delivered"
    elif status_code == 410:
        outcome = "disabled"
    else:
        outcome = "retry"
        deadline = first + policy.give_up_after_s
        wait = parse_retry_after(retry_after, now) if status_code in (429, 503) else None
        if now >= deadline:
            outcome = "failed"
        elif wait is not None:
            next_at = now + max(wait, policy.min_delay_s)
            if next_at > deadline:
                outcome = "failed"  # the receiver asks for more time than the retry window has left
        else:
            next_at = min(now + policy.backoff(retries + 1, rng), deadline)
    return Decision(outcome, next_at, first)


__all__ = ["MAX_RETRY_AFTER_S", "Decision", "Outcome", "RetryPolicy", "decide", "parse_retry_after"]
