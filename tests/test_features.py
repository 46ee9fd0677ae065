"""Pure feature and rule helpers: a vector for every edge of the parallel-sessions signal and rule severity."""

from __future__ import annotations

import math

import pytest

from pipeline.detection.rules import fired_rules, rule_severity
from pipeline.features import FEATURES, PARALLEL_MIN_OVERLAP_S, Session, parallel_sessions

HOME, THIEF, CARRIER = frozenset({"81.2"}), frozenset({"45.9"}), frozenset({"100.64"})


def test_two_tokens_of_one_user_client_in_use_together_from_two_networks_are_parallel() -> None:
    sessions = [Session("web", 0.0, 200.0, HOME), Session("web", 50.0, 250.0, THIEF)]
    assert parallel_sessions(sessions, "alice") == 2


def test_a_refresh_hands_over_from_one_token_to_the_next() -> None:
    """The new token appears as the old one stops — even when the phone changed networks at that moment."""
    sessions = [Session("ios", 0.0, 100.0, HOME), Session("ios", 101.0, 250.0, CARRIER)]
    assert parallel_sessions(sessions, "alice") == 0


def test_in_flight_calls_with_the_old_token_do_not_make_a_parallel_session() -> None:
    overlap = PARALLEL_MIN_OVERLAP_S - 1
    sessions = [Session("web", 0.0, 100.0 + overlap, HOME), Session("web", 100.0, 250.0, THIEF)]
    assert parallel_sessions(sessions, "alice") == 0


def test_the_overlap_boundary_counts() -> None:
    sessions = [Session("web", 0.0, 100.0 + PARALLEL_MIN_OVERLAP_S, HOME), Session("web", 100.0, 250.0, THIEF)]
    assert parallel_sessions(sessions, "alice") == 2


def test_tokens_sharing_a_network_are_one_place() -> None:
    sessions = [Session("web", 0.0, 200.0, HOME), Session("web", 50.0, 250.0, HOME | THIEF)]
    assert parallel_sessions(sessions, "alice") == 0


def test_two_devices_with_different_clients_are_not_parallel_sessions() -> None:
    sessions = [Session("web", 0.0, 200.0, HOME), Session("ios", 50.0, 250.0, CARRIER)]
    assert parallel_sessions(sessions, "alice") == 0


def test_machine_tokens_are_left_out() -> None:
    """Client credentials (RFC 9068 §2.2: sub is the client): each service replica holds its own token."""
    sessions = [Session("svc-billing", 0.0, 200.0, HOME), Session("svc-billing", 50.0, 250.0, THIEF)]
    assert parallel_sessions(sessions, "svc-billing") == 0


def test_a_third_token_joins_the_count() -> None:
    sessions = [
        Session("web", 0.0, 200.0, HOME),
        Session("web", 50.0, 250.0, THIEF),
        Session("web", 60.0, 260.0, CARRIER),
    ]
    assert parallel_sessions(sessions, "alice") == 3


def _row(entity_type: str, **values: float) -> list[float]:
    names = FEATURES[entity_type]
    row = [0.0] * len(names)
    for name, value in values.items():
        row[names.index(name)] = value
    return row


def test_the_parallel_sessions_rule_needs_a_pair() -> None:
    assert fired_rules("sub", _row("sub", parallel_sessions=2)) == ["parallel_sessions"]
    assert fired_rules("sub", _row("sub", parallel_sessions=0)) == []


@pytest.mark.parametrize(
    ("rules", "forest", "expected"),
    [
        ((), None, None),
        ((), "low", "low"),
        (("parallel_sessions",), None, "medium"),
        (("parallel_sessions",), "low", "medium"),
        (("parallel_sessions",), "critical", "critical"),
        (("token_fanout",), "medium", "high"),
        (("parallel_sessions", "forged_probing"), None, "high"),
    ],
)
def test_rules_raise_severity_to_their_floor_and_never_lower_it(rules, forest, expected) -> None:
    assert rule_severity(rules, forest) == expected


@pytest.mark.parametrize(("forged", "subjects", "fires"), [(9, 0, False), (10, 0, True), (12, 2, True), (3, 26, False)])
def test_forged_probing_counts_forged_tokens_not_forged_tokens_per_user(forged, subjects, fires) -> None:
    row = _row("ip", forged_per_subject=math.log1p(forged / max(subjects, 1)), distinct_subjects=subjects)
    assert ("forged_probing" in fired_rules("ip", row)) is fires
