"""Deterministic rules beside the forest, for signals that need no model. Pure.

Each rule reads the same feature row the forest scores, so an alert can say which fired. They are
deliberately conservative: every threshold sits well past anything ordinary traffic does (see
docs/detection.md for the benign behaviours they were checked against).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pipeline.features import FEATURES

FORGED_PROBING_MIN = 10  # forged or malformed tokens from one IP in a window
STALE_REPLAY_MIN = 5  # expired/revoked/replayed uses of one token in a window (a lazy client shows 1)
FANOUT_MIN_PREFIX24 = 8  # one token from this many /24 networks in a window (phones hop 2-5 addresses)
RATE_ABUSE_FACTOR = 20.0  # a token used this many times more than its client's tokens usually are
RATE_ABUSE_MIN_EVENTS = 600  # ... and at least this many uses in the window (2 per second)

#: The least severity an alert gets when a rule fires. ``parallel_sessions`` has a benign look-alike (one
#: user's app open on two devices on two networks at once), so by default it alerts without reaching the
#: auto-revocation policy's ``high``.
_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}
RULE_MIN_SEVERITY = {"parallel_sessions": "medium"}


def rule_severity(rules: Sequence[str], severity: str | None) -> str | None:
    """The forest's severity raised to what the fired rules ask for (rules never lower it)."""
    floor = max((RULE_MIN_SEVERITY.get(rule, "high") for rule in rules), key=_RANK.__getitem__, default=None)
    if floor is None:
        return severity
    if severity is None or _RANK[severity] < _RANK[floor]:
        return floor
    return severity


_INDEX = {entity_type: {name: i for i, name in enumerate(names)} for entity_type, names in FEATURES.items()}


def fired_rules(entity_type: str, row: Sequence[float]) -> list[str]:
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
    if row[at["distinct_ua_families"]] >= 2 and row[at["distinct_prefix16"]] >= 2:
        rules.append("token_changed_client_and_network")
    if row[at["distinct_prefix24"]] >= FANOUT_MIN_PREFIX24:
        rules.append("token_fanout")
    if row[at["rate_vs_client"]] >= RATE_ABUSE_FACTOR and math.expm1(row[at["events"]]) >= RATE_ABUSE_MIN_EVENTS - 0.5:
        rules.append("rate_abuse")
    return rules
