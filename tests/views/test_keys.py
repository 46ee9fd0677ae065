"""The keys of the keyed views are the detection engine's entity keys: the same subject and IP per event."""

from __future__ import annotations

import dataclasses

from pipeline.detection.batch import EventBatch
from pipeline.detection.engine import Collected, DetectionEngine
from pipeline.events import TokenUsage
from pipeline.views import VERIFIED_REASONS, ip_key, subject_key
from tests.support.views import usage_stream


def engine_entities(event: TokenUsage) -> dict[str, list[str]]:
    """The entities one event counts against in the engine: a fresh engine without a model (it only collects
    feature rows) scores every window the event made, once."""
    collected = Collected()
    engine = DetectionEngine(None, collect=collected)
    engine.process(EventBatch.from_records([event]))
    engine.flush()
    return collected.entity


def test_the_view_keys_are_the_engines_entity_keys_on_a_simulated_stream() -> None:
    stream = usage_stream()
    one_of_each = {}  # every kind of event the stream has: outcome and reason, with and without sub and jti
    for event in stream:
        one_of_each.setdefault((event.reason, event.sub is None, event.jti is None), event)
    sample = [*stream[::25], *one_of_each.values()]
    kinds = {(e.reason in VERIFIED_REASONS, e.sub is None) for e in sample}
    assert {(True, False), (False, False), (False, True)} <= kinds, kinds  # verified, forged with a sub, no sub
    for event in sample:
        entities = engine_entities(event)
        subject = subject_key(event.sub, event.reason)
        assert entities["sub"] == ([] if subject is None else [subject]), event
        assert entities["ip"] == [ip_key(event.ip)], event
        # The token view is the usage topic: a token the engine keeps a window for is its bus key there.
        assert all(jti == event.bus_key for jti in entities["jti"]), event


def test_a_subject_is_its_sub_alone_and_only_with_verified_claims() -> None:
    event = usage_stream()[0]
    for reason, counted in (
        (None, True), ("expired", True), ("revoked", True), ("replayed", True),
        ("bad_signature", False), ("unknown_kid", False), ("malformed", False),
    ):  # fmt: skip
        forged = dataclasses.replace(event, outcome="accepted" if reason is None else "rejected", reason=reason,
                                     sub="alice", iss="https://one.test")  # fmt: skip
        other_issuer = dataclasses.replace(forged, iss="https://two.test")
        assert subject_key(forged.sub, forged.reason) == ("alice" if counted else None), reason
        assert subject_key(other_issuer.sub, other_issuer.reason) == subject_key(forged.sub, forged.reason)
        assert engine_entities(forged)["sub"] == (["alice"] if counted else [])
    assert subject_key(None, None) is None
    assert subject_key("", None) == ""  # an empty sub is a subject to the engine too
    assert engine_entities(dataclasses.replace(event, outcome="accepted", reason=None, sub=""))["sub"] == [""]
