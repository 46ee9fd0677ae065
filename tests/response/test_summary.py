"""An alert's one-line summary (``pipeline/response/summary.py``): one vector per rule, forest-only findings, and
the hostile or missing inputs a summary must survive. Feature values are given as the model sees them
(log-scaled counts as ``log1p``), so these also check the conversion back to counts."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from pipeline.detection.episodes import AlertTracker, Finding
from pipeline.networks import PREFIXES, Network
from pipeline.response.summary import MAX_SUMMARY, EntityFacts, network_label, summarize

L = math.log1p


def test_network_labels_name_the_network_a_person_can_look_up() -> None:
    assert network_label("203.0.113.7") == "203.0.0.0/16"
    assert network_label("2001:db8:1:2::5") == "2001:db8::/32"


def test_a_network_from_an_ip_database_is_labelled_by_its_as() -> None:
    assert Network("AS64500", "residential", 64500, "Example").label == "AS64500 Example (residential)"
    assert Network("AS64501", "unknown", 64501, "Example").label == "AS64501 Example"  # kind unknown: not said
    assert Network("AS64502", "hosting", 64502).label == "AS64502 (hosting)"  # no organisation name
    assert PREFIXES("198.51.100.7") == Network("198.51")  # the fallback: the /16, kind unknown, no AS


SUMMARIES = [
    pytest.param(
        "jti", "tok-1", ["token_changed_client_and_network"],
        {"events": L(23), "distinct_ua_families": 2.0, "distinct_networks": 2.0},
        EntityFacts(4.2, ("45.33.0.0/16", "81.2.0.0/16"), ("Chrome", "python-requests")),
        "token of alice used from 45.33.0.0/16 and 81.2.0.0/16 within 4 s, 23 times — "
        "by 2 client families (Chrome and python-requests)",
        id="token_changed_client_and_network",
    ),
    pytest.param(
        "jti", "tok-1", ["stale_token_replay"], {"events": L(6), "stale_rejections": L(6)},
        EntityFacts(50.0, ("45.9.0.0/16",), ("curl",)),
        "token of alice used from 45.9.0.0/16 within 50 s, 6 times — presented 6 times after it expired or was revoked",
        id="stale_token_replay",
    ),
    pytest.param(
        "jti", "tok-1", ["token_fanout"], {"events": L(18), "distinct_prefix24": 9.0},
        EntityFacts(95.0, tuple(f"{30 + i}.{20 + i}.0.0/16" for i in range(9)), ("Chrome",)),
        "token of alice used from 30.20.0.0/16, 31.21.0.0/16, 32.22.0.0/16 and 6 more networks within 1 min 35 s, "
        "18 times — from 9 /24 networks",
        id="token_fanout",
    ),
    pytest.param(
        "jti", "tok-1", ["rate_abuse"], {"events": L(3065), "rate_vs_client": 31.2},
        EntityFacts(117.0, ("24.106.0.0/16",), ("okhttp",)),
        "token of alice used from 24.106.0.0/16 within 1 min 57 s, 3065 times — "
        "31 times as often as its client's tokens usually are",
        id="rate_abuse",
    ),
    pytest.param(
        "sub", "carol", ["parallel_sessions"], {"events": L(12), "parallel_sessions": 2.0},
        EntityFacts(72.0, ("45.9.0.0/16", "81.2.0.0/16"), ("Chrome",)),
        "subject carol used from 45.9.0.0/16 and 81.2.0.0/16 within 72 s, 12 times — "
        "2 tokens of one client in use at once from different networks, "
        "not as a second device of the user's",
        id="parallel_sessions",
    ),
    pytest.param(
        "jti", "tok-1", ["token_concurrent_networks"], {"events": L(20), "network_returns": L(6)},
        EntityFacts(45.0, ("AS64500 Example (residential)", "AS64501 Example Hosting (hosting)"), ("Chrome",)),
        "token of alice used from AS64500 Example (residential) and AS64501 Example Hosting (hosting) within 45 s, "
        "20 times — back and forth between networks 6 times within seconds",
        id="token_concurrent_networks",
    ),
    pytest.param(
        "ip", "203.0.113.7", ["forged_probing"],
        {"events": L(40), "distinct_subjects": 0.0, "forged_per_subject": L(40), "forged_share": 1.0},
        EntityFacts(30.0, ("203.0.0.0/16",)),
        "IP 203.0.113.7 made 40 requests within 30 s — 40 forged or malformed tokens (100 % of its requests)",
        id="forged_probing",
    ),
    pytest.param(
        "ip", "198.51.100.4", ["forged_probing"],
        {"events": L(300), "distinct_subjects": 4.0, "forged_per_subject": L(3), "forged_share": 0.04},
        EntityFacts(280.0, ("198.51.0.0/16",)),
        "IP 198.51.100.4 made 300 requests within 4 min 40 s — "
        "12 forged or malformed tokens (4 % of its requests), 4 users behind it",
        id="forged_probing_behind_a_nat",
    ),
    pytest.param(
        "jti", "tok-1", ["token_fanout", "token_changed_client_and_network"],
        {"events": L(32), "distinct_prefix24": 8.0, "distinct_ua_families": 3.0},
        EntityFacts(88.0, ("105.10.0.0/16", "39.15.0.0/16"), ("Chrome", "Edge", "Safari")),
        "token of alice used from 105.10.0.0/16 and 39.15.0.0/16 within 88 s, 32 times — "
        "from 8 /24 networks; by 3 client families (Chrome, Edge and Safari)",
        id="two_rules_in_the_order_given",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("entity_type", "entity", "rules", "features", "facts", "expected"), SUMMARIES)
def test_each_rule_says_what_the_entity_did(
    entity_type: str, entity: str, rules: list[str], features: dict[str, float], facts: EntityFacts, expected: str
) -> None:
    sub = "alice" if entity_type == "jti" else entity if entity_type == "sub" else None
    assert summarize(entity_type, entity, rules, features, [], facts, sub=sub) == expected


def test_a_forest_only_finding_is_summarised_by_its_top_reasons() -> None:
    reasons = [
        {"feature": "distinct_networks", "text": "distinct networks: 3 (usually ≤ 1)"},
        {
            "feature": "novel_network_share",
            "text": "share of networks never seen for this subject: 67 % (usually ≤ 0 %)",
        },
        {"feature": "burstiness", "text": "busiest bucket against the average bucket: 4.0x (usually ≤ 2.7x)"},
    ]
    facts = EntityFacts(40.0, ("10.1.0.0/16", "45.33.0.0/16", "81.2.0.0/16"), ("Chrome",))
    assert summarize("sub", "dave", [], {"events": L(9)}, reasons, facts) == (
        "subject dave used from 10.1.0.0/16, 45.33.0.0/16 and 81.2.0.0/16 within 40 s, 9 times — "
        "distinct networks: 3 (usually ≤ 1); share of networks never seen for this subject: 67 % (usually ≤ 0 %)"
    )


def test_an_unusual_combination_is_said_to_be_one() -> None:
    combination = {
        "combination": ["events", "distinct_ips"],
        "text": "unusual combination, each value within its usual range: uses in the window 40 (typically 12)",
    }
    line = summarize("jti", "tok-9", [], {"events": L(40)}, [combination], EntityFacts(12.0, ("10.1.0.0/16",)))
    assert line == (
        "token used from 10.1.0.0/16 within 12 s, 40 times — "
        "unusual combination, each value within its usual range: uses in the window 40 (typically 12)"
    )


def test_long_lists_are_cut_with_a_count_of_the_rest() -> None:
    one_more = summarize(
        "jti", "t", ["token_changed_client_and_network"], {"events": L(9), "distinct_ua_families": 4.0}, [],
        EntityFacts(9.0, ("1.1.0.0/16", "2.2.0.0/16", "3.3.0.0/16", "4.4.0.0/16"), ("A", "B", "C", "D")),
    )  # fmt: skip
    assert one_more == (
        "token used from 1.1.0.0/16, 2.2.0.0/16, 3.3.0.0/16 and 1 more network within 9 s, 9 times — "
        "by 4 client families (A, B, C and 1 more)"
    )


def test_without_window_facts_the_summary_still_gives_counts_and_rules() -> None:
    line = summarize(
        "jti", "tok-1", ["stale_token_replay"], {"events": L(1), "stale_rejections": L(5)}, [], None, sub="bob"
    )
    assert line == "token of bob used, 1 time — presented 5 times after it expired or was revoked"
    # A rule this module does not know yet (a newer engine) is still named.
    assert summarize("ip", "192.0.2.1", ["new_rule"], {}, [], None) == "IP 192.0.2.1 made 0 requests — new rule"


def test_hostile_names_cannot_break_the_line_or_its_length() -> None:
    sub = "eve\n\x1b[31mroot" + "x" * 500
    networks = tuple(f"10.{i}.0.0/16" for i in range(200))
    line = summarize(
        "jti", "tok", ["token_changed_client_and_network"], {"events": L(5), "distinct_ua_families": 2.0},
        [], EntityFacts(3.0, networks, ("A" * 300, "B")), sub=sub,
    )  # fmt: skip
    assert "\n" not in line and "\x1b" not in line and line.isprintable()
    assert line.startswith("token of eve\\n\\x1b[31mroot")
    assert "and 197 more networks" in line
    assert len(line) <= MAX_SUMMARY


def test_the_tracker_gathers_facts_only_for_the_alerts_it_publishes() -> None:
    tracker = AlertTracker("m1", window_s=300)
    asked: list[float] = []

    def finding(ts: float, severity: str = "medium") -> Finding:
        return Finding("jti", "tok-1", ts, ts - 300, ts, 0.8, severity, {"events": L(7)}, [], sub="alice")

    def facts_at(ts: float) -> Callable[[], EntityFacts]:
        def facts() -> EntityFacts:
            asked.append(ts)
            return EntityFacts(ts - 1_790_000_000.0, ("10.1.0.0/16",))

        return facts

    first = tracker.observe(finding(1_790_000_010.0), facts_at(1_790_000_010.0))
    assert tracker.observe(finding(1_790_000_020.0), facts_at(1_790_000_020.0)) is None  # nothing new: no facts
    escalated = tracker.observe(finding(1_790_000_030.0, "high"), facts_at(1_790_000_030.0))
    assert asked == [1_790_000_010.0, 1_790_000_030.0]
    assert first is not None and first.summary == "token of alice used from 10.1.0.0/16 within 10 s, 7 times"
    assert escalated is not None and escalated.summary == "token of alice used from 10.1.0.0/16 within 30 s, 7 times"
    assert escalated.alert_id == first.alert_id
