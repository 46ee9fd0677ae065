"""AlertsService end to end: real loopback receivers, real SQLite files, time driven by an injected clock."""

from __future__ import annotations

import base64
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import httpx
import orjson
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from pipeline.alerts import AlertsConsumer, AlertsService, AlertsWorker
from pipeline.alerts.delivery import default_client
from pipeline.bus import ALERTS, DEAD_LETTER, REVOCATIONS
from pipeline.bus.memory import MemoryBus
from pipeline.errors import TargetError
from tests.support.alerts import (
    ADMIN,
    SUMMARY,
    FakeClock,
    Received,
    Receiver,
    TrickleServer,
    make_alert,
    make_revocation,
    wait_until,
)
from tests.support.ports import free_port
from tests.support.servers import serve_app
from tests.support.tls import make_tls

# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture
def trickler() -> Iterator[TrickleServer]:
    server = TrickleServer()
    yield server
    server.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(tmp_path: Path, clock: FakeClock) -> Iterator[AlertsService]:
    svc = AlertsService(tmp_path / "data", admin_token=ADMIN, clock=clock, rng=random.Random(7), timeout_s=5.0)
    yield svc
    svc.close()


def verify_at(secret: str, request: Received) -> object:
    """Verify a signature whose timestamp may be far from the real now (the clock is injected)."""
    expected = Webhook(secret).sign(
        request.headers["webhook-id"],
        datetime.fromtimestamp(int(request.headers["webhook-timestamp"]), tz=UTC),
        request.body.decode(),
    )
    assert request.headers["webhook-signature"] == expected
    return orjson.loads(request.body)


def deliveries(service: AlertsService, **filters: object) -> list[dict]:
    return service.list_deliveries(**filters)  # type: ignore[arg-type]


def run_due(service: AlertsService, clock: FakeClock) -> int:
    """Jump the clock to the next pending attempt and run it; returns the attempts made (0: nothing pending)."""
    pending = deliveries(service, status="pending")
    if not pending:
        return 0
    moment = min(datetime.fromisoformat(d["next_attempt_at"]).timestamp() for d in pending)
    clock.to(moment + 0.001)
    return service.deliver_due()


# ------------------------------------------------------------------------------------------- tests


def test_delivery_is_signed_per_standard_webhooks(service: AlertsService, receiver: Receiver) -> None:
    hook_id, secret = service.create_subscription(receiver.url("signed"), ["token.anomaly"], "low")
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    alert = make_alert()
    assert service.accept_alert(alert) is True
    assert service.deliver_due() == 1
    (request,) = receiver.at("signed")
    # The real verifier, with the real clock: the injected clock starts at the real time.
    body = Webhook(secret).verify(request.body, request.headers)
    assert body["type"] == "token.anomaly"
    assert body["data"] == alert.to_dict()
    assert body["data"]["schema"] == "alert/1"
    assert body["data"]["summary"] == SUMMARY  # what a person reads first, in every payload
    assert datetime.fromisoformat(body["timestamp"])
    assert request.headers["webhook-id"] == "alert_a-1_1"
    assert request.headers["webhook-signature"].startswith("v1,")
    assert request.headers["content-type"] == "application/json"
    # A tampered body, a wrong secret or a changed id does not verify.
    tampered = request.body.replace(b'"high"', b'"low"')
    assert tampered != request.body
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, request.headers)
    _, other_secret = service.create_subscription(receiver.url("other"), ["token.anomaly"], "low")
    with pytest.raises(WebhookVerificationError):
        Webhook(other_secret).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(request.body, {**request.headers, "webhook-id": "alert_a-1_2"})
    (delivery,) = deliveries(service, webhook_id=hook_id)
    assert delivery["status"] == "delivered"
    assert delivery["attempts"][0]["status_code"] == 200
    assert delivery["attempts"][0]["duration_ms"] >= 0
    assert service.deliver_due() == 0  # nothing left


