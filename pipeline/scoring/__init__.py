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


@dataclass(frozen=True, slots=True)
class Reason:
    feature: str
    value: float
    baseline: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "value": self.value, "baseline": self.baseline, "text": self.text}


def _display(feature: str, value: float) -> float:
    value = math.expm1(value) if feature in LOG_SCALED else value
    return round(value, 3)


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
        """The features furthest above their baseline, in words."""
        spread = np.maximum(self.p99_ - self.median_, 1e-6)
        excess = (np.asarray(row) - self.median_) / spread
        order = np.argsort(-excess)
        out = []
        for index in order[:top]:
            if excess[index] <= 0.5:
                break
            feature = self.features[index]
            value, usual = _display(feature, row[index]), _display(feature, float(self.p99_[index]))
            out.append(
                Reason(feature, value, usual, f"{DESCRIPTIONS.get(feature, feature)}: {value} (usually ≤ {usual})")
            )
        return out

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
