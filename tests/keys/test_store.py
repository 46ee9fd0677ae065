"""Key store: real keys, real files under tmp_path, real JWTs verified with PyJWT against public_jwks()."""

from __future__ import annotations

import base64
import json
import stat
import threading
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import KeyStoreError
from pipeline.keys import ALGORITHMS, KeyStore, jwk_thumbprint, verify_audit, verify_store
from pipeline.keys.audit import chain_line, entry_hash, verify_audit_lines

ISS = "https://issuer.test"
T0 = 1_700_000_000.0
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def verify(store: KeyStore, token: str, aud: str = "api") -> dict:
    """Verify like a relying party: pick the key by kid from the published JWKS only."""
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = jwt.PyJWKSet.from_dict(store.public_jwks())[kid]
    return jwt.decode(token, jwk.key, algorithms=[jwk.algorithm_name], audience=aud, issuer=ISS)


def published_kids(store: KeyStore) -> list[str]:
    return [k["kid"] for k in store.public_jwks()["keys"]]


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore.init(tmp_path / "keys", "ES256", issuer=ISS)


# --------------------------------------------------------------------------- init / open


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_init_creates_one_current_key_per_alg(tmp_path: Path, alg: str) -> None:
    store = KeyStore.init(tmp_path / "k", alg, issuer=ISS)
    [info] = store.keys()
    assert info.alg == alg and info.status == "current" and info.retired_at is None
    [jwk] = store.public_jwks()["keys"]
    assert jwk["kid"] == info.kid == jwk_thumbprint(jwk)
    assert jwk["alg"] == alg and jwk["use"] == "sig"
    pem = (tmp_path / "k" / "private" / f"{info.kid}.pem").read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, not the traditional formats
    reopened = KeyStore.open(tmp_path / "k")
    assert reopened.keys() == store.keys() and reopened.issuer == ISS


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_issued_token_verifies_with_typ_and_kid(tmp_path: Path, alg: str) -> None:
    store = KeyStore.init(tmp_path / "k", alg, issuer=ISS)
    token = store.issue_token("alice", "api", ttl=300, client_id="cli", scope="read write", extra={"x": 1})
    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "kid": store.current().kid, "typ": "at+jwt"}
    claims = verify(store, token)
    assert claims["sub"] == "alice" and claims["iss"] == ISS and claims["aud"] == "api"
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] == claims["iat"]
    assert claims["client_id"] == "cli" and claims["scope"] == "read write" and claims["x"] == 1
    assert len(claims["jti"]) == 36


def test_issue_token_fields_jti_unique_and_audience_list(store: KeyStore) -> None:
    a = verify(store, store.issue_token("bob", ["api", "other"]), aud="other")
    b = verify(store, store.issue_token("bob", ["api", "other"]))
    assert a["aud"] == ["api", "other"] and a["jti"] != b["jti"]
    assert "client_id" not in a and "scope" not in a


def test_issue_token_uses_now_and_issuer_override(store: KeyStore) -> None:
    token = store.issue_token("bob", "api", ttl=60, issuer="https://other", now=T0)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["iat"], claims["exp"], claims["iss"]) == (int(T0), int(T0) + 60, "https://other")


def test_init_refuses_non_empty_dir(tmp_path: Path) -> None:
    target = tmp_path / "k"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(KeyStoreError, match="not empty"):
        KeyStore.init(target)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def test_init_twice_refused(store: KeyStore) -> None:
    before = store.keys()
    with pytest.raises(KeyStoreError, match="not empty"):
        KeyStore.init(store.path)
    assert KeyStore.open(store.path).keys() == before


def test_init_into_empty_existing_dir(tmp_path: Path) -> None:
    (tmp_path / "k").mkdir()
    assert KeyStore.init(tmp_path / "k").current().alg == "ES256"


@pytest.mark.parametrize("alg", ["HS256", "none", "RS512", "", "es256"])
def test_bad_alg_refused_without_creating_anything(tmp_path: Path, alg: str) -> None:
    with pytest.raises(KeyStoreError, match="unsupported algorithm"):
        KeyStore.init(tmp_path / "k", alg)
    assert not (tmp_path / "k").exists()


