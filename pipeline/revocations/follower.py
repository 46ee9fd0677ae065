"""Following the revocation feed: every validator applies every revocation published on the bus.

Each validator instance reads ``jwtwatch.revocations`` from the beginning in a consumer group of its
own (so every instance sees every record) and applies them to its revocation store — idempotent on
``revocation_id``, so a replayed feed changes nothing. ``caught_up`` says whether it has read up to
the end offsets it last saw: ``/readyz`` reports not-ready until then. Unparseable records go to the
dead-letter topic and change nothing; with a :class:`FeedVerifier`, so do unsigned, forged and replayed
ones — in general every record that fails for a reason of its own, whatever the exception (the rule of
``pipeline.bus.dead_letter``). If the store cannot take a revocation (disk full, database locked), nothing
is committed and the follower rewinds to that record: no revocation after it is skipped.
"""

from __future__ import annotations

import time
import uuid

from pipeline.bus import REVOCATIONS, Bus, Message
from pipeline.bus.checkpoint import CheckpointLoop
from pipeline.errors import RevocationStoreError
from pipeline.events import Revocation
from pipeline.revocations.feed import FeedVerifier
from pipeline.revocations.store import RevocationStore


class RevocationFollower:
    def __init__(
        self,
        bus: Bus,
        store: RevocationStore,
        *,
        verifier: FeedVerifier | None = None,
        group: str | None = None,
        poll_timeout_s: float = 0.05,
    ):
        self.bus = bus
        self._applier = _Applier(store)
        # With a verifier (always, over Kafka) only signed revocations count; without one (the in-process
        # bus of tests) plain revocation/1 records are read.
        self.verifier = verifier
        consumer = bus.consumer([REVOCATIONS], group or f"jwtwatch-validator-{uuid.uuid4()}", from_beginning=True)
        # Applied as read (a revocation is in force once stored); a checkpoint after every poll.
        self.loop = CheckpointLoop(
            bus,
            consumer,
            decode=self._read,
            sink=self._applier,
            name="validator",
            max_records=1000,
            poll_timeout_s=poll_timeout_s,
            store_errors=(RevocationStoreError,),
            compacted=frozenset({REVOCATIONS}),
            error_prefix="revocation feed: ",
        )
        self.consumer = consumer
        self.caught_up = False
        self.lag_messages = 0
        self.caught_up_at: float | None = None  # monotonic time the feed was last fully read

    @property
    def store(self) -> RevocationStore:
        return self._applier.store

    @store.setter
    def store(self, store: RevocationStore) -> None:
        self._applier.store = store

    def _read(self, message: Message) -> Revocation:
        return self.verifier.verify(message.value) if self.verifier else Revocation.from_json(message.value)

    @property
    def applied(self) -> int:
        return self.loop.handled

    @property
    def rejected(self) -> int:
        return self.loop.dead_letters

    @property
    def tombstones(self) -> int:
        """Compaction's delete markers read: expired entries, nothing to apply."""
        return self.loop.tombstones

    def step(self) -> int:
        read = self.loop.step()
        lag = self.loop.lag()
        self.lag_messages = max(0, lag)
        # No partition assigned (yet) is not "caught up": it would call an empty feed complete.
        self.caught_up = lag == 0
        if self.caught_up:
            self.caught_up_at = time.monotonic()
        return read

    def lag_seconds(self) -> float:
        """How long since the feed was last fully read (infinite before the first time)."""
        return float("inf") if self.caught_up_at is None else time.monotonic() - self.caught_up_at

    def close(self) -> None:
        self.consumer.close()


class _Applier:
    """The follower's sink: each revocation goes into the store as it is read (the store is the durable part)."""

    def __init__(self, store: RevocationStore) -> None:
        self.store = store

    def add(self, record: Revocation, message: Message) -> None:
        self.store.add(record)

    def flush(self) -> None:
        pass
