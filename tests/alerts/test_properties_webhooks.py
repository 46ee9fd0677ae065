"""Properties of webhook registration: any body to POST /v1/webhooks is a 201 or a 4xx, never a 500."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.alerts import AlertsService, create_alerts_app
from tests.support.servers import serve_app

ADMIN = "admin-token-properties-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
PROPERTY = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

HOSTS = st.sampled_from(
    [
        "127.0.0.1",
        "[::1]",
        "localhost",
        "10.1.2.3",
        "169.254.169.254",  # cloud metadata
        "0.0.0.0",
        "[::ffff:127.0.0.1]",
        "[64:ff9b::a9fe:a9fe]",
        "2130706433",
        "0x7f.1",
        "127.1",
        "[fe80::1%25eth0]",
        "user:pass@127.0.0.1",
        "example.invalid",
        "xn--nxasmq6b.invalid",
        "a" * 64 + ".invalid",
        "\u00e9xample.invalid",
        "",
        "[",
    ]
) | st.text(alphabet=string.ascii_letters + string.digits + ".-_[]:%@", max_size=30)
URLS = st.one_of(
    st.builds(
        "{}://{}{}{}".format,
        st.sampled_from(["http", "https", "HTTP", "ftp", "file", "javascript", ""]),
        HOSTS,
        st.sampled_from(["", ":0", ":1", ":65535", ":65536", ":-1", ":99999999999", ":x"]),
        st.sampled_from(["", "/", "/hook", "/a?b=c#d", "/\x00", "/%00", "/ ", "/\u00e9"]),
    ),
    st.text(max_size=80),
)

BODY = st.fixed_dictionaries(
    {},
    optional={
        "url": URLS | JSON,
        "event_types": st.lists(
            st.sampled_from(["token.anomaly", "token.revoked", "revocation.storm", "nope", ""]), max_size=5
        )
        | JSON,
        "min_severity": st.sampled_from(["low", "medium", "high", "critical", "HIGH", ""]) | JSON,
        "secret": st.just("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        "extra": JSON,
    },
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    service = AlertsService(tmp_path_factory.mktemp("alerts"), admin_token=ADMIN, rng=random.Random(3), timeout_s=2.0)
    try:
        with serve_app(create_alerts_app(service)) as base, httpx.Client(base_url=base, timeout=30) as http:
            yield http
    finally:
        service.close()


def check_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    assert response.status_code in {201, 400, 413, 422}, (response.status_code, response.text)
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    if response.status_code == 201:
        assert set(body) == {"id", "secret"} and body["secret"].startswith("whsec_")
    else:
        assert "error" in body and "whsec_" not in response.text  # no secret, not even an echoed one


@PROPERTY
@given(BODY)
@example({"url": "http://127.0.0.1:8/hook", "event_types": ["token.anomaly"], "min_severity": "high"})
@example({"url": "http://[::1", "event_types": ["token.anomaly"]})
@example({"url": "https://" + "a" * 64 + ".example/"})
@example({"url": "http://127.0.0.1:8/" + "x" * 2100})
@example({"url": "http://127.0.0.1:8/", "event_types": []})
def test_any_registration_object_is_201_or_4xx(client: httpx.Client, body: dict) -> None:
    check_answer(client.post("/v1/webhooks", content=orjson.dumps(body), headers=AUTH))


@PROPERTY
@given(JSON)
def test_any_json_value_is_201_or_4xx(client: httpx.Client, value: object) -> None:
    check_answer(client.post("/v1/webhooks", content=orjson.dumps(value), headers=AUTH))


@PROPERTY
@given(st.binary(max_size=400) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
@example(b"")
@example(b"[" * 2000)
@example(b'{"url": 1' + b"0" * 400 + b"}")
@example(b"\xef\xbb\xbf{}")
def test_any_bytes_are_201_or_4xx(client: httpx.Client, raw: bytes) -> None:
    check_answer(client.post("/v1/webhooks", content=raw, headers=AUTH | {"Content-Type": "application/json"}))


def test_control_a_good_registration_is_201_and_listed_without_its_secret(client: httpx.Client) -> None:
    body = {"url": "http://127.0.0.1:9/hook", "event_types": ["token.anomaly"], "min_severity": "high"}
    response = client.post("/v1/webhooks", json=body, headers=AUTH)
    assert response.status_code == 201
    created = response.json()
    listed = client.get("/v1/webhooks", headers=AUTH)
    assert created["id"] in listed.text and created["secret"] not in listed.text
    assert client.post("/v1/webhooks", content=b"x" * 20_000, headers=AUTH).status_code == 413
    assert client.post("/v1/webhooks", json=body).status_code == 401
