"""One regression test per finding of the outside security review of commit 1c06c30 (issue 14).

In the manner of PyJWT's ``test_advisory.py``: each test is named after its finding, reproduces the attack as
the reviewer ran it (real signed JWTs, real servers on loopback, real files) and fails on 1c06c30. The deeper
tests of each mechanism live beside the code's other tests; ``docs/security.md`` lists both.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from fastapi import FastAPI, Request  # module level: FastAPI resolves a route's annotations in the module
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.events import TokenUsage
from pipeline.validation import ValidatorConfig
from pipeline.validation.service import ValidatorService
from tests.jwtkit import AUDIENCE, DROP, ISSUER, Issuer, b64url, standard_claims
from tests.servers import serve_app, stop_process, wait_ready

MODEL = Path(__file__).resolve().parent.parent / "models" / "default"
_ADMIN = "advisories-admin-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------
# HIGH 1: a forged token with invalid Unicode in a claim erased other requests' usage events
# ---------------------------------------------------------------------------------------------------------------

#: JWS header members and claims that forged tokens fill with hostile JSON (plus, at times, a member of hostile name).
_HIGH_1_HEADER_FIELDS = ("alg", "typ", "kid", "cty", "crit", "b64", "jku", "x5u", "jwk", "x5c")
_HIGH_1_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "azp", "scope", "username")
_MIB = 1 << 20

#: JSON string literals of text that is not all Unicode, or not all printable: lone surrogates, NUL and control
#: characters, format characters, up to 1 MiB. json.dumps escapes a lone surrogate into the valid JSON "\ud800".
_HOSTILE_STRINGS = st.one_of(
    st.text(st.characters(categories=["Cs", "Cc", "Cf", "Zl", "Zs"]) | st.characters(), max_size=40),
    st.sampled_from(["\ud800", "\udfff\ud800", "a\ud83d", "\x00", "admin\u200b", "\u2028\u2029", "\ufeff"]),
    st.builds(
        lambda chunk, n: chunk * n, st.sampled_from(["x", "\ud800", "\x00", "\u00e9"]), st.sampled_from([1100, _MIB])
    ),
).map(json.dumps)
#: Numbers Python's json reads (or refuses with a ValueError) that overflow everything downstream.
_HOSTILE_NUMBERS = st.sampled_from(
    ["1e400", "-1e400", "1E-400", "-0", "NaN", "-Infinity", "1" + "0" * 300, "9" * 5000, "1234567890" * 3]
) | st.integers().map(str)
#: Arrays and objects nested up to 3,000 deep.
_HOSTILE_NESTING = st.builds(
    lambda depth, shape: shape[0] * depth + shape[1] + shape[2] * depth,
    st.integers(1, 3000),
    st.sampled_from([("[", "", "]"), ('{"a":', "0", "}"), ('["\\ud800",', '"\\udc00"', "]")]),
)
_HOSTILE_JSON = st.recursive(
    _HOSTILE_STRINGS | _HOSTILE_NUMBERS | _HOSTILE_NESTING | st.sampled_from(["true", "null", "[]", "{}"]),
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda items: "[" + ",".join(items) + "]")
        | st.lists(st.tuples(_HOSTILE_STRINGS, inner), max_size=3).map(
            lambda members: "{" + ",".join(f"{name}:{value}" for name, value in members) + "}"
        )
    ),
    max_leaves=4,
)


def _jws(header: dict[str, str], claims: dict[str, str], signature: bytes) -> str:
    """A compact JWS whose members are given as JSON text — so they can hold what json.dumps never writes."""

    def json_object(members: dict[str, str]) -> bytes:
        return ("{" + ",".join(f"{name}:{value}" for name, value in members.items()) + "}").encode("ascii")

    return f"{b64url(json_object(header))}.{b64url(json_object(claims))}.{b64url(signature)}"


#: Known kid and algorithm: most forged tokens get as far as the signature check, and their events carry every claim.
_FORGED_HEADER = {'"alg"': '"ES256"', '"typ"': '"at+jwt"', '"kid"': '"es256-1"'}


@st.composite
def _hostile_forged_tokens(draw: st.DrawFn) -> str:
    header = dict(_FORGED_HEADER)
    claims = {json.dumps(name): json.dumps(value) for name, value in standard_claims().items()}
    for name in draw(st.sets(st.sampled_from(_HIGH_1_HEADER_FIELDS), max_size=3)):
        header[json.dumps(name)] = draw(_HOSTILE_JSON)
    for name in draw(st.sets(st.sampled_from(_HIGH_1_CLAIMS), min_size=1, max_size=5)):
        claims[json.dumps(name)] = draw(_HOSTILE_JSON)
    if draw(st.booleans()):
        claims[draw(_HOSTILE_STRINGS)] = draw(_HOSTILE_JSON)
    return _jws(header, claims, draw(st.binary(min_size=64, max_size=64)))


#: What an HTTP/1.1 client may send as a header value (RFC 9110 §5.5: VCHAR, obs-text, inner SP/HTAB), to 1 MiB.
_HOSTILE_HEADER_VALUES = (
    st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]) | st.sampled_from(["\t", " "]), max_size=200)
    | st.sampled_from(["\u00ff" * 2000, "A" * _MIB])
).map(lambda value: value.strip(" \t").encode("latin-1"))


@dataclass
class _Surface:
    name: str
    url: str  # a protected URL: forward-auth's /v1/validate, or an API behind the middleware
    events: Path  # its --events-out
    read: int = 0  # bytes of ``events`` already read

    def new_events(self, count: int, timeout_s: float = 15) -> list[TokenUsage]:
        """The next ``count`` usage events written (or fewer after ``timeout_s``); each must parse as token-usage/1."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.events.open("rb") as file:
                file.seek(self.read)
                data = file.read()
            complete = data[: data.rfind(b"\n") + 1]
            lines = complete.splitlines()
            if len(lines) >= count or time.monotonic() > deadline:
                self.read += len(complete)
                return [TokenUsage.from_json(line) for line in lines]
            time.sleep(0.02)


