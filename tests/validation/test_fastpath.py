"""The raw-ASGI ``GET /v1/validate`` answers exactly as the FastAPI route it stands in front of.

Both apps run over the same kind of service; every request below goes to each, and status, body and every
header (in order; ``date`` aside) must match, as must the usage event each validation leaves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from pipeline.bus import TOKEN_USAGE
from pipeline.bus.memory import MemoryBus
from pipeline.validation import ValidatorConfig
from pipeline.validation.app import create_validator_app
from pipeline.validation.fastpath import header_value
from pipeline.validation.service import ValidatorService
from tests.support.jwtkit import AUDIENCE, DROP, ISSUER, Issuer
from tests.support.servers import serve_app

ADMIN = "admin-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer.create()


class Side:
    def __init__(self, issuer: Issuer, data_dir: Path, *, fast: bool, **options: object) -> None:
        self.bus = MemoryBus()
        self.service = ValidatorService(
            ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
            data_dir=data_dir,
            bus=self.bus,
            admin_token=ADMIN,
            trusted_proxies="10.0.0.0/8,127.0.0.0/8",
            **options,  # type: ignore[arg-type]
        )
        self.app = create_validator_app(self.service, fast_path=fast)
        self.consumer = self.bus.consumer([TOKEN_USAGE], "t", from_beginning=True)

    def events(self) -> list[dict]:
        self.service.emitter.flush()
        events = [orjson.loads(m.value) for m in self.consumer.poll(1000, 0.2)]
        for event in events:
            event.pop("event_id")
            event.pop("ts")
        return events


@pytest.fixture(scope="module")
def pair(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Side, str, Side, str]]:
    fast = Side(issuer, tmp_path_factory.mktemp("fast"), fast=True, background=True)
    slow = Side(issuer, tmp_path_factory.mktemp("slow"), fast=False)
    with serve_app(fast.app) as fast_url, serve_app(slow.app) as slow_url:
        yield fast, fast_url, slow, slow_url
    fast.service.close()
    slow.service.close()


def _answer(response: httpx.Response) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    base = f"{response.request.url.scheme}://{response.request.url.netloc.decode()}".encode()
    headers = [
        (k.lower(), v.replace(base, b"BASE")) for k, v in response.headers.raw if k.lower() not in (b"date", b"server")
    ]
    return response.status_code, response.content, headers


def _cases(issuer: Issuer) -> list[tuple[str, str, list[tuple[str, str]]]]:
    good = issuer.token("ES256", sub="alice", scope="read write", client_id="app-1")
    odd = issuer.token("RS256", sub="bob\u00e9\u2028x\x01", scope=["a", "b"], azp="az")
    return [
        ("GET", "/v1/validate", []),
        ("GET", "/v1/validate", [("Authorization", "Basic YWxpY2U6c2VjcmV0")]),
        ("GET", "/v1/validate", [("Authorization", "Bearer")]),
        ("GET", "/v1/validate", [("Authorization", "bearer x.y.z")]),
        ("GET", "/v1/validate", [("Authorization", f"Bearer {good}")]),
        ("GET", "/v1/validate", [("Authorization", f"BEARER   {good}")]),
        ("GET", "/v1/validate?x=1", [("Authorization", f"Bearer {good}")]),
        ("GET", "/v1/validate", [("Authorization", f"Bearer {good}"), ("Authorization", "Bearer x.y.z")]),
        ("GET", "/v1/validate", [("Authorization", "Bearer x.y.z"), ("Authorization", f"Bearer {good}")]),
        ("GET", "/v1/validate", [("Authorization", f"Bearer {good}"), ("authorization", f"Bearer {good}")]),
        ("GET", "/v1/validate", [("Authorization", "Basic YWxpY2U6c2VjcmV0"), ("Authorization", "Basic eA==")]),
        ("GET", "/v1/validate", [("Authorization", "Bearer " + issuer.token("ES256", sub="admin\u200b"))]),
        ("GET", "/v1/validate", [("Authorization", f"Bearer {issuer.token('ES256', azp=7, client_id=DROP)}")]),
        ("GET", "/v1/validate", [("Authorization", f"Bearer {good[:-4]}AAAA")]),
        ("GET", "/v1/validate", [("Authorization", f"Bearer {issuer.token('RS256', exp=int(time.time()) - 3600)}")]),
        ("GET", "/v1/validate", [("Authorization", f"Bearer {issuer.token('EdDSA', aud='https://other.test')}")]),
        ("GET", "/v1/validate", [("Authorization", "Bearer " + "a" * 9000)]),
        ("GET", "/v1/validate", [("Authorization", f"Bearer {odd}")]),
        ("GET", "/v1/validate", [("Authorization", f"Bearer {issuer.token('RS256', sub=12345, jti='j' * 2000)}")]),
        (
            "GET",
            "/v1/validate",
            [
                ("Authorization", f"Bearer {good}"),
                ("X-Forwarded-For", "203.0.113.9, 10.1.2.3"),
                ("X-Forwarded-For", "10.9.9.9"),
                ("User-Agent", "curl/8"),
                ("User-Agent", "second"),
                ("X-Forwarded-Host", "api.example"),
                ("X-Forwarded-Method", "POST"),
                ("X-Forwarded-Uri", "/orders?id=1"),
            ],
        ),
        ("GET", "/v1/validate", [("Authorization", f"Bearer {good}"), ("X-Forwarded-For", "garbage, 198.51.100.7")]),
        ("GET", "/v1/validate/", [("Authorization", f"Bearer {good}")]),
        ("HEAD", "/v1/validate", [("Authorization", f"Bearer {good}")]),
        ("POST", "/v1/validate", [("Authorization", f"Bearer {good}")]),
    ]


def test_the_fast_path_answers_exactly_as_the_fastapi_route(pair: tuple[Side, str, Side, str], issuer: Issuer) -> None:
    fast, fast_url, slow, slow_url = pair
    for method, path, headers in _cases(issuer):
        answers = []
        for url in (fast_url, slow_url):
            with httpx.Client() as client:
                answers.append(_answer(client.request(method, url + path, headers=headers)))
        assert answers[0] == answers[1], (method, path, headers)
    assert fast.events() == slow.events()
    fast_metrics, slow_metrics = fast.service.metrics, slow.service.metrics
    assert _samples(fast_metrics.validations) == _samples(slow_metrics.validations) != {}
    fast_missing, slow_missing = _samples(fast_metrics.no_credentials), _samples(slow_metrics.no_credentials)
    assert fast_missing == slow_missing and any(value > 0 for value in fast_missing.values())


def _samples(metric: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A prometheus metric's samples by name and labels (its public collect(), not its internals)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metric.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")  # creation times differ between the two apps
    }


def test_a_revoked_cached_token_is_refused_by_the_fast_path(pair: tuple[Side, str, Side, str], issuer: Issuer) -> None:
    _, fast_url, _, _ = pair
    token = issuer.token("ES256", sub="carol", jti="revoke-me")
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(fast_url + "/v1/validate", headers=auth).status_code == 200  # now cached
    revoked = httpx.post(
        fast_url + "/v1/revocations",
        json={"kind": "jti", "value": "revoke-me"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert revoked.status_code == 201
    answer = httpx.get(fast_url + "/v1/validate", headers=auth)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert answer.headers["cache-control"] == "no-store"


def test_fail_closed_answers_503_on_both_paths(issuer: Issuer, tmp_path: Path) -> None:
    class Stale:
        caught_up_at = None

        def lag_seconds(self) -> float:
            return float("inf")

    answers = []
    for fast in (True, False):
        side = Side(issuer, tmp_path / str(fast), fast=fast, fail_closed=True)
        side.service.feed = Stale()
        with serve_app(side.app) as url:
            response = httpx.get(url + "/v1/validate", headers={"Authorization": f"Bearer {issuer.token()}"})
            answers.append(_answer(response))
        side.service.close()
    assert answers[0] == answers[1]
    assert answers[0][0] == 503


@pytest.mark.parametrize("value", ["alice", "a b", "x" * 1024, "read:orders write", "!~"])
def test_header_values_are_the_claims_unchanged(value: str) -> None:
    assert header_value(value) == value
    assert header_value(None) is None


UNCARRIABLE = [
    "",
    " admin",
    "admin ",
    "admin\u200b",
    "admin\n",
    "ad\tmin",
    "a\r\nX-Injected: 1",
    "read\u0000admin",
    "caf\u00e9",
    "\x7fdel",
    "x" * 1025,
    42,
    1.5,
    True,
    ["a", "b"],
    {"id": "admin"},
]


@pytest.mark.parametrize("value", UNCARRIABLE)
def test_header_values_that_would_change_are_refused_not_rewritten(value: object) -> None:
    with pytest.raises(ValueError):
        header_value(value)
