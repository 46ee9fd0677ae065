"""Key store in a PKCS#11 token: real SoftHSM2 tokens in a temp dir, real keys, real JWTs.

Skipped when Debian's softhsm2 is not installed, unless JWTWATCH_REQUIRE_SOFTHSM=1 (CI), then failed.
SoftHSM reads SOFTHSM2_CONF once, when the module is first loaded in a process, so one token directory
serves the whole module: the stores here share token ``jwtwatch-a`` (kids are unique); ``jwtwatch-pin``
is never logged in to, for the wrong-PIN test. Subprocesses get the same configuration.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.errors import KeyStoreError
from pipeline.keys import KeyStore, verify_audit, verify_store
from pipeline.keys.pkcs11 import P256_PARAMS
from tests.support.paths import REPO
from tests.support.require import skip_or_fail
from tests.support.servers import serve_app

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
LABEL = "jwtwatch-a"
PIN_LABEL = "jwtwatch-pin"
PIN = "246810"
SO_PIN = "13579111"
ISS = "https://issuer.test"
AUD = "https://api.test"
T0 = 1_700_000_000.0
JWTWATCH = [sys.executable, "-m", "pipeline.cli"]


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    needed = [(MODULE, Path(MODULE).exists()), ("softhsm2-util", shutil.which("softhsm2-util") is not None)]
    missing = [what for what, ok in needed if not ok]
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        missing.append("python-pkcs11")
    if missing:
        skip_or_fail("SOFTHSM", f"SoftHSM2 not available ({', '.join(missing)} missing; apt-get install softhsm2)")
    base = tmp_path_factory.mktemp("softhsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    saved = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    for label in (LABEL, PIN_LABEL):
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", SO_PIN],
            check=True,
            capture_output=True,
        )
    yield conf
    if saved is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = saved


@pytest.fixture(autouse=True)
def _pin_env(softhsm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JWTWATCH_PKCS11_PIN", raising=False)
    monkeypatch.delenv("JWTWATCH_PKCS11_PIN_FILE", raising=False)
    monkeypatch.delenv("JWTWATCH_KEYS_PASSPHRASE", raising=False)
    monkeypatch.delenv("JWTWATCH_KEYS_PASSPHRASE_FILE", raising=False)


def hsm_store(path: Path, alg: str = "ES256", **kw: Any) -> KeyStore:
    options: dict[str, Any] = {"module": MODULE, "token_label": LABEL, "pin": PIN, **kw}
    return KeyStore.init(path, alg, issuer=ISS, backend="pkcs11", **options)


def session() -> Any:
    """The process's logged-in session on the test token (PKCS#11 logs in per application)."""
    from pipeline.keys.pkcs11 import _connect

    return _connect(MODULE, LABEL, PIN.encode()).session


def objects(kid: str) -> list[Any]:
    from pkcs11 import Attribute

    return list(session().get_objects({Attribute.ID: kid.encode()}))


def private_object(kid: str) -> Any:
    from pkcs11 import ObjectClass

    return session().get_key(object_class=ObjectClass.PRIVATE_KEY, id=kid.encode())


def verify(jwks_path: Path, token: str) -> dict[str, Any]:
    """Verify like a relying party, with nothing but the published jwks.json."""
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(json.loads(jwks_path.read_text()))[kid]
    return jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=AUD, issuer=ISS)


