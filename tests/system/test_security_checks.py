"""Security checks run by `make test`: known vulnerabilities (pip-audit), bandit on pipeline/, and no secret in any log.

pip-audit needs a vulnerability service (PyPI's JSON API or OSV). Where it cannot be reached, or it cannot
look up the project's own dependencies, the audit proves nothing: the test skips saying so — or fails when
JWTWATCH_REQUIRE_AUDIT=1.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest
import uvicorn

from pipeline.allinone import AllInOne, ServeOptions
from pipeline.bus import ALERTS
from pipeline.events import Alert, format_ts
from pipeline.validation import ValidatorConfig
from tests.support.alerts import Receiver
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer, raw_token, standard_claims
from tests.support.paths import DEFAULT_MODEL, REPO
from tests.support.require import skip_or_fail
from tests.support.servers import serve_app

# -------------------------------------------------------------------------------------------- pip-audit


def _project_dependencies() -> set[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in meta["dependencies"]:
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)  # type: ignore[union-attr]
        names.add(re.sub(r"[-_.]+", "-", name).lower())
    return names


def _audit_unavailable(reason: str) -> None:
    skip_or_fail("AUDIT", f"pip-audit could not audit the dependencies: {reason}")


def test_no_known_vulnerabilities_in_the_installed_dependencies() -> None:
    command = [sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off", "--skip-editable"]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
    except subprocess.TimeoutExpired:
        _audit_unavailable("no answer from the vulnerability service within 300 s")
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        _audit_unavailable(f"exit {run.returncode}: {last[:300]}")
    dependencies = {re.sub(r"[-_.]+", "-", d["name"]).lower(): d for d in report["dependencies"]}
    vulnerable = {
        f"{d['name']} {d['version']}": [v["id"] for v in d["vulns"]] for d in report["dependencies"] if d.get("vulns")
    }
    assert not vulnerable, f"known vulnerabilities in installed packages: {vulnerable}"
    # "No known vulnerabilities" means something only if the project's dependencies were looked up at all.
    wanted = _project_dependencies()
    unaudited = sorted(name for name in wanted if name not in dependencies or dependencies[name].get("skip_reason"))
    if unaudited:
        reasons = {dependencies[n].get("skip_reason", "not installed") for n in unaudited if n in dependencies}
        _audit_unavailable(
            f"{len(unaudited)} of {len(wanted)} project dependencies not audited ({', '.join(unaudited[:5])}...): "
            + "; ".join(sorted(reasons)[:2])
        )


# ----------------------------------------------------------------------------------------------- bandit


def test_bandit_finds_nothing_of_medium_or_high_severity_in_pipeline() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bandit", "-r", "pipeline", "--format", "json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    report = json.loads(run.stdout)
    assert report["metrics"]["_totals"]["loc"] > 1000, "bandit scanned nothing"
    assert not report["errors"], report["errors"]
    findings = [
        f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_severity']}: {r['issue_text']}"
        for r in report["results"]
        if r["issue_severity"] in ("MEDIUM", "HIGH")
    ]
    assert not findings, "bandit (fix it, or mark a false positive `# nosec <ID>` with a reason):\n" + "\n".join(
        findings
    )


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
    node = AllInOne(ServeOptions(config=config, data_dir=data_dir, model_dir=DEFAULT_MODEL, admin_token=ADMIN))
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
