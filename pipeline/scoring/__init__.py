"""Isolation Forest scoring: one forest per entity type, calibrated thresholds, severities, reasons.

Conventions follow scikit-learn: parameters in ``__init__``, ``fit``/``score``; fitted state in
attributes ending in ``_``. Scores are the forest's anomaly score ``-score_samples(X)``, which already
lies in (0, 1] (0.5 is "unremarkable", towards 1 "isolated quickly").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest

from pipeline.features import DESCRIPTIONS, LOG_SCALED
from pipeline.scoring.forest import CompiledForest

SEVERITIES = ("low", "medium", "high", "critical")


#: How each feature reads to a person. Every feature is oriented so that a *higher* value is the more
#: suspicious one (more uses, more networks, a larger novel share, a never-seen IP = 1), so "above its
#: baseline" is the one direction a reason names; a feature where lower were anomalous would need its own rule
#: here before it could be named.
UNITS: dict[str, str] = {
    "events": "count",
    "distinct_ips": "count",
    "distinct_networks": "count",
    "distinct_prefix24": "count",
    "distinct_ua_families": "count",
    "distinct_user_agents": "count",
    "distinct_tokens": "count",
    "distinct_subjects": "count",
    "network_switches": "count",
    "network_returns": "count",
    "stale_rejections": "count",
    "other_rejections": "count",
    "forged_rejections": "count",
    "parallel_sessions": "count",
    "forged_per_subject": "per_user",
    "stale_per_subject": "per_user",
    "other_per_subject": "per_user",
    "user_agents_per_subject": "per_user",
    "novel_network_share": "share",
    "novel_ua_share": "share",
    "forged_share": "share",
    "token_age_fraction": "share",
    "rate_vs_client": "ratio",
    "rate_vs_own": "ratio",
    "subjects_vs_own": "ratio",
    "burstiness": "ratio",
    "novel_ip": "flag",
}

#: The resolution a value is shown at, in its natural unit: a reason never rests on a difference too small to
#: show (``2.0000000001`` against ``2`` is float noise, not evidence).
_STEP = {"count": 1.0, "per_user": 0.1, "share": 0.01, "ratio": 0.1, "flag": 1.0}


def natural(feature: str, value: float) -> float:
    """A feature value in its natural unit: log-scaled counts back to counts."""
    return math.expm1(value) if feature in LOG_SCALED else float(value)


def _shown(value: float, step: float) -> float:
    """``value`` rounded to the nearest ``step`` (what a person reads)."""
    return round(round(value / step) * step, 6)


def _shown_bound(value: float, step: float) -> float:
    """An upper bound rounded *up* to ``step``: "usually ≤ 2" for a p99 of 1.7 distinct IPs, because 2 is
    within the usual range of a count whose p99 lies between 1 and 2. The inner round drops float noise
    (``expm1(log1p(2))`` is 2.0000000000000004, not a reason to say 3)."""
    return round(math.ceil(round(value / step, 6)) * step, 6)


def format_value(unit: str, value: float) -> str:
    """A shown value in human units: counts as integers, shares in %, ratios with x, flags yes/no."""
    if unit == "count":
        return f"{value:.0f}"
    if unit == "share":
        return f"{value * 100:.0f} %"
    if unit == "ratio":
        return f"{value:.1f}x"
    if unit == "flag":
        return "yes" if value >= 0.5 else "no"
    return f"{value:.1f}"


def label(feature: str) -> str:
    # Reasons show log-scaled counts as the count itself, so the description's "(log scale)" would mislead.
    return DESCRIPTIONS.get(feature, feature).removesuffix(" (log scale)")


@dataclass(frozen=True, slots=True)
class Reason:
    """A feature above its baseline: ``value`` and ``baseline`` (the p99 of benign windows, rounded up to what
    is shown) in the feature's natural ``unit`` — counts, shares as fractions, ratios."""

    feature: str
    value: float
    baseline: float
    text: str
    unit: str = "count"

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "value": self.value,
            "baseline": self.baseline,
            "unit": self.unit,
            "text": self.text,
        }


@dataclass(frozen=True, slots=True)
class Combination:
    """The forest flagged a row in which no single feature is above its baseline: an unusual combination of
    usual values. ``features`` are the ones furthest above their median, the most telling first."""

    features: tuple[str, ...]
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"combination": list(self.features), "text": self.text}


