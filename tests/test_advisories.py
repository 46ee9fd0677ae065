"""One regression test per finding of the outside security review of commit 1c06c30 (issue 14).

In the manner of PyJWT's ``test_advisory.py``: each test is named after its finding, reproduces the attack as
the reviewer ran it (real signed JWTs, real servers on loopback, real files) and fails on 1c06c30. The deeper
tests of each mechanism live beside the code's other tests; ``docs/security.md`` lists both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------------------------
# HIGH 1: a forged token with invalid Unicode in a claim erased other requests' usage events
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 2: POST /v1/revocations parsed any body before checking the admin token
# ---------------------------------------------------------------------------------------------------------------


def test_medium_2_admin_routes_authenticate_before_reading_the_body(tmp_path: Path) -> None:
    """The reviewer's bodies, without credentials, to the validator's and the alerts service's admin routes: a body
    declared as 32 MiB is answered 401 at once (not read first), ``{"kind":"\\ud800"}`` is a 401 (was a 500), a
    malformed body or query is a 401 (was a 422 with schema details). With the admin token a body is capped (413)
    and a 422 never echoes what was sent (FastAPI's default 422 carried the whole input)."""
    import socket

    import httpx

    from pipeline.alerts import AlertsService, create_alerts_app
    from pipeline.bus.memory import MemoryBus
    from pipeline.validation import ValidatorConfig
    from pipeline.validation.app import create_validator_app
    from pipeline.validation.service import ValidatorService
    from tests.jwtkit import AUDIENCE, ISSUER, Issuer
    from tests.servers import serve_app

    token = "medium-2-admin-token-0123456789"
    admin = {"Authorization": f"Bearer {token}"}
    config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=Issuer.create().jwks())
    validator = ValidatorService(config, data_dir=tmp_path / "v", bus=MemoryBus(), admin_token=token)
    alerts = AlertsService(tmp_path / "a", admin_token=token)
    echo = "ECHO-" + "x" * 5000
    with serve_app(create_validator_app(validator)) as v_url, serve_app(create_alerts_app(alerts)) as a_url:
        for base, path in ((v_url, "/v1/revocations"), (a_url, "/v1/webhooks")):
            host, port = base.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as raw:
                raw.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {32 * 1024 * 1024}\r\n\r\n".encode()
                    + b"{" * 1024
                )
                # answered before the other 32 MiB are sent: the body is not awaited, let alone parsed
                assert raw.recv(64).startswith(b"HTTP/1.1 401"), path
            for body in (b'{"kind":"\\ud800"}', b'{"kind": 5, "' + echo.encode() + b'": 1}', b"{" * 100_000):
                refused = httpx.post(base + path, content=body, headers={"Content-Type": "application/json"})
                assert refused.status_code == 401 and len(refused.content) < 200, (path, refused.text[:200])
        whole = httpx.post(v_url + "/v1/revocations", content=b" " * (32 * 1024 * 1024), timeout=60)
        assert whole.status_code == 401 and len(whole.content) < 200
        for base, query in ((v_url, "/v1/revocations?since=" + echo), (a_url, "/v1/alerts?limit=" + echo)):
            assert httpx.get(base + query).status_code == 401
            invalid = httpx.get(base + query, headers=admin)
            assert invalid.status_code == 422 and "ECHO" not in invalid.text
        big = httpx.post(v_url + "/v1/revocations", content=b" " * (32 * 1024 * 1024), headers=admin, timeout=60)
        assert big.status_code == 413 and len(big.content) < 200
        surrogate = httpx.post(v_url + "/v1/revocations", content=b'{"kind":"\\ud800"}', headers=admin)
        assert surrogate.status_code == 400
        for body in ({"kind": "jti", "value": echo}, {"kind": "jti", "value": "x", echo: 1}, {"kind": echo}):
            answer = httpx.post(v_url + "/v1/revocations", json=body, headers=admin)
            assert answer.status_code == 422 and "ECHO" not in answer.text, answer.text[:200]
            answer = httpx.post(a_url + "/v1/webhooks", json={"url": "http://127.0.0.1:9/", **body}, headers=admin)
            assert answer.status_code == 422 and "ECHO" not in answer.text, answer.text[:200]
    assert validator.revocations.version == 0 and alerts.list_subscriptions() == []
    validator.close()
    alerts.close()


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 3: a slow JWKS URL stalled every validation
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 4: a signed JWKS could be rolled back to an older, still-unexpired set
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 5: the key-store audit gate passed with an attacker's key inserted
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 6: one slow webhook receiver delayed alerts to everyone
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 7: X-Auth-* values were silently altered, so identities collided
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 8: a poison record wedged the alerts consumer for good
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 9: unauthenticated /metrics told an attacker why their token failed
# ---------------------------------------------------------------------------------------------------------------


