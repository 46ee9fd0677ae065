"""Every validator follows the revocation feed on the bus: revocations apply once, garbage changes nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipeline.bus import DEAD_LETTER, REVOCATIONS
from pipeline.bus.memory import MemoryBus
from pipeline.errors import RevocationStoreError
from pipeline.revocations.follower import RevocationFollower
from pipeline.revocations.store import RevocationStore, new_revocation


def test_two_validators_both_enforce_a_published_revocation(tmp_path: Path) -> None:
    bus = MemoryBus()
    stores = [RevocationStore(tmp_path / f"v{i}.sqlite") for i in range(2)]
    followers = [RevocationFollower(bus, store) for store in stores]
    record = new_revocation(kind="jti", iss="https://iss", value="tok-1", reason="test", source="auto")
    bus.publish(REVOCATIONS, record.bus_key, record.to_json())
    bus.publish(REVOCATIONS, record.bus_key, record.to_json())  # a replayed message changes nothing
    for follower in followers:
        follower.step()
        assert follower.caught_up
    for store in stores:
        assert store.is_revoked("https://iss", "tok-1", None, None)
        assert store.version == 1


def test_garbage_on_the_feed_is_dead_lettered_and_changes_nothing(tmp_path: Path) -> None:
    bus = MemoryBus()
    store = RevocationStore(tmp_path / "v.sqlite")
    follower = RevocationFollower(bus, store)
    bus.publish(REVOCATIONS, "x", b"{not json")
    bus.publish(REVOCATIONS, "y", b'{"schema": "revocation/1", "kind": "jti"}')
    follower.step()
    assert follower.rejected == 2 and store.version == 0
    letters = bus.consumer([DEAD_LETTER], "check").poll(10, 0.1)
    assert len(letters) == 2


def test_a_poison_record_does_not_skip_the_revocations_after_it(tmp_path: Path) -> None:
    """A record that made parsing raise something else than RecordError (RecursionError here) used to end the
    step: the revocations after it in the same poll were never applied, and the next commit skipped them."""
    bus = MemoryBus()
    store = RevocationStore(tmp_path / "v.sqlite")
    follower = RevocationFollower(bus, store)
    records = [new_revocation(kind="jti", iss="https://iss", value=f"tok-{i}", reason="test") for i in range(3)]
    bus.publish(REVOCATIONS, records[0].bus_key, records[0].to_json())
    bus.publish(REVOCATIONS, "deep", b"[" * 1000 + b"]" * 1000)
    bus.publish(REVOCATIONS, "deep-object", b'{"a":' * 1000 + b"1" + b"}" * 1000)
    for record in records[1:]:
        bus.publish(REVOCATIONS, record.bus_key, record.to_json())
    follower.step()
    assert all(store.is_revoked("https://iss", f"tok-{i}", None, None) for i in range(3))
    assert (follower.applied, follower.rejected) == (3, 2) and follower.caught_up
    assert len(bus.consumer([DEAD_LETTER], "check").poll(10, 0.1)) == 2
    store.close()


def test_a_store_that_cannot_write_rewinds_instead_of_dead_lettering(tmp_path: Path) -> None:
    """Infrastructure, not the record: nothing is parked, nothing committed, and it is applied once it can be."""
    bus = MemoryBus()
    store = RevocationStore(tmp_path / "v.sqlite")
    follower = RevocationFollower(bus, store, group="v")
    record = new_revocation(kind="jti", iss="https://iss", value="tok-1", reason="test")
    bus.publish(REVOCATIONS, record.bus_key, record.to_json())
    store.close()  # the store is gone: sqlite3 says "Cannot operate on a closed database"
    with pytest.raises((RevocationStoreError, sqlite3.ProgrammingError)):
        follower.step()
    assert follower.rejected == 0 and bus.consumer([DEAD_LETTER], "check").poll(10, 0.1) == []
    follower.store = reopened = RevocationStore(tmp_path / "v.sqlite")
    follower.step()
    assert reopened.is_revoked("https://iss", "tok-1", None, None) and follower.applied == 1
    reopened.close()


def test_not_caught_up_until_the_feed_is_read(tmp_path: Path) -> None:
    bus = MemoryBus()
    for i in range(1500):
        record = new_revocation(kind="jti", iss="https://iss", value=f"tok-{i}", reason="bulk")
        bus.publish(REVOCATIONS, record.bus_key, record.to_json())
    follower = RevocationFollower(bus, RevocationStore(tmp_path / "v.sqlite"))
    follower.step()  # reads at most 1000
    assert not follower.caught_up
    follower.step()
    assert follower.caught_up and follower.store.version == 1500
