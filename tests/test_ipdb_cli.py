"""``--ip-db`` at the command line and in the services: the startup line both ways, and an unusable file as one
clear line (never a traceback) — the real ``jwtwatch`` command, run in-process with typer's runner and as a
process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from tests import mmdbkit
from tests.jwtkit import Issuer

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "default"
NO_DB = "network identity: /16 prefixes — no --ip-db given; ASN and network kind unavailable"


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ipdb-cli")
    result = CliRunner().invoke(
        app, ["simulate", "--out", str(root / "events.jsonl"), "--ip-db-out", str(root / "world.mmdb"),
              "--minutes", "2", "--users", "15", "--mobile", "8", "--services", "2", "--seed", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "events.jsonl"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_detect_says_where_networks_come_from_both_ways(events: Path, tmp_path: Path) -> None:
    code, _, stderr = run("detect", "--events", str(events), "--alerts-out", str(tmp_path / "a.jsonl"))
    assert code == 0 and NO_DB in stderr
    world = events.parent / "world.mmdb"
    code, stdout, stderr = run(
        "detect", "--events", str(events), "--alerts-out", str(tmp_path / "b.jsonl"), "--ip-db", str(world)
    )
    assert code == 0, stdout + stderr
    assert f"network identity: ASN and network kind from jwtwatch-sim-ASN built 2026-09-21 ({world})" in stderr
    assert NO_DB not in stderr


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
def test_an_unusable_ip_db_is_one_line_at_the_cli(command: str, tmp_path: Path) -> None:
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
        "detect": ["--events", str(tmp_path / "e.jsonl"), "--alerts-out", str(tmp_path / "a.jsonl")],
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
        env={"JWTWATCH_IP_DB": os.pathsep.join([str(world), str(asn)])},
    )
    assert result.exit_code == 0, result.output
    assert f"jwtwatch-sim-ASN built 2026-09-21 ({world}), GeoLite2-ASN built 2026-11-30 ({asn})" in result.stderr


def test_a_process_fails_cleanly_too(tmp_path: Path) -> None:
    garbage = tmp_path / "GeoLite2-ASN.mmdb"
    garbage.write_text("<html>404 Not Found</html>\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "pipeline", "run", "--kafka", "127.0.0.1:1", "--issuer", "https://i",
         "--ip-db", str(garbage), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"error: --ip-db {garbage}: not a MaxMind DB (.mmdb) file"


def test_serve_logs_where_networks_come_from(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.allinone import AllInOne, ServeOptions
    from pipeline.networks import open_ip_db
    from pipeline.validation import ValidatorConfig

    config = ValidatorConfig(issuer="https://issuer.test", audience="https://api.test", jwks=Issuer.create().jwks())
    asn = mmdbkit.geolite2_asn(tmp_path / "GeoLite2-ASN.mmdb")
    with caplog.at_level(logging.INFO, logger="pipeline.allinone"):
        plain = AllInOne(ServeOptions(config=config, data_dir=tmp_path / "a", model_dir=MODEL))
        enriched = AllInOne(
            ServeOptions(config=config, data_dir=tmp_path / "b", model_dir=MODEL, networks=open_ip_db([asn]))
        )
    for node in (plain, enriched):
        node.start()
        node.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("network identity")]
    assert lines == [NO_DB, f"network identity: ASN and network kind from GeoLite2-ASN built 2026-11-30 ({asn}); "
                     "addresses they do not cover fall back to /16 prefixes"]  # fmt: skip
    assert enriched.networks.source == "mmdb:GeoLite2-ASN(2026-11-30)"
