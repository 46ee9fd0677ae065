"""The demo's report: figures from the archive and the run, a summary table, PNG plots and ``index.html``.

Everything is computed from what the loop produced — the validator's usage events and the pipeline's
scores and alerts as archived, the webhooks the receiver verified — against the simulation's labels,
which never left the demo (the pipeline never sees them).
"""

from __future__ import annotations

import html
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.archive import read_archive
from pipeline.demo.run import DemoRun
from pipeline.detection.evaluate import Evaluation, evaluate
from pipeline.events import Alert, parse_ts

#: Threats whose attacker holds a real, valid token: auto-revocation should shut them out.
STOLEN_TOKEN_THREATS = ("stolen_replay", "token_sharing", "rate_abuse", "low_and_slow")
PLOTS = {
    "traffic.png": "Traffic and alerts over event time",
    "scores.png": "Score distributions per entity type, with the alert threshold",
    "detection.png": "Detection per threat",
    "reasons.png": "Top alert reasons",
}


@dataclass
class StolenToken:
    incident_id: str
    threat: str
    detected_after_s: float | None
    revoked: str | None  # "jti" / "sub" when an alert revoked it
    attacker_rejected_after: int  # the attacker's later uses refused as `revoked`
    attacker_uses_before: int


@dataclass
class Summary:
    events: int
    accepted: int
    rejected: int
    reasons: dict[str, int]
    evaluation: Evaluation
    alerts: int
    alerts_by_severity: dict[str, int]
    revocations_auto: int
    revocations_suppressed: int
    logouts: int
    stolen: list[StolenToken]
    webhooks_verified: int
    webhooks_refused: int
    webhook_types: dict[str, int]
    delivery_latency_ms: list[float] = field(default_factory=list)

    @property
    def stolen_caught(self) -> int:
        """Stolen tokens detected, revoked, and then refused to their attacker."""
        return sum(1 for s in self.stolen if s.revoked and s.attacker_rejected_after > 0)

    def to_dict(self, run: DemoRun) -> dict[str, Any]:
        ev = self.evaluation
        latency = self.delivery_latency_ms
        return {
            "events": self.events,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejection_reasons": self.reasons,
            "alerts": self.alerts,
            "alerts_by_severity": self.alerts_by_severity,
            "threats": ev.rows(),
            "recall": round(ev.recall, 3),
            "median_time_to_detect_s": None
            if np.isnan(ev.median_time_to_detect)
            else round(ev.median_time_to_detect, 1),
            "false_alerts": ev.false_alerts,
            "benign_entities_alerted": {
                "tokens": f"{ev.benign_tokens_alerted}/{ev.benign_tokens}",
                "ips": f"{ev.benign_ips_alerted}/{ev.benign_ips}",
                "subjects": f"{ev.benign_subjects_alerted}/{ev.benign_subjects}",
            },
            "revocations": {
                "auto": self.revocations_auto,
                "suppressed": self.revocations_suppressed,
                "logouts": self.logouts,
            },
            "stolen_tokens": [s.__dict__ for s in self.stolen],
            "stolen_tokens_caught": self.stolen_caught,
            "attacker_requests_refused_after_revocation": run.traffic.blocked["attacker"],
            "owner_requests_refused_after_revocation": run.traffic.blocked["owner"],
            "webhooks": {
                "verified": self.webhooks_verified,
                "refused": self.webhooks_refused,
                "by_type": self.webhook_types,
                "median_delivery_latency_ms": round(float(np.median(latency)), 1) if latency else None,
            },
            "model_version": run.model_version,
            "simulation": {"minutes": run.sim.params.minutes, "seed": run.sim.params.seed, "speed": run.options.speed},
            "wall_s": round(run.wall_s, 1),
            "traffic_wall_s": round(run.traffic_wall_s, 1),
            "drained": run.drained,
        }


