"""KafkaBus against a real Apache Kafka broker: the memory bus's behaviour, on Kafka.

Every test uses its own topics and groups (uuid suffixes) on the session broker of ``kafka_bootstrap``.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaAdminClient
from kafka import errors as kafka_errors
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.partitioner.default import murmur2

from pipeline.bus import (
    ALERTS,
    DEAD_LETTER,
    REVOCATIONS,
    TOKEN_USAGE,
    TOKEN_USAGE_BY_IP,
    TOKEN_USAGE_BY_SUBJECT,
    Message,
    TopicSpec,
    keyed_views,
)
from pipeline.bus.kafka import CONSUMER_CLIENTS, KafkaBus
from pipeline.bus.kafka_calls import translated
from pipeline.bus.kafka_consumer import KafkaConsumerAdapter
from pipeline.errors import CommitRejected, KafkaBusError, KafkaCommitRejected

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

ADMIN_TIMEOUTS = {"request_timeout_ms": 15_000, "bootstrap_timeout_ms": 15_000}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def admin(kafka_bootstrap: str) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id=unique("test-admin"), **ADMIN_TIMEOUTS)
    try:
        yield client
    finally:
        client.close()


BusFactory = Callable[..., KafkaBus]


@pytest.fixture(params=CONSUMER_CLIENTS)
def consumer_client(request: pytest.FixtureRequest) -> str:
    """Every consumer test runs with each client the bus can consume with (kafka-python, confluent-kafka)."""
    return request.param


@pytest.fixture
def make_bus(kafka_bootstrap: str, admin: KafkaAdminClient, consumer_client: str) -> Iterator[BusFactory]:
    """KafkaBus(kafka_bootstrap, topics=...) that is closed, and whose topics are deleted, after the test."""
    buses: list[KafkaBus] = []
    topics: set[str] = set()

    def make(specs: list[TopicSpec], **options: object) -> KafkaBus:
        options.setdefault("consumer_client", consumer_client)
        bus = KafkaBus(kafka_bootstrap, topics=specs, client_id=unique("test"), **options)  # type: ignore[arg-type]
        buses.append(bus)
        topics.update(spec.name for spec in specs)
        return bus

    yield make
    for bus in buses:
        bus.close()
    if topics:
        admin.delete_topics(sorted(topics), timeout_ms=15_000, raise_errors=False)


def drain(consumer: KafkaConsumerAdapter, expect: int | None = None, max_records: int = 500) -> list[Message]:
    """Poll until ``expect`` messages arrived (bounded), or — without ``expect`` — until a poll comes back empty."""
    seen: list[Message] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        batch = consumer.poll(max_records, timeout_s=2.0 if expect is not None else 1.0)
        seen.extend(batch)
        if expect is not None and len(seen) >= expect:
            break
        if expect is None and not batch:
            break
    return seen


def poll_exactly(consumer: KafkaConsumerAdapter, count: int) -> list[Message]:
    """Exactly ``count`` messages, in as many polls as it takes (each asks for no more than still wanted)."""
    seen: list[Message] = []
    deadline = time.monotonic() + 60
    while len(seen) < count and time.monotonic() < deadline:
        seen.extend(consumer.poll(count - len(seen), timeout_s=2.0))
    assert len(seen) == count, f"got {len(seen)} of {count}"
    return seen


def values(messages: list[Message]) -> list[bytes]:
    return [m.value for m in messages]


def settle(*consumers: KafkaConsumerAdapter, partitions: int) -> None:
    """Poll every member of one group in turn until together they hold all partitions, each some."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for consumer in consumers:
            assert consumer.poll(timeout_s=0.2) == []  # nothing published yet
        held = [consumer.assignment() for consumer in consumers]
        union = set().union(*held)
        if all(held) and len(union) == partitions and sum(map(len, held)) == partitions:
            return
    pytest.fail(f"group did not settle: {[c.assignment() for c in consumers]}")


def topic_configs(admin: KafkaAdminClient, *names: str) -> dict[str, str]:
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, ["cleanup.policy"]) for name in names], config_filter="all"
    )
    return {name: described["topic"][name]["cleanup.policy"]["value"] for name in names}


def partition_counts(admin: KafkaAdminClient, *names: str) -> dict[str, int]:
    return {topic["name"]: len(topic["partitions"]) for topic in admin.describe_topics(list(names))}


