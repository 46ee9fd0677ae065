"""One regression test per finding of the outside security review of commit 1c06c30 (issue 14).

In the manner of PyJWT's ``test_advisory.py``: each test is named after its finding, reproduces the attack as
the reviewer ran it (real signed JWTs, real servers on loopback, real files) and fails on 1c06c30. The deeper
tests of each mechanism live beside the code's other tests; ``docs/security.md`` lists both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------------------------
# HIGH 1: a forged token with invalid Unicode in a claim erased other requests' usage events
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 2: POST /v1/revocations parsed any body before checking the admin token
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 3: a slow JWKS URL stalled every validation
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 4: a signed JWKS could be rolled back to an older, still-unexpired set
# ---------------------------------------------------------------------------------------------------------------


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
