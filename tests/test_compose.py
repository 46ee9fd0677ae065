"""docker-compose.yml: Kafka (KRaft) plus the three services, health-checked, running real jwtwatch commands.

No Docker engine or compose plugin runs here, so the file is checked structurally, and every service's
command is run with --help: an option the CLI does not have fails this test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_kafka_and_the_three_services_with_health_checks() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"kafka", "validator", "pipeline", "alerts"}
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
    for name in ("validator", "pipeline", "alerts"):
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert services[name]["environment"]["JWTWATCH_KAFKA"] == "kafka:9092"


@pytest.mark.parametrize("name", ["validator", "pipeline", "alerts"])
def test_service_commands_are_real_jwtwatch_commands(name: str) -> None:
    command = COMPOSE["services"][name]["command"]
    words = [w for w in command if not w.startswith("-")][:2]  # e.g. ["validator", "serve"]
    help_text = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *words, "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for option in (w for w in command if w.startswith("--")):
        assert option in help_text, f"{name}: `jwtwatch {' '.join(words)}` has no option {option}"
