"""Issue 5: the broker stopped and restarted mid-stream, with no usage event lost and no duplicate alert.

A private single-node broker (scripts/kafka-local, not the shared ``kafka_bootstrap`` one: this test stops
it). Simulated traffic with labelled attacks goes to ``jwtwatch.token-usage`` through the validator's
``UsageEmitter`` on a ``KafkaBus``: the first half is processed by a ``StreamingRunner``; then the broker is
stopped, the second half is emitted into the producer while it is down (the producer buffers it), the
broker is started again on the same ports and log dir, the producer flushes, and a new runner on a new bus
in the same consumer group (a pipeline restart) processes the rest.

Checked: every published event_id is in the usage topic (at-least-once: none lost); the alert ids on
``jwtwatch.alerts`` are exactly those ``replay`` gives on the same events (determinism); an alert id is
published again only as an escalation — in particular the restarted runner re-publishes nothing the first
one already published unless it escalated.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import pytest

from pipeline.bus import ALERTS, TOKEN_USAGE
from pipeline.bus.base import Message
from pipeline.bus.kafka import KafkaBus
from pipeline.detection.replay import replay
from pipeline.detection.runner import StreamingRunner
from pipeline.events import Alert, TokenUsage
from pipeline.scoring.model import DetectionModel, load_model
from pipeline.simulate import Simulation, SimulationParams, iter_records, simulate
from pipeline.validation.usage import UsageEmitter
from tests.support.escalations import RANK, escalates, rules_of
from tests.support.kafka import committed_offsets, drain, read_topic
from tests.support.kafka_broker import Broker, private_broker, tail
from tests.support.paths import DEFAULT_MODEL

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]

# The producer's delivery timeout is 4 x timeout_s (KafkaBus._delivery_timeout_ms): 4 x 45 s = 180 s covers
# a broker stop (at most 30 s before SIGKILL) plus a restart (JVM start-up, KRaft recovery) with room to spare.
PRODUCER_TIMEOUT_S = 45.0


# ------------------------------------------------------------------------------------- the broker


def _reachable(port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A private broker on two free ports, stopped at teardown whatever happened (the shared one must not
    be stopped). Same policy as ``kafka_bootstrap`` when it cannot start."""
    with private_broker(tmp_path_factory.mktemp("kafka-restart")) as own:
        yield own


# ------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def traffic() -> Simulation:
    """Eight minutes of event time, about 25 000 events, one incident of every threat: several attacks
    are under way at the half-way point, so alert episodes are open across the restart."""
    return simulate(
        SimulationParams(minutes=8, seed=11, browsers=80, mobile=30, offices=3, services=5, incidents_per_threat=1)
    )


# ------------------------------------------------------------------------------------- the test


