from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO_ROOT = Path(__file__).resolve().parent.parent
_KAFKA_LOCAL = _REPO_ROOT / "scripts" / "kafka-local"


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _bootstrap_reachable(bootstrap: str, timeout: float = 3.0) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


def _two_free_ports() -> tuple[int, int]:
    """Broker and controller ports that are free right now (both held open while picking)."""
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return a.getsockname()[1], b.getsockname()[1]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address ("host:port") of a real Kafka broker.

    In order: $JWTWATCH_KAFKA_BOOTSTRAP; the repo's own broker if
    `scripts/kafka-local status` says it runs; else a private broker started
    with scripts/kafka-local on free ports in a temp dir (stopped at session
    end). Without one, tests skip -- or fail when JWTWATCH_REQUIRE_KAFKA=1.
    """
    require = os.environ.get("JWTWATCH_REQUIRE_KAFKA", "").strip() == "1"

    def unavailable(reason: str) -> None:
        if require:
            pytest.fail(f"JWTWATCH_REQUIRE_KAFKA=1 but no Kafka broker could be had: {reason}", pytrace=False)
        pytest.skip(f"no Kafka broker (set JWTWATCH_KAFKA_BOOTSTRAP or run scripts/kafka-local start): {reason}")

    env_bootstrap = os.environ.get("JWTWATCH_KAFKA_BOOTSTRAP", "").strip()
    if env_bootstrap:
        if not _bootstrap_reachable(env_bootstrap):
            unavailable(f"JWTWATCH_KAFKA_BOOTSTRAP={env_bootstrap} does not accept connections")
        yield env_bootstrap
        return

    if not _KAFKA_LOCAL.is_file():
        unavailable(f"{_KAFKA_LOCAL} is missing")

    # A broker the developer (or `make test`) already started in <repo>/.kafka.
    try:
        status = subprocess.run(
            ["bash", str(_KAFKA_LOCAL), "status"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        status = None
    if status is not None and status.returncode == 0 and status.stdout.strip():
        address = status.stdout.strip().splitlines()[-1]
        if _bootstrap_reachable(address):
            yield address
            return

    # Start a private broker for this session.
    broker_dir = tmp_path_factory.mktemp("kafka-broker")
    port, controller_port = _two_free_ports()
    start_cmd = [
        "bash", str(_KAFKA_LOCAL), "start",
        "--port", str(port), "--controller-port", str(controller_port), "--dir", str(broker_dir),
    ]  # fmt: skip
    stop_cmd = ["bash", str(_KAFKA_LOCAL), "stop", "--dir", str(broker_dir)]

    def stop() -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(stop_cmd, capture_output=True, text=True, timeout=60, check=False)

    try:
        started = subprocess.run(start_cmd, capture_output=True, text=True, timeout=400, check=False)
    except BaseException as exc:  # timeout, missing bash, or pytest-timeout firing mid-start
        stop()
        if isinstance(exc, OSError | subprocess.TimeoutExpired):
            unavailable(f"scripts/kafka-local start did not complete: {exc!r}")
        raise
    if started.returncode != 0 or not started.stdout.strip():
        stop()
        unavailable(
            f"scripts/kafka-local start exited {started.returncode}:\n{_tail(started.stderr or started.stdout)}"
        )
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        stop()
