"""The simulated world's autonomous systems (``pipeline/simulate/networks.py``): every address a world uses resolves,
through the MaxMind DB ``write_ip_db`` writes and the ``--ip-db`` resolver, to the AS the simulator assigned."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.detection.sources import read_events
from pipeline.networks import MmdbResolver, Network, open_ip_db
from pipeline.simulate import Simulation, SimulationParams, simulate
from pipeline.simulate.baseline import Baseline, generate_baseline
from pipeline.simulate.io import IP_DB_TYPE, write_ip_db
from pipeline.simulate.model import ATTACK_NETWORK_KINDS
from pipeline.simulate.networks import PROXY_ISPS, RESIDENTIAL_ISPS, network_table
from pipeline.simulate.world import _FIRST_OCTETS, AddressSpace, Api, Strings, stream

#: Every benign look-alike on, and attackers on every kind of network.
PARAMS = SimulationParams(
    minutes=6, seed=3, browsers=80, mobile=40, services=6, offices=6, incidents_per_threat=2,
    ipv6_share=0.3, office_egress_ips=4, multi_device_share=0.2, pingpong_share=0.2, split_tunnel_share=0.2,
    attack_networks=(0.2, 0.2, 0.2, 0.2, 0.2),
)  # fmt: skip
#: What an ASN database says each of the simulator's kinds of /16 is.
KIND_OF_POOL = {
    "residential": "residential",
    "carrier": "mobile",
    "office": "business",
    "datacenter": "hosting",
    "hosting": "hosting",
    "vpn": "vpn",
    "proxy": "residential",  # a residential-proxy exit is somebody's home line
}


@dataclasses.dataclass
class World:
    sim: Simulation
    addresses: AddressSpace
    strings: Strings
    base: Baseline
    resolver: MmdbResolver
    path: Path


def rebuild(params: SimulationParams) -> tuple[AddressSpace, Strings, Baseline]:
    """The world's address space and baseline, drawn again as ``simulate`` draws them (same streams)."""
    strings = Strings()
    addresses = AddressSpace(strings, stream(params.seed, "addresses"))
    base = generate_baseline(params, strings, addresses, Api(strings, stream(params.seed, "api")))
    return addresses, strings, base


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    sim = simulate(PARAMS)
    path = tmp_path_factory.mktemp("ipdb") / "world.mmdb"
    assert write_ip_db(sim, path) == len(sim.networks)
    resolver = open_ip_db([path])
    assert isinstance(resolver, MmdbResolver)
    addresses, strings, base = rebuild(PARAMS)
    return World(sim, addresses, strings, base, resolver, path)


def assigned(table: pd.DataFrame, ip: str) -> pd.Series:
    """The table's row for ``ip``: the most specific network that holds it."""
    address = ipaddress.ip_address(ip)
    best: pd.Series | None = None
    for _, row in table.iterrows():
        network = ipaddress.ip_network(row["network"])
        if address in network and (best is None or network.prefixlen > ipaddress.ip_network(best["network"]).prefixlen):
            best = row
    assert best is not None, f"{ip} is in no network of the world"
    return best


def pool_kind(prefix: str) -> str:
    """The simulator's kind of network of an IPv4 /16 (its first octet; the kinds' octets are disjoint)."""
    first = int(prefix.split(".")[0])
    (kind,) = [k for k, octets in _FIRST_OCTETS.items() if first in octets]
    return kind


def test_every_address_of_the_world_resolves_to_its_assigned_as(world: World) -> None:
    ips = world.sim.events["ip"].unique().tolist()
    assert any(":" in ip for ip in ips), "the world should have dual-stack homes"
    for ip in ips:
        row = assigned(world.sim.networks, ip)
        network = world.resolver(ip)
        assert network == Network(f"AS{row['asn']}", row["kind"], int(row["asn"]), row["org"]), ip


def test_every_16_belongs_to_an_as_of_its_kind(world: World) -> None:
    table = world.sim.networks
    v4_16 = table[table["network"].str.endswith("/16")]
    prefixes = {f"{p >> 8}.{p & 0xFF}.0.0/16" for ps in world.addresses.prefixes.values() for p in ps.tolist()}
    assert set(v4_16["network"]) == prefixes
    for network, kind in zip(v4_16["network"], v4_16["kind"], strict=True):
        assert kind == KIND_OF_POOL[pool_kind(network)], network
    assert set(table["kind"]) == {"residential", "mobile", "business", "hosting", "vpn"}
    # Each /16 has its IPv6 /32, in the same AS.
    for network, asn in zip(v4_16["network"], v4_16["asn"], strict=True):
        a, b = (int(x) for x in network.split(".")[:2])
        v6 = ipaddress.IPv6Network(((0x2A02 << 112) | (((a << 8) | b) << 96), 32))
        assert world.resolver(str(v6[1])).asn == asn


def test_residential_isps_own_several_16s(world: World) -> None:
    table = world.sim.networks
    homes = table[table["network"].str.endswith("/16") & table["network"].map(lambda n: ":" not in n)]
    homes = homes[homes["network"].map(pool_kind) == "residential"]
    per_isp = homes.groupby("org").size()
    assert set(per_isp.index) == set(RESIDENTIAL_ISPS)
    assert per_isp.min() >= 3


def test_about_a_third_of_the_proxy_exits_are_in_the_benign_users_isps(world: World) -> None:
    table = world.sim.networks
    v4 = table[table["network"].str.endswith("/16") & ~table["network"].str.contains(":")]
    proxies = v4[v4["network"].map(pool_kind) == "proxy"]
    benign = proxies["org"].isin(RESIDENTIAL_ISPS)
    assert benign.sum() == round(len(proxies) / 3)
    assert set(proxies.loc[~benign, "org"]) == set(PROXY_ISPS)
    assert set(proxies["kind"]) == {"residential"}


