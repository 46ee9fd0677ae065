"""The injected attacks. Each incident adds its own labelled events (and tokens) on top of the baseline.

Incidents never change a baseline event: the owner of a stolen token keeps behaving exactly as in the
baseline-only simulation with the same seed. Each incident draws from its own random stream, so adding
incidents or threats does not move the others. Each threat is a function of the shared
:class:`~pipeline.simulate.injector.Injector` (``injector.py``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from pipeline.simulate.injector import Injector
from pipeline.simulate.tables import (
    KIND_BROWSER,
    KIND_MOBILE,
    REASON_CODE,
    EventBatch,
)
from pipeline.simulate.world import (
    PROBE_UAS,
    SCRIPT_UAS,
    browser_family,
    browser_ua,
    stream,
    uuid4_strings,
)

_FORGED_REASONS = ("bad_signature", "unknown_kid", "alg_not_allowed", "malformed")


def stolen_replay(inj: Injector, rng: np.random.Generator, incident_id: str) -> None:
    """A victim's current token replayed from another network and client while the owner still uses it."""
    p = inj.params
    duration = inj.duration(rng, p.replay_minutes, 60.0)
    span = inj.base.tok_last - inj.base.tok_first
    live = np.isnan(inj.base.tok_revoked_at)
    pool = inj.candidates(live & (inj.base.tok_uses >= 8) & (span >= min(180.0, 0.6 * duration)))
    if pool.size == 0:
        pool = inj.candidates(live & (inj.base.tok_uses >= 2))
    tok = -1
    best = (-1, 0.0, np.empty(0), np.empty(0, dtype=np.int32))
    for _ in range(min(20, pool.size)):  # a token whose owner keeps using it after the theft
        candidate = int(rng.choice(pool))
        owner_t, owner_ip = inj.token_uses(candidate)
        start = float(owner_t[int(rng.integers(0, max(1, int(0.3 * owner_t.size))))]) + float(rng.uniform(0.2, 3))
        end = min(start + duration, float(inj.tok_exp_rel[candidate]) - 1.0, inj.horizon - 0.001)
        together = int(((owner_t > start) & (owner_t < end)).sum())
        if together > best[0]:
            best = (together, start, owner_t, owner_ip)
            tok = candidate
        if together >= 6:
            break
    if tok >= 0:
        _, s, owner_t, owner_ip = best
        exp_rel = float(inj.tok_exp_rel[tok])
    else:
        s = float(rng.uniform(0.05, 0.4)) * inj.horizon
        tok = inj.synthetic_victim(rng, s)
        owner_t, owner_ip = np.empty(0), np.empty(0, dtype=np.int32)
        exp_rel = float(inj.tokens.arrays()["exp"][tok] - p.start)
    sub, _, owner, jti = inj.token_facts(tok)
    inj.used_subs.add(sub)
    e = min(s + duration, exp_rel - 1.0, inj.horizon - 0.001)
    t = inj.times(rng, s, e, float(rng.uniform(*p.replay_gap_s)), 4)
    ip, network = inj.attacker_network(rng, inj.sub_prefixes(sub) | inj.addresses.prefix_of(owner_ip))
    ua = inj.other_ua(rng, owner)
    copied = False
    if p.replay_ua_copy > 0 and owner >= 0:
        # Drawn from a stream of its own, so that the rest of the incident stays as without the copy.
        copied = bool(stream(p.seed, f"variant:{incident_id}").random() < p.replay_ua_copy)
        if copied:
            ua = int(inj.base.clients.ua[owner])
    endpoint = inj.api.sample(rng, inj.api.user_templates, t.size, p=inj.api.browser_weights)
    batch = EventBatch.build(t, tok, ip, ua, endpoint, inj.reasons(tok, t))
    together = int(((owner_t >= t[0]) & (owner_t <= t[-1])).sum())
    inj.emit(
        rng,
        incident_id,
        "stolen_replay",
        batch,
        [inj.text(sub)],
        [jti],
        [inj.text(ip)],
        f"token {jti} of {inj.text(sub)} replayed from {inj.text(ip)} ({inj.text(ua)}) while its owner "
        f"kept using it ({together} owner uses in the window); {inj.scale_note(t)} from {inj.when(t[0])}",
    )
    overlap = "owner active" if together else "owner idle"
    inj.incidents[-1] = dataclasses.replace(
        inj.incidents[-1], variant=f"{network}, {'owner UA' if copied else 'own UA'}, {overlap}"
    )


