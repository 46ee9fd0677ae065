"""The one consumer loop: poll → decode → handle each record on its own → checkpoint.

Every consumer of jwtwatch (the archive, the revocation and replay followers, the alerts service's consumer, the
verdict readers, the streaming runner) reads the bus the same way, so a bad record means the same thing everywhere:

1. **Poll** a batch.
2. **Decode and hand over** each message on its own: ``sink.add(decode(message), message)``. An exception decides
   (the rule of :mod:`pipeline.bus.dead_letter`): an infrastructure fault rewinds the consumer to *that* message
   (it and every later one come again; the earlier ones were handed over) and is raised; anything else is the
   record's fault — it is parked on the dead-letter topic with its error, counted, and the batch goes on.
   On a compacted topic an empty value is a tombstone (compaction's delete marker): counted and skipped.
3. **Checkpoint**, when due (every poll by default; the archive waits for a size or an interval): flush the sink
   (what it holds becomes durable or applied), then the producer (dead letters and whatever the sink published are
   stored), then commit the offsets. If a flush fails, the consumer rewinds to its last commit — what the sink held
   comes again — and the error is raised; a commit a rebalance got ahead of is counted and logged (the messages
   come again to whoever owns the partitions now: at-least-once, and every sink is idempotent).

This is Quix Streams' checkpoint (sinks, then the producer, then the commit). The streaming runner reads columnar
runs and holds events back for event-time order, so it polls and decodes its own way, but it parks records with
:func:`park` and commits through :func:`checkpoint` like everyone else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Generic, Never, Protocol, TypeVar

from pipeline.bus.base import Bus, Consumer, Message
from pipeline.bus.dead_letter import dead_letter, describe, is_infrastructure_fault, rewind, worth_logging
from pipeline.errors import CommitRejected

log = logging.getLogger(__name__)

R = TypeVar("R")
R_contra = TypeVar("R_contra", contravariant=True)


class Sink(Protocol[R_contra]):
    """Where a consumer's records go. ``add`` may raise: see the module docstring for what an exception means."""

    def add(self, record: R_contra, message: Message) -> None:
        """Take one decoded record (``message`` is where it came from)."""

    def flush(self) -> None:
        """Make everything added so far durable or applied; raise if it cannot (nothing is committed then)."""


def park(
    bus: Bus,
    message: Message,
    exc: BaseException,
    *,
    consumer: str,
    store_errors: tuple[type[BaseException], ...] = (),
    prefix: str = "",
) -> str:
    """The isolation rule for one record whose handling raised ``exc``: re-raise an infrastructure fault (including
    ``store_errors``, a component's own "could not store it"), else dead-letter the message and return the error."""
    if is_infrastructure_fault(exc, *store_errors):
        raise exc
    error = f"{prefix}{describe(exc)}"
    dead_letter(bus, message, error, consumer=consumer)
    return error


def checkpoint(
    bus: Bus,
    consumer: Consumer,
    sinks: Sequence[Sink[Never]] = (),  # sinks of any records: only flushed here
    offsets: dict[tuple[str, int], int] | None = None,
    *,
    rewind_on_failure: bool = True,
) -> bool:
    """Flush the sinks, then the producer, then commit ``offsets`` (default: everything polled).

    A failed flush rewinds ``consumer`` to its last commit (unless ``rewind_on_failure`` is False: the streaming
    runner's windows hold what it read, and re-reading into them would count events twice) and raises. Returns
    False if a rebalance got ahead of the commit (logged; the messages come again), True once committed."""
    try:
        for sink in sinks:
            sink.flush()
        bus.flush()
    except Exception:
        if rewind_on_failure:
            # What the sinks held may be lost: read everything since the last commit again.
            log.warning("checkpoint: a flush failed, rewinding to the last commit")
            consumer.seek(consumer.committed())
        raise
    try:
        consumer.commit(offsets)
    except CommitRejected as exc:
        log.warning("commit rejected, the group rebalanced: %s", exc)
        return False
    return True


