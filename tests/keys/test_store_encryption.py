"""Private keys encrypted at rest: passphrase from the environment or a file, never the command line."""

from __future__ import annotations

import logging
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import KeyStoreError
from pipeline.keys import ALGORITHMS, KeyStore, verify_audit, verify_store

ISS = "https://issuer.enc.test"
PASS = b"correct horse battery staple"
runner = CliRunner()


def pem_files(store: KeyStore) -> list[bytes]:
    return [p.read_bytes() for p in sorted((store.path / "private").iterdir())]


def verifies(store: KeyStore, token: str) -> bool:
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(store.public_jwks())[kid]
    jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience="api", issuer=ISS)
    return True


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_keys_are_encrypted_and_still_sign(tmp_path: Path, alg: str) -> None:
    store = KeyStore.init(tmp_path / "k", alg, issuer=ISS, passphrase=PASS)
    store.rotate()
    for pem in pem_files(store):
        assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        with pytest.raises(TypeError):  # useless without the passphrase
            serialization.load_pem_private_key(pem, password=None)
        serialization.load_pem_private_key(pem, password=PASS)
    assert verifies(KeyStore.open(store.path, passphrase=PASS), store.issue_token("a", "api"))


def test_passphrase_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWTWATCH_KEYS_PASSPHRASE", PASS.decode())
    store = KeyStore.init(tmp_path / "k", issuer=ISS)
    assert pem_files(store)[0].startswith(b"-----BEGIN ENCRYPTED")
    assert verifies(store, KeyStore.open(store.path).issue_token("a", "api"))


def test_passphrase_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "passphrase"
    secret.write_bytes(PASS + b"\n")
    secret.chmod(0o600)
    monkeypatch.setenv("JWTWATCH_KEYS_PASSPHRASE_FILE", str(secret))
    store = KeyStore.init(tmp_path / "k", issuer=ISS)
    assert serialization.load_pem_private_key(pem_files(store)[0], password=PASS)  # newline stripped


def test_group_readable_passphrase_file_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "passphrase"
    secret.write_bytes(PASS)
    secret.chmod(0o644)
    monkeypatch.setenv("JWTWATCH_KEYS_PASSPHRASE_FILE", str(secret))
    with pytest.raises(KeyStoreError, match="chmod 600"):
        KeyStore.init(tmp_path / "k")


def test_missing_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "k", issuer=ISS, passphrase=PASS)
    with pytest.raises(KeyStoreError, match="encrypted: set JWTWATCH_KEYS_PASSPHRASE"):
        KeyStore.open(store.path).issue_token("a", "api")
    before = store.keys()
    with pytest.raises(KeyStoreError, match="encrypted"):
        KeyStore.open(store.path).rotate()  # no unencrypted key may join an encrypted store
    assert KeyStore.open(store.path, passphrase=PASS).keys() == before


def test_wrong_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "k", issuer=ISS, passphrase=PASS)
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        KeyStore.open(store.path, passphrase=b"guess").issue_token("a", "api")


def test_unencrypted_key_swapped_into_an_encrypted_store_is_refused(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "k", "ES256", issuer=ISS, passphrase=PASS)
    kid = store.current().kid
    path = store.path / "private" / f"{kid}.pem"
    key = serialization.load_pem_private_key(path.read_bytes(), password=PASS)
    plain = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(plain)
    with pytest.raises(KeyStoreError, match="not encrypted"):
        KeyStore.open(store.path, passphrase=PASS).issue_token("a", "api")


def test_unencrypted_store_keeps_working_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = KeyStore.init(tmp_path / "k", issuer=ISS)
    with caplog.at_level(logging.WARNING, logger="pipeline.keys"):
        reopened = KeyStore.open(store.path, passphrase=PASS)  # a passphrase does not break an old store
    assert "unencrypted" in caplog.text
    assert verifies(reopened, reopened.issue_token("a", "api"))


def test_encrypt_migrates_an_old_store(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "k", issuer=ISS)
    store.rotate()
    token = store.issue_token("a", "api")
    migrated = KeyStore.open(store.path, passphrase=PASS)
    assert migrated.encrypt() == 2
    assert all(p.startswith(b"-----BEGIN ENCRYPTED") for p in pem_files(store))
    assert verifies(migrated, token) and verifies(migrated, migrated.issue_token("a", "api"))
    assert migrated.encrypt() == 0
    assert verify_audit(store.path).ok and verify_store(store.path, passphrase=PASS).ok
    assert [e["action"] for e in migrated.audit_entries()][-2:] == ["encrypt", "encrypt"]


def test_cli_never_takes_a_passphrase_argument() -> None:
    for command in ("init", "rotate", "encrypt"):
        result = runner.invoke(app, ["keys", command, "--help"])
        assert "--passphrase-file" in result.output
        assert "--passphrase " not in result.output and "--passphrase\n" not in result.output


def test_cli_with_passphrase_file_and_env(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_bytes(PASS)
    secret.chmod(0o600)
    keys = tmp_path / "keys"
    result = runner.invoke(app, ["keys", "init", "--dir", str(keys), "--issuer", ISS, "--passphrase-file", str(secret)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["token", "issue", "--dir", str(keys), "--sub", "a", "--aud", "api"])
    assert result.exit_code == 2 and "JWTWATCH_KEYS_PASSPHRASE" in result.output
    result = runner.invoke(
        app, ["token", "issue", "--dir", str(keys), "--sub", "a", "--aud", "api"], env={"JWTWATCH_KEYS_PASSPHRASE": "x"}
    )
    assert result.exit_code == 2 and "wrong passphrase" in result.output
    result = runner.invoke(
        app,
        ["token", "issue", "--dir", str(keys), "--sub", "a", "--aud", "api"],
        env={"JWTWATCH_KEYS_PASSPHRASE": PASS.decode()},
    )
    assert result.exit_code == 0 and verifies(KeyStore.open(keys, passphrase=PASS), result.output.strip())
