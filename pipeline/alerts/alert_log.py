"""The alert log — the latest accepted revision of each alert — and analysts' verdicts on it.

Alerts re-issued under the same ``alert_id`` are *revisions*: a revision that escalates (higher severity, or the
same severity with a higher score) replaces the logged alert and is queued as a new message (``webhook-id`` =
``alert_<alert_id>_<revision>``); an exact repeat, or a stale version below what was already accepted (a
replay), changes nothing. Every verdict is kept; an alert's verdict is its latest, published as ``verdict/1``
on ``jwtwatch.verdicts`` before it is answered.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson

from pipeline.alerts.database import Database
from pipeline.alerts.outbox import enqueue
from pipeline.bus import VERDICTS, Bus
from pipeline.errors import Unavailable
from pipeline.events import (
    MAX_RULE_NAME,
    MAX_VERDICT_RULES,
    SEVERITIES,
    SEVERITY_RANK,
    Alert,
    AlertVerdict,
    format_ts,
    parse_ts,
)

log = logging.getLogger(__name__)

#: An alert's current verdict: the latest recorded for it.
_LATEST_VERDICT = "(SELECT v.record FROM verdicts v WHERE v.alert_id = alerts.alert_id ORDER BY v.id DESC LIMIT 1)"
_LATEST_KIND = "(SELECT v.verdict FROM verdicts v WHERE v.alert_id = alerts.alert_id ORDER BY v.id DESC LIMIT 1)"
#: Bounds of a benign verdict's suppression.
MIN_SUPPRESS_S = 60
MAX_SUPPRESS_S = 30 * 86400
DEFAULT_SUPPRESS_S = 86400
#: How long publishing a verdict may take before the request fails (and the verdict is not kept).
PUBLISH_TIMEOUT_S = 10.0


def accept_alert(database: Database, alert: Alert, now: float) -> bool:
    """Log ``alert`` and queue it for every matching subscription, in one transaction; False when nothing new was
    accepted (see the module docstring). A type other than ``token.anomaly`` and ``revocation.storm`` is refused
    with ``ValueError``."""
    if alert.type not in ("token.anomaly", "revocation.storm"):
        raise ValueError(f"alert {alert.alert_id!r} has unknown type {alert.type!r}")
    rank = SEVERITY_RANK[alert.severity]
    ts = parse_ts(alert.ts).timestamp()
    with database.tx() as db:
        row = db.execute(
            "SELECT revision, severity_rank, score FROM alerts WHERE alert_id = ?", (alert.alert_id,)
        ).fetchone()
        if row is not None and (rank, alert.score) <= (row[1], row[2]):
            return False
        revision = 1 if row is None else row[0] + 1
        record = alert.to_json()
        db.execute(
            "INSERT INTO alerts (alert_id, revision, type, ts, entity_type, entity, severity_rank, score,"
            " record, accepted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(alert_id) DO UPDATE SET revision = excluded.revision, type = excluded.type,"
            " ts = excluded.ts, entity_type = excluded.entity_type, entity = excluded.entity,"
            " severity_rank = excluded.severity_rank, score = excluded.score, record = excluded.record,"
            " accepted_at = excluded.accepted_at",
            (
                alert.alert_id,
                revision,
                alert.type,
                ts,
                alert.entity_type,
                alert.entity,
                rank,
                alert.score,
                record,
                now,
            ),
        )
        db.execute(
            "INSERT INTO alert_revisions (alert_id, revision, severity, score, accepted_at) VALUES (?, ?, ?, ?, ?)",
            (alert.alert_id, revision, alert.severity, alert.score, now),
        )
        enqueue(
            db,
            f"alert_{alert.alert_id}_{revision}",
            alert.type,
            alert.alert_id,
            alert.to_dict(),
            now,
            severity=alert.severity,
        )
    return True


def list_alerts(
    database: Database,
    *,
    entity_type: str | None = None,
    entity: str | None = None,
    severity: str | None = None,
    since: float | None = None,
    until: float | None = None,
    verdict: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The alert log (latest revision of each alert), newest first; ``severity`` is a minimum. Each alert has
    its current ``verdict`` (see :func:`verdict_view`) or None; ``verdict`` filters on it (``none``: unjudged).
    """
    where: list[str] = ["1 = 1"]
    params: list[str | float] = []
    if verdict is not None:
        if verdict == "none":
            where.append(f"{_LATEST_KIND} IS NULL")
        elif verdict in ("benign", "compromised"):
            where.append(f"{_LATEST_KIND} = ?")
            params.append(verdict)
        else:
            raise ValueError("verdict must be benign, compromised or none")
    if entity_type is not None:
        where.append("entity_type = ?")
        params.append(entity_type)
    if entity is not None:
        where.append("entity = ?")
        params.append(entity)
    if severity is not None:
        if severity not in SEVERITY_RANK:
            raise ValueError(f"severity must be one of {list(SEVERITIES)}")
        where.append("severity_rank >= ?")
        params.append(SEVERITY_RANK[severity])
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    if until is not None:
        where.append("ts <= ?")
        params.append(until)
    rows = database.query(
        f"SELECT record, revision, {_LATEST_VERDICT} FROM alerts WHERE {' AND '.join(where)}"  # noqa: S608 - fixed clauses, values bound as ?  # nosec B608
        " ORDER BY ts DESC, alert_id LIMIT ?",
        [*params, max(0, int(limit))],
    )
    return [
        {**orjson.loads(record), "revision": revision, "verdict": verdict_view(judged)}
        for record, revision, judged in rows
    ]


