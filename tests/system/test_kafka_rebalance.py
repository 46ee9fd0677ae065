"""Pipeline instances share the usage topic's partitions: after a rebalance the survivor rebuilds its windows.

Two ``StreamingRunner``s in one consumer group (each on its own bus) process the first half of simulated
traffic with attacks; then one is closed, its partitions move to the other (a rebalance), and the survivor
processes the rest. The survivor rebuilds its windows from a window length before the last processed message
(per partition, by time) and publishes nothing again that was already published unless it escalated.

Checked: every usage event processed (engine counts of both instances; every offset committed), none late;
an alert id published more than once only as an escalation; the token (jti) alerts are exactly ``replay``'s.
Subject and IP alerts may legitimately differ from a single-process replay: with two instances a subject's or
an IP's events are split across partitions (the bus key is the token id), so neither instance sees them all.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from pipeline.bus import ALERTS, TOKEN_USAGE
from pipeline.bus.base import Bus, Message
from pipeline.bus.kafka import CONSUMER_CLIENTS, KafkaBus
from pipeline.bus.memory import MemoryBus
from pipeline.detection.replay import replay
from pipeline.detection.runner import StreamingRunner
from pipeline.events import Alert, TokenUsage
from pipeline.scoring.model import DetectionModel, load_model
from pipeline.simulate import Simulation, SimulationParams, iter_records, simulate
from pipeline.validation.usage import UsageEmitter
from tests.support.escalations import assert_only_escalations
from tests.support.kafka import committed_offsets, drain, fresh_topics, read_topic
from tests.support.paths import DEFAULT_MODEL

PHASE_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def traffic() -> Simulation:
    return simulate(
        SimulationParams(minutes=8, seed=11, browsers=80, mobile=30, offices=3, services=5, incidents_per_threat=1)
    )


def check_alerts(messages: list[Message], published: dict[str, list[Alert]], expected: list[Alert]) -> None:
    """What the alerts topic holds is what the instances published (``published``: per instance, in order).

    An instance publishes an alert id again only as an escalation of the same alert — across a rebalance
    too; a token (jti) alert id is published again only as an escalation whoever publishes it, and the
    token alerts are exactly replay's. (Two instances may each raise a subject or IP alert from their own
    share of its events: those are not duplicates of each other.)
    """
    on_topic = sorted(Alert.from_json(m.value).alert_id for m in messages)
    assert on_topic == sorted(a.alert_id for alerts in published.values() for a in alerts)
    assert on_topic, "no alert published at all"
    streams = dict(published)
    streams["token alerts of all instances"] = [
        a
        for m in sorted(messages, key=lambda m: (m.partition, m.offset))
        if (a := Alert.from_json(m.value))
        if a.entity_type == "jti"
    ]
    for who, alerts in streams.items():
        assert_only_escalations(alerts, who)
    streamed = {a.alert_id for a in streams["token alerts of all instances"]}
    replayed = {a.alert_id for a in expected if a.entity_type == "jti"}
    assert replayed, "the simulated attacks raise no token alert: nothing to check"
    assert streamed == replayed, (
        f"token alerts differ from replay: only streamed {sorted(streamed - replayed)}, "
        f"only replayed {sorted(replayed - streamed)}"
    )


def split(traffic: Simulation) -> tuple[list[TokenUsage], int]:
    records = list(iter_records(traffic))
    half = len(records) // 2
    split_s = traffic.events["ts"].iloc[half] / 1000
    assert any(i.start < split_s < i.end for i in traffic.incidents)  # episodes open across the rebalance
    return records, half


# ------------------------------------------------------------------------------------- memory bus


def _memory_alerts(bus: MemoryBus) -> list[Message]:
    reader = bus.consumer([ALERTS], f"reader-{uuid.uuid4()}")
    out: list[Message] = []
    while batch := reader.poll(100_000, 0):
        out.extend(batch)
    reader.close()
    return out


def _memory_drain(*runners: StreamingRunner) -> None:
    for _ in range(10_000):
        polled = sum(runner.step() for runner in runners)
        caught_up = all(
            runner.consumer.positions().get(tp, 0) >= end
            for runner in runners
            for tp, end in runner.consumer.end_offsets().items()
        )
        if not polled and caught_up and not any(any(r._buffers.values()) for r in runners):
            for runner in runners:
                runner.step()  # one more quiet step: the last tick is flushed
            return
    raise AssertionError("the runners did not catch up")


def test_memory_bus_members_hand_partitions_over(model: DetectionModel, traffic: Simulation) -> None:
    """The bookkeeping of lost and gained partitions, with the in-process bus's groups (several members)."""
    records, half = split(traffic)
    expected, _ = replay(traffic.events, model)
    bus = MemoryBus()
    emitter = UsageEmitter(bus)
    quarter = half // 2
    for record in records[:quarter]:
        emitter.emit(record)

    published: dict[str, list[Alert]] = {"first": [], "second": []}
    first = StreamingRunner(bus, model, group="g", poll_timeout_s=0, max_batch=2000, on_alert=published["first"].append)
    assert first.consumer.assignment() == {(TOKEN_USAGE, p) for p in range(3)}
    first.step()
    assert (TOKEN_USAGE, 1) in first._handled

    # A second member joins: partition 1 goes to it (the memory bus deals partitions round-robin).
    second = StreamingRunner(
        bus, model, group="g", poll_timeout_s=0, max_batch=2000, on_alert=published["second"].append
    )
    assert second.consumer.assignment() == {(TOKEN_USAGE, 1)}
    first.step()
    assert first.consumer.assignment() == {(TOKEN_USAGE, 0), (TOKEN_USAGE, 2)}
    for bookkeeping in (first._handled, first._buffers, first._committed, first._rebuild_until):
        assert (TOKEN_USAGE, 1) not in bookkeeping
    assert first.rebuilds == 0  # losing partitions needs no rebuild
    for record in records[quarter:half]:
        emitter.emit(record)
    _memory_drain(first, second)

    # The second member leaves: its partition comes back to the first, which rebuilds.
    stats_second = second.engine.stats
    second.close()
    for record in records[half:]:
        emitter.emit(record)
    _memory_drain(first)
    assert first.rebuilds == 1
    assert first.engine.stats.late_events == stats_second.late_events == 0
    assert first.engine.stats.events + stats_second.events >= len(records)
    ends = {tp: part.end for tp, part in ((tp, bus._topics[tp[0]][tp[1]]) for tp in first.consumer.assignment())}
    assert bus._groups["g"].committed == ends
    check_alerts(_memory_alerts(bus), published, expected)


