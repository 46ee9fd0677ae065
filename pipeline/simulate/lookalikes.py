"""Network look-alikes: benign traffic that looks like a stolen token's — office egress pools, split-tunnel VPNs,
IPv6 privacy addresses. Each rewrites the addresses of benign events after the fact, from its own random stream,
so that turning one on leaves every other draw (and the default world) as it was."""

from __future__ import annotations

import ipaddress

import numpy as np

from pipeline.simulate.model import SimulationParams
from pipeline.simulate.population import Clients
from pipeline.simulate.tables import KIND_SERVICE, EventBatch
from pipeline.simulate.world import AddressSpace, stream


def office_pools(
    params: SimulationParams, events: EventBatch, addresses: AddressSpace, office_ips: np.ndarray
) -> list[np.ndarray]:
    """Office egress spread over a pool of addresses in several /16s (a cloud proxy, several ISPs): each
    request of an office user leaves from any address of its office's pool. Returns each office's pool."""
    rng = stream(params.population, "office-egress")
    k = params.office_egress_ips
    pooled: list[np.ndarray] = []
    for office in office_ips.tolist():
        pool = np.concatenate([[office], addresses.random("office", k - 1, rng)]).astype(np.int32)
        at = np.flatnonzero(events.ip == office)
        events.ip[at] = pool[rng.integers(0, k, at.size)]
        pooled.append(pool)
    return pooled


def split_tunnel(
    params: SimulationParams, events: EventBatch, owner: np.ndarray, addresses: AddressSpace
) -> np.ndarray:
    """Browser users on a split-tunnel VPN: requests to some API routes leave through the VPN egress, the
    rest go out directly — the same token, interleaved from two networks. Routing is by destination, so
    one route always takes the same way for one user. Returns the clients concerned."""
    rng = stream(params.population, "split-tunnel")
    users = rng.random(params.browsers) < params.split_tunnel_share
    vpn = addresses.random("vpn", params.browsers, rng)
    salt = rng.integers(0, 1 << 30, params.browsers)
    mine = np.flatnonzero((owner >= 0) & (owner < params.browsers))
    mine = mine[users[owner[mine]]]
    who = owner[mine]
    route = ((events.endpoint[mine].astype(np.int64) * 2_654_435_761 + salt[who]) % 1000) / 1000.0
    through = route < params.split_tunnel_via_vpn
    events.ip[mine[through]] = vpn[who[through]]
    return np.flatnonzero(users)


def ipv6_privacy(
    params: SimulationParams, events: EventBatch, owner: np.ndarray, clients: Clients, addresses: AddressSpace
) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Users whose home network is dual-stack IPv6 with privacy extensions (RFC 8981): on the home network
    most requests come from the home /64 with an interface id that changes every ``ipv6_rotate_s`` (new
    address, same network); the rest still go over IPv4. Returns the clients, the IPv6 address codes and each
    home's /64 (home address code -> the /64 as an int)."""
    p = params
    rng = stream(p.population, "ipv6")
    v6 = (rng.random(len(clients)) < p.ipv6_share) & (clients.kind != KIND_SERVICE)
    phase = rng.random(len(clients))
    rows = np.flatnonzero(owner >= 0)
    rows = rows[v6[owner[rows]]]
    rows = rows[events.ip[rows] == clients.home_ip[owner[rows]]]
    rows = rows[rng.random(rows.size) >= p.ipv6_v4_share]
    who = owner[rows]
    period = np.floor(events.t[rows] / p.ipv6_rotate_s + phase[who]).astype(np.int64)
    keys, inverse = np.unique(np.stack([who, period]), axis=1, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_keys: int = keys.shape[1]
    interface_ids = rng.integers(1, 1 << 62, n_keys)
    networks: dict[int, int] = {}  # home address (code) -> its /64, as an int
    codes = np.empty(keys.shape[1], dtype=np.int32)
    for i, (c, iid) in enumerate(zip(keys[0].tolist(), interface_ids.tolist(), strict=True)):
        home = int(clients.home_ip[c])
        if home not in networks:
            # 2a02:<the IPv4 /16 as 16 bits>::/32 keeps one ISP per /16 (pipeline/simulate/networks.py gives it
            # the /16's autonomous system); then the home's own /64.
            prefix16 = addresses.prefix16.get(home, 0)
            networks[home] = (0x2A02 << 112) | (prefix16 << 96) | (int(rng.integers(1, 1 << 32)) << 64)
        codes[i] = addresses.strings.code(ipaddress.IPv6Address(networks[home] | iid).compressed)
        addresses.prefix16[int(codes[i])] = addresses.prefix16.get(home, -1)  # attackers still avoid the home net
    events.ip[rows] = codes[inverse]
    return np.flatnonzero(v6), np.unique(codes), networks


__all__ = ["ipv6_privacy", "office_pools", "split_tunnel"]
