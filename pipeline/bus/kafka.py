"""The Apache Kafka bus (kafka-python 3.x): several processes and machines.

Same interface and meaning as :class:`~pipeline.bus.memory.MemoryBus`:

* ``publish`` is keyed (same key, same partition, same order) and asynchronous; ``flush`` blocks until the
  broker has acknowledged every message published so far (``acks=all``, idempotent producer), and raises
  :class:`KafkaBusError` if any of them could not be delivered — a failed send is never silently lost.
* topics are created at start from their :class:`~pipeline.bus.topics.TopicSpec` (partitions, replication
  factor, ``cleanup.policy=compact`` for compacted specs); topics that already exist are left as they are.
* ``consumer`` joins a consumer group with manual commits (at-least-once: commit after the batch's effects
  are durable).

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

Every network operation is bounded by ``timeout_s`` (default 15 s); a broker that cannot be reached makes
the constructor raise :class:`KafkaBusError` after about that long instead of hanging.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from typing import TypeVar

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import (
    CommitFailedError,
    FencedInstanceIdError,
    IllegalGenerationError,
    KafkaError,
    KafkaTimeoutError,
    RebalanceInProgressError,
    RetriableError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
    for_code,
)
from kafka.structs import MemberState, OffsetAndMetadata, TopicPartition

from pipeline.bus.base import Bus, Consumer, Message, MessageRun, encode_key, runs_of
from pipeline.bus.topics import TopicSpec, default_topics
from pipeline.errors import KafkaBusError, KafkaCommitRejected

_Client = TypeVar("_Client")

__all__ = ["KafkaBus", "KafkaBusError", "KafkaCommitRejected", "KafkaConsumerAdapter"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 15.0
MAX_REQUEST_BYTES = 1024 * 1024  # the broker's default message.max.bytes is 1 MiB + 12
BATCH_BYTES = 128 * 1024
MAX_POLL_RECORDS = 500
CONSUMER_CLIENTS = ("kafka-python", "confluent-kafka")


def check_consumer_client(name: str) -> None:
    """ValueError unless ``name`` is a consumer client this bus knows and its library is installed."""
    if name not in CONSUMER_CLIENTS:
        raise ValueError(f"consumer_client must be one of {', '.join(CONSUMER_CLIENTS)}, not {name!r}")
    if name == "confluent-kafka":
        try:
            import confluent_kafka  # noqa: F401
        except ImportError as exc:
            raise ValueError(
                "consumer_client 'confluent-kafka' needs the confluent-kafka package: pip install 'jwtwatch[confluent]'"
            ) from exc


_POLL_SLICE_S = 0.5  # a waiting poll notices close() within this long
_ASSIGN_POLL_MS = 50


#: What the group coordinator answers to a commit from a member whose generation a rebalance has ended.
_LOST_TO_A_REBALANCE = (
    CommitFailedError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
    FencedInstanceIdError,
)


@contextlib.contextmanager
def _translated(what: str, *, commit: bool = False) -> Iterator[None]:
    """kafka-python's errors as :class:`KafkaBusError` — for a ``commit``, one lost to a rebalance as
    :class:`KafkaCommitRejected`."""
    try:
        yield
    except KafkaError as exc:
        message = f"{what}: {type(exc).__name__}: {exc}"
        if commit and isinstance(exc, _LOST_TO_A_REBALANCE):
            raise KafkaCommitRejected(message) from exc
        raise KafkaBusError(message) from exc


def _bounded(call: Callable[[], object], timeout_s: float, what: str) -> None:
    """Run a kafka-python call that has no timeout of its own; give up (raise) after ``timeout_s``."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    worker = threading.Thread(target=run, name="jwtwatch-kafka-call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise KafkaBusError(f"{what}: no answer from Kafka within {timeout_s:g} s")
    error = outcome[0]
    if isinstance(error, KafkaError):
        raise KafkaBusError(f"{what}: {type(error).__name__}: {error}") from error
    if error is not None:
        raise error


