"""Chaos: components killed, receivers slow or gone, the data dir's disk full — nothing accepted is lost.

Marked ``chaos`` (``make test`` runs them). The disk-full tests mount a small tmpfs (root only; they skip
elsewhere with the reason, and fail instead when ``JWTWATCH_REQUIRE_CHAOS=1``, as ``.ci/run`` sets).
The alerts service kill test runs ``jwtwatch alerts serve --kafka`` as a real process against the real
broker and SIGKILLs it in the middle of deliveries.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from pipeline.alerts.retry import RetryPolicy
from pipeline.alerts.service import AlertsService
from pipeline.alerts.worker import AlertsWorker
from pipeline.bus import ALERTS
from pipeline.bus.kafka import KafkaBus
from pipeline.bus.memory import MemoryBus
from pipeline.errors import RevocationStoreError
from pipeline.events import Alert
from pipeline.keys import KeyStore
from pipeline.revocations.store import RevocationStore
from pipeline.validation.app import create_validator_app
from pipeline.validation.config import ValidatorConfig
from pipeline.validation.service import ValidatorService
from tests.support.jwtkit import Issuer
from tests.support.paths import DEFAULT_MODEL
from tests.support.require import skip_or_fail
from tests.support.servers import serve_app, stop_process, wait_ready

pytestmark = [pytest.mark.chaos]

ADMIN = "chaos-admin-token-0123456789abcdef"


# ------------------------------------------------------------------------------------------ helpers


def make_alert(alert_id: str, severity: str = "high") -> Alert:
    return Alert(
        alert_id=alert_id,
        ts="2026-11-28T12:00:00.000Z",
        entity_type="jti",
        entity=f"tok-{alert_id[:8]}",
        jti=f"tok-{alert_id[:8]}",
        sub="alice",
        ip="203.0.113.7",
        window_start="2026-11-28T11:55:00.000Z",
        window_end="2026-11-28T12:00:00.000Z",
        score=0.9,
        severity=severity,
        model_version="chaos",
        features={"distinct_ips": 4.0},
        reasons=[{"feature": "distinct_ips", "value": 4, "baseline": 1, "text": "4 IPs, usually 1"}],
    )


class Receiver:
    """A webhook receiver on loopback that can be made slow, taken down and brought back on the same port."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.stall = False  # answer nothing until the sender has given up (a timeout)
        self.requests: list[tuple[dict[str, str], bytes]] = []  # answered with 204
        self.stalled = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.up()

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.stall:
                    receiver.stalled += 1
                    time.sleep(2.0)
                    return  # no answer: the sender timed out long ago
                time.sleep(receiver.delay_s)
                with receiver._lock:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                with contextlib.suppress(OSError):  # the sender may have timed out and gone
                    self.send_response(204)
                    self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def verified_alert_ids(self, secret: str) -> set[str]:
        """Alert ids of the deliveries whose signature checks out (each is verified, or the test fails)."""
        with self._lock:
            requests = list(self.requests)
        ids = set()
        for headers, body in requests:
            payload = Webhook(secret).verify(body, headers)
            ids.add(payload["data"]["alert_id"])
        return ids


@pytest.fixture
def kafka_topics(kafka_bootstrap: str) -> Iterator[str]:
    """The product's topics, empty before the test — and emptied after it: these tests leave a large backlog
    (and live consumer groups) behind, which later tests reading the usage topic from the beginning must not
    have to wade through."""
    from tests.support.kafka import fresh_topics

    fresh_topics(kafka_bootstrap)
    yield kafka_bootstrap
    fresh_topics(kafka_bootstrap)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


# --------------------------------------------------------------------- webhook receiver slow, then down


def test_a_receiver_that_times_out_then_goes_down_still_gets_every_alert(tmp_path: Path) -> None:
    receiver = Receiver()
    receiver.stall = True  # longer than the delivery timeout: every attempt times out
    service = AlertsService(
        tmp_path, admin_token=ADMIN, timeout_s=0.3, retry=RetryPolicy(base_s=0.5, cap_s=1.5, min_delay_s=0.2)
    )
    _, secret = service.create_subscription(receiver.url, ["token.anomaly"], "low")
    worker = AlertsWorker(service, interval_s=0.05).start()
    ids = [str(uuid.uuid4()) for _ in range(10)]
    try:
        for alert_id in ids:
            assert service.accept_alert(make_alert(alert_id))
        worker.wake()
        wait_for(lambda: receiver.stalled >= 3, 20, "the first (timed-out) attempts")
        assert receiver.requests == []
        receiver.down()  # then nothing listens at all: connection refused
        time.sleep(1.5)
        receiver.stall = False
        receiver.up()
        wait_for(lambda: receiver.verified_alert_ids(secret) >= set(ids), 60, "every alert delivered")
    finally:
        worker.stop()
        receiver.down()
    errors = [d for d in service.list_deliveries(limit=1000) if d["status"] != "delivered"]
    assert errors == []
    attempts = service._query("SELECT error FROM delivery_attempts WHERE error IS NOT NULL")
    texts = " ".join(str(e) for (e,) in attempts).lower()
    assert "timeout" in texts or "timed out" in texts, texts[:500]  # the slow phase really timed out
    service.close()


