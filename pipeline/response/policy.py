"""The auto-revocation policy and its guardrails — pure: an alert and the time in, a decision out.

Off unless asked for. When on, an alert leads to a revocation only if

* its severity is at least ``min_severity``;
* its subject, client and IP are not allowlisted (a break-glass account, a monitoring client, the office);
* there is something to revoke: the token (``jti``) by default, the whole subject for critical alerts;
* the circuit breaker is closed: at most ``max_per_minute`` revocations in any 60 s. Past that, alerts
  are only alerts (``revocation_suppressed``) and one ``revocation.storm`` alert says why — so a model
  gone wrong cannot log everyone out.

``dry_run`` decides everything the same way but revokes nothing (``revocation_suppressed``, "dry run").

An analyst's ``compromised`` verdict (:meth:`AutoRevoker.decide_manual`) is a person's decision, not the model's:
it revokes whether or not auto-revocation is on and whatever the alert's severity — but behind the same
guardrails (allowlists, circuit breaker shared with automatic revocations, dry run).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from pipeline.events import SEVERITIES, SEVERITY_RANK, Alert
from pipeline.serving.client_ip import Network, parse_networks

Action = Literal["none", "revoked", "revocation_suppressed"]


@dataclass(frozen=True)
class ResponsePolicy:
    enabled: bool = False
    min_severity: str = "high"
    dry_run: bool = False
    allow_subjects: frozenset[str] = frozenset()
    allow_clients: frozenset[str] = frozenset()
    allow_cidrs: tuple[Network, ...] = ()
    max_per_minute: int = 10
    subject_on_critical: bool = True

    def __post_init__(self) -> None:
        if self.min_severity not in SEVERITY_RANK:
            raise ValueError(f"min_severity must be one of {SEVERITIES}")
        if self.max_per_minute < 1:
            raise ValueError("max_per_minute must be at least 1")

    @classmethod
    def from_options(
        cls,
        *,
        enabled: bool,
        min_severity: str = "high",
        dry_run: bool = False,
        allow_subjects: str | None = None,
        allow_clients: str | None = None,
        allow_cidrs: str | None = None,
        max_per_minute: int = 10,
    ) -> ResponsePolicy:
        def split(text: str | None) -> frozenset[str]:
            return frozenset(p.strip() for p in (text or "").split(",") if p.strip())

        return cls(
            enabled=enabled,
            min_severity=min_severity,
            dry_run=dry_run,
            allow_subjects=split(allow_subjects),
            allow_clients=split(allow_clients),
            allow_cidrs=parse_networks(allow_cidrs),
            max_per_minute=max_per_minute,
        )


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str
    kind: Literal["jti", "sub"] | None = None
    value: str | None = None
    storm: bool = False  # the breaker just opened: raise one revocation.storm alert


@dataclass
class AutoRevoker:
    policy: ResponsePolicy
    _recent: deque[float] = field(default_factory=deque)
    _storm_until: float = float("-inf")

    def decide(self, alert: Alert, now: float, client_id: str | None = None) -> Decision:
        policy = self.policy
        if not policy.enabled:
            return Decision("none", "auto-revocation is off")
        if SEVERITY_RANK[alert.severity] < SEVERITY_RANK[policy.min_severity]:
            return Decision("none", f"severity {alert.severity} below {policy.min_severity}")
        kind: Literal["jti", "sub"]
        if alert.severity == "critical" and policy.subject_on_critical and alert.sub:
            kind, value = "sub", alert.sub
        elif alert.jti:
            kind, value = "jti", alert.jti
        else:
            return Decision("none", "nothing to revoke (no token or subject)")
        return self._guarded(
            kind,
            value,
            alert.sub,
            alert.ip,
            client_id,
            now,
            f"severity {alert.severity} at or above {policy.min_severity}",
        )

    def decide_manual(
        self,
        kind: Literal["jti", "sub"],
        value: str,
        now: float,
        *,
        sub: str | None = None,
        ip: str | None = None,
        client_id: str | None = None,
    ) -> Decision:
        """An analyst asks to revoke ``kind``/``value``: the guardrails decide, not the on/off switch or severity."""
        return self._guarded(kind, value, sub, ip, client_id, now, "analyst verdict: compromised")

    def _guarded(
        self,
        kind: Literal["jti", "sub"],
        value: str,
        sub: str | None,
        ip: str | None,
        client_id: str | None,
        now: float,
        why: str,
    ) -> Decision:
        policy = self.policy
        if sub and sub in policy.allow_subjects:
            return Decision("revocation_suppressed", f"subject {sub} is allowlisted", kind, value)
        if kind == "sub" and value in policy.allow_subjects:
            return Decision("revocation_suppressed", f"subject {value} is allowlisted", kind, value)
        if client_id and client_id in policy.allow_clients:
            return Decision("revocation_suppressed", f"client {client_id} is allowlisted", kind, value)
        if ip and _in_networks(ip, policy.allow_cidrs):
            return Decision("revocation_suppressed", f"IP {ip} is in an allowlisted network", kind, value)
        while self._recent and self._recent[0] <= now - 60:
            self._recent.popleft()
        if len(self._recent) >= policy.max_per_minute:
            storm = now >= self._storm_until
            if storm:
                self._storm_until = now + 60  # one storm alert per minute of storm
            return Decision(
                "revocation_suppressed",
                f"circuit breaker open: {policy.max_per_minute} revocations in the last minute",
                kind,
                value,
                storm=storm,
            )
        if policy.dry_run:
            return Decision("revocation_suppressed", f"dry run: would revoke {kind} {value}", kind, value)
        self._recent.append(now)
        return Decision("revoked", why, kind, value)


def _in_networks(ip: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)
