"""Benign traffic: browsers, mobile apps and service accounts, with their tokens and their benign failures.

This is what a detector must *not* alert on. Each client class is generated in bulk (numpy), client-major
and time-sorted within a client; only the token chain (one short loop iteration per token, not per event)
is a Python loop.

Who the clients are is drawn in ``population.py``; when they call, in ``sessions.py``; which token each call
carries, in ``chains.py``; how each class behaves, in ``behaviours.py``; the benign look-alikes of an attack, in
``lookalikes.py``. This module puts them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.simulate import lookalikes as looks
from pipeline.simulate.behaviours import Builder
from pipeline.simulate.model import SimulationParams
from pipeline.simulate.population import Clients, population
from pipeline.simulate.tables import ACCEPTED, EventBatch, TokenTable
from pipeline.simulate.world import AddressSpace, Api, Strings, stream, uuid4_strings


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


def generate_baseline(params: SimulationParams, strings: Strings, addresses: AddressSpace, api: Api) -> Baseline:
    """All benign traffic of a simulation, plus token statistics for picking victims."""
    clients, office_member, carrier, office_ips, service_ips = population(
        stream(params.population, "population"), params, strings, addresses
    )
    builder = Builder(params, strings, addresses, api)
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
        office_pools = looks.office_pools(params, events, addresses, office_ips)
        builder.lookalike_ips.append(("office_pool", np.concatenate(office_pools)))
    if params.split_tunnel_share > 0 and params.browsers:
        builder.lookalike_clients.append(("split_tunnel", looks.split_tunnel(params, events, event_owner, addresses)))
    ipv6_homes: dict[int, int] = {}
    if params.ipv6_share > 0:
        v6_clients, v6_ips, ipv6_homes = looks.ipv6_privacy(params, events, event_owner, clients, addresses)
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


__all__ = ["Baseline", "Clients", "generate_baseline"]
