"""The one consumer loop (pipeline.bus.checkpoint): per-record isolation, dead letters, and the checkpoint's order.

Every consumer of jwtwatch runs on it, so these are the rules they all share: a bad record is parked and the batch
goes on; an infrastructure fault rewinds to the record that met it; a failed flush rewinds to the last commit; the
checkpoint flushes the sink, then the producer, then commits.
"""

from __future__ import annotations

import orjson
import pytest

from pipeline.bus import DEAD_LETTER, Message
from pipeline.bus.checkpoint import CheckpointLoop, checkpoint
from pipeline.bus.memory import MemoryBus
from pipeline.bus.topics import TopicSpec
from pipeline.errors import CommitRejected

TOPIC, COMPACTED = "things", "state"


class Recorder:
    """A sink that records what it was given and when it was flushed; ``fail_add`` / ``fail_flush`` inject faults."""

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.added: list[int] = []
        self.durable: list[int] = []
        self.fail_add: dict[int, BaseException] = {}
        self.fail_flush: BaseException | None = None

    def add(self, record: int, message: Message) -> None:
        if record in self.fail_add:
            raise self.fail_add.pop(record)
        self.added.append(record)

    def flush(self) -> None:
        self.journal.append("sink flush")
        if self.fail_flush is not None:
            error, self.fail_flush = self.fail_flush, None
            self.added.clear()  # what it held is gone
            raise error
        self.durable.extend(self.added)
        self.added.clear()


class JournalBus(MemoryBus):
    def __init__(self, journal: list[str]) -> None:
        super().__init__([TopicSpec(TOPIC, 1), TopicSpec(COMPACTED, 1), TopicSpec(DEAD_LETTER, 1)])
        self.journal = journal

    def flush(self, timeout_s: float | None = None) -> None:
        self.journal.append("producer flush")
        super().flush(timeout_s)


def decode(message: Message) -> int:
    value = orjson.loads(message.value)
    if not isinstance(value, int):
        raise ValueError(f"not a number: {value!r}")
    return value


def make(journal: list[str] | None = None, **options: object) -> tuple[JournalBus, Recorder, CheckpointLoop[int]]:
    journal = [] if journal is None else journal
    bus = JournalBus(journal)
    sink = Recorder(journal)
    consumer = bus.consumer([TOPIC, COMPACTED], "g")
    real_commit = consumer.commit

    def commit(offsets: dict[tuple[str, int], int] | None = None) -> None:
        journal.append("commit")
        real_commit(offsets)

    consumer.commit = commit  # type: ignore[method-assign]
    loop = CheckpointLoop(bus, consumer, decode=decode, sink=sink, name="tester", poll_timeout_s=0, **options)  # type: ignore[arg-type]
    return bus, sink, loop


def publish(bus: MemoryBus, *values: bytes, topic: str = TOPIC) -> None:
    for value in values:
        bus.publish(topic, None, value)


def letters(bus: MemoryBus) -> list[dict[str, object]]:
    return [orjson.loads(m.value) for m in bus.consumer([DEAD_LETTER], "reader").poll(100, 0)]


def committed(bus: MemoryBus) -> int:
    return bus._groups["g"].committed.get((TOPIC, 0), 0)


def test_the_checkpoint_flushes_the_sink_then_the_producer_then_commits() -> None:
    journal: list[str] = []
    bus, sink, loop = make(journal)
    publish(bus, b"1", b"2")
    assert loop.step() == 2
    assert journal == ["sink flush", "producer flush", "commit"]
    assert sink.durable == [1, 2] and committed(bus) == 2


def test_a_bad_record_is_parked_and_the_batch_goes_on() -> None:
    bus, sink, loop = make()
    publish(bus, b"1", b'"two"', b"{not json", b"4")
    loop.step()
    assert sink.durable == [1, 4]
    parked = letters(bus)
    assert [(p["offset"], p["consumer"]) for p in parked] == [(1, "tester"), (2, "tester")]
    assert "not a number: 'two'" in str(parked[0]["error"])
    assert loop.dead_letters == 2 and loop.handled == 2 and committed(bus) == 4


def test_a_flood_of_bad_records_is_parked_whole_but_logged_sparingly(caplog: pytest.LogCaptureFixture) -> None:
    """An attacker's (or a broken producer's) flood must not flood the log: the first ten get a line each, then
    every thousandth; every one is still parked and counted."""
    bus, sink, loop = make(max_records=5000)
    publish(bus, *([b'"bad"'] * 2500), b"7")
    with caplog.at_level("WARNING", logger="pipeline.bus.checkpoint"):
        while loop.step():
            pass
    parked = bus.consumer([DEAD_LETTER], "reader").poll(5000, 0)
    assert loop.dead_letters == 2500 and len(parked) == 2500 and sink.durable == [7]
    lines = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert len(lines) == 12  # the 1st to 10th, the 1,000th and the 2,000th
    assert "(2000 so far)" in lines[-1]


