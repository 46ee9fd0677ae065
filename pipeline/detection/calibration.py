"""Raising the forest's thresholds from analysts' verdicts (``jwtwatch train --verdicts ... --calibrate``). Pure.

Only alerts the forest raised alone (no rule fired) are considered: a rule fires whatever the threshold, so
no threshold could have kept it quiet. Each judged alert's feature row (alert/1 ``features``) is scored again
by the model being trained, and per entity type the threshold is *raised* — never lowered — to just above the
highest score of an alert judged ``benign``, but never above the lowest score of one judged ``compromised``:
every alert an analyst confirmed would still fire. Fewer than ``min_benign`` benign verdicts of a type move
nothing (a handful of judgements is an anecdote, not a rate).

Verdicts are what analysts chose to look at, rarely a random sample, so the result is reported before and
after, and applied only when asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.events import AlertVerdict

if TYPE_CHECKING:  # scikit-learn only when a model is calibrated, not when the CLI starts
    from pipeline.scoring.model import DetectionModel

#: alert_id -> (entity type, feature row as the alert carried it): what ``read_alert_features`` gives.
AlertFeatures = Mapping[str, tuple[str, Mapping[str, Any]]]

#: Benign forest-only verdicts of one entity type needed before its threshold moves.
MIN_BENIGN = 5


@dataclass(frozen=True, slots=True)
class Calibration:
    entity_type: str
    threshold_before: float
    threshold_after: float
    benign: int  # forest-only alerts judged benign (with a feature row this model can score)
    compromised: int
    benign_quiet_after: int  # of the benign ones, how many would no longer alert
    compromised_quiet_after: int  # always 0: the threshold never rises above a confirmed alert

    @property
    def moved(self) -> bool:
        return self.threshold_after != self.threshold_before


def calibrate(
    model: DetectionModel,
    verdicts: Iterable[AlertVerdict],
    alerts: AlertFeatures,
    min_benign: int = MIN_BENIGN,
) -> list[Calibration]:
    """The new threshold per entity type (see the module docstring); ``model`` is not changed."""
    from pipeline.detection.precision import latest_per_alert

    scores: dict[str, dict[str, list[float]]] = {t: {"benign": [], "compromised": []} for t in model.scorers}
    for verdict in latest_per_alert(verdicts):
        found = alerts.get(verdict.alert_id)
        if verdict.rules or found is None or found[0] not in model.scorers:
            continue
        entity_type, features = found
        scorer = model.scorers[entity_type]
        row = [features.get(name) for name in scorer.features]
        if any(not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) for v in row):
            continue  # an alert from a model with other features: nothing to score
        score = float(scorer.score_samples(np.asarray([row], dtype=np.float64))[0])
        scores[entity_type][verdict.verdict].append(score)
    out = []
    for entity_type, judged in scores.items():
        benign, compromised = judged["benign"], judged["compromised"]
        before = model.scorers[entity_type].threshold_
        after = before
        if len(benign) >= min_benign:
            # Just above the highest benign score (thresholds are kept to 6 decimals), capped at the lowest confirmed.
            target = round(math.floor(max(benign) * 1e6 + 1) / 1e6, 6)
            if compromised:  # capped after rounding, rounded down: a confirmed alert's score stays at or above it
                target = min(target, math.floor(min(compromised) * 1e6) / 1e6)
            after = max(before, target)
        out.append(
            Calibration(
                entity_type=entity_type,
                threshold_before=before,
                threshold_after=after,
                benign=len(benign),
                compromised=len(compromised),
                benign_quiet_after=sum(1 for s in benign if s < after),
                compromised_quiet_after=sum(1 for s in compromised if s < after),
            )
        )
    return out


__all__ = ["MIN_BENIGN", "AlertFeatures", "Calibration", "calibrate"]
