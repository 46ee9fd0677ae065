"""Properties of the revocation feed: arbitrary, forged or malformed messages are refused (FeedError), never crash.

Even a message signed with the feed's own key but carrying malformed claims (a buggy or older publisher)
must be a FeedError: anything else stops the follower on that message, so the validator never catches up.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.bus import DEAD_LETTER, REVOCATIONS
from pipeline.bus.memory import MemoryBus
from pipeline.errors import FeedError
from pipeline.events import Revocation
from pipeline.keys import KeyStore
from pipeline.revocations.feed import AUDIENCE, SESSION_REVOKED, SET_TYPE, FeedSigner, FeedVerifier
from pipeline.revocations.follower import RevocationFollower
from pipeline.revocations.store import RevocationStore
from tests.support.jwtkit import b64json, b64url

PROPERTY = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)

RECORD = Revocation(
    revocation_id="rev-1",
    kind="jti",
    iss="https://issuer.example",
    value="token-1",
    reason="stolen",
    source="manual",
    created_at="2026-01-01T00:00:00.000Z",
    expires_at="2099-01-01T00:00:00.000Z",
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    return KeyStore.init(tmp_path_factory.mktemp("feed-keys"), alg="ES256", issuer="urn:jwtwatch")


@pytest.fixture(scope="module")
def attacker(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    return KeyStore.init(tmp_path_factory.mktemp("attacker-keys"), alg="ES256", issuer="urn:jwtwatch")


@pytest.fixture(scope="module")
def good(store: KeyStore) -> bytes:
    return FeedSigner(store).sign(RECORD)


def verify_or_refuse(verifier: FeedVerifier, raw: bytes) -> Revocation | None:
    try:
        return verifier.verify(raw)
    except FeedError:
        return None


# ------------------------------------------------------------------------------- unsigned and forged


@PROPERTY
@given(raw=st.binary(max_size=600) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
@example(raw=b"")
@example(raw=b"..")
@example(raw=b"\xff.\xfe.\xfd")
def test_arbitrary_bytes_are_refused(store: KeyStore, raw: bytes) -> None:
    assert verify_or_refuse(FeedVerifier.from_store(store), raw) is None


HEADERS = {
    "alg": st.sampled_from(["ES256", "EdDSA", "RS256", "HS256", "none", "ES384"]) | JSON,
    "typ": st.sampled_from([SET_TYPE, f"application/{SET_TYPE}", "JWT", "SECEVENT+JWT"]) | JSON,
    "kid": st.text(max_size=10) | JSON,
    "crit": JSON,
    "jku": st.just("https://attacker.example/jwks"),
    "jwk": JSON,
}


@st.composite
def forged_messages(draw: st.DrawFn, good: bytes) -> bytes:
    """A JWS-shaped message with hostile headers/claims and a garbage signature, or a mangled good message."""
    if draw(st.booleans()):
        header = draw(st.fixed_dictionaries({}, optional=HEADERS))
        claims = draw(st.dictionaries(st.text(max_size=10), JSON, max_size=5))
        return f"{b64json(header)}.{b64json(claims)}.{b64url(draw(st.binary(max_size=80)))}".encode()
    raw = bytearray(good)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] = draw(st.sampled_from(b"ABCabc012-_.=\x00\xff"))
    return bytes(raw)


@PROPERTY
@given(data=st.data())
def test_forged_and_mangled_messages_are_refused(store: KeyStore, good: bytes, data: st.DataObject) -> None:
    raw = data.draw(forged_messages(good))
    verifier = FeedVerifier.from_store(store)
    result = verify_or_refuse(verifier, raw)
    assert result is None or (raw == good and result == RECORD)


@PROPERTY
@given(claims=st.dictionaries(st.sampled_from(["iss", "aud", "iat", "jti", "events", "extra"]), JSON, max_size=4))
def test_messages_signed_by_another_key_are_refused(attacker: KeyStore, store: KeyStore, claims: dict) -> None:
    forged = FeedSigner(attacker).sign(RECORD)
    assert verify_or_refuse(FeedVerifier.from_store(store), forged) is None
    try:
        raw = attacker.sign({"iss": "urn:jwtwatch", "aud": AUDIENCE, **claims}, {"typ": SET_TYPE}).encode()
    except TypeError:
        return  # PyJWT refuses to sign some claims (a non-string iss): nothing to forge
    assert verify_or_refuse(FeedVerifier.from_store(store), raw) is None


# ------------------------------------------------- signed with the right key, malformed inside


def good_claims(store: KeyStore, good: bytes) -> dict[str, Any]:
    payload = good.split(b".")[1]
    return orjson.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))


@st.composite
def malformed_claims(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    claims = orjson.loads(orjson.dumps(base))
    paths = [
        ("events",),
        ("events", SESSION_REVOKED),
        ("events", SESSION_REVOKED, "subject"),
        ("events", SESSION_REVOKED, "subject", "format"),
        ("events", SESSION_REVOKED, "subject", "jti"),
        ("jwtwatch_revocation",),
        ("jwtwatch_revocation", "kind"),
        ("jwtwatch_revocation", "value"),
        ("jwtwatch_version",),
        ("jti",),
        ("iat",),
    ]
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True)):
        target = claims
        for name in path[:-1]:
            target = target.get(name) if isinstance(target, dict) else None
        if isinstance(target, dict):
            if draw(st.booleans()):
                target[path[-1]] = draw(JSON)
            else:
                target.pop(path[-1], None)
    return claims


@PROPERTY
@given(data=st.data())
@example(data=None)  # filled in below: the subject as a string
def test_signed_but_malformed_messages_are_refused_not_crashes(
    store: KeyStore, good: bytes, data: st.DataObject | None
) -> None:
    base = good_claims(store, good)
    if data is None:
        claims = orjson.loads(orjson.dumps(base))
        claims["events"][SESSION_REVOKED]["subject"] = "token-1"
    else:
        claims = data.draw(malformed_claims(base))
    raw = store.sign(claims, {"typ": SET_TYPE}).encode()
    result = verify_or_refuse(FeedVerifier.from_store(store), raw)
    if result is not None:  # only if every check still holds
        assert result == RECORD


def test_control_the_good_message_verifies_once_and_its_replay_is_refused(store: KeyStore, good: bytes) -> None:
    verifier = FeedVerifier.from_store(store)
    assert verifier.verify(good) == RECORD
    assert verifier.verify(good) == RECORD  # the same message again (at-least-once) is fine
    later = Revocation.from_dict(RECORD.to_dict() | {"revocation_id": "rev-2"})  # same token, a newer revocation
    assert verifier.verify(FeedSigner(store).sign(later)) == later
    with pytest.raises(FeedError, match="replayed"):
        verifier.verify(good)


def test_follower_dead_letters_a_signed_malformed_message_and_goes_on(
    store: KeyStore, good: bytes, tmp_path: Path
) -> None:
    claims = good_claims(store, good)
    claims["events"][SESSION_REVOKED]["subject"] = "token-1"
    bad = store.sign(claims, {"typ": SET_TYPE}).encode()
    bus = MemoryBus()
    revocations = RevocationStore(tmp_path / "revocations.sqlite")
    follower = RevocationFollower(bus, revocations, verifier=FeedVerifier.from_store(store))
    try:
        bus.publish(REVOCATIONS, RECORD.bus_key, bad)
        bus.publish(REVOCATIONS, RECORD.bus_key, FeedSigner(store).sign(RECORD))
        while follower.step():
            pass
        assert (follower.applied, follower.rejected) == (1, 1)
        assert follower.caught_up
        with bus.consumer([DEAD_LETTER], "check") as letters:
            [letter] = letters.poll(timeout_s=1)
        assert base64.b64decode(orjson.loads(letter.value)["original"]) == bad
    finally:
        follower.close()
        revocations.close()
