"""Alert creation and de-duplication — pure, no I/O.

One ongoing attack raises one alert per entity: an *episode* opens when an entity first scores above
its threshold (or a rule fires) and stays open while it keeps doing so, closing after ``quiet_s`` of
event time without. Within an episode the alert is re-issued — same ``alert_id`` — only when its
severity rises or another rule fires, so subscribers see it updated rather than repeated.

``alert_id`` is a UUIDv5 of entity type, entity, the window the episode opened in, and the model
version: replaying the same events (``jwtwatch detect``, or a pipeline rebuilding its windows after a
restart) yields the same ids, so nothing fires twice downstream.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.events import SEVERITY_RANK, Alert, format_ts
from pipeline.response.summary import EntityFacts, summarize

ALERT_NAMESPACE = uuid.UUID("4f1c8a52-6a1e-4a37-9f0e-1d2b7c6e9a10")


def alert_id(entity_type: str, entity: str, window_start: float, model_version: str) -> str:
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{entity_type}\x1f{entity}\x1f{int(window_start)}\x1f{model_version}"))


@dataclass(slots=True)
class Episode:
    alert_id: str
    opened_ts: float
    window_start: float
    last_ts: float
    severity: str
    score: float
    rules: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Finding:
    """One anomalous score (or rule hit) for one entity at one event time."""

    entity_type: str
    entity: str
    ts: float
    window_start: float
    window_end: float
    score: float
    severity: str
    features: Mapping[str, float]
    reasons: Sequence[Mapping[str, Any]]
    rules: tuple[str, ...] = ()
    sub: str | None = None
    jti: str | None = None
    ip: str | None = None


class AlertTracker:
    def __init__(
        self, model_version: str, *, window_s: int, quiet_s: float | None = None, network_source: str | None = None
    ) -> None:
        """``network_source``: how the engine identified networks (``prefix`` or an IP database), said in each
        alert so a reader knows what its network labels rest on."""
        self.model_version = model_version
        self.network_source = network_source
        self.window_s = window_s
        self.quiet_s = float(window_s if quiet_s is None else quiet_s)
        self.open: dict[tuple[str, str], Episode] = {}
        self.raised = 0
        self.updated = 0

    def observe(self, finding: Finding, facts: Callable[[], EntityFacts] | None = None) -> Alert | None:
        """The alert to publish for this finding: a new one, an escalation, or None (already known).

        ``facts`` gathers what the alert's one-line summary says about the entity's window; called only when
        an alert is published, so findings that change nothing cost nothing more.
        """
        key = (finding.entity_type, finding.entity)
        episode = self.open.get(key)
        if episode is not None and finding.ts - episode.last_ts > self.quiet_s:
            episode = None  # the previous episode ended; this is a new attack
        new_rules = set(finding.rules)
        if episode is None:
            # The window grid makes the id independent of which event happened to be scored first.
            start = finding.ts - finding.ts % self.window_s
            episode = Episode(
                alert_id(finding.entity_type, finding.entity, start, self.model_version),
                finding.ts,
                start,
                finding.ts,
                finding.severity,
                finding.score,
                new_rules,
            )
            self.open[key] = episode
            self.raised += 1
            return self._alert(episode, finding, facts)
        episode.last_ts = max(episode.last_ts, finding.ts)
        escalated = SEVERITY_RANK[finding.severity] > SEVERITY_RANK[episode.severity] or not new_rules <= episode.rules
        if not escalated:
            return None
        episode.severity = max(episode.severity, finding.severity, key=SEVERITY_RANK.__getitem__)
        episode.score = max(episode.score, finding.score)
        episode.rules |= new_rules
        self.updated += 1
        return self._alert(episode, finding, facts)

    def close_quiet(self, now: float) -> int:
        """Forget episodes quiet for longer than ``quiet_s`` (bounded state)."""
        done = [key for key, ep in self.open.items() if now - ep.last_ts > self.quiet_s]
        for key in done:
            del self.open[key]
        return len(done)

    def _alert(self, episode: Episode, finding: Finding, facts: Callable[[], EntityFacts] | None) -> Alert:
        reasons = [dict(reason) for reason in finding.reasons]
        rules = sorted(episode.rules)
        for rule in rules:
            reasons.insert(0, {"rule": rule, "text": f"rule fired: {rule.replace('_', ' ')}"})
        summary = summarize(
            finding.entity_type,
            finding.entity,
            rules,
            finding.features,
            finding.reasons,
            facts() if facts is not None else None,
            sub=finding.sub,
        )
        return Alert(
            alert_id=episode.alert_id,
            ts=format_ts(episode.opened_ts),
            entity_type=finding.entity_type,
            entity=finding.entity,
            sub=finding.sub,
            jti=finding.jti,
            ip=finding.ip,
            window_start=format_ts(finding.window_start),
            window_end=format_ts(finding.window_end),
            score=round(min(max(episode.score, 0.0), 1.0), 4),
            severity=episode.severity,
            features={k: round(float(v), 4) for k, v in finding.features.items()},
            reasons=reasons,
            model_version=self.model_version,
            summary=summary,
            network_source=self.network_source,
        )
