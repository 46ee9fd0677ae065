"""The validator's HTTP surface: security headers everywhere, introspection, health, metrics; and the HTTP server
under every jwtwatch service (header deadline and size cap, body deadline, the metrics listener)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.bus.memory import MemoryBus
from pipeline.validation import ValidatorConfig
from pipeline.validation.app import create_validator_app
from pipeline.validation.service import ValidatorService
from pipeline.web import metrics_app
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer
from tests.support.servers import serve_app

ADMIN = "admin-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer.create()


@pytest.fixture(scope="module")
def service(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValidatorService]:
    service = ValidatorService(
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
        data_dir=tmp_path_factory.mktemp("data"),
        bus=MemoryBus(),
        admin_token=ADMIN,
    )
    yield service
    service.close()


@pytest.fixture(scope="module")
def url(service: ValidatorService) -> Iterator[str]:
    with serve_app(create_validator_app(service)) as base:
        yield base


@pytest.fixture(scope="module")
def metrics_url(service: ValidatorService) -> Iterator[str]:
    """The metrics listener's app (what --metrics-port serves)."""
    with serve_app(metrics_app(service.registry)) as base:
        yield base


REQUESTS = [
    ("GET", "/v1/validate", {}),
    ("GET", "/v1/validate", {"Authorization": "Bearer x.y.z"}),
    ("POST", "/v1/introspect", {}),
    ("GET", "/.well-known/jwks.json", {}),
    ("POST", "/v1/revocations", {"Authorization": f"Bearer {ADMIN}"}),  # 422: no body
    ("GET", "/v1/revocations", {}),
    ("GET", "/healthz", {}),
    ("GET", "/readyz", {}),
    ("GET", "/metrics", {}),  # 404: metrics have their own listener
    ("GET", "/no/such/page", {}),
    ("DELETE", "/v1/validate", {}),  # 405
]


@pytest.mark.parametrize(("method", "path", "headers"), REQUESTS, ids=[f"{m} {p}" for m, p, _ in REQUESTS])
def test_every_answer_carries_the_security_headers(url: str, method: str, path: str, headers: dict) -> None:
    response = httpx.request(method, url + path, headers=headers)
    assert response.status_code < 500
    max_age = int(response.headers["strict-transport-security"].split("max-age=")[1].split(";")[0])
    assert max_age >= 365 * 24 * 3600
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert "server" not in response.headers