# --- topics -----------------------------------------------------------------------------------------------


def test_topics_are_created_with_partitions_and_compaction(make_bus: BusFactory, admin: KafkaAdminClient) -> None:
    compacted, plain = unique("test.revocations"), unique("test.events")
    specs = [TopicSpec(compacted, 1, compacted=True), TopicSpec(plain, 4)]
    make_bus(specs)
    assert topic_configs(admin, compacted, plain) == {compacted: "compact", plain: "delete"}
    assert partition_counts(admin, compacted, plain) == {compacted: 1, plain: 4}
    make_bus(specs)  # already there: fine
    assert partition_counts(admin, compacted, plain) == {compacted: 1, plain: 4}


def test_default_topics_exist_with_their_shapes(kafka_bootstrap: str, admin: KafkaAdminClient) -> None:
    with KafkaBus(kafka_bootstrap, client_id=unique("test")) as bus:
        group = unique("g")
        with bus.consumer(
            [TOKEN_USAGE, *keyed_views(TOKEN_USAGE), ALERTS, REVOCATIONS, DEAD_LETTER], group
        ) as consumer:
            partitions = Counter(topic for topic, _ in consumer.end_offsets())
    assert partitions == {
        TOKEN_USAGE: 3,
        TOKEN_USAGE_BY_SUBJECT: 3,
        TOKEN_USAGE_BY_IP: 3,
        ALERTS: 3,
        REVOCATIONS: 1,
        DEAD_LETTER: 1,
    }
    assert topic_configs(admin, REVOCATIONS, TOKEN_USAGE) == {REVOCATIONS: "compact", TOKEN_USAGE: "delete"}


def test_unknown_topic_is_created_on_first_use(make_bus: BusFactory, admin: KafkaAdminClient) -> None:
    bus = make_bus([])
    topic = unique("test.auto")
    try:
        bus.publish(topic, None, b"x")
        bus.flush(30)
        with bus.consumer([topic], unique("g")) as consumer:
            [message] = drain(consumer, expect=1)
        assert message.key is None and message.value == b"x" and message.topic == topic
    finally:
        admin.delete_topics([topic], timeout_ms=15_000, raise_errors=False)


# --- producing and keyed order ----------------------------------------------------------------------------


def test_same_key_same_partition_in_order(make_bus: BusFactory) -> None:
    topic = unique("test.events")
    bus = make_bus([TopicSpec(topic, 4)])
    keys = [f"jti-{i}" for i in range(12)]
    for n in range(10):
        for key in keys:
            bus.publish(topic, key, f"{key}:{n}".encode())
    bus.flush(30)
    with bus.consumer([topic], unique("g")) as consumer:
        messages = drain(consumer, expect=120)
        assert consumer.poll(timeout_s=0.5) == []
    assert len(messages) == 120
    partition_of: dict[bytes | None, set[int]] = {}
    for m in messages:
        partition_of.setdefault(m.key, set()).add(m.partition)
    assert all(len(parts) == 1 for parts in partition_of.values())
    assert len({p for parts in partition_of.values() for p in parts}) > 1  # keys do spread over partitions
    for key in keys:
        assert [m.value for m in messages if m.key == key.encode()] == [f"{key}:{n}".encode() for n in range(10)]
    for p in {m.partition for m in messages}:
        offsets = [m.offset for m in messages if m.partition == p]
        assert offsets == list(range(len(offsets)))
    assert all(m.topic == topic and m.timestamp_ms > 0 for m in messages)


def test_str_and_bytes_keys_are_the_same_key(make_bus: BusFactory) -> None:
    topic = unique("test.events")
    bus = make_bus([TopicSpec(topic, 8)])
    bus.publish(topic, "k", b"1")
    bus.publish(topic, b"k", b"2")
    bus.flush(30)
    with bus.consumer([topic], unique("g")) as consumer:
        a, b = drain(consumer, expect=2)
    assert a.partition == b.partition and a.key == b.key == b"k"
    assert (a.value, b.value) == (b"1", b"2")


