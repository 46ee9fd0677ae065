"""Revocations written to the shared store by other processes (``--workers``), applied here too."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.revocations.store import RevocationStore
from pipeline.revocations.store_sync import RevocationStoreSync

ISSUER = "https://issuer.workers.test"


def _revoke(store: RevocationStore, sub: str) -> int:
    return store.revoke(kind="sub", iss=ISSUER, value=sub, reason="test").version or 0


def test_store_sync_reads_what_other_processes_wrote(tmp_path: Path) -> None:
    path = tmp_path / "revocations.sqlite"
    one, two = RevocationStore(path), RevocationStore(path)
    sync = RevocationStoreSync(two)
    assert sync.stale()  # never read yet
    sync.sync()
    assert not sync.stale()
    first = _revoke(one, "alice")
    # ``two`` writes one of its own after ``one``'s: its index version passes ``one``'s row, the cursor does not.
    own = _revoke(two, "bob")
    assert own > first and two.version == own
    assert not two.is_revoked(ISSUER, None, "alice", time.time() - 10)
    assert sync.sync() == 2
    assert two.is_revoked(ISSUER, None, "alice", time.time() - 10)
    assert two.is_revoked(ISSUER, None, "bob", time.time() - 10)
    assert sync.sync() == 0 and sync.cursor == own
    # The same record arriving over the feed at ``two`` is applied, not ignored as "already stored".
    third = one.revoke(kind="jti", iss=ISSUER, value="j-1", reason="test")
    assert two.add(third).version == third.version
    assert two.is_revoked(ISSUER, "j-1", None, None)
    one.close()
    two.close()
