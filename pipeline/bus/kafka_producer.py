"""The producing side of the kafka-python bus: one idempotent ``KafkaProducer`` at a time, and the messages sent
through it but not yet acknowledged.

``publish`` is keyed and asynchronous; :meth:`Publisher.flush` blocks until the broker has acknowledged every
message published so far (``acks=all``) and raises :class:`KafkaBusError` if any of them could not be delivered —
a failed send is never silently lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, RetriableError

from pipeline.bus.kafka_calls import translated
from pipeline.errors import KafkaBusError

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024  # the broker's default message.max.bytes is 1 MiB + 12
BATCH_BYTES = 128 * 1024


class Publisher:
    """The bus's producer (``make`` makes one) and its delivery bookkeeping: messages sent but not yet
    acknowledged, and failures not yet reported. ``closed`` says whether the bus is closed (then a broken
    producer is no longer replaced)."""

    def __init__(self, make: Callable[[], KafkaProducer], closed: Callable[[], bool]) -> None:
        self._make = make
        self._closed = closed
        self._cond = threading.Condition()
        self._pending = 0
        self._failures: list[BaseException] = []
        self._failed_count = 0
        self._producer_lock = threading.Lock()
        self._producer = _Producer(self, make())

    @property
    def producer(self) -> KafkaProducer:
        """The current ``KafkaProducer``."""
        return self._producer.producer

    def publish(self, topic: str, key: bytes | None, value: bytes | None, timestamp_ms: int | None = None) -> None:
        self._working_producer().send(topic, key, value, timestamp_ms)

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
            if current.broken and not self._closed():
                log.warning("replacing the Kafka producer after a non-retriable delivery error")
                self._producer = _Producer(self, self._make())
                close_producer(current.producer)  # fails (and so settles) whatever it still held
            return self._producer

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

    def flush(self, timeout: float) -> None:
        """Block until every published message is acknowledged by the broker, at most ``timeout`` seconds.

        Raises :class:`KafkaBusError` if not all were acknowledged in time, or if any message published since
        the last ``flush`` failed; the error names how many and the first cause.
        """
        deadline = time.monotonic() + timeout
        # Make lingering batches sendable now. kafka-python's flush(timeout) waits up to `timeout` per batch
        # (so it is no overall bound); the overall wait is ours, below.
        if not self._closed():
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

    def close(self) -> None:
        """Close the producer without waiting (call :meth:`flush` first)."""
        close_producer(self._producer.producer)


class _Producer:
    """One KafkaProducer and the delivery callbacks of the messages sent through it."""

    def __init__(self, publisher: Publisher, producer: KafkaProducer) -> None:
        self.publisher = publisher
        self.producer = producer
        self.broken = False

    def send(self, topic: str, key: bytes | None, value: bytes | None, timestamp_ms: int | None = None) -> None:
        publisher = self.publisher
        with publisher._cond:
            publisher._pending += 1
        try:
            with translated(f"publish to {topic!r}"):
                future = self.producer.send(topic, key=key, value=value, timestamp_ms=timestamp_ms)
        except BaseException:
            publisher._sent()
            raise
        future.add_callback(self._on_sent)
        future.add_errback(self._on_failed)

    def _on_sent(self, _metadata: object) -> None:
        self.publisher._sent()

    def _on_failed(self, exc: BaseException) -> None:
        if not isinstance(exc, RetriableError):
            self.broken = True
        self.publisher._failed(exc)


def close_producer(producer: KafkaProducer) -> None:
    """Close without waiting: whatever is still unacknowledged fails (and is counted by the bus)."""
    try:
        producer.close(timeout=0)
    except KafkaError:
        # kafka-python 3 quirk: close() starts with flush(timeout), which raises KafkaTimeoutError while
        # batches are outstanding, before the sender thread is stopped. Stop it the way close() would have.
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()


__all__ = ["BATCH_BYTES", "MAX_REQUEST_BYTES", "Publisher", "close_producer"]
