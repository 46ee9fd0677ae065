"""The public records of the simulator: parameters, labelled incidents and the simulation result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

#: Every threat the simulator can inject, in the order of ``pipeline/simulate`` documentation.
THREATS: tuple[str, ...] = (
    "stolen_replay",
    "token_sharing",
    "forged_probing",
    "revoked_replay",
    "rate_abuse",
    "low_and_slow",
)

#: Where attackers come from, in the order of :attr:`SimulationParams.attack_networks`: VPS hosting, residential
#: proxies, commercial VPNs, mobile carriers (CGNAT shared with benign phones), residential broadband.
ATTACK_NETWORK_KINDS: tuple[str, ...] = ("hosting", "proxy", "vpn", "carrier", "residential")

#: The benign look-alikes the simulator can generate: traffic that resembles an attack but is not one. Each
#: labels the entities (tokens, subjects, IPs) it involves in :attr:`Simulation.lookalikes`.
LOOKALIKES: tuple[str, ...] = ("multi_device", "wifi_cell_pingpong", "ipv6_privacy", "office_pool", "split_tunnel")

#: The columns of :attr:`Simulation.events`: the token-usage/1 fields (Arrow order) plus the label.
EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "ts",
    "jti",
    "sub",
    "iss",
    "aud",
    "client_id",
    "iat",
    "exp",
    "ip",
    "user_agent",
    "outcome",
    "reason",
    "service",
    "method",
    "path",
    "incident_id",
)


def _range(name: str, value: tuple[float, float], low: float = 0.0) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1]:
        raise ValueError(f"SimulationParams.{name} must be (lo, hi) with {low} <= lo <= hi, got {value!r}")


@dataclass(frozen=True)
class SimulationParams:
    """Everything that shapes one simulation. Same params, same output, byte for byte.

    Rates are per client and scale linearly with the population; ``rate_scale`` multiplies every benign
    request rate (for benchmarks). The ``*_range`` knobs set how strong the injected attacks are, so a
    model can be evaluated on attacks subtler (or cruder) than the ones it was trained next to.
    """

    minutes: float = 30.0
    seed: int = 0
    #: Who is out there — users, their devices, homes, offices, carriers, VPNs — when not ``seed``: two streams
    #: with one ``population_seed`` and other ``seed``s are the same users at other times (what a model trains
    #: on, then what it judges). ``None``: ``seed``, so the default world is as it always was.
    population_seed: int | None = None
    start: float = 1_790_000_000.0  # epoch seconds of t=0 (fixed, so output is reproducible)
    browsers: int = 300  # human users on browsers
    mobile: int = 150  # users on mobile apps
    services: int = 20  # service accounts (client_credentials, high steady rate)
    offices: int = 8  # shared NATs: many users behind one IP
    threats: tuple[str, ...] = THREATS  # () for baseline-only traffic
    incidents_per_threat: int = 3
    token_ttl_s: int = 600  # access-token lifetime; clients refresh (new jti) before expiry
    issuer: str = "https://issuer.sim.jwtwatch"
    audience: str = "https://api.sim.jwtwatch"
    api_host: str = "api.sim.jwtwatch"  # the `service` field: the protected API's host
    leeway_s: int = 30  # the validator's clock leeway (exp / iat), as in ValidatorConfig

    # --- browsers: sessions of page loads (bursts of API calls) separated by think time, then idle
    browser_think_s: float = 20.0  # mean think time between page loads within a session
    browser_pages_per_session: float = 12.0  # mean page loads per session (geometric)
    browser_idle_s: float = 600.0  # mean idle time between sessions
    calls_per_page: float = 6.0  # mean API calls per page load (1 + Poisson)
    office_share: float = 0.35  # share of browser users behind one of the office NATs
    network_switch_per_hour: float = 0.3  # a browser user moves to a VPN / phone hotspot for a while
    network_switch_mean_s: float = 900.0  # how long such a move lasts (mean)
    lazy_refresh_share: float = 0.2  # clients that refresh only after a 401 `expired`
    stale_token_retry: float = 0.3  # chance a client back from idle first sends its expired token
    clock_skew_share: float = 0.03  # clients whose fresh tokens are sometimes not yet valid
    logout_per_session: float = 0.08  # session ends in a logout (token revoked, in-flight calls rejected)
    broken_client_per_session: float = 0.02  # a buggy SPA sends "Bearer undefined" (malformed) at session start

    # --- mobile apps
    mobile_think_s: float = 15.0
    mobile_pages_per_session: float = 6.0
    mobile_idle_s: float = 480.0
    mobile_ip_change_s: float = 300.0  # mean time on one carrier egress IP (CGNAT) before it changes
    mobile_wifi_share: float = 0.25  # share of mobile network episodes on the user's home Wi-Fi
    mobile_same_person: float = 0.3  # share of mobile users who are also browser users (same sub)

    # --- service accounts
    service_rps: tuple[float, float] = (2.0, 20.0)  # per-service rate, log-uniform in this range
    service_multi_region_share: float = 0.15  # services whose egress IPs span two /16s (benign!)

    rate_scale: float = 1.0  # multiplies every benign request rate

    # --- benign look-alikes (the simulator family draws these per world; every default is "off", so a
    # world built from the defaults is byte-for-byte the one before they existed)
    multi_device_share: float = 0.0  # browser users with the same app on a second device, used at once elsewhere
    multi_device_overlap: float = 0.6  # chance that a session of such a user has the second device active too
    pingpong_share: float = 0.0  # mobile users whose phone flips between home Wi-Fi and the carrier
    pingpong_period_s: tuple[float, float] = (60.0, 120.0)  # time on one side before flipping (per user, uniform)
    ipv6_share: float = 0.0  # users whose home network is IPv6 with privacy addresses
    ipv6_rotate_s: float = 900.0  # a new interface id (same /64) this often
    ipv6_v4_share: float = 0.3  # dual stack: share of such a user's home requests still over IPv4
    office_egress_ips: int = 1  # addresses in each office's egress pool (> 1: spread over several /16s)
    split_tunnel_share: float = 0.0  # browser users on a split-tunnel VPN: some calls leave through the VPN
    split_tunnel_via_vpn: float = 0.3  # share of such a user's calls that go through the tunnel

    # --- attacker variants
    attack_networks: tuple[float, ...] = (0.45, 0.4, 0.15, 0.0, 0.0)  # weights over ATTACK_NETWORK_KINDS
    replay_ua_copy: float = 0.0  # chance a stolen_replay attacker sends the victim's own user agent

    # --- attack strength
    replay_minutes: tuple[float, float] = (3.0, 8.0)  # stolen_replay duration
    replay_gap_s: tuple[float, float] = (3.0, 15.0)  # stolen_replay: mean seconds between attacker calls
    sharing_ips: tuple[int, int] = (10, 50)  # token_sharing: distinct IPs using the one token
    sharing_minutes: tuple[float, float] = (2.0, 8.0)
    probing_rps: tuple[float, float] = (0.5, 5.0)  # forged_probing rate from the one attacker IP
    probing_minutes: tuple[float, float] = (1.0, 5.0)
    revoked_gap_s: tuple[float, float] = (2.0, 20.0)  # revoked_replay: mean seconds between attempts
    revoked_minutes: tuple[float, float] = (2.0, 8.0)
    abuse_rps: tuple[float, float] = (20.0, 50.0)  # rate_abuse rate on one valid token
    abuse_seconds: tuple[float, float] = (60.0, 180.0)
    slow_interval_s: tuple[float, float] = (30.0, 120.0)  # low_and_slow: seconds between requests
    slow_share: tuple[float, float] = (0.4, 0.7)  # low_and_slow duration as a share of the simulation

    def __post_init__(self) -> None:
        for name, value in vars(self).items():  # lists (e.g. from JSON or a CLI) become tuples, hashable
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if not (math.isfinite(self.minutes) and self.minutes > 0):
            raise ValueError(f"SimulationParams.minutes must be > 0, got {self.minutes!r}")
        for name in ("browsers", "mobile", "services", "offices", "incidents_per_threat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"SimulationParams.{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"SimulationParams.seed must be an integer >= 0, got {self.seed!r}")
        if self.population_seed is not None and (
            not isinstance(self.population_seed, int)
            or isinstance(self.population_seed, bool)
            or self.population_seed < 0
        ):
            raise ValueError(f"SimulationParams.population_seed must be an integer >= 0, got {self.population_seed!r}")
        if not isinstance(self.threats, tuple):
            raise ValueError("SimulationParams.threats must be a tuple (or list) of threat names")
        unknown = [t for t in self.threats if t not in THREATS]
        if unknown:
            raise ValueError(f"unknown threats {unknown}; choose from {list(THREATS)}")
        if len(set(self.threats)) != len(self.threats):
            raise ValueError("SimulationParams.threats names a threat twice")
        if self.token_ttl_s < 60:
            raise ValueError(f"SimulationParams.token_ttl_s must be >= 60, got {self.token_ttl_s!r}")
        if self.leeway_s < 0:
            raise ValueError("SimulationParams.leeway_s must be >= 0")
        if self.rate_scale <= 0:
            raise ValueError("SimulationParams.rate_scale must be > 0")
        for name in (
            "office_share",
            "lazy_refresh_share",
            "stale_token_retry",
            "clock_skew_share",
            "logout_per_session",
            "broken_client_per_session",
            "mobile_wifi_share",
            "mobile_same_person",
            "service_multi_region_share",
            "multi_device_share",
            "multi_device_overlap",
            "pingpong_share",
            "ipv6_share",
            "ipv6_v4_share",
            "split_tunnel_share",
            "split_tunnel_via_vpn",
            "replay_ua_copy",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SimulationParams.{name} must lie in 0..1, got {value!r}")
        for name in (
            "browser_think_s",
            "browser_pages_per_session",
            "browser_idle_s",
            "calls_per_page",
            "mobile_think_s",
            "mobile_pages_per_session",
            "mobile_idle_s",
            "mobile_ip_change_s",
            "network_switch_mean_s",
            "ipv6_rotate_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"SimulationParams.{name} must be > 0")
        if self.browser_pages_per_session < 1 or self.mobile_pages_per_session < 1 or self.calls_per_page < 1:
            raise ValueError("pages per session and calls per page must be >= 1")
        _range("service_rps", self.service_rps, 1e-6)
        _range("replay_minutes", self.replay_minutes, 0.1)
        _range("replay_gap_s", self.replay_gap_s, 0.01)
        _range("sharing_ips", self.sharing_ips, 2)
        _range("sharing_minutes", self.sharing_minutes, 0.1)
        _range("probing_rps", self.probing_rps, 0.01)
        _range("probing_minutes", self.probing_minutes, 0.1)
        _range("revoked_gap_s", self.revoked_gap_s, 0.01)
        _range("revoked_minutes", self.revoked_minutes, 0.1)
        _range("abuse_rps", self.abuse_rps, 0.01)
        _range("abuse_seconds", self.abuse_seconds, 1.0)
        _range("slow_interval_s", self.slow_interval_s, 1.0)
        _range("slow_share", self.slow_share, 0.01)
        _range("pingpong_period_s", self.pingpong_period_s, 1.0)
        if isinstance(self.office_egress_ips, bool) or not isinstance(self.office_egress_ips, int):
            raise ValueError("SimulationParams.office_egress_ips must be an integer >= 1")
        if self.office_egress_ips < 1:
            raise ValueError("SimulationParams.office_egress_ips must be an integer >= 1")
        weights = self.attack_networks
        if (
            len(weights) != len(ATTACK_NETWORK_KINDS)
            or not all(math.isfinite(w) and w >= 0 for w in weights)
            or sum(weights[:3]) <= 0  # forged probing and the defaults draw from the first three kinds
        ):
            raise ValueError(
                f"SimulationParams.attack_networks must be {len(ATTACK_NETWORK_KINDS)} weights >= 0 over "
                f"{ATTACK_NETWORK_KINDS}, with hosting/proxy/vpn not all 0, got {weights!r}"
            )
        if self.slow_share[1] > 1.0:
            raise ValueError("SimulationParams.slow_share must lie in 0..1")

    @property
    def population(self) -> int:
        """The seed of the population's random streams (:attr:`population_seed`, else :attr:`seed`)."""
        return self.seed if self.population_seed is None else self.population_seed

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0


