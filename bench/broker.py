"""A private Kafka broker: scripts/kafka-local on two free ports in a directory of its own, always stopped
afterwards — for the benchmarks, and for the tests (tests/support/kafka_broker.py adds their skip-or-fail policy)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = ROOT / "scripts" / "kafka-local"
POM = ROOT / "scripts" / "kafka-pom.xml"


class BrokerError(RuntimeError):
    pass


def kafka_version() -> str | None:
    """The broker version scripts/kafka-local runs (its pom's ``kafka.version``)."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text()) if POM.is_file() else None
    return match.group(1) if match else None


def two_free_ports() -> tuple[int, int]:
    """Broker and controller ports that are free right now (both held open while picking)."""
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return a.getsockname()[1], b.getsockname()[1]


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


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


def reachable(bootstrap: str, timeout: float = 3.0) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


@contextlib.contextmanager
def private_broker(directory: Path) -> Iterator[Broker]:
    """Start a broker on two free ports in ``directory``; always stopped afterwards, whatever happened.
    BrokerError when it cannot start."""
    if not KAFKA_LOCAL.is_file():
        raise BrokerError(f"{KAFKA_LOCAL} is missing")
    broker = Broker(*two_free_ports(), directory)

    def stop() -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            broker.stop()

    try:
        started = broker.start()
    except BaseException as exc:  # timeout, missing bash, or pytest-timeout firing mid-start
        stop()
        if isinstance(exc, OSError | subprocess.TimeoutExpired):
            raise BrokerError(f"scripts/kafka-local start did not complete: {exc!r}") from exc
        raise
    if started.returncode != 0 or not started.stdout.strip():
        stop()
        output = tail(started.stderr or started.stdout)
        raise BrokerError(f"scripts/kafka-local start exited {started.returncode}:\n{output}")
    try:
        yield broker
    finally:
        stop()
