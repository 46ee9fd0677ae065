"""The compiled Isolation Forest, the entity scorer's severities and reasons, and model persistence."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tomllib
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.base import clone
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression

from pipeline.detection.replay import replay
from pipeline.detection.training import TrainingParams, collect_features, train_model
from pipeline.errors import ModelError
from pipeline.events import SEVERITIES
from pipeline.features import FEATURES
from pipeline.scoring import EntityScorer, calibrate_threshold
from pipeline.scoring import forest as forest_module
from pipeline.scoring.forest import CompiledForest
from pipeline.scoring.model import DetectionModel, load_model, model_version, save_model
from pipeline.simulate import SimulationParams, simulate
from pipeline.windows import WindowSpec
from tests.support.paths import DEFAULT_MODEL, REPO
from tests.support.require import skip_or_fail

# ------------------------------------------------------------------------------- compiled forest


@pytest.fixture(params=[pytest.param(False, id="numpy-walk"), pytest.param(True, id="compiled-walk")])
def compiled_walk(request: pytest.FixtureRequest) -> bool:
    """Both walks of the trees: numpy's, and the one scripts/build-accel compiles (``_forest_walk.pyx``)."""
    if request.param:
        _require_compiled_walk()
    return request.param


def _require_compiled_walk() -> None:
    """Skip where ``_forest_walk`` is not built — fail instead under JWTWATCH_REQUIRE_ACCEL=1 (CI)."""
    if forest_module.compiled_path_lengths is None:
        skip_or_fail("ACCEL", "_forest_walk is not compiled here (run scripts/build-accel)")


def _training_data(kind: str, rng: np.random.Generator) -> np.ndarray:
    X = rng.normal(size=(700, 6))
    if kind == "ties":
        X = rng.integers(0, 4, size=(700, 6)).astype(np.float64)  # few distinct values, many equal rows
    elif kind == "constant_columns":
        X[:, 1] = 3.0
        X[:, 4] = 0.0
    elif kind == "extreme":
        X[:10] *= 1e6
        X[10:20] = -1e12
    return X


def _straddling(threshold: float) -> float:
    """A float64 value on one side of ``threshold`` whose float32 rounding lies on the other side (or on it).

    Trees compare float32-cast inputs: a scorer that skipped the cast would send this value the other way.
    """
    nearest = np.float32(threshold)
    if float(nearest) <= threshold:
        midpoint = (float(nearest) + float(np.nextafter(nearest, np.float32(np.inf)))) / 2
        return threshold + (midpoint - threshold) / 2  # above the threshold, rounds down to `nearest`
    midpoint = (float(nearest) + float(np.nextafter(nearest, np.float32(-np.inf)))) / 2
    return threshold - (threshold - midpoint) / 2  # below the threshold, rounds up to `nearest`


def _queries(X: np.ndarray, forest: IsolationForest, rng: np.random.Generator) -> np.ndarray:
    """Training rows, fresh random rows, far outliers, and rows on (and straddling) split thresholds."""
    parts = [X[:100], rng.normal(size=(100, X.shape[1])) * 5, np.zeros((3, X.shape[1]))]
    parts.append(np.full((2, X.shape[1]), 1e30))
    parts.append(np.full((2, X.shape[1]), -1e30))
    parts.append(np.full((2, X.shape[1]), 3.0))  # the constant column's value
    on_split = []
    for tree, used in zip(forest.estimators_[:5], forest.estimators_features_[:5], strict=True):
        t = tree.tree_
        for node in np.flatnonzero(t.children_left != -1)[:20]:
            row = X[node % len(X)].copy()
            value = np.float32(t.threshold[node])
            for candidate in (value, np.nextafter(value, np.float32(np.inf)), _straddling(t.threshold[node])):
                row = row.copy()
                row[used[t.feature[node]]] = candidate
                on_split.append(row)
    if on_split:  # a forest of one-sample trees has no splits
        parts.append(np.asarray(on_split))
    return np.vstack(parts)


