"""Analysts' verdicts: the verdict/1 record, the pure suppressions, the alerts service's storage, and the pipeline
following ``jwtwatch.verdicts`` end to end on the in-process bus (benign suppresses a pattern for an entity;
compromised revokes through the policy's guardrails); the archive keeps them; ``train --verdicts`` reports."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from pipeline.alerts import AlertsConsumer, AlertsService
from pipeline.archive import ArchiveConsumer, ArchiveWriter, read_archive
from pipeline.bus import REVOCATIONS, TOKEN_USAGE, VERDICTS, default_topics
from pipeline.bus.memory import MemoryBus
from pipeline.cli import app as cli_app
from pipeline.detection.precision import precision_report, read_verdicts
from pipeline.detection.runner import StreamingRunner
from pipeline.errors import RecordError
from pipeline.events import Alert, AlertVerdict, Revocation, TokenUsage, format_ts, to_arrow
from pipeline.response.policy import AutoRevoker, ResponsePolicy
from pipeline.response.responder import Responder
from pipeline.response.suppressions import Suppressions
from pipeline.scoring.model import DetectionModel, load_model
from tests.support.alerts import ADMIN, FakeClock, make_alert
from tests.support.paths import DEFAULT_MODEL

T0 = 1_790_000_000.0
ISSUER = "https://issuer.verdicts.test"


def verdict_record(**extra: object) -> AlertVerdict:
    fields: dict[str, object] = {
        "verdict_id": str(uuid.uuid4()),
        "alert_id": "a-1",
        "verdict": "benign",
        "ts": "2026-12-07T10:00:00.000Z",
        "by": "admin",
        "entity_type": "sub",
        "entity": "alice",
        "severity": "medium",
        "rules": ["parallel_sessions"],
        "sub": "alice",
        "note": "two phones",
        "suppress_until": "2026-12-08T10:00:00.000Z",
    }
    fields.update(extra)
    return AlertVerdict(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- record


def test_verdict_record_round_trips_through_json_and_arrow() -> None:
    verdict = verdict_record()
    assert AlertVerdict.from_json(verdict.to_json()) == verdict
    assert verdict.bus_key == "a-1"
    table = to_arrow([verdict, verdict_record(verdict="compromised", suppress_until=None, rules=[])])
    assert table.num_rows == 2 and table.column("rules").to_pylist() == [["parallel_sessions"], []]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"verdict": "maybe"}, "verdict"),
        ({"verdict_id": "not-a-uuid"}, "verdict_id"),
        ({"entity_type": "device"}, "entity_type"),
        ({"severity": "extreme"}, "severity"),
        ({"rules": "parallel_sessions"}, "rules"),
        ({"rules": [1]}, "rules"),
        ({"rules": ["x" * 65]}, "rules"),
        ({"rules": ["r"] * 33}, "rules"),
        ({"ts": "yesterday"}, "ts"),
        ({"suppress_until": None}, "suppress_until"),  # benign without an end
        ({"verdict": "compromised"}, "suppress_until"),  # compromised with one
        ({"note": "n" * 9000}, "note"),
    ],
)
def test_hostile_verdict_records_are_refused_naming_the_field(change: dict[str, object], field: str) -> None:
    data = {**verdict_record().to_dict(), **change}
    with pytest.raises(RecordError) as caught:
        AlertVerdict.from_json(orjson.dumps(data))
    assert caught.value.field == field


@pytest.mark.parametrize("raw", [b"", b"[]", b"{", b'{"schema": "alert/1"}', b"\xff\xfe", b'{"schema": "verdict/1"}'])
def test_garbage_is_a_record_error(raw: bytes) -> None:
    with pytest.raises(RecordError):
        AlertVerdict.from_json(raw)


# ------------------------------------------------------------------------------------- suppressions


def test_a_suppression_covers_the_same_entity_rules_subset_and_severity_until_it_ends() -> None:
    s = Suppressions()
    s.judge(alert_id="a", verdict="benign", entity_type="sub", entity="alice", rules=["parallel_sessions"],
            severity="medium", until=100.0)  # fmt: skip
    assert s.covers("sub", "alice", ["parallel_sessions"], "medium", 100.0)
    assert s.covers("sub", "alice", [], "low", 50.0)  # the forest alone, no more severe
    assert not s.covers("sub", "alice", ["parallel_sessions"], "medium", 100.5)  # ended
    assert not s.covers("sub", "bob", ["parallel_sessions"], "medium", 50.0)  # another entity
    assert not s.covers("jti", "alice", ["parallel_sessions"], "medium", 50.0)  # another entity type
    assert not s.covers("sub", "alice", ["parallel_sessions", "rate_abuse"], "medium", 50.0)  # a new rule
    assert not s.covers("sub", "alice", ["parallel_sessions"], "high", 50.0)  # more severe
    s.judge(alert_id="a", verdict="compromised", entity_type="sub", entity="alice", rules=[], severity="medium",
            until=None)  # fmt: skip
    assert not s.covers("sub", "alice", ["parallel_sessions"], "medium", 50.0)  # the analyst changed their mind
    assert len(s) == 0


def test_suppressions_are_pruned_when_they_end() -> None:
    s = Suppressions()
    for n in range(3):
        s.judge(alert_id=f"a{n}", verdict="benign", entity_type="ip", entity=f"10.0.0.{n}", rules=[],
                severity="low", until=10.0 * n)  # fmt: skip
    assert s.prune(15.0) == 2 and len(s) == 1


# ------------------------------------------------------------------------------------------ storage


def test_an_old_database_gains_the_verdicts_table_and_keeps_its_alerts(tmp_path: Path) -> None:
    with AlertsService(tmp_path, admin_token=ADMIN) as service:
        service.accept_alert(make_alert("old-1"))
    # What a database of schema 2 looked like: no verdicts table.
    db = sqlite3.connect(tmp_path / "alerts.sqlite")
    db.execute("DROP TABLE verdicts")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    with AlertsService(tmp_path, admin_token=ADMIN) as service:
        assert [a["alert_id"] for a in service.list_alerts()] == ["old-1"]
        assert service.list_alerts()[0]["verdict"] is None
        assert service.record_verdict("old-1", "compromised") is not None
        assert service.list_alerts(verdict="compromised")[0]["verdict"]["verdict"] == "compromised"
    db = sqlite3.connect(tmp_path / "alerts.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    db.close()


def test_every_verdict_is_kept_and_the_latest_is_the_alerts(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    bus = MemoryBus()
    with AlertsService(tmp_path, admin_token=ADMIN, clock=clock, bus=bus) as service:
        service.accept_alert(make_alert("a-1", reasons=[{"rule": "token_fanout", "text": "rule fired"}]))
        service.accept_alert(make_alert("a-2", entity="tok-2", jti="tok-2"))
        first = service.record_verdict("a-1", "benign", note="load test", suppress_for_s=3600, by="ana")
        clock.advance(60)
        second = service.record_verdict("a-1", "compromised", note="it was not")
        assert first is not None and second is not None
        assert first.rules == ["token_fanout"] and first.suppress_until == format_ts(T0 + 3600)
        shown = {a["alert_id"]: a["verdict"] for a in service.list_alerts()}
        assert shown["a-2"] is None
        assert shown["a-1"]["verdict"] == "compromised" and shown["a-1"]["note"] == "it was not"
        assert [a["alert_id"] for a in service.list_alerts(verdict="none")] == ["a-2"]
        assert service.list_alerts(verdict="benign") == []
        assert service.record_verdict("nope", "benign") is None
        assert service.active_verdicts() == []  # the benign one was overruled
    published = [AlertVerdict.from_json(m.value) for m in bus.consumer([VERDICTS], "t").poll(100, 0)]
    assert [v.verdict_id for v in published] == [first.verdict_id, second.verdict_id]


def test_a_verdict_that_cannot_be_published_is_not_kept(tmp_path: Path) -> None:
    bus = MemoryBus()
    with AlertsService(tmp_path, admin_token=ADMIN, bus=bus) as service:
        service.accept_alert(make_alert("a-1"))
        bus.close()  # publishing now fails
        with pytest.raises(Exception, match="could not be published"):
            service.record_verdict("a-1", "benign")
        assert service.list_alerts()[0]["verdict"] is None


@pytest.mark.parametrize("seconds", [0, 59, 30 * 86400 + 1])
def test_suppression_bounds(tmp_path: Path, seconds: int) -> None:
    with AlertsService(tmp_path, admin_token=ADMIN) as service:
        service.accept_alert(make_alert("a-1"))
        with pytest.raises(ValueError, match="suppress_for"):
            service.record_verdict("a-1", "benign", suppress_for_s=seconds)


# ------------------------------------------------------------------------------ pipeline, end to end


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    return load_model(DEFAULT_MODEL)


def forged(ip: str, ts: float) -> TokenUsage:
    return TokenUsage(event_id=str(uuid.uuid4()), ts=format_ts(ts), ip=ip, outcome="rejected", reason="bad_signature",
                      user_agent="curl/8.5.0")  # fmt: skip


class Loop:
    """Validator stand-in (publishes usage events), pipeline and alerts service on one in-process bus."""

    def __init__(self, model: DetectionModel, data: Path, policy: ResponsePolicy, group: str = "p") -> None:
        self.bus = MemoryBus()
        self.clock = FakeClock(T0)
        self.service = AlertsService(data, admin_token=ADMIN, clock=self.clock, bus=self.bus)
        self.consumer = AlertsConsumer(self.bus, self.service)
        self.model, self.policy, self.group = model, policy, group
        self.runner = self.start_pipeline()

    def start_pipeline(self) -> StreamingRunner:
        runner = StreamingRunner(self.bus, self.model, group=self.group, poll_timeout_s=0.0)
        self.responder = Responder(AutoRevoker(self.policy), self.bus, issuer=ISSUER, clock=self.clock)
        self.published: list[Alert] = []
        runner.respond, runner.on_alert = self.responder, self.published.append
        runner.follow_verdicts(self.responder.revoke_for_verdict, background=False)  # stepped here, in order
        return runner

    def probe(self, ip: str, start: float, count: int = 12) -> list[Alert]:
        """``count`` forged tokens from ``ip``, one a second from ``start``: the forged_probing rule's pattern."""
        for n in range(count):
            event = forged(ip, start + n)
            self.bus.publish(TOKEN_USAGE, event.bus_key, event.to_json())
        return self.run()

    def run(self) -> list[Alert]:
        """Let the pipeline and the alerts service take everything; the alerts the pipeline published meanwhile."""
        before = len(self.published)
        while self.runner.step():
            pass
        self.runner.step()  # a quiet poll: the open tick is scored
        while self.consumer.step():
            pass
        return self.published[before:]

    def revocations(self) -> list[Revocation]:
        consumer = self.bus.consumer([REVOCATIONS], f"r-{uuid.uuid4()}")
        return [Revocation.from_json(m.value) for m in consumer.poll(1000, 0)]


