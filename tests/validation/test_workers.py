"""``jwtwatch validator serve --workers N``: several processes, one port, one set of revocations.

The worker answering a request is not visible in the answer; ``/metrics`` on the shared metrics listener names it
(``jwtwatch_validator_worker``), and each worker counts its own validations, so fresh connections sent
until every worker has been seen show what each one did.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client import generate_latest

from pipeline.events import TokenUsage
from pipeline.revocations.store_sync import RevocationStoreSync
from pipeline.validation import ValidatorConfig
from pipeline.validation.service import ValidatorService
from pipeline.validation.usage import UsageEmitter
from pipeline.validation.verifier import Verdict
from tests.support import jwtkit
from tests.support.ports import free_port

JWTWATCH = [sys.executable, "-m", "pipeline.cli"]
ISSUER = "https://issuer.workers.test"
AUDIENCE = "https://api.workers.test"
ADMIN = "workers-admin-token-0123456789abcdef"
WORKERS = 2


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JWTWATCH, *args], capture_output=True, text=True, check=check, timeout=120)


class Served:
    def __init__(self, tmp: Path) -> None:
        self.keys = tmp / "keys"
        run("keys", "init", "--dir", str(self.keys), "--issuer", ISSUER)
        admin = tmp / "admin-token"
        admin.write_text(ADMIN + "\n")
        admin.chmod(0o600)
        self.events = tmp / "events.jsonl"
        port, metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}"  # the parent binds it, every worker serves on it
        self.log = tmp / "serve.log"
        self.proc = subprocess.Popen(
            [*JWTWATCH, "validator", "serve", "--issuer", ISSUER, "--audience", AUDIENCE, "--keys-dir", str(self.keys),
             "--port", str(port), "--data-dir", str(tmp / "data"), "--admin-token-file", str(admin),
             "--events-out", str(self.events), "--metrics-port", str(metrics_port)],
            env={**os.environ, "JWTWATCH_WORKERS": str(WORKERS)},
            stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"validator did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        self.sent = 0

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def token(self, sub: str) -> str:
        return run("token", "issue", "--dir", str(self.keys), "--sub", sub, "--aud", AUDIENCE).stdout.strip()

    def validate(self, token: str) -> int:
        self.sent += 1
        with httpx.Client() as fresh:  # a new connection: any worker may take it
            return fresh.get(f"{self.url}/v1/validate", headers={"Authorization": f"Bearer {token}"}).status_code

    def scrape(self) -> tuple[int, dict[str, float]]:
        with httpx.Client() as fresh:
            text = fresh.get(f"{self.metrics_url}/metrics").text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return int(values["jwtwatch_validator_worker"]), values

    def until_every_worker(self, condition, action, timeout_s: float = 60) -> dict[int, dict[str, float]]:  # type: ignore[no-untyped-def]
        """Run ``action`` and scrape until each worker's metrics satisfy ``condition``; the last scrape of each."""
        seen: dict[int, dict[str, float]] = {}
        deadline = time.monotonic() + timeout_s
        while len([w for w, m in seen.items() if condition(m)]) < WORKERS:
            assert time.monotonic() < deadline, f"not every worker got there: {seen}"
            action()
            for _ in range(4):
                worker, values = self.scrape()
                seen[worker] = values
        return seen

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    served = Served(tmp_path)
    yield served
    if served.proc.poll() is None:
        served.proc.kill()
        served.proc.wait()


def _count(values: dict[str, float], outcome: str, reason: str) -> float:
    return values.get(f'jwtwatch_validations_total{{outcome="{outcome}",reason="{reason}"}}', 0.0)


