"""One webhook delivery attempt, Standard Webhooks style (when to try again: ``retry.py``).

Signing follows https://www.standardwebhooks.com: the body is ``{"type", "timestamp", "data"}``, the
headers are ``webhook-id`` (the message id, the same on every retry so receivers can de-duplicate),
``webhook-timestamp`` (this attempt's time, epoch seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256
of "id.timestamp.body">`` made with the ``standardwebhooks`` package. Secrets are ``whsec_`` + base64.

The attempt connects to an address that was checked a moment earlier (see ``targets.py``): the request
goes to the IP, with the original ``Host`` header and, for https, the original name as TLS SNI and for
certificate verification. Redirects are never followed; a 3xx is a failed attempt.

Every attempt has a *total* deadline (:func:`send`'s ``deadline_s``): connecting, TLS, sending the request and
reading the response headers together. httpx's timeouts are per socket operation, so a receiver that trickles its
headers a byte a second would never trip them; the client of :func:`default_client` runs its connections on a
network backend (:class:`DeadlineBackend`) that gives every socket operation only the time left before the
attempt's deadline, and fails the operation once it has passed.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import ssl
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpcore
import httpx
import orjson
from standardwebhooks import Webhook

from pipeline.alerts.targets import ResolvedTarget
from pipeline.events import format_ts

EventType = Literal["token.anomaly", "token.revoked", "revocation.storm"]
EVENT_TYPES: tuple[EventType, ...] = ("token.anomaly", "token.revoked", "revocation.storm")
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
    deadline_s: float,
) -> AttemptResult:
    """POST ``body`` to the checked addresses of ``resolved`` (the first that accepts a connection).

    The whole attempt — every address tried, TLS, the request and the response headers — ends within
    ``deadline_s`` when ``client`` comes from :func:`default_client`.
    """
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
    with attempt_deadline(deadline_s):
        for address in resolved.addresses[:MAX_ADDRESSES_TRIED]:
            url = httpx.URL(scheme=target.scheme, host=str(address), port=target.port, raw_path=target.target.encode())
            request = client.build_request(
                "POST", url, content=body, headers=request_headers, extensions=extensions, timeout=timeout
            )
            try:
                response = client.send(request, follow_redirects=False, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing was sent: the next address of the same host may answer (in the time left).
                last_error = f"{type(exc).__name__}: {_short(exc)}"
                continue
            except httpx.TimeoutException as exc:
                elapsed = time.perf_counter() - started
                why = f"the attempt's {deadline_s:g} s deadline passed" if elapsed >= deadline_s else "no progress"
                return AttemptResult(None, f"{type(exc).__name__}: timed out ({why})", elapsed)
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


# ------------------------------------------------------------------------------- the total deadline

#: When the attempt running in this thread must be over (``time.monotonic()``), or None outside an attempt.
_DEADLINE: ContextVar[float | None] = ContextVar("jwtwatch_webhook_deadline", default=None)
#: Writes go out in pieces this size, each given only the time left (one large write could wait a whole timeout
#: per partial send).
_WRITE_PIECE = 16 * 1024


@contextlib.contextmanager
def attempt_deadline(seconds: float) -> Iterator[None]:
    """Socket operations of :class:`DeadlineBackend` connections in this thread end within ``seconds`` from now."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _time_left(timeout: float | None, expired: type[httpcore.TimeoutException]) -> float | None:
    """The per-operation ``timeout`` cut to what is left of the attempt; raises ``expired`` once nothing is."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the attempt's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake ends by the current attempt's deadline.

    The deadline is looked up at each operation, not when the connection was made: a pooled connection serves
    whichever attempt uses it next. CPython bounds a whole ``recv``, TLS read or handshake by the socket timeout.
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        for start in range(0, len(view), _WRITE_PIECE):
            self._inner.write(bytes(view[start : start + _WRITE_PIECE]), _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's synchronous socket backend, with every operation held to the attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner if inner is not None else httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, left, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks are never sent over unix sockets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


#: httpcore's exceptions as httpx's (the most specific first), as httpx.HTTPTransport maps them.
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for theirs, ours in _HTTPX_ERRORS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc
        raise


class _ResponseBody(httpx.SyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class DeadlineTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore connection pool on a :class:`DeadlineBackend` (HTTP/1.1, no proxy)."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits(max_connections=32, max_keepalive_connections=8)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context if ssl_context is not None else httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=DeadlineBackend(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = self._pool.handle_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseBody(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class DeliveryClient(httpx.Client):
    """The client webhook attempts are sent with: its transport honours :func:`attempt_deadline`."""


def default_client(timeout_s: float = 10.0, *, ssl_context: ssl.SSLContext | None = None) -> DeliveryClient:
    """The delivery client: no redirects, no proxies or netrc from the environment, bounded pool, total deadlines.

    ``ssl_context`` replaces the system's CA bundle (a private CA, in tests)."""
    return DeliveryClient(
        timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
        follow_redirects=False,
        trust_env=False,
        transport=DeadlineTransport(ssl_context=ssl_context),
        headers={"user-agent": USER_AGENT},
    )


__all__ = [
    "EVENT_TYPES",
    "AttemptResult",
    "DeadlineBackend",
    "DeadlineTransport",
    "DeliveryClient",
    "attempt_deadline",
    "default_client",
    "new_secret",
    "payload",
    "send",
    "signed_headers",
]
