"""The engine's output is pinned: optimising windows, features or the engine must not change a single value.

A simulated stream with threats (10 minutes, seed 5, two incidents per threat) is replayed through the shipped
model, and the same stream through a model-less engine that collects feature rows (the training path). The
golden file ``tests/data/engine_golden.npz`` holds what the engine produced when it was captured: the alert
ids, every collected feature row (compared to 1e-12), every forest score of the replay (1e-12), and digests of
the keys and event times those rows belong to (copied values, so compared exactly).

Regenerate only for an intended change of features or scores (which also changes the shipped model):
``.venv/bin/python -m tests.detection.test_engine_golden``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.detection.batch import frame_to_batch, micro_batches
from pipeline.detection.engine import Collected, DetectionEngine
from pipeline.detection.replay import replay
from pipeline.features import FEATURES
from pipeline.scoring.model import load_model
from pipeline.simulate import SimulationParams, simulate
from tests.support.paths import DEFAULT_MODEL, TEST_DATA

GOLDEN = TEST_DATA / "engine_golden.npz"
PARAMS = SimulationParams(minutes=10, seed=5, incidents_per_threat=2)


def _digest(values: list[str] | list[float]) -> str:
    """A digest of keys or event times: they are copied, never computed, so they must match exactly."""
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


def capture(frame: pd.DataFrame) -> dict[str, Any]:
    """What the engine makes of ``frame``: the arrays and digests kept in the golden file."""
    out: dict[str, Any] = {}
    model = load_model(DEFAULT_MODEL)
    scored: dict[str, dict[str, list]] = {t: {"keys": [], "ts": [], "scores": []} for t in FEATURES}

    def on_scored(entity_type: str, keys: list[str], ts: list[float], rows: list, scores: list[float]) -> None:
        scored[entity_type]["keys"].extend(keys)
        scored[entity_type]["ts"].extend(ts)
        scored[entity_type]["scores"].extend(scores)

    alerts, _ = replay(frame, model, on_scored=on_scored)
    out["model_version"] = model.version
    out["alert_ids"] = [alert.alert_id for alert in alerts]
    for entity_type, got in scored.items():
        out[f"replay_{entity_type}_keys"] = _digest(got["keys"])
        out[f"replay_{entity_type}_ts"] = _digest(got["ts"])
        out[f"replay_{entity_type}_scores"] = np.asarray(got["scores"], dtype=np.float64)

    collected = Collected()
    engine = DetectionEngine(None, collect=collected)
    for batch in micro_batches(frame_to_batch(frame), 8192, 5.0):
        engine.process(batch)
    for entity_type in FEATURES:
        out[f"collect_{entity_type}_keys"] = _digest(collected.entity[entity_type])
        out[f"collect_{entity_type}_ts"] = _digest(collected.ts[entity_type])
        rows = np.asarray(collected.rows[entity_type], dtype=np.float64)
        out[f"collect_{entity_type}_rows"] = rows.reshape(-1, len(FEATURES[entity_type]))
    return out


def _load() -> dict[str, Any]:
    with np.load(GOLDEN, allow_pickle=False) as data:
        return {key: data[key].item() if data[key].dtype.kind == "U" and data[key].ndim == 0 else data[key]
                for key in data.files}  # fmt: skip


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return _load()


@pytest.fixture(scope="module")
def current() -> dict[str, Any]:
    return capture(simulate(PARAMS).events)


def test_the_golden_stream_has_alerts_of_every_entity_type(golden: dict[str, Any]) -> None:
    # A golden stream without alerts or rows would pin nothing.
    assert len(golden["alert_ids"]) >= 5
    for entity_type in FEATURES:
        assert len(golden[f"collect_{entity_type}_rows"]) > 1000


def test_alert_ids_are_unchanged(golden: dict[str, Any], current: dict[str, Any]) -> None:
    if current["model_version"] != golden["model_version"]:
        pytest.fail("models/default changed since the golden file was captured: regenerate it (see the docstring)")
    assert current["alert_ids"] == list(golden["alert_ids"])


@pytest.mark.parametrize("entity_type", list(FEATURES))
def test_collected_feature_rows_are_unchanged(entity_type: str, golden: dict[str, Any], current: dict) -> None:
    assert current[f"collect_{entity_type}_keys"] == golden[f"collect_{entity_type}_keys"]
    assert current[f"collect_{entity_type}_ts"] == golden[f"collect_{entity_type}_ts"]
    got, want = current[f"collect_{entity_type}_rows"], golden[f"collect_{entity_type}_rows"]
    assert got.shape == want.shape
    bad = np.argwhere(~np.isclose(got, want, rtol=0.0, atol=1e-12))
    assert not len(bad), f"row {bad[0][0]}, {FEATURES[entity_type][bad[0][1]]}: {got[tuple(bad[0])]} != " + str(
        want[tuple(bad[0])]
    )


@pytest.mark.parametrize("entity_type", list(FEATURES))
def test_replay_scores_are_unchanged(entity_type: str, golden: dict[str, Any], current: dict) -> None:
    assert current[f"replay_{entity_type}_keys"] == golden[f"replay_{entity_type}_keys"]
    assert current[f"replay_{entity_type}_ts"] == golden[f"replay_{entity_type}_ts"]
    np.testing.assert_allclose(current[f"replay_{entity_type}_scores"], golden[f"replay_{entity_type}_scores"],
                               rtol=0.0, atol=1e-12)  # fmt: skip


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    captured = capture(simulate(PARAMS).events)
    np.savez_compressed(GOLDEN, **{key: np.asarray(value) for key, value in captured.items()})
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes), {len(captured['alert_ids'])} alerts")