def alerted_ips(alerts: list[Alert]) -> set[str]:
    return {a.entity for a in alerts if a.entity_type == "ip"}


@pytest.fixture
def loop(model: DetectionModel, tmp_path: Path) -> Iterator[Loop]:
    made = Loop(model, tmp_path, ResponsePolicy())
    yield made
    made.runner.close()
    made.service.close()


def test_a_benign_verdict_suppresses_that_pattern_for_that_entity_until_it_ends(loop: Loop) -> None:
    first = loop.probe("198.51.100.7", T0)
    assert alerted_ips(first) == {"198.51.100.7"}
    alert = next(a for a in first if a.entity == "198.51.100.7")
    assert any(r.get("rule") == "forged_probing" for r in alert.reasons)
    loop.clock.to(T0 + 60)
    assert loop.service.record_verdict(alert.alert_id, "benign", suppress_for_s=3600) is not None

    # Later (a new episode: the first one has gone quiet) the same probing from the same IP raises nothing...
    assert loop.probe("198.51.100.7", T0 + 1200) == []
    assert loop.runner.engine.stats.suppressed > 0
    # ... but the same probing from another IP does.
    assert alerted_ips(loop.probe("198.51.100.8", T0 + 1800)) == {"198.51.100.8"}
    # After suppress_for (the verdict at T0 + 60, for an hour) the first IP alerts again.
    assert alerted_ips(loop.probe("198.51.100.7", T0 + 60 + 3600 + 600)) == {"198.51.100.7"}


