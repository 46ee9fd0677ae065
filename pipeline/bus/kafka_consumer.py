"""The consumer of the kafka-python bus: one ``KafkaConsumer`` (one group member) behind :class:`Consumer`.

Partition assignment. A Kafka consumer gets its partitions from the group coordinator, asynchronously,
while it polls. ``poll`` simply returns nothing until then. The methods that act on "the assigned
partitions" (``positions``, ``end_offsets``, ``seek``, ``seek_to_time``, ``seek_to_beginning`` and
``commit``) first wait — polling in 50 ms steps, for at most ``assignment_timeout_s`` — until the member
has joined the group and holds a stable assignment; records fetched by those polls are kept and returned
by the next ``poll``, so nothing is skipped. If the group cannot settle in time (for instance
another member of the same group, driven by the same thread, has not polled since a rebalance began)
they raise :class:`KafkaBusError`. An assignment may legitimately be empty (more members than partitions).

``from_beginning=False`` maps to ``auto_offset_reset="latest"``: "the end" is taken when the partition is
first assigned to the group and has no committed offset, i.e. on the consumer's first poll (or first call
of one of the methods above), not at the moment ``consumer()`` returns. A committed offset always wins.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import MemberState, OffsetAndMetadata, TopicPartition

from pipeline.bus.base import Consumer, Message, MessageRun, runs_of
from pipeline.bus.kafka_calls import bounded, connect, tp_key, translated
from pipeline.errors import KafkaBusError

log = logging.getLogger(__name__)

MAX_POLL_RECORDS = 500
_POLL_SLICE_S = 0.5  # a waiting poll notices close() within this long
_ASSIGN_POLL_MS = 50


class AdapterBus(Protocol):
    """What the adapter reads of the :class:`~pipeline.bus.kafka.KafkaBus` that made it (naming only this keeps
    the import one way: the bus imports this module)."""

    @property
    def timeout_s(self) -> float: ...

    @property
    def timeout_ms(self) -> int: ...

    @property
    def assignment_timeout_s(self) -> float: ...

    @property
    def closed(self) -> bool: ...

    def forget(self, consumer: Consumer) -> None:
        """The consumer is closed: the bus need not close it."""


class KafkaConsumerAdapter(Consumer):
    """A :class:`~pipeline.bus.base.Consumer` over one ``KafkaConsumer`` (one group member).

    Thread-safe in the sense that ``close()`` may be called from another thread while ``poll`` waits (the
    poll returns ``[]`` within about half a second); otherwise use a consumer from one thread at a time.

    Poll it continuously, with a timeout. kafka-python 3.0 completes a JoinGroup/SyncGroup round only while a
    ``poll`` is waiting for it: a member polled with timeout 0 now and then (say between another consumer's
    steps) finds the round already finished at its next poll, discards the outcome and joins again — a new
    generation at every poll, never an assignment.
    """

    def __init__(
        self, bus: AdapterBus, consumer: KafkaConsumer, topics: list[str], group: str, *, from_beginning: bool = True
    ) -> None:
        self.bus = bus
        self.topics = topics
        self.group = group
        self.from_beginning = from_beginning
        self._consumer = consumer
        self._lock = threading.RLock()
        self._closing = False
        self._closed = False
        # Records fetched while waiting for the assignment, not yet returned by poll(); valid only for the
        # group generation they were fetched in.
        self._stash: dict[TopicPartition, deque[ConsumerRecord]] = {}
        self._stash_generation: int | None = None
        # Set by the rebalance listener (on kafka-python's IO thread): True once the partitions of the
        # current rebalance have been handed over, False from the moment they are revoked or lost.
        self._assigned = False
        # Assignment changes seen by the rebalance listener, not yet taken by assignment_changes(): the
        # partitions this member owned at the last report, and those lost and gained since (own lock: the
        # listener runs inside poll(), which may hold self._lock).
        self._changes_lock = threading.Lock()
        self._owned: set[tuple[str, int]] = set()
        self._lost: set[tuple[str, int]] = set()
        self._gained: set[tuple[str, int]] = set()

    # -- polling ----------------------------------------------------------------------------------------

    def poll(self, max_records: int = MAX_POLL_RECORDS, timeout_s: float = 1.0) -> list[Message]:
        stashed, records = self._fetch(max_records, timeout_s)
        if stashed is not None:
            return stashed
        return [_message(r) for tp in sorted(records) for r in records[tp]]

    def poll_runs(self, max_records: int = MAX_POLL_RECORDS, timeout_s: float = 1.0) -> list[MessageRun]:
        """Like ``poll``, as columns per partition: no :class:`Message` is built per record."""
        stashed, records = self._fetch(max_records, timeout_s)
        if stashed is not None:
            return runs_of(stashed)
        return [_run(tp, records[tp]) for tp in sorted(records)]

    def _fetch(
        self, max_records: int, timeout_s: float
    ) -> tuple[list[Message] | None, dict[TopicPartition, list[ConsumerRecord]]]:
        """One poll for ``poll`` and ``poll_runs``: messages stashed while the assignment settled (first), or
        kafka-python's records per partition — empty when the timeout passed or the consumer is closing."""
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            with self._lock:
                if self._closing or self._closed or self.bus.closed:
                    return None, {}
                self._prune_stash()
                if self._stash:
                    return self._take_stash(max_records), {}
                slice_ms = int(max(0.0, min(deadline - time.monotonic(), _POLL_SLICE_S)) * 1000)
                with translated(f"poll (group {self.group!r})"):
                    records = self._consumer.poll(timeout_ms=slice_ms, max_records=max_records)
            if records or time.monotonic() >= deadline:
                return None, records

    def _prune_stash(self) -> None:
        if not self._stash:
            return
        if self._generation() != self._stash_generation:
            self._stash.clear()  # a rebalance happened: positions came back from the committed offsets
            return
        assigned = self._consumer.assignment()
        for tp in [tp for tp in self._stash if tp not in assigned]:
            del self._stash[tp]

    def _take_stash(self, max_records: int) -> list[Message]:
        batch: list[Message] = []
        for tp in sorted(self._stash):
            queue = self._stash[tp]
            while queue and len(batch) < max_records:
                batch.append(_message(queue.popleft()))
            if not queue:
                del self._stash[tp]
        return batch

    def _generation(self) -> int:
        generation: int = self._consumer.group_metadata().generation_id
        return generation

    def _ensure_assigned(self) -> set[TopicPartition]:
        """Wait (bounded) until this member has joined its group; return its assigned partitions."""
        deadline = time.monotonic() + self.bus.assignment_timeout_s
        while True:
            if self._closed or self._closing:
                raise RuntimeError("consumer is closed")
            # kafka-python 3 quirk: the member turns STABLE just before it applies its assignment, and stays
            # STABLE without partitions when applying fails (the assignment names a topic its metadata lacks;
            # it rejoins on a later poll). So also wait for the rebalance listener to see partitions handed over.
            metadata = self._consumer.group_metadata()
            if metadata.state == MemberState.STABLE and self._assigned:
                return set(self._consumer.assignment())
            if time.monotonic() >= deadline:
                raise KafkaBusError(
                    f"consumer group {self.group!r} did not assign partitions within "
                    f"{self.bus.assignment_timeout_s:g} s (state {metadata.state}); is another member of the "
                    "group not polling?"
                )
            # kafka-python 3 quirk: poll(timeout_ms=0) does not reliably drive the JoinGroup/SyncGroup
            # round (it can stay "rebalancing" for many seconds); a short positive timeout does.
            with translated(f"join group {self.group!r}"):
                records = self._consumer.poll(timeout_ms=_ASSIGN_POLL_MS)
            if records:
                self._keep(records)

    def _keep(self, records: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        generation = self._generation()
        if self._stash and generation != self._stash_generation:
            self._stash.clear()
        self._stash_generation = generation
        for tp, batch in records.items():
            self._stash.setdefault(tp, deque()).extend(batch)

    # -- offsets ----------------------------------------------------------------------------------------

    def _positions(self, assigned: set[TopicPartition]) -> dict[tuple[str, int], int]:
        self._prune_stash()
        positions = {}
        for tp in sorted(assigned):
            queue = self._stash.get(tp)
            if queue:
                positions[tp_key(tp)] = queue[0].offset
                continue
            with translated(f"position of {tp.topic}[{tp.partition}]"):
                offset = self._consumer.position(tp, timeout_ms=self.bus.timeout_ms)
            if offset is None:
                raise KafkaBusError(f"position of {tp.topic}[{tp.partition}] unknown after {self.bus.timeout_s:g} s")
            positions[tp_key(tp)] = offset
        return positions

    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset ``poll`` returns, per assigned partition (waits for the assignment)."""
        with self._lock:
            return self._positions(self._ensure_assigned())

    def end_offsets(self) -> dict[tuple[str, int], int]:
        """The next offset to be written, per assigned partition (waits for the assignment)."""
        with self._lock:
            assigned = self._ensure_assigned()
            if not assigned:
                return {}
            with translated("end offsets"):
                ends = self._consumer.end_offsets(sorted(assigned), timeout_ms=self.bus.timeout_ms)
            return {tp_key(tp): offset for tp, offset in sorted(ends.items())}

    def commit(self, offsets: dict[tuple[str, int], int] | None = None) -> None:
        """Commit synchronously: every record ``poll`` returned so far, or the given next offsets.

        Only partitions currently assigned to this member are committed (others are ignored, as on the
        memory bus). Raises :class:`KafkaCommitRejected` (a :class:`CommitRejected`) if the group rebalanced
        since the batch was polled — the records will be delivered again (at-least-once) — and
        :class:`KafkaBusError` if the commit fails otherwise.
        """
        with self._lock:
            assigned = self._ensure_assigned()
            if offsets is None:
                chosen = self._positions(assigned)
            else:
                chosen = {tp: int(offset) for tp, offset in offsets.items() if TopicPartition(*tp) in assigned}
            if not chosen:
                return
            request = {TopicPartition(*tp): OffsetAndMetadata(offset, "", -1) for tp, offset in chosen.items()}
            with translated(f"commit (group {self.group!r})", commit=True):
                self._consumer.commit(request, timeout_ms=self.bus.timeout_ms)

    def seek(self, positions: dict[tuple[str, int], int]) -> None:
        """Re-position the given partitions; partitions not assigned to this member are ignored."""
        with self._lock:
            assigned = self._ensure_assigned()
            for key, offset in positions.items():
                tp = TopicPartition(*key)
                if tp in assigned:
                    self._stash.pop(tp, None)
                    self._consumer.seek(tp, int(offset))

    def seek_partitions_to_time(self, timestamps_ms: dict[tuple[str, int], int]) -> None:
        """Position each given assigned partition at its first message with timestamp >= its own timestamp
        (at the end where there is none); the other partitions are left where they are."""
        with self._lock:
            assigned = self._ensure_assigned()
            query = {TopicPartition(*tp): max(0, int(ts)) for tp, ts in timestamps_ms.items()}
            query = {tp: ts for tp, ts in query.items() if tp in assigned}
            if not query:
                return
            with translated("offsets for times"):
                found = self._consumer.offsets_for_times(query, timeout_ms=self.bus.timeout_ms)
                missing = [tp for tp in query if found.get(tp) is None]
                ends = self._consumer.end_offsets(missing, timeout_ms=self.bus.timeout_ms) if missing else {}
            for tp in sorted(query):
                hit = found.get(tp)
                self._stash.pop(tp, None)
                self._consumer.seek(tp, hit.offset if hit is not None else ends[tp])

    def committed(self) -> dict[tuple[str, int], int]:
        """Per assigned partition: the group's committed offset, else the beginning (``from_beginning``) or
        the end (waits for the assignment)."""
        with self._lock:
            assigned = sorted(self._ensure_assigned())
            out: dict[tuple[str, int], int] = {}
            with translated(f"committed offsets (group {self.group!r})"):
                for tp in assigned:
                    offset = self._consumer.committed(tp, timeout_ms=self.bus.timeout_ms)
                    if offset is not None:
                        out[tp_key(tp)] = offset
                unset = [tp for tp in assigned if tp_key(tp) not in out]
                if unset:
                    starts = (
                        self._consumer.beginning_offsets(unset, timeout_ms=self.bus.timeout_ms)
                        if self.from_beginning
                        else self._consumer.end_offsets(unset, timeout_ms=self.bus.timeout_ms)
                    )
                    out.update((tp_key(tp), offset) for tp, offset in starts.items())
            return out

    def assignment_changes(self) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
        """``(lost, gained)`` since the last call, as the rebalance listener saw them: precise even when a
        partition was lost and given back between two calls (it is then in both)."""
        with self._changes_lock:
            lost, gained = self._lost, self._gained
            self._lost, self._gained = set(), set()
            return lost, gained

    def _on_assignment(
        self, current: AbstractSet[tuple[str, int]], lost: AbstractSet[tuple[str, int]] = frozenset()
    ) -> None:
        """From the listener: ``current`` is the assignment now; ``lost`` partitions lost on the way."""
        with self._changes_lock:
            gone = (self._owned - current) | (lost & self._owned)
            self._lost |= gone
            kept = self._owned - gone
            self._gained |= current - kept
            self._owned = set(current)

    def seek_to_beginning(self) -> None:
        with self._lock:
            assigned = self._ensure_assigned()
            if assigned:
                for tp in assigned:
                    self._stash.pop(tp, None)
                self._consumer.seek_to_beginning(*sorted(assigned))

    def seek_to_time(self, timestamp_ms: int) -> None:
        """Position every assigned partition at its first message with timestamp >= ``timestamp_ms``
        (at the end where there is none)."""
        with self._lock:
            assigned = sorted(self._ensure_assigned())
            if not assigned:
                return
            with translated("offsets for time"):
                found = self._consumer.offsets_for_times(
                    {tp: max(0, int(timestamp_ms)) for tp in assigned}, timeout_ms=self.bus.timeout_ms
                )
                missing = [tp for tp in assigned if found.get(tp) is None]
                ends = self._consumer.end_offsets(missing, timeout_ms=self.bus.timeout_ms) if missing else {}
            for tp in assigned:
                hit = found.get(tp)
                self._stash.pop(tp, None)
                self._consumer.seek(tp, hit.offset if hit is not None else ends[tp])

    # -- extras -----------------------------------------------------------------------------------------

    def assignment(self) -> set[tuple[str, int]]:
        """The partitions assigned right now, without waiting (empty before the group has settled)."""
        with self._lock:
            if self._closed:
                return set()
            return {tp_key(tp) for tp in self._consumer.assignment()}

    def close(self) -> None:
        """Leave the group (without committing) and close; idempotent."""
        self._closing = True
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stash.clear()
            try:
                self._consumer.close(autocommit=False, timeout_ms=self.bus.timeout_ms)
            except KafkaError as exc:
                log.warning("closing Kafka consumer of group %s: %s", self.group, exc)
            self.bus.forget(self)


class _AssignmentTracker(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python has no types: Any
    """Tells the adapter when its partitions are handed over, and which it lost and gained.

    kafka-python's eager rebalance revokes every partition before the group is joined again, then assigns the
    new set; partitions in both keep their positions, so only the difference counts as lost / gained. Partitions
    *lost* (the member was thrown out of the group) restart from the committed offsets if given back.
    """

    def __init__(self, adapter: KafkaConsumerAdapter) -> None:
        self._adapter = weakref.ref(adapter)

    def _set(self, assigned: bool) -> KafkaConsumerAdapter | None:
        adapter = self._adapter()
        if adapter is not None:
            adapter._assigned = assigned
        return adapter

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        adapter = self._set(False)
        if adapter is not None:
            # Eager: revoked before the new assignment, still listed in assignment(); cooperative: already
            # removed from it — then they are gone for good.
            current = {tp_key(tp) for tp in adapter._consumer.assignment()}
            gone = {tp_key(tp) for tp in revoked}
            if not gone & current:
                adapter._on_assignment(current, gone)

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        adapter = self._set(False)
        if adapter is not None:
            gone = {tp_key(tp) for tp in lost}
            adapter._on_assignment(adapter._owned - gone, gone)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        adapter = self._set(True)
        if adapter is not None:
            adapter._on_assignment({tp_key(tp) for tp in adapter._consumer.assignment()})


def open_adapter(
    bus: AdapterBus,
    topics: list[str],
    group: str,
    *,
    from_beginning: bool,
    bootstrap: str,
    client_id: str,
    client_config: dict[str, Any],
) -> KafkaConsumerAdapter:
    """A new member of ``group`` subscribed to ``topics``, its adapter tracking its assignment."""
    kafka_consumer = connect(
        bootstrap,
        bus.timeout_s,
        f"consumer for group {group!r}",
        lambda: KafkaConsumer(
            client_id=client_id,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            max_poll_records=MAX_POLL_RECORDS,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            max_poll_interval_ms=300_000,
            # Notice re-created topics and new partitions within 30 s, not kafka-python's default 5 min.
            metadata_max_age_ms=30_000,
            **client_config,
        ),
    )
    adapter = KafkaConsumerAdapter(bus, kafka_consumer, topics, group, from_beginning=from_beginning)
    try:
        # kafka-python 3 quirk: a member joins its group without waiting for the subscribed topics'
        # metadata, and a group leader that lacks it hands out an empty assignment (mended only by a
        # later rebalance). So load the metadata first. KafkaConsumer.partitions_for_topic waits without
        # a timeout, hence the bounded helper.
        bounded(
            lambda: [kafka_consumer.partitions_for_topic(topic) for topic in topics],
            bus.timeout_s,
            f"topic metadata for {topics}",
        )
        kafka_consumer.subscribe(topics, listener=_AssignmentTracker(adapter))
    except BaseException:
        kafka_consumer.close(autocommit=False, timeout_ms=bus.timeout_ms)
        raise
    return adapter


def _message(record: ConsumerRecord) -> Message:
    # A null value (a tombstone on a compacted topic) is returned as b"".
    value = record.value if record.value is not None else b""
    return Message(record.topic, record.partition, record.offset, record.key, value, record.timestamp)


def _run(tp: TopicPartition, records: list[ConsumerRecord]) -> MessageRun:
    values = [record.value for record in records]
    if None in values:
        values = [b"" if value is None else value for value in values]  # tombstones, as in _message
    return MessageRun(tp.topic, tp.partition, [r.offset for r in records], [r.key for r in records], values)


__all__ = ["MAX_POLL_RECORDS", "AdapterBus", "KafkaConsumerAdapter", "open_adapter"]