def record_verdict(
    database: Database,
    bus: Bus | None,
    alert_id: str,
    verdict: str,
    *,
    now: float,
    note: str | None,
    suppress_for_s: int | None,
    by: str,
) -> AlertVerdict | None:
    """Record an analyst's verdict on a logged alert and publish it on ``bus``; see
    :meth:`~pipeline.alerts.service.AlertsService.record_verdict`."""
    if verdict not in ("benign", "compromised"):
        raise ValueError("verdict must be benign or compromised")
    if verdict == "compromised" and suppress_for_s is not None:
        raise ValueError("suppress_for applies to benign verdicts only")
    if suppress_for_s is None:
        suppress_for_s = DEFAULT_SUPPRESS_S
    if not MIN_SUPPRESS_S <= suppress_for_s <= MAX_SUPPRESS_S:
        raise ValueError(f"suppress_for must lie between {MIN_SUPPRESS_S} s and {MAX_SUPPRESS_S // 86400} days")
    rows = database.query("SELECT record FROM alerts WHERE alert_id = ?", (alert_id,))
    if not rows:
        return None
    alert = Alert.from_json(rows[0][0])
    record = AlertVerdict(
        verdict_id=str(uuid.uuid4()),
        alert_id=alert.alert_id,
        verdict=verdict,
        ts=format_ts(now),
        by=by,
        entity_type=alert.entity_type,
        entity=alert.entity,
        severity=alert.severity,
        rules=alert_rules(alert),
        sub=alert.sub,
        jti=alert.jti,
        ip=alert.ip,
        note=note,
        suppress_until=format_ts(now + suppress_for_s) if verdict == "benign" else None,
    )
    with database.tx() as db:
        db.execute(
            "INSERT INTO verdicts (verdict_id, alert_id, verdict, ts, record) VALUES (?, ?, ?, ?, ?)",
            (record.verdict_id, record.alert_id, record.verdict, now, record.to_json()),
        )
    if bus is not None:
        try:
            bus.publish(VERDICTS, record.bus_key, record.to_json())
            bus.flush(PUBLISH_TIMEOUT_S)
        except Exception as exc:
            with database.tx() as db:
                db.execute("DELETE FROM verdicts WHERE verdict_id = ?", (record.verdict_id,))
            raise Unavailable(f"the verdict could not be published: {exc}") from exc
    log.info("alert %s judged %s by %s", alert_id, verdict, by)
    return record


def active_verdicts(database: Database, now: float) -> list[AlertVerdict]:
    """Each alert's current verdict where it is benign and still suppresses at ``now``."""
    rows = database.query(
        "SELECT v.record FROM verdicts v"
        " WHERE v.id = (SELECT MAX(w.id) FROM verdicts w WHERE w.alert_id = v.alert_id)"
        " AND v.verdict = 'benign' ORDER BY v.id"
    )
    verdicts = [AlertVerdict.from_json(row[0]) for row in rows]
    return [v for v in verdicts if v.suppress_until and parse_ts(v.suppress_until).timestamp() > now]


def alert_rules(alert: Alert) -> list[str]:
    """The rules that fired in an alert (its pattern, with its entity and severity), as its reasons name them."""
    rules = {
        reason["rule"]
        for reason in alert.reasons
        if isinstance(reason.get("rule"), str) and 0 < len(reason["rule"]) <= MAX_RULE_NAME
    }
    return sorted(rules)[:MAX_VERDICT_RULES]


def verdict_view(record: bytes | None) -> dict[str, Any] | None:
    """What ``GET /v1/alerts`` shows of an alert's current verdict (None when it has none)."""
    if record is None:
        return None
    verdict = AlertVerdict.from_json(record)
    return {
        "verdict_id": verdict.verdict_id,
        "verdict": verdict.verdict,
        "note": verdict.note,
        "by": verdict.by,
        "at": verdict.ts,
        "suppress_until": verdict.suppress_until,
    }


__all__ = [
    "DEFAULT_SUPPRESS_S",
    "MAX_SUPPRESS_S",
    "MIN_SUPPRESS_S",
    "PUBLISH_TIMEOUT_S",
    "accept_alert",
    "active_verdicts",
    "alert_rules",
    "list_alerts",
    "record_verdict",
    "verdict_view",
]
