"""Signed JWKS (jwk-set+jwt), made and checked: a root key signs the store's keys; a set it did not sign, or a
stale, forged or mislabelled one, is refused. (How validators trust them over time: tests/validation.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from typer.testing import CliRunner

from pipeline.cli import app as cli_app
from pipeline.errors import JwksError
from pipeline.keys import KeyStore
from pipeline.keys.signed_jwks import SIGNED_JWKS_FILE, RootKey, publish_signed_jwks, sign_jwks, verify_signed_jwks

ISS = "https://issuer.signed.test"


@pytest.fixture
def root(tmp_path: Path) -> RootKey:
    return RootKey.init(tmp_path / "root", ISS)


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore.init(tmp_path / "keys", "ES256", issuer=ISS)


def test_signed_jwks_round_trip(root: RootKey, store: KeyStore) -> None:
    token = sign_jwks(root, store.public_jwks())
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "typ": "jwk-set+jwt", "kid": root.kid}
    jwks, exp = verify_signed_jwks(token, root.public_jwk, issuer=ISS)
    assert jwks == store.public_jwks() and exp > time.time()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == claims["sub"] == ISS and claims["exp"] - claims["iat"] == 7 * 86400


def test_root_key_is_kept_apart_and_owner_only(root: RootKey, store: KeyStore) -> None:
    assert (root.path / "root.pem").stat().st_mode & 0o077 == 0
    assert root.path.stat().st_mode & 0o077 == 0
    assert "d" not in json.loads((root.path / "root.jwk.json").read_bytes())
    assert root.kid not in [k["kid"] for k in store.public_jwks()["keys"]]
    assert RootKey.open(root.path).kid == root.kid


def _forge(root: RootKey, claims: dict, **header: object) -> str:
    return jwt.encode(
        claims, root._private, algorithm="ES256", headers={"typ": "jwk-set+jwt", "kid": root.kid, **header}
    )


def _claims(store: KeyStore, now: float, **change: object) -> dict:
    return {
        "iss": ISS,
        "sub": ISS,
        "iat": int(now),
        "exp": int(now) + 3600,
        "keys": store.public_jwks()["keys"],
        **change,
    }


REFUSALS = {
    # name: (build the token from root, other root, store, now) -> words in the error
    "signed_by_another_root": (lambda r, o, s, t: sign_jwks(o, s.public_jwks(), now=t), "signature"),
    "wrong_issuer": (lambda r, o, s, t: _forge(r, _claims(s, t, iss="https://evil.test")), "issuer"),
    "expired": (lambda r, o, s, t: _forge(r, _claims(s, t - 7200, exp=int(t) - 3600)), "expired"),
    "issued_in_the_future": (lambda r, o, s, t: _forge(r, _claims(s, t + 600)), "future"),
    "too_old_but_not_expired": (lambda r, o, s, t: _forge(r, _claims(s, t - 9 * 86400, exp=int(t) + 3600)), "ago"),
    "wrong_typ": (lambda r, o, s, t: _forge(r, _claims(s, t), typ="JWT"), "typ"),
    "no_typ": (lambda r, o, s, t: jwt.encode(_claims(s, t), r._private, algorithm="ES256"), "typ"),
    "no_exp": (lambda r, o, s, t: _forge(r, {k: v for k, v in _claims(s, t).items() if k != "exp"}), "exp"),
    "tampered_keys": (lambda r, o, s, t: _tamper(sign_jwks(r, s.public_jwks(), now=t), o), "signature"),
    "root_key_as_signing_key": (
        lambda r, o, s, t: _forge(r, _claims(s, t, keys=[r.public_jwk, *s.public_jwks()["keys"]])),
        "root key itself",
    ),
}


def _tamper(token: str, other: RootKey) -> str:
    """Swap an attacker's key into the payload, keep the root's signature."""
    header, _, sig = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["keys"].append({**other.public_jwk, "kid": "attacker"})
    forged = jwt.encode(claims, other._private, algorithm="ES256", headers={"typ": "jwk-set+jwt"}).split(".")[1]
    return f"{header}.{forged}.{sig}"


@pytest.mark.parametrize("name", REFUSALS)
def test_refused_key_sets(root: RootKey, store: KeyStore, tmp_path: Path, name: str) -> None:
    build, words = REFUSALS[name]
    other = RootKey.init(tmp_path / "other-root", ISS)
    now = time.time()
    token = build(root, other, store, now)
    with pytest.raises(JwksError, match=words):
        verify_signed_jwks(token, root.public_jwk, issuer=ISS, max_age_s=7 * 86400, now=now)


def test_rotation_removes_a_stale_signed_set_and_rotate_root_signs_again(root: RootKey, store: KeyStore) -> None:
    publish_signed_jwks(store, root)
    assert (store.path / SIGNED_JWKS_FILE).exists()
    store.rotate()
    assert not (store.path / SIGNED_JWKS_FILE).exists()  # it would no longer list the current key
    runner = CliRunner()
    result = runner.invoke(
        cli_app, ["keys", "rotate", "--dir", str(store.path), "--if-older-than", "30d", "--root", str(root.path)]
    )
    assert result.exit_code == 0, result.output
    jwks, _ = verify_signed_jwks((store.path / SIGNED_JWKS_FILE).read_text(), root.public_jwk, issuer=ISS)
    assert jwks == store.public_jwks()


def test_cli_init_root_and_sign_jwks(tmp_path: Path, store: KeyStore) -> None:
    runner = CliRunner()
    result = runner.invoke(cli_app, ["keys", "init-root", "--dir", str(tmp_path / "r"), "--issuer", ISS])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli_app, ["keys", "sign-jwks", "--dir", str(store.path), "--root", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    pinned = json.loads((tmp_path / "r" / "root.jwk.json").read_bytes())
    assert verify_signed_jwks((store.path / SIGNED_JWKS_FILE).read_text(), pinned, issuer=ISS)[0] == store.public_jwks()


def test_a_far_future_previous_iat_does_not_drag_the_next_set_along(root: RootKey, store: KeyStore) -> None:
    now = float(int(time.time()))
    publish_signed_jwks(store, root, now=now + 10 * 86400)  # a broken clock, or a planted file
    publish_signed_jwks(store, root, now=now)
    iat = jwt.decode((store.path / SIGNED_JWKS_FILE).read_bytes().strip(), options={"verify_signature": False})["iat"]
    assert iat == now
