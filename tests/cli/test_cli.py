"""The jwtwatch command, run as a user would: real processes, real files, real HTTP on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cli import AUDIENCE, ISSUER, JWTWATCH, run
from tests.support.ports import free_port
from tests.support.servers import wait_ready


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    run("keys", "init", "--dir", str(tmp_path / "keys"), "--alg", "ES256", "--issuer", ISSUER)
    return tmp_path / "keys"


def test_help_lists_the_commands() -> None:
    out = run("--help").stdout
    for command in ("validator", "keys", "token", "revoke", "demo"):
        assert command in out


def test_keys_rotate_list_and_audit(keys: Path) -> None:
    (first,) = [json.loads(line) for line in run("keys", "list", "--dir", str(keys), "--json").stdout.splitlines()]
    run("keys", "rotate", "--dir", str(keys))
    listing = [json.loads(line) for line in run("keys", "list", "--dir", str(keys), "--json").stdout.splitlines()]
    assert [k["status"] for k in listing] == ["retired", "current"]
    assert listing[0]["kid"] == first["kid"]  # the old key is still published
    assert "kid" in run("keys", "list", "--dir", str(keys)).stdout  # and a table for people
    audited = run("keys", "audit", "--dir", str(keys))
    # no passphrase, so no audit key: the chain checks, but nothing outside the directory vouches for it
    assert "UNAUTHENTICATED: 3 entries" in audited.stderr and "head: " in audited.stdout


def test_keys_audit_names_the_broken_entry(keys: Path) -> None:
    run("keys", "rotate", "--dir", str(keys))
    log = keys / "audit.log"
    lines = log.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"retire"', b'"rotate"')
    log.write_bytes(b"".join(lines))
    result = run("keys", "audit", "--dir", str(keys), check=False)
    assert result.returncode == 1
    assert "entry 2" in result.stderr


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    result = run("keys", "list", "--dir", str(tmp_path / "missing"), check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "does not exist" in result.stderr
    result = run("token", "issue", "--dir", str(tmp_path / "missing"), "--sub", "a", "--aud", "b", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_a_corrupt_revocation_key_store_under_serve_is_one_clear_line(keys: Path, tmp_path: Path) -> None:
    """An error jwtwatch raises on purpose deep inside a node (here the feed's key store) ends any command with its
    one-line message and exit status 2, not a traceback."""
    data = tmp_path / "data"
    (data / "revocation-keys").mkdir(parents=True)
    (data / "revocation-keys" / "store.json").write_text("{broken")
    result = run(
        "serve", "--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-file", str(keys / "jwks.json"),
        "--port", str(free_port()), "--data-dir", str(data), check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "╭" not in result.stderr
    assert "revocation-keys/store.json is corrupt" in result.stderr


def test_pipeline_run_names_the_kafka_consumers_it_knows() -> None:
    args = ("pipeline", "run", "--kafka", "127.0.0.1:1", "--issuer", "i", "--kafka-consumer", "librdkafka")
    result = run(*args, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "kafka-python, confluent-kafka" in result.stderr


def test_pipeline_rekey_checks_its_options_and_its_broker_in_one_line() -> None:
    assert "rekey" in run("pipeline", "--help").stdout
    wrong = run("pipeline", "rekey", "--kafka", "127.0.0.1:1", "--kafka-consumer", "librdkafka", check=False)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "kafka-python, confluent-kafka" in wrong.stderr
    # No broker there: the start stops with one line (the bus's deadline), before the stage says it runs.
    result = run("pipeline", "rekey", "--kafka", "127.0.0.1:1", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "rekey on" not in result.stdout


def test_token_issue_refuses_more_than_the_lifetime_cap(keys: Path) -> None:
    result = run("token", "issue", "--dir", str(keys), "--sub", "a", "--aud", AUDIENCE, "--ttl", "7200", check=False)
    assert result.returncode == 2
    assert "ttl" in result.stderr.lower() or "lifetime" in result.stderr.lower()


@pytest.fixture
def validator(keys: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    admin = tmp_path / "admin-token"
    admin.write_text("a-very-secret-admin-token-1234\n")
    admin.chmod(0o600)
    log = tmp_path / "validator.log"
    proc = subprocess.Popen(
        [*JWTWATCH, "validator", "serve", "--port", str(port), "--jwks-file", str(keys / "jwks.json"),
         "--admin-token-file", str(admin), "--data-dir", str(tmp_path / "data"),
         "--events-out", str(tmp_path / "events.jsonl")],
        env={**os.environ, "JWTWATCH_ISSUER": ISSUER, "JWTWATCH_AUDIENCE": AUDIENCE},
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log, timeout=30)
    except AssertionError:
        proc.kill()
        raise
    yield url, admin
    proc.terminate()
    proc.wait(timeout=20)


def test_validator_serve_end_to_end(keys: Path, validator: tuple[str, Path], tmp_path: Path) -> None:
    url, admin = validator
    token = run("token", "issue", "--dir", str(keys), "--sub", "alice", "--aud", AUDIENCE).stdout.strip()
    assert httpx.get(f"{url}/v1/validate", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    # Rotation is picked up from jwks.json without a restart; old tokens stay good.
    run("keys", "rotate", "--dir", str(keys))
    time.sleep(1.1)  # the JWKS file is re-checked at most once a second
    fresh = run("token", "issue", "--dir", str(keys), "--sub", "alice", "--aud", AUDIENCE).stdout.strip()
    assert httpx.get(f"{url}/v1/validate", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    assert httpx.get(f"{url}/v1/validate", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    jwks = httpx.get(f"{url}/.well-known/jwks.json")
    assert len(jwks.json()["keys"]) == 2
    assert "max-age=60" in jwks.headers["cache-control"]

    result = run("revoke", "--url", url, "--admin-token-file", str(admin), "--sub", "alice")
    assert "version 1" in result.stdout
    for t in (token, fresh):
        assert httpx.get(f"{url}/v1/validate", headers={"Authorization": f"Bearer {t}"}).status_code == 401
    # Usage events are written off the request path, in batches: give the writer a moment.
    deadline = time.monotonic() + 10
    while len(events := (tmp_path / "events.jsonl").read_text().splitlines()) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(events) == 5
    assert '"reason":"revoked"' in events[-1]


def test_a_bad_validator_configuration_fails_before_touching_disk(tmp_path: Path) -> None:
    result = run(
        "validator", "serve", "--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-url", "http://insecure.example/jwks",
        "--data-dir", str(tmp_path / "data"), check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "https" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # no key store, no SQLite file for a configuration that cannot run


@pytest.mark.parametrize("command", ["serve", "alerts serve"])
def test_metrics_are_served_on_their_own_listener_only(command: str, keys: Path, tmp_path: Path) -> None:
    """`serve` and `alerts serve` with --metrics-port: /metrics there, none on the service's port (`validator
    serve`'s listener: tests/validation/test_lifetime.py, tests/validation/test_workers.py)."""
    port, metrics_port = free_port(), free_port()
    admin = tmp_path / "admin-token"
    admin.write_text("cli-metrics-admin-token-0123456789\n")
    admin.chmod(0o600)
    args = ["--port", str(port)] if command == "serve" else ["--port", str(port), "--admin-token-file", str(admin)]
    if command == "serve":
        args += ["--jwks-file", str(keys / "jwks.json")]
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [*JWTWATCH, *command.split(), *args, "--data-dir", str(tmp_path / "data"), "--metrics-port", str(metrics_port)],
        env={**os.environ, "JWTWATCH_ISSUER": ISSUER, "JWTWATCH_AUDIENCE": AUDIENCE},
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log, timeout=60)
        assert httpx.get(f"{url}/metrics").status_code == 404
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scraped.status_code == 200 and "jwtwatch_webhook_deliveries_pending" in scraped.text
        if command == "serve":
            assert "jwtwatch_validations_total" in scraped.text
        assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_metrics_port_cannot_be_the_service_port(tmp_path: Path) -> None:
    admin = tmp_path / "admin-token"
    admin.write_text("cli-metrics-admin-token-0123456789\n")
    admin.chmod(0o600)
    port = str(free_port())
    result = run(
        "alerts", "serve", "--admin-token-file", str(admin), "--port", port, "--metrics-port", port,
        "--data-dir", str(tmp_path / "data"), check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "--metrics-port must differ from --port" in result.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660], ids=oct)
def test_an_admin_token_file_others_can_read_is_refused(mode: int, tmp_path: Path) -> None:
    admin = tmp_path / "admin-token"
    admin.write_text("cli-admin-token-0123456789abcdef\n")
    admin.chmod(mode)
    result = run(
        "alerts", "serve", "--admin-token-file", str(admin), "--port", str(free_port()),
        "--data-dir", str(tmp_path / "data"), check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"accessible by other users (mode {mode:o}); chmod 600 it" in " ".join(result.stderr.split())
    assert not (tmp_path / "data").exists()  # refused before anything was created


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read the admin token file: No such file or directory"),
        ("\n", "the admin token file {path} is empty"),
        ("short\n", "admin token in {path} is too short"),
        (b"\xff" * 20, "the admin token in {path} is not UTF-8 text"),
    ],
    ids=["missing", "empty", "short", "not-utf8"],
)
def test_an_unusable_admin_token_file_is_one_clear_line(
    content: str | bytes | None, problem: str, tmp_path: Path
) -> None:
    admin = tmp_path / "admin-token"
    if content is not None:
        admin.write_bytes(content if isinstance(content, bytes) else content.encode())
        admin.chmod(0o600)
    result = run(
        "alerts", "serve", "--admin-token-file", str(admin), "--port", str(free_port()),
        "--data-dir", str(tmp_path / "data"), check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert problem.format(path=admin) in " ".join(result.stderr.split())
