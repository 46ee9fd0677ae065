"""The streaming runner decodes whole polls and feeds the engine one batch per poll.

Alert ids must not depend on how the stream is cut (the engine scores at fixed ticks of event time), dead
letters must carry ``TokenUsage.from_json``'s exact error, and offsets are committed only past what was
processed — never past an event still held back for event-time order.
"""

from __future__ import annotations

import base64
import json
import zlib

import pytest

from pipeline.bus import ALERTS, DEAD_LETTER, TOKEN_USAGE, MessageRun, TopicSpec, default_topics
from pipeline.bus.memory import MemoryBus
from pipeline.detection.replay import replay
from pipeline.detection.runner import StreamingRunner
from pipeline.detection.training import TrainingParams, train_model
from pipeline.errors import CommitRejected, RecordError
from pipeline.events import Alert, TokenUsage, format_ts
from pipeline.scoring.model import DetectionModel
from pipeline.simulate import Simulation, SimulationParams, iter_records, simulate

POPULATION = {"browsers": 60, "mobile": 30, "offices": 6}
T0 = 1_790_000_000.0


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    baseline = simulate(SimulationParams(minutes=10, seed=1, threats=(), services=5, **POPULATION)).events
    trained, _ = train_model(baseline, TrainingParams(n_estimators=50, max_samples=256))
    return trained


@pytest.fixture(scope="module")
def attacks() -> Simulation:
    return simulate(SimulationParams(minutes=8, seed=2, services=5, incidents_per_threat=1, **POPULATION))


def read_all(bus: MemoryBus, topic: str) -> list[bytes]:
    consumer = bus.consumer([topic], f"reader-{topic}", from_beginning=True)
    out: list[bytes] = []
    while batch := consumer.poll(100_000, 0):
        out.extend(m.value for m in batch)
    consumer.close()
    return out


def drain(runner: StreamingRunner) -> None:
    for _ in range(100_000):
        if not runner.step():
            return
    raise AssertionError("the runner never caught up")


@pytest.mark.parametrize(("max_batch", "partitions"), [(97, 3), (4096, 1), (4096, 3), (1_000_000, 3)])
def test_runner_alert_ids_equal_replay_alert_ids_whatever_the_poll_size(
    model: DetectionModel, attacks: Simulation, max_batch: int, partitions: int
) -> None:
    bus = MemoryBus(default_topics(partitions))
    records = list(iter_records(attacks))
    for record in records:
        bus.publish(TOKEN_USAGE, record.bus_key, record.to_json())
    runner = StreamingRunner(bus, model, poll_timeout_s=0, max_batch=max_batch)
    drain(runner)
    expected, _ = replay(attacks.events, model)
    got = [Alert.from_json(raw) for raw in read_all(bus, ALERTS)]
    assert expected, "the stream should raise alerts"
    assert runner.engine.stats.events == len(records)
    assert runner.engine.stats.late_events == 0
    assert {a.alert_id for a in got} == {a.alert_id for a in expected}
    assert runner.consumer.positions() == runner.consumer.end_offsets()
    committed = bus._groups[runner.group].committed
    assert committed == runner.consumer.end_offsets()  # everything processed is committed


def usage(ts: float, ip: str = "198.51.100.7", **fields: object) -> TokenUsage:
    values: dict[str, object] = {"event_id": TokenUsage.new_event_id(), "ts": format_ts(ts), "ip": ip,
                                 "outcome": "accepted", "jti": "jti-1", "sub": "user-1"}  # fmt: skip
    values.update(fields)
    return TokenUsage(**values)  # type: ignore[arg-type]


HOSTILE = [
    b"not json",
    b"\xff\xfe\xfd binary",
    b"[1, 2, 3]",
    b'{"schema": "token-usage/1"}',
    b"",
    usage(T0).to_json().replace(b"198.51.100.7", b"999.51.100.7"),
    usage(T0).to_json().replace(b'"ts":"', b'"ts":"1969'),
    usage(T0).to_json().replace(b'"outcome":"accepted"', b'"outcome":"rejected"'),
    usage(T0).to_json().replace(b'"iat":null', b'"iat":true'),
    usage(T0).to_json().replace(b'"user_agent":null', b'"user_agent":"' + b"x" * 9000 + b'"'),
    b"[" * 1000 + b"]" * 1000,  # made from_json raise RecursionError, not RecordError: the poll was lost
]


