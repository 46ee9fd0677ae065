"""Smoke test against a real Apache Kafka broker (scripts/kafka-local).

Creates a 3-partition topic, produces keyed messages idempotently, consumes
them all in a consumer group with manual commits, and checks that a second
member of the group resumes from the committed offsets and sees nothing new.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.serializer import DefaultSerializer, JsonSerializer

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

N_MESSAGES = 100
N_KEYS = 7
N_PARTITIONS = 3
CLIENT_TIMEOUTS = {"request_timeout_ms": 15_000, "bootstrap_timeout_ms": 15_000}


def _consumer(bootstrap: str, topic: str, group: str) -> KafkaConsumer:
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id=f"{group}-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        key_deserializer=DefaultSerializer(),
        value_deserializer=JsonSerializer(),
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
        max_poll_interval_ms=60_000,
        **CLIENT_TIMEOUTS,
    )


def test_produce_consume_commit_roundtrip(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:12]
    topic = f"jwtwatch-smoke-{suffix}"
    group = f"jwtwatch-smoke-group-{suffix}"

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id=f"smoke-admin-{suffix}", **CLIENT_TIMEOUTS)
    try:
        admin.create_topics(
            {topic: {"num_partitions": N_PARTITIONS, "replication_factor": 1}},
            timeout_ms=15_000,
            wait_for_metadata=True,
        )
        [described] = admin.describe_topics([topic])
        assert len(described["partitions"]) == N_PARTITIONS

        # --- produce: N keyed messages, each carrying its per-key sequence number.
        producer = KafkaProducer(
            bootstrap_servers=kafka_bootstrap,
            client_id=f"smoke-producer-{suffix}",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_block_ms=15_000,
            delivery_timeout_ms=30_000,
            key_serializer=DefaultSerializer(),
            value_serializer=JsonSerializer(),
            **CLIENT_TIMEOUTS,
        )
        try:
            next_seq: dict[str, int] = defaultdict(int)
            futures = []
            for i in range(N_MESSAGES):
                key = f"user-{i % N_KEYS}"
                value = {"i": i, "key": key, "seq": next_seq[key]}
                next_seq[key] += 1
                futures.append((key, value, producer.send(topic, key=key, value=value)))
            producer.flush(timeout=30)
            produced_partition: dict[str, set[int]] = defaultdict(set)
            for key, _value, future in futures:
                produced_partition[key].add(future.get(timeout=30).partition)
        finally:
            producer.close(timeout=10)
        assert all(len(parts) == 1 for parts in produced_partition.values()), produced_partition

        # --- consume everything in a group, then commit.
        tps = [TopicPartition(topic, p) for p in range(N_PARTITIONS)]
        received = []
        consumer = _consumer(kafka_bootstrap, topic, group)
        try:
            deadline = time.monotonic() + 60
            while len(received) < N_MESSAGES and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=1_000).values():
                    received.extend(batch)
            # A few more polls: anything beyond N would be a duplicate.
            for _ in range(3):
                for batch in consumer.poll(timeout_ms=300).values():
                    received.extend(batch)
            assert len(received) == N_MESSAGES, f"got {len(received)} of {N_MESSAGES} within 60 s"
            consumer.commit(timeout_ms=15_000)
            committed = {tp.partition: consumer.committed(tp, timeout_ms=15_000) for tp in tps}
        finally:
            consumer.close(autocommit=False, timeout_ms=10_000)

        assert sorted(r.value["i"] for r in received) == list(range(N_MESSAGES))
        by_key: dict[str, list] = defaultdict(list)
        for record in received:
            assert record.key == record.value["key"]
            by_key[record.key].append(record)
        for key, records in by_key.items():
            partitions = {r.partition for r in records}
            assert partitions == produced_partition[key], f"{key} spread over partitions {partitions}"
            assert [r.value["seq"] for r in records] == list(range(next_seq[key])), f"{key} out of order"
            assert [r.offset for r in records] == sorted(r.offset for r in records)
        per_partition = defaultdict(int)
        for record in received:
            per_partition[record.partition] += 1
        assert committed == {p: per_partition[p] for p in range(N_PARTITIONS)}, committed

        # --- a new member of the same group resumes at the committed offsets: nothing new.
        again = []
        second = _consumer(kafka_bootstrap, topic, group)
        try:
            deadline = time.monotonic() + 45
            while len(second.assignment()) < N_PARTITIONS and time.monotonic() < deadline:
                for batch in second.poll(timeout_ms=500).values():
                    again.extend(batch)
            assert len(second.assignment()) == N_PARTITIONS, "second consumer never got its partitions"
            for _ in range(4):
                for batch in second.poll(timeout_ms=500).values():
                    again.extend(batch)
            positions = {tp.partition: second.position(tp, timeout_ms=15_000) for tp in tps}
        finally:
            second.close(autocommit=False, timeout_ms=10_000)
        assert again == [], f"second consumer re-read {len(again)} committed messages"
        assert positions == committed
    finally:
        try:
            admin.delete_topics([topic], timeout_ms=15_000, raise_errors=False)
        finally:
            admin.close()
