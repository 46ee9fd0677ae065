"""A private Kafka broker for the benchmarks: scripts/kafka-local on two free ports in a directory of its own,
started the way the tests start theirs (tests/kafka_broker.py) and always stopped afterwards."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
from collections.abc import Iterator
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


def _two_free_ports() -> tuple[int, int]:
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return a.getsockname()[1], b.getsockname()[1]


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


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
def private_broker(directory: Path) -> Iterator[str]:
    """Start a single-node broker in ``directory``; yields its bootstrap address; stops it whatever happens."""
    if not KAFKA_LOCAL.is_file():
        raise BrokerError(f"{KAFKA_LOCAL} is missing")
    port, controller = _two_free_ports()
    start = ["bash", str(KAFKA_LOCAL), "start", "--port", str(port), "--controller-port", str(controller)]
    stop = ["bash", str(KAFKA_LOCAL), "stop", "--dir", str(directory)]

    def stop_broker() -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(stop, capture_output=True, timeout=120, check=False)

    try:
        started = subprocess.run(
            [*start, "--dir", str(directory)], capture_output=True, text=True, timeout=400, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        stop_broker()
        raise BrokerError(f"scripts/kafka-local start did not complete: {exc!r}") from exc
    except BaseException:
        stop_broker()
        raise
    if started.returncode != 0 or not started.stdout.strip():
        stop_broker()
        raise BrokerError(
            f"scripts/kafka-local start exited {started.returncode}:\n{_tail(started.stderr or started.stdout)}"
        )
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        stop_broker()
