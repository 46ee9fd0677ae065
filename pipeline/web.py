"""What every jwtwatch HTTP service shares: security headers, admin-token checks, capped body reads and the metrics
listener's app."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
)


class SecurityHeadersMiddleware:
    """Adds the security headers to every response — errors, 404s and 405s included."""

    def __init__(self, app: ASGIApp, *, no_store_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.no_store_prefixes = no_store_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        no_store = scope.get("path", "").startswith(self.no_store_prefixes) if self.no_store_prefixes else False

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = secure_headers(message.get("headers", []), no_store=no_store)
            await send(message)

        await self.app(scope, receive, send_with_headers)


_OVERRIDDEN = {name for name, _ in SECURITY_HEADERS}
_NO_STORE = ((b"cache-control", b"no-store"), (b"pragma", b"no-cache"))


def secure_headers(headers: Iterable[tuple[bytes, bytes]], *, no_store: bool) -> list[tuple[bytes, bytes]]:
    """A response's headers with the security headers in place of any it set (and no-store if asked)."""
    secured = [h for h in headers if h[0].lower() not in _OVERRIDDEN]
    secured.extend(SECURITY_HEADERS)
    if no_store:
        secured.extend(_NO_STORE)
    return secured


def read_admin_token(path: Path | None) -> str | None:
    """The admin bearer token from a file (never from the command line, where `ps` would show it)."""
    if path is None:
        return None
    token = Path(path).read_text(encoding="utf-8").strip()
    if len(token) < 16:
        raise ValueError(f"admin token in {path} is too short (at least 16 characters)")
    return token


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer`` header (RFC 6750 §2.1), else None."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    credentials = credentials.strip()
    return credentials or None


def admin_token_matches(expected: str | None, authorization: str | None) -> bool:
    """Constant-time comparison; with no admin token configured, the admin API is closed."""
    presented = bearer_token(authorization)
    if expected is None or presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is (or claims to be) larger than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def metrics_app(*registries: CollectorRegistry) -> ASGIApp:
    """Prometheus metrics at ``GET /metrics`` — the app of the metrics listener (``--metrics-port``), never of the
    public port: per-reason counters that move with each request would tell a caller why their token failed."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        response: Response
        if scope["path"] != "/metrics":
            response = PlainTextResponse("not found", status_code=404)
        elif scope["method"] not in ("GET", "HEAD"):
            response = PlainTextResponse("method not allowed", status_code=405, headers={"Allow": "GET, HEAD"})
        else:
            payload = await run_in_threadpool(lambda: b"".join(generate_latest(r) for r in registries))
            response = Response(payload, media_type=CONTENT_TYPE_LATEST)
        await response(scope, receive, send)

    return SecurityHeadersMiddleware(app)
