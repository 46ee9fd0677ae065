"""One regression test per finding of the outside security review of commit 1c06c30 (issue 14).

In the manner of PyJWT's ``test_advisory.py``: each test is named after its finding, reproduces the attack as
the reviewer ran it (real signed JWTs, real servers on loopback, real files) and fails on 1c06c30. The deeper
tests of each mechanism live beside the code's other tests; ``docs/security.md`` lists both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------------------------
# HIGH 1: a forged token with invalid Unicode in a claim erased other requests' usage events
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 2: POST /v1/revocations parsed any body before checking the admin token
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 3: a slow JWKS URL stalled every validation
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 4: a signed JWKS could be rolled back to an older, still-unexpired set
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 5: the key-store audit gate passed with an attacker's key inserted
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 6: one slow webhook receiver delayed alerts to everyone
# ---------------------------------------------------------------------------------------------------------------


def test_medium_6_slow_webhook_receiver_never_delays_other_subscribers(tmp_path: Path) -> None:
    """A receiver trickling its headers a byte a second held a healthy subscriber's token.revoked for 61 s."""
    import time

    from pipeline.alerts import AlertsService, AlertsWorker
    from tests.servers import serve_app
    from tests.test_alerts_service import ADMIN, Receiver, TrickleServer, make_alert, make_revocation, wait_until

    healthy, slow = Receiver(), TrickleServer(interval_s=1.0)
    service = AlertsService(tmp_path, admin_token=ADMIN, timeout_s=4.0)
    worker = AlertsWorker(service, interval_s=0.05)
    try:
        with serve_app(healthy.app()) as base:
            healthy.base = base
            slow_id, _ = service.create_subscription(slow.url, ["token.anomaly"])
            service.create_subscription(healthy.url("ok"), ["token.revoked"])
            worker.start()
            service.accept_alert(make_alert("to-the-slow-one"))
            worker.wake()
            assert wait_until(lambda: slow.bytes_sent >= 1, 5)  # its attempt is under way, trickling
            accepted = time.monotonic()
            service.accept_revocation(make_revocation("rev-urgent"))
            worker.wake()
            assert wait_until(lambda: healthy.at("ok"), 3.0), "the healthy subscriber waited for the slow one"
            assert time.monotonic() - accepted < 3.0
            assert slow.active == 1 and slow.cut_off == 0  # still trickling meanwhile
            # The slow attempt is cut at its total deadline and recorded as a failed attempt, to be retried.
            assert wait_until(lambda: service.list_deliveries(webhook_id=slow_id)[0]["attempts"], 8)
            (delivery,) = service.list_deliveries(webhook_id=slow_id)
            first = delivery["attempts"][0]
            assert first["outcome"] == "retry" and first["status_code"] is None and "deadline" in first["error"]
            assert 3900 <= first["duration_ms"] < 6000
            assert delivery["status"] == "pending" or len(delivery["attempts"]) > 1
    finally:
        slow.close()  # ends a trickle the old code would still be waiting on
        worker.stop()
        service.close()


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 7: X-Auth-* values were silently altered, so identities collided
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 8: a poison record wedged the alerts consumer for good
# ---------------------------------------------------------------------------------------------------------------


