"""Replaying recorded usage events through the streaming engine, in event time (``jwtwatch detect``)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from pipeline.detection.batch import frame_to_batch, micro_batches
from pipeline.detection.collector import collector_paused
from pipeline.detection.engine import DetectionEngine
from pipeline.events import Alert
from pipeline.features.baselines import Baselines
from pipeline.networks import PREFIXES, NetworkResolver
from pipeline.scoring.model import DetectionModel

#: ``DetectionEngine.on_scored``: (entity type, keys, event times, feature rows, scores).
ScoredObserver = Callable[[str, list[str], list[float], list[list[float]], list[float]], None]


def replay(
    frame: pd.DataFrame,
    model: DetectionModel,
    *,
    baselines: Baselines | None = None,
    progress: Callable[[int], None] | None = None,
    max_batch_events: int = 8192,
    max_batch_span_s: float = 5.0,
    on_scored: ScoredObserver | None = None,
    networks: NetworkResolver = PREFIXES,
) -> tuple[list[Alert], DetectionEngine]:
    """Every alert, in the order first fired, in its latest (most severe) state.

    ``on_scored`` sees every scored window (the archive's features and scores: ``ScoreRecorder``)."""
    engine = DetectionEngine(model, baselines=baselines, networks=networks)
    engine.on_scored = on_scored
    latest: dict[str, Alert] = {}
    for batch in micro_batches(frame_to_batch(frame), max_batch_events, max_batch_span_s):
        with collector_paused():
            alerts = engine.process(batch)
        for alert in alerts:
            latest[alert.alert_id] = alert  # dicts keep first-insertion order: first fired first
        if progress is not None:
            progress(len(batch))
    return list(latest.values()), engine
