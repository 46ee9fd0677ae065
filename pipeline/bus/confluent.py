"""A Kafka consumer on confluent-kafka (librdkafka): the same :class:`Consumer` contract, records decoded in C.

kafka-python decodes every record of a fetch in Python (varints, headers, a ``ConsumerRecord`` each): about
10 µs of CPU per message, more than the whole detection engine spends on it. librdkafka does that work in C on
its own threads, so a pipeline instance that reads the usage topic keeps up with about 1.5 times more events.
``KafkaBus(..., consumer_client="confluent-kafka")`` (``jwtwatch pipeline run --kafka-consumer confluent-kafka``)
makes the bus's consumers this one; producing, topic administration and every other service stay on kafka-python.

The contract is :class:`~pipeline.bus.base.Consumer`'s, as the kafka-python adapter keeps it: positions are
this member's (the next offset ``poll`` hands out), commits are synchronous and only for assigned
partitions, a commit that lost to a rebalance raises :class:`~pipeline.bus.base.CommitRejected`, and
messages read while waiting for the assignment are kept for the next ``poll``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Literal, Protocol, overload

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition
from confluent_kafka import Consumer as RdKafkaConsumer
from confluent_kafka import KafkaError as RdKafkaError

from pipeline.bus.base import Consumer, Message, MessageRun, runs_of
from pipeline.errors import KafkaBusError, KafkaCommitRejected

log = logging.getLogger(__name__)

_ASSIGN_POLL_S = 0.05
#: What the group coordinator answers to a commit from a member a rebalance has moved past.
_LOST_TO_A_REBALANCE = frozenset(
    {
        RdKafkaError.REBALANCE_IN_PROGRESS,
        RdKafkaError.ILLEGAL_GENERATION,
        RdKafkaError.UNKNOWN_MEMBER_ID,
        RdKafkaError.FENCED_INSTANCE_ID,
        RdKafkaError._ASSIGNMENT_LOST,
    }
)

Key = tuple[str, int]


class KafkaBusLike(Protocol):
    """What a consumer reads of the :class:`~pipeline.bus.kafka.KafkaBus` that made it. kafka.py imports this
    module on demand; naming only this keeps the import one way."""

    @property
    def bootstrap(self) -> str: ...

    @property
    def client_id(self) -> str: ...

    @property
    def timeout_s(self) -> float: ...

    @property
    def assignment_timeout_s(self) -> float: ...

    @property
    def closed(self) -> bool: ...


class ConfluentConsumer(Consumer):
    def __init__(self, bus: KafkaBusLike, topics: Iterable[str], group: str, *, from_beginning: bool = True) -> None:
        self.bus = bus
        self.group = group
        self.topics = list(topics)
        self.from_beginning = from_beginning
        self._timeout_s = bus.timeout_s
        self._lock = threading.RLock()
        self._closed = False
        self._assigned: set[Key] = set()
        self._next: dict[Key, int] = {}  # the next offset this member hands out, where known
        self._stash: dict[Key, deque[Message]] = {}  # read while waiting for the assignment
        self._consumer = RdKafkaConsumer(
            {
                "bootstrap.servers": bus.bootstrap,
                "client.id": bus.client_id,
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
                "max.poll.interval.ms": 300_000,
                "topic.metadata.refresh.interval.ms": 30_000,
                # A fetch waits at most this long for data: offset queries queue behind it (end_offsets).
                "fetch.wait.max.ms": 100,
                "socket.timeout.ms": max(1000, int(self._timeout_s * 1000)),
                "logger": log,
            }
        )
        self._consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )

    # -- the group's callbacks (run inside consume(), in the polling thread) ----------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._assigned = {(tp.topic, tp.partition) for tp in partitions}
        for key in list(self._next):
            if key not in self._assigned:
                del self._next[key]

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= revoked
        for key in revoked:
            # Positions come back from the committed offsets when the partition is assigned again.
            self._stash.pop(key, None)
            self._next.pop(key, None)

    # -- polling ----------------------------------------------------------------------------------------

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Message]:
        return self._poll(max_records, timeout_s, as_runs=False)

    def poll_runs(self, max_records: int = 500, timeout_s: float = 1.0) -> list[MessageRun]:
        """Like ``poll``, as columns per partition run: no :class:`Message` per message."""
        return self._poll(max_records, timeout_s, as_runs=True)

    @overload
    def _poll(self, max_records: int, timeout_s: float, *, as_runs: Literal[False]) -> list[Message]: ...

    @overload
    def _poll(self, max_records: int, timeout_s: float, *, as_runs: Literal[True]) -> list[MessageRun]: ...

    def _poll(self, max_records: int, timeout_s: float, *, as_runs: bool) -> list[Message] | list[MessageRun]:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        with self._lock:
            if self._closed or self.bus.closed:
                return []
            if self._stash:
                stashed = self._take_stash(max_records)
                return runs_of(stashed) if as_runs else stashed
            raw = self._consume(max_records, max(0.0, timeout_s))
            return self._runs(raw) if as_runs else self._handed_out(self._messages(raw))

    def _messages(self, raw: list[Any]) -> list[Message]:
        assigned = self._assigned
        return [
            Message(m.topic(), m.partition(), m.offset(), m.key(), m.value() or b"", m.timestamp()[1])
            for m in raw
            if (m.topic(), m.partition()) in assigned  # not fetched just before a revocation
        ]

    def _handed_out(self, messages: list[Message]) -> list[Message]:
        for message in messages:
            self._next[(message.topic, message.partition)] = message.offset + 1
        return messages

    def _consume(self, max_records: int, timeout_s: float) -> list[Any]:
        """What is fetched already, up to ``max_records``; if nothing is, wait up to ``timeout_s`` for the first.

        librdkafka's ``consume(n, timeout)`` waits until it has all ``n`` or the timeout passed; a poll here
        returns as soon as there is something (as kafka-python's does), so a small backlog is not held up."""
        limit = min(max_records, 1_000_000)
        consume = self._consumer.consume
        try:
            messages = consume(num_messages=limit, timeout=0)
            if not messages and timeout_s > 0:
                messages = consume(num_messages=1, timeout=timeout_s)
                if messages and limit > 1:
                    messages += consume(num_messages=limit - 1, timeout=0)
        except KafkaException as exc:
            raise KafkaBusError(f"poll (group {self.group!r}): {exc}") from exc
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.fatal():
                raise KafkaBusError(f"poll (group {self.group!r}): {error}")
            elif error.code() != RdKafkaError._PARTITION_EOF:
                log.warning("Kafka consumer (group %r): %s", self.group, error)  # librdkafka retries itself
        return good

    def _runs(self, messages: list[Any]) -> list[MessageRun]:
        runs: list[MessageRun] = []
        run: MessageRun | None = None
        assigned = self._assigned
        for message in messages:
            key = (message.topic(), message.partition())
            if key not in assigned:
                continue  # fetched just before a revocation
            if run is None or (run.topic, run.partition) != key:
                run = MessageRun(key[0], key[1], [], [], [])
                runs.append(run)
            run.offsets.append(message.offset())
            run.keys.append(message.key())
            run.values.append(message.value() or b"")  # a tombstone is b"", as on every bus
        for run in runs:
            self._next[(run.topic, run.partition)] = run.offsets[-1] + 1
        return runs

    def _take_stash(self, max_records: int) -> list[Message]:
        batch: list[Message] = []
        for key in sorted(self._stash):
            queue = self._stash[key]
            while queue and len(batch) < max_records:
                batch.append(queue.popleft())
            if not queue:
                del self._stash[key]
        return self._handed_out(batch)

    def _ensure_assigned(self) -> set[Key]:
        """Wait (bounded) until this member has joined its group; return its assigned partitions. Messages
        read meanwhile are kept for the next ``poll``."""
        deadline = time.monotonic() + self.bus.assignment_timeout_s
        while not self._assigned:
            if self._closed:
                raise RuntimeError("consumer is closed")
            if time.monotonic() >= deadline:
                raise KafkaBusError(
                    f"consumer group {self.group!r} did not assign partitions within "
                    f"{self.bus.assignment_timeout_s:g} s; is another member of the group not polling?"
                )
            for message in self._messages(self._consume(10_000, _ASSIGN_POLL_S)):
                self._stash.setdefault((message.topic, message.partition), deque()).append(message)
        return set(self._assigned)

    # -- offsets ----------------------------------------------------------------------------------------

    def assignment(self) -> set[Key]:
        with self._lock:
            return set(self._assigned)

    def positions(self) -> dict[Key, int]:
        """The next offset ``poll`` hands out, per assigned partition (waits for the assignment)."""
        with self._lock:
            assigned = self._ensure_assigned()
            out: dict[Key, int] = {}
            unknown = []
            for key in sorted(assigned):
                queue = self._stash.get(key)
                if queue:
                    out[key] = queue[0].offset
                elif key in self._next:
                    out[key] = self._next[key]
                else:
                    unknown.append(key)
            if unknown:
                # Nothing handed out yet: where fetching starts — the committed offset, else the reset point.
                starts = self._committed_or_reset(unknown)
                self._next.update(starts)
                out.update(starts)
            return dict(sorted(out.items()))

    def end_offsets(self) -> dict[Key, int]:
        """The end per assigned partition. The end the last fetch reported (no request) while this member is
        behind it; asked of the broker when the member looks caught up — a stale end there would let the runner
        release other partitions' later events ahead of this one's (they would come in late)."""
        with self._lock:
            ends = {}
            for key in sorted(self._ensure_assigned()):
                _, high = self._consumer.get_watermark_offsets(TopicPartition(*key), cached=True)
                position = self._next.get(key)
                if high < 0 or position is None or position >= high or self._stash.get(key):
                    high = self._watermarks(key)[1]
                ends[key] = high
            return ends

    def committed(self) -> dict[Key, int]:
        with self._lock:
            return self._committed_or_reset(sorted(self._ensure_assigned()))

    def _watermarks(self, key: Key) -> tuple[int, int]:
        try:
            return self._consumer.get_watermark_offsets(TopicPartition(*key), timeout=self._timeout_s)
        except KafkaException as exc:
            raise KafkaBusError(f"offsets of {key[0]}[{key[1]}]: {exc}") from exc

    def _committed_or_reset(self, keys: list[Key]) -> dict[Key, int]:
        if not keys:
            return {}
        try:
            committed = self._consumer.committed([TopicPartition(*key) for key in keys], timeout=self._timeout_s)
        except KafkaException as exc:
            raise KafkaBusError(f"committed offsets (group {self.group!r}): {exc}") from exc
        out = {}
        for tp in committed:
            key = (tp.topic, tp.partition)
            if tp.offset >= 0:
                out[key] = tp.offset
            else:
                low, high = self._watermarks(key)
                out[key] = low if self.from_beginning else high
        return out

    def commit(self, offsets: dict[Key, int] | None = None) -> None:
        """Commit synchronously: what ``poll`` handed out so far, or the given next offsets (assigned only)."""
        with self._lock:
            assigned = self._ensure_assigned()
            chosen = self.positions() if offsets is None else {k: int(o) for k, o in offsets.items() if k in assigned}
            if not chosen:
                return
            try:
                self._consumer.commit(
                    offsets=[TopicPartition(topic, partition, offset) for (topic, partition), offset in chosen.items()],
                    asynchronous=False,
                )
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                message = f"commit (group {self.group!r}): {exc}"
                if isinstance(error, RdKafkaError) and error.code() in _LOST_TO_A_REBALANCE:
                    raise KafkaCommitRejected(message) from exc
                raise KafkaBusError(message) from exc

    # -- positioning ------------------------------------------------------------------------------------

    def seek(self, positions: dict[Key, int]) -> None:
        with self._lock:
            assigned = self._ensure_assigned()
            for key, offset in positions.items():
                if key in assigned:
                    self._seek(key, int(offset))

    def _seek(self, key: Key, offset: int) -> None:
        self._stash.pop(key, None)
        if offset in (OFFSET_BEGINNING, OFFSET_END):
            offset = self._watermarks(key)[0 if offset == OFFSET_BEGINNING else 1]
        try:
            self._consumer.seek(TopicPartition(key[0], key[1], offset))
        except KafkaException as exc:
            raise KafkaBusError(f"seek {key[0]}[{key[1]}] to {offset}: {exc}") from exc
        self._next[key] = offset

    def seek_to_beginning(self) -> None:
        with self._lock:
            for key in sorted(self._ensure_assigned()):
                self._seek(key, OFFSET_BEGINNING)

    def seek_to_time(self, timestamp_ms: int) -> None:
        with self._lock:
            self.seek_partitions_to_time(dict.fromkeys(self._ensure_assigned(), timestamp_ms))

    def seek_partitions_to_time(self, timestamps_ms: dict[Key, int]) -> None:
        with self._lock:
            assigned = self._ensure_assigned()
            wanted = [
                TopicPartition(k[0], k[1], max(0, int(ms))) for k, ms in sorted(timestamps_ms.items()) if k in assigned
            ]
            if not wanted:
                return
            try:
                found = self._consumer.offsets_for_times(wanted, timeout=self._timeout_s)
            except KafkaException as exc:
                raise KafkaBusError(f"offsets for times (group {self.group!r}): {exc}") from exc
            for tp in found:
                self._seek((tp.topic, tp.partition), tp.offset if tp.offset >= 0 else OFFSET_END)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._consumer.close()  # leaves the group; nothing is committed (auto-commit is off)
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the Kafka consumer (group %r): %s", self.group, exc)
