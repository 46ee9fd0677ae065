"""Short lifetimes enforced: a token whose ``exp - iat`` exceeds ``--max-token-lifetime`` (default 1 h) is rejected
with reason ``lifetime``; ``jwtwatch token issue`` defaults to 10 minutes and refuses more than the cap."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from pipeline.bus import TOKEN_USAGE
from pipeline.bus.memory import MemoryBus
from pipeline.events import REASONS, TokenUsage
from pipeline.validation import TokenValidator, ValidatorConfig
from pipeline.validation.app import create_validator_app
from pipeline.validation.service import ValidatorService
from tests.support.cli import AUDIENCE as CLI_AUDIENCE
from tests.support.cli import ISSUER as CLI_ISSUER
from tests.support.cli import JWTWATCH, run
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer, new_key, standard_claims
from tests.support.ports import free_port
from tests.support.servers import serve_app, wait_ready

HOUR = 3600


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer.create()


def lived(issuer: Issuer, seconds: int, alg: str = "ES256") -> str:
    """A token issued a minute ago that lives ``seconds`` from iat to exp."""
    now = int(time.time()) - 60
    return issuer.token(alg, claims=standard_claims(now, ttl=seconds))


def test_reason_is_in_the_contract() -> None:
    assert "lifetime" in REASONS


def test_default_cap_is_one_hour(issuer: Issuer) -> None:
    validator = TokenValidator(ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()))
    assert validator.config.max_token_lifetime_s == HOUR
    assert validator.validate(lived(issuer, HOUR)).ok
    verdict = validator.validate(lived(issuer, HOUR + 1))
    assert not verdict.ok and verdict.reason == "lifetime"
    assert verdict.claims is None and verdict.unverified_claims is not None  # for the usage event only


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_configured_cap(issuer: Issuer, alg: str) -> None:
    config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks(), max_token_lifetime_s=600)
    validator = TokenValidator(config)
    assert validator.validate(lived(issuer, 600, alg)).ok
    assert validator.validate(lived(issuer, 601, alg)).reason == "lifetime"
    assert validator.validate(lived(issuer, 10 * 365 * 24 * HOUR, alg)).reason == "lifetime"


def test_lifetime_is_judged_only_on_authentic_tokens(issuer: Issuer) -> None:
    """A forged long-lived token is a forgery first: the reason must not tell an attacker the signature was fine."""
    validator = TokenValidator(ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()))
    attacker = new_key("ES256", kid=issuer.keys["ES256"].kid)
    forged = issuer.token("ES256", key=attacker, claims=standard_claims(ttl=30 * 24 * HOUR))
    assert validator.validate(forged).reason == "bad_signature"


def test_lifetime_rejection_over_http_with_its_usage_event(issuer: Issuer, tmp_path: Path) -> None:
    bus = MemoryBus()
    service = ValidatorService(
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()), data_dir=tmp_path, bus=bus
    )
    events = bus.consumer([TOKEN_USAGE], "test", from_beginning=True)
    with serve_app(create_validator_app(service)) as url:
        long = httpx.get(f"{url}/v1/validate", headers={"Authorization": f"Bearer {lived(issuer, 24 * HOUR)}"})
        short = httpx.get(f"{url}/v1/validate", headers={"Authorization": f"Bearer {lived(issuer, 600)}"})
    service.close()
    assert long.status_code == 401 and long.json() == {"error": "invalid_token"}  # says nothing more
    assert short.status_code == 200
    usage = {u.outcome: u for u in (TokenUsage.from_json(m.value) for m in events.poll(10, 1.0))}
    assert usage["rejected"].reason == "lifetime" and usage["accepted"].reason is None
    rejected = usage["rejected"]
    assert rejected.jti is not None and rejected.exp - rejected.iat == 24 * HOUR  # type: ignore[operator]


def test_subject_revocations_are_kept_as_long_as_the_cap(issuer: Issuer, tmp_path: Path) -> None:
    config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks(), max_token_lifetime_s=900)
    service = ValidatorService(config, data_dir=tmp_path)
    assert service.revocations.max_token_lifetime_s == 900
    service.close()


# ------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key store that would allow 2 h tokens: the validators' cap, not the store's, must decide."""
    directory = tmp_path_factory.mktemp("keys") / "keys"
    run(
        "keys",
        "init",
        "--dir",
        str(directory),
        "--alg",
        "ES256",
        "--issuer",
        CLI_ISSUER,
        "--max-token-lifetime",
        "7200",
    )
    return directory


def issue(keys: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(
        "token", "issue", "--dir", str(keys), "--sub", "alice", "--aud", CLI_AUDIENCE, *args, check=False, env=env
    )


def lifetime_of(token: str) -> int:
    claims = jwt.decode(token, options={"verify_signature": False})
    return claims["exp"] - claims["iat"]


def test_token_issue_defaults_to_ten_minutes(keys: Path) -> None:
    result = issue(keys)
    assert result.returncode == 0, result.stderr
    assert lifetime_of(result.stdout.strip()) == 600


def test_token_issue_refuses_more_than_the_cap(keys: Path) -> None:
    result = issue(keys, "--ttl", str(HOUR + 1))  # the store would allow it; the cap does not
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "exceeds the maximum token lifetime of 3600 s" in result.stderr
    assert issue(keys, "--ttl", str(HOUR)).returncode == 0
    raised = issue(keys, "--ttl", "5400", "--max-token-lifetime", "7200")
    assert raised.returncode == 0 and lifetime_of(raised.stdout.strip()) == 5400
    lowered = issue(keys, "--ttl", "900", env={"JWTWATCH_MAX_TOKEN_LIFETIME": "600"})
    assert lowered.returncode == 2


@pytest.fixture
def validator(keys: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The validator's URL and its metrics listener's."""
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "validator.log"
    proc = subprocess.Popen(
        [*JWTWATCH, "validator", "serve", "--port", str(port), "--jwks-file", str(keys / "jwks.json"),
         "--data-dir", str(tmp_path / "data"), "--max-token-lifetime", "900", "--metrics-port", str(metrics_port)],
        env={**os.environ, "JWTWATCH_ISSUER": CLI_ISSUER, "JWTWATCH_AUDIENCE": CLI_AUDIENCE},
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log, timeout=30)
    except AssertionError:
        proc.kill()
        raise
    yield url, f"http://127.0.0.1:{metrics_port}"
    proc.terminate()
    proc.wait(timeout=20)


def test_validator_serve_enforces_its_cap(keys: Path, validator: tuple[str, str]) -> None:
    validator, metrics_url = validator
    ok = issue(keys, "--ttl", "900").stdout.strip()
    too_long = issue(keys, "--ttl", "901").stdout.strip()
    assert httpx.get(f"{validator}/v1/validate", headers={"Authorization": f"Bearer {ok}"}).status_code == 200
    assert httpx.get(f"{validator}/v1/validate", headers={"Authorization": f"Bearer {too_long}"}).status_code == 401
    metrics = httpx.get(f"{metrics_url}/metrics").text
    assert 'jwtwatch_validations_total{outcome="rejected",reason="lifetime"} 1.0' in metrics
