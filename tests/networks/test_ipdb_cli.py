"""``--ip-db`` at the command line and in the services: the startup line both ways, and an unusable file as one
clear line (never a traceback) — the real ``jwtwatch`` command, run in-process with typer's runner and as a
process."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.events import Alert
from tests.support import mmdbkit
from tests.support.jwtkit import Issuer
from tests.support.paths import REPO

NO_DB = "network identity: /16 prefixes — no --ip-db given; ASN and network kind unavailable"
SIZE = ["--minutes", "5", "--users", "20", "--mobile", "10", "--services", "2", "--seed", "4"]


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled stream and the baseline of the same world (same seed: same addresses), its networks as a .mmdb
    (world.mmdb) and a model trained on the baseline through that file (model/)."""
    root = tmp_path_factory.mktemp("ipdb-cli")
    for args in (
        ["--out", str(root / "events.jsonl"), "--ip-db-out", str(root / "world.mmdb")],
        ["--out", str(root / "baseline.jsonl"), "--baseline-only"],
    ):
        result = CliRunner().invoke(app, ["simulate", *args, *SIZE])
        assert result.exit_code == 0, result.output
    code, stdout, stderr = run("train", "--events", str(root / "baseline.jsonl"), "--model-dir", str(root / "model"),
                               "--ip-db", str(root / "world.mmdb"))  # fmt: skip
    assert code == 0, stdout + stderr
    assert f"network identity: ASN and network kind from jwtwatch-sim-ASN built 2026-09-21 ({root / 'world.mmdb'})" in (
        stderr
    )
    return root / "events.jsonl"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_detect_says_where_networks_come_from_both_ways(events: Path, tmp_path: Path) -> None:
    model = ["--model-dir", str(events.parent / "model")]
    code, stdout, stderr = run("detect", "--events", str(events), "--alerts-out", str(tmp_path / "a.jsonl"), *model)
    assert code == 0 and NO_DB in stderr, stdout + stderr
    world = events.parent / "world.mmdb"
    code, stdout, stderr = run(
        "detect", "--events", str(events), "--alerts-out", str(tmp_path / "b.jsonl"), "--ip-db", str(world), *model
    )
    assert code == 0, stdout + stderr
    assert f"network identity: ASN and network kind from jwtwatch-sim-ASN built 2026-09-21 ({world})" in stderr
    assert NO_DB not in stderr
    # The engine names networks by their autonomous system now (the simulator's ASNs are 64512 onwards).
    summaries = [Alert.from_json(line).summary or "" for line in (tmp_path / "b.jsonl").read_bytes().splitlines()]
    assert any(re.search(r"AS6[45]\d{3} ", s) for s in summaries), summaries[:5]
    plain = [Alert.from_json(line).summary or "" for line in (tmp_path / "a.jsonl").read_bytes().splitlines()]
    assert not any(re.search(r"AS6[45]\d{3} ", s) for s in plain)


def test_train_says_it_too(tmp_path: Path) -> None:
    asn = mmdbkit.geolite2_asn(tmp_path / "GeoLite2-ASN.mmdb")
    anonymous = mmdbkit.anonymous_ip(tmp_path / "GeoIP2-Anonymous-IP.mmdb")
    missing_events = tmp_path / "none.jsonl"
    code, _, stderr = run("train", "--events", str(missing_events), "--model-dir", str(tmp_path / "m"),
                          "--ip-db", str(asn), "--ip-db", str(anonymous))  # fmt: skip
    assert code == 2  # the events file is missing: the network line came first
    assert "GeoLite2-ASN built 2026-11-30" in stderr and "GeoIP2-Anonymous-IP built 2026-11-30" in stderr
    code, _, stderr = run("train", "--events", str(missing_events), "--model-dir", str(tmp_path / "m"))
    assert NO_DB in stderr


@pytest.mark.parametrize("command", ["detect", "train"])
def test_an_unusable_ip_db_is_one_line_at_the_cli(command: str, events: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"\x00not a database" * 64)
    city = mmdbkit.city(tmp_path / "GeoLite2-City.mmdb")
    cases = {
        tmp_path / "missing.mmdb": "no such file",
        garbage: "not a MaxMind DB (.mmdb) file",
        mmdbkit.empty(tmp_path / "empty.mmdb"): "the GeoLite2-ASN database holds no networks",
        city: "the GeoLite2-City database has neither ASN nor network-kind fields",
    }
    common = {
        "detect": [
            "--events",
            str(tmp_path / "e.jsonl"),
            "--alerts-out",
            str(tmp_path / "a.jsonl"),
            "--model-dir",
            str(events.parent / "model"),
        ],
        "train": ["--events", str(tmp_path / "e.jsonl"), "--model-dir", str(tmp_path / "m")],
    }[command]
    for path, problem in cases.items():
        code, stdout, stderr = run(command, *common, "--ip-db", str(path))
        assert code == 2, (path, stdout, stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: --ip-db {path}: {problem}"), stderr
        assert "Traceback" not in stdout + stderr


def test_the_environment_variable_takes_several_files(events: Path, tmp_path: Path) -> None:
    asn = mmdbkit.geolite2_asn(tmp_path / "GeoLite2-ASN.mmdb")
    world = events.parent / "world.mmdb"
    result = CliRunner().invoke(
        app,
        ["detect", "--events", str(events), "--alerts-out", str(tmp_path / "a.jsonl")],
        env={
            "JWTWATCH_IP_DB": os.pathsep.join([str(world), str(asn)]),
            "JWTWATCH_MODEL_DIR": str(events.parent / "model"),
        },
    )
    assert result.exit_code == 0, result.output
    assert f"jwtwatch-sim-ASN built 2026-09-21 ({world}), GeoLite2-ASN built 2026-11-30 ({asn})" in result.stderr


def test_a_process_fails_cleanly_too(events: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "GeoLite2-ASN.mmdb"
    garbage.write_text("<html>404 Not Found</html>\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "pipeline", "run", "--kafka", "127.0.0.1:1", "--issuer", "https://i",
         "--ip-db", str(garbage), "--data-dir", str(tmp_path / "data"), "--model-dir", str(events.parent / "model")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"error: --ip-db {garbage}: not a MaxMind DB (.mmdb) file"


def test_serve_logs_where_networks_come_from(events: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.networks import open_ip_db
    from pipeline.nodes import AllInOne, ServeOptions
    from pipeline.validation import ValidatorConfig

    config = ValidatorConfig(issuer="https://issuer.test", audience="https://api.test", jwks=Issuer.create().jwks())
    model = events.parent / "model"
    asn = mmdbkit.geolite2_asn(tmp_path / "GeoLite2-ASN.mmdb")
    with caplog.at_level(logging.INFO, logger="pipeline.nodes.allinone"):
        plain = AllInOne(ServeOptions(config=config, data_dir=tmp_path / "a", model_dir=model))
        enriched = AllInOne(
            ServeOptions(config=config, data_dir=tmp_path / "b", model_dir=model, networks=open_ip_db([asn]))
        )
    for node in (plain, enriched):
        node.start()
        node.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("network identity")]
    assert lines == [NO_DB, f"network identity: ASN and network kind from GeoLite2-ASN built 2026-11-30 ({asn}); "
                     "addresses they do not cover fall back to /16 prefixes"]  # fmt: skip
    assert enriched.networks.source == "mmdb:GeoLite2-ASN(2026-11-30)"
