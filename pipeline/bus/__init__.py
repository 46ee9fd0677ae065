"""The message bus between the validation tier and the pipeline.

Two implementations sit behind one small interface:

* :class:`~pipeline.bus.memory.MemoryBus` — in-process, the embedded default (one process, no broker);
* ``pipeline.bus.kafka`` — Apache Kafka, for several processes and machines.

The interface is shaped after Kafka's, so that code written against the memory bus keeps its meaning on
Kafka: topics are split into partitions by key (one token's events stay in order in one partition),
consumers belong to groups, and a consumer *commits* what it has processed — after a crash it resumes
from the last commit, so delivery is at-least-once and consumers de-duplicate (``event_id``,
deterministic ``alert_id``).
"""

from __future__ import annotations

from pipeline.bus.base import Bus, Consumer, Message, MessageRun
from pipeline.bus.topics import (
    ALERTS,
    DEAD_LETTER,
    REVOCATIONS,
    TOKEN_USAGE,
    TOKEN_USAGE_BY_IP,
    TOKEN_USAGE_BY_SUBJECT,
    VERDICTS,
    TopicSpec,
    default_topics,
    keyed_views,
)

__all__ = [
    "ALERTS",
    "DEAD_LETTER",
    "REVOCATIONS",
    "TOKEN_USAGE",
    "TOKEN_USAGE_BY_IP",
    "TOKEN_USAGE_BY_SUBJECT",
    "VERDICTS",
    "Bus",
    "Consumer",
    "Message",
    "MessageRun",
    "TopicSpec",
    "default_topics",
    "keyed_views",
]
