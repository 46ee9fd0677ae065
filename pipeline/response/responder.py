"""Carrying out the policy's decisions: revoke, publish the revocation, mark the alert, warn of storms."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

from pipeline.bus import ALERTS, REVOCATIONS, Bus
from pipeline.events import Alert, AlertVerdict, parse_ts
from pipeline.response.policy import AutoRevoker, Decision
from pipeline.revocations.feed import FeedSigner
from pipeline.revocations.store import DEFAULT_MAX_TOKEN_LIFETIME_S, new_revocation

log = logging.getLogger(__name__)


class Responder:
    """``respond(alert) -> alert`` for the streaming runner: the alert comes back with its action set.

    Thread-safe: the runner responds to alerts on its thread while analysts' verdicts are revoked on the verdict
    follower's (``pipeline.response.verdicts``); one lock keeps the policy's circuit breaker and the counts whole.
    """

    def __init__(
        self,
        revoker: AutoRevoker,
        bus: Bus,
        *,
        issuer: str,
        max_token_lifetime_s: int = DEFAULT_MAX_TOKEN_LIFETIME_S,
        signer: FeedSigner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer
        self.revoker = revoker
        self.max_token_lifetime_s = max_token_lifetime_s
        self.bus = bus
        self.issuer = issuer
        self.clock = clock
        self._done: dict[tuple[str, str], str] = {}  # (kind, value) -> revocation_id, for re-issued alerts
        self._lock = threading.Lock()
        self.revoked = 0
        self.suppressed = 0

    def __call__(self, alert: Alert) -> Alert:
        with self._lock:
            return self._respond(alert)

    def _respond(self, alert: Alert) -> Alert:
        decision = self.revoker.decide(alert, self.clock())
        if decision.action == "none":
            return alert
        assert decision.kind is not None and decision.value is not None
        key = (decision.kind, decision.value)
        if decision.action == "revocation_suppressed":
            self.suppressed += 1
            log.warning("alert %s: revocation of %s %s suppressed: %s", alert.alert_id, *key, decision.why)
            if decision.storm:
                self._storm(alert, decision.why)
            return replace(alert, action="revocation_suppressed")
        if key in self._done:  # the same attack escalated: its token or subject is already revoked
            return replace(alert, action="revoked", revocation_id=self._done[key])
        record = new_revocation(
            kind=decision.kind,
            iss=self.issuer,
            value=decision.value,
            reason=f"auto: {alert.severity} alert {alert.alert_id}",
            source="auto",
            alert_id=alert.alert_id,
            max_token_lifetime_s=self.max_token_lifetime_s,
            now=self.clock(),
        )
        # Every validator follows the revocation feed (pipeline.revocations.follower) and enforces it.
        self.bus.publish(REVOCATIONS, record.bus_key, self.signer.sign(record) if self.signer else record.to_json())
        if len(self._done) > 100_000:
            self._done.clear()
        self._done[key] = record.revocation_id
        self.revoked += 1
        log.warning("alert %s: revoked %s %s (%s)", alert.alert_id, *key, record.revocation_id)
        return replace(alert, action="revoked", revocation_id=record.revocation_id)

    def revoke_for_verdict(self, verdict: AlertVerdict) -> Decision:
        """An analyst's ``compromised`` verdict: revoke the alert's subject (a subject alert) or token (a token
        alert; an IP alert's token, else its subject, when the alert named one), through the policy's guardrails.

        The revocation is ``source: manual`` (a person decided) and names the alert. Nothing to revoke (an IP
        alert naming no token or subject) is a ``none`` decision."""
        with self._lock:
            return self._revoke_for_verdict(verdict)

    def _revoke_for_verdict(self, verdict: AlertVerdict) -> Decision:
        kind: Literal["jti", "sub"]
        if verdict.entity_type == "jti":
            kind, value = "jti", verdict.entity
        elif verdict.entity_type == "sub":
            kind, value = "sub", verdict.entity
        elif verdict.jti:
            kind, value = "jti", verdict.jti
        elif verdict.sub:
            kind, value = "sub", verdict.sub
        else:
            log.warning("verdict %s: alert %s names no token or subject to revoke", verdict.verdict_id,
                        verdict.alert_id)  # fmt: skip
            return Decision("none", "nothing to revoke (the alert names no token or subject)")
        decision = self.revoker.decide_manual(kind, value, self.clock(), sub=verdict.sub, ip=verdict.ip)
        if decision.action != "revoked":
            self.suppressed += 1
            log.warning("verdict %s: revocation of %s %s suppressed: %s", verdict.verdict_id, kind, value, decision.why)
            return decision
        revoked_at = parse_ts(verdict.ts).timestamp()
        record = new_revocation(
            kind=kind,
            iss=self.issuer,
            value=value,
            reason=f"manual: analyst verdict compromised on alert {verdict.alert_id}",
            source="manual",
            alert_id=verdict.alert_id,
            revoked_before=revoked_at if kind == "sub" else None,
            max_token_lifetime_s=self.max_token_lifetime_s,
            now=self.clock(),
        )
        self.bus.publish(REVOCATIONS, record.bus_key, self.signer.sign(record) if self.signer else record.to_json())
        self.revoked += 1
        log.warning("verdict %s: revoked %s %s (%s)", verdict.verdict_id, kind, value, record.revocation_id)
        return decision

    def _storm(self, alert: Alert, why: str) -> None:
        storm = replace(
            alert,
            alert_id=f"storm-{alert.alert_id}",
            type="revocation.storm",
            severity="critical",
            reasons=[{"rule": "revocation_storm", "text": why}],
            action="none",
            revocation_id=None,
        )
        self.bus.publish(ALERTS, storm.alert_id, storm.to_json())
