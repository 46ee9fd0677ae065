"""`jwtwatch simulate`, `train` and `detect` as a user runs them: real processes, real files, small sizes.

Independent commands run side by side (the slow part is each process's start-up and model writing).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.detection.sources import read_events
from pipeline.events import Alert, ts_to_epoch_ms
from pipeline.scoring.model import load_model
from pipeline.simulate import THREATS, simulate
from pipeline.simulate.family import WorldFamily, train_params
from pipeline.simulate.io import read_labels
from tests.support.paths import DEFAULT_MODEL, REPO

JWTWATCH = [sys.executable, "-m", "pipeline.cli"]
SIZE = ["--minutes", "5", "--users", "20"]


@dataclass
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def ok(self) -> Result:
        assert self.returncode == 0, (
            f"jwtwatch {' '.join(self.args)} exited {self.returncode}:\n{self.stdout}\n{self.stderr}"
        )
        return self


def jwtwatch(*commands: tuple[str, ...], cwd: Path) -> list[Result]:
    """Run several jwtwatch commands at once; their results in order."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "COLUMNS": "200"}
    procs = [
        subprocess.Popen(
            [*JWTWATCH, *args], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for args in commands
    ]
    results = []
    for args, proc in zip(commands, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=180)
        results.append(Result(args, proc.returncode, stdout, stderr))
    return results


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    baseline, attacks = jwtwatch(
        ("simulate", "--out", "baseline.jsonl", "--seed", "4", "--baseline-only", *SIZE),
        ("simulate", "--out", "events.jsonl", "--seed", "5", "--labels", "labels.jsonl", *SIZE),
        cwd=root,
    )
    assert "0 incidents" in baseline.ok().stdout
    assert f"{len(THREATS) * 3} incidents" in attacks.ok().stdout
    return root


@pytest.fixture(scope="module")
def trained(work: Path) -> list[Result]:
    return [
        r.ok()
        for r in jwtwatch(
            ("train", "--events", "baseline.jsonl", "--model-dir", "model", "--seed", "0"),
            ("train", "--events", "baseline.jsonl", "--model-dir", "model-again", "--seed", "0"),
            cwd=work,
        )
    ]


def metadata(directory: Path) -> dict:
    return json.loads((directory / "model.json").read_text())


def test_simulate_writes_events_and_labels(work: Path) -> None:
    events = read_events([work / "events.jsonl"])
    assert events.bad == []
    assert len(events.frame) == sum(1 for _ in (work / "events.jsonl").open("rb"))
    incidents = read_labels(work / "labels.jsonl")
    assert {i.threat for i in incidents} == set(THREATS)
    lo, hi = events.frame["ts"].iloc[0] / 1000, events.frame["ts"].iloc[-1] / 1000
    assert all(lo <= i.start <= i.end <= hi for i in incidents)
    assert not (work / "baseline.labels.jsonl").exists()
    assert read_events([work / "baseline.jsonl"]).bad == []


def test_train_writes_a_model_directory(work: Path, trained: list[Result]) -> None:
    model_dir = work / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "baselines.json",  # what training learned of its subjects (--history, the default)
        "forest-ip.skops",
        "forest-jti.skops",
        "forest-sub.skops",
        "model.json",
    ]  # and no temporary files left behind
    meta = metadata(model_dir)
    assert meta["version"] in trained[0].stdout
    assert meta["training"]["events"] == len(read_events([work / "baseline.jsonl"]).frame)
    assert load_model(model_dir).version == meta["version"]


def test_retraining_the_same_data_with_the_same_seed_gives_the_same_version(work: Path, trained: list[Result]) -> None:
    first, again = metadata(work / "model"), metadata(work / "model-again")
    assert first["version"] == again["version"]
    assert first["scorers"] == again["scorers"]
    assert first["training"]["data_sha256"] == again["training"]["data_sha256"]
    shipped = DEFAULT_MODEL / "model.json"
    if shipped.exists():  # other data, same code: another version (the version is not a constant)
        assert json.loads(shipped.read_text())["version"] != first["version"]


@pytest.fixture(scope="module")
def bad_file(work: Path) -> tuple[Path, list[int]]:
    """The attack events with three bad lines inserted; the 1-based numbers of the bad lines."""
    lines = (work / "events.jsonl").read_bytes().splitlines()
    bad = {3: b"{broken json", 10: b"\xff\xfe not utf-8", 500: json.dumps({**json.loads(lines[400]), "ip": "x"})}
    for number in sorted(bad):
        raw = bad[number]
        lines.insert(number - 1, raw if isinstance(raw, bytes) else raw.encode())
    path = work / "events-with-bad-lines.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, sorted(bad)


