"""Pure feature and rule helpers: a vector for every edge of the parallel-sessions signal and rule severity."""

from __future__ import annotations

import math

import pytest

from pipeline.detection.rules import CONCURRENT_MIN_RETURNS, fired_rules, rule_severity
from pipeline.features import FEATURES, PARALLEL_MIN_OVERLAP_S, Session, corroborated, parallel_sessions
from pipeline.networks import KINDS, RENTED_KINDS

HOME, THIEF, CARRIER = frozenset({"81.2"}), frozenset({"45.9"}), frozenset({"100.64"})
CHROME, CURL = frozenset({"Chrome"}), frozenset({"curl"})
HOSTING, RESIDENTIAL, MOBILE = frozenset({"hosting"}), frozenset({"residential"}), frozenset({"mobile"})


def owner(client: str, first: float, last: float, networks: frozenset[str] = HOME) -> Session:
    """A session of the subject's own: a residential network, the subject's usual browser."""
    return Session(client, first, last, networks, RESIDENTIAL, CHROME)


def thief(client: str, first: float, last: float, networks: frozenset[str] = THIEF) -> Session:
    """A session with evidence of theft on its own: from a hosting provider (an IP database says so)."""
    return Session(client, first, last, networks, HOSTING, CHROME)


# ------------------------------------------------------------------ parallel sessions: when a pair counts


def test_a_stolen_refresh_token_used_from_a_rented_network_is_a_parallel_session() -> None:
    sessions = [owner("web", 0.0, 200.0), thief("web", 50.0, 250.0)]
    assert parallel_sessions(sessions, "alice") == 2


def test_one_app_on_two_devices_of_one_user_without_evidence_is_not_a_parallel_session() -> None:
    """A laptop at home and a tablet on the phone's hotspot, same app, used at once: the benign look-alike."""
    sessions = [owner("web", 0.0, 200.0), Session("web", 50.0, 250.0, CARRIER, MOBILE, CHROME)]
    assert parallel_sessions(sessions, "alice") == 0
    assert parallel_sessions(sessions, "alice", {"81.2", "100.64"}, {"Chrome"}) == 0  # both known, settled


def test_a_network_new_for_a_settled_subject_makes_a_parallel_session() -> None:
    """No IP database (kinds unknown): the thief's network is one the subject's history never had."""
    sessions = [Session("web", 0.0, 200.0, HOME), Session("web", 50.0, 250.0, THIEF, families=CHROME)]
    assert parallel_sessions(sessions, "alice") == 0  # no history: no evidence
    assert parallel_sessions(sessions, "alice", {"81.2"}, {"Chrome"}) == 2


def test_client_software_new_for_a_settled_subject_makes_a_parallel_session() -> None:
    """Both networks are the subject's own (home and office), but one token is used by a tool it never used."""
    sessions = [owner("web", 0.0, 200.0), Session("web", 50.0, 250.0, CARRIER, families=CURL)]
    assert parallel_sessions(sessions, "alice", {"81.2", "100.64"}, {"Chrome"}) == 2


def test_a_refresh_hands_over_from_one_token_to_the_next() -> None:
    """The new token appears as the old one stops — even when the phone changed networks at that moment."""
    sessions = [owner("ios", 0.0, 100.0), thief("ios", 101.0, 250.0, CARRIER)]
    assert parallel_sessions(sessions, "alice") == 0


def test_in_flight_calls_with_the_old_token_do_not_make_a_parallel_session() -> None:
    overlap = PARALLEL_MIN_OVERLAP_S - 1
    sessions = [owner("web", 0.0, 100.0 + overlap), thief("web", 100.0, 250.0)]
    assert parallel_sessions(sessions, "alice") == 0


def test_the_overlap_boundary_counts() -> None:
    sessions = [owner("web", 0.0, 100.0 + PARALLEL_MIN_OVERLAP_S), thief("web", 100.0, 250.0)]
    assert parallel_sessions(sessions, "alice") == 2


def test_tokens_sharing_a_network_are_one_place() -> None:
    sessions = [owner("web", 0.0, 200.0), thief("web", 50.0, 250.0, HOME | THIEF)]
    assert parallel_sessions(sessions, "alice") == 0


def test_two_devices_with_different_clients_are_not_parallel_sessions() -> None:
    sessions = [owner("web", 0.0, 200.0), thief("ios", 50.0, 250.0, CARRIER)]
    assert parallel_sessions(sessions, "alice") == 0


def test_machine_tokens_are_left_out() -> None:
    """Client credentials (RFC 9068 §2.2: sub is the client): each service replica holds its own token, also
    one in a cloud region (a hosting network)."""
    sessions = [owner("svc-billing", 0.0, 200.0), thief("svc-billing", 50.0, 250.0)]
    assert parallel_sessions(sessions, "svc-billing") == 0


def test_a_third_token_joins_the_count() -> None:
    """The owner's second device joins through its pair with the thief's session (the pair has evidence)."""
    sessions = [
        owner("web", 0.0, 200.0),
        thief("web", 50.0, 250.0),
        Session("web", 60.0, 260.0, CARRIER, MOBILE, CHROME),
    ]
    assert parallel_sessions(sessions, "alice") == 3


