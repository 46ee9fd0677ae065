"""ASGI middleware: a FastAPI (or any ASGI) service validates bearer tokens in-process.

Same rules, same usage events, same revocations as the forward-auth service — just without the hop::

    service = ValidatorService(ValidatorConfig(...), data_dir=..., bus=...)
    app.add_middleware(TokenValidationMiddleware, service=service, exempt_paths={"/healthz"})

    @app.get("/orders")
    def orders(request: Request):
        claims = request.state.token_claims   # verified claims of the caller's token
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.errors import RevocationsUnavailable
from pipeline.serving.client_ip import client_ip
from pipeline.serving.web import bearer_token
from pipeline.validation.fastpath import repeated_authorization
from pipeline.validation.service import RequestContext, ValidatorService


class TokenValidationMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        service: ValidatorService,
        exempt_paths: Iterable[str] = (),
        service_name: str | None = None,
    ) -> None:
        self.app = app
        self.service = service
        self.exempt_paths = frozenset(exempt_paths)
        self.service_name = service_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        authorizations = headers.getlist("authorization")
        if len(authorizations) > 1:
            self.service.refuse("malformed", self._context(scope, headers))
            response = repeated_authorization()
            response.headers["Cache-Control"] = "no-store"
            await response(scope, receive, send)
            return
        token = bearer_token(authorizations[0] if authorizations else None)
        if token is None:
            self.service.metrics.no_credentials.inc()
            response = JSONResponse(
                {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="api"'}
            )
            await response(scope, receive, send)
            return
        context = self._context(scope, headers)
        if len(token) > self.service.config.max_token_bytes:
            self.service.too_large(context)
            verdict = None
            status = 431
        else:
            try:
                # Signature checks are CPU work: keep them off the event loop.
                verdict = await run_in_threadpool(self.service.check, token, context)
            except RevocationsUnavailable:
                # --fail-closed and the revocations may be incomplete: no token is vouched for.
                response = JSONResponse(
                    {"error": "temporarily_unavailable"},
                    status_code=503,
                    headers={"Retry-After": "5", "Cache-Control": "no-store"},
                )
                await response(scope, receive, send)
                return
            status = 401
        if verdict is None or not verdict.ok:
            response = JSONResponse(
                {"error": "invalid_token"},
                status_code=status,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"', "Cache-Control": "no-store"},
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["token_claims"] = dict(verdict.claims or {})
        await self.app(scope, receive, send)

    def _context(self, scope: Scope, headers: Headers) -> RequestContext:
        peer = scope.get("client")
        return RequestContext(
            ip=client_ip(
                peer[0] if peer else None,
                ",".join(headers.getlist("x-forwarded-for")) or None,
                self.service.trusted_proxies,
            ),
            user_agent=headers.get("user-agent"),
            service=self.service_name or headers.get("host"),
            method=scope["method"],
            path=scope["path"],
        )