def _close_producer(producer: KafkaProducer) -> None:
    """Close without waiting: whatever is still unacknowledged fails (and is counted by the bus)."""
    try:
        producer.close(timeout=0)
    except KafkaError:
        # kafka-python 3 quirk: close() starts with flush(timeout), which raises KafkaTimeoutError while
        # batches are outstanding, before the sender thread is stopped. Stop it the way close() would have.
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()


def _tp_key(tp: TopicPartition) -> tuple[str, int]:
    return (tp.topic, tp.partition)


class KafkaBus(Bus):
    """A :class:`~pipeline.bus.base.Bus` on Apache Kafka.

    ``bootstrap`` is ``"host:port[,host:port...]"``. With ``create_topics`` the given topics (default:
    :func:`~pipeline.bus.topics.default_topics`) are created if missing. ``compression_type`` may be
    ``None`` (default) or ``"gzip"`` (the one codec kafka-python supports without extra libraries).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str = "jwtwatch",
        topics: list[TopicSpec] | None = None,
        replication_factor: int = 1,
        create_topics: bool = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        assignment_timeout_s: float = 30.0,
        compression_type: str | None = None,
        consumer_client: str = "kafka-python",
    ) -> None:
        """``consumer_client``: the library this bus's consumers read with — ``kafka-python`` (default), or
        ``confluent-kafka`` (librdkafka: decodes records in C; see :mod:`pipeline.bus.confluent`)."""
        check_consumer_client(consumer_client)
        self.consumer_client = consumer_client
        if compression_type not in (None, "gzip"):
            raise ValueError(f"compression_type must be None or 'gzip', not {compression_type!r}")
        if replication_factor < 1:
            raise ValueError("replication_factor must be at least 1")
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.topics = list(topics) if topics is not None else default_topics()
        self.replication_factor = replication_factor
        self.timeout_s = timeout_s
        self.assignment_timeout_s = assignment_timeout_s
        timeout_ms = max(1000, int(timeout_s * 1000))
        self._timeout_ms = timeout_ms
        # request_timeout_ms must exceed the consumer's fetch_max_wait_ms (500 ms).
        self._client_config = {
            "bootstrap_servers": bootstrap,
            "request_timeout_ms": timeout_ms,
            "bootstrap_timeout_ms": timeout_ms,
        }
        # A message that cannot be delivered fails after this long (then flush() reports it).
        self._delivery_timeout_ms = 4 * timeout_ms
        self._closed = False
        self._consumers: weakref.WeakSet[Consumer] = weakref.WeakSet()
        # Delivery bookkeeping: messages sent but not yet acknowledged, and failures not yet reported.
        self._cond = threading.Condition()
        self._pending = 0
        self._failures: list[BaseException] = []
        self._failed_count = 0

        self._compression_type = compression_type
        self._producer_lock = threading.Lock()

        if create_topics and self.topics:
            self.create_topics(self.topics)
        self._producer = _Producer(self, self._connect("producer", self._new_producer))

    def _new_producer(self) -> KafkaProducer:
        return KafkaProducer(
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            batch_size=BATCH_BYTES,
            compression_type=self._compression_type,
            max_request_size=MAX_REQUEST_BYTES,
            max_block_ms=self._timeout_ms,
            delivery_timeout_ms=self._delivery_timeout_ms,
            **self._client_config,
        )

    def _working_producer(self) -> _Producer:
        """The producer, replaced first if a non-retriable delivery error has broken it.

        kafka-python 3 quirk: its idempotent (non-transactional) producer treats every non-retriable
        broker error for a batch — e.g. MessageSizeTooLargeError for a message over the topic's
        max.message.bytes — as fatal, and fails every later send too. So after such an error the bus
        closes it and starts a new one (the failure itself is still reported by ``flush``).
        """
        current = self._producer
        if not current.broken:
            return current
        with self._producer_lock:
            current = self._producer
            if current.broken and not self._closed:
                log.warning("replacing the Kafka producer after a non-retriable delivery error")
                self._producer = _Producer(self, self._connect("producer", self._new_producer))
                _close_producer(current.producer)  # fails (and so settles) whatever it still held
            return self._producer

    def _connect(self, what: str, make: Callable[[], _Client]) -> _Client:
        try:
            return make()
        except KafkaError as exc:
            raise KafkaBusError(
                f"cannot reach Kafka at {self.bootstrap!r} within {self.timeout_s:g} s ({what}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    # -- topics -----------------------------------------------------------------------------------------

    def create_topics(self, specs: Iterable[TopicSpec]) -> None:
        """Create the topics that do not exist yet and wait until every one has a leader."""
        specs = list(specs)
        if not specs:
            return
        admin = self._connect(
            "admin client", lambda: KafkaAdminClient(client_id=f"{self.client_id}-admin", **self._client_config)
        )
        try:
            request = {}
            for spec in specs:
                configs = {"cleanup.policy": "compact"} if spec.compacted else {}
                if self.replication_factor >= 3:
                    configs["min.insync.replicas"] = str(self.replication_factor - 1)
                request[spec.name] = {
                    "num_partitions": max(1, spec.partitions),
                    "replication_factor": self.replication_factor,
                    "configs": configs,
                }
            with _translated("create topics"):
                result = admin.create_topics(request, timeout_ms=self._timeout_ms, raise_errors=False)
            existing = []
            for topic in result["topics"]:
                error = for_code(topic["error_code"])
                if topic["error_code"] == 0:
                    log.info("created Kafka topic %s", topic["name"])
                elif error is TopicAlreadyExistsError:
                    existing.append(topic["name"])
                else:
                    raise KafkaBusError(
                        f"cannot create Kafka topic {topic['name']!r}: {error.__name__}: {topic.get('error_message')}"
                    )
            with _translated("wait for topics"):
                admin.wait_for_topics(list(request), timeout_ms=self._timeout_ms)
            compacted = [name for name in existing if any(s.name == name and s.compacted for s in specs)]
            if compacted:
                self._warn_if_not_compacted(admin, compacted)
        finally:
            admin.close()

    def _warn_if_not_compacted(self, admin: KafkaAdminClient, names: list[str]) -> None:
        """An existing topic keeps its settings; say so if one that should be compacted is not."""
        try:
            described = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, ["cleanup.policy"]) for name in names],
                config_filter="all",
            )
        except KafkaError as exc:  # informational only
            log.debug("could not describe topic configs: %s", exc)
            return
        for name, configs in described.get("topic", {}).items():
            policy = str(configs.get("cleanup.policy", {}).get("value", ""))
            if "compact" not in policy:
                log.warning("Kafka topic %s exists with cleanup.policy=%s, expected compact", name, policy)

    # -- producing --------------------------------------------------------------------------------------

    def publish(self, topic: str, key: str | bytes | None, value: bytes | None) -> None:
        if self._closed:
            raise RuntimeError("bus is closed")
        self._working_producer().send(topic, encode_key(key), value)

    def _sent(self) -> None:
        with self._cond:
            self._pending -= 1
            if self._pending == 0:
                self._cond.notify_all()

    def _failed(self, exc: BaseException) -> None:
        with self._cond:
            self._failed_count += 1
            if len(self._failures) < 10:
                self._failures.append(exc)
        self._sent()

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every published message is acknowledged by the broker (``acks=all``).

        Raises :class:`KafkaBusError` if not all were acknowledged within ``timeout_s`` (default: the
        producer's delivery timeout plus a margin), or if any message published since the last ``flush``
        failed; the error names how many and the first cause.
        """
        timeout = (self._delivery_timeout_ms / 1000 + self.timeout_s) if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        # Make lingering batches sendable now. kafka-python's flush(timeout) waits up to `timeout` per batch
        # (so it is no overall bound); the overall wait is ours, below.
        if not self._closed:
            with contextlib.suppress(KafkaTimeoutError):
                self._producer.producer.flush(timeout=0)
        with self._cond:
            while self._pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise KafkaBusError(f"flush: {self._pending} message(s) not acknowledged within {timeout:g} s")
                self._cond.wait(remaining)
            failures, count = self._failures, self._failed_count
            self._failures, self._failed_count = [], 0
        if count:
            self._working_producer()
            first = failures[0]
            raise KafkaBusError(
                f"{count} message(s) could not be delivered; first error: {type(first).__name__}: {first}"
            ) from first

    # -- consuming --------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (a consumer's wait for its assignment gives up then)."""
        return self._closed

    def consumer(self, topics: Iterable[str], group: str, *, from_beginning: bool = True) -> Consumer:
        if self._closed:
            raise RuntimeError("bus is closed")
        topics = list(topics)
        if not topics:
            raise ValueError("consumer needs at least one topic")
        for topic in topics:
            # Make sure the topic exists: unknown topics are auto-created where the broker allows it
            # (like the memory bus); otherwise this fails after timeout_s.
            with _translated(f"topic {topic!r} is not available"):
                self._producer.producer.partitions_for(topic)
        if self.consumer_client == "confluent-kafka":
            from pipeline.bus.confluent import ConfluentConsumer

            consumer = ConfluentConsumer(self, topics, group, from_beginning=from_beginning)
            self._consumers.add(consumer)
            return consumer
        kafka_consumer = self._connect(
            f"consumer for group {group!r}",
            lambda: KafkaConsumer(
                client_id=self.client_id,
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest" if from_beginning else "latest",
                max_poll_records=MAX_POLL_RECORDS,
                session_timeout_ms=10_000,
                heartbeat_interval_ms=1_000,
                max_poll_interval_ms=300_000,
                # Notice re-created topics and new partitions within 30 s, not kafka-python's default 5 min.
                metadata_max_age_ms=30_000,
                **self._client_config,
            ),
        )
        adapter = KafkaConsumerAdapter(self, kafka_consumer, topics, group, from_beginning=from_beginning)
        try:
            # kafka-python 3 quirk: a member joins its group without waiting for the subscribed topics'
            # metadata, and a group leader that lacks it hands out an empty assignment (mended only by a
            # later rebalance). So load the metadata first. KafkaConsumer.partitions_for_topic waits without
            # a timeout, hence the bounded helper.
            _bounded(
                lambda: [kafka_consumer.partitions_for_topic(topic) for topic in topics],
                self.timeout_s,
                f"topic metadata for {topics}",
            )
            kafka_consumer.subscribe(topics, listener=_AssignmentTracker(adapter))
        except BaseException:
            kafka_consumer.close(autocommit=False, timeout_ms=self._timeout_ms)
            raise
        self._consumers.add(adapter)
        return adapter

    def close(self) -> None:
        """Close the consumers made by this bus, deliver what is still buffered (bounded), close the producer."""
        if self._closed:
            return
        self._closed = True
        for consumer in list(self._consumers):
            with contextlib.suppress(Exception):
                consumer.close()
        try:
            self.flush(self.timeout_s)
        except KafkaBusError as exc:
            log.warning("closing the Kafka bus: %s", exc)
        _close_producer(self._producer.producer)


