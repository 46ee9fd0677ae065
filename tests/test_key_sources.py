"""Where keys come from: a JWKS over real HTTPS (refetch cooldown, stale keys kept), and a JWKS file."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.validation import TokenValidator, ValidatorConfig
from pipeline.validation.jwks import JwksError
from pipeline.validation.key_sources import FileKeySource, UrlKeySource
from tests.jwtkit import AUDIENCE, ISSUER, Issuer, new_key
from tests.servers import serve_app
from tests.tls import make_tls


@dataclass
class JwksServer:
    """A JWKS endpoint whose answer the test controls; counts requests."""

    body: bytes = b""
    status: int = 200
    requests: int = 0
    extra_keys: list[dict] = field(default_factory=list)

    def app(self) -> Starlette:
        async def jwks(request: Request) -> Response:
            self.requests += 1
            return Response(self.body, status_code=self.status, media_type="application/json")

        async def redirect(request: Request) -> Response:
            self.requests += 1
            return Response(status_code=302, headers={"Location": "/jwks.json"})

        return Starlette(routes=[Route("/jwks.json", jwks), Route("/moved", redirect)])


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
    from pipeline.validation.jwks import parse_jwks

    keys = parse_jwks({"keys": [private_jwk]})
    published = keys.public_jwks()["keys"][0]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & published.keys()


def test_symmetric_keys_in_a_jwks_are_refused() -> None:
    from pipeline.validation.jwks import parse_jwks

    with pytest.raises(JwksError, match="oct"):
        parse_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h", "alg": "HS256"}]})


@pytest.mark.parametrize("alg", ["HS256", "none", "RS1"])
def test_config_refuses_symmetric_and_none_algorithms(alg: str) -> None:
    with pytest.raises(ValidationError):
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks={"keys": []}, algorithms=[alg])


def test_only_sources_that_may_fetch_keys_are_marked_blocking(tmp_path: Path, issuer: Issuer) -> None:
    """The HTTP fast path validates on the event loop only when no key source can do network I/O."""
    from pipeline.validation.jwks import KeySet
    from pipeline.validation.key_sources import CombinedKeySource, SignedJwksUrlSource, StaticKeySource

    assert UrlKeySource.may_block and SignedJwksUrlSource.may_block
    (tmp_path / "jwks.json").write_text(json.dumps(issuer.jwks()))
    static, file = StaticKeySource(KeySet()), FileKeySource(tmp_path / "jwks.json", ("RS256",))
    assert not static.may_block and not file.may_block
    assert not CombinedKeySource([static, file]).may_block

    class Unknown:  # a key source that does not say: assumed to block
        generation = 0

    assert CombinedKeySource([static, Unknown()]).may_block  # type: ignore[list-item]
