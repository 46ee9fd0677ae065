"""Precision of past alerts from analysts' verdicts (``jwtwatch train --verdicts``).

A verdict/1 record carries the judged alert's entity type, severity and rules, so no join with the alert log is
needed. Only each alert's latest verdict counts (an analyst who changed their mind). Precision is
``compromised / (benign + compromised)`` over judged alerts — unjudged alerts are not in it, so it describes what
analysts looked at, which is rarely a random sample: a development aid, not an evaluation.
"""

from __future__ import annotations

import gzip
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import RecordError
from pipeline.events import Alert, AlertVerdict, format_ts


@dataclass(frozen=True, slots=True)
class PrecisionRow:
    group: str  # "entity_type=jti", "rule=parallel_sessions", "rule=(forest)", "all"
    benign: int
    compromised: int

    @property
    def precision(self) -> float | None:
        judged = self.benign + self.compromised
        return self.compromised / judged if judged else None


@dataclass
class VerdictRead:
    verdicts: list[AlertVerdict]
    bad: list[tuple[int, str]]  # (line, error) of what could not be read


def read_verdicts(path: Path) -> VerdictRead:
    """verdict/1 records from a ``.jsonl`` / ``.jsonl.gz`` file, or from a data directory's Parquet archive
    (``<dir>/archive/verdicts``). A bad line is reported, never fatal."""
    path = Path(path)
    if path.is_dir():
        return _from_archive(path)
    verdicts, bad = [], []
    for number, line in _lines(path):
        try:
            verdicts.append(AlertVerdict.from_json(line))
        except RecordError as exc:
            bad.append((number, str(exc)))
    return VerdictRead(verdicts, bad)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered non-blank lines of a ``.jsonl`` or ``.jsonl.gz`` file; a damaged gzip stream is a ``ValueError``
    naming what broke, not a traceback (or click's bare "Aborted." for an ``EOFError``)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    yield number, line
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"a damaged gzip file ({type(exc).__name__}: {exc or 'it ends early'})") from None


def _from_archive(data_dir: Path) -> VerdictRead:
    from pipeline.archive import read_archive  # pandas and pyarrow only when an archive is read

    frame = read_archive(data_dir, "verdicts")
    verdicts, bad = [], []
    for number, row in enumerate(frame.to_dict("records"), 1):
        data = {k: row.get(k) for k in AlertVerdict.__dataclass_fields__}
        data["schema"] = AlertVerdict.SCHEMA
        for name in ("ts", "suppress_until"):
            moment = data.get(name)
            data[name] = format_ts(moment.to_pydatetime()) if moment is not None and moment == moment else None
        rules = data.get("rules")
        data["rules"] = list(rules) if rules is not None else []
        data = {k: (None if v != v else v) if not isinstance(v, list) else v for k, v in data.items()}  # NaN -> None
        try:
            verdicts.append(AlertVerdict.from_dict(orjson.loads(orjson.dumps(data))))
        except (RecordError, TypeError) as exc:
            bad.append((number, str(exc)))
    return VerdictRead(verdicts, bad)


def read_alert_features(path: Path) -> tuple[dict[str, tuple[str, dict[str, Any]]], list[tuple[int, str]]]:
    """alert_id -> (entity type, feature row) from alert/1 lines (``jwtwatch detect --alerts-out``, .jsonl or
    .jsonl.gz) or a data directory's archive; and the bad lines. The latest record of an alert wins (an escalation
    carries the window that escalated it)."""
    path = Path(path)
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    bad: list[tuple[int, str]] = []
    if path.is_dir():
        from pipeline.archive import read_archive

        frame = read_archive(path, "alerts")
        if not frame.empty:
            for number, (alert_id, entity_type, features) in enumerate(
                zip(frame["alert_id"], frame["entity_type"], frame["features_json"], strict=True), 1
            ):
                try:
                    row = orjson.loads(features) if features else {}
                except orjson.JSONDecodeError as exc:
                    bad.append((number, f"features: {exc}"))
                    continue
                out[str(alert_id)] = (str(entity_type), row if isinstance(row, dict) else {})
        return out, bad
    for number, line in _lines(path):
        try:
            alert = Alert.from_json(line)
        except RecordError as exc:
            bad.append((number, str(exc)))
            continue
        out[alert.alert_id] = (alert.entity_type, dict(alert.features))
    return out, bad


def latest_per_alert(verdicts: Iterable[AlertVerdict]) -> list[AlertVerdict]:
    """Each alert's latest verdict (by ``ts``; the later one in the input on a tie)."""
    latest: dict[str, AlertVerdict] = {}
    for verdict in verdicts:
        held = latest.get(verdict.alert_id)
        if held is None or verdict.ts >= held.ts:
            latest[verdict.alert_id] = verdict
    return list(latest.values())


def precision_report(verdicts: Iterable[AlertVerdict]) -> list[PrecisionRow]:
    """Benign and compromised counts overall, per entity type and per rule (an alert with several rules counts
    for each; ``(forest)`` is the forest alone)."""
    counts: Counter[tuple[str, str]] = Counter()
    for verdict in latest_per_alert(verdicts):
        groups = ["all", f"entity_type={verdict.entity_type}"]
        groups += [f"rule={rule}" for rule in verdict.rules] or ["rule=(forest)"]
        for group in groups:
            counts[(group, verdict.verdict)] += 1
    names = sorted({group for group, _ in counts}, key=lambda g: (g != "all", g))
    return [PrecisionRow(g, counts[(g, "benign")], counts[(g, "compromised")]) for g in names]


__all__ = [
    "PrecisionRow",
    "VerdictRead",
    "latest_per_alert",
    "precision_report",
    "read_alert_features",
    "read_verdicts",
]
