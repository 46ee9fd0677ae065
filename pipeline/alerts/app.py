"""The alerts service's HTTP surface (FastAPI): webhooks, the alert log, deliveries, health.

Everything under ``/v1/`` needs the admin bearer token (compared in constant time, before anything else of the
request is read) and is answered with ``Cache-Control: no-store`` — one answer carries a signing secret. Request
bodies are capped and parsed by hand, so a hostile body gets a 4xx, never a 500, and no answer echoes the input.
Metrics are not here but on the metrics listener (``--metrics-port``).
"""

from __future__ import annotations

import logging
import unicodedata
from typing import Annotated, Any, Literal, TypeVar, get_args

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from pipeline.alerts.alert_log import MAX_SUPPRESS_S, MIN_SUPPRESS_S, verdict_view
from pipeline.alerts.delivery import EVENT_TYPES, EventType
from pipeline.alerts.outbox import DELIVERY_STATUSES
from pipeline.alerts.service import AlertsService
from pipeline.errors import TargetError, Unavailable
from pipeline.events import ENTITY_TYPES, SEVERITIES, parse_ts
from pipeline.serving.web import (
    SecurityHeadersMiddleware,
    admin_request_matches,
    install_error_handlers,
    read_json_body,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024
#: Paths of the admin API; one answer carries a signing secret, none may be cached.
NO_STORE_PREFIXES: tuple[str, ...] = ("/v1/webhooks", "/v1/alerts", "/v1/deliveries")

Severity = Literal["low", "medium", "high", "critical"]
assert set(EVENT_TYPES) == set(get_args(EventType))
assert tuple(SEVERITIES) == ("low", "medium", "high", "critical")


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(min_length=1, max_length=2048)
    event_types: list[EventType] = Field(default_factory=lambda: list(EVENT_TYPES), min_length=1, max_length=3)
    min_severity: Severity = "low"


MAX_NOTE_CHARS = 2000
MAX_ALERT_ID_CHARS = 256


class VerdictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    verdict: Literal["benign", "compromised"]
    note: str | None = Field(default=None, max_length=MAX_NOTE_CHARS)
    suppress_for: str | None = Field(
        default=None, min_length=1, max_length=32, description="benign only: e.g. 30m, 24h, 7d (default 24h)"
    )
    analyst: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9._@+-]{1,64}$", description="who judged (default: admin)"
    )


#: Characters a note may not hold: they would let it pass for something else where it is shown (a terminal, a log
#: line, the console) — controls but tab and newline, line and paragraph separators, bidirectional overrides.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def _note_problem(note: str) -> str | None:
    for char in note:
        if char in "\t\n":
            continue
        if char in _BIDI or unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            return "note must be printable text: no control, separator or bidirectional-override characters"
    return None


class WebhookCreated(BaseModel):
    id: str
    secret: str = Field(description="the Standard Webhooks signing secret (whsec_...), shown only in this answer")


class ErrorAnswer(BaseModel):
    """Every error answer: ``{"error": ..., "detail": ...}`` from the handlers, ``{"detail": ...}`` from FastAPI."""

    error: str | None = None
    detail: Any = None


#: The error answers of the admin API, declared so that the OpenAPI schema describes what is really sent
#: (FastAPI's default 422 schema demands a list of validation errors; the handlers' own 422s carry a string).
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorAnswer} for status in (400, 401, 404, 408, 409, 413, 422, 503)
}
#: POST /v1/webhooks reads its body by hand (capped, never a 500): its schema is declared here.
WEBHOOK_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": WebhookRequest.model_json_schema()}},
    }
}
VERDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": VerdictRequest.model_json_schema()}},
    }
}


def _denied() -> HTTPException:
    return HTTPException(
        status_code=401, detail="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="jwtwatch-admin"'}
    )


_Body = TypeVar("_Body", bound=BaseModel)


def _error(status: int, error: str, detail: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"error": error}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)


