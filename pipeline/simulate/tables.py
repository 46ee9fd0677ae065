"""Columnar intermediate form: events and tokens as integer codes, turned into strings only at the end."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.events import REASONS

#: reason code per name; ``-1`` means accepted.
REASON_CODE: dict[str, int] = {name: i for i, name in enumerate(REASONS)}
ACCEPTED = -1

KIND_BROWSER, KIND_MOBILE, KIND_SERVICE, KIND_ATTACKER = 0, 1, 2, 3


def epoch_ms(start: float, t: np.ndarray | float) -> np.ndarray:
    """Seconds since the simulation start -> integer epoch milliseconds (the one rounding used everywhere)."""
    return round(start * 1000.0) + np.rint(np.asarray(t, dtype=np.float64) * 1000.0).astype(np.int64)


def epoch_s(start: float, t: np.ndarray | float) -> np.ndarray:
    """The validator's clock at those moments (epoch seconds, at millisecond resolution)."""
    return epoch_ms(start, t) / 1000.0


@dataclass
class EventBatch:
    """Events of one generator, as parallel arrays.

    ``t`` is seconds since the simulation start; ``token`` indexes the :class:`TokenTable` (``-1``: the
    request carried no parseable token); ``ip``/``ua`` are string codes (``ua`` ``-1``: no header);
    ``endpoint`` indexes the ``Api``; ``reason`` is a :data:`REASON_CODE` or :data:`ACCEPTED`;
    ``incident`` is the index of the incident the event belongs to, or ``-1``.
    """

    t: np.ndarray
    token: np.ndarray
    ip: np.ndarray
    ua: np.ndarray
    endpoint: np.ndarray
    reason: np.ndarray
    incident: np.ndarray

    @classmethod
    def build(
        cls,
        t: np.ndarray,
        token: np.ndarray | int,
        ip: np.ndarray | int,
        ua: np.ndarray | int,
        endpoint: np.ndarray | int,
        reason: np.ndarray | int = ACCEPTED,
        incident: np.ndarray | int = -1,
    ) -> EventBatch:
        t = np.asarray(t, dtype=np.float64)
        n = t.shape[0]

        def col(value: np.ndarray | int, dtype: type) -> np.ndarray:
            arr: np.ndarray = np.asarray(value, dtype=dtype)
            return np.full(n, arr, dtype=dtype) if arr.ndim == 0 else arr

        return cls(
            t=t,
            token=col(token, np.int64),
            ip=col(ip, np.int32),
            ua=col(ua, np.int32),
            endpoint=col(endpoint, np.int32),
            reason=col(reason, np.int8),
            incident=col(incident, np.int32),
        )

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @classmethod
    def concat(cls, batches: list[EventBatch]) -> EventBatch:
        if not batches:
            return cls.build(np.empty(0), -1, -1, -1, 0)
        return cls(
            t=np.concatenate([b.t for b in batches]),
            token=np.concatenate([b.token for b in batches]),
            ip=np.concatenate([b.ip for b in batches]),
            ua=np.concatenate([b.ua for b in batches]),
            endpoint=np.concatenate([b.endpoint for b in batches]),
            reason=np.concatenate([b.reason for b in batches]),
            incident=np.concatenate([b.incident for b in batches]),
        )

    def take(self, index: np.ndarray) -> EventBatch:
        return EventBatch(
            t=self.t[index],
            token=self.token[index],
            ip=self.ip[index],
            ua=self.ua[index],
            endpoint=self.endpoint[index],
            reason=self.reason[index],
            incident=self.incident[index],
        )


_TOKEN_FIELDS = ("sub", "client_id", "iss", "aud", "iat", "exp", "has_iat", "has_exp", "owner")


@dataclass
class TokenTable:
    """Every token the simulation uses (claims as codes). ``owner`` is a client index, ``-1`` for attackers.

    ``jti`` holds strings (or ``None`` for a forged token without one). Baseline tokens are added in bulk,
    attack tokens one at a time; :meth:`arrays` gives the whole table.
    """

    chunks: dict[str, list[np.ndarray]] = field(default_factory=lambda: {f: [] for f in _TOKEN_FIELDS})
    jti_chunks: list[np.ndarray] = field(default_factory=list)
    size: int = 0
    _cache: dict[str, np.ndarray] | None = None

    def extend(
        self,
        *,
        sub: np.ndarray,
        client_id: np.ndarray,
        iss: np.ndarray | int,
        aud: np.ndarray | int,
        iat: np.ndarray,
        exp: np.ndarray,
        jti: np.ndarray,
        owner: np.ndarray | int = -1,
        has_iat: np.ndarray | bool = True,
        has_exp: np.ndarray | bool = True,
    ) -> np.ndarray:
        n = len(jti)
        values = {
            "sub": (sub, np.int32),
            "client_id": (client_id, np.int32),
            "iss": (iss, np.int32),
            "aud": (aud, np.int32),
            "iat": (iat, np.int64),
            "exp": (exp, np.int64),
            "has_iat": (has_iat, np.bool_),
            "has_exp": (has_exp, np.bool_),
            "owner": (owner, np.int64),
        }
        for name, (value, dtype) in values.items():
            arr: np.ndarray = np.asarray(value, dtype=dtype)
            self.chunks[name].append(np.full(n, arr, dtype=dtype) if arr.ndim == 0 else arr)
        jtis = np.empty(n, dtype=object)
        jtis[:] = list(jti)
        self.jti_chunks.append(jtis)
        first = self.size
        self.size += n
        self._cache = None
        return np.arange(first, self.size, dtype=np.int64)

    def add(
        self, *, sub: int, client_id: int, iss: int, aud: int, iat: int | None, exp: int | None, jti: str | None
    ) -> int:
        return int(
            self.extend(
                sub=np.array([sub]),
                client_id=np.array([client_id]),
                iss=iss,
                aud=aud,
                iat=np.array([0 if iat is None else iat]),
                exp=np.array([0 if exp is None else exp]),
                has_iat=iat is not None,
                has_exp=exp is not None,
                jti=np.array([jti], dtype=object),
            )[0]
        )

    def arrays(self) -> dict[str, np.ndarray]:
        if self._cache is None:
            cache = {}
            for name in _TOKEN_FIELDS:
                parts = self.chunks[name]
                cache[name] = np.concatenate(parts) if parts else np.empty(0)
            cache["jti"] = np.concatenate(self.jti_chunks) if self.jti_chunks else np.empty(0, dtype=object)
            self._cache = cache
        return self._cache