def token_sharing(inj: Injector, rng: np.random.Generator, incident_id: str) -> None:
    """One token used from many addresses within minutes."""
    p = inj.params
    duration = inj.duration(rng, p.sharing_minutes, 60.0)
    room = inj.tok_exp_rel - inj.base.tok_first
    live = np.isnan(inj.base.tok_revoked_at)
    pool = inj.candidates(live & (room >= min(duration, p.token_ttl_s / 2) + 30.0))
    if pool.size == 0:
        pool = inj.candidates(live)
    if pool.size:
        tok = int(rng.choice(pool))
        s = float(inj.base.tok_first[tok]) + float(rng.uniform(1.0, 30.0))
        exp_rel = float(inj.tok_exp_rel[tok])
    else:
        s = float(rng.uniform(0.05, 0.4)) * inj.horizon
        tok = inj.synthetic_victim(rng, s)
        exp_rel = float(inj.tokens.arrays()["exp"][tok] - p.start)
    sub, _, _, jti = inj.token_facts(tok)
    inj.used_subs.add(sub)
    s = min(s, inj.horizon - 2.0)
    e = max(min(s + duration, exp_rel - 1.0, inj.horizon - 0.001), s + 1.0)
    n_ips = int(rng.integers(p.sharing_ips[0], p.sharing_ips[1] + 1))
    kinds = rng.choice(["residential", "proxy", "carrier"], size=n_ips, p=[0.5, 0.3, 0.2])
    ips: list[int] = []
    for kind in kinds.tolist():
        code = int(inj.addresses.random(str(kind), 1, rng)[0])
        while code in ips:
            code = int(inj.addresses.random(str(kind), 1, rng)[0])
        ips.append(code)
    parts_t, parts_ip, parts_ua = [], [], []
    for i, code in enumerate(ips):
        first = s if i == 0 else float(rng.uniform(s, e))
        n = 1 + int(rng.poisson(3.0))
        when = first + np.concatenate([[0.0], np.cumsum(rng.exponential(8.0, n - 1))])
        when = when[when <= e]
        ua = inj.strings.code(browser_ua(rng, browser_family(rng)))
        parts_t.append(when)
        parts_ip.append(np.full(when.size, code))
        parts_ua.append(np.full(when.size, ua))
    t = np.concatenate(parts_t)
    endpoint = inj.api.sample(rng, inj.api.user_templates, t.size, p=inj.api.browser_weights)
    batch = EventBatch.build(t, tok, np.concatenate(parts_ip), np.concatenate(parts_ua), endpoint, inj.reasons(tok, t))
    inj.emit(
        rng,
        incident_id,
        "token_sharing",
        batch,
        [inj.text(sub)],
        [jti],
        [inj.text(c) for c in ips],
        f"token {jti} of {inj.text(sub)} used from {n_ips} addresses; {inj.scale_note(np.sort(t))} "
        f"from {inj.when(float(t.min()))}",
    )


