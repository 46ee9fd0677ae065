"""The auto-revocation guardrails: off by default, severity floor, allowlists, circuit breaker, dry run."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.events import Alert
from pipeline.response.policy import AutoRevoker, ResponsePolicy

NOW = 1_790_000_000.0
ALERT = Alert(
    alert_id="a-1", ts="2026-09-21T14:00:00.000Z", entity_type="jti", entity="tok-1", sub="alice", jti="tok-1",
    ip="203.0.113.9", window_start="2026-09-21T13:55:00.000Z", window_end="2026-09-21T14:00:00.000Z", score=0.9,
    severity="high", model_version="m",
)  # fmt: skip
ON = ResponsePolicy(enabled=True)


def test_off_by_default() -> None:
    assert AutoRevoker(ResponsePolicy()).decide(ALERT, NOW).action == "none"


@pytest.mark.parametrize(("severity", "action"), [("low", "none"), ("medium", "none"), ("high", "revoked")])
def test_severity_floor(severity: str, action: str) -> None:
    assert AutoRevoker(ON).decide(replace(ALERT, severity=severity), NOW).action == action


def test_the_token_by_default_the_subject_when_critical() -> None:
    high = AutoRevoker(ON).decide(ALERT, NOW)
    assert (high.kind, high.value) == ("jti", "tok-1")
    critical = AutoRevoker(ON).decide(replace(ALERT, severity="critical"), NOW)
    assert (critical.action, critical.kind, critical.value) == ("revoked", "sub", "alice")


def test_nothing_to_revoke_for_an_ip_alert() -> None:
    ip_alert = replace(ALERT, entity_type="ip", entity="203.0.113.9", jti=None, sub=None)
    assert AutoRevoker(ON).decide(ip_alert, NOW).action == "none"


@pytest.mark.parametrize(
    ("policy", "client"),
    [
        (ResponsePolicy.from_options(enabled=True, allow_subjects="ops, alice"), None),
        (ResponsePolicy.from_options(enabled=True, allow_clients="monitoring"), "monitoring"),
        (ResponsePolicy.from_options(enabled=True, allow_cidrs="203.0.113.0/24"), None),
    ],
    ids=["subject", "client", "cidr"],
)
def test_allowlists_suppress(policy: ResponsePolicy, client: str | None) -> None:
    decision = AutoRevoker(policy).decide(ALERT, NOW, client_id=client)
    assert decision.action == "revocation_suppressed"
    assert "allowlisted" in decision.why


def test_circuit_breaker_opens_and_raises_one_storm_then_closes() -> None:
    revoker = AutoRevoker(ResponsePolicy(enabled=True, max_per_minute=3))
    actions = [revoker.decide(replace(ALERT, jti=f"t{i}"), NOW + i) for i in range(6)]
    assert [a.action for a in actions] == ["revoked"] * 3 + ["revocation_suppressed"] * 3
    assert [a.storm for a in actions] == [False, False, False, True, False, False]
    # A minute after the first revocations the breaker lets revocations through again.
    assert revoker.decide(replace(ALERT, jti="later"), NOW + 61).action == "revoked"


def test_dry_run_revokes_nothing_but_says_what_it_would_do() -> None:
    decision = AutoRevoker(ResponsePolicy(enabled=True, dry_run=True)).decide(ALERT, NOW)
    assert decision.action == "revocation_suppressed"
    assert decision.why == "dry run: would revoke jti tok-1"


def test_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        ResponsePolicy(enabled=True, min_severity="urgent")
    with pytest.raises(ValueError):
        ResponsePolicy.from_options(enabled=True, allow_cidrs="not-a-network")
