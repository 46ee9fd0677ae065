"""One ongoing attack, one alert per entity: updated when it escalates, never repeated; ids deterministic."""

from __future__ import annotations

from pipeline.detection.episodes import AlertTracker, Finding

T0 = 1_790_000_100.0


def finding(ts: float, severity: str = "medium", score: float = 0.7, rules: tuple[str, ...] = ()) -> Finding:
    return Finding("jti", "tok-1", ts, ts - 300, ts, score, severity, {"events": 3.0}, [], rules, sub="alice")


def test_a_continuing_episode_is_one_alert() -> None:
    tracker = AlertTracker("m1", window_s=300)
    first = tracker.observe(finding(T0))
    assert first is not None
    assert tracker.observe(finding(T0 + 10)) is None
    assert tracker.observe(finding(T0 + 20, "low")) is None


def test_escalation_reissues_the_same_alert_id() -> None:
    tracker = AlertTracker("m1", window_s=300)
    first = tracker.observe(finding(T0))
    escalated = tracker.observe(finding(T0 + 30, "critical", 0.9))
    assert first is not None and escalated is not None
    assert escalated.alert_id == first.alert_id
    assert (escalated.severity, escalated.score, escalated.ts) == ("critical", 0.9, first.ts)
    rule = tracker.observe(finding(T0 + 40, "low", rules=("forged_probing",)))
    assert rule is not None and rule.alert_id == first.alert_id
    assert rule.reasons[0]["rule"] == "forged_probing"


def test_after_a_quiet_period_a_new_attack_is_a_new_alert() -> None:
    tracker = AlertTracker("m1", window_s=300)
    first = tracker.observe(finding(T0))
    second = tracker.observe(finding(T0 + 301 + 300))
    assert first is not None and second is not None and second.alert_id != first.alert_id


def test_ids_are_deterministic_across_replays_and_depend_on_the_model() -> None:
    a = AlertTracker("m1", window_s=300).observe(finding(T0))
    b = AlertTracker("m1", window_s=300).observe(finding(T0 + 5))  # same window, another first event
    c = AlertTracker("m2", window_s=300).observe(finding(T0))
    assert a is not None and b is not None and c is not None
    assert a.alert_id == b.alert_id
    assert c.alert_id != a.alert_id


def test_quiet_episodes_are_forgotten() -> None:
    tracker = AlertTracker("m1", window_s=300)
    tracker.observe(finding(T0))
    assert tracker.close_quiet(T0 + 1000) == 1 and not tracker.open