@pytest.mark.parametrize("path", ["/v1/validate", "/v1/introspect"])
def test_validation_answers_are_never_cached(url: str, path: str, issuer: Issuer) -> None:
    response = httpx.request("GET" if path.endswith("validate") else "POST", url + path)
    assert response.headers["cache-control"] == "no-store"
    good = httpx.get(url + "/v1/validate", headers={"Authorization": f"Bearer {issuer.token()}"})
    assert good.status_code == 200 and good.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    "claims",
    [{"username": "\ud800"}, {"aud": [AUDIENCE, "\udfff"]}, {"profile": {"name": ["x", "\ud83d"]}}],
    ids=["username", "aud-element", "nested"],
)
def test_a_signed_token_with_text_no_utf8_can_carry_is_inactive_never_a_500(
    url: str, issuer: Issuer, claims: dict[str, object]
) -> None:
    """Introspection hands claims on (``username``, ``aud``) that the header rules do not cover: a lone surrogate
    in one, signed by the issuer, made its answer a 500. Such a token is malformed on every surface."""
    token = issuer.token("ES256", **claims)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    answer = httpx.post(url + "/v1/introspect", data={"token": token}, headers=auth)
    assert answer.status_code == 200 and answer.json() == {"active": False}
    assert httpx.get(url + "/v1/validate", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_introspection_follows_rfc7662(url: str, issuer: Issuer) -> None:
    token = issuer.token("ES256", sub="carol", scope="orders:read")
    auth = {"Authorization": f"Bearer {ADMIN}"}
    active = httpx.post(url + "/v1/introspect", data={"token": token}, headers=auth).json()
    assert active["active"] is True
    assert (active["sub"], active["scope"], active["token_type"]) == ("carol", "orders:read", "access_token")
    forged = Issuer.create().token("ES256")
    assert httpx.post(url + "/v1/introspect", data={"token": forged}, headers=auth).json() == {"active": False}
    # The caller must be authorised (RFC 7662 §2.1), or anyone could probe tokens.
    assert httpx.post(url + "/v1/introspect", data={"token": token}).status_code == 401
    wrong = {"Authorization": "Bearer admin-token-for-tests-0123456780"}
    assert httpx.post(url + "/v1/introspect", data={"token": token}, headers=wrong).status_code == 401


def test_introspection_refuses_oversized_and_malformed_bodies(url: str) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/x-www-form-urlencoded"}
    assert httpx.post(url + "/v1/introspect", content=b"token=" + b"a" * 70_000, headers=auth).status_code == 413
    assert httpx.post(url + "/v1/introspect", content=b"\xff\xfe", headers=auth).status_code == 400
    assert httpx.post(url + "/v1/introspect", content=b"token=a&token=b", headers=auth).status_code == 400


def test_health_and_readiness(url: str) -> None:
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(url + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_metrics_count_outcomes_by_reason(url: str, metrics_url: str, issuer: Issuer) -> None:
    httpx.get(url + "/v1/validate", headers={"Authorization": f"Bearer {issuer.token(exp=1)}"})
    body = httpx.get(metrics_url + "/metrics").text
    assert 'jwtwatch_validations_total{outcome="rejected",reason="expired"}' in body
    assert "jwtwatch_revocation_version" in body


def test_claims_cannot_inject_headers_into_the_upstream_request(url: str, issuer: Issuer) -> None:
    # Refused outright (malformed): neither injected nor silently rewritten (see test_advisories, MEDIUM 7).
    token = issuer.token(sub="eve\r\nX-Admin: true", scope="a\nb")
    response = httpx.get(url + "/v1/validate", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "x-admin" not in response.headers and "x-auth-subject" not in response.headers


def test_readiness_fails_without_usable_keys(tmp_path: Path) -> None:
    from pipeline.validation.jwks import KeySet
    from pipeline.validation.key_sources import StaticKeySource

    service = ValidatorService(
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=Issuer.create().jwks()), data_dir=tmp_path
    )
    service.validator.keys = StaticKeySource(KeySet())
    with serve_app(create_validator_app(service)) as base:
        assert httpx.get(base + "/readyz").status_code == 503
    service.close()


# ----------------------------------------------------------------------- slow peers, big headers, metrics listener
# pipeline.validation.server: what every jwtwatch service's HTTP server does before the app sees a request.


def _address(base: str) -> tuple[str, int]:
    host, port = base.rsplit("://", 1)[1].split(":")
    return host, int(port)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (whatever it says first)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass  # reset: closed as well
    return True


@pytest.fixture(scope="module")
def quick(service: ValidatorService) -> Iterator[str]:
    """The validator with a 1 s header deadline."""
    with serve_app(create_validator_app(service), header_timeout_s=1.0) as base:
        yield base


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /v1/val", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1"],
    ids=["nothing", "part of the request line", "no blank line", "part of a header"],
)
def test_a_request_whose_headers_do_not_arrive_in_time_is_cut_off(quick: str, sent: bytes) -> None:
    with socket.create_connection(_address(quick)) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        assert _closed_within(sock, 10)
        assert time.monotonic() - started < 5  # the 1 s deadline, with room for a loaded machine


