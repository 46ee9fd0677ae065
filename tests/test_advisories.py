"""One regression test per finding of the outside security review of commit 1c06c30 (issue 14).

In the manner of PyJWT's ``test_advisory.py``: each test is named after its finding, reproduces the attack as
the reviewer ran it (real signed JWTs, real servers on loopback, real files) and fails on 1c06c30. The deeper
tests of each mechanism live beside the code's other tests; ``docs/security.md`` lists both.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pipeline.validation import TokenValidator, ValidatorConfig
from pipeline.validation.revocations import RevocationStore
from tests.jwtkit import AUDIENCE, ISSUER, Issuer

# ---------------------------------------------------------------------------------------------------------------
# HIGH 1: a forged token with invalid Unicode in a claim erased other requests' usage events
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 2: POST /v1/revocations parsed any body before checking the admin token
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 3: a slow JWKS URL stalled every validation
# ---------------------------------------------------------------------------------------------------------------


def test_medium_3_slow_jwks_url_never_stalls_validations(tmp_path: Path) -> None:
    """A JWKS server that starts trickling a byte every 0.2 s (inside every per-read timeout), then 61 forged
    unknown-kid tokens: every answer still comes within seconds, a cached valid token gets its 200 at once, and
    /readyz (not /healthz) reports the stuck key source until the server answers again."""
    import asyncio
    import json
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    from pipeline.validation import ValidatorConfig
    from pipeline.validation.app import create_validator_app
    from pipeline.validation.service import ValidatorService
    from tests.jwtkit import AUDIENCE, ISSUER, Issuer
    from tests.servers import serve_app
    from tests.tls import make_tls

    issuer = Issuer.create()
    body = json.dumps(issuer.jwks()).encode()
    slow = threading.Event()

    async def jwks(request: Request) -> Response:
        if not slow.is_set():
            return Response(body, media_type="application/json")

        async def one_byte_at_a_time() -> AsyncIterator[bytes]:
            for byte in body:  # ~1.5 KB at 5 bytes a second: minutes per fetch
                await asyncio.sleep(0.2)
                yield bytes([byte])

        return StreamingResponse(one_byte_at_a_time(), media_type="application/json")

    tls = make_tls(tmp_path)
    jwks_app = Starlette(routes=[Route("/jwks.json", jwks)])
    with serve_app(jwks_app, ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key)) as jwks_url:
        config = ValidatorConfig(
            issuer=ISSUER,
            audience=AUDIENCE,
            jwks_url=f"{jwks_url}/jwks.json",
            jwks_ca_file=tls.ca,
            jwks_timeout_s=2,
            jwks_refresh_s=2,
            jwks_refetch_cooldown_s=0,  # the worst case: every unknown kid may ask for a refetch
        )
        service = ValidatorService(config, data_dir=tmp_path / "data")
        with serve_app(create_validator_app(service)) as url, httpx.Client(base_url=url, timeout=15) as client:
            valid = issuer.token("ES256")
            assert client.get("/v1/validate", headers={"Authorization": f"Bearer {valid}"}).status_code == 200
            assert client.get("/readyz").status_code == 200
            slow.set()
            stranger = Issuer.create()
            forged = [stranger.token("RS256", headers={"kid": f"forged-{i}"}) for i in range(61)]

            # one client for all (it is thread-safe): the time measured is the validator's, not TLS-context set-up
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            attacker = httpx.Client(base_url=url, timeout=15, limits=limits)

            def timed(token: str) -> tuple[int, float]:
                started = time.monotonic()
                try:
                    status = attacker.get("/v1/validate", headers={"Authorization": f"Bearer {token}"})
                    return status.status_code, time.monotonic() - started
                except httpx.TimeoutException:
                    return 0, time.monotonic() - started

            with attacker, ThreadPoolExecutor(max_workers=64) as pool:
                attacks = [pool.submit(timed, token) for token in forged]
                time.sleep(0.5)  # the forged tokens are in flight
                status, waited = timed(valid)
                answers = [attack.result() for attack in attacks]
            assert status == 200 and waited < 5, f"the cached valid token waited {waited:.1f} s"
            assert all(code == 401 for code, _ in answers), sorted({code for code, _ in answers})
            # at most one of them waits for a refetch, and that no longer than its 2 s deadline; before, they all
            # queued behind a fetch that lasted as long as the server kept trickling (minutes)
            assert max(seconds for _, seconds in answers) < 10

            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "JWKS" in ready.json()["detail"]
            assert client.get("/healthz").status_code == 200  # liveness: the process itself is fine
            slow.clear()
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.get("/readyz").status_code == 200
        service.close()


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 4: a signed JWKS could be rolled back to an older, still-unexpired set
# ---------------------------------------------------------------------------------------------------------------


def test_medium_4_signed_jwks_cannot_be_rolled_back(tmp_path: Path) -> None:
    """The URL serves set B (key K2), then the older, still-unexpired set A (key K1) again: A is refused, logged
    and counted — within a running validator, and by `validator serve` restarted on the same data dir."""
    import socket
    import subprocess
    import sys
    import time

    import httpx
    from prometheus_client import generate_latest
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from pipeline.validation import ValidatorConfig
    from pipeline.validation.key_sources import SignedJwksUrlSource
    from pipeline.validation.keystore import KeyStore
    from pipeline.validation.service import ValidatorService
    from pipeline.validation.signed_jwks import RootKey, sign_jwks
    from tests.servers import serve_app, stop_process, wait_ready
    from tests.tls import make_tls

    iss, aud = "https://issuer.rollback.test", "https://api.rollback.test"
    root = RootKey.init(tmp_path / "root", iss)
    k1, k2 = (KeyStore.init(tmp_path / name, "ES256", issuer=iss) for name in ("k1", "k2"))
    now = time.time()
    set_a = sign_jwks(root, k1.public_jwks(), now=now - 3600).encode()  # older, valid for days still
    set_b = sign_jwks(root, k2.public_jwks(), now=now - 60).encode()
    served = {"body": set_a}

    async def signed(request: Request) -> Response:
        return Response(served["body"], media_type="application/jwk-set+jwt")

    tls = make_tls(tmp_path)
    app = Starlette(routes=[Route("/jwks.jwt", signed)])
    with serve_app(app, ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key)) as base:
        url = f"{base}/jwks.jwt"
        # 1. within one validator
        source = SignedJwksUrlSource(url, ("ES256",), root_jwk=root.public_jwk, issuer=iss, ca_file=tls.ca)
        service = ValidatorService(ValidatorConfig(issuer=iss, audience=aud, jwks=k1.public_jwks()), data_dir=tmp_path)
        service.validator.keys = source
        assert service.validator.validate(k1.issue_token("alice", aud)).ok
        served["body"] = set_b
        source.refresh()
        served["body"] = set_a  # rolled back
        source.refresh()
        assert service.validator.validate(k1.issue_token("alice", aud)).reason == "unknown_kid"
        assert service.validator.validate(k2.issue_token("alice", aud)).ok
        assert 'jwtwatch_jwks_refusals_total{reason="rollback"' in generate_latest(service.registry).decode()
        service.close()

        # 2. across a restart of `validator serve` on the same data dir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [sys.executable, "-m", "pipeline.cli", "validator", "serve", "--issuer", iss, "--audience", aud,
                   "--signed-jwks-url", url, "--jwks-root-key", str(root.path / "root.jwk.json"),
                   "--signed-jwks-issuer", iss, "--jwks-ca-file", str(tls.ca), "--host", "127.0.0.1",
                   "--port", str(port), "--data-dir", str(tmp_path / "data")]  # fmt: skip
        validator = f"http://127.0.0.1:{port}"
        served["body"] = set_b
        log = tmp_path / "first.log"
        with log.open("wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_ready(validator, process, log)
            token = k2.issue_token("alice", aud)
            assert (
                httpx.get(f"{validator}/v1/validate", headers={"Authorization": f"Bearer {token}"}).status_code == 200
            )
        finally:
            stop_process(process)

        served["body"] = set_a
        log = tmp_path / "restarted.log"
        with log.open("wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    token = k1.issue_token("alice", aud)
                    answer = httpx.get(f"{validator}/v1/validate", headers={"Authorization": f"Bearer {token}"})
                    assert answer.status_code != 200, "the restarted validator accepted a token of the older set"
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            assert process.poll() not in (None, 0)
            assert "older than the accepted one" in log.read_text()
        finally:
            stop_process(process)


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 5: the key-store audit gate passed with an attacker's key inserted
# ---------------------------------------------------------------------------------------------------------------


def test_medium_5_attacker_key_slipped_into_the_key_directory_fails_the_gate_and_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's attack, with write access to the key directory but not the passphrase: append valid-looking
    retire/rotate entries (the hash chain had no key), rewrite store.json and jwks.json, drop an unencrypted 0600
    PEM. `keys audit --verify` said "intact" and a validator following the directory accepted an attacker-minted
    `sub: admin` token. Now the entries lack a MAC under the passphrase-derived audit key, so the gate fails (with
    and without the passphrase), and a validator pinning the root key trusts only the root-signed jwks.jwt."""
    import json
    import socket
    import subprocess
    import sys
    import time

    import httpx
    import jwt
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.validation.keystore import KeyStore, chain_line
    from pipeline.validation.signed_jwks import RootKey, publish_signed_jwks
    from tests.servers import stop_process, wait_ready

    iss, aud, passphrase = "https://issuer.advisory.test", "https://api.advisory.test", "operator passphrase"
    for name in ("JWTWATCH_KEYS_PASSPHRASE", "JWTWATCH_KEYS_PASSPHRASE_FILE"):
        monkeypatch.delenv(name, raising=False)
    keys = tmp_path / "keys"
    store = KeyStore.init(keys, "ES256", issuer=iss, passphrase=passphrase)
    root = RootKey.init(tmp_path / "root", iss, passphrase=passphrase)  # kept apart from the key directory
    publish_signed_jwks(store, root)
    genuine = store.issue_token("alice", aud)
    runner = CliRunner()
    with_passphrase = {"JWTWATCH_KEYS_PASSPHRASE": passphrase}
    assert runner.invoke(app, ["keys", "audit", "--dir", str(keys), "--verify"], env=with_passphrase).exit_code == 0

    # --- the attacker: their own key, minted elsewhere, then the directory rewritten around it
    theirs = KeyStore.init(tmp_path / "attacker", "ES256", issuer=iss)
    their_entry = json.loads((theirs.path / "store.json").read_bytes())["keys"][0]
    kid = their_entry["kid"]
    meta = json.loads((keys / "store.json").read_bytes())
    old = meta["keys"][0]
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now))
    lines = (keys / "audit.log").read_bytes().splitlines()
    for action, entry_kid, details in (
        ("retire", old["kid"], {"replaced_by": kid}),
        ("rotate", kid, {"previous": old["kid"]}),
    ):
        fields = {"ts": stamp, "action": action, "kid": entry_kid, "alg": "ES256", "details": details}
        lines.append(chain_line(len(lines) + 1, lines[-1], fields))
    (keys / "audit.log").write_bytes(b"\n".join(lines) + b"\n")
    last = json.loads(lines[-1])
    old["retired_at"] = now
    their_entry.update(created_at=now, retired_at=None)
    meta["keys"] = [old, their_entry]
    meta["audit_head"] = {"seq": last["seq"], "hash": last["hash"]}
    (keys / "store.json").write_bytes(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    (keys / "jwks.json").write_text(json.dumps(KeyStore.open(keys, passphrase=passphrase).public_jwks(), indent=2))
    pem = keys / "private" / f"{kid}.pem"
    pem.write_bytes((theirs.path / "private" / f"{kid}.pem").read_bytes())  # unencrypted
    pem.chmod(0o600)
    forged = theirs.issue_token("admin", aud)
    assert jwt.get_unverified_header(forged)["kid"] == kid

    # --- the gate: the forged entries carry no MAC; without the passphrase the log is unauthenticated
    checked = runner.invoke(app, ["keys", "audit", "--dir", str(keys), "--verify"], env=with_passphrase)
    assert checked.exit_code == 1, checked.output
    assert "no MAC" in checked.output and "is not encrypted, but this store's keys are" in checked.output
    for command in (["keys", "audit", "--dir", str(keys), "--verify"], ["keys", "audit", "--dir", str(keys)]):
        blind = runner.invoke(app, command, env={"JWTWATCH_KEYS_PASSPHRASE": ""})  # no passphrase: still refused
        assert blind.exit_code == 1 and "no MAC" in blind.output, blind.output

    # --- a validator following the directory with the root pinned trusts what the root signed, not jwks.json
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "pipeline.cli", "validator", "serve", "--issuer", iss, "--audience", aud,
               "--keys-dir", str(keys), "--jwks-root-key", str(root.path / "root.jwk.json"),
               "--signed-jwks-issuer", iss, "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(tmp_path / "data")]  # fmt: skip
    log = tmp_path / "validator.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, process, log)
        answer = {
            token: httpx.get(f"{base}/v1/validate", headers={"Authorization": f"Bearer {token}"}).status_code
            for token in (genuine, forged)
        }
    finally:
        stop_process(process)
    assert answer == {genuine: 200, forged: 401}, log.read_text()[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 6: one slow webhook receiver delayed alerts to everyone
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 7: X-Auth-* values were silently altered, so identities collided
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 8: a poison record wedged the alerts consumer for good
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 9: unauthenticated /metrics told an attacker why their token failed
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 10: --fail-closed was not enforced by the middleware and /v1/introspect
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 11: a subject revocation ignored the clock leeway
# ---------------------------------------------------------------------------------------------------------------


def test_low_11_subject_revocation_honours_the_clock_leeway(tmp_path: Path) -> None:
    """A token whose issuer's clock runs 25 s fast (iat = now + 25, inside the default 30 s leeway) was issued
    before its subject's revocation, so the revocation covers it."""
    issuer = Issuer.create()
    store = RevocationStore(tmp_path / "revocations.sqlite")
    try:
        validator = TokenValidator(
            ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()), revocations=store
        )
        now = int(time.time())
        token = issuer.token("ES256", sub="alice", iat=now + 25)
        assert validator.validate(token).ok
        store.revoke(kind="sub", iss=ISSUER, value="alice", reason="account takeover", now=now)
        assert validator.validate(token).reason == "revoked"
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------------------------
# LOW 12: rotating the feed key lost live revocations for validators that started later
# ---------------------------------------------------------------------------------------------------------------


def test_low_12_a_live_revocation_signed_with_a_since_rotated_feed_key_reaches_a_validator_that_starts_later(
    tmp_path: Path,
) -> None:
    """A 24 h subject revocation signed with the feed key, then two rotations of that key an hour apart: the first
    key was dropped after the store's 1 h token lifetime, and a validator reading the compacted feed from the start
    dead-lettered the revocation. The signer now keeps the key published until its revocations have expired."""
    import time

    from pipeline.bus import REVOCATIONS
    from pipeline.bus.memory import MemoryBus
    from pipeline.validation.follower import RevocationFollower
    from pipeline.validation.keystore import KeyStore
    from pipeline.validation.revocation_feed import FeedSigner, FeedVerifier
    from pipeline.validation.revocations import RevocationStore, new_revocation

    iss = "https://issuer.advisory.test"
    keys = KeyStore.init(tmp_path / "feed-keys", alg="ES256", passphrase=None)  # max token lifetime: 1 h
    bus = MemoryBus()
    t = time.time()
    record = new_revocation(kind="sub", iss=iss, value="alice", reason="stolen laptop", now=t)
    bus.publish(REVOCATIONS, record.bus_key, FeedSigner(keys).sign(record))
    keys.rotate(now=t + 60)
    keys.rotate(now=t + 2 * 3600)  # routine rotations; the revocation still has ~22 h to live

    late = RevocationStore(tmp_path / "late-validator.sqlite")
    follower = RevocationFollower(bus, late, verifier=FeedVerifier.from_store(KeyStore.open(keys.path)))
    follower.step()
    assert (follower.applied, follower.rejected) == (1, 0)
    assert late.is_revoked(iss, None, "alice", t - 60)


# ---------------------------------------------------------------------------------------------------------------
# LOW 13: hardening (file modes, admin-token file mode, WAL secrets, PKCS#11 module path, header timeout,
# duplicate Authorization headers)
# ---------------------------------------------------------------------------------------------------------------


def test_low_13_pkcs11_module_reached_through_a_symlink_into_a_writable_directory_is_refused(tmp_path: Path) -> None:
    """The module check looked only at the final file's mode (through the symlink): a link to a module in a directory
    anyone can write passed, and loading a module runs its code. Every directory on the resolved path now counts."""
    import os
    import shutil

    from pipeline.validation.keystore import KeyStore, KeyStoreError
    from tests.require import skip_or_fail

    softhsm = "/usr/lib/softhsm/libsofthsm2.so"
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        skip_or_fail("SOFTHSM", "python-pkcs11 is not installed")
    if not os.path.exists(softhsm):
        skip_or_fail("SOFTHSM", f"{softhsm} missing (apt-get install softhsm2)")
    shared = tmp_path / "shared"  # any local user can swap the file in here
    shared.mkdir()
    module = shared / "libsofthsm2.so"
    shutil.copy(os.path.realpath(softhsm), module)
    module.chmod(0o755)  # the file itself looks fine
    shared.chmod(0o777)
    link = tmp_path / "libsofthsm2.so"
    link.symlink_to(module)
    with pytest.raises(KeyStoreError, match=r"directory .*shared is writable by other users \(mode 777\)"):
        KeyStore.init(tmp_path / "k", backend="pkcs11", module=str(link), token_label="jwtwatch", pin="246810")
    assert not (tmp_path / "k").exists()


# ---------------------------------------------------------------------------------------------------------------
# Also: SSRF classifier (IPv4-compatible IPv6, 64:ff9b:1::/48)
# ---------------------------------------------------------------------------------------------------------------