# ------------------------------------------------------------------ the alerts service killed mid-delivery


def _alerts_process(bootstrap: str, data_dir: Path, keys: Path, token_file: Path, port: int, log: Path):
    env = {**os.environ, "JWTWATCH_ADMIN_TOKEN_FILE": str(token_file)}
    command = [sys.executable, "-m", "pipeline.cli", "alerts", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--kafka", bootstrap, "--data-dir", str(data_dir), "--revocation-keys", str(keys)]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_the_alerts_service_killed_mid_delivery_delivers_every_accepted_alert(
    kafka_topics: str, tmp_path: Path
) -> None:
    from tests.support.ports import free_port

    kafka_bootstrap = kafka_topics
    keys = tmp_path / "revocation-keys"
    KeyStore.init(keys, alg="ES256", issuer="urn:jwtwatch")
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN)
    token_file.chmod(0o600)  # a secret file readable by others is refused
    port, log = free_port(), tmp_path / "alerts.log"
    receiver = Receiver()
    receiver.delay_s = 0.2  # a slow receiver: the kill lands while deliveries are in flight
    process = _alerts_process(kafka_bootstrap, tmp_path / "data", keys, token_file, port, log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, process, log)
        answer = httpx.post(f"{base}/v1/webhooks", headers={"Authorization": f"Bearer {ADMIN}"},
                            json={"url": receiver.url, "event_types": ["token.anomaly"]})  # fmt: skip
        assert answer.status_code == 201, answer.text
        secret = answer.json()["secret"]
        ids = [str(uuid.uuid4()) for _ in range(40)]
        bus = KafkaBus(kafka_bootstrap)
        try:
            for alert_id in ids:
                bus.publish(ALERTS, alert_id.encode(), make_alert(alert_id).to_json())
            bus.flush()
        finally:
            bus.close()
        wait_for(lambda: len(receiver.requests) >= 5, 60, "the first deliveries")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        delivered_before = receiver.verified_alert_ids(secret)
        assert delivered_before < set(ids), "everything was delivered before the kill: the test proves nothing"
        process = _alerts_process(kafka_bootstrap, tmp_path / "data", keys, token_file, port, log)
        wait_for(lambda: receiver.verified_alert_ids(secret) >= set(ids), 90, "every alert delivered after restart")
    finally:
        stop_process(process, timeout_s=20)
        receiver.down()
    # At least once: an attempt in flight at the kill may arrive twice — with the same webhook-id, so that a
    # receiver de-duplicates it — but nothing else is repeated. In flight means running (at most the service's
    # 8 at once) or finished but not yet recorded (each is recorded as it ends, one SQLite commit at a time);
    # before attempts were recorded one by one, a kill repeated the whole claimed batch (up to 100).
    message_ids = [headers["webhook-id"] for headers, _ in receiver.requests]
    repeats = len(message_ids) - len(set(message_ids))
    assert repeats <= 16, f"{repeats} repeated deliveries: more than were in flight"
    assert len(set(message_ids)) == len(ids)


# ------------------------------------------------------------------------------------------ disk full


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: the data dir's disk, made to fill up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        skip_or_fail("CHAOS", f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of the disk; returns the filler file (delete it to free the space)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0")
    return filler


def integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def test_revocations_on_a_full_disk_fail_clearly_and_corrupt_nothing(small_disk: Path) -> None:
    store = RevocationStore(small_disk / "revocations.sqlite")
    kept = [store.revoke(kind="jti", iss="https://issuer.example", value=f"tok-{i}", reason="test") for i in range(20)]
    filler = fill(small_disk)
    with pytest.raises(RevocationStoreError, match="cannot store revocation"):
        for i in range(10_000):  # SQLite may still have a free page or two: keep writing until the disk says no
            store.revoke(kind="jti", iss="https://issuer.example", value=f"more-{i}" + "x" * 200, reason="test")
    failed_at = i
    assert not store.is_revoked("https://issuer.example", f"more-{failed_at}" + "x" * 200, None, None)  # not durable
    store.close()
    filler.unlink()
    assert integrity(small_disk / "revocations.sqlite") == "ok"
    reopened = RevocationStore(small_disk / "revocations.sqlite")
    try:
        for record in kept:
            assert reopened.is_revoked(record.iss, record.value, None, None)
        reopened.revoke(kind="jti", iss="https://issuer.example", value="after", reason="test")  # space again
        assert reopened.is_revoked("https://issuer.example", "after", None, None)
    finally:
        reopened.close()


