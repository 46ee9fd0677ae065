"""The re-keying stage over a real broker: a foreign producer's stream reaches both views whole, and a restarted
stage resumes from its commit without losing an event.

Each test has topics and groups of its own (uuid suffixes) on the session broker of ``kafka_bootstrap``."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from pipeline.bus import DEAD_LETTER, TopicSpec, keyed_views
from pipeline.bus.kafka import CONSUMER_CLIENTS, KafkaBus
from pipeline.events import TokenUsage
from pipeline.views import RekeyStage
from tests.support.kafka import read_topic
from tests.support.views import expected_counts, usage_stream

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

EVENTS = 3000


@pytest.fixture
def source(kafka_bootstrap: str) -> Iterator[str]:
    """A usage topic of this test's own (3 partitions) with its two views, deleted afterwards."""
    topic = f"test.usage-{uuid.uuid4().hex[:12]}"
    specs = [TopicSpec(name, 3) for name in (topic, *keyed_views(topic))]
    KafkaBus(kafka_bootstrap, topics=[*specs, TopicSpec(DEAD_LETTER, 1)], client_id="test-views").close()
    yield topic
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15_000)
    try:
        admin.delete_topics([spec.name for spec in specs], timeout_ms=15_000, raise_errors=False)
    finally:
        admin.close()


def foreign_produce(bootstrap: str, topic: str, records: tuple[TokenUsage, ...]) -> None:
    """What a producer that knows nothing of jwtwatch but the record does: plain kafka-python, the usage topic's key."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        an_hour_ago = int(time.time() * 1000) - 3_600_000  # its own times, an hour back: not the stage's clock
        for index, record in enumerate(records):
            producer.send(topic, key=record.bus_key.encode(), value=record.to_json(), timestamp_ms=an_hour_ago + index)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)


def step_until(stage: RekeyStage, read: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while stage.counts()["read"] + stage.dead_letters < read:
        assert time.monotonic() < deadline, f"the stage read {stage.counts()} of {read} within {timeout_s:g} s"
        stage.step(0.5)


def view_counts(bootstrap: str, topic: str) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """Messages per key in the subject view and in the IP view, and per event_id in the IP view."""
    subject_topic, ip_topic = keyed_views(topic)
    by_subject, by_ip = read_topic(bootstrap, subject_topic), read_topic(bootstrap, ip_topic)
    assert all(m.key is not None for m in by_subject + by_ip)
    ids = Counter(TokenUsage.from_json(m.value).event_id for m in by_ip)
    return (Counter(m.key.decode() for m in by_subject if m.key is not None),
            Counter(m.key.decode() for m in by_ip if m.key is not None), ids)  # fmt: skip


@pytest.mark.parametrize("consumer_client", CONSUMER_CLIENTS)
def test_a_foreign_producers_stream_reaches_both_views_whole(
    kafka_bootstrap: str, source: str, consumer_client: str
) -> None:
    records = usage_stream()[:EVENTS]
    foreign_produce(kafka_bootstrap, source, records)
    bus = KafkaBus(kafka_bootstrap, topics=[], client_id="test-rekey", consumer_client=consumer_client)
    try:
        stage = RekeyStage(bus, group=f"test-rekey-{uuid.uuid4().hex[:8]}", source=source)
        step_until(stage, len(records))
        stage.close()
    finally:
        bus.close()
    subjects, ips, ids = view_counts(kafka_bootstrap, source)
    assert (subjects, ips) == expected_counts(records)
    assert set(ids) == {r.event_id for r in records} and set(ids.values()) == {1}
    assert stage.dead_letters == 0
    # Each view message keeps its source message's time (a rebuild seeks a view by time as it does the topic).
    source_time = {m.value: m.timestamp_ms for m in read_topic(kafka_bootstrap, source)}
    views = [m for view in keyed_views(source) for m in read_topic(kafka_bootstrap, view)]
    assert views and all(m.timestamp_ms == source_time[m.value] for m in views)


def test_a_restarted_stage_resumes_from_its_commit_without_losing_events(kafka_bootstrap: str, source: str) -> None:
    records = usage_stream()[:EVENTS]
    foreign_produce(kafka_bootstrap, source, records)
    group = f"test-rekey-{uuid.uuid4().hex[:8]}"
    first_bus = KafkaBus(kafka_bootstrap, topics=[], client_id="test-rekey-1")
    try:
        first = RekeyStage(first_bus, group=group, source=source, max_records=200)
        step_until(first, 600)  # some of the stream, committed poll by poll
        first.close()
    finally:
        first_bus.close()
    done_first = first.counts()["read"]
    assert 600 <= done_first < len(records)
    second_bus = KafkaBus(kafka_bootstrap, topics=[], client_id="test-rekey-2")
    try:
        second = RekeyStage(second_bus, group=group, source=source)
        step_until(second, len(records) - done_first)
        time.sleep(1)
        assert second.step(1.0) == 0  # it resumed where the first stopped: nothing more to read
        second.close()
    finally:
        second_bus.close()
    assert done_first + second.counts()["read"] == len(records)
    subjects, ips, ids = view_counts(kafka_bootstrap, source)
    assert (subjects, ips) == expected_counts(records)  # none lost, none twice (the first closed cleanly)
    assert set(ids.values()) == {1} and len(ids) == len(records)
