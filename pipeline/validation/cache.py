"""The verified-token cache: a token seen before is not verified cryptographically again.

Keyed on the exact token text, bounded in size (oldest entries go first), and each entry dies with its
token's ``exp``. Only the *signature and static claims* are remembered: time and revocation are checked
again on every use by the caller.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any


class VerifiedTokenCache:
    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> Mapping[str, Any] | None:
        claims = self._entries.get(token)
        if claims is None:
            self.misses += 1
            return None
        if now >= claims["exp"]:
            with self._lock:
                self._entries.pop(token, None)
            self.misses += 1
            return None
        self.hits += 1
        return claims

    def put(self, token: str, claims: Mapping[str, Any]) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[token] = claims
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