def forged_probing(inj: Injector, rng: np.random.Generator, incident_id: str) -> None:
    """One address sends many forged or broken tokens (bad signature, unknown kid, alg, malformed)."""
    p = inj.params
    duration = inj.duration(rng, p.probing_minutes, 60.0)
    s = float(rng.uniform(0.0, max(inj.horizon - duration, 0.0)))
    t = inj.times(rng, s, s + duration, 1.0 / float(rng.uniform(*p.probing_rps)), 20)
    n = t.size
    ip = inj.attacker_ip(rng, set(), kinds=("hosting", "proxy"), p=(0.7, 0.3))
    ua = inj.strings.code(str(rng.choice(PROBE_UAS)))
    weights = rng.dirichlet(np.array([4.0, 2.0, 2.0, 2.0]))
    reason = rng.choice(len(_FORGED_REASONS), size=n, p=weights)
    style = str(rng.choice(["enumerate", "random", "targeted"]))
    if style == "enumerate":
        first = int(rng.integers(1, 50))
        subs = [f"user-{first + i:05d}" for i in range(n)]
    elif style == "random":
        subs = [f"user-{x:05d}" for x in rng.integers(1, 100_000, n)]
    else:
        known = [inj.text(int(c)) for c in np.unique(inj.base.clients.sub)] or ["user-00001"]
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
        evil_iss = inj.strings.code("https://evil.example")
        iss = np.where(rng.random(k) < 0.8, inj.iss, np.where(rng.random(k) < 0.5, evil_iss, -1))
        token[parsed] = inj.tokens.extend(
            sub=inj.strings.codes([subs[i] for i in parsed.tolist()]),
            client_id=np.where(rng.random(k) < 0.5, inj.strings.code("web-spa"), -1),
            iss=iss,
            aud=np.where(rng.random(k) < 0.8, inj.aud, -1),
            iat=iat,
            exp=iat + lifetime,
            has_iat=rng.random(k) < 0.9,
            has_exp=rng.random(k) < 0.9,
            jti=jti,
        )
        jtis = [j for j in jti.tolist() if j is not None]
    codes = np.array([REASON_CODE[_FORGED_REASONS[r]] for r in range(len(_FORGED_REASONS))], dtype=np.int8)
    endpoint = inj.api.sample(rng, inj.api.probe_templates, n)
    batch = EventBatch.build(t, token, ip, ua, endpoint, codes[reason])
    claimed = [subs[i] for i in parsed.tolist()]
    counts = {r: int((reason == i).sum()) for i, r in enumerate(_FORGED_REASONS)}
    inj.emit(
        rng,
        incident_id,
        "forged_probing",
        batch,
        claimed,
        jtis,
        [inj.text(ip)],
        f"{inj.text(ip)} ({inj.text(ua)}) probed with {n} forged tokens ({style} subjects; "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
        + f") over {(t[-1] - t[0]) / 60:.1f} min from {inj.when(t[0])}",
    )


def revoked_replay(inj: Injector, rng: np.random.Generator, incident_id: str) -> None:
    """A token replayed after it was revoked (e.g. at logout) or after it expired."""
    p = inj.params
    duration = inj.duration(rng, p.revoked_minutes, 60.0)
    leeway = p.leeway_s
    base = inj.base
    variant = "revoked" if rng.random() < 0.6 else "expired"
    revoked_ok = base.tok_last < inj.horizon - 150.0
    expired_ok = inj.tok_exp_rel + leeway < inj.horizon - 90.0
    pool = np.empty(0, dtype=np.int64)
    for v in (variant, "expired" if variant == "revoked" else "revoked"):
        if v == "revoked":
            logged_out = inj.candidates(revoked_ok & ~np.isnan(base.tok_revoked_at))
            pool = logged_out if logged_out.size and rng.random() < 0.5 else inj.candidates(revoked_ok)
        else:
            pool = inj.candidates(expired_ok)
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
            after = max(float(inj.tok_exp_rel[tok]) + leeway, float(base.tok_last[tok])) + 1.0
            s = after + float(rng.uniform(0.0, max(0.0, min(600.0, inj.horizon - 60.0 - after))))
    else:
        variant = "expired"
        s = float(rng.uniform(0.3, 0.6)) * inj.horizon
        tok = inj.synthetic_victim(rng, s, age=p.token_ttl_s + leeway + 60.0)
    s = min(s, inj.horizon - 1.0)
    e = min(s + duration, inj.horizon - 0.001)
    t = inj.times(rng, s, e, float(rng.uniform(*p.revoked_gap_s)), 3)
    sub, _, owner, jti = inj.token_facts(tok)
    inj.used_subs.add(sub)
    ip = inj.attacker_ip(rng, inj.sub_prefixes(sub))
    if owner >= 0 and rng.random() < 0.5:
        ua = int(inj.base.clients.ua[owner])  # the captured request replayed as it was
    else:
        ua = inj.strings.code(str(rng.choice(SCRIPT_UAS)))
    endpoint = inj.api.sample(rng, inj.api.user_templates, t.size, p=inj.api.browser_weights)
    reasons = inj.reasons(tok, t, revoked_at)
    batch = EventBatch.build(t, tok, ip, ua, endpoint, reasons)
    what = f"revoked at {inj.when(revoked_at)}" if variant == "revoked" else "expired"
    inj.emit(
        rng,
        incident_id,
        "revoked_replay",
        batch,
        [inj.text(sub)],
        [jti],
        [inj.text(ip)],
        f"token {jti} of {inj.text(sub)} ({what}) replayed from {inj.text(ip)}; "
        f"{int((reasons == REASON_CODE['revoked']).sum())} revoked + "
        f"{int((reasons == REASON_CODE['expired']).sum())} expired rejections, {inj.scale_note(t)} "
        f"from {inj.when(t[0])}",
    )


