"""Properties of the validator: no input makes it raise, no mutation of a good token passes, HTTP never 500s."""

from __future__ import annotations

import base64
import functools
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.bus import TOKEN_USAGE
from pipeline.bus.memory import MemoryBus
from pipeline.events import REASONS, TokenUsage
from pipeline.validation import TokenValidator, ValidatorConfig
from pipeline.validation.app import create_validator_app
from pipeline.validation.service import RequestContext, ValidatorService
from pipeline.validation.usage import TRUNCATED, usage_event
from pipeline.validation.verifier import Verdict
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer, b64json, b64url, raw_token, standard_claims
from tests.support.servers import serve_app

ISSUER_KEYS = Issuer.create()
CONFIG = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=ISSUER_KEYS.jwks())
VALIDATOR = TokenValidator(CONFIG)
# Good tokens living as long as the validator allows (1 h), one per algorithm, signed once for the whole module.
GOOD = {alg: ISSUER_KEYS.token(alg, ttl=CONFIG.max_token_lifetime_s) for alg in ("RS256", "ES256", "EdDSA")}

PROPERTY = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def assert_rejected(verdict: Any) -> None:
    assert verdict.ok is False
    assert verdict.reason in REASONS
    assert verdict.claims is None


# ------------------------------------------------------------------------------------- in process


@PROPERTY
@given(st.binary(max_size=2048) | st.text(max_size=2048) | st.text(alphabet="eyJhbGciOi.-_=+/ ", max_size=400))
def test_no_bytes_or_text_make_validate_raise(token: bytes | str) -> None:
    assert_rejected(VALIDATOR.validate(token))


@PROPERTY
@given(
    st.none()
    | st.integers()
    | st.floats()
    | st.lists(st.text(max_size=5), max_size=3)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=3)
)
def test_non_token_objects_are_malformed(token: object) -> None:
    verdict = VALIDATOR.validate(token)
    assert_rejected(verdict)
    assert verdict.reason == "malformed"


@settings(max_examples=50, deadline=None, database=None)
@given(st.integers(CONFIG.max_token_bytes + 1, 4 * CONFIG.max_token_bytes), st.sampled_from("A.é\x00"), st.booleans())
def test_oversized_input_is_too_large_before_parsing(size: int, char: str, as_bytes: bool) -> None:
    # Even a well-formed, correctly signed prefix does not make an oversized token acceptable.
    token = (GOOD["RS256"] + char * size)[:size]
    verdict = VALIDATOR.validate(token.encode("utf-8") if as_bytes else token)
    assert_rejected(verdict)
    assert verdict.reason == "too_large"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
CLAIM_NAMES = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "azp", "scope")
HEADER_VALUES = {
    "alg": st.sampled_from(["RS256", "ES256", "EdDSA", "none", "HS256", "PS256"]) | JSON,
    "typ": st.sampled_from(["at+jwt", "JWT", "application/at+jwt", "secevent+jwt"]) | JSON,
    "kid": st.sampled_from(["rs256-1", "es256-1", "eddsa-1", "nope"]) | JSON,
    "crit": JSON,
    "b64": JSON,
    "cty": JSON,
}


@st.composite
def forged_tokens(draw: st.DrawFn) -> str:
    """Well-shaped JWS with arbitrary headers and claims and a random signature: the prober's input."""
    header = draw(st.fixed_dictionaries({}, optional=HEADER_VALUES))
    claims = standard_claims() | draw(st.dictionaries(st.sampled_from(CLAIM_NAMES), JSON, max_size=4))
    signature = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        return raw_token(header, claims, signature)
    return f"{b64json(header)}.{b64url(draw(st.binary(max_size=200)))}.{b64url(signature)}"


@PROPERTY
@given(forged_tokens())
def test_forged_tokens_are_rejected_with_a_listed_reason(token: str) -> None:
    assert_rejected(VALIDATOR.validate(token))


