"""Synthetic token-usage/1 traffic with labelled attacks — for training, evaluation, benchmarks and the demo.

    from pipeline.simulate import SimulationParams, simulate
    sim = simulate(SimulationParams(minutes=30, seed=7))
    sim.events        # pandas DataFrame, sorted by ts (epoch ms), token-usage/1 columns + incident_id
    sim.incidents     # list[Incident]: the ground truth, one per injected attack
    sim.networks      # the world's networks: CIDR -> autonomous system and kind (io.write_ip_db: a .mmdb)

Benign traffic (what a detector must not alert on): browser users with a home address or an office NAT
(many users per IP), sessions of bursty page loads, think time and idle; occasional moves to a VPN or a
phone hotspot (a switch, never concurrent use); mobile apps hopping between carrier CGNAT addresses shared
by many users; service accounts at 2-20 req/s round-robin over 2-4 data-centre addresses (one token, several
IPs — some spanning two regions); token refresh about every ttl (new jti), lazy clients that refresh only
after a benign ``expired``, clock-skewed ``not_yet_valid``, ``revoked`` calls in flight at logout, and
"Bearer undefined" ``malformed`` from buggy single-page apps.

Threats (:data:`THREATS`): ``stolen_replay``, ``token_sharing``, ``forged_probing``, ``revoked_replay``,
``rate_abuse``, ``low_and_slow`` — ``incidents_per_threat`` of each, their events labelled with
``incident_id``.

Deterministic: everything derives from ``params.seed`` through named random streams; the wall clock and OS
entropy are never read. The baseline does not depend on which threats are injected. File output lives in
:mod:`pipeline.simulate.io`.
"""

from pipeline.simulate.mix import iter_records, simulate, ts_strings
from pipeline.simulate.model import EVENT_COLUMNS, THREATS, Incident, Simulation, SimulationParams

__all__ = [
    "EVENT_COLUMNS",
    "THREATS",
    "Incident",
    "Simulation",
    "SimulationParams",
    "iter_records",
    "simulate",
    "ts_strings",
]
