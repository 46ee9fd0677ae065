"""The key store's audit log: a hash chain of its key changes, each entry authenticated by a key kept elsewhere.

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

import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import KeyStoreError
from pipeline.keys.jwk import canonical_json
from pipeline.keys.metadata import STORE_FILE, read_head

__all__ = [
    "AUDIT_FILE",
    "AUDIT_MAC_FIELD",
    "GENESIS_PREV",
    "AuditKey",
    "AuditReport",
    "append_audit",
    "chain_line",
    "check_head",
    "check_tail",
    "entry_hash",
    "rfc3339",
    "split_lines",
    "verify_audit",
    "verify_audit_lines",
]

AUDIT_FILE = "audit.log"
GENESIS_PREV = "0" * 64
_AUDIT_FIELDS = ("seq", "ts", "action", "kid", "alg", "details", "prev", "hash")
AUDIT_MAC_FIELD = "mac"
_AUDIT_MAC_DOMAIN = b"jwtwatch-audit-mac/1\x00"  # so the audit key never MACs anything but an entry hash
_HEAD_RE = re.compile(r"[0-9a-f]{64}")
# scrypt (RFC 7914) for the passphrase-derived audit key: a passphrase may be weak, so a MAC must not be a
# fast offline oracle for it. 16 MiB and ~0.08 s per derivation, once per process and store.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 1 << 14, 8, 1
_SCRYPT_MAXMEM = 64 << 20


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


def split_lines(data: bytes) -> list[bytes]:
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


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_tail(root: Path, lines: Sequence[bytes], key: AuditKey, *, established: bool = False) -> None:
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


def append_audit(
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
    lines = split_lines(data)
    if key is not None:
        check_tail(root, lines, key)
    # a torn last line (crash mid-append, or tampering) is kept as its own line so verify_audit still
    # points at it; rotation is not blocked, since rotating may be the response to an incident
    out = b"\n" if data and not data.endswith(b"\n") else b""
    prev = lines[-1] if lines else None
    seq = len(lines)
    for action, kid, alg, details in records:
        seq += 1
        fields = {"ts": rfc3339(now), "action": action, "kid": kid, "alg": alg, "details": details}
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
    return verify_audit_lines(split_lines(data), read_head(root), key=key, expect_head=expect_head)
