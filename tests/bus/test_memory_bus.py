"""The in-process bus keeps Kafka's semantics: keyed partitions, groups, commits, seeking, retention."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from pipeline.bus import (
    ALERTS,
    DEAD_LETTER,
    REVOCATIONS,
    TOKEN_USAGE,
    TOKEN_USAGE_BY_IP,
    TOKEN_USAGE_BY_SUBJECT,
    Consumer,
    Message,
    TopicSpec,
    keyed_views,
)
from pipeline.bus.memory import MemoryBus

TOPIC = "test.events"


def make_bus(partitions: int = 3, retention: int = 1_000_000) -> MemoryBus:
    return MemoryBus(
        [TopicSpec(TOPIC, partitions), TopicSpec("test.compacted", 1, compacted=True)], retention=retention
    )


def drain(consumer: Consumer, expect: int | None = None, max_records: int = 500) -> list[Message]:
    """Poll until nothing more arrives (or ``expect`` messages were seen)."""
    seen: list[Message] = []
    while True:
        batch = consumer.poll(max_records, timeout_s=0.05 if expect is None else 2.0)
        seen.extend(batch)
        if not batch or (expect is not None and len(seen) >= expect):
            return seen


def values(messages: list[Message]) -> list[bytes]:
    return [m.value for m in messages]


def test_default_topics_exist_with_their_shapes() -> None:
    bus = MemoryBus()
    with bus.consumer([TOKEN_USAGE, *keyed_views(TOKEN_USAGE), ALERTS, REVOCATIONS, DEAD_LETTER], "g") as consumer:
        partitions = Counter(topic for topic, _ in consumer.end_offsets())
    assert partitions == {
        TOKEN_USAGE: 3,
        TOKEN_USAGE_BY_SUBJECT: 3,
        TOKEN_USAGE_BY_IP: 3,
        ALERTS: 3,
        REVOCATIONS: 1,
        DEAD_LETTER: 1,
    }


def test_same_key_same_partition_in_order() -> None:
    bus = make_bus(partitions=4)
    keys = [f"jti-{i}" for i in range(12)]
    for n in range(10):
        for key in keys:
            bus.publish(TOPIC, key, f"{key}:{n}".encode())
    with bus.consumer([TOPIC], "g") as consumer:
        messages = drain(consumer, expect=120)
    assert len(messages) == 120
    partition_of: dict[bytes, set[int]] = {}
    for m in messages:
        partition_of.setdefault(m.key, set()).add(m.partition)  # type: ignore[arg-type]
    assert all(len(parts) == 1 for parts in partition_of.values())
    assert len({p for parts in partition_of.values() for p in parts}) > 1  # keys do spread over partitions
    for key in keys:
        mine = [m.value for m in messages if m.key == key.encode()]
        assert mine == [f"{key}:{n}".encode() for n in range(10)]
    # Offsets are dense and increasing within each partition.
    for p in {m.partition for m in messages}:
        offsets = [m.offset for m in messages if m.partition == p]
        assert offsets == list(range(len(offsets)))


def test_str_and_bytes_keys_are_the_same_key() -> None:
    bus = make_bus(partitions=8)
    bus.publish(TOPIC, "k", b"1")
    bus.publish(TOPIC, b"k", b"2")
    with bus.consumer([TOPIC], "g") as consumer:
        a, b = drain(consumer, expect=2)
    assert a.partition == b.partition and a.key == b.key == b"k"


def test_commit_then_new_member_resumes_after_commit() -> None:
    bus = make_bus()
    for i in range(6):
        bus.publish(TOPIC, f"k{i}", f"m{i}".encode())
    first = bus.consumer([TOPIC], "workers")
    assert len(drain(first, expect=6)) == 6
    first.commit()
    first.close()
    bus.publish(TOPIC, "k0", b"after")
    second = bus.consumer([TOPIC], "workers")
    assert values(drain(second)) == [b"after"]
    second.close()


def test_without_commit_a_new_member_gets_everything_again() -> None:
    bus = make_bus()
    for i in range(6):
        bus.publish(TOPIC, f"k{i}", f"m{i}".encode())
    crashed = bus.consumer([TOPIC], "workers")
    assert len(drain(crashed, expect=6)) == 6
    crashed.close()  # no commit: the batch was never processed
    again = bus.consumer([TOPIC], "workers")
    assert sorted(values(drain(again))) == sorted(f"m{i}".encode() for i in range(6))
    again.close()


def test_commit_covers_only_what_was_polled() -> None:
    bus = make_bus(partitions=1)
    for i in range(10):
        bus.publish(TOPIC, "k", f"m{i}".encode())
    consumer = bus.consumer([TOPIC], "workers")
    assert values(consumer.poll(4, timeout_s=1)) == [b"m0", b"m1", b"m2", b"m3"]
    consumer.commit()
    consumer.poll(3, timeout_s=1)  # polled, not committed
    consumer.close()
    resumed = bus.consumer([TOPIC], "workers")
    assert values(drain(resumed)) == [f"m{i}".encode() for i in range(4, 10)]


def test_two_members_split_partitions_and_see_each_message_once() -> None:
    bus = make_bus(partitions=3)
    a = bus.consumer([TOPIC], "workers")
    b = bus.consumer([TOPIC], "workers")
    sent = [f"m{i}".encode() for i in range(60)]
    for i, value in enumerate(sent):
        bus.publish(TOPIC, f"key-{i}", value)
    got_a, got_b = drain(a), drain(b)
    assert got_a and got_b
    assert {m.partition for m in got_a}.isdisjoint({m.partition for m in got_b})
    assert sorted(values(got_a) + values(got_b)) == sorted(sent)
    assert set(a.end_offsets()).isdisjoint(b.end_offsets())
    assert len(a.end_offsets()) + len(b.end_offsets()) == 3


def test_after_a_member_leaves_the_other_takes_its_partitions() -> None:
    bus = make_bus(partitions=3)
    a = bus.consumer([TOPIC], "workers")
    b = bus.consumer([TOPIC], "workers")
    assert len(a.end_offsets()) < 3
    b.close()
    assert len(a.end_offsets()) == 3


def test_different_groups_each_see_everything() -> None:
    bus = make_bus()
    sent = [f"m{i}".encode() for i in range(20)]
    for i, value in enumerate(sent):
        bus.publish(TOPIC, f"k{i % 7}", value)
    for group in ("windows", "archive", "audit"):
        with bus.consumer([TOPIC], group) as consumer:
            assert sorted(values(drain(consumer))) == sorted(sent)


def test_from_beginning_false_starts_at_the_end() -> None:
    bus = make_bus()
    for i in range(5):
        bus.publish(TOPIC, f"k{i}", b"old")
    with bus.consumer([TOPIC], "tail", from_beginning=False) as consumer:
        assert consumer.poll(timeout_s=0.05) == []
        assert consumer.positions() == consumer.end_offsets()
        bus.publish(TOPIC, "k1", b"new")
        assert values(drain(consumer)) == [b"new"]
    with bus.consumer([TOPIC], "replay", from_beginning=True) as consumer:
        assert sorted(values(drain(consumer))) == sorted([b"old"] * 5 + [b"new"])


def test_committed_offset_wins_over_from_beginning_false() -> None:
    bus = make_bus(partitions=1)
    for i in range(3):
        bus.publish(TOPIC, "k", f"m{i}".encode())
    with bus.consumer([TOPIC], "g") as consumer:
        consumer.poll(1, timeout_s=1)
        consumer.commit()
    with bus.consumer([TOPIC], "g", from_beginning=False) as consumer:
        assert values(drain(consumer)) == [b"m1", b"m2"]


def _next_ms_after(stamp_ms: int) -> int:
    """Wait (at most a few ms) until the wall clock has moved past ``stamp_ms``."""
    while int(time.time() * 1000) <= stamp_ms:
        time.sleep(0.001)
    return int(time.time() * 1000)


def test_seek_to_time_and_seek_to_beginning() -> None:
    bus = make_bus()
    for i in range(9):
        bus.publish(TOPIC, f"k{i}", f"early{i}".encode())
    with bus.consumer([TOPIC], "g") as consumer:
        early = drain(consumer, expect=9)
        boundary = _next_ms_after(max(m.timestamp_ms for m in early))
        for i in range(9):
            bus.publish(TOPIC, f"k{i}", f"late{i}".encode())
        late = drain(consumer, expect=9)
        assert all(m.timestamp_ms >= boundary for m in late)

        consumer.seek_to_time(boundary)
        assert sorted(values(drain(consumer))) == sorted(f"late{i}".encode() for i in range(9))

        consumer.seek_to_time(boundary + 3_600_000)  # the future: nothing to read, positioned at the end
        assert consumer.positions() == consumer.end_offsets()
        assert consumer.poll(timeout_s=0.05) == []

        consumer.seek_to_time(0)
        assert len(drain(consumer)) == 18

        consumer.seek_to_beginning()
        assert len(drain(consumer)) == 18


def test_end_offsets_and_positions_report_lag() -> None:
    bus = make_bus(partitions=1)
    with bus.consumer([TOPIC], "g") as consumer:
        assert consumer.end_offsets() == {(TOPIC, 0): 0}
        assert consumer.positions() == {(TOPIC, 0): 0}
        for i in range(5):
            bus.publish(TOPIC, "k", f"m{i}".encode())
        assert consumer.end_offsets() == {(TOPIC, 0): 5}
        assert consumer.positions() == {(TOPIC, 0): 0}
        consumer.poll(2, timeout_s=1)
        assert consumer.positions() == {(TOPIC, 0): 2}
        drain(consumer)
        assert consumer.positions() == consumer.end_offsets() == {(TOPIC, 0): 5}


def test_retention_drops_oldest_and_lagging_consumer_skips_ahead() -> None:
    bus = make_bus(partitions=1, retention=5)
    lagging = bus.consumer([TOPIC], "slow")
    assert values(lagging.poll(1, timeout_s=0.01)) == []
    for i in range(3):
        bus.publish(TOPIC, "k", f"m{i}".encode())
    assert values(lagging.poll(1, timeout_s=1)) == [b"m0"]  # position now 1
    for i in range(3, 12):
        bus.publish(TOPIC, "k", f"m{i}".encode())
    batch = drain(lagging)
    # Only the last five survive; m1..m6 are gone and the consumer skipped over them.
    assert values(batch) == [f"m{i}".encode() for i in range(7, 12)]
    assert [m.offset for m in batch] == list(range(7, 12))
    assert lagging.positions() == lagging.end_offsets() == {(TOPIC, 0): 12}
    with bus.consumer([TOPIC], "fresh") as fresh:
        assert values(drain(fresh)) == [f"m{i}".encode() for i in range(7, 12)]
        fresh.seek_to_beginning()
        assert fresh.positions() == {(TOPIC, 0): 7}
    lagging.close()


def test_compacted_topic_is_never_trimmed() -> None:
    bus = make_bus(retention=3)
    for i in range(10):
        bus.publish("test.compacted", f"jti:iss:{i}", f"r{i}".encode())
        bus.publish(TOPIC, "k", f"m{i}".encode())
    with bus.consumer(["test.compacted"], "validator") as consumer:
        assert values(drain(consumer)) == [f"r{i}".encode() for i in range(10)]
    with bus.consumer([TOPIC], "other") as consumer:
        assert len(drain(consumer)) == 3


def test_default_revocation_topic_is_compacted() -> None:
    bus = MemoryBus(retention=2)
    for i in range(5):
        bus.publish(REVOCATIONS, f"jti:iss:{i}", f"r{i}".encode())
    with bus.consumer([REVOCATIONS], "validator") as consumer:
        assert len(drain(consumer)) == 5


def test_poll_on_idle_topic_returns_empty() -> None:
    bus = make_bus()
    with bus.consumer([TOPIC], "g") as consumer:
        assert consumer.poll(timeout_s=0) == []
        assert consumer.poll(timeout_s=0.05) == []


def test_poll_wakes_when_another_thread_publishes() -> None:
    bus = make_bus()
    consumer = bus.consumer([TOPIC], "g")
    result: list[list[Message]] = []
    started = threading.Event()

    def wait_for_message() -> None:
        started.set()
        result.append(consumer.poll(timeout_s=60))

    waiter = threading.Thread(target=wait_for_message, daemon=True)
    waiter.start()
    assert started.wait(5)
    bus.publish(TOPIC, "k", b"wake up")
    waiter.join(timeout=10)  # far less than the 60 s poll timeout: the publish woke the poll
    assert not waiter.is_alive(), "poll did not wake up on publish"
    assert values(result[0]) == [b"wake up"]
    consumer.close()


def test_close_wakes_a_waiting_poll_and_refuses_publishing() -> None:
    bus = make_bus()
    consumer = bus.consumer([TOPIC], "g")
    result: list[list[Message]] = []
    waiter = threading.Thread(target=lambda: result.append(consumer.poll(timeout_s=60)), daemon=True)
    waiter.start()
    bus.close()
    waiter.join(timeout=10)
    assert not waiter.is_alive() and result == [[]]
    with pytest.raises(RuntimeError):
        bus.publish(TOPIC, "k", b"late")


def test_unknown_topic_is_created_on_first_use() -> None:
    bus = make_bus()
    bus.publish("auto.created", None, b"x")
    with bus.consumer(["auto.created"], "g") as consumer:
        [message] = drain(consumer)
    assert message.key is None and message.value == b"x" and message.topic == "auto.created"


def test_poll_runs_gives_the_messages_poll_gives_as_columns() -> None:
    """Same messages in the same order, per partition run; a tombstone reads as b"" as with poll."""
    bus = make_bus(partitions=3, retention=40)  # retention 40: chunks of 5 messages, some dropped
    for i in range(60):
        bus.publish(TOPIC, f"k{i % 7}", f"m{i}".encode() if i != 55 else None)
    with bus.consumer([TOPIC], "by-message") as consumer:
        messages = drain(consumer, max_records=9)
    runs = []
    with bus.consumer([TOPIC], "by-run") as consumer:
        while batch := consumer.poll_runs(9, timeout_s=0):
            assert sum(len(run.values) for run in batch) <= 9
            runs.extend(batch)
    flattened = [
        Message(run.topic, run.partition, offset, key, value, m.timestamp_ms)
        for run in runs
        for offset, key, value in zip(run.offsets, run.keys, run.values, strict=True)
        for m in [next(m for m in messages if (m.partition, m.offset) == (run.partition, offset))]
    ]
    assert flattened == messages
    assert b"" in [m.value for m in messages]
    assert all(len(run.offsets) == len(run.keys) == len(run.values) for run in runs)
    assert all(run.offsets == list(range(run.offsets[0], run.offsets[0] + len(run.offsets))) for run in runs)


def test_retention_in_chunks_keeps_reads_exact_across_chunk_edges() -> None:
    bus = make_bus(partitions=1, retention=16)  # chunks of 2
    for i in range(101):
        bus.publish(TOPIC, "k", f"m{i}".encode())
    with bus.consumer([TOPIC], "g") as consumer:
        got = drain(consumer, max_records=3)
    first = got[0].offset
    assert 16 <= len(got) <= 18  # at most retention + retention // 8 are kept
    assert [m.offset for m in got] == list(range(first, 101))
    assert values(got) == [f"m{i}".encode() for i in range(first, 101)]
