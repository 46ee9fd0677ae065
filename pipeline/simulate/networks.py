"""Who owns the simulated world's networks: every /16 belongs to an autonomous system, consistently.

So that ``--ip-db`` features can be learned and measured on simulated traffic, the world's address space comes
with the table an ASN database would hold (:attr:`pipeline.simulate.Simulation.networks`, written as a MaxMind DB
by :func:`pipeline.simulate.io.write_ip_db`):

* **residential** /16s: a few broadband ISPs (kind ``residential``), each owning several /16s;
* **carrier** /16s: one mobile operator per CGNAT pool (kind ``mobile``) — a pool's two /16s share its ASN
  (two pools sharing a /16, which a small draw can give, are one operator: an MVNO on its host's network);
* **office** /16s: a business ISP's (kind ``business``), and inside them each office its own business ASN for
  the /24s its NAT and egress pool leave from (a /32 where another office leaves from the same /24) — so an
  office's egress pool, spread over several /16s, is one network;
* **datacenter** /16s (services' egress): a few clouds, **hosting** /16s (attackers' VPSs): hosting providers
  (both kind ``hosting``); **vpn** /16s: commercial VPN providers (kind ``vpn``);
* **proxy** /16s (residential-proxy exits): residential ISPs, kind ``residential`` — an ASN database cannot tell
  a residential proxy from a home. About a third of them are in the *same* ISPs as the benign homes, the rest in
  ISPs no benign user of the world is on;
* IPv6: every /16 comes with ``2a02:<the /16 as 16 bits>::/32`` in the same AS (the prefix a dual-stack home's
  /64 is drawn from, :func:`pipeline.simulate.lookalikes.ipv6_privacy`), so a home's IPv4 and IPv6 addresses are
  in one ISP's network; an office's /64 is in the office's own AS.

The assignment draws from a random stream of its own (``networks``): the events a seed generates are the same
with or without it. ASNs are private-use numbers (64512 onwards, RFC 6996) and the organisations are made up.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.simulate.world import AddressSpace, Strings, stream

#: The columns of :attr:`pipeline.simulate.Simulation.networks`.
NETWORK_COLUMNS: tuple[str, ...] = ("network", "asn", "org", "kind")

RESIDENTIAL_ISPS = ("Northwind Broadband", "Bluewave Cable", "Cedar Fiber", "Harbor DSL", "Summit Telecom",
                    "Riverline Internet")  # fmt: skip
#: Where the other two thirds of residential-proxy exits are: ISPs none of the world's benign users is on.
PROXY_ISPS = ("Savanna Telecom", "Monsoon Broadband", "Pampas Net", "Lagoa Fibra")
CARRIERS = ("Aurora Mobile", "Pulse Cellular", "Vega Wireless", "Orbit Mobile")
BUSINESS_ISP = "Metro Business Transit"
CLOUDS = ("Stratus Cloud", "Cumulus Compute", "Nimbus Cloud Services")
HOSTERS = ("Bitrack Hosting", "CheapVPS", "Ironcore Servers", "Netforge Hosting", "Pixel Datacenters")
VPNS = ("Veil VPN", "Hideaway VPN", "Ghostline VPN")
#: Share of the residential-proxy /16s in the benign users' own ISPs.
PROXY_IN_BENIGN_ISPS = 1 / 3
_FIRST_ASN = 64512  # RFC 6996 private use: 64512-65534, then 4200000000-4294967294
_IPV6_BASE = 0x2A02 << 112


@dataclass(frozen=True)
class AutonomousSystem:
    asn: int
    org: str
    kind: str


class _Numbers:
    def __init__(self) -> None:
        self.next = _FIRST_ASN

    def __call__(self, org: str, kind: str) -> AutonomousSystem:
        asn = self.next
        self.next = asn + 1 if asn + 1 <= 65534 else max(asn + 1, 4_200_000_000)
        return AutonomousSystem(asn, org, kind)


def _v4(prefix16: int) -> str:
    return f"{prefix16 >> 8}.{prefix16 & 0xFF}.0.0/16"


def _v6(prefix16: int) -> str:
    return str(ipaddress.IPv6Network((_IPV6_BASE | (prefix16 << 96), 32)))


def _spread(
    rng: np.random.Generator, prefixes: np.ndarray, systems: list[AutonomousSystem]
) -> dict[int, AutonomousSystem]:
    """The /16s dealt out to the systems in a random order, round-robin (each gets its share)."""
    order = rng.permutation(np.asarray(prefixes, dtype=np.int64))
    return {int(p): systems[i % len(systems)] for i, p in enumerate(order.tolist())}


def _carriers(addresses: AddressSpace, number: _Numbers) -> dict[int, AutonomousSystem]:
    """One operator per carrier pool, pools sharing a /16 merged (so every pool's /16s share one ASN)."""
    groups: list[set[int]] = []
    for pool in addresses.carrier_pools:
        nets = {addresses.prefix16[int(code)] for code in pool.tolist()}
        touching = [g for g in groups if g & nets]
        for g in touching:
            groups.remove(g)
            nets |= g
        groups.append(nets)
    groups.sort(key=min)
    unpooled = sorted(set(addresses.prefixes["carrier"].tolist()) - set().union(*groups))
    if unpooled:  # every carrier /16 is in a pool today; were one not, it goes to the first operator
        if groups:
            groups[0] |= set(unpooled)
        else:
            groups.append(set(unpooled))
    out: dict[int, AutonomousSystem] = {}
    for i, nets in enumerate(groups):
        system = number(CARRIERS[i % len(CARRIERS)] + (f" {i // len(CARRIERS) + 1}" if i >= len(CARRIERS) else ""),
                        "mobile")  # fmt: skip
        out.update(dict.fromkeys(nets, system))
    return out


def network_table(
    seed: int,
    addresses: AddressSpace,
    strings: Strings,
    office_pools: list[np.ndarray],
    ipv6_homes: dict[int, int],
) -> pd.DataFrame:
    """The world's networks, one row per CIDR (``network``, ``asn``, ``org``, ``kind``): every /16 of the address
    space and its IPv6 /32, then the offices' own blocks and /64s (more specific: they win in a lookup)."""
    rng = stream(seed, "networks")
    number = _Numbers()
    residential = [number(name, "residential") for name in RESIDENTIAL_ISPS]
    proxies = [number(name, "residential") for name in PROXY_ISPS]
    business = number(BUSINESS_ISP, "business")
    clouds = [number(name, "hosting") for name in CLOUDS]
    hosters = [number(name, "hosting") for name in HOSTERS]
    vpns = [number(name, "vpn") for name in VPNS]
    owner: dict[int, AutonomousSystem] = {}
    owner.update(_spread(rng, addresses.prefixes["residential"], residential))
    proxy = rng.permutation(np.asarray(addresses.prefixes["proxy"], dtype=np.int64))
    in_benign = round(len(proxy) * PROXY_IN_BENIGN_ISPS)
    owner.update(_spread(rng, proxy[:in_benign], residential))
    owner.update(_spread(rng, proxy[in_benign:], proxies))
    owner.update(_carriers(addresses, number))
    owner.update(dict.fromkeys(addresses.prefixes["office"].tolist(), business))
    owner.update(_spread(rng, addresses.prefixes["datacenter"], clouds))
    owner.update(_spread(rng, addresses.prefixes["hosting"], hosters))
    owner.update(_spread(rng, addresses.prefixes["vpn"], vpns))

    rows: list[tuple[str, AutonomousSystem]] = []
    for prefix in sorted(owner):
        rows.append((_v4(prefix), owner[prefix]))
    for prefix in sorted(owner):
        rows.append((_v6(prefix), owner[prefix]))
    rows += _offices(addresses, strings, office_pools, ipv6_homes, number)
    return pd.DataFrame(
        {
            "network": pd.Series([cidr for cidr, _ in rows], dtype=object),
            "asn": pd.Series([s.asn for _, s in rows], dtype=np.int64),
            "org": pd.Series([s.org for _, s in rows], dtype=object),
            "kind": pd.Series([s.kind for _, s in rows], dtype=object),
        }
    )[list(NETWORK_COLUMNS)]


def _offices(
    addresses: AddressSpace,
    strings: Strings,
    office_pools: list[np.ndarray],
    ipv6_homes: dict[int, int],
    number: _Numbers,
) -> list[tuple[str, AutonomousSystem]]:
    """Each office's own AS: the /24s of its addresses (/32s in a /24 another office also leaves from), and the
    /64 of its dual-stack NAT."""
    systems = [number(f"Office {i + 1} Ltd", "business") for i in range(len(office_pools))]
    users: dict[str, set[int]] = defaultdict(set)  # /24 -> offices leaving from it
    for i, pool in enumerate(office_pools):
        for code in pool.tolist():
            users[strings.values[code].rsplit(".", 1)[0]].add(i)
    rows: dict[str, AutonomousSystem] = {}
    office_of: dict[int, int] = {}  # address code -> office (the first that has it)
    for i, pool in enumerate(office_pools):
        for code in pool.tolist():
            office_of.setdefault(code, i)
            text = strings.values[code]
            block = text.rsplit(".", 1)[0]
            cidr = f"{block}.0/24" if len(users[block]) == 1 else f"{text}/32"
            rows.setdefault(cidr, systems[office_of[code]])
    for home, network in sorted(ipv6_homes.items()):
        if home in office_of:
            rows.setdefault(str(ipaddress.IPv6Network((network, 64))), systems[office_of[home]])
    return sorted(rows.items(), key=lambda row: _order(row[0]))


def _order(cidr: str) -> tuple[int, bytes, int]:
    network = ipaddress.ip_network(cidr)
    return network.version, network.network_address.packed, network.prefixlen
