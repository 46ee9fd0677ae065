"""Benign verdicts as suppressions — pure: plain values in, a yes or no out.

An analyst who judges an alert ``benign`` says: *this* behaviour of *this* entity is normal. The behaviour is the
alert's **pattern**: the set of rules that fired in it (empty when the forest alone raised it) and its severity.
Until the verdict's ``suppress_until``, a later finding for the same entity (same ``entity_type`` and ``entity``)
is suppressed when

* its rules are a subset of the judged alert's rules (a forest-only finding has none, so it is covered by any
  benign verdict on that entity), and
* its severity is at most the judged alert's severity.

So a new rule, a more severe finding, another entity, or the same pattern after ``suppress_until`` alerts again.
Times are compared as given: the pipeline passes a finding's event time, the verdict's ``suppress_until`` is
the wall-clock time the verdict was recorded plus ``suppress_for`` (a live stream's event time runs with the
wall clock).

A later verdict on the same alert replaces the earlier one (``compromised`` lifts its suppression).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.events import SEVERITIES, SEVERITY_RANK

#: At most this many suppressions are kept (expired ones go first); verdicts are made by people, so this is
#: far above what a deployment needs, and a flood of verdicts cannot grow memory without bound.
MAX_SUPPRESSIONS = 100_000


@dataclass(frozen=True, slots=True)
class Suppression:
    alert_id: str
    rules: frozenset[str]
    severity_rank: int
    until: float


class Suppressions:
    """The live benign verdicts, by entity. Not thread-safe: one owner (the pipeline's thread) uses it."""

    def __init__(self) -> None:
        self._by_entity: dict[tuple[str, str], dict[str, Suppression]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def judge(
        self,
        *,
        alert_id: str,
        verdict: str,
        entity_type: str,
        entity: str,
        rules: Iterable[str],
        severity: str,
        until: float | None,
    ) -> None:
        """Record a verdict on one alert: ``benign`` suppresses its pattern until ``until``; anything else lifts
        what an earlier verdict on the same alert suppressed."""
        key = (entity_type, entity)
        entries = self._by_entity.get(key)
        if entries is not None and entries.pop(alert_id, None) is not None:
            self._count -= 1
            if not entries:
                del self._by_entity[key]
        if verdict != "benign" or until is None:
            return
        if severity not in SEVERITY_RANK:
            raise ValueError(f"severity must be one of {SEVERITIES}")
        if self._count >= MAX_SUPPRESSIONS:
            self._drop_earliest()
        suppression = Suppression(alert_id, frozenset(rules), SEVERITY_RANK[severity], until)
        self._by_entity.setdefault(key, {})[alert_id] = suppression
        self._count += 1

    def covers(self, entity_type: str, entity: str, rules: Iterable[str], severity: str, ts: float) -> bool:
        """Whether a finding (its rules, severity and event time) repeats a pattern judged benign for its entity."""
        entries = self._by_entity.get((entity_type, entity))
        if not entries:
            return False
        pattern = frozenset(rules)
        rank = SEVERITY_RANK[severity]
        return any(ts <= s.until and rank <= s.severity_rank and pattern <= s.rules for s in entries.values())

    def prune(self, now: float) -> int:
        """Forget suppressions that ended before ``now``; returns how many."""
        dropped = 0
        for key in list(self._by_entity):
            entries = self._by_entity[key]
            for alert_id in [a for a, s in entries.items() if s.until < now]:
                del entries[alert_id]
                dropped += 1
            if not entries:
                del self._by_entity[key]
        self._count -= dropped
        return dropped

    def _drop_earliest(self) -> None:
        key, alert_id = min(
            ((key, s.alert_id) for key, entries in self._by_entity.items() for s in entries.values()),
            key=lambda item: self._by_entity[item[0]][item[1]].until,
        )
        entries = self._by_entity[key]
        del entries[alert_id]
        if not entries:
            del self._by_entity[key]
        self._count -= 1


__all__ = ["MAX_SUPPRESSIONS", "Suppression", "Suppressions"]