def test_dead_letters_carry_the_error_from_json_gives(model: DetectionModel) -> None:
    bus = MemoryBus()
    good = [usage(T0 + i * 0.5, jti=f"jti-{i}") for i in range(40)]
    for i, record in enumerate(good):
        bus.publish(TOKEN_USAGE, record.bus_key, record.to_json())
        if i < len(HOSTILE):
            bus.publish(TOKEN_USAGE, f"junk-{i}", HOSTILE[i])
    runner = StreamingRunner(bus, model, poll_timeout_s=0)
    drain(runner)

    letters = [json.loads(raw) for raw in read_all(bus, DEAD_LETTER)]
    assert runner.dead_letters == len(letters) == len(HOSTILE)
    by_original = {base64.b64decode(letter["original"]): letter for letter in letters}
    for i, message in enumerate(HOSTILE):
        with pytest.raises(RecordError) as error:
            TokenUsage.from_json(message)
        letter = by_original[message]
        assert letter["error"] == str(error.value)
        assert base64.b64decode(letter["key"]) == f"junk-{i}".encode()
        assert letter["topic"] == TOKEN_USAGE
    assert runner.engine.stats.events == len(good)
    assert bus._groups[runner.group].committed == runner.consumer.end_offsets()


def key_for_partition(partition: int, partitions: int, prefix: str) -> str:
    """A bus key the memory bus puts on ``partition`` (it partitions by CRC-32 of the key)."""
    return next(f"{prefix}-{i}" for i in range(1000) if zlib.crc32(f"{prefix}-{i}".encode()) % partitions == partition)


def test_events_held_back_for_event_time_order_are_not_committed(model: DetectionModel) -> None:
    """Partition 0 runs ahead in event time; its events wait for partition 1 and stay uncommitted."""
    bus = MemoryBus([TopicSpec(TOKEN_USAGE, 2), *(t for t in default_topics() if t.name != TOKEN_USAGE)])
    ahead, behind = key_for_partition(0, 2, "ahead"), key_for_partition(1, 2, "behind")
    for i in range(20):
        bus.publish(TOKEN_USAGE, ahead, usage(T0 + 100 + i, jti=ahead).to_json())
    for i in range(400):
        bus.publish(TOKEN_USAGE, behind, usage(T0 + i * 0.1, jti=behind).to_json())
    bus.publish(TOKEN_USAGE, ahead, b"junk after the held-back events")
    runner = StreamingRunner(bus, model, poll_timeout_s=0, max_batch=40)
    runner.step()  # a fair share of 20 from each partition
    committed = bus._groups[runner.group].committed
    assert committed.get((TOKEN_USAGE, 0), 0) == 0  # all 20 held back: partition 1 has not caught up
    assert committed[(TOKEN_USAGE, 1)] == 20
    assert runner.engine.stats.events == 20
    drain(runner)
    assert runner.engine.stats.events == 420
    assert runner.engine.stats.late_events == 0
    assert bus._groups[runner.group].committed == {(TOKEN_USAGE, 0): 21, (TOKEN_USAGE, 1): 400}


def test_restart_resumes_from_the_held_back_events(model: DetectionModel) -> None:
    """A runner stopped while holding events back processes them after a restart: none is lost."""
    bus = MemoryBus([TopicSpec(TOKEN_USAGE, 2), *(t for t in default_topics() if t.name != TOKEN_USAGE)])
    ahead, behind = key_for_partition(0, 2, "ahead"), key_for_partition(1, 2, "behind")
    for i in range(20):
        bus.publish(TOKEN_USAGE, ahead, usage(T0 + 100 + i, jti=ahead).to_json())
    for i in range(400):
        bus.publish(TOKEN_USAGE, behind, usage(T0 + i * 0.1, jti=behind).to_json())
    first = StreamingRunner(bus, model, group="detector", poll_timeout_s=0, max_batch=40)
    first.step()
    first.close()
    second = StreamingRunner(bus, model, group="detector", poll_timeout_s=0, max_batch=40)
    drain(second)
    seen = second.engine.stats.events + second.engine.stats.late_events
    # The second runner rebuilt the first 20 of partition 1 and then processed everything else.
    assert seen == 420
    assert bus._groups["detector"].committed == {(TOKEN_USAGE, 0): 20, (TOKEN_USAGE, 1): 400}