def test_suppressed_windows_teach_the_baselines(loop: Loop) -> None:
    baselines = loop.runner.engine.baselines
    alert = loop.probe("198.51.100.9", T0)[0]
    loop.service.record_verdict(alert.alert_id, "benign", suppress_for_s=86400)
    # Long enough to be learned (LEARN_AFTER_S): the judged IP is learned, one that alerts is not.
    assert loop.probe("198.51.100.9", T0 + 1200, count=200) == []
    assert alerted_ips(loop.probe("198.51.100.10", T0 + 1200, count=200)) == {"198.51.100.10"}
    assert baselines.knows_ip("198.51.100.9") and not baselines.knows_ip("198.51.100.10")


def test_a_restarted_pipeline_reads_the_verdicts_again_and_does_not_revoke_twice(loop: Loop) -> None:
    alert = loop.probe("198.51.100.7", T0)[0]
    loop.service.record_verdict(alert.alert_id, "benign", suppress_for_s=7200)
    loop.service.accept_alert(make_alert("tok-alert", ts=format_ts(T0)))
    loop.service.record_verdict("tok-alert", "compromised")
    loop.run()
    assert len(loop.revocations()) == 1
    loop.runner.close()
    loop.runner = loop.start_pipeline()  # same group: the compromised verdict was handled
    assert len(loop.runner.engine.suppressions) == 1
    assert loop.probe("198.51.100.7", T0 + 1200) == []
    assert len(loop.revocations()) == 1