@pytest.fixture(scope="module")
def detected(work: Path, trained: list[Result], bad_file: tuple[Path, list[int]]) -> dict[str, Result]:
    markup = work / "events-with-markup.jsonl"
    head = (work / "events.jsonl").read_bytes().splitlines(keepends=True)[:2000]
    markup.write_bytes(b"[/oops]\n" + b"".join(head))
    names = ("clean", "bad", "markup", "no-model")
    results = jwtwatch(
        ("detect", "--events", "events.jsonl", "--model-dir", "model", "--alerts-out", "out/alerts.jsonl"),
        ("detect", "--events", bad_file[0].name, "--model-dir", "model", "--alerts-out", "out/alerts-bad.jsonl"),
        ("detect", "--events", markup.name, "--model-dir", "model", "--alerts-out", "out/alerts-markup.jsonl"),
        ("detect", "--events", "events.jsonl", "--model-dir", "no-such-model", "--alerts-out", "out/never.jsonl"),
        cwd=work,
    )
    return dict(zip(names, results, strict=True))


def read_alerts(path: Path) -> list[Alert]:
    return [Alert.from_json(line) for line in path.read_bytes().splitlines()]


def test_detect_writes_alerts_in_the_inputs_event_time(work: Path, detected: dict[str, Result]) -> None:
    detected["clean"].ok()
    alerts = read_alerts(work / "out" / "alerts.jsonl")
    assert alerts, "the injected attacks should raise alerts"
    frame = read_events([work / "events.jsonl"]).frame
    lo, hi = int(frame["ts"].iloc[0]), int(frame["ts"].iloc[-1])
    for alert in alerts:
        assert lo <= ts_to_epoch_ms(alert.ts) <= hi, alert.ts
        assert ts_to_epoch_ms(alert.window_start) <= ts_to_epoch_ms(alert.window_end) <= hi
    assert {a.model_version for a in alerts} == {metadata(work / "model")["version"]}
    assert len({a.alert_id for a in alerts}) == len(alerts)
    assert f"{len(alerts)} alerts" in detected["clean"].stdout
    # The attacks are what alerted: some alert names an entity of an injected incident.
    incidents = read_labels(work / "labels.jsonl")
    involved = {e for i in incidents for e in (*i.jtis, *i.ips, *i.subs)}
    assert any(a.entity in involved for a in alerts)


def test_detect_shows_the_most_severe_alerts_with_their_summary(work: Path, detected: dict[str, Result]) -> None:
    stdout = detected["clean"].ok().stdout
    alerts = read_alerts(work / "out" / "alerts.jsonl")
    assert all(a.summary for a in alerts)  # in the file: every alert
    ranks = ("low", "medium", "high", "critical")
    worst = max(alerts, key=lambda a: (ranks.index(a.severity), a.score))
    assert f"top {min(len(alerts), 10)} of {len(alerts)} alerts" in stdout
    assert worst.summary is not None and worst.summary[:60] in stdout, stdout


def test_detect_reports_bad_lines_by_number_and_carries_on(
    work: Path, detected: dict[str, Result], bad_file: tuple[Path, list[int]]
) -> None:
    result = detected["bad"].ok()
    path, numbers = bad_file
    assert f"{len(numbers)} bad line(s) skipped" in result.stderr
    for number in numbers:
        assert f"{path.name}:{number}: " in result.stderr, result.stderr
    reported = [line for line in result.stderr.splitlines() if f"{path.name}:" in line]
    assert len(reported) == len(numbers)
    assert "Traceback" not in result.stderr
    assert f"{len(numbers)} bad lines" in result.stdout
    assert read_alerts(work / "out" / "alerts-bad.jsonl") == read_alerts(work / "out" / "alerts.jsonl")


def test_detect_reports_a_bad_line_that_looks_like_console_markup(detected: dict[str, Result]) -> None:
    """A bad line is shown as it is: its bytes are data, never formatting for the terminal."""
    result = detected["markup"]
    assert "Traceback" not in result.stderr and "MarkupError" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 0
    assert "events-with-markup.jsonl:1: " in result.stderr
    assert "[/oops]" in result.stderr


def test_detect_without_a_model_exits_2_with_one_line(work: Path, detected: dict[str, Result]) -> None:
    result = detected["no-model"]
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "no-such-model" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (work / "out" / "never.jsonl").exists()


# ------------------------------------------------------------------------------- family worlds


