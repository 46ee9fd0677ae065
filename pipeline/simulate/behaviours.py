"""How each client class behaves: browsers (sessions, network moves, logouts, a buggy app), mobile apps (CGNAT
hopping, home Wi-Fi, Wi-Fi/cell ping-pong), second devices of browser users, and service accounts (steady
round-robin over their egress addresses). :class:`Builder` collects their events and tokens."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline.simulate.chains import Chains, token_chains
from pipeline.simulate.model import SimulationParams
from pipeline.simulate.population import Clients, ua_family_of
from pipeline.simulate.sessions import (
    CALL_GAP_S,
    MAX_PAGE_SPREAD_S,
    MIN_GAP_S,
    episode_lookup,
    pages_to_calls,
    sessions_chunked,
)
from pipeline.simulate.tables import ACCEPTED, KIND_BROWSER, REASON_CODE, EventBatch, epoch_s
from pipeline.simulate.world import AddressSpace, Api, Strings, UniformPool, browser_family, browser_ua, stream

_MIN_AWAY_S = 120.0  # a browser user's move to a VPN / hotspot lasts at least this long
_MIN_HOME_S = 300.0  # ... and is followed by at least this long back on the home network


class Builder:
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

    def add_chains(self, chains: Chains, client_offset: int) -> int:
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
        chains: Chains,
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
        pages = sessions_chunked(
            rng, n, self.horizon, p.browser_think_s / scale, p.browser_pages_per_session, p.browser_idle_s / scale
        )
        calls = pages_to_calls(rng, pages, p.calls_per_page, self.horizon)
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
        ip = episode_lookup(ep_client, ep_start, ep_ip, client, t, self.horizon)
        ua = clients.ua[:n][client]
        endpoint = self.api.sample(rng, self.api.user_templates, t.shape[0], p=self.api.browser_weights)

        # Logouts: the session's token is revoked; the next session must start with a new token.
        n_sessions = int(calls["session"].max()) + 1 if t.size else 0
        logout = rng.random(n_sessions) < p.logout_per_session
        forced = calls["session_start"] & np.concatenate([[False], logout])[calls["session"]]

        pool = UniformPool(rng)
        chains = token_chains(
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
        pages = sessions_chunked(
            rng, n, self.horizon, p.mobile_think_s / scale, p.mobile_pages_per_session, p.mobile_idle_s / scale
        )
        calls = pages_to_calls(rng, pages, p.calls_per_page, self.horizon)
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
        ip = episode_lookup(ep_client, ep_start, ep_ip, client, t, self.horizon)
        if p.pingpong_share > 0:
            carrier_now = episode_lookup(ep_client, ep_start, carrier_ip, client, t, self.horizon)
            ip = self._pingpong(clients, client, t, ip, carrier_now)
        ua = clients.ua[offset : offset + n][client]
        endpoint = self.api.sample(rng, self.api.user_templates, t.shape[0], p=self.api.mobile_weights)

        pool = UniformPool(rng)
        chains = token_chains(
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
            gaps = MIN_GAP_S + rng.gamma(2.0, p.browser_think_s / p.rate_scale / 2.0, int(length / MIN_GAP_S) + 1)
            pages = start + np.concatenate([[0.0], np.cumsum(gaps)])
            pages = pages[(pages < start + length) & (pages < self.horizon)]
            k = 1 + rng.poisson(p.calls_per_page - 1.0, pages.size)
            calls = np.repeat(pages, k) + np.minimum(rng.exponential(CALL_GAP_S, int(k.sum())), MAX_PAGE_SPREAD_S)
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
        chains = token_chains(
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
        chains = token_chains(
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


__all__ = ["Builder"]
