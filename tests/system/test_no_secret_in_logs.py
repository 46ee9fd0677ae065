"""No secret in any log: a full run at DEBUG logs no admin token, webhook secret or bearer token.

(bandit and pip-audit, which ran next to this test in test_security_checks.py, are ``make audit``: scripts/audit.)
"""

from __future__ import annotations

import base64
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest
import uvicorn

from pipeline.bus import ALERTS
from pipeline.events import Alert, format_ts
from pipeline.nodes import AllInOne, ServeOptions
from pipeline.validation import ValidatorConfig
from tests.support.alerts import Receiver
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer, raw_token, standard_claims
from tests.support.paths import REPO
from tests.support.servers import serve_app

ROOT = REPO


# ---------------------------------------------------------------------------------- no secret in the logs

ADMIN = "admin-" + uuid.uuid4().hex + "-secret"


@pytest.fixture
def debug_log(tmp_path: Path) -> Iterator[Path]:
    """Every logger at DEBUG, into a file under the data dir (as a deployment would keep it)."""
    path = tmp_path / "data" / "logs" / "jwtwatch-debug.log"
    path.parent.mkdir(parents=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    stream = logging.StreamHandler(sys.stderr)  # and to stderr, which capfd reads
    stream.setLevel(logging.DEBUG)
    root.addHandler(stream)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.removeHandler(stream)
        root.setLevel(old_level)
        handler.close()


@contextmanager
def serve_verbose(app: object) -> Iterator[str]:
    """uvicorn with its own logs at debug and access logs on (the in-tree helpers keep them quiet)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, host="127.0.0.1", log_level="debug", access_log=True, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def test_a_full_run_logs_no_admin_token_webhook_secret_or_bearer_token(
    tmp_path: Path, debug_log: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data_dir = debug_log.parent.parent
    keys = Issuer.create()
    config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=keys.jwks())
    node = AllInOne(
        ServeOptions(config=config, data_dir=data_dir, model_dir=ROOT / "models" / "default", admin_token=ADMIN)
    )
    receiver = Receiver()
    tokens = [keys.token(alg, ttl=3600) for alg in ("RS256", "ES256", "EdDSA")]
    forged = raw_token({"alg": "RS256", "typ": "at+jwt", "kid": "rs256-1"}, standard_claims(), b"x" * 256)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    node.start()
    try:
        with (
            serve_app(receiver.app()) as receiver_url,
            serve_verbose(node.app) as base,
            httpx.Client(base_url=base, timeout=30) as client,
        ):
            receiver.base = receiver_url
            answer = client.post(
                "/v1/webhooks",
                json={"url": receiver.url("secrets"), "event_types": ["token.anomaly", "token.revoked"]},
                headers=admin,
            )
            assert answer.status_code == 201, answer.text
            secret = answer.json()["secret"]
            assert secret.startswith("whsec_")

            for token in tokens:
                assert client.get("/v1/validate", headers={"Authorization": f"Bearer {token}"}).status_code == 200
                introspected = client.post("/v1/introspect", data={"token": token}, headers=admin)
                assert introspected.json()["active"] is True
            for bad in (forged, tokens[0][:-4] + "AAAA", ADMIN, secret):
                assert client.get("/v1/validate", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
            assert client.get("/v1/webhooks", headers={"Authorization": f"Bearer {secret}"}).status_code == 401

            # An alert, delivered as a signed webhook.
            now = format_ts(time.time())
            alert = Alert(
                alert_id="secrets-alert-1",
                ts=now,
                entity_type="ip",
                entity="198.51.100.7",
                window_start=now,
                window_end=now,
                score=0.99,
                severity="critical",
                model_version="test",
                ip="198.51.100.7",
            )
            node.bus.publish(ALERTS, alert.alert_id, alert.to_json())
            # A revocation of the first token: enforced, and announced as a webhook too.
            jti = jwt_claims(tokens[0])["jti"]
            revoked = client.post(
                "/v1/revocations", json={"kind": "jti", "value": jti, "reason": "test"}, headers=admin
            )
            assert revoked.status_code == 201, revoked.text
            assert client.get("/v1/validate", headers={"Authorization": f"Bearer {tokens[0]}"}).status_code == 401

            wait_for(lambda: {r.json["type"] for r in receiver.at("secrets")} >= {"token.anomaly", "token.revoked"},
                     "the alert and the revocation delivered")  # fmt: skip
            assert client.get("/v1/deliveries", headers=admin).status_code == 200
    finally:
        node.stop()

    out, err = capfd.readouterr()
    logged = debug_log.read_text(encoding="utf-8")
    assert "GET /v1/validate" in out + err + logged, "the access log was not captured: the check would prove nothing"
    assert "jwtwatch" in logged or "pipeline" in logged

    key_part = secret.removeprefix("whsec_")
    secrets = {"admin token": ADMIN, "webhook secret": secret, "webhook key (base64)": key_part}
    secrets["webhook key (raw, base64url)"] = base64.urlsafe_b64encode(base64.b64decode(key_part)).decode().rstrip("=")
    for i, token in enumerate([*tokens, forged]):
        secrets[f"bearer token {i}"] = token
        secrets[f"bearer token {i} signature"] = token.rsplit(".", 1)[1]
    texts = {"stdout": out, "stderr": err}
    for path in sorted(data_dir.rglob("*")):
        # The alerts database must keep the webhook secret (it signs with it): it is a store, not a log.
        if path.is_file() and ".sqlite" not in path.name:
            texts[str(path.relative_to(data_dir))] = path.read_bytes().decode("utf-8", "replace")
    assert any(name.startswith("logs/") for name in texts) and len(texts) > 3
    leaks = [f"{what} in {where}" for where, text in texts.items() for what, value in secrets.items() if value in text]
    assert not leaks, leaks


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
