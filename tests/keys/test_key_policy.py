"""Rotation on schedule and the CI/CD gate: `keys rotate --if-older-than` and `keys audit --verify`.

Each tampering of the audit log or the key directory, and each policy breach, must make the gate fail.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import KeyStoreError
from pipeline.keys import KeyStore, parse_duration, verify_store

ISS = "https://issuer.policy.test"
T0 = float(int(time.time()))  # real time: some tests run the CLI, which reads the clock
DAY = 86400

runner = CliRunner()


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


def kids(store: KeyStore) -> list[str]:
    return [k["kid"] for k in store.public_jwks()["keys"]]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KeyStore:
    # encrypted: its passphrase is the secret, kept apart from the directory, that authenticates the audit log
    # (the gate refuses a log that nothing outside the directory vouches for); the CLI reads it from here too
    monkeypatch.setenv("JWTWATCH_KEYS_PASSPHRASE", "policy test passphrase")
    return KeyStore.init(tmp_path / "keys", "ES256", issuer=ISS, max_token_lifetime=3600, now=T0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90d", 90 * DAY), ("12h", 43200), ("1d12h", 36 * 3600), ("30m", 1800), ("45s", 45), ("2w", 14 * DAY), ("60", 60)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0d", "-1d", "1y", "d", "1.5d", "12 h"])
def test_bad_durations_refused(text: str) -> None:
    with pytest.raises(KeyStoreError, match="duration"):
        parse_duration(text)


# --------------------------------------------------------------------------- rotate --if-older-than


def test_rotate_if_older_than_rotates_once_per_period(store: KeyStore) -> None:
    first = store.current()
    assert store.rotate_if_older_than(30 * DAY, now=T0 + 29 * DAY) is None
    assert store.current() == first
    second = store.rotate_if_older_than(30 * DAY, now=T0 + 30 * DAY)
    assert second is not None and store.current() == second
    # cron runs it again the same day, and the day after: nothing more happens
    assert store.rotate_if_older_than(30 * DAY, now=T0 + 30 * DAY) is None
    assert store.rotate_if_older_than(30 * DAY, now=T0 + 31 * DAY) is None
    assert [e["action"] for e in store.audit_entries()] == ["init", "retire", "rotate", "drop"]


def test_rotate_if_older_than_drops_expired_retired_keys_even_without_rotating(store: KeyStore) -> None:
    first = store.current()
    store.rotate(now=T0 + DAY)
    assert first.kid in kids(store)
    assert store.rotate_if_older_than(30 * DAY, now=T0 + DAY + 3600) is None
    assert first.kid not in kids(store)
    assert verify_store(store.path, max_key_age=30 * DAY, now=T0 + DAY + 3600).ok


def test_cli_rotate_if_older_than_is_idempotent(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    KeyStore.init(keys, issuer=ISS, now=time.time() - 2 * DAY)  # a key made two days ago
    before = KeyStore.open(keys).current()
    code, out = cli("keys", "rotate", "--dir", str(keys), "--if-older-than", "30d")
    assert code == 0 and "not rotated" in out
    assert KeyStore.open(keys).current() == before
    code, out = cli("keys", "rotate", "--dir", str(keys), "--if-older-than", "1d")
    assert code == 0 and "new current key" in out
    after = KeyStore.open(keys).current()
    assert after != before
    code, out = cli("keys", "rotate", "--dir", str(keys), "--if-older-than", "1d")
    assert code == 0 and "not rotated" in out and KeyStore.open(keys).current() == after
    assert cli("keys", "rotate", "--dir", str(keys), "--if-older-than", "soon")[0] == 2


# --------------------------------------------------------------------------- audit --verify


def test_fresh_store_passes_the_gate(store: KeyStore) -> None:
    store.rotate(now=T0 + 10)
    check = verify_store(store.path, max_key_age=90 * DAY, now=T0 + 20)
    assert check.ok, check.problems
    code, out = cli("keys", "audit", "--dir", str(store.path), "--verify", "--max-key-age", "100000d")
    assert code == 0, out


def test_gate_fails_on_a_current_key_older_than_the_policy(store: KeyStore) -> None:
    assert verify_store(store.path, max_key_age=30 * DAY, now=T0 + 30 * DAY).ok
    check = verify_store(store.path, max_key_age=30 * DAY, now=T0 + 30 * DAY + 1)
    assert not check.ok and "policy allows" in check.problems[0]
    code, out = cli("keys", "audit", "--dir", str(store.path), "--verify", "--max-key-age", "1s")
    assert code == 1 and "policy allows" in out


def test_gate_fails_on_a_retired_key_published_past_the_longest_token_lifetime(store: KeyStore) -> None:
    old = store.current()
    store.rotate(now=T0 + 100)
    assert verify_store(store.path, max_key_age=90 * DAY, now=T0 + 100 + 3599).ok
    check = verify_store(store.path, max_key_age=90 * DAY, now=T0 + 100 + 3600)
    assert not check.ok
    [problem] = check.problems
    assert old.kid in problem and "after its last token expired" in problem


def _rewrite_meta(store: KeyStore, change) -> None:  # type: ignore[no-untyped-def]
    path = store.path / "store.json"
    meta = json.loads(path.read_bytes())
    change(meta)
    path.write_text(json.dumps(meta))


def _slip_in_a_key(store: KeyStore, tmp_path: Path) -> None:
    """An attacker adds their own key to store.json and jwks.json, bypassing jwtwatch (and the audit log)."""
    theirs = KeyStore.init(tmp_path / "attacker", "ES256")
    entry = json.loads((theirs.path / "store.json").read_bytes())["keys"][0]
    entry["retired_at"] = T0 + 1
    _rewrite_meta(store, lambda meta: meta["keys"].append(entry))
    (store.path / "jwks.json").write_text(json.dumps(store.public_jwks()))
    (store.path / "private" / f"{entry['kid']}.pem").write_bytes(b"x")
    (store.path / "private" / f"{entry['kid']}.pem").chmod(0o600)


def _drop_silently(store: KeyStore, tmp_path: Path) -> None:
    _rewrite_meta(store, lambda meta: meta["keys"].pop(0))
    (store.path / "jwks.json").write_text(json.dumps(store.public_jwks()))


def _add_key_to_jwks_only(store: KeyStore, tmp_path: Path) -> None:
    theirs = KeyStore.init(tmp_path / "attacker", "ES256")
    jwks = json.loads((store.path / "jwks.json").read_bytes())
    jwks["keys"].append(theirs.public_jwks()["keys"][0])
    (store.path / "jwks.json").write_text(json.dumps(jwks))


def _delete_jwks(store: KeyStore, tmp_path: Path) -> None:
    (store.path / "jwks.json").unlink()


def _delete_private_key(store: KeyStore, tmp_path: Path) -> None:
    (store.path / "private" / f"{store.current().kid}.pem").unlink()


def _loosen_private_key(store: KeyStore, tmp_path: Path) -> None:
    (store.path / "private" / f"{store.current().kid}.pem").chmod(0o644)


def _edit_audit_line(store: KeyStore, tmp_path: Path) -> None:
    path = store.path / "audit.log"
    lines = path.read_bytes().splitlines()
    entry = json.loads(lines[1])
    entry["kid"] = "attacker-key"
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines) + b"\n")


def _truncate_audit(store: KeyStore, tmp_path: Path) -> None:
    path = store.path / "audit.log"
    path.write_bytes(b"\n".join(path.read_bytes().splitlines()[:-1]) + b"\n")


def _corrupt_store_json(store: KeyStore, tmp_path: Path) -> None:
    (store.path / "store.json").write_text("{")


def _append_forged_rotation(store: KeyStore, tmp_path: Path) -> None:
    """Entries that chain perfectly, written by someone without the passphrase (so without the audit key)."""
    from pipeline.keys.audit import chain_line

    path = store.path / "audit.log"
    lines = path.read_bytes().splitlines()
    fields = {"ts": "2024-01-01T00:00:00.000Z", "action": "rotate", "kid": "k", "alg": "ES256", "details": {}}
    lines.append(chain_line(len(lines) + 1, lines[-1], fields))
    path.write_bytes(b"\n".join(lines) + b"\n")


def _say_unencrypted(store: KeyStore, tmp_path: Path) -> None:
    _rewrite_meta(store, lambda meta: meta.update(encrypted=False))


def _stretch_lifetime(store: KeyStore, tmp_path: Path) -> None:
    _rewrite_meta(store, lambda meta: meta.update(max_token_lifetime=30 * DAY))


def _unencrypted_key_dropped_in(store: KeyStore, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    path = store.path / "private" / f"{store.current().kid}.pem"
    key = serialization.load_pem_private_key(path.read_bytes(), b"policy test passphrase")
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _key_encrypted_with_another_passphrase(store: KeyStore, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    encryption = serialization.BestAvailableEncryption(b"the attacker's own")
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    (store.path / "private" / f"{store.current().kid}.pem").write_bytes(pem)


TAMPERINGS = {
    "forged_entry_appended": (_append_forged_rotation, "no MAC although entry 3 has one"),
    "store_json_says_unencrypted": (_say_unencrypted, "the audit log that they are encrypted"),
    "token_lifetime_edited": (_stretch_lifetime, "the audit log 3600 s"),
    "unencrypted_key_dropped_in": (_unencrypted_key_dropped_in, "is not encrypted, but this store's keys are"),
    "key_encrypted_with_another_passphrase": (_key_encrypted_with_another_passphrase, "wrong passphrase"),
    "key_slipped_into_store": (_slip_in_a_key, "never added"),
    "key_dropped_silently": (_drop_silently, "never dropped"),
    "key_added_to_jwks_json": (_add_key_to_jwks_only, "jwks.json does not match"),
    "jwks_json_deleted": (_delete_jwks, "jwks.json cannot be read"),
    "private_key_deleted": (_delete_private_key, "is missing"),
    "private_key_world_readable": (_loosen_private_key, "accessible by other users"),
    "audit_line_edited": (_edit_audit_line, "audit log broken at entry 2"),
    "audit_log_truncated": (_truncate_audit, "removed from the end"),
    "store_json_corrupt": (_corrupt_store_json, "corrupt"),
}


@pytest.mark.parametrize("name", TAMPERINGS)
def test_gate_catches_tampering(store: KeyStore, tmp_path: Path, name: str) -> None:
    change, words = TAMPERINGS[name]
    store.rotate(now=T0 + 10)
    now = T0 + 20
    assert verify_store(store.path, max_key_age=90 * DAY, now=now).ok
    change(store, tmp_path)
    check = verify_store(store.path, max_key_age=90 * DAY, now=now)
    assert not check.ok
    assert any(words in p for p in check.problems), check.problems
    code, out = cli("keys", "audit", "--dir", str(store.path), "--verify", "--max-key-age", "100000d")
    assert code == 1 and words in out.replace("\n", " ")


def test_gate_refuses_a_log_nothing_outside_the_directory_vouches_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unencrypted store has no audit key: its log passes the gate only with a head recorded elsewhere."""
    monkeypatch.delenv("JWTWATCH_KEYS_PASSPHRASE", raising=False)
    monkeypatch.delenv("JWTWATCH_KEYS_PASSPHRASE_FILE", raising=False)
    keys = tmp_path / "plain"
    plain = KeyStore.init(keys, issuer=ISS, passphrase=None)
    env = {"JWTWATCH_KEYS_PASSPHRASE": ""}
    code, out = cli("keys", "audit", "--dir", str(keys), env=env)
    assert code == 0 and "UNAUTHENTICATED" in out and "no entry carries a MAC" in out
    head = next(line.split()[1] for line in out.splitlines() if line.startswith("head: "))
    code, out = cli("keys", "audit", "--dir", str(keys), "--verify", env=env)
    assert code == 1 and "audit log is not authenticated" in out and "jwtwatch keys encrypt" in out
    code, out = cli("keys", "audit", "--dir", str(keys), "--verify", "--expect-head", head, env=env)
    assert code == 0 and "authenticated by the recorded head" in out, out
    plain.rotate()
    code, out = cli("keys", "audit", "--dir", str(keys), "--verify", "--expect-head", head, env=env)
    assert code == 1 and "entries 2..3 come after the recorded head" in out.replace("\n", " ")
    code, out = cli("keys", "audit", "--dir", str(keys), "--expect-head", "0" * 64, env=env)
    assert code == 1 and "not in the log" in out
    code, out = cli("keys", "audit", "--dir", str(keys), "--expect-head", "nope", env=env)
    assert code == 2 and "64 hex digits" in out


def test_gate_needs_the_passphrase_to_check_an_encrypted_store(store: KeyStore, tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("policy test passphrase\n")
    secret.chmod(0o600)
    env = {"JWTWATCH_KEYS_PASSPHRASE": ""}
    code, out = cli("keys", "audit", "--dir", str(store.path), "--verify", env=env)
    assert code == 1 and "give the store's passphrase" in out.replace("\n", " ")
    code, out = cli("keys", "audit", "--dir", str(store.path), "--verify", "--passphrase-file", str(secret), env=env)
    assert code == 0 and "authenticated by the audit key" in out, out