def rate_abuse(inj: Injector, rng: np.random.Generator, incident_id: str) -> None:
    """A valid user token hammering the API at tens of requests per second."""
    p = inj.params
    duration = min(inj.duration(rng, p.abuse_seconds), p.token_ttl_s * 0.6)
    base = inj.base
    first = np.maximum(base.tok_first, 0.0)
    room = np.minimum(inj.tok_exp_rel - 5.0, inj.horizon) - first
    live = np.isnan(base.tok_revoked_at)
    pool = inj.candidates(live & (room >= duration + 1.0))
    if pool.size == 0:
        pool = inj.candidates(live & (room >= 5.0))
    if pool.size:
        tok = int(rng.choice(pool))
        lo = float(first[tok])
        hi = max(lo, min(float(inj.tok_exp_rel[tok]) - 5.0, inj.horizon) - duration)
        s = float(rng.uniform(lo, hi))
        duration = min(duration, float(inj.tok_exp_rel[tok]) - 5.0 - s, inj.horizon - 0.001 - s)
        owner_t, owner_ip = inj.token_uses(tok)
        near = owner_ip[int(np.argmin(np.abs(owner_t - s)))] if owner_t.size else -1
    else:
        s = float(rng.uniform(0.05, 0.5)) * inj.horizon
        tok = inj.synthetic_victim(rng, s)
        duration = min(duration, inj.horizon - 0.001 - s)
        near = -1
    sub, _, owner, jti = inj.token_facts(tok)
    inj.used_subs.add(sub)
    rps = float(rng.uniform(*p.abuse_rps))
    mode = str(rng.choice(["own-network-script", "own-network-same-client", "elsewhere"], p=[0.5, 0.3, 0.2]))
    if mode == "elsewhere" or near < 0:
        mode = "elsewhere"
        ip = inj.attacker_ip(rng, inj.sub_prefixes(sub))
        ua = inj.strings.code(str(rng.choice(SCRIPT_UAS)))
    else:
        ip = int(near)
        same = mode == "own-network-same-client" and owner >= 0
        ua = int(inj.base.clients.ua[owner]) if same else inj.strings.code(str(rng.choice(SCRIPT_UAS)))
    n = max(int(rng.poisson(rps * duration)), 10)
    t = np.sort(s + rng.uniform(0.0, max(duration, 0.01), n))
    t[0] = s
    template = [("GET", "/v1/products/{id}"), ("GET", "/v1/orders/{id}")][int(rng.integers(0, 2))]
    base_ep = inj.api.endpoint(*template)
    start_id = int(rng.integers(0, inj.api.count(*template)))
    endpoint = base_ep + (start_id + np.arange(n)) % inj.api.count(*template)  # walking the id space
    batch = EventBatch.build(t, tok, ip, ua, endpoint, inj.reasons(tok, t))
    inj.emit(
        rng,
        incident_id,
        "rate_abuse",
        batch,
        [inj.text(sub)],
        [jti],
        [inj.text(ip)],
        f"token {jti} of {inj.text(sub)} hammered {template[0]} {template[1]} at ~{rps:.0f} req/s "
        f"({mode}, {inj.text(ip)}, {inj.text(ua)}); {inj.scale_note(t)} from {inj.when(t[0])}",
    )