def test_min_severity_and_revisions(service: AlertsService, receiver: Receiver) -> None:
    service.create_subscription(receiver.url("all"), ["token.anomaly"], "low")
    service.create_subscription(receiver.url("high"), ["token.anomaly"], "high")
    assert service.accept_alert(make_alert("a-7", "medium", 0.6))
    assert service.deliver_due() == 1
    assert len(receiver.at("all")) == 1 and receiver.at("high") == []
    # The same version again: nothing new. A replayed lower version: nothing new either.
    assert service.accept_alert(make_alert("a-7", "medium", 0.6)) is False
    assert service.deliver_due() == 0
    # Escalated: delivered again as a new message, to both.
    assert service.accept_alert(make_alert("a-7", "critical", 0.93)) is True
    assert service.accept_alert(make_alert("a-7", "high", 0.7)) is False  # stale, below what is known
    assert service.accept_alert(make_alert("a-7", "critical", 0.93)) is False
    assert service.deliver_due() == 2
    ids = [r.headers["webhook-id"] for r in receiver.at("all")]
    assert ids == ["alert_a-7_1", "alert_a-7_2"]
    (to_high,) = receiver.at("high")
    assert to_high.headers["webhook-id"] == "alert_a-7_2"
    assert to_high.json["data"]["severity"] == "critical"
    # The log keeps the latest version.
    (logged,) = service.list_alerts()
    assert (logged["severity"], logged["score"], logged["revision"]) == ("critical", 0.93, 2)
    assert service.list_alerts(severity="critical")[0]["alert_id"] == "a-7"
    assert service.accept_alert(make_alert("a-8", "low", 0.5, entity="x", entity_type="ip", ip="10.0.0.1"))
    assert [a["alert_id"] for a in service.list_alerts(severity="high")] == ["a-7"]
    assert [a["alert_id"] for a in service.list_alerts(entity_type="ip", entity="x")] == ["a-8"]


def test_event_type_filtering(service: AlertsService, receiver: Receiver) -> None:
    _, anomaly_secret = service.create_subscription(receiver.url("anomaly"), ["token.anomaly"], "low")
    _, revoked_secret = service.create_subscription(receiver.url("revoked"), ["token.revoked"], "critical")
    _, storm_secret = service.create_subscription(receiver.url("storm"), ["revocation.storm"], "low")
    service.accept_alert(make_alert("a-1", "low", 0.5))
    assert service.accept_revocation(make_revocation()) is True
    assert service.accept_revocation(make_revocation()) is False
    storm_alert = make_alert("storm-a-2", "critical", 0.99, type="revocation.storm")
    assert service.accept_alert(storm_alert)
    assert service.deliver_due() == 3
    (anomaly,) = receiver.at("anomaly")
    assert verify_at(anomaly_secret, anomaly)["type"] == "token.anomaly"  # type: ignore[index]
    (revoked,) = receiver.at("revoked")
    body = verify_at(revoked_secret, revoked)
    assert body["type"] == "token.revoked"  # type: ignore[index]
    assert body["data"] == make_revocation().to_dict()  # type: ignore[index]
    assert revoked.headers["webhook-id"] == "revocation_rev-1"
    storms = receiver.at("storm")
    assert [verify_at(storm_secret, r)["type"] for r in storms] == ["revocation.storm"]  # type: ignore[index]
    assert storms[0].json["data"]["alert_id"] == "storm-a-2"
    with pytest.raises(ValueError):
        service.accept_alert(make_alert("a-9", type="something.else"))


def test_retries_with_backoff_then_delivered(service: AlertsService, receiver: Receiver, clock: FakeClock) -> None:
    _, secret = service.create_subscription(receiver.url("flaky"), ["token.anomaly"], "low")
    receiver.script("flaky", 500, 500, 200)
    service.accept_alert(make_alert())
    t0 = clock()
    assert service.deliver_due() == 1
    (d,) = deliveries(service)
    assert d["status"] == "pending" and d["last_status_code"] == 500
    first_retry = datetime.fromisoformat(d["next_attempt_at"]).timestamp() - t0
    assert 1.0 <= first_retry <= 5.0 + 0.01  # full jitter under the first ceiling (5 s)
    clock.to(t0 + first_retry - 0.5)
    assert service.deliver_due() == 0  # not yet due
    assert run_due(service, clock) == 1
    (d,) = deliveries(service)
    second_retry = datetime.fromisoformat(d["next_attempt_at"]).timestamp() - clock()
    assert 1.0 <= second_retry <= 10.0 + 0.01
    assert run_due(service, clock) == 1
    (d,) = deliveries(service)
    assert d["status"] == "delivered"
    assert [a["status_code"] for a in d["attempts"]] == [500, 500, 200]
    assert [a["outcome"] for a in d["attempts"]] == ["retry", "retry", "delivered"]
    requests = receiver.at("flaky")
    assert len(requests) == 3
    # Same message id on every attempt; each attempt signed with its own timestamp.
    assert {r.headers["webhook-id"] for r in requests} == {"alert_a-1_1"}
    assert len({r.headers["webhook-timestamp"] for r in requests}) == 3
    for r in requests:
        verify_at(secret, r)


