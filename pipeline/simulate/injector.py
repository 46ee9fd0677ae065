"""The threat injectors' shared state: the world, the baseline, and what has been injected so far — with the
lookups that pick victims and attacker networks, and :meth:`Injector.emit`, which adds an incident's labelled
events. The threats themselves are in ``threats.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.events import format_ts
from pipeline.simulate.baseline import Baseline
from pipeline.simulate.model import ATTACK_NETWORK_KINDS, Incident, SimulationParams
from pipeline.simulate.tables import (
    ACCEPTED,
    KIND_BROWSER,
    KIND_MOBILE,
    REASON_CODE,
    EventBatch,
    TokenTable,
    epoch_ms,
    epoch_s,
)
from pipeline.simulate.world import (
    SCRIPT_UAS,
    AddressSpace,
    Api,
    Strings,
    browser_family,
    browser_ua,
    uuid4_strings,
)

# Where attackers come from: VPS hosting, residential proxies, and the same commercial VPNs benign users use.
_ATTACK_NETWORKS: tuple[str, ...] = ("hosting", "proxy", "vpn")
_ATTACK_NETWORK_P: tuple[float, ...] = (0.45, 0.4, 0.15)


@dataclass
class Injector:
    """Shared state of the threat injectors: the world, the baseline, and what has been added so far."""

    params: SimulationParams
    strings: Strings
    addresses: AddressSpace
    api: Api
    base: Baseline
    tokens: TokenTable
    batches: list[EventBatch] = field(default_factory=list)
    event_ids: list[np.ndarray] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    used_subs: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        p = self.params
        self.horizon = p.duration_s
        self.iss = self.strings.code(p.issuer)
        self.aud = self.strings.code(p.audience)
        base = self.base
        arrays = base.tokens.arrays()
        self.tok_sub = arrays["sub"][: base.n_tokens]
        self.tok_client = arrays["client_id"][: base.n_tokens]
        self.tok_owner = arrays["owner"][: base.n_tokens]
        self.tok_iat = arrays["iat"][: base.n_tokens]
        self.tok_exp_rel = arrays["exp"][: base.n_tokens] - p.start
        self.tok_jti = arrays["jti"][: base.n_tokens]
        kind = base.clients.kind[self.tok_owner] if base.n_tokens else np.empty(0, dtype=np.int8)
        self.user_token = (kind == KIND_BROWSER) | (kind == KIND_MOBILE)
        self._event_sub: np.ndarray | None = None
        self._by_token: np.ndarray | None = None
        self._sorted_tokens = np.empty(0, dtype=np.int64)
        # Attacker networks: the historical three kinds unless the params weigh carriers or broadband too.
        weights = np.asarray(p.attack_networks, dtype=np.float64)
        if tuple(p.attack_networks) == SimulationParams.attack_networks:
            self.attack_kinds, self.attack_p = _ATTACK_NETWORKS, _ATTACK_NETWORK_P
        else:
            used = max(3, int(np.flatnonzero(weights > 0).max()) + 1)
            self.attack_kinds = ATTACK_NETWORK_KINDS[:used]
            self.attack_p = tuple((weights[:used] / weights[:used].sum()).tolist())

    # ---------------------------------------------------------------------------------- lookups

    def text(self, code: int) -> str:
        return self.strings.values[code]

    def event_sub(self) -> np.ndarray:
        """The subject (code) of every baseline event, ``-1`` where there is no token."""
        if self._event_sub is None:
            tok = self.base.events.token
            subs = np.append(self.tok_sub, -1)
            self._event_sub = subs[np.where(tok >= 0, tok, self.base.n_tokens)]
        return self._event_sub

    def sub_prefixes(self, sub: int) -> set[int]:
        """Every /16 the subject's own clients used in the baseline."""
        ips = self.base.events.ip[self.event_sub() == sub]
        return self.addresses.prefix_of(ips)

    def token_uses(self, tok: int) -> tuple[np.ndarray, np.ndarray]:
        """Times and IPs of the owner's accepted uses of a baseline token, time-sorted."""
        ev = self.base.events
        if self._by_token is None:
            self._by_token = np.argsort(ev.token, kind="stable")
            self._sorted_tokens = ev.token[self._by_token]
        lo, hi = np.searchsorted(self._sorted_tokens, [tok, tok + 1])
        rows = self._by_token[lo:hi]
        rows = rows[ev.reason[rows] == ACCEPTED]
        rows = rows[np.argsort(ev.t[rows], kind="stable")]
        return ev.t[rows], ev.ip[rows]

    def candidates(self, mask: np.ndarray) -> np.ndarray:
        """Baseline user tokens matching ``mask``, preferring subjects no other incident has used."""
        mask = mask & self.user_token & (self.base.tok_uses > 0)
        fresh = mask & ~np.isin(self.tok_sub, np.fromiter(self.used_subs, dtype=np.int32, count=len(self.used_subs)))
        return np.flatnonzero(fresh) if fresh.any() else np.flatnonzero(mask)

    def attacker_ip(
        self,
        rng: np.random.Generator,
        exclude: set[int],
        kinds: tuple[str, ...] | None = None,
        p: tuple[float, ...] | None = None,
    ) -> int:
        return self.attacker_network(rng, exclude, kinds, p)[0]

    def attacker_network(
        self,
        rng: np.random.Generator,
        exclude: set[int],
        kinds: tuple[str, ...] | None = None,
        p: tuple[float, ...] | None = None,
    ) -> tuple[int, str]:
        """An attacker address outside ``exclude`` (/16s) and the kind of network it is in."""
        if kinds is None:
            kinds, p = self.attack_kinds, self.attack_p
        kind = str(rng.choice(kinds, p=p))
        return self.addresses.one(kind, exclude, rng), kind

    def other_ua(self, rng: np.random.Generator, owner: int) -> int:
        """A user agent of another family than the owner's (another browser, or a script)."""
        family = self.base.clients.family[owner] if owner >= 0 else None
        if rng.random() < 0.5:
            return self.strings.code(browser_ua(rng, browser_family(rng, exclude=family)))
        return self.strings.code(str(rng.choice(SCRIPT_UAS)))

    def duration(self, rng: np.random.Generator, lo_hi: tuple[float, float], unit: float = 1.0) -> float:
        return min(float(rng.uniform(*lo_hi)) * unit, 0.6 * self.horizon)

    def reasons(self, tok: int, t: np.ndarray, revoked_at: float = math.nan) -> np.ndarray:
        """What the validator answers for ``tok`` at times ``t``: its check order is exp, iat, revocation."""
        arrays = self.tokens.arrays()
        now = epoch_s(self.params.start, t)
        leeway = self.params.leeway_s
        out = np.full(t.shape[0], ACCEPTED, dtype=np.int8)
        if not math.isnan(revoked_at):
            out[now >= self.params.start + revoked_at] = REASON_CODE["revoked"]
        out[arrays["iat"][tok] > now + leeway] = REASON_CODE["not_yet_valid"]
        out[now >= arrays["exp"][tok] + leeway] = REASON_CODE["expired"]
        return out

    def synthetic_victim(self, rng: np.random.Generator, at: float, age: float = 5.0) -> int:
        """A victim token when the population has no usable one (tiny or service-free simulations)."""
        sub = self.strings.code(f"user-v{len(self.incidents) + 1:04d}")
        iat = math.floor(self.params.start + at - age)
        return self.tokens.add(
            sub=sub,
            client_id=self.strings.code("web-spa"),
            iss=self.iss,
            aud=self.aud,
            iat=iat,
            exp=iat + self.params.token_ttl_s,
            jti=str(uuid4_strings(rng, 1)[0]),
        )

    def token_facts(self, tok: int) -> tuple[int, int, int, str]:
        """(sub code, client_id code, owner client or -1, jti) of any token."""
        arrays = self.tokens.arrays()
        return int(arrays["sub"][tok]), int(arrays["client_id"][tok]), int(arrays["owner"][tok]), arrays["jti"][tok]

    def when(self, t: float) -> str:
        return format_ts(self.params.start + t)

    # ---------------------------------------------------------------------------------- output

    def emit(
        self,
        rng: np.random.Generator,
        incident_id: str,
        threat: str,
        batch: EventBatch,
        subs: list[str],
        jtis: list[str],
        ips: list[str],
        description: str,
    ) -> None:
        order = np.argsort(batch.t, kind="stable")
        batch = batch.take(order)
        batch.incident[:] = len(self.incidents)
        ms = epoch_ms(self.params.start, batch.t)
        self.batches.append(batch)
        self.event_ids.append(uuid4_strings(rng, len(batch)))
        self.incidents.append(
            Incident(
                incident_id=incident_id,
                threat=threat,
                start=int(ms.min()) / 1000.0,
                end=int(ms.max()) / 1000.0,
                subs=tuple(dict.fromkeys(subs)),
                jtis=tuple(dict.fromkeys(j for j in jtis if j is not None)),
                ips=tuple(dict.fromkeys(ips)),
                description=description,
            )
        )

    def times(self, rng: np.random.Generator, s: float, e: float, mean_gap: float, at_least: int) -> np.ndarray:
        """A Poisson stream of request times in [s, e] (at least ``at_least`` of them), starting at ``s``."""
        span = max(e - s, 0.0)
        n = int(rng.poisson(span / mean_gap)) + 1
        t = np.sort(np.concatenate([[s], s + rng.uniform(0.0, span, n - 1)]))
        if t.size < at_least:
            t = np.linspace(s, s + span, at_least)
        times: np.ndarray = np.minimum(t, self.horizon - 0.001)
        return times

    def scale_note(self, t: np.ndarray) -> str:
        return f"{t.size} requests over {(t[-1] - t[0]) / 60:.1f} min"

    def mint_chain(
        self, rng: np.random.Generator, t: np.ndarray, sub: int, client_id: int
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Fresh tokens of ``sub`` for requests at ``t``, each renewed ahead of expiry: (token per request,
        accepted reasons, the jtis)."""
        p = self.params
        ttl = p.token_ttl_s
        margin = min(60.0, ttl / 4.0)
        token = np.empty(t.size, dtype=np.int64)
        jtis: list[str] = []
        i = 0
        while i < t.size:
            iat = math.floor(p.start + t[i] - float(rng.uniform(0.1, 1.0)))
            jti = str(uuid4_strings(rng, 1)[0])
            tok = self.tokens.add(
                sub=sub, client_id=client_id, iss=self.iss, aud=self.aud, iat=iat, exp=iat + ttl, jti=jti
            )
            j = i + int(np.searchsorted(t[i:], iat + ttl - margin - p.start, side="left"))
            j = max(j, i + 1)
            token[i:j] = tok
            jtis.append(jti)
            i = j
        reasons = np.full(t.size, ACCEPTED, dtype=np.int8)
        return token, reasons, jtis


__all__ = ["Injector"]