def test_the_validator_answers_503_when_its_disk_is_full(small_disk: Path) -> None:
    issuer = Issuer.create()
    service = ValidatorService(
        ValidatorConfig(issuer="https://issuer.example", audience="https://api.example", jwks=issuer.jwks()),
        data_dir=small_disk / "validator",
        bus=MemoryBus(),
        admin_token=ADMIN,
    )
    try:
        with serve_app(create_validator_app(service)) as base:
            auth = {"Authorization": f"Bearer {ADMIN}"}
            ok = httpx.post(f"{base}/v1/revocations", headers=auth, json={"kind": "jti", "value": "tok-1"})
            assert ok.status_code == 201, ok.text
            filler = fill(small_disk)
            answers = [
                httpx.post(f"{base}/v1/revocations", headers=auth, json={"kind": "jti", "value": f"t-{i}" + "y" * 200})
                for i in range(200)
            ]
            codes = {a.status_code for a in answers}
            assert 500 not in codes, "a full disk must not be an internal error"
            refused = [a for a in answers if a.status_code == 503]
            assert refused, codes
            assert refused[0].json()["error"] == "revocation_store_unavailable"
            filler.unlink()
            again = httpx.post(f"{base}/v1/revocations", headers=auth, json={"kind": "jti", "value": "tok-2"})
            assert again.status_code == 201, again.text
    finally:
        service.close()
    assert integrity(small_disk / "validator" / "revocations.sqlite") == "ok"


def test_alerts_on_a_full_disk_are_refused_whole_and_accepted_after(small_disk: Path) -> None:
    receiver = Receiver()
    service = AlertsService(small_disk / "alerts", admin_token=ADMIN)
    _, secret = service.create_subscription(receiver.url, ["token.anomaly"], "low")
    accepted = [str(uuid.uuid4()) for _ in range(5)]
    for alert_id in accepted:
        assert service.accept_alert(make_alert(alert_id))
    filler = fill(small_disk)
    refused: list[str] = []
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for _ in range(10_000):
            alert_id = str(uuid.uuid4())
            refused.append(alert_id)
            service.accept_alert(make_alert(alert_id))
            accepted.append(refused.pop())
    filler.unlink()
    # The consumer commits its bus offset only after accept_alert returns (tests/alerts/test_alerts_service.py), so
    # the refused alert comes again from the bus: accepting it now must work.
    assert service.accept_alert(make_alert(refused[-1]))
    accepted.append(refused[-1])
    service.deliver_due(limit=100_000)
    service.deliver_due(limit=100_000)
    try:
        assert receiver.verified_alert_ids(secret) == set(accepted)
    finally:
        receiver.down()
        service.close()
    assert integrity(small_disk / "alerts" / "alerts.sqlite") == "ok"


def test_bus_consumers_on_a_full_disk_park_nothing_and_lose_nothing(small_disk: Path) -> None:
    """A full disk is the environment's fault, not the records': the alerts consumer, the revocation follower and
    the archive dead-letter nothing, commit nothing they could not store, and store everything once there is space."""
    from pipeline.alerts.worker import AlertsConsumer
    from pipeline.archive import ArchiveConsumer, ArchiveWriter, read_archive
    from pipeline.bus import DEAD_LETTER, REVOCATIONS
    from pipeline.revocations.follower import RevocationFollower
    from pipeline.revocations.store import new_revocation

    bus = MemoryBus()
    service = AlertsService(small_disk / "alerts", admin_token=ADMIN)
    store = RevocationStore(small_disk / "revocations.sqlite")
    alerts = AlertsConsumer(bus, service, poll_timeout_s=0.05)
    follower = RevocationFollower(bus, store)
    archive = ArchiveConsumer(bus, ArchiveWriter(small_disk / "data"), flush_interval_s=0.0)
    consumers: list[Callable[[], int]] = [alerts.step, follower.step, lambda: archive.step(0.05)]
    filler = fill(small_disk)
    alert_ids, revoked = [], []
    for i in range(6):  # every commit grows a WAL: none fits while the disk is full, all once the filler is gone
        alert_id = str(uuid.uuid4())
        alert_ids.append(alert_id)
        bus.publish(ALERTS, alert_id, make_alert(alert_id).to_json())
        record = new_revocation(kind="jti", iss="https://issuer.example", value=f"tok-{i}-" + "v" * 100, reason="x")
        revoked.append(record.value)
        bus.publish(REVOCATIONS, record.bus_key, record.to_json())
    failures = 0
    for step in consumers:
        for _ in range(20):
            try:
                if step() == 0:
                    break
            except (OSError, sqlite3.Error, RevocationStoreError):
                failures += 1
    assert failures >= 3, "every consumer should have met the full disk"
    assert (alerts.dead_letters, follower.rejected, archive.dead_letters) == (0, 0, 0)
    assert bus.consumer([DEAD_LETTER], "check").poll(10, 0.1) == []
    filler.unlink()
    for step in consumers:
        for _ in range(50):
            if step() == 0:
                break
    archive.close()
    try:
        assert {a["alert_id"] for a in service.list_alerts(limit=1000)} == set(alert_ids)
        assert all(store.is_revoked("https://issuer.example", value, None, None) for value in revoked)
        assert set(read_archive(small_disk / "data", "alerts")["alert_id"]) == set(alert_ids)
        assert (alerts.dead_letters, follower.rejected, archive.dead_letters) == (0, 0, 0)
    finally:
        alerts.close()
        follower.close()
        service.close()
        store.close()


