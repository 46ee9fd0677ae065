"""The shipped model loads, and `make model`'s recipe reproduces it: same data hash, same version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.detection.training import TrainingParams, data_hash, train_model
from pipeline.scoring.model import load_model, model_version, save_model
from pipeline.simulate import SimulationParams, simulate

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "default"


def test_the_shipped_model_loads_and_is_consistent() -> None:
    model = load_model(SHIPPED)
    assert model.version == model_version(json.loads((SHIPPED / "model.json").read_text()))
    assert set(model.scorers) == {"jti", "sub", "ip"}
    for scorer in model.scorers.values():
        assert 0.5 < scorer.threshold_ < 1.0


@pytest.mark.timeout(600)
def test_the_recipe_reproduces_the_shipped_model(tmp_path: Path) -> None:
    shipped = json.loads((SHIPPED / "model.json").read_text())
    # The recipe of `make model`: 90 simulated minutes of attack-free traffic from a large population
    # (600 browser users, 300 mobile, 30 services, 16 offices), seed 1; forests seed 0.
    population = {"browsers": 600, "mobile": 300, "services": 30, "offices": 16}
    params = SimulationParams(minutes=90, seed=1, threats=(), **population)
    events = simulate(params).events.drop(columns=["incident_id"])
    assert data_hash(events) == shipped["training"]["data_sha256"]
    model, _ = train_model(events, TrainingParams(seed=0))
    version = save_model(model, tmp_path)
    if model.metadata["libraries"] == shipped["libraries"]:
        assert version == shipped["version"]
    else:
        # Other library versions may build other trees; the thresholds must still agree closely.
        for entity_type, scorer in model.scorers.items():
            assert abs(scorer.threshold_ - shipped["scorers"][entity_type]["threshold"]) < 0.02
