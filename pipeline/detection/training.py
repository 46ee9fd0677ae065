"""Training: baseline traffic → feature rows (through the same engine as streaming) → forests → model.

The baseline period is replayed through :class:`DetectionEngine` without a model, which collects the
feature row of every scoring. Rows from the first ``fit_share`` of the period train one Isolation
Forest per entity type; the remaining rows are held out: each held-out entity's *highest* score is what
the threshold is calibrated on, so ``target_alert_rate`` is a share of benign entities alerted, not of
windows scored.

The held-out period is scored twice: once as it followed the fit period (warm baselines) and once
replayed on its own through a fresh engine (cold: every IP first seen, no subject history) — what a new
deployment, or a pipeline restarted without its baselines, sees in its first minutes. An entity's
highest score over both is what calibration uses, so the threshold holds on a cold start too.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sklearn
import skops

from pipeline.detection.batch import frame_to_batch, micro_batches
from pipeline.detection.engine import Collected, DetectionEngine
from pipeline.events import format_ts
from pipeline.features import FEATURES
from pipeline.features.baselines import Baselines
from pipeline.networks import PREFIXES, NetworkResolver
from pipeline.scoring import EntityScorer
from pipeline.scoring.model import DetectionModel, finalize_metadata
from pipeline.windows import WindowSpec

HASHED_COLUMNS = ["event_id", "ts", "jti", "sub", "client_id", "ip", "user_agent", "reason", "iat", "exp"]


@dataclass(frozen=True)
class TrainingParams:
    seed: int = 0
    target_alert_rate: float = 0.001
    fit_share: float = 0.7
    n_estimators: int = 100
    max_samples: int = 256
    max_rows_per_type: int = 200_000


def data_hash(frame: pd.DataFrame) -> str:
    """A content hash of the training events (order-sensitive; the frame is sorted by event time)."""
    columns = [c for c in HASHED_COLUMNS if c in frame]
    hashed = pd.util.hash_pandas_object(frame[columns].astype(str), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()


def collect_features(
    frame: pd.DataFrame,
    spec: WindowSpec,
    progress: Callable[[int], None] | None = None,
    networks: NetworkResolver = PREFIXES,
) -> tuple[Collected, Baselines]:
    collected = Collected()
    engine = DetectionEngine(None, collect=collected, spec=spec, networks=networks)
    for batch in micro_batches(frame_to_batch(frame), 8192, 5.0):
        engine.process(batch)
        if progress is not None:
            progress(len(batch))
    return collected, engine.baselines


def train_model(
    frame: pd.DataFrame,
    params: TrainingParams = TrainingParams(),
    spec: WindowSpec = WindowSpec(),
    progress: Callable[[int], None] | None = None,
    networks: NetworkResolver = PREFIXES,
) -> tuple[DetectionModel, Baselines]:
    """``networks``: how addresses become networks — the same resolver the model will detect with."""
    if frame.empty:
        raise ValueError("no events to train on")
    collected, baselines = collect_features(frame, spec, progress, networks)
    t0, t1 = frame["ts"].iloc[0] / 1000.0, frame["ts"].iloc[-1] / 1000.0
    split = t0 + params.fit_share * (t1 - t0)
    cold, _ = collect_features(frame[frame["ts"] >= split * 1000.0], spec, networks=networks)
    scorers: dict[str, EntityScorer] = {}
    rows_used: dict[str, dict[str, int]] = {}
    rng = np.random.default_rng(params.seed)
    for entity_type, names in FEATURES.items():
        ts = np.asarray(collected.ts[entity_type])
        X = np.asarray(collected.rows[entity_type], dtype=np.float64).reshape(-1, len(names))
        entities = np.asarray(collected.entity[entity_type], dtype=object)
        fit_mask = ts < split
        if fit_mask.sum() < 50 or (~fit_mask).sum() < 50:
            raise ValueError(f"too little baseline traffic to train the {entity_type} model ({len(X)} windows)")
        X_fit = X[fit_mask]
        if len(X_fit) > params.max_rows_per_type:
            X_fit = X_fit[np.sort(rng.choice(len(X_fit), params.max_rows_per_type, replace=False))]
        scorer = EntityScorer(
            entity_type,
            names,
            n_estimators=params.n_estimators,
            max_samples=params.max_samples,
            target_alert_rate=params.target_alert_rate,
            random_state=params.seed,
        )
        # Calibrated on the windows after the split, and on those of a replay that starts there (cold windows).
        X_cold = np.asarray(cold.rows[entity_type], dtype=np.float64).reshape(-1, len(names))
        held_entities = np.concatenate([entities[~fit_mask], np.asarray(cold.entity[entity_type], dtype=object)])
        scorer.fit(X_fit, calibration_rows=np.concatenate([X[~fit_mask], X_cold]), calibration_entities=held_entities)
        scorers[entity_type] = scorer
        rows_used[entity_type] = {
            "fit": len(X_fit),
            "held_out": int((~fit_mask).sum()),
            "held_out_cold": len(X_cold),
            "entities": scorer.calibration_entities_,
        }
    metadata = {
        "training": {
            "events": len(frame),
            "from": format_ts(t0),
            "to": format_ts(t1),
            "data_sha256": data_hash(frame),
            "rows": rows_used,
            # How addresses became networks in training ("prefix", or the IP database's source): a model trained
            # one way sees other feature values when detecting the other way.
            "network_identity": networks.source,
            "params": {
                "seed": params.seed,
                "target_alert_rate": params.target_alert_rate,
                "fit_share": params.fit_share,
                "n_estimators": params.n_estimators,
                "max_samples": params.max_samples,
            },
        },
        "libraries": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "skops": skops.__version__,
        },
        "features": {t: list(n) for t, n in FEATURES.items()},
    }
    model = DetectionModel(scorers, spec, metadata)
    finalize_metadata(model)
    return model, baselines