@pytest.fixture(scope="module")
def hostile_text_surfaces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Issuer, list[_Surface]]]:
    """The three surfaces, each started once: ``validator serve`` (a process; its events are built and written by a
    background thread), ``serve`` and the FastAPI middleware (in this process; events built on the request path)."""
    from pipeline.allinone import AllInOne, ServeOptions
    from pipeline.validation.middleware import TokenValidationMiddleware

    issuer = Issuer.create()
    tmp = tmp_path_factory.mktemp("hostile-text")
    (tmp / "jwks.json").write_text(json.dumps(issuer.jwks()))
    config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
    port = _free_port()
    log = tmp / "validator.log"
    validator = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "validator", "serve", "--issuer", ISSUER, "--audience", AUDIENCE,
         "--jwks-file", str(tmp / "jwks.json"), "--port", str(port), "--data-dir", str(tmp / "validator-data"),
         "--events-out", str(tmp / "validator-events.jsonl")],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    all_in_one = AllInOne(
        ServeOptions(config=config, data_dir=tmp / "serve-data", model_dir=MODEL, events_out=tmp / "serve-events.jsonl")
    )
    all_in_one.start()
    service = ValidatorService(config, data_dir=tmp / "api-data", events_out=tmp / "api-events.jsonl")
    api = FastAPI()

    @api.get("/orders")
    def orders(request: Request) -> dict[str, str]:
        return {"owner": request.state.token_claims["sub"]}

    api.add_middleware(TokenValidationMiddleware, service=service)
    try:
        validator_url = f"http://127.0.0.1:{port}"
        wait_ready(validator_url, validator, log)
        with serve_app(all_in_one.app) as serve_url, serve_app(api) as api_url:
            yield (
                issuer,
                [
                    _Surface("validator serve", f"{validator_url}/v1/validate", tmp / "validator-events.jsonl"),
                    _Surface("serve", f"{serve_url}/v1/validate", tmp / "serve-events.jsonl"),
                    _Surface("middleware", f"{api_url}/orders", tmp / "api-events.jsonl"),
                ],
            )
    finally:
        stop_process(validator)
        all_in_one.stop()
        service.close()


@settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(forged=_hostile_forged_tokens(), user_agent=_HOSTILE_HEADER_VALUES)
@example(forged=_jws(_FORGED_HEADER, {'"sub"': '"\\ud800"'}, b"\0" * 64), user_agent=b"curl/8.5.0")  # the reviewer's
@example(forged=_jws(_FORGED_HEADER | {'"kid"': '"\\udfff"'}, {'"jti"': '"x\\u0000"'}, b""), user_agent=b"\xff" * 9)
def test_high_1_hostile_text_in_forged_tokens_never_erases_usage_events(
    hostile_text_surfaces: tuple[Issuer, list[_Surface]], forged: str, user_agent: bytes
) -> None:
    issuer, surfaces = hostile_text_surfaces
    refused = 401 if len(forged) <= 8192 else 431  # over the token size cap: refused unparsed, as too_large
    for surface in surfaces:
        valid = [issuer.token("ES256", jti=f"high-1-{uuid.uuid4()}") for _ in range(2)]
        answers = []
        with httpx.Client(timeout=60) as client:
            # Back to back, so that the forged token's event shares a batch with the valid ones around it.
            for token in (valid[0], forged, valid[1]):
                headers = {"Authorization": f"Bearer {token}", "User-Agent": user_agent, "X-Forwarded-Uri": user_agent}
                response = client.get(surface.url, headers=headers)
                answers.append((response.status_code, response.text[:200]))
        assert [status for status, _ in answers] == [200, refused, 200], (surface.name, answers)
        # Every call is recorded: the forged one as rejected, and both accepted calls beside it.
        events = surface.new_events(3)
        assert [event.outcome for event in events] == ["accepted", "rejected", "accepted"], (surface.name, events)
        assert [event.jti for event in events if event.outcome == "accepted"] == [
            jwt.decode(token, options={"verify_signature": False})["jti"] for token in valid
        ], surface.name


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


#: Signed by the issuer, yet each would reach the API altered (or as no identity at all) through X-Auth-* headers.
_UNCARRIABLE_IDENTITIES = {
    "zero-width space": {"sub": "admin\u200b"},
    "trailing newline": {"sub": "admin\n"},
    "tab inside": {"sub": "ad\tmin"},
    "leading space": {"sub": " admin"},
    "non-ASCII": {"sub": "adm\u00edn"},
    "empty": {"sub": ""},
    "NUL in scope": {"scope": "read\u0000admin"},
    "1,025 characters": {"sub": "a" * 1024 + "x"},
    "the same first 1,024 characters": {"sub": "a" * 1024 + "y"},
    "non-string azp": {"azp": 42, "client_id": DROP},
    "object azp": {"azp": {"id": "admin"}, "client_id": DROP},
}


def test_medium_7_x_auth_values_are_refused_never_altered(tmp_path: Path) -> None:
    from pipeline.validation.app import create_validator_app

    issuer = Issuer.create()
    config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
    for fast_path in (True, False):  # the raw-ASGI fast path and the FastAPI route
        events_out = tmp_path / f"events-{fast_path}.jsonl"
        service = ValidatorService(config, data_dir=tmp_path / f"data-{fast_path}", events_out=events_out)
        with serve_app(create_validator_app(service, fast_path=fast_path)) as url, httpx.Client(base_url=url) as http:
            exact = {"sub": "a" * 1024, "scope": "read admin", "client_id": DROP, "azp": "web"}
            carried = http.get("/v1/validate", headers={"Authorization": f"Bearer {issuer.token(**exact)}"})
            assert carried.status_code == 200
            assert carried.headers["x-auth-subject"] == "a" * 1024  # whole, as signed
            assert (carried.headers["x-auth-scope"], carried.headers["x-auth-client-id"]) == ("read admin", "web")
            for case, claims in _UNCARRIABLE_IDENTITIES.items():
                response = http.get("/v1/validate", headers={"Authorization": f"Bearer {issuer.token(**claims)}"})
                assert response.status_code == 401, (fast_path, case, response.headers)
                assert not any(name.startswith("x-auth-") for name in response.headers), (fast_path, case)
        service.close()
        reasons = [TokenUsage.from_json(line).reason for line in events_out.read_bytes().splitlines()]
        assert reasons == [None] + ["malformed"] * len(_UNCARRIABLE_IDENTITIES), fast_path  # the reason is recorded


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 8: a poison record wedged the alerts consumer for good
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 9: unauthenticated /metrics told an attacker why their token failed
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 10: --fail-closed was not enforced by the middleware and /v1/introspect
# ---------------------------------------------------------------------------------------------------------------


