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
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from fastapi import FastAPI, Request  # module level: FastAPI resolves a route's annotations in the module
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from pipeline.events import TokenUsage
from pipeline.revocations.store import RevocationStore
from pipeline.serving.server import MAX_HEADER_BYTES
from pipeline.validation import TokenValidator, ValidatorConfig
from pipeline.validation.service import ValidatorService
from tests.support.jwtkit import AUDIENCE, DROP, ISSUER, Issuer, b64url, standard_claims
from tests.support.paths import DEFAULT_MODEL
from tests.support.ports import free_port
from tests.support.servers import serve_app, stop_process, wait_ready

_ADMIN = "advisories-admin-token-0123456789abcdef"


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


#: What an HTTP/1.1 client may send as a header value (RFC 9110 §5.5: VCHAR, obs-text, inner SP/HTAB), up to what
#: reaches the application: the value is sent twice (User-Agent, X-Forwarded-Uri), and a header block over
#: MAX_HEADER_BYTES is refused by the HTTP server before any validation (a 431 with no event to record; see
#: tests/validation/test_validator_http.py::test_a_header_block_over_the_cap_gets_431_and_the_connection_closes).
_HOSTILE_HEADER_VALUES = (
    st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]) | st.sampled_from(["\t", " "]), max_size=200)
    | st.sampled_from(["\u00ff" * 2000, "A" * (MAX_HEADER_BYTES // 2 - 4096)])
).map(lambda value: value.strip(" \t").encode("latin-1"))


@dataclass
class _Surface:
    name: str
    url: str  # a protected URL: forward-auth's /v1/validate, or an API behind the middleware
    events: Path  # its --events-out
    read: int = 0  # bytes of ``events`` already read

    def skip_leftovers(self, quiet_s: float = 0.3, timeout_s: float = 30) -> None:
        """Pass over what an earlier example left unread (the late event of a failed one, say): once nothing has
        been written for ``quiet_s``, start reading at the end. Costs nothing when all was read."""
        if self.events.stat().st_size == self.read:
            return
        deadline = time.monotonic() + timeout_s
        size, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_size = self.events.stat().st_size
            if now_size != size:
                size, quiet_since = now_size, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s:
                break
            time.sleep(0.05)
        self.read = self.events.read_bytes().rfind(b"\n") + 1

    def new_events(self, count: int, timeout_s: float = 60) -> list[TokenUsage]:
        """The next ``count`` usage events written (or fewer after ``timeout_s``); each must parse as token-usage/1."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.events.open("rb") as file:
                file.seek(self.read)
                data = file.read()
            lines = data[: data.rfind(b"\n") + 1].splitlines(keepends=True)[:count]
            if len(lines) >= count or time.monotonic() > deadline:
                self.read += sum(len(line) for line in lines)
                return [TokenUsage.from_json(line) for line in lines]
            time.sleep(0.02)


@pytest.fixture(scope="module")
def hostile_text_surfaces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Issuer, list[_Surface]]]:
    """The three surfaces, each started once: ``validator serve`` (a process; its events are built and written by a
    background thread), ``serve`` and the FastAPI middleware (in this process; events built on the request path)."""
    from pipeline.nodes import AllInOne, ServeOptions
    from pipeline.validation.middleware import TokenValidationMiddleware

    issuer = Issuer.create()
    tmp = tmp_path_factory.mktemp("hostile-text")
    (tmp / "jwks.json").write_text(json.dumps(issuer.jwks()))
    config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
    port = free_port()
    log = tmp / "validator.log"
    validator = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "validator", "serve", "--issuer", ISSUER, "--audience", AUDIENCE,
         "--jwks-file", str(tmp / "jwks.json"), "--port", str(port), "--data-dir", str(tmp / "validator-data"),
         "--events-out", str(tmp / "validator-events.jsonl")],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    all_in_one = AllInOne(
        ServeOptions(
            config=config, data_dir=tmp / "serve-data", model_dir=DEFAULT_MODEL, events_out=tmp / "serve-events.jsonl"
        )
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
    max_examples=20,
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
    # A header block over MAX_HEADER_BYTES is refused by the HTTP server itself (431) before any validation: such a
    # request never reaches the validator, so it has no event — and a token that large could never be accepted.
    header_block = len(forged) + 2 * len(user_agent)
    assume(abs(header_block - MAX_HEADER_BYTES) > 4096)  # clear of the cap, whatever the other headers add
    reaches_validator = header_block < MAX_HEADER_BYTES
    refused = 401 if len(forged) <= 8192 else 431  # over the token size cap: refused unparsed, as too_large
    for surface in surfaces:
        surface.skip_leftovers()
        valid = [issuer.token("ES256", jti=f"high-1-{uuid.uuid4()}") for _ in range(2)]
        answers = []
        with httpx.Client(timeout=60) as client:
            # Back to back, so that the forged token's event shares a batch with the valid ones around it.
            for token in (valid[0], forged, valid[1]):
                headers = {"Authorization": f"Bearer {token}", "User-Agent": user_agent, "X-Forwarded-Uri": user_agent}
                response = client.get(surface.url, headers=headers)
                answers.append((response.status_code, response.text[:200]))
        assert [status for status, _ in answers] == [200, refused, 200], (surface.name, answers)
        # Every call that reached the validator is recorded: the forged one as rejected, and both accepted calls.
        expected = ["accepted", "rejected", "accepted"] if reaches_validator else ["accepted", "accepted"]
        events = surface.new_events(len(expected))
        assert [event.outcome for event in events] == expected, (surface.name, events)
        assert [event.jti for event in events if event.outcome == "accepted"] == [
            jwt.decode(token, options={"verify_signature": False})["jti"] for token in valid
        ], surface.name


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
    from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer
    from tests.support.servers import serve_app

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


def test_medium_3_slow_jwks_url_never_stalls_validations(tmp_path: Path) -> None:
    """A JWKS server that starts trickling a byte every 0.2 s (inside every per-read timeout), then 61 forged
    unknown-kid tokens: every answer still comes within seconds, a cached valid token gets its 200 at once, and
    /readyz (not /healthz) reports the stuck key source until the server answers again."""
    import asyncio
    import json
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    from pipeline.validation import ValidatorConfig
    from pipeline.validation.app import create_validator_app
    from pipeline.validation.service import ValidatorService
    from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer
    from tests.support.servers import serve_app
    from tests.support.tls import make_tls

    issuer = Issuer.create()
    body = json.dumps(issuer.jwks()).encode()
    slow = threading.Event()

    async def jwks(request: Request) -> Response:
        if not slow.is_set():
            return Response(body, media_type="application/json")

        async def one_byte_at_a_time() -> AsyncIterator[bytes]:
            for byte in body:  # ~1.5 KB at 5 bytes a second: minutes per fetch
                await asyncio.sleep(0.2)
                yield bytes([byte])

        return StreamingResponse(one_byte_at_a_time(), media_type="application/json")

    tls = make_tls(tmp_path)
    jwks_app = Starlette(routes=[Route("/jwks.json", jwks)])
    with serve_app(jwks_app, ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key)) as jwks_url:
        config = ValidatorConfig(
            issuer=ISSUER,
            audience=AUDIENCE,
            jwks_url=f"{jwks_url}/jwks.json",
            jwks_ca_file=tls.ca,
            jwks_timeout_s=2,
            jwks_refresh_s=2,
            jwks_refetch_cooldown_s=0,  # the worst case: every unknown kid may ask for a refetch
            jwks_max_stale_s=2,  # readiness follows a failing key source (opt-in: see UrlKeySource)
        )
        service = ValidatorService(config, data_dir=tmp_path / "data")
        with serve_app(create_validator_app(service)) as url, httpx.Client(base_url=url, timeout=15) as client:
            valid = issuer.token("ES256")
            assert client.get("/v1/validate", headers={"Authorization": f"Bearer {valid}"}).status_code == 200
            assert client.get("/readyz").status_code == 200
            slow.set()
            stranger = Issuer.create()
            forged = [stranger.token("RS256", headers={"kid": f"forged-{i}"}) for i in range(61)]

            # one client for all (it is thread-safe): the time measured is the validator's, not TLS-context set-up
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            attacker = httpx.Client(base_url=url, timeout=15, limits=limits)

            def timed(token: str) -> tuple[int, float]:
                started = time.monotonic()
                try:
                    status = attacker.get("/v1/validate", headers={"Authorization": f"Bearer {token}"})
                    return status.status_code, time.monotonic() - started
                except httpx.TimeoutException:
                    return 0, time.monotonic() - started

            with attacker, ThreadPoolExecutor(max_workers=64) as pool:
                attacks = [pool.submit(timed, token) for token in forged]
                time.sleep(0.5)  # the forged tokens are in flight
                status, waited = timed(valid)
                answers = [attack.result() for attack in attacks]
            assert status == 200 and waited < 5, f"the cached valid token waited {waited:.1f} s"
            assert all(code == 401 for code, _ in answers), sorted({code for code, _ in answers})
            # at most one of them waits for a refetch, and that no longer than its 2 s deadline; before, they all
            # queued behind a fetch that lasted as long as the server kept trickling (minutes)
            assert max(seconds for _, seconds in answers) < 10

            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "JWKS" in ready.json()["detail"]
            assert client.get("/healthz").status_code == 200  # liveness: the process itself is fine
            slow.clear()
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.get("/readyz").status_code == 200
        service.close()


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 4: a signed JWKS could be rolled back to an older, still-unexpired set
# ---------------------------------------------------------------------------------------------------------------


def test_medium_4_signed_jwks_cannot_be_rolled_back(tmp_path: Path) -> None:
    """The URL serves set B (key K2), then the older, still-unexpired set A (key K1) again: A is refused, logged
    and counted — within a running validator, and by `validator serve` restarted on the same data dir."""
    import subprocess
    import sys
    import time

    import httpx
    from prometheus_client import generate_latest
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from pipeline.keys import KeyStore
    from pipeline.keys.signed_jwks import RootKey, sign_jwks
    from pipeline.validation import ValidatorConfig
    from pipeline.validation.key_sources import SignedJwksUrlSource
    from pipeline.validation.service import ValidatorService
    from tests.support.servers import serve_app, stop_process, wait_ready
    from tests.support.tls import make_tls

    iss, aud = "https://issuer.rollback.test", "https://api.rollback.test"
    root = RootKey.init(tmp_path / "root", iss)
    k1, k2 = (KeyStore.init(tmp_path / name, "ES256", issuer=iss) for name in ("k1", "k2"))
    now = time.time()
    set_a = sign_jwks(root, k1.public_jwks(), now=now - 3600).encode()  # older, valid for days still
    set_b = sign_jwks(root, k2.public_jwks(), now=now - 60).encode()
    served = {"body": set_a}

    async def signed(request: Request) -> Response:
        return Response(served["body"], media_type="application/jwk-set+jwt")

    tls = make_tls(tmp_path)
    app = Starlette(routes=[Route("/jwks.jwt", signed)])
    with serve_app(app, ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key)) as base:
        url = f"{base}/jwks.jwt"
        # 1. within one validator
        source = SignedJwksUrlSource(url, ("ES256",), root_jwk=root.public_jwk, issuer=iss, ca_file=tls.ca)
        service = ValidatorService(ValidatorConfig(issuer=iss, audience=aud, jwks=k1.public_jwks()), data_dir=tmp_path)
        service.validator.keys = source
        assert service.validator.validate(k1.issue_token("alice", aud)).ok
        served["body"] = set_b
        source.refresh()
        served["body"] = set_a  # rolled back
        source.refresh()
        assert service.validator.validate(k1.issue_token("alice", aud)).reason == "unknown_kid"
        assert service.validator.validate(k2.issue_token("alice", aud)).ok
        assert 'jwtwatch_jwks_refusals_total{reason="rollback"' in generate_latest(service.registry).decode()
        service.close()

        # 2. across a restart of `validator serve` on the same data dir
        port = free_port()
        command = [sys.executable, "-m", "pipeline.cli", "validator", "serve", "--issuer", iss, "--audience", aud,
                   "--signed-jwks-url", url, "--jwks-root-key", str(root.path / "root.jwk.json"),
                   "--signed-jwks-issuer", iss, "--jwks-ca-file", str(tls.ca), "--host", "127.0.0.1",
                   "--port", str(port), "--data-dir", str(tmp_path / "data")]  # fmt: skip
        validator = f"http://127.0.0.1:{port}"
        served["body"] = set_b
        log = tmp_path / "first.log"
        with log.open("wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_ready(validator, process, log)
            token = k2.issue_token("alice", aud)
            assert (
                httpx.get(f"{validator}/v1/validate", headers={"Authorization": f"Bearer {token}"}).status_code == 200
            )
        finally:
            stop_process(process)

        served["body"] = set_a
        log = tmp_path / "restarted.log"
        with log.open("wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    token = k1.issue_token("alice", aud)
                    answer = httpx.get(f"{validator}/v1/validate", headers={"Authorization": f"Bearer {token}"})
                    assert answer.status_code != 200, "the restarted validator accepted a token of the older set"
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            assert process.poll() not in (None, 0)
            assert "older than the accepted one" in log.read_text()
        finally:
            stop_process(process)


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 5: the key-store audit gate passed with an attacker's key inserted
# ---------------------------------------------------------------------------------------------------------------


def test_medium_5_attacker_key_slipped_into_the_key_directory_fails_the_gate_and_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's attack, with write access to the key directory but not the passphrase: append valid-looking
    retire/rotate entries (the hash chain had no key), rewrite store.json and jwks.json, drop an unencrypted 0600
    PEM. `keys audit --verify` said "intact" and a validator following the directory accepted an attacker-minted
    `sub: admin` token. Now the entries lack a MAC under the passphrase-derived audit key, so the gate fails (with
    and without the passphrase), and a validator pinning the root key trusts only the root-signed jwks.jwt."""
    import json
    import subprocess
    import sys
    import time

    import httpx
    import jwt
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.keys import KeyStore
    from pipeline.keys.audit import chain_line
    from pipeline.keys.signed_jwks import RootKey, publish_signed_jwks
    from tests.support.servers import stop_process, wait_ready

    iss, aud, passphrase = "https://issuer.advisory.test", "https://api.advisory.test", "operator passphrase"
    for name in ("JWTWATCH_KEYS_PASSPHRASE", "JWTWATCH_KEYS_PASSPHRASE_FILE"):
        monkeypatch.delenv(name, raising=False)
    keys = tmp_path / "keys"
    store = KeyStore.init(keys, "ES256", issuer=iss, passphrase=passphrase)
    root = RootKey.init(tmp_path / "root", iss, passphrase=passphrase)  # kept apart from the key directory
    publish_signed_jwks(store, root)
    genuine = store.issue_token("alice", aud)
    runner = CliRunner()
    with_passphrase = {"JWTWATCH_KEYS_PASSPHRASE": passphrase}
    assert runner.invoke(app, ["keys", "audit", "--dir", str(keys), "--verify"], env=with_passphrase).exit_code == 0

    # --- the attacker: their own key, minted elsewhere, then the directory rewritten around it
    theirs = KeyStore.init(tmp_path / "attacker", "ES256", issuer=iss)
    their_entry = json.loads((theirs.path / "store.json").read_bytes())["keys"][0]
    kid = their_entry["kid"]
    meta = json.loads((keys / "store.json").read_bytes())
    old = meta["keys"][0]
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now))
    lines = (keys / "audit.log").read_bytes().splitlines()
    for action, entry_kid, details in (
        ("retire", old["kid"], {"replaced_by": kid}),
        ("rotate", kid, {"previous": old["kid"]}),
    ):
        fields = {"ts": stamp, "action": action, "kid": entry_kid, "alg": "ES256", "details": details}
        lines.append(chain_line(len(lines) + 1, lines[-1], fields))
    (keys / "audit.log").write_bytes(b"\n".join(lines) + b"\n")
    last = json.loads(lines[-1])
    old["retired_at"] = now
    their_entry.update(created_at=now, retired_at=None)
    meta["keys"] = [old, their_entry]
    meta["audit_head"] = {"seq": last["seq"], "hash": last["hash"]}
    (keys / "store.json").write_bytes(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    (keys / "jwks.json").write_text(json.dumps(KeyStore.open(keys, passphrase=passphrase).public_jwks(), indent=2))
    pem = keys / "private" / f"{kid}.pem"
    pem.write_bytes((theirs.path / "private" / f"{kid}.pem").read_bytes())  # unencrypted
    pem.chmod(0o600)
    forged = theirs.issue_token("admin", aud)
    assert jwt.get_unverified_header(forged)["kid"] == kid

    # --- the gate: the forged entries carry no MAC; without the passphrase the log is unauthenticated
    checked = runner.invoke(app, ["keys", "audit", "--dir", str(keys), "--verify"], env=with_passphrase)
    assert checked.exit_code == 1, checked.output
    assert "no MAC" in checked.output and "is not encrypted, but this store's keys are" in checked.output
    for command in (["keys", "audit", "--dir", str(keys), "--verify"], ["keys", "audit", "--dir", str(keys)]):
        blind = runner.invoke(app, command, env={"JWTWATCH_KEYS_PASSPHRASE": ""})  # no passphrase: still refused
        assert blind.exit_code == 1 and "no MAC" in blind.output, blind.output

    # --- a validator following the directory with the root pinned trusts what the root signed, not jwks.json
    port = free_port()
    command = [sys.executable, "-m", "pipeline.cli", "validator", "serve", "--issuer", iss, "--audience", aud,
               "--keys-dir", str(keys), "--jwks-root-key", str(root.path / "root.jwk.json"),
               "--signed-jwks-issuer", iss, "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(tmp_path / "data")]  # fmt: skip
    log = tmp_path / "validator.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, process, log)
        answer = {
            token: httpx.get(f"{base}/v1/validate", headers={"Authorization": f"Bearer {token}"}).status_code
            for token in (genuine, forged)
        }
    finally:
        stop_process(process)
    assert answer == {genuine: 200, forged: 401}, log.read_text()[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 6: one slow webhook receiver delayed alerts to everyone
# ---------------------------------------------------------------------------------------------------------------


def test_medium_6_slow_webhook_receiver_never_delays_other_subscribers(tmp_path: Path) -> None:
    """A receiver trickling its headers a byte a second held a healthy subscriber's token.revoked for 61 s."""
    import time

    from pipeline.alerts import AlertsService, AlertsWorker
    from tests.support.alerts import ADMIN, Receiver, TrickleServer, make_alert, make_revocation, wait_until
    from tests.support.servers import serve_app

    healthy, slow = Receiver(), TrickleServer(interval_s=1.0)
    service = AlertsService(tmp_path, admin_token=ADMIN, timeout_s=4.0)
    worker = AlertsWorker(service, interval_s=0.05)
    try:
        with serve_app(healthy.app()) as base:
            healthy.base = base
            slow_id, _ = service.create_subscription(slow.url, ["token.anomaly"])
            service.create_subscription(healthy.url("ok"), ["token.revoked"])
            worker.start()
            service.accept_alert(make_alert("to-the-slow-one"))
            worker.wake()
            assert wait_until(lambda: slow.bytes_sent >= 1, 5)  # its attempt is under way, trickling
            accepted = time.monotonic()
            service.accept_revocation(make_revocation("rev-urgent"))
            worker.wake()
            assert wait_until(lambda: healthy.at("ok"), 3.0), "the healthy subscriber waited for the slow one"
            assert time.monotonic() - accepted < 3.0
            assert slow.active == 1 and slow.cut_off == 0  # still trickling meanwhile
            # The slow attempt is cut at its total deadline and recorded as a failed attempt, to be retried.
            assert wait_until(lambda: service.list_deliveries(webhook_id=slow_id)[0]["attempts"], 8)
            (delivery,) = service.list_deliveries(webhook_id=slow_id)
            first = delivery["attempts"][0]
            assert first["outcome"] == "retry" and first["status_code"] is None and "deadline" in first["error"]
            assert 3900 <= first["duration_ms"] < 6000
            assert delivery["status"] == "pending" or len(delivery["attempts"]) > 1
    finally:
        slow.close()  # ends a trickle the old code would still be waiting on
        worker.stop()
        service.close()


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


def test_medium_8_poison_record_never_wedges_the_alerts_or_archive_consumer(tmp_path: Path) -> None:
    """An alert/1 with features nested 300 deep made orjson raise TypeError in accept; the consumer caught only
    ValueError, rewound and failed for ever (0 accepted, 0 dead-lettered), revocations included. The archive too."""
    import base64

    import orjson

    from pipeline.alerts import AlertsConsumer, AlertsService
    from pipeline.archive import ArchiveConsumer, ArchiveWriter, read_archive
    from pipeline.bus import ALERTS, DEAD_LETTER, REVOCATIONS
    from pipeline.bus.memory import MemoryBus
    from tests.support.alerts import ADMIN, make_alert, make_revocation

    good = make_alert("poison").to_json()
    assert b'"features":{"distinct_ips":4.0}' in good
    poison = good.replace(b'"features":{"distinct_ips":4.0}', b'"features":' + b'{"d":' * 300 + b"1" + b"}" * 300)
    bus = MemoryBus()
    bus.publish(ALERTS, "a-1", make_alert("a-1").to_json())
    bus.publish(ALERTS, "poison", poison)  # orjson reads 300 levels, but writes no more than 254
    bus.publish(ALERTS, "arrays", b"[" * 1000 + b"]" * 1000)  # from_json raised RecursionError
    bus.publish(ALERTS, "a-2", make_alert("a-2").to_json())
    bus.publish(REVOCATIONS, "rev", make_revocation("rev-after-the-poison").to_json())

    with AlertsService(tmp_path / "alerts", admin_token=ADMIN) as service:
        consumer = AlertsConsumer(bus, service, poll_timeout_s=0.05)
        handled = 0
        while (n := consumer.step()) > 0:  # raised (and rewound) at every step on 1c06c30
            handled += n
        assert handled == 5
        assert (consumer.accepted, consumer.dead_letters) == (3, 2)  # two alerts and the revocation
        assert {a["alert_id"] for a in service.list_alerts()} == {"a-1", "a-2"}
        consumer.close()
        again = AlertsConsumer(bus, service, poll_timeout_s=0.05)  # the offsets were committed past the poison
        assert again.step() == 0
        again.close()

    archive = ArchiveConsumer(bus, ArchiveWriter(tmp_path / "data"), flush_interval_s=0.0)
    while archive.step(0.05) > 0:
        pass
    archive.close()
    assert set(read_archive(tmp_path / "data", "alerts")["alert_id"]) == {"a-1", "a-2"}
    assert archive.dead_letters == 2

    letters = [orjson.loads(m.value) for m in bus.consumer([DEAD_LETTER], "check").poll(100, 0.1)]
    parked = sorted((letter["consumer"], base64.b64decode(letter["key"])) for letter in letters)
    assert parked == [
        (consumer, key) for consumer in ("jwtwatch-alerts", "jwtwatch-archive") for key in (b"arrays", b"poison")
    ]


# ---------------------------------------------------------------------------------------------------------------
# LOW 9: unauthenticated /metrics told an attacker why their token failed
# ---------------------------------------------------------------------------------------------------------------


def test_low_9_the_service_port_never_tells_why_a_token_failed(tmp_path: Path) -> None:
    """Forged tokens (bad signature, unknown kid, wrong audience, revoked) to `validator serve`'s and `serve`'s apps:
    their port has no /metrics (404), the alerts service's neither; the per-reason counters are on the metrics
    listener's app only (``--metrics-port``, loopback by default)."""
    import httpx

    from pipeline.alerts import AlertsService, create_alerts_app
    from pipeline.bus.memory import MemoryBus
    from pipeline.nodes import AllInOne, ServeOptions
    from pipeline.validation import ValidatorConfig
    from pipeline.validation.app import create_validator_app
    from pipeline.validation.service import ValidatorService
    from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer
    from tests.support.servers import serve_app

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
            model_dir=DEFAULT_MODEL,
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
        from pipeline.serving.web import metrics_app

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


def test_low_10_fail_closed_holds_on_every_surface(tmp_path: Path) -> None:
    from pipeline.bus.memory import MemoryBus
    from pipeline.revocations.follower import RevocationFollower
    from pipeline.validation.app import create_validator_app
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


def test_low_11_subject_revocation_honours_the_clock_leeway(tmp_path: Path) -> None:
    """A token whose issuer's clock runs 25 s fast (iat = now + 25, inside the default 30 s leeway) was issued
    before its subject's revocation, so the revocation covers it."""
    issuer = Issuer.create()
    store = RevocationStore(tmp_path / "revocations.sqlite")
    try:
        validator = TokenValidator(
            ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()), revocations=store
        )
        now = int(time.time())
        token = issuer.token("ES256", sub="alice", iat=now + 25)
        assert validator.validate(token).ok
        store.revoke(kind="sub", iss=ISSUER, value="alice", reason="account takeover", now=now)
        assert validator.validate(token).reason == "revoked"
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------------------------
# LOW 12: rotating the feed key lost live revocations for validators that started later
# ---------------------------------------------------------------------------------------------------------------


def test_low_12_a_live_revocation_signed_with_a_since_rotated_feed_key_reaches_a_validator_that_starts_later(
    tmp_path: Path,
) -> None:
    """A 24 h subject revocation signed with the feed key, then two rotations of that key an hour apart: the first
    key was dropped after the store's 1 h token lifetime, and a validator reading the compacted feed from the start
    dead-lettered the revocation. The signer now keeps the key published until its revocations have expired."""
    import time

    from pipeline.bus import REVOCATIONS
    from pipeline.bus.memory import MemoryBus
    from pipeline.keys import KeyStore
    from pipeline.revocations.feed import FeedSigner, FeedVerifier
    from pipeline.revocations.follower import RevocationFollower
    from pipeline.revocations.store import RevocationStore, new_revocation

    iss = "https://issuer.advisory.test"
    keys = KeyStore.init(tmp_path / "feed-keys", alg="ES256", passphrase=None)  # max token lifetime: 1 h
    bus = MemoryBus()
    t = time.time()
    record = new_revocation(kind="sub", iss=iss, value="alice", reason="stolen laptop", now=t)
    bus.publish(REVOCATIONS, record.bus_key, FeedSigner(keys).sign(record))
    keys.rotate(now=t + 60)
    keys.rotate(now=t + 2 * 3600)  # routine rotations; the revocation still has ~22 h to live

    late = RevocationStore(tmp_path / "late-validator.sqlite")
    follower = RevocationFollower(bus, late, verifier=FeedVerifier.from_store(KeyStore.open(keys.path)))
    follower.step()
    assert (follower.applied, follower.rejected) == (1, 0)
    assert late.is_revoked(iss, None, "alice", t - 60)


# ---------------------------------------------------------------------------------------------------------------
# LOW 13: hardening (file modes, admin-token file mode, WAL secrets, PKCS#11 module path, header timeout,
# duplicate Authorization headers)
# ---------------------------------------------------------------------------------------------------------------


def test_low_13_pkcs11_module_reached_through_a_symlink_into_a_writable_directory_is_refused(tmp_path: Path) -> None:
    """The module check looked only at the final file's mode (through the symlink): a link to a module in a directory
    anyone can write passed, and loading a module runs its code. Every directory on the resolved path now counts."""
    import os
    import shutil

    from pipeline.errors import KeyStoreError
    from pipeline.keys import KeyStore
    from tests.support.require import skip_or_fail

    softhsm = "/usr/lib/softhsm/libsofthsm2.so"
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        skip_or_fail("SOFTHSM", "python-pkcs11 is not installed")
    if not os.path.exists(softhsm):
        skip_or_fail("SOFTHSM", f"{softhsm} missing (apt-get install softhsm2)")
    shared = tmp_path / "shared"  # any local user can swap the file in here
    shared.mkdir()
    module = shared / "libsofthsm2.so"
    shutil.copy(os.path.realpath(softhsm), module)
    module.chmod(0o755)  # the file itself looks fine
    shared.chmod(0o777)
    link = tmp_path / "libsofthsm2.so"
    link.symlink_to(module)
    with pytest.raises(KeyStoreError, match=r"directory .*shared is writable by other users \(mode 777\)"):
        KeyStore.init(tmp_path / "k", backend="pkcs11", module=str(link), token_label="jwtwatch", pin="246810")
    assert not (tmp_path / "k").exists()


def test_low_13_a_world_readable_admin_token_file_is_refused(tmp_path: Path) -> None:
    """An admin-token file that other users can read is refused, as passphrase and PIN files are: by the services
    (``validator serve`` here; ``serve`` and ``alerts serve`` read it the same way) and by ``jwtwatch revoke``."""
    import os
    import subprocess
    import sys

    from pipeline.serving.web import read_admin_token

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


def test_low_13_half_sent_requests_are_cut_off(tmp_path: Path) -> None:
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
    from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer
    from tests.support.servers import serve_app

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


def test_low_13_deleted_webhook_secret_is_unrecoverable_from_the_database_files(tmp_path: Path) -> None:
    """A deleted webhook's secret stayed in alerts.sqlite-wal (and the files' mode must be 0600)."""
    from pipeline.alerts import AlertsService

    with AlertsService(tmp_path, admin_token="admin-token-0123456789abcdef") as service:
        webhook_id, secret = service.create_subscription("http://127.0.0.1:9/hook", ["token.anomaly"])
        assert service.delete_subscription(webhook_id)
        for suffix in ("", "-wal", "-shm"):
            path = tmp_path / f"alerts.sqlite{suffix}"
            assert path.stat().st_mode & 0o777 == 0o600, path
            raw = path.read_bytes()
            assert secret.encode() not in raw and secret.removeprefix("whsec_").encode() not in raw, path


def test_low_13_parquet_archive_is_not_world_readable(tmp_path: Path) -> None:
    """The archive (subjects, token ids, addresses, user agents) was created with the umask's modes (0755/0644)."""
    import os

    from pipeline.archive import ArchiveWriter
    from pipeline.simulate import SimulationParams, iter_records, simulate

    records = list(iter_records(simulate(SimulationParams(minutes=2, seed=8, browsers=4, mobile=2))))[:10]
    old = os.umask(0o022)
    try:
        writer = ArchiveWriter(tmp_path)
        writer.add("events", records)
        assert writer.flush() == len(records)
    finally:
        os.umask(old)
    root = tmp_path / "archive"
    for path in [root, *root.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path


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
            lines = [("Authorization", a) for a in admin]
            assert httpx.post(f"{fast}/v1/introspect", data=token, headers=lines).status_code == 401, admin
            assert httpx.get(f"{fast}/v1/revocations", headers=lines).status_code == 401, admin
            revoke = {"kind": "sub", "value": "alice", "reason": "r"}
            assert httpx.post(f"{fast}/v1/revocations", json=revoke, headers=lines).status_code == 401, admin
        assert service.revocations.version == 0
    service.close()


# ---------------------------------------------------------------------------------------------------------------
# Also: SSRF classifier (IPv4-compatible IPv6, 64:ff9b:1::/48)
# ---------------------------------------------------------------------------------------------------------------


def test_also_ssrf_ipv4_compatible_and_local_use_nat64_targets_are_refused(tmp_path: Path) -> None:
    """``https://[::a9fe:a9fe]/`` (::169.254.169.254) and ``64:ff9b:1::/48`` were classed public and accepted."""
    from pipeline.alerts import AlertsService
    from pipeline.errors import TargetError

    with AlertsService(tmp_path, admin_token="admin-token-0123456789abcdef") as service:
        for url in (
            "https://[::a9fe:a9fe]/latest/meta-data/",
            "https://[::169.254.169.254]/",
            "https://[64:ff9b:1::a9fe:a9fe]/latest/meta-data/",
            "https://[64:ff9b:1:a9fe:a9:fe00::]/",  # the /48 layout of RFC 6052: 169.254.169.254 again
        ):
            with pytest.raises(TargetError):
                service.create_subscription(url, ["token.anomaly"])
        assert service.list_subscriptions() == []
