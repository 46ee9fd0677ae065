"""The re-keying stage on the memory bus: every event in the right view under the right key, bytes unchanged,
order kept, bad records parked, and nothing committed before the views are stored."""

from __future__ import annotations

from collections import Counter, defaultdict

import orjson
import pytest

from pipeline.bus import DEAD_LETTER, TOKEN_USAGE, TOKEN_USAGE_BY_IP, TOKEN_USAGE_BY_SUBJECT, Message
from pipeline.bus.memory import MemoryBus
from pipeline.bus.topics import default_topics
from pipeline.errors import KafkaBusError, Unavailable
from pipeline.events import TokenUsage
from pipeline.views import RekeyStage, ip_key, subject_key
from tests.support.records import usage_dict
from tests.support.views import expected_counts, usage_stream

GROUP = "jwtwatch-pipeline-rekey"


class JournalBus(MemoryBus):
    """A memory bus that writes down every publish, producer flush and commit, in order."""

    def __init__(self) -> None:
        super().__init__(default_topics())
        self.journal: list[str] = []
        self.fail_flush: BaseException | None = None
        self.fail_publish: dict[str, BaseException] = {}

    def publish(
        self, topic: str, key: str | bytes | None, value: bytes | None, timestamp_ms: int | None = None
    ) -> None:
        if topic in self.fail_publish:
            raise self.fail_publish.pop(topic)
        if topic != TOKEN_USAGE:
            self.journal.append(f"publish {topic}")
        super().publish(topic, key, value, timestamp_ms)

    def flush(self, timeout_s: float | None = None) -> None:
        self.journal.append("producer flush")
        if self.fail_flush is not None:
            error, self.fail_flush = self.fail_flush, None
            raise error
        super().flush(timeout_s)


def stage_on(bus: JournalBus, **options: object) -> RekeyStage:
    stage = RekeyStage(bus, group=GROUP, poll_timeout_s=0, **options)  # type: ignore[arg-type]
    real_commit = stage.consumer.commit

    def commit(offsets: dict[tuple[str, int], int] | None = None) -> None:
        bus.journal.append("commit")
        real_commit(offsets)

    stage.consumer.commit = commit  # type: ignore[method-assign]
    return stage


def publish_usage(bus: MemoryBus, records: list[TokenUsage] | tuple[TokenUsage, ...]) -> None:
    for record in records:
        bus.publish(TOKEN_USAGE, record.bus_key, record.to_json())


def read_all(bus: MemoryBus, topic: str) -> list[Message]:
    consumer = bus.consumer([topic], f"reader-{topic}")
    out: list[Message] = []
    while batch := consumer.poll(100_000, 0):
        out.extend(batch)
    return out


def run_to_end(stage: RekeyStage) -> None:
    while stage.step():
        pass


def committed(bus: MemoryBus) -> dict[int, int]:
    return {p: o for (t, p), o in bus._groups[GROUP].committed.items() if t == TOKEN_USAGE}


def test_a_view_message_keeps_its_source_messages_time() -> None:
    """The views carry the source's timestamps, not the stage's clock: a worker rebuilding windows seeks a view by
    time, and must find there what it would find on the usage topic."""
    bus = JournalBus()
    records = usage_stream()[:50]
    for offset, record in enumerate(records):
        bus.publish(TOKEN_USAGE, record.bus_key, record.to_json(), timestamp_ms=1_700_000_000_000 + offset)
    run_to_end(stage_on(bus))
    source_time = {m.value: m.timestamp_ms for m in read_all(bus, TOKEN_USAGE)}
    views = read_all(bus, TOKEN_USAGE_BY_SUBJECT) + read_all(bus, TOKEN_USAGE_BY_IP)
    assert views and all(m.timestamp_ms == source_time[m.value] for m in views)


def test_every_event_lands_in_its_views_under_its_keys_bytes_unchanged() -> None:
    bus = JournalBus()
    records = usage_stream()
    publish_usage(bus, records)
    stage = stage_on(bus)
    run_to_end(stage)
    source = {m.value: m for m in read_all(bus, TOKEN_USAGE)}
    by_subject, by_ip = read_all(bus, TOKEN_USAGE_BY_SUBJECT), read_all(bus, TOKEN_USAGE_BY_IP)
    # The bytes are the source's, unchanged: each source message once in the IP view, the subject ones once there.
    assert Counter(m.value for m in by_ip) == Counter(list(source))
    for message in by_subject + by_ip:
        assert message.value in source
        event = TokenUsage.from_json(message.value)
        if message.topic == TOKEN_USAGE_BY_SUBJECT:
            key = subject_key(event.sub, event.reason)
            assert key is not None and message.key == key.encode()
        else:
            assert message.key == ip_key(event.ip).encode()
    subjects, ips = expected_counts(records)
    assert Counter(m.key.decode() for m in by_subject if m.key) == subjects
    assert Counter(m.key.decode() for m in by_ip if m.key) == ips
    assert len(by_subject) < len(records)  # forged and malformed tokens count against no subject
    # One key, one partition of its view (what a worker owning that partition needs).
    for view in (by_subject, by_ip):
        partitions: dict[bytes | None, set[int]] = defaultdict(set)
        for message in view:
            partitions[message.key].add(message.partition)
        assert all(len(p) == 1 for p in partitions.values())
        assert len({m.partition for m in view}) == 3
    assert stage.counts() == {"read": len(records), "by_subject": len(by_subject), "by_ip": len(records),
                              "dead_letters": 0}  # fmt: skip
    assert sum(committed(bus).values()) == len(records) and stage.lag() == 0