def test_retry_after_seconds_and_http_date(service: AlertsService, receiver: Receiver, clock: FakeClock) -> None:
    service.create_subscription(receiver.url("busy"), ["token.anomaly"], "low")
    later = format_datetime(datetime.fromtimestamp(int(clock()) + 900, tz=UTC), usegmt=True)
    receiver.script("busy", (429, {"Retry-After": "120"}), (503, {"Retry-After": later}), 200)
    service.accept_alert(make_alert())
    t0 = clock()
    service.deliver_due()
    (d,) = deliveries(service)
    assert datetime.fromisoformat(d["next_attempt_at"]).timestamp() == pytest.approx(t0 + 120, abs=0.01)
    clock.to(t0 + 119)
    assert service.deliver_due() == 0
    clock.to(t0 + 120)
    assert service.deliver_due() == 1
    (d,) = deliveries(service)
    assert d["last_status_code"] == 503
    assert datetime.fromisoformat(d["next_attempt_at"]).timestamp() == pytest.approx(int(t0) + 900, abs=1.0)
    assert run_due(service, clock) == 1
    assert deliveries(service)[0]["status"] == "delivered"


def test_410_disables_the_endpoint(service: AlertsService, receiver: Receiver, clock: FakeClock) -> None:
    gone_id, _ = service.create_subscription(receiver.url("gone"), ["token.anomaly"], "low")
    service.create_subscription(receiver.url("fine"), ["token.anomaly"], "low")
    receiver.script("gone", 500, 410)
    service.accept_alert(make_alert("a-1"))
    service.deliver_due()
    service.accept_alert(make_alert("a-2"))  # queued for both while "gone" still looks alive
    assert run_due(service, clock) >= 1
    while run_due(service, clock):
        pass
    gone = deliveries(service, webhook_id=gone_id)
    assert {d["status"] for d in gone} == {"disabled"}
    # a-1 got a 500; a-2, due first, got the 410, which disabled a-1's pending retry as well.
    assert [r.headers["webhook-id"] for r in receiver.at("gone")] == ["alert_a-1_1", "alert_a-2_1"]
    (sub,) = [s for s in service.list_subscriptions() if s["id"] == gone_id]
    assert sub["status"] == "disabled" and "410" in sub["disabled_reason"]
    assert len(receiver.at("fine")) == 2
    # New alerts no longer go to it; a redelivery to a disabled endpoint is refused.
    service.accept_alert(make_alert("a-3"))
    assert all(d["message_id"] != "alert_a-3_1" for d in deliveries(service, webhook_id=gone_id))
    assert service.redeliver(gone[0]["id"]) == "inactive"


def test_gives_up_after_a_day(service: AlertsService, receiver: Receiver, clock: FakeClock) -> None:
    service.create_subscription(receiver.url("down"), ["token.anomaly"], "low")
    receiver.script("down", *([500] * 500))
    service.accept_alert(make_alert())
    t0 = clock()
    attempts = 0
    while run_due(service, clock):
        attempts += 1
        assert attempts < 300
    (d,) = deliveries(service)
    assert d["status"] == "failed"
    elapsed = clock() - t0
    assert 24 * 3600 - 1 <= elapsed <= 24 * 3600 + 1  # the last attempt is at the end of the window
    assert d["attempt_count"] == attempts == len(receiver.at("down"))
    assert 20 <= attempts <= 120
    gaps = [
        datetime.fromisoformat(b["at"]).timestamp() - datetime.fromisoformat(a["at"]).timestamp()
        for a, b in zip(d["attempts"], d["attempts"][1:], strict=False)
    ]
    assert max(gaps) <= 3600 + 0.01  # capped at an hour
    assert d["attempts"][-1]["outcome"] == "failed"


