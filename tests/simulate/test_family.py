"""The simulator family: reproducible draws, an unchanged default world, each look-alike doing what it
claims, and the held-out evaluation's metrics on small hand-made inputs."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.detection.evaluate import Evaluation, ThreatResult, across_worlds, lookalike_rates, wilson_interval
from pipeline.detection.training import data_hash
from pipeline.simulate import Simulation, SimulationParams, simulate
from pipeline.simulate.family import DIMENSIONS, WorldFamily, train_params
from pipeline.simulate.model import LOOKALIKES
from tests.support.paths import REPO

SMALL = SimulationParams(minutes=8, seed=3, browsers=60, mobile=30, services=4, offices=3, incidents_per_threat=2)
# Every look-alike on, in one small world.
LOOKALIKE_WORLD = dataclasses.replace(
    SMALL,
    minutes=15,
    browsers=100,
    mobile=60,
    multi_device_share=0.3,
    multi_device_overlap=0.9,
    pingpong_share=0.4,
    pingpong_period_s=(60.0, 90.0),
    ipv6_share=0.4,
    ipv6_rotate_s=300.0,
    office_egress_ips=4,
    split_tunnel_share=0.3,
    split_tunnel_via_vpn=0.5,
)


@pytest.fixture(scope="module")
def world() -> pd.DataFrame:
    return simulate(LOOKALIKE_WORLD)


def incident_digest(sim) -> str:
    fields = [(i.incident_id, i.threat, i.start, i.end, i.subs, i.jtis, i.ips, i.description) for i in sim.incidents]
    return hashlib.sha256(repr(fields).encode()).hexdigest()


# ------------------------------------------------------------------------------------------ defaults


def test_the_default_world_is_byte_for_byte_what_it_was_before_the_family() -> None:
    # Digests taken before the family's parameters existed (commit dd9819d): its defaults must change nothing.
    sim = simulate(SMALL)
    assert data_hash(sim.events.astype({"incident_id": str})) == (
        "6e1422448fa428c1380ea8d7b8c987c66364545ac8aff261021db1aea0f7369c"
    )
    assert incident_digest(sim) == "bc4eb3f07fc2c36d319e6b8e24717086141254344cf495f1fecde2e269e57520"
    assert sim.lookalikes.empty


# ------------------------------------------------------------------------------------------ the family


def test_family_draws_are_reproducible_and_differ_by_index_region_and_seed() -> None:
    family = WorldFamily(seed=4, minutes=5, browsers=30)
    assert family.world(2, "heldout") == WorldFamily(seed=4, minutes=5, browsers=30).world(2, "heldout")
    a = simulate(family.world(1).params)
    b = simulate(WorldFamily(seed=4, minutes=5, browsers=30).world(1).params)
    assert a.events.equals(b.events) and a.incidents == b.incidents and a.lookalikes.equals(b.lookalikes)
    params = {family.world(0, "heldout").params, family.world(1, "heldout").params, family.world(0, "tuning").params}
    params.add(WorldFamily(seed=5, minutes=5, browsers=30).world(0, "heldout").params)
    assert len(params) == 4


def test_heldout_worlds_draw_every_dimension_outside_the_tuning_region() -> None:
    family = WorldFamily(seed=1)
    for world in family.worlds(5, "heldout") + family.worlds(5, "tuning"):
        for dim in DIMENSIONS:
            lo, hi = dim.bounds(world.region)
            assert lo <= world.draws[dim.name] <= hi
            t_lo, t_hi = dim.tuning
            if world.region == "heldout":
                assert not t_lo < world.draws[dim.name] < t_hi, dim.name
        weights = world.params.attack_networks
        if world.region == "tuning":
            assert weights[3] == weights[4] == 0.0  # no carrier or broadband attackers to tune on


def test_the_training_stream_of_a_world_is_attack_free_and_another_stretch_of_time() -> None:
    params = WorldFamily(seed=2, minutes=5, browsers=20).world(0).params
    training = train_params(params)
    assert training.threats == () and training.seed != params.seed
    # The same users (population), just before the labelled stream.
    assert training.population == params.population and training.start + 60 * training.minutes == params.start
    same = dataclasses.replace(training, seed=params.seed, threats=params.threats, start=params.start)
    assert same == dataclasses.replace(params, population_seed=params.seed)


def test_the_training_stream_has_the_same_users_at_another_time() -> None:
    params = WorldFamily(seed=2, minutes=5, browsers=20).world(0).params
    test, training = simulate(params), simulate(train_params(params))

    def agents(s: Simulation) -> dict[str, set[str]]:
        benign = s.events[s.events["incident_id"].isna() & s.events["sub"].notna()]
        return benign.groupby("sub")["user_agent"].agg(lambda x: set(x.dropna())).to_dict()

    # The users active in both streams use the same clients, yet the events are others.
    before, after = agents(training), agents(test)
    both = sorted(set(before) & set(after))
    assert len(both) >= 10
    # (not all: one may use only their phone in one stretch and only their laptop in the other)
    assert sum(bool(before[sub] & after[sub]) for sub in both) >= 0.9 * len(both)
    assert not set(test.events["event_id"]) & set(training.events["event_id"])
    assert training.events["ts"].max() <= test.events["ts"].min() + 1000


@pytest.mark.parametrize("bad", [{"attack_networks": (1.0, 0.0)}, {"attack_networks": (0, 0, 0, 1, 1)},
                                 {"office_egress_ips": 0}, {"pingpong_share": 1.5}])  # fmt: skip
def test_bad_family_parameters_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        SimulationParams(**bad)


# ------------------------------------------------------------------------------------------ look-alikes


def labelled(sim, kind: str, entity_type: str) -> set[str]:
    rows = sim.lookalikes[(sim.lookalikes["kind"] == kind) & (sim.lookalikes["entity_type"] == entity_type)]
    return set(rows["entity"])


def benign(sim) -> pd.DataFrame:
    return sim.events[sim.events["incident_id"].isna() & sim.events["reason"].isna()]


def test_every_lookalike_kind_is_labelled(world) -> None:
    assert set(world.lookalikes["kind"]) == set(LOOKALIKES)
    assert set(world.lookalikes["entity_type"]) <= {"jti", "sub", "ip"}


def test_multi_device_is_two_tokens_of_one_client_overlapping_from_two_networks(world) -> None:
    events = benign(world)
    subs = labelled(world, "multi_device", "sub")
    found = 0
    for sub in subs:
        mine = events[events["sub"] == sub]
        spans = mine.groupby("jti").agg(lo=("ts", "min"), hi=("ts", "max"), client=("client_id", "first"))
        ips = mine.groupby("jti")["ip"].agg(set)
        rows = list(spans.itertuples())
        for i, a in enumerate(rows):
            for b in rows[i + 1 :]:
                overlap = min(a.hi, b.hi) - max(a.lo, b.lo)
                if a.client == b.client and overlap >= 60_000 and not ips[a.Index] & ips[b.Index]:
                    found += 1
                    assert {a.Index, b.Index} <= labelled(world, "multi_device", "jti")
    assert found >= 5, "second devices should run alongside the first, from another network"


def test_a_second_device_is_on_one_network_at_a_time(world) -> None:
    """Its overlapping sessions share the network: never one tablet's token back and forth between two networks
    within seconds (that is what a thief replaying it while its owner goes on looks like)."""
    events = benign(world).sort_values("ts")
    # Tokens of multi-device users that no look-alike of another kind touches (an office pool spans /16s).
    second = labelled(world, "multi_device", "jti")
    for other in ("office_pool", "split_tunnel", "ipv6_privacy", "wifi_cell_pingpong"):
        second -= labelled(world, other, "jti")
    checked = 0
    for jti, rows in events[events["jti"].isin(second)].groupby("jti"):
        ts, ips = rows["ts"].to_numpy(), rows["ip"].to_numpy()
        prefixes = [ip.rsplit(".", 2)[0] for ip in ips]
        quick_flips = sum(
            1
            for i in range(2, len(ips))
            if prefixes[i] == prefixes[i - 2] != prefixes[i - 1] and ts[i] - ts[i - 2] <= 30_000
        )
        checked += 1
        assert quick_flips == 0, f"token {jti} flips between networks within seconds"
    assert checked >= 10


def test_wifi_cell_pingpong_alternates_one_token_between_home_and_carrier(world) -> None:
    events = benign(world)
    flips = []
    for jti in labelled(world, "wifi_cell_pingpong", "jti"):
        ips = events.loc[events["jti"] == jti, "ip"].tolist()
        flips.append(sum(1 for x, y in itertools.pairwise(ips) if x != y))
    assert max(flips) >= 4  # back and forth, not one handover


def test_ipv6_privacy_rotates_the_interface_id_within_one_64(world) -> None:
    v6 = labelled(world, "ipv6_privacy", "ip")
    assert v6 and all(ipaddress.ip_address(ip).version == 6 for ip in v6)
    events = benign(world)
    rotated = 0
    for sub in labelled(world, "ipv6_privacy", "sub"):
        ips = [ipaddress.ip_address(ip) for ip in events.loc[events["sub"] == sub, "ip"].unique() if ":" in ip]
        nets = {ipaddress.ip_network(f"{ip}/64", strict=False) for ip in ips}
        if len(ips) >= 2 and len(nets) == 1:
            rotated += 1
    assert rotated >= 3
    assert events["ip"].str.contains(":").any() and (~events["ip"].str.contains(":")).any()  # a dual-stack mix


def test_office_pools_spread_one_office_over_several_networks(world) -> None:
    pool = labelled(world, "office_pool", "ip")
    assert len({".".join(ip.split(".")[:2]) for ip in pool}) >= 4
    events = benign(world)
    per_token = events[events["ip"].isin(pool)].groupby("jti")["ip"].nunique()
    assert per_token.max() >= 3


def test_split_tunnel_interleaves_a_vpn_and_the_direct_network_on_one_token(world) -> None:
    events = benign(world)
    jtis = labelled(world, "split_tunnel", "jti")
    assert max(events[events["jti"].isin(jtis)].groupby("jti")["ip"].nunique()) >= 2


def test_attackers_can_copy_the_victims_user_agent_from_carrier_and_broadband() -> None:
    params = dataclasses.replace(
        SMALL, threats=("stolen_replay",), incidents_per_threat=8, replay_ua_copy=1.0,
        attack_networks=(0.0, 0.0, 0.0001, 0.5, 0.5),
    )  # fmt: skip
    sim = simulate(params)
    for incident in sim.incidents:
        network, ua, _ = incident.variant.split(", ")
        assert network in ("carrier", "residential", "vpn") and ua == "owner UA"
        attack = sim.events[sim.events["incident_id"] == incident.incident_id]
        owner = sim.events[sim.events["jti"].isin(incident.jtis) & sim.events["incident_id"].isna()]
        assert set(attack["user_agent"]) <= set(owner["user_agent"])
        assert not set(attack["ip"]) & set(owner["ip"])


# ------------------------------------------------------------------------------------------ metrics


def test_wilson_interval_matches_known_values() -> None:
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def make_eval(recalls: dict[str, tuple[int, int]], subjects: tuple[int, int], lookalikes=None) -> Evaluation:
    return Evaluation(
        threats={t: ThreatResult(t, n, k, [float(k)] * k) for t, (n, k) in recalls.items()},
        benign_tokens=100, benign_tokens_alerted=1, benign_ips=50, benign_ips_alerted=0,
        benign_subjects=subjects[0], benign_subjects_alerted=subjects[1], alerts=5, false_alerts=2, missed=[],
        lookalikes=lookalikes or {},
    )  # fmt: skip


def test_across_worlds_reports_median_and_worst_world_and_pools_rates() -> None:
    worlds = [
        make_eval({"stolen_replay": (4, 4), "rate_abuse": (2, 2)}, (20, 0), {"multi_device": {"sub": (5, 1)}}),
        make_eval({"stolen_replay": (4, 1), "rate_abuse": (2, 2)}, (20, 5), {"multi_device": {"sub": (5, 4)}}),
        make_eval({"stolen_replay": (4, 3), "rate_abuse": (2, 1)}, (10, 1)),
    ]
    out = across_worlds(worlds)
    replay = out["threats"]["stolen_replay"]
    assert replay["worst_world_recall"] == 0.25 and replay["median_world_recall"] == 0.75
    assert replay["recall"]["count"] == 8 and replay["recall"]["of"] == 12
    assert out["threats"]["rate_abuse"]["worst_world_recall"] == 0.5
    subjects = out["benign_alerted"]["subjects"]
    assert (subjects["count"], subjects["of"], subjects["worst_world_rate"]) == (6, 50, 0.25)
    assert subjects["ci95"][0] < 6 / 50 < subjects["ci95"][1]
    assert (
        out["lookalikes"]["multi_device"]["sub"]["count"] == 5 and out["lookalikes"]["multi_device"]["sub"]["of"] == 10
    )
    assert out["worst_world_recall"] == 0.5 and out["median_world_recall"] == pytest.approx(4 / 6)  # 1+2 of 6 worst


def test_lookalike_rates_leave_out_entities_an_incident_involves() -> None:
    labels = pd.DataFrame(
        [("multi_device", "sub", "u1"), ("multi_device", "sub", "u2"), ("multi_device", "sub", "u3"),
         ("ipv6_privacy", "ip", "2a02::1")], columns=["kind", "entity_type", "entity"],
    )  # fmt: skip
    rates = lookalike_rates(labels, {"sub": {"u1", "u3"}, "ip": set(), "jti": set()}, {"sub": {"u3"}})
    assert rates == {"multi_device": {"sub": (2, 1)}, "ipv6_privacy": {"ip": (1, 0)}}


# ------------------------------------------------------------------------------------------ the benchmark


@pytest.mark.timeout(300)
def test_bench_detection_quick_runs_heldout_worlds(tmp_path: Path) -> None:
    out = tmp_path / "heldout.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-m", "bench.detection", "--size", "quick", "--out", str(out)],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=280,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["mode"] == "heldout" and report["family"]["worlds"] == 2
    setups = [setup["name"] for setup in report["setups"]]
    assert report["headline_model"] == setups[0]
    # With and without the world's IP database, with and without the history training learned, the shipped model.
    flags = {(s["trained_per_world"], s["ip_db"], s["history"]) for s in report["setups"]}
    assert {(True, True, True), (True, False, True), (True, True, False), (False, False, False)} <= flags
    for which in setups:
        figures = report["figures"][which]
        assert figures["worlds"] == 2
        assert set(figures["benign_alerted"]) == {"tokens", "ips", "subjects"}
        assert figures["threats"]["stolen_replay"]["incidents"] == 4
        assert set(figures["lookalikes"]) == set(LOOKALIKES)