def test_medium_8_poison_record_never_wedges_the_alerts_or_archive_consumer(tmp_path: Path) -> None:
    """An alert/1 with features nested 300 deep made orjson raise TypeError in accept; the consumer caught only
    ValueError, rewound and failed for ever (0 accepted, 0 dead-lettered), revocations included. The archive too."""
    import base64

    import orjson

    from pipeline.alerts import AlertsConsumer, AlertsService
    from pipeline.archive import ArchiveConsumer, ArchiveWriter, read_archive
    from pipeline.bus import ALERTS, DEAD_LETTER, REVOCATIONS
    from pipeline.bus.memory import MemoryBus
    from tests.test_alerts_service import ADMIN, make_alert, make_revocation

    good = make_alert("poison").to_json()
    assert b'"features":{"distinct_ips":4.0}' in good
    poison = good.replace(b'"features":{"distinct_ips":4.0}', b'"features":' + b'{"d":' * 300 + b"1" + b"}" * 300)
    bus = MemoryBus()
    bus.publish(ALERTS, "a-1", make_alert("a-1").to_json())
    bus.publish(ALERTS, "poison", poison)  # orjson reads 300 levels, but writes no more than 254
    bus.publish(ALERTS, "arrays", b"[" * 1000 + b"]" * 1000)  # from_json raised RecursionError
    bus.publish(ALERTS, "a-2", make_alert("a-2").to_json())
    bus.publish(REVOCATIONS, "rev", make_revocation("rev-after-the-poison").to_json())

    with AlertsService(tmp_path / "alerts", admin_token=ADMIN) as service:
        consumer = AlertsConsumer(bus, service, poll_timeout_s=0.05)
        handled = 0
        while (n := consumer.step()) > 0:  # raised (and rewound) at every step on 1c06c30
            handled += n
        assert handled == 5
        assert (consumer.accepted, consumer.dead_letters) == (3, 2)  # two alerts and the revocation
        assert {a["alert_id"] for a in service.list_alerts()} == {"a-1", "a-2"}
        consumer.close()
        again = AlertsConsumer(bus, service, poll_timeout_s=0.05)  # the offsets were committed past the poison
        assert again.step() == 0
        again.close()

    archive = ArchiveConsumer(bus, ArchiveWriter(tmp_path / "data"), flush_interval_s=0.0)
    while archive.step(0.05) > 0:
        pass
    archive.close()
    assert set(read_archive(tmp_path / "data", "alerts")["alert_id"]) == {"a-1", "a-2"}
    assert archive.dead_letters == 2

    letters = [orjson.loads(m.value) for m in bus.consumer([DEAD_LETTER], "check").poll(100, 0.1)]
    parked = sorted((letter["consumer"], base64.b64decode(letter["key"])) for letter in letters)
    assert parked == [
        (consumer, key) for consumer in ("jwtwatch-alerts", "jwtwatch-archive") for key in (b"arrays", b"poison")
    ]


# ---------------------------------------------------------------------------------------------------------------
# LOW 9: unauthenticated /metrics told an attacker why their token failed
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 10: --fail-closed was not enforced by the middleware and /v1/introspect
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 11: a subject revocation ignored the clock leeway
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 12: rotating the feed key lost live revocations for validators that started later
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 13: hardening (file modes, admin-token file mode, WAL secrets, PKCS#11 module path, header timeout,
# duplicate Authorization headers)
# ---------------------------------------------------------------------------------------------------------------


def test_low_13_deleted_webhook_secret_is_unrecoverable_from_the_database_files(tmp_path: Path) -> None:
    """A deleted webhook's secret stayed in alerts.sqlite-wal (and the files' mode must be 0600)."""
    from pipeline.alerts import AlertsService

    with AlertsService(tmp_path, admin_token="admin-token-0123456789abcdef") as service:
        webhook_id, secret = service.create_subscription("http://127.0.0.1:9/hook", ["token.anomaly"])
        assert service.delete_subscription(webhook_id)
        for suffix in ("", "-wal", "-shm"):
            path = tmp_path / f"alerts.sqlite{suffix}"
            assert path.stat().st_mode & 0o777 == 0o600, path
            raw = path.read_bytes()
            assert secret.encode() not in raw and secret.removeprefix("whsec_").encode() not in raw, path


def test_low_13_parquet_archive_is_not_world_readable(tmp_path: Path) -> None:
    """The archive (subjects, token ids, addresses, user agents) was created with the umask's modes (0755/0644)."""
    import os

    from pipeline.archive import ArchiveWriter
    from pipeline.simulate import SimulationParams, iter_records, simulate

    records = list(iter_records(simulate(SimulationParams(minutes=2, seed=8, browsers=4, mobile=2))))[:10]
    old = os.umask(0o022)
    try:
        writer = ArchiveWriter(tmp_path)
        writer.add("events", records)
        assert writer.flush() == len(records)
    finally:
        os.umask(old)
    root = tmp_path / "archive"
    for path in [root, *root.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path


# ---------------------------------------------------------------------------------------------------------------
# Also: SSRF classifier (IPv4-compatible IPv6, 64:ff9b:1::/48)
# ---------------------------------------------------------------------------------------------------------------


def test_also_ssrf_ipv4_compatible_and_local_use_nat64_targets_are_refused(tmp_path: Path) -> None:
    """``https://[::a9fe:a9fe]/`` (::169.254.169.254) and ``64:ff9b:1::/48`` were classed public and accepted."""
    from pipeline.alerts import AlertsService, TargetError

    with AlertsService(tmp_path, admin_token="admin-token-0123456789abcdef") as service:
        for url in (
            "https://[::a9fe:a9fe]/latest/meta-data/",
            "https://[::169.254.169.254]/",
            "https://[64:ff9b:1::a9fe:a9fe]/latest/meta-data/",
            "https://[64:ff9b:1:a9fe:a9:fe00::]/",  # the /48 layout of RFC 6052: 169.254.169.254 again
        ):
            with pytest.raises(TargetError):
                service.create_subscription(url, ["token.anomaly"])
        assert service.list_subscriptions() == []