@pytest.mark.parametrize(
    "outage",
    [
        "stop",  # kafka-local stop: SIGTERM, a clean shutdown
        pytest.param("sigkill", marks=pytest.mark.chaos),  # SIGKILL while the validator is publishing
    ],
)
def test_broker_restart_mid_stream_loses_no_event_and_duplicates_no_alert(
    broker: Broker, model: DetectionModel, traffic: Simulation, outage: str
) -> None:
    records: list[TokenUsage] = list(iter_records(traffic))
    half = len(records) // 2
    split_s = traffic.events["ts"].iloc[half] / 1000
    # The split really is mid-attack: episodes are open across the restart, so a runner that did not rebuild
    # its windows and alert episodes would publish them again.
    assert any(i.start < split_s < i.end for i in traffic.incidents)
    expected, _ = replay(traffic.events, model)
    expected_ids = {a.alert_id for a in expected}
    assert expected_ids, "the simulated attacks raise no alert at all: nothing to check"

    group = f"jwtwatch-pipeline-{uuid.uuid4()}"
    producer_bus = KafkaBus(broker.bootstrap, client_id="jwtwatch-validator", timeout_s=PRODUCER_TIMEOUT_S)
    try:
        emitter = UsageEmitter(producer_bus)  # the validator's own path: TokenUsage JSON keyed by bus_key
        for record in records[:half]:
            emitter.emit(record)
        producer_bus.flush()

        # ---- the first pipeline instance processes the first half
        first_bus = KafkaBus(broker.bootstrap, client_id="jwtwatch-pipeline-1")
        try:
            first_runner = StreamingRunner(first_bus, model, group=group)
            drain(first_runner)
            stats = first_runner.engine.stats
            assert (stats.events, stats.late_events) == (half, 0)
            first_runner.close()
        finally:
            first_bus.close()
        committed_before = committed_offsets(broker.bootstrap, group)
        assert sum(committed_before.values()) == half
        first_messages = read_topic(broker.bootstrap, ALERTS)
        assert first_messages, "the first runner published no alert"

        # ---- the broker goes away; the validator keeps emitting into its producer's buffer
        if outage == "sigkill":
            # Under load: the producer is mid-stream (batches in flight, some not yet acknowledged) when the
            # broker dies without a clean shutdown.
            quarter = half + (len(records) - half) // 4
            for record in records[half:quarter]:
                emitter.emit(record)
            broker.kill()
        else:
            quarter = half
            stopped = broker.stop()
            assert stopped.returncode == 0, f"kafka-local stop failed:\n{stopped.stderr}"
        down_at = time.monotonic()
        assert not _reachable(broker.port), "the broker still accepts connections after it went down"
        for record in records[quarter:]:
            emitter.emit(record)
        emitted_for_s = time.monotonic() - down_at
        assert emitted_for_s < PRODUCER_TIMEOUT_S, f"publishing to a stopped broker blocked for {emitted_for_s:.0f} s"

        # ---- the broker comes back on the same ports and log dir; the buffered events are delivered
        restarted = broker.start()
        outage_s = time.monotonic() - down_at
        if restarted.returncode != 0:
            pytest.fail(f"kafka-local could not restart the broker:\n{tail(restarted.stderr, 40)}\n{broker.log_tail()}")
        try:
            producer_bus.flush()
        except Exception as exc:
            raise AssertionError(
                f"the events buffered during a {outage_s:.0f} s outage were not delivered (producer delivery "
                f"timeout {4 * PRODUCER_TIMEOUT_S:g} s): {exc}"
            ) from exc
        assert committed_offsets(broker.bootstrap, group) == committed_before  # commits survived the restart
    finally:
        producer_bus.close()

    # ---- no usage event lost
    usage = read_topic(broker.bootstrap, TOKEN_USAGE)
    published_ids = {r.event_id for r in records}
    in_topic = {TokenUsage.from_json(m.value).event_id for m in usage}
    assert len(published_ids) == len(records)
    missing = published_ids - in_topic
    assert not missing, f"{len(missing)} of {len(records)} usage events lost across the broker restart"
    assert in_topic == published_ids

    # ---- the pipeline restarts: a new runner on a new bus, same group
    second_bus = KafkaBus(broker.bootstrap, client_id="jwtwatch-pipeline-2")
    try:
        second_runner = StreamingRunner(second_bus, model, group=group)
        drain(second_runner)
        stats = second_runner.engine.stats
        assert stats.late_events == 0
        # Its rebuild must have re-read the whole first half (four minutes of event time, less than one window
        # of 300 s + 30 s grace) to refill the windows and alert episodes open at the restart.
        assert stats.events == len(usage), (
            f"the restarted runner's rebuild re-read {stats.events - (len(usage) - half)} of the {half} events "
            "processed before the restart"
        )
        second_runner.close()
    finally:
        second_bus.close()

    # ---- no duplicate alert
    all_messages = read_topic(broker.bootstrap, ALERTS)
    seen_first = {(m.partition, m.offset) for m in first_messages}
    assert seen_first <= {(m.partition, m.offset) for m in all_messages}
    by_id: dict[str, list[tuple[Message, Alert]]] = defaultdict(list)
    for message in sorted(all_messages, key=lambda m: (m.partition, m.offset)):
        alert = Alert.from_json(message.value)
        assert message.key == alert.alert_id.encode()
        by_id[alert.alert_id].append((message, alert))

    for alert_id, versions in by_id.items():
        first_message, first_alert = versions[0]
        identity = (first_alert.entity_type, first_alert.entity, first_alert.ts, first_alert.model_version)
        severity, rules = first_alert.severity, rules_of(first_alert)
        for message, alert in versions[1:]:
            who = "the restarted runner" if (message.partition, message.offset) not in seen_first else "a runner"
            assert message.partition == first_message.partition
            assert (alert.entity_type, alert.entity, alert.ts, alert.model_version) == identity, (
                f"{who} published alert {alert_id} again as another alert: "
                f"{(alert.entity_type, alert.entity, alert.ts, alert.model_version)} after {identity}"
            )
            assert escalates(alert, severity, rules), (
                f"{who} published alert {alert_id} ({alert.entity_type} {alert.entity}) again at {alert.severity} "
                f"{sorted(rules_of(alert))} after {severity} {sorted(rules)}: a duplicate, not an escalation"
            )
            severity = max(severity, alert.severity, key=RANK.__getitem__)
            rules |= rules_of(alert)

    assert set(by_id) == expected_ids, (
        f"alert ids differ from replay: only streamed {sorted(set(by_id) - expected_ids)}, "
        f"only replayed {sorted(expected_ids - set(by_id))}"
    )
    first_ids = {Alert.from_json(m.value).alert_id for m in first_messages}
    second_new = set(by_id) - first_ids
    assert first_ids and second_new, "both runners should raise alerts of their own in this traffic"
