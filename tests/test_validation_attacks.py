"""The attack catalogue: every case is rejected, for the right reason, in-process and over HTTP.

Each case names the reason it must be rejected with; the HTTP run checks the 401 says no more than
``invalid_token`` and that the usage event carries the reason. Controls at the end must pass.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
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
from tests.jwtkit import (
    AUDIENCE,
    DROP,
    ISSUER,
    Issuer,
    SigningKey,
    b64url,
    der_es256_token,
    hmac_token,
    new_key,
    raw_token,
    standard_claims,
    tamper_payload,
)
from tests.servers import RequestTrap, serve_app


@dataclass
class World:
    issuer: Issuer
    attacker: Issuer
    weak: SigningKey
    trap: RequestTrap


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    trap = RequestTrap()
    yield World(Issuer.create(), Issuer.create(), new_key("RS256", kid="weak-1024", bits=1024), trap)
    trap.close()


def _config(world: World) -> ValidatorConfig:
    return ValidatorConfig(
        issuer=ISSUER, audience=AUDIENCE, jwks=world.issuer.jwks(world.weak.public_jwk()), jwks_refetch_cooldown_s=0
    )


Case = Callable[[World], str | bytes]


def _none(casing: str) -> Case:
    return lambda w: raw_token({"alg": casing, "typ": "at+jwt"}, standard_claims())


def _pem_secret(w: World) -> str:
    return hmac_token(w.issuer.keys["RS256"].public_pem(), standard_claims(), kid="rs256-1")


def _jwk_secret(w: World) -> str:
    return hmac_token(json.dumps(w.issuer.keys["RS256"].public_jwk()).encode(), standard_claims(), kid="rs256-1")


def _secret(secret: bytes) -> Case:
    return lambda w: hmac_token(secret, standard_claims())


def _foreign_known_kid(w: World) -> str:
    return w.attacker.token("RS256", headers={"kid": "rs256-1"})


def _foreign_unknown_kid(w: World) -> str:
    return w.attacker.token("RS256", headers={"kid": "attacker-kid"})


def _header_injection(name: str, kid: str) -> Case:
    def build(w: World) -> str:
        key = w.attacker.keys["RS256"]
        value: object = f"{w.trap.url}/{name}.json"
        if name == "jwk":
            value = key.public_jwk()
        if name == "x5c":
            value = ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]
        return w.attacker.token("RS256", headers={"kid": kid, name: value}, key=key)

    return build


def _kid(kid: str) -> Case:
    return lambda w: w.attacker.token("RS256", headers={"kid": kid})


def _zero_es256(w: World) -> str:
    token = w.issuer.token("ES256")
    head, body, _ = token.split(".")
    return f"{head}.{body}.{b64url(bytes(64))}"


def _der_es256(w: World) -> str:
    return der_es256_token(w.issuer.keys["ES256"], standard_claims())


def _tampered(w: World) -> str:
    return tamper_payload(w.issuer.token("RS256"), sub="admin")


def _claims(**overrides: object) -> Case:
    """Claim overrides; a callable is evaluated when the token is built (times relative to then)."""
    return lambda w: w.issuer.token("RS256", **{k: v() if callable(v) else v for k, v in overrides.items()})


def _headers(**headers: object) -> Case:
    return lambda w: w.issuer.token("RS256", headers=headers)


def _now() -> int:
    return int(time.time())


def _nested(w: World) -> str:
    inner = w.issuer.token("RS256")
    return w.issuer.token("RS256", headers={"cty": "JWT"}, claims={**standard_claims(), "token": inner})


def _weak_key(w: World) -> str:
    return w.issuer.token("RS256", key=w.weak)


def _relabelled(w: World) -> str:
    # An ES256 signature presented under the RSA key's kid: the key, not the token, decides the algorithm.
    return w.issuer.token("ES256", headers={"kid": "rs256-1"})


def _b64_false(w: World) -> str:
    return raw_token({"alg": "RS256", "typ": "at+jwt", "kid": "rs256-1", "b64": False}, standard_claims(), b"x" * 256)


def _huge(w: World) -> str:
    return w.issuer.token("RS256", padding="A" * 64 * 1024)


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

ATTACKS: list[tuple[str, Case, str]] = [
    *[(f"alg-{c}", _none(c), "alg_not_allowed") for c in ("none", "None", "NONE", "nOnE")],
    ("hs256-keyed-with-rsa-pem", _pem_secret, "alg_not_allowed"),
    ("hs256-keyed-with-rsa-jwk-json", _jwk_secret, "alg_not_allowed"),
    *[(f"hs256-secret-{s.decode() or 'blank'}", _secret(s), "alg_not_allowed") for s in (b"", b"secret", b"password")],
    ("foreign-key-known-kid", _foreign_known_kid, "bad_signature"),
    ("foreign-key-unknown-kid", _foreign_unknown_kid, "unknown_kid"),
    ("jku-injection", _header_injection("jku", "attacker-kid"), "unknown_kid"),
    ("x5u-injection", _header_injection("x5u", "attacker-kid"), "unknown_kid"),
    ("jwk-injection-known-kid", _header_injection("jwk", "rs256-1"), "bad_signature"),
    ("jwk-injection-own-kid", _header_injection("jwk", "rs256-1-attacker"), "unknown_kid"),
    ("x5c-injection", _header_injection("x5c", "rs256-1"), "bad_signature"),
    ("kid-path-traversal", _kid("../../../../../../dev/null"), "unknown_kid"),
    ("kid-sql-injection", _kid("' OR '1'='1' --"), "unknown_kid"),
    ("kid-command-injection", _kid("rs256-1|cat /etc/passwd"), "unknown_kid"),
    ("kid-huge", _kid("k" * 5000), "malformed"),
    (
        "kid-not-a-string",
        lambda w: raw_token({"alg": "RS256", "typ": "at+jwt", "kid": 7}, standard_claims(), b"s" * 256),
        "malformed",
    ),
    ("es256-all-zero-signature", _zero_es256, "bad_signature"),
    ("es256-der-signature", _der_es256, "bad_signature"),
    ("tampered-payload", _tampered, "bad_signature"),
    ("alg-relabelled-against-key", _relabelled, "alg_not_allowed"),
    ("expired", _claims(exp=lambda: _now() - 120), "expired"),
    ("nbf-in-future", _claims(nbf=lambda: _now() + 600), "not_yet_valid"),
    ("iat-in-future", _claims(iat=lambda: _now() + 600), "not_yet_valid"),
    ("wrong-issuer", _claims(iss="https://evil.test"), "issuer"),
    ("prefix-extended-issuer", _claims(iss=ISSUER + ".evil.test"), "issuer"),
    ("issuer-with-trailing-slash", _claims(iss=ISSUER + "/"), "issuer"),
    ("wrong-audience", _claims(aud="https://other.test"), "audience"),
    ("audience-list-without-ours", _claims(aud=["https://a.test", "https://b.test"]), "audience"),
    *[(f"missing-{c}", _claims(**{c: DROP}), "missing_claim") for c in ("iss", "sub", "aud", "exp", "iat", "jti")],
    *[(f"string-{c}", _claims(**{c: lambda: str(_now() + 60)}), "malformed") for c in ("exp", "iat", "nbf")],
    ("bool-exp", _claims(exp=True), "malformed"),
    ("unknown-crit", _headers(crit=["urn:example:ext"], **{"urn:example:ext": 1}), "malformed"),
    ("b64-false-in-crit", _headers(b64=False, crit=["b64"]), "malformed"),
    ("b64-false-alone", _b64_false, "malformed"),
    ("nested-cty-jwt", _nested, "type"),
    *[(f"typ-{t}", _headers(typ=t), "type") for t in ("secevent+jwt", "dpop+jwt", "logout+jwt", "id_token")],
    ("typ-missing", _headers(typ=None), "type"),  # PyJWT drops a None typ,
    ("rsa-1024-key-in-jwks", _weak_key, "weak_key"),
    ("token-64-kib", _huge, "too_large"),
    ("jwe-shaped", lambda w: "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d", "malformed"),
    ("garbage", lambda w: "not a token at all", "malformed"),
    ("two-segments", lambda w: "eyJhbGciOiJSUzI1NiJ9.e30", "malformed"),
    ("bad-base64-header", lambda w: "!!!.e30.sig", "malformed"),
    ("header-not-object", lambda w: f"{b64url(b'[1,2]')}.e30.c2ln", "malformed"),
    ("empty", lambda w: "", "malformed"),
]

CONTROLS: list[tuple[str, Case]] = [
    *[
        (f"{alg}-{typ}", (lambda a, t: lambda w: w.issuer.token(a, headers={"typ": t}))(alg, typ))
        for alg in ("RS256", "ES256", "EdDSA")
        for typ in ("at+jwt", "JWT", "application/at+jwt")
    ],
    ("audience-list-with-ours", _claims(aud=["https://other.test", AUDIENCE])),
    ("expired-within-leeway", _claims(exp=lambda: _now() - 5)),
    ("no-nbf", _claims(nbf=DROP)),
]


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
    verdict = TokenValidator(_config(world)).validate(_foreign_known_kid(world))
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


# An empty credential is no token at all over HTTP: see test_request_without_token_over_http.
HTTP_ATTACKS = [a for a in ATTACKS if a[0] != "empty"]


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