FOREST_PARAMS = [
    pytest.param(256, 100, 1.0, id="256x100"),
    pytest.param(64, 37, 1.0, id="64x37"),
    pytest.param(700, 10, 1.0, id="all-samples"),
    pytest.param("auto", 50, 1.0, id="auto"),
    pytest.param(0.3, 20, 1.0, id="share-of-samples"),
    pytest.param(128, 50, 0.5, id="half-the-features"),
    pytest.param(128, 50, 2, id="two-features"),
    pytest.param(2, 15, 1.0, id="two-samples"),
]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("kind", ["random", "ties", "constant_columns", "extreme"])
@pytest.mark.parametrize(("max_samples", "n_estimators", "max_features"), FOREST_PARAMS)
def test_compiled_forest_equals_score_samples(
    kind: str, max_samples: int | float | str, n_estimators: int, max_features: float | int, compiled_walk: bool
) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{kind}/{max_samples}/{n_estimators}".encode()))
    X = _training_data(kind, rng)
    forest = IsolationForest(
        n_estimators=n_estimators, max_samples=max_samples, max_features=max_features, random_state=11
    ).fit(X)
    queries = _queries(X, forest, rng)
    expected = -forest.score_samples(queries)
    got = CompiledForest(forest).anomaly(queries, compiled=compiled_walk)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_compiled_forest_of_single_sample_trees_equals_score_samples(compiled_walk: bool) -> None:
    """``max_samples=1``: every tree is one leaf and sklearn's normaliser is 0; sklearn then scores 2**-1."""
    X = np.random.default_rng(9).normal(size=(50, 3))
    forest = IsolationForest(n_estimators=5, max_samples=1, random_state=0).fit(X)
    got = CompiledForest(forest).anomaly(X[:10], compiled=compiled_walk)
    np.testing.assert_allclose(got, -forest.score_samples(X[:10]), atol=1e-12)


def test_compiled_forest_scores_float32_and_integer_input_like_sklearn(compiled_walk: bool) -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 4))
    forest = IsolationForest(n_estimators=30, max_samples=128, random_state=0).fit(X)
    compiled = CompiledForest(forest)
    for queries in (X[:50].astype(np.float32), np.round(X[:50] * 3).astype(np.int64), X[:50].tolist()):
        got = compiled.anomaly(queries, compiled=compiled_walk)
        np.testing.assert_allclose(got, -forest.score_samples(np.asarray(queries)), atol=1e-12)


def test_compiled_forest_scores_a_row_the_same_alone_or_in_a_batch(compiled_walk: bool) -> None:
    rng = np.random.default_rng(6)
    X = rng.normal(size=(300, 5))
    compiled = CompiledForest(IsolationForest(n_estimators=25, random_state=0).fit(X))
    batch = compiled.anomaly(X[:40], compiled=compiled_walk)
    alone = np.array([compiled.anomaly(X[i : i + 1], compiled=compiled_walk)[0] for i in range(40)])
    np.testing.assert_allclose(batch, alone, rtol=0, atol=1e-12)  # summation order may differ by an ulp
    assert len(set(batch.round(12))) > 10  # not a constant


def test_both_walks_give_identical_scores_on_the_shipped_model() -> None:
    """Not just within 1e-12 of scikit-learn: the same path lengths summed in the same order, bit for bit."""
    _require_compiled_walk()
    model = load_model(DEFAULT_MODEL)
    rng = np.random.default_rng(3)
    for scorer in model.scorers.values():
        rows = np.vstack([rng.exponential(2.0, size=(500, len(scorer.features))), np.zeros((1, len(scorer.features)))])
        compiled = CompiledForest(scorer.forest_)
        assert np.array_equal(compiled.anomaly(rows, compiled=True), compiled.anomaly(rows, compiled=False))


@pytest.mark.parametrize("shape", [(10, 3), (10, 5), (4,), (2, 4, 1), (0,)])
def test_compiled_forest_refuses_the_wrong_shape(shape: tuple[int, ...]) -> None:
    forest = IsolationForest(n_estimators=5, random_state=0).fit(np.random.default_rng(0).normal(size=(50, 4)))
    with pytest.raises(ValueError, match="4 features"):
        CompiledForest(forest).anomaly(np.zeros(shape))


