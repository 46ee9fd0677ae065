"""The signed revocation feed: only revocations signed with the feed's keys change anything."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import jwt
import pytest

from pipeline.bus import DEAD_LETTER, REVOCATIONS
from pipeline.bus.memory import MemoryBus
from pipeline.errors import FeedError
from pipeline.events import format_ts
from pipeline.keys import KeyStore
from pipeline.revocations.feed import FeedSigner, FeedVerifier
from pipeline.revocations.follower import RevocationFollower
from pipeline.revocations.store import RevocationStore, new_revocation

ISS = "https://issuer.feed.test"


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore.init(tmp_path / "feed-keys", alg="ES256")


def revocation(value: str = "tok-1", kind: str = "jti"):
    return new_revocation(kind=kind, iss=ISS, value=value, reason="test", source="auto")


def test_a_signed_revocation_verifies_and_is_a_secevent(keys: KeyStore) -> None:
    record = revocation()
    raw = FeedSigner(keys).sign(record)
    header = jwt.get_unverified_header(raw.decode())
    assert header["typ"] == "secevent+jwt"
    claims = jwt.decode(raw.decode(), options={"verify_signature": False})
    event = claims["events"]["https://schemas.openid.net/secevent/caep/event-type/session-revoked"]
    assert event["subject"] == {"format": "jwt_id", "iss": ISS, "jti": "tok-1"}
    assert FeedVerifier.from_store(keys).verify(raw) == record


def test_subject_revocations_use_the_iss_sub_format(keys: KeyStore) -> None:
    record = revocation("alice", kind="sub")
    claims = jwt.decode(FeedSigner(keys).sign(record).decode(), options={"verify_signature": False})
    subject = next(iter(claims["events"].values()))["subject"]
    assert subject == {"format": "iss_sub", "iss": ISS, "sub": "alice"}


def test_forged_unsigned_tampered_and_replayed_messages_are_refused(keys: KeyStore, tmp_path: Path) -> None:
    verifier = FeedVerifier.from_store(keys)
    signer = FeedSigner(keys)
    attacker = KeyStore.init(tmp_path / "attacker", alg="ES256")
    with pytest.raises(FeedError, match="key"):
        verifier.verify(FeedSigner(attacker).sign(revocation("tok-2")))  # forged: another key store
    with pytest.raises(FeedError, match="JWS"):
        verifier.verify(revocation("tok-3").to_json())  # unsigned: a plain record
    genuine = signer.sign(revocation("tok-4")).decode()
    head, body, sig = genuine.split(".")
    claims = json.loads(jwt.utils.base64url_decode(body))
    claims["jwtwatch_revocation"]["value"] = "someone-else"
    tampered = f"{head}.{jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()}.{sig}"
    with pytest.raises(FeedError, match="signature"):
        verifier.verify(tampered.encode())
    older = signer.sign(revocation("tok-5"))
    newer = signer.sign(replace(revocation("tok-5"), reason="again"))
    verifier.verify(newer)
    verifier.verify(newer)  # the same message delivered twice is fine (at-least-once)
    with pytest.raises(FeedError, match="replayed"):
        verifier.verify(older)


def test_rotation_of_the_feed_key_is_followed(keys: KeyStore) -> None:
    verifier = FeedVerifier.from_store(keys)
    keys.rotate()
    assert verifier.verify(FeedSigner(keys).sign(revocation("tok-6"))).value == "tok-6"


def test_follower_applies_only_what_verifies(keys: KeyStore, tmp_path: Path) -> None:
    bus = MemoryBus()
    store = RevocationStore(tmp_path / "v.sqlite")
    follower = RevocationFollower(bus, store, verifier=FeedVerifier.from_store(keys))
    attacker = KeyStore.init(tmp_path / "attacker", alg="ES256")
    good = revocation("tok-good")
    bus.publish(REVOCATIONS, good.bus_key, FeedSigner(keys).sign(good))
    for bad in (FeedSigner(attacker).sign(revocation("tok-forged")), revocation("tok-plain").to_json()):
        bus.publish(REVOCATIONS, "k", bad)
    follower.step()
    assert store.is_revoked(ISS, "tok-good", None, None)
    assert not store.is_revoked(ISS, "tok-forged", None, None)
    assert not store.is_revoked(ISS, "tok-plain", None, None)
    assert follower.rejected == 2
    assert len(bus.consumer([DEAD_LETTER], "check").poll(10, 0.1)) == 2


def test_expired_revocations_leave_a_tombstone_that_changes_nothing(keys: KeyStore, tmp_path: Path) -> None:
    from pipeline.validation import ValidatorConfig
    from pipeline.validation.service import RequestContext, ValidatorService
    from tests.support.jwtkit import AUDIENCE, Issuer

    bus = MemoryBus()
    now = [1_790_000_000.0]
    service = ValidatorService(
        ValidatorConfig(issuer=ISS, audience=AUDIENCE, jwks=Issuer.create().jwks()),
        data_dir=tmp_path / "v",
        bus=bus,
        clock=lambda: now[0],
    )
    service.signer = FeedSigner(keys)
    follower = RevocationFollower(bus, service.revocations, verifier=FeedVerifier.from_store(keys))
    short = new_revocation(kind="jti", iss=ISS, value="tok-short", reason="t", token_exp=now[0] + 10, now=now[0])
    long = new_revocation(kind="jti", iss=ISS, value="tok-long", reason="t", now=now[0])
    for record in (short, long):
        bus.publish(REVOCATIONS, record.bus_key, FeedSigner(keys).sign(record))
    follower.step()
    now[0] += 3600  # the short one has expired; the long one (24 h) has not
    service.check("anything", RequestContext(ip="203.0.113.1"))  # validations purge, at most once a minute
    tombstones = [m for m in bus.consumer([REVOCATIONS], "read").poll(100, 0.1) if not m.value]
    assert [m.key for m in tombstones] == [b"jti:" + ISS.encode() + b":tok-short"]
    follower.step()  # a follower reading the tombstone changes nothing and dead-letters nothing
    assert follower.tombstones == 1 and follower.rejected == 0
    assert service.revocations.is_revoked(ISS, "tok-long", None, None)


# --------------------------------------------------------------------------- feed key retention (issue 14, LOW 12)

DAY = 86400


def test_a_feed_key_stays_published_until_every_revocation_it_signed_has_expired(tmp_path: Path) -> None:
    from pipeline.keys import verify_store

    passphrase = "feed test passphrase"
    feed = KeyStore.init(tmp_path / "feed", alg="ES256", passphrase=passphrase)  # tokens: 1 h by default
    first = feed.current().kid
    signer = FeedSigner(feed)
    t = time.time()
    long = new_revocation(kind="sub", iss=ISS, value="alice", reason="stolen", now=t)  # lives 24 h + leeway
    message = signer.sign(long)
    assert feed.retention == 25 * 3600 and signer.retention_failures == 0
    signer.sign(new_revocation(kind="sub", iss=ISS, value="bob", reason="stolen", now=t))
    assert [e["action"] for e in feed.audit_entries()] == ["init", "retain"]  # once per longer lifetime

    feed.rotate(now=t + 60)
    feed.rotate(now=t + 2 * 3600)  # past the 1 h token lifetime: the first key would have been dropped
    assert first in {k["kid"] for k in feed.public_jwks()["keys"]}
    late = FeedVerifier.from_store(KeyStore.open(feed.path))  # a validator that starts now
    assert late.verify(message) == long

    feed.prune(now=t + 60 + 25 * 3600)  # every revocation it signed has expired: now it goes
    assert first not in {k["kid"] for k in feed.public_jwks()["keys"]}
    check = verify_store(feed.path, now=t + 60 + 25 * 3600, passphrase=passphrase)
    assert check.ok, check.problems


def test_a_revocation_reaching_years_ahead_does_not_keep_feed_keys_for_years(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Retention only grows, store-wide: one subject revoked "before" 2096 would have kept every retired feed key
    published and trusted for 75 years. It is capped; that revocation is still signed and enforced."""
    from pipeline.revocations.feed import MAX_RETENTION_S

    feed = KeyStore.init(tmp_path / "feed", alg="ES256", passphrase="feed test passphrase")
    signer = FeedSigner(feed)
    record = replace(revocation("alice", kind="sub"), expires_at=format_ts(4_000_000_000))  # in 2096
    assert FeedVerifier.from_store(feed).verify(signer.sign(record)) == record
    assert feed.retention < MAX_RETENTION_S and signer.retention_failures == 1
    assert "will not verify this revocation" in caplog.text


def test_a_revocation_is_signed_even_when_the_retention_cannot_be_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.keys.audit import chain_line

    feed = KeyStore.init(tmp_path / "feed", alg="ES256", passphrase="feed test passphrase")
    log = feed.path / "audit.log"
    lines = log.read_bytes().splitlines()
    fields = {"ts": "2024-01-01T00:00:00.000Z", "action": "rotate", "kid": "k", "alg": "ES256", "details": {}}
    log.write_bytes(log.read_bytes() + chain_line(2, lines[-1], fields) + b"\n")  # an entry the store won't vouch for
    signer = FeedSigner(feed)
    record = revocation("alice", kind="sub")
    message = signer.sign(record)
    assert FeedVerifier.from_store(feed).verify(message) == record  # published all the same
    assert signer.retention_failures == 1 and feed.retention == 3600
    assert "will not verify this revocation" in caplog.text