def test_a_failed_send_surfaces_at_flush(make_bus: BusFactory, admin: KafkaAdminClient) -> None:
    topic = unique("test.tiny")
    admin.create_topics(
        {topic: {"num_partitions": 1, "replication_factor": 1, "configs": {"max.message.bytes": "200"}}},
        timeout_ms=15_000,
        wait_for_metadata=True,
    )
    bus = make_bus([TopicSpec(topic, 1)])  # exists already, with its own settings
    bus.publish(topic, "k", b"x" * 2000)  # the broker refuses it
    with pytest.raises(KafkaBusError, match="could not be delivered"):
        bus.flush(30)
    bus.publish(topic, "k", b"small")  # the bus stays usable, and the failure was reported once
    bus.flush(30)
    with bus.consumer([topic], unique("g")) as consumer:
        assert values(drain(consumer, expect=1)) == [b"small"]


def test_unreachable_broker_raises_instead_of_hanging() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(KafkaBusError, match="cannot reach Kafka"):
            KafkaBus(address, timeout_s=2)
        with pytest.raises(KafkaBusError, match="cannot reach Kafka"):
            KafkaBus(address, timeout_s=2, create_topics=False)


# --- groups, commits --------------------------------------------------------------------------------------


def test_without_commit_a_new_member_gets_everything_again(make_bus: BusFactory) -> None:
    topic, group = unique("test.events"), unique("workers")
    bus = make_bus([TopicSpec(topic, 3)])
    for i in range(6):
        bus.publish(topic, f"k{i}", f"m{i}".encode())
    bus.flush(30)
    crashed = bus.consumer([topic], group)
    assert len(drain(crashed, expect=6)) == 6
    crashed.close()  # no commit: the batch was never processed
    with bus.consumer([topic], group) as again:
        assert sorted(values(drain(again, expect=6))) == sorted(f"m{i}".encode() for i in range(6))


def test_commit_then_new_member_resumes_after_commit(make_bus: BusFactory) -> None:
    topic, group = unique("test.events"), unique("workers")
    bus = make_bus([TopicSpec(topic, 3)])
    for i in range(6):
        bus.publish(topic, f"k{i}", f"m{i}".encode())
    bus.flush(30)
    first = bus.consumer([topic], group)
    assert len(drain(first, expect=6)) == 6
    first.commit()
    first.close()
    bus.publish(topic, "k0", b"after")
    bus.flush(30)
    with bus.consumer([topic], group) as second:
        assert values(drain(second)) == [b"after"]


def test_commit_covers_only_what_was_polled(make_bus: BusFactory) -> None:
    topic, group = unique("test.events"), unique("workers")
    bus = make_bus([TopicSpec(topic, 1)])
    for i in range(10):
        bus.publish(topic, "k", f"m{i}".encode())
    bus.flush(30)
    consumer = bus.consumer([topic], group)
    assert values(poll_exactly(consumer, 4)) == [b"m0", b"m1", b"m2", b"m3"]
    consumer.commit()
    poll_exactly(consumer, 3)  # polled, not committed
    consumer.close()
    with bus.consumer([topic], group) as resumed:
        assert values(drain(resumed)) == [f"m{i}".encode() for i in range(4, 10)]


def test_commit_with_explicit_offsets(make_bus: BusFactory) -> None:
    topic, group = unique("test.events"), unique("workers")
    bus = make_bus([TopicSpec(topic, 2)])
    # Two keys that land in different partitions (Kafka's default partitioner: murmur2 of the key).
    key_a = "a"
    key_b = next(k for k in (f"b{i}" for i in range(100)) if _partition_of(k, 2) != _partition_of(key_a, 2))
    for i in range(10):
        bus.publish(topic, key_a, f"a{i}".encode())
        bus.publish(topic, key_b, f"b{i}".encode())
    bus.flush(30)
    consumer = bus.consumer([topic], group)
    seen = drain(consumer, expect=20)
    partition_a = next(m.partition for m in seen if m.key == key_a.encode())
    partition_b = next(m.partition for m in seen if m.key == key_b.encode())
    assert partition_a != partition_b
    # Processed: a0..a2 and b0..b6. Committing for a partition of another topic is ignored.
    consumer.commit({(topic, partition_a): 3, (topic, partition_b): 7, (unique("other"), 0): 1})
    consumer.close()
    with bus.consumer([topic], group) as resumed:
        assert resumed.positions() == {(topic, partition_a): 3, (topic, partition_b): 7}
        rest = drain(resumed, expect=10)
    assert sorted(values(rest)) == sorted([f"a{i}".encode() for i in range(3, 10)] + [b"b7", b"b8", b"b9"])