def test_low_10_fail_closed_holds_on_every_surface(tmp_path: Path) -> None:
    from pipeline.bus.memory import MemoryBus
    from pipeline.validation.app import create_validator_app
    from pipeline.validation.follower import RevocationFollower
    from pipeline.validation.middleware import TokenValidationMiddleware

    issuer = Issuer.create()
    bus = MemoryBus()
    service = ValidatorService(
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
        data_dir=tmp_path,
        bus=bus,
        admin_token=_ADMIN,
        fail_closed=True,
    )
    service.feed = follower = RevocationFollower(bus, service.revocations)  # not read yet: the feed is stale
    api = FastAPI()

    @api.get("/orders")
    def orders(request: Request) -> dict[str, str]:
        return {"owner": request.state.token_claims["sub"]}

    api.add_middleware(TokenValidationMiddleware, service=service)
    bearer = {"Authorization": f"Bearer {issuer.token()}"}
    admin = {"Authorization": f"Bearer {_ADMIN}"}
    with serve_app(create_validator_app(service)) as validator_url, serve_app(api) as api_url:

        def answers() -> tuple[int, int, int, object]:
            introspected = httpx.post(f"{validator_url}/v1/introspect", data={"token": issuer.token()}, headers=admin)
            return (
                httpx.get(f"{validator_url}/v1/validate", headers=bearer).status_code,
                httpx.get(f"{api_url}/orders", headers=bearer).status_code,
                introspected.status_code,
                introspected.json().get("active"),
            )

        assert answers() == (503, 503, 503, None)  # no surface vouches for a token while revocations may be missing
        follower.step()  # caught up
        assert answers() == (200, 200, 200, True)
    follower.close()
    service.close()


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


def test_low_13_events_out_is_created_private(tmp_path: Path) -> None:
    events_out = tmp_path / "new" / "deeper" / "events.jsonl"
    umask = os.umask(0o022)  # the usual umask: what the file and directories got before
    try:
        service = ValidatorService(
            ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=Issuer.create().jwks()),
            data_dir=tmp_path / "data",
            events_out=events_out,
        )
        service.close()
    finally:
        os.umask(umask)
    assert stat.S_IMODE(events_out.stat().st_mode) == 0o600  # subjects, addresses and clients of every call
    assert stat.S_IMODE(events_out.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(events_out.parent.parent.stat().st_mode) == 0o700


def test_low_13_repeated_authorization_headers_are_refused(tmp_path: Path) -> None:
    from pipeline.validation.app import create_validator_app
    from pipeline.validation.middleware import TokenValidationMiddleware

    issuer = Issuer.create()
    service = ValidatorService(
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()), data_dir=tmp_path, admin_token=_ADMIN
    )
    api = FastAPI()

    @api.get("/orders")
    def orders(request: Request) -> dict[str, str]:
        return {"owner": request.state.token_claims["sub"]}

    api.add_middleware(TokenValidationMiddleware, service=service)
    good, other = f"Bearer {issuer.token()}", f"Bearer {issuer.token(sub='mallory')}"
    with (
        serve_app(create_validator_app(service)) as fast,
        serve_app(create_validator_app(service, fast_path=False)) as routed,
        serve_app(api) as api_url,
    ):
        for url in (f"{fast}/v1/validate", f"{routed}/v1/validate", f"{api_url}/orders"):
            assert httpx.get(url, headers={"Authorization": good}).status_code == 200
            for pair in ([good, other], [good, "Bearer x.y.z"], ["Bearer x.y.z", good], [good, good]):
                response = httpx.get(url, headers=[("Authorization", value) for value in pair])
                assert response.status_code == 401, (url, pair)
                assert "x-auth-subject" not in response.headers and "owner" not in response.text
        token = {"token": issuer.token()}
        for admin in ([f"Bearer {_ADMIN}", "Bearer x"], ["Bearer x", f"Bearer {_ADMIN}"]):
            response = httpx.post(f"{fast}/v1/introspect", data=token, headers=[("Authorization", a) for a in admin])
            assert response.status_code == 401, admin
    service.close()


# ---------------------------------------------------------------------------------------------------------------
# Also: SSRF classifier (IPv4-compatible IPv6, 64:ff9b:1::/48)
# ---------------------------------------------------------------------------------------------------------------
