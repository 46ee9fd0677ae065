"""The Apache Kafka bus (kafka-python 3.x): several processes and machines.

Same interface and meaning as :class:`~pipeline.bus.memory.MemoryBus`:

* ``publish`` is keyed (same key, same partition, same order) and asynchronous; ``flush`` blocks until the
  broker has acknowledged every message published so far (``acks=all``, idempotent producer), and raises
  :class:`KafkaBusError` if any of them could not be delivered — a failed send is never silently lost.
* topics are created at start from their :class:`~pipeline.bus.topics.TopicSpec` (partitions, replication
  factor, ``cleanup.policy=compact`` for compacted specs); topics that already exist are left as they are.
* ``consumer`` joins a consumer group with manual commits (at-least-once: commit after the batch's effects
  are durable).

Each job has its module: the producer and its delivery bookkeeping (``kafka_producer.py``), topic creation
(``kafka_admin.py``), the consumer adapter and its wait for a partition assignment (``kafka_consumer.py``), and
the kafka-python calls they share, bounded and with their errors translated (``kafka_calls.py``). The optional
confluent-kafka consumer (``confluent.py``) is imported only when asked for.

Every network operation is bounded by ``timeout_s`` (default 15 s); a broker that cannot be reached makes
the constructor raise :class:`KafkaBusError` after about that long instead of hanging.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterable

from kafka import KafkaProducer

from pipeline.bus.base import Bus, Consumer, encode_key
from pipeline.bus.kafka_admin import create_topics
from pipeline.bus.kafka_calls import connect, translated
from pipeline.bus.kafka_consumer import open_adapter
from pipeline.bus.kafka_producer import BATCH_BYTES, MAX_REQUEST_BYTES, Publisher
from pipeline.bus.topics import TopicSpec, default_topics
from pipeline.errors import KafkaBusError

__all__ = ["CONSUMER_CLIENTS", "DEFAULT_TIMEOUT_S", "KafkaBus", "check_consumer_client"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 15.0
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
        self._compression_type = compression_type

        if create_topics and self.topics:
            self.create_topics(self.topics)
        self._publisher = Publisher(
            lambda: connect(self.bootstrap, self.timeout_s, "producer", self._new_producer), lambda: self._closed
        )

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

    # -- topics -----------------------------------------------------------------------------------------

    def create_topics(self, specs: Iterable[TopicSpec]) -> None:
        """Create the topics that do not exist yet and wait until every one has a leader."""
        create_topics(
            specs,
            bootstrap=self.bootstrap,
            client_id=self.client_id,
            client_config=self._client_config,
            replication_factor=self.replication_factor,
            timeout_s=self.timeout_s,
            timeout_ms=self._timeout_ms,
        )

    # -- producing --------------------------------------------------------------------------------------

    def publish(
        self, topic: str, key: str | bytes | None, value: bytes | None, timestamp_ms: int | None = None
    ) -> None:
        if self._closed:
            raise RuntimeError("bus is closed")
        self._publisher.publish(topic, encode_key(key), value, timestamp_ms)

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every published message is acknowledged by the broker (``acks=all``).

        Raises :class:`KafkaBusError` if not all were acknowledged within ``timeout_s`` (default: the
        producer's delivery timeout plus a margin), or if any message published since the last ``flush``
        failed; the error names how many and the first cause.
        """
        timeout = (self._delivery_timeout_ms / 1000 + self.timeout_s) if timeout_s is None else timeout_s
        self._publisher.flush(timeout)

    # -- consuming --------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (a consumer's wait for its assignment gives up then)."""
        return self._closed

    @property
    def timeout_ms(self) -> int:
        """The bound of every network operation, in milliseconds (at least a second)."""
        return self._timeout_ms

    def forget(self, consumer: Consumer) -> None:
        """``consumer`` closed itself: :meth:`close` need not close it."""
        self._consumers.discard(consumer)

    def consumer(self, topics: Iterable[str], group: str, *, from_beginning: bool = True) -> Consumer:
        if self._closed:
            raise RuntimeError("bus is closed")
        topics = list(topics)
        if not topics:
            raise ValueError("consumer needs at least one topic")
        for topic in topics:
            # Make sure the topic exists: unknown topics are auto-created where the broker allows it
            # (like the memory bus); otherwise this fails after timeout_s.
            with translated(f"topic {topic!r} is not available"):
                self._publisher.producer.partitions_for(topic)
        consumer: Consumer
        if self.consumer_client == "confluent-kafka":
            from pipeline.bus.confluent import ConfluentConsumer

            consumer = ConfluentConsumer(self, topics, group, from_beginning=from_beginning)
        else:
            consumer = open_adapter(
                self,
                topics,
                group,
                from_beginning=from_beginning,
                bootstrap=self.bootstrap,
                client_id=self.client_id,
                client_config=self._client_config,
            )
        self._consumers.add(consumer)
        return consumer

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
        self._publisher.close()
