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

import numpy as np
import pandas as pd

from pipeline.events import Alert, parse_ts
from pipeline.simulate import THREATS, Incident


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

    @property
    def recall(self) -> float:
        total = sum(t.incidents for t in self.threats.values())
        return sum(t.detected for t in self.threats.values()) / total if total else float("nan")

    @property
    def median_time_to_detect(self) -> float:
        times = [s for t in self.threats.values() for s in t.times_to_detect]
        return float(np.median(times)) if times else float("nan")

    def rows(self) -> list[dict[str, object]]:
        out = []
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
    alerts: Sequence[Alert], events: pd.DataFrame, incidents: Sequence[Incident], window_s: float
) -> Evaluation:
    fired = [(alert, parse_ts(alert.ts).timestamp()) for alert in alerts]
    results = {t: ThreatResult(t, 0, 0) for t in THREATS if any(i.threat == t for i in incidents)}
    involved_jtis: set[str] = set()
    involved_ips: set[str] = set()
    involved_subs: set[str] = set()
    true_alerts: set[str] = set()
    missed = []
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
        if hits:
            result.detected += 1
            result.times_to_detect.append(max(0.0, min(ts for ts, _ in hits) - incident.start))
        else:
            missed.append(incident)
    jtis = set(events["jti"].dropna().unique()) - involved_jtis
    ips = set(events["ip"].dropna().unique()) - involved_ips
    subs = set(events.loc[events["reason"].isna(), "sub"].dropna().unique()) - involved_subs
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
    )
