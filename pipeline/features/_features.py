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
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from pipeline.features.baselines import Baselines
from pipeline.networks import RENTED_KINDS, Network
from pipeline.windows import (
    FORGED,
    OTHER_REJECTED,
    RETURNS,
    STALE,
    SWITCHES,
    TOTAL,
    EntityWindow,
    WindowSpec,
    prefix24,
)

#: Address -> the network it is in (``DetectionEngine.network_of``: an ASN database, else the /16 prefix).
NetworkOf = Callable[[str], Network]

FEATURES: dict[str, tuple[str, ...]] = {
    "jti": (
        "events",
        "rate_vs_client",
        "distinct_ips",
        "distinct_networks",
        "distinct_prefix24",
        "distinct_ua_families",
        "network_switches",
        "network_returns",
        "novel_network_share",
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
        "distinct_networks",
        "distinct_user_agents",
        "network_switches",
        "novel_network_share",
        "novel_ua_share",
        "stale_rejections",
        "other_rejections",
        "burstiness",
        "parallel_sessions",
    ),
    "ip": (
        "events",
        "distinct_subjects",
        "subjects_vs_own",
        "user_agents_per_subject",
        "forged_per_subject",
        "forged_share",
        "stale_per_subject",
        "other_per_subject",
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
    "distinct_networks": "distinct networks (autonomous systems with an IP database, else /16 prefixes)",
    "distinct_prefix24": "distinct /24 networks",
    "distinct_user_agents": "distinct user agents",
    "distinct_ua_families": "distinct client software families (a token belongs to one client)",
    "distinct_tokens": "distinct tokens in use at once",
    "distinct_subjects": "distinct subjects seen from this IP",
    "subjects_vs_own": "subjects compared with this IP's usual number",
    "network_switches": "switches between networks (alternating use from two places)",
    "network_returns": "returns to a network within 30 s of leaving it (in use from two networks at once)",
    "novel_network_share": "share of networks never seen for this subject",
    "novel_ua_share": "share of client software never seen for this subject",
    "forged_rejections": "forged or malformed tokens presented (log scale)",
    "forged_per_subject": "forged or malformed tokens per user behind this IP (log scale)",
    "user_agents_per_subject": "distinct user agents per user behind this IP",
    "stale_per_subject": "expired, revoked or replayed tokens per user behind this IP (log scale)",
    "other_per_subject": "other rejections per user behind this IP (log scale)",
    "forged_share": "share of requests with forged or malformed tokens",
    "stale_rejections": "expired, revoked or replayed tokens presented (log scale)",
    "other_rejections": "other rejections (log scale)",
    "token_age_fraction": "age of the token at use, as a share of its lifetime",
    "novel_ip": "IP never seen in the baseline",
    "burstiness": "busiest bucket against the average bucket",
    "parallel_sessions": (
        "tokens of one user client in use at the same time from different networks, not as a second device: one "
        "from a data centre or proxy, with the other's very user agent, or used by a tool"
    ),
}

#: Features whose value is log1p of a count; reasons show the count itself.
LOG_SCALED = frozenset(
    {
        "events",
        "forged_rejections",
        "forged_per_subject",
        "stale_per_subject",
        "other_per_subject",
        "stale_rejections",
        "other_rejections",
        "network_switches",
        "network_returns",
    }
)


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


def _novel_share(observed: list[str], known: frozenset[str] | set[str] | None) -> float:
    if not observed or known is None:
        return 0.0
    return sum(1 for value in observed if value not in known) / len(observed)


#: Two tokens of one client count as parallel sessions only when each was still used this long after the
#: other appeared — a page's in-flight calls that still carry the old token after a refresh do not count.
PARALLEL_MIN_OVERLAP_S = 30.0


@dataclass(frozen=True, slots=True)
class Session:
    """One token of a subject as the subject's window sees it: its client, use span, networks (keys and
    kinds) and client software families."""

    client: str
    first_ts: float
    last_ts: float
    networks: frozenset[str]
    kinds: frozenset[str] = frozenset()
    families: frozenset[str] = frozenset()
    user_agents: frozenset[str] = frozenset()


def parallel_sessions(sessions: list[Session], sub: str) -> int:
    """Tokens of one *user* client in use at the same time from disjoint networks, with evidence of theft.

    One client of one user holds one session at a time: refreshing replaces the token, a phone that
    changes networks keeps its token. Two live token chains of the same client from two networks is
    what a stolen refresh token looks like (the attacker mints their own access tokens) — and also what one
    person's app signed in on two devices looks like (a laptop at the office, a tablet on a hotspot or in a
    café). So a pair counts only with evidence of theft (:func:`corroborated`). Machine tokens are left
    out: under RFC 9068 §2.2 a client-credentials token's ``sub`` is the client itself, and service replicas
    legitimately hold one token each.
    """
    found: set[int] = set()
    for i, a in enumerate(sessions):
        if a.client == sub:
            continue
        for j in range(i + 1, len(sessions)):
            b = sessions[j]
            if (
                b.client == a.client
                and min(a.last_ts, b.last_ts) - max(a.first_ts, b.first_ts) >= PARALLEL_MIN_OVERLAP_S
                and not (a.networks & b.networks)
                and corroborated(a, b)
            ):
                found.update((i, j))
    return len(found)


#: Network kinds where a person's own second device is not found: data centres, anonymising proxy exits.
THEFT_NETWORK_KINDS = RENTED_KINDS - {"vpn"}
#: Client software families of web browsers (:func:`ua_family`): a second device of a web app is another browser.
#: A bare ``Mozilla/5.0`` with no engine token is not one (no browser sends that alone; a script hiding may).
BROWSER_FAMILIES = frozenset({"Edge", "Opera", "Firefox", "Chrome", "Safari"})
#: The family of a session that sent no user agent at all: no browser or app does that, a script may.
NO_USER_AGENT = "(no user agent)"


def corroborated(a: Session, b: Session) -> bool:
    """Evidence that two parallel sessions of one client are not one person's two devices.

    - one comes from a data centre or an anonymising proxy (:data:`THEFT_NETWORK_KINDS`, known only with an IP
      database);
    - both send the very same user agent, byte for byte, from two networks at once: a thief who copied the
      victim's to blend in (two devices of one person differ — model, OS or browser version);
    - one is a script or tool (not a browser, not the app) presenting the client's tokens.

    Not evidence on their own (docs/detection.md has the measurements): a network or client family new for the
    subject — a second device in a café or on a hotspot is exactly that; and a VPN — people use them, with
    split tunnels, on their own devices.
    """
    if (a.kinds | b.kinds) & THEFT_NETWORK_KINDS:
        return True
    if a.user_agents & b.user_agents:
        return True
    differing = a.families ^ b.families
    return bool(differing) and not differing <= BROWSER_FAMILIES and bool(a.families) and bool(b.families)


def window_summary(window: EntityWindow, spec: WindowSpec, now: float) -> tuple[list[int], float, float]:
    """Row sums over the window ending at ``now``, the burstiness and the window's start."""
    now_bucket = int(now // spec.bucket_s)
    sums, busiest, active = window.window_counts(now_bucket, spec.buckets)
    mean = sums[TOTAL] / active if active else 0.0
    burstiness = busiest / mean if mean else 0.0
    return sums, burstiness, (now_bucket - spec.buckets + 1) * spec.bucket_s


def token_features(
    window: EntityWindow, spec: WindowSpec, now: float, baselines: Baselines, network_of: NetworkOf
) -> list[float]:
    sums, burstiness, _ = window_summary(window, spec, now)
    horizon = now - spec.length_s
    ips = window.ips_within(horizon)
    uas = window.uas_within(horizon)
    sub = window.owner
    prefixes = {network_of(ip).key for ip in ips}
    lifetime = window.lifetime
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
        math.log1p(sums[RETURNS]),
        _novel_share(sorted(prefixes), baselines.known_prefixes(sub)),
        _novel_share(families, baselines.known_ua_families(sub)),
        math.log1p(sums[STALE]),
        math.log1p(sums[OTHER_REJECTED]),
        min(age, 10.0),
        burstiness,
    ]


def subject_features(
    window: EntityWindow,
    spec: WindowSpec,
    now: float,
    baselines: Baselines,
    sub: str,
    network_of: NetworkOf,
    sessions: list[Session] | None = None,
) -> list[float]:
    """``sessions``: the subject's tokens in the window (see :func:`parallel_sessions`)."""
    sums, burstiness, _ = window_summary(window, spec, now)
    horizon = now - spec.length_s
    ips = window.ips_within(horizon)
    uas = window.uas_within(horizon)
    prefixes = {network_of(ip).key for ip in ips}
    known_networks = baselines.known_prefixes(sub)
    known_families = baselines.known_ua_families(sub)
    return [
        math.log1p(sums[TOTAL]),
        sums[TOTAL] / rate if (rate := baselines.subject_rate(sub)) else 1.0,
        float(len(window.others_within(horizon))),
        float(len(ips)),
        float(len(prefixes)),
        float(len(uas)),
        math.log1p(sums[SWITCHES]),
        _novel_share(sorted(prefixes), known_networks),
        _novel_share(sorted({ua_family(ua) for ua in uas}), known_families),
        math.log1p(sums[STALE]),
        math.log1p(sums[OTHER_REJECTED]),
        burstiness,
        float(parallel_sessions(sessions, sub)) if sessions and len(sessions) > 1 else 0.0,
    ]


def ip_features(window: EntityWindow, spec: WindowSpec, now: float, baselines: Baselines, ip: str) -> list[float]:
    """Counts per user behind the address: an office NAT is many ordinary users, not one busy attacker.

    Buggy apps behind a NAT ("Bearer undefined"), clock-skewed laptops and lazy clients add up with the
    number of users; a prober's forged tokens carry no trusted subject, so for it these are plain counts.
    """
    sums, burstiness, _ = window_summary(window, spec, now)
    horizon = now - spec.length_s
    subjects = len(window.others_within(horizon))
    users = max(subjects, 1)
    total = sums[TOTAL]
    return [
        math.log1p(total),
        float(subjects),
        subjects / usual if (usual := baselines.ip_subjects(ip)) else 1.0,
        len(window.uas_within(horizon)) / users,
        math.log1p(sums[FORGED] / users),
        sums[FORGED] / total if total else 0.0,
        math.log1p(sums[STALE] / users),
        math.log1p(sums[OTHER_REJECTED] / users),
        0.0 if baselines.knows_ip(ip) else 1.0,
        burstiness,
    ]


#: What the public module re-exports (from this source, or from its compiled twin).
__all__ = [
    "BROWSER_FAMILIES",
    "DESCRIPTIONS",
    "FEATURES",
    "LOG_SCALED",
    "NO_USER_AGENT",
    "PARALLEL_MIN_OVERLAP_S",
    "THEFT_NETWORK_KINDS",
    "NetworkOf",
    "Session",
    "corroborated",
    "ip_features",
    "parallel_sessions",
    "subject_features",
    "token_features",
    "ua_family",
    "window_summary",
]