def test_compromised_revokes_the_token_through_the_policy_even_with_auto_revocation_off(loop: Loop) -> None:
    assert not loop.policy.enabled
    loop.service.accept_alert(make_alert("a-jti", severity="low"))
    loop.service.accept_alert(make_alert("a-sub", entity_type="sub", entity="bob", sub="bob", jti=None))
    loop.service.accept_alert(make_alert("a-ip", entity_type="ip", entity="203.0.113.9", sub=None, jti=None))
    for alert_id in ("a-jti", "a-sub", "a-ip"):
        loop.clock.advance(1)
        loop.service.record_verdict(alert_id, "compromised")
    loop.run()
    by_alert = {r.alert_id: r for r in loop.revocations()}
    assert set(by_alert) == {"a-jti", "a-sub"}  # the IP alert names no token or subject: nothing to revoke
    assert (by_alert["a-jti"].kind, by_alert["a-jti"].value, by_alert["a-jti"].source) == ("jti", "tok-123", "manual")
    assert (by_alert["a-sub"].kind, by_alert["a-sub"].value) == ("sub", "bob")
    assert by_alert["a-sub"].revoked_before == format_ts(T0 + 2)


def test_compromised_respects_the_allowlist_and_the_circuit_breaker(model: DetectionModel, tmp_path: Path) -> None:
    policy = ResponsePolicy(allow_subjects=frozenset({"alice"}), max_per_minute=1)
    made = Loop(model, tmp_path, policy)
    try:
        made.service.accept_alert(make_alert("a-alice"))  # sub alice: allowlisted
        made.service.accept_alert(make_alert("a-b1", entity="t1", jti="t1", sub="bob"))
        made.service.accept_alert(make_alert("a-b2", entity="t2", jti="t2", sub="bob"))
        for alert_id in ("a-alice", "a-b1", "a-b2"):
            made.service.record_verdict(alert_id, "compromised")
        made.run()
        assert [r.alert_id for r in made.revocations()] == ["a-b1"]  # the second bob one: breaker open
        assert made.responder.suppressed == 2
    finally:
        made.runner.close()
        made.service.close()


