"""The Kafka bus's errors, whichever client library reads: kafka-python (:mod:`pipeline.bus.kafka`) or
confluent-kafka (:mod:`pipeline.bus.confluent`). Both raise them, so they live apart from both."""

from __future__ import annotations

from pipeline.bus.base import CommitRejected

__all__ = ["KafkaBusError", "KafkaCommitRejected"]


class KafkaBusError(RuntimeError):
    """Kafka could not do what was asked (unreachable, timed out, rejected). The cause is chained."""


class KafkaCommitRejected(KafkaBusError, CommitRejected):
    """A commit lost to a rebalance (:class:`CommitRejected`); also a :class:`KafkaBusError`."""