def test_a_keys_events_keep_the_order_of_their_source_partition() -> None:
    bus = JournalBus()
    publish_usage(bus, usage_stream())
    run_to_end(stage_on(bus, max_records=97))  # polls that cut across keys and partitions
    where = {m.value: (m.partition, m.offset) for m in read_all(bus, TOKEN_USAGE)}
    for topic in (TOKEN_USAGE_BY_SUBJECT, TOKEN_USAGE_BY_IP):
        seen: dict[tuple[bytes | None, int], list[int]] = defaultdict(list)  # (key, source partition) -> offsets
        for message in read_all(bus, topic):  # one view partition after the other, each in offset order
            partition, offset = where[message.value]
            seen[message.key, partition].append(offset)
        assert seen and all(offsets == sorted(offsets) for offsets in seen.values())


def test_a_bad_record_is_dead_lettered_and_the_rest_are_published() -> None:
    bus = JournalBus()
    good = [TokenUsage.from_dict(usage_dict(event_id=f"00000000-0000-4000-8000-00000000000{i}", jti="jti-1"))
            for i in range(3)]  # fmt: skip
    bad = [b"{not json", orjson.dumps(usage_dict(ip="not-an-ip")), orjson.dumps(usage_dict(schema="alert/1")), b""]
    bus.publish(TOKEN_USAGE, "jti-1", good[0].to_json())
    for value in bad[:2]:
        bus.publish(TOKEN_USAGE, "jti-1", value)
    bus.publish(TOKEN_USAGE, "jti-1", good[1].to_json())
    for value in bad[2:]:
        bus.publish(TOKEN_USAGE, "jti-1", value)
    bus.publish(TOKEN_USAGE, "jti-1", good[2].to_json())
    stage = stage_on(bus)
    run_to_end(stage)
    assert [m.value for m in read_all(bus, TOKEN_USAGE_BY_IP)] == [g.to_json() for g in good]
    assert [m.value for m in read_all(bus, TOKEN_USAGE_BY_SUBJECT)] == [g.to_json() for g in good]
    letters = [orjson.loads(m.value) for m in read_all(bus, DEAD_LETTER)]
    assert [(letter["offset"], letter["consumer"]) for letter in letters] == [(1, GROUP), (2, GROUP), (4, GROUP),
                                                                              (5, GROUP)]  # fmt: skip
    assert stage.counts() == {"read": 3, "by_subject": 3, "by_ip": 3, "dead_letters": 4}
    assert sum(committed(bus).values()) == 7


def test_nothing_is_committed_before_the_producer_has_flushed() -> None:
    bus = JournalBus()
    publish_usage(bus, usage_stream()[:50])
    stage = stage_on(bus)
    run_to_end(stage)
    # Between two commits: the view publishes, then the producer flushed, then the commit — never the other way.
    segments: list[list[str]] = [[]]
    for entry in bus.journal:
        if entry == "commit":
            segments.append([])
        else:
            segments[-1].append(entry)
    assert len(segments) >= 2
    for segment in segments[:-1]:
        first_flush = segment.index("producer flush")
        assert first_flush > 0 and all(e.startswith("publish") for e in segment[:first_flush])
        assert all(e == "producer flush" for e in segment[first_flush:])
    assert not any(e.startswith("publish") for e in segments[-1])  # nothing published is left uncommitted


def test_a_failed_flush_commits_nothing_and_publishes_again() -> None:
    """At least once: what was published since the last commit comes again — a view may hold an event twice
    (its event_id says so), never miss one."""
    bus = JournalBus()
    records = usage_stream()[:40]
    publish_usage(bus, records)
    stage = stage_on(bus)
    bus.fail_flush = KafkaBusError("flush: 3 message(s) not acknowledged within 1 s")
    with pytest.raises(KafkaBusError):
        stage.step()
    assert "commit" not in bus.journal and committed(bus) == {}
    run_to_end(stage)
    ids = Counter(TokenUsage.from_json(m.value).event_id for m in read_all(bus, TOKEN_USAGE_BY_IP))
    assert set(ids) == {r.event_id for r in records} and set(ids.values()) == {2}  # each once more, none lost
    assert sum(committed(bus).values()) == len(records) and stage.dead_letters == 0


def test_a_publish_the_bus_refuses_is_retried_not_dead_lettered() -> None:
    bus = JournalBus()
    records = usage_stream()[:20]
    publish_usage(bus, records)
    stage = stage_on(bus)
    bus.fail_publish[TOKEN_USAGE_BY_IP] = KafkaBusError("publish to 'jwtwatch.token-usage.by-ip': buffer full")
    with pytest.raises(Unavailable):
        stage.step()
    assert committed(bus) == {} and stage.dead_letters == 0
    run_to_end(stage)
    assert {TokenUsage.from_json(m.value).event_id for m in read_all(bus, TOKEN_USAGE_BY_IP)} == {
        r.event_id for r in records
    }
    assert stage.dead_letters == 0 and read_all(bus, DEAD_LETTER) == []