def test_rotate_to_bad_alg_refused(store: KeyStore) -> None:
    before = store.keys()
    with pytest.raises(KeyStoreError, match="unsupported algorithm"):
        store.rotate("HS256")
    assert store.keys() == before and verify_audit(store.path).entries == 1


def test_open_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="does not exist"):
        KeyStore.open(tmp_path / "nope")


def test_open_dir_that_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="not a jwtwatch key store"):
        KeyStore.open(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"format": "something-else"}', b""],
)
def test_open_corrupt_metadata(store: KeyStore, content: bytes) -> None:
    (store.path / "store.json").write_bytes(content)
    with pytest.raises(KeyStoreError, match="corrupt"):
        KeyStore.open(store.path)


def test_open_refuses_kid_that_does_not_match_key(store: KeyStore) -> None:
    meta = json.loads((store.path / "store.json").read_bytes())
    meta["keys"][0]["kid"] = "../../../../etc/passwd"  # a kid also names a file; it must stay a thumbprint
    (store.path / "store.json").write_text(json.dumps(meta))
    with pytest.raises(KeyStoreError, match="corrupt"):
        KeyStore.open(store.path)


# --------------------------------------------------------------------------- rotation


def test_rotate_keeps_old_key_published_and_signs_with_new(store: KeyStore) -> None:
    old = store.current()
    new = store.rotate(now=T0)
    assert new.kid != old.kid and store.current() == new
    assert set(published_kids(store)) == {old.kid, new.kid}
    assert published_kids(store)[0] == new.kid  # current key first
    infos = store.keys()
    [retired] = [k for k in infos if k.kid == old.kid]
    assert retired.status == "retired" and retired.retired_at == T0
    assert jwt.get_unverified_header(store.issue_token("alice", "api"))["kid"] == new.kid


def test_old_tokens_still_verify_after_one_rotation(store: KeyStore) -> None:
    token = store.issue_token("alice", "api")
    store.rotate()
    assert verify(store, token)["sub"] == "alice"
    assert jwt.get_unverified_header(token)["kid"] != store.current().kid


def test_rotate_can_change_algorithm(store: KeyStore) -> None:
    new = store.rotate("EdDSA")
    assert new.alg == "EdDSA"
    assert verify(store, store.issue_token("alice", "api"))["sub"] == "alice"
    assert store.rotate().alg == "EdDSA"  # no alg: keep the current one


def test_retired_key_dropped_once_max_lifetime_has_passed(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "k", issuer=ISS, max_token_lifetime=600, now=T0)
    first = store.current()
    token = store.issue_token("alice", "api", ttl=600)
    second = store.rotate(now=T0 + 100)  # first retired at T0+100, its tokens live until T0+700 at most

    store.rotate(now=T0 + 699)
    assert first.kid in published_kids(store)
    assert (store.path / "private" / f"{first.kid}.pem").exists()

    third = store.rotate(now=T0 + 700)
    assert first.kid not in published_kids(store)
    assert not (store.path / "private" / f"{first.kid}.pem").exists()
    assert second.kid in published_kids(store) and third.kid in published_kids(store)
    with pytest.raises(KeyError):
        verify(store, token)
    drops = [e for e in store.audit_entries() if e["action"] == "drop"]
    assert [(d["kid"], d["details"]["retired_at"]) for d in drops] == [(first.kid, T0 + 100)]
    assert verify_audit(store.path).ok


def test_prune_drops_expired_keys_without_rotating(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "k", max_token_lifetime=60, now=T0)
    first = store.current()
    second = store.rotate(now=T0 + 10)
    assert store.prune(now=T0 + 69) == []
    [dropped] = store.prune(now=T0 + 70)
    assert dropped.kid == first.kid and dropped.status == "retired"
    assert published_kids(store) == [second.kid] and store.current() == second
    assert [e["action"] for e in store.audit_entries()] == ["init", "retire", "rotate", "drop"]


def test_second_handle_sees_rotation_by_another(store: KeyStore) -> None:
    other = KeyStore.open(store.path)
    assert other.current() == store.current()
    new = store.rotate()
    assert other.current() == new
    assert jwt.get_unverified_header(other.issue_token("a", "api"))["kid"] == new.kid