def test_the_deadline_holds_for_every_request_of_a_kept_alive_connection(quick: str) -> None:
    with socket.create_connection(_address(quick)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        # Blank lines between requests are skipped by the parser without starting a request: trickled, they would
        # cancel uvicorn's keep-alive timer for ever. The deadline runs from the previous answer.
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while time.monotonic() - started < 10:
                sock.sendall(b"\r\n")
                time.sleep(0.2)
        assert time.monotonic() - started < 5


def test_a_slow_but_honest_client_is_answered(quick: str) -> None:
    with socket.create_connection(_address(quick), timeout=10) as sock:
        for part in (b"GET /healthz HTT", b"P/1.1\r\nHost: x\r\n", b"X-A: 1\r\n\r\n"):
            sock.sendall(part)
            time.sleep(0.2)
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        time.sleep(0.6)  # the next request starts late, but within its own deadline
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")


def test_the_h11_protocol_cuts_off_unfinished_headers_too(service: ValidatorService) -> None:
    from pipeline.validation.server import GuardedH11Protocol

    protocol = type("QuickH11", (GuardedH11Protocol,), {"header_timeout_s": 1.0})
    with serve_app(create_validator_app(service), http=protocol) as base:
        assert httpx.get(base + "/healthz").status_code == 200
        with socket.create_connection(_address(base)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1")
            started = time.monotonic()
            assert _closed_within(sock, 10) and time.monotonic() - started < 5


def test_a_header_block_over_the_cap_gets_431_and_the_connection_closes(url: str) -> None:
    from pipeline.validation.server import MAX_HEADER_BYTES

    with socket.create_connection(_address(url), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with contextlib.suppress(OSError):  # the server may close while we still send
            for _ in range(2 * MAX_HEADER_BYTES // 4096):
                sock.sendall(b"a" * 4096)
        assert sock.recv(64).startswith(b"HTTP/1.1 431")
        assert _closed_within(sock, 10)
    # below the cap, headers are the app's business (an 8 KiB+ token gets the app's own 431 and a usage event)
    assert httpx.get(url + "/healthz", headers={"X-Big": "a" * (MAX_HEADER_BYTES // 2)}).status_code == 200


def test_an_admin_body_that_does_not_arrive_in_time_gets_408(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.web

    monkeypatch.setattr(pipeline.web, "BODY_TIMEOUT_S", 1.0)
    with socket.create_connection(_address(url), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/introspect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN.encode() + b"\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntoken=abc"
        )
        started = time.monotonic()
        assert sock.recv(64).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 5
        assert _closed_within(sock, 10)


def test_the_metrics_listener_serves_metrics_and_nothing_else(service: ValidatorService, issuer: Issuer) -> None:
    from pipeline.validation.server import Server, uvicorn_config
    from pipeline.validation.workers import listening_socket

    public, private = listening_socket("127.0.0.1", 0), listening_socket("127.0.0.1", 0)
    url = f"http://127.0.0.1:{public.getsockname()[1]}"
    metrics_url = f"http://127.0.0.1:{private.getsockname()[1]}"
    app = create_validator_app(service)
    config = uvicorn_config(app, "127.0.0.1", 0, header_timeout_s=1.0, lifespan="off", timeout_graceful_shutdown=3)
    server = Server(config, metrics=(private, metrics_app(service.registry)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [public]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        forged = Issuer.create().token("ES256", headers={"kid": "unknown-to-it"})
        assert httpx.get(url + "/v1/validate", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
        assert httpx.get(url + "/metrics").status_code == 404
        scraped = httpx.get(metrics_url + "/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        assert 'reason="unknown_kid"' in scraped.text
        assert scraped.headers["x-content-type-options"] == "nosniff"
        assert httpx.get(metrics_url + "/v1/validate").status_code == 404
        assert httpx.get(metrics_url + "/healthz").status_code == 404
        assert httpx.post(metrics_url + "/metrics").status_code == 405
        with socket.create_connection(("127.0.0.1", private.getsockname()[1])) as slow:  # the same guard
            slow.sendall(b"GET /metr")
            started = time.monotonic()
            assert _closed_within(slow, 10) and time.monotonic() - started < 5
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    assert not thread.is_alive()
    with pytest.raises(httpx.HTTPError):  # stopped with the server
        httpx.get(metrics_url + "/metrics", timeout=2)
