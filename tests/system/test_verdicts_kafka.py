"""Analysts' verdicts followed by the pipeline over a real Kafka broker.

In process, the runner wired as ``jwtwatch pipeline run`` wires it (responder, ``follow_verdicts``, a pipeline loop):
a benign verdict from the alerts service suppresses that pattern for that entity, a compromised one revokes exactly
once (also across a restart of the pipeline in the same group), and the runner goes on detecting while a stream of
verdicts flows — the verdict readers, polled by threads of their own, settle in their groups at once instead of
joining again at every runner step. Then ``jwtwatch pipeline run`` itself: a compromised verdict revokes, and
SIGTERM stops it cleanly.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.alerts import AlertsService
from pipeline.bus import REVOCATIONS, TOKEN_USAGE, Bus
from pipeline.bus.kafka import KafkaBus
from pipeline.bus.kafka_consumer import KafkaConsumerAdapter
from pipeline.detection.runner import StreamingRunner
from pipeline.events import Alert, TokenUsage, format_ts
from pipeline.keys import KeyStore
from pipeline.loop import BackgroundLoop
from pipeline.response.policy import AutoRevoker, ResponsePolicy
from pipeline.response.responder import Responder
from pipeline.revocations.feed import FeedSigner, FeedVerifier
from pipeline.scoring.model import DetectionModel, load_model
from tests.support.alerts import ADMIN, make_alert
from tests.support.cli import start
from tests.support.kafka import fresh_topics
from tests.support.paths import DEFAULT_MODEL

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

ISSUER = "https://issuer.verdicts-kafka.test"
WAIT_S = 90.0  # bounds for things that must happen, not expectations of speed
#: Joins a verdict reader may make: one, and one more when the metadata the group's leader assigned from was stale.
#: Polled with timeout 0 on the runner's thread, the acting reader once joined again at every runner step.
MAX_GENERATION = 3


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    return load_model(DEFAULT_MODEL)


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def probe(bus: Bus, ip: str, start: float, count: int = 12) -> None:
    """``count`` forged tokens from ``ip``, one a second from ``start``: the forged_probing rule's pattern."""
    for n in range(count):
        event = TokenUsage(event_id=str(uuid.uuid4()), ts=format_ts(start + n), ip=ip, outcome="rejected",
                           reason="bad_signature", user_agent="curl/8.5.0")  # fmt: skip
        bus.publish(TOKEN_USAGE, event.bus_key, event.to_json())
    bus.flush()


class Revocations:
    """The revocation feed as validators read it (signatures verified), from the beginning, in a group of its own."""

    def __init__(self, bus: Bus, keys: KeyStore) -> None:
        self.consumer = bus.consumer([REVOCATIONS], f"test-revocations-{uuid.uuid4()}", from_beginning=True)
        self.verifier = FeedVerifier.from_store(keys)
        self.values: list[str] = []

    def of(self, value: str) -> int:
        for message in self.consumer.poll(1000, 0.2):
            if message.value:
                self.values.append(self.verifier.verify(message.value).value)
        return self.values.count(value)


def generation(consumer: object) -> int:
    assert isinstance(consumer, KafkaConsumerAdapter)
    return consumer._generation()


@pytest.fixture
def bus(kafka_bootstrap: str) -> Iterator[KafkaBus]:
    fresh_topics(kafka_bootstrap)
    made = KafkaBus(kafka_bootstrap)
    yield made
    made.close()


