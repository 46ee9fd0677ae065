"""The ASGI middleware in a real FastAPI service on loopback: same rules and events as forward-auth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

from pipeline.bus import TOKEN_USAGE
from pipeline.bus.memory import MemoryBus
from pipeline.events import TokenUsage
from pipeline.validation import ValidatorConfig
from pipeline.validation.middleware import TokenValidationMiddleware
from pipeline.validation.service import ValidatorService
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer
from tests.support.servers import serve_app


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer.create()


@pytest.fixture
def api(issuer: Issuer, tmp_path: Path) -> Iterator[tuple[str, ValidatorService, MemoryBus]]:
    bus = MemoryBus()
    service = ValidatorService(
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()), data_dir=tmp_path, bus=bus
    )
    app = FastAPI()

    @app.get("/orders")
    def orders(request: Request) -> dict[str, str]:
        return {"owner": request.state.token_claims["sub"]}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(TokenValidationMiddleware, service=service, exempt_paths={"/healthz"}, service_name="orders")
    with serve_app(app) as url:
        yield url, service, bus
    service.close()


def _events(bus: MemoryBus) -> list[TokenUsage]:
    consumer = bus.consumer([TOKEN_USAGE], "t")
    try:
        return [TokenUsage.from_json(m.value) for m in consumer.poll(1000, timeout_s=0.5)]
    finally:
        consumer.close()


def test_valid_token_reaches_the_handler_with_its_claims(api, issuer: Issuer) -> None:
    url, _, bus = api
    response = httpx.get(f"{url}/orders", headers={"Authorization": f"Bearer {issuer.token('EdDSA')}"})
    assert response.status_code == 200
    assert response.json() == {"owner": "user-1"}
    (event,) = _events(bus)
    assert (event.outcome, event.service, event.method, event.path) == ("accepted", "orders", "GET", "/orders")


def test_bad_tokens_never_reach_the_handler(api, issuer: Issuer) -> None:
    url, _, bus = api
    forged = Issuer.create().token("RS256")
    assert httpx.get(f"{url}/orders", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    assert httpx.get(f"{url}/orders").status_code == 401
    huge = "x" * 20_000
    assert httpx.get(f"{url}/orders", headers={"Authorization": f"Bearer {huge}"}).status_code == 431
    assert [e.reason for e in _events(bus)] == ["bad_signature", "too_large"]


def test_revocation_applies_to_the_middleware(api, issuer: Issuer) -> None:
    url, service, _ = api
    token = issuer.token("ES256", sub="mallory")
    assert httpx.get(f"{url}/orders", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    service.revocations.revoke(kind="sub", iss=ISSUER, value="mallory", reason="test")
    assert httpx.get(f"{url}/orders", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_exempt_paths_need_no_token(api) -> None:
    url, _, bus = api
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert _events(bus) == []


def test_repeated_authorization_is_refused_and_recorded(api, issuer: Issuer) -> None:
    url, _, bus = api
    good = f"Bearer {issuer.token('EdDSA')}"
    response = httpx.get(f"{url}/orders", headers=[("Authorization", good), ("Authorization", good)])
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_request"'
    assert response.headers["cache-control"] == "no-store"
    [event] = _events(bus)
    assert (event.outcome, event.reason, event.jti) == ("rejected", "malformed", None)  # the token was not read


def test_identities_the_api_would_not_see_unchanged_are_refused(api, issuer: Issuer) -> None:
    url, _, bus = api
    for sub in ("admin\u200b", "admin\n", "ad\tmin", ""):
        response = httpx.get(f"{url}/orders", headers={"Authorization": f"Bearer {issuer.token('ES256', sub=sub)}"})
        assert response.status_code == 401, repr(sub)
    assert [e.reason for e in _events(bus)] == ["malformed"] * 4


def test_fail_closed_refuses_every_token_while_the_feed_is_stale(issuer: Issuer, tmp_path: Path) -> None:
    from pipeline.revocations.follower import RevocationFollower

    bus = MemoryBus()
    service = ValidatorService(
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
        data_dir=tmp_path,
        bus=bus,
        fail_closed=True,
    )
    service.feed = follower = RevocationFollower(bus, service.revocations)
    reached = []
    app = FastAPI()

    @app.get("/orders")
    def orders(request: Request) -> dict[str, str]:
        reached.append(request.state.token_claims["sub"])
        return {"owner": request.state.token_claims["sub"]}

    app.add_middleware(TokenValidationMiddleware, service=service)
    auth = {"Authorization": f"Bearer {issuer.token('ES256')}"}
    with serve_app(app) as url:
        stale = httpx.get(f"{url}/orders", headers=auth)
        assert (stale.status_code, stale.headers["retry-after"], stale.json()) == (
            503, "5", {"error": "temporarily_unavailable"},
        )  # fmt: skip
        assert reached == [] and _events(bus) == []  # nothing vouched for, nothing validated
        follower.step()
        assert httpx.get(f"{url}/orders", headers=auth).status_code == 200
        assert reached == ["user-1"]
    follower.close()
    service.close()