def test_concurrent_rotations_do_not_lose_updates(store: KeyStore) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        handle = KeyStore.open(store.path)  # each thread its own handle, like separate processes
        try:
            for _ in range(3):
                handle.rotate()
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    keys = store.keys()
    assert len(keys) == 13 and sum(k.status == "current" for k in keys) == 1
    assert all((store.path / "private" / f"{k.kid}.pem").exists() for k in keys)
    report = verify_audit(store.path)
    assert report.ok and report.entries == 1 + 2 * 12
    rotated = [e["kid"] for e in store.audit_entries() if e["action"] == "rotate"]
    assert rotated[-1] == store.current().kid and len(set(rotated)) == 12


# --------------------------------------------------------------------------- key material


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_private_key_files_are_owner_only(tmp_path: Path, alg: str) -> None:
    store = KeyStore.init(tmp_path / "k", alg)
    store.rotate()
    private = store.path / "private"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    files = list(private.iterdir())
    assert len(files) == 2
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert not list(private.glob(".*.tmp"))  # no temp files left behind by the atomic writes


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_public_jwks_has_no_private_params(tmp_path: Path, alg: str) -> None:
    store = KeyStore.init(tmp_path / "k", alg)
    store.rotate()
    for jwk in store.public_jwks()["keys"]:
        assert not PRIVATE_MEMBERS & jwk.keys()
        assert set(jwk) <= {"kty", "crv", "x", "y", "n", "e", "kid", "alg", "use"}
    assert b'"d"' not in (store.path / "store.json").read_bytes()


