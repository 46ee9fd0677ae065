"""Who is out there: the clients of a simulated world — browser users (a home address or an office NAT), mobile
apps (some of them the browser users' phones) and service accounts (fixed data-centre egress addresses) — with
their subjects, user agents and networks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.simulate.model import SimulationParams
from pipeline.simulate.tables import KIND_BROWSER, KIND_MOBILE, KIND_SERVICE
from pipeline.simulate.world import (
    SERVICE_UAS,
    AddressSpace,
    Strings,
    browser_family,
    browser_ua,
    mobile_ua,
    service_name,
)


@dataclass
class Clients:
    """Per-client attributes, indexed by a global client id (browsers, then mobile, then services)."""

    kind: np.ndarray  # int8 KIND_*
    sub: np.ndarray  # string codes
    client_id: np.ndarray
    ua: np.ndarray
    home_ip: np.ndarray  # home / office NAT / first egress IP
    family: list[str]  # browser family, "app" or "service"

    def __len__(self) -> int:
        return int(self.kind.shape[0])


def population(
    rng: np.random.Generator, params: SimulationParams, strings: Strings, addresses: AddressSpace
) -> tuple[Clients, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Who is out there: subjects, user agents, home networks, offices, carriers, service egress IPs."""
    b, m, s = params.browsers, params.mobile, params.services
    # Browsers: a subject, one browser (family + version), a home address or an office NAT.
    browser_subs = [f"user-{i:05d}" for i in range(1, b + 1)]
    families = [browser_family(rng) for _ in range(b)]
    browser_uas = [browser_ua(rng, f) for f in families]
    office_ips = addresses.random("office", params.offices, rng) if params.offices else np.empty(0, dtype=np.int32)
    residential = addresses.random("residential", b + m, rng)
    office_member = np.full(b, -1, dtype=np.int64)
    if params.offices:
        weights = 1.0 / np.arange(1, params.offices + 1) ** 0.8
        member = rng.random(b) < params.office_share
        office_member[member] = rng.choice(params.offices, size=int(member.sum()), p=weights / weights.sum())
    home = np.where(office_member >= 0, office_ips[np.maximum(office_member, 0)] if params.offices else 0, 0)
    home = np.where(office_member >= 0, home, residential[:b]).astype(np.int32)

    # Mobile: some are the browser users on their phones (same subject, home Wi-Fi at their home).
    same = min(b, round(m * params.mobile_same_person))
    twins = rng.choice(b, size=same, replace=False) if same else np.empty(0, dtype=np.int64)
    mobile_subs = [browser_subs[i] for i in twins.tolist()] + [f"user-{b + i:05d}" for i in range(1, m - same + 1)]
    mobile_home = residential[b : b + m].copy()
    for j, i in enumerate(twins.tolist()):
        if office_member[i] < 0:
            mobile_home[j] = home[i]
    ios = rng.random(m) < 0.55
    mobile_uas = [mobile_ua(rng, bool(x)) for x in ios]
    mobile_clients = ["mobile-ios" if x else "mobile-android" for x in ios]
    carrier = rng.integers(0, len(addresses.carrier_pools), m)

    # Services: fixed data-centre egress addresses, 2-4 per service, in one /24 or across two regions.
    service_subs = [service_name(i) for i in range(s)]
    service_uas = [str(rng.choice(SERVICE_UAS)) for _ in range(s)]
    service_ips: list[np.ndarray] = []
    dc = addresses.prefixes["datacenter"]
    for _ in range(s):
        k = int(rng.integers(2, 5))
        if rng.random() < params.service_multi_region_share:
            nets = rng.choice(dc, size=2, replace=False)
            regions = [nets[i % 2] for i in range(k)]
        else:
            regions = [rng.choice(dc)] * k
        third = int(rng.integers(0, 256))
        hosts = rng.choice(np.arange(10, 250), size=k, replace=False)
        service_ips.append(
            np.array(
                [addresses.address(int(r), (third << 8) | int(h)) for r, h in zip(regions, hosts, strict=True)],
                dtype=np.int32,
            )
        )

    kind = np.concatenate([np.full(b, KIND_BROWSER), np.full(m, KIND_MOBILE), np.full(s, KIND_SERVICE)]).astype(np.int8)
    clients = Clients(
        kind=kind,
        sub=strings.codes(browser_subs + mobile_subs + service_subs),
        client_id=strings.codes(["web-spa"] * b + mobile_clients + service_subs),
        ua=strings.codes(browser_uas + mobile_uas + service_uas),
        home_ip=np.concatenate([home, mobile_home, np.array([ips[0] for ips in service_ips], dtype=np.int32)]).astype(
            np.int32
        ),
        family=families + ["app"] * m + ["service"] * s,
    )
    return clients, office_member, carrier, office_ips, service_ips


def ua_family_of(user_agent: str) -> str:
    """The browser family of one of :func:`browser_ua`'s user agents (Edge before Chrome: Edge says both)."""
    for family in ("Edge", "Firefox", "Chrome"):
        if ("Edg/" if family == "Edge" else family) in user_agent:
            return family
    return "Safari"


__all__ = ["Clients", "population", "ua_family_of"]