class EntityScorer:
    """An Isolation Forest for one entity type, with its threshold and the baseline of each feature."""

    def __init__(
        self,
        entity_type: str,
        features: Sequence[str],
        *,
        n_estimators: int = 100,
        max_samples: int = 256,
        target_alert_rate: float = 0.001,
        random_state: int = 0,
    ) -> None:
        self.entity_type = entity_type
        self.features = tuple(features)
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.target_alert_rate = target_alert_rate
        self.random_state = random_state

    def fit(self, X: np.ndarray, calibration_entity_max: np.ndarray | None = None) -> EntityScorer:
        """Fit on baseline windows ``X``; calibrate on held-out per-entity maximum scores (or on X)."""
        X = np.asarray(X, dtype=np.float64)
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(X)),
            random_state=self.random_state,
            n_jobs=1,
        ).fit(X)
        self.median_ = np.median(X, axis=0)
        self.p99_ = np.quantile(X, 0.99, axis=0)
        self.calibrate(calibration_entity_max if calibration_entity_max is not None else self.score(X))
        return self

    def calibrate(self, entity_max_scores: np.ndarray) -> None:
        """Threshold so that ``target_alert_rate`` of held-out benign entities would alert."""
        scores = np.sort(np.asarray(entity_max_scores, dtype=np.float64))
        quantile = float(np.quantile(scores, 1.0 - self.target_alert_rate)) if len(scores) else 0.7
        self.threshold_ = round(quantile, 6)  # as stored in model.json, so a reloaded model scores alike
        self.calibration_entities_ = len(scores)
        self.calibration_max_ = float(scores[-1]) if len(scores) else 0.0

    def score(self, X: np.ndarray) -> np.ndarray:
        compiled = getattr(self, "compiled_", None)
        if compiled is None or compiled.source is not self.forest_:
            compiled = self.compiled_ = CompiledForest(self.forest_)
            compiled.source = self.forest_
        return compiled.anomaly(X)

    def severity(self, score: float) -> str | None:
        """None below the threshold; above it, the margin left to 1.0 decides."""
        threshold = self.threshold_
        if score < threshold:
            return None
        margin = (score - threshold) / max(1.0 - threshold, 1e-9)
        if margin < 0.1:
            return "low"
        if margin < 0.25:
            return "medium"
        if margin < 0.45:
            return "high"
        return "critical"

    def reasons(self, row: Sequence[float], top: int = 3) -> list[Reason]:
        """The features above their baseline (p99 of benign windows), the furthest above first, in words.

        A feature is named only when the value shown is above the baseline shown — rounded up to the same
        resolution — so no reason ever reads "2 (usually ≤ 2)".
        """
        excess = (np.asarray(row, dtype=np.float64) - self.median_) / self._spread()
        out: list[Reason] = []
        for index in np.argsort(-excess, kind="stable"):
            if len(out) == top or excess[index] <= 0:
                break
            feature = self.features[index]
            unit = UNITS.get(feature, "ratio")
            step = _STEP[unit]
            value = _shown(natural(feature, row[index]), step)
            usual = _shown_bound(natural(feature, float(self.p99_[index])), step)
            if value <= usual:
                continue
            text = f"{label(feature)}: {format_value(unit, value)} (usually ≤ {format_value(unit, usual)})"
            if unit == "flag":
                text = f"{label(feature)}: yes (usually no)"
            out.append(Reason(feature, value, usual, text, unit))
        return out

    def combination(self, row: Sequence[float], top: int = 3) -> Combination:
        """For a row the forest flagged although :meth:`reasons` names nothing: the values furthest above their
        median, said as what they are — each within its usual range, unusual together."""
        excess = (np.asarray(row, dtype=np.float64) - self.median_) / self._spread()
        named: list[str] = []
        parts: list[str] = []
        for index in np.argsort(-excess, kind="stable")[:top]:
            if excess[index] <= 0:
                break
            feature = self.features[index]
            unit = UNITS.get(feature, "ratio")
            step = _STEP[unit]
            value = format_value(unit, _shown(natural(feature, row[index]), step))
            typical = format_value(unit, _shown(natural(feature, float(self.median_[index])), step))
            named.append(feature)
            parts.append(f"{label(feature)} {value} (typically {typical})")
        if not parts:
            return Combination((), "unusual combination of values, none above its usual range")
        return Combination(tuple(named), "unusual combination, each value within its usual range: " + "; ".join(parts))

    def _spread(self) -> np.ndarray:
        spread: np.ndarray = np.maximum(self.p99_ - self.median_, 1e-6)
        return spread

    def summary(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "threshold": round(self.threshold_, 6),
            "target_alert_rate": self.target_alert_rate,
            "calibration_entities": self.calibration_entities_,
            "calibration_max": round(self.calibration_max_, 6),
            "n_estimators": self.n_estimators,
            "max_samples": self.max_samples,
            "random_state": self.random_state,
            "median": [round(float(v), 6) for v in self.median_],
            "p99": [round(float(v), 6) for v in self.p99_],
        }