# --------------------------------------------------------------------------------------- scorer


NAMES = ("events", "distinct_ips", "distinct_networks", "novel_network_share")


@pytest.fixture(scope="module")
def scorer() -> EntityScorer:
    rng = np.random.default_rng(3)
    X = np.column_stack(
        [
            np.log1p(rng.poisson(20, 2000)),  # events (log scale)
            rng.integers(1, 3, 2000).astype(float),  # distinct_ips: 1-2
            np.ones(2000),  # distinct_networks: always 1
            rng.uniform(0, 0.1, 2000),  # novel_network_share: small
        ]
    )
    return EntityScorer("jti", NAMES, n_estimators=50, max_samples=256, target_alert_rate=0.01, random_state=0).fit(X)


def test_severity_is_none_below_the_threshold_and_rises_with_the_score(scorer: EntityScorer) -> None:
    scorer_threshold = scorer.threshold_
    try:
        scorer.threshold_ = 0.6
        assert scorer.severity(0.3) is None
        assert scorer.severity(0.5999) is None
        assert scorer.severity(0.6) == "low"  # at the threshold: alert
        assert scorer.severity(0.62) == "low"
        assert scorer.severity(0.67) == "medium"
        assert scorer.severity(0.75) == "high"
        assert scorer.severity(0.9) == "critical"
        assert scorer.severity(1.0) == "critical"
        ranks = [SEVERITIES.index(s) if s else -1 for s in map(scorer.severity, np.linspace(0, 1, 501))]
        assert ranks == sorted(ranks)
        assert set(ranks) == {-1, 0, 1, 2, 3}
    finally:
        scorer.threshold_ = scorer_threshold


def test_threshold_is_calibrated_to_the_target_rate(scorer: EntityScorer) -> None:
    held_out = np.linspace(0.4, 0.8, 1001)
    threshold = calibrate_threshold(held_out, scorer.target_alert_rate)
    calibrated = scorer.with_threshold(threshold.value)
    alerted = np.mean([calibrated.severity(s) is not None for s in held_out])
    assert alerted == pytest.approx(scorer.target_alert_rate, abs=0.002)
    assert threshold.entities == 1001 and threshold.max_score == 0.8


