"""Scoring detection against labelled traffic: recall per threat, benign entities alerted, time to detect.

An incident counts as detected when an alert names one of its entities — its token ids, its attacker
IPs, or (except for forged-token probing, whose subjects are whatever the forger wrote) its victim
subject — and fired between the incident's start and one window after its end. Time to detect is that
alert's event time minus the incident's first event. Every other alert is a false alert; the benign
share is taken over the tokens and IPs of the traffic that no incident involves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
import pandas as pd

from pipeline.events import Alert, parse_ts
from pipeline.simulate import THREATS, Incident


class ThreatRow(TypedDict):
    """One threat's line of :meth:`Evaluation.rows`."""

    threat: str
    incidents: int
    detected: int
    recall: float
    median_s: float | None
    max_s: float | None


@dataclass
class ThreatResult:
    threat: str
    incidents: int
    detected: int
    times_to_detect: list[float] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.detected / self.incidents if self.incidents else float("nan")


@dataclass
class Evaluation:
    threats: dict[str, ThreatResult]
    benign_tokens: int
    benign_tokens_alerted: int
    benign_ips: int
    benign_ips_alerted: int
    benign_subjects: int
    benign_subjects_alerted: int
    alerts: int
    false_alerts: int
    missed: list[Incident]
    #: Benign look-alikes: kind -> entity type -> (labelled benign entities, of them alerted).
    lookalikes: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    #: stolen_replay and the like, per :attr:`Incident.variant`: variant -> (incidents, detected).
    variants: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def recall(self) -> float:
        total = sum(t.incidents for t in self.threats.values())
        return sum(t.detected for t in self.threats.values()) / total if total else float("nan")

    @property
    def median_time_to_detect(self) -> float:
        times = [s for t in self.threats.values() for s in t.times_to_detect]
        return float(np.median(times)) if times else float("nan")

    def rows(self) -> list[ThreatRow]:
        out: list[ThreatRow] = []
        for threat in self.threats.values():
            times = threat.times_to_detect
            out.append(
                {
                    "threat": threat.threat,
                    "incidents": threat.incidents,
                    "detected": threat.detected,
                    "recall": round(threat.recall, 3),
                    "median_s": round(float(np.median(times)), 1) if times else None,
                    "max_s": round(float(np.max(times)), 1) if times else None,
                }
            )
        return out

    def summary(self) -> dict[str, object]:
        return {
            "recall": round(self.recall, 3),
            "median_time_to_detect_s": round(self.median_time_to_detect, 1),
            "benign_tokens": self.benign_tokens,
            "benign_tokens_alerted": self.benign_tokens_alerted,
            "benign_token_share": self.benign_tokens_alerted / max(self.benign_tokens, 1),
            "benign_ips": self.benign_ips,
            "benign_ips_alerted": self.benign_ips_alerted,
            "benign_ip_share": self.benign_ips_alerted / max(self.benign_ips, 1),
            "benign_subjects": self.benign_subjects,
            "benign_subjects_alerted": self.benign_subjects_alerted,
            "alerts": self.alerts,
            "false_alerts": self.false_alerts,
        }


def _matches(alert: Alert, incident: Incident) -> bool:
    if alert.entity_type == "jti":
        return alert.entity in incident.jtis
    if alert.entity_type == "ip":
        return alert.entity in incident.ips
    return incident.threat != "forged_probing" and alert.entity in incident.subs


def evaluate(
    alerts: Sequence[Alert],
    events: pd.DataFrame,
    incidents: Sequence[Incident],
    window_s: float,
    lookalikes: pd.DataFrame | None = None,
) -> Evaluation:
    """``lookalikes`` (``Simulation.lookalikes``: kind, entity_type, entity) adds the false-alert rate per
    benign look-alike kind; an entity an incident involves is not benign and is left out."""
    fired = [(alert, parse_ts(alert.ts).timestamp()) for alert in alerts]
    results = {t: ThreatResult(t, 0, 0) for t in THREATS if any(i.threat == t for i in incidents)}
    involved_jtis: set[str] = set()
    involved_ips: set[str] = set()
    involved_subs: set[str] = set()
    true_alerts: set[str] = set()
    missed = []
    variants: dict[str, list[int]] = {}
    for incident in incidents:
        involved_jtis.update(incident.jtis)
        involved_ips.update(incident.ips)
        if incident.threat != "forged_probing":
            involved_subs.update(incident.subs)
        result = results[incident.threat]
        result.incidents += 1
        hits = [
            (ts, alert)
            for alert, ts in fired
            if _matches(alert, incident) and incident.start - 1 <= ts <= incident.end + window_s
        ]
        for _, alert in hits:
            true_alerts.add(alert.alert_id)
        if incident.variant:
            tally = variants.setdefault(f"{incident.threat}: {incident.variant}", [0, 0])
            tally[0] += 1
            tally[1] += bool(hits)
        if hits:
            result.detected += 1
            result.times_to_detect.append(max(0.0, min(ts for ts, _ in hits) - incident.start))
        else:
            missed.append(incident)
    jtis = set(events["jti"].dropna().unique()) - involved_jtis
    ips = set(events["ip"].dropna().unique()) - involved_ips
    subs = set(events.loc[events["reason"].isna(), "sub"].dropna().unique()) - involved_subs
    alerted = {t: {a.entity for a in alerts if a.entity_type == t} for t in ("jti", "sub", "ip")}
    involved = {"jti": involved_jtis, "sub": involved_subs, "ip": involved_ips}
    return Evaluation(
        threats=results,
        benign_tokens=len(jtis),
        benign_tokens_alerted=len({a.entity for a in alerts if a.entity_type == "jti" and a.entity in jtis}),
        benign_ips=len(ips),
        benign_ips_alerted=len({a.entity for a in alerts if a.entity_type == "ip" and a.entity in ips}),
        benign_subjects=len(subs),
        benign_subjects_alerted=len({a.entity for a in alerts if a.entity_type == "sub" and a.entity in subs}),
        alerts=len(alerts),
        false_alerts=sum(1 for a in alerts if a.alert_id not in true_alerts),
        missed=missed,
        lookalikes=lookalike_rates(lookalikes, alerted, involved) if lookalikes is not None else {},
        variants={k: (v[0], v[1]) for k, v in sorted(variants.items())},
    )


