"""A validator whose revocation feed lags says so: /readyz, /metrics, and — with fail-closed — 503s."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.bus.memory import MemoryBus
from pipeline.revocations.follower import RevocationFollower
from pipeline.serving.web import metrics_app
from pipeline.validation import ValidatorConfig
from pipeline.validation.app import create_validator_app
from pipeline.validation.service import ValidatorService
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer
from tests.support.servers import serve_app

ISSUER_KEYS = Issuer.create()


@pytest.fixture(params=[False, True], ids=["fail-open", "fail-closed"])
def validator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, RevocationFollower, bool, str]]:
    """The validator's URL, its feed, whether it fails closed, and its metrics listener's URL."""
    bus = MemoryBus()
    service = ValidatorService(
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=ISSUER_KEYS.jwks()),
        data_dir=tmp_path,
        bus=bus,
        max_feed_lag_s=5,
        fail_closed=request.param,
    )
    follower = RevocationFollower(bus, service.revocations)
    service.feed = follower
    with serve_app(create_validator_app(service)) as url, serve_app(metrics_app(service.registry)) as metrics_url:
        yield url, follower, request.param, metrics_url
    service.close()


def test_not_ready_until_the_feed_is_read(validator) -> None:
    url, follower, _, _ = validator
    assert httpx.get(f"{url}/readyz").status_code == 503
    follower.step()
    assert httpx.get(f"{url}/readyz").status_code == 200


def test_a_lagging_feed_shows_and_fails_closed_when_asked(validator) -> None:
    url, follower, fail_closed, metrics_url = validator
    follower.step()
    token = ISSUER_KEYS.token("ES256")
    assert httpx.get(f"{url}/v1/validate", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    follower.caught_up_at = time.monotonic() - 60  # the feed has not been read for a minute (Kafka down)
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 503 and "lagging" in ready.json()["detail"]
    assert "jwtwatch_revocation_feed_seconds_since_caught_up 6" in httpx.get(f"{metrics_url}/metrics").text
    status = httpx.get(f"{url}/v1/validate", headers={"Authorization": f"Bearer {token}"}).status_code
    # Fail open keeps enforcing its local snapshot; fail closed vouches for nothing.
    assert status == (503 if fail_closed else 200)
