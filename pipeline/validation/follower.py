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

import logging
import time
import uuid

from pipeline.bus import REVOCATIONS, Bus
from pipeline.bus.dead_letter import dead_letter, describe, is_infrastructure_fault, rewind
from pipeline.events import Revocation
from pipeline.validation.revocation_feed import FeedVerifier
from pipeline.validation.revocations import RevocationStore, RevocationStoreError

log = logging.getLogger(__name__)


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
        self.store = store
        # With a verifier (always, over Kafka) only signed revocations count; without one (the in-process
        # bus of tests) plain revocation/1 records are read.
        self.verifier = verifier
        self.consumer = bus.consumer([REVOCATIONS], group or f"jwtwatch-validator-{uuid.uuid4()}", from_beginning=True)
        self.poll_timeout_s = poll_timeout_s
        self.applied = 0
        self.rejected = 0
        self.tombstones = 0
        self.caught_up = False
        self.lag_messages = 0
        self.caught_up_at: float | None = None  # monotonic time the feed was last fully read

    def step(self) -> int:
        messages = self.consumer.poll(1000, self.poll_timeout_s)
        for index, message in enumerate(messages):
            if not message.value:
                self.tombstones += 1  # compaction's delete marker: an expired entry, nothing to apply
                continue
            try:
                record = self.verifier.verify(message.value) if self.verifier else Revocation.from_json(message.value)
                self.store.add(record)
            except Exception as exc:
                if is_infrastructure_fault(exc, RevocationStoreError):
                    # Not stored, so not in force: this record and every one after it come again.
                    rewind(self.consumer, messages[index:])
                    raise
                self.rejected += 1
                error = describe(exc)
                log.warning("revocation feed: unusable record at offset %s: %s", message.offset, error)
                dead_letter(self.bus, message, error, consumer="validator")
                continue
            self.applied += 1
        if messages:
            self.bus.flush()
            self.consumer.commit()
        positions, ends = self.consumer.positions(), self.consumer.end_offsets()
        self.lag_messages = sum(max(0, end - positions.get(tp, 0)) for tp, end in ends.items())
        # No partition assigned (yet) is not "caught up": it would call an empty feed complete.
        self.caught_up = bool(ends) and self.lag_messages == 0
        if self.caught_up:
            self.caught_up_at = time.monotonic()
        return len(messages)

    def lag_seconds(self) -> float:
        """How long since the feed was last fully read (infinite before the first time)."""
        return float("inf") if self.caught_up_at is None else time.monotonic() - self.caught_up_at

    def close(self) -> None:
        self.consumer.close()
