"""An alert published again must be the same alert escalated, never a duplicate — checked on a topic's alerts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from pipeline.events import SEVERITIES, Alert

#: Severity by rank: higher is worse.
RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


def rules_of(alert: Alert) -> set[str]:
    """The detection rules among an alert's reasons."""
    return {reason["rule"] for reason in alert.reasons if "rule" in reason}


def escalates(alert: Alert, severity: str, rules: set[str]) -> bool:
    """What AlertTracker re-issues an alert for: a strictly higher severity, or a rule not fired before."""
    return RANK[alert.severity] > RANK[severity] or not rules_of(alert) <= rules


def assert_only_escalations(alerts: Iterable[Alert], who: str) -> set[str]:
    """An alert id published again (in ``alerts``' order) is the same alert escalated, never a duplicate.
    Returns the alert ids."""
    by_id: dict[str, list[Alert]] = defaultdict(list)
    for alert in alerts:
        by_id[alert.alert_id].append(alert)
    for alert_id, versions in by_id.items():
        first = versions[0]
        identity = (first.entity_type, first.entity, first.ts, first.model_version)
        severity, rules = first.severity, rules_of(first)
        for alert in versions[1:]:
            assert (alert.entity_type, alert.entity, alert.ts, alert.model_version) == identity, who
            assert escalates(alert, severity, rules), (
                f"{who}: alert {alert_id} ({alert.entity_type} {alert.entity}) published again at "
                f"{alert.severity} {sorted(rules_of(alert))} after {severity} {sorted(rules)}: a duplicate"
            )
            severity = max(severity, alert.severity, key=RANK.__getitem__)
            rules |= rules_of(alert)
    return set(by_id)