def test_a_revocation_made_through_one_worker_is_enforced_by_every_worker(served: Served) -> None:
    token = served.token("alice")
    # Every worker accepts the token first (and so has it in its verified-token cache).
    seen = served.until_every_worker(
        lambda m: _count(m, "accepted", "none") > 0, lambda: [served.validate(token) == 200 or 1 for _ in range(8)]
    )
    assert sorted(seen) == list(range(WORKERS))

    # Revoked through the admin API of whichever worker takes this connection.
    with httpx.Client() as admin:
        answer = admin.post(
            f"{served.url}/v1/revocations",
            json={"kind": "sub", "value": "alice", "reason": "test"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
    assert answer.status_code == 201, answer.text
    version = answer.json()["version"]

    # Within a bounded time every worker enforces that version...
    served.until_every_worker(lambda m: m["jwtwatch_revocation_version"] >= version, lambda: None, timeout_s=10)
    # ...and from then on no worker lets the token in: each one is seen refusing it as revoked.
    statuses: list[int] = []
    served.until_every_worker(
        lambda m: _count(m, "rejected", "revoked") > 0,
        lambda: statuses.extend(served.validate(token) for _ in range(8)),
    )
    assert statuses and set(statuses) == {401}
    # A token of someone else is still good everywhere.
    other = served.token("bob")
    assert {served.validate(other) for _ in range(10)} == {200}

    readiness = httpx.get(f"{served.url}/readyz").json()
    assert readiness["ready"] is True and readiness["revocation_version"] >= version

    # Stopped gracefully, every worker has written every usage event, whole lines only.
    assert served.stop() == 0
    lines = served.events.read_bytes().splitlines()
    events = [TokenUsage.from_json(line) for line in lines]
    assert len(events) == served.sent
    assert len({e.event_id for e in events}) == len(events)
    assert {e.reason for e in events if e.outcome == "rejected"} == {"revoked"}


def test_a_dead_worker_is_replaced(served: Served) -> None:
    workers = [int(p) for p in Path(f"/proc/{served.proc.pid}/task/{served.proc.pid}/children").read_text().split()]
    assert len(workers) == WORKERS
    time.sleep(10.5)  # past the start-up grace: a worker dying now is restarted, not taken as a start-up failure
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        now = [int(p) for p in Path(f"/proc/{served.proc.pid}/task/{served.proc.pid}/children").read_text().split()]
        if len(now) == WORKERS and workers[0] not in now and served.ready():
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.2)
    assert served.validate(served.token("carol")) == 200
    assert served.stop() == 0


def test_several_workers_with_one_time_tokens_need_kafka(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    run("keys", "init", "--dir", str(keys), "--issuer", ISSUER)
    result = run(
        "validator", "serve", "--issuer", ISSUER, "--audience", AUDIENCE, "--keys-dir", str(keys),
        "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), "--workers", "2",
        "--one-time-audiences", AUDIENCE, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--kafka" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before any state was made


def test_a_worker_that_cannot_start_stops_them_all(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    run("keys", "init", "--dir", str(keys), "--issuer", ISSUER)
    data = tmp_path / "data"
    data.mkdir()
    (data / "revocations.sqlite").mkdir()  # not a database: every worker fails while starting
    result = run(
        "validator", "serve", "--issuer", ISSUER, "--audience", AUDIENCE, "--keys-dir", str(keys),
        "--data-dir", str(data), "--port", str(free_port()), "--workers", "2", check=False,
    )  # fmt: skip
    assert result.returncode == 1  # the failed worker's status, not a crash of the supervisor or a usage error
    assert "unable to open database file" in result.stderr
    assert "exited with status 1 while starting: stopping" in result.stderr  # not restarted over and over


# ------------------------------------------------------------------------------------ the parts, in process


def _config() -> ValidatorConfig:
    return ValidatorConfig(issuer=jwtkit.ISSUER, audience=jwtkit.AUDIENCE, jwks=jwtkit.Issuer.create().jwks())


def test_store_sync_makes_the_service_unready_when_it_stalls(tmp_path: Path) -> None:
    service = ValidatorService(_config(), data_dir=tmp_path)
    service.store_sync = RevocationStoreSync(service.revocations, max_age_s=0.05)
    assert service.ready() == (False, service.store_sync.describe())
    service.store_sync.sync()
    assert service.ready() == (True, "ok")
    time.sleep(0.1)
    assert service.ready()[0] is False and service.feed_stale()
    service.close()


def _verdict(n: int) -> Verdict:
    claims = {"jti": f"j-{n}", "sub": "s" * 900, "iss": ISSUER, "aud": AUDIENCE, "iat": 1, "exp": 2}
    return Verdict(True, None, claims)


class _Context:
    ip = "192.0.2.1"
    user_agent = "u" * 1000
    service = method = path = None


def test_usage_events_from_several_emitters_never_interleave(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    emitters = [UsageEmitter(None, out, background=n % 2 == 0) for n in range(4)]

    def write(emitter: UsageEmitter, base: int) -> None:
        for n in range(500):
            emitter.defer(_verdict(base + n), _Context(), 1_700_000_000.0)

    threads = [threading.Thread(target=write, args=(e, 1000 * i)) for i, e in enumerate(emitters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for emitter in emitters:
        assert emitter.flush()
        emitter.close()
    lines = out.read_bytes().splitlines()
    assert len(lines) == 2000
    jtis = {TokenUsage.from_json(line).jti for line in lines}
    assert len(jtis) == 2000
    assert all(orjson.loads(line)["ip"] == "192.0.2.1" for line in lines)


def test_an_emitter_with_nowhere_to_send_builds_nothing() -> None:
    emitter = UsageEmitter(None, None, background=True)
    emitter.defer(_verdict(1), _Context(), 0.0)
    assert emitter.flush() and emitter.emitted == 0
    emitter.close()


def test_background_events_are_sent_on_close(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    emitter = UsageEmitter(None, out, background=True, interval_s=60)
    for n in range(10):
        emitter.defer(_verdict(n), _Context(), 1_700_000_000.0)
    emitter.close()
    assert len(out.read_bytes().splitlines()) == 10


def test_an_events_file_open_to_every_user_is_reported_not_changed(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    # A file the operator made (for a log shipper, say) keeps its mode; one this emitter creates is 0600.
    out = tmp_path / "events.jsonl"
    out.touch()
    out.chmod(0o644)
    with caplog.at_level("WARNING", logger="pipeline.validation.usage"):
        UsageEmitter(None, out).close()
    assert any("open to every user" in record.getMessage() for record in caplog.records)
    assert out.stat().st_mode & 0o777 == 0o644


def test_workers_metric_names_the_worker(tmp_path: Path) -> None:
    service = ValidatorService(_config(), data_dir=tmp_path, worker=3)
    assert re.search(rb"^jwtwatch_validator_worker 3\.0$", generate_latest(service.registry), re.M)
    service.close()