@dataclass(frozen=True)
class Incident:
    """One injected attack and every entity it involves (the ground truth for evaluation).

    ``start``/``end`` are epoch seconds of the first and last attack event (exactly ``ts_ms / 1000``).
    ``ips`` are the attacker's addresses (never the victim's own); ``jtis`` the stolen, shared, forged or
    minted token ids; ``subs`` the victim subject(s) — or, for forged probing, the subjects claimed.
    """

    incident_id: str
    threat: str
    start: float
    end: float
    subs: tuple[str, ...]
    jtis: tuple[str, ...]
    ips: tuple[str, ...]
    description: str
    variant: str = ""  # how the attack was mounted (network kind, user agent), when the family varies it


@dataclass
class Simulation:
    """The generated traffic.

    ``events`` is sorted by ``ts`` (int64 epoch milliseconds; ties keep generation order) with the columns
    :data:`EVENT_COLUMNS`: string columns are ``object`` dtype holding ``str`` or ``None``, ``iat``/``exp``
    are nullable ``Int64``. ``incident_id`` is set on the events an attacker produced, ``None`` elsewhere.
    """

    events: pd.DataFrame
    incidents: list[Incident]
    params: SimulationParams
    #: Benign look-alikes: one row per (kind, entity_type, entity); ``entity_type`` is ``jti``, ``sub`` or ``ip``
    #: as in alert/1. Empty unless the params turn a look-alike on.
    lookalikes: pd.DataFrame = field(default_factory=lambda: empty_lookalikes())
    #: The world's networks, as an ASN database would list them: one row per CIDR (``network``), with its
    #: autonomous system (``asn``, ``org``) and network ``kind`` (:mod:`pipeline.simulate.networks`; more specific
    #: rows win). ``jwtwatch simulate --ip-db-out`` writes it as a MaxMind DB.
    networks: pd.DataFrame = field(default_factory=lambda: empty_networks())

    @property
    def attack_mask(self) -> pd.Series:
        """Boolean mask of the labelled (attack) events."""
        return self.events["incident_id"].notna()


def empty_lookalikes() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=object) for name in ("kind", "entity_type", "entity")})


def empty_networks() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "network": pd.Series(dtype=object),
            "asn": pd.Series(dtype="int64"),
            "org": pd.Series(dtype=object),
            "kind": pd.Series(dtype=object),
        }
    )