def test_a_partition_no_poll_returned_yet_still_holds_the_others_back(model: DetectionModel) -> None:
    """Kafka may hand out one partition's whole fetch first: the other partitions still count as behind."""
    bus = MemoryBus([TopicSpec(TOKEN_USAGE, 2), *(t for t in default_topics() if t.name != TOKEN_USAGE)])
    ahead, behind = key_for_partition(0, 2, "ahead"), key_for_partition(1, 2, "behind")
    for i in range(50):
        bus.publish(TOKEN_USAGE, ahead, usage(T0 + 100 + i, jti=ahead).to_json())
    for i in range(50):
        bus.publish(TOKEN_USAGE, behind, usage(T0 + i, jti=behind).to_json())
    runner = StreamingRunner(bus, model, poll_timeout_s=0)
    real_poll = runner.consumer.poll_runs
    first = True

    def partition_zero_first(max_records: int = 500, timeout_s: float = 1.0) -> list[MessageRun]:
        nonlocal first
        runs = real_poll(max_records, timeout_s)
        if first:
            first = False
            later = [run for run in runs if run.partition != 0]
            runner.consumer.seek({(run.topic, run.partition): run.offsets[0] for run in later})  # not fetched yet
            runs = [run for run in runs if run.partition == 0]
        return runs

    runner.consumer.poll_runs = partition_zero_first  # type: ignore[method-assign]
    runner.step()
    assert runner.engine.stats.events == 0  # partition 0 waits: partition 1 has not been read at all
    drain(runner)
    assert runner.engine.stats.events == 100
    assert runner.engine.stats.late_events == 0


def test_a_poll_that_returns_nothing_does_not_release_a_partition_ahead(model: DetectionModel) -> None:
    """A Kafka poll may return nothing while a partition's fetch is still in flight: that is not a quiet bus.

    Partition 0 (later events) is handed out first, then one poll comes back empty although partition 1
    still has unread messages. Releasing partition 0 then (as a quiet bus would) makes all of partition 1's
    earlier events late — lost to detection in a Kafka rebalance test before this rule."""
    bus = MemoryBus([TopicSpec(TOKEN_USAGE, 2), *(t for t in default_topics() if t.name != TOKEN_USAGE)])
    ahead, behind = key_for_partition(0, 2, "ahead"), key_for_partition(1, 2, "behind")
    for i in range(50):
        bus.publish(TOKEN_USAGE, ahead, usage(T0 + 100 + i, jti=ahead).to_json())
    for i in range(50):
        bus.publish(TOKEN_USAGE, behind, usage(T0 + i, jti=behind).to_json())
    runner = StreamingRunner(bus, model, poll_timeout_s=0)
    real_poll = runner.consumer.poll_runs
    polls = 0

    def fetch_in_flight(max_records: int = 500, timeout_s: float = 1.0) -> list[MessageRun]:
        nonlocal polls
        polls += 1
        if polls == 2:
            return []  # partition 1's fetch has not come back yet
        runs = real_poll(max_records, timeout_s)
        if polls == 1:
            later = [run for run in runs if run.partition != 0]
            runner.consumer.seek({(run.topic, run.partition): run.offsets[0] for run in later})  # not fetched yet
            runs = [run for run in runs if run.partition == 0]
        return runs

    runner.consumer.poll_runs = fetch_in_flight  # type: ignore[method-assign]
    runner.step()
    runner.step()
    assert runner.engine.stats.events == 0  # partition 0 still waits for partition 1
    drain(runner)
    assert runner.engine.stats.events == 100
    assert runner.engine.stats.late_events == 0


def test_a_commit_a_rebalance_got_ahead_of_does_not_stop_the_runner(model: DetectionModel) -> None:
    """The coordinator refuses a commit from a member a rebalance has moved past (on Kafka: CommitFailedError,
    raised by the bus as ``CommitRejected``). The runner must not die in ``step()``: it counts the rejection,
    keeps what it processed, and commits those offsets with the next batch."""
    bus = MemoryBus([TopicSpec(TOKEN_USAGE, 1), *(t for t in default_topics() if t.name != TOKEN_USAGE)])
    for i in range(200):
        bus.publish(TOKEN_USAGE, "tok", usage(T0 + i * 0.1, jti="tok").to_json())
    runner = StreamingRunner(bus, model, poll_timeout_s=0, max_batch=100)
    real_commit = runner.consumer.commit
    refusals = [CommitRejected("the group rebalanced (generation 7 is over)")]

    def commit_once_refused(offsets: dict[tuple[str, int], int] | None = None) -> None:
        if refusals:
            raise refusals.pop()
        real_commit(offsets)

    runner.consumer.commit = commit_once_refused  # type: ignore[method-assign]
    runner.step()
    assert runner.commits_rejected == 1
    assert bus._groups[runner.group].committed.get((TOKEN_USAGE, 0), 0) == 0  # nothing committed yet
    drain(runner)
    assert runner.engine.stats.events == 200
    assert bus._groups[runner.group].committed == {(TOKEN_USAGE, 0): 200}