# --------------------------------------------------------------------------- keys live in the token


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_keys_are_generated_in_the_token_and_nothing_private_is_on_disk(tmp_path: Path, alg: str) -> None:
    from pkcs11 import Attribute, KeyType, ObjectClass

    store = hsm_store(tmp_path / "k", alg)
    kid = store.current().kid
    meta = json.loads((tmp_path / "k" / "store.json").read_text())
    assert meta["backend"] == "pkcs11" and meta["pkcs11"] == {"module": MODULE, "token_label": LABEL}
    assert not (tmp_path / "k" / "private").exists()
    for f in (tmp_path / "k").iterdir():
        assert b"PRIVATE KEY" not in f.read_bytes() and PIN.encode() not in f.read_bytes()

    classes = sorted(o.object_class for o in objects(kid))
    assert classes == sorted([ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY])
    priv = private_object(kid)
    assert priv.key_type == (KeyType.EC if alg == "ES256" else KeyType.RSA)
    assert priv.label == kid and priv[Attribute.ID] == kid.encode()
    assert priv[Attribute.TOKEN] is True and priv[Attribute.PRIVATE] is True
    assert priv[Attribute.SENSITIVE] is True and priv[Attribute.EXTRACTABLE] is False
    assert priv[Attribute.ALWAYS_SENSITIVE] is True and priv[Attribute.NEVER_EXTRACTABLE] is True
    assert priv[Attribute.LOCAL] is True  # generated in the token, not imported
    assert priv[Attribute.MODIFIABLE] is False  # label and ID cannot be moved to another key
    assert priv[Attribute.DERIVE] is False
    if alg == "ES256":
        assert priv[Attribute.EC_PARAMS] == bytes.fromhex("06082a8648ce3d030107")  # P-256
    else:
        assert len(priv[Attribute.MODULUS]) * 8 == 3072
    # the public key read from the token is the published one
    [jwk] = store.public_jwks()["keys"]
    assert jwk["kid"] == kid and jwk["alg"] == alg and not {"d", "p", "q"} & jwk.keys()


def test_the_private_key_cannot_be_read_or_exported(tmp_path: Path) -> None:
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism

    kid = hsm_store(tmp_path / "k").current().kid
    priv = private_object(kid)
    with pytest.raises(pkcs11.AttributeSensitive):
        priv[Attribute.VALUE]
    wrapping = session().generate_key(KeyType.AES, 256, template={Attribute.WRAP: True, Attribute.TOKEN: False})
    try:
        with pytest.raises(pkcs11.KeyUnextractable):
            wrapping.wrap_key(priv, mechanism=Mechanism.AES_KEY_WRAP_PAD)
    finally:
        wrapping.destroy()
    for attribute, value in [(Attribute.EXTRACTABLE, True), (Attribute.SENSITIVE, False)]:
        with pytest.raises(pkcs11.PKCS11Error):
            priv[attribute] = value
    assert priv[Attribute.EXTRACTABLE] is False and priv[Attribute.SENSITIVE] is True


# --------------------------------------------------------------------------- signing through the token


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_token_signed_in_the_hsm_verifies_with_pyjwt_and_the_validator(tmp_path: Path, alg: str) -> None:
    from pipeline.validation import ValidatorConfig
    from pipeline.validation.app import create_validator_app
    from pipeline.validation.service import ValidatorService

    store = hsm_store(tmp_path / "k", alg)
    token = store.issue_token("alice", AUD, ttl=300, client_id="cli")
    assert jwt.get_unverified_header(token) == {"alg": alg, "typ": "at+jwt", "kid": store.current().kid}
    claims = verify(tmp_path / "k" / "jwks.json", token)
    assert claims["sub"] == "alice" and claims["client_id"] == "cli"

    config = ValidatorConfig(issuer=ISS, audience=AUD, jwks_file=tmp_path / "k" / "jwks.json", algorithms=[alg])
    service = ValidatorService(config, data_dir=tmp_path / "data")
    try:
        assert service.validator.validate(token).ok
        with serve_app(create_validator_app(service)) as url, httpx.Client(base_url=url) as client:
            ok = client.get("/v1/validate", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200 and ok.headers["X-Auth-Subject"] == "alice"
            forged = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
            assert client.get("/v1/validate", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    finally:
        service.close()


def test_es256_signature_is_raw_r_s_as_jws_wants(tmp_path: Path) -> None:
    """PKCS#11 CKM_ECDSA returns r || s (32 bytes each): RFC 7518 §3.4's format, not DER."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    store = hsm_store(tmp_path / "k")
    token = store.issue_token("alice", AUD)
    signing_input, _, sig_b64 = token.rpartition(".")
    signature = jwt.utils.base64url_decode(sig_b64)
    assert len(signature) == 64
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    pub = jwt.PyJWK(store.public_jwks()["keys"][0]).key
    pub.verify(encode_dss_signature(r, s), signing_input.encode(), ec.ECDSA(hashes.SHA256()))


def p256_keypair(private_template: dict | None = None):  # type: ignore[no-untyped-def]
    """A P-256 key pair made in the token's session, not stored (a test plants copies of it where it likes)."""
    from pkcs11 import Attribute, KeyType

    params = session().create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: P256_PARAMS}, local=True)
    return params.generate_keypair(store=False, private_template=private_template)


