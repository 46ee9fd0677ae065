"""The alerts service's HTTP API, served for real on loopback."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from standardwebhooks import Webhook

from pipeline.alerts import AlertsService, create_alerts_app
from pipeline.serving.web import metrics_app
from tests.support.alerts import ADMIN, SUMMARY, FakeClock, Receiver, make_alert, make_revocation
from tests.support.servers import serve_app

AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AlertsService, httpx.Client, FakeClock]]:
    clock = FakeClock()
    service = AlertsService(
        tmp_path_factory.mktemp("alerts"), admin_token=ADMIN, clock=clock, rng=random.Random(5), timeout_s=5.0
    )
    with serve_app(create_alerts_app(service)) as base, httpx.Client(base_url=base, timeout=10) as client:
        yield service, client, clock
    service.close()


@pytest.fixture
def client(api: tuple[AlertsService, httpx.Client, FakeClock]) -> httpx.Client:
    return api[1]


@pytest.fixture
def service(api: tuple[AlertsService, httpx.Client, FakeClock]) -> AlertsService:
    return api[0]


def register(client: httpx.Client, url: str, event_types: list[str] | None = None, min_severity: str = "low") -> dict:
    body = {"url": url, "event_types": event_types or ["token.anomaly"], "min_severity": min_severity}
    response = client.post("/v1/webhooks", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    return response.json()


ADMIN_ENDPOINTS = [
    ("POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/", "event_types": ["token.anomaly"]}),
    ("GET", "/v1/webhooks", None),
    ("DELETE", "/v1/webhooks/wh_nope", None),
    ("GET", "/v1/alerts", None),
    ("GET", "/v1/alerts?since=garbage&limit=-4", None),
    ("GET", "/v1/deliveries", None),
    ("GET", "/v1/deliveries?status=bogus", None),
    ("POST", "/v1/deliveries/1/redeliver", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": f"Bearer {ADMIN}x"},
        {"Authorization": f"Basic {ADMIN}"},
        {"Authorization": ADMIN},
        {"Authorization": "Bearer"},
    ],
)
def test_admin_endpoints_need_the_token(
    client: httpx.Client, service: AlertsService, method: str, path: str, body: object, headers: dict[str, str]
) -> None:
    before = len(service.list_subscriptions())
    response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "secret" not in response.text
    assert len(service.list_subscriptions()) == before


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ENDPOINTS)
def test_a_second_authorization_line_is_refused_whichever_holds_the_token(
    client: httpx.Client, service: AlertsService, method: str, path: str, body: object
) -> None:
    before = len(service.list_subscriptions())
    for lines in ([AUTH["Authorization"], "Bearer x"], ["Bearer x", AUTH["Authorization"]]):
        response = client.request(method, path, json=body, headers=[("Authorization", line) for line in lines])
        assert response.status_code == 401, lines
    assert len(service.list_subscriptions()) == before


def test_admin_api_closed_without_a_configured_token(tmp_path: Path) -> None:
    service = AlertsService(tmp_path, admin_token=None)
    try:
        with serve_app(create_alerts_app(service)) as base:
            for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer anything-at-all-here"}):
                assert httpx.get(f"{base}/v1/webhooks", headers=headers).status_code == 401
            assert httpx.get(f"{base}/healthz").status_code == 200
    finally:
        service.close()


def test_webhook_lifecycle_and_secret_shown_once(client: httpx.Client, receiver: Receiver) -> None:
    created = register(client, receiver.url("life"), ["token.anomaly", "token.revoked"], "medium")
    assert set(created) == {"id", "secret"}
    assert created["secret"].startswith("whsec_")
    listed = client.get("/v1/webhooks", headers=AUTH)
    assert listed.status_code == 200
    assert listed.headers["cache-control"] == "no-store"
    assert created["secret"] not in listed.text and created["secret"][6:] not in listed.text
    (mine,) = [w for w in listed.json()["webhooks"] if w["id"] == created["id"]]
    assert mine["url"] == receiver.url("life")
    assert mine["event_types"] == ["token.anomaly", "token.revoked"]
    assert mine["min_severity"] == "medium" and mine["status"] == "active"
    assert "secret" not in mine
    assert client.delete(f"/v1/webhooks/{created['id']}", headers=AUTH).status_code == 204
    assert created["id"] not in client.get("/v1/webhooks", headers=AUTH).text
    assert client.delete(f"/v1/webhooks/{created['id']}", headers=AUTH).status_code == 404


def test_security_headers(client: httpx.Client) -> None:
    for path, headers in (("/healthz", {}), ("/v1/webhooks", AUTH), ("/nope", {}), ("/v1/alerts", {})):
        response = client.get(path, headers=headers)
        assert "max-age=31536000" in response.headers["strict-transport-security"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
    created = client.post(
        "/v1/webhooks", json={"url": "http://127.0.0.1:9/", "event_types": ["token.revoked"]}, headers=AUTH
    )
    assert created.status_code == 201
    assert created.headers["cache-control"] == "no-store"


HOSTILE_BODIES: list[tuple[str, bytes]] = [
    ("huge body", orjson.dumps({"url": "http://127.0.0.1:9/" + "a" * 2_000_000, "event_types": ["token.anomaly"]})),
    ("not json", b"{url: nope"),
    ("empty", b""),
    ("invalid utf-8", b'{"url": "\xff\xfe"}'),
    ("array", b'["http://127.0.0.1:9/"]'),
    ("string", b'"http://127.0.0.1:9/"'),
    ("null", b"null"),
    ("url not a string", b'{"url": 5, "event_types": ["token.anomaly"]}'),
    ("url null", b'{"url": null}'),
    ("url missing", b'{"event_types": ["token.anomaly"]}'),
    ("event_types a string", b'{"url": "http://127.0.0.1:9/", "event_types": "token.anomaly"}'),
    ("event_types empty", b'{"url": "http://127.0.0.1:9/", "event_types": []}'),
    ("event type unknown", b'{"url": "http://127.0.0.1:9/", "event_types": ["token.stolen"]}'),
    ("event type not a string", b'{"url": "http://127.0.0.1:9/", "event_types": [1]}'),
    ("event types nested", b'{"url": "http://127.0.0.1:9/", "event_types": [["token.anomaly"]]}'),
    ("too many event types", orjson.dumps({"url": "http://127.0.0.1:9/", "event_types": ["token.anomaly"] * 50})),
    ("severity unknown", b'{"url": "http://127.0.0.1:9/", "event_types": ["token.anomaly"], "min_severity": "x"}'),
    ("severity a number", b'{"url": "http://127.0.0.1:9/", "event_types": ["token.anomaly"], "min_severity": 3}'),
    ("extra field", b'{"url": "http://127.0.0.1:9/", "event_types": ["token.anomaly"], "secret": "whsec_AAAA"}'),
    ("deep nesting", b'{"url": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("huge number", b'{"url": "http://127.0.0.1:9/", "min_severity": 1' + b"0" * 5000 + b"}"),
]

BAD_URLS = [
    "ftp://127.0.0.1/hook",
    "file:///etc/passwd",
    "http://8.8.8.8/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/",
    "http://metadata.google.internal/",
    "https://user:pw@127.0.0.1/hook",
    "https://user:pw@host/hook",
    "http://2852039166/",
    "http://0.0.0.0:80/",
    "https://127.0.0.1/#frag",
    "https://127.0.0.1:99999/",
    "http://[::1/",
    "",
    " http://127.0.0.1/",
    "http://127.0.0.1/\r\nX-Injected: 1",
]


@pytest.mark.parametrize(("name", "raw"), HOSTILE_BODIES, ids=[n for n, _ in HOSTILE_BODIES])
def test_hostile_bodies_get_4xx(client: httpx.Client, service: AlertsService, name: str, raw: bytes) -> None:
    before = len(service.list_subscriptions())
    response = client.post("/v1/webhooks", content=raw, headers={**AUTH, "content-type": "application/json"})
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
    assert len(service.list_subscriptions()) == before
    if name == "huge body":
        assert response.status_code == 413


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_urls_get_422(client: httpx.Client, service: AlertsService, url: str) -> None:
    before = len(service.list_subscriptions())
    response = client.post("/v1/webhooks", json={"url": url, "event_types": ["token.anomaly"]}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["error"] in ("invalid_url", "invalid_request")
    assert len(service.list_subscriptions()) == before


def test_oversized_declared_or_chunked_bodies_are_refused(client: httpx.Client) -> None:
    host, port = str(client.base_url.host), client.base_url.port
    assert port is not None
    # A huge declared length is refused before anything is read.
    with socket.create_connection((host, port), timeout=5) as raw:
        raw.sendall(
            b"POST /v1/webhooks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{}"
        )
        assert raw.recv(1024).startswith(b"HTTP/1.1 413")

    # No length at all (chunked): the cap applies while reading.
    def chunks() -> Iterator[bytes]:
        yield b'{"url": "http://127.0.0.1:9/'
        for _ in range(64):
            yield b"a" * 16384
        yield b'"}'

    response = client.post("/v1/webhooks", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 413


def test_validation_errors_name_the_field_never_the_input(client: httpx.Client) -> None:
    """FastAPI's default 422 carries each error's input; the app's answer keeps locations and messages only."""
    echo = "ECHO-" + "q" * 3000
    bad_query = client.get("/v1/alerts", params={"limit": echo, "entity_type": echo}, headers=AUTH)
    assert bad_query.status_code == 422 and "ECHO" not in bad_query.text
    assert bad_query.json()["error"] == "invalid_request"
    assert {tuple(p["loc"]) for p in bad_query.json()["detail"]} == {("query", "limit"), ("query", "entity_type")}
    body = {"url": "http://127.0.0.1:9/", "event_types": [echo], "min_severity": echo, echo: 1}
    bad_body = client.post("/v1/webhooks", json=body, headers=AUTH)
    assert bad_body.status_code == 422 and "ECHO" not in bad_body.text
    assert ["?"] in [p["loc"] for p in bad_body.json()["detail"]]  # the made-up key, not repeated


