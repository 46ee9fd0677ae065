"""The traffic simulator: determinism, the token-usage/1 contract, labelled threats, realism, file output."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.events import REASONS, TOKEN_USAGE_ARROW, TokenUsage, format_ts, parse_ts
from pipeline.simulate import (
    EVENT_COLUMNS,
    THREATS,
    Incident,
    Simulation,
    SimulationParams,
    iter_records,
    simulate,
    ts_strings,
)
from pipeline.simulate.io import read_labels, write_events, write_labels
from pipeline.simulate.mix import record_columns

SMALL = SimulationParams(minutes=8, seed=3, browsers=60, mobile=30, services=4, offices=3, incidents_per_threat=2)
WIRE_FIELDS = [c for c in EVENT_COLUMNS if c != "incident_id"]
FORGED = {"bad_signature", "unknown_kid", "alg_not_allowed", "malformed"}


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(SimulationParams())


@pytest.fixture(scope="module")
def small() -> Simulation:
    return simulate(SMALL)


def prefix16(ip: str) -> str:
    return ".".join(ip.split(".")[:2])


def baseline(s: Simulation) -> pd.DataFrame:
    return s.events[s.events["incident_id"].isna()]


def labelled(s: Simulation, incident: Incident) -> pd.DataFrame:
    return s.events[s.events["incident_id"] == incident.incident_id]


def window(s: Simulation, incident: Incident) -> pd.DataFrame:
    ts = s.events["ts"]
    return s.events[(ts >= round(incident.start * 1000)) & (ts <= round(incident.end * 1000))]


def of_threat(s: Simulation, threat: str) -> list[Incident]:
    return [i for i in s.incidents if i.threat == threat]


# ------------------------------------------------------------------------------------------ determinism


def test_same_params_give_identical_traffic(small: Simulation) -> None:
    again = simulate(SMALL)
    assert again.events.equals(small.events)
    assert again.incidents == small.incidents


def test_different_seed_gives_different_traffic(small: Simulation) -> None:
    other = simulate(SimulationParams(**{**SMALL.__dict__, "seed": SMALL.seed + 1}))
    assert not other.events.equals(small.events)
    assert not set(other.events["event_id"]) & set(small.events["event_id"])
    assert not set(other.events["jti"].dropna()) & set(small.events["jti"].dropna())


def test_injected_threats_leave_the_baseline_untouched(small: Simulation) -> None:
    quiet = simulate(SimulationParams(**{**SMALL.__dict__, "threats": ()}))
    assert quiet.incidents == []
    assert quiet.events["incident_id"].isna().all()
    assert baseline(small).reset_index(drop=True).equals(quiet.events)


def test_default_size_is_in_range(sim: Simulation) -> None:
    assert 300_000 <= len(sim.events) <= 1_000_000


# ------------------------------------------------------------------------------------------ schema


def test_columns_dtypes_and_order(sim: Simulation) -> None:
    events = sim.events
    assert tuple(events.columns) == EVENT_COLUMNS
    assert events["ts"].dtype == np.int64
    assert events["ts"].is_monotonic_increasing
    assert str(events["iat"].dtype) == "Int64" and str(events["exp"].dtype) == "Int64"
    for name in EVENT_COLUMNS:
        if name not in ("ts", "iat", "exp"):
            assert events[name].dtype == object, name
    assert events["event_id"].is_unique
    start_ms = sim.params.start * 1000
    assert events["ts"].min() >= start_ms and events["ts"].max() < start_ms + sim.params.duration_s * 1000


def test_rows_are_valid_token_usage_records(sim: Simulation) -> None:
    events = sim.events
    rng = np.random.default_rng(0)
    rows = np.unique(
        np.concatenate(
            [
                rng.choice(len(events), size=3000, replace=False),
                np.flatnonzero((events["outcome"] == "rejected").to_numpy())[:1500],
                np.flatnonzero(events["incident_id"].notna().to_numpy())[::7],
            ]
        )
    )
    sample = events.iloc[rows]
    columns = record_columns(sample)
    for i in range(len(sample)):
        data = {"schema": "token-usage/1", **{name: columns[name][i] for name in WIRE_FIELDS}}
        record = TokenUsage.from_dict(data)
        assert record.to_dict() == data
        assert uuid.UUID(record.event_id).version == 4
    first = list(iter_records(events.iloc[:500]))
    assert [r.event_id for r in first] == events["event_id"].iloc[:500].tolist()
    assert first[0].ts == format_ts(int(events["ts"].iloc[0]) / 1000)


def test_ts_strings_match_format_ts() -> None:
    ms = np.array([0, 1, 999, 1_790_000_000_123, 1_790_000_000_999, 1_790_001_234_567], dtype=np.int64)
    assert ts_strings(ms).tolist() == [format_ts(int(m) / 1000) for m in ms]


def test_outcome_and_reason_agree_with_the_token(sim: Simulation) -> None:
    events = sim.events
    leeway = sim.params.leeway_s
    accepted = events["outcome"] == "accepted"
    assert set(events["outcome"].unique()) == {"accepted", "rejected"}
    assert events.loc[accepted, "reason"].isna().all()
    assert events.loc[~accepted, "reason"].isin(REASONS).all()
    now = events["ts"] / 1000
    ok = events[accepted]
    assert ok["jti"].notna().all() and ok["sub"].notna().all()
    assert (ok["iss"] == sim.params.issuer).all() and (ok["aud"] == sim.params.audience).all()
    assert ((ok["iat"] <= now[accepted] + leeway) & (now[accepted] < ok["exp"] + leeway)).all()
    expired = events["reason"] == "expired"
    assert (now[expired] >= events.loc[expired, "exp"] + leeway).all()
    early = events["reason"] == "not_yet_valid"
    assert (events.loc[early, "iat"] > now[early] + leeway).all()
    malformed = events[events["reason"] == "malformed"]
    assert malformed[["jti", "sub", "iss", "aud", "client_id", "iat", "exp"]].isna().all().all()
    assert events["ip"].notna().all() and events["service"].notna().all()


# ------------------------------------------------------------------------------------------ labels


@pytest.mark.parametrize("fixture", ["sim", "small"])
def test_every_threat_has_its_incidents_and_labelled_events(fixture: str, request: pytest.FixtureRequest) -> None:
    s: Simulation = request.getfixturevalue(fixture)
    per = s.params.incidents_per_threat
    assert sorted(i.threat for i in s.incidents) == sorted(t for t in THREATS for _ in range(per))
    ids = [i.incident_id for i in s.incidents]
    assert len(set(ids)) == len(ids)
    assert set(s.events["incident_id"].dropna()) == set(ids)
    for incident in s.incidents:
        rows = labelled(s, incident)
        assert len(rows) >= 3, incident.incident_id
        assert rows["ts"].min() == round(incident.start * 1000)
        assert rows["ts"].max() == round(incident.end * 1000)
        assert incident.start < incident.end and incident.ips and incident.subs and incident.description
        assert set(rows["ip"]) == set(incident.ips)
        assert set(incident.jtis) == set(rows["jti"].dropna())
        assert set(incident.subs) == set(rows["sub"].dropna())


def test_baseline_only_traffic_has_no_incidents() -> None:
    quiet = simulate(SimulationParams(minutes=5, browsers=40, mobile=20, services=3, threats=()))
    assert quiet.incidents == []
    assert quiet.events["incident_id"].isna().all()


def test_other_parameters_for_evaluation() -> None:
    params = SimulationParams(
        minutes=20,
        seed=11,
        browsers=120,
        mobile=40,
        services=6,
        offices=4,
        token_ttl_s=300,
        incidents_per_threat=2,
        threats=("rate_abuse", "low_and_slow", "stolen_replay"),
        abuse_rps=(8.0, 12.0),
        slow_interval_s=(60.0, 90.0),
        browser_think_s=40.0,
    )
    s = simulate(params)
    assert [i.threat for i in s.incidents] == [t for t in params.threats for _ in range(2)]
    base = baseline(s)
    assert ((base["exp"] - base["iat"]) == 300).all()
    for incident in of_threat(s, "rate_abuse"):
        rows = labelled(s, incident)
        rate = len(rows) / max((rows["ts"].max() - rows["ts"].min()) / 1000, 1.0)
        assert 5.0 <= rate <= 16.0
    for incident in of_threat(s, "low_and_slow"):
        gaps = np.diff(labelled(s, incident)["ts"].to_numpy()) / 1000
        assert 60 * 0.7 - 1 <= np.median(gaps) <= 90 * 1.3 + 1
        assert len(incident.jtis) >= 2  # successive tokens minted from a stolen refresh token


def test_tiny_population_still_injects_every_threat() -> None:
    s = simulate(SimulationParams(minutes=2, browsers=0, mobile=0, services=0, offices=0, incidents_per_threat=1))
    assert sorted(i.threat for i in s.incidents) == sorted(THREATS)
    assert s.events["incident_id"].notna().all()


@pytest.mark.parametrize(
    "changes",
    [{"threats": ("nope",)}, {"minutes": 0}, {"browsers": -1}, {"token_ttl_s": 10}, {"abuse_rps": (5.0, 1.0)}],
)
def test_bad_parameters_are_refused(changes: dict) -> None:
    with pytest.raises(ValueError):
        SimulationParams(**changes)


# ------------------------------------------------------------------------------------------ realism: benign


def test_service_accounts_use_several_datacentre_ips_with_one_token(sim: Simulation) -> None:
    base = baseline(sim)
    services = base[base["sub"].str.startswith("svc-", na=False)]
    assert services["sub"].nunique() == sim.params.services
    per_sub = services.groupby("sub").agg(ips=("ip", "nunique"), uas=("user_agent", "nunique"), n=("ts", "size"))
    assert (per_sub["ips"] >= 2).all() and (per_sub["ips"] <= 4).all()
    assert (per_sub["uas"] == 1).all()
    assert (per_sub["n"] / sim.params.duration_s >= 1.0).all()  # high, steady rate
    assert (services.groupby("jti")["ip"].nunique() >= 2).mean() > 0.9  # one token, round-robin over IPs
    assert (services["client_id"] == services["sub"]).all()


def test_offices_put_many_users_behind_one_ip(sim: Simulation) -> None:
    base = baseline(sim)
    users = base[base["client_id"] == "web-spa"]
    subs_per_ip = users.groupby("ip")["sub"].nunique()
    assert (subs_per_ip >= 10).sum() >= 2


def test_mobile_apps_hop_between_shared_carrier_addresses(sim: Simulation) -> None:
    base = baseline(sim)
    mobile = base[base["client_id"].isin(["mobile-ios", "mobile-android"])]
    assert mobile["user_agent"].str.startswith("ExampleApp/").all()
    assert (mobile.groupby("jti")["ip"].nunique() >= 2).mean() > 0.3
    assert mobile.groupby("ip")["sub"].nunique().max() >= 4  # CGNAT


def test_browser_network_changes_are_switches_not_alternation(sim: Simulation) -> None:
    base = baseline(sim)
    web = base[(base["client_id"] == "web-spa") & base["jti"].notna()].sort_values(["jti", "ts"], kind="stable")
    ips, jtis, ts = web["ip"].to_numpy(), web["jti"].to_numpy(), web["ts"].to_numpy()
    change = np.flatnonzero((ips[1:] != ips[:-1]) & (jtis[1:] == jtis[:-1])) + 1
    assert change.size > 0  # moves to a VPN or a hotspot do happen ...
    # ... but as a switch: never out and back again within minutes (that is what a replay looks like).
    again = change[2:][jtis[change[2:]] == jtis[change[:-2]]]
    before = change[:-2][jtis[change[2:]] == jtis[change[:-2]]]
    assert (ts[again] - ts[before] >= 295_000).all()
    assert web.groupby("sub")["user_agent"].nunique().max() == 1


def test_tokens_refresh_and_benign_rejections_exist(sim: Simulation) -> None:
    base = baseline(sim)
    users = base[base["client_id"] == "web-spa"]
    assert ((base["exp"] - base["iat"]).dropna() == sim.params.token_ttl_s).all()
    assert users.groupby("sub")["jti"].nunique().max() >= 3  # refreshed: new jti about every ttl
    reasons = base["reason"].value_counts()
    for reason in ("expired", "not_yet_valid", "revoked", "malformed"):
        assert reasons.get(reason, 0) > 0, reason
    assert reasons.sum() < 0.01 * len(base)  # rare
    uas = users.groupby("sub")["user_agent"].first()
    assert uas.str.contains("Edg/").any() and uas.str.contains("Firefox/").any()
    assert uas.str.contains("Version/").any() and uas.str.contains("Chrome/").any()  # Safari, Chrome


# ------------------------------------------------------------------------------------------ realism: threats


def test_stolen_replay_alternates_between_two_networks(sim: Simulation) -> None:
    for incident in of_threat(sim, "stolen_replay"):
        (jti,) = incident.jtis
        uses = window(sim, incident)
        uses = uses[uses["jti"] == jti]
        assert uses["ip"].map(prefix16).nunique() >= 2
        attacker = uses["incident_id"].notna().to_numpy()
        assert (~attacker).sum() >= 2, "the owner keeps using the token"
        assert (attacker[1:] != attacker[:-1]).sum() >= 3, "interleaved, not one after the other"
        owner_ua = set(uses.loc[~attacker, "user_agent"])
        assert not owner_ua & set(uses.loc[attacker, "user_agent"])
        assert (uses["outcome"] == "accepted").all()


def test_token_sharing_uses_one_token_from_many_ips(sim: Simulation) -> None:
    lo, hi = sim.params.sharing_ips
    for incident in of_threat(sim, "token_sharing"):
        rows = labelled(sim, incident)
        assert rows["jti"].nunique() == 1
        assert lo <= rows["ip"].nunique() <= hi
        assert rows["ip"].map(prefix16).nunique() >= lo // 2
        assert (incident.end - incident.start) <= sim.params.sharing_minutes[1] * 60


def test_forged_probing_comes_from_one_ip_and_always_fails(sim: Simulation) -> None:
    for incident in of_threat(sim, "forged_probing"):
        rows = labelled(sim, incident)
        assert len(incident.ips) == 1 and len(rows) >= 20
        assert (rows["outcome"] == "rejected").all()
        assert set(rows["reason"]) <= FORGED
        assert rows["sub"].nunique() >= 5


def test_revoked_replay_is_rejected_from_a_foreign_network(sim: Simulation) -> None:
    base = baseline(sim)
    for incident in of_threat(sim, "revoked_replay"):
        rows = labelled(sim, incident)
        assert len(rows) >= 3
        assert set(rows["reason"]) <= {"revoked", "expired"}
        (sub,) = incident.subs
        owner_nets = set(base.loc[base["sub"] == sub, "ip"].map(prefix16))
        assert not owner_nets & {prefix16(ip) for ip in incident.ips}


def test_rate_abuse_dwarfs_the_owners_rate(sim: Simulation) -> None:
    base = baseline(sim)
    lo, _ = sim.params.abuse_rps
    for incident in of_threat(sim, "rate_abuse"):
        rows = labelled(sim, incident)
        seconds = (rows["ts"].max() - rows["ts"].min()) / 1000
        assert seconds >= min(sim.params.abuse_seconds[0], sim.params.token_ttl_s * 0.6) - 1
        assert len(rows) / seconds >= 0.7 * lo
        assert (rows["outcome"] == "accepted").all()
        (sub,) = incident.subs
        owner = base[base["sub"] == sub]
        assert len(owner) / sim.params.duration_s < 1.0


def test_low_and_slow_is_slow_long_and_from_a_new_network(sim: Simulation) -> None:
    base = baseline(sim)
    lo, hi = sim.params.slow_interval_s
    for incident in of_threat(sim, "low_and_slow"):
        rows = labelled(sim, incident)
        gaps = np.diff(rows["ts"].to_numpy()) / 1000
        assert lo * 0.7 - 1 <= np.median(gaps) <= hi * 1.3 + 1
        assert incident.end - incident.start >= 0.3 * sim.params.duration_s
        (sub,) = incident.subs
        owner_nets = set(base.loc[base["sub"] == sub, "ip"].map(prefix16))
        assert not owner_nets & set(rows["ip"].map(prefix16))
        assert (rows["outcome"] == "accepted").all()


# ------------------------------------------------------------------------------------------ files


def expected_records(events: pd.DataFrame) -> list[dict]:
    columns = record_columns(events)
    return [{"schema": "token-usage/1", **{name: columns[name][i] for name in WIRE_FIELDS}} for i in range(len(events))]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_jsonl_round_trip(small: Simulation, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"events{suffix}"
    assert write_events(small, path) == len(small.events)
    raw = gzip.decompress(path.read_bytes()) if suffix.endswith(".gz") else path.read_bytes()
    lines = raw.splitlines()
    assert len(lines) == len(small.events)
    decoded = [orjson.loads(line) for line in lines]
    assert decoded == expected_records(small.events)
    assert all("incident_id" not in d for d in decoded)
    for line in lines[:: max(1, len(lines) // 2000)]:
        assert TokenUsage.from_json(line).to_json() == line  # exactly the validator's wire form
    again = tmp_path / f"again{suffix}"
    write_events(small.events, again)
    assert again.read_bytes() == path.read_bytes()


def test_parquet_round_trip(small: Simulation, tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    write_events(small, path)
    table = pq.read_table(path)
    assert table.schema.equals(TOKEN_USAGE_ARROW, check_metadata=True)
    assert table.num_rows == len(small.events)
    events = small.events
    assert table.column("ts").cast("int64").to_pylist() == events["ts"].tolist()
    for name in WIRE_FIELDS:
        if name == "ts":
            continue
        values = table.column(name).to_pylist()
        expected = events[name].astype(object).where(events[name].notna(), None).tolist()
        assert values == expected, name
    first = table.slice(0, 1).to_pylist()[0]
    assert format_ts(first["ts"]) == ts_strings(events["ts"].to_numpy()[:1])[0]
    again = tmp_path / "again.parquet"
    write_events(small, again)
    assert again.read_bytes() == path.read_bytes()


def test_unknown_event_file_type_is_refused(small: Simulation, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown event file type"):
        write_events(small, tmp_path / "events.csv")


def test_labels_round_trip(small: Simulation, tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    assert write_labels(small, path) == len(small.incidents)
    assert read_labels(path) == small.incidents
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    for line, incident in zip(lines, small.incidents, strict=True):
        assert line["start"] == format_ts(incident.start) and line["end"] == format_ts(incident.end)
        assert parse_ts(line["start"]).timestamp() == pytest.approx(incident.start, abs=1e-3)
        assert line["start_epoch"] == incident.start
        assert line["events"] == len(labelled(small, incident))
    # Without the epoch fields (a hand-written label file) the RFC 3339 times are enough.
    bare = tmp_path / "bare.jsonl"
    bare.write_bytes(b"\n".join(orjson.dumps({k: v for k, v in d.items() if "epoch" not in k}) for d in lines))
    assert [(i.incident_id, round(i.start, 3)) for i in read_labels(bare)] == [
        (i.incident_id, round(i.start, 3)) for i in small.incidents
    ]