@st.composite
def mutated_tokens(draw: st.DrawFn) -> tuple[str, str]:
    original = GOOD[draw(st.sampled_from(sorted(GOOD)))]
    raw = bytearray(original.encode())
    kind = draw(st.sampled_from(["flip", "base64-char", "truncate", "duplicate-segment", "insert-dots", "swap"]))
    if kind == "flip":
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] ^= draw(st.integers(1, 255))
    elif kind == "base64-char":
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] = ord(draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")))
    elif kind == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif kind == "duplicate-segment":
        parts = bytes(raw).split(b".")
        i = draw(st.integers(0, 2))
        parts.insert(draw(st.integers(0, 3)), parts[i])
        raw = bytearray(b".".join(parts))
    elif kind == "insert-dots":
        for _ in range(draw(st.integers(1, 3))):
            raw.insert(draw(st.integers(0, len(raw))), ord("."))
    else:
        parts = bytes(raw).split(b".")
        i, j = draw(st.permutations([0, 1, 2]))[:2]
        parts[i], parts[j] = parts[j], parts[i]
        raw = bytearray(b".".join(parts))
    return original, bytes(raw).decode("latin-1")


@PROPERTY
@given(mutated_tokens(), st.booleans())
def test_mutations_of_a_valid_token_are_never_accepted(pair: tuple[str, str], as_bytes: bool) -> None:
    original, mutated = pair
    verdict = VALIDATOR.validate(mutated.encode("latin-1") if as_bytes else mutated)
    if mutated == original:
        assert verdict.ok, verdict.reason
    else:
        assert_rejected(verdict)


def test_good_tokens_pass_as_text_and_bytes() -> None:
    # The control for the mutation property: unchanged tokens are accepted, whatever the algorithm.
    for token in GOOD.values():
        assert VALIDATOR.validate(token).ok
        assert VALIDATOR.validate(token.encode()).ok


# ------------------------------------------------------------------------------------------- HTTP


@dataclass
class Http:
    url: str
    client: httpx.Client
    service: ValidatorService
    bus: MemoryBus


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Http]:
    bus = MemoryBus()
    service = ValidatorService(CONFIG, data_dir=tmp_path_factory.mktemp("data"), bus=bus)
    with serve_app(create_validator_app(service)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield Http(url, client, service, bus)
    service.close()


# What an HTTP/1.1 client may put in a header value (RFC 9110 §5.5): VCHAR, obs-text, inner SP/HTAB.
HEADER_CHARS = st.characters(codec="latin-1", exclude_categories=["Cc"]) | st.sampled_from(["\t", " "])


def _header_text(text: str) -> str:
    return text.strip(" \t")


HEADER_TEXT = st.one_of(
    st.text(HEADER_CHARS, max_size=300),
    st.builds(
        lambda chunk, n: chunk * n, st.text(HEADER_CHARS, min_size=1, max_size=8), st.integers(1, 100 * 1024 // 8)
    ),
    st.sampled_from([GOOD["RS256"] + "\xff", GOOD["ES256"][:-1] + "é", "Bearer", "bearer  ", "Basic Zm9vOmJhcg=="]),
).map(_header_text)


@PROPERTY
@given(st.sampled_from(["Bearer ", "bearer ", "BEARER\t", "", "Basic "]), HEADER_TEXT)
def test_arbitrary_authorization_headers_never_500(http: Http, scheme: str, text: str) -> None:
    value = _header_text(scheme + text)
    response = http.client.get("/v1/validate", headers={"Authorization": value.encode("latin-1")})
    assert response.status_code in {200, 400, 401, 431}, (response.status_code, response.text)
    if response.status_code != 200:
        assert "x-auth-subject" not in response.headers


def test_validator_still_serves_after_hostile_headers(http: Http) -> None:
    hostile = [
        "Bearer " + "\xe9" * 100 * 1024,
        "Bearer " + "A" * 100 * 1024,
        "\xff" * 100 * 1024,
        "Bearer \xa0.\xa0.\xa0",
    ]
    for value in hostile:
        response = http.client.get("/v1/validate", headers={"Authorization": value.encode("latin-1")})
        assert response.status_code in {400, 401, 431}
    for token in GOOD.values():
        response = http.client.get("/v1/validate", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        assert response.headers["x-auth-subject"] == "user-1"


RAW_AUTHORIZATIONS = [
    b"Bearer \xff\xfe\xfd",
    b"Bearer \xc3\x28\xa0\xa1",  # invalid UTF-8 sequences
    b"Bearer \xed\xa0\x80",  # a UTF-8-encoded surrogate
    b"Bearer eyJhbGciOiJSUzI1NiJ9.\x80\x81.\x82",
    b"Bearer " + bytes(range(0x80, 0x100)),
    b"\xff\xff\xff \xfe",
    b"Bearer \x00abc",
    b"Bearer \x7f\x01\x02",
    b"Bearer " + b"\xe9" * 20_000,
]


def _raw_request(url: str, authorization: bytes) -> int:
    host, port = url.removeprefix("http://").split(":")
    request = (
        b"GET /v1/validate HTTP/1.1\r\nHost: " + host.encode() + b"\r\nAuthorization: " + authorization + b"\r\n"
        b"User-Agent: \xff\xfeagent\r\nX-Forwarded-For: \xff, 1.2.3.4\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), answer[:200]
    return int(status_line.split()[1])


@pytest.mark.parametrize("authorization", RAW_AUTHORIZATIONS, ids=range(len(RAW_AUTHORIZATIONS)))
def test_raw_binary_authorization_never_500(http: Http, authorization: bytes) -> None:
    assert _raw_request(http.url, authorization) in {400, 401, 431}
    response = http.client.get("/v1/validate", headers={"Authorization": f"Bearer {GOOD['EdDSA']}"})
    assert response.status_code == 200


# ------------------------------------------------------------- hostile claims on the way to the event


def settle(client: httpx.Client) -> None:
    """One more request: the server's event loop has finished with the previous one (and logged any error).

    Should the previous request have crashed, uvicorn formats the traceback on its own thread; CPython 3.11
    tracebacks call ast.parse, whose recursion-depth check is not thread-safe on the 3.11.7 here ("AST
    constructor recursion depth mismatch") — racing pytest's own failure report it ended the session with
    an INTERNALERROR instead of one clean failure.
    """
    assert client.get("/healthz").status_code == 200


@st.composite
def hostile_claim_tokens(draw: st.DrawFn) -> str:
    """Unsigned/forged tokens whose (unverified) claims end up in the usage event."""
    claims = standard_claims() | draw(st.dictionaries(st.sampled_from(CLAIM_NAMES), JSON, min_size=1, max_size=4))
    header = {"alg": draw(st.sampled_from(["none", "RS256", "HS256"])), "typ": "at+jwt", "kid": "rs256-1"}
    return raw_token(header, claims, draw(st.binary(max_size=64)))


@PROPERTY
@given(hostile_claim_tokens())
@example(raw_token({"alg": "none", "typ": "at+jwt"}, standard_claims(iat=10**30)))
@example(raw_token({"alg": "RS256", "typ": "at+jwt", "kid": "rs256-1"}, standard_claims(exp=1e300), b"x" * 256))
def test_hostile_claims_never_break_the_usage_event(http: Http, token: str) -> None:
    consumer = http.bus.consumer([TOKEN_USAGE], "hostile-claims", from_beginning=False)
    consumer.positions()  # pin the start before checking
    try:
        verdict = http.service.check(token, RequestContext(ip="198.51.100.9", user_agent="prober"))
        assert_rejected(verdict)
        [message] = consumer.poll(timeout_s=1)
        event = TokenUsage.from_json(message.value)
        assert event.outcome == "rejected" and event.reason == verdict.reason and event.ip == "198.51.100.9"
    finally:
        consumer.close()


def test_huge_numeric_claim_over_http_is_401_and_still_an_event(http: Http) -> None:
    # Forged-token probing must stay visible: a hostile iat may not turn into a 500 with no usage event.
    token = raw_token({"alg": "none", "typ": "at+jwt"}, standard_claims(iat=10**30, sub="probe-sub"))
    with http.bus.consumer([TOKEN_USAGE], "huge-iat", from_beginning=False) as consumer:
        consumer.positions()
        response = http.client.get("/v1/validate", headers={"Authorization": f"Bearer {token}"})
        settle(http.client)
        assert response.status_code == 401
        events = [TokenUsage.from_json(m.value) for m in consumer.poll(timeout_s=1)]
    assert [(e.sub, e.reason) for e in events] == [("probe-sub", "alg_not_allowed")]


# -------------------------------------------------- text that is not Unicode, on the way to the event (issue 14)

#: Text a usage event may be handed: lone surrogates, NUL and control characters, format characters, up to 1 MiB.
ODD_TEXT = st.one_of(
    st.text(st.characters(categories=["Cs", "Cc", "Cf", "Zl"]) | st.characters(), max_size=50),
    st.builds(
        lambda chunk, n: chunk * n, st.sampled_from(["x", "\ud800", "\x00", "\u00e9"]), st.integers(1000, 1 << 20)
    ),
)
#: Any claim value a JSON payload can hold — nested deep, numbers past int64 and float range included.
ODD_CLAIM = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**40), 10**40) | st.floats() | ODD_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ODD_TEXT, inner, max_size=3),
    max_leaves=6,
) | st.integers(1, 900).map(lambda depth: functools.reduce(lambda inner, _: [inner], range(depth), []))
EVENT_TEXT_FIELDS = ("jti", "sub", "iss", "aud", "client_id", "user_agent", "service", "method", "path")


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.data_too_large])
@given(
    claims=st.dictionaries(st.sampled_from(CLAIM_NAMES), ODD_CLAIM, max_size=len(CLAIM_NAMES)),
    context=st.fixed_dictionaries({}, optional=dict.fromkeys(("user_agent", "service", "method", "path"), ODD_TEXT)),
    accepted=st.booleans(),
)
def test_a_usage_event_is_made_safe_where_it_is_built(claims: dict, context: dict, accepted: bool) -> None:
    verdict = Verdict(True, None, claims) if accepted else Verdict(False, "bad_signature", None, claims)
    event = usage_event(verdict, now=1_800_000_000, ip="198.51.100.7", **context)
    assert TokenUsage.from_json(event.to_json()) == event  # always encodes, and parses back the same
    for name in EVENT_TEXT_FIELDS:
        text = getattr(event, name)
        if text is None:
            continue
        assert len(text) <= 1024
        assert not any("\ud800" <= ch <= "\udfff" for ch in text)  # every lone surrogate replaced (by U+FFFD)
        source = context.get(name, claims.get(name) if name != "client_id" else claims.get(name) or claims.get("azp"))
        if isinstance(source, str) and len(source) <= 1024 and source.encode("utf-8", "surrogatepass").isascii():
            assert text == source  # what needed no repair is kept exactly, NUL and control characters included
        if isinstance(source, str) and len(source) > 1024:
            assert text.endswith(TRUNCATED)  # a cut value says so


