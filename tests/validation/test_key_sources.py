"""Where keys come from: a JWKS over real HTTPS (refetch cooldown, stale keys kept), and a JWKS file."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from pipeline.errors import JwksError
from pipeline.validation import TokenValidator, ValidatorConfig
from pipeline.validation.key_sources import FileKeySource, UrlKeySource
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer, new_key
from tests.support.servers import serve_app
from tests.support.tls import make_tls


@dataclass
class JwksServer:
    """A JWKS endpoint whose answer the test controls; counts requests."""

    body: bytes = b""
    status: int = 200
    requests: int = 0
    extra_keys: list[dict] = field(default_factory=list)
    #: seconds between the bytes of the body (0: all at once) — a server that stays inside every per-read timeout
    trickle_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)

    def app(self) -> Starlette:
        async def jwks(request: Request) -> Response:
            self.requests += 1
            if self.trickle_s:
                return StreamingResponse(self._trickle(self.body, self.trickle_s), media_type="application/json")
            return Response(self.body, status_code=self.status, media_type="application/json", headers=self.headers)

        async def redirect(request: Request) -> Response:
            self.requests += 1
            return Response(status_code=302, headers={"Location": "/jwks.json"})

        return Starlette(routes=[Route("/jwks.json", jwks), Route("/moved", redirect)])

    @staticmethod
    async def _trickle(body: bytes, pause_s: float) -> AsyncIterator[bytes]:
        for byte in body:
            await asyncio.sleep(pause_s)
            yield bytes([byte])


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer.create()


@pytest.fixture
def https(tmp_path: Path, issuer: Issuer) -> Iterator[tuple[str, JwksServer, Path]]:
    tls = make_tls(tmp_path)
    server = JwksServer(body=json.dumps(issuer.jwks()).encode())
    with serve_app(server.app(), ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key)) as url:
        yield url, server, tls.ca


def _config(url: str, ca: Path, **extra: object) -> ValidatorConfig:
    return ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=url, jwks_ca_file=ca, **extra)


def test_keys_fetched_over_verified_tls(https, issuer: Issuer) -> None:
    url, server, ca = https
    validator = TokenValidator(_config(f"{url}/jwks.json", ca))
    assert validator.validate(issuer.token("ES256")).ok
    assert server.requests == 1
    validator.close()


def test_untrusted_certificate_means_no_keys(https, issuer: Issuer) -> None:
    url, _, _ = https
    source = UrlKeySource(f"{url}/jwks.json", ("RS256", "ES256", "EdDSA"))  # system CAs: ours is unknown
    assert not source.has_keys
    assert "CERTIFICATE_VERIFY_FAILED" in (source.last_error or "")
    source.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1/jwks.json", "file:///etc/passwd", "ftp://x/jwks"])
def test_non_https_jwks_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="https"):
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=url)


def test_redirects_are_not_followed(https) -> None:
    url, server, ca = https
    source = UrlKeySource(f"{url}/moved", ("ES256",), ca_file=ca)
    assert not source.has_keys
    assert server.requests == 1
    source.close()


def test_unknown_kid_refetches_at_most_once_per_cooldown(https, issuer: Issuer) -> None:
    url, server, ca = https
    validator = TokenValidator(_config(f"{url}/jwks.json", ca, jwks_refetch_cooldown_s=3600))
    stranger = Issuer.create()
    for _ in range(50):
        assert validator.validate(stranger.token("RS256", headers={"kid": f"random-{time.time_ns()}"})).reason == (
            "unknown_kid"
        )
    # One fetch at start; the attacker's random kids are allowed a single refetch at most.
    assert server.requests <= 2
    validator.close()


def test_new_key_is_found_by_refetch_on_unknown_kid(https, issuer: Issuer) -> None:
    url, server, ca = https
    validator = TokenValidator(_config(f"{url}/jwks.json", ca, jwks_refetch_cooldown_s=0))
    rotated = new_key("ES256", kid="es256-2")
    server.body = json.dumps(issuer.jwks(rotated.public_jwk())).encode()
    assert validator.validate(issuer.token("ES256", key=rotated)).ok
    assert server.requests == 2
    validator.close()


@pytest.mark.chaos
@pytest.mark.parametrize("failure", ["down", "garbage", "empty-set", "huge"])
def test_stale_keys_are_kept_when_a_refresh_fails(https, issuer: Issuer, failure: str) -> None:
    url, server, ca = https
    validator = TokenValidator(_config(f"{url}/jwks.json", ca))
    token = issuer.token("RS256")
    assert validator.validate(token).ok
    if failure == "down":
        server.status = 503
    elif failure == "garbage":
        server.body = b"<html>not json"
    elif failure == "empty-set":
        server.body = b'{"keys": []}'
    else:
        server.body = b'{"keys": [' + b" " * (2 << 20) + b"]}"
    validator.cache.clear()
    assert validator.keys.refresh() is False  # type: ignore[attr-defined]
    assert server.requests == 2
    assert validator.keys.last_error  # type: ignore[attr-defined]
    assert validator.validate(token).ok  # the last good keys are still in use
    validator.close()


def test_jwks_file_follows_changes_and_keeps_last_good(tmp_path: Path, issuer: Issuer) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    source = FileKeySource(path, ("RS256", "ES256", "EdDSA"))
    assert len(source.current()) == 3
    source._checked = 0.0  # skip the once-a-second throttle instead of sleeping
    path.write_text("{broken")
    assert len(source.current()) == 3
    extra = new_key("ES256", kid="es256-9")
    source._checked = 0.0
    path.write_text(json.dumps(issuer.jwks(extra.public_jwk())))
    assert len(source.current()) == 4
    assert source.generation == 1


def test_missing_jwks_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(JwksError, match="cannot read JWKS file"):
        FileKeySource(tmp_path / "nope.json", ("ES256",))


def test_key_removal_drops_cached_verifications(tmp_path: Path, issuer: Issuer) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    validator = TokenValidator(ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=path))
    token = issuer.token("EdDSA")
    assert validator.validate(token).ok and len(validator.cache) == 1
    remaining = [k for k in issuer.jwks()["keys"] if k["alg"] != "EdDSA"]
    path.write_text(json.dumps({"keys": remaining}))
    validator.keys._checked = 0.0  # type: ignore[attr-defined]
    verdict = validator.validate(token)
    assert not verdict.ok and verdict.reason == "unknown_kid"


def test_private_members_in_a_jwks_are_ignored(tmp_path: Path) -> None:
    from jwt.algorithms import RSAAlgorithm

    key = new_key("RS256", kid="leaky")
    private_jwk = RSAAlgorithm.to_jwk(key.private, as_dict=True) | {"kid": "leaky", "alg": "RS256"}
    assert "d" in private_jwk
    from pipeline.keys.key_set import parse_jwks

    keys = parse_jwks({"keys": [private_jwk]})
    published = keys.public_jwks()["keys"][0]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & published.keys()


def test_symmetric_keys_in_a_jwks_are_refused() -> None:
    from pipeline.keys.key_set import parse_jwks

    with pytest.raises(JwksError, match="oct"):
        parse_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h", "alg": "HS256"}]})


@pytest.mark.parametrize("alg", ["HS256", "none", "RS1"])
def test_config_refuses_symmetric_and_none_algorithms(alg: str) -> None:
    with pytest.raises(ValidationError):
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks={"keys": []}, algorithms=[alg])


def test_only_sources_that_may_fetch_keys_are_marked_blocking(tmp_path: Path, issuer: Issuer) -> None:
    """The HTTP fast path validates on the event loop only when no key source can do network I/O."""
    from pipeline.keys.key_set import KeySet
    from pipeline.validation.key_sources import CombinedKeySource, SignedJwksUrlSource, StaticKeySource

    assert UrlKeySource.may_block and SignedJwksUrlSource.may_block
    (tmp_path / "jwks.json").write_text(json.dumps(issuer.jwks()))
    static, file = StaticKeySource(KeySet()), FileKeySource(tmp_path / "jwks.json", ("RS256",))
    assert not static.may_block and not file.may_block
    assert not CombinedKeySource([static, file]).may_block

    class Unknown:  # a key source that does not say: assumed to block
        generation = 0

    assert CombinedKeySource([static, Unknown()]).may_block  # type: ignore[list-item]


# ------------------------------------------------------------------------------ slow or stuck JWKS servers


class HeaderTrickler:
    """A TLS server that sends its status line and headers one byte every 0.1 s and never finishes them: each
    read returns well inside any per-read timeout, so only a total deadline ends the request."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(cert, key)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}/jwks.json"
        self._stop = threading.Event()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with self._tls.wrap_socket(conn, server_side=True) as tls:
                tls.recv(65536)
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"X-Slow: " + b"a" * 100_000
                for byte in head:
                    if self._stop.wait(0.1):
                        return
                    tls.sendall(bytes([byte]))
        except OSError:
            return

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