def test_a_bad_record_is_only_logged_by_a_reader_whose_twin_parks_it() -> None:
    bus, sink, loop = make(park_bad=False)
    publish(bus, b'"two"', b"3")
    loop.step()
    assert sink.durable == [3] and loop.dead_letters == 1 and letters(bus) == []


@pytest.mark.parametrize("fault", [OSError(28, "No space left on device"), MemoryError()])
def test_an_infrastructure_fault_rewinds_to_the_record_that_met_it(fault: BaseException) -> None:
    bus, sink, loop = make()
    publish(bus, b"1", b"2", b"3")
    sink.fail_add[2] = fault
    with pytest.raises(type(fault)):
        loop.step()
    assert sink.added == [1] and committed(bus) == 0 and letters(bus) == []  # not parked: good data
    loop.step()  # 2 and 3 come again (1 was handed over before the fault)
    assert sink.durable == [1, 2, 3] and committed(bus) == 3


def test_a_store_error_counts_as_infrastructure() -> None:
    class StoreDown(RuntimeError):
        pass

    bus, sink, loop = make(store_errors=(StoreDown,))
    publish(bus, b"1")
    sink.fail_add[1] = StoreDown("database is locked")
    with pytest.raises(StoreDown):
        loop.step()
    assert letters(bus) == [] and loop.dead_letters == 0
    loop.step()
    assert sink.durable == [1]


def test_a_failed_flush_rewinds_to_the_last_commit_and_nothing_is_lost() -> None:
    bus, sink, loop = make()
    publish(bus, b"1")
    loop.step()
    publish(bus, b"2", b"3")
    sink.fail_flush = OSError(5, "Input/output error")
    with pytest.raises(OSError):
        loop.step()
    assert committed(bus) == 1  # nothing committed past what is on disk
    loop.step()
    assert sink.durable == [1, 2, 3] and committed(bus) == 3


def test_an_empty_value_is_a_tombstone_only_on_a_compacted_topic() -> None:
    bus, _sink, loop = make(compacted=frozenset({COMPACTED}))
    publish(bus, b"", topic=COMPACTED)
    publish(bus, b"")
    loop.step()
    assert loop.tombstones == 1 and loop.dead_letters == 1
    assert [p["topic"] for p in letters(bus)] == [TOPIC]


def test_a_commit_a_rebalance_got_ahead_of_is_counted_and_the_loop_goes_on() -> None:
    bus, sink, loop = make()
    publish(bus, b"1")
    refusal = [CommitRejected("generation 7 is over")]
    real_commit = loop.consumer.commit

    def commit(offsets: dict[tuple[str, int], int] | None = None) -> None:
        if refusal:
            raise refusal.pop()
        real_commit(offsets)

    loop.consumer.commit = commit  # type: ignore[method-assign]
    loop.step()
    assert loop.commits_rejected == 1 and committed(bus) == 0
    publish(bus, b"2")
    loop.step()
    assert committed(bus) == 2 and sink.durable == [1, 2]


def test_checkpoints_wait_for_enough_records_when_asked() -> None:
    journal: list[str] = []
    bus, sink, loop = make(journal, checkpoint_records=3, max_records=2)
    publish(bus, b"1", b"2", b"3", b"4")
    loop.step()
    assert journal == [] and sink.added == [1, 2]  # two read: not yet
    loop.step()
    assert journal == ["sink flush", "producer flush", "commit"] and committed(bus) == 4


def test_a_reader_that_never_commits_still_flushes() -> None:
    journal: list[str] = []
    bus, sink, loop = make(journal, commits=False)
    publish(bus, b"1")
    loop.step()
    assert journal == ["sink flush", "producer flush"] and committed(bus) == 0 and sink.durable == [1]


def test_the_function_keeps_the_position_when_told_not_to_rewind() -> None:
    """The streaming runner's windows hold what it read: a failed flush must not make it read events twice."""
    journal: list[str] = []
    bus, sink, loop = make(journal)
    publish(bus, b"1", b"2")
    loop.consumer.poll(10, 0)
    sink.fail_flush = OSError(5, "Input/output error")
    with pytest.raises(OSError):
        checkpoint(bus, loop.consumer, [sink], rewind_on_failure=False)
    assert loop.consumer.positions() == {(TOPIC, 0): 2, (COMPACTED, 0): 0}
    assert loop.lag() == 0
