"""The attack catalogue: every case is rejected, for the right reason, in-process and over HTTP.

Each case names the reason it must be rejected with; the HTTP run checks the 401 says no more than
``invalid_token`` and that the usage event carries the reason. Controls at the end must pass.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pipeline.bus import TOKEN_USAGE
from pipeline.bus.memory import MemoryBus
from pipeline.events import TokenUsage
from pipeline.validation import TokenValidator, ValidatorConfig
from pipeline.validation.app import create_validator_app
from pipeline.validation.service import ValidatorService
from tests.support.attacks import ATTACKS, CONTROLS, HTTP_ATTACKS, Case, World, foreign_known_kid
from tests.support.jwtkit import (
    AUDIENCE,
    DROP,
    ISSUER,
    Issuer,
    new_key,
)
from tests.support.servers import RequestTrap, serve_app


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    trap = RequestTrap()
    yield World(Issuer.create(), Issuer.create(), new_key("RS256", kid="weak-1024", bits=1024), trap)
    trap.close()


def _config(world: World) -> ValidatorConfig:
    return ValidatorConfig(
        issuer=ISSUER, audience=AUDIENCE, jwks=world.issuer.jwks(world.weak.public_jwk()), jwks_refetch_cooldown_s=0
    )


#: Signed, but with an identity claim that X-Auth-* header values could only carry altered, or not at all (see
#: verifier.carriable): refused as malformed. Kept out of ATTACKS, whose catalogue docs/security.md renders.
LOOK_ALIKE_IDENTITIES: dict[str, dict[str, object]] = {
    "sub-zero-width-space": {"sub": "admin\u200b"},
    "sub-trailing-newline": {"sub": "admin\n"},
    "sub-tab": {"sub": "ad\tmin"},
    "sub-crlf-injection": {"sub": "eve\r\nX-Admin: true"},
    "sub-non-ascii": {"sub": "adm\u00edn"},
    "sub-empty": {"sub": ""},
    "sub-leading-space": {"sub": " admin"},
    "sub-trailing-space": {"sub": "admin "},
    "sub-del": {"sub": "admin\x7f"},
    "sub-1025-chars": {"sub": "a" * 1025},
    "jti-control-character": {"jti": "j\x01"},
    "client-id-non-ascii": {"client_id": "w\u00e9b"},
    "scope-nul": {"scope": "read\u0000admin"},
    "scope-empty": {"scope": ""},
    "azp-number": {"azp": 42, "client_id": DROP},
    "azp-list": {"azp": ["web"], "client_id": DROP},
    "azp-beside-client-id": {"azp": {"id": 1}},
}


@pytest.mark.parametrize(("name", "build", "reason"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_rejected_in_process(world: World, name: str, build: Case, reason: str) -> None:
    validator = TokenValidator(_config(world))
    verdict = validator.validate(build(world))
    assert not verdict.ok
    assert verdict.claims is None
    assert verdict.reason == reason


@pytest.mark.parametrize(("name", "build"), CONTROLS, ids=[c[0] for c in CONTROLS])
def test_control_passes_in_process(world: World, name: str, build: Case) -> None:
    verdict = TokenValidator(_config(world)).validate(build(world))
    assert verdict.reason is None
    assert verdict.ok
    assert verdict.claims is not None and verdict.claims["sub"] == "user-1"


@pytest.mark.parametrize("claims", LOOK_ALIKE_IDENTITIES.values(), ids=list(LOOK_ALIKE_IDENTITIES))
def test_identity_a_header_would_alter_is_malformed(world: World, claims: dict[str, object]) -> None:
    verdict = TokenValidator(_config(world)).validate(world.issuer.token("RS256", **claims))
    assert (verdict.ok, verdict.reason, verdict.claims) == (False, "malformed", None)


def test_identity_claims_of_the_longest_allowed_length_are_handed_on_whole(world: World, http: Http) -> None:
    token = world.issuer.token("RS256", jti="j" * 1024, sub="s" * 1024, scope="read  write", client_id=DROP, azp="w b")
    with httpx.Client(base_url=http.url) as client:
        response = client.get("/v1/validate", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert (response.headers["x-auth-token-id"], response.headers["x-auth-subject"]) == ("j" * 1024, "s" * 1024)
    assert (response.headers["x-auth-scope"], response.headers["x-auth-client-id"]) == ("read  write", "w b")


def test_validator_never_contacts_header_urls(world: World) -> None:
    validator = TokenValidator(_config(world))
    for name, build, _ in ATTACKS:
        if "injection" in name:
            validator.validate(build(world))
    assert world.trap.requests == []


def test_rejected_verdict_keeps_unverified_claims_for_the_event(world: World) -> None:
    verdict = TokenValidator(_config(world)).validate(foreign_known_kid(world))
    assert verdict.reason == "bad_signature"
    assert verdict.claims is None
    assert verdict.unverified_claims is not None and verdict.unverified_claims["sub"] == "user-1"


# ------------------------------------------------------------------------------------------- HTTP


@dataclass
class Http:
    url: str
    bus: MemoryBus


@pytest.fixture(scope="module")
def http(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Http]:
    bus = MemoryBus()
    service = ValidatorService(_config(world), data_dir=tmp_path_factory.mktemp("data"), bus=bus)
    with serve_app(create_validator_app(service)) as url:
        yield Http(url, bus)
    service.close()


def _last_event(bus: MemoryBus, group: str) -> TokenUsage:
    consumer = bus.consumer([TOKEN_USAGE], group)
    messages = consumer.poll(100_000, timeout_s=1)
    consumer.close()
    assert messages, "no usage event was emitted"
    return TokenUsage.from_json(max(messages, key=lambda m: (m.timestamp_ms, m.offset)).value)


@pytest.mark.parametrize(("name", "build", "reason"), HTTP_ATTACKS, ids=[a[0] for a in HTTP_ATTACKS])
def test_attack_is_rejected_over_http(world: World, http: Http, name: str, build: Case, reason: str) -> None:
    token = build(world)
    if isinstance(token, bytes):
        token = token.decode("latin-1")
    with httpx.Client(base_url=http.url) as client:
        response = client.get("/v1/validate", headers={"Authorization": f"Bearer {token}", "User-Agent": name})
    if reason == "too_large":
        assert response.status_code == 431
    else:
        assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert "x-auth-subject" not in response.headers
    assert reason not in response.text or reason == "invalid_token"
    event = _last_event(http.bus, f"attack-{name}")
    assert event.outcome == "rejected"
    assert event.reason == reason
    assert event.user_agent == name


@pytest.mark.parametrize(("name", "build"), CONTROLS, ids=[c[0] for c in CONTROLS])
def test_control_passes_over_http(world: World, http: Http, name: str, build: Case) -> None:
    token = build(world)
    with httpx.Client(base_url=http.url) as client:
        response = client.get("/v1/validate", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.headers["x-auth-subject"] == "user-1"
    assert response.headers["x-auth-client-id"] == "web-app"
    assert response.headers["x-auth-scope"] == "read write"
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert response.headers["x-auth-token-id"] == claims["jti"]


def test_jwks_file_with_only_weak_key_is_refused(world: World, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [world.weak.public_jwk()]}))
    with pytest.raises(ValueError, match="1024 bits"):
        TokenValidator(ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=path))


def test_request_without_token_over_http(http: Http) -> None:
    with httpx.Client(base_url=http.url) as client:
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwYXNz"}):
            response = client.get("/v1/validate", headers=headers)
            assert response.status_code == 401
            # RFC 6750 §3.1: no error code when the request carried no token at all.
            assert response.headers["www-authenticate"] == 'Bearer realm="jwtwatch"'