def test_connection_errors_and_timeouts_retry(tmp_path: Path, clock: FakeClock) -> None:
    dead_port = free_port()  # a port nothing listens on
    # A server that accepts and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    svc = AlertsService(tmp_path, admin_token=ADMIN, clock=clock, rng=random.Random(1), timeout_s=0.5)
    try:
        dead_id, _ = svc.create_subscription(f"http://127.0.0.1:{dead_port}/hook", ["token.anomaly"], "low")
        slow_id, _ = svc.create_subscription(f"http://127.0.0.1:{silent.getsockname()[1]}/", ["token.anomaly"], "low")
        svc.accept_alert(make_alert())
        assert svc.deliver_due() == 2
        (dead,) = svc.list_deliveries(webhook_id=dead_id)
        (slow,) = svc.list_deliveries(webhook_id=slow_id)
        assert dead["status"] == slow["status"] == "pending"
        assert "Connect" in dead["attempts"][0]["error"]
        assert "timed out" in slow["attempts"][0]["error"]
        assert dead["attempts"][0]["status_code"] is None
    finally:
        svc.close()
        silent.close()


def test_redirects_are_not_followed(service: AlertsService, receiver: Receiver) -> None:
    service.create_subscription(receiver.url("moved"), ["token.anomaly"], "low")
    receiver.script("moved", (307, {"Location": f"{receiver.base}/elsewhere"}))
    service.accept_alert(make_alert())
    service.deliver_due()
    assert [r.path for r in receiver.requests] == ["/hook/moved"]
    (d,) = deliveries(service)
    assert d["status"] == "pending" and d["last_status_code"] == 307


def test_crash_safety_exactly_once_after_restart(tmp_path: Path, receiver: Receiver, clock: FakeClock) -> None:
    data = tmp_path / "data"
    first = AlertsService(data, admin_token=ADMIN, clock=clock)
    _, secret = first.create_subscription(receiver.url("durable"), ["token.anomaly"], "low")
    assert first.accept_alert(make_alert())
    first.close()  # "crash": nothing was delivered
    assert receiver.at("durable") == []
    assert (data / "alerts.sqlite").exists()
    assert (data / "alerts.sqlite").stat().st_mode & 0o077 == 0  # it holds secrets
    second = AlertsService(data, admin_token=ADMIN, clock=clock)
    try:
        assert second.accept_alert(make_alert()) is False  # a replay from the bus changes nothing
        assert second.deliver_due() == 1
        assert second.deliver_due() == 0
        clock.advance(7200)
        assert second.deliver_due() == 0
        (request,) = receiver.at("durable")
        Webhook(secret).verify(request.body, request.headers)
    finally:
        second.close()


def test_claimed_delivery_is_retried_after_a_crash_mid_attempt(
    tmp_path: Path, receiver: Receiver, clock: FakeClock
) -> None:
    data = tmp_path / "data"
    first = AlertsService(data, admin_token=ADMIN, clock=clock)
    first.create_subscription(receiver.url("lease"), ["token.anomaly"], "low")
    first.accept_alert(make_alert())
    assert len(first._claim(10)) == 1  # claimed, then the process dies before the attempt is recorded
    first.close()
    second = AlertsService(data, admin_token=ADMIN, clock=clock)
    try:
        assert second.deliver_due() == 0  # the lease holds it for a while
        clock.advance(301)
        assert second.deliver_due() == 1
        assert len(receiver.at("lease")) == 1
    finally:
        second.close()


def test_redeliver(service: AlertsService, receiver: Receiver) -> None:
    service.create_subscription(receiver.url("again"), ["token.anomaly"], "low")
    service.accept_alert(make_alert())
    service.deliver_due()
    (d,) = deliveries(service)
    assert service.redeliver(d["id"]) == "queued"
    assert service.redeliver(10_000) == "not_found"
    assert deliveries(service)[0]["status"] == "pending"
    assert service.deliver_due() == 1
    first, second = receiver.at("again")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    (d,) = deliveries(service)
    assert d["status"] == "delivered" and d["attempt_count"] == 2 and len(d["attempts"]) == 2


