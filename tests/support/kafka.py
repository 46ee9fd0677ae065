"""Kafka helpers for the tests that run jwtwatch over a real broker: clean topics, a topic read to its end,
a consumer group's committed offsets, and a streaming runner stepped until it has caught up."""

from __future__ import annotations

import time
import uuid

from kafka.admin import KafkaAdminClient

from pipeline.bus import TOKEN_USAGE
from pipeline.bus.base import Message
from pipeline.bus.kafka import KafkaBus
from pipeline.bus.topics import default_topics
from pipeline.detection.runner import StreamingRunner

#: Long enough for a runner to consume a few minutes of simulated traffic on a loaded machine.
DRAIN_TIMEOUT_S = 240.0


def fresh_topics(bootstrap: str) -> None:
    """A clean slate: these tests use the product's topic names on a broker other tests may have used."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    try:
        names = {spec.name for spec in default_topics()}
        existing = names & set(admin.list_topics())
        if existing:
            admin.delete_topics(list(existing))
            deadline = time.monotonic() + 60
            while names & set(admin.list_topics()) and time.monotonic() < deadline:
                time.sleep(0.5)
    finally:
        admin.close()
    # Create them again before any process starts, so that no consumer subscribes to a topic that is
    # still being deleted (creating one that is marked for deletion "succeeds" and then vanishes).
    deadline = time.monotonic() + 60
    while True:
        try:
            KafkaBus(bootstrap).close()
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
            try:
                present = names <= set(admin.list_topics())
            finally:
                admin.close()
            if present:
                time.sleep(1)  # and still there a moment later
                admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
                try:
                    if names <= set(admin.list_topics()):
                        return
                finally:
                    admin.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("the jwtwatch topics could not be re-created")
        time.sleep(1)


def read_topic(bootstrap: str, topic: str, timeout_s: float = 120.0) -> list[Message]:
    """Every message of ``topic``, read from the beginning by a group of its own, until caught up."""
    bus = KafkaBus(bootstrap, client_id="test-reader", create_topics=False)
    try:
        consumer = bus.consumer([topic], f"test-reader-{uuid.uuid4()}", from_beginning=True)
        out: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while True:
            batch = consumer.poll(5000, 0.5)
            out.extend(batch)
            if not batch:
                ends, positions = consumer.end_offsets(), consumer.positions()
                if all(positions.get(tp, 0) >= end for tp, end in ends.items()):
                    return out
            assert time.monotonic() < deadline, f"could not read {topic} to its end within {timeout_s:g} s"
    finally:
        bus.close()


def drain(runner: StreamingRunner, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Step until the runner has consumed its topic to the end and gone quiet twice (the first quiet step
    releases what is buffered, the second flushes the engine's last tick)."""
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while quiet < 2:
        assert time.monotonic() < deadline, f"the runner did not catch up within {timeout_s:g} s"
        if runner.step():
            quiet = 0
            continue
        positions, ends = runner.consumer.positions(), runner.consumer.end_offsets()
        quiet = quiet + 1 if all(positions.get(tp, 0) >= end for tp, end in ends.items()) else 0


def committed_offsets(bootstrap: str, group: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == TOKEN_USAGE}