def test_a_carriers_two_16s_share_one_asn(world: World) -> None:
    operators = []
    for pool in world.addresses.carrier_pools:
        ips = [world.strings.values[code] for code in pool.tolist()]
        assert len({".".join(ip.split(".")[:2]) for ip in ips}) == 2  # two /16s ...
        networks = {world.resolver(ip) for ip in ips}
        assert len(networks) == 1  # ... one network
        (network,) = networks
        assert network.kind == "mobile"
        operators.append(network.asn)
    assert len(set(operators)) == 4


def test_carrier_pools_sharing_a_16_are_one_operator() -> None:
    # Seed 73 draws 7 distinct carrier /16s for 4 pools of two: the last pool wraps round onto the first's.
    strings = Strings()
    addresses = AddressSpace(strings, stream(73, "addresses"))
    assert len(addresses.prefixes["carrier"]) == 7
    table = network_table(73, addresses, strings, [], {})
    asn_of = dict(zip(table["network"], table["asn"], strict=True))
    operators = []
    for pool in addresses.carrier_pools:
        nets = {addresses.prefix16[int(code)] for code in pool.tolist()}
        asns = {asn_of[f"{p >> 8}.{p & 0xFF}.0.0/16"] for p in nets}
        assert len(asns) == 1
        operators.append(asns.pop())
    assert operators[0] == operators[3] and len(set(operators)) == 3


def test_an_offices_egress_pool_is_one_network(world: World) -> None:
    pools = world.base.office_pools
    assert len(pools) == PARAMS.offices
    asns = []
    spread = 0
    for pool in pools:
        ips = [world.strings.values[code] for code in pool.tolist()]
        networks = {world.resolver(ip) for ip in ips}
        assert len(networks) == 1, ips
        (network,) = networks
        assert network.kind == "business" and network.org.startswith("Office ")
        asns.append(network.asn)
        spread += len({".".join(ip.split(".")[:2]) for ip in ips}) > 1
    assert len(set(asns)) == len(pools)  # an AS per office
    assert spread, "some office's pool should span several /16s"
    # Another address of an office /16 is the business ISP's, not an office's.
    office_16 = world.strings.values[int(pools[0][0])].rsplit(".", 2)[0]
    outsider = world.resolver(f"{office_16}.0.1")
    assert outsider.kind == "business" and outsider.asn not in asns


def test_a_dual_stack_homes_ipv4_and_ipv6_share_one_as(world: World) -> None:
    homes = world.base.ipv6_homes
    assert homes
    kinds = set()
    for home, network in homes.items():
        v4 = world.resolver(world.strings.values[home])
        v6 = world.resolver(str(ipaddress.IPv6Address(network | 0x1234)))
        assert v4 == v6 and v4.asn is not None
        kinds.add(v4.kind)
    assert "residential" in kinds and "business" in kinds  # homes and offices
    # Every IPv6 address in the events is some home's (its /64) and resolves to an AS.
    v6_ips = [ip for ip in world.sim.events["ip"].unique().tolist() if ":" in ip]
    slash64 = {int(ipaddress.IPv6Address(ip)) >> 64 << 64 for ip in v6_ips}
    assert slash64 <= set(homes.values())


def test_attackers_networks_resolve_to_their_kind(world: World) -> None:
    expected = {"hosting": "hosting", "proxy": "residential", "vpn": "vpn", "carrier": "mobile",
                "residential": "residential"}  # fmt: skip
    assert set(expected) == set(ATTACK_NETWORK_KINDS)
    seen = set()
    for incident in world.sim.incidents:
        if incident.threat != "stolen_replay":
            continue
        kind = incident.variant.split(",")[0]
        for ip in incident.ips:
            assert world.resolver(ip).kind == expected[kind], (incident.incident_id, ip)
            assert world.resolver(ip).kind == KIND_OF_POOL[pool_kind(ip)]
        seen.add(kind)
    assert seen
    for incident in world.sim.incidents:  # every attacker address is in some AS
        for ip in incident.ips:
            assert world.resolver(ip).asn is not None


def test_the_assignment_is_reproducible_and_leaves_the_events_alone(world: World, tmp_path: Path) -> None:
    again = simulate(PARAMS)
    pd.testing.assert_frame_equal(again.networks, world.sim.networks)
    write_ip_db(again, tmp_path / "again.mmdb")
    assert (tmp_path / "again.mmdb").read_bytes() == world.path.read_bytes()
    other = simulate(dataclasses.replace(PARAMS, seed=4)).networks
    assert not other.equals(world.sim.networks)
    assert world.resolver.source == f"mmdb:{IP_DB_TYPE}(2026-09-21)"
    assert np.issubdtype(world.sim.networks["asn"].dtype, np.integer)
    assert world.sim.networks["asn"].between(64512, 65534).all()


def test_jwtwatch_simulate_writes_the_ip_db_beside_the_events(tmp_path: Path) -> None:
    events, db = tmp_path / "events.jsonl", tmp_path / "world.mmdb"
    result = CliRunner().invoke(
        app, ["simulate", "--out", str(events), "--ip-db-out", str(db), "--minutes", "2", "--users", "20",
              "--seed", "9"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"networks → {db}" in result.stdout
    resolver = open_ip_db([db])
    ips = read_events([events]).frame["ip"].unique().tolist()
    assert ips and all(resolver(ip).asn is not None for ip in ips)
