"""``POST /v1/alerts/{alert_id}/verdict`` and the verdicts in ``GET /v1/alerts``, served for real on loopback: on
the alerts service's app and on ``jwtwatch serve``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.alerts import AlertsService, create_alerts_app
from pipeline.bus import VERDICTS
from pipeline.bus.memory import MemoryBus
from pipeline.events import AlertVerdict
from pipeline.keys import KeyStore
from pipeline.nodes import AllInOne, ServeOptions
from pipeline.validation import ValidatorConfig
from tests.support.alerts import ADMIN, FakeClock, make_alert
from tests.support.paths import DEFAULT_MODEL
from tests.support.servers import serve_app

AUTH = {"Authorization": f"Bearer {ADMIN}"}
MARKER = "zq-marker-7731"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[AlertsService, httpx.Client, MemoryBus]]:
    bus = MemoryBus()
    service = AlertsService(tmp_path, admin_token=ADMIN, clock=FakeClock(), bus=bus)
    service.accept_alert(make_alert("a-1", reasons=[{"rule": "token_fanout", "text": "rule fired: token fanout"}]))
    service.accept_alert(make_alert("a-2", entity="tok-2", jti="tok-2"))
    with serve_app(create_alerts_app(service)) as base, httpx.Client(base_url=base, timeout=10) as client:
        yield service, client, bus
    service.close()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {ADMIN}"}],
)
@pytest.mark.parametrize("body", [b"{not json", b'{"verdict": "benign"}', b"x" * 100_000])
def test_no_admin_token_is_refused_before_the_body_is_read(
    api: tuple[AlertsService, httpx.Client, MemoryBus], headers: dict[str, str], body: bytes
) -> None:
    service, client, _ = api
    answer = client.post("/v1/alerts/a-1/verdict", content=body, headers=headers)
    assert answer.status_code == 401 and answer.json() == {"detail": "unauthorized"}
    assert service.list_alerts(verdict="none") != [] and all(a["verdict"] is None for a in service.list_alerts())


def test_two_authorization_lines_are_refused(api: tuple[AlertsService, httpx.Client, MemoryBus]) -> None:
    _, client, _ = api
    headers = [("Authorization", f"Bearer {ADMIN}"), ("Authorization", f"Bearer {ADMIN}")]
    assert client.post("/v1/alerts/a-1/verdict", json={"verdict": "benign"}, headers=headers).status_code == 401


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json " + MARKER.encode(), 400),
        (b"[]", 422),
        (b'"benign"', 422),
        (b'{"verdict": "' + MARKER.encode() + b'"}', 422),
        (b'{"verdict": "benign", "<' + MARKER.encode() + b'>": 1}', 422),  # unknown field (a made-up name)
        (b'{"verdict": 1}', 422),
        (b'{"verdict": "benign", "note": 5}', 422),
        (b'{"verdict": "benign", "note": "' + b"n" * 2001 + b'"}', 422),
        (b'{"verdict": "benign", "note": "ok\\u202eevil ' + MARKER.encode() + b'"}', 422),  # bidi override
        (b'{"verdict": "benign", "note": "\\u001b[31m' + MARKER.encode() + b'"}', 422),  # terminal escape
        (b'{"verdict": "benign", "note": "line\\u2028' + MARKER.encode() + b'"}', 422),
        (b'{"verdict": "benign", "suppress_for": "' + MARKER.encode() + b'"}', 422),
        (b'{"verdict": "benign", "suppress_for": "30s"}', 422),  # under a minute
        (b'{"verdict": "benign", "suppress_for": "31d"}', 422),  # over 30 days
        (b'{"verdict": "benign", "suppress_for": "99999999999999999999999d"}', 422),
        (b'{"verdict": "compromised", "suppress_for": "1h"}', 422),
        (b'{"verdict": "benign", "analyst": "a b<script>"}', 422),
        (b'{"verdict": "benign", "note": "\\ud800"}', 400),  # a lone surrogate: not JSON orjson accepts
        (b"x" * 20_000, 413),
    ],
)
def test_hostile_bodies_get_a_4xx_that_does_not_echo_them(
    api: tuple[AlertsService, httpx.Client, MemoryBus], body: bytes, status: int
) -> None:
    service, client, bus = api
    answer = client.post("/v1/alerts/a-1/verdict", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert MARKER not in answer.text and "nnnnnnnnnn" not in answer.text
    assert answer.json()["error"] in ("invalid_json", "invalid_request", "request_too_large")
    assert service.list_alerts(verdict="none") and bus.consumer([VERDICTS], "t").poll(10, 0) == []


def test_unknown_alert_is_404(api: tuple[AlertsService, httpx.Client, MemoryBus]) -> None:
    _, client, _ = api
    for alert_id in ("nope", "x" * 300):
        answer = client.post(f"/v1/alerts/{alert_id}/verdict", json={"verdict": "benign"}, headers=AUTH)
        assert answer.status_code == 404 and answer.json() == {"error": "not_found"}


def test_a_verdict_is_recorded_published_and_listed_last_one_wins(
    api: tuple[AlertsService, httpx.Client, MemoryBus],
) -> None:
    _, client, bus = api
    body = {"verdict": "benign", "note": "load test from the office\n— fine", "suppress_for": "2h", "analyst": "ana"}
    answer = client.post("/v1/alerts/a-1/verdict", json=body, headers=AUTH)
    assert answer.status_code == 201, answer.text
    shown = answer.json()["verdict"]
    assert (shown["verdict"], shown["note"], shown["by"]) == ("benign", body["note"], "ana")
    assert answer.headers["cache-control"] == "no-store"
    published = [AlertVerdict.from_json(m.value) for m in bus.consumer([VERDICTS], "t").poll(10, 0)]
    assert [(v.alert_id, v.verdict, v.rules, v.verdict_id) for v in published] == [
        ("a-1", "benign", ["token_fanout"], shown["verdict_id"])
    ]
    listed = {a["alert_id"]: a["verdict"] for a in client.get("/v1/alerts", headers=AUTH).json()["alerts"]}
    assert listed["a-1"] == shown and listed["a-2"] is None

    again = client.post("/v1/alerts/a-1/verdict", json={"verdict": "compromised"}, headers=AUTH)
    assert again.status_code == 201 and again.json()["verdict"]["suppress_until"] is None
    judged = client.get("/v1/alerts", params={"verdict": "compromised"}, headers=AUTH).json()["alerts"]
    assert [(a["alert_id"], a["verdict"]["verdict"]) for a in judged] == [("a-1", "compromised")]
    unjudged = client.get("/v1/alerts", params={"verdict": "none"}, headers=AUTH).json()["alerts"]
    assert [a["alert_id"] for a in unjudged] == ["a-2"]
    assert client.get("/v1/alerts", params={"verdict": "bogus"}, headers=AUTH).status_code == 422


# ------------------------------------------------------------------------------------------- serve

ISSUER = "https://issuer.verdicts.test"


def test_serve_takes_verdicts_and_its_pipeline_follows_them(tmp_path: Path) -> None:
    KeyStore.init(tmp_path / "keys", alg="ES256", issuer=ISSUER)
    options = ServeOptions(
        config=ValidatorConfig(issuer=ISSUER, audience="https://api.test", jwks_file=tmp_path / "keys" / "jwks.json"),
        data_dir=tmp_path / "data",
        model_dir=DEFAULT_MODEL,
        admin_token=ADMIN,
    )
    node = AllInOne(options)
    node.alerts.accept_alert(make_alert("a-1"))
    node.start()
    try:
        with serve_app(node.app) as url, httpx.Client(base_url=url, timeout=10) as client:
            assert client.post("/v1/alerts/a-1/verdict", json={"verdict": "benign"}).status_code == 401
            answer = client.post("/v1/alerts/a-1/verdict", json={"verdict": "benign", "suppress_for": "1h"},
                                 headers=AUTH)  # fmt: skip
            assert answer.status_code == 201, answer.text
            assert client.get("/v1/alerts", headers=AUTH).json()["alerts"][0]["verdict"]["verdict"] == "benign"
            deadline = time.monotonic() + 10
            while len(node.runner.engine.suppressions) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert node.runner.engine.suppressions.covers("jti", "tok-123", [], "high", time.time())
    finally:
        node.stop()
    # A restarted serve (a fresh in-process bus) publishes the benign verdict in force again.
    again = AllInOne(options)
    again.start()
    try:
        assert again.runner.engine.suppressions.covers("jti", "tok-123", [], "high", time.time())
    finally:
        again.stop()
