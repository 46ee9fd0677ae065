"""The shipped model loads, and `make model`'s recipe reproduces it: same data hash, same version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.detection.training import TrainingParams, data_hash, train_model
from pipeline.scoring.model import load_model, model_version, save_model
from pipeline.simulate import simulate
from pipeline.simulate.family import WorldFamily, train_params
from tests.support.paths import DEFAULT_MODEL, REPO

SHIPPED = DEFAULT_MODEL
#: `make model`'s options, as the recipe below draws its training stream.
RECIPE = (
    "--baseline-only --family-seed 15 --family-region tuning --family-world 0",
    "--minutes 90 --users 600 --services 30 --offices 16",
    "train --events $(MODEL_TRAINING_EVENTS) --model-dir models/default --seed 0 --no-history",
)


def test_the_makefile_recipe_is_the_one_reproduced_here() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile[makefile.index("\nmodel:") :].split("\n\n", 1)[0]
    for options in RECIPE:
        assert options in recipe, f"make model no longer runs {options!r}: update this test with it"


def test_the_shipped_model_loads_and_is_consistent() -> None:
    model = load_model(SHIPPED)
    assert model.version == model_version(json.loads((SHIPPED / "model.json").read_text()))
    assert set(model.scorers) == {"jti", "sub", "ip"}
    for scorer in model.scorers.values():
        assert 0.5 < scorer.threshold_ < 1.0


@pytest.mark.timeout(600)
def test_the_recipe_reproduces_the_shipped_model(tmp_path: Path) -> None:
    shipped = json.loads((SHIPPED / "model.json").read_text())
    # The recipe of `make model`: the attack-free stream (train_params) of world 0 of the tuning region of the
    # simulator family with seed 15 — 90 simulated minutes, 600 browser users (mobile users: the world's drawn
    # share of them), 30 services, 16 offices; forests seed 0.
    world = WorldFamily(seed=15, minutes=90, browsers=600, services=30, offices=16).world(0, "tuning")
    params = train_params(world.params)
    assert params.threats == () and params.seed != world.params.seed  # not the world's evaluation stream
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
