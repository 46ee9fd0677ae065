from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from bench.broker import reachable as _bootstrap_reachable
from tests.support.kafka_broker import KAFKA_LOCAL, private_broker, unavailable


@pytest.fixture(autouse=True)
def _no_ambient_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key-store passphrase in the environment of whoever runs the tests must not open (or change) their stores."""
    monkeypatch.delenv("JWTWATCH_KEYS_PASSPHRASE", raising=False)
    monkeypatch.delenv("JWTWATCH_KEYS_PASSPHRASE_FILE", raising=False)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address ("host:port") of a real Kafka broker.

    In order: $JWTWATCH_KAFKA_BOOTSTRAP; the repo's own broker if
    `scripts/kafka-local status` says it runs; else a private broker started
    with scripts/kafka-local on free ports in a temp dir (stopped at session
    end). Without one, tests skip -- or fail when JWTWATCH_REQUIRE_KAFKA=1.
    """
    env_bootstrap = os.environ.get("JWTWATCH_KAFKA_BOOTSTRAP", "").strip()
    if env_bootstrap:
        if not _bootstrap_reachable(env_bootstrap):
            unavailable(f"JWTWATCH_KAFKA_BOOTSTRAP={env_bootstrap} does not accept connections")
        yield env_bootstrap
        return

    if not KAFKA_LOCAL.is_file():
        unavailable(f"{KAFKA_LOCAL} is missing")

    # A broker the developer (or `make test`) already started in <repo>/.kafka.
    try:
        status = subprocess.run(
            ["bash", str(KAFKA_LOCAL), "status"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        status = None
    if status is not None and status.returncode == 0 and status.stdout.strip():
        address = status.stdout.strip().splitlines()[-1]
        if _bootstrap_reachable(address):
            yield address
            return

    # Start a private broker for this session.
    with private_broker(tmp_path_factory.mktemp("kafka-broker")) as broker:
        yield broker.bootstrap