def test_fit_calibrates_on_each_held_out_entitys_highest_score(scorer: EntityScorer) -> None:
    """``fit`` with held-out rows and their entities: the threshold is the quantile of the entities' highest
    scores, exactly as calibrating those by hand; without them, of the training rows' scores."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(600, len(NAMES)))
    held_out = rng.normal(size=(300, len(NAMES))) * rng.choice([1.0, 3.0], size=(300, 1))
    entities = np.asarray([f"e{i % 40}" for i in range(300)], dtype=object)
    params = {"n_estimators": 30, "max_samples": 128, "target_alert_rate": 0.05, "random_state": 1}
    fitted = EntityScorer("sub", NAMES, **params).fit(X, calibration_rows=held_out, calibration_entities=entities)
    highest = [fitted.score_samples(held_out[entities == e]).max() for e in sorted(set(entities))]
    expected = calibrate_threshold(np.asarray(highest), 0.05)
    assert (fitted.threshold_, fitted.calibration_entities_, fitted.calibration_max_) == (
        expected.value,
        40,
        expected.max_score,
    )
    on_training_rows = EntityScorer("sub", NAMES, **params).fit(X)
    assert on_training_rows.threshold_ == calibrate_threshold(on_training_rows.score_samples(X), 0.05).value
    assert on_training_rows.calibration_entities_ == len(X)


def test_the_scorer_follows_scikit_learns_estimator_conventions(scorer: EntityScorer) -> None:
    """``__init__`` stores the parameters and nothing else, ``fit`` returns the scorer, fitted state ends in
    ``_``, scoring an unfitted scorer raises ``NotFittedError``, and scoring changes nothing."""
    params = {"n_estimators": 50, "max_samples": 256, "target_alert_rate": 0.01, "random_state": 0}
    unfitted = EntityScorer("jti", NAMES, **params)
    assert unfitted.get_params() == {"entity_type": "jti", "features": NAMES, **params}
    assert vars(unfitted) == unfitted.get_params()
    with pytest.raises(NotFittedError):
        unfitted.score_samples(np.zeros((1, len(NAMES))))
    with pytest.raises(NotFittedError):
        unfitted.with_threshold(0.7)
    fresh = clone(scorer)
    assert fresh.get_params() == scorer.get_params() and vars(fresh) == fresh.get_params()
    X = np.random.default_rng(8).normal(size=(300, len(NAMES)))
    assert unfitted.fit(X) is unfitted
    fitted_state = {name for name in vars(unfitted) if name not in unfitted.get_params()}
    assert fitted_state and all(name.endswith("_") for name in fitted_state), fitted_state
    before = dict(vars(unfitted))
    unfitted.score_samples(X[:5])
    assert vars(unfitted).keys() == before.keys() and all(vars(unfitted)[k] is v for k, v in before.items())
    raised = unfitted.with_threshold(0.99)
    assert raised.threshold_ == 0.99 and unfitted.threshold_ == before["threshold_"]
    assert raised.forest_ is unfitted.forest_
    with pytest.raises(ValueError, match="4 features"):
        EntityScorer("jti", NAMES).fit(X[:, :3])


def test_reasons_name_the_features_above_their_baseline(scorer: EntityScorer) -> None:
    usual = list(scorer.median_)
    assert scorer.reasons(usual) == []

    many_ips = list(usual)
    many_ips[1] = 9.0
    reasons = scorer.reasons(many_ips)
    assert [r.feature for r in reasons] == ["distinct_ips"]
    assert (reasons[0].value, reasons[0].baseline, reasons[0].unit) == (9.0, 2.0, "count")
    assert reasons[0].text == "distinct client IPs: 9 (usually ≤ 2)"

    # Two features up: both named, the larger excess first; a feature *below* its baseline is never named.
    stolen = list(usual)
    stolen[2] = 4.0  # networks: 3 above a spread of ~0 -> a huge excess
    stolen[3] = 0.2  # novelty: above its p99, less so
    stolen[1] = 0.0  # fewer IPs than usual
    assert [r.text for r in scorer.reasons(stolen)] == [
        "distinct networks (autonomous systems with an IP database, else /16 prefixes): 4 (usually ≤ 1)",
        "share of networks never seen for this subject: 20 % (usually ≤ 10 %)",
    ]

    # Log-scaled features show the count itself, and say so without "(log scale)".
    busy = list(usual)
    busy[0] = float(np.log1p(5000))
    (reason,) = scorer.reasons(busy)
    assert reason.feature == "events" and reason.value == 5000 and reason.baseline == 31
    assert reason.text == "uses in the window: 5000 (usually ≤ 31)"

    everything = [50.0, 50.0, 50.0, 50.0]
    assert len(scorer.reasons(everything)) == 3  # top 3 only
    assert len(scorer.reasons(everything, top=2)) == 2


def test_a_value_at_its_baseline_is_never_a_reason(scorer: EntityScorer) -> None:
    """The measured symptom was "distinct client IPs: 2.0 (usually ≤ 2.0)": at the p99, or above it only by float
    noise or by less than what is shown, a value explains nothing."""
    assert list(scorer.p99_[1:3]) == [2.0, 1.0]  # what the rows below rely on
    at_baseline = [float(np.log1p(31)), 2.0, 1.0 + 1e-12, 0.0992]  # 31 uses; 2 IPs; 1 network; a 9.92 % novel share
    assert scorer.reasons(at_baseline) == []
    assert scorer.p99_[3] < at_baseline[3]  # above the raw p99, by less than the percent the text would show
    # Whatever the row, a named value is above its baseline in the units the text shows.
    rng = np.random.default_rng(11)
    for row in rng.uniform(0.0, 4.0, size=(300, 4)):
        for reason in scorer.reasons(list(row)):
            assert reason.value > reason.baseline, reason
            assert "usually ≤" in reason.text and ".0 (" not in reason.text


def test_a_flagged_row_with_nothing_above_its_baseline_is_an_unusual_combination(scorer: EntityScorer) -> None:
    row = [float(np.log1p(30)), 2.0, 1.0, 0.09]  # each at most its baseline
    assert scorer.reasons(row) == []
    combination = scorer.combination(row)
    assert combination.features == ("events", "novel_network_share")  # the IPs sit at their median: not telling
    assert combination.text.startswith("unusual combination, each value within its usual range: ")
    assert "uses in the window 30 (typically 20)" in combination.text
    assert "share of networks never seen for this subject 9 % (typically 5 %)" in combination.text
    assert combination.to_dict() == {"combination": list(combination.features), "text": combination.text}
    assert scorer.combination(list(scorer.median_)).features == ()  # nothing above even the median


def test_scorer_scores_are_the_forests_anomaly_score(scorer: EntityScorer) -> None:
    rows = np.asarray([list(scorer.median_), [5.0, 9.0, 4.0, 0.9]])
    scores = scorer.score_samples(rows)
    np.testing.assert_allclose(scores, -scorer.forest_.score_samples(rows), atol=1e-12)
    assert scores[1] > scores[0]
    assert scorer.severity(scores[0]) is None
    assert scorer.severity(scores[1]) is not None


def test_unsupported_scikit_learn_versions_score_through_the_public_api(scorer: EntityScorer) -> None:
    """Outside the tested range the private forest internals are not read: a warning, then sklearn's own
    ``score_samples`` — the same scores."""
    rows = np.random.default_rng(12).normal(size=(50, len(NAMES)))
    assert forest_module.internals_supported("1.4.0") and forest_module.internals_supported("1.9.1")
    for version in ("1.3.2", "1.10.0", "1.10.dev0", "2.0.0"):
        assert not forest_module.internals_supported(version)
        with pytest.warns(RuntimeWarning, match=f"scikit-learn {re.escape(version)} is outside"):
            evaluator = forest_module.forest_evaluator(scorer.forest_, version)
        assert isinstance(evaluator, forest_module.PublicForest)
        np.testing.assert_allclose(evaluator.anomaly(rows), scorer.score_samples(rows), rtol=0, atol=1e-12)
    assert isinstance(scorer.evaluator_, CompiledForest)  # this scikit-learn is within the range


def test_the_supported_range_is_the_one_pyproject_allows() -> None:
    """``pyproject.toml`` pins scikit-learn to the versions whose internals ``forest.py`` reads (the upper bound:
    the first minor release not yet tested), and the installed one is within it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (requirement,) = [d for d in project["dependencies"] if d.startswith("scikit-learn")]
    (lowest, first_untested) = forest_module.SUPPORTED_SKLEARN
    assert requirement == f"scikit-learn>={lowest[0]}.{lowest[1]},<{first_untested[0]}.{first_untested[1]}"
    assert forest_module.internals_supported()