class CheckpointLoop(Generic[R]):
    """A consumer read by the one loop of this module: ``step()`` polls once, hands every record to ``sink`` and
    checkpoints when due.

    ``decode``: message → record (raise for a bad one). ``name``: who parks records (the dead letter's
    ``consumer``). ``store_errors``: the sink's own "could not store it" errors, infrastructure faults like
    ``OSError``. ``park_bad``: False for a reader whose twin parks the same records (they are only logged here).
    ``commits``: False for a reader that re-reads its topic from the beginning at every start (a group of its
    own): it never commits. ``compacted``: the topics whose empty values are tombstones (elsewhere an empty value
    is a bad record).
    ``checkpoint_records`` / ``checkpoint_interval_s``: checkpoint once that many messages were read since the last
    one, or that long has passed (with anything read); both 0 = after every poll that read something. ``due``
    replaces that policy: (messages read since the last checkpoint, seconds since it) → whether to checkpoint now.
    """

    def __init__(
        self,
        bus: Bus,
        consumer: Consumer,
        *,
        decode: Callable[[Message], R],
        sink: Sink[R],
        name: str,
        max_records: int = 500,
        poll_timeout_s: float = 0.5,
        store_errors: tuple[type[BaseException], ...] = (),
        park_bad: bool = True,
        compacted: frozenset[str] = frozenset(),
        commits: bool = True,
        error_prefix: str = "",
        checkpoint_records: int = 0,
        checkpoint_interval_s: float = 0.0,
        due: Callable[[int, float], bool] | None = None,
    ) -> None:
        self.bus = bus
        self.consumer = consumer
        self.decode = decode
        self.sink = sink
        self.name = name
        self.max_records = max_records
        self.poll_timeout_s = poll_timeout_s
        self.store_errors = store_errors
        self.park_bad = park_bad
        self.compacted = compacted
        self.commits = commits
        self.error_prefix = error_prefix
        self.checkpoint_records = checkpoint_records
        self.checkpoint_interval_s = checkpoint_interval_s
        self.due = due
        self.handled = 0  # records the sink took
        self.dead_letters = 0  # records parked (or, without park_bad, only logged)
        self.tombstones = 0
        self.commits_rejected = 0
        self._uncommitted = 0  # messages read since the last checkpoint
        self._last_checkpoint = time.monotonic()

    def step(self, timeout_s: float | None = None) -> int:
        """Poll once (``timeout_s``, default ``poll_timeout_s``), hand over, checkpoint if due; returns messages
        read."""
        messages = self.consumer.poll(self.max_records, self.poll_timeout_s if timeout_s is None else timeout_s)
        self._hand_over(messages)
        self._uncommitted += len(messages)
        if self._due(bool(messages)):
            self.checkpoint() if self.commits else self._flush_only()
        return len(messages)

    def _hand_over(self, messages: list[Message]) -> None:
        for index, message in enumerate(messages):
            if not message.value and message.topic in self.compacted:
                self.tombstones += 1  # compaction's delete marker: nothing to hand over
                continue
            try:
                self.sink.add(self.decode(message), message)
            except Exception as exc:
                if is_infrastructure_fault(exc, *self.store_errors):
                    rewind(self.consumer, messages[index:])  # not handed over: this one and those after come again
                    raise
                self.dead_letters += 1
                if self.park_bad:
                    error = park(self.bus, message, exc, consumer=self.name, prefix=self.error_prefix)
                else:
                    error = describe(exc)
                if worth_logging(self.dead_letters):
                    log.warning("%s: record at %s[%d]@%d %s (%d so far): %s", self.name, message.topic,
                                message.partition, message.offset, "dead-lettered" if self.park_bad else "ignored",
                                self.dead_letters, error)  # fmt: skip
                continue
            self.handled += 1

    def _due(self, read: bool) -> bool:
        if self.due is not None:
            return self.due(self._uncommitted, time.monotonic() - self._last_checkpoint)
        if not self._uncommitted:
            return False
        if not (self.checkpoint_records or self.checkpoint_interval_s):
            return read
        if self.checkpoint_records and self._uncommitted >= self.checkpoint_records:
            return True
        return (
            bool(self.checkpoint_interval_s) and time.monotonic() - self._last_checkpoint >= self.checkpoint_interval_s
        )

    def checkpoint(self) -> None:
        """Flush the sink, then the producer, then commit everything read (see :func:`checkpoint`)."""
        try:
            committed = checkpoint(self.bus, self.consumer, [self.sink])
        except Exception:
            self._uncommitted = 0  # rewound to the last commit: everything since comes again
            raise
        if not committed:
            self.commits_rejected += 1
        self._uncommitted = 0
        self._last_checkpoint = time.monotonic()

    def _flush_only(self) -> None:
        self.sink.flush()
        self.bus.flush()
        self._uncommitted = 0
        self._last_checkpoint = time.monotonic()

    def lag(self) -> int:
        """Messages between this consumer's positions and the end offsets of its assigned partitions (-1: none
        assigned yet — an empty assignment is not "caught up")."""
        positions, ends = self.consumer.positions(), self.consumer.end_offsets()
        if not ends:
            return -1
        return sum(max(0, end - positions.get(tp, 0)) for tp, end in ends.items())

    def close(self) -> None:
        """A last checkpoint (if anything is uncommitted), then leave the group."""
        try:
            if self._uncommitted and self.commits:
                self.checkpoint()
        finally:
            self.consumer.close()


__all__ = ["CheckpointLoop", "Sink", "checkpoint", "park"]
