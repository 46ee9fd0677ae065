"""Key store for jwtwatch's bundled token issuer.

Layout of a store directory::

    DIR/store.json          metadata: issuer, max token lifetime, published keys (public JWKs)
    DIR/private/<kid>.pem   PKCS#8 private keys, mode 0600, directory 0700
    DIR/audit.log           hash-chained JSON Lines, one entry per key change
    DIR/.lock               flock target that serialises init / rotate / prune

The kid of every key is its RFC 7638 JWK thumbprint, so a kid can never point at a different key
than the one it was minted for. Public JWKs live in store.json so that publishing the JWKS never
touches private key material.

Audit chain: every line is the canonical JSON (sorted keys, no whitespace, UTF-8) of an entry.
``prev`` is the hex SHA-256 of the previous line's bytes (without its newline; 64 zeros for the
first), ``hash`` the hex SHA-256 of the canonical JSON of the entry without ``hash``, and ``seq``
equals the 1-based line number. store.json also records the seq and hash of the last entry, which
catches what a bare chain cannot: trailing entries cut off the end of the log.

A hash chain has no key: whoever can write the directory can append entries, or write a whole new log,
that chain perfectly. So each entry also carries ``mac``, an HMAC-SHA256 of its ``hash`` under the audit key,
a secret the directory does not hold: an encrypted file store derives it from its passphrase (scrypt, with
the salt recorded in store.json as ``audit_key``), a PKCS#11 store keeps it in the token. A MAC on an entry
vouches for every entry before it, through ``prev``. An entry without a MAC after one with a MAC is forged.
A log without MACs (an unencrypted store, or one written before MACs existed) is *unauthenticated*: it is
reported as such, and only an anchor recorded elsewhere — the head hash that ``jwtwatch keys audit`` prints,
given back as ``--expect-head`` — vouches for it. The anchor also catches what no MAC can: the whole
directory rolled back to an earlier, genuine state.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import importlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeGuard, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

from pipeline import files
from pipeline.errors import InsecureFileError, KeyStoreError
from pipeline.files import atomic_write, fsync_dir

__all__ = [
    "ALGORITHMS",
    "AuditKey",
    "AuditReport",
    "KeyInfo",
    "KeyStore",
    "StoreCheck",
    "backend_class",
    "chain_line",
    "check_head",
    "entry_hash",
    "jwk_thumbprint",
    "parse_duration",
    "passphrase_from_env",
    "read_secret_file",
    "register_backend",
    "secret_from_env",
    "verify_audit",
    "verify_audit_lines",
    "verify_store",
]

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256", "EdDSA")
STORE_FORMAT = "jwtwatch-keystore/1"
DEFAULT_MAX_TOKEN_LIFETIME = 3600
DEFAULT_RSA_BITS = 3072
MIN_RSA_BITS = 2048
GENESIS_PREV = "0" * 64

_ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
PASSPHRASE_ENV = "JWTWATCH_KEYS_PASSPHRASE"
PASSPHRASE_FILE_ENV = "JWTWATCH_KEYS_PASSPHRASE_FILE"
_NEED_PASSPHRASE = (
    "the private keys in {root} are encrypted: set JWTWATCH_KEYS_PASSPHRASE or give the passphrase file "
    "(--passphrase-file / JWTWATCH_KEYS_PASSPHRASE_FILE)"
)

STORE_FILE = "store.json"
JWKS_FILE = "jwks.json"  # public keys only, rewritten on every change
AUDIT_FILE = "audit.log"
LOCK_FILE = ".lock"
PRIVATE_DIR = "private"

# RFC 7638 §3.2: the thumbprint covers exactly these members, nothing optional.
_THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
# A kid is base64url(SHA-256) = 43 chars; checking the shape keeps a tampered store.json from
# steering a file path outside private/.
_KID_RE = re.compile(r"[A-Za-z0-9_-]{43}")
# Headers the store decides itself: PyJWT lets a header "alg" override the signing algorithm, and
# b64=false would produce tokens every validator rejects.
_RESERVED_HEADERS = frozenset({"alg", "kid", "b64"})
_RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope"})
_AUDIT_FIELDS = ("seq", "ts", "action", "kid", "alg", "details", "prev", "hash")
AUDIT_MAC_FIELD = "mac"
_AUDIT_MAC_DOMAIN = b"jwtwatch-audit-mac/1\x00"  # so the audit key never MACs anything but an entry hash
_HEAD_RE = re.compile(r"[0-9a-f]{64}")
# scrypt (RFC 7914) for the passphrase-derived audit key: a passphrase may be weak, so a MAC must not be a
# fast offline oracle for it. 16 MiB and ~0.08 s per derivation, once per process and store.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 1 << 14, 8, 1
_SCRYPT_MAXMEM = 64 << 20

_JWS_ALGORITHMS = {alg: get_default_algorithms()[alg] for alg in ("RS256", "ES256", "EdDSA")}

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
Status = Literal["current", "retired"]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    kid: str
    alg: str
    created_at: float
    retired_at: float | None
    status: Status


class AuditKey:
    """The secret that authenticates audit entries (HMAC-SHA256), held outside the key directory.

    ``sign`` computes the HMAC (in process, or in a PKCS#11 token); ``source`` names the secret in messages.
    """

    def __init__(self, sign: Callable[[bytes], bytes], source: str) -> None:
        self._sign = sign
        self.source = source

    @classmethod
    def from_passphrase(cls, passphrase: bytes, salt: bytes) -> AuditKey:
        """The audit key of an encrypted file store: scrypt of its passphrase with the store's salt."""
        secret = hashlib.scrypt(
            passphrase, salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, maxmem=_SCRYPT_MAXMEM, dklen=32
        )
        return cls(lambda data: hmac.new(secret, data, hashlib.sha256).digest(), "the store's passphrase")

    def mac(self, entry_hash_hex: str) -> str:
        """The ``mac`` of the audit entry whose ``hash`` is ``entry_hash_hex``."""
        return self._sign(_AUDIT_MAC_DOMAIN + entry_hash_hex.encode("ascii")).hex()

    def verify(self, entry_hash_hex: str, mac: object) -> bool:
        return isinstance(mac, str) and hmac.compare_digest(self.mac(entry_hash_hex), mac)


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Result of checking the audit chain.

    ``entries`` counts the intact entries before the first break (all of them when ``ok``);
    ``first_broken`` is the 1-based line number, which is also the seq the entry should carry (None when
    the problem is no one entry, e.g. a recorded head missing from the log).

    ``ok`` says the chain is intact; ``authenticated`` that its last entry is also vouched for by something
    the directory does not hold — a MAC under the audit key, or the head recorded by the operator
    (``authenticated_by`` says which). ``unauthenticated`` says why not; ``head`` is the hash of the last
    entry, the value to record for ``--expect-head``.
    """

    ok: bool
    entries: int
    first_broken: int | None
    problem: str | None
    authenticated: bool = False
    authenticated_by: tuple[str, ...] = ()
    unauthenticated: str | None = None
    head: str | None = None


@dataclass(frozen=True, slots=True)
class StoreCheck:
    """Result of :func:`verify_store`: the audit chain, the key directory and the rotation policy."""

    audit: AuditReport
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


# --------------------------------------------------------------------------- pure helpers

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(?:\d+[smhdw])+")
_DURATION_MAX_CHARS = 100


def parse_duration(text: str) -> int:
    """Seconds in ``90d``, ``12h``, ``1d12h``, ``30m``, ``45s``, ``2w`` or a bare number of seconds."""
    value = text.strip().lower()
    # ASCII digits only: str.isdigit() and \d also admit '²' or '٣', which int() refuses or reads oddly
    if not value.isascii() or not (value.isdigit() or _DURATION_RE.fullmatch(value)):
        raise KeyStoreError(f"not a duration: {text!r} (use e.g. 90d, 12h, 1d12h, 30m, 45s or seconds)")
    if len(value) > _DURATION_MAX_CHARS:
        # also keeps int() below its 4300-digit limit, which raises a bare ValueError
        raise KeyStoreError(f"duration too long: {len(value)} characters (at most {_DURATION_MAX_CHARS})")
    if value.isdigit():
        seconds = int(value)
    else:
        seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in re.findall(r"(\d+)([smhdw])", value))
    if seconds <= 0:
        raise KeyStoreError(f"a duration must be positive, got {text!r}")
    return seconds


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 (RFC 7638 §3 style)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _compact_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url without padding) of a public or private JWK."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise KeyStoreError(f"cannot compute a thumbprint for key type {kty!r}")
    missing = [m for m in members if not isinstance(jwk.get(m), str)]
    if missing:
        raise KeyStoreError(f"{kty} JWK lacks required member(s) {', '.join(missing)}")
    return _b64url(hashlib.sha256(canonical_json({m: jwk[m] for m in members})).digest())


def entry_hash(entry: Mapping[str, Any]) -> str:
    """The ``hash`` field of an audit entry: SHA-256 over its canonical JSON without ``hash`` and ``mac``."""
    return hashlib.sha256(
        canonical_json({k: v for k, v in entry.items() if k not in ("hash", AUDIT_MAC_FIELD)})
    ).hexdigest()


def chain_line(seq: int, prev_line: bytes | None, fields: Mapping[str, Any], key: AuditKey | None = None) -> bytes:
    """Build the exact bytes (without newline) of audit entry ``seq`` following ``prev_line``.

    With ``key`` the entry carries its ``mac``; without, it is an unauthenticated entry.
    """
    entry = {k: v for k, v in fields.items() if k != AUDIT_MAC_FIELD}
    entry["seq"] = seq
    entry["prev"] = GENESIS_PREV if prev_line is None else hashlib.sha256(prev_line).hexdigest()
    entry["hash"] = entry_hash(entry)
    if key is not None:
        entry[AUDIT_MAC_FIELD] = key.mac(entry["hash"])
    return canonical_json(entry)


def _split_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last entry
    return lines


def check_head(expect_head: str | None) -> str | None:
    """``--expect-head`` as the lower-case hex it must be, or KeyStoreError."""
    if expect_head is None:
        return None
    value = expect_head.strip().lower()
    if not _HEAD_RE.fullmatch(value):
        raise KeyStoreError(
            f"a recorded audit head is the 64 hex digits jwtwatch keys audit prints, not {expect_head!r}"
        )
    return value


def verify_audit_lines(
    lines: Sequence[bytes],
    head: tuple[int, str] | None = None,
    *,
    key: AuditKey | None = None,
    expect_head: str | None = None,
) -> AuditReport:
    """Check a hash chain given as raw lines; ``head`` is (seq, hash) of the last committed entry.

    ``key``: the audit key, to check the entries' MACs (without it they are not checked, and a log is
    authenticated only by ``expect_head``). ``expect_head``: the hash of an entry the operator recorded
    outside the directory; the log must still hold it.
    """
    anchor = check_head(expect_head)

    def broken(n: int, problem: str) -> AuditReport:
        return AuditReport(ok=False, entries=n - 1, first_broken=n, problem=f"line {n}: {problem}")

    last_mac: int | None = None  # the last entry with a MAC (checked when there is a key)
    entries: list[dict[str, Any]] = []
    for n, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return broken(n, "not a JSON object (garbage or truncated line)")
        if not isinstance(entry, dict):
            return broken(n, "not a JSON object (garbage or truncated line)")
        missing = [f for f in _AUDIT_FIELDS if f not in entry]
        if missing:
            return broken(n, f"missing field(s) {', '.join(missing)}")
        try:
            is_canonical = canonical_json(entry) == line
        except ValueError:
            is_canonical = False
        if not is_canonical:
            # the chain hashes exact bytes, so a re-serialised line is an edit even if its data is equal
            return broken(n, "not in canonical form (line was rewritten)")
        if type(entry["seq"]) is not int or entry["seq"] != n:
            return broken(n, f"seq is {entry['seq']!r}, expected {n} (line deleted, inserted or reordered)")
        expected_prev = GENESIS_PREV if n == 1 else hashlib.sha256(lines[n - 2]).hexdigest()
        if entry["prev"] != expected_prev:
            return broken(n, "prev does not match the hash of the previous line (chain broken)")
        if entry["hash"] != entry_hash(entry):
            return broken(n, "hash does not match the entry's contents (entry edited)")
        if AUDIT_MAC_FIELD in entry:
            if key is not None and not key.verify(entry["hash"], entry[AUDIT_MAC_FIELD]):
                return broken(
                    n, f"MAC does not match: not written with {key.source} (entry forged, or the wrong passphrase)"
                )
            last_mac = n
        elif last_mac is not None:
            # the store writes a MAC on every entry once it has an audit key: only someone without it writes this
            return broken(n, f"no MAC although entry {last_mac} has one (appended without the audit key)")
        entries.append(entry)

    if head is not None:
        head_seq, head_hash = head
        if head_seq > len(entries):
            return AuditReport(
                ok=False,
                entries=len(entries),
                first_broken=len(entries) + 1,
                problem=f"log ends after entry {len(entries)} but store.json records entry {head_seq}: "
                "entries were removed from the end",
            )
        if head_seq >= 1 and entries[head_seq - 1]["hash"] != head_hash:
            return AuditReport(
                ok=False,
                entries=head_seq - 1,
                first_broken=head_seq,
                problem=f"line {head_seq}: does not match the entry recorded in store.json (log rewritten)",
            )
    return _authentication(entries, key, last_mac, anchor)


def _authentication(
    entries: Sequence[Mapping[str, Any]], key: AuditKey | None, last_mac: int | None, anchor: str | None
) -> AuditReport:
    """The report on an intact chain: which of its entries something outside the directory vouches for."""
    count = len(entries)
    last_hash = entries[-1]["hash"] if entries else None
    anchored = 0
    if anchor is not None:
        found = next((n for n, e in enumerate(entries, start=1) if e["hash"] == anchor), None)
        if found is None:
            return AuditReport(
                ok=False,
                entries=count,
                first_broken=None,
                problem=f"the recorded head {anchor} is not in the log: the log was rewritten, or the directory "
                "rolled back to before it",
                head=last_hash,
            )
        anchored = found
    mac_covered = last_mac if key is not None and last_mac is not None else 0  # a MAC vouches for all before it
    by = tuple(
        what for what, upto in (("the audit key", mac_covered), ("the recorded head", anchored)) if upto == count
    )
    if count and by:
        return AuditReport(
            ok=True, entries=count, first_broken=None, problem=None, authenticated=True, authenticated_by=by,
            head=last_hash,
        )  # fmt: skip
    vouched = max(mac_covered, anchored)
    if not count:
        why = "the log is empty"
    elif vouched:
        why = f"entries {vouched + 1}..{count} come after the recorded head, and no audit key was given to check them"
    elif last_mac is not None:
        why = "its entries carry MACs, but the audit key (the store's passphrase, or the PKCS#11 PIN) was not given"
    else:
        why = (
            "no entry carries a MAC and no recorded head was given: anyone who can write the directory could have "
            "written this log"
        )
    return AuditReport(ok=True, entries=count, first_broken=None, problem=None, unauthenticated=why, head=last_hash)


def _expired_keys(keys: Sequence[Mapping[str, Any]], max_lifetime: int, now: float) -> list[dict[str, Any]]:
    """Retired keys whose signatures are all past use: retired_at + ``max_lifetime`` (see :func:`_retention`)."""
    return [dict(k) for k in keys if k["retired_at"] is not None and now >= k["retired_at"] + max_lifetime]


def _retention(meta: Mapping[str, Any]) -> int:
    """How long a retired key stays published: the longest token lifetime, or longer when something the store
    signed lives longer (``retention``, raised by :meth:`KeyStore.retain_for` — the revocation feed's SETs)."""
    lifetime: int = meta["max_token_lifetime"]
    retention: int = meta.get("retention") or 0
    return max(lifetime, retention)


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_alg(alg: object, allowed: Sequence[str] = ALGORITHMS) -> str:
    if alg not in allowed:
        raise KeyStoreError(f"unsupported algorithm {alg!r}; choose one of {', '.join(allowed)}")
    return str(alg)


def _generate_key(alg: str, rsa_bits: int) -> PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def _public_jwk(key: PrivateKeyTypes) -> dict[str, str]:
    """Public JWK with the RFC 7638 required members only (no key_ops, never private params); KeyStoreError for
    a key that is not RSA, EC or Ed25519."""
    return public_key_jwk(key.public_key())


def public_key_jwk(pub: object) -> dict[str, str]:
    """The RFC 7638 members of a public key's JWK (RSA, EC or Ed25519)."""
    if isinstance(pub, rsa.RSAPublicKey):
        full = RSAAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        full = ECAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        full = OKPAlgorithm.to_jwk(pub, as_dict=True)
    else:  # pragma: no cover - load path refuses other key types first
        raise KeyStoreError(f"unsupported key type {type(pub).__name__}")
    return {m: full[m] for m in _THUMBPRINT_MEMBERS[full["kty"]]}


def _key_matches_alg(key: object, alg: str) -> TypeGuard[PrivateKey]:
    if alg == "RS256":
        return isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    return isinstance(key, ed25519.Ed25519PrivateKey)


# --------------------------------------------------------------------------- file helpers


@contextlib.contextmanager
def _os_errors(action: str) -> Iterator[None]:
    """Turn OSError into KeyStoreError so callers never see a bare traceback for disk problems."""
    try:
        yield
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise KeyStoreError(f"{action}: {e.strerror or e}{where}") from e


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _check_tail(root: Path, lines: Sequence[bytes], key: AuditKey, *, established: bool = False) -> None:
    """Refuse to append with ``key`` after entries it does not vouch for: the new MAC would vouch for them too.

    A log with no MAC at all is from before authentication (or an unencrypted store being encrypted): the
    first MAC vouches for it as it stands, so check it with ``jwtwatch keys audit`` before migrating. But once
    store.json records an audit key (``established``), the store has written MACs since: a log without any is
    one rewritten by someone without the key, and the next key change must not vouch for it. (Whoever also
    strips the record from store.json makes the log look like a store from before MACs; only a head recorded
    outside the directory, ``keys audit --expect-head``, tells the two apart.)
    """
    path = root / AUDIT_FILE
    unauthenticated: int | None = None  # the first entry without a MAC after the last one with a MAC
    for n in range(len(lines), 0, -1):
        try:
            entry = json.loads(lines[n - 1])
        except (ValueError, UnicodeDecodeError):
            continue  # a torn line (crash mid-append): it stays visible as broken, and blocks nothing
        if not isinstance(entry, dict):
            continue
        if AUDIT_MAC_FIELD not in entry:
            unauthenticated = n
            continue
        if entry.get("hash") != entry_hash(entry) or not key.verify(entry["hash"], entry[AUDIT_MAC_FIELD]):
            raise KeyStoreError(
                f"{key.source} does not authenticate entry {n} of {path}: the wrong passphrase, or the log was "
                "rewritten (run jwtwatch keys audit)"
            )
        if unauthenticated is not None:
            raise KeyStoreError(
                f"entry {unauthenticated} of {path} carries no MAC: it was written without {key.source}. "
                "Refusing to vouch for it; inspect the log with jwtwatch keys audit"
            )
        return
    if established and lines:
        raise KeyStoreError(
            f"{path} carries no MAC although {root / STORE_FILE} records an audit key: the log was rewritten "
            "without it. Refusing to vouch for it; inspect the log with jwtwatch keys audit"
        )


def _append_audit(
    root: Path, records: Sequence[tuple[str, str, str, dict[str, Any]]], now: float, key: AuditKey | None = None
) -> dict[str, Any]:
    """Append (action, kid, alg, details) records to the chain, with MACs under ``key``; return the last entry.

    The caller holds the store lock.
    """
    path = root / AUDIT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    lines = _split_lines(data)
    if key is not None:
        _check_tail(root, lines, key)
    # a torn last line (crash mid-append, or tampering) is kept as its own line so verify_audit still
    # points at it; rotation is not blocked, since rotating may be the response to an incident
    out = b"\n" if data and not data.endswith(b"\n") else b""
    prev = lines[-1] if lines else None
    seq = len(lines)
    for action, kid, alg, details in records:
        seq += 1
        fields = {"ts": _rfc3339(now), "action": action, "kid": kid, "alg": alg, "details": details}
        prev = chain_line(seq, prev, fields, key)
        out += prev + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with os.fdopen(fd, "ab") as f:
        f.write(out)
        f.flush()
        os.fsync(f.fileno())
    if prev is None:
        raise KeyStoreError("internal error: no audit records to append")
    entry: dict[str, Any] = json.loads(prev)
    return entry


def _parse_meta(raw: bytes, path: Path) -> dict[str, Any]:
    def corrupt(why: str) -> KeyStoreError:
        return KeyStoreError(f"key store metadata {path} is corrupt: {why}")

    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise corrupt(f"not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        raise corrupt(f"format is not {STORE_FORMAT!r}")
    lifetime = meta.get("max_token_lifetime")
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
        raise corrupt("max_token_lifetime must be a positive integer")
    retention = meta.get("retention")
    if retention is not None and (isinstance(retention, bool) or not isinstance(retention, int) or retention <= 0):
        raise corrupt("retention must be a positive integer")
    if not isinstance(meta.get("rsa_bits"), int) or meta["rsa_bits"] < MIN_RSA_BITS:
        raise corrupt(f"rsa_bits must be an integer >= {MIN_RSA_BITS}")
    if meta.get("issuer") is not None and not isinstance(meta["issuer"], str):
        raise corrupt("issuer must be a string or null")
    keys = meta.get("keys")
    if not isinstance(keys, list) or not keys:
        raise corrupt("no keys")
    for k in keys:
        if not isinstance(k, dict) or not isinstance(k.get("kid"), str) or not _KID_RE.fullmatch(k["kid"]):
            raise corrupt(f"bad key entry {k!r}")
        if k.get("alg") not in ALGORITHMS or not isinstance(k.get("jwk"), dict):
            raise corrupt(f"key {k['kid']}: bad alg or jwk")
        if not isinstance(k.get("created_at"), int | float):
            raise corrupt(f"key {k['kid']}: bad created_at")
        if k.get("retired_at") is not None and not isinstance(k["retired_at"], int | float):
            raise corrupt(f"key {k['kid']}: bad retired_at")
        try:
            thumb = jwk_thumbprint(k["jwk"])
        except KeyStoreError as e:
            raise corrupt(f"key {k['kid']}: {e}") from e
        if thumb != k["kid"]:
            raise corrupt(f"key {k['kid']}: public key does not match its kid")
    if sum(1 for k in keys if k.get("retired_at") is None) != 1:
        raise corrupt("there must be exactly one current key")
    head = meta.get("audit_head")
    if not (isinstance(head, dict) and isinstance(head.get("seq"), int) and isinstance(head.get("hash"), str)):
        raise corrupt("bad audit_head")
    return meta


def _store_signature(root: Path) -> tuple[int, int, int]:
    """(inode, mtime, size) of ``root``'s store.json — os.replace gives every committed change a new inode —
    or KeyStoreError when ``root`` is not a key store."""
    path = root / STORE_FILE
    if not root.is_dir():
        raise KeyStoreError(f"key store {root} does not exist (create one with KeyStore.init / jwtwatch keys init)")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyStoreError(f"{root} is not a jwtwatch key store (no {STORE_FILE})") from None
    except OSError as e:
        raise KeyStoreError(f"cannot read {path}: {e.strerror}") from e
    return st.st_ino, st.st_mtime_ns, st.st_size


def _load_meta(
    root: Path, signature: tuple[int, int, int] | None = None
) -> tuple[tuple[int, int, int], dict[str, Any]]:
    """store.json of ``root``, parsed and checked, with the signature it was read at (``signature``: taken by
    the caller just before)."""
    if signature is None:
        signature = _store_signature(root)
    path = root / STORE_FILE
    with _os_errors(f"cannot read {path}"):
        raw = path.read_bytes()
    return signature, _parse_meta(raw, path)


def _backend_of(meta: dict[str, Any], path: Path) -> str:
    """``backend`` of a store (``file`` when store.json does not say)."""
    kind = meta.get("backend", "file")
    if not isinstance(kind, str) or kind not in BACKEND_MODULES:
        raise KeyStoreError(f"key store metadata {path} is corrupt: unknown backend {kind!r}")
    return kind


# --------------------------------------------------------------------------- backends

#: Key store backends by the name store.json records, and the module of each. ``file`` is :class:`KeyStore`
#: itself; any other backend is a subclass in its own module, which registers it (:func:`register_backend`) and
#: is imported by name the first time a store of that kind is made or opened — the base never imports it.
BACKEND_MODULES = {"file": __name__, "pkcs11": "pipeline.validation.pkcs11"}
_BACKENDS: dict[str, type[KeyStore]] = {}
_Store = TypeVar("_Store", bound="type[KeyStore]")


def register_backend(cls: _Store) -> _Store:
    """Class decorator: ``cls`` makes and opens the key stores whose backend is ``cls.BACKEND``."""
    if cls.BACKEND not in BACKEND_MODULES:
        raise ValueError(f"backend {cls.BACKEND!r} is not in keystore.BACKEND_MODULES")
    _BACKENDS[cls.BACKEND] = cls
    return cls


def backend_class(name: str) -> type[KeyStore]:
    """The key store class of backend ``name`` (``file``, ``pkcs11``), its module imported if need be."""
    if name not in BACKEND_MODULES:
        raise KeyStoreError(f"unknown key store backend {name!r} ({' or '.join(BACKEND_MODULES)})")
    if name not in _BACKENDS:
        importlib.import_module(BACKEND_MODULES[name])
    return _BACKENDS[name]


def _read_head(root: Path) -> tuple[int, str] | None:
    """The audit head recorded in store.json, or None when it cannot be read (then only the chain counts)."""
    try:
        meta = _parse_meta((root / STORE_FILE).read_bytes(), root / STORE_FILE)
    except (OSError, KeyStoreError):
        return None
    return meta["audit_head"]["seq"], meta["audit_head"]["hash"]


def verify_audit(dir: Path, *, key: AuditKey | None = None, expect_head: str | None = None) -> AuditReport:
    """Verify DIR/audit.log: the hash chain, that it still holds the head recorded in store.json, and — with
    ``key`` (``KeyStore.audit_key()``) or ``expect_head`` — whether it is authenticated."""
    root = Path(dir)
    if not root.is_dir():
        raise KeyStoreError(f"key store {root} does not exist")
    try:
        data = (root / AUDIT_FILE).read_bytes()
    except FileNotFoundError:
        return AuditReport(ok=False, entries=0, first_broken=1, problem=f"{root / AUDIT_FILE} is missing")
    except OSError as e:
        raise KeyStoreError(f"cannot read {root / AUDIT_FILE}: {e.strerror}") from e
    return verify_audit_lines(_split_lines(data), _read_head(root), key=key, expect_head=expect_head)


# --------------------------------------------------------------------------- the store


@register_backend
class KeyStore:
    """A key directory. Create one with :meth:`init`, load one with :meth:`open`.

    Reads go to disk (store.json is re-read when it changes) so that a long-lived process sees
    rotations made by another process, e.g. ``jwtwatch keys rotate`` next to a running server.
    """

    BACKEND = "file"
    ALGORITHMS: tuple[str, ...] = ALGORITHMS  # what this backend can generate and sign with

    def __init__(
        self, root: Path, *, passphrase: bytes | str | None = None, pin: bytes | str | None = None, **options: Any
    ) -> None:
        # pin: a file store has none (the CLI passes --pin-file / JWTWATCH_PKCS11_PIN_FILE to any store)
        if options:
            raise KeyStoreError(f"option(s) {', '.join(sorted(options))} apply to pkcs11 key stores only")
        self._root = Path(root)
        self._meta_cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None
        self._private_cache: dict[str, PrivateKey] = {}
        self._audit_keys: dict[bytes, AuditKey] = {}  # salt -> key derived from the passphrase (scrypt is slow)
        if isinstance(passphrase, str):
            passphrase = passphrase.encode()
        self._passphrase: bytes | None = passphrase if passphrase is not None else passphrase_from_env()
        if self._passphrase is not None and not self._passphrase:
            raise KeyStoreError("the key store passphrase is empty")

    # ---- lifecycle

    @classmethod
    def init(
        cls,
        dir: Path,
        alg: str = "ES256",
        issuer: str | None = None,
        *,
        max_token_lifetime: int = DEFAULT_MAX_TOKEN_LIFETIME,
        rsa_bits: int = DEFAULT_RSA_BITS,
        now: float | None = None,
        passphrase: bytes | str | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> KeyStore:
        """Create a store with one current key in ``dir``, which must be missing or empty.

        Private keys are encrypted at rest with ``passphrase`` — by default the one in the environment
        (``JWTWATCH_KEYS_PASSPHRASE``, or the file named by ``JWTWATCH_KEYS_PASSPHRASE_FILE``). Without
        one they are written unencrypted, and every later use warns.

        ``backend="pkcs11"`` keeps the keys in a PKCS#11 token instead (``module=``, ``token_label=``, ``pin=``;
        see :class:`~pipeline.validation.pkcs11.Pkcs11KeyStore`).
        """
        if backend is not None and backend != cls.BACKEND:
            if cls is not KeyStore or not isinstance(backend, str):
                raise KeyStoreError(f"unknown key store backend {backend!r} ({' or '.join(BACKEND_MODULES)})")
            cls = backend_class(backend)
        root = Path(dir)
        alg = _check_alg(alg, cls.ALGORITHMS)
        if isinstance(max_token_lifetime, bool) or not isinstance(max_token_lifetime, int):
            raise KeyStoreError("max_token_lifetime must be an integer number of seconds")
        if max_token_lifetime <= 0:
            raise KeyStoreError("max_token_lifetime must be positive")
        if not isinstance(rsa_bits, int) or rsa_bits < MIN_RSA_BITS:
            raise KeyStoreError(f"RSA keys must have at least {MIN_RSA_BITS} bits, got {rsa_bits!r}")
        if issuer is not None and (not isinstance(issuer, str) or not issuer):
            raise KeyStoreError("issuer must be a non-empty string")
        t = time.time() if now is None else now
        # a bad module, token or PIN is refused before anything is written
        store = cls(root, passphrase=passphrase, **options)
        store._preflight()

        with _os_errors(f"cannot create key store in {root}"):
            if root.exists() and not root.is_dir():
                raise KeyStoreError(f"{root} exists and is not a directory")
            if root.is_dir() and any(root.iterdir()):
                raise KeyStoreError(
                    f"{root} is not empty; refusing to initialise a key store over existing files "
                    "(use KeyStore.open for an existing store, or choose an empty directory)"
                )
            root.mkdir(parents=True, exist_ok=True)
            with _locked(root):
                # re-check under the lock: a concurrent init may have won the race
                if any(p.name != LOCK_FILE for p in root.iterdir()):
                    raise KeyStoreError(f"{root} was initialised concurrently; refusing to overwrite it")
                backend_meta = store._init_backend()
                audit_key, audit_record = store._audit_key(backend_meta, create=True)
                jwk = store._new_key(alg, rsa_bits)
                kid = jwk_thumbprint(jwk)
                details = {"issuer": issuer, "max_token_lifetime": max_token_lifetime, **backend_meta}
                head = _append_audit(root, [("init", kid, alg, details)], t, audit_key)
                meta = {
                    "format": STORE_FORMAT,
                    "issuer": issuer,
                    "max_token_lifetime": max_token_lifetime,
                    "rsa_bits": rsa_bits,
                    **backend_meta,
                    **({"audit_key": audit_record} if audit_record is not None else {}),
                    "keys": [{"kid": kid, "alg": alg, "created_at": t, "retired_at": None, "jwk": jwk}],
                    "audit_head": {"seq": head["seq"], "hash": head["hash"]},
                }
                atomic_write(root / STORE_FILE, canonical_json(meta), 0o644)
                store._publish_jwks()
        log.info("key store initialised in %s with %s key %s", root, alg, kid)
        return store

    @classmethod
    def open(cls, dir: Path, *, passphrase: bytes | str | None = None, **options: Any) -> KeyStore:
        """Load an existing store; KeyStoreError if it is missing or its metadata is corrupt.

        A store whose keys live in a PKCS#11 token opens as a :class:`~pipeline.validation.pkcs11.Pkcs11KeyStore`
        (``options``: ``pin=``, and ``module=`` / ``token_label=`` to override what store.json records).
        """
        loaded = _load_meta(Path(dir))
        kind = _backend_of(loaded[1], Path(dir) / STORE_FILE)
        if kind != cls.BACKEND:
            if cls is not KeyStore:
                raise KeyStoreError(f"{dir} is a {kind!r} key store, not a {cls.BACKEND!r} one")
            cls = backend_class(kind)
        store = cls(Path(dir), passphrase=passphrase, **options)
        store._meta_cache = loaded  # read once: _opened() validates the same store.json
        store._opened()
        return store

    def rotate(self, alg: str | None = None, *, now: float | None = None) -> KeyInfo:
        """Make a new current key; retire the old one; drop retired keys whose tokens have all expired."""
        t = time.time() if now is None else now
        with _os_errors(f"cannot rotate keys in {self._root}"), _locked(self._root):
            return self._rotate_locked(alg, t)

    def rotate_if_older_than(
        self, max_age: float, alg: str | None = None, *, now: float | None = None
    ) -> KeyInfo | None:
        """Rotate when the current key is at least ``max_age`` seconds old, else only prune; idempotent.

        Made for cron: run it as often as you like, it rotates once per ``max_age``. Decided under the
        store lock, so two runs at once rotate once. Returns the new key, or None when none was due.
        """
        if isinstance(max_age, bool) or not isinstance(max_age, int | float) or max_age <= 0:
            raise KeyStoreError(f"max_age must be a positive number of seconds, got {max_age!r}")
        t = time.time() if now is None else now
        with _os_errors(f"cannot rotate keys in {self._root}"), _locked(self._root):
            meta = self._meta(force=True)
            current = next(k for k in meta["keys"] if k["retired_at"] is None)
            if t - current["created_at"] >= max_age:
                return self._rotate_locked(alg, t)
            self._prune_locked(t)
        return None

    def _rotate_locked(self, alg: str | None, t: float) -> KeyInfo:
        meta = self._meta(force=True)  # under the lock: another process may just have rotated
        old = next(k for k in meta["keys"] if k["retired_at"] is None)
        new_alg = _check_alg(old["alg"] if alg is None else alg, self.ALGORITHMS)
        audit = self._audit_for_commit(meta)  # before a key is made: no orphan key file after a refusal
        jwk = self._new_key(new_alg, meta["rsa_bits"])
        kid = jwk_thumbprint(jwk)

        dropped = _expired_keys(meta["keys"], _retention(meta), t)
        records = [self._drop_record(k, _retention(meta)) for k in dropped]
        records.append(("retire", old["kid"], old["alg"], {"replaced_by": kid}))
        records.append(("rotate", kid, new_alg, {"previous": old["kid"]}))
        gone = {k["kid"] for k in dropped}
        keys = [dict(k) for k in meta["keys"] if k["kid"] not in gone]
        for k in keys:
            if k["kid"] == old["kid"]:
                k["retired_at"] = t
        new = {"kid": kid, "alg": new_alg, "created_at": t, "retired_at": None, "jwk": jwk}
        self._commit(meta, [*keys, new], records, t, audit)
        self._remove_private(gone)
        log.info("rotated signing key in %s: %s (%s) replaces %s", self._root, kid, new_alg, old["kid"])
        return _info(new)

    def prune(self, *, now: float | None = None) -> list[KeyInfo]:
        """Drop retired keys whose tokens can no longer be valid; return what was dropped."""
        t = time.time() if now is None else now
        with _os_errors(f"cannot prune keys in {self._root}"), _locked(self._root):
            return self._prune_locked(t)

    def _prune_locked(self, t: float) -> list[KeyInfo]:
        meta = self._meta(force=True)
        dropped = _expired_keys(meta["keys"], _retention(meta), t)
        if not dropped:
            return []
        gone = {k["kid"] for k in dropped}
        records = [self._drop_record(k, _retention(meta)) for k in dropped]
        self._commit(meta, [k for k in meta["keys"] if k["kid"] not in gone], records, t)
        self._remove_private(gone)
        return [_info(k) for k in dropped]

    # ---- reading

    @property
    def path(self) -> Path:
        return self._root

    @property
    def issuer(self) -> str | None:
        issuer: str | None = self._meta()["issuer"]
        return issuer

    @property
    def max_token_lifetime(self) -> int:
        lifetime: int = self._meta()["max_token_lifetime"]
        return lifetime

    @property
    def retention(self) -> int:
        """Seconds a retired key stays published: at least :attr:`max_token_lifetime`, more after :meth:`retain_for`."""
        return _retention(self._meta())

    def retain_for(self, seconds: int, *, now: float | None = None) -> bool:
        """Keep retired keys published at least ``seconds`` after retirement; True when that raised the retention.

        For signatures that must verify longer than :attr:`max_token_lifetime` — a revocation on the feed is
        signed once and must verify until it expires. Retention only grows, and the change is in the audit log.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
            raise KeyStoreError(f"retention must be a positive number of seconds, got {seconds!r}")
        t = time.time() if now is None else now
        with _os_errors(f"cannot change the retention of {self._root}"), _locked(self._root):
            meta = self._meta(force=True)
            previous = _retention(meta)
            if seconds <= previous:
                return False
            current = next(k for k in meta["keys"] if k["retired_at"] is None)
            record = ("retain", current["kid"], current["alg"], {"retention": seconds, "previous": previous})
            self._commit({**meta, "retention": seconds}, meta["keys"], [record], t)
        log.info(
            "retired keys of %s now stay published %s s after retirement (was %s s)", self._root, seconds, previous
        )
        return True

    def keys(self) -> list[KeyInfo]:
        """Published keys, oldest first."""
        return [_info(k) for k in self._meta()["keys"]]

    def current(self) -> KeyInfo:
        return next(k for k in self.keys() if k.status == "current")

    def public_jwks(self) -> dict[str, list[dict[str, str]]]:
        """RFC 7517 JWK Set of the published keys, current key first; public parameters only."""
        ordered = sorted(self._meta()["keys"], key=lambda k: (k["retired_at"] is not None, -k["created_at"]))
        return {"keys": [{**k["jwk"], "kid": k["kid"], "alg": k["alg"], "use": "sig"} for k in ordered]}

    def audit_key(self) -> AuditKey | None:
        """The key that authenticates this store's audit log, or None when there is none to be had here: an
        unencrypted store, or an encrypted one opened without its passphrase. KeyStoreError when store.json names
        an audit key that cannot be reached (a PKCS#11 token without the PIN, a key missing from the token)."""
        return self._audit_key(self._meta(), create=False)[0]

    def audit_entries(self) -> list[dict[str, Any]]:
        """Parsed audit log entries (not verified; use :func:`verify_audit` for that)."""
        with _os_errors("cannot read the audit log"):
            data = (self._root / AUDIT_FILE).read_bytes()
        entries = []
        for n, line in enumerate(_split_lines(data), start=1):
            try:
                entries.append(json.loads(line))
            except (ValueError, UnicodeDecodeError) as e:
                raise KeyStoreError(f"audit log line {n} is not valid JSON; run verify_audit") from e
        return entries

    # ---- signing

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        """Sign ``claims`` as a JWS with the current key; ``typ`` defaults to at+jwt, ``kid`` is set.

        Callers signing with an ``exp`` must keep it within :attr:`max_token_lifetime`: key retention
        assumes no token outlives its key's retirement by more than that.
        """
        extra = dict(headers or {})
        clash = sorted(_RESERVED_HEADERS & extra.keys())
        if clash:
            raise KeyStoreError(f"header(s) {', '.join(clash)} are set by the key store, not the caller")
        cur = self.current()
        header = {"alg": cur.alg, "typ": "at+jwt", **extra, "kid": cur.kid}
        signing_input = _b64url(_compact_json(header)) + "." + _b64url(_compact_json(dict(claims)))
        signature = self._sign_bytes(cur.kid, cur.alg, signing_input.encode("ascii"))
        return signing_input + "." + _b64url(signature)

    def issue_token(
        self,
        sub: str,
        aud: str | list[str],
        *,
        ttl: int = 600,
        issuer: str | None = None,
        client_id: str | None = None,
        scope: str | None = None,
        extra: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> str:
        """Issue an RFC 9068 style access token."""
        limit = self.max_token_lifetime
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= limit:
            raise KeyStoreError(f"ttl must be a whole number of seconds in 1..{limit} (the store's limit), got {ttl!r}")
        iss = issuer if issuer is not None else self.issuer
        if not iss:
            raise KeyStoreError("no issuer: pass issuer= or initialise the store with one")
        if not isinstance(sub, str) or not sub:
            raise KeyStoreError("sub must be a non-empty string")
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or not auds or not all(isinstance(a, str) and a for a in auds):
            raise KeyStoreError("aud must be a non-empty string or a non-empty list of them")
        clash = sorted(_RESERVED_CLAIMS & (extra or {}).keys())
        if clash:
            raise KeyStoreError(f"extra may not set registered claim(s) {', '.join(clash)}")
        iat = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            **(extra or {}),
            "iss": iss,
            "sub": sub,
            "aud": aud,
            "iat": iat,
            "nbf": iat,
            "exp": iat + ttl,
            "jti": str(uuid.uuid4()),
        }
        if client_id is not None:
            claims["client_id"] = client_id
        if scope is not None:
            claims["scope"] = scope
        return self.sign(claims)

    # ---- internals

    def _meta(self, *, force: bool = False) -> dict[str, Any]:
        signature = _store_signature(self._root)  # once: stat'ing store.json is all a current cache costs
        if force or self._meta_cache is None or self._meta_cache[0] != signature:
            self._meta_cache = _load_meta(self._root, signature)
        return self._meta_cache[1]

    def _commit(
        self,
        meta: dict[str, Any],
        keys: list[dict[str, Any]],
        records: list[tuple[str, str, str, dict[str, Any]]],
        now: float,
        audit: tuple[AuditKey | None, dict[str, Any] | None] | None = None,
    ) -> None:
        audit_key, audit_record = self._audit_for_commit(meta) if audit is None else audit
        # audit first: a crash in between leaves an entry for a change that did not land, never a
        # change without an entry
        head = _append_audit(self._root, records, now, audit_key)
        new_meta = {**meta, "keys": keys, "audit_head": {"seq": head["seq"], "hash": head["hash"]}}
        if audit_record is not None:
            new_meta["audit_key"] = audit_record
        atomic_write(self._root / STORE_FILE, canonical_json(new_meta), 0o644)
        self._meta_cache = None
        self._publish_jwks()

    def _audit_for_commit(self, meta: Mapping[str, Any]) -> tuple[AuditKey | None, dict[str, Any] | None]:
        """The audit key a key change must be recorded with, checked against the log's last MAC before anything
        changes (the caller holds the lock): a wrong passphrase or a forged tail stops the change here."""
        audit_key, audit_record = self._audit_key(meta, create=True)
        if audit_key is None and self._audit_key_required(meta):
            raise KeyStoreError(
                f"the keys in {self._root} are encrypted and its audit log is authenticated with the store's "
                "passphrase: no key change is recorded without it (set JWTWATCH_KEYS_PASSPHRASE or give the "
                "passphrase file)"
            )
        if audit_key is not None:
            try:
                data = (self._root / AUDIT_FILE).read_bytes()
            except FileNotFoundError:
                data = b""
            established = isinstance(meta.get("audit_key"), dict)
            _check_tail(self._root, _split_lines(data), audit_key, established=established)
        return audit_key, audit_record

    def _publish_jwks(self) -> None:
        """Keep ``jwks.json`` beside the store, so a validator can follow it with ``--jwks-file``."""
        atomic_write(self._root / JWKS_FILE, json.dumps(self.public_jwks(), indent=2).encode() + b"\n", 0o644)
        # a signed copy (jwks.jwt, see signed_jwks.py) that no longer lists these keys would be a lie: remove it
        # until it is signed again (jwtwatch keys sign-jwks, or keys rotate --root)
        signed = self._root / "jwks.jwt"
        if signed.exists() and _signed_keys(signed) != self.public_jwks()["keys"]:
            log.warning("%s no longer matches the key set and was removed: sign it again with the root key", signed)
            with contextlib.suppress(FileNotFoundError):
                signed.unlink()

    def _drop_record(self, k: Mapping[str, Any], lifetime: int) -> tuple[str, str, str, dict[str, Any]]:
        log.info(
            "dropping retired key %s (%s) from %s: retired at %s, its signatures valid at most %ss",
            k["kid"],
            k["alg"],
            self._root,
            _rfc3339(k["retired_at"]),
            lifetime,
        )
        details = {"retired_at": k["retired_at"], "reason": "retention elapsed since retirement", "retention": lifetime}
        return ("drop", k["kid"], k["alg"], details)

    def _remove_private(self, kids: set[str]) -> None:
        # store.json no longer lists them; a leftover file after a crash here is harmless
        for kid in kids:
            self._private_cache.pop(kid, None)
            with contextlib.suppress(FileNotFoundError):
                (self._root / PRIVATE_DIR / f"{kid}.pem").unlink()
        if kids:
            fsync_dir(self._root / PRIVATE_DIR)

    # ---- the private-key backend: files under private/ (Pkcs11KeyStore overrides these)

    def _preflight(self) -> None:
        """Check, before init writes anything, that keys can be made (Pkcs11KeyStore: module, token, PIN)."""

    def _init_backend(self) -> dict[str, Any]:
        """Prepare a new store's private-key storage; return what store.json records about it."""
        private = self._root / PRIVATE_DIR
        private.mkdir(mode=0o700)
        os.chmod(private, 0o700)  # mkdir's mode is filtered by the umask
        return {"encrypted": self._passphrase is not None}

    def _audit_key(self, meta: Mapping[str, Any], *, create: bool) -> tuple[AuditKey | None, dict[str, Any] | None]:
        """(the audit key, the ``audit_key`` record for store.json) of a store whose metadata is ``meta``.

        A file store has one when it is encrypted and its passphrase is at hand: the passphrase is the secret
        the directory does not hold. ``create``: make the record (a fresh salt) when store.json has none yet.
        """
        record = meta.get("audit_key")
        if not meta.get("encrypted") or self._passphrase is None:
            return None, record if isinstance(record, dict) else None
        if isinstance(record, dict) and record.get("kind") == "passphrase" and isinstance(record.get("salt"), str):
            try:
                salt = base64.urlsafe_b64decode(record["salt"] + "=" * (-len(record["salt"]) % 4))
            except ValueError:
                raise KeyStoreError(f"key store metadata {self._root / STORE_FILE} is corrupt: bad audit_key") from None
        elif create:
            salt = os.urandom(16)
            record = {"kind": "passphrase", "salt": _b64url(salt)}
        else:
            return None, None
        key = self._audit_keys.get(salt)
        if key is None:
            key = self._audit_keys[salt] = AuditKey.from_passphrase(self._passphrase, salt)
        return key, dict(record)

    def _audit_key_required(self, meta: Mapping[str, Any]) -> bool:
        """Whether a key change must carry a MAC: an encrypted store's log is authenticated from then on."""
        return bool(meta.get("encrypted"))

    def _opened(self) -> None:
        if not self._meta().get("encrypted"):
            log.warning(
                "private keys in %s are stored unencrypted; set JWTWATCH_KEYS_PASSPHRASE (or a passphrase file) "
                "and run jwtwatch keys encrypt",
                self._root,
            )

    def _new_key(self, alg: str, rsa_bits: int) -> dict[str, str]:
        """Generate a key, keep its private half, return its public JWK (RFC 7638 members)."""
        encrypted = bool(self._meta().get("encrypted")) if (self._root / STORE_FILE).exists() else None
        if encrypted is None:  # init: the store is encrypted when a passphrase is given
            encrypted = self._passphrase is not None
        if encrypted and self._passphrase is None:
            raise KeyStoreError(_NEED_PASSPHRASE.format(root=self._root))
        key = _generate_key(alg, rsa_bits)
        jwk = _public_jwk(key)
        kid = jwk_thumbprint(jwk)
        path = self._root / PRIVATE_DIR / f"{kid}.pem"
        atomic_write(path, _pem(key, self._passphrase if encrypted else None), 0o600)
        return jwk

    def _sign_bytes(self, kid: str, alg: str, data: bytes) -> bytes:
        """The JWS signature (RFC 7518 format: r||s for ECDSA) of ``data`` with key ``kid``."""
        return _JWS_ALGORITHMS[alg].sign(data, self._private_key(kid, alg))

    def encrypt(self, *, now: float | None = None) -> int:
        """Re-write every private key of an unencrypted store encrypted with the store's passphrase.

        Returns how many keys were encrypted (0 when the store already was). Recorded in the audit log.
        """
        if self._passphrase is None:
            raise KeyStoreError("no passphrase: set JWTWATCH_KEYS_PASSPHRASE or give a passphrase file")
        t = time.time() if now is None else now
        with _os_errors(f"cannot encrypt keys in {self._root}"), _locked(self._root):
            meta = self._meta(force=True)
            if meta.get("encrypted"):
                return 0
            for k in meta["keys"]:
                key = self._private_key(k["kid"], k["alg"])
                atomic_write(self._root / PRIVATE_DIR / f"{k['kid']}.pem", _pem(key, self._passphrase), 0o600)
            records: list[tuple[str, str, str, dict[str, Any]]] = [
                ("encrypt", k["kid"], k["alg"], {}) for k in meta["keys"]
            ]
            self._commit({**meta, "encrypted": True}, meta["keys"], records, t)
        return len(meta["keys"])

    def _check_private(self, kid: str, alg: str) -> str | None:
        """Why the private key of ``kid`` is unusable, or None.

        The file must be owner-only and encrypted exactly when the store is (anyone who can write private/
        can drop in an unencrypted key of their own, never one encrypted with the passphrase); when the key
        can be loaded (unencrypted, or the passphrase is at hand) it must also be the key ``kid`` names.
        """
        path = self._root / PRIVATE_DIR / f"{kid}.pem"
        try:
            mode = path.stat().st_mode & 0o777
            with path.open("rb") as f:
                start = f.read(len(_ENCRYPTED_PEM))
        except FileNotFoundError:
            return f"private key of published key {kid} is missing ({path})"
        except OSError as e:
            return f"cannot read {path}: {e.strerror}"
        if mode & 0o077:
            return f"{path} is accessible by other users (mode {mode:o})"
        file_encrypted = start == _ENCRYPTED_PEM
        store_encrypted = bool(self._meta().get("encrypted"))
        if file_encrypted != store_encrypted:
            if store_encrypted:
                return f"{path} is not encrypted, but this store's keys are (file replaced?)"
            return f"{path} is encrypted, but this store's keys are not (file replaced, or store.json edited?)"
        if file_encrypted and self._passphrase is None:
            return None  # the header is all that can be checked without the passphrase
        try:
            self._private_key(kid, alg)
        except KeyStoreError as e:
            return str(e)
        return None

    def _private_key(self, kid: str, alg: str) -> PrivateKey:
        cached = self._private_cache.get(kid)
        if cached is not None:
            return cached
        path = self._root / PRIVATE_DIR / f"{kid}.pem"
        data = _read_private(path, f"cannot load private key {kid}")
        encrypted = data.startswith(_ENCRYPTED_PEM)
        if encrypted and self._passphrase is None:
            raise KeyStoreError(_NEED_PASSPHRASE.format(root=self._root))
        if not encrypted and self._meta().get("encrypted"):
            # an attacker who can write private/ must not get an unencrypted key of their own used silently
            raise KeyStoreError(f"{path} is not encrypted, but this store's keys are (file replaced?)")
        try:
            key = serialization.load_pem_private_key(data, password=self._passphrase if encrypted else None)
        except ValueError as e:
            if encrypted:
                raise KeyStoreError(
                    f"wrong passphrase for the private keys in {self._root} (cannot decrypt {kid})"
                ) from e
            raise KeyStoreError(f"{path} is not a readable PEM private key") from e
        except TypeError as e:
            raise KeyStoreError(f"{path} is not a readable PEM private key") from e
        if not _key_matches_alg(key, alg) or jwk_thumbprint(_public_jwk(key)) != kid:
            raise KeyStoreError(f"{path} does not hold the {alg} key {kid} (file replaced or corrupt)")
        self._private_cache[kid] = key
        return key


def _pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=encryption,
    )


def passphrase_from_env(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key store passphrase from ``JWTWATCH_KEYS_PASSPHRASE``, else the file ``JWTWATCH_KEYS_PASSPHRASE_FILE``."""
    return secret_from_env(PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, "passphrase", environ)


def secret_from_env(value_env: str, file_env: str, what: str, environ: Mapping[str, str] | None = None) -> bytes | None:
    """A secret from the variable ``value_env``, else from the file the variable ``file_env`` names."""
    env = os.environ if environ is None else environ
    value = env.get(value_env)
    if value:
        return value.encode()
    file = env.get(file_env)
    return read_secret_file(Path(file), what) if file else None


def read_secret_file(path: Path, what: str) -> bytes:
    """A secret kept in a file (passphrase, PIN): owner-only, first line, trailing newline stripped
    (:func:`pipeline.files.read_secret_file`, its errors as :class:`KeyStoreError`)."""
    try:
        return files.read_secret_file(path, what)
    except InsecureFileError as e:
        raise KeyStoreError(str(e)) from e
    except OSError as e:
        raise KeyStoreError(f"cannot read the {what} file: {e.strerror or e} ({path})") from e
    except ValueError as e:
        raise KeyStoreError(str(e)) from e


def _read_private(path: Path, action: str) -> bytes:
    """A private key file's bytes, refused unless owner-only (:func:`pipeline.files.read_private_file`)."""
    try:
        return files.read_private_file(path, "private key")
    except InsecureFileError as e:
        raise KeyStoreError(str(e)) from e
    except OSError as e:
        raise KeyStoreError(f"{action}: {e.strerror or e} ({path})") from e


def _signed_keys(path: Path) -> Any:
    """The ``keys`` claim of a signed JWKS file, unverified (only to tell whether it is stale)."""
    try:
        payload = path.read_text().strip().split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("keys")
    except (OSError, IndexError, ValueError, AttributeError):
        return None


def _info(k: Mapping[str, Any]) -> KeyInfo:
    return KeyInfo(
        kid=k["kid"],
        alg=k["alg"],
        created_at=k["created_at"],
        retired_at=k["retired_at"],
        status="current" if k["retired_at"] is None else "retired",
    )


# --------------------------------------------------------------------------- verification for CI gates


@dataclass
class _History:
    """What the audit log's history says the store should look like now."""

    published: set[str]
    current: str | None = None
    backend: str | None = None
    encrypted: bool | None = None
    max_token_lifetime: int | None = None
    retention: int | None = None


def _replay_audit(entries: Sequence[Mapping[str, Any]]) -> _History:
    """The published kids, the current kid and the settings that the audit log's history implies."""
    history = _History(published=set())
    for e in entries:
        action, kid = e.get("action"), e.get("kid")
        if not isinstance(kid, str):  # no kid at all (a forged entry): compared, and named, as its JSON text
            kid = json.dumps(kid)
        details = e.get("details")
        if not isinstance(details, dict):
            details = {}
        if action == "init":
            history.backend = details.get("backend", "file")
            history.encrypted = bool(details.get("encrypted"))
            lifetime = details.get("max_token_lifetime")
            history.max_token_lifetime = lifetime if isinstance(lifetime, int) else None
        elif action == "encrypt":
            history.encrypted = True
        elif action == "retain" and isinstance(details.get("retention"), int):
            history.retention = details["retention"]
        if action in ("init", "rotate"):
            history.published.add(kid)
            history.current = kid
        elif action == "drop":
            history.published.discard(kid)
    return history


def _history_problems(meta: Mapping[str, Any], history: _History, root: Path) -> list[str]:
    """Where store.json disagrees with the audit log: a change made by editing files, not through jwtwatch."""
    problems: list[str] = []
    kids = {k["kid"] for k in meta["keys"]}
    current = next(k for k in meta["keys"] if k["retired_at"] is None)
    for kid in sorted(kids - history.published):
        problems.append(f"key {kid} is published but the audit log never added it (key slipped into store.json)")
    for kid in sorted(history.published - kids):
        problems.append(f"key {kid} is missing from store.json but the audit log never dropped it")
    if history.current is not None and history.current != current["kid"]:
        problems.append(f"store.json names {current['kid']} current, the audit log {history.current}")
    backend = _backend_of(dict(meta), root / STORE_FILE)
    if history.backend is not None and history.backend != backend:
        problems.append(f"store.json says the keys are in {backend!r}, the audit log {history.backend!r}")
    if backend == "file" and history.encrypted is not None and history.encrypted != bool(meta.get("encrypted")):
        said = "encrypted" if meta.get("encrypted") else "not encrypted"
        logged = "encrypted" if history.encrypted else "not encrypted"
        problems.append(f"store.json says the private keys are {said}, the audit log that they are {logged}")
    if history.max_token_lifetime is not None and history.max_token_lifetime != meta["max_token_lifetime"]:
        problems.append(
            f"store.json says tokens live {meta['max_token_lifetime']} s, the audit log {history.max_token_lifetime} s"
        )
    if history.retention != meta.get("retention"):
        problems.append(
            f"store.json keeps retired keys {meta.get('retention')} s, the audit log {history.retention} s "
            "(retention edited by hand)"
        )
    return problems


def verify_store(
    dir: Path,
    *,
    max_key_age: float | None = None,
    now: float | None = None,
    expect_head: str | None = None,
    **options: Any,
) -> StoreCheck:
    """Everything a CI/CD gate wants to know about a key store, as a list of problems (empty: all good).

    * the audit chain is intact, still holds the head store.json records, and is *authenticated*: its MACs
      check out with the audit key (``passphrase=`` or the environment for an encrypted file store, ``pin=``
      for a PKCS#11 store), or it holds ``expect_head``, a head recorded outside the directory, and every
      entry after that carries a valid MAC. A log nothing outside the directory vouches for is a problem:
      whoever can write the directory could have written it;
    * the published keys, the current key, the backend, the encryption of the private keys and the token
      lifetime are what the audit log's history says — a key slipped into store.json without an audit
      entry, one dropped silently, or a setting edited by hand is caught;
    * ``jwks.json`` publishes exactly the store's public keys (validators follow that file);
    * every published key has its private key (a file of mode 0600, encrypted exactly when the store is and,
      when it can be loaded, the key its kid names; or an object in the HSM token); ``options`` go to
      :meth:`KeyStore.open`;
    * the current key is not older than ``max_key_age`` (the rotation policy);
    * no retired key is still published past the longest token lifetime (it should have been dropped).
    """
    root = Path(dir)
    t = time.time() if now is None else now
    anchor = check_head(expect_head)
    problems: list[str] = []
    try:
        store = KeyStore.open(root, **options)
        meta = store._meta(force=True)
        audit_key = store.audit_key()
    except KeyStoreError as e:
        audit = verify_audit(root, expect_head=anchor)
        if not audit.ok:
            problems.append(_audit_problem(audit))
        return StoreCheck(audit, (*problems, str(e)))

    audit = verify_audit(root, key=audit_key, expect_head=anchor)
    if not audit.ok:
        problems.append(_audit_problem(audit))
    elif not audit.authenticated:
        if audit_key is None and meta.get("encrypted") and store._passphrase is None:
            how = "give the store's passphrase (JWTWATCH_KEYS_PASSPHRASE or --passphrase-file) to check its MACs"
        elif audit_key is None and store.BACKEND == "file" and not meta.get("encrypted"):
            how = (
                "the store is not encrypted, so no secret outside the directory authenticates its log: encrypt it "
                "(jwtwatch keys encrypt) or record the head that jwtwatch keys audit prints and pass --expect-head"
            )
        else:
            how = "record the head that jwtwatch keys audit prints and pass --expect-head"
        problems.append(f"audit log is not authenticated: {audit.unauthenticated}; {how}")
    if audit.ok:
        problems.extend(_history_problems(meta, _replay_audit(store.audit_entries()), root))

    keys = meta["keys"]
    current = next(k for k in keys if k["retired_at"] is None)
    try:
        published = json.loads((root / JWKS_FILE).read_bytes())
    except (OSError, ValueError) as e:
        problems.append(f"{JWKS_FILE} cannot be read: {e}")
    else:
        if published != store.public_jwks():
            problems.append(f"{JWKS_FILE} does not match the key store (a key was added, removed or edited by hand)")

    for k in keys:
        problem = store._check_private(k["kid"], k["alg"])
        if problem:
            problems.append(problem)

    if max_key_age is not None:
        age = t - current["created_at"]
        if age > max_key_age:
            problems.append(
                f"current key {current['kid']} is {_human(age)} old; the policy allows {_human(max_key_age)} "
                "(jwtwatch keys rotate --if-older-than)"
            )
    retention = _retention(meta)
    for k in _expired_keys(keys, retention, t):
        late = t - (k["retired_at"] + retention)
        problems.append(
            f"retired key {k['kid']} is still published {_human(late)} after its last token expired "
            f"(retired {_rfc3339(k['retired_at'])}, its signatures live at most {retention} s; "
            "jwtwatch keys rotate --if-older-than drops it)"
        )
    return StoreCheck(audit, tuple(problems))


def _audit_problem(audit: AuditReport) -> str:
    if audit.first_broken is None:
        return f"audit log: {audit.problem}"
    return f"audit log broken at entry {audit.first_broken}: {audit.problem}"


def _human(seconds: float) -> str:
    """1d2h, 3h5m, 4m10s, 12s."""
    s = int(seconds)
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{s % 60}s" if minutes else f"{s}s"
