"""A family of simulated worlds (domain randomisation), with the parameter space split into regions.

One :class:`SimulationParams` is one world, whose behaviours a detector can be tuned against until it fits
them. A :class:`WorldFamily` draws every behavioural parameter of a world from a distribution instead, per
world, reproducibly from the family seed, the region and the world index::

    family = WorldFamily(seed=15)
    tuning = family.world(0, "tuning").params      # tune features, rules and thresholds here
    heldout = family.world(0, "heldout").params    # ... and report here, where nobody tuned

Each :class:`Dimension` names a parameter and two disjoint ranges: the *tuning* region and the *held-out*
region. A held-out world draws every dimension from its held-out range, so it differs from every tuning
world in every behaviour at once (more devices per user, faster Wi-Fi/cell ping-pong, IPv6 privacy
addresses, attackers on residential and mobile networks with the victim's user agent...) — not merely in
its seed. Population sizes, duration and incidents per threat are the family's (they set the cost of a
world, not its behaviour); the mobile share of the population is a dimension.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pipeline.simulate.model import ATTACK_NETWORK_KINDS, THREATS, SimulationParams

Region = Literal["tuning", "heldout"]
REGIONS: tuple[Region, ...] = ("tuning", "heldout")


@dataclass(frozen=True)
class Dimension:
    """One parameter of :class:`SimulationParams`, uniform over a range that depends on the region.

    ``shape`` says how a drawn value ``v`` becomes the parameter: ``"float"`` (``v``), ``"int"``
    (``round(v)``), or ``"range"`` (the ``(lo, hi)`` pair ``(v * (1 - spread), v * (1 + spread))`` of the
    range-valued attack knobs, ``v`` its centre)."""

    name: str
    tuning: tuple[float, float]
    heldout: tuple[float, float]
    shape: Literal["float", "int", "range"] = "float"
    spread: float = 0.3

    def bounds(self, region: Region) -> tuple[float, float]:
        return self.tuning if region == "tuning" else self.heldout

    def value(self, drawn: float) -> Any:
        if self.shape == "int":
            return round(drawn)
        if self.shape == "range":
            return (drawn * (1.0 - self.spread), drawn * (1.0 + self.spread))
        return float(drawn)


#: The behaviours a world draws, with their tuning and held-out ranges. The held-out ranges lean towards
#: what the hidden evaluation of issue 15 saw and the simulator did not generate before.
DIMENSIONS: tuple[Dimension, ...] = (
    # benign look-alikes
    Dimension("multi_device_share", (0.0, 0.05), (0.1, 0.35)),
    Dimension("multi_device_overlap", (0.2, 0.5), (0.5, 0.9)),
    Dimension("pingpong_share", (0.0, 0.05), (0.1, 0.4)),
    Dimension("pingpong_period_s", (180.0, 300.0), (60.0, 120.0), shape="range", spread=0.25),
    Dimension("ipv6_share", (0.0, 0.1), (0.2, 0.6)),
    Dimension("ipv6_rotate_s", (1800.0, 3600.0), (300.0, 1200.0)),
    Dimension("ipv6_v4_share", (0.3, 0.6), (0.05, 0.3)),
    Dimension("office_egress_ips", (1.0, 2.0), (3.0, 6.0), shape="int"),
    Dimension("split_tunnel_share", (0.0, 0.03), (0.05, 0.2)),
    Dimension("split_tunnel_via_vpn", (0.1, 0.3), (0.3, 0.6)),
    # everyday behaviour
    Dimension("office_share", (0.2, 0.4), (0.4, 0.7)),
    Dimension("network_switch_per_hour", (0.1, 0.4), (0.5, 1.5)),
    Dimension("mobile_ip_change_s", (240.0, 600.0), (60.0, 240.0)),
    Dimension("mobile_wifi_share", (0.15, 0.3), (0.3, 0.6)),
    Dimension("mobile_same_person", (0.2, 0.4), (0.4, 0.8)),
    Dimension("lazy_refresh_share", (0.1, 0.25), (0.25, 0.5)),
    Dimension("stale_token_retry", (0.1, 0.3), (0.3, 0.7)),
    Dimension("clock_skew_share", (0.0, 0.03), (0.03, 0.1)),
    Dimension("logout_per_session", (0.05, 0.1), (0.1, 0.2)),
    Dimension("broken_client_per_session", (0.0, 0.02), (0.02, 0.06)),
    Dimension("browser_think_s", (15.0, 30.0), (6.0, 15.0)),
    Dimension("browser_idle_s", (400.0, 900.0), (150.0, 400.0)),
    Dimension("calls_per_page", (4.0, 7.0), (7.0, 12.0)),
    Dimension("service_multi_region_share", (0.0, 0.2), (0.2, 0.5)),
    Dimension("token_ttl_s", (600.0, 900.0), (300.0, 599.0), shape="int"),
    # attackers
    Dimension("replay_ua_copy", (0.0, 0.1), (0.4, 0.9)),
    Dimension("replay_gap_s", (4.0, 10.0), (10.0, 30.0), shape="range"),
    Dimension("abuse_rps", (25.0, 45.0), (8.0, 20.0), shape="range"),
    Dimension("slow_interval_s", (30.0, 90.0), (90.0, 200.0), shape="range"),
    Dimension("sharing_ips", (15.0, 40.0), (4.0, 10.0), shape="range"),
)
#: The mobile users per browser user.
MOBILE_RATIO: dict[Region, tuple[float, float]] = {"tuning": (0.3, 0.6), "heldout": (0.6, 1.2)}
#: Dirichlet concentrations of the attacker networks, over :data:`ATTACK_NETWORK_KINDS` (hosting, proxy, vpn,
#: carrier, residential). Tuning worlds see hosting and VPNs; held-out worlds mostly residential proxies,
#: mobile carriers and broadband.
ATTACK_NETWORK_ALPHA: dict[Region, tuple[float, ...]] = {
    "tuning": (4.0, 2.0, 2.0, 0.0, 0.0),
    "heldout": (0.5, 3.0, 1.0, 2.0, 2.0),
}


@dataclass(frozen=True)
class World:
    """One drawn world: where it sits in the family, its parameters and the values drawn for it."""

    region: Region
    index: int
    params: SimulationParams
    draws: dict[str, Any]


@dataclass(frozen=True)
class WorldFamily:
    """Worlds drawn per index and region from ``seed``. Sizes are fixed per family (they set the cost)."""

    seed: int = 0
    minutes: float = 30.0
    browsers: int = 150
    services: int = 3
    offices: int = 4
    incidents_per_threat: int = 3
    threats: tuple[str, ...] = THREATS

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"WorldFamily.seed must be an integer >= 0, got {self.seed!r}")

    def _rng(self, region: Region, index: int, purpose: int) -> np.random.Generator:
        if region not in REGIONS:
            raise ValueError(f"unknown region {region!r}; choose from {REGIONS}")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"world index must be an integer >= 0, got {index!r}")
        return np.random.default_rng(np.random.SeedSequence([self.seed, REGIONS.index(region), index, purpose]))

    def world(self, index: int, region: Region = "heldout") -> World:
        """World ``index`` of ``region``: the same arguments give the same world, byte for byte."""
        rng = self._rng(region, index, 0)
        draws: dict[str, Any] = {}
        values: dict[str, Any] = {}
        for dim in DIMENSIONS:
            drawn = float(rng.uniform(*dim.bounds(region)))
            draws[dim.name] = round(drawn, 6)
            values[dim.name] = dim.value(drawn)
        alpha = np.asarray(ATTACK_NETWORK_ALPHA[region])
        weights = np.zeros(len(ATTACK_NETWORK_KINDS))
        weights[alpha > 0] = rng.dirichlet(alpha[alpha > 0])
        values["attack_networks"] = tuple(float(w) for w in weights)
        draws["attack_networks"] = dict(zip(ATTACK_NETWORK_KINDS, (round(w, 4) for w in weights), strict=True))
        ratio = float(rng.uniform(*MOBILE_RATIO[region]))
        draws["mobile_ratio"] = round(ratio, 6)
        # The simulation's own seed (events, ids, who is attacked) is drawn too, so that worlds differ in
        # everything, and the benign stream a world trains on (train_params) has a seed of its own.
        world_seed = int(rng.integers(0, 2**31 - 1))
        params = SimulationParams(
            minutes=self.minutes,
            seed=world_seed,
            browsers=self.browsers,
            mobile=max(1, math.floor(self.browsers * ratio)),
            services=self.services,
            offices=self.offices,
            threats=self.threats,
            incidents_per_threat=self.incidents_per_threat,
            **values,
        )
        return World(region=region, index=index, params=params, draws=draws)

    def worlds(self, count: int, region: Region = "heldout") -> list[World]:
        return [self.world(i, region) for i in range(count)]


def train_params(params: SimulationParams, minutes: float | None = None) -> SimulationParams:
    """The attack-free stream a world's detector trains on: the same users (``population_seed``) with the same
    behaviours in the stretch of time just before the labelled stream (another seed), no incidents — what a
    new user records before running ``jwtwatch train``."""
    length = params.minutes if minutes is None else minutes
    return dataclasses.replace(
        params,
        seed=(params.seed + 1_000_003) % (2**31 - 1),
        population_seed=params.population,
        start=params.start - 60.0 * length,
        threats=(),
        minutes=length,
    )
