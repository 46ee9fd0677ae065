"""Real Kafka brokers for tests, started with scripts/kafka-local — shared by conftest and the tests that
need a broker of their own (one they may stop and start again).

Policy when no broker can be had: skip, or fail when JWTWATCH_REQUIRE_KAFKA=1 (as .ci/run sets).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

KAFKA_LOCAL = Path(__file__).resolve().parent.parent / "scripts" / "kafka-local"


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("JWTWATCH_REQUIRE_KAFKA", "").strip() == "1":
        pytest.fail(f"JWTWATCH_REQUIRE_KAFKA=1 but no Kafka broker could be had: {reason}", pytrace=False)
    pytest.skip(f"no Kafka broker (set JWTWATCH_KAFKA_BOOTSTRAP or run scripts/kafka-local start): {reason}")


def two_free_ports() -> tuple[int, int]:
    """Broker and controller ports that are free right now (both held open while picking)."""
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return a.getsockname()[1], b.getsockname()[1]


@dataclass
class Broker:
    """A kafka-local broker of our own: the same ports and log dir across stop and start."""

    port: int
    controller_port: int
    directory: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        args = ["bash", str(KAFKA_LOCAL), command, "--dir", str(self.directory)]
        if command == "start":
            args += ["--port", str(self.port), "--controller-port", str(self.controller_port)]
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> subprocess.CompletedProcess[str]:
        return self._run("start", timeout=400)

    def stop(self) -> subprocess.CompletedProcess[str]:
        return self._run("stop", timeout=90)

    def kill(self) -> None:
        """SIGKILL the broker: no clean shutdown, its log is recovered at the next start."""
        pid = int((self.directory / "broker.pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        raise AssertionError(f"broker {pid} still alive 30 s after SIGKILL")

    def log_tail(self) -> str:
        log = self.directory / "broker.log"
        return tail(log.read_text(errors="replace"), 40) if log.exists() else "(no broker.log)"


@contextlib.contextmanager
def private_broker(directory: Path) -> Iterator[Broker]:
    """Start a broker on two free ports in ``directory``; always stopped afterwards, whatever happened."""
    if not KAFKA_LOCAL.is_file():
        unavailable(f"{KAFKA_LOCAL} is missing")
    broker = Broker(*two_free_ports(), directory)

    def stop() -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            broker.stop()

    try:
        started = broker.start()
    except BaseException as exc:  # timeout, missing bash, or pytest-timeout firing mid-start
        stop()
        if isinstance(exc, OSError | subprocess.TimeoutExpired):
            unavailable(f"scripts/kafka-local start did not complete: {exc!r}")
        raise
    if started.returncode != 0 or not started.stdout.strip():
        stop()
        unavailable(f"scripts/kafka-local start exited {started.returncode}:\n{tail(started.stderr or started.stdout)}")
    try:
        yield broker
    finally:
        stop()
