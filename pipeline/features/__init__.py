"""Behavioural features of a window — one definition for training, streaming and batch. Pure, no I/O.

Features describe behaviour, never identity: how much, from how many places, how new those places are
for this subject, how the validator answered, how old the token is. Rates are judged against the
entity's own baseline where there is one (a subject's usual volume, a client's usual volume per token,
an IP's usual number of users), so a batch service is not judged as a browser, nor an office NAT as a
botnet.

``FEATURES[entity_type]`` is the ordered list of feature names — the model stores it and refuses to
score vectors built from another list.
"""

from __future__ import annotations

import math
from functools import lru_cache

from pipeline.features.baselines import Baselines
from pipeline.windows import (
    FORGED,
    OTHER_REJECTED,
    STALE,
    SWITCHES,
    TOTAL,
    EntityWindow,
    WindowSpec,
    prefix16,
    prefix24,
)

FEATURES: dict[str, tuple[str, ...]] = {
    "jti": (
        "events",
        "rate_vs_client",
        "distinct_ips",
        "distinct_prefix16",
        "distinct_prefix24",
        "distinct_ua_families",
        "prefix_switches",
        "novel_prefix_share",
        "novel_ua_share",
        "stale_rejections",
        "other_rejections",
        "token_age_fraction",
        "burstiness",
    ),
    "sub": (
        "events",
        "rate_vs_own",
        "distinct_tokens",
        "distinct_ips",
        "distinct_prefix16",
        "distinct_user_agents",
        "prefix_switches",
        "novel_prefix_share",
        "novel_ua_share",
        "stale_rejections",
        "other_rejections",
        "burstiness",
    ),
    "ip": (
        "events",
        "distinct_subjects",
        "subjects_vs_own",
        "distinct_user_agents",
        "forged_rejections",
        "forged_share",
        "stale_rejections",
        "other_rejections",
        "novel_ip",
        "burstiness",
    ),
}

#: Human descriptions, for alert reasons and the docs.
DESCRIPTIONS: dict[str, str] = {
    "events": "uses in the window (log scale)",
    "rate_vs_client": "uses compared with a typical token of the same client",
    "rate_vs_own": "uses compared with this subject's usual volume",
    "distinct_ips": "distinct client IPs",
    "distinct_prefix16": "distinct /16 networks",
    "distinct_prefix24": "distinct /24 networks",
    "distinct_user_agents": "distinct user agents",
    "distinct_ua_families": "distinct client software families (a token belongs to one client)",
    "distinct_tokens": "distinct tokens in use at once",
    "distinct_subjects": "distinct subjects seen from this IP",
    "subjects_vs_own": "subjects compared with this IP's usual number",
    "prefix_switches": "switches between networks (alternating use from two places)",
    "novel_prefix_share": "share of networks never seen for this subject",
    "novel_ua_share": "share of client software never seen for this subject",
    "forged_rejections": "forged or malformed tokens presented (log scale)",
    "forged_share": "share of requests with forged or malformed tokens",
    "stale_rejections": "expired, revoked or replayed tokens presented (log scale)",
    "other_rejections": "other rejections (log scale)",
    "token_age_fraction": "age of the token at use, as a share of its lifetime",
    "novel_ip": "IP never seen in the baseline",
    "burstiness": "busiest bucket against the average bucket",
}

#: Features whose value is log1p of a count; reasons show the count itself.
LOG_SCALED = frozenset({"events", "forged_rejections", "stale_rejections", "other_rejections", "prefix_switches"})


@lru_cache(maxsize=4096)
def ua_family(user_agent: str) -> str:
    """A coarse client-software family: browser name, app name, or HTTP library — never the version."""
    ua = user_agent.strip()
    if ua.startswith("Mozilla/"):
        for token, family in (
            ("Edg/", "Edge"),
            ("OPR/", "Opera"),
            ("Firefox/", "Firefox"),
            ("Chrome/", "Chrome"),
            ("Safari/", "Safari"),
        ):
            if token in ua:
                return family
        return "Mozilla"
    head = ua.split("/", 1)[0].split(" ", 1)[0]
    return head[:40] or "unknown"


