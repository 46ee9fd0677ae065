"""One-time tokens: accepted once; a second use — at the same validator or at another one on the same bus — is
rejected with reason ``replayed`` and flagged to the pipeline in its usage event. Ordinary tokens are unaffected."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.bus import DEAD_LETTER, TOKEN_USAGE, Bus
from pipeline.bus.memory import MemoryBus
from pipeline.bus.topics import REPLAY, default_topics
from pipeline.events import TokenUsage
from pipeline.serving.web import metrics_app
from pipeline.validation import TokenValidator, ValidatorConfig
from pipeline.validation.app import create_validator_app
from pipeline.validation.one_time import ReplayCache, ReplayFollower, use_message
from pipeline.validation.service import ValidatorService
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer, standard_claims
from tests.support.paths import DEFAULT_MODEL
from tests.support.servers import serve_app, wait_ready

PAYMENTS = "https://payments.test"  # tokens for this audience are one-time


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer.create()


def config(issuer: Issuer, **one_time: object) -> ValidatorConfig:
    rules = one_time or {"one_time_audiences": PAYMENTS}
    return ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks(), **rules)  # type: ignore[arg-type]


def one_time_token(issuer: Issuer, **claims: object) -> str:
    return issuer.token("ES256", aud=[AUDIENCE, PAYMENTS], **claims)


def test_replay_topic_is_a_default_topic() -> None:
    assert REPLAY == "jwtwatch.replay" and REPLAY in {t.name for t in default_topics()}


# ------------------------------------------------------------------------------------ in process


def test_one_time_token_is_accepted_once(issuer: Issuer) -> None:
    validator = TokenValidator(config(issuer))
    token = one_time_token(issuer)
    assert validator.validate(token).ok
    second = validator.validate(token)  # from the verified-token cache: still checked
    assert not second.ok and second.reason == "replayed"
    assert second.unverified_claims is not None and second.unverified_claims["jti"]
    assert validator.validate(token).reason == "replayed"


def test_ordinary_tokens_are_unaffected(issuer: Issuer) -> None:
    validator = TokenValidator(config(issuer))
    token = issuer.token("ES256")
    assert all(validator.validate(token).ok for _ in range(5))
    assert len(validator.replay) == 0  # type: ignore[arg-type]
    plain = TokenValidator(ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()))
    assert plain.replay is None
    once = one_time_token(issuer)
    assert plain.validate(once).ok and plain.validate(once).ok  # without one-time rules, no token is one-time


@pytest.mark.parametrize(
    ("rules", "claims", "one_time"),
    [
        ({"one_time_scopes": "payment:confirm"}, {"scope": "read payment:confirm"}, True),
        ({"one_time_scopes": "payment:confirm"}, {"scope": "read"}, False),
        ({"one_time_claims": "once"}, {"once": True}, True),
        ({"one_time_claims": "once"}, {"once": "true"}, False),  # a string is not true
        ({"one_time_claims": "use=single"}, {"use": "single"}, True),
        ({"one_time_claims": "use=single"}, {"use": ["bulk", "single"]}, True),
        ({"one_time_claims": "use=single"}, {"use": "many"}, False),
        ({"one_time_audiences": f"{PAYMENTS},https://other.test"}, {"aud": [AUDIENCE, "https://other.test"]}, True),
    ],
)
def test_what_makes_a_token_one_time(issuer: Issuer, rules: dict, claims: dict, one_time: bool) -> None:
    validator = TokenValidator(config(issuer, **rules))
    token = issuer.token("ES256", claims=standard_claims(**claims))
    assert validator.validate(token).ok
    assert validator.validate(token).ok is not one_time


def test_registered_claims_cannot_mark_one_time(issuer: Issuer) -> None:
    with pytest.raises(ValueError, match="registered"):
        config(issuer, one_time_claims="jti")


def test_a_refused_attempt_does_not_use_the_token_up(issuer: Issuer) -> None:
    validator = TokenValidator(config(issuer))
    now = time.time()
    token = one_time_token(issuer, now=now + 120)  # nbf/iat two minutes ahead
    assert validator.validate(token, now=now).reason == "not_yet_valid"
    assert validator.validate(token, now=now + 121).ok
    assert validator.validate(token, now=now + 122).reason == "replayed"


def test_concurrent_uses_in_one_instance_accept_exactly_one(issuer: Issuer) -> None:
    validator = TokenValidator(config(issuer))
    token = one_time_token(issuer)
    barrier = threading.Barrier(16)
    results: list[bool] = []

    def use() -> None:
        barrier.wait()
        results.append(validator.validate(token).ok)

    threads = [threading.Thread(target=use) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 15 + [True]


def test_entries_expire_with_the_token() -> None:
    cache = ReplayCache()
    assert cache.claim(ISSUER, "a", expires_at=1000.0, now=900.0)
    assert not cache.claim(ISSUER, "a", expires_at=1000.0, now=999.0)
    assert not cache.seen(ISSUER, "a", now=1000.0) and len(cache) == 0
    # iss and jti cannot be shifted into each other
    assert cache.claim("https://x", "y:z", 2000.0, 0.0) and cache.claim("https://x:y", "z", 2000.0, 0.0)


# --------------------------------------------------------------------- two validators, one bus


def catch_up(service: ValidatorService) -> None:
    feed = service.replay_feed
    assert feed is not None
    deadline = time.monotonic() + 60
    while True:
        feed.step()
        if feed.caught_up:
            return
        assert time.monotonic() < deadline, "replay feed did not catch up"


def usage(bus: Bus, group: str) -> list[TokenUsage]:
    consumer = bus.consumer([TOKEN_USAGE], group, from_beginning=True)
    events: list[TokenUsage] = []
    while batch := consumer.poll(1000, 0.5):
        events += [TokenUsage.from_json(m.value) for m in batch]
    consumer.close()
    return events


@pytest.fixture
def pair(issuer: Issuer, tmp_path: Path) -> Iterator[tuple[MemoryBus, ValidatorService, ValidatorService]]:
    bus = MemoryBus()
    a = ValidatorService(config(issuer), data_dir=tmp_path / "a", bus=bus)
    b = ValidatorService(config(issuer), data_dir=tmp_path / "b", bus=bus)
    yield bus, a, b
    a.close()
    b.close()


def get(url: str, token: str) -> int:
    return httpx.get(f"{url}/v1/validate", headers={"Authorization": f"Bearer {token}"}).status_code


def test_second_use_at_another_instance_is_rejected(
    issuer: Issuer, pair: tuple[MemoryBus, ValidatorService, ValidatorService]
) -> None:
    bus, a, b = pair
    token, ordinary = one_time_token(issuer), issuer.token("ES256")
    with serve_app(create_validator_app(a)) as url_a, serve_app(create_validator_app(b)) as url_b:
        assert httpx.get(f"{url_b}/readyz").status_code == 503  # has not read the other instances' uses yet
        catch_up(a)
        catch_up(b)
        assert httpx.get(f"{url_b}/readyz").status_code == 200
        assert get(url_a, token) == 200
        catch_up(b)
        assert get(url_b, token) == 401
        assert get(url_a, token) == 401
        assert [get(url_a, ordinary), get(url_b, ordinary), get(url_a, ordinary)] == [200, 200, 200]
    events = [e for e in usage(bus, "check") if e.jti is not None]
    replayed = [e for e in events if e.reason == "replayed"]
    assert len(replayed) == 2 and all(e.outcome == "rejected" for e in replayed)
    assert {e.jti for e in replayed} == {
        e.jti for e in events if e.outcome == "accepted" and e.aud and PAYMENTS in e.aud
    }
    assert sum(1 for e in events if e.outcome == "accepted") == 4  # the one-time token once, the ordinary one thrice


def test_simultaneous_uses_at_two_instances_are_detected(
    issuer: Issuer, pair: tuple[MemoryBus, ValidatorService, ValidatorService]
) -> None:
    """Inside the propagation window both instances accept (the documented limit); each then sees the other's use,
    counts a race, and rejects every later use."""
    _, a, b = pair
    token = one_time_token(issuer)
    with serve_app(create_validator_app(a)) as url_a, serve_app(create_validator_app(b)) as url_b:
        assert get(url_a, token) == 200
        assert get(url_b, token) == 200  # b has not read a's use yet
        catch_up(a)
        catch_up(b)
        assert get(url_a, token) == 401 and get(url_b, token) == 401
        for service in (a, b):
            with serve_app(metrics_app(service.registry)) as metrics_url:
                assert "jwtwatch_replay_races_total 1.0" in httpx.get(f"{metrics_url}/metrics").text


def test_messages_on_the_replay_topic_cannot_outlive_the_cap_or_break_the_feed(
    issuer: Issuer, pair: tuple[MemoryBus, ValidatorService, ValidatorService]
) -> None:
    bus, a, _ = pair
    now = time.time()
    bus.publish(REPLAY, "x", use_message(ISSUER, "forever", now + 10 * 365 * 86400, "forger", now))
    bus.publish(REPLAY, "y", b"\xff not json")
    bus.publish(REPLAY, "z", b'{"schema": "token-use/1", "iss": "", "jti": 1}')
    catch_up(a)
    assert a.replay_feed is not None and a.replay_feed.rejected == 2
    assert a.validator.replay is not None
    assert a.validator.replay.seen(ISSUER, "forever", now + a.config.max_token_lifetime_s)
    assert not a.validator.replay.seen(ISSUER, "forever", now + a.config.max_token_lifetime_s + a.config.leeway_s + 1)
    dead = bus.consumer([DEAD_LETTER], "dead", from_beginning=True).poll(10, 0.5)
    assert len(dead) == 2


def test_a_poison_use_message_does_not_skip_the_uses_after_it(
    pair: tuple[MemoryBus, ValidatorService, ValidatorService],
) -> None:
    """json.loads raises RecursionError on ~1000 nested arrays: the follower used to lose the rest of that poll,
    so one-time tokens used at another instance could be used here again."""
    bus, a, _ = pair
    now = time.time()
    bus.publish(REPLAY, "deep", b"[" * 100_000 + b"]" * 100_000)
    bus.publish(REPLAY, "after", use_message(ISSUER, "used-elsewhere", now + 300, "instance-b", now))
    catch_up(a)
    assert a.replay_feed is not None and a.replay_feed.rejected == 1
    assert a.validator.replay is not None and a.validator.replay.seen(ISSUER, "used-elsewhere", now)
    (letter,) = bus.consumer([DEAD_LETTER], "dead", from_beginning=True).poll(10, 0.5)
    assert b"RecursionError" in letter.value


# ------------------------------------------------------------------------------------------ Kafka


@pytest.mark.kafka
def test_second_use_at_another_instance_over_kafka(issuer: Issuer, kafka_bootstrap: str, tmp_path: Path) -> None:
    from pipeline.bus.kafka import KafkaBus

    bus_a, bus_b = KafkaBus(kafka_bootstrap), KafkaBus(kafka_bootstrap)
    a = ValidatorService(config(issuer), data_dir=tmp_path / "a", bus=bus_a)
    b = ValidatorService(config(issuer), data_dir=tmp_path / "b", bus=bus_b)
    try:
        catch_up(b)
        token = one_time_token(issuer)
        with serve_app(create_validator_app(a)) as url_a, serve_app(create_validator_app(b)) as url_b:
            assert get(url_a, token) == 200
            bus_a.flush(timeout_s=10)
            jti = a.validator.verifier.verify(token, a.validator.keys.current(), time.time()).claims["jti"]  # type: ignore[index]
            deadline = time.monotonic() + 60
            while not b.validator.replay.seen(ISSUER, jti, time.time()):  # type: ignore[union-attr]
                b.replay_feed.step()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "b never read a's use"
            assert get(url_b, token) == 401
        bus_b.flush(timeout_s=10)
        consumer = bus_b.consumer([TOKEN_USAGE], f"check-{jti}", from_beginning=True)
        found: list[TokenUsage] = []
        deadline = time.monotonic() + 60
        while not any(e.jti == jti and e.reason == "replayed" for e in found):
            found += [TokenUsage.from_json(m.value) for m in consumer.poll(1000, 1.0)]
            assert time.monotonic() < deadline, "no replayed usage event"
        consumer.close()
    finally:
        a.close()
        b.close()
        bus_a.close()
        bus_b.close()


# ---------------------------------------------------------------------------- serve, validator serve


def test_all_in_one_serves_one_time_tokens_once(issuer: Issuer, tmp_path: Path) -> None:
    from pipeline.nodes import AllInOne, ServeOptions

    model = DEFAULT_MODEL
    node = AllInOne(ServeOptions(config=config(issuer), data_dir=tmp_path, model_dir=model))
    node.start()
    try:
        with serve_app(node.app) as url:
            wait_ready(url)  # the replay feed is followed, or this never turns ready
            token = one_time_token(issuer)
            assert [get(url, token), get(url, token)] == [200, 401]
    finally:
        node.stop()


def test_validator_serve_takes_one_time_rules(tmp_path: Path) -> None:
    import os
    import subprocess

    from tests.support.cli import AUDIENCE as CLI_AUDIENCE
    from tests.support.cli import ISSUER as CLI_ISSUER
    from tests.support.cli import JWTWATCH, run
    from tests.support.ports import free_port

    keys = tmp_path / "keys"
    run("keys", "init", "--dir", str(keys), "--alg", "ES256", "--issuer", CLI_ISSUER)
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [*JWTWATCH, "validator", "serve", "--port", str(port), "--jwks-file", str(keys / "jwks.json"),
         "--data-dir", str(tmp_path / "data"), "--one-time-scopes", "payment:confirm",
         "--metrics-port", str(metrics_port)],
        env={**os.environ, "JWTWATCH_ISSUER": CLI_ISSUER, "JWTWATCH_AUDIENCE": CLI_AUDIENCE},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        issue = ["token", "issue", "--dir", str(keys), "--sub", "alice", "--aud", CLI_AUDIENCE]
        once = run(*issue, "--scope", "read payment:confirm").stdout.strip()
        ordinary = run(*issue, "--scope", "read").stdout.strip()
        assert [get(url, once), get(url, once)] == [200, 401]
        assert [get(url, ordinary), get(url, ordinary)] == [200, 200]
        assert 'reason="replayed"} 1.0' in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_follower_counts_only_other_instances_uses_as_applied() -> None:
    """Our own uses come back on the feed too: recorded when accepted, they are not applied again nor counted."""
    bus = MemoryBus()
    cache = ReplayCache()
    follower = ReplayFollower(bus, cache, instance="here", max_ttl_s=3600, clock=lambda: 1000.0)
    bus.publish(REPLAY, "a", use_message(ISSUER, "jti-1", 2000.0, "here", 1000.0))
    bus.publish(REPLAY, "b", use_message(ISSUER, "jti-2", 2000.0, "elsewhere", 1000.0))
    follower.step()
    assert follower.applied == 1 and follower.own_uses == 1 and follower.rejected == 0
    follower.close()
