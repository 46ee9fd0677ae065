""":func:`verify_store`: everything a CI/CD gate wants to know about a key store, as a list of problems.

The audit chain and its authentication, what the audit log's history says the store should hold against what
store.json, jwks.json and the private keys do hold, and the rotation policy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import KeyStoreError
from pipeline.keys.audit import AuditReport, check_head, rfc3339, verify_audit
from pipeline.keys.metadata import JWKS_FILE, STORE_FILE, backend_of, expired_keys, key_retention
from pipeline.keys.store import KeyStore

__all__ = ["StoreCheck", "verify_store"]


@dataclass(frozen=True, slots=True)
class StoreCheck:
    """Result of :func:`verify_store`: the audit chain, the key directory and the rotation policy."""

    audit: AuditReport
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


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
    backend = backend_of(dict(meta), root / STORE_FILE)
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
    retention = key_retention(meta)
    for k in expired_keys(keys, retention, t):
        late = t - (k["retired_at"] + retention)
        problems.append(
            f"retired key {k['kid']} is still published {_human(late)} after its last token expired "
            f"(retired {rfc3339(k['retired_at'])}, its signatures live at most {retention} s; "
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
