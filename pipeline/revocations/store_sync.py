"""Revocations written to the shared SQLite store by *other* processes, applied here too.

``jwtwatch validator serve --workers N`` runs N processes over one data dir, so one revocation store file.
A revocation made through one worker's admin API is stored (and enforced) by that worker at once; the
others read it here: every ``interval_s`` each worker reads the rows after the last version it has read
(``RevocationStore.since``) and applies them to its in-memory index. Over Kafka each worker also follows
the revocation feed; this is what makes the workers agree without one.

Versions are SQLite ``AUTOINCREMENT`` row ids, and SQLite serialises writers, so a row with a lower
version than one already read was committed before it and has been read too: a cursor on the last version
read misses nothing. (The index's own version is no such cursor: it also moves with this process's writes.)

``stale()`` says the rows have not been read for ``max_age_s`` (a locked or broken store): ``/readyz``
then reports not ready, and ``--fail-closed`` refuses validations, exactly as for a lagging feed.
"""

from __future__ import annotations

import logging
import threading
import time

from pipeline.revocations.store import RevocationStore

log = logging.getLogger(__name__)


class RevocationStoreSync:
    def __init__(self, store: RevocationStore, *, interval_s: float = 0.1, max_age_s: float = 5.0) -> None:
        self.store = store
        self.interval_s = interval_s
        self.max_age_s = max_age_s
        self.cursor = 0  # the last version read from the store by this object
        self.applied = 0
        self.synced_at: float | None = None  # monotonic time of the last complete read
        self._stop = threading.Event()

    def sync(self, batch: int = 1000) -> int:
        """Read and apply every row after the cursor; returns how many were read."""
        read = 0
        while True:
            records, applied = self.store.apply_since(self.cursor, batch)
            if records:
                self.applied += applied
                self.cursor = max(self.cursor, records[-1].version or 0)
                read += len(records)
            if len(records) < batch:
                break
        self.synced_at = time.monotonic()
        return read

    def step(self) -> int:
        """One sync, then wait ``interval_s`` (the body of a :class:`pipeline.loop.BackgroundLoop`)."""
        try:
            return self.sync()
        finally:
            self._stop.wait(self.interval_s)

    def age(self) -> float:
        return float("inf") if self.synced_at is None else time.monotonic() - self.synced_at

    def stale(self) -> bool:
        return self.age() > self.max_age_s

    def describe(self) -> str:
        return f"revocations of the other workers not read for more than {self.max_age_s:.0f} s"

    def close(self) -> None:
        self._stop.set()


__all__ = ["RevocationStoreSync"]