class _Producer:
    """One KafkaProducer and the delivery callbacks of the messages sent through it."""

    def __init__(self, bus: KafkaBus, producer: KafkaProducer) -> None:
        self.bus = bus
        self.producer = producer
        self.broken = False

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        bus = self.bus
        with bus._cond:
            bus._pending += 1
        try:
            with _translated(f"publish to {topic!r}"):
                future = self.producer.send(topic, key=key, value=value)
        except BaseException:
            bus._sent()
            raise
        future.add_callback(self._on_sent)
        future.add_errback(self._on_failed)

    def _on_sent(self, _metadata: object) -> None:
        self.bus._sent()

    def _on_failed(self, exc: BaseException) -> None:
        if not isinstance(exc, RetriableError):
            self.broken = True
        self.bus._failed(exc)


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
        self, bus: KafkaBus, consumer: KafkaConsumer, topics: list[str], group: str, *, from_beginning: bool = True
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
                if self._closing or self._closed or self.bus._closed:
                    return None, {}
                self._prune_stash()
                if self._stash:
                    return self._take_stash(max_records), {}
                slice_ms = int(max(0.0, min(deadline - time.monotonic(), _POLL_SLICE_S)) * 1000)
                with _translated(f"poll (group {self.group!r})"):
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
            with _translated(f"join group {self.group!r}"):
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
                positions[_tp_key(tp)] = queue[0].offset
                continue
            with _translated(f"position of {tp.topic}[{tp.partition}]"):
                offset = self._consumer.position(tp, timeout_ms=self.bus._timeout_ms)
            if offset is None:
                raise KafkaBusError(f"position of {tp.topic}[{tp.partition}] unknown after {self.bus.timeout_s:g} s")
            positions[_tp_key(tp)] = offset
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
            with _translated("end offsets"):
                ends = self._consumer.end_offsets(sorted(assigned), timeout_ms=self.bus._timeout_ms)
            return {_tp_key(tp): offset for tp, offset in sorted(ends.items())}

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
            with _translated(f"commit (group {self.group!r})", commit=True):
                self._consumer.commit(request, timeout_ms=self.bus._timeout_ms)

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
            with _translated("offsets for times"):
                found = self._consumer.offsets_for_times(query, timeout_ms=self.bus._timeout_ms)
                missing = [tp for tp in query if found.get(tp) is None]
                ends = self._consumer.end_offsets(missing, timeout_ms=self.bus._timeout_ms) if missing else {}
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
            with _translated(f"committed offsets (group {self.group!r})"):
                for tp in assigned:
                    offset = self._consumer.committed(tp, timeout_ms=self.bus._timeout_ms)
                    if offset is not None:
                        out[_tp_key(tp)] = offset
                unset = [tp for tp in assigned if _tp_key(tp) not in out]
                if unset:
                    starts = (
                        self._consumer.beginning_offsets(unset, timeout_ms=self.bus._timeout_ms)
                        if self.from_beginning
                        else self._consumer.end_offsets(unset, timeout_ms=self.bus._timeout_ms)
                    )
                    out.update((_tp_key(tp), offset) for tp, offset in starts.items())
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
            with _translated("offsets for time"):
                found = self._consumer.offsets_for_times(
                    {tp: max(0, int(timestamp_ms)) for tp in assigned}, timeout_ms=self.bus._timeout_ms
                )
                missing = [tp for tp in assigned if found.get(tp) is None]
                ends = self._consumer.end_offsets(missing, timeout_ms=self.bus._timeout_ms) if missing else {}
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
            return {_tp_key(tp) for tp in self._consumer.assignment()}

    def close(self) -> None:
        """Leave the group (without committing) and close; idempotent."""
        self._closing = True
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stash.clear()
            try:
                self._consumer.close(autocommit=False, timeout_ms=self.bus._timeout_ms)
            except KafkaError as exc:
                log.warning("closing Kafka consumer of group %s: %s", self.group, exc)
            self.bus._consumers.discard(self)


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
            current = {_tp_key(tp) for tp in adapter._consumer.assignment()}
            gone = {_tp_key(tp) for tp in revoked}
            if not gone & current:
                adapter._on_assignment(current, gone)

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        adapter = self._set(False)
        if adapter is not None:
            gone = {_tp_key(tp) for tp in lost}
            adapter._on_assignment(adapter._owned - gone, gone)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        adapter = self._set(True)
        if adapter is not None:
            adapter._on_assignment({_tp_key(tp) for tp in adapter._consumer.assignment()})


def _message(record: ConsumerRecord) -> Message:
    # A null value (a tombstone on a compacted topic) is returned as b"".
    value = record.value if record.value is not None else b""
    return Message(record.topic, record.partition, record.offset, record.key, value, record.timestamp)


def _run(tp: TopicPartition, records: list[ConsumerRecord]) -> MessageRun:
    values = [record.value for record in records]
    if None in values:
        values = [b"" if value is None else value for value in values]  # tombstones, as in _message
    return MessageRun(tp.topic, tp.partition, [r.offset for r in records], [r.key for r in records], values)