def test_a_json_dump_of_the_receiver_is_what_the_service_signed() -> None:
    """Guards the helper above: an unsigned or altered body must not count as delivered."""
    receiver = Receiver()
    try:
        receiver.requests.append(({"webhook-id": "x", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"},
                                  json.dumps({"data": {"alert_id": "a"}}).encode()))  # fmt: skip
        with pytest.raises(Exception):  # any verification failure
            receiver.verified_alert_ids("whsec_" + "A" * 43 + "=")
    finally:
        receiver.down()


# ------------------------------------------------------------------------ the pipeline killed mid-batch


@pytest.mark.kafka
@pytest.mark.timeout(420)
def test_the_pipeline_killed_mid_stream_rebuilds_its_windows_and_duplicates_no_alert(
    kafka_topics: str, tmp_path: Path
) -> None:
    """`jwtwatch pipeline run --kafka` SIGKILLed while it works through a backlog, then started again: it
    rebuilds its windows from the usage topic, publishes every alert `replay` gives, and none twice (an id
    repeats only as an escalation)."""
    from kafka.errors import KafkaError

    from pipeline.detection.replay import replay
    from pipeline.events import Alert
    from pipeline.scoring.model import load_model
    from pipeline.simulate import SimulationParams, iter_records, simulate
    from pipeline.validation.usage import UsageEmitter
    from tests.support.escalations import assert_only_escalations
    from tests.support.kafka import committed_offsets, read_topic

    kafka_bootstrap = kafka_topics
    traffic = simulate(SimulationParams(minutes=10, seed=13, browsers=250, mobile=120, offices=6, services=15,
                                        incidents_per_threat=1))  # fmt: skip
    model = load_model(DEFAULT_MODEL)
    expected = {a.alert_id for a in replay(traffic.events, model)[0]}
    assert expected
    bus = KafkaBus(kafka_bootstrap, client_id="chaos-validator")
    try:
        emitter = UsageEmitter(bus)
        for record in iter_records(traffic):
            emitter.emit(record)
        bus.flush(120)
    finally:
        bus.close()
    total = len(traffic.events)

    keys = tmp_path / "revocation-keys"
    KeyStore.init(keys, alg="ES256", issuer="urn:jwtwatch")
    group = f"chaos-pipeline-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "pipeline.cli", "pipeline", "run", "--kafka", kafka_bootstrap, "--data-dir",
               str(tmp_path / "data"), "--revocation-keys", str(keys), "--group", group,
               "--issuer", "https://issuer.chaos.test"]  # fmt: skip
    log = tmp_path / "pipeline.log"

    def done() -> int:
        try:
            return sum(committed_offsets(kafka_bootstrap, group).values())
        except KafkaError:  # the group (or its coordinator) does not exist yet
            return 0

    process = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: done() >= total // 5 or process.poll() is not None, 180, "the first commits")
        assert process.poll() is None, log.read_text()[-2000:]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        at_kill = done()
        assert at_kill < total, "the backlog was done before the kill: the test proves nothing"
        process = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: done() >= total or process.poll() is not None, 240, "the restarted pipeline to catch up")
        assert process.poll() is None, log.read_text()[-2000:]
        time.sleep(3)  # the last tick is flushed when the topic goes quiet
    finally:
        stop_process(process, timeout_s=30)
    assert done() == total
    messages = sorted(read_topic(kafka_bootstrap, ALERTS), key=lambda m: (m.partition, m.offset))
    seen = assert_only_escalations((Alert.from_json(m.value) for m in messages), "the restarted pipeline")
    assert seen == expected, (sorted(seen - expected), sorted(expected - seen))