def low_and_slow(inj: Injector, rng: np.random.Generator, incident_id: str) -> None:
    """A victim's subject used from a new network at one request every 30-120 s, for a long time.

    With tokens shorter-lived than the campaign the attacker holds a stolen refresh token and mints
    successive access tokens (new jtis, same sub and client); otherwise one stolen access token."""
    p = inj.params
    duration = float(rng.uniform(*p.slow_share)) * inj.horizon
    interval = float(rng.uniform(*p.slow_interval_s))
    base = inj.base
    users = np.flatnonzero((base.clients.kind == KIND_BROWSER) | (base.clients.kind == KIND_MOBILE))
    fresh = [c for c in users.tolist() if int(base.clients.sub[c]) not in inj.used_subs]
    pick_from = fresh or users.tolist()
    single = p.token_ttl_s >= duration + 60.0
    stolen = -1
    if single:
        room = np.minimum(inj.tok_exp_rel, inj.horizon) - np.maximum(base.tok_first, 0.0)
        pool = inj.candidates(np.isnan(base.tok_revoked_at) & (room >= duration + 70.0))
        if pool.size:
            stolen = int(rng.choice(pool))
    if stolen >= 0:
        sub, client_id, owner, _ = inj.token_facts(stolen)
        s = max(float(base.tok_first[stolen]), 0.0) + float(rng.uniform(5.0, 60.0))
        duration = min(duration, float(inj.tok_exp_rel[stolen]) - 5.0 - s)
    elif pick_from:
        owner = int(rng.choice(pick_from))
        sub, client_id = int(base.clients.sub[owner]), int(base.clients.client_id[owner])
        s = float(rng.uniform(0.0, max(inj.horizon - duration, 0.0)))
    else:
        owner = -1
        sub, client_id = inj.strings.code(f"user-v{len(inj.incidents) + 1:04d}"), inj.strings.code("web-spa")
        s = float(rng.uniform(0.0, max(inj.horizon - duration, 0.0)))
    inj.used_subs.add(sub)
    e = min(s + duration, inj.horizon - 0.001)
    gaps = interval * rng.uniform(0.7, 1.3, int(duration / (interval * 0.7)) + 3)
    t = s + np.concatenate([[0.0], np.cumsum(gaps)])
    t = t[t <= e]
    if t.size < 3:  # a short simulation: keep the pace as far as it goes, but at least three uses
        t = np.minimum(s + interval * np.arange(3), inj.horizon - 0.001)
    ip = inj.attacker_ip(rng, inj.sub_prefixes(sub))
    if owner >= 0 and rng.random() < 0.5:
        ua = int(base.clients.ua[owner])  # mimics the victim's client
    else:
        ua = inj.other_ua(rng, owner)
    if stolen >= 0:
        token = np.full(t.size, stolen, dtype=np.int64)
        reasons = inj.reasons(stolen, t)
        jtis = [inj.tok_jti[stolen]]
    else:
        token, reasons, jtis = inj.mint_chain(rng, t, sub, client_id)
    quiet_reads = [("GET", "/v1/orders/{id}"), ("GET", "/v1/profile"), ("GET", "/v1/orders")]
    endpoint = inj.api.sample(rng, quiet_reads, t.size)
    batch = EventBatch.build(t, token, ip, ua, endpoint, reasons)
    how = "one stolen access token" if stolen >= 0 else f"{len(jtis)} tokens minted with a stolen refresh token"
    inj.emit(
        rng,
        incident_id,
        "low_and_slow",
        batch,
        [inj.text(sub)],
        jtis,
        [inj.text(ip)],
        f"{inj.text(sub)} used from new network {inj.text(ip)} ({inj.text(ua)}) every ~{interval:.0f} s "
        f"with {how}; {inj.scale_note(t)} from {inj.when(t[0])}",
    )


THREAT_INJECTORS: dict[str, Callable[[Injector, np.random.Generator, str], None]] = {
    "stolen_replay": stolen_replay,
    "token_sharing": token_sharing,
    "forged_probing": forged_probing,
    "revoked_replay": revoked_replay,
    "rate_abuse": rate_abuse,
    "low_and_slow": low_and_slow,
}


def inject(injector: Injector) -> None:
    """Every configured incident, threat by threat; each one from its own random stream."""
    p = injector.params
    for threat in p.threats:
        for k in range(p.incidents_per_threat):
            incident_id = f"{threat}-{k + 1:02d}"
            THREAT_INJECTORS[threat](injector, stream(p.seed, f"incident:{incident_id}"), incident_id)


__all__ = ["THREAT_INJECTORS", "inject"]