async def _read_body(request: Request, model: type[_Body]) -> _Body | Response:
    return await read_json_body(request, model, MAX_BODY_BYTES)


def _time_param(name: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_ts(value).timestamp()
    except (ValueError, OverflowError):
        raise ValueError(f"{name} must be an RFC 3339 timestamp with an offset") from None


def alerts_router(service: AlertsService) -> APIRouter:
    """The admin API under ``/v1/`` (webhooks, alerts, deliveries), to include in any FastAPI app.

    Its answers need ``Cache-Control: no-store`` (:data:`NO_STORE_PREFIXES` for the security middleware).
    """

    def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
        # A dependency: FastAPI runs it before validating any parameter, so a stranger learns nothing.
        # (``authorization`` only documents the header; every line of it is judged from ``request``.)
        del authorization
        if not admin_request_matches(service.admin_token, request):
            raise _denied()

    router = APIRouter()
    admin = [Depends(require_admin)]

    @router.post(
        "/v1/webhooks",
        tags=["webhooks"],
        status_code=201,
        dependencies=admin,
        summary="Register a webhook",
        response_model=WebhookCreated,
        responses=ERRORS,
        openapi_extra=WEBHOOK_BODY,
    )
    async def create_webhook(request: Request) -> Response:
        body = await _read_body(request, WebhookRequest)
        if isinstance(body, Response):
            return body
        try:
            # Resolving the host blocks: keep it off the event loop.
            webhook_id, secret = await run_in_threadpool(
                service.create_subscription, body.url, body.event_types, body.min_severity
            )
        except TargetError as exc:
            return _error(422, "invalid_url", str(exc))
        except ValueError as exc:
            return _error(422, "invalid_request", str(exc))
        return JSONResponse({"id": webhook_id, "secret": secret}, status_code=201)

    @router.get(
        "/v1/webhooks", tags=["webhooks"], dependencies=admin, summary="Registered webhooks (never their secrets)"
    )
    def list_webhooks() -> Response:
        return JSONResponse({"webhooks": service.list_subscriptions()})

    @router.delete(
        "/v1/webhooks/{webhook_id}", tags=["webhooks"], status_code=204, dependencies=admin, summary="Delete a webhook"
    )
    def delete_webhook(webhook_id: str) -> Response:
        if len(webhook_id) > 64 or not service.delete_subscription(webhook_id):
            return _error(404, "not_found")
        return Response(status_code=204)

    @router.get(
        "/v1/alerts", tags=["alerts"], dependencies=admin, summary="The alert log, newest first", responses=ERRORS
    )
    def list_alerts(
        entity_type: Annotated[Literal["jti", "sub", "ip"] | None, Query()] = None,
        entity: Annotated[str | None, Query(max_length=8192)] = None,
        severity: Annotated[Severity | None, Query(description="minimum severity")] = None,
        since: Annotated[str | None, Query(max_length=64)] = None,
        until: Annotated[str | None, Query(max_length=64)] = None,
        verdict: Annotated[
            Literal["benign", "compromised", "none"] | None, Query(description="current verdict (none: unjudged)")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        assert entity_type is None or entity_type in ENTITY_TYPES
        try:
            since_s, until_s = _time_param("since", since), _time_param("until", until)
        except ValueError as exc:
            return _error(422, "invalid_request", str(exc))
        alerts = service.list_alerts(
            entity_type=entity_type,
            entity=entity,
            severity=severity,
            since=since_s,
            until=until_s,
            verdict=verdict,
            limit=limit,
        )
        return JSONResponse({"alerts": alerts})

    @router.post(
        "/v1/alerts/{alert_id}/verdict",
        tags=["alerts"],
        status_code=201,
        dependencies=admin,
        summary="Judge an alert: benign (suppress its pattern for the entity) or compromised (revoke)",
        responses=ERRORS,
        openapi_extra=VERDICT_BODY,
    )
    async def judge_alert(alert_id: str, request: Request) -> Response:
        body = await _read_body(request, VerdictRequest)
        if isinstance(body, Response):
            return body
        problem = _note_problem(body.note) if body.note is not None else None
        if problem is not None:
            return _error(422, "invalid_request", problem)
        suppress_s = None
        if body.suppress_for is not None:
            if body.verdict != "benign":
                return _error(422, "invalid_request", "suppress_for applies to benign verdicts only")
            # The project's one duration syntax (imported here: the key store's dependencies stay out of the app).
            from pipeline.errors import KeyStoreError
            from pipeline.keys import parse_duration

            try:
                suppress_s = parse_duration(body.suppress_for)
            except KeyStoreError:
                return _error(422, "invalid_request", "suppress_for must be a duration such as 30m, 24h or 7d")
            if not MIN_SUPPRESS_S <= suppress_s <= MAX_SUPPRESS_S:
                return _error(422, "invalid_request", "suppress_for must lie between 1m and 30d")
        if len(alert_id) > MAX_ALERT_ID_CHARS:
            return _error(404, "not_found")
        try:
            # SQLite and a bus flush block: off the event loop.
            recorded = await run_in_threadpool(
                service.record_verdict,
                alert_id,
                body.verdict,
                note=body.note,
                suppress_for_s=suppress_s,
                by=body.analyst or "admin",
            )
        except Unavailable as exc:
            log.warning("verdict on alert %s not recorded: %s", alert_id, exc)
            return _error(503, "unavailable", "the verdict could not be published; nothing was recorded, try again")
        if recorded is None:
            return _error(404, "not_found")
        return JSONResponse(
            {"alert_id": recorded.alert_id, "verdict": verdict_view(recorded.to_json())}, status_code=201
        )

    @router.get(
        "/v1/deliveries", tags=["deliveries"], dependencies=admin, summary="Webhook deliveries with their attempts"
    )
    def list_deliveries(
        status: Annotated[Literal["pending", "delivered", "failed", "disabled"] | None, Query()] = None,
        webhook: Annotated[str | None, Query(max_length=64, description="webhook id")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> Response:
        assert status is None or status in DELIVERY_STATUSES
        return JSONResponse({"deliveries": service.list_deliveries(status=status, webhook_id=webhook, limit=limit)})

    @router.post(
        "/v1/deliveries/{delivery_id}/redeliver",
        tags=["deliveries"],
        status_code=202,
        summary="Send again, now",
        dependencies=admin,
    )
    def redeliver(delivery_id: str) -> Response:
        if not delivery_id.isdigit() or len(delivery_id) > 18:
            return _error(404, "not_found")
        outcome = service.redeliver(int(delivery_id))
        if outcome == "not_found":
            return _error(404, "not_found")
        if outcome == "inactive":
            return _error(409, "webhook_inactive", "the webhook was disabled or deleted")
        return JSONResponse({"id": int(delivery_id), "status": "pending"}, status_code=202)

    return router


def health_router(service: AlertsService) -> APIRouter:
    """``/healthz`` and ``/readyz`` of the stand-alone service (an all-in-one app has its own)."""
    router = APIRouter()

    @router.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", tags=["health"])
    def readyz() -> Response:
        ready, detail = service.ready()
        return JSONResponse({"ready": ready, "detail": detail}, status_code=200 if ready else 503)

    return router


def create_alerts_app(service: AlertsService) -> FastAPI:
    app = FastAPI(title="jwtwatch alerts", version="1", docs_url=None, redoc_url=None)
    app.include_router(alerts_router(service))
    app.include_router(health_router(service))
    install_error_handlers(app)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - last resort
        log.exception("alerts API: unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal_error"}, status_code=500)

    app.add_middleware(SecurityHeadersMiddleware, no_store_prefixes=NO_STORE_PREFIXES)
    app.state.service = service
    return app


__all__ = [
    "NO_STORE_PREFIXES",
    "VerdictRequest",
    "WebhookRequest",
    "alerts_router",
    "create_alerts_app",
    "health_router",
]