# ----------------------------------------------------------------- corroborated: the evidence of theft


@pytest.mark.parametrize("kind", sorted(RENTED_KINDS))
def test_a_rented_network_kind_alone_is_evidence(kind: str) -> None:
    """Without any history of the subject, and on a network and with software the subject knows."""
    session = Session("web", 0.0, 100.0, HOME, frozenset({kind, "residential"}), CHROME)
    assert corroborated(session, None, None)
    assert corroborated(session, {"81.2"}, {"Chrome"})


@pytest.mark.parametrize("kind", sorted(set(KINDS) - RENTED_KINDS))
def test_a_network_people_live_on_is_no_evidence_on_its_own(kind: str) -> None:
    assert not corroborated(Session("web", 0.0, 100.0, THIEF, frozenset({kind}), CURL), None, None)


def test_a_network_new_for_a_settled_subject_alone_is_evidence() -> None:
    session = Session("web", 0.0, 100.0, HOME | THIEF, RESIDENTIAL, CHROME)  # one of its networks is new
    assert corroborated(session, {"81.2"}, {"Chrome"})
    assert corroborated(session, {"81.2"}, None)  # the families not settled yet: the network still tells


def test_client_software_new_for_a_settled_subject_alone_is_evidence() -> None:
    session = Session("web", 0.0, 100.0, HOME, RESIDENTIAL, CHROME | CURL)
    assert corroborated(session, {"81.2"}, {"Chrome"})
    assert corroborated(session, None, {"Chrome"})  # the networks not settled yet: the software still tells


def test_without_settled_history_novelty_is_no_evidence() -> None:
    """A subject seen for less than the settle time has no baseline: everything would be new."""
    assert not corroborated(Session("web", 0.0, 100.0, THIEF, RESIDENTIAL, CURL), None, None)


def test_a_known_network_and_known_software_are_no_evidence() -> None:
    session = Session("web", 0.0, 100.0, HOME | CARRIER, RESIDENTIAL | MOBILE, CHROME)
    assert not corroborated(session, {"81.2", "100.64", "45.9"}, {"Chrome", "Safari"})


def test_a_session_without_a_user_agent_brings_no_software_evidence() -> None:
    assert not corroborated(Session("web", 0.0, 100.0, HOME, RESIDENTIAL), {"81.2"}, {"Chrome"})


# ---------------------------------------------------------------------------------------------- rules


def _row(entity_type: str, **values: float) -> list[float]:
    names = FEATURES[entity_type]
    row = [0.0] * len(names)
    for name, value in values.items():
        row[names.index(name)] = value
    return row


def test_token_concurrent_networks_fires_from_four_returns_with_an_ip_database() -> None:
    assert CONCURRENT_MIN_RETURNS == 4
    four = _row("jti", network_returns=math.log1p(4), novel_network_share=0.5)
    assert fired_rules("jti", four, networks_identified=True) == ["token_concurrent_networks"]
    many = _row("jti", network_returns=math.log1p(60), novel_network_share=0.5)
    assert fired_rules("jti", many, networks_identified=True) == ["token_concurrent_networks"]


def test_token_concurrent_networks_does_not_fire_on_three_returns() -> None:
    row = _row("jti", network_returns=math.log1p(3), novel_network_share=0.5)
    assert fired_rules("jti", row, networks_identified=True) == []


def test_token_concurrent_networks_needs_a_network_new_for_the_subject() -> None:
    """Both networks the user's own (a split-tunnel VPN), or no settled history: the returns alone do not fire."""
    row = _row("jti", network_returns=math.log1p(60), novel_network_share=0.0)
    assert fired_rules("jti", row, networks_identified=True) == []


def test_token_concurrent_networks_never_fires_for_a_machine_token() -> None:
    row = _row("jti", network_returns=math.log1p(60), novel_network_share=0.5)
    assert fired_rules("jti", row, networks_identified=True, machine=True) == []


@pytest.mark.parametrize("returns", [4, 60, 65535])
def test_token_concurrent_networks_never_fires_on_prefixes(returns: int) -> None:
    """Without an IP database networks are /16 prefixes, which benign clients cross back and forth at once."""
    row = _row("jti", network_returns=math.log1p(returns), novel_network_share=0.5)
    assert fired_rules("jti", row) == []
    assert fired_rules("jti", row, networks_identified=False) == []


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
        (("token_concurrent_networks",), None, "high"),
        (("parallel_sessions", "forged_probing"), None, "high"),
    ],
)
def test_rules_raise_severity_to_their_floor_and_never_lower_it(rules, forest, expected) -> None:
    assert rule_severity(rules, forest) == expected


@pytest.mark.parametrize(("forged", "subjects", "fires"), [(9, 0, False), (10, 0, True), (12, 2, True), (3, 26, False)])
def test_forged_probing_counts_forged_tokens_not_forged_tokens_per_user(forged, subjects, fires) -> None:
    row = _row("ip", forged_per_subject=math.log1p(forged / max(subjects, 1)), distinct_subjects=subjects)
    assert ("forged_probing" in fired_rules("ip", row)) is fires
