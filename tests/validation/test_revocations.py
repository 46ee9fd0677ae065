"""Revocations enforced by the real validator, in process and over HTTP (the admin API)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pipeline.bus import TOKEN_USAGE
from pipeline.bus.memory import MemoryBus
from pipeline.events import Revocation, TokenUsage, format_ts
from pipeline.revocations.store import RevocationStore
from pipeline.validation import TokenValidator, ValidatorConfig
from pipeline.validation.app import create_validator_app
from pipeline.validation.service import ValidatorService
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer
from tests.support.servers import serve_app


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RevocationStore]:
    s = RevocationStore(tmp_path / "rev" / "revocations.sqlite")
    yield s
    s.close()


# -------------------------------------------------------------------------- with the real validator


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer.create()


def _config(issuer: Issuer) -> ValidatorConfig:
    return ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())


def test_revoking_a_cached_token_rejects_it(issuer: Issuer, store: RevocationStore) -> None:
    validator = TokenValidator(_config(issuer), revocations=store)
    token = issuer.token("ES256")
    first = validator.validate(token)
    assert first.ok and first.claims is not None
    now = time.time()
    assert validator.cache.get(token, now) is not None  # verified once, remembered

    store.revoke(kind="jti", iss=ISSUER, value=first.claims["jti"], reason="stolen", token_exp=first.claims["exp"])
    hits = validator.cache.hits
    verdict = validator.validate(token)
    assert validator.cache.hits == hits + 1  # answered from the cache ...
    assert not verdict.ok and verdict.reason == "revoked"  # ... and still revoked
    assert verdict.claims is None
    # Another token of the same subject is untouched.
    assert validator.validate(issuer.token("ES256")).ok


def test_subject_revocation_rejects_older_tokens_and_spares_newer(issuer: Issuer, store: RevocationStore) -> None:
    validator = TokenValidator(_config(issuer), revocations=store)
    now = int(time.time())
    old = issuer.token("RS256", sub="alice", now=now - 120)
    new = issuer.token("RS256", sub="alice", now=now)
    assert validator.validate(old).ok and validator.validate(new).ok
    store.revoke(kind="sub", iss=ISSUER, value="alice", reason="password reset", revoked_before=now - 60)
    assert validator.validate(old).reason == "revoked"
    assert validator.validate(new).ok
    assert validator.validate(issuer.token("RS256", sub="bob", now=now - 120)).ok


def test_validator_applies_its_leeway_to_subject_revocations(issuer: Issuer, store: RevocationStore) -> None:
    config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks(), leeway_s=10)
    validator = TokenValidator(config, revocations=store)
    now = int(time.time())
    revoked_before = now - 5
    # Stamped 9 s after revoked_before, within the 10 s leeway: its issuer's clock may run fast, so it may have
    # been issued before the revocation.
    fast_clock = issuer.token("RS256", sub="alice", iat=revoked_before + 9)
    # Stamped 13 s after: beyond the leeway, so certainly issued after the revocation (a new session).
    new_session = issuer.token("RS256", sub="alice", iat=revoked_before + 13)
    assert validator.validate(fast_clock).ok and validator.validate(new_session).ok
    store.revoke(kind="sub", iss=ISSUER, value="alice", reason="r", revoked_before=revoked_before)
    assert validator.validate(fast_clock).reason == "revoked"
    assert validator.validate(new_session).ok


def test_revocation_from_the_store_survives_a_validator_restart(issuer: Issuer, tmp_path: Path) -> None:
    path = tmp_path / "revocations.sqlite"
    token = issuer.token("EdDSA")
    first_store = RevocationStore(path)
    claims = TokenValidator(_config(issuer), revocations=first_store).validate(token).claims
    assert claims is not None
    first_store.revoke(kind="jti", iss=ISSUER, value=claims["jti"], reason="r", token_exp=claims["exp"])
    first_store.close()
    second_store = RevocationStore(path)
    try:
        assert TokenValidator(_config(issuer), revocations=second_store).validate(token).reason == "revoked"
    finally:
        second_store.close()


# ------------------------------------------------------------------------------------------- HTTP

ADMIN = "admin-" + "x" * 26


@dataclass
class Http:
    url: str
    bus: MemoryBus
    service: ValidatorService


@pytest.fixture(scope="module")
def http(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Http]:
    bus = MemoryBus()
    service = ValidatorService(_config(issuer), data_dir=tmp_path_factory.mktemp("data"), bus=bus, admin_token=ADMIN)
    with serve_app(create_validator_app(service)) as url:
        yield Http(url, bus, service)
    service.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        _bearer("wrong-admin-token-xxxxxxxxxxxx"),
        _bearer(ADMIN + "x"),
        _bearer(ADMIN[:-1]),
        {"Authorization": ADMIN},
    ],
    ids=["none", "wrong", "longer", "shorter", "no-scheme"],
)
def test_admin_api_refuses_without_the_admin_token(http: Http, headers: dict[str, str]) -> None:
    version = http.service.revocations.version
    with httpx.Client(base_url=http.url) as client:
        posted = client.post("/v1/revocations", json={"kind": "jti", "value": "nope"}, headers=headers)
        listed = client.get("/v1/revocations", params={"since": 0}, headers=headers)
    assert posted.status_code == 401 and listed.status_code == 401
    assert "revocations" not in listed.text
    assert http.service.revocations.version == version  # nothing was recorded


def test_admin_token_of_a_user_does_not_open_the_admin_api(http: Http, issuer: Issuer) -> None:
    with httpx.Client(base_url=http.url) as client:
        response = client.get("/v1/revocations", headers=_bearer(issuer.token("RS256")))
    assert response.status_code == 401


def test_revoke_over_http_then_the_token_is_refused(http: Http, issuer: Issuer) -> None:
    token = issuer.token("RS256", sub="mallory-victim")
    with httpx.Client(base_url=http.url) as client:
        assert client.get("/v1/validate", headers=_bearer(token)).status_code == 200
        jti = client.get("/v1/validate", headers=_bearer(token)).headers["x-auth-token-id"]
        assert http.service.validator.cache.get(token, time.time()) is not None

        created = client.post(
            "/v1/revocations", json={"kind": "jti", "value": jti, "reason": "stolen"}, headers=_bearer(ADMIN)
        )
        assert created.status_code == 201, created.text
        body = created.json()
        record = Revocation.from_dict(body)
        assert record.kind == "jti" and record.value == jti and record.iss == ISSUER
        assert record.reason == "stolen" and record.source == "manual"
        assert isinstance(record.version, int) and record.version >= 1
        assert created.headers["cache-control"] == "no-store"

        listed = client.get("/v1/revocations", params={"since": 0}, headers=_bearer(ADMIN))
        assert listed.status_code == 200
        listing = listed.json()
        assert listing["version"] >= record.version
        assert record.revocation_id in [r["revocation_id"] for r in listing["revocations"]]
        later = client.get("/v1/revocations", params={"since": record.version}, headers=_bearer(ADMIN)).json()
        assert record.revocation_id not in [r["revocation_id"] for r in later["revocations"]]

        with http.bus.consumer([TOKEN_USAGE], "after-revocation", from_beginning=False) as consumer:
            consumer.positions()
            refused = client.get("/v1/validate", headers=_bearer(token))
            [message] = consumer.poll(timeout_s=2)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert "revoked" not in refused.text  # the caller learns no more than invalid_token
    event = TokenUsage.from_json(message.value)
    assert (event.outcome, event.reason, event.jti, event.sub) == ("rejected", "revoked", jti, "mallory-victim")


def test_subject_revocation_over_http(http: Http, issuer: Issuer) -> None:
    now = int(time.time())
    old = issuer.token("ES256", sub="carol", now=now - 300)
    with httpx.Client(base_url=http.url) as client:
        assert client.get("/v1/validate", headers=_bearer(old)).status_code == 200
        created = client.post(
            "/v1/revocations",
            json={"kind": "sub", "value": "carol", "revoked_before": format_ts(now - 60)},
            headers=_bearer(ADMIN),
        )
        assert created.status_code == 201
        assert created.json()["revoked_before"] == format_ts(now - 60)
        assert client.get("/v1/validate", headers=_bearer(old)).status_code == 401
        fresh = issuer.token("ES256", sub="carol", now=now)
        assert client.get("/v1/validate", headers=_bearer(fresh)).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "client", "value": "x"},
        {"kind": "jti"},
        {"kind": "jti", "value": ""},
        {"kind": "jti", "value": "x", "extra": 1},
        {"kind": "sub", "value": "x", "revoked_before": "2024-05-01T12:00:00"},  # no offset
        {"kind": "sub", "value": "x", "revoked_before": "yesterday"},
        {"kind": "sub", "value": "x", "revoked_before": "9999-12-31T23:59:59Z"},  # expiry beyond year 9999
    ],
    ids=["kind", "no-value", "empty-value", "extra-field", "naive-before", "garbage-before", "far-future-before"],
)
def test_bad_revocation_requests_are_422_and_record_nothing(http: Http, body: dict) -> None:
    version = http.service.revocations.version
    with httpx.Client(base_url=http.url) as client:
        response = client.post("/v1/revocations", json=body, headers=_bearer(ADMIN))
        # A barrier: the server has finished with (and logged) the request before pytest reports on it;
        # see tests/test_validation_properties.settle.
        assert client.get("/healthz").status_code == 200
    assert response.status_code == 422, response.text
    assert http.service.revocations.version == version


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"", 400),
        (b"{", 400),
        (b'{"kind": "jti", "value": "\\ud800"}', 400),  # a lone surrogate: valid JSON text, not valid Unicode
        (b'{"kind": "jti", "value": "\xff"}', 400),  # not UTF-8
        (b'{"kind": "jti", "value": "a\x00"}', 400),  # a raw control character in a string
        (b"[" * 10_000 + b"]" * 10_000, 400),  # nesting deeper than the parser allows
        (b'["jti", "x"]', 422),
        (b"null", 422),
        (b'{"kind": "jti", "value": "x", "revoked_before": 1e400}', 400),  # beyond a double
        (b" " * (40 * 1024), 413),
    ],
    ids=["empty", "truncated", "lone-surrogate", "not-utf8", "control-char", "deep", "array", "null", "inf", "large"],
)
def test_hostile_revocation_bodies_get_4xx_and_record_nothing(http: Http, raw: bytes, status: int) -> None:
    version = http.service.revocations.version
    with httpx.Client(base_url=http.url) as client:
        headers = {**_bearer(ADMIN), "Content-Type": "application/json"}
        response = client.post("/v1/revocations", content=raw, headers=headers)
        assert client.get("/healthz").status_code == 200  # a barrier, as above
    assert response.status_code == status, response.text[:300]
    assert len(response.content) < 2048  # no echo of the body
    assert http.service.revocations.version == version


def test_revocation_bodies_are_not_awaited_before_the_admin_check_or_past_the_cap(http: Http) -> None:
    host, port = http.url.removeprefix("http://").split(":")
    for authorization, expected in (
        (b"X-Not-Authorization: nothing", b"HTTP/1.1 401"),
        (b"Authorization: Bearer " + ADMIN.encode(), b"HTTP/1.1 413"),
    ):
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(
                b"POST /v1/revocations HTTP/1.1\r\nHost: x\r\n" + authorization + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n{"
            )
            assert raw.recv(64).startswith(expected)


def test_a_422_names_the_field_never_the_value_or_a_made_up_key(http: Http) -> None:
    secret_looking = "s3cr3t-" + "v" * 2000
    with httpx.Client(base_url=http.url) as client:
        answer = client.post(
            "/v1/revocations",
            json={"kind": secret_looking, "value": "x", "reason": "", secret_looking: 1},
            headers=_bearer(ADMIN),
        )
    assert answer.status_code == 422
    body = answer.json()
    assert body["error"] == "invalid_request" and "s3cr3t" not in answer.text
    locations = [problem["loc"] for problem in body["detail"]]
    assert ["kind"] in locations and ["reason"] in locations and ["?"] in locations
    assert all(set(problem) == {"loc", "msg", "type"} for problem in body["detail"])


def test_validation_problems_keep_names_and_drop_inputs() -> None:
    from pipeline.serving.web import MAX_PROBLEMS, validation_problems

    errors = [
        {"loc": ("body", "kind"), "msg": "Input should be 'jti' or 'sub'", "type": "literal_error", "input": "x"},
        {"loc": ("body", "a b\ud800"), "msg": "Extra inputs are not permitted", "type": "extra_forbidden"},
        {"loc": ("query", 3), "msg": "Value error, bad thing 'hunter2'", "type": "value_error", "input": "hunter2"},
        {"loc": ("tag",), "msg": "Input tag 'hunter2' found", "type": "union_tag_invalid", "input": "hunter2"},
        {"loc": ("x",), "msg": "m" * 500, "type": "string_too_long"},
    ] * 3
    problems = validation_problems(errors)
    assert len(problems) == MAX_PROBLEMS
    assert problems[0] == {"loc": ["body", "kind"], "msg": "Input should be 'jti' or 'sub'", "type": "literal_error"}
    assert problems[1]["loc"] == ["body", "?"]
    assert problems[2] == {"loc": ["query", 3], "msg": "invalid value", "type": "value_error"}
    assert problems[3]["msg"] == "invalid value" and problems[4]["msg"] == "invalid value"
    assert "hunter2" not in str(problems)


def test_listing_validates_its_query_only_for_the_admin(http: Http) -> None:
    with httpx.Client(base_url=http.url) as client:
        assert client.get("/v1/revocations", params={"since": "EVIL"}).status_code == 401
        answer = client.get("/v1/revocations", params={"since": "EVIL", "limit": 0}, headers=_bearer(ADMIN))
    assert answer.status_code == 422 and "EVIL" not in answer.text
    assert {tuple(p["loc"]) for p in answer.json()["detail"]} == {("query", "since"), ("query", "limit")}


def test_admin_api_is_closed_without_a_configured_admin_token(issuer: Issuer, tmp_path: Path) -> None:
    service = ValidatorService(_config(issuer), data_dir=tmp_path, bus=MemoryBus(), admin_token=None)
    try:
        with serve_app(create_validator_app(service)) as url, httpx.Client(base_url=url) as client:
            for presented in ("any-token-at-all-xxxxxxxx", "None", "null"):
                response = client.post(
                    "/v1/revocations", json={"kind": "jti", "value": "x"}, headers=_bearer(presented)
                )
                assert response.status_code == 401
    finally:
        service.close()
