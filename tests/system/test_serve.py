"""`jwtwatch serve` end to end on loopback: a stolen token is replayed, detected, revoked, and the
webhooks arrive signed — validator, pipeline and alerts service in one process, on one port."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.keys import KeyStore
from pipeline.nodes import AllInOne, ServeOptions
from pipeline.response.policy import ResponsePolicy
from pipeline.validation import ValidatorConfig
from tests.support.paths import DEFAULT_MODEL
from tests.support.servers import serve_app

ISSUER = "https://issuer.serve.test"
AUDIENCE = "https://api.serve.test"
ADMIN = "serve-admin-token-0123456789abcdef"
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


@dataclass
class Receiver:
    hits: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            self.hits.append((await request.body(), dict(request.headers)))
            return Response(status_code=204)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


@dataclass
class Node:
    url: str
    node: AllInOne
    keys: KeyStore
    receiver: Receiver
    secret: str


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    keys = KeyStore.init(tmp_path / "keys", alg="ES256", issuer=ISSUER)
    options = ServeOptions(
        config=ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=tmp_path / "keys" / "jwks.json"),
        data_dir=tmp_path / "data",
        model_dir=DEFAULT_MODEL,
        admin_token=ADMIN,
        trusted_proxies="127.0.0.1/32",
        policy=ResponsePolicy(enabled=True),
    )
    receiver = Receiver()
    all_in_one = AllInOne(options)
    all_in_one.start()
    with serve_app(receiver.app()) as hook_url, serve_app(all_in_one.app) as url:
        created = httpx.post(
            f"{url}/v1/webhooks",
            json={"url": f"{hook_url}/hook", "event_types": ["token.anomaly", "token.revoked"], "min_severity": "low"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert created.status_code == 201, created.text
        yield Node(url, all_in_one, keys, receiver, created.json()["secret"])
    all_in_one.stop()


def use(url: str, token: str, ip: str, ua: str) -> int:
    headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": ip, "User-Agent": ua}
    return httpx.get(f"{url}/v1/validate", headers=headers).status_code


def test_stolen_token_is_detected_revoked_and_reported(node: Node) -> None:
    token = node.keys.issue_token("alice", AUDIENCE, ttl=600, client_id="web")
    jti = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))["jti"]
    for _ in range(3):
        assert use(node.url, token, "198.51.100.7", CHROME) == 200

    started = time.monotonic()
    status = 200
    while status == 200 and time.monotonic() - started < 15:
        status = use(node.url, token, "203.0.113.50", "curl/8.5.0")  # the thief, elsewhere, with curl
        time.sleep(0.05)
    assert status == 401, "the stolen token was never revoked"
    assert use(node.url, token, "198.51.100.7", CHROME) == 401  # revoked for everyone

    admin = {"Authorization": f"Bearer {ADMIN}"}
    alerts = httpx.get(f"{node.url}/v1/alerts", headers=admin).json()
    alerts = alerts.get("alerts", alerts) if isinstance(alerts, dict) else alerts
    token_alerts = [a for a in alerts if a.get("jti") == jti and a["entity_type"] == "jti"]
    assert token_alerts and token_alerts[0]["action"] == "revoked"
    assert any(r.get("rule") == "token_changed_client_and_network" for r in token_alerts[0]["reasons"])

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and {json.loads(b)["type"] for b, _ in node.receiver.hits} < {
        "token.anomaly",
        "token.revoked",
    }:
        time.sleep(0.1)
    verifier = Webhook(node.secret)
    types = set()
    for body, headers in node.receiver.hits:
        payload = verifier.verify(body, headers)  # raises if the signature does not check out
        types.add(payload["type"])
        if payload["type"] == "token.revoked":
            assert payload["data"]["kind"] == "jti" and payload["data"]["value"] == jti
    assert {"token.anomaly", "token.revoked"} <= types


def test_one_port_serves_everything(node: Node) -> None:
    assert httpx.get(f"{node.url}/healthz").status_code == 200
    assert httpx.get(f"{node.url}/.well-known/jwks.json").status_code == 200
    assert httpx.get(f"{node.url}/v1/alerts").status_code == 401  # admin only
    assert httpx.get(f"{node.url}/metrics").status_code == 404  # metrics have a listener of their own
    with serve_app(node.node.metrics_app) as metrics_url:
        metrics = httpx.get(f"{metrics_url}/metrics")
    assert "jwtwatch_validations_total" in metrics.text and "jwtwatch_webhook_deliveries_total" in metrics.text
    assert metrics.headers["x-content-type-options"] == "nosniff"


def test_the_archive_keeps_events_scores_and_alerts_of_a_live_stream(node: Node) -> None:
    from pipeline.archive import read_archive, read_features

    token = node.keys.issue_token("bob", AUDIENCE, ttl=600, client_id="web")
    for _ in range(3):
        assert use(node.url, token, "198.51.100.8", CHROME) == 200
    deadline = time.monotonic() + 15
    while use(node.url, token, "203.0.113.51", "curl/8.5.0") == 200:  # stolen: alerted and revoked
        assert time.monotonic() < deadline, "the stolen token was never revoked"
        time.sleep(0.05)
    node.node.stop()  # flushes what the archive consumer holds
    data_dir = node.node.options.data_dir
    events = read_archive(data_dir, "events")
    assert {"198.51.100.8", "203.0.113.51"} <= set(events["ip"])
    features = read_features(data_dir, "jti")
    assert not features.empty and "distinct_networks" in features.columns
    scores = read_archive(data_dir, "scores")
    assert {"jti", "sub", "ip"} <= set(scores["entity_type"]), scores.columns
    assert not read_archive(data_dir, "alerts").empty