def test_a_verdict_record_that_does_not_parse_is_dead_lettered_and_the_rest_go_on(loop: Loop) -> None:
    loop.bus.publish(VERDICTS, "x", b'{"schema": "verdict/1", "verdict": "compromised"}')
    loop.service.accept_alert(make_alert("a-1"))
    loop.service.record_verdict("a-1", "compromised")
    loop.run()
    assert [r.alert_id for r in loop.revocations()] == ["a-1"]
    assert loop.runner.verdicts is not None and loop.runner.verdicts.dead_letters == 1


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def test_a_started_follower_reads_on_its_threads_and_the_runner_applies_at_its_step(
    model: DetectionModel, tmp_path: Path
) -> None:
    bus = MemoryBus()
    runner = StreamingRunner(bus, model, group="p", poll_timeout_s=0.0)
    responder = Responder(AutoRevoker(ResponsePolicy()), bus, issuer=ISSUER)
    follower = runner.follow_verdicts(responder.revoke_for_verdict)  # background: threads of its own
    try:
        assert follower.started and len(follower.threads) == 2 and all(t.is_alive() for t in follower.threads)
        benign = verdict_record(alert_id="a-1", suppress_until=format_ts(T0 + 3600))
        compromised = verdict_record(alert_id="a-2", verdict="compromised", suppress_until=None, entity_type="jti",
                                     entity="tok-9", jti="tok-9")  # fmt: skip
        for verdict in (benign, compromised):
            bus.publish(VERDICTS, verdict.bus_key, verdict.to_json())
        # The acting reader's thread revokes; the other one only queues for the runner, which has not stepped.
        wait_for(lambda: follower.revocations == 1, "the compromised verdict revoked")
        wait_for(lambda: follower.pending == 2, "both verdicts read")
        assert len(runner.engine.suppressions) == 0 and follower.applied == 0
        runner.step()
        assert follower.pending == 0 and follower.applied == 2
        assert runner.engine.suppressions.covers("sub", "alice", ["parallel_sessions"], "medium", T0)
        consumer = bus.consumer([REVOCATIONS], "check")
        assert [Revocation.from_json(m.value).value for m in consumer.poll(100, 0)] == ["tok-9"]
    finally:
        runner.close()
    assert not any(t.is_alive() for t in follower.threads)  # stopped, then its consumers closed


# ------------------------------------------------------------------------------------ archive, train


def test_verdicts_are_archived_and_read_back_for_the_precision_report(tmp_path: Path) -> None:
    bus = MemoryBus(default_topics())
    archive = ArchiveConsumer(bus, ArchiveWriter(tmp_path))
    verdicts = [
        verdict_record(alert_id="a1"),
        verdict_record(alert_id="a2", verdict="compromised", suppress_until=None, entity_type="jti", rules=[]),
        verdict_record(alert_id="a3", verdict="compromised", suppress_until=None),
    ]
    for v in verdicts:
        bus.publish(VERDICTS, v.bus_key, v.to_json())
    archive.step(0)
    archive.flush()
    frame = read_archive(tmp_path, "verdicts")
    assert sorted(frame["alert_id"]) == ["a1", "a2", "a3"]
    read = read_verdicts(tmp_path)
    assert read.bad == [] and sorted(v.alert_id for v in read.verdicts) == ["a1", "a2", "a3"]
    rows = {r.group: (r.compromised, r.benign) for r in precision_report(read.verdicts)}
    assert rows == {
        "all": (2, 1),
        "entity_type=jti": (1, 0),
        "entity_type=sub": (1, 1),
        "rule=(forest)": (1, 0),
        "rule=parallel_sessions": (1, 1),
    }


def test_train_reports_precision_from_a_verdict_file_and_skips_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "verdicts.jsonl"
    latest = verdict_record(alert_id="a1", verdict="compromised", suppress_until=None, ts="2026-12-07T11:00:00.000Z")
    path.write_bytes(verdict_record(alert_id="a1").to_json() + b"\n" + b"{not json\n" + latest.to_json() + b"\n")
    assert next(r.group for r in precision_report(read_verdicts(path).verdicts)) == "all"
    result = CliRunner().invoke(cli_app, ["train", "--events", str(tmp_path / "none.jsonl"), "--model-dir",
                                          str(tmp_path / "m"), "--verdicts", str(path)])  # fmt: skip
    assert "rule=parallel_sessions" in result.output and "1.00" in result.output  # the latest verdict counts
    assert "1 bad verdict record(s) skipped" in result.output
