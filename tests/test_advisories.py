"""One regression test per finding of the outside security review of commit 1c06c30 (issue 14).

In the manner of PyJWT's ``test_advisory.py``: each test is named after its finding, reproduces the attack as
the reviewer ran it (real signed JWTs, real servers on loopback, real files) and fails on 1c06c30. The deeper
tests of each mechanism live beside the code's other tests; ``docs/security.md`` lists both.
"""

from __future__ import annotations

from pathlib import Path

# ---------------------------------------------------------------------------------------------------------------
# HIGH 1: a forged token with invalid Unicode in a claim erased other requests' usage events
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 2: POST /v1/revocations parsed any body before checking the admin token
# ---------------------------------------------------------------------------------------------------------------


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