def test_low_9_the_service_port_never_tells_why_a_token_failed(tmp_path: Path) -> None:
    """Forged tokens (bad signature, unknown kid, wrong audience, revoked) to `validator serve`'s and `serve`'s apps:
    their port has no /metrics (404), the alerts service's neither; the per-reason counters are on the metrics
    listener's app only (``--metrics-port``, loopback by default)."""
    import httpx

    from pipeline.alerts import AlertsService, create_alerts_app
    from pipeline.allinone import AllInOne, ServeOptions
    from pipeline.bus.memory import MemoryBus
    from pipeline.validation import ValidatorConfig
    from pipeline.validation.app import create_validator_app
    from pipeline.validation.service import ValidatorService
    from tests.jwtkit import AUDIENCE, ISSUER, Issuer
    from tests.servers import serve_app

    issuer = Issuer.create()
    config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
    validator = ValidatorService(config, data_dir=tmp_path / "v", bus=MemoryBus(), admin_token=None)
    forged = [
        Issuer.create().token("ES256"),  # the same kid, another key: bad_signature
        Issuer.create().token("ES256", headers={"kid": "nobody-knows-it"}),  # unknown_kid
        issuer.token("ES256", aud="https://elsewhere.test"),  # audience
        issuer.token("ES256", jti="low-9-revoked"),  # revoked
    ]
    all_in_one = AllInOne(
        ServeOptions(
            config=config,
            data_dir=tmp_path / "serve",
            model_dir=Path(__file__).resolve().parent.parent / "models" / "default",
        )
    )
    all_in_one.start()
    alerts = AlertsService(tmp_path / "a", admin_token=None)
    services = [(create_validator_app(validator), validator), (all_in_one.app, all_in_one.validator)]
    try:
        for app, service in services:
            service.revocations.revoke(kind="jti", iss=ISSUER, value="low-9-revoked", reason="test")
            with serve_app(app) as url:
                for token in forged:
                    response = httpx.get(f"{url}/v1/validate", headers={"Authorization": f"Bearer {token}"})
                    assert response.status_code == 401 and response.json() == {"error": "invalid_token"}
                public = httpx.get(f"{url}/metrics")
                assert public.status_code == 404 and "reason" not in public.text
        with serve_app(create_alerts_app(alerts)) as url:
            assert httpx.get(f"{url}/metrics").status_code == 404
        # the operators still have every reason, on the metrics listener's app
        from pipeline.web import metrics_app

        for _, service in services:
            with serve_app(metrics_app(service.registry)) as metrics_url:
                private = httpx.get(f"{metrics_url}/metrics").text
            for reason in ("bad_signature", "unknown_kid", "audience", "revoked"):
                assert f'outcome="rejected",reason="{reason}"}} 1.0' in private, reason
    finally:
        all_in_one.stop()
        validator.close()
        alerts.close()


