"""``GET /v1/validate`` as raw ASGI: the forward-auth answer without FastAPI's routing, dependency injection,
middleware stack and thread pool.

Every gateway request passes through this endpoint, so it is the one worth writing by hand. The answers are
byte for byte those of the FastAPI route in ``app.py`` (same status, body and headers, the security headers
and ``Cache-Control: no-store`` included; ``tests/validation/test_fastpath.py`` compares the two): the response headers
are rendered once, by the same Starlette response classes and the same rules as ``SecurityHeadersMiddleware``,
and copied per request.

The validation runs on the event loop when it cannot block: a cache hit costs about 2 µs and a first-seen
token one signature check. A key source that may fetch over the network on the request path (a JWKS URL,
re-fetched every few minutes and on unknown kids) sends the validation to the thread pool instead, as the
FastAPI route does, so that a slow JWKS server never stalls the other connections.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from pipeline.errors import RevocationsUnavailable
from pipeline.serving.client_ip import client_ip
from pipeline.serving.web import bearer_token, secure_headers
from pipeline.validation.service import RequestContext, ValidatorService
from pipeline.validation.verifier import carriable

PATH = "/v1/validate"
_PEERS_MAX = 4096
_WANTED = frozenset((b"authorization", b"user-agent", b"x-forwarded-host", b"x-forwarded-method", b"x-forwarded-uri"))


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


class _Prepared:
    """A fixed answer, rendered once."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, response: Response) -> None:
        self.status = response.status_code
        self.headers = secure_headers(response.raw_headers, no_store=True)
        self.body = bytes(response.body)

    async def send(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": list(self.headers)})
        await send({"type": "http.response.body", "body": self.body})


def header_value(value: object) -> str | None:
    """A verified identity claim as an ``X-Auth-*`` header value, exactly as signed; None when the claim is absent.

    Never altered: a value that a header cannot carry unchanged (:func:`carriable`) raises ``ValueError``. The
    verifier refuses such tokens (``malformed``), so this is the last line, not the rule.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not carriable(value):
        raise ValueError("an identity claim that an HTTP header cannot carry unchanged")
    return value


#: The ``X-Auth-*`` headers a 200 carries upstream, each with its lower-case wire name (the fast path sends bytes).
_AUTH_HEADERS = tuple(
    (name, name.lower().encode()) for name in ("X-Auth-Subject", "X-Auth-Token-Id", "X-Auth-Client-Id", "X-Auth-Scope")
)


def _auth_values(claims: Any) -> tuple[str | None, ...]:
    """The values of ``_AUTH_HEADERS``, in its order: who the verified token is for."""
    claims = claims or {}
    # RFC 9068 names the client ``client_id``; ``azp`` (OpenID Connect) stands in only when it is absent.
    client = claims["client_id"] if "client_id" in claims else claims.get("azp")
    return (
        header_value(claims.get("sub")),
        header_value(claims.get("jti")),
        header_value(client),
        header_value(claims.get("scope")),
    )


def auth_headers(claims: Any) -> list[tuple[str, str]]:
    """The ``X-Auth-*`` headers a 200 carries upstream (those with a value); ``ValueError`` as :func:`header_value`."""
    return [(name, text) for (name, _), text in zip(_AUTH_HEADERS, _auth_values(claims), strict=True) if text]


def _raw_auth_headers(claims: Any) -> list[tuple[bytes, bytes]]:
    """:func:`auth_headers` as ASGI wants them: lower-case names and values as bytes."""
    return [
        (raw, text.encode("ascii"))
        for (_, raw), text in zip(_AUTH_HEADERS, _auth_values(claims), strict=True)
        if text is not None
    ]


def repeated_authorization() -> JSONResponse:
    """The answer to a request with more than one ``Authorization`` line, on every surface.

    Which line counts differs between a gateway, this validator and the API behind it (first, last, or both
    joined), so a second one could show each of them a different token. 401, not RFC 6750's 400: nginx's
    auth_request turns anything but 2xx/401/403 from the validator into a 500.
    """
    return JSONResponse(
        {"error": "invalid_request"}, status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_request"'}
    )


class ValidateEndpoint:
    """The ASGI callable answering ``GET /v1/validate`` for one :class:`ValidatorService`."""

    def __init__(self, service: ValidatorService) -> None:
        self.service = service
        self.max_bytes = service.config.max_token_bytes
        invalid = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        realm = {"WWW-Authenticate": 'Bearer realm="jwtwatch"'}
        self.no_token = _Prepared(JSONResponse({"error": "unauthorized"}, status_code=401, headers=realm))
        self.invalid = _Prepared(JSONResponse({"error": "invalid_token"}, status_code=401, headers=invalid))
        self.too_large = _Prepared(JSONResponse({"error": "invalid_token"}, status_code=431, headers=invalid))
        self.unavailable = _Prepared(
            JSONResponse({"error": "temporarily_unavailable"}, status_code=503, headers={"Retry-After": "5"})
        )
        self.internal_error = _Prepared(JSONResponse({"error": "internal_error"}, status_code=500))
        self.repeated_authorization = _Prepared(repeated_authorization())
        # a 200: the X-Auth-* headers, then these (Response(status_code=200, headers=...) has an empty body)
        self.ok_tail = secure_headers([(b"content-length", b"0")], no_store=True)
        self._peers: dict[str, str] = {}  # socket peer -> client IP, for requests without X-Forwarded-For
        self._keys: object = None
        self._inline = True

    def _runs_inline(self) -> bool:
        keys = self.service.validator.keys
        if keys is not self._keys:  # the key source can be replaced after the app is built
            self._keys, self._inline = keys, not getattr(keys, "may_block", True)
        return self._inline

    def _client_ip(self, peer: str | None, forwarded: list[bytes]) -> str:
        if forwarded:
            # Repeated X-Forwarded-For lines are one list (RFC 9110 §5.3): a client's forged first line must
            # not hide the line a trusted proxy appended.
            joined = ",".join(v.decode("latin-1") for v in forwarded)
            return client_ip(peer, joined or None, self.service.trusted_proxies)
        if peer is None:
            return client_ip(None, None, self.service.trusted_proxies)
        ip = self._peers.get(peer)
        if ip is None:
            if len(self._peers) >= _PEERS_MAX:
                self._peers.clear()
            ip = self._peers[peer] = client_ip(peer, None, self.service.trusted_proxies)
        return ip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        first: dict[bytes, bytes] = {}  # the first line of each header of interest, as Starlette's .get()
        forwarded: list[bytes] = []
        repeated_authorization = False
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded.append(value)
            elif name in _WANTED:
                if name not in first:
                    first[name] = value
                elif name == b"authorization":
                    repeated_authorization = True
        service = self.service
        if repeated_authorization:
            service.refuse("malformed", self._context(scope, first, forwarded))
            await self.repeated_authorization.send(send)
            return
        authorization = first.get(b"authorization")
        token = bearer_token(authorization.decode("latin-1") if authorization is not None else None)
        if token is None:
            service.metrics.no_credentials.inc()
            await self.no_token.send(send)
            return
        context = self._context(scope, first, forwarded)
        if len(token) > self.max_bytes:
            service.too_large(context)
            await self.too_large.send(send)
            return
        try:
            if self._runs_inline():
                verdict = service.check(token, context)
            else:
                verdict = await anyio.to_thread.run_sync(service.check, token, context)
        except RevocationsUnavailable:
            # Revocations may be missing: refuse to vouch for any token rather than let a revoked one in.
            await self.unavailable.send(send)
            return
        if not verdict.ok:
            await self.invalid.send(send)
            return
        try:
            headers = _raw_auth_headers(verdict.claims)
        except ValueError:  # an identity the headers cannot carry unchanged: refused, never altered
            await self.invalid.send(send)
            return
        headers.extend(self.ok_tail)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def _context(self, scope: Scope, first: dict[bytes, bytes], forwarded: list[bytes]) -> RequestContext:
        client = scope.get("client")
        return RequestContext(
            ip=self._client_ip(client[0] if client else None, forwarded),
            user_agent=_text(first.get(b"user-agent")),
            service=_text(first.get(b"x-forwarded-host")),
            method=_text(first.get(b"x-forwarded-method")),
            path=_text(first.get(b"x-forwarded-uri")),
        )


__all__ = ["PATH", "ValidateEndpoint", "auth_headers", "header_value", "repeated_authorization"]