def _distinct(values: dict[str, float] | None, horizon: float) -> list[str]:
    return [value for value, seen in values.items() if seen >= horizon] if values else []


def _novel_share(observed: list[str], known: frozenset[str] | set[str] | None) -> float:
    if not observed or known is None:
        return 0.0
    return sum(1 for value in observed if value not in known) / len(observed)


def window_summary(window: EntityWindow, spec: WindowSpec, now: float) -> tuple[list[int], float, float]:
    """Row sums over the window ending at ``now``, the burstiness and the window's start."""
    now_bucket = int(now // spec.bucket_s)
    sums, busiest, active = window.window_counts(now_bucket, spec.buckets)
    mean = sums[TOTAL] / active if active else 0.0
    burstiness = busiest / mean if mean else 0.0
    return sums, burstiness, (now_bucket - spec.buckets + 1) * spec.bucket_s


def token_features(window: EntityWindow, spec: WindowSpec, now: float, baselines: Baselines) -> list[float]:
    sums, burstiness, _ = window_summary(window, spec, now)
    horizon = now - spec.length_s
    ips = _distinct(window.ips, horizon)
    uas = _distinct(window.uas, horizon)
    sub = window.owner
    prefixes = {prefix16(ip) for ip in ips}
    lifetime = window.exp - window.iat
    age = (window.max_age_s / lifetime) if lifetime > 0 else 0.0
    client_rate = baselines.client_rate(baselines.client_of(sub))
    families = sorted({ua_family(ua) for ua in uas})
    return [
        math.log1p(sums[TOTAL]),
        sums[TOTAL] / client_rate if client_rate else 1.0,
        float(len(ips)),
        float(len(prefixes)),
        float(len({prefix24(ip) for ip in ips})),
        float(len(families)),
        math.log1p(sums[SWITCHES]),
        _novel_share(sorted(prefixes), baselines.known_prefixes(sub)),
        _novel_share(families, baselines.known_ua_families(sub)),
        math.log1p(sums[STALE]),
        math.log1p(sums[OTHER_REJECTED]),
        min(age, 10.0),
        burstiness,
    ]


def subject_features(window: EntityWindow, spec: WindowSpec, now: float, baselines: Baselines, sub: str) -> list[float]:
    sums, burstiness, _ = window_summary(window, spec, now)
    horizon = now - spec.length_s
    ips = _distinct(window.ips, horizon)
    uas = _distinct(window.uas, horizon)
    prefixes = {prefix16(ip) for ip in ips}
    return [
        math.log1p(sums[TOTAL]),
        sums[TOTAL] / rate if (rate := baselines.subject_rate(sub)) else 1.0,
        float(len(_distinct(window.others, horizon))),
        float(len(ips)),
        float(len(prefixes)),
        float(len(uas)),
        math.log1p(sums[SWITCHES]),
        _novel_share(sorted(prefixes), baselines.known_prefixes(sub)),
        _novel_share(sorted({ua_family(ua) for ua in uas}), baselines.known_ua_families(sub)),
        math.log1p(sums[STALE]),
        math.log1p(sums[OTHER_REJECTED]),
        burstiness,
    ]


def ip_features(window: EntityWindow, spec: WindowSpec, now: float, baselines: Baselines, ip: str) -> list[float]:
    sums, burstiness, _ = window_summary(window, spec, now)
    horizon = now - spec.length_s
    subjects = len(_distinct(window.others, horizon))
    total = sums[TOTAL]
    return [
        math.log1p(total),
        float(subjects),
        subjects / usual if (usual := baselines.ip_subjects(ip)) else 1.0,
        float(len(_distinct(window.uas, horizon))),
        math.log1p(sums[FORGED]),
        sums[FORGED] / total if total else 0.0,
        math.log1p(sums[STALE]),
        math.log1p(sums[OTHER_REJECTED]),
        0.0 if baselines.knows_ip(ip) else 1.0,
        burstiness,
    ]
