"""Deterministic rules beside the forest, for signals that need no model. Pure.

Each rule reads the same feature row the forest scores, so an alert can say which fired. They are
deliberately conservative: every threshold sits well past anything ordinary traffic does (see
docs/detection.md for the benign behaviours they were checked against).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pipeline.events import SEVERITY_RANK
from pipeline.features import FEATURES

FORGED_PROBING_MIN = 10  # forged or malformed tokens from one IP in a window
STALE_REPLAY_MIN = 5  # expired/revoked/replayed uses of one token in a window (a lazy client shows 1)
FANOUT_MIN_PREFIX24 = 8  # one token from this many /24 networks in a window (phones hop 2-5 addresses)
RATE_ABUSE_FACTOR = 20.0  # a token used this many times more than its client's tokens usually are
RATE_ABUSE_MIN_EVENTS = 600  # ... and at least this many uses in the window (2 per second)
#: Returns to a network within seconds of leaving it (``network_returns``): two full round trips. A handover
#: makes none, a phone flipping between Wi-Fi and its carrier stays a minute or more on each (none either).
CONCURRENT_MIN_RETURNS = 4

#: The least severity an alert gets when a rule fires. ``parallel_sessions`` has a benign look-alike (one
#: user's app open on two devices on two networks at once), so by default it alerts without reaching the
#: auto-revocation policy's ``high``.
RULE_MIN_SEVERITY = {"parallel_sessions": "medium"}


def rule_severity(rules: Sequence[str], severity: str | None) -> str | None:
    """The forest's severity raised to what the fired rules ask for (rules never lower it)."""
    floor = max((RULE_MIN_SEVERITY.get(rule, "high") for rule in rules), key=SEVERITY_RANK.__getitem__, default=None)
    if floor is None:
        return severity
    if severity is None or SEVERITY_RANK[severity] < SEVERITY_RANK[floor]:
        return floor
    return severity


_INDEX = {entity_type: {name: i for i, name in enumerate(names)} for entity_type, names in FEATURES.items()}


def fired_rules(
    entity_type: str, row: Sequence[float], *, networks_identified: bool = False, machine: bool = False
) -> list[str]:
    """The rules ``row`` fires. ``networks_identified``: networks are autonomous systems from an IP database.
    Without one they are /16 prefixes, which benign clients cross back and forth within seconds (a carrier's
    CGNAT pools, an office's egress pool, a dual-stack home's IPv4 and IPv6): ``token_concurrent_networks``
    then does not fire (measured: it alerted on 1 % of benign tokens even when one prefix had to be new for
    the subject). With one, it fires only when one of the networks is new for the token's subject: a split-tunnel
    VPN is two networks at once too, both of them the user's own. ``machine``: a client-credentials token (its
    subject is its client, RFC 9068 §2.2), which a service's replicas in two clouds use at once by design."""
    at = _INDEX[entity_type]
    if entity_type == "ip":
        forged = math.expm1(row[at["forged_per_subject"]]) * max(row[at["distinct_subjects"]], 1.0)
        if forged >= FORGED_PROBING_MIN - 0.5:
            return ["forged_probing"]
        return []
    if entity_type == "sub":
        return ["parallel_sessions"] if row[at["parallel_sessions"]] >= 2 else []
    rules = []
    if math.expm1(row[at["stale_rejections"]]) >= STALE_REPLAY_MIN - 0.5:
        rules.append("stale_token_replay")
    if row[at["distinct_ua_families"]] >= 2 and row[at["distinct_networks"]] >= 2:
        rules.append("token_changed_client_and_network")
    if (
        networks_identified
        and not machine
        and math.expm1(row[at["network_returns"]]) >= CONCURRENT_MIN_RETURNS - 0.5
        and row[at["novel_network_share"]] > 0
    ):
        rules.append("token_concurrent_networks")
    if row[at["distinct_prefix24"]] >= FANOUT_MIN_PREFIX24:
        rules.append("token_fanout")
    if row[at["rate_vs_client"]] >= RATE_ABUSE_FACTOR and math.expm1(row[at["events"]]) >= RATE_ABUSE_MIN_EVENTS - 0.5:
        rules.append("rate_abuse")
    return rules