def test_trickled_headers_are_cut_off_at_the_total_deadline(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    server = HeaderTrickler(tls.cert, tls.key)
    try:
        started = time.monotonic()
        source = UrlKeySource(server.url, ("ES256",), ca_file=tls.ca, timeout_s=1.0)
        took = time.monotonic() - started
        assert server.connections == 1
        assert not source.has_keys
        assert "deadline" in (source.last_error or "")
        assert source.refusals["fetch"] == 1
        assert took < 10  # the per-read timeout alone would let it run for hours
        source.close()
    finally:
        server.close()


def test_an_unknown_kid_during_a_refresh_in_progress_is_answered_at_once(https, issuer: Issuer) -> None:
    url, server, ca = https
    validator = TokenValidator(_config(f"{url}/jwks.json", ca, jwks_refetch_cooldown_s=0, jwks_timeout_s=30))
    source = validator.keys
    assert isinstance(source, UrlKeySource)
    token = issuer.token("ES256")
    assert validator.validate(token).ok
    server.trickle_s = 0.2  # the next fetch takes the whole 30 s deadline
    refresh = threading.Thread(target=source.refresh, daemon=True)
    refresh.start()
    deadline = time.monotonic() + 10
    while server.requests < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.requests == 2
    started = time.monotonic()
    stranger = Issuer.create()
    for _ in range(20):
        assert validator.validate(stranger.token("RS256", headers={"kid": f"random-{time.time_ns()}"})).reason == (
            "unknown_kid"
        )
    validator.cache.clear()
    assert validator.validate(token).ok  # judged on the keys in hand, not after the refresh
    assert time.monotonic() - started < 10  # not one of them waited for the 30 s fetch
    assert server.requests == 2  # and none started another
    validator.close()  # the refresher thread ends with its fetch (a daemon either way)


def test_keys_are_refreshed_on_schedule_without_any_request(https, issuer: Issuer) -> None:
    url, server, ca = https
    source = UrlKeySource(f"{url}/jwks.json", ("RS256", "ES256", "EdDSA"), ca_file=ca, refresh_s=0.5)
    rotated = new_key("ES256", kid="es256-scheduled")
    server.body = json.dumps(issuer.jwks(rotated.public_jwk())).encode()
    deadline = time.monotonic() + 20
    while "es256-scheduled" not in source.current().by_kid and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "es256-scheduled" in source.current().by_kid
    assert source.generation >= 1
    source.close()
    assert not source._thread.is_alive()


def test_readiness_follows_a_failing_key_source_and_recovers(https, issuer: Issuer, tmp_path: Path) -> None:
    from pipeline.validation.service import ValidatorService

    url, server, ca = https
    config = _config(f"{url}/jwks.json", ca, jwks_refresh_s=0.5, jwks_max_stale_s=0.5, jwks_refetch_cooldown_s=0)
    service = ValidatorService(config, data_dir=tmp_path / "data")
    assert service.ready() == (True, "ok")
    server.status = 503
    deadline = time.monotonic() + 20
    while service.ready()[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    ready, detail = service.ready()
    assert not ready and "not been refreshed" in detail and url not in detail  # /readyz is public: no URL
    assert "HTTP 503" in (service.validator.keys.last_error or "")  # type: ignore[attr-defined]
    assert service.validator.validate(issuer.token("ES256")).ok  # the last good keys are still in use
    metrics = generate_latest(service.registry).decode()
    assert 'jwtwatch_jwks_refusals_total{reason="fetch",source="' in metrics
    server.status = 200
    deadline = time.monotonic() + 20
    while not service.ready()[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.ready() == (True, "ok")
    service.close()


def test_failing_refreshes_alone_leave_readiness_alone_by_default(https, issuer: Issuer, tmp_path: Path) -> None:
    """An issuer's JWKS outage is shared by all its validators: unless asked (jwks_max_stale_s), they stay ready on
    their last good keys rather than all leave the load balancer at once; the staleness shows in the metrics."""
    from pipeline.validation.service import ValidatorService

    url, server, ca = https
    service = ValidatorService(_config(f"{url}/jwks.json", ca, jwks_refresh_s=0.2), data_dir=tmp_path / "data")
    server.status = 503
    deadline = time.monotonic() + 20
    while "HTTP 503" not in (service.validator.keys.last_error or "") and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    time.sleep(1.0)  # five refresh periods of failures
    assert service.ready() == (True, "ok")
    assert service.validator.validate(issuer.token("ES256")).ok
    seconds = [
        line for line in generate_latest(service.registry).decode().splitlines()
        if line.startswith("jwtwatch_jwks_seconds_since_refresh{")
    ]  # fmt: skip
    assert seconds and float(seconds[0].rsplit(" ", 1)[1]) >= 1.0
    service.close()


def test_a_compressed_answer_is_refused(https) -> None:
    """Identity is asked for, so that the size cap counts what ends up in memory; gzip anyway is refused."""
    url, server, ca = https
    server.headers = {"Content-Encoding": "gzip"}
    source = UrlKeySource(f"{url}/jwks.json", ("ES256",), ca_file=ca)
    assert not source.has_keys and "content-encoding" in (source.last_error or "")
    source.close()