def test_dns_rebinding_checked_before_each_delivery(tmp_path: Path, receiver: Receiver, clock: FakeClock) -> None:
    port = int(receiver.base.rsplit(":", 1)[1])
    table = {"hooks.internal.test": ["127.0.0.1"]}

    def resolver(host: str, p: int) -> list[str]:
        assert p == port
        return table[host]

    svc = AlertsService(tmp_path, admin_token=ADMIN, clock=clock, resolver=resolver, rng=random.Random(2))
    try:
        _, secret = svc.create_subscription(f"http://hooks.internal.test:{port}/hook/named", ["token.anomaly"])
        table["hooks.internal.test"] = ["169.254.169.254"]  # re-bound after registration
        svc.accept_alert(make_alert())
        assert svc.deliver_due() == 1
        (d,) = svc.list_deliveries()
        assert d["status"] == "pending" and "target refused" in d["last_error"] and "metadata" in d["last_error"]
        assert receiver.requests == []  # nothing was sent anywhere
        table["hooks.internal.test"] = ["127.0.0.1"]
        assert run_due(svc, clock) == 1
        (request,) = receiver.at("named")
        # Connected to the checked address, with the name in the Host header.
        assert request.headers["host"] == f"hooks.internal.test:{port}"
        verify_at(secret, request)
        # Registration resolves too.
        table["hooks.internal.test"] = ["fe80::1"]
        with pytest.raises(TargetError, match="link-local"):
            svc.create_subscription(f"http://hooks.internal.test:{port}/hook/x", ["token.anomaly"])
    finally:
        svc.close()


