"""The injected attacks. Each incident adds its own labelled events (and tokens) on top of the baseline.

Incidents never change a baseline event: the owner of a stolen token keeps behaving exactly as in the
baseline-only simulation with the same seed. Each incident draws from its own random stream, so adding
incidents or threats does not move the others.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
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
    PROBE_UAS,
    SCRIPT_UAS,
    AddressSpace,
    Api,
    Strings,
    browser_family,
    browser_ua,
    stream,
    uuid4_strings,
)

# Where attackers come from: VPS hosting, residential proxies, and the same commercial VPNs benign users use.
_ATTACK_NETWORKS: tuple[str, ...] = ("hosting", "proxy", "vpn")
_ATTACK_NETWORK_P: tuple[float, ...] = (0.45, 0.4, 0.15)
_FORGED_REASONS = ("bad_signature", "unknown_kid", "alg_not_allowed", "malformed")


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

    # ---------------------------------------------------------------------------------- the threats

    def stolen_replay(self, rng: np.random.Generator, incident_id: str) -> None:
        """A victim's current token replayed from another network and client while the owner still uses it."""
        p = self.params
        duration = self.duration(rng, p.replay_minutes, 60.0)
        span = self.base.tok_last - self.base.tok_first
        live = np.isnan(self.base.tok_revoked_at)
        pool = self.candidates(live & (self.base.tok_uses >= 8) & (span >= min(180.0, 0.6 * duration)))
        if pool.size == 0:
            pool = self.candidates(live & (self.base.tok_uses >= 2))
        tok = -1
        best = (-1, 0.0, np.empty(0), np.empty(0, dtype=np.int32))
        for _ in range(min(20, pool.size)):  # a token whose owner keeps using it after the theft
            candidate = int(rng.choice(pool))
            owner_t, owner_ip = self.token_uses(candidate)
            start = float(owner_t[int(rng.integers(0, max(1, int(0.3 * owner_t.size))))]) + float(rng.uniform(0.2, 3))
            end = min(start + duration, float(self.tok_exp_rel[candidate]) - 1.0, self.horizon - 0.001)
            together = int(((owner_t > start) & (owner_t < end)).sum())
            if together > best[0]:
                best = (together, start, owner_t, owner_ip)
                tok = candidate
            if together >= 6:
                break
        if tok >= 0:
            _, s, owner_t, owner_ip = best
            exp_rel = float(self.tok_exp_rel[tok])
        else:
            s = float(rng.uniform(0.05, 0.4)) * self.horizon
            tok = self.synthetic_victim(rng, s)
            owner_t, owner_ip = np.empty(0), np.empty(0, dtype=np.int32)
            exp_rel = float(self.tokens.arrays()["exp"][tok] - p.start)
        sub, _, owner, jti = self.token_facts(tok)
        self.used_subs.add(sub)
        e = min(s + duration, exp_rel - 1.0, self.horizon - 0.001)
        t = self.times(rng, s, e, float(rng.uniform(*p.replay_gap_s)), 4)
        ip, network = self.attacker_network(rng, self.sub_prefixes(sub) | self.addresses.prefix_of(owner_ip))
        ua = self.other_ua(rng, owner)
        copied = False
        if p.replay_ua_copy > 0 and owner >= 0:
            # Drawn from a stream of its own, so that the rest of the incident stays as without the copy.
            copied = bool(stream(p.seed, f"variant:{incident_id}").random() < p.replay_ua_copy)
            if copied:
                ua = int(self.base.clients.ua[owner])
        endpoint = self.api.sample(rng, self.api.user_templates, t.size, p=self.api.browser_weights)
        batch = EventBatch.build(t, tok, ip, ua, endpoint, self.reasons(tok, t))
        together = int(((owner_t >= t[0]) & (owner_t <= t[-1])).sum())
        self.emit(
            rng,
            incident_id,
            "stolen_replay",
            batch,
            [self.text(sub)],
            [jti],
            [self.text(ip)],
            f"token {jti} of {self.text(sub)} replayed from {self.text(ip)} ({self.text(ua)}) while its owner "
            f"kept using it ({together} owner uses in the window); {self.scale_note(t)} from {self.when(t[0])}",
        )
        overlap = "owner active" if together else "owner idle"
        self.incidents[-1] = dataclasses.replace(
            self.incidents[-1], variant=f"{network}, {'owner UA' if copied else 'own UA'}, {overlap}"
        )

    def token_sharing(self, rng: np.random.Generator, incident_id: str) -> None:
        """One token used from many addresses within minutes."""
        p = self.params
        duration = self.duration(rng, p.sharing_minutes, 60.0)
        room = self.tok_exp_rel - self.base.tok_first
        live = np.isnan(self.base.tok_revoked_at)
        pool = self.candidates(live & (room >= min(duration, p.token_ttl_s / 2) + 30.0))
        if pool.size == 0:
            pool = self.candidates(live)
        if pool.size:
            tok = int(rng.choice(pool))
            s = float(self.base.tok_first[tok]) + float(rng.uniform(1.0, 30.0))
            exp_rel = float(self.tok_exp_rel[tok])
        else:
            s = float(rng.uniform(0.05, 0.4)) * self.horizon
            tok = self.synthetic_victim(rng, s)
            exp_rel = float(self.tokens.arrays()["exp"][tok] - p.start)
        sub, _, _, jti = self.token_facts(tok)
        self.used_subs.add(sub)
        s = min(s, self.horizon - 2.0)
        e = max(min(s + duration, exp_rel - 1.0, self.horizon - 0.001), s + 1.0)
        n_ips = int(rng.integers(p.sharing_ips[0], p.sharing_ips[1] + 1))
        kinds = rng.choice(["residential", "proxy", "carrier"], size=n_ips, p=[0.5, 0.3, 0.2])
        ips: list[int] = []
        for kind in kinds.tolist():
            code = int(self.addresses.random(str(kind), 1, rng)[0])
            while code in ips:
                code = int(self.addresses.random(str(kind), 1, rng)[0])
            ips.append(code)
        parts_t, parts_ip, parts_ua = [], [], []
        for i, code in enumerate(ips):
            first = s if i == 0 else float(rng.uniform(s, e))
            n = 1 + int(rng.poisson(3.0))
            when = first + np.concatenate([[0.0], np.cumsum(rng.exponential(8.0, n - 1))])
            when = when[when <= e]
            ua = self.strings.code(browser_ua(rng, browser_family(rng)))
            parts_t.append(when)
            parts_ip.append(np.full(when.size, code))
            parts_ua.append(np.full(when.size, ua))
        t = np.concatenate(parts_t)
        endpoint = self.api.sample(rng, self.api.user_templates, t.size, p=self.api.browser_weights)
        batch = EventBatch.build(
            t, tok, np.concatenate(parts_ip), np.concatenate(parts_ua), endpoint, self.reasons(tok, t)
        )
        self.emit(
            rng,
            incident_id,
            "token_sharing",
            batch,
            [self.text(sub)],
            [jti],
            [self.text(c) for c in ips],
            f"token {jti} of {self.text(sub)} used from {n_ips} addresses; {self.scale_note(np.sort(t))} "
            f"from {self.when(float(t.min()))}",
        )

    def forged_probing(self, rng: np.random.Generator, incident_id: str) -> None:
        """One address sends many forged or broken tokens (bad signature, unknown kid, alg, malformed)."""
        p = self.params
        duration = self.duration(rng, p.probing_minutes, 60.0)
        s = float(rng.uniform(0.0, max(self.horizon - duration, 0.0)))
        t = self.times(rng, s, s + duration, 1.0 / float(rng.uniform(*p.probing_rps)), 20)
        n = t.size
        ip = self.attacker_ip(rng, set(), kinds=("hosting", "proxy"), p=(0.7, 0.3))
        ua = self.strings.code(str(rng.choice(PROBE_UAS)))
        weights = rng.dirichlet(np.array([4.0, 2.0, 2.0, 2.0]))
        reason = rng.choice(len(_FORGED_REASONS), size=n, p=weights)
        style = str(rng.choice(["enumerate", "random", "targeted"]))
        if style == "enumerate":
            first = int(rng.integers(1, 50))
            subs = [f"user-{first + i:05d}" for i in range(n)]
        elif style == "random":
            subs = [f"user-{x:05d}" for x in rng.integers(1, 100_000, n)]
        else:
            known = [self.text(int(c)) for c in np.unique(self.base.clients.sub)] or ["user-00001"]
            targets = ["admin", "root", "service-admin", *rng.choice(known, size=min(5, len(known))).tolist()]
            subs = [str(x) for x in rng.choice(targets, size=n)]
        malformed = reason == _FORGED_REASONS.index("malformed")
        parsed = np.flatnonzero(~malformed)
        token = np.full(n, -1, dtype=np.int64)
        jtis: list[str] = []
        if parsed.size:
            k = parsed.size
            jti = uuid4_strings(rng, k)
            jti[rng.random(k) < 0.3] = None
            now = np.floor(p.start + t[parsed]).astype(np.int64)
            iat = now - rng.integers(0, 3600, k)
            lifetime = rng.choice(np.array([3600, 86_400, 315_360_000]), size=k)
            evil_iss = self.strings.code("https://evil.example")
            iss = np.where(rng.random(k) < 0.8, self.iss, np.where(rng.random(k) < 0.5, evil_iss, -1))
            token[parsed] = self.tokens.extend(
                sub=self.strings.codes([subs[i] for i in parsed.tolist()]),
                client_id=np.where(rng.random(k) < 0.5, self.strings.code("web-spa"), -1),
                iss=iss,
                aud=np.where(rng.random(k) < 0.8, self.aud, -1),
                iat=iat,
                exp=iat + lifetime,
                has_iat=rng.random(k) < 0.9,
                has_exp=rng.random(k) < 0.9,
                jti=jti,
            )
            jtis = [j for j in jti.tolist() if j is not None]
        codes = np.array([REASON_CODE[_FORGED_REASONS[r]] for r in range(len(_FORGED_REASONS))], dtype=np.int8)
        endpoint = self.api.sample(rng, self.api.probe_templates, n)
        batch = EventBatch.build(t, token, ip, ua, endpoint, codes[reason])
        claimed = [subs[i] for i in parsed.tolist()]
        counts = {r: int((reason == i).sum()) for i, r in enumerate(_FORGED_REASONS)}
        self.emit(
            rng,
            incident_id,
            "forged_probing",
            batch,
            claimed,
            jtis,
            [self.text(ip)],
            f"{self.text(ip)} ({self.text(ua)}) probed with {n} forged tokens ({style} subjects; "
            + ", ".join(f"{v} {k}" for k, v in counts.items())
            + f") over {(t[-1] - t[0]) / 60:.1f} min from {self.when(t[0])}",
        )

    def revoked_replay(self, rng: np.random.Generator, incident_id: str) -> None:
        """A token replayed after it was revoked (e.g. at logout) or after it expired."""
        p = self.params
        duration = self.duration(rng, p.revoked_minutes, 60.0)
        leeway = p.leeway_s
        base = self.base
        variant = "revoked" if rng.random() < 0.6 else "expired"
        revoked_ok = base.tok_last < self.horizon - 150.0
        expired_ok = self.tok_exp_rel + leeway < self.horizon - 90.0
        pool = np.empty(0, dtype=np.int64)
        for v in (variant, "expired" if variant == "revoked" else "revoked"):
            if v == "revoked":
                logged_out = self.candidates(revoked_ok & ~np.isnan(base.tok_revoked_at))
                pool = logged_out if logged_out.size and rng.random() < 0.5 else self.candidates(revoked_ok)
            else:
                pool = self.candidates(expired_ok)
            if pool.size:
                variant = v
                break
        revoked_at = math.nan
        if pool.size:
            tok = int(rng.choice(pool))
            if variant == "revoked":
                revoked_at = float(base.tok_revoked_at[tok])
                if math.isnan(revoked_at):
                    revoked_at = float(base.tok_last[tok]) + float(rng.uniform(1.0, 20.0))
                s = revoked_at + float(rng.uniform(10.0, 120.0))
            else:
                after = max(float(self.tok_exp_rel[tok]) + leeway, float(base.tok_last[tok])) + 1.0
                s = after + float(rng.uniform(0.0, max(0.0, min(600.0, self.horizon - 60.0 - after))))
        else:
            variant = "expired"
            s = float(rng.uniform(0.3, 0.6)) * self.horizon
            tok = self.synthetic_victim(rng, s, age=p.token_ttl_s + leeway + 60.0)
        s = min(s, self.horizon - 1.0)
        e = min(s + duration, self.horizon - 0.001)
        t = self.times(rng, s, e, float(rng.uniform(*p.revoked_gap_s)), 3)
        sub, _, owner, jti = self.token_facts(tok)
        self.used_subs.add(sub)
        ip = self.attacker_ip(rng, self.sub_prefixes(sub))
        if owner >= 0 and rng.random() < 0.5:
            ua = int(self.base.clients.ua[owner])  # the captured request replayed as it was
        else:
            ua = self.strings.code(str(rng.choice(SCRIPT_UAS)))
        endpoint = self.api.sample(rng, self.api.user_templates, t.size, p=self.api.browser_weights)
        reasons = self.reasons(tok, t, revoked_at)
        batch = EventBatch.build(t, tok, ip, ua, endpoint, reasons)
        what = f"revoked at {self.when(revoked_at)}" if variant == "revoked" else "expired"
        self.emit(
            rng,
            incident_id,
            "revoked_replay",
            batch,
            [self.text(sub)],
            [jti],
            [self.text(ip)],
            f"token {jti} of {self.text(sub)} ({what}) replayed from {self.text(ip)}; "
            f"{int((reasons == REASON_CODE['revoked']).sum())} revoked + "
            f"{int((reasons == REASON_CODE['expired']).sum())} expired rejections, {self.scale_note(t)} "
            f"from {self.when(t[0])}",
        )

    def rate_abuse(self, rng: np.random.Generator, incident_id: str) -> None:
        """A valid user token hammering the API at tens of requests per second."""
        p = self.params
        duration = min(self.duration(rng, p.abuse_seconds), p.token_ttl_s * 0.6)
        base = self.base
        first = np.maximum(base.tok_first, 0.0)
        room = np.minimum(self.tok_exp_rel - 5.0, self.horizon) - first
        live = np.isnan(base.tok_revoked_at)
        pool = self.candidates(live & (room >= duration + 1.0))
        if pool.size == 0:
            pool = self.candidates(live & (room >= 5.0))
        if pool.size:
            tok = int(rng.choice(pool))
            lo = float(first[tok])
            hi = max(lo, min(float(self.tok_exp_rel[tok]) - 5.0, self.horizon) - duration)
            s = float(rng.uniform(lo, hi))
            duration = min(duration, float(self.tok_exp_rel[tok]) - 5.0 - s, self.horizon - 0.001 - s)
            owner_t, owner_ip = self.token_uses(tok)
            near = owner_ip[int(np.argmin(np.abs(owner_t - s)))] if owner_t.size else -1
        else:
            s = float(rng.uniform(0.05, 0.5)) * self.horizon
            tok = self.synthetic_victim(rng, s)
            duration = min(duration, self.horizon - 0.001 - s)
            near = -1
        sub, _, owner, jti = self.token_facts(tok)
        self.used_subs.add(sub)
        rps = float(rng.uniform(*p.abuse_rps))
        mode = str(rng.choice(["own-network-script", "own-network-same-client", "elsewhere"], p=[0.5, 0.3, 0.2]))
        if mode == "elsewhere" or near < 0:
            mode = "elsewhere"
            ip = self.attacker_ip(rng, self.sub_prefixes(sub))
            ua = self.strings.code(str(rng.choice(SCRIPT_UAS)))
        else:
            ip = int(near)
            same = mode == "own-network-same-client" and owner >= 0
            ua = int(self.base.clients.ua[owner]) if same else self.strings.code(str(rng.choice(SCRIPT_UAS)))
        n = max(int(rng.poisson(rps * duration)), 10)
        t = np.sort(s + rng.uniform(0.0, max(duration, 0.01), n))
        t[0] = s
        template = [("GET", "/v1/products/{id}"), ("GET", "/v1/orders/{id}")][int(rng.integers(0, 2))]
        base_ep = self.api.endpoint(*template)
        start_id = int(rng.integers(0, self.api.count(*template)))
        endpoint = base_ep + (start_id + np.arange(n)) % self.api.count(*template)  # walking the id space
        batch = EventBatch.build(t, tok, ip, ua, endpoint, self.reasons(tok, t))
        self.emit(
            rng,
            incident_id,
            "rate_abuse",
            batch,
            [self.text(sub)],
            [jti],
            [self.text(ip)],
            f"token {jti} of {self.text(sub)} hammered {template[0]} {template[1]} at ~{rps:.0f} req/s "
            f"({mode}, {self.text(ip)}, {self.text(ua)}); {self.scale_note(t)} from {self.when(t[0])}",
        )

    def low_and_slow(self, rng: np.random.Generator, incident_id: str) -> None:
        """A victim's subject used from a new network at one request every 30-120 s, for a long time.

        With tokens shorter-lived than the campaign the attacker holds a stolen refresh token and mints
        successive access tokens (new jtis, same sub and client); otherwise one stolen access token."""
        p = self.params
        duration = float(rng.uniform(*p.slow_share)) * self.horizon
        interval = float(rng.uniform(*p.slow_interval_s))
        base = self.base
        users = np.flatnonzero((base.clients.kind == KIND_BROWSER) | (base.clients.kind == KIND_MOBILE))
        fresh = [c for c in users.tolist() if int(base.clients.sub[c]) not in self.used_subs]
        pick_from = fresh or users.tolist()
        single = p.token_ttl_s >= duration + 60.0
        stolen = -1
        if single:
            room = np.minimum(self.tok_exp_rel, self.horizon) - np.maximum(base.tok_first, 0.0)
            pool = self.candidates(np.isnan(base.tok_revoked_at) & (room >= duration + 70.0))
            if pool.size:
                stolen = int(rng.choice(pool))
        if stolen >= 0:
            sub, client_id, owner, _ = self.token_facts(stolen)
            s = max(float(base.tok_first[stolen]), 0.0) + float(rng.uniform(5.0, 60.0))
            duration = min(duration, float(self.tok_exp_rel[stolen]) - 5.0 - s)
        elif pick_from:
            owner = int(rng.choice(pick_from))
            sub, client_id = int(base.clients.sub[owner]), int(base.clients.client_id[owner])
            s = float(rng.uniform(0.0, max(self.horizon - duration, 0.0)))
        else:
            owner = -1
            sub, client_id = self.strings.code(f"user-v{len(self.incidents) + 1:04d}"), self.strings.code("web-spa")
            s = float(rng.uniform(0.0, max(self.horizon - duration, 0.0)))
        self.used_subs.add(sub)
        e = min(s + duration, self.horizon - 0.001)
        gaps = interval * rng.uniform(0.7, 1.3, int(duration / (interval * 0.7)) + 3)
        t = s + np.concatenate([[0.0], np.cumsum(gaps)])
        t = t[t <= e]
        if t.size < 3:  # a short simulation: keep the pace as far as it goes, but at least three uses
            t = np.minimum(s + interval * np.arange(3), self.horizon - 0.001)
        ip = self.attacker_ip(rng, self.sub_prefixes(sub))
        if owner >= 0 and rng.random() < 0.5:
            ua = int(base.clients.ua[owner])  # mimics the victim's client
        else:
            ua = self.other_ua(rng, owner)
        if stolen >= 0:
            token = np.full(t.size, stolen, dtype=np.int64)
            reasons = self.reasons(stolen, t)
            jtis = [self.tok_jti[stolen]]
        else:
            token, reasons, jtis = self._mint_chain(rng, t, sub, client_id)
        quiet_reads = [("GET", "/v1/orders/{id}"), ("GET", "/v1/profile"), ("GET", "/v1/orders")]
        endpoint = self.api.sample(rng, quiet_reads, t.size)
        batch = EventBatch.build(t, token, ip, ua, endpoint, reasons)
        how = "one stolen access token" if stolen >= 0 else f"{len(jtis)} tokens minted with a stolen refresh token"
        self.emit(
            rng,
            incident_id,
            "low_and_slow",
            batch,
            [self.text(sub)],
            jtis,
            [self.text(ip)],
            f"{self.text(sub)} used from new network {self.text(ip)} ({self.text(ua)}) every ~{interval:.0f} s "
            f"with {how}; {self.scale_note(t)} from {self.when(t[0])}",
        )

    def _mint_chain(
        self, rng: np.random.Generator, t: np.ndarray, sub: int, client_id: int
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
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


THREAT_INJECTORS: dict[str, Callable[[Injector, np.random.Generator, str], None]] = {
    "stolen_replay": Injector.stolen_replay,
    "token_sharing": Injector.token_sharing,
    "forged_probing": Injector.forged_probing,
    "revoked_replay": Injector.revoked_replay,
    "rate_abuse": Injector.rate_abuse,
    "low_and_slow": Injector.low_and_slow,
}


def inject(injector: Injector) -> None:
    """Every configured incident, threat by threat; each one from its own random stream."""
    p = injector.params
    for threat in p.threats:
        for k in range(p.incidents_per_threat):
            incident_id = f"{threat}-{k + 1:02d}"
            THREAT_INJECTORS[threat](injector, stream(p.seed, f"incident:{incident_id}"), incident_id)
