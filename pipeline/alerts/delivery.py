"""One webhook delivery attempt, Standard Webhooks style, and the retry schedule around it.

Signing follows https://www.standardwebhooks.com: the body is ``{"type", "timestamp", "data"}``, the
headers are ``webhook-id`` (the message id, the same on every retry so receivers can de-duplicate),
``webhook-timestamp`` (this attempt's time, epoch seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256
of "id.timestamp.body">`` made with the ``standardwebhooks`` package. Secrets are ``whsec_`` + base64.

The attempt connects to an address that was checked a moment earlier (see ``targets.py``): the request
goes to the IP, with the original ``Host`` header and, for https, the original name as TLS SNI and for
certificate verification. Redirects are never followed; a 3xx is a failed attempt.
"""

from __future__ import annotations

import base64
import random
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson
from standardwebhooks import Webhook

from pipeline.alerts.targets import ResolvedTarget
from pipeline.events import format_ts

EVENT_TYPES: tuple[str, ...] = ("token.anomaly", "token.revoked", "revocation.storm")
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
USER_AGENT = "jwtwatch-webhooks/1"
#: At most this many of a host's checked addresses are tried when connecting fails.
MAX_ADDRESSES_TRIED = 3


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def payload(event_type: str, timestamp: float, data: dict[str, Any]) -> bytes:
    """The message body, as sent on every attempt (and stored in the outbox, byte for byte)."""
    return orjson.dumps({"type": event_type, "timestamp": format_ts(timestamp), "data": data})


def signed_headers(secret: str, msg_id: str, timestamp: float, body: bytes) -> dict[str, str]:
    seconds = int(timestamp)
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(seconds, tz=UTC), body.decode("utf-8"))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(seconds),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


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


MAX_RETRY_AFTER_S = 7 * 24 * 3600.0


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
class AttemptResult:
    status_code: int | None
    error: str | None
    duration_s: float
    retry_after: str | None = None
    address: str | None = None


def send(
    client: httpx.Client,
    resolved: ResolvedTarget,
    headers: dict[str, str],
    body: bytes,
    timeout: httpx.Timeout,
) -> AttemptResult:
    """POST ``body`` to the checked addresses of ``resolved`` (the first that accepts a connection)."""
    target = resolved.target
    request_headers = {**headers, "host": target.host_header}
    extensions: dict[str, Any] = {}
    if target.scheme == "https":
        if target.ip is None:
            extensions["sni_hostname"] = target.host
        # The connection pool is keyed by address: never let another name reuse a connection verified for this one.
        request_headers["connection"] = "close"
    started = time.perf_counter()
    last_error = "no address to connect to"
    for address in resolved.addresses[:MAX_ADDRESSES_TRIED]:
        url = httpx.URL(scheme=target.scheme, host=str(address), port=target.port, raw_path=target.target.encode())
        request = client.build_request(
            "POST", url, content=body, headers=request_headers, extensions=extensions, timeout=timeout
        )
        try:
            response = client.send(request, follow_redirects=False, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Nothing was sent: the next address of the same host may answer.
            last_error = f"{type(exc).__name__}: {_short(exc)}"
            continue
        except httpx.TimeoutException as exc:
            return AttemptResult(None, f"{type(exc).__name__}: timed out", time.perf_counter() - started)
        except httpx.HTTPError as exc:
            return AttemptResult(None, f"{type(exc).__name__}: {_short(exc)}", time.perf_counter() - started)
        try:
            return AttemptResult(
                response.status_code,
                None,
                time.perf_counter() - started,
                response.headers.get("retry-after"),
                str(address),
            )
        finally:
            response.close()  # the body is not wanted
    return AttemptResult(None, last_error, time.perf_counter() - started)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:300]


def default_client(timeout_s: float = 10.0) -> httpx.Client:
    """The delivery client: no redirects, no proxies or netrc from the environment, bounded pool."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        headers={"user-agent": USER_AGENT},
    )


__all__ = [
    "EVENT_TYPES",
    "AttemptResult",
    "RetryPolicy",
    "default_client",
    "new_secret",
    "parse_retry_after",
    "payload",
    "send",
    "signed_headers",
]