# ---------------------------------------------------------------------------------------------------------------
# LOW 10: --fail-closed was not enforced by the middleware and /v1/introspect
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 11: a subject revocation ignored the clock leeway
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 12: rotating the feed key lost live revocations for validators that started later
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 13: hardening (file modes, admin-token file mode, WAL secrets, PKCS#11 module path, header timeout,
# duplicate Authorization headers)
# ---------------------------------------------------------------------------------------------------------------


def test_low_13_a_world_readable_admin_token_file_is_refused(tmp_path: Path) -> None:
    """An admin-token file that other users can read is refused, as passphrase and PIN files are: by the services
    (``validator serve`` here; ``serve`` and ``alerts serve`` read it the same way) and by ``jwtwatch revoke``."""
    import os
    import subprocess
    import sys

    from pipeline.web import read_admin_token

    token = tmp_path / "admin-token"
    token.write_text("low-13-admin-token-0123456789\n")
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    env = {**os.environ, "JWTWATCH_ISSUER": "https://issuer.test", "JWTWATCH_AUDIENCE": "https://api.test"}
    cli = [sys.executable, "-m", "pipeline.cli"]
    for mode in (0o644, 0o640, 0o604):
        token.chmod(mode)
        with pytest.raises(ValueError, match="chmod 600"):
            read_admin_token(token)
    token.chmod(0o644)
    commands = [
        ["validator", "serve", "--jwks-file", str(jwks), "--port", "0", "--data-dir", str(tmp_path / "data")],
        ["revoke", "--url", "http://127.0.0.1:9", "--sub", "alice"],
    ]
    for command in commands:
        result = subprocess.run(
            [*cli, *command, "--admin-token-file", str(token)], capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode == 2 and "chmod 600" in result.stderr, (command, result.stderr[-500:])
    token.chmod(0o600)
    assert read_admin_token(token) == "low-13-admin-token-0123456789"


def test_low_13_b_half_sent_requests_are_cut_off(tmp_path: Path) -> None:
    """50 connections that send part of a request line and headers, then a byte a second, are closed by the server
    within its header deadline (10 s; they were held 25 s and more), while normal requests are answered meanwhile."""
    import select
    import socket
    import time

    import httpx

    from pipeline.bus.memory import MemoryBus
    from pipeline.validation import ValidatorConfig
    from pipeline.validation.app import create_validator_app
    from pipeline.validation.service import ValidatorService
    from tests.jwtkit import AUDIENCE, ISSUER, Issuer
    from tests.servers import serve_app

    issuer = Issuer.create()
    config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
    service = ValidatorService(config, data_dir=tmp_path, bus=MemoryBus())

    def closed_by_server(sock: socket.socket) -> bool:
        if not select.select([sock], [], [], 0)[0]:
            return False
        try:
            return sock.recv(1024) == b""
        except OSError:
            return True

    with serve_app(create_validator_app(service)) as url:
        host, port = url.removeprefix("http://").split(":")
        started = time.monotonic()
        slow = [socket.create_connection((host, int(port)), timeout=5) for _ in range(50)]
        for n, sock in enumerate(slow):
            sock.sendall(b"GET /v1/validate HTTP/1.1\r\nHost: x\r\nX-Slow: " if n % 2 else b"GET /v1/val")
        still_open = set(slow)
        while still_open and time.monotonic() - started < 20:
            ok = httpx.get(f"{url}/v1/validate", headers={"Authorization": f"Bearer {issuer.token()}"}, timeout=5)
            assert ok.status_code == 200  # the server keeps serving while the slow ones hang on
            for sock in list(still_open):
                if closed_by_server(sock):
                    still_open.discard(sock)
                    continue
                try:
                    sock.sendall(b"a")
                except OSError:
                    still_open.discard(sock)
            time.sleep(1)
        elapsed = time.monotonic() - started
        for sock in slow:
            sock.close()
    service.close()
    assert not still_open, f"{len(still_open)} of 50 half-sent requests still open after {elapsed:.0f} s"


# ---------------------------------------------------------------------------------------------------------------
# Also: SSRF classifier (IPv4-compatible IPv6, 64:ff9b:1::/48)
# ---------------------------------------------------------------------------------------------------------------
