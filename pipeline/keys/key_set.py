"""Parsing a JWK Set into keys the verifier may use — pure, no I/O.

Each key goes through :func:`pipeline.keys.jwk.bind_key` (bound to one algorithm, public members only,
symmetric keys refused, weak RSA keys kept as refused entries); this module gathers them by kid, refuses
algorithms the validator does not allow here and makes a duplicate kid unusable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.errors import JwksError
from pipeline.keys.jwk import BoundKey, bind_key


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys a validator trusts, by kid; keys without a kid are found by algorithm."""

    by_kid: Mapping[str, BoundKey] = field(default_factory=dict)
    without_kid: tuple[BoundKey, ...] = ()
    problems: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.by_kid) + len(self.without_kid)

    def usable(self) -> list[BoundKey]:
        return [k for k in (*self.by_kid.values(), *self.without_kid) if k.refused is None]

    def public_jwks(self) -> dict[str, Any]:
        """The usable keys as a JWK Set, for ``/.well-known/jwks.json``."""
        keys = []
        for key in self.usable():
            entry = dict(key.public_jwk)
            entry.update({"alg": key.alg, "use": "sig"})
            if key.kid is not None:
                entry["kid"] = key.kid
            keys.append(entry)
        return {"keys": keys}

    def find(self, kid: str | None, alg: str) -> BoundKey | None:
        if kid is not None:
            return self.by_kid.get(kid)
        # No kid: use the only key for this algorithm, never guess between several.
        candidates = [k for k in (*self.without_kid, *self.by_kid.values()) if k.alg == alg]
        return candidates[0] if len(candidates) == 1 else None


def parse_jwks(data: bytes | str | Mapping[str, Any], allowed_algorithms: Iterable[str] | None = None) -> KeySet:
    """Parse a JWK Set document. Keys for algorithms outside ``allowed_algorithms`` are refused."""
    if isinstance(data, bytes | str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise JwksError(f"JWKS is not valid JSON: {exc}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise JwksError('JWKS must be a JSON object with a "keys" list')
    allowed = set(allowed_algorithms) if allowed_algorithms is not None else None
    by_kid: dict[str, BoundKey] = {}
    without_kid: list[BoundKey] = []
    problems: list[str] = []
    for index, jwk in enumerate(data["keys"]):
        if not isinstance(jwk, Mapping):
            problems.append(f"key #{index}: not an object")
            continue
        key = bind_key(jwk)
        if key.refused is None and allowed is not None and key.alg not in allowed:
            key = BoundKey(key.kid, key.alg, None, key.public_jwk, refused=f"algorithm {key.alg} is not allowed here")
        # A weak key under a kid stays in the set, refused, so its tokens are rejected as weak_key.
        if key.refused is not None:
            problems.append(f"key {key.kid or '#' + str(index)}: {key.refused}")
        if key.kid is None:
            if key.refused is None:
                without_kid.append(key)
        elif key.kid in by_kid:
            # Two keys under one kid would make the kid ambiguous: keep neither usable.
            problems.append(f"key {key.kid}: duplicate kid")
            by_kid[key.kid] = BoundKey(key.kid, key.alg, None, {}, refused="duplicate kid")
        else:
            by_kid[key.kid] = key
    result = KeySet(by_kid, tuple(without_kid), tuple(problems))
    if not result.usable():
        raise JwksError("JWKS holds no usable key: " + ("; ".join(problems) or "it is empty"))
    return result