def test_rsa_keys_are_3072_bits_by_default_and_never_below_2048(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "k", "RS256")
    kid = store.current().kid
    key = serialization.load_pem_private_key((store.path / "private" / f"{kid}.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072
    [jwk] = store.public_jwks()["keys"]
    assert len(base64.urlsafe_b64decode(jwk["n"] + "==")) * 8 >= 2048
    with pytest.raises(KeyStoreError, match="at least 2048"):
        KeyStore.init(tmp_path / "weak", "RS256", rsa_bits=1024)
    assert not (tmp_path / "weak").exists()


def test_rsa_2048_is_accepted(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "k", "RS256", issuer=ISS, rsa_bits=2048)
    assert verify(store, store.issue_token("a", "api"))["sub"] == "a"


def test_group_readable_private_key_refused(store: KeyStore) -> None:
    (store.path / "private" / f"{store.current().kid}.pem").chmod(0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        KeyStore.open(store.path).issue_token("a", "api")


def test_swapped_private_key_file_refused(store: KeyStore, tmp_path: Path) -> None:
    other = KeyStore.init(tmp_path / "other")
    src = other.path / "private" / f"{other.current().kid}.pem"
    (store.path / "private" / f"{store.current().kid}.pem").write_bytes(src.read_bytes())
    with pytest.raises(KeyStoreError, match="does not hold"):
        KeyStore.open(store.path).issue_token("a", "api")


# --------------------------------------------------------------------------- signing rules


def test_ttl_above_max_lifetime_refused(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "k", issuer=ISS, max_token_lifetime=900)
    assert verify(store, store.issue_token("a", "api", ttl=900))["sub"] == "a"
    with pytest.raises(KeyStoreError, match="ttl"):
        store.issue_token("a", "api", ttl=901)


@pytest.mark.parametrize("ttl", [0, -5, True, 1.5])
def test_non_positive_or_non_integer_ttl_refused(store: KeyStore, ttl: object) -> None:
    with pytest.raises(KeyStoreError, match="ttl"):
        store.issue_token("a", "api", ttl=ttl)  # type: ignore[arg-type]


def test_issue_token_needs_an_issuer(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "k")
    with pytest.raises(KeyStoreError, match="issuer"):
        store.issue_token("a", "api")


@pytest.mark.parametrize("claim", ["exp", "iss", "jti"])
def test_extra_cannot_override_registered_claims(store: KeyStore, claim: str) -> None:
    with pytest.raises(KeyStoreError, match=claim):
        store.issue_token("a", "api", extra={claim: 1})


@pytest.mark.parametrize("header", ["alg", "kid", "b64"])
def test_sign_refuses_store_controlled_headers(store: KeyStore, header: str) -> None:
    with pytest.raises(KeyStoreError, match=header):
        store.sign({"sub": "a"}, {header: "none" if header == "alg" else False})


def test_sign_allows_other_typ(store: KeyStore) -> None:
    token = store.sign({"sub": "a"}, {"typ": "secevent+jwt"})
    assert jwt.get_unverified_header(token)["typ"] == "secevent+jwt"


# --------------------------------------------------------------------------- thumbprint


RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
    "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5"
    "hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)


def test_thumbprint_matches_rfc7638_example_and_ignores_optional_members() -> None:
    jwk = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert jwk_thumbprint({**jwk, "alg": "RS256", "kid": "2011-04-29", "use": "sig"}) == jwk_thumbprint(jwk)


def test_thumbprint_rejects_unknown_or_incomplete_keys() -> None:
    with pytest.raises(KeyStoreError, match="key type"):
        jwk_thumbprint({"kty": "oct", "k": "c2VjcmV0"})
    with pytest.raises(KeyStoreError, match="y"):
        jwk_thumbprint({"kty": "EC", "crv": "P-256", "x": "abc"})


# --------------------------------------------------------------------------- audit log


@pytest.fixture
def audited(tmp_path: Path) -> KeyStore:
    """A store whose log has 5 entries: init, retire, rotate, retire, rotate."""
    store = KeyStore.init(tmp_path / "k", issuer=ISS, now=T0)
    store.rotate(now=T0 + 10)
    store.rotate("EdDSA", now=T0 + 20)
    return store


def test_audit_chain_verifies_after_several_operations(audited: KeyStore) -> None:
    audited.rotate(now=T0 + 10_000)  # drops the first two keys
    audited.prune(now=T0 + 10_000)
    entries = audited.audit_entries()
    assert [e["action"] for e in entries] == [
        "init", "retire", "rotate", "retire", "rotate", "drop", "drop", "retire", "rotate",
    ]  # fmt: skip
    assert [e["seq"] for e in entries] == list(range(1, 10))
    assert entries[0]["prev"] == "0" * 64 and entries[0]["ts"] == "2023-11-14T22:13:20.000Z"
    assert all(e["hash"] == entry_hash(e) for e in entries)
    report = verify_audit(audited.path)
    assert (report.ok, report.entries, report.first_broken, report.problem) == (True, 9, None, None)


def _lines(store: KeyStore) -> list[bytes]:
    return (store.path / "audit.log").read_bytes().splitlines()


def _write(store: KeyStore, lines: list[bytes], trailing_newline: bool = True) -> None:
    (store.path / "audit.log").write_bytes(b"\n".join(lines) + (b"\n" if trailing_newline else b""))


def _edit_field(lines: list[bytes]) -> list[bytes]:
    entry = json.loads(lines[1])
    entry["kid"] = "attacker-key"
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    return lines


def _edit_field_and_rehash(lines: list[bytes]) -> list[bytes]:
    entry = json.loads(lines[1])
    entry["kid"] = "attacker-key"
    entry["hash"] = entry_hash(entry)
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    return lines


def _reformat(lines: list[bytes]) -> list[bytes]:
    lines[0] = json.dumps(json.loads(lines[0]), sort_keys=True).encode()  # same data, different bytes
    return lines


TAMPERINGS = {
    # name: (change to the list of lines, expected first_broken, words in the problem)
    "edit_field": (_edit_field, 2, "edited"),
    "edit_field_and_recompute_hash": (_edit_field_and_rehash, 3, "prev"),
    "reformat_line": (_reformat, 1, "canonical"),
    "delete_middle_line": (lambda ls: ls[:2] + ls[3:], 3, "seq"),
    "delete_first_line": (lambda ls: ls[1:], 1, "seq"),
    "swap_lines": (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], 2, "reordered"),
    "append_garbage": (lambda ls: [*ls, b"garbage{"], 6, "garbage"),
    "insert_blank_line": (lambda ls: [*ls[:2], b"", *ls[2:]], 3, "not a JSON object"),
    "delete_last_line": (lambda ls: ls[:-1], 5, "removed from the end"),
}


@pytest.mark.parametrize("name", TAMPERINGS)
def test_tampering_is_detected_at_the_right_entry(audited: KeyStore, name: str) -> None:
    change, first_broken, words = TAMPERINGS[name]
    assert verify_audit(audited.path).ok
    _write(audited, change(_lines(audited)))
    report = verify_audit(audited.path)
    assert not report.ok
    assert report.first_broken == first_broken, report.problem
    assert report.entries == first_broken - 1
    assert words in (report.problem or "")


def test_truncation_mid_line_detected(audited: KeyStore) -> None:
    data = (audited.path / "audit.log").read_bytes()
    fourth_line_start = sum(len(line) + 1 for line in data.splitlines()[:3])
    (audited.path / "audit.log").write_bytes(data[: fourth_line_start + 40])
    report = verify_audit(audited.path)
    assert (report.ok, report.first_broken, report.entries) == (False, 4, 3)
    assert "truncated" in (report.problem or "")


def test_rotation_after_torn_line_keeps_the_damage_visible(audited: KeyStore) -> None:
    data = (audited.path / "audit.log").read_bytes()
    (audited.path / "audit.log").write_bytes(data[:-30])  # torn last line, no newline
    audited.rotate(now=T0 + 30)  # rotating must still work: it may be the response to an incident
    report = verify_audit(audited.path)
    assert not report.ok and report.first_broken == 5
    assert len(_lines(audited)) == 7


def test_missing_audit_log_detected(audited: KeyStore) -> None:
    (audited.path / "audit.log").unlink()
    report = verify_audit(audited.path)
    assert (report.ok, report.first_broken) == (False, 1)


def test_verify_audit_on_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="does not exist"):
        verify_audit(tmp_path / "nope")


def test_audit_entries_reports_garbage_as_keystore_error(audited: KeyStore) -> None:
    _write(audited, [*_lines(audited), b"{oops"])
    with pytest.raises(KeyStoreError, match="line 6"):
        audited.audit_entries()


def test_a_kid_that_is_not_a_string_is_a_problem_not_a_crash(store: KeyStore) -> None:
    """Whoever can write an unencrypted store can append perfectly chained entries naming anything as the kid;
    verify_store reports them (it used to sort an int with the str kids and raise TypeError)."""
    lines = _lines(store)
    for kid in (5, None):
        fields = {"ts": "2024-01-01T00:00:00.000Z", "action": "rotate", "kid": kid, "alg": "ES256", "details": {}}
        lines.append(chain_line(len(lines) + 1, lines[-1], fields))
    _write(store, lines)
    check = verify_store(store.path)
    assert not check.ok
    assert any("key 5 is missing from store.json" in p for p in check.problems), check.problems
    assert any("key null is missing from store.json" in p for p in check.problems), check.problems
    assert any(p.endswith("the audit log null") for p in check.problems), check.problems


def _chain(n: int) -> list[bytes]:
    lines: list[bytes] = []
    for seq in range(1, n + 1):
        fields = {"ts": "2024-01-01T00:00:00.000Z", "action": "rotate", "kid": f"k{seq}", "alg": "ES256"}
        lines.append(chain_line(seq, lines[-1] if lines else None, {**fields, "details": {"n": seq}}))
    return lines


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_is_detected_on_its_own_line(data: st.DataObject) -> None:
    lines = _chain(4)
    assert verify_audit_lines(lines).ok
    index = data.draw(st.integers(0, len(lines) - 1))
    pos = data.draw(st.integers(0, len(lines[index]) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != lines[index][pos]))
    tampered = list(lines)
    tampered[index] = lines[index][:pos] + bytes([byte]) + lines[index][pos + 1 :]
    report = verify_audit_lines(tampered)
    assert not report.ok and report.first_broken == index + 1


# --------------------------------------------------------------------------- backends and durations


def test_init_refuses_an_unknown_backend_and_pkcs11_options_on_a_file_store(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="unknown key store backend 'vault'"):
        KeyStore.init(tmp_path / "a", backend="vault")
    with pytest.raises(KeyStoreError, match="apply to pkcs11 key stores only"):
        KeyStore.init(tmp_path / "b", token_label="t")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    store = KeyStore.init(tmp_path / "c", backend="file", issuer=ISS)
    with pytest.raises(KeyStoreError, match="apply to pkcs11 key stores only"):
        KeyStore.open(store.path, module="/x.so")
    assert KeyStore.open(store.path, pin=None).keys() == store.keys()


def test_open_refuses_an_unknown_backend(store: KeyStore) -> None:
    meta_path = store.path / "store.json"
    meta = json.loads(meta_path.read_text())
    meta["backend"] = "vault"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(KeyStoreError, match="unknown backend 'vault'"):
        KeyStore.open(store.path)


@pytest.mark.parametrize("text", ["\u0663", "\u0663s", "1\uff10m", "9" * 101])
def test_durations_are_ascii_and_bounded(text: str) -> None:
    from pipeline.keys import parse_duration

    with pytest.raises(KeyStoreError):
        parse_duration(text)


# --------------------------------------------------------------------------- audit authentication (issue 14, MEDIUM 5)

PASS = b"audit test passphrase"


@pytest.fixture
def sealed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KeyStore:
    """An encrypted store whose log has 3 entries (init, retire, rotate), each with a MAC under its passphrase."""
    monkeypatch.delenv("JWTWATCH_KEYS_PASSPHRASE", raising=False)
    monkeypatch.delenv("JWTWATCH_KEYS_PASSPHRASE_FILE", raising=False)
    store = KeyStore.init(tmp_path / "sealed", issuer=ISS, passphrase=PASS, now=T0)
    store.rotate(now=T0 + 10)
    return store


def _append_forged(store: KeyStore, mac: str | None = None) -> None:
    """What someone who can write the directory, but lacks the audit key, can append: a perfectly chained entry."""
    lines = _lines(store)
    fields: dict[str, object] = {"ts": "2024-01-01T00:00:00.000Z", "action": "rotate", "kid": "k", "alg": "ES256"}
    fields["details"] = {"previous": store.current().kid}
    line = chain_line(len(lines) + 1, lines[-1], fields)
    if mac is not None:  # a MAC-shaped field, to look like the entries around it
        entry = json.loads(line)
        entry["mac"] = mac
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    _write(store, [*lines, line])


def test_entries_of_an_encrypted_store_carry_macs_that_authenticate_the_log(sealed: KeyStore) -> None:
    entries = sealed.audit_entries()
    key = sealed.audit_key()
    assert key is not None and all(e["mac"] == key.mac(e["hash"]) for e in entries)
    assert "audit_key" in json.loads((sealed.path / "store.json").read_bytes())  # the salt, not the key
    report = verify_audit(sealed.path, key=key)
    assert (report.ok, report.authenticated, report.authenticated_by) == (True, True, ("the audit key",))
    assert report.head == entries[-1]["hash"]
    blind = verify_audit(sealed.path)  # the chain still checks without the key, but nothing vouches for it
    assert blind.ok and not blind.authenticated and "not given" in (blind.unauthenticated or "")
    assert KeyStore.open(sealed.path).audit_key() is None  # no passphrase, no key


@pytest.mark.parametrize("fake_mac", [None, "00" * 32, "not hex"])
def test_an_entry_appended_without_the_audit_key_is_caught(sealed: KeyStore, fake_mac: str | None) -> None:
    _append_forged(sealed, fake_mac)
    report = verify_audit(sealed.path, key=sealed.audit_key())
    assert not report.ok and report.first_broken == 4
    assert ("no MAC" if fake_mac is None else "MAC does not match") in (report.problem or "")
    blind = verify_audit(sealed.path)
    if fake_mac is None:  # no MAC after entries with one: forged, key or no key
        assert not blind.ok and blind.first_broken == 4
    else:  # it looks like the others; only the key tells
        assert blind.ok and not blind.authenticated


def test_key_changes_refuse_to_vouch_for_an_unauthenticated_tail(sealed: KeyStore) -> None:
    _append_forged(sealed)
    before = _lines(sealed)
    with pytest.raises(KeyStoreError, match=r"entry 4 of .* carries no MAC"):
        KeyStore.open(sealed.path, passphrase=PASS).rotate(now=T0 + 20)
    assert _lines(sealed) == before


def test_a_wrong_passphrase_neither_verifies_nor_appends(sealed: KeyStore) -> None:
    wrong = KeyStore.open(sealed.path, passphrase=b"guess")
    report = verify_audit(sealed.path, key=wrong.audit_key())
    assert not report.ok and report.first_broken == 1 and "wrong passphrase" in (report.problem or "")
    before, files = _lines(sealed), sorted((sealed.path / "private").iterdir())
    with pytest.raises(KeyStoreError, match="does not authenticate entry 3"):
        wrong.rotate(now=T0 + 20)
    assert _lines(sealed) == before and sorted((sealed.path / "private").iterdir()) == files  # no key made


def test_an_encrypted_store_records_no_key_change_without_its_passphrase(sealed: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="audit log is authenticated with the store's passphrase"):
        KeyStore.open(sealed.path).prune(now=T0 + 10 + 3600)  # pruning needs no private key, but the MAC does
    assert len(_lines(sealed)) == 3


def _strip_macs(store: KeyStore) -> None:
    """The store as the code before audit keys left it: the same chain without MACs, no audit_key in store.json."""
    lines: list[bytes] = []
    for line in _lines(store):
        entry = json.loads(line)
        fields = {k: v for k, v in entry.items() if k not in ("seq", "prev", "hash", "mac")}
        lines.append(chain_line(entry["seq"], lines[-1] if lines else None, fields))
    _write(store, lines)
    meta = json.loads((store.path / "store.json").read_bytes())
    del meta["audit_key"]
    meta["audit_head"]["hash"] = json.loads(lines[-1])["hash"]
    (store.path / "store.json").write_bytes(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())


def test_an_old_log_without_macs_is_unauthenticated_until_the_next_key_change(sealed: KeyStore) -> None:
    _strip_macs(sealed)
    migrated = KeyStore.open(sealed.path, passphrase=PASS)
    report = verify_audit(sealed.path, key=migrated.audit_key())
    assert report.ok and not report.authenticated and "no entry carries a MAC" in (report.unauthenticated or "")
    migrated.rotate(now=T0 + 20)  # the first MAC vouches for the log as it stood
    report = verify_audit(sealed.path, key=migrated.audit_key())
    assert report.ok and report.authenticated and report.entries == 5


def test_a_log_rewritten_without_macs_is_not_vouched_for_while_store_json_records_an_audit_key(
    sealed: KeyStore,
) -> None:
    """Someone without the passphrase rewrites the history as a chain without MACs (store.json still records the
    audit key): the next key change must not vouch for it, as it would for a store from before MACs."""
    meta = json.loads((sealed.path / "store.json").read_bytes())
    _strip_macs(sealed)
    rewritten = json.loads((sealed.path / "store.json").read_bytes())
    rewritten["audit_key"] = meta["audit_key"]
    (sealed.path / "store.json").write_bytes(json.dumps(rewritten, sort_keys=True, separators=(",", ":")).encode())
    before = _lines(sealed)
    with pytest.raises(KeyStoreError, match=r"carries no MAC although .* records an audit key"):
        KeyStore.open(sealed.path, passphrase=PASS).rotate(now=T0 + 20)
    assert _lines(sealed) == before


def test_an_unencrypted_store_is_authenticated_by_encrypting_it(store: KeyStore) -> None:
    report = verify_audit(store.path)
    assert report.ok and not report.authenticated and "no entry carries a MAC" in (report.unauthenticated or "")
    assert KeyStore.open(store.path, passphrase=PASS).audit_key() is None  # a passphrase alone does not make one
    encrypted = KeyStore.open(store.path, passphrase=PASS)
    encrypted.encrypt()
    assert verify_audit(store.path, key=encrypted.audit_key()).authenticated


def test_a_recorded_head_authenticates_up_to_it_and_catches_a_rollback(store: KeyStore, tmp_path: Path) -> None:
    import shutil

    first = verify_audit(store.path).head
    assert first is not None
    snapshot = tmp_path / "snapshot"
    shutil.copytree(store.path, snapshot)
    assert verify_audit(store.path, expect_head=first).authenticated_by == ("the recorded head",)
    store.rotate()
    later = verify_audit(store.path, expect_head=first)
    assert (
        later.ok
        and not later.authenticated
        and "entries 2..3 come after the recorded head" in (later.unauthenticated or "")
    )
    second = verify_audit(store.path).head
    assert verify_audit(store.path, expect_head=second.upper()).authenticated  # type: ignore[union-attr]
    shutil.rmtree(store.path)
    shutil.copytree(snapshot, store.path)  # the whole directory rolled back to a genuine earlier state
    rolled_back = verify_audit(store.path, expect_head=second)
    assert not rolled_back.ok and "not in the log" in (rolled_back.problem or "")
    with pytest.raises(KeyStoreError, match="64 hex digits"):
        verify_audit(store.path, expect_head="abc")
