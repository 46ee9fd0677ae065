"""The nodes (pipeline.nodes) without the CLI: each wired from what it is handed, run, and stopped cleanly."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pandas as pd
import pytest
from pydantic import ValidationError

from pipeline.archive import read_archive
from pipeline.bus import ALERTS, DEAD_LETTER, REVOCATIONS, TOKEN_USAGE, TOKEN_USAGE_BY_IP, TOKEN_USAGE_BY_SUBJECT
from pipeline.bus.memory import MemoryBus
from pipeline.errors import NodeError
from pipeline.events import Alert, TokenUsage, format_ts, parse_ts
from pipeline.keys import KeyStore
from pipeline.nodes import (
    AlertsNode,
    AllInOne,
    KeyTrust,
    PipelineNode,
    PipelineSettings,
    RekeyNode,
    ServeOptions,
    TokenRules,
    ValidatorNode,
    ValidatorSettings,
    open_feed_keys,
)
from pipeline.response.policy import ResponsePolicy
from pipeline.revocations.store import new_revocation
from pipeline.scoring.model import load_model
from pipeline.validation import ValidatorConfig
from tests.support.alerts import FakeClock, Receiver, make_alert
from tests.support.paths import DEFAULT_MODEL
from tests.support.servers import serve_app

ISSUER = "https://issuer.nodes.test"
AUDIENCE = "https://api.nodes.test"
ADMIN = "nodes-admin-token-0123456789abcdef"
MODEL = DEFAULT_MODEL
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
#: Two hours before the wall clock: a ten-minute token issued then has long expired, except on a simulated clock.
SIM_START = float(int(time.time()) - 7200)


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def read_topic(bus: MemoryBus, topic: str) -> list[bytes]:
    consumer = bus.consumer([topic], f"test-{uuid.uuid4()}", from_beginning=True)
    try:
        return [m.value for m in consumer.poll(10_000, 0.2)]
    finally:
        consumer.close()


def jti_of(token: str) -> str:
    return str(json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))["jti"])


# ------------------------------------------------------------------------------------------ AllInOne


def test_all_in_one_on_a_simulated_clock_validates_revokes_and_archives_in_its_time(tmp_path: Path) -> None:
    """What `jwtwatch demo` relies on: the validator judges tokens, the responder dates revocations and the usage
    events are stamped by the clock it is handed; drain() waits for the loop; stop() closes it, twice over."""
    keys = KeyStore.init(tmp_path / "keys", alg="ES256", issuer=ISSUER)
    clock = FakeClock(SIM_START)
    seen: list[Alert] = []
    options = ServeOptions(
        config=ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=tmp_path / "keys" / "jwks.json"),
        data_dir=tmp_path / "data",
        model_dir=MODEL,
        admin_token=ADMIN,
        trusted_proxies="127.0.0.1/32",
        policy=ResponsePolicy(enabled=True),
    )
    node = AllInOne(options, clock=clock, on_alert=seen.append)
    token = keys.issue_token("alice", AUDIENCE, ttl=600, client_id="web", now=SIM_START)
    jti = jti_of(token)

    def use(url: str, ip: str, ua: str) -> int:
        clock.advance(1.0)
        headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": ip, "User-Agent": ua}
        return httpx.get(f"{url}/v1/validate", headers=headers).status_code

    node.start()
    try:
        with serve_app(node.app) as url:
            for _ in range(3):
                assert use(url, "198.51.100.7", CHROME) == 200  # expired by the wall clock, not by the node's
            assert wait_for(lambda: use(url, "203.0.113.50", "curl/8.5.0") == 401), "the stolen token was not revoked"
            assert use(url, "198.51.100.7", CHROME) == 401
        assert node.drain(timeout_s=20)
        assert node.lag() == 0
        verifier = open_feed_keys(None, None, tmp_path / "data").verifier()
        revocations = [verifier.verify(m) for m in read_topic(node.bus, REVOCATIONS) if m]
    finally:
        node.stop()
    node.stop()  # idempotent

    (revocation,) = [r for r in revocations if r.kind == "jti" and r.value == jti]
    assert revocation.source == "auto"
    assert SIM_START < parse_ts(revocation.created_at).timestamp() <= clock.now  # dated by the node's clock
    assert any(a.jti == jti and a.action == "revoked" for a in seen)  # on_alert saw it as published
    events = read_archive(tmp_path / "data", "events")  # flushed by stop()
    stamped = pd.to_datetime(events["ts"], utc=True)
    assert len(stamped) >= 6
    assert stamped.min() > pd.Timestamp(SIM_START, unit="s", tz="UTC")
    assert stamped.max() <= pd.Timestamp(clock.now, unit="s", tz="UTC")
    assert (tmp_path / "data" / "baselines.json").exists()  # saved by stop()


# -------------------------------------------------------------------------------------- PipelineNode


def usage(t: float, ip: str, ua: str) -> TokenUsage:
    iat = int(SIM_START) - 60
    return TokenUsage(
        event_id=str(uuid.uuid4()), ts=format_ts(t), ip=ip, outcome="accepted", jti="tok-stolen", sub="bob",
        iss=ISSUER, client_id="web", iat=iat, exp=iat + 600, user_agent=ua,
    )  # fmt: skip


def test_a_pipeline_node_turns_usage_into_an_alert_a_signed_revocation_and_an_archive(tmp_path: Path) -> None:
    bus = MemoryBus()
    for i in range(12):  # the owner's browser and, five seconds later each time, a thief's curl elsewhere
        for event in (usage(SIM_START + 10 * i, "81.2.3.4", CHROME), usage(SIM_START + 10 * i + 5, "45.9.8.7", "curl")):
            bus.publish(TOKEN_USAGE, event.bus_key, event.to_json())
    feed = open_feed_keys(None, None, tmp_path)
    revoked_at = SIM_START + 3600.0
    settings = PipelineSettings(
        issuer=ISSUER, data_dir=tmp_path, policy=ResponsePolicy(enabled=True), group="nodes-test"
    )
    node = PipelineNode(bus, load_model(MODEL), settings, signer=feed.signer, clock=FakeClock(revoked_at))
    for loop in node.loops:
        loop.start()
    try:
        published = wait_for(lambda: any(Alert.from_json(m).action == "revoked" for m in read_topic(bus, ALERTS)))
    finally:
        for loop in node.loops:
            loop.stop()
        node.close()
    assert published, "no alert revoked the stolen token"

    (record,) = read_topic(bus, REVOCATIONS)
    revocation = feed.verifier().verify(record)  # signed by the signer it was handed
    assert (revocation.kind, revocation.value, revocation.iss) == ("jti", "tok-stolen", ISSUER)
    assert revocation.created_at == format_ts(revoked_at)  # dated by the clock it was handed
    assert len(read_archive(tmp_path, "events")) == 24 and len(read_archive(tmp_path, "alerts")) >= 1
    assert (tmp_path / "baselines.json").exists()
    archived = bus.consumer([TOKEN_USAGE], "nodes-test-archive", from_beginning=True)  # the group: <group>-archive
    assert sum(archived.committed().values()) == 24


# ---------------------------------------------------------------------------------------- RekeyNode


def test_a_rekey_node_keys_the_usage_topic_by_subject_and_by_ip(tmp_path: Path) -> None:
    bus = MemoryBus()
    events = [usage(SIM_START + i, ip, CHROME) for i, ip in enumerate(("81.2.3.4", "45.9.8.7", "81.2.3.4"))]
    forged = dataclasses.replace(events[0], event_id=str(uuid.uuid4()), outcome="rejected", reason="bad_signature")
    for event in (*events, forged):
        bus.publish(TOKEN_USAGE, event.bus_key, event.to_json())
    node = RekeyNode(bus, group="nodes-test")
    assert node.group == "nodes-test-rekey"  # beside the pipeline's group, never in it
    for loop in node.loops:
        loop.start()
    try:
        done = wait_for(lambda: len(read_topic(bus, TOKEN_USAGE_BY_IP)) == 4)
    finally:
        for loop in node.loops:
            loop.stop()
        node.close()
    assert done, "the IP view never held every event"
    assert read_topic(bus, TOKEN_USAGE_BY_SUBJECT) == [e.to_json() for e in events]  # the forged one has no subject
    assert sorted(read_topic(bus, TOKEN_USAGE_BY_IP)) == sorted(e.to_json() for e in (*events, forged))
    rekeyed = bus.consumer([TOKEN_USAGE], "nodes-test-rekey", from_beginning=True)
    assert sum(rekeyed.committed().values()) == 4


# ---------------------------------------------------------------------------------------- AlertsNode


def test_an_alerts_node_takes_alerts_and_verified_revocations_from_its_bus(tmp_path: Path) -> None:
    bus = MemoryBus()
    feed = open_feed_keys(None, None, tmp_path / "feed")
    forger = open_feed_keys(None, None, tmp_path / "forger")
    revocation = new_revocation(kind="jti", iss=ISSUER, value="tok-123", reason="test", token_exp=time.time() + 60)
    bus.publish(ALERTS, "a-1", make_alert("a-1").to_json())
    bus.publish(REVOCATIONS, revocation.bus_key, feed.signer.sign(revocation))
    forged = new_revocation(kind="jti", iss=ISSUER, value="tok-456", reason="forged", token_exp=time.time() + 60)
    bus.publish(REVOCATIONS, forged.bus_key, forger.signer.sign(forged))

    node = AlertsNode(bus, data_dir=tmp_path / "alerts", admin_token=ADMIN, verifier=feed.verifier())
    node.start()
    try:
        assert wait_for(lambda: node.consumer.accepted + node.consumer.dead_letters == 3)
        assert [a["alert_id"] for a in node.service.list_alerts()] == ["a-1"]
    finally:
        node.stop()
    assert (node.consumer.accepted, node.consumer.dead_letters) == (2, 1)  # the forged revocation is parked
    (letter,) = read_topic(bus, DEAD_LETTER)
    assert json.loads(letter)["topic"] == REVOCATIONS


def test_an_alerts_node_delivers_a_new_alert_at_once_not_at_its_next_look(tmp_path: Path) -> None:
    """The consumer wakes the webhook worker when it accepts an alert. The worker here looks at the outbox only
    once an hour: without the wake-up the alert would wait that long."""
    bus = MemoryBus()
    feed = open_feed_keys(None, None, tmp_path / "feed")
    receiver = Receiver()
    with serve_app(receiver.app()) as base:
        receiver.base = base
        node = AlertsNode(
            bus, data_dir=tmp_path / "alerts", admin_token=ADMIN, verifier=feed.verifier(), worker_interval_s=3600
        )
        node.service.create_subscription(receiver.url("soc"), ["token.anomaly"], "low")
        node.start()
        try:
            assert wait_for(lambda: node.worker.rounds >= 1)  # its first look found nothing: it sleeps now
            bus.publish(ALERTS, "a-1", make_alert("a-1").to_json())
            assert wait_for(lambda: len(receiver.at("soc")) == 1), "the alert waited for the worker's next look"
        finally:
            node.stop()
    assert receiver.at("soc")[0].json["data"]["alert_id"] == "a-1"


# ------------------------------------------------------------------------------------- ValidatorNode


def rules(**overrides: object) -> TokenRules:
    given: dict[str, object] = {
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_file": None, "jwks_url": None, "algorithms": "ES256",
        "require_typ": None, "leeway_s": 30, "max_token_lifetime_s": 3600, "one_time_audiences": None,
        "one_time_scopes": None, "one_time_claims": None,
    }  # fmt: skip
    return TokenRules(**(given | overrides))  # type: ignore[arg-type]


def test_a_validator_node_with_a_key_store_alone_trusts_its_jwks(tmp_path: Path) -> None:
    KeyStore.init(tmp_path / "keys", alg="ES256", issuer=ISSUER)
    settings = ValidatorSettings(rules=rules(), trust=KeyTrust(keys_dir=tmp_path / "keys"), data_dir=tmp_path / "d")
    node = ValidatorNode(settings, bus_factory=MemoryBus)
    assert node.config.jwks_file == tmp_path / "keys" / "jwks.json"
    assert node.config.algorithms == ("ES256",) and node.admin_token is None


def test_a_validator_node_checks_everything_before_it_keeps_any_state(tmp_path: Path) -> None:
    """Only a valid configuration gets keys, a bus connection and state on disk."""
    data_dir = tmp_path / "data"
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": []}))
    with pytest.raises(ValidationError, match="leeway_s"):
        ValidatorNode(ValidatorSettings(rules=rules(jwks_file=jwks, leeway_s=-1), trust=KeyTrust(), data_dir=data_dir))
    one_time = rules(jwks_file=jwks, one_time_scopes="pay")
    with pytest.raises(NodeError, match="needs --kafka"):
        ValidatorNode(ValidatorSettings(rules=one_time, trust=KeyTrust(), data_dir=data_dir, workers=2))
    with pytest.raises(NodeError, match="--revocation-keys DIR is needed with --kafka"):
        ValidatorNode(ValidatorSettings(rules=one_time, trust=KeyTrust(), data_dir=data_dir, kafka="127.0.0.1:1"))
    assert not data_dir.exists()