def test_a_lone_surrogate_becomes_a_replacement_character_and_long_text_is_marked() -> None:
    deep = functools.reduce(lambda inner, _: [inner], range(900), [])
    claims = {"sub": "a\ud800b", "jti": "x" * 5000, "client_id": {"id": "\udfff"}, "iss": 10**30, "aud": [deep, 1]}
    event = usage_event(Verdict(False, "bad_signature", None, claims), now=1_800_000_000, ip="198.51.100.7")
    assert event.sub == "a\ufffdb"
    assert event.jti == "x" * (1024 - len(TRUNCATED)) + TRUNCATED
    # A non-string is shown as a bounded repr: escaped, and cut short however deep it goes.
    assert (event.client_id, event.iss, event.aud) == ("{'id': '\\udfff'}", str(10**30), "[[[[...]]]] 1")


def _record_an_unencodable_event(service: ValidatorService) -> None:
    """Good, bad, good. The bad one's client address holds a lone surrogate: only a caller that bypasses
    ``usage_event``'s repairs can do that, so it stands for any record that cannot be encoded."""
    for ip in ("198.51.100.1", "198.51.100.\ud800", "198.51.100.3"):
        service.record(Verdict(False, "bad_signature", None, {"sub": "prober"}), RequestContext(ip=ip), 1.8e9)