@pytest.mark.parametrize("walk", ["numpy-walk", "compiled-walk", "public-api"])
def test_the_shipped_model_scores_real_windows_as_isolation_forest_does(walk: str, attacks: pd.DataFrame) -> None:
    """The windows of simulated traffic with attacks, as the engine builds them, scored by the shipped model:
    every path equals ``-IsolationForest.score_samples`` within 1e-12."""
    if walk == "compiled-walk":
        _require_compiled_walk()
    model = load_model(DEFAULT_MODEL)
    collected, _ = collect_features(attacks, model.spec)
    for entity_type, scorer in model.scorers.items():
        rows = np.asarray(collected.rows[entity_type], dtype=np.float64).reshape(-1, len(scorer.features))
        assert len(rows) > 100
        expected = -scorer.forest_.score_samples(rows)
        if walk == "public-api":
            got = forest_module.PublicForest(scorer.forest_).anomaly(rows)
        else:
            assert isinstance(scorer.evaluator_, CompiledForest)
            got = scorer.evaluator_.anomaly(rows, compiled=walk == "compiled-walk")
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        assert expected.max() - expected.min() > 0.3  # from unremarkable windows to nearly alerting ones


# ---------------------------------------------------------------------------------- persistence


@pytest.fixture(scope="module")
def baseline() -> pd.DataFrame:
    sim = simulate(SimulationParams(minutes=15, seed=1, threats=(), browsers=80, mobile=30, services=5, offices=3))
    return sim.events