def test_a_webhook_body_that_does_not_arrive_in_time_gets_408(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.serving.web

    monkeypatch.setattr(pipeline.serving.web, "BODY_TIMEOUT_S", 1.0)
    host, port = str(client.base_url.host), client.base_url.port
    assert port is not None
    with socket.create_connection((host, port), timeout=10) as raw:
        raw.sendall(
            b"POST /v1/webhooks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN.encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{"url": '
        )
        started = time.monotonic()
        assert raw.recv(1024).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 5


def test_alert_log_filters(client: httpx.Client, service: AlertsService) -> None:
    service.accept_alert(
        make_alert("log-1", "low", 0.5, entity_type="ip", entity="198.51.100.1", ts="2025-05-01T10:00:00Z")
    )
    service.accept_alert(make_alert("log-2", "high", 0.8, entity="tok-9", ts="2025-05-01T11:00:00Z"))
    service.accept_alert(make_alert("log-3", "critical", 0.95, entity="tok-9", ts="2025-05-01T12:00:00Z"))

    def ids(**params: object) -> list[str]:
        response = client.get(
            "/v1/alerts", params={**params, "since": params.get("since", "2025-05-01T00:00:00Z")}, headers=AUTH
        )
        assert response.status_code == 200, response.text
        return [a["alert_id"] for a in response.json()["alerts"]]

    assert ids() == ["log-3", "log-2", "log-1"]
    assert ids(severity="high") == ["log-3", "log-2"]
    assert ids(entity_type="jti", entity="tok-9") == ["log-3", "log-2"]
    assert ids(entity_type="ip") == ["log-1"]
    assert ids(since="2025-05-01T10:30:00+00:00", until="2025-05-01T11:30:00Z") == ["log-2"]
    assert ids(limit=1) == ["log-3"]
    alert = client.get("/v1/alerts", params={"entity": "tok-9", "limit": 1}, headers=AUTH).json()["alerts"][0]
    assert alert["schema"] == "alert/1" and alert["revision"] == 1
    assert alert["summary"] == SUMMARY
    for bad in (
        {"since": "yesterday"},
        {"until": "2025-05-01T10:00:00"},  # no offset
        {"severity": "urgent"},
        {"entity_type": "user"},
        {"limit": 0},
        {"limit": 100_000},
        {"limit": "many"},
    ):
        response = client.get("/v1/alerts", params=bad, headers=AUTH)
        assert response.status_code == 422, (bad, response.text)


def test_deliveries_and_redeliver(api: tuple[AlertsService, httpx.Client, FakeClock], receiver: Receiver) -> None:
    service, client, _clock = api
    created = register(client, receiver.url("api"), ["token.revoked"])
    receiver.script("api", 500)
    service.accept_revocation(make_revocation("rev-api"))
    service.deliver_due()
    response = client.get("/v1/deliveries", params={"webhook": created["id"]}, headers=AUTH)
    assert response.status_code == 200
    (d,) = response.json()["deliveries"]
    assert d["status"] == "pending" and d["type"] == "token.revoked" and d["ref"] == "rev-api"
    assert d["attempts"][0]["status_code"] == 500 and d["attempts"][0]["outcome"] == "retry"
    assert d["next_attempt_at"] is not None
    # Redeliver: due now, whatever the backoff said.
    response = client.post(f"/v1/deliveries/{d['id']}/redeliver", headers=AUTH)
    assert response.status_code == 202 and response.json() == {"id": d["id"], "status": "pending"}
    assert service.deliver_due() == 1
    (d,) = client.get("/v1/deliveries", params={"status": "delivered", "webhook": created["id"]}, headers=AUTH).json()[
        "deliveries"
    ]
    assert [a["status_code"] for a in d["attempts"]] == [500, 200]
    # Redelivering a delivered message sends it again, with the same id.
    assert client.post(f"/v1/deliveries/{d['id']}/redeliver", headers=AUTH).status_code == 202
    service.deliver_due()
    first, _, third = receiver.at("api")
    assert first.headers["webhook-id"] == third.headers["webhook-id"] == "revocation_rev-api"
    assert client.post("/v1/deliveries/999999/redeliver", headers=AUTH).status_code == 404
    assert client.post("/v1/deliveries/abc/redeliver", headers=AUTH).status_code == 404
    assert client.post("/v1/deliveries/99999999999999999999999/redeliver", headers=AUTH).status_code == 404
    # A deleted webhook's deliveries are not redelivered.
    assert client.delete(f"/v1/webhooks/{created['id']}", headers=AUTH).status_code == 204
    assert client.post(f"/v1/deliveries/{d['id']}/redeliver", headers=AUTH).status_code == 409
    assert client.get("/v1/deliveries", params={"status": "nope"}, headers=AUTH).status_code == 422


def test_end_to_end_through_the_api(client: httpx.Client, service: AlertsService, receiver: Receiver) -> None:
    created = register(client, receiver.url("e2e"), ["token.anomaly"], "high")
    service.accept_alert(make_alert("e2e-low", "low", 0.5))
    service.accept_alert(make_alert("e2e-high", "high", 0.85))
    service.deliver_due()
    (request,) = receiver.at("e2e")
    body = Webhook(created["secret"]).verify(request.body, request.headers)
    assert body["data"]["alert_id"] == "e2e-high"
    client.delete(f"/v1/webhooks/{created['id']}", headers=AUTH)


def test_health_and_metrics(client: httpx.Client, service: AlertsService) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert client.get("/metrics").status_code == 404  # the metrics listener's (--metrics-port), not the API's
    with serve_app(metrics_app(service.registry)) as metrics_url:
        metrics = httpx.get(f"{metrics_url}/metrics")
    assert metrics.status_code == 200
    for name in (
        "jwtwatch_webhook_deliveries_total",
        "jwtwatch_webhook_deliveries_pending",
        "jwtwatch_webhook_attempt_seconds_bucket",
        "jwtwatch_webhook_attempts_total",
        "jwtwatch_alerts_accepted_total",
    ):
        assert name in metrics.text


def test_readyz_fails_when_the_store_is_closed(tmp_path: Path) -> None:
    service = AlertsService(tmp_path, admin_token=ADMIN)
    with serve_app(create_alerts_app(service)) as base, serve_app(metrics_app(service.registry)) as metrics_url:
        service.close()
        response = httpx.get(f"{base}/readyz")
        assert response.status_code == 503 and response.json()["ready"] is False
        assert httpx.get(f"{metrics_url}/metrics").status_code == 200
