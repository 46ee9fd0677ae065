"""Revocations: the index every validation consults and the SQLite store that persists it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.events import Revocation, format_ts, parse_ts
from pipeline.revocations.store import RevocationIndex, RevocationStore
from tests.support.jwtkit import ISSUER

T0 = 1_700_000_000.0
DAY = 24 * 3600


def revocation(kind: str = "jti", value: str = "jti-1", **changes: object) -> Revocation:
    fields: dict[str, object] = {
        "revocation_id": str(uuid.uuid4()),
        "kind": kind,
        "iss": ISSUER,
        "value": value,
        "reason": "test",
        "source": "manual",
        "created_at": format_ts(T0),
        "expires_at": format_ts(T0 + DAY),
        "revoked_before": format_ts(T0) if kind == "sub" else None,
    }
    fields.update(changes)
    return Revocation(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- index


def test_index_jti_revocation_is_per_issuer_and_token() -> None:
    index = RevocationIndex()
    assert not index.is_revoked(ISSUER, "jti-1", "user-1", T0)
    index.apply(revocation(value="jti-1"))
    assert index.is_revoked(ISSUER, "jti-1", "user-1", T0)
    assert index.is_revoked(ISSUER, "jti-1", None, None)
    assert not index.is_revoked(ISSUER, "jti-2", "user-1", T0)
    assert not index.is_revoked("https://other.test", "jti-1", "user-1", T0)
    assert not index.is_revoked(None, "jti-1", "user-1", T0)
    assert len(index) == 1


def test_index_sub_revocation_covers_tokens_issued_up_to_revoked_before() -> None:
    index = RevocationIndex()
    index.apply(revocation("sub", "user-1", revoked_before=format_ts(T0)))
    assert index.is_revoked(ISSUER, "any", "user-1", T0 - 3600)
    assert index.is_revoked(ISSUER, "any", "user-1", T0)  # "at or before"
    assert not index.is_revoked(ISSUER, "any", "user-1", T0 + 1)  # a token issued after the revocation is fine
    assert not index.is_revoked(ISSUER, "any", "user-2", T0 - 3600)
    assert index.is_revoked(ISSUER, None, "user-1", None)  # no iat: cannot prove it is newer


def test_index_sub_revocation_only_widens() -> None:
    index = RevocationIndex()
    index.apply(revocation("sub", "user-1", revoked_before=format_ts(T0 + 100)))
    index.apply(revocation("sub", "user-1", revoked_before=format_ts(T0)))  # older, narrower: no effect
    assert index.is_revoked(ISSUER, None, "user-1", T0 + 50)
    index.apply(revocation("sub", "user-1", revoked_before=format_ts(T0 + 200)))
    assert index.is_revoked(ISSUER, None, "user-1", T0 + 150)


def test_index_version_never_goes_back() -> None:
    index = RevocationIndex()
    index.apply(revocation(version=7))
    index.apply(revocation(value="jti-2", version=3))
    index.apply(revocation(value="jti-3"))
    assert index.version == 7


def test_index_purge_drops_only_expired() -> None:
    index = RevocationIndex()
    index.apply(revocation(value="short", expires_at=format_ts(T0 + 60)))
    index.apply(revocation(value="long", expires_at=format_ts(T0 + DAY)))
    index.apply(revocation("sub", "user-1", expires_at=format_ts(T0 + 60)))
    assert sorted(index.purge(T0 + 61)) == [f"jti:{ISSUER}:short", f"sub:{ISSUER}:user-1"]
    assert not index.is_revoked(ISSUER, "short", None, None)
    assert not index.is_revoked(ISSUER, None, "user-1", T0 - 10)
    assert index.is_revoked(ISSUER, "long", None, None)
    assert len(index) == 1


# ------------------------------------------------------------------------------------------- store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RevocationStore]:
    s = RevocationStore(tmp_path / "rev" / "revocations.sqlite")
    yield s
    s.close()


def test_store_revoke_jti_enforces_at_once(store: RevocationStore) -> None:
    record = store.revoke(kind="jti", iss=ISSUER, value="jti-1", reason="stolen", token_exp=T0 + 600, now=T0)
    assert store.is_revoked(ISSUER, "jti-1", "user-1", T0)
    assert not store.is_revoked(ISSUER, "jti-2", "user-1", T0)
    assert record.version == 1 and store.version == 1
    assert record.kind == "jti" and record.source == "manual" and record.revoked_before is None
    assert parse_ts(record.expires_at).timestamp() == T0 + 600 + 30  # token exp + leeway
    assert Revocation.from_json(record.to_json()) == record  # a valid revocation/1 record


def test_store_revoke_sub_with_revoked_before(store: RevocationStore) -> None:
    record = store.revoke(kind="sub", iss=ISSUER, value="user-1", reason="compromised", revoked_before=T0, now=T0 + 5)
    assert parse_ts(record.revoked_before).timestamp() == T0  # type: ignore[arg-type]
    assert store.is_revoked(ISSUER, "old", "user-1", T0 - 60)
    assert store.is_revoked(ISSUER, "same-second", "user-1", T0)
    assert not store.is_revoked(ISSUER, "new", "user-1", T0 + 1)
    assert not store.is_revoked(ISSUER, "other", "user-2", T0 - 60)
    # Expiry: revoked_before + the longest token lifetime + two leeways (a covered token may be stamped one leeway
    # after revoked_before and is accepted one leeway past its exp): after that no covered token lives.
    assert parse_ts(record.expires_at).timestamp() == T0 + DAY + 2 * 30


def test_store_sub_revocation_defaults_to_now(store: RevocationStore) -> None:
    record = store.revoke(kind="sub", iss=ISSUER, value="user-1", reason="r", now=T0)
    assert record.revoked_before == format_ts(T0)
    assert store.is_revoked(ISSUER, None, "user-1", T0) and not store.is_revoked(ISSUER, None, "user-1", T0 + 1)


def test_store_refuses_unknown_kind(store: RevocationStore) -> None:
    with pytest.raises(ValueError, match="kind"):
        store.revoke(kind="client", iss=ISSUER, value="web-app", reason="r")
    assert store.version == 0 and store.since(0) == []


def test_versions_are_monotonic_and_since_returns_later_ones(store: RevocationStore) -> None:
    records = [store.revoke(kind="jti", iss=ISSUER, value=f"jti-{i}", reason="r", now=T0) for i in range(5)]
    versions = [r.version for r in records]
    assert versions == sorted(versions) and len(set(versions)) == 5
    assert store.version == versions[-1]
    assert [r.version for r in store.since(0)] == versions
    assert [r.value for r in store.since(versions[1])] == ["jti-2", "jti-3", "jti-4"]
    assert store.since(versions[-1]) == []
    assert [r.value for r in store.since(0, limit=2)] == ["jti-0", "jti-1"]
    assert store.since(versions[2])[0] == records[3]


def test_add_is_idempotent_on_revocation_id(store: RevocationStore) -> None:
    record = revocation(value="from-the-bus", expires_at=format_ts(time.time() + DAY))
    first = store.add(record)
    again = store.add(record)
    assert first.version == again.version == store.version == 1
    assert len(store.since(0)) == 1
    assert store.is_revoked(ISSUER, "from-the-bus", None, None)
    different = store.add(replace(record, revocation_id=str(uuid.uuid4())))
    assert different.version == 2


def test_add_ignores_a_version_from_elsewhere(store: RevocationStore) -> None:
    # The store hands out its own versions; a version number on an incoming record does not jump them.
    stored = store.add(revocation(value="x", expires_at=format_ts(time.time() + DAY), version=999))
    assert stored.version == 1
    assert store.since(0)[0].version == 1


def test_store_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "revocations.sqlite"
    now = time.time()
    first = RevocationStore(path)
    first.revoke(kind="jti", iss=ISSUER, value="jti-1", reason="r", token_exp=now + 600, now=now)
    first.revoke(kind="sub", iss=ISSUER, value="user-1", reason="r", revoked_before=now - 60, now=now)
    version = first.version
    first.close()

    reopened = RevocationStore(path)
    try:
        assert reopened.version == version == 2
        assert reopened.is_revoked(ISSUER, "jti-1", None, None)
        assert reopened.is_revoked(ISSUER, "other", "user-1", now - 120)
        assert not reopened.is_revoked(ISSUER, "other", "user-1", now)
        assert [r.value for r in reopened.since(0)] == ["jti-1", "user-1"]
        assert reopened.revoke(kind="jti", iss=ISSUER, value="jti-2", reason="r").version == 3
    finally:
        reopened.close()


def test_reopen_does_not_load_expired_entries(tmp_path: Path) -> None:
    path = tmp_path / "revocations.sqlite"
    now = time.time()
    first = RevocationStore(path)
    first.revoke(kind="jti", iss=ISSUER, value="long-gone", reason="r", token_exp=now - 3600, now=now - 7200)
    first.close()
    reopened = RevocationStore(path)
    try:
        assert not reopened.is_revoked(ISSUER, "long-gone", None, None)
        assert reopened.version == 1
    finally:
        reopened.close()


def test_purge_drops_expired_but_keeps_the_max_version(tmp_path: Path) -> None:
    path = tmp_path / "revocations.sqlite"
    store = RevocationStore(path)
    store.revoke(kind="jti", iss=ISSUER, value="a", reason="r", token_exp=T0 + 60, leeway_s=0, now=T0)
    store.revoke(kind="jti", iss=ISSUER, value="live", reason="r", token_exp=T0 + DAY, leeway_s=0, now=T0)
    store.revoke(kind="jti", iss=ISSUER, value="c", reason="r", token_exp=T0 + 60, leeway_s=0, now=T0)
    assert len(store.purge(now=T0 + 61)) == 2
    assert not store.is_revoked(ISSUER, "a", None, None)
    assert store.is_revoked(ISSUER, "live", None, None)
    # The expired newest row stays in the table so that the version survives a restart.
    assert [r.value for r in store.since(0)] == ["live", "c"]
    assert store.version == 3
    store.close()
    reopened = RevocationStore(path)
    try:
        assert reopened.version == 3
        assert reopened.revoke(kind="jti", iss=ISSUER, value="d", reason="r").version == 4
    finally:
        reopened.close()


@pytest.mark.parametrize(
    ("iat", "leeway_s", "revoked"),
    [
        (T0 - 3600, 30, True),  # issued well before
        (T0, 30, True),  # issued at revoked_before
        (T0 + 30, 30, True),  # stamped one whole leeway later: its issuer's clock may run 30 s fast
        (T0 + 30.001, 30, False),  # beyond the leeway: certainly issued after the revocation
        (T0 + 3600, 30, False),
        (T0, 0, True),  # no leeway: the exact comparison
        (T0 + 0.001, 0, False),
        (None, 30, True),  # no iat at all: covered (a subject revocation never lets an undated token through)
    ],
)
def test_subject_revocation_covers_iat_within_the_leeway(iat: float | None, leeway_s: int, revoked: bool) -> None:
    index = RevocationIndex()
    index.apply(revocation(kind="sub", value="alice", revoked_before=format_ts(T0)))
    assert index.is_revoked(ISSUER, None, "alice", iat, leeway_s) is revoked
    assert not index.is_revoked(ISSUER, None, "bob", iat, leeway_s)
