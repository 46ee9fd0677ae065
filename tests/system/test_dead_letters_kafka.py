"""Hostile messages on the Kafka usage topic land in the dead-letter topic; the pipeline goes on consuming.

The memory-bus version of this is tests/detection/test_engine.py::test_runner_dead_letters_garbage_and_keeps_going; here
the messages cross a real broker, and oversized ones are included. A message above the topic's
max.message.bytes never reaches the topic at all: the publisher's flush fails
(tests/bus/test_kafka_bus.py::test_a_failed_send_surfaces_at_flush), so there is nothing to dead-letter.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from pipeline.bus import DEAD_LETTER, TOKEN_USAGE
from pipeline.bus.kafka import KafkaBus
from pipeline.detection.runner import StreamingRunner
from pipeline.events import MAX_STRING, Alert, TokenUsage, format_ts
from pipeline.scoring.model import DetectionModel, load_model
from tests.support.kafka import drain
from tests.support.paths import DEFAULT_MODEL

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    return load_model(DEFAULT_MODEL)


@pytest.fixture
def bus(kafka_bootstrap: str) -> Iterator[KafkaBus]:
    bus = KafkaBus(kafka_bootstrap, client_id=f"dead-letters-{uuid.uuid4().hex[:8]}")
    try:
        yield bus
    finally:
        bus.close()


def event(i: int, **fields: object) -> TokenUsage:
    base = TokenUsage(
        event_id=str(uuid.uuid4()),
        ts=format_ts(time.time() - 60 + i),
        ip="198.51.100.20",
        outcome="accepted",
        jti=f"dlq-jti-{i}",
        sub="dlq-user",
        iss="https://issuer.example",
        aud="api",
        user_agent="dlq-test/1.0",
    )
    return TokenUsage.from_dict(base.to_dict() | fields)


def hostile_messages() -> dict[str, bytes]:
    good = event(0).to_json()
    alert = Alert(
        alert_id="dlq-a",
        ts=format_ts(time.time()),
        entity_type="ip",
        entity="198.51.100.20",
        window_start=format_ts(time.time()),
        window_end=format_ts(time.time()),
        score=0.5,
        severity="low",
        model_version="m",
    )
    return {
        "non-utf8": b"\xff\xfe\xfd" + good[3:],
        "latin-1 inside a string": good.replace(b"dlq-test/1.0", b"dlq-test/\xe9\xff"),
        "truncated json": good[: len(good) // 2],
        "empty": b"",
        "wrong schema version": good.replace(b"token-usage/1", b"token-usage/2"),
        "an alert on the usage topic": alert.to_json(),
        "wrong field types": orjson.dumps(event(1).to_dict() | {"iat": "yesterday", "ip": 42}),
        "field over the record limit": orjson.dumps(event(2).to_dict() | {"user_agent": "u" * (MAX_STRING + 1)}),
        "large message": orjson.dumps(event(3).to_dict() | {"path": "/" + "p" * 200_000}),
    }


def dead_letters(bus: KafkaBus, key: bytes, expect: int, group: str) -> list[dict]:
    found: list[dict] = []
    with bus.consumer([DEAD_LETTER], group) as consumer:
        deadline = time.monotonic() + 60
        while len(found) < expect and time.monotonic() < deadline:
            found += [orjson.loads(m.value) for m in consumer.poll(timeout_s=0.5) if m.key == key]
    return found


def run_until(runner: StreamingRunner, done, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 120
    while not done():
        assert time.monotonic() < deadline, f"the runner never got there: {what}"
        runner.step()


def test_hostile_usage_messages_are_dead_lettered_and_good_ones_still_consumed(
    bus: KafkaBus, model: DetectionModel
) -> None:
    key = f"dlq-{uuid.uuid4().hex}".encode()  # one key: one partition, in publication order
    hostile = hostile_messages()
    goods = [event(10 + i) for i in range(5)]
    bus.publish(TOKEN_USAGE, key, goods[0].to_json())
    for raw in hostile.values():
        bus.publish(TOKEN_USAGE, key, raw)
    for good in goods[1:]:
        bus.publish(TOKEN_USAGE, key, good.to_json())
    bus.flush(30)

    # Where our messages landed, read back by an independent consumer.
    ours: list[tuple[tuple[str, int], int, bytes]] = []
    with bus.consumer([TOKEN_USAGE], f"dlq-reader-{uuid.uuid4().hex[:8]}") as reader:
        deadline = time.monotonic() + 60
        while len(ours) < len(hostile) + len(goods) and time.monotonic() < deadline:
            ours += [((m.topic, m.partition), m.offset, m.value) for m in reader.poll(timeout_s=0.5) if m.key == key]
    assert [value for _, _, value in ours] == [goods[0].to_json(), *hostile.values(), *(g.to_json() for g in goods[1:])]
    partition, last_offset = ours[-1][0], ours[-1][1]

    group = f"dlq-pipeline-{uuid.uuid4().hex[:8]}"
    runner = StreamingRunner(bus, model, group=group, poll_timeout_s=0.2)
    try:
        # Committed once processed, and processed in event-time order across the partitions: the runner reads until
        # every partition (other tests' messages too) is at its end or past our messages' time.
        run_until(runner, lambda: runner.consumer.committed().get(partition, 0) > last_offset, "committed past ours")
    finally:
        runner.close()
    # The pipeline's group committed past the garbage and the good messages after it: it kept consuming.
    with bus.consumer([TOKEN_USAGE], group) as member:
        assert member.positions().get(partition, 0) > last_offset

    letters = dead_letters(bus, key, len(hostile), f"dlq-check-{uuid.uuid4().hex[:8]}")
    originals = [base64.b64decode(letter["original"]) for letter in letters]
    assert sorted(originals) == sorted(hostile.values())  # every hostile message, byte for byte; no good one
    for letter in letters:
        assert letter["topic"] == TOKEN_USAGE and letter["partition"] == partition[1]
        assert letter["error"] and "token-usage/1" in letter["error"]
        assert base64.b64decode(letter["key"]) == key
    by_original = {base64.b64decode(letter["original"]): letter for letter in letters}
    assert "user_agent" in by_original[hostile["field over the record limit"]]["error"]
    assert by_original[hostile["truncated json"]]["offset"] > ours[0][1]


def test_a_message_near_the_broker_limit_is_dead_lettered_too(bus: KafkaBus, model: DetectionModel) -> None:
    key = f"dlq-big-{uuid.uuid4().hex}".encode()
    big = b"{" + b"x" * 900_000  # under the broker's 1 MiB limit: the usage topic accepts it
    good = event(20)
    bus.publish(TOKEN_USAGE, key, big)
    bus.publish(TOKEN_USAGE, key, good.to_json())
    bus.flush(30)
    runner = StreamingRunner(bus, model, group=f"dlq-big-{uuid.uuid4().hex[:8]}", poll_timeout_s=0.2)
    try:
        # The topic also holds the other test's hostile messages: count ours only once the whole topic is read.
        drain(runner)
        bus.flush(30)
    finally:
        runner.close()
    [letter] = dead_letters(bus, key, 1, f"dlq-big-check-{uuid.uuid4().hex[:8]}")
    # Too big to wrap whole under the broker's limit: its head, size and digest (and the pointer to it).
    kept = base64.b64decode(letter["original"])
    assert big.startswith(kept) and len(kept) >= 512 * 1024
    assert letter["original_truncated"] is True and letter["original_size"] == len(big)
    assert letter["original_sha256"] == hashlib.sha256(big).hexdigest()
    assert letter["topic"] == TOKEN_USAGE and letter["offset"] >= 0


def test_a_usage_event_that_cannot_be_encoded_is_dead_lettered_alone(bus: KafkaBus, tmp_path: Path) -> None:
    from pipeline.validation import ValidatorConfig
    from pipeline.validation.service import RequestContext, ValidatorService
    from pipeline.validation.verifier import Verdict
    from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer

    service = ValidatorService(
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=Issuer.create().jwks()),
        data_dir=tmp_path,
        bus=bus,
        background=True,  # as `validator serve --kafka`: built, encoded and published in batches
    )
    jtis = [f"dlq-usage-{uuid.uuid4().hex}" for _ in range(3)]
    # The middle one's address holds a lone surrogate — only a caller bypassing usage_event's repairs could do
    # that; it stands for any record that cannot be encoded.
    for jti, ip in zip(jtis, ("198.51.100.1", "198.51.100.\ud800", "198.51.100.3"), strict=True):
        service.record(Verdict(False, "bad_signature", None, {"jti": jti}), RequestContext(ip=ip), time.time())
    service.close()
    bus.flush(30)

    published: dict[bytes, bytes] = {}
    with bus.consumer([TOKEN_USAGE], f"dlq-usage-reader-{uuid.uuid4().hex[:8]}") as reader:
        deadline = time.monotonic() + 60
        while len(published) < 2 and time.monotonic() < deadline:
            published |= {m.key: m.value for m in reader.poll(timeout_s=0.5) if m.key in {j.encode() for j in jtis}}
    assert set(published) == {jtis[0].encode(), jtis[2].encode()}  # the batch around it went out
    [letter] = dead_letters(bus, jtis[1].encode(), 1, f"dlq-usage-check-{uuid.uuid4().hex[:8]}")
    assert (letter["topic"], letter["partition"], letter["offset"]) == (TOKEN_USAGE, -1, -1)  # never on the topic
    # The record whole, as JSON text with the surrogate escaped (Python's json reads it back; orjson refuses it).
    assert json.loads(base64.b64decode(letter["original"]))["ip"] == "198.51.100.\ud800"
    assert service.emitter.dead_lettered == 1