# ------------------------------------------------------------------------------------- Kafka


class _Stepper(threading.Thread):
    """A runner on its own bus, stepped in a thread of its own (group members must poll concurrently)."""

    def __init__(
        self, bootstrap: str, model: DetectionModel, group: str, name: str, consumer_client: str = "kafka-python"
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.bus: Bus = KafkaBus(bootstrap, client_id=name, consumer_client=consumer_client)
        self.model, self.group = model, group
        self.runner: StreamingRunner | None = None
        self.halt = threading.Event()
        self.error: BaseException | None = None
        self.published: list[Alert] = []

    def run(self) -> None:
        try:
            self.runner = StreamingRunner(self.bus, self.model, group=self.group, on_alert=self.published.append)
            while not self.halt.is_set():
                self.runner.step()
        except BaseException as exc:
            self.error = exc


@pytest.mark.kafka
@pytest.mark.timeout(600)
@pytest.mark.parametrize("consumer_client", CONSUMER_CLIENTS)
def test_rebalance_mid_stream_loses_no_event_and_duplicates_no_alert(
    kafka_bootstrap: str, model: DetectionModel, traffic: Simulation, consumer_client: str
) -> None:
    fresh_topics(kafka_bootstrap)
    records, half = split(traffic)
    expected, _ = replay(traffic.events, model)
    group = f"jwtwatch-pipeline-{uuid.uuid4()}"
    producer_bus = KafkaBus(kafka_bootstrap, client_id="jwtwatch-validator")
    steppers = [_Stepper(kafka_bootstrap, model, group, f"jwtwatch-pipeline-{i}", consumer_client) for i in (1, 2)]
    try:
        for stepper in steppers:
            stepper.start()
        deadline = time.monotonic() + 120
        while not all(s.runner and s.runner.consumer.assignment() for s in steppers):
            assert not any(s.error for s in steppers), [s.error for s in steppers]
            assert time.monotonic() < deadline, "the two members did not share the partitions"
            time.sleep(0.2)
        emitter = UsageEmitter(producer_bus)
        for record in records[:half]:
            emitter.emit(record)
        producer_bus.flush()

        # ---- both instances process the first half
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while sum(committed_offsets(kafka_bootstrap, group).values()) < half:
            assert not any(s.error for s in steppers), [s.error for s in steppers]
            assert time.monotonic() < deadline, "the two runners did not process the first half"
            time.sleep(0.5)
        time.sleep(2)  # quiet steps: the last tick is scored and its alerts published
        for stepper in steppers:
            stepper.halt.set()
            stepper.join(60)
            assert stepper.error is None, stepper.error
        leaving, survivor = (s.runner for s in steppers)
        assert leaving is not None and survivor is not None
        assert leaving.engine.stats.events and survivor.engine.stats.events, "one instance processed nothing"
        assert len(leaving.consumer.assignment()) + len(survivor.consumer.assignment()) == 3

        # ---- the rest is published, one instance leaves, the survivor takes its partitions over
        for record in records[half:]:
            emitter.emit(record)
        producer_bus.flush()
        leaving_stats = leaving.engine.stats
        leaving.close()
        steppers[0].bus.close()
        # The group notices the member left at the survivor's next heartbeat (1 s) and re-assigns on a poll.
        deadline = time.monotonic() + 60
        while len(survivor.consumer.assignment()) < 3:
            assert time.monotonic() < deadline, "the survivor was not given the partitions of the member that left"
            survivor.step()
        drain(survivor)
        assert survivor.consumer.assignment() == {(TOKEN_USAGE, p) for p in range(3)}
        assert survivor.rebuilds >= 1
        stats = survivor.engine.stats
        assert stats.late_events == leaving_stats.late_events == 0
        assert stats.events + leaving_stats.events >= len(records)
        assert sum(committed_offsets(kafka_bootstrap, group).values()) == len(records)
        survivor.close()
    finally:
        for stepper in steppers:
            stepper.halt.set()
            stepper.bus.close()
        producer_bus.close()

    usage = read_topic(kafka_bootstrap, TOKEN_USAGE)
    assert {TokenUsage.from_json(m.value).event_id for m in usage} == {r.event_id for r in records}
    published = {stepper.name: stepper.published for stepper in steppers}
    check_alerts(read_topic(kafka_bootstrap, ALERTS), published, expected)