@pytest.fixture(scope="module")
def attacks() -> pd.DataFrame:
    params = SimulationParams(minutes=8, seed=2, browsers=80, mobile=30, services=5, offices=3, incidents_per_threat=1)
    return simulate(params).events


@pytest.fixture(scope="module")
def saved(baseline: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[DetectionModel, Path]:
    model, _ = train_model(baseline, TrainingParams(n_estimators=50, max_samples=256))
    directory = tmp_path_factory.mktemp("model")
    save_model(model, directory)
    return model, directory


@pytest.fixture
def model_copy(saved: tuple[DetectionModel, Path], tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(saved[1], target)
    return target


def _rewrite_metadata(directory: Path, edit, *, rehash: bool) -> None:
    path = directory / "model.json"
    metadata = json.loads(path.read_text())
    edit(metadata)
    if rehash:
        metadata["version"] = model_version(metadata)
    path.write_text(json.dumps(metadata))


def _rows(entity_type: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.abs(rng.normal(size=(300, len(FEATURES[entity_type])))) * rng.choice([0.5, 2, 8], size=(300, 1))


def test_save_and_load_give_identical_scores(saved: tuple[DetectionModel, Path]) -> None:
    model, directory = saved
    loaded = load_model(directory)
    assert loaded.version == model.version
    assert loaded.spec == model.spec == WindowSpec()
    assert set(loaded.scorers) == set(FEATURES)
    for entity_type, scorer in model.scorers.items():
        again = loaded.scorers[entity_type]
        assert again.features == FEATURES[entity_type]
        assert again.threshold_ == scorer.threshold_
        rows = _rows(entity_type, len(entity_type))
        scores = scorer.score_samples(rows)
        assert np.array_equal(again.score_samples(rows), scores)
        assert [again.severity(s) for s in scores] == [scorer.severity(s) for s in scores]


def test_a_loaded_model_raises_the_same_alerts(saved: tuple[DetectionModel, Path], attacks: pd.DataFrame) -> None:
    model, directory = saved
    before, _ = replay(attacks, model)
    after, _ = replay(attacks, load_model(directory))
    assert before, "the attacks should raise alerts"
    assert [(a.alert_id, a.severity, a.score) for a in after] == [(a.alert_id, a.severity, a.score) for a in before]


def test_version_is_a_hash_of_what_determines_behaviour(saved: tuple[DetectionModel, Path]) -> None:
    metadata = json.loads((saved[1] / "model.json").read_text())
    assert metadata["version"] == model_version(metadata)
    changed = json.loads(json.dumps(metadata))
    changed["scorers"]["ip"]["threshold"] += 0.01
    assert model_version(changed) != metadata["version"]
    changed = dict(metadata, created_at="2030-01-01T00:00:00Z")
    assert model_version(changed) == metadata["version"]


def test_no_pickle_in_the_model_directory(saved: tuple[DetectionModel, Path]) -> None:
    directory = saved[1]
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["forest-ip.skops", "forest-jti.skops", "forest-sub.skops", "model.json"]
    json.loads((directory / "model.json").read_text())
    for name in names[:3]:
        data = (directory / name).read_bytes()
        assert data[:4] == b"PK\x03\x04"  # a zip archive (skops), not a pickle stream (b"\x80")
        with zipfile.ZipFile(directory / name) as archive:
            members = archive.namelist()
            assert "schema.json" in members
            for member in members:
                assert member.endswith((".json", ".npy")), member
                if member.endswith(".npy"):  # numpy arrays that load without allowing pickle
                    np.lib.format.read_array(io.BytesIO(archive.read(member)), allow_pickle=False)
            schema = archive.read("schema.json").decode()
            assert "pickle" not in schema.lower()


def test_load_refuses_a_tampered_model_json(model_copy: Path) -> None:
    def lower_threshold(metadata: dict) -> None:
        metadata["scorers"]["ip"]["threshold"] = 0.1

    _rewrite_metadata(model_copy, lower_threshold, rehash=False)
    with pytest.raises(ModelError, match="version hash"):
        load_model(model_copy)


@pytest.mark.parametrize("tamper", ["append", "flip", "truncate", "delete"])
def test_load_refuses_a_tampered_skops_file(model_copy: Path, tamper: str) -> None:
    path = model_copy / "forest-sub.skops"
    data = path.read_bytes()
    if tamper == "append":
        path.write_bytes(data + b"\0")
    elif tamper == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif tamper == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()
    with pytest.raises(ModelError, match=r"forest-sub\.skops.*(hash|missing)"):
        load_model(model_copy)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_load_refuses_a_directory_without_a_model(tmp_path: Path, make: str) -> None:
    directory = tmp_path / "nothing-here"
    if make == "empty":
        directory.mkdir()
    with pytest.raises(ModelError, match=r"model\.json missing"):
        load_model(directory)


def test_load_refuses_unreadable_metadata(model_copy: Path) -> None:
    (model_copy / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read"):
        load_model(model_copy)


def _rename_ip_feature(metadata: dict) -> None:
    metadata["scorers"]["ip"]["features"][0] = "requests"


def _drop_ip_scorer(metadata: dict) -> None:
    del metadata["scorers"]["ip"]


def _extra_scorer(metadata: dict) -> None:
    metadata["scorers"]["session"] = dict(metadata["scorers"]["ip"])


def _reorder_jti_features(metadata: dict) -> None:
    metadata["scorers"]["jti"]["features"].reverse()


@pytest.mark.parametrize(
    "edit",
    [_rename_ip_feature, _reorder_jti_features, _drop_ip_scorer, _extra_scorer],
    ids=["renamed", "reordered", "entity type missing", "unknown entity type"],
)
def test_load_refuses_a_model_made_for_other_features(model_copy: Path, edit) -> None:
    """Even with a consistent version hash (a model from another jwtwatch): features must match exactly."""
    _rewrite_metadata(model_copy, edit, rehash=True)
    with pytest.raises(ModelError, match=r"feature|entity"):
        load_model(model_copy)


def _skops_of(directory: Path, name: str, obj: object) -> None:
    sio.dump(obj, directory / name)

    def update(metadata: dict) -> None:
        metadata["files"][name] = hashlib.sha256((directory / name).read_bytes()).hexdigest()

    _rewrite_metadata(directory, update, rehash=False)


def test_load_refuses_a_skops_file_with_foreign_types(model_copy: Path) -> None:
    _skops_of(model_copy, "forest-ip.skops", {"spec": WindowSpec()})
    with pytest.raises(ModelError, match="not scikit-learn's"):
        load_model(model_copy)


def test_load_refuses_a_skops_file_that_is_not_a_forest(model_copy: Path) -> None:
    _skops_of(model_copy, "forest-ip.skops", LinearRegression())
    with pytest.raises(ModelError, match="IsolationForest"):
        load_model(model_copy)


@pytest.mark.parametrize(
    ("case", "content"),
    [
        ("json array", "[1, 2]"),
        ("json string", '"model"'),
    ],
)
def test_load_refuses_metadata_that_is_not_an_object(model_copy: Path, case: str, content: str) -> None:
    (model_copy / "model.json").write_text(content)
    with pytest.raises(ModelError):
        load_model(model_copy)


def _no_files(metadata: dict) -> None:
    del metadata["files"]


def _bad_window(metadata: dict) -> None:
    metadata["window"]["length_s"] = 301  # not a whole number of 30 s buckets


def _no_scorers(metadata: dict) -> None:
    del metadata["scorers"]


@pytest.mark.parametrize("edit", [_no_files, _bad_window, _no_scorers], ids=["no files", "bad window", "no scorers"])
def test_load_reports_inconsistent_metadata_as_a_model_error(model_copy: Path, edit) -> None:
    """Whatever is wrong inside model.json, the caller (``jwtwatch detect``) gets a ModelError, not a traceback."""
    _rewrite_metadata(model_copy, edit, rehash=True)
    with pytest.raises(ModelError):
        load_model(model_copy)
