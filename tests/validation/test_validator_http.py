"""The validator's HTTP surface: security headers everywhere, introspection, health, metrics. (The HTTP server
under every jwtwatch service — header deadline and size cap, body deadline, the metrics listener — is
tests/serving/test_server.py's.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.serving.web import metrics_app
from pipeline.validation import ValidatorConfig
from pipeline.validation.app import create_validator_app
from pipeline.validation.service import ValidatorService
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer
from tests.support.servers import serve_app
from tests.support.validators import ADMIN, validator_service


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer.create()


@pytest.fixture(scope="module")
def service(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValidatorService]:
    with validator_service(issuer, tmp_path_factory.mktemp("data")) as service:
        yield service


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
    from pipeline.keys.key_set import KeySet
    from pipeline.validation.key_sources import StaticKeySource

    service = ValidatorService(
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=Issuer.create().jwks()), data_dir=tmp_path
    )
    service.validator.keys = StaticKeySource(KeySet())
    with serve_app(create_validator_app(service)) as base:
        assert httpx.get(base + "/readyz").status_code == 503
    service.close()
