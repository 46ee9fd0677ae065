"""Calibrating the forest's thresholds from analysts' verdicts (``jwtwatch train --verdicts ... --calibrate``).

A threshold only rises, only from forest-only alerts judged benign (rules fire whatever the threshold), only with
enough of them, and never above an alert judged compromised; the judged alerts' feature rows are scored by the
model being calibrated."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from pipeline.cli import app as cli_app
from pipeline.detection.calibration import MIN_BENIGN, calibrate
from pipeline.detection.precision import read_alert_features
from pipeline.events import Alert, AlertVerdict
from pipeline.scoring.model import DetectionModel, load_model
from pipeline.simulate import SimulationParams, simulate
from pipeline.simulate.io import write_events
from tests.support.paths import DEFAULT_MODEL


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    return load_model(DEFAULT_MODEL)


def row_scoring(model: DetectionModel, entity_type: str, target: float) -> dict[str, float]:
    """A feature row of ``entity_type`` whose score under ``model`` is close to ``target`` (searched along the
    line from the median benign row to a far-out one)."""
    scorer = model.scorers[entity_type]
    low = np.asarray(scorer.median_, dtype=np.float64)
    high = np.asarray(scorer.p99_, dtype=np.float64) * 4 + 2
    rows = np.linspace(low, high, 400)
    scores = scorer.score_samples(rows)
    best = int(np.argmin(np.abs(scores - target)))
    return dict(zip(scorer.features, rows[best].tolist(), strict=True))


def verdict(alert_id: str, judged: str, entity_type: str = "jti", rules: tuple[str, ...] = ()) -> AlertVerdict:
    return AlertVerdict(
        verdict_id=str(uuid.uuid4()), alert_id=alert_id, verdict=judged, ts="2026-12-07T10:00:00.000Z", by="admin",
        entity_type=entity_type, entity=f"e-{alert_id}", severity="low", rules=list(rules),
        suppress_until="2026-12-08T10:00:00.000Z" if judged == "benign" else None,
    )  # fmt: skip


def judged(model: DetectionModel, scores: dict[str, tuple[str, float]], entity_type: str = "jti"):
    """Verdicts and judged alerts: alert id -> (verdict, wanted score)."""
    verdicts = [verdict(aid, what, entity_type) for aid, (what, _) in scores.items()]
    alerts = {aid: (entity_type, row_scoring(model, entity_type, score)) for aid, (_, score) in scores.items()}
    return verdicts, alerts


def actual(model: DetectionModel, alerts: dict, alert_id: str) -> float:
    entity_type, row = alerts[alert_id]
    scorer = model.scorers[entity_type]
    return float(scorer.score_samples(np.asarray([[row[n] for n in scorer.features]]))[0])


def test_benign_forest_alerts_raise_the_threshold_just_above_them(model: DetectionModel) -> None:
    before = model.scorers["jti"].threshold_
    wanted = {f"b{i}": ("benign", before + 0.01 + 0.005 * i) for i in range(MIN_BENIGN)}
    verdicts, alerts = judged(model, wanted)
    result = {c.entity_type: c for c in calibrate(model, verdicts, alerts)}["jti"]
    highest = max(actual(model, alerts, aid) for aid in wanted)
    assert result.threshold_before == before
    assert highest < result.threshold_after <= highest + 2e-6
    assert result.benign == MIN_BENIGN and result.benign_quiet_after == MIN_BENIGN
    assert model.scorers["jti"].threshold_ == before  # the model itself is not changed


@pytest.mark.parametrize("above", [0.021, 0.023, 0.025, 0.027, 0.029, 0.031, 0.033, 0.035, 0.037, 0.039])
def test_never_above_an_alert_judged_compromised(model: DetectionModel, above: float) -> None:
    """Thresholds are kept to 6 decimals: rounding the cap up would put it a hair above the confirmed score
    (the outside review's case: benign at 0.7, compromised at 0.6234567 -> 0.623457)."""
    before = model.scorers["jti"].threshold_
    wanted = {f"b{i}": ("benign", before + 0.06) for i in range(MIN_BENIGN)}
    wanted["c"] = ("compromised", before + above)
    verdicts, alerts = judged(model, wanted)
    result = {c.entity_type: c for c in calibrate(model, verdicts, alerts)}["jti"]
    assert result.threshold_before < result.threshold_after <= actual(model, alerts, "c")
    assert result.threshold_after == pytest.approx(actual(model, alerts, "c"), abs=1e-6)
    assert result.compromised == 1 and result.compromised_quiet_after == 0


def test_never_lowers_a_threshold(model: DetectionModel) -> None:
    before = model.scorers["jti"].threshold_
    wanted = {f"b{i}": ("benign", before - 0.1) for i in range(MIN_BENIGN)}  # would have been quiet anyway
    verdicts, alerts = judged(model, wanted)
    assert {c.entity_type: c for c in calibrate(model, verdicts, alerts)}["jti"].threshold_after == before


def test_too_few_benign_verdicts_move_nothing(model: DetectionModel) -> None:
    before = model.scorers["jti"].threshold_
    wanted = {f"b{i}": ("benign", before + 0.05) for i in range(MIN_BENIGN - 1)}
    verdicts, alerts = judged(model, wanted)
    result = {c.entity_type: c for c in calibrate(model, verdicts, alerts)}["jti"]
    assert not result.moved and result.benign == MIN_BENIGN - 1


def test_alerts_a_rule_raised_are_left_out(model: DetectionModel) -> None:
    """A rule fires whatever the threshold: raising it for a rule's alert would silence the forest for nothing."""
    before = model.scorers["jti"].threshold_
    wanted = {f"b{i}": ("benign", before + 0.05) for i in range(MIN_BENIGN)}
    _, alerts = judged(model, wanted)
    verdicts = [verdict(aid, "benign", rules=("token_fanout",)) for aid in wanted]
    assert not {c.entity_type: c for c in calibrate(model, verdicts, alerts)}["jti"].moved


def test_rows_of_other_features_are_left_out(model: DetectionModel) -> None:
    before = model.scorers["jti"].threshold_
    wanted = {f"b{i}": ("benign", before + 0.05) for i in range(MIN_BENIGN)}
    verdicts, alerts = judged(model, wanted)
    for aid in wanted:
        alerts[aid] = ("jti", {"distinct_prefix16": 3.0})  # a model of older features wrote it
    assert {c.entity_type: c for c in calibrate(model, verdicts, alerts)}["jti"].benign == 0


def test_train_calibrate_applies_and_records_it(tmp_path: Path, model: DetectionModel) -> None:
    events = tmp_path / "baseline.parquet"
    write_events(
        simulate(SimulationParams(minutes=8, browsers=60, mobile=30, services=3, offices=2, threats=())), events
    )
    # Judged alerts far above any threshold, written as `jwtwatch detect` writes them, plus a line of garbage.
    wanted = {f"b{i}": ("benign", 0.9) for i in range(MIN_BENIGN)}
    verdicts, rows = judged(model, wanted)
    alerts_file, verdicts_file = tmp_path / "alerts.jsonl", tmp_path / "verdicts.jsonl"
    with alerts_file.open("wb") as out:
        for aid, (entity_type, features) in rows.items():
            out.write(orjson.dumps(_alert(aid, entity_type, features)) + b"\n")
        out.write(b"{garbage\n")
    verdicts_file.write_bytes(b"".join(v.to_json() + b"\n" for v in verdicts))
    assert len(read_alert_features(alerts_file)[0]) == MIN_BENIGN
    args = ["train", "--events", str(events), "--model-dir", str(tmp_path / "m"), "--verdicts", str(verdicts_file)]
    result = CliRunner().invoke(cli_app, [*args, "--calibrate", "--verdict-alerts", str(alerts_file)])
    assert result.exit_code == 0, result.output
    assert "calibration from analysts' verdicts" in result.output and "1 bad alert record(s) skipped" in result.output
    calibrated = load_model(tmp_path / "m")
    record = calibrated.metadata["calibration"]["jti"]
    assert record["benign"] == MIN_BENIGN and record["to"] > record["from"]
    assert calibrated.scorers["jti"].threshold_ == record["to"]
    # Without --verdict-alerts a verdict file cannot calibrate: the judged alerts' rows are needed.
    refused = CliRunner().invoke(cli_app, [*args, "--calibrate"])
    assert refused.exit_code == 2 and "--verdict-alerts" in refused.output


def _alert(alert_id: str, entity_type: str, features: dict[str, float]) -> dict:
    alert = Alert(
        alert_id=alert_id, ts="2026-12-07T09:00:00.000Z", entity_type=entity_type, entity=f"e-{alert_id}",
        window_start="2026-12-07T08:55:00.000Z", window_end="2026-12-07T09:00:00.000Z", score=0.9, severity="high",
        model_version="x", type="token.anomaly", features=features, reasons=[],
    )  # fmt: skip
    return orjson.loads(alert.to_json())


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_a_damaged_gzip_verdict_or_alert_file_is_one_line(tmp_path: Path, damage: str) -> None:
    import gzip

    whole = gzip.compress(b"".join(verdict(f"a{i}", "benign").to_json() + b"\n" for i in range(200)))
    data = whole[: len(whole) // 2] if damage == "truncated" else whole[:20] + b"\xff" * 40 + whole[60:]
    path = tmp_path / "verdicts.jsonl.gz"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="damaged gzip"):
        read_alert_features(path)
    result = CliRunner().invoke(
        cli_app, ["train", "--events", str(tmp_path / "none.jsonl"), "--model-dir", str(tmp_path / "m"),
                  "--verdicts", str(path)],
    )  # fmt: skip
    assert result.exit_code == 2 and "damaged gzip" in result.output and "Traceback" not in result.output