def lookalike_rates(
    lookalikes: pd.DataFrame, alerted: dict[str, set[str]], involved: dict[str, set[str]]
) -> dict[str, dict[str, tuple[int, int]]]:
    """Per look-alike kind and entity type: (benign labelled entities, how many of them were alerted)."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for (kind, entity_type), group in lookalikes.groupby(["kind", "entity_type"], sort=True):
        benign = set(group["entity"]) - involved.get(str(entity_type), set())
        hit = len(benign & alerted.get(str(entity_type), set()))
        out.setdefault(str(kind), {})[str(entity_type)] = (len(benign), hit)
    return out


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default): unlike the normal approximation it
    stays inside 0..1 and is not zero-width at 0 of n — what a false-alert rate of 0 of 300 needs."""
    if trials <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in 0..trials, got {successes} of {trials}")
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * ((p * (1 - p) / trials + z2 / (4 * trials * trials)) ** 0.5) / (1 + z2 / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(successes: int, trials: int) -> dict[str, object]:
    """A proportion with its counts and Wilson 95 % interval, as reported."""
    lo, hi = wilson_interval(successes, trials)
    return {
        "count": successes,
        "of": trials,
        "rate": successes / trials if trials else None,
        "ci95": [round(lo, 6), round(hi, 6)],
    }


def across_worlds(evaluations: Sequence[Evaluation]) -> dict[str, object]:
    """Figures over several worlds: per threat the median and *worst* world recall (and the pooled one), the
    false-alert rate per entity type and per look-alike kind pooled over worlds with Wilson intervals (and
    the worst world's), the median time to detect over every detected incident."""
    threats: dict[str, object] = {}
    for name in THREATS:
        per_world = [e.threats[name] for e in evaluations if name in e.threats and e.threats[name].incidents]
        if not per_world:
            continue
        recalls = [t.recall for t in per_world]
        times = [s for t in per_world for s in t.times_to_detect]
        incidents = sum(t.incidents for t in per_world)
        detected = sum(t.detected for t in per_world)
        threats[name] = {
            "incidents": incidents,
            "detected": detected,
            "recall": rate(detected, incidents),
            "median_world_recall": float(np.median(recalls)),
            "worst_world_recall": float(min(recalls)),
            "median_s_to_detect": float(np.median(times)) if times else None,
        }
    world_recalls = [e.recall for e in evaluations if not np.isnan(e.recall)]
    incidents = sum(t.incidents for e in evaluations for t in e.threats.values())
    detected = sum(t.detected for e in evaluations for t in e.threats.values())
    entities: dict[str, object] = {}
    for label, total, hit in (
        ("tokens", "benign_tokens", "benign_tokens_alerted"),
        ("ips", "benign_ips", "benign_ips_alerted"),
        ("subjects", "benign_subjects", "benign_subjects_alerted"),
    ):
        n = sum(getattr(e, total) for e in evaluations)
        k = sum(getattr(e, hit) for e in evaluations)
        shares = [getattr(e, hit) / getattr(e, total) for e in evaluations if getattr(e, total)]
        entities[label] = {**rate(k, n), "worst_world_rate": max(shares) if shares else None}
    lookalikes: dict[str, dict[str, list[int]]] = {}
    for e in evaluations:
        for kind, by_type in e.lookalikes.items():
            for entity_type, (n, k) in by_type.items():
                tally = lookalikes.setdefault(kind, {}).setdefault(entity_type, [0, 0])
                tally[0] += n
                tally[1] += k
    variants: dict[str, list[int]] = {}
    for e in evaluations:
        for name, (n, k) in e.variants.items():
            tally = variants.setdefault(name, [0, 0])
            tally[0] += n
            tally[1] += k
    times = [s for e in evaluations for t in e.threats.values() for s in t.times_to_detect]
    return {
        "worlds": len(evaluations),
        "recall": rate(detected, incidents),
        "median_world_recall": float(np.median(world_recalls)) if world_recalls else None,
        "worst_world_recall": float(min(world_recalls)) if world_recalls else None,
        "median_time_to_detect_s": float(np.median(times)) if times else None,
        "threats": threats,
        "benign_alerted": entities,
        "lookalikes": {
            kind: {t: rate(v[1], v[0]) for t, v in sorted(by_type.items())}
            for kind, by_type in sorted(lookalikes.items())
        },
        "variants": {name: rate(v[1], v[0]) for name, v in sorted(variants.items())},
    }