def _partition_of(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def test_two_members_split_partitions_and_see_each_message_once(make_bus: BusFactory) -> None:
    topic, group = unique("test.events"), unique("workers")
    bus = make_bus([TopicSpec(topic, 3)])
    a = bus.consumer([topic], group)
    b = bus.consumer([topic], group)
    settle(a, b, partitions=3)
    sent = [f"m{i}".encode() for i in range(60)]
    for i, value in enumerate(sent):
        bus.publish(topic, f"key-{i}", value)
    bus.flush(30)
    got_a: list[Message] = []
    got_b: list[Message] = []
    deadline = time.monotonic() + 60
    while len(got_a) + len(got_b) < len(sent) and time.monotonic() < deadline:
        got_a.extend(a.poll(timeout_s=0.5))
        got_b.extend(b.poll(timeout_s=0.5))
    for _ in range(3):  # anything more would be a duplicate
        got_a.extend(a.poll(timeout_s=0.3))
        got_b.extend(b.poll(timeout_s=0.3))
    assert got_a and got_b
    assert {m.partition for m in got_a}.isdisjoint({m.partition for m in got_b})
    assert sorted(values(got_a) + values(got_b)) == sorted(sent)
    assert set(a.end_offsets()).isdisjoint(b.end_offsets())
    assert len(a.end_offsets()) + len(b.end_offsets()) == 3
    b.close()
    a.close()


def test_after_a_member_leaves_the_other_takes_its_partitions(make_bus: BusFactory) -> None:
    topic, group = unique("test.events"), unique("workers")
    bus = make_bus([TopicSpec(topic, 3)])
    a = bus.consumer([topic], group)
    b = bus.consumer([topic], group)
    settle(a, b, partitions=3)
    assert len(a.assignment()) < 3
    b.close()
    deadline = time.monotonic() + 60
    while len(a.assignment()) < 3 and time.monotonic() < deadline:
        a.poll(timeout_s=0.2)
    assert len(a.end_offsets()) == 3
    a.close()


def test_different_groups_each_see_everything(make_bus: BusFactory) -> None:
    topic = unique("test.events")
    bus = make_bus([TopicSpec(topic, 3)])
    sent = [f"m{i}".encode() for i in range(20)]
    for i, value in enumerate(sent):
        bus.publish(topic, f"k{i % 7}", value)
    bus.flush(30)
    for name in ("windows", "archive", "audit"):
        with bus.consumer([topic], unique(name)) as consumer:
            assert sorted(values(drain(consumer, expect=20))) == sorted(sent)


def test_from_beginning_false_starts_at_the_end(make_bus: BusFactory) -> None:
    topic = unique("test.events")
    bus = make_bus([TopicSpec(topic, 3)])
    for i in range(5):
        bus.publish(topic, f"k{i}", b"old")
    bus.flush(30)
    with bus.consumer([topic], unique("tail"), from_beginning=False) as consumer:
        assert consumer.poll(timeout_s=0.2) == []
        assert consumer.positions() == consumer.end_offsets()  # joined; "the end" is fixed now
        bus.publish(topic, "k1", b"new")
        bus.flush(30)
        assert values(drain(consumer, expect=1)) == [b"new"]
    with bus.consumer([topic], unique("replay"), from_beginning=True) as consumer:
        assert sorted(values(drain(consumer, expect=6))) == sorted([b"old"] * 5 + [b"new"])


def test_committed_offset_wins_over_from_beginning_false(make_bus: BusFactory) -> None:
    topic, group = unique("test.events"), unique("g")
    bus = make_bus([TopicSpec(topic, 1)])
    for i in range(3):
        bus.publish(topic, "k", f"m{i}".encode())
    bus.flush(30)
    with bus.consumer([topic], group) as consumer:
        poll_exactly(consumer, 1)
        consumer.commit()
    with bus.consumer([topic], group, from_beginning=False) as consumer:
        assert values(drain(consumer, expect=2)) == [b"m1", b"m2"]


# --- seeking and offsets ----------------------------------------------------------------------------------


def _next_ms_after(stamp_ms: int) -> int:
    while int(time.time() * 1000) <= stamp_ms:
        time.sleep(0.001)
    return int(time.time() * 1000)


def test_seek_to_time_and_seek_to_beginning(make_bus: BusFactory) -> None:
    topic = unique("test.events")
    bus = make_bus([TopicSpec(topic, 3)])
    for i in range(9):
        bus.publish(topic, f"k{i}", f"early{i}".encode())
    bus.flush(30)
    with bus.consumer([topic], unique("g")) as consumer:
        early = drain(consumer, expect=9)
        boundary = _next_ms_after(max(m.timestamp_ms for m in early))
        for i in range(9):
            bus.publish(topic, f"k{i}", f"late{i}".encode())
        bus.flush(30)
        late = drain(consumer, expect=9)
        assert all(m.timestamp_ms >= boundary for m in late)

        consumer.seek_to_time(boundary)
        assert sorted(values(drain(consumer, expect=9))) == sorted(f"late{i}".encode() for i in range(9))

        consumer.seek_to_time(boundary + 3_600_000)  # the future: nothing to read, positioned at the end
        assert consumer.positions() == consumer.end_offsets()
        assert consumer.poll(timeout_s=0.5) == []

        consumer.seek_to_time(0)
        assert len(drain(consumer, expect=18)) == 18

        consumer.seek_to_beginning()
        assert len(drain(consumer, expect=18)) == 18
        assert consumer.poll(timeout_s=0.5) == []


def test_seek_to_offsets(make_bus: BusFactory) -> None:
    topic = unique("test.events")
    bus = make_bus([TopicSpec(topic, 1)])
    for i in range(10):
        bus.publish(topic, "k", f"m{i}".encode())
    bus.flush(30)
    with bus.consumer([topic], unique("g")) as consumer:
        assert len(drain(consumer, expect=10)) == 10
        consumer.seek({(topic, 0): 7, (unique("other"), 0): 3})  # a partition not assigned is ignored
        assert consumer.positions() == {(topic, 0): 7}
        assert values(drain(consumer, expect=3)) == [b"m7", b"m8", b"m9"]
        consumer.seek({(topic, 0): 0})
        assert values(drain(consumer, expect=10)) == [f"m{i}".encode() for i in range(10)]


def test_end_offsets_and_positions_report_lag(make_bus: BusFactory) -> None:
    topic = unique("test.events")
    bus = make_bus([TopicSpec(topic, 1)])
    with bus.consumer([topic], unique("g")) as consumer:
        assert consumer.end_offsets() == {(topic, 0): 0}
        assert consumer.positions() == {(topic, 0): 0}
        for i in range(5):
            bus.publish(topic, "k", f"m{i}".encode())
        bus.flush(30)
        assert consumer.end_offsets() == {(topic, 0): 5}
        assert consumer.positions() == {(topic, 0): 0}
        poll_exactly(consumer, 2)
        assert consumer.positions() == {(topic, 0): 2}
        drain(consumer, expect=3)
        assert consumer.positions() == consumer.end_offsets() == {(topic, 0): 5}


def test_records_fetched_while_joining_are_not_skipped(make_bus: BusFactory) -> None:
    """positions() polls to join the group; what those polls fetch is returned by the next poll()."""
    topic = unique("test.events")
    bus = make_bus([TopicSpec(topic, 1)])
    for i in range(50):
        bus.publish(topic, "k", f"m{i}".encode())
    bus.flush(30)
    with bus.consumer([topic], unique("g")) as consumer:
        assert consumer.positions() == {(topic, 0): 0}
        assert values(drain(consumer, expect=50)) == [f"m{i}".encode() for i in range(50)]
        assert consumer.positions() == {(topic, 0): 50}


def test_poll_runs_gives_the_messages_as_columns(make_bus: BusFactory) -> None:
    """poll_runs: one run per partition with its offsets, keys and values in order; a tombstone is b""."""
    topic = unique("test.events")
    bus = make_bus([TopicSpec(topic, 3)])
    for i in range(90):
        bus.publish(topic, f"k{i % 9}", f"m{i}".encode() if i != 40 else None)
    bus.flush(30)
    with bus.consumer([topic], unique("g")) as consumer:
        runs = []
        deadline = time.monotonic() + 30
        while sum(len(run.values) for run in runs) < 90 and time.monotonic() < deadline:
            runs.extend(consumer.poll_runs(25, timeout_s=0.5))
        assert consumer.poll_runs(25, timeout_s=0.3) == []
    got = sorted(
        (run.partition, offset, key, value)
        for run in runs
        for offset, key, value in zip(run.offsets, run.keys, run.values, strict=True)
    )
    assert len(got) == 90
    assert all(run.topic == topic for run in runs)
    assert sorted(value for *_, value in got) == sorted([f"m{i}".encode() for i in range(90) if i != 40] + [b""])
    for p in {partition for partition, *_ in got}:
        assert [offset for partition, offset, *_ in got if partition == p] == list(
            range(sum(1 for partition, *_ in got if partition == p))
        )
    by_key: dict[bytes | None, list[bytes]] = {}
    for run in runs:
        for key, value in zip(run.keys, run.values, strict=True):
            by_key.setdefault(key, []).append(value)
    assert by_key[b"k0"] == [f"m{i}".encode() for i in range(0, 90, 9)]  # one key, one partition, in order


# --- polling and closing ----------------------------------------------------------------------------------


def test_poll_on_idle_topic_returns_empty(make_bus: BusFactory) -> None:
    topic = unique("test.events")
    bus = make_bus([TopicSpec(topic, 3)])
    with bus.consumer([topic], unique("g")) as consumer:
        assert consumer.poll(timeout_s=0) == []
        assert consumer.poll(timeout_s=0.2) == []


def test_close_wakes_a_waiting_poll_and_refuses_publishing(make_bus: BusFactory) -> None:
    topic = unique("test.events")
    bus = make_bus([TopicSpec(topic, 3)])
    consumer = bus.consumer([topic], unique("g"))
    consumer.end_offsets()  # joined
    result: list[list[Message]] = []
    waiter = threading.Thread(target=lambda: result.append(consumer.poll(timeout_s=60)), daemon=True)
    waiter.start()
    time.sleep(0.3)
    bus.close()
    waiter.join(timeout=30)
    assert not waiter.is_alive() and result == [[]]
    with pytest.raises(RuntimeError):
        bus.publish(topic, "k", b"late")
    assert consumer.poll(timeout_s=0.1) == []


def test_many_small_messages_are_all_delivered(make_bus: BusFactory, capsys: pytest.CaptureFixture[str]) -> None:
    count = 20_000
    topic = unique("test.volume")
    bus = make_bus([TopicSpec(topic, 3)])
    payload = b'{"schema":"token-usage/1","event_id":"%s","outcome":"accepted","ip":"203.0.113.7"}'
    started = time.perf_counter()
    for i in range(count):
        bus.publish(topic, f"jti-{i % 500}", payload % str(i).encode())
    bus.flush(60)
    publish_s = time.perf_counter() - started

    with bus.consumer([topic], unique("g")) as consumer:
        consumer.end_offsets()  # join first: the rate below is reading only
        started = time.perf_counter()
        received = 0
        event_ids: set[bytes] = set()
        deadline = time.monotonic() + 90
        while received < count and time.monotonic() < deadline:
            batch = consumer.poll(500, timeout_s=2.0)
            received += len(batch)
            event_ids.update(m.value for m in batch)
        consume_s = time.perf_counter() - started
        assert consumer.poll(timeout_s=0.5) == []
    assert received == count == len(event_ids)
    with capsys.disabled():
        print(
            f"\n[kafka bus] {count} messages: publish+flush {count / publish_s:,.0f} msg/s ({publish_s:.2f} s), "
            f"consume {count / consume_s:,.0f} msg/s ({consume_s:.2f} s)"
        )


@pytest.mark.parametrize(
    "error",
    [
        kafka_errors.CommitFailedError,
        kafka_errors.RebalanceInProgressError,
        kafka_errors.IllegalGenerationError,
        kafka_errors.UnknownMemberIdError,
    ],
)
def test_a_commit_lost_to_a_rebalance_is_rejected_not_failed(error: type[Exception]) -> None:
    """kafka-python's answers to a commit a rebalance got ahead of become CommitRejected (the runner keeps its
    work and commits again); any other Kafka error, and these outside a commit, stay KafkaBusError."""
    with pytest.raises(KafkaCommitRejected, match="commit"), translated("commit", commit=True):
        raise error("generation moved on")
    with pytest.raises(KafkaBusError) as raised, translated("poll"):
        raise error("generation moved on")
    assert not isinstance(raised.value, CommitRejected)
    with pytest.raises(KafkaBusError) as raised, translated("commit", commit=True):
        raise kafka_errors.KafkaTimeoutError("no answer")
    assert not isinstance(raised.value, CommitRejected)