def summarise(run: DemoRun, events: pd.DataFrame) -> Summary:
    sim = run.sim
    evaluation = evaluate(run.alerts, sim.events, sim.incidents, window_s=300.0)
    rejected = events[events["outcome"] == "rejected"]
    receiver = run.receiver
    return Summary(
        events=len(events),
        accepted=int((events["outcome"] == "accepted").sum()),
        rejected=len(rejected),
        reasons={str(k): int(v) for k, v in rejected["reason"].astype(str).value_counts().items()},
        evaluation=evaluation,
        alerts=len(run.alerts),
        alerts_by_severity=dict(Counter(a.severity for a in run.alerts)),
        revocations_auto=run.revocations_auto,
        revocations_suppressed=run.revocations_suppressed,
        logouts=run.traffic.logouts,
        stolen=_stolen_tokens(run, events),
        webhooks_verified=receiver.verified,
        webhooks_refused=receiver.refused,
        webhook_types=dict(Counter(d.type for d in receiver.deliveries)),
        delivery_latency_ms=_delivery_latency(run),
    )


def _stolen_tokens(run: DemoRun, events: pd.DataFrame) -> list[StolenToken]:
    ts = pd.to_datetime(events["ts"], utc=True)
    epoch = (ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    out = []
    for incident in run.sim.incidents:
        if incident.threat not in STOLEN_TOKEN_THREATS:
            continue
        jtis, subs, ips = set(incident.jtis), set(incident.subs), set(incident.ips)
        hits = [
            a for a in run.alerts if a.jti in jtis or a.entity in jtis or (a.entity_type == "sub" and a.entity in subs)
        ]
        hits = [a for a in hits if parse_ts(a.ts).timestamp() >= incident.start - 1]
        detected = min((parse_ts(a.ts).timestamp() for a in hits), default=None)
        revoking = [a for a in hits if a.action == "revoked"]
        revoked_at = min((parse_ts(a.ts).timestamp() for a in revoking), default=None)
        kind = None
        if revoking:
            first = min(revoking, key=lambda a: a.ts)
            kind = "sub" if first.severity == "critical" and first.sub else "jti"
        attacker = events["ip"].isin(ips) & events["jti"].isin(jtis)
        after = attacker & (events["reason"] == "revoked")
        if revoked_at is not None:
            after &= epoch >= revoked_at
        out.append(
            StolenToken(
                incident_id=incident.incident_id,
                threat=incident.threat,
                detected_after_s=None if detected is None else round(max(0.0, detected - incident.start), 1),
                revoked=kind,
                attacker_rejected_after=int(after.sum()) if revoked_at is not None else 0,
                attacker_uses_before=int((attacker & (epoch < (revoked_at or float("inf")))).sum()),
            )
        )
    return out


def _delivery_latency(run: DemoRun) -> list[float]:
    """Wall time from the moment event time reached an alert to its verified webhook at the receiver."""
    out = []
    for delivery in run.receiver.of_type("token.anomaly"):
        ts = delivery.data.get("ts")
        wall = run.clock.wall_at(parse_ts(ts).timestamp()) if isinstance(ts, str) else None
        if wall is not None:
            out.append(max(0.0, (delivery.received_at - wall) * 1000.0))
    return out


# ---------------------------------------------------------------------------------------------- plots


def _plots(run: DemoRun, events: pd.DataFrame, scores: pd.DataFrame, summary: Summary, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    severity_colour = {"low": "#4c9be8", "medium": "#f0b400", "high": "#e8590c", "critical": "#c92a2a"}

    # 1. traffic and alerts over time
    fig, ax = plt.subplots(figsize=(11, 4.2))
    ts = pd.to_datetime(events["ts"], utc=True)
    counts = pd.DataFrame({"ts": ts, "outcome": events["outcome"].astype(str)})
    binned = counts.groupby([pd.Grouper(key="ts", freq="10s"), "outcome"]).size().unstack(fill_value=0)
    for outcome, colour in (("accepted", "#2f9e44"), ("rejected", "#e03131")):
        if outcome in binned:
            ax.plot(binned.index, binned[outcome] / 10.0, color=colour, label=f"{outcome} / s", linewidth=1.2)
    for incident in run.sim.incidents:
        # matplotlib plots Timestamps through the date converter pandas registers; its stubs only say float
        ax.axvspan(pd.Timestamp(incident.start, unit="s", tz="UTC"), pd.Timestamp(incident.end, unit="s", tz="UTC"),  # type: ignore[arg-type]
                   color="#adb5bd", alpha=0.12)  # fmt: skip
    top = ax.get_ylim()[1]
    for alert in run.alerts:
        moment = pd.Timestamp(parse_ts(alert.ts))
        marker = "v" if alert.action == "revoked" else "o"
        ax.scatter([moment], [top * 0.95], color=severity_colour[alert.severity], marker=marker, s=40, zorder=3)  # type: ignore[arg-type]
    ax.scatter([], [], color="#495057", marker="v", label="alert + auto-revocation (colour: severity)")
    ax.scatter([], [], color="#495057", marker="o", label="alert only")
    ax.set_ylabel("requests per second (event time)")
    ax.set_title("Traffic through the validator; grey spans: injected attacks")
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out / "traffic.png", dpi=110)
    plt.close(fig)

    # 2. score distributions with the threshold
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=False)
    for ax, entity_type in zip(axes, ("jti", "sub", "ip"), strict=True):
        values = scores.loc[scores["entity_type"] == entity_type, "score"] if not scores.empty else pd.Series([])
        ax.hist(values, bins=40, range=(0, 1), color="#4c6ef5", alpha=0.85)
        ax.set_yscale("log")
        threshold = run.thresholds.get(entity_type)
        if threshold is not None:
            ax.axvline(threshold, color="#e03131", linestyle="--", label=f"threshold {threshold:.3f}")
            ax.legend(fontsize=8)
        ax.set_title(f"{entity_type}: {len(values)} window scores")
        ax.set_xlabel("anomaly score")
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=110)
    plt.close(fig)

    # 3. detection per threat
    rows = summary.evaluation.rows()
    fig, ax = plt.subplots(figsize=(9, 3.8))
    names = [r["threat"] for r in rows]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [r["incidents"] for r in rows], width=0.4, color="#adb5bd", label="injected")
    ax.bar(x + 0.2, [r["detected"] for r in rows], width=0.4, color="#2f9e44", label="detected")
    for i, r in enumerate(rows):
        label = f"median {r['median_s']} s" if r["median_s"] is not None else "missed"
        ax.text(i, max(r["incidents"], r["detected"]) + 0.1, label, ha="center", fontsize=8)
    ax.set_xticks(x, names, rotation=15)
    ax.set_ylabel("incidents")
    ax.set_title("Detection per threat (time to detect in event time)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "detection.png", dpi=110)
    plt.close(fig)

    # 4. top alert reasons
    reasons = Counter(_reason_names(run.alerts))
    fig, ax = plt.subplots(figsize=(9, 3.8))
    common = reasons.most_common(10)[::-1]
    ax.barh([n for n, _ in common], [c for _, c in common], color="#7048e8")
    ax.set_xlabel("alerts naming it")
    ax.set_title("Top alert reasons (features above their baseline, rules fired)")
    fig.tight_layout()
    fig.savefig(out / "reasons.png", dpi=110)
    plt.close(fig)


def _said(alert: Alert) -> str:
    """The alert's one-line summary; for an alert written before summaries existed, its top reason."""
    if alert.summary:
        return alert.summary
    return str(alert.reasons[0].get("text", "")) if alert.reasons else ""


def _reason_names(alerts: list[Alert]) -> list[str]:
    names = []
    for alert in alerts:
        for reason in alert.reasons:
            name = f"rule: {reason['rule']}" if reason.get("rule") else reason.get("feature")
            if name:
                names.append(str(name))
    return names


# ----------------------------------------------------------------------------------------------- html


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def headline_rows(figures: dict[str, Any]) -> list[list[Any]]:
    """The summary table, as (figure, value) rows — shared by the terminal and the HTML report."""
    web = figures["webhooks"]
    rev = figures["revocations"]
    return [
        ["usage events (from the validator)", f"{figures['events']} ({figures['accepted']} accepted, "
                                              f"{figures['rejected']} rejected)"],
        ["alerts", f"{figures['alerts']} ({', '.join(f'{n} {s}' for s, n in figures['alerts_by_severity'].items())})"],
        ["threats detected", f"{sum(r['detected'] for r in figures['threats'])} of "
                             f"{sum(r['incidents'] for r in figures['threats'])} incidents"],
        ["median time to detect (event time)", f"{figures['median_time_to_detect_s']} s"],
        ["false alerts", figures["false_alerts"]],
        ["auto-revocations", f"{rev['auto']} ({rev['suppressed']} suppressed; {rev['logouts']} logouts besides)"],
        ["stolen tokens detected, revoked, then refused", figures["stolen_tokens_caught"]],
        ["attacker requests refused after auto-revocation", figures["attacker_requests_refused_after_revocation"]],
        ["webhooks verified (standardwebhooks)", f"{web['verified']} ({web['refused']} refused)"],
        ["median alert → verified webhook (wall)", f"{web['median_delivery_latency_ms']} ms"],
        ["wall time", f"{figures['wall_s']} s ({figures['traffic_wall_s']} s of traffic)"],
    ]  # fmt: skip


def _html(run: DemoRun, figures: dict[str, Any], summary: Summary, archive: str) -> str:
    threats = _table(
        ["threat", "incidents", "detected", "median s", "max s"],
        [[r["threat"], r["incidents"], r["detected"], r["median_s"], r["max_s"]] for r in figures["threats"]],
    )
    stolen = _table(
        ["incident", "threat", "detected after s", "revoked", "attacker uses before", "refused after"],
        [[s.incident_id, s.threat, s.detected_after_s, s.revoked or "no", s.attacker_uses_before,
          s.attacker_rejected_after] for s in summary.stolen],
    )  # fmt: skip
    alerts = _table(
        ["event time", "severity", "entity", "score", "action", "summary"],
        [[a.ts, a.severity, f"{a.entity_type} {a.entity}", f"{a.score:.3f}", a.action, _said(a)]
         for a in run.alerts[:50]],
    )  # fmt: skip
    incidents = _table(["incident", "description"], [[i.incident_id, i.description] for i in run.sim.incidents])
    plots = "".join(
        f'<figure><img src="{name}" alt="{html.escape(title)}"><figcaption>{html.escape(title)}</figcaption></figure>'
        for name, title in PLOTS.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>jwtwatch demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #212529; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
td, th {{ border: 1px solid #dee2e6; padding: 0.3em 0.6em; text-align: left; }}
th {{ background: #f1f3f5; }} figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
code {{ background: #f1f3f5; padding: 0 0.2em; }}
</style></head><body>
<h1>jwtwatch demo</h1>
<p>{run.sim.params.minutes:g} minutes of simulated traffic (seed {run.sim.params.seed})
played {run.options.speed:g} times faster
as real HTTP requests with real signed tokens through the validator; model <code>{run.model_version}</code>;
auto-revocation at severity ≥ {run.options.revoke_min_severity}.</p>
<h2>Summary</h2>
{_table(["figure", "value"], headline_rows(figures))}
{plots}
<h2>Detection per threat</h2>
{threats}
<h2>Stolen tokens: detected, revoked, refused</h2>
{stolen}
<h2>Alerts</h2>
{alerts}
<h2>Injected incidents (ground truth, never shown to the pipeline)</h2>
{incidents}
<h2>Data</h2>
<p>Parquet, partitioned by date and hour: <a href="{archive}/">{archive}/</a>
(<code>events</code>, <code>features</code>, <code>scores</code>, <code>alerts</code>);
figures as JSON: <a href="summary.json">summary.json</a>. Explore them with the notebooks in
<code>notebooks/</code> (<code>JWTWATCH_DATA_DIR</code> names the data dir).</p>
</body></html>
"""


def write_report(run: DemoRun) -> tuple[Path, dict[str, Any]]:
    """Write ``index.html``, the plots, ``summary.json`` and a copy of the archive; returns the index path."""
    out = run.options.report
    out.mkdir(parents=True, exist_ok=True)
    data_dir = run.options.data_dir
    events = read_archive(data_dir, "events")
    scores = read_archive(data_dir, "scores")
    summary = summarise(run, events)
    figures = summary.to_dict(run)
    _plots(run, events, scores, summary, out)
    archive = out / "archive"
    if archive.exists():
        shutil.rmtree(archive)
    shutil.copytree(data_dir / "archive", archive)  # the report travels with its data
    (out / "summary.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    index = out / "index.html"
    index.write_text(_html(run, figures, summary, "archive"))
    return index, figures
