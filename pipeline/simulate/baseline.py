"""Benign traffic: browsers, mobile apps and service accounts, with their tokens and their benign failures.

This is what a detector must *not* alert on. Each client class is generated in bulk (numpy), client-major
and time-sorted within a client; only the token chain (one short loop iteration per token, not per event)
is a Python loop.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.simulate.model import SimulationParams
from pipeline.simulate.tables import (
    ACCEPTED,
    KIND_BROWSER,
    KIND_MOBILE,
    KIND_SERVICE,
    REASON_CODE,
    EventBatch,
    TokenTable,
    epoch_s,
)
from pipeline.simulate.world import (
    SERVICE_UAS,
    AddressSpace,
    Api,
    Strings,
    UniformPool,
    browser_family,
    browser_ua,
    mobile_ua,
    service_name,
    stream,
    uuid4_strings,
)

_CALL_GAP_S = 0.12  # mean gap between the API calls of one page load
_MAX_PAGE_SPREAD_S = 1.5  # a page load's calls all fall within this many seconds
_MIN_GAP_S = 2.0  # minimum gap between two page loads of one client (keeps calls time-sorted)
_MIN_AWAY_S = 120.0  # a browser user's move to a VPN / hotspot lasts at least this long
_MIN_HOME_S = 300.0  # ... and is followed by at least this long back on the home network


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


@dataclass
class Baseline:
    """Benign events (in generation order) and what the threat injectors need to pick victims."""

    events: EventBatch
    clients: Clients
    tokens: TokenTable
    n_tokens: int
    tok_first: np.ndarray  # per baseline token: first / last accepted use (seconds since start; nan: none)
    tok_last: np.ndarray
    tok_uses: np.ndarray  # accepted uses
    tok_revoked_at: np.ndarray  # seconds since start when the owner's logout revoked it, else nan
    office_ips: np.ndarray  # the office NAT addresses (string codes)
    lookalikes: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, entity_type, entity)
    #: Per office: the addresses its users leave from (its NAT, plus its egress pool when there is one).
    office_pools: list[np.ndarray] = field(default_factory=list)
    #: Dual-stack homes: home address (string code) -> its IPv6 /64, as an int.
    ipv6_homes: dict[int, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ sessions


def _session_pages(
    rng: np.random.Generator, n: int, horizon: float, think: float, pages: float, idle: float
) -> dict[str, np.ndarray]:
    """Page-load times of ``n`` clients over ``[0, horizon)``: sessions of pages separated by think time,
    sessions separated by idle time. A client may be mid-session at t=0 (``ongoing``)."""
    p_end = 1.0 / pages
    session_len = pages * think
    in_session = session_len / (session_len + idle)
    ongoing = rng.random(n) < in_session
    first = np.where(ongoing, rng.exponential(think, n), rng.exponential(idle, n))
    mean_gap = (1 - p_end) * (_MIN_GAP_S + think) + p_end * (_MIN_GAP_S + idle)
    width = max(8, int(horizon / mean_gap * 1.3) + 8)

    times = [first[:, None]]
    ends: list[np.ndarray] = []
    current = first
    while True:
        end = rng.random((n, width)) < p_end
        gaps = np.where(
            end,
            _MIN_GAP_S + rng.exponential(idle, (n, width)),
            _MIN_GAP_S + rng.gamma(2.0, think / 2.0, (n, width)),
        )
        ends.append(end)
        block = current[:, None] + np.cumsum(gaps, axis=1)
        current = block[:, -1]
        if n == 0 or current.min() >= horizon:
            times.append(block[:, :-1])
            break
        times.append(block)
    t = np.hstack(times)
    end_after = np.hstack(ends)[:, : t.shape[1]]
    start = np.empty_like(end_after)
    start[:, 0] = ~ongoing
    start[:, 1:] = end_after[:, :-1]
    valid = t < horizon
    rows = np.broadcast_to(np.arange(n)[:, None], t.shape)
    return {
        "client": rows[valid],
        "t": t[valid],
        "start": start[valid],
        "last": end_after[valid],
        "ongoing": ongoing,
    }


def _sessions_chunked(
    rng: np.random.Generator, n: int, horizon: float, think: float, pages: float, idle: float
) -> dict[str, np.ndarray]:
    """:func:`_session_pages` in chunks of clients, so that memory stays bounded for large populations."""
    chunk = 2048
    parts = []
    for lo in range(0, max(n, 1), chunk):
        hi = min(n, lo + chunk)
        part = _session_pages(rng, hi - lo, horizon, think, pages, idle)
        part["client"] = part["client"] + lo
        parts.append(part)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _pages_to_calls(
    rng: np.random.Generator, pages: dict[str, np.ndarray], calls_per_page: float, horizon: float
) -> dict[str, np.ndarray]:
    """Each page load becomes a burst of API calls within ~1 s; returns per-call arrays (client-major)."""
    n_pages: int = pages["t"].shape[0]
    # A session id per page: every client's first page opens one (ongoing or not), as does every start.
    first_of_client = np.ones(n_pages, dtype=bool)
    first_of_client[1:] = pages["client"][1:] != pages["client"][:-1]
    session = np.cumsum(pages["start"] | first_of_client) - 1

    k = 1 + rng.poisson(calls_per_page - 1.0, n_pages)
    page = np.repeat(np.arange(n_pages), k)
    page_start = np.cumsum(k) - k
    pos = np.arange(page.shape[0]) - page_start[page]
    gaps = rng.exponential(_CALL_GAP_S, page.shape[0])
    gaps[pos == 0] = 0.0
    spread = np.cumsum(gaps)
    spread -= spread[page_start][page]
    t = pages["t"][page] + np.minimum(spread, _MAX_PAGE_SPREAD_S)
    keep = t < horizon
    last_of_page = pos == (k[page] - 1)
    calls = {
        "client": pages["client"][page],
        "t": t,
        "session": session[page],
        "session_start": pages["start"][page] & (pos == 0),
        "session_last": pages["last"][page] & last_of_page,
    }
    return {key: value[keep] for key, value in calls.items()}


# ------------------------------------------------------------------------------------------ networks


def _episode_lookup(
    ep_client: np.ndarray, ep_start: np.ndarray, ep_ip: np.ndarray, client: np.ndarray, t: np.ndarray, horizon: float
) -> np.ndarray:
    """The IP in force for each (client, t): the latest episode of that client starting at or before t.
    Every client must have an episode starting at 0."""
    span = horizon + 10.0
    ep_key = ep_client.astype(np.float64) * span + ep_start
    order = np.argsort(ep_key, kind="stable")
    ep_key = ep_key[order]
    idx = np.searchsorted(ep_key, client.astype(np.float64) * span + t, side="right") - 1
    ips: np.ndarray = ep_ip[order][idx]
    return ips


# ------------------------------------------------------------------------------------------ tokens


@dataclass
class _Chains:
    tok_of_event: np.ndarray
    owner: np.ndarray  # local client index per token
    iat: np.ndarray  # epoch seconds
    exp: np.ndarray
    retry_event: np.ndarray  # event index that was first tried with the previous, expired token
    retry_token: np.ndarray  # that previous token (local token index)


def _token_chains(
    t: np.ndarray,
    client: np.ndarray,
    n_clients: int,
    *,
    params: SimulationParams,
    pool: UniformPool,
    lazy: np.ndarray,
    skewed: np.ndarray,
    margin: np.ndarray,
    ongoing: np.ndarray,
    forced: np.ndarray | None = None,
) -> _Chains:
    """Assign tokens to each client's time-sorted calls.

    A client gets a token just before the call that needs it (``iat`` = that moment, ``exp`` = ``iat`` +
    ttl). A proactive client refreshes at the first call after ``exp - margin``; a lazy one only at the
    first call after ``exp`` (and, if that is beyond the leeway, the call is first tried with the expired
    token: a benign ``expired``). A proactive client back from idle sometimes does the same
    (``stale_token_retry``). A clock-skewed client sometimes gets a token whose ``iat`` lies ahead of the
    validator's clock by more than the leeway. ``forced`` marks calls that must start a new token (the
    first call after a logout).
    """
    ttl = params.token_ttl_s
    leeway = params.leeway_s
    origin = params.start
    n = t.shape[0]
    tok_of_event = np.empty(n, dtype=np.int64)
    bounds = np.searchsorted(client, np.arange(n_clients + 1))
    forced_idx = np.flatnonzero(forced) if forced is not None else np.empty(0, dtype=np.int64)
    owners: list[int] = []
    iats: list[int] = []
    exps: list[int] = []
    retry_event: list[int] = []
    retry_token: list[int] = []
    t_list = t.tolist()
    forced_set = set(forced_idx.tolist())
    for c in range(n_clients):
        lo, hi = int(bounds[c]), int(bounds[c + 1])
        if lo == hi:
            continue
        tc = t[lo:hi]
        is_lazy = bool(lazy[c])
        is_skewed = bool(skewed[c])
        keep_for = ttl if is_lazy else ttl - float(margin[c])
        i = lo
        prev = -1
        prev_exp = 0.0
        while i < hi:
            t0 = t_list[i]
            issued = origin + t0 - pool.between(0.05, 0.8)
            if prev < 0 and ongoing[c]:
                issued -= pool() * keep_for  # in use since before the simulation started
            iat = math.floor(issued)
            if is_skewed and pool() < 0.5:
                iat += leeway + 5 + int(pool() * 60)
            exp = iat + ttl
            stale = prev >= 0 and origin + t0 - 0.5 >= prev_exp + leeway and i not in forced_set
            if stale and (is_lazy or pool() < params.stale_token_retry):
                retry_event.append(i)
                retry_token.append(prev)
            renew = (exp if is_lazy else exp - float(margin[c])) - origin
            j = lo + int(np.searchsorted(tc, renew, side="left"))
            if j <= i:
                j = i + 1
            if forced_idx.size:
                k = int(np.searchsorted(forced_idx, i, side="right"))
                if k < forced_idx.size and forced_idx[k] < j:
                    j = int(forced_idx[k])
            tok = len(owners)
            owners.append(c)
            iats.append(iat)
            exps.append(exp)
            tok_of_event[i:j] = tok
            prev, prev_exp = tok, float(exp)
            i = j
    return _Chains(
        tok_of_event=tok_of_event,
        owner=np.array(owners, dtype=np.int64),
        iat=np.array(iats, dtype=np.int64),
        exp=np.array(exps, dtype=np.int64),
        retry_event=np.array(retry_event, dtype=np.int64),
        retry_token=np.array(retry_token, dtype=np.int64),
    )


# ------------------------------------------------------------------------------------------ generator


class _Builder:
    """Collects the benign events and tokens of every client class."""

    def __init__(self, params: SimulationParams, strings: Strings, addresses: AddressSpace, api: Api) -> None:
        self.params = params
        self.strings = strings
        self.addresses = addresses
        self.api = api
        self.batches: list[EventBatch] = []
        self.tok_owner: list[np.ndarray] = []
        self.tok_iat: list[np.ndarray] = []
        self.tok_exp: list[np.ndarray] = []
        self.n_tokens = 0
        self.revoked: list[tuple[int, float]] = []
        self.iss = strings.code(params.issuer)
        self.aud = strings.code(params.audience)
        self.horizon = params.duration_s
        # Benign look-alikes, labelled by client (their subjects and tokens) and by address.
        self.lookalike_clients: list[tuple[str, np.ndarray]] = []
        self.lookalike_ips: list[tuple[str, np.ndarray]] = []
        self.browser_calls: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add_chains(self, chains: _Chains, client_offset: int) -> int:
        """Register a class's tokens; returns the global index of its first token."""
        first = self.n_tokens
        self.tok_owner.append(chains.owner + client_offset)
        self.tok_iat.append(chains.iat)
        self.tok_exp.append(chains.exp)
        self.n_tokens += int(chains.owner.shape[0])
        return first

    def margins(self, rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
        cap = self.params.token_ttl_s / 4.0
        return np.minimum(rng.uniform(lo, hi, n), cap)

    def validity(self, t: np.ndarray, token: np.ndarray) -> np.ndarray:
        """Reason codes for calls with baseline tokens (accepted unless the token is not yet valid)."""
        iat = np.concatenate(self.tok_iat)[token]
        reason = np.full(t.shape[0], ACCEPTED, dtype=np.int8)
        reason[iat > epoch_s(self.params.start, t) + self.params.leeway_s] = REASON_CODE["not_yet_valid"]
        return reason

    def retries(
        self,
        chains: _Chains,
        first_tok: int,
        t: np.ndarray,
        ip: np.ndarray,
        ua: np.ndarray,
        endpoint: np.ndarray,
        pool: UniformPool,
    ) -> None:
        """The benign ``expired`` calls: the same request first tried with the previous, expired token."""
        if chains.retry_event.size == 0:
            return
        idx = chains.retry_event
        back = np.array([pool.between(0.05, 0.4) for _ in range(idx.size)])
        self.batches.append(
            EventBatch.build(
                t=np.maximum(t[idx] - back, 0.0),
                token=chains.retry_token + first_tok,
                ip=ip[idx],
                ua=ua[idx],
                endpoint=endpoint[idx],
                reason=REASON_CODE["expired"],
            )
        )

    # -------------------------------------------------------------------------------------- browsers

    def browsers(self, rng: np.random.Generator, clients: Clients) -> None:
        p = self.params
        n = p.browsers
        scale = p.rate_scale
        pages = _sessions_chunked(
            rng, n, self.horizon, p.browser_think_s / scale, p.browser_pages_per_session, p.browser_idle_s / scale
        )
        calls = _pages_to_calls(rng, pages, p.calls_per_page, self.horizon)
        client, t = calls["client"], calls["t"]

        # Networks: home (or office NAT); now and then a switch to a VPN or a phone hotspot for a while.
        # Moves never overlap: at least _MIN_AWAY_S away, and _MIN_HOME_S back home before the next one.
        n_moves = rng.poisson(p.network_switch_per_hour * self.horizon / 3600.0, n)
        mover = np.repeat(np.arange(n), n_moves)
        away_from = rng.uniform(0.0, self.horizon, mover.shape[0])
        order = np.lexsort((away_from, mover))
        mover, away_from = mover[order], away_from[order]
        until = away_from + _MIN_AWAY_S + rng.exponential(p.network_switch_mean_s, mover.shape[0])
        next_same = np.append(mover[1:] == mover[:-1], False)
        next_from = np.append(away_from[1:], np.inf)
        until = np.where(next_same, np.minimum(until, next_from - _MIN_HOME_S), until)
        keep = until - away_from >= _MIN_AWAY_S
        mover, away_from, away_for = mover[keep], away_from[keep], (until - away_from)[keep]
        m = mover.shape[0]
        via_vpn = rng.random(m) < 0.6
        away_ip = np.where(via_vpn, self.addresses.random("vpn", m, rng), self._carrier_addresses(rng, m))
        home = clients.home_ip[:n]
        ep_client = np.concatenate([np.arange(n), mover, mover])
        ep_start = np.concatenate([np.zeros(n), away_from, away_from + away_for])
        ep_ip = np.concatenate([home, away_ip, home[mover]]).astype(np.int32)
        ip = _episode_lookup(ep_client, ep_start, ep_ip, client, t, self.horizon)
        ua = clients.ua[:n][client]
        endpoint = self.api.sample(rng, self.api.user_templates, t.shape[0], p=self.api.browser_weights)

        # Logouts: the session's token is revoked; the next session must start with a new token.
        n_sessions = int(calls["session"].max()) + 1 if t.size else 0
        logout = rng.random(n_sessions) < p.logout_per_session
        forced = calls["session_start"] & np.concatenate([[False], logout])[calls["session"]]

        pool = UniformPool(rng)
        chains = _token_chains(
            t,
            client,
            n,
            params=p,
            pool=pool,
            lazy=rng.random(n) < p.lazy_refresh_share,
            skewed=rng.random(n) < p.clock_skew_share,
            margin=self.margins(rng, n, 30.0, 120.0),
            ongoing=pages["ongoing"],
            forced=forced,
        )
        first_tok = self.add_chains(chains, 0)
        token = chains.tok_of_event + first_tok
        self.batches.append(EventBatch.build(t, token, ip, ua, endpoint, self.validity(t, token)))
        self.retries(chains, first_tok, t, ip, ua, endpoint, pool)
        self.browser_calls = (client, t, calls["session"])

        # In-flight calls right after a logout are rejected as revoked (same client, same network).
        last = np.flatnonzero(calls["session_last"] & logout[calls["session"]])
        if last.size:
            revoked_at = t[last] + rng.uniform(0.5, 3.0, last.size)
            inflight = rng.choice(3, size=last.size, p=[0.5, 0.35, 0.15])
            row = np.repeat(last, inflight)
            when = np.repeat(revoked_at, inflight) + rng.uniform(0.2, 8.0, row.size)
            keep = when < self.horizon
            poll = self.api.endpoint("GET", "/v1/notifications")
            self.batches.append(
                EventBatch.build(
                    when[keep], token[row][keep], ip[row][keep], ua[row][keep], poll, REASON_CODE["revoked"]
                )
            )
            self.revoked.extend(zip(token[last].tolist(), revoked_at.tolist(), strict=True))

        # A buggy single-page app sends "Bearer undefined" when a session starts: malformed, no claims.
        starts = np.flatnonzero(calls["session_start"])
        broken = starts[rng.random(starts.size) < p.broken_client_per_session]
        if broken.size:
            repeats = rng.integers(1, 4, broken.size)
            row = np.repeat(broken, repeats)
            when = np.maximum(t[row] - rng.uniform(0.1, 2.0, row.size), 0.0)
            self.batches.append(EventBatch.build(when, -1, ip[row], ua[row], endpoint[row], REASON_CODE["malformed"]))

    def _carrier_addresses(self, rng: np.random.Generator, n: int, carrier: np.ndarray | None = None) -> np.ndarray:
        """Random CGNAT egress addresses, of the given carriers (or of random ones)."""
        pools = np.stack(self.addresses.carrier_pools)
        which = rng.integers(0, pools.shape[0], n) if carrier is None else carrier
        addresses: np.ndarray = pools[which, rng.integers(0, pools.shape[1], n)].astype(np.int32)
        return addresses

    # -------------------------------------------------------------------------------------- mobile

    def mobile(self, rng: np.random.Generator, clients: Clients, carrier: np.ndarray) -> None:
        p = self.params
        n = p.mobile
        offset = p.browsers
        scale = p.rate_scale
        pages = _sessions_chunked(
            rng, n, self.horizon, p.mobile_think_s / scale, p.mobile_pages_per_session, p.mobile_idle_s / scale
        )
        calls = _pages_to_calls(rng, pages, p.calls_per_page, self.horizon)
        client, t = calls["client"], calls["t"]

        # The phone's address changes often within its carrier's CGNAT pools (shared by many users),
        # and sometimes it is on the home Wi-Fi.
        n_changes = rng.poisson(self.horizon / p.mobile_ip_change_s, n)
        changer = np.repeat(np.arange(n), n_changes)
        ep_client = np.concatenate([np.arange(n), changer])
        ep_start = np.concatenate([np.zeros(n), rng.uniform(0.0, self.horizon, changer.size)])
        carrier_ip = self._carrier_addresses(rng, ep_client.size, carrier[ep_client])
        on_wifi = rng.random(ep_client.size) < p.mobile_wifi_share
        ep_ip = np.where(on_wifi, clients.home_ip[offset + ep_client], carrier_ip).astype(np.int32)
        ip = _episode_lookup(ep_client, ep_start, ep_ip, client, t, self.horizon)
        if p.pingpong_share > 0:
            carrier_now = _episode_lookup(ep_client, ep_start, carrier_ip, client, t, self.horizon)
            ip = self._pingpong(clients, client, t, ip, carrier_now)
        ua = clients.ua[offset : offset + n][client]
        endpoint = self.api.sample(rng, self.api.user_templates, t.shape[0], p=self.api.mobile_weights)

        pool = UniformPool(rng)
        chains = _token_chains(
            t,
            client,
            n,
            params=p,
            pool=pool,
            lazy=rng.random(n) < p.lazy_refresh_share,
            skewed=rng.random(n) < p.clock_skew_share,
            margin=self.margins(rng, n, 30.0, 120.0),
            ongoing=pages["ongoing"],
        )
        first_tok = self.add_chains(chains, offset)
        token = chains.tok_of_event + first_tok
        self.batches.append(EventBatch.build(t, token, ip, ua, endpoint, self.validity(t, token)))
        self.retries(chains, first_tok, t, ip, ua, endpoint, pool)

    def _pingpong(
        self, clients: Clients, client: np.ndarray, t: np.ndarray, ip: np.ndarray, carrier_now: np.ndarray
    ) -> np.ndarray:
        """Phones that flip between the home Wi-Fi and the carrier every minute or two, keeping their token
        (a weak Wi-Fi signal at the edge of the flat): the same token alternates between two networks."""
        p = self.params
        rng = stream(p.population, "pingpong")  # its own stream: the other mobile draws stay as they were
        n = p.mobile
        flipper = rng.random(n) < p.pingpong_share
        period = rng.uniform(*p.pingpong_period_s, n)
        phase = rng.random(n)
        on_wifi = (np.floor(t / period[client] + phase[client]).astype(np.int64) % 2) == 0
        home = clients.home_ip[p.browsers + client]
        self.lookalike_clients.append(("wifi_cell_pingpong", p.browsers + np.flatnonzero(flipper)))
        return np.where(flipper[client], np.where(on_wifi, home, carrier_now), ip).astype(np.int32)

    # -------------------------------------------------------------------------------------- second devices

    def second_devices(self, rng: np.random.Generator, clients: Clients) -> Clients:
        """The same app signed in on a second device (a tablet on a phone hotspot while the laptop is at the
        office or at home): its own token chain of the same ``client_id``, in use while the first device is,
        from another network. Returns the client table with the second devices appended."""
        p = self.params
        if self.browser_calls is None:
            return clients
        # Who has a second device, and which, is the population's (the same users in training and later);
        # when and from where they use it is the stream's.
        population = stream(p.population, "multi-device:who")
        users = np.flatnonzero(population.random(p.browsers) < p.multi_device_share)
        if users.size == 0:
            return clients
        device_uas = [browser_ua(population, browser_family(population)) for _ in range(users.size)]
        client, t, session = self.browser_calls
        mine = np.isin(client, users)
        spans = (
            pd.DataFrame({"session": session[mine], "client": client[mine], "t": t[mine]})
            .groupby("session", sort=True)
            .agg(client=("client", "first"), lo=("t", "min"), hi=("t", "max"))
        )
        device_of = {int(u): j for j, u in enumerate(users.tolist())}
        session_mean = p.browser_pages_per_session * p.browser_think_s / p.rate_scale
        parts_t: list[np.ndarray] = []
        parts_c: list[np.ndarray] = []
        parts_ip: list[np.ndarray] = []
        for owner, lo, hi in zip(spans["client"].tolist(), spans["lo"].tolist(), spans["hi"].tolist(), strict=True):
            if rng.random() >= p.multi_device_overlap:
                continue
            start = float(rng.uniform(lo, max(lo, hi - 30.0)))
            length = max(120.0, float(rng.exponential(session_mean)))
            gaps = _MIN_GAP_S + rng.gamma(2.0, p.browser_think_s / p.rate_scale / 2.0, int(length / _MIN_GAP_S) + 1)
            pages = start + np.concatenate([[0.0], np.cumsum(gaps)])
            pages = pages[(pages < start + length) & (pages < self.horizon)]
            k = 1 + rng.poisson(p.calls_per_page - 1.0, pages.size)
            calls = np.repeat(pages, k) + np.minimum(rng.exponential(_CALL_GAP_S, int(k.sum())), _MAX_PAGE_SPREAD_S)
            calls = np.sort(calls[calls < self.horizon])
            # A hotspot or a carrier connection (CGNAT), else some other broadband (a friend's, a café).
            if rng.random() < 0.6:
                network = int(self._carrier_addresses(rng, 1)[0])
            else:
                network = int(self.addresses.random("residential", 1, rng)[0])
            parts_t.append(calls)
            parts_c.append(np.full(calls.size, device_of[owner], dtype=np.int64))
            parts_ip.append(np.full(calls.size, network, dtype=np.int32))
        # A device is on one network at a time: a session that starts while an earlier one of the same device is
        # still going on is on that session's network (without this, two overlapping sessions put one tablet on two
        # networks at once — what a token thief looks like, not a second device).
        device_sessions: dict[int, list[tuple[float, float, int]]] = {}
        for i, calls in enumerate(parts_t):
            if calls.size:
                device_sessions.setdefault(int(parts_c[i][0]), []).append((float(calls[0]), float(calls[-1]), i))
        for sessions in device_sessions.values():
            sessions.sort()
            busy_until, network = -1.0, -1
            for first, last, i in sessions:
                if first <= busy_until:
                    parts_ip[i][:] = network
                    busy_until = max(busy_until, last)
                else:
                    busy_until, network = last, int(parts_ip[i][0])
        k_dev = users.size
        offset = len(clients)
        if parts_t:
            c = np.concatenate(parts_c)
            t2 = np.concatenate(parts_t)
            order = np.lexsort((t2, c))
            c, t2, ip2 = c[order], t2[order], np.concatenate(parts_ip)[order]
            first_ip = np.full(k_dev, -1, dtype=np.int32)
            first_ip[c[::-1]] = ip2[::-1]
        else:
            c, t2, ip2 = np.empty(0, dtype=np.int64), np.empty(0), np.empty(0, dtype=np.int32)
            first_ip = np.full(k_dev, -1, dtype=np.int32)
        first_ip = np.where(first_ip >= 0, first_ip, clients.home_ip[users]).astype(np.int32)
        extended = Clients(
            kind=np.concatenate([clients.kind, np.full(k_dev, KIND_BROWSER, dtype=np.int8)]),
            sub=np.concatenate([clients.sub, clients.sub[users]]),
            client_id=np.concatenate([clients.client_id, clients.client_id[users]]),
            ua=np.concatenate([clients.ua, self.strings.codes(device_uas)]).astype(clients.ua.dtype),
            home_ip=np.concatenate([clients.home_ip, first_ip]).astype(np.int32),
            family=clients.family + [ua_family_of(u) for u in device_uas],
        )
        self.lookalike_clients.append(("multi_device", np.concatenate([users, offset + np.arange(k_dev)])))
        if t2.size == 0:
            return extended
        ua2 = extended.ua[offset + c]
        endpoint = self.api.sample(rng, self.api.user_templates, t2.size, p=self.api.browser_weights)
        pool = UniformPool(rng)
        chains = _token_chains(
            t2,
            c,
            k_dev,
            params=p,
            pool=pool,
            lazy=rng.random(k_dev) < p.lazy_refresh_share,
            skewed=np.zeros(k_dev, dtype=bool),
            margin=self.margins(rng, k_dev, 30.0, 120.0),
            ongoing=np.zeros(k_dev, dtype=bool),
        )
        first_tok = self.add_chains(chains, offset)
        token = chains.tok_of_event + first_tok
        self.batches.append(EventBatch.build(t2, token, ip2, ua2, endpoint, self.validity(t2, token)))
        self.retries(chains, first_tok, t2, ip2, ua2, endpoint, pool)
        return extended

    # -------------------------------------------------------------------------------------- services

    def services(self, rng: np.random.Generator, clients: Clients, service_ips: list[np.ndarray]) -> None:
        p = self.params
        n = p.services
        offset = p.browsers + p.mobile
        lo, hi = p.service_rps
        # Log-uniform rates, stratified (one per 1/n quantile band) so that the total load is stable
        # across seeds: a benchmark's size should not depend on the luck of the draw.
        quantile = (rng.permutation(n) + rng.random(n)) / max(n, 1)
        rps = np.exp(math.log(lo) + quantile * (math.log(hi) - math.log(lo))) * p.rate_scale
        counts = rng.poisson(rps * self.horizon)
        client = np.repeat(np.arange(n), counts)
        # Sorted uniform times per service in one float sort: client + u orders by client, then u.
        t = (np.sort(client + rng.random(client.size)) - client) * self.horizon
        # Round-robin over the service's egress addresses (one token, several IPs: benign).
        first = np.cumsum(counts) - counts
        pos = np.arange(client.size) - first[client]
        n_ips = np.array([ips.size for ips in service_ips], dtype=np.int64)
        rr_start = rng.integers(0, 4, n)
        ip_table = np.concatenate(service_ips) if service_ips else np.empty(0, dtype=np.int32)
        ip_first = np.cumsum(n_ips) - n_ips
        ip = ip_table[ip_first[client] + (pos + rr_start[client]) % n_ips[client]] if client.size else ip_table[:0]
        ua = clients.ua[offset : offset + n][client]
        # Each service calls a few internal endpoints, with its own mix.
        endpoint = np.empty(client.size, dtype=np.int32)
        templates = self.api.service_templates
        for c in range(n):
            k = int(rng.integers(1, 4))
            mine = [templates[i] for i in rng.choice(len(templates), size=k, replace=False)]
            s, e = int(first[c]), int(first[c] + counts[c])
            endpoint[s:e] = self.api.sample(rng, mine, e - s, p=rng.dirichlet(np.ones(k)))

        pool = UniformPool(rng)
        chains = _token_chains(
            t,
            client,
            n,
            params=p,
            pool=pool,
            lazy=np.zeros(n, dtype=bool),
            skewed=np.zeros(n, dtype=bool),
            margin=self.margins(rng, n, 60.0, 120.0),
            ongoing=np.ones(n, dtype=bool),
        )
        first_tok = self.add_chains(chains, offset)
        token = chains.tok_of_event + first_tok
        self.batches.append(EventBatch.build(t, token, ip, ua, endpoint, self.validity(t, token)))


def _population(
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


def _office_pools(
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


def _split_tunnel(
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


def _ipv6_privacy(
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


def generate_baseline(params: SimulationParams, strings: Strings, addresses: AddressSpace, api: Api) -> Baseline:
    """All benign traffic of a simulation, plus token statistics for picking victims."""
    clients, office_member, carrier, office_ips, service_ips = _population(
        stream(params.population, "population"), params, strings, addresses
    )
    builder = _Builder(params, strings, addresses, api)
    if params.browsers:
        builder.browsers(stream(params.seed, "browsers"), clients)
    if params.mobile:
        builder.mobile(stream(params.seed, "mobile"), clients, carrier)
    if params.services:
        builder.services(stream(params.seed, "services"), clients, service_ips)
    if params.multi_device_share > 0:
        clients = builder.second_devices(stream(params.seed, "multi-device"), clients)

    events = EventBatch.concat(builder.batches)
    n_tok = builder.n_tokens
    owner = np.concatenate(builder.tok_owner) if builder.tok_owner else np.empty(0, dtype=np.int64)
    # Network look-alikes rewrite the addresses of benign events after the fact, each from its own random
    # stream, so that turning one on leaves every other draw (and the default world) as it was.
    event_owner = np.append(owner, -1)[events.token]  # token -1 (no token) picks the appended -1
    office_pools = [np.array([office], dtype=np.int32) for office in office_ips.tolist()]
    if params.office_egress_ips > 1 and office_ips.size:
        members = np.flatnonzero(office_member >= 0)
        builder.lookalike_clients.append(("office_pool", members))
        office_pools = _office_pools(params, events, addresses, office_ips)
        builder.lookalike_ips.append(("office_pool", np.concatenate(office_pools)))
    if params.split_tunnel_share > 0 and params.browsers:
        builder.lookalike_clients.append(("split_tunnel", _split_tunnel(params, events, event_owner, addresses)))
    ipv6_homes: dict[int, int] = {}
    if params.ipv6_share > 0:
        v6_clients, v6_ips, ipv6_homes = _ipv6_privacy(params, events, event_owner, clients, addresses)
        builder.lookalike_clients.append(("ipv6_privacy", v6_clients))
        builder.lookalike_ips.append(("ipv6_privacy", v6_ips))
    tokens = TokenTable()
    tokens.extend(
        sub=clients.sub[owner],
        client_id=clients.client_id[owner],
        iss=builder.iss,
        aud=builder.aud,
        iat=np.concatenate(builder.tok_iat) if n_tok else np.empty(0, dtype=np.int64),
        exp=np.concatenate(builder.tok_exp) if n_tok else np.empty(0, dtype=np.int64),
        jti=uuid4_strings(stream(params.seed, "jti:baseline"), n_tok),
        owner=owner,
    )

    # Per-token use statistics (accepted uses only) for the threat injectors.
    ok = (events.reason == ACCEPTED) & (events.token >= 0)
    tok = events.token[ok]
    uses = np.bincount(tok, minlength=n_tok).astype(np.int64)
    first = np.full(n_tok, np.inf)
    last = np.full(n_tok, -np.inf)
    np.minimum.at(first, tok, events.t[ok])
    np.maximum.at(last, tok, events.t[ok])
    first[uses == 0] = np.nan
    last[uses == 0] = np.nan
    revoked_at = np.full(n_tok, np.nan)
    for token, when in builder.revoked:
        revoked_at[token] = when
    lookalikes: list[tuple[str, str, str]] = []
    if builder.lookalike_clients or builder.lookalike_ips:
        jti = tokens.arrays()["jti"]
        for kind, members in builder.lookalike_clients:
            for sub in sorted({strings.values[int(c)] for c in clients.sub[members].tolist()}):
                lookalikes.append((kind, "sub", sub))
            lookalikes += [(kind, "jti", str(j)) for j in jti[:n_tok][np.isin(owner, members)].tolist()]
        for kind, ips in builder.lookalike_ips:
            lookalikes += [(kind, "ip", strings.values[int(c)]) for c in np.unique(ips).tolist()]
    return Baseline(
        events=events,
        clients=clients,
        tokens=tokens,
        n_tokens=n_tok,
        tok_first=first,
        tok_last=last,
        tok_uses=uses,
        tok_revoked_at=revoked_at,
        office_ips=office_ips,
        lookalikes=lookalikes,
        office_pools=office_pools,
        ipv6_homes=ipv6_homes,
    )