def test_a_swapped_private_key_in_the_token_is_never_used(tmp_path: Path) -> None:
    """A key planted under a published kid (with the original's public object left in place) signs nothing."""
    from pkcs11 import Attribute

    store = hsm_store(tmp_path / "k")
    kid = store.current().kid
    private_object(kid).destroy()
    _, planted = p256_keypair({Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
    planted.copy({Attribute.TOKEN: True, Attribute.ID: kid.encode(), Attribute.LABEL: kid})
    fresh = KeyStore.open(tmp_path / "k", pin=PIN)
    with pytest.raises(KeyStoreError, match="does not verify with the published key"):
        fresh.issue_token("alice", AUD)


def test_a_second_key_under_a_kid_or_an_imported_key_is_refused(tmp_path: Path) -> None:
    from pkcs11 import Attribute, KeyType, ObjectClass

    store = hsm_store(tmp_path / "k")
    kid = store.current().kid
    s = session()
    _, extra = p256_keypair()
    planted = extra.copy({Attribute.TOKEN: True, Attribute.ID: kid.encode()})
    fresh = KeyStore.open(tmp_path / "k", pin=PIN)
    with pytest.raises(KeyStoreError, match="several keys with the ID"):
        fresh.issue_token("alice", AUD)
    assert any("several keys" in p for p in verify_store(tmp_path / "k", pin=PIN).problems)
    planted.destroy()

    # an imported (not generated in the token, once extractable) private key under the kid is refused
    private_object(kid).destroy()
    software = ec.generate_private_key(ec.SECP256R1())
    s.create_object(
        {
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            Attribute.KEY_TYPE: KeyType.EC,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.ID: kid.encode(),
            Attribute.EC_PARAMS: P256_PARAMS,
            Attribute.VALUE: software.private_numbers().private_value.to_bytes(32, "big"),
        }
    )
    fresh = KeyStore.open(tmp_path / "k", pin=PIN)
    with pytest.raises(KeyStoreError, match="always sensitive, never extractable, generated in the token"):
        fresh.issue_token("alice", AUD)


def test_a_public_key_object_that_does_not_match_the_kid_is_refused(tmp_path: Path) -> None:
    from pkcs11 import Attribute, ObjectClass

    store = hsm_store(tmp_path / "k")
    kid = store.current().kid
    session().get_key(object_class=ObjectClass.PUBLIC_KEY, id=kid.encode()).destroy()
    other, _ = p256_keypair()
    other.copy({Attribute.TOKEN: True, Attribute.ID: kid.encode(), Attribute.LABEL: kid})
    with pytest.raises(KeyStoreError, match="holds a different key"):
        KeyStore.open(tmp_path / "k", pin=PIN).issue_token("alice", AUD)


# --------------------------------------------------------------------------- rotation, audit


def test_rotation_keeps_the_old_key_until_its_tokens_expire_then_destroys_it(tmp_path: Path) -> None:
    store = hsm_store(tmp_path / "k", now=T0)
    jwks = tmp_path / "k" / "jwks.json"
    old = store.current().kid
    old_token = store.issue_token("alice", AUD, ttl=3600, now=T0 + 10)

    new = store.rotate(now=T0 + 100).kid
    assert [k["kid"] for k in json.loads(jwks.read_text())["keys"]] == [new, old]
    assert len(objects(old)) == 2 and len(objects(new)) == 2
    new_token = store.issue_token("bob", AUD, now=T0 + 110)
    assert jwt.get_unverified_header(new_token)["kid"] == new
    for token in (old_token, new_token):  # both verify against the published set (signature; times aside)
        kid = jwt.get_unverified_header(token)["kid"]
        key = jwt.PyJWKSet.from_dict(json.loads(jwks.read_text()))[kid]
        jwt.decode(token, key.key, algorithms=["ES256"], audience=AUD, options={"verify_exp": False})

    assert store.prune(now=T0 + 100 + 3599) == []  # a token signed just before retirement may still be live
    assert len(objects(old)) == 2
    [dropped] = store.prune(now=T0 + 100 + 3600)
    assert dropped.kid == old
    assert [k["kid"] for k in json.loads(jwks.read_text())["keys"]] == [new]
    assert objects(old) == []  # destroyed in the token, private and public object
    assert len(objects(new)) == 2
    actions = [(e["action"], e["kid"]) for e in store.audit_entries()]
    assert actions == [("init", old), ("retire", old), ("rotate", new), ("drop", old)]
    assert verify_audit(tmp_path / "k").ok
    assert verify_store(tmp_path / "k", now=T0 + 3800, pin=PIN).ok


def test_rotate_if_older_than_and_a_later_rotation_drop_in_the_token(tmp_path: Path) -> None:
    store = hsm_store(tmp_path / "k", now=T0)
    first = store.current().kid
    assert store.rotate_if_older_than(86400, now=T0 + 3600) is None
    second = store.rotate_if_older_than(86400, now=T0 + 86400).kid
    third = store.rotate_if_older_than(86400, now=T0 + 2 * 86400).kid  # drops the first on the way
    assert [k.kid for k in store.keys()] == [second, third]  # noqa: SIM118
    assert objects(first) == [] and len(objects(second)) == 2


def test_a_drop_without_the_token_changes_nothing(tmp_path: Path) -> None:
    """Pruning reaches the token before it commits: no key leaves the store while it stays in the token."""
    store = hsm_store(tmp_path / "k", now=T0)
    old = store.current().kid
    store.rotate(now=T0 + 10)
    without_pin = KeyStore.open(tmp_path / "k")
    with pytest.raises(KeyStoreError, match="no PIN"):
        without_pin.prune(now=T0 + 10 + 3600)
    assert old in [k.kid for k in without_pin.keys()] and len(objects(old)) == 2  # noqa: SIM118
    assert [k.kid for k in store.prune(now=T0 + 10 + 3600)] == [old] and objects(old) == []


def test_audit_verify_catches_a_tampered_log_and_a_key_missing_from_the_token(tmp_path: Path) -> None:
    store = hsm_store(tmp_path / "k", now=T0)
    store.rotate(now=T0 + 60)
    assert verify_store(tmp_path / "k", now=T0 + 120, pin=PIN).ok

    log = tmp_path / "k" / "audit.log"
    original = log.read_bytes()
    log.write_bytes(original.replace(b'"action":"rotate"', b'"action":"rotatE"'))
    report = verify_audit(tmp_path / "k")
    assert not report.ok and report.first_broken == 3
    assert not verify_store(tmp_path / "k", now=T0 + 120, pin=PIN).ok
    log.write_bytes(original)

    kid = store.current().kid
    private_object(kid).destroy()
    problems = verify_store(tmp_path / "k", now=T0 + 120, pin=PIN).problems
    assert any(kid in p and "missing from the PKCS#11 token" in p for p in problems)


def test_the_audit_log_is_authenticated_by_a_key_in_the_token(tmp_path: Path) -> None:
    from pkcs11 import Attribute, ObjectClass

    from pipeline.keys.audit import chain_line

    store = hsm_store(tmp_path / "k")
    store.rotate(now=T0 + 60)
    record = json.loads((tmp_path / "k" / "store.json").read_text())["audit_key"]
    assert record["kind"] == "pkcs11"
    secret = session().get_key(object_class=ObjectClass.SECRET_KEY, id=bytes.fromhex(record["id"]))
    assert secret[Attribute.SENSITIVE] and not secret[Attribute.EXTRACTABLE] and secret[Attribute.LOCAL]
    key = KeyStore.open(tmp_path / "k", pin=PIN).audit_key()
    assert key is not None and all(e["mac"] == key.mac(e["hash"]) for e in store.audit_entries())
    report = verify_audit(tmp_path / "k", key=key)
    assert report.authenticated and report.authenticated_by == ("the audit key",)
    assert verify_store(tmp_path / "k", now=T0 + 120, pin=PIN).ok

    log = tmp_path / "k" / "audit.log"
    lines = log.read_bytes().splitlines()
    forged = json.loads(chain_line(len(lines) + 1, lines[-1], {"ts": "x", "action": "drop", "kid": "k", "alg": "ES256",
                                                              "details": {}}))  # fmt: skip
    forged["mac"] = "00" * 32
    log.write_bytes(log.read_bytes() + json.dumps(forged, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    problems = verify_store(tmp_path / "k", now=T0 + 120, pin=PIN).problems
    assert any("entry 4: line 4: MAC does not match" in p for p in problems), problems
    with pytest.raises(KeyStoreError, match="does not authenticate entry 4"):
        KeyStore.open(tmp_path / "k", pin=PIN).rotate(now=T0 + 180)


# --------------------------------------------------------------------------- PIN, module and refusals


def test_wrong_pin_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    # a token nobody in this process has logged in to: the token itself refuses the PIN
    with pytest.raises(KeyStoreError, match=f"wrong PIN for the PKCS#11 token '{PIN_LABEL}'"):
        hsm_store(tmp_path / "k", token_label=PIN_LABEL, pin="999999")
    assert not (tmp_path / "k").exists()
    # the test token is logged in to already: a store opened with another PIN must not ride on that login
    hsm_store(tmp_path / "ok")
    store = KeyStore.open(tmp_path / "ok", pin="999999")
    with pytest.raises(KeyStoreError, match="wrong PIN"):
        store.issue_token("alice", AUD)
    with pytest.raises(KeyStoreError, match="wrong PIN"):
        store.rotate()


def test_pin_comes_from_the_environment_or_an_owner_only_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hsm_store(tmp_path / "k")
    store = KeyStore.open(tmp_path / "k")
    with pytest.raises(KeyStoreError, match="no PIN for the PKCS#11 token"):
        store.issue_token("alice", AUD)
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o644)
    monkeypatch.setenv("JWTWATCH_PKCS11_PIN_FILE", str(pin_file))
    with pytest.raises(KeyStoreError, match="accessible by other users"):
        store.issue_token("alice", AUD)
    pin_file.chmod(0o600)
    verify(tmp_path / "k" / "jwks.json", store.issue_token("alice", AUD))
    monkeypatch.delenv("JWTWATCH_PKCS11_PIN_FILE")
    monkeypatch.setenv("JWTWATCH_PKCS11_PIN", PIN)
    verify(tmp_path / "k" / "jwks.json", KeyStore.open(tmp_path / "k").issue_token("alice", AUD))


def test_bad_module_token_or_algorithm_refused_before_anything_is_written(tmp_path: Path) -> None:
    writable = tmp_path / "libsofthsm2.so"
    shutil.copy(MODULE, writable)
    writable.chmod(0o666)
    cases = [
        ({"module": str(writable)}, "writable by other users"),
        ({"module": str(tmp_path / "missing.so")}, "cannot use the PKCS#11 module"),
        ({"token_label": "no-such-token"}, "no PKCS#11 token labelled 'no-such-token'"),
    ]
    for n, (kw, message) in enumerate(cases):
        with pytest.raises(KeyStoreError, match=message):
            hsm_store(tmp_path / f"k{n}", **kw)
        assert not (tmp_path / f"k{n}").exists()
    with pytest.raises(KeyStoreError, match="unsupported algorithm 'EdDSA'"):
        hsm_store(tmp_path / "ed", "EdDSA")
    assert not (tmp_path / "ed").exists()
    store = hsm_store(tmp_path / "k")
    with pytest.raises(KeyStoreError, match="unsupported algorithm 'EdDSA'"):
        store.rotate("EdDSA")
    with pytest.raises(KeyStoreError, match="nothing to encrypt"):
        store.encrypt()


def test_module_path_in_store_json_is_checked_on_open(tmp_path: Path) -> None:
    hsm_store(tmp_path / "k")
    meta_path = tmp_path / "k" / "store.json"
    meta = json.loads(meta_path.read_text())
    writable = tmp_path / "evil.so"
    shutil.copy(MODULE, writable)
    writable.chmod(0o666)
    for module, message in [(str(writable), "writable by other users"), ("libsofthsm2.so", "must be absolute")]:
        meta["pkcs11"]["module"] = module
        meta_path.write_text(json.dumps(meta, sort_keys=True, separators=(",", ":")))
        with pytest.raises(KeyStoreError, match=message):
            KeyStore.open(tmp_path / "k", pin=PIN).issue_token("alice", AUD)


def _module_copy(directory: Path, mode: int = 0o755) -> Path:
    """A copy of the SoftHSM2 module (the file itself, not its symlink) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    copy = directory / "libsofthsm2.so"
    shutil.copy(os.path.realpath(MODULE), copy)
    copy.chmod(mode)
    return copy


def test_module_check_follows_symlinks_and_checks_every_directory(tmp_path: Path) -> None:
    from pipeline.keys.pkcs11 import _check_module

    # the real module is itself a symlink (../x86_64-linux-gnu/...): followed, and the target is what is returned
    assert _check_module(MODULE) == os.path.realpath(MODULE)
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o755)
    (safe / "link.so").symlink_to(MODULE)
    assert _check_module(str(safe / "link.so")) == os.path.realpath(MODULE)

    shared = tmp_path / "shared"  # anyone may create, rename or delete entries here
    module_in_shared = _module_copy(shared)
    shared.chmod(0o777)
    group = tmp_path / "group"
    module_in_group = _module_copy(group)
    group.chmod(0o775)
    sticky = tmp_path / "sticky"  # like /tmp: only an entry's owner can replace it
    module_in_sticky = _module_copy(sticky)
    sticky.chmod(0o1777)
    assert _check_module(str(module_in_sticky)) == str(module_in_sticky)

    (safe / "to-shared.so").symlink_to(module_in_shared)
    (shared / "hop.so").symlink_to(MODULE)  # a link others could re-point, even though its target is fine
    (safe / "via-shared.so").symlink_to(shared / "hop.so")
    (safe / "loop.so").symlink_to(safe / "loop.so")
    refused = {
        module_in_shared: f"directory {shared} is writable by other users (mode 777)",
        module_in_group: f"directory {group} is writable by other users (mode 775)",
        safe / "to-shared.so": f"directory {shared} is writable by other users",
        safe / "via-shared.so": f"directory {shared} is writable by other users",
        safe / "loop.so": "more than 40 symbolic links",
        safe: "is not a regular file",
        tmp_path / "missing" / "x.so": "No such file or directory",
    }
    for module, message in refused.items():
        with pytest.raises(KeyStoreError, match=re.escape(message)):
            _check_module(str(module))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_module_or_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    from pipeline.keys.pkcs11 import _check_module

    nobody = 65534
    theirs = _module_copy(tmp_path / "a")
    os.chown(theirs, nobody, nobody)
    with pytest.raises(KeyStoreError, match=f"file {re.escape(str(theirs))} is owned by uid {nobody}"):
        _check_module(str(theirs))
    their_dir = tmp_path / "b"
    module = _module_copy(their_dir)
    os.chown(their_dir, nobody, nobody)  # mode 755, but its owner can swap the module for their own
    with pytest.raises(KeyStoreError, match=f"directory {re.escape(str(their_dir))} is owned by uid {nobody}"):
        _check_module(str(module))


def test_a_symlinked_module_in_an_unsafe_directory_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    module = _module_copy(shared)
    shared.chmod(0o777)
    link = tmp_path / "libsofthsm2.so"
    link.symlink_to(module)
    with pytest.raises(KeyStoreError, match=r"shared is writable by other users \(mode 777\); refusing to load it"):
        hsm_store(tmp_path / "k", module=str(link))
    assert not (tmp_path / "k").exists()


# --------------------------------------------------------------------------- the CLI, end to end


def run(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*JWTWATCH, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=120,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_end_to_end(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    init = run(
        "keys", "init", "--dir", str(keys), "--issuer", ISS, "--backend", "pkcs11",
        "--pkcs11-module", MODULE, "--token-label", LABEL, "--pin-file", str(pin_file),
    )  # fmt: skip
    assert "not encrypted" not in init.stderr
    first = json.loads((keys / "store.json").read_text())["keys"][0]["kid"]
    assert len(objects(first)) == 2

    # token issue with the PIN from the environment; keys rotate with --pin-file
    token = run("token", "issue", "--dir", str(keys), "--sub", "alice", "--aud", AUD, env={"JWTWATCH_PKCS11_PIN": PIN})
    assert verify(keys / "jwks.json", token.stdout.strip())["sub"] == "alice"
    run("keys", "rotate", "--dir", str(keys), "--pin-file", str(pin_file))
    listed = [json.loads(line) for line in run("keys", "list", "--dir", str(keys), "--json").stdout.splitlines()]
    assert [k["status"] for k in listed] == ["retired", "current"] and listed[0]["kid"] == first
    second = run("token", "issue", "--dir", str(keys), "--sub", "bob", "--aud", AUD, "--pin-file", str(pin_file))
    assert jwt.get_unverified_header(second.stdout.strip())["kid"] == listed[1]["kid"]
    verify(keys / "jwks.json", token.stdout.strip())  # the old key is still published
    audited = run("keys", "audit", "--dir", str(keys), "--verify", "--pin-file", str(pin_file))
    assert "key store verified" in audited.stdout

    # no PIN: audit --verify cannot check the token's keys and says why
    no_pin = run("keys", "audit", "--dir", str(keys), "--verify", check=False)
    assert no_pin.returncode == 1 and "no PIN for the PKCS#11 token" in no_pin.stderr

    # a wrong PIN (fresh process: the token refuses it) is one clear line, no traceback
    wrong = run(
        "token", "issue", "--dir", str(keys), "--sub", "a", "--aud", AUD, env={"JWTWATCH_PKCS11_PIN": "111111"},
        check=False,
    )  # fmt: skip
    assert wrong.returncode == 2 and f"wrong PIN for the PKCS#11 token '{LABEL}'" in wrong.stderr
    assert "Traceback" not in wrong.stderr

    # a tampered audit log fails the gate
    log = keys / "audit.log"
    log.write_bytes(log.read_bytes().replace(b'"action":"retire"', b'"action":"retirE"'))
    tampered = run("keys", "audit", "--dir", str(keys), "--verify", "--pin-file", str(pin_file), check=False)
    assert tampered.returncode == 1 and "audit log broken at entry 2" in tampered.stderr


def test_cli_init_refuses_incomplete_pkcs11_options_and_a_readable_pin_file(tmp_path: Path) -> None:
    missing = run("keys", "init", "--dir", str(tmp_path / "a"), "--backend", "pkcs11", check=False)
    assert missing.returncode == 2 and "needs --pkcs11-module and --token-label" in missing.stderr
    stray = run("keys", "init", "--dir", str(tmp_path / "b"), "--token-label", LABEL, check=False)
    assert stray.returncode == 2 and "go with --backend pkcs11" in stray.stderr
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN)
    pin_file.chmod(0o640)
    readable = run(
        "keys", "init", "--dir", str(tmp_path / "c"), "--backend", "pkcs11", "--pkcs11-module", MODULE,
        "--token-label", LABEL, "--pin-file", str(pin_file), check=False,
    )  # fmt: skip
    assert readable.returncode == 2 and "accessible by other users" in readable.stderr
    for d in "abc":
        assert not (tmp_path / d).exists()
    assert stat.S_IMODE(pin_file.stat().st_mode) == 0o640
