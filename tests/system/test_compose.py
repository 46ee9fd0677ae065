"""docker-compose.yml: Kafka (KRaft) plus the three services, health-checked, running real jwtwatch commands.

No Docker engine or compose plugin runs here, so the file is checked structurally, and every service's
command is run with --help: an option the CLI does not have fails this test.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from pipeline.keys import KeyStore
from tests.support.paths import REPO
from tests.support.ports import free_port

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


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


def _interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}``, with the defaults (what `docker compose up` uses with no .env)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_the_three_services_start_as_compose_configures_them(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Each service's command and environment from docker-compose.yml, with the container's paths mapped to
    temporary directories and its ports to free ports (bound as compose binds them; the test's traffic goes to
    loopback only), against the real test broker: the validator
    and the alerts service report ready, and the pipeline keeps running. A missing option (such as the
    revocation feed's key store, which every process needs with Kafka) fails here."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "admin-token").write_text("compose-test-admin-token-0123456789\n")
    (secrets / "admin-token").chmod(0o600)  # as the compose file's header says: others may not read it
    KeyStore.init(secrets / "keys", alg="ES256", issuer="https://issuer.example")
    KeyStore.init(secrets / "revocation-keys", alg="ES256", issuer="urn:jwtwatch")
    ports = {"8080": str(free_port()), "8081": str(free_port())}

    def host_path(value: str, service: str) -> str:
        value = _interpolate(value)
        value = value.replace("/run/secrets/admin-token", str(secrets / "admin-token"))
        value = value.replace("/revocation-keys", str(secrets / "revocation-keys"))
        value = value.replace("/keys/", f"{secrets / 'keys'}/")
        if value == "/data":
            return str(tmp_path / f"{service}-data")
        return ports.get(value, value)  # the bind address stays as compose has it (0.0.0.0)

    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in ("validator", "pipeline", "alerts"):
            service = COMPOSE["services"][name]
            env = {**os.environ, **{k: host_path(str(v), name) for k, v in service["environment"].items()}}
            env["JWTWATCH_KAFKA"] = kafka_bootstrap
            command = [host_path(word, name) for word in service["command"]]
            log = (tmp_path / f"{name}.log").open("wb")
            processes[name] = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *command], env=env,
                                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 120
        ready = {"validator": False, "alerts": False}
        while not all(ready.values()) and time.monotonic() < deadline:
            for name, process in processes.items():
                assert process.poll() is None, f"{name} exited: {(tmp_path / f'{name}.log').read_text()[-2000:]}"
            for name, port in (("validator", ports["8080"]), ("alerts", ports["8081"])):
                with contextlib.suppress(httpx.HTTPError):
                    ready[name] = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            time.sleep(0.5)
        assert all(ready.values()), ready
        time.sleep(2)
        assert processes["pipeline"].poll() is None, (tmp_path / "pipeline.log").read_text()[-2000:]
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
