"""Token chains: which token each of a client's calls carries — issued just before the call that needs it,
refreshed ahead of expiry (or late, by lazy clients), renewed after a logout — and the benign ``expired``
retries that late refreshes cause. The one Python loop of the baseline: one iteration per token, not per event."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.simulate.model import SimulationParams
from pipeline.simulate.world import UniformPool


@dataclass
class Chains:
    tok_of_event: np.ndarray
    owner: np.ndarray  # local client index per token
    iat: np.ndarray  # epoch seconds
    exp: np.ndarray
    retry_event: np.ndarray  # event index that was first tried with the previous, expired token
    retry_token: np.ndarray  # that previous token (local token index)


def token_chains(
    t: np.ndarray,
    client: np.ndarray,
    n_clients: int,
    *,
    params: SimulationParams,
    pool: UniformPool,
    lazy: np.ndarray,
    skewed: np.ndarray,
    margin: np.ndarray,
    ongoing: np.ndarray,
    forced: np.ndarray | None = None,
) -> Chains:
    """Assign tokens to each client's time-sorted calls.

    A client gets a token just before the call that needs it (``iat`` = that moment, ``exp`` = ``iat`` +
    ttl). A proactive client refreshes at the first call after ``exp - margin``; a lazy one only at the
    first call after ``exp`` (and, if that is beyond the leeway, the call is first tried with the expired
    token: a benign ``expired``). A proactive client back from idle sometimes does the same
    (``stale_token_retry``). A clock-skewed client sometimes gets a token whose ``iat`` lies ahead of the
    validator's clock by more than the leeway. ``forced`` marks calls that must start a new token (the
    first call after a logout).
    """
    ttl = params.token_ttl_s
    leeway = params.leeway_s
    origin = params.start
    n = t.shape[0]
    tok_of_event = np.empty(n, dtype=np.int64)
    bounds = np.searchsorted(client, np.arange(n_clients + 1))
    forced_idx = np.flatnonzero(forced) if forced is not None else np.empty(0, dtype=np.int64)
    owners: list[int] = []
    iats: list[int] = []
    exps: list[int] = []
    retry_event: list[int] = []
    retry_token: list[int] = []
    t_list = t.tolist()
    forced_set = set(forced_idx.tolist())
    for c in range(n_clients):
        lo, hi = int(bounds[c]), int(bounds[c + 1])
        if lo == hi:
            continue
        tc = t[lo:hi]
        is_lazy = bool(lazy[c])
        is_skewed = bool(skewed[c])
        keep_for = ttl if is_lazy else ttl - float(margin[c])
        i = lo
        prev = -1
        prev_exp = 0.0
        while i < hi:
            t0 = t_list[i]
            issued = origin + t0 - pool.between(0.05, 0.8)
            if prev < 0 and ongoing[c]:
                issued -= pool() * keep_for  # in use since before the simulation started
            iat = math.floor(issued)
            if is_skewed and pool() < 0.5:
                iat += leeway + 5 + int(pool() * 60)
            exp = iat + ttl
            stale = prev >= 0 and origin + t0 - 0.5 >= prev_exp + leeway and i not in forced_set
            if stale and (is_lazy or pool() < params.stale_token_retry):
                retry_event.append(i)
                retry_token.append(prev)
            renew = (exp if is_lazy else exp - float(margin[c])) - origin
            j = lo + int(np.searchsorted(tc, renew, side="left"))
            if j <= i:
                j = i + 1
            if forced_idx.size:
                k = int(np.searchsorted(forced_idx, i, side="right"))
                if k < forced_idx.size and forced_idx[k] < j:
                    j = int(forced_idx[k])
            tok = len(owners)
            owners.append(c)
            iats.append(iat)
            exps.append(exp)
            tok_of_event[i:j] = tok
            prev, prev_exp = tok, float(exp)
            i = j
    return Chains(
        tok_of_event=tok_of_event,
        owner=np.array(owners, dtype=np.int64),
        iat=np.array(iats, dtype=np.int64),
        exp=np.array(exps, dtype=np.int64),
        retry_event=np.array(retry_event, dtype=np.int64),
        retry_token=np.array(retry_token, dtype=np.int64),
    )


__all__ = ["Chains", "token_chains"]
