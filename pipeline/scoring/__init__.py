"""Isolation Forest scoring: one forest per entity type, calibrated thresholds, severities, reasons.

:class:`EntityScorer` is a scikit-learn estimator (parameters in ``__init__``, ``fit`` returns the fitted
scorer, fitted state in attributes ending in ``_``). Scores are the forest's anomaly score
``-IsolationForest.score_samples(X)``, which already lies in (0, 1] (0.5 is "unremarkable", towards 1
"isolated quickly").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest
from sklearn.utils.validation import check_is_fitted

from pipeline.features import DESCRIPTIONS, LOG_SCALED
from pipeline.scoring.forest import forest_evaluator

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


@dataclass(frozen=True, slots=True)
class Threshold:
    """A calibrated threshold: the ``1 - target_alert_rate`` quantile of held-out benign entities' highest
    scores (``value``, kept to 6 decimals as ``model.json`` stores it), how many ``entities`` it was drawn
    from, and the highest score among them."""

    value: float
    entities: int
    max_score: float


def calibrate_threshold(entity_max_scores: np.ndarray, target_alert_rate: float) -> Threshold:
    """The threshold at which ``target_alert_rate`` of these held-out benign entities would alert."""
    scores = np.sort(np.asarray(entity_max_scores, dtype=np.float64))
    quantile = float(np.quantile(scores, 1.0 - target_alert_rate)) if len(scores) else 0.7
    # Rounded as stored in model.json, so a reloaded model scores alike.
    return Threshold(round(quantile, 6), len(scores), float(scores[-1]) if len(scores) else 0.0)


def highest_per_entity(scores: np.ndarray, entities: np.ndarray) -> np.ndarray:
    """Each entity's highest score (the order of the result is the entities' sorted order)."""
    return pd.Series(np.asarray(scores, dtype=np.float64)).groupby(np.asarray(entities, dtype=object)).max().to_numpy()


class EntityScorer(BaseEstimator):  # type: ignore[misc]  # scikit-learn ships no type information
    """An Isolation Forest for one entity type, with its threshold and the baseline of each feature.

    A scikit-learn estimator: ``__init__`` only stores the parameters; :meth:`fit` trains the forest and
    calibrates the threshold, setting every fitted attribute (they end in ``_``); :meth:`score_samples`
    refuses an unfitted scorer (``NotFittedError``) and changes nothing. A saved model is restored with
    :meth:`from_summary` (its forest comes from skops, the rest from ``model.json``).

    Fitted attributes: ``forest_`` (the ``IsolationForest``), ``evaluator_`` (how it is scored:
    :func:`pipeline.scoring.forest.forest_evaluator`), ``n_features_in_``, ``median_`` and ``p99_`` (of the
    training rows, per feature: the baselines reasons are given against), ``threshold_``,
    ``calibration_entities_`` and ``calibration_max_`` (see :class:`Threshold`).
    """

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
        self.features = features
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.target_alert_rate = target_alert_rate
        self.random_state = random_state

    def fit(
        self,
        X: np.ndarray,
        y: None = None,
        *,
        calibration_rows: np.ndarray | None = None,
        calibration_entities: np.ndarray | None = None,
    ) -> Self:
        """Fit the forest on baseline windows ``X``, then calibrate the threshold.

        The threshold is set so that ``target_alert_rate`` of held-out benign entities would alert: on the
        highest score of each entity among ``calibration_rows`` (each row's entity in ``calibration_entities``;
        without them every row is an entity of its own), or on the training rows themselves when no
        held-out rows are given. ``y`` is ignored (scikit-learn's signature).
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ValueError(f"expected rows of the {len(self.features)} features {list(self.features)}, got {X.shape}")
        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(X)),
            random_state=self.random_state,
            n_jobs=1,
        ).fit(X)
        evaluator = forest_evaluator(forest)
        held_out = X if calibration_rows is None else np.asarray(calibration_rows, dtype=np.float64)
        scores = evaluator.anomaly(held_out)
        if calibration_entities is not None:
            scores = highest_per_entity(scores, calibration_entities)
        threshold = calibrate_threshold(scores, self.target_alert_rate)
        self.forest_ = forest
        self.evaluator_ = evaluator
        self.n_features_in_ = X.shape[1]
        self.median_ = np.median(X, axis=0)
        self.p99_ = np.quantile(X, 0.99, axis=0)
        self._set_threshold(threshold)
        return self

    @classmethod
    def from_summary(cls, entity_type: str, summary: dict[str, Any], forest: IsolationForest) -> EntityScorer:
        """The fitted scorer that :meth:`summary` (kept in ``model.json``) and its saved forest describe."""
        scorer = cls(
            entity_type,
            tuple(summary["features"]),
            n_estimators=summary["n_estimators"],
            max_samples=summary["max_samples"],
            target_alert_rate=summary["target_alert_rate"],
            random_state=summary["random_state"],
        )
        scorer.forest_ = forest
        scorer.evaluator_ = forest_evaluator(forest)
        scorer.n_features_in_ = int(forest.n_features_in_)
        scorer.median_ = np.asarray(summary["median"])
        scorer.p99_ = np.asarray(summary["p99"])
        scorer._set_threshold(
            Threshold(summary["threshold"], summary["calibration_entities"], summary["calibration_max"])
        )
        return scorer

    def with_threshold(self, threshold: float) -> EntityScorer:
        """A copy of this fitted scorer with another threshold (e.g. raised from analysts' verdicts); the forest
        and baselines are shared, this scorer is not changed."""
        check_is_fitted(self)
        other = copy.copy(self)
        other.threshold_ = threshold
        return other

    def _set_threshold(self, threshold: Threshold) -> None:
        self.threshold_ = threshold.value
        self.calibration_entities_ = threshold.entities
        self.calibration_max_ = threshold.max_score

    def __sklearn_is_fitted__(self) -> bool:
        # What check_is_fitted asks; cheaper than its scan of every attribute (score_samples runs per engine tick).
        return hasattr(self, "evaluator_")

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """The anomaly score of each row, in (0, 1], higher = more anomalous: ``-forest_.score_samples(X)``
        (note the sign: scikit-learn's ``IsolationForest.score_samples`` is higher for more normal rows)."""
        check_is_fitted(self)
        return self.evaluator_.anomaly(X)

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
        """Everything but the forest, as ``model.json`` keeps it (:meth:`from_summary` reads it back)."""
        check_is_fitted(self)
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
