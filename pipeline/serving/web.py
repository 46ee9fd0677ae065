"""What every jwtwatch HTTP service shares: security headers, admin-token checks, capped body reads, error answers
that never echo the request, and the metrics listener's app."""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.errors import InsecureFileError, RequestTimeout
from pipeline.files import read_secret_file

#: A request body (admin API, introspection) must have arrived this long after the handler asked for it.
BODY_TIMEOUT_S = 10.0

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
    """The admin bearer token from a file (never from the command line, where `ps` would show it).

    The file must be private to its owner (no group or other permission bits), as the key store's passphrase and
    PIN files must: a token that any local user can read opens the admin API to them. Its first line is the token.
    """
    if path is None:
        return None
    try:
        raw = read_secret_file(Path(path), "admin token")  # the one reader of secret files: one rule for all
    except InsecureFileError as exc:  # its message says what is wrong and how to fix it
        raise ValueError(str(exc)) from None
    except OSError as exc:
        raise ValueError(f"cannot read the admin token file: {exc.strerror or exc} ({path})") from None
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"the admin token in {path} is not UTF-8 text") from None
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


def admin_request_matches(expected: str | None, request: Request) -> bool:
    """The request carries exactly one ``Authorization`` line, and it holds the admin token.

    A second line is refused rather than chosen between: a gateway, this service and an API behind it may each
    pick a different one (first, last, or both joined).
    """
    authorizations = request.headers.getlist("authorization")
    return len(authorizations) == 1 and admin_token_matches(expected, authorizations[0])


async def read_capped(request: Request, limit: int, *, timeout_s: float | None = None) -> bytes | None:
    """The request body, or None when it is (or claims to be) larger than ``limit`` bytes.

    The whole body must arrive within ``timeout_s`` (default :data:`BODY_TIMEOUT_S`; else :class:`RequestTimeout`):
    a body trickled a byte at a time would otherwise hold the request, its connection and its task for as long as
    the peer likes.
    """
    if timeout_s is None:
        timeout_s = BODY_TIMEOUT_S
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return None
    except TimeoutError:
        raise RequestTimeout from None
    return bytes(body)


#: A location element that is one of our own names (a field, a parameter), not a key the client made up.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
#: Error types whose message is written by a validator and may quote the value.
_FREE_TEXT = {"value_error", "assertion_error"}
MAX_PROBLEMS = 10


def validation_problems(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic's validation errors as ``{"loc", "msg", "type"}`` — never the input, its context or a made-up key.

    FastAPI's default 422 answer carries each error's ``input``: a 32 MiB body came back whole, and a lone surrogate
    in it could not be encoded (a 500). Here a location keeps only names and indexes (a key the client invented
    becomes ``"?"``) and a message that could quote the value becomes a generic one.
    """
    problems = []
    for error in list(errors)[:MAX_PROBLEMS]:
        loc = [
            part if isinstance(part, int) or (isinstance(part, str) and _NAME.fullmatch(part)) else "?"
            for part in error.get("loc", ())
        ]
        kind = str(error.get("type", "invalid"))
        msg = str(error.get("msg", "invalid value"))
        value = error.get("input")
        if kind in _FREE_TEXT or (isinstance(value, str) and len(value) >= 3 and value in msg) or len(msg) > 200:
            msg = "invalid value"
        problems.append({"loc": loc, "msg": msg.encode("utf-8", "replace").decode("utf-8"), "type": kind[:64]})
    return problems


def invalid_request(errors: Sequence[Any], status: int = 422) -> JSONResponse:
    """The one answer to a request that fails validation: ``{"error": "invalid_request", "detail": [...]}``.

    Its ``detail`` is a list of ``{loc, msg, type}``: it matches both FastAPI's declared ``HTTPValidationError``
    schema and jwtwatch's ``{"error", "detail"}`` error answers.
    """
    return JSONResponse({"error": "invalid_request", "detail": validation_problems(errors)}, status_code=status)


_Body = TypeVar("_Body", bound=BaseModel)


async def read_json_body(request: Request, model: type[_Body], limit: int) -> _Body | Response:
    """An admin route's JSON body as ``model``, or the answer refusing it: over ``limit`` bytes (413), not strict
    JSON (400: invalid UTF-8 and lone surrogates are refused here), not a valid ``model`` (422 naming the fields,
    never echoing the input). Called after the admin check, never before, so a stranger's body is never parsed."""
    raw = await read_capped(request, limit)
    if raw is None:
        return JSONResponse({"error": "request_too_large", "detail": f"at most {limit} bytes"}, status_code=413)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return JSONResponse({"error": "invalid_json"}, status_code=400)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return invalid_request(exc.errors())


def install_error_handlers(app: FastAPI) -> None:
    """Error answers every jwtwatch app shares: validation errors without the input, body timeouts as 408."""

    async def on_invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return invalid_request(exc.errors())

    async def on_timeout(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "request_timeout"}, status_code=408, headers={"Connection": "close"})

    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(RequestTimeout, on_timeout)


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