def test_https_pinned_address_verifies_the_name(tmp_path: Path, clock: FakeClock) -> None:
    """https goes to the checked address, but TLS (SNI and certificate) is checked against the name."""
    tls = make_tls(tmp_path)
    receiver = Receiver()
    context = ssl.create_default_context(cafile=str(tls.ca))
    with (
        serve_app(receiver.app(), ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key)) as base,
        default_client(5.0, ssl_context=context) as http,
    ):
        port = int(base.rsplit(":", 1)[1])
        # The certificate names "localhost" and 127.0.0.1 — not "other.test", which also resolves to 127.0.0.1.
        names = {"localhost": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
        svc = AlertsService(
            tmp_path / "d", admin_token=ADMIN, clock=clock, http=http, resolver=lambda h, p: names[h], concurrency=1
        )
        try:
            good_id, secret = svc.create_subscription(f"https://localhost:{port}/hook/tls", ["token.anomaly"])
            bad_id, _ = svc.create_subscription(f"https://other.test:{port}/hook/tls", ["token.anomaly"])
            svc.accept_alert(make_alert())
            assert svc.deliver_due() == 2
            (good,) = svc.list_deliveries(webhook_id=good_id)
            (bad,) = svc.list_deliveries(webhook_id=bad_id)
            assert good["status"] == "delivered"
            assert bad["status"] == "pending" and "certificate" in bad["last_error"].lower()
            (request,) = receiver.requests
            assert request.headers["host"] == f"localhost:{port}"
            Webhook(secret).verify(request.body, request.headers)
        finally:
            svc.close()


def test_subscriptions_keep_their_secret_to_themselves(
    service: AlertsService, receiver: Receiver, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hook_id, secret = service.create_subscription(receiver.url("quiet"), ["token.anomaly", "token.revoked"], "medium")
    receiver.script("quiet", 500, 410)
    service.accept_alert(make_alert())
    service.deliver_due()
    run_due(service, clock)
    listed = service.list_subscriptions()
    assert listed[0]["id"] == hook_id
    assert listed[0]["event_types"] == ["token.anomaly", "token.revoked"]
    assert "secret" not in listed[0]
    assert secret not in repr(listed) and secret not in repr(deliveries(service))
    assert secret not in caplog.text and secret[6:] not in caplog.text
    assert service.delete_subscription(hook_id) is True
    assert service.delete_subscription(hook_id) is False
    assert service.list_subscriptions() == []
    # The secret is wiped from the database on deletion.
    assert secret.encode() not in (service.path).read_bytes()


def test_create_subscription_validation(service: AlertsService) -> None:
    with pytest.raises(ValueError):
        service.create_subscription("http://127.0.0.1:9/", [], "low")
    with pytest.raises(ValueError):
        service.create_subscription("http://127.0.0.1:9/", ["token.unknown"], "low")
    with pytest.raises(ValueError):
        service.create_subscription("http://127.0.0.1:9/", ["token.anomaly"], "urgent")
    with pytest.raises(TargetError):
        service.create_subscription("http://8.8.8.8/", ["token.anomaly"], "low")


def test_consumer_end_to_end_on_memory_bus(service: AlertsService, receiver: Receiver) -> None:
    _, secret = service.create_subscription(receiver.url("bus"), ["token.anomaly", "token.revoked"], "low")
    bus = MemoryBus()
    alert = make_alert("bus-1", "high", 0.81)
    bus.publish(ALERTS, alert.alert_id, alert.to_json())
    bus.publish(ALERTS, "junk", b"\xff\xfe not json")
    bus.publish(ALERTS, "wrong", orjson.dumps({"schema": "alert/1", "alert_id": 5}))
    bus.publish(REVOCATIONS, "jti:x:tok-123", make_revocation("rev-bus").to_json())
    bus.publish(ALERTS, alert.alert_id, alert.to_json())  # at-least-once: the same alert twice
    consumer = AlertsConsumer(bus, service, poll_timeout_s=0.05)
    try:
        handled = 0
        while (n := consumer.step()) > 0:
            handled += n
        assert handled == 5
        assert (consumer.accepted, consumer.duplicates, consumer.dead_letters) == (2, 1, 2)
        assert service.deliver_due() == 2
        kinds = sorted(verify_at(secret, r)["type"] for r in receiver.at("bus"))  # type: ignore[index]
        assert kinds == ["token.anomaly", "token.revoked"]
        # The garbage went to the dead-letter topic, with the error and the original bytes.
        reader = bus.consumer([DEAD_LETTER], "test-reader")
        letters = [orjson.loads(m.value) for m in reader.poll(10, 0.1)]
        assert len(letters) == 2
        originals = {base64.b64decode(letter["original"]) for letter in letters}
        assert b"\xff\xfe not json" in originals
        assert all(letter["error"] and letter["topic"] == ALERTS for letter in letters)
        # The offsets were committed: the group's next member starts after them.
        consumer.close()
        again = AlertsConsumer(bus, service, poll_timeout_s=0.05)
        assert again.step() == 0
        again.close()
    finally:
        consumer.close()


def test_consumer_rewinds_when_accepting_fails(tmp_path: Path) -> None:
    bus = MemoryBus()
    svc = AlertsService(tmp_path, admin_token=ADMIN)
    bus.publish(ALERTS, "a", make_alert("rw-1").to_json())
    consumer = AlertsConsumer(bus, svc, poll_timeout_s=0.05)
    svc.close()  # the store is gone: accepting raises, nothing may be committed
    with pytest.raises(RuntimeError):
        consumer.step()
    svc2 = AlertsService(tmp_path, admin_token=ADMIN)
    consumer.service = svc2
    try:
        assert consumer.step() == 1
        assert [a["alert_id"] for a in svc2.list_alerts()] == ["rw-1"]
    finally:
        consumer.close()
        svc2.close()


def test_consumer_parks_a_record_that_fails_for_any_reason_of_its_own(
    service: AlertsService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only ValueError: here orjson's TypeError when the alert is stored (the parse-time nesting bound, which
    now stops this one earlier, is lifted to reach that path), and RecursionError-deep JSON."""
    monkeypatch.setattr("pipeline.events._checks.MAX_NESTING", 10_000)
    good = make_alert("deep").to_json()
    deep = good.replace(b'"features":{"distinct_ips":4.0}', b'"features":' + b'{"d":' * 300 + b"1" + b"}" * 300)
    bus = MemoryBus()
    bus.publish(ALERTS, "deep", deep)
    bus.publish(REVOCATIONS, "arrays", b"[" * 1000 + b"]" * 1000)
    bus.publish(ALERTS, "fine", make_alert("fine").to_json())
    bus.publish(REVOCATIONS, "rev", make_revocation("rev-ok").to_json())
    consumer = AlertsConsumer(bus, service, poll_timeout_s=0.05)
    try:
        while consumer.step():
            pass
        assert (consumer.accepted, consumer.dead_letters) == (2, 2)
        assert [a["alert_id"] for a in service.list_alerts()] == ["fine"]
        letters = {m.key: orjson.loads(m.value) for m in bus.consumer([DEAD_LETTER], "r").poll(10, 0.1)}
        assert letters[b"deep"]["error"] == "TypeError: Recursion limit reached"
        assert "nested too deep" in letters[b"arrays"]["error"]
        assert all(letter["consumer"] == "jwtwatch-alerts" for letter in letters.values())
    finally:
        consumer.close()


def test_worker_delivers_in_the_background(tmp_path: Path, receiver: Receiver) -> None:
    svc = AlertsService(tmp_path, admin_token=ADMIN)
    svc.create_subscription(receiver.url("worker"), ["token.anomaly"], "low")
    worker = AlertsWorker(svc, interval_s=0.05).start()
    try:
        svc.accept_alert(make_alert())
        worker.wake()
        deadline = time.monotonic() + 10
        while not receiver.at("worker") and time.monotonic() < deadline:
            threading.Event().wait(0.02)
        assert len(receiver.at("worker")) == 1
    finally:
        worker.stop()
        svc.close()
    assert worker.attempts == 1


def test_metrics(service: AlertsService, receiver: Receiver) -> None:
    from prometheus_client import generate_latest

    service.create_subscription(receiver.url("m"), ["token.anomaly"], "low")
    service.accept_alert(make_alert())
    text = generate_latest(service.registry).decode()
    assert "jwtwatch_webhook_deliveries_pending 1.0" in text
    service.deliver_due()
    text = generate_latest(service.registry).decode()
    assert 'jwtwatch_webhook_deliveries_total{outcome="delivered"} 1.0' in text
    assert 'jwtwatch_webhook_attempts_total{result="2xx"} 1.0' in text
    assert "jwtwatch_webhook_attempt_seconds_count 1.0" in text
    assert "jwtwatch_webhook_deliveries_pending 0.0" in text


# ------------------------------------------------------------------- slow receivers: deadlines, per-target slots


def test_an_attempt_ends_at_its_total_deadline_while_the_receiver_still_trickles(
    tmp_path: Path, trickler: TrickleServer, clock: FakeClock
) -> None:
    svc = AlertsService(tmp_path, admin_token=ADMIN, clock=clock, rng=random.Random(3), timeout_s=1.5)
    try:
        hook_id, _ = svc.create_subscription(trickler.url, ["token.anomaly"], "low")
        svc.accept_alert(make_alert())
        began = time.monotonic()
        assert svc.deliver_due() == 1
        took = time.monotonic() - began
        assert took < 5.0  # the headers would take 4 minutes at a byte a second
        (d,) = svc.list_deliveries(webhook_id=hook_id)
        (attempt,) = d["attempts"]
        assert attempt["status_code"] is None and attempt["outcome"] == "retry"
        assert "deadline" in attempt["error"] and "timed out" in attempt["error"]
        assert 1400 <= attempt["duration_ms"] < 5000
        assert d["status"] == "pending"  # retried per the policy
        assert datetime.fromisoformat(d["next_attempt_at"]).timestamp() >= clock() + 1.0
        assert wait_until(lambda: trickler.cut_off == 1, 5)  # it was still sending when the attempt gave up
        assert trickler.bytes_sent < len(TrickleServer.RESPONSE)
    finally:
        svc.close()


def test_a_slow_webhook_holds_only_its_own_slots(tmp_path: Path, trickler: TrickleServer, receiver: Receiver) -> None:
    svc = AlertsService(
        tmp_path, admin_token=ADMIN, rng=random.Random(4), timeout_s=5.0, concurrency=4, per_target_concurrency=2
    )
    worker = AlertsWorker(svc, interval_s=0.05)
    try:
        svc.create_subscription(trickler.url, ["token.anomaly"], "low")
        svc.create_subscription(receiver.url("fast"), ["token.revoked"], "low")
        for n in range(6):  # six deliveries due at once to the slow webhook
            svc.accept_alert(make_alert(f"slow-{n}"))
        worker.start()
        assert wait_until(lambda: trickler.active == 2, 5)
        began = time.monotonic()
        for n in range(5):
            svc.accept_revocation(make_revocation(f"rev-{n}"))
            worker.wake()
        assert wait_until(lambda: len(receiver.at("fast")) == 5, 3), receiver.requests
        assert time.monotonic() - began < 3.0
        assert trickler.active == 2 and trickler.most_active == 2  # never more than its two slots
        assert trickler.accepted == 2  # the other four wait for the slow webhook's slots, not for a round
    finally:
        worker.stop()
        svc.close()


def test_claims_respect_the_per_webhook_cap(tmp_path: Path, clock: FakeClock) -> None:
    svc = AlertsService(tmp_path, admin_token=ADMIN, clock=clock, per_target_concurrency=2)
    try:
        first, _ = svc.create_subscription("http://127.0.0.1:9/a", ["token.anomaly"], "low")
        second, _ = svc.create_subscription("http://127.0.0.1:9/b", ["token.anomaly"], "low")
        for n in range(5):
            svc.accept_alert(make_alert(f"cap-{n}"))
        claimed = svc.claim_due(100, per_target=2)
        assert sorted(job.webhook_id for job in claimed) == sorted([first, first, second, second])
        assert svc.claim_due(100, per_target=2) == []  # both at their cap while the claims are in flight
        assert len(svc.claim_due(100, per_target=3)) == 2  # one more each
        assert len(svc.claim_due(100)) == 4  # uncapped: the rest
        clock.advance(301)  # leases expired (a dead worker): claimable again, and not counted as in flight
        assert len(svc.claim_due(100, per_target=2)) == 4
    finally:
        svc.close()


def test_the_service_takes_only_clients_that_enforce_the_deadline(tmp_path: Path) -> None:
    with httpx.Client() as plain, pytest.raises(TypeError, match="default_client"):
        AlertsService(tmp_path, admin_token=ADMIN, http=plain)


# ------------------------------------------------------------------------------------ secrets at rest


def secret_traces(data: Path, secret: str) -> dict[str, bool]:
    """Whether the secret (whole, or its base64 key without the prefix) is in each database file's raw bytes."""
    found = {}
    for suffix in ("", "-wal", "-shm"):
        path = data / f"alerts.sqlite{suffix}"
        raw = path.read_bytes() if path.exists() else b""
        found[path.name] = secret.encode() in raw or secret.removeprefix("whsec_").encode() in raw
    return found


def test_a_deleted_webhook_secret_is_in_no_database_file(tmp_path: Path, clock: FakeClock) -> None:
    svc = AlertsService(tmp_path, admin_token=ADMIN, clock=clock)
    try:
        keep_id, keep = svc.create_subscription("http://127.0.0.1:9/keep", ["token.anomaly"], "low")
        gone_id, gone = svc.create_subscription("http://127.0.0.1:9/gone", ["token.anomaly"], "low")
        svc.accept_alert(make_alert())  # deliveries for both: the row is referenced, and stays
        assert any(secret_traces(tmp_path, gone).values())  # it is on disk while the webhook lives
        assert svc.delete_subscription(gone_id)
        assert secret_traces(tmp_path, gone) == dict.fromkeys(
            ["alerts.sqlite", "alerts.sqlite-wal", "alerts.sqlite-shm"], False
        )
        assert any(secret_traces(tmp_path, keep).values())  # the other one is untouched
        assert [s["id"] for s in svc.list_subscriptions()] == [keep_id]
        assert {d["status"] for d in svc.list_deliveries(webhook_id=gone_id)} == {"disabled"}
    finally:
        svc.close()
    assert not any(secret_traces(tmp_path, gone).values())


def test_database_files_are_owner_only_even_if_they_were_not(tmp_path: Path) -> None:
    svc = AlertsService(tmp_path, admin_token=ADMIN)
    svc.create_subscription("http://127.0.0.1:9/x", ["token.anomaly"], "low")
    files = [tmp_path / f"alerts.sqlite{suffix}" for suffix in ("", "-wal", "-shm")]
    assert all(f.exists() and f.stat().st_mode & 0o777 == 0o600 for f in files)
    svc.close()
    for f in files:
        if f.exists():
            f.chmod(0o644)  # as an older version, or a copy made under umask 022, left them
    AlertsService(tmp_path, admin_token=ADMIN).close()
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files if f.exists())
