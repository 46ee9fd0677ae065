"""Signed JWKS (jwk-set+jwt) on validators: pinned root, over HTTPS or from a key directory, and no rollback.

How the sets are made and checked one by one: tests/keys/test_signed_jwks.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.errors import JwksError
from pipeline.keys import KeyStore
from pipeline.keys.signed_jwks import SIGNED_JWKS_FILE, RootKey, publish_signed_jwks, sign_jwks, verify_signed_jwks
from pipeline.validation import TokenValidator, ValidatorConfig
from pipeline.validation.app import create_validator_app
from pipeline.validation.key_sources import CombinedKeySource, FileKeySource, SignedJwksUrlSource
from pipeline.validation.service import ValidatorService
from pipeline.validation.signed_jwks import SignedJwksFileSource
from tests.support.jwtkit import Issuer
from tests.support.ports import free_port
from tests.support.servers import serve_app, wait_ready
from tests.support.tls import make_tls

ISS = "https://issuer.signed.test"
AUD = "https://api.signed.test"
ALGS = ("RS256", "ES256", "EdDSA")


@pytest.fixture
def root(tmp_path: Path) -> RootKey:
    return RootKey.init(tmp_path / "root", ISS)


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore.init(tmp_path / "keys", "ES256", issuer=ISS)


# --------------------------------------------------------------------------- over real HTTPS


@dataclass
class SignedServer:
    body: bytes = b""
    requests: int = 0

    def app(self) -> Starlette:
        async def signed(request: Request) -> Response:
            self.requests += 1
            return Response(self.body, media_type="application/jwk-set+jwt")

        return Starlette(routes=[Route("/.well-known/jwks.jwt", signed)])


@pytest.fixture
def https(tmp_path: Path) -> Iterator[tuple[str, SignedServer, Path]]:
    tls = make_tls(tmp_path)
    server = SignedServer()
    with serve_app(server.app(), ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key)) as url:
        yield f"{url}/.well-known/jwks.jwt", server, tls.ca


def _validator(source: SignedJwksUrlSource) -> TokenValidator:
    config = ValidatorConfig(issuer=ISS, audience=AUD, jwks={"keys": source.current().public_jwks()["keys"] or [{}]})
    return TokenValidator(config, key_source=source)


def test_signed_jwks_url_over_tls_trusts_only_root_signed_keys(https, root: RootKey, store: KeyStore, tmp_path) -> None:
    url, server, ca = https
    server.body = sign_jwks(root, store.public_jwks()).encode()
    source = SignedJwksUrlSource(url, ALGS, root_jwk=root.public_jwk, issuer=ISS, ca_file=ca, cooldown_s=0)
    assert source.has_keys, source.last_error
    validator = _validator(source)
    token = store.issue_token("alice", AUD)
    assert validator.validate(token).ok

    # someone who controls the web server publishes their own key, signed by their own "root"
    attacker = KeyStore.init(tmp_path / "attacker", "ES256", issuer=ISS)
    server.body = sign_jwks(RootKey.init(tmp_path / "evil-root", ISS), attacker.public_jwks()).encode()
    assert source.refresh() is False and "signature" in (source.last_error or "")
    forged = attacker.issue_token("alice", AUD)
    assert validator.validate(forged).reason == "unknown_kid"
    assert validator.validate(token).ok  # the last good set stays in use
    source.close()


def test_expired_signed_set_is_no_longer_trusted(https, root: RootKey, store: KeyStore) -> None:
    url, server, ca = https
    now = time.time()
    server.body = sign_jwks(root, store.public_jwks(), validity_s=600, now=now).encode()
    clock = [now]
    source = SignedJwksUrlSource(
        url, ALGS, root_jwk=root.public_jwk, issuer=ISS, ca_file=ca, cooldown_s=3600, clock=lambda: clock[0]
    )
    assert len(source.current()) == 1
    clock[0] = now + 600 + 31  # past exp and the leeway; the server still has only the old set
    assert len(source.current()) == 0  # fail closed: nobody vouches for these keys any more
    source.close()


def test_unpinned_root_or_untrusted_tls_gives_no_keys(https, root: RootKey, store: KeyStore, tmp_path) -> None:
    url, server, ca = https
    server.body = sign_jwks(root, store.public_jwks()).encode()
    other = RootKey.init(tmp_path / "other", ISS)
    assert not SignedJwksUrlSource(url, ALGS, root_jwk=other.public_jwk, issuer=ISS, ca_file=ca).has_keys
    assert not SignedJwksUrlSource(url, ALGS, root_jwk=root.public_jwk, issuer="https://x", ca_file=ca).has_keys
    no_ca = SignedJwksUrlSource(url, ALGS, root_jwk=root.public_jwk, issuer=ISS)
    assert not no_ca.has_keys and "CERTIFICATE_VERIFY_FAILED" in (no_ca.last_error or "")


# --------------------------------------------------------------------------- the validator app


def test_validator_with_keys_dir_serves_the_signed_set_and_trusts_both(tmp_path: Path, root: RootKey, store) -> None:
    other = Issuer.create()
    jwks_file = tmp_path / "other.json"
    jwks_file.write_text(json.dumps(other.jwks()))
    config = ValidatorConfig(issuer=ISS, audience=AUD, jwks_file=jwks_file)
    service = ValidatorService(config, data_dir=tmp_path / "data", keys_dir=store.path)
    service.validator.keys = CombinedKeySource([service.validator.keys, FileKeySource(store.path / "jwks.json", ALGS)])
    with serve_app(create_validator_app(service)) as url, httpx.Client(base_url=url) as client:
        assert client.get("/.well-known/jwks.jwt").status_code == 404  # not signed yet
        publish_signed_jwks(store, root)
        answer = client.get("/.well-known/jwks.jwt")
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/jwk-set+jwt"
        assert verify_signed_jwks(answer.content, root.public_jwk, issuer=ISS)[0] == store.public_jwks()
        published = {k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]}
    assert store.current().kid in published and published > {store.current().kid}
    assert service.validator.validate(store.issue_token("a", AUD)).ok
    service.close()


def test_combined_sources_refuse_one_kid_with_two_keys(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    first, second = Issuer.create(), Issuer.create()
    a.write_text(json.dumps(first.jwks()))
    b.write_text(json.dumps(second.jwks()))  # same kids, different keys
    combined = CombinedKeySource([FileKeySource(a, ALGS), FileKeySource(b, ALGS)])
    assert combined.current().usable() == []


def test_validator_serve_trusts_a_pinned_signed_jwks_url_end_to_end(https, root: RootKey, store: KeyStore, tmp_path):
    """`jwtwatch validator serve --signed-jwks-url` as a real process over real TLS: a token of the signed set is
    accepted, an attacker's token is refused, and a set signed by another root keeps it from starting at all."""
    import subprocess
    import sys

    url, server, ca = https
    server.body = sign_jwks(root, store.public_jwks()).encode()
    port = free_port()
    command = [sys.executable, "-m", "pipeline.cli", "validator", "serve", "--issuer", ISS, "--audience", AUD,
               "--signed-jwks-url", url, "--jwks-root-key", str(root.path / "root.jwk.json"),
               "--signed-jwks-issuer", ISS, "--jwks-ca-file", str(ca), "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(tmp_path / "data")]  # fmt: skip
    log = tmp_path / "validator.log"
    with log.open("wb") as output:  # a file, not a pipe nobody reads while the server runs
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, process, log)
        good = store.issue_token("alice", AUD)
        attacker = KeyStore.init(tmp_path / "attacker", "ES256", issuer=ISS)
        bad = attacker.issue_token("alice", AUD)
        assert httpx.get(f"{base}/v1/validate", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        assert httpx.get(f"{base}/v1/validate", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=20)

    # The same command against a set signed by someone else's root does not start.
    server.body = sign_jwks(RootKey.init(tmp_path / "evil-root", ISS), attacker.public_jwks()).encode()
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "--signed-jwks-url" in refused.stderr + refused.stdout


# --------------------------------------------------------------------------- rollback (high-water mark)


def _signed_source(url: str, ca: Path, root: RootKey, state_dir: Path | None) -> SignedJwksUrlSource:
    return SignedJwksUrlSource(url, ALGS, root_jwk=root.public_jwk, issuer=ISS, ca_file=ca, state_dir=state_dir)


def test_an_older_set_is_refused_after_a_restart(https, root: RootKey, tmp_path: Path) -> None:
    url, server, ca = https
    older, newer = (KeyStore.init(tmp_path / name, "ES256", issuer=ISS) for name in ("k1", "k2"))
    now = time.time()
    set_a = sign_jwks(root, older.public_jwks(), now=now - 3600).encode()
    set_b = sign_jwks(root, newer.public_jwks(), now=now - 60).encode()
    state = tmp_path / "data"

    server.body = set_b
    first = _signed_source(url, ca, root, state)
    assert first.has_keys and first.high_water.iat == round(now - 60, 3)
    first.close()

    server.body = set_a  # the restarted validator is offered the older set first
    restarted = _signed_source(url, ca, root, state)
    assert not restarted.has_keys
    assert "older" in (restarted.last_error or "") and restarted.refusals == {"rollback": 1}
    server.body = set_b  # the set it had is fine again, and a newer one moves the mark on
    assert restarted.refresh() and restarted.has_keys
    set_c = sign_jwks(root, older.public_jwks(), now=now).encode()
    server.body = set_c
    assert restarted.refresh() and restarted.high_water.iat == round(now, 3)
    restarted.close()

    stored = json.loads(restarted.high_water.path.read_bytes())  # type: ignore[union-attr]
    assert stored["iat"] == round(now, 3) and stored["root_kid"] == root.kid and stored["issuer"] == ISS
    assert restarted.high_water.path.stat().st_mode & 0o777 == 0o600  # type: ignore[union-attr]
    assert restarted.high_water.path.parent.stat().st_mode & 0o077 == 0  # type: ignore[union-attr]


def test_same_iat_is_accepted_only_for_the_same_content(https, root: RootKey, store: KeyStore, tmp_path) -> None:
    url, server, ca = https
    now = time.time()
    server.body = sign_jwks(root, store.public_jwks(), now=now).encode()
    source = _signed_source(url, ca, root, tmp_path / "data")
    assert source.has_keys
    # signed again, unchanged: ECDSA gives another signature, the content is the same — accepted
    resigned = sign_jwks(root, store.public_jwks(), now=now).encode()
    assert resigned != server.body
    server.body = resigned
    assert source.refresh() is False and source.last_error is None
    # another key set claiming the same moment: which one is newest cannot be told — refused
    other = KeyStore.init(tmp_path / "other", "ES256", issuer=ISS)
    server.body = sign_jwks(root, other.public_jwks(), now=now).encode()
    assert source.refresh() is False and source.refusals["conflict"] == 1
    assert set(source.current().by_kid) == {store.current().kid}
    source.close()


def test_worker_processes_sharing_a_data_dir_share_the_mark(https, root: RootKey, tmp_path: Path) -> None:
    """Two sources on one state dir stand for two workers: what one accepted, the other cannot be rolled back
    behind, even though it never saw the newer set itself."""
    url, server, ca = https
    older, newer = (KeyStore.init(tmp_path / name, "ES256", issuer=ISS) for name in ("k1", "k2"))
    now = time.time()
    set_a = sign_jwks(root, older.public_jwks(), now=now - 3600).encode()
    state = tmp_path / "data"
    server.body = set_a
    worker_1 = _signed_source(url, ca, root, state)
    worker_2 = _signed_source(url, ca, root, state)
    server.body = sign_jwks(root, newer.public_jwks(), now=now - 60).encode()
    assert worker_1.refresh()
    server.body = set_a  # the same set worker 2 holds, but older than what worker 1 recorded
    assert worker_2.refresh() is False and worker_2.refusals["rollback"] == 1
    worker_1.close()
    worker_2.close()


def test_an_unreadable_or_unwritable_state_refuses_every_set(https, root: RootKey, store, tmp_path: Path) -> None:
    url, server, ca = https
    server.body = sign_jwks(root, store.public_jwks()).encode()
    state = tmp_path / "data"
    source = _signed_source(url, ca, root, state)
    path = source.high_water.path
    assert path is not None and source.has_keys
    source.close()
    path.write_text("{not json")
    broken = _signed_source(url, ca, root, state)
    assert not broken.has_keys and broken.refusals == {"state": 1} and "remove it" in (broken.last_error or "")
    broken.close()
    path.unlink()  # removing the state resets the protection: the first valid set is trusted, as on a first start
    assert _signed_source(url, ca, root, state).has_keys
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    unwritable = _signed_source(url, ca, root, not_a_dir)
    assert not unwritable.has_keys and unwritable.refusals == {"state": 1}  # a set that cannot be recorded is not used
    unwritable.close()


def test_rollback_refusals_are_logged_and_counted_in_the_metrics(
    https, root: RootKey, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, server, ca = https
    older, newer = (KeyStore.init(tmp_path / name, "ES256", issuer=ISS) for name in ("k1", "k2"))
    now = time.time()
    server.body = sign_jwks(root, newer.public_jwks(), now=now - 60).encode()
    source = _signed_source(url, ca, root, None)  # in memory only: still refuses within the process
    service = ValidatorService(ValidatorConfig(issuer=ISS, audience=AUD, jwks=newer.public_jwks()), data_dir=tmp_path)
    service.validator.keys = source  # as validator serve does: the live source replaces the config's stand-in
    server.body = sign_jwks(root, older.public_jwks(), now=now - 3600).encode()
    with caplog.at_level("ERROR", logger="pipeline.validation.signed_jwks"):
        assert source.refresh() is False
    assert any("rollback" in r.getMessage() for r in caplog.records)
    metrics = generate_latest(service.registry).decode()
    assert f'jwtwatch_jwks_refusals_total{{reason="rollback",source="{url}"}} 1.0' in metrics
    assert service.validator.validate(newer.issue_token("alice", AUD)).ok
    assert service.validator.validate(older.issue_token("alice", AUD)).reason == "unknown_kid"
    service.close()


def test_keys_dir_with_a_pinned_root_trusts_only_what_the_root_signed(tmp_path: Path, root: RootKey, store) -> None:
    """jwks.json can be rewritten by whoever writes the directory; jwks.jwt cannot be signed by them."""
    now = [time.time()]
    publish_signed_jwks(store, root, now=now[0])
    source = SignedJwksFileSource(
        store.path / SIGNED_JWKS_FILE, ALGS, root_jwk=root.public_jwk, issuer=ISS, clock=lambda: now[0],
        min_interval_s=0,
    )  # fmt: skip
    genuine = store.current().kid
    assert set(source.current().by_kid) == {genuine}

    attacker = KeyStore.init(tmp_path / "attacker", "ES256", issuer=ISS)
    jwks = json.loads((store.path / "jwks.json").read_bytes())
    jwks["keys"].append(attacker.public_jwks()["keys"][0])
    (store.path / "jwks.json").write_text(json.dumps(jwks))  # what --keys-dir alone would trust
    their_root = RootKey.init(tmp_path / "their-root", ISS)
    forged = sign_jwks(their_root, {"keys": jwks["keys"]}, now=now[0] + 1)
    (store.path / SIGNED_JWKS_FILE).write_text(forged)
    assert not source.refresh_for_unknown_kid()
    assert set(source.current().by_kid) == {genuine} and "pinned root" in (source.last_error or "")

    older = sign_jwks(root, store.public_jwks(), now=now[0] - 60)  # genuine, but older than the set in use
    store.rotate()
    publish_signed_jwks(store, root, now=now[0] + 2)  # a real rotation, signed where the root key is
    assert source.refresh_for_unknown_kid()
    assert set(source.current().by_kid) == {genuine, store.current().kid}
    (store.path / SIGNED_JWKS_FILE).write_text(older)
    assert not source.refresh_for_unknown_kid() and "older than the accepted" in (source.last_error or "")
    assert store.current().kid in source.current().by_kid

    now[0] += 8 * 86400  # past the set's exp: nobody vouches for the keys any more
    assert len(source.current()) == 0
    with pytest.raises(JwksError, match="no key set the pinned root vouches for"):
        SignedJwksFileSource(tmp_path / "missing.jwt", ALGS, root_jwk=root.public_jwk, issuer=ISS)


def test_sets_published_within_one_second_still_move_forward(tmp_path: Path, root: RootKey, store: KeyStore) -> None:
    """A rotation re-signed within the second, or signed on a clock stepped back, is issued after the set it
    replaces: with whole-second iats, an equal one was a conflict that kept validators on the old keys."""
    now = float(int(time.time()))
    path = store.path / SIGNED_JWKS_FILE

    def iat() -> float:
        return float(jwt.decode(path.read_bytes().strip(), options={"verify_signature": False})["iat"])

    publish_signed_jwks(store, root, now=now)
    source = SignedJwksFileSource(
        path, ALGS, root_jwk=root.public_jwk, issuer=ISS, clock=lambda: now, min_interval_s=0,
        state_dir=tmp_path / "data",
    )  # fmt: skip
    issued = [iat()]
    store.rotate()  # a key change; the old jwks.jwt no longer lists the store's keys
    publish_signed_jwks(store, root, now=now + 0.25)  # the same second
    issued.append(iat())
    assert source.refresh_for_unknown_kid() and store.current().kid in source.current().by_kid
    store.rotate()
    publish_signed_jwks(store, root, now=now + 0.5)
    publish_signed_jwks(store, root, now=now - 30)  # signed again on a host whose clock stepped back
    issued.append(iat())
    assert issued == sorted(set(issued))
    assert source.refresh_for_unknown_kid() and store.current().kid in source.current().by_kid
    assert source.last_error is None