@pytest.mark.parametrize("background", [True, False], ids=["batched", "on the request path"])
def test_an_event_that_cannot_be_encoded_is_dead_lettered_alone(tmp_path, background: bool) -> None:  # type: ignore[no-untyped-def]
    from pipeline.bus import DEAD_LETTER

    bus = MemoryBus()
    events_out = tmp_path / "events.jsonl"
    service = ValidatorService(CONFIG, data_dir=tmp_path, bus=bus, events_out=events_out, background=background)
    dead = bus.consumer([DEAD_LETTER], "dead", from_beginning=True)
    _record_an_unencodable_event(service)
    service.close()  # flushes a background emitter
    written = [TokenUsage.from_json(line).ip for line in events_out.read_bytes().splitlines()]
    assert written == ["198.51.100.1", "198.51.100.3"]  # the batch around it survived
    on_bus = [TokenUsage.from_json(m.value).ip for m in bus.consumer([TOKEN_USAGE], "u", from_beginning=True).poll()]
    assert on_bus == ["198.51.100.1", "198.51.100.3"]
    [letter] = [orjson.loads(m.value) for m in dead.poll(timeout_s=1)]
    assert (letter["topic"], letter["partition"], letter["offset"]) == (TOKEN_USAGE, -1, -1)  # never on the topic
    assert base64.b64decode(letter["key"]) == b"198.51.100.\\ud800"  # its bus key (no jti: the address), escaped
    assert letter["consumer"] == "validator-usage-events" and "surrogates" in letter["error"]
    original = json.loads(base64.b64decode(letter["original"]))  # kept whole: JSON, the surrogate escaped
    assert original["ip"] == "198.51.100.\ud800" and original["sub"] == "prober"
    assert service.emitter.dead_lettered == 1
    assert service.metrics.usage_dead_lettered._value.get() == 1


def test_without_a_bus_an_unencodable_event_is_counted_and_logged(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    events_out = tmp_path / "events.jsonl"
    service = ValidatorService(CONFIG, data_dir=tmp_path, events_out=events_out)
    with caplog.at_level("WARNING", logger="pipeline.validation.usage"):
        _record_an_unencodable_event(service)
    service.close()
    assert len(events_out.read_bytes().splitlines()) == 2
    assert service.emitter.dead_lettered == 1
    assert any("1 dead-lettered" in record.getMessage() for record in caplog.records)