def test_simulate_draws_a_world_of_the_family(tmp_path: Path) -> None:
    """`--family-seed` draws the world's behaviours; the sizes given still apply; `--baseline-only` is the world's
    attack-free stream (``train_params``); `--seed` and `--mobile` override what was drawn."""
    small = ["--family-seed", "15", "--minutes", "2", "--users", "20"]
    tuning, seeded, heldout = jwtwatch(
        ("simulate", "--out", "tuning.jsonl", *small, "--baseline-only"),
        ("simulate", "--out", "seeded.jsonl", *small, "--family-world", "1", "--seed", "7", "--mobile", "5"),
        ("simulate", "--out", "heldout.jsonl", *small, "--family-region", "heldout", "--labels", "labels.jsonl"),
        cwd=tmp_path,
    )
    family = WorldFamily(seed=15, minutes=2, browsers=20)
    expected = simulate(train_params(family.world(0, "tuning").params)).events
    assert list(read_events([tmp_path / "tuning.jsonl"]).frame["event_id"]) == list(expected["event_id"])
    world = family.world(0, "tuning").params
    assert f"family 15, tuning world 0: 20 browser and {world.mobile} mobile users" in tuning.ok().stderr
    assert "(its attack-free stream)" in tuning.stderr and "0 incidents" in tuning.stdout

    assert "tuning world 1: 20 browser and 5 mobile users" in seeded.ok().stderr and "seed 7" in seeded.stderr
    drawn = dataclasses.replace(family.world(1, "tuning").params, seed=7, mobile=5)
    assert list(read_events([tmp_path / "seeded.jsonl"]).frame["event_id"]) == list(simulate(drawn).events["event_id"])

    assert "family 15, heldout world 0" in heldout.ok().stderr
    assert {i.threat for i in read_labels(tmp_path / "labels.jsonl")} == set(THREATS)


def test_simulate_refuses_family_options_without_a_family(tmp_path: Path) -> None:
    no_seed, bad_region = jwtwatch(
        ("simulate", "--out", "a.jsonl", "--family-world", "1"),
        ("simulate", "--out", "b.jsonl", "--family-seed", "1", "--family-region", "validation"),
        cwd=tmp_path,
    )
    assert no_seed.returncode == 2 and "give --family-seed too" in no_seed.stderr
    assert bad_region.returncode == 2 and "--family-region must be one of tuning, heldout" in bad_region.stderr
    assert not (tmp_path / "a.jsonl").exists() and not (tmp_path / "b.jsonl").exists()


def test_detect_starts_from_the_history_training_learned_unless_told_not_to(work: Path, trained: list[Result]) -> None:
    history = json.loads((work / "model" / "baselines.json").read_text())
    baseline = read_events([work / "baseline.jsonl"]).frame
    assert set(history["subjects"]) == set(baseline.loc[baseline["reason"].isna(), "sub"].dropna())
    warm, cold = jwtwatch(
        ("detect", "--events", "events.jsonl", "--model-dir", "model", "--alerts-out", "warm.jsonl"),
        ("detect", "--events", "events.jsonl", "--model-dir", "model", "--alerts-out", "cold.jsonl", "--no-history"),
        cwd=work,
    )
    assert f"history: {len(history['subjects']):,} subjects learned in training" in warm.ok().stderr
    assert "history: none" in cold.ok().stderr
    # Judged against their history the same events read otherwise (subjects' networks are known, not new).
    assert (work / "warm.jsonl").read_bytes() != (work / "cold.jsonl").read_bytes()


def test_train_no_history_writes_none_and_removes_an_older_one(work: Path) -> None:
    (work / "model-bare").mkdir()
    (work / "model-bare" / "baselines.json").write_text("{}")
    jwtwatch(
        ("train", "--events", "baseline.jsonl", "--model-dir", "model-bare", "--seed", "0", "--no-history"), cwd=work
    )[0].ok()
    assert not (work / "model-bare" / "baselines.json").exists()


def test_detect_refuses_a_damaged_history_with_one_line(work: Path, trained: list[Result]) -> None:
    damaged = work / "model-damaged"
    damaged.mkdir()
    for path in (work / "model").iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    (damaged / "baselines.json").write_text('{"format": 1}')
    result = jwtwatch(
        ("detect", "--events", "events.jsonl", "--model-dir", "model-damaged", "--alerts-out", "x.jsonl"), cwd=work
    )[0]
    assert result.returncode != 0
    assert "not a history written by jwtwatch train" in result.stderr and "Traceback" not in result.stderr
