"""The validator's HTTP surface (FastAPI): forward-auth, introspection, JWKS, revocations, health.

Answers to a failed validation never say more than ``invalid_token`` (RFC 6750 §3): the reason goes to
the usage event and the metrics, not to the caller, who may be the attacker.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from pipeline.errors import RevocationStoreError, RevocationsUnavailable
from pipeline.events import Revocation
from pipeline.serving.client_ip import client_ip
from pipeline.serving.web import (
    SecurityHeadersMiddleware,
    admin_request_matches,
    bearer_token,
    install_error_handlers,
    read_capped,
    read_json_body,
)
from pipeline.validation.fastpath import PATH, ValidateEndpoint, auth_headers, repeated_authorization
from pipeline.validation.service import RequestContext, ValidatorService

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 64 * 1024
#: POST /v1/revocations: two strings of at most 1,024 characters (up to 12 bytes each, escaped) and a time.
MAX_REVOCATION_BYTES = 32 * 1024
_LATEST_REVOKED_BEFORE = 4102444800  # 2100-01-01: later than any token's issue time
JWKS_MAX_AGE_S = 60

_INVALID = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
_NO_TOKEN = {"WWW-Authenticate": 'Bearer realm="jwtwatch"'}


class RevocationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["jti", "sub"]
    value: str = Field(min_length=1, max_length=1024)
    reason: str = Field("manual", min_length=1, max_length=1024)
    revoked_before: datetime | None = Field(
        None, description="subject revocations: tokens issued at or before this time (default: now)"
    )


class ErrorAnswer(BaseModel):
    """An error answer of the admin API: ``{"error": ..., "detail": ...}``."""

    error: str
    detail: Any = None


#: The error answers of POST /v1/revocations, declared so that the OpenAPI schema describes what is really sent.
REVOCATION_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorAnswer} for status in (400, 401, 408, 413, 422, 503)
}
#: POST /v1/revocations reads its body by hand, after the admin check and capped: its schema is declared here.
REVOCATION_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": RevocationRequest.model_json_schema()}},
    }
}


class AdminDenied(HTTPException):
    """Raised by the admin routes' dependency, which FastAPI runs before it reads or validates anything else.

    An HTTPException, so that an app that includes :func:`validator_router` without this module's handler for it
    still answers 401 (as ``{"detail": ...}``), never 500.
    """

    def __init__(self) -> None:
        super().__init__(401, "unauthorized", headers={"WWW-Authenticate": 'Bearer realm="jwtwatch-admin"'})


def _unauthorized() -> JSONResponse:
    return JSONResponse({"error": "invalid_token"}, status_code=401, headers=_INVALID)


def _unavailable() -> JSONResponse:
    # --fail-closed and the revocations may be incomplete: refuse to vouch for any token rather than let a revoked
    # one in.
    return JSONResponse({"error": "temporarily_unavailable"}, status_code=503, headers={"Retry-After": "5"})


def _admin_denied() -> JSONResponse:
    return JSONResponse(
        {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="jwtwatch-admin"'}
    )


def _context(service: ValidatorService, request: Request) -> RequestContext:
    headers = request.headers
    peer = request.client.host if request.client else None
    return RequestContext(
        # Repeated X-Forwarded-For lines are one list (RFC 9110 §5.3): a client's forged first line must
        # not hide the line a trusted proxy appended.
        ip=client_ip(peer, ",".join(headers.getlist("x-forwarded-for")) or None, service.trusted_proxies),
        user_agent=headers.get("user-agent"),
        service=headers.get("x-forwarded-host"),
        method=headers.get("x-forwarded-method"),
        path=headers.get("x-forwarded-uri"),
    )


def validator_router(service: ValidatorService) -> APIRouter:
    router = APIRouter()
    max_bytes = service.config.max_token_bytes

    @router.get("/v1/validate", tags=["validation"], summary="Forward-auth: validate the bearer token")
    def validate(request: Request) -> Response:
        authorizations = request.headers.getlist("authorization")
        if len(authorizations) > 1:
            service.refuse("malformed", _context(service, request))
            return repeated_authorization()
        token = bearer_token(authorizations[0] if authorizations else None)
        if token is None:
            service.metrics.no_credentials.inc()
            return JSONResponse({"error": "unauthorized"}, status_code=401, headers=_NO_TOKEN)
        context = _context(service, request)
        if len(token) > max_bytes:
            service.too_large(context)
            return JSONResponse({"error": "invalid_token"}, status_code=431, headers=_INVALID)
        try:
            verdict = service.check(token, context)
        except RevocationsUnavailable:
            return _unavailable()
        if not verdict.ok:
            return _unauthorized()
        try:
            return Response(status_code=200, headers=dict(auth_headers(verdict.claims)))
        except ValueError:  # an identity the headers cannot carry unchanged: refused, never altered
            return _unauthorized()

    @router.post("/v1/introspect", tags=["validation"], summary="RFC 7662 token introspection (admin)")
    async def introspect(request: Request) -> Response:
        if not admin_request_matches(service.admin_token, request):
            return _admin_denied()
        body = await read_capped(request, MAX_FORM_BYTES)
        if body is None:
            return JSONResponse({"error": "invalid_request"}, status_code=413)
        try:
            form = parse_qs(body.decode("ascii"), max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        tokens = form.get("token", [])
        if len(tokens) != 1:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        token = tokens[0]
        context = _context(service, request)
        if len(token) > max_bytes:
            service.too_large(context)
            return JSONResponse({"active": False})
        try:
            verdict = service.check(token, context)
        except RevocationsUnavailable:
            return _unavailable()  # not "active: false" either: the token may well be active
        if not verdict.ok:
            return JSONResponse({"active": False})
        claims = dict(verdict.claims or {})
        answer: dict[str, Any] = {"active": True, "token_type": "access_token"}
        for name in ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "nbf", "jti"):
            if name in claims:
                answer[name] = claims[name]
        if "username" in claims:
            answer["username"] = claims["username"]
        return JSONResponse(answer)

    @router.get("/.well-known/jwks.json", tags=["keys"], summary="The public keys this validator trusts")
    def jwks() -> Response:
        return JSONResponse(
            service.validator.keys.current().public_jwks(),
            headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE_S}"},
            media_type="application/jwk-set+json",
        )

    @router.get("/.well-known/jwks.jwt", tags=["keys"], summary="The key store's public keys, signed by its root key")
    def signed_jwks() -> Response:
        # written by `jwtwatch keys sign-jwks` beside the --keys-dir store's jwks.json; the root key never comes here
        keys_dir = service.keys_dir
        try:
            body = (keys_dir / "jwks.jwt").read_bytes().strip() if keys_dir is not None else None
        except OSError:
            body = None
        if not body:
            return JSONResponse({"error": "not_found"}, status_code=404)
        headers = {"Cache-Control": f"public, max-age={JWKS_MAX_AGE_S}"}
        return Response(body, headers=headers, media_type="application/jwk-set+jwt")

    def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
        # A dependency: it runs before FastAPI validates any parameter, and the handlers read their bodies only
        # after it — a stranger's request is never parsed, and learns nothing about the schema. (``authorization``
        # only documents the header in the OpenAPI schema; every line of it is judged from ``request``.)
        del authorization
        if not admin_request_matches(service.admin_token, request):
            raise AdminDenied()

    admin = [Depends(require_admin)]

    @router.post(
        "/v1/revocations",
        tags=["revocations"],
        status_code=201,
        summary="Revoke a token or subject",
        dependencies=admin,
        responses=REVOCATION_ERRORS,
        openapi_extra=REVOCATION_BODY,
    )
    async def revoke(request: Request) -> Response:
        body = await read_json_body(request, RevocationRequest, MAX_REVOCATION_BYTES)
        if isinstance(body, Response):
            return body
        before = None
        if body.revoked_before is not None:
            if body.revoked_before.tzinfo is None:
                return JSONResponse({"error": "revoked_before needs a UTC offset"}, status_code=422)
            before = body.revoked_before.timestamp()
            if not 0 <= before <= _LATEST_REVOKED_BEFORE:
                return JSONResponse({"error": "revoked_before out of range"}, status_code=422)
        # the store writes to SQLite and the feed: off the event loop
        record = await run_in_threadpool(_record, body, before)
        return JSONResponse(record.to_dict(), status_code=201)

    def _record(body: RevocationRequest, before: float | None) -> Revocation:
        record = service.revocations.revoke(
            kind=body.kind,
            iss=service.config.issuer,
            value=body.value,
            reason=body.reason,
            source="manual",
            revoked_before=before,
            leeway_s=service.config.leeway_s,
        )
        service.announce(record)  # other validators follow the feed; cached verifications are rechecked anyway
        return record

    @router.get(
        "/v1/revocations", tags=["revocations"], dependencies=admin, summary="Revocations after version `since`"
    )
    def list_revocations(
        since: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> Response:
        records = service.revocations.since(since, limit)
        return JSONResponse({"version": service.revocations.version, "revocations": [r.to_dict() for r in records]})

    @router.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", tags=["health"])
    def readyz() -> Response:
        ready, detail = service.ready()
        return JSONResponse(
            {"ready": ready, "detail": detail, "revocation_version": service.revocations.version},
            status_code=200 if ready else 503,
        )

    return router


class ValidatorApp(FastAPI):
    """The FastAPI app, with ``GET /v1/validate`` answered by :class:`ValidateEndpoint` (raw ASGI) before routing.

    The FastAPI route stays (OpenAPI, and every other method on the path); ``fast_path=False`` serves
    everything through FastAPI — the reference the fast path is tested against.
    """

    validate_endpoint: ValidateEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.validate_endpoint
        if (
            endpoint is not None
            and scope["type"] == "http"
            and scope["method"] == "GET"
            and scope["path"] == PATH
            and not scope.get("root_path")
        ):
            try:
                await endpoint(scope, receive, send)
                return
            except Exception:  # pragma: no cover - last resort, as the FastAPI app's handler
                log.exception("GET /v1/validate failed")
                await endpoint.internal_error.send(send)
                return
        await super().__call__(scope, receive, send)


def create_validator_app(service: ValidatorService, *, fast_path: bool = True) -> FastAPI:
    app = ValidatorApp(title="jwtwatch validator", version="1", docs_url=None, redoc_url=None)
    if fast_path:
        app.validate_endpoint = ValidateEndpoint(service)
    app.include_router(validator_router(service))
    # No /metrics here: its per-reason counters would tell a caller why their token failed. The metrics listener
    # (--metrics-port, pipeline.serving.web.metrics_app) serves them apart.
    install_error_handlers(app)

    @app.exception_handler(AdminDenied)
    async def admin_denied(request: Request, exc: AdminDenied) -> JSONResponse:
        return _admin_denied()

    @app.exception_handler(RevocationStoreError)
    async def store_unavailable(request: Request, exc: RevocationStoreError) -> JSONResponse:
        # Not stored means not in force: tell the caller to retry (disk full, read-only data dir).
        return JSONResponse({"error": "revocation_store_unavailable", "detail": str(exc)}, status_code=503)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - last resort
        return JSONResponse({"error": "internal_error"}, status_code=500)

    app.add_middleware(SecurityHeadersMiddleware, no_store_prefixes=("/v1/validate", "/v1/introspect", "/v1/rev"))
    app.state.service = service
    return app


__all__ = ["create_validator_app", "validator_router"]
