"""Pure feature and rule helpers: a vector for every edge of the parallel-sessions signal and rule severity."""

from __future__ import annotations

import math

import pytest

from pipeline.detection.rules import CONCURRENT_MIN_RETURNS, fired_rules, rule_severity
from pipeline.features import (
    FEATURES,
    PARALLEL_MIN_OVERLAP_S,
    THEFT_NETWORK_KINDS,
    Session,
    corroborated,
    parallel_sessions,
)

HOME, THIEF, CARRIER = frozenset({"81.2"}), frozenset({"45.9"}), frozenset({"100.64"})
CHROME, SAFARI, CURL = frozenset({"Chrome"}), frozenset({"Safari"}), frozenset({"curl"})
HOSTING, RESIDENTIAL, MOBILE = frozenset({"hosting"}), frozenset({"residential"}), frozenset({"mobile"})
#: Exact user agents: the owner's laptop, another device of theirs, a tool.
LAPTOP = frozenset({"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/123.0.0.0 Safari/537.36"})
IPAD = frozenset({"Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Version/17.4 Safari/604.1"})
CURL_UA = frozenset({"curl/8.5.0"})


def owner(client: str, first: float, last: float, networks: frozenset[str] = HOME) -> Session:
    """A session of the subject's own: a residential network, the subject's laptop."""
    return Session(client, first, last, networks, RESIDENTIAL, CHROME, LAPTOP)


def thief(client: str, first: float, last: float, networks: frozenset[str] = THIEF) -> Session:
    """A session with evidence of theft on its own: from a hosting provider (an IP database says so), with a
    browser of another device."""
    return Session(client, first, last, networks, HOSTING, SAFARI, IPAD)


# ------------------------------------------------------------------ parallel sessions: when a pair counts


def test_a_stolen_refresh_token_used_from_a_rented_network_is_a_parallel_session() -> None:
    sessions = [owner("web", 0.0, 200.0), thief("web", 50.0, 250.0)]
    assert parallel_sessions(sessions, "alice") == 2


def test_one_app_on_two_devices_of_one_user_without_evidence_is_not_a_parallel_session() -> None:
    """A laptop at home and a tablet on the phone's hotspot, same app, used at once: the benign look-alike."""
    sessions = [owner("web", 0.0, 200.0), Session("web", 50.0, 250.0, CARRIER, MOBILE, SAFARI, IPAD)]
    assert parallel_sessions(sessions, "alice") == 0


def test_the_victims_own_user_agent_from_two_networks_at_once_makes_a_parallel_session() -> None:
    """No IP database (kinds unknown): the thief sends the victim's user agent, byte for byte, to blend in."""
    sessions = [owner("web", 0.0, 200.0), Session("web", 50.0, 250.0, THIEF, families=CHROME, user_agents=LAPTOP)]
    assert parallel_sessions(sessions, "alice") == 2


def test_a_tool_presenting_the_clients_tokens_makes_a_parallel_session() -> None:
    """Both networks where people live, but one token chain is used by a script, not the app or a browser."""
    sessions = [owner("web", 0.0, 200.0), Session("web", 50.0, 250.0, CARRIER, MOBILE, CURL, CURL_UA)]
    assert parallel_sessions(sessions, "alice") == 2


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


def device(
    networks: frozenset[str], kinds: frozenset[str], families: frozenset[str], agents: frozenset[str]
) -> Session:
    return Session("web", 50.0, 250.0, networks, kinds, families, agents)


OWNER = owner("web", 0.0, 200.0)


@pytest.mark.parametrize("kind", sorted(THEFT_NETWORK_KINDS))
def test_a_data_centre_or_anonymising_proxy_is_evidence(kind: str) -> None:
    session = device(THIEF, frozenset({kind}), SAFARI, IPAD)
    assert corroborated(OWNER, session) and corroborated(session, OWNER)


@pytest.mark.parametrize("kind", ["vpn", "residential", "mobile", "business", "unknown"])
def test_a_network_people_use_their_own_devices_on_is_no_evidence(kind: str) -> None:
    """A VPN too: people run them (split tunnels, privacy VPNs) on their own second devices."""
    assert "vpn" not in THEFT_NETWORK_KINDS
    assert not corroborated(OWNER, device(THIEF, frozenset({kind}), SAFARI, IPAD))


def test_the_same_user_agent_on_both_sessions_is_evidence() -> None:
    assert corroborated(OWNER, device(THIEF, RESIDENTIAL, CHROME, LAPTOP))
    # One byte different (another version of the browser on another machine): a device of the user's own.
    other_version = frozenset({next(iter(LAPTOP)).replace("123.0.0.0", "122.0.0.0")})
    assert not corroborated(OWNER, device(THIEF, RESIDENTIAL, CHROME, other_version))


def test_a_tool_beside_a_browser_or_app_is_evidence() -> None:
    assert corroborated(OWNER, device(CARRIER, MOBILE, CURL, CURL_UA))
    app = Session("ios", 0.0, 200.0, HOME, RESIDENTIAL, frozenset({"ExampleApp"}), frozenset({"ExampleApp/5.0.3"}))
    assert corroborated(app, device(CARRIER, MOBILE, CURL, CURL_UA))


def test_another_browser_of_the_user_is_no_evidence() -> None:
    """Chrome on the laptop, Safari on the iPad: two devices of one person, as far as the stream can tell."""
    assert not corroborated(OWNER, device(CARRIER, MOBILE, SAFARI, IPAD))


def test_a_session_without_a_user_agent_brings_no_software_evidence() -> None:
    assert not corroborated(OWNER, Session("web", 50.0, 250.0, CARRIER, MOBILE))


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