def test_verdicts_suppress_and_revoke_once_while_the_runner_goes_on_detecting(
    bus: KafkaBus, model: DetectionModel, tmp_path: Path
) -> None:
    group = f"verdicts-test-{uuid.uuid4().hex[:8]}"
    keys = KeyStore.init(tmp_path / "revocation-keys", alg="ES256")
    service = AlertsService(tmp_path / "alerts", admin_token=ADMIN, bus=bus)
    revocations = Revocations(bus, keys)
    published: list[Alert] = []

    def pipeline() -> tuple[StreamingRunner, BackgroundLoop]:
        """As `jwtwatch pipeline run` wires it (auto-revocation off: every revocation here is an analyst's)."""
        responder = Responder(AutoRevoker(ResponsePolicy()), bus, issuer=ISSUER, signer=FeedSigner(keys))
        runner = StreamingRunner(bus, model, group=group, baselines_path=tmp_path / "baselines.json",
                                 respond=responder, on_alert=published.append)  # fmt: skip
        runner.follow_verdicts(responder.revoke_for_verdict)
        return runner, BackgroundLoop("pipeline", runner.step)

    def alerts_on(ip: str, since: float) -> list[Alert]:
        return [a for a in list(published) if a.entity_type == "ip" and a.entity == ip and a.ts >= format_ts(since)]

    start_s = float(int(time.time()))
    judged, other, later = "198.51.100.7", "198.51.100.8", "198.51.100.9"
    runner, loop = pipeline()
    follower = runner.verdicts
    assert follower is not None and follower.started
    loop.start()
    try:
        probe(bus, judged, start_s)
        wait_for(lambda: alerts_on(judged, start_s), f"an alert on {judged}")
        alert = alerts_on(judged, start_s)[0]
        assert any(r.get("rule") == "forged_probing" for r in alert.reasons)

        # The analyst's verdicts, as the alerts service records and publishes them.
        service.accept_alert(alert)
        assert service.record_verdict(alert.alert_id, "benign", suppress_for_s=7200) is not None
        stolen = f"tok-{uuid.uuid4().hex}"
        service.accept_alert(make_alert("stolen-1", entity=stolen, jti=stolen))
        assert service.record_verdict("stolen-1", "compromised") is not None
        wait_for(lambda: follower.applied >= 1, "the benign verdict applied by the runner")

        # A new episode (the first one has gone quiet): the same probing from the judged IP raises nothing, from
        # another IP it does — while a stream of verdicts on other alerts flows past the suppressions' reader.
        flowing = 200
        for n in range(flowing):
            service.accept_alert(make_alert(f"other-{n}", entity_type="ip", entity=f"192.0.2.{n % 250}",
                                            jti=None, sub=None))  # fmt: skip
        episode = start_s + 1200
        probe(bus, judged, episode)
        for n in range(flowing):
            assert service.record_verdict(f"other-{n}", "benign", suppress_for_s=3600) is not None
        probe(bus, other, episode)
        probe(bus, later, episode + 1200)  # later than everything above: once it alerts, all before was scored
        wait_for(lambda: alerts_on(later, episode + 1200), f"an alert on {later}")
        assert alerts_on(other, episode), "the runner stopped detecting while verdicts flowed"
        assert alerts_on(judged, episode) == []
        assert runner.engine.stats.suppressed > 0
        wait_for(lambda: follower.applied == 2 + flowing, "every verdict applied")

        wait_for(lambda: revocations.of(stolen) >= 1, "the compromised verdict's revocation")
        assert revocations.of(stolen) == 1 and follower.revocations == 1
        # Each reader joined its group once and stayed: a storm would join again at every step, never assigned.
        assert follower.reader.assignment() and follower.actor is not None and follower.actor.assignment()
        assert generation(follower.reader) <= MAX_GENERATION
        assert generation(follower.actor) <= MAX_GENERATION
    finally:
        loop.stop()
        runner.close()
    assert not any(thread.is_alive() for thread in follower.threads)
    assert follower.reader.assignment() == set() and follower.actor.assignment() == set()  # closed

    # Restarted in the same group: every benign verdict is read again before scoring, the compromised one was
    # handled (committed) and is not revoked again; a new one is, once.
    runner, loop = pipeline()
    try:
        assert runner.engine.suppressions.covers("ip", judged, ["forged_probing"], alert.severity, start_s + 3600)
        again = f"tok-{uuid.uuid4().hex}"
        service.accept_alert(make_alert("stolen-2", entity=again, jti=again))
        assert service.record_verdict("stolen-2", "compromised") is not None
        wait_for(lambda: revocations.of(again) == 1, "the second compromised verdict's revocation")
        assert revocations.of(stolen) == 1  # the acting reader got past it before the second: never twice
    finally:
        runner.close()
        service.close()


def test_pipeline_run_follows_verdicts_and_stops_cleanly(bus: KafkaBus, kafka_bootstrap: str, tmp_path: Path) -> None:
    group = f"verdicts-cli-{uuid.uuid4().hex[:8]}"
    keys = KeyStore.init(tmp_path / "revocation-keys", alg="ES256")
    env = {"JWTWATCH_KAFKA": kafka_bootstrap, "JWTWATCH_ISSUER": ISSUER, "JWTWATCH_REVOCATION_KEYS": str(keys.path)}
    log = tmp_path / "pipeline.log"
    proc = start(["pipeline", "run", "--group", group, "--data-dir", str(tmp_path / "pipeline")], env, log)
    try:
        service = AlertsService(tmp_path / "alerts", admin_token=ADMIN, bus=bus)
        stolen = f"tok-{uuid.uuid4().hex}"
        service.accept_alert(make_alert("stolen-1", entity=stolen, jti=stolen))
        assert service.record_verdict("stolen-1", "compromised") is not None
        service.close()
        revocations = Revocations(bus, keys)

        def revoked() -> int:
            assert proc.poll() is None, f"pipeline run exited; its log:\n{log.read_text()[-3000:]}"
            return revocations.of(stolen)

        wait_for(revoked, "a revocation from pipeline run")
        # Its loops run (the archive joins its group only in its loop): the signal handlers are in place.
        wait_for(lambda: revoked() >= 0 and f"for group {group}-archive" in log.read_text(), "pipeline run started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and "did not end" not in text, text[-3000:]
    assert revocations.of(stolen) == 1
    joins = re.findall(rf"Successfully joined group {re.escape(group)}-verdicts <Generation (\d+)", text)
    assert joins and max(map(int, joins)) <= MAX_GENERATION, joins  # the shared acting group settled at once
    # Both verdict readers left their groups on the way out.
    assert re.search(rf"for group {re.escape(group)}-verdicts-[0-9a-f-]+ on close", text), text[-3000:]
    assert re.search(rf"for group {re.escape(group)}-verdicts on close", text), text[-3000:]
