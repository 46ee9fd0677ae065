"""The detection engine, replay and the streaming runner, with a small trained model.

Hand-built event sequences drive each rule of ``pipeline.detection.rules`` (and a benign look-alike of each);
simulated traffic with labelled attacks drives determinism, alert de-duplication, late events, eviction and
the streaming runner on the in-memory bus (dead letters, restart without duplicates).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pandas as pd
import pytest

from pipeline.bus import ALERTS, DEAD_LETTER, TOKEN_USAGE, default_topics
from pipeline.bus.memory import MemoryBus
from pipeline.detection.batch import EventBatch, micro_batches
from pipeline.detection.engine import DetectionEngine
from pipeline.detection.episodes import Finding
from pipeline.detection.replay import replay
from pipeline.detection.runner import StreamingRunner
from pipeline.detection.training import TrainingParams, train_model
from pipeline.events import Alert, TokenUsage, format_ts, ts_to_epoch_ms
from pipeline.features.baselines import Baselines
from pipeline.networks import PREFIXES, Network, NetworkResolver
from pipeline.scoring.model import DetectionModel, load_model, save_model
from pipeline.simulate import Simulation, SimulationParams, iter_records, simulate
from pipeline.windows import FORGED, RETURNS, TOTAL, prefix16

T0 = 1_790_000_100.0  # on the 300 s alert grid
POPULATION = {"browsers": 80, "mobile": 30, "offices": 3}
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
PHONE_APP = "AcmeApp/5.2.1 (iPhone; iOS 17.4)"
CURL = "curl/8.4.0"
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/604.1"
)
FORGED_REASONS = ["bad_signature", "unknown_kid", "alg_not_allowed", "malformed", "weak_key", "type", "too_large"]
HOME_AS = Network("AS64500", "residential", 64500, "Example")
CLOUD_AS = Network("AS64501", "hosting", 64501, "Example Cloud")
CARRIER_AS = Network("AS64502", "mobile", 64502, "Example Mobile")


class AsnTable:
    """A tiny IP database: the /16 of an address names its autonomous system (two /16s of one AS: 81.2 and
    81.3). Addresses it does not list are their /16, as without a database."""

    source = "test-asn"
    identifies_networks = True

    def __init__(self, table: dict[str, Network]) -> None:
        self.table = table

    def __call__(self, ip: str) -> Network:
        return self.table.get(prefix16(ip)) or PREFIXES(ip)


ASNS = AsnTable({"81.2": HOME_AS, "81.3": HOME_AS, "45.9": CLOUD_AS, "100.64": CARRIER_AS})
#: The same addresses, the thief's in a residential network (a residential proxy an ASN database cannot tell).
ASNS_RESIDENTIAL_THIEF = AsnTable({**ASNS.table, "45.9": Network("AS64502", "residential", 64502, "Example Broadband")})


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def baseline() -> pd.DataFrame:
    return simulate(SimulationParams(minutes=15, seed=1, threats=(), services=5, **POPULATION)).events


@pytest.fixture(scope="module")
def model(baseline: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> DetectionModel:
    trained, _ = train_model(baseline, TrainingParams(n_estimators=50, max_samples=256))
    directory = tmp_path_factory.mktemp("model")
    save_model(trained, directory)
    return load_model(directory)


@pytest.fixture(scope="module")
def attacks() -> Simulation:
    """Ten minutes with one incident of every threat (about 57 events/s)."""
    return simulate(SimulationParams(minutes=10, seed=2, services=5, incidents_per_threat=1, **POPULATION))


@pytest.fixture(scope="module")
def later_attacks() -> Simulation:
    """The next ten minutes of event time: other users, other attacks."""
    params = SimulationParams(
        minutes=10, seed=3, start=1_790_000_600.0, services=5, incidents_per_threat=1, **POPULATION
    )
    return simulate(params)


@pytest.fixture(scope="module")
def dense_attacks() -> Simulation:
    """Busier traffic (about 180 events/s), so that a micro-batch of 512 events spans less than 5 s."""
    return simulate(SimulationParams(minutes=8, seed=3, services=20, incidents_per_threat=1, **POPULATION))


# ------------------------------------------------------------------------------------- helpers


def use(t: float, ip: str, jti: str, sub: str, *, ua: str | None = CHROME, reason: str | None = None,
        client: str = "web") -> TokenUsage:  # fmt: skip
    """One validation of a genuine token (issued a minute before T0, ten-minute lifetime)."""
    iat = int(T0) - 60
    return TokenUsage(
        event_id=str(uuid.uuid4()), ts=format_ts(t), ip=ip, outcome="rejected" if reason else "accepted",
        reason=reason, jti=jti, sub=sub, client_id=client, iat=iat, exp=iat + 600, user_agent=ua,
    )  # fmt: skip


def forged(t: float, ip: str, *, reason: str = "bad_signature", sub: str | None = "admin", jti: str | None = None,
           ua: str = "python-requests/2.31.0") -> TokenUsage:  # fmt: skip
    """A rejected forged token: its claims are whatever the forger wrote."""
    return TokenUsage(
        event_id=str(uuid.uuid4()), ts=format_ts(t), ip=ip, outcome="rejected", reason=reason, jti=jti, sub=sub,
        iat=int(T0), exp=int(T0) + 86_400, user_agent=ua,
    )  # fmt: skip


@dataclass
class Run:
    engine: DetectionEngine
    findings: list[Finding] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)  # every alert the engine emitted: new ones and escalations

    def rules(self, entity_type: str, entity: str) -> set[str]:
        return {r for f in self.findings if (f.entity_type, f.entity) == (entity_type, entity) for r in f.rules}

    def alerts_for(self, entity_type: str, entity: str) -> list[Alert]:
        return [a for a in self.alerts if (a.entity_type, a.entity) == (entity_type, entity)]

    def findings_for(self, entity_type: str, entity: str) -> list[Finding]:
        return [f for f in self.findings if (f.entity_type, f.entity) == (entity_type, entity)]


def run(model: DetectionModel, events: Iterable[TokenUsage], *, baselines: Baselines | None = None,
        into: Run | None = None, networks: NetworkResolver = PREFIXES) -> Run:  # fmt: skip
    """Feed events in event-time order, in micro-batches of at most 5 s, as ``replay`` does."""
    result = into or Run(DetectionEngine(model, baselines=baselines, networks=networks))
    result.engine.on_finding = result.findings.append
    ordered = sorted(events, key=lambda e: ts_to_epoch_ms(e.ts))
    for batch in micro_batches(EventBatch.from_records(ordered), 8192, 5.0):
        result.alerts.extend(result.engine.process(batch))
    return result


def alert_rules(alert: Alert) -> set[str]:
    return {reason["rule"] for reason in alert.reasons if "rule" in reason}


def snapshot(engine: DetectionEngine, entity_type: str, key: str) -> tuple:
    window = engine.stores[entity_type].get(key)
    assert window is not None, (entity_type, key)
    return (bytes(window.counts), dict(window.ips), dict(window.uas), window.first_ts, window.last_ts, window.owner,
            dict(window.others or {}))  # fmt: skip


# ----------------------------------------------------------------------------- rules: positive


def test_forged_probing_from_one_ip_fires_the_rule(model: DetectionModel) -> None:
    run_ = run(model, [forged(T0 + 10 * i, "203.0.113.7", jti=f"forged-{i}") for i in range(12)])
    alerts = run_.alerts_for("ip", "203.0.113.7")
    assert any("forged_probing" in alert_rules(a) for a in alerts)
    first = min(f.ts for f in run_.findings_for("ip", "203.0.113.7") if "forged_probing" in f.rules)
    assert first == T0 + 90  # at the tenth forged token in the window, not before
    assert all(a.severity in ("high", "critical") for a in alerts if "forged_probing" in alert_rules(a))
    probing = next(a for a in alerts if "forged_probing" in alert_rules(a))
    assert probing.summary == (
        "IP 203.0.113.7 made 10 requests within 1 min 30 s — 10 forged or malformed tokens (100 % of its requests)"
    )


def test_a_token_used_from_nine_networks_fires_token_fanout(model: DetectionModel) -> None:
    events = [use(T0 + 5 * i + j, f"{30 + i}.{20 + i}.{i}.9", "tok-shared", "alice") for i in range(9) for j in (0, 2)]
    run_ = run(model, events)
    fanout = next(a for a in run_.alerts_for("jti", "tok-shared") if "token_fanout" in alert_rules(a))
    assert fanout.summary is not None and fanout.summary.startswith(
        "token of alice used from 30.20.0.0/16, 31.21.0.0/16, 32.22.0.0/16 and "
    )
    assert fanout.summary.endswith("— from 8 /24 networks")
    assert "token_changed_client_and_network" not in run_.rules("jti", "tok-shared")  # one client software


def test_a_token_with_two_clients_on_two_networks_fires_the_rule(model: DetectionModel) -> None:
    owner = [use(T0 + 10 * i, "81.2.3.4", "tok-stolen", "bob") for i in range(12)]
    thief = [use(T0 + 10 * i + 5, "45.9.8.7", "tok-stolen", "bob", ua=CURL) for i in range(12)]
    run_ = run(model, owner + thief)
    alerts = run_.alerts_for("jti", "tok-stolen")
    changed = next(a for a in alerts if "token_changed_client_and_network" in alert_rules(a))
    assert {a.alert_id for a in alerts} == {alerts[0].alert_id}
    assert changed.summary is not None
    assert changed.summary.startswith("token of bob used from 45.9.0.0/16 and 81.2.0.0/16 within ")
    assert changed.summary.endswith(" — by 2 client families (Chrome and curl)")


def test_repeated_expired_rejections_of_one_token_fire_stale_token_replay(model: DetectionModel) -> None:
    events = [use(T0 + 10 * i, "45.9.8.7", "tok-old", "erin", reason="expired", ua=CURL) for i in range(6)]
    run_ = run(model, events)
    stale = next(a for a in run_.alerts_for("jti", "tok-old") if "stale_token_replay" in alert_rules(a))
    assert stale.summary == (
        "token of erin used from 45.9.0.0/16 within 40 s, 5 times — presented 5 times after it expired or was revoked"
    )


def history(sub: str, *networks: str, family: str = "Chrome") -> Baselines:
    """Baselines in which ``sub`` has used these networks (keys: /16s here) with one client for an hour."""
    baselines = Baselines()
    for network in networks:
        baselines.observe_use(sub, "web", network, family, T0 - 3600)
    return baselines


def _stolen_refresh_token(sub: str) -> list[TokenUsage]:
    """The owner keeps browsing from home; the thief mints their own tokens and reads slowly from elsewhere,
    with the victim's own user agent."""
    owner = [use(T0 + 8 * i, "81.2.3.4", "tok-owner", sub) for i in range(30)]
    return owner + [use(T0 + 100 + 45 * i, "45.9.8.7", "tok-minted", sub) for i in range(5)]


def test_a_stolen_refresh_token_used_from_a_hosting_network_is_a_parallel_session(model: DetectionModel) -> None:
    run_ = run(model, _stolen_refresh_token("carol"), networks=ASNS)
    alerts = run_.alerts_for("sub", "carol")
    assert any("parallel_sessions" in alert_rules(a) for a in alerts)
    assert not run_.rules("jti", "tok-minted")  # each token on its own looks like a quiet user
    # A look-alike exists (one user's app on two devices at once), so it alerts below auto-revocation's "high".
    assert {a.severity for a in alerts if alert_rules(a) == {"parallel_sessions"}} <= {"medium"}
    parallel = next(a for a in alerts if "parallel_sessions" in alert_rules(a))
    assert parallel.summary is not None and parallel.summary.startswith(
        "subject carol used from AS64500 Example (residential) and AS64501 Example Cloud (hosting) within "
    )
    assert parallel.summary.endswith(
        " — 2 tokens of one client in use at once from different networks, not as a second device of the user's"
    )


def test_a_stolen_refresh_token_with_the_victims_own_user_agent_is_a_parallel_session(model: DetectionModel) -> None:
    """No IP database, no history: the thief sends the victim's user agent byte for byte, to blend in — which
    two devices of one person do not."""
    run_ = run(model, _stolen_refresh_token("carol"))
    parallel = next(a for a in run_.alerts_for("sub", "carol") if "parallel_sessions" in alert_rules(a))
    assert parallel.summary is not None
    assert parallel.summary.startswith("subject carol used from 45.9.0.0/16 and 81.2.0.0/16 within ")


def test_a_stolen_refresh_token_without_evidence_is_not_a_parallel_session(model: DetectionModel) -> None:
    """The thief on a network where people live, with a browser of its own: as far as the stream can tell, one
    user's second device — even when the subject's history never had that network (a café, a hotspot)."""
    events = [
        dataclasses.replace(e, user_agent=IPAD) if e.jti == "tok-minted" else e for e in _stolen_refresh_token("carol")
    ]
    assert "parallel_sessions" not in run(model, events).rules("sub", "carol")
    assert "parallel_sessions" not in run(model, events, networks=ASNS_RESIDENTIAL_THIEF).rules("sub", "carol")
    new_network = run(model, events, baselines=history("carol", "81.2"))
    assert "parallel_sessions" not in new_network.rules("sub", "carol")


@pytest.mark.parametrize("agent", [None, "Mozilla/5.0"])
def test_a_thief_hiding_its_user_agent_is_a_parallel_session(model: DetectionModel, agent: str | None) -> None:
    """No user agent, or a bare "Mozilla/5.0" no browser sends alone: not a second device of the user's (found by
    the outside review: either made the thief invisible to parallel_sessions without an IP database)."""
    events = [
        dataclasses.replace(e, user_agent=agent) if e.jti == "tok-minted" else e for e in _stolen_refresh_token("carol")
    ]
    assert "parallel_sessions" in run(model, events).rules("sub", "carol")


def _one_app_on_two_devices(sub: str, start: float = T0) -> list[TokenUsage]:
    """A laptop at home and a tablet on the phone's hotspot, signed in to the same web app, used at once."""
    laptop = [use(start + 10 * i, "81.2.3.4", "tok-laptop", sub) for i in range(24)]
    return laptop + [use(start + 5 + 12 * i, "100.64.1.5", "tok-tablet", sub, ua=IPAD) for i in range(20)]


def test_one_app_on_two_devices_of_one_user_is_not_a_parallel_session(model: DetectionModel) -> None:
    assert "parallel_sessions" not in run(model, _one_app_on_two_devices("hank")).rules("sub", "hank")
    # With an IP database: a residential and a mobile network, both where people live.
    with_asns = run(model, _one_app_on_two_devices("hank"), networks=ASNS)
    assert "parallel_sessions" not in with_asns.rules("sub", "hank")
    # With a history that has only the laptop's network: the tablet's hotspot is new, and still no evidence.
    partial = run(model, _one_app_on_two_devices("hank"), baselines=history("hank", "81.2"))
    assert "parallel_sessions" not in partial.rules("sub", "hank")
    # ... while the tablet's token used from a data centre is.
    hosted = [
        dataclasses.replace(e, ip="45.9.8.7") if e.jti == "tok-tablet" else e for e in _one_app_on_two_devices("hank")
    ]
    assert "parallel_sessions" in run(model, hosted, networks=ASNS).rules("sub", "hank")


def _back_and_forth(jti: str, sub: str, ips: tuple[str, str], returns: int) -> list[TokenUsage]:
    """One token used alternately from two addresses 3 s apart (``returns`` times back to the address before),
    then for a minute from the last one only."""
    changes = [use(T0 + 3 * i, ips[i % 2], jti, sub) for i in range(returns + 2)]
    last, after = ips[(returns + 1) % 2], T0 + 3 * (returns + 1)
    return changes + [use(after + 10 * i, last, jti, sub) for i in range(1, 7)]


OWNER_AND_THIEF = ("81.2.3.4", "45.9.8.7")


def returns_of(engine: DetectionEngine, jti: str) -> int:
    """The token window's RETURNS count over its window."""
    window = engine.stores["jti"].get(jti)
    assert window is not None
    return window.window_counts(int(window.last_ts // engine.spec.bucket_s), engine.spec.buckets)[0][RETURNS]


#: ivan's history: his home network (by AS, as an engine with the database learns it) for an hour.
IVAN_AT_HOME = ("ivan", HOME_AS.key)


def test_a_token_in_use_from_two_networks_at_once_fires_token_concurrent_networks(model: DetectionModel) -> None:
    run_ = run(
        model, _back_and_forth("tok-both", "ivan", OWNER_AND_THIEF, 4), networks=ASNS, baselines=history(*IVAN_AT_HOME)
    )
    assert "token_concurrent_networks" in run_.rules("jti", "tok-both")
    alert = next(a for a in run_.alerts_for("jti", "tok-both") if "token_concurrent_networks" in alert_rules(a))
    assert alert.severity in ("high", "critical")
    assert alert.summary is not None and alert.summary.startswith(
        "token of ivan used from AS64500 Example (residential) and AS64501 Example Cloud (hosting) within "
    )
    assert "back and forth between networks 4 times within seconds" in alert.summary


def test_three_returns_do_not_fire_token_concurrent_networks(model: DetectionModel) -> None:
    run_ = run(
        model, _back_and_forth("tok-both", "ivan", OWNER_AND_THIEF, 3), networks=ASNS, baselines=history(*IVAN_AT_HOME)
    )
    assert "token_concurrent_networks" not in run_.rules("jti", "tok-both")
    assert run_.engine.stats.scored > 0


def test_two_networks_both_the_users_own_do_not_fire_token_concurrent_networks(model: DetectionModel) -> None:
    """A split-tunnel VPN: two networks at once, both long in the user's history."""
    both = history("ivan", HOME_AS.key, CLOUD_AS.key)
    run_ = run(model, _back_and_forth("tok-both", "ivan", OWNER_AND_THIEF, 12), networks=ASNS, baselines=both)
    assert returns_of(run_.engine, "tok-both") == 12
    assert "token_concurrent_networks" not in run_.rules("jti", "tok-both")


def test_a_machine_token_never_fires_token_concurrent_networks(model: DetectionModel) -> None:
    """A client-credentials token (its subject is its client): a service's replicas in two clouds use it at once."""
    events = [
        dataclasses.replace(e, client_id="svc-orders")
        for e in _back_and_forth("tok-svc", "svc-orders", OWNER_AND_THIEF, 12)
    ]
    run_ = run(model, events, networks=ASNS, baselines=history("svc-orders", HOME_AS.key))
    assert returns_of(run_.engine, "tok-svc") == 12
    assert "token_concurrent_networks" not in run_.rules("jti", "tok-svc")
    # The same events as a user's token do fire: it is the machine exemption that holds here.
    user = run(model, _back_and_forth("tok-svc", "ivan", OWNER_AND_THIEF, 12), networks=ASNS,
               baselines=history(*IVAN_AT_HOME))  # fmt: skip
    assert "token_concurrent_networks" in user.rules("jti", "tok-svc")


def test_without_an_ip_database_token_concurrent_networks_never_fires(model: DetectionModel) -> None:
    """The /16 fallback: the windows count the returns, the rule does not trust them."""
    run_ = run(model, _back_and_forth("tok-both", "ivan", OWNER_AND_THIEF, 12))
    assert not run_.engine.networks_identified
    assert "token_concurrent_networks" not in run_.rules("jti", "tok-both")
    assert returns_of(run_.engine, "tok-both") == 12


def test_two_prefixes_of_one_as_are_one_network(model: DetectionModel) -> None:
    """A home whose addresses are in two /16s of its ISP: with the database the engine compares AS keys."""
    events = _back_and_forth("tok-home", "judy", ("81.2.3.4", "81.3.4.5"), 12)
    run_ = run(model, events, networks=ASNS)
    assert run_.engine.networks_identified
    assert "token_concurrent_networks" not in run_.rules("jti", "tok-home")
    assert returns_of(run_.engine, "tok-home") == 0
    assert returns_of(run(model, events).engine, "tok-home") == 12  # the same events, compared by /16


def _hammering(token: str, client: str, events: int, every_s: float, ip: str = "10.20.30.40") -> list[TokenUsage]:
    return [use(T0 + every_s * i, ip, token, f"{client}-acct", client=client, ua="okhttp/4.12") for i in range(events)]


def test_a_token_used_far_above_its_clients_rate_fires_rate_abuse(model: DetectionModel) -> None:
    baselines = Baselines()
    baselines.learn_client_rate("svc-report", 10.0)  # a token of this client is usually used 10 times a window
    run_ = run(model, _hammering("tok-hot", "svc-report", 700, every_s=0.14), baselines=baselines)  # 7/s
    abuse = next(a for a in run_.alerts_for("jti", "tok-hot") if "rate_abuse" in alert_rules(a))
    assert abuse.summary is not None and abuse.summary.startswith("token of svc-report-acct used from 10.20.0.0/16")
    assert abuse.summary.endswith(" times as often as its client's tokens usually are")
    first = min(f.ts for f in run_.findings_for("jti", "tok-hot") if "rate_abuse" in f.rules)
    assert first >= T0 + 599 * 0.14  # not before the 600th use in the window


def test_an_abusive_token_does_not_teach_its_client_that_abuse_is_normal(model: DetectionModel) -> None:
    """2.5 uses/s for 280 s against a client whose tokens make 10 uses a window: 70x the usual volume.

    The rule needs 600 uses in the window, which takes 240 s at this pace; before that the token's own clean
    scorings must not raise its client's baseline so far that the rule can no longer fire ("an attack does
    not teach the baseline that attacks are normal", pipeline/features/baselines.py).
    """
    baselines = Baselines()
    baselines.learn_client_rate("svc-report", 10.0)
    run_ = run(model, _hammering("tok-hot", "svc-report", 700, every_s=0.4), baselines=baselines)
    learned = run_.engine.baselines.client_rate("svc-report")
    assert any("rate_abuse" in alert_rules(a) for a in run_.alerts_for("jti", "tok-hot")), (
        f"client baseline moved from 10 to {learned:.1f} uses per window"
    )


# ----------------------------------------------------------------------- rules: benign look-alikes


def test_a_few_malformed_tokens_from_an_office_are_not_probing(model: DetectionModel) -> None:
    office = "198.51.100.20"
    events = [use(T0 + 9 * u + 60 * k, office, f"tok-{u}", f"user-{u}") for u in range(20) for k in range(3)]
    events += [forged(T0 + 30 + 60 * k, office, reason="malformed", sub=None) for k in range(3)]
    run_ = run(model, events)
    assert "forged_probing" not in run_.rules("ip", office)
    assert run_.engine.stores["ip"].get(office) is not None  # the office was scored, not ignored


def test_probing_from_an_address_some_real_users_share_is_still_probing(model: DetectionModel) -> None:
    shared = "198.51.100.77"
    events = [use(T0 + 20 * u, shared, f"tok-{u}", f"user-{u}") for u in range(2)]
    events += [forged(T0 + 5 + 10 * i, shared, jti=f"f-{i}") for i in range(12)]
    assert "forged_probing" in run(model, events).rules("ip", shared)


def test_a_phone_hopping_carrier_addresses_is_neither_fanout_nor_a_client_change(model: DetectionModel) -> None:
    carrier = ["100.64.1.5", "100.65.2.6", "100.66.3.7"]
    events = [use(T0 + 10 * i, carrier[i % 3], "tok-phone", "dave", ua=PHONE_APP, client="ios") for i in range(18)]
    run_ = run(model, events)
    fired = run_.rules("jti", "tok-phone")
    assert not fired & {"token_fanout", "token_changed_client_and_network"}, fired
    assert run_.findings_for("jti", "tok-phone") or run_.engine.stats.scored > 0


def test_a_refresh_while_changing_networks_is_not_a_parallel_session(model: DetectionModel) -> None:
    events = [use(T0 + 10 * i, "81.2.3.4", "tok-wifi", "gina", ua=PHONE_APP, client="ios") for i in range(12)]
    events += [use(T0 + 121 + 10 * i, "100.64.1.5", "tok-cell", "gina", ua=PHONE_APP, client="ios") for i in range(12)]
    # The carrier is new for gina's settled history (evidence): only the handover keeps this from counting.
    run_ = run(model, events, baselines=history("gina", "81.2"))
    assert "parallel_sessions" not in run_.rules("sub", "gina")


def test_a_user_on_laptop_and_phone_at_once_is_not_a_parallel_session(model: DetectionModel) -> None:
    events = [use(T0 + 10 * i, "81.2.3.4", "tok-laptop", "hank") for i in range(24)]
    events += [use(T0 + 5 + 10 * i, "100.64.1.5", "tok-phone", "hank", ua=PHONE_APP, client="ios") for i in range(24)]
    # The carrier is new for hank's settled history (evidence): only the two clients keep this from counting.
    run_ = run(model, events, baselines=history("hank", "81.2"))
    assert "parallel_sessions" not in run_.rules("sub", "hank")


def test_service_replicas_with_a_token_each_are_not_parallel_sessions(model: DetectionModel) -> None:
    """Client credentials: ``sub`` is the client (RFC 9068 §2.2), and every replica holds its own token."""
    events = []
    for replica, ip in enumerate(["10.1.0.5", "172.20.0.9", "192.0.2.44"]):
        events += [use(T0 + replica + 6 * i, ip, f"tok-r{replica}", "svc-sync", client="svc-sync", ua="okhttp/4.12")
                   for i in range(40)]  # fmt: skip
    # Two replicas' networks are new for the service's settled history (evidence): only sub == client keeps
    # this from counting.
    run_ = run(model, events, baselines=history("svc-sync", "10.1"))
    assert "parallel_sessions" not in run_.rules("sub", "svc-sync")


def test_one_expired_rejection_at_refresh_is_not_stale_replay(model: DetectionModel) -> None:
    events = [use(T0 + 10 * i, "81.2.3.4", "tok-a", "frank") for i in range(10)]
    events.append(use(T0 + 100, "81.2.3.4", "tok-a", "frank", reason="expired"))  # lazy client: 401, then refresh
    events += [use(T0 + 101 + 10 * i, "81.2.3.4", "tok-b", "frank") for i in range(10)]
    run_ = run(model, events)
    assert "stale_token_replay" not in run_.rules("jti", "tok-a") | run_.rules("jti", "tok-b")


def test_a_busy_service_at_its_usual_rate_is_not_rate_abuse(model: DetectionModel) -> None:
    baselines = Baselines()
    baselines.learn_client_rate("svc-busy", 650.0)
    events = _hammering("tok-busy", "svc-busy", 700, every_s=0.14, ip="10.20.30.41")
    # The same volume from a client whose usual rate is not learned yet: no judgement either.
    events += _hammering("tok-new", "svc-new", 700, every_s=0.14, ip="10.20.30.42")
    run_ = run(model, events, baselines=baselines)
    assert "rate_abuse" not in run_.rules("jti", "tok-busy") | run_.rules("jti", "tok-new")


# ------------------------------------------------------------------------- forged-token claims


@pytest.mark.parametrize("reason", FORGED_REASONS)
def test_forged_claims_only_count_against_the_ip(model: DetectionModel, reason: str) -> None:
    run_ = run(model, [use(T0 + 10 * i, "81.2.3.4", "tok-victim", "victim") for i in range(5)])
    engine = run_.engine
    before = {(t, k): snapshot(engine, t, k) for t, k in (("jti", "tok-victim"), ("sub", "victim"))}
    prefixes = dict(engine.baselines.subjects["victim"].prefixes)
    attacker = "203.0.113.9"
    # The forger claims the victim's subject, the victim's token id, and made-up ones.
    claims = [("victim", "tok-victim"), ("victim", "forged-1"), ("root", "forged-2"), ("victim", None)]
    events = [forged(T0 + 41 + 4 * i, attacker, reason=reason, sub=s, jti=j) for i, (s, j) in enumerate(claims * 4)]
    run(model, events, into=run_)

    assert engine.stores["ip"].get(attacker) is not None
    assert "forged-1" not in engine.stores["jti"].entities and "forged-2" not in engine.stores["jti"].entities
    assert "root" not in engine.stores["sub"].entities
    for (entity_type, key), state in before.items():
        assert snapshot(engine, entity_type, key) == state, (entity_type, key)  # the victim's windows untouched
    assert engine.baselines.subjects["victim"].prefixes == prefixes  # nor its baseline
    assert "root" not in engine.baselines.subjects
    ip_window = engine.stores["ip"].get(attacker)
    counts = ip_window.window_counts(int((T0 + 120) // model.spec.bucket_s), model.spec.buckets)[0]
    assert counts[TOTAL] == counts[FORGED] == 16
    assert not ip_window.others  # claimed subjects are not "distinct subjects behind this IP"
    assert not [a for a in run_.alerts if a.entity_type != "ip" and a.ts >= format_ts(T0 + 41)]


@pytest.mark.parametrize("reason", ["expired", "revoked", "replayed"])
def test_verified_rejections_do_count_for_the_token(model: DetectionModel, reason: str) -> None:
    """The contrast: after the signature was verified, the claims are the token's own."""
    run_ = run(model, [use(T0 + 10 * i, "45.9.8.7", "tok-real", "grace", reason=reason) for i in range(3)])
    assert run_.engine.stores["jti"].get("tok-real") is not None
    assert run_.engine.stores["sub"].get("grace") is not None


# -------------------------------------------------------------------------------- late events


def test_late_events_are_counted_and_change_no_window(model: DetectionModel) -> None:
    grace = model.spec.grace_s
    run_ = run(model, [use(T0 + 5 * i, "81.2.3.4", "tok-a", "alice") for i in range(21)])  # up to T0+100
    engine = run_.engine
    keys = (("jti", "tok-a"), ("sub", "alice"), ("ip", "81.2.3.4"))
    before = {key: snapshot(engine, *key) for key in keys}
    sizes = {t: len(s) for t, s in engine.stores.items()}
    late = [
        use(T0 + 100 - grace - 1, "81.2.3.4", "tok-a", "alice", ua=FIREFOX),
        use(T0 + 100 - grace - 5, "9.9.9.9", "tok-a", "alice", reason="expired"),
        use(T0 + 10, "7.7.7.7", "tok-new", "zed"),
        forged(T0 + 20, "203.0.113.50"),
    ]
    engine.process(EventBatch.from_records(late))  # does not raise
    assert engine.stats.late_events == 4
    assert {key: snapshot(engine, *key) for key in keys} == before
    assert {t: len(s) for t, s in engine.stores.items()} == sizes

    # Within the grace period an out-of-order event still counts, in its own bucket.
    engine.process(EventBatch.from_records([use(T0 + 100 - grace + 5, "9.9.9.9", "tok-a", "alice")]))
    assert engine.stats.late_events == 4
    assert "9.9.9.9" in engine.stores["jti"].get("tok-a").ips


def test_the_watermark_advances_within_a_batch(model: DetectionModel) -> None:
    engine = DetectionEngine(model)
    batch = EventBatch.from_records(
        [use(T0 + 200, "81.2.3.4", "t", "s"), use(T0 + 150, "81.2.3.5", "t", "s"), use(T0 + 201, "81.2.3.6", "t", "s")]
    )
    engine.process(batch)
    assert engine.stats.late_events == 1  # T0+150 is older than T0+200 minus the 30 s grace
    assert engine.stats.events == 2
    assert "81.2.3.5" not in engine.stores["ip"].entities


# ----------------------------------------------------------------- de-duplication and eviction


def test_an_ongoing_attack_is_one_alert_per_entity(model: DetectionModel) -> None:
    attacker = "203.0.113.66"
    run_ = run(model, [forged(T0 + 2 * i, attacker, jti=f"f-{i}") for i in range(120)])  # four minutes of probing
    findings = run_.findings_for("ip", attacker)
    alerts = run_.alerts_for("ip", attacker)
    assert len(findings) >= 10  # scored again and again ...
    assert len({a.alert_id for a in alerts}) == 1  # ... one alert
    assert len(alerts) <= 1 + 4  # re-issued only on escalation
    assert [a.alert_id for a in run_.alerts] == [a.alert_id for a in alerts]

    # The same IP probing again after a quiet window is a new incident: a new alert.
    resumed = T0 + 240 + model.spec.length_s + 60
    run(model, [forged(resumed + 2 * i, attacker) for i in range(30)], into=run_)
    assert len({a.alert_id for a in run_.alerts_for("ip", attacker)}) == 2


def test_idle_entities_are_evicted_after_a_window_of_silence(model: DetectionModel) -> None:
    spec = model.spec
    run_ = run(model, [forged(T0 + i, "203.0.113.1") for i in range(12)])  # opens an alert episode
    run(model, [use(T0 + i, f"81.2.{i}.4", f"tok-{i}", f"user-{i}") for i in range(10)], into=run_)
    engine = run_.engine
    assert engine.active_entities() == 1 + 3 * 10
    assert engine.tracker.open

    run(model, [forged(T0 + 200, "203.0.113.2")], into=run_)  # silence shorter than a window: nothing goes
    assert engine.active_entities() == 2 + 3 * 10

    silence = spec.length_s + spec.grace_s + spec.length_s / 2 + 1
    run(model, [forged(T0 + 200 + silence, "203.0.113.3")], into=run_)
    assert engine.active_entities() == 1
    assert set(engine.stores["ip"].entities) == {"203.0.113.3"}
    assert not engine.stores["jti"].entities and not engine.stores["sub"].entities
    assert ("ip", "203.0.113.1") not in engine.tracker.open  # quiet episodes are forgotten too


# ------------------------------------------------------------------------ replay determinism


def test_replaying_the_same_events_gives_the_same_alerts(model: DetectionModel, attacks: Simulation) -> None:
    first, engine = replay(attacks.events, model)
    second, _ = replay(attacks.events, model)
    assert len(first) >= 3
    assert [a.to_dict() for a in first] == [a.to_dict() for a in second]
    assert engine.stats.events == len(attacks.events) and engine.stats.late_events == 0
    lo, hi = format_ts(attacks.events["ts"].iloc[0] / 1000), format_ts(attacks.events["ts"].iloc[-1] / 1000)
    assert all(lo <= a.ts <= hi for a in first)


def test_every_alert_explains_itself(model: DetectionModel, attacks: Simulation) -> None:
    """A one-line summary on every alert; a feature is named only above its baseline; otherwise the alert says
    it is an unusual combination (the forest's own finding) or rests on the rules that fired."""
    alerts, _ = replay(attacks.events, model)
    assert len(alerts) >= 3
    for alert in alerts:
        assert alert.summary and "\n" not in alert.summary, alert
        features = [r for r in alert.reasons if "feature" in r]
        for reason in features:
            assert reason["value"] > reason["baseline"], reason
        combination = [r for r in alert.reasons if "combination" in r]
        assert features or combination or alert_rules(alert), alert
        assert not (features and combination)


def test_alert_ids_do_not_depend_on_the_micro_batch_size(model: DetectionModel, dense_attacks: Simulation) -> None:
    small, small_engine = replay(dense_attacks.events, model, max_batch_events=512)
    large, large_engine = replay(dense_attacks.events, model, max_batch_events=8192)
    assert small_engine.stats.batches > large_engine.stats.batches  # the smaller size really cut the batches
    assert large
    only_large = sorted((a.entity_type, a.entity, a.ts) for a in large if a.alert_id not in {b.alert_id for b in small})
    only_small = sorted((a.entity_type, a.entity, a.ts) for a in small if a.alert_id not in {b.alert_id for b in large})
    assert (only_large, only_small) == ([], [])


def test_a_freshly_trained_model_can_detect_before_it_is_saved(
    baseline: pd.DataFrame, attacks: Simulation, tmp_path: Path
) -> None:
    model, _ = train_model(baseline, TrainingParams(n_estimators=50, max_samples=256))
    alerts, _ = replay(attacks.events, model)  # the model `train_model` returned, as a library user would
    version = save_model(model, tmp_path)
    assert alerts
    assert {a.model_version for a in alerts} == {version}


# ---------------------------------------------------------------------------- streaming runner


def publish(bus: MemoryBus, sim: Simulation | pd.DataFrame) -> int:
    count = 0
    for record in iter_records(sim):
        bus.publish(TOKEN_USAGE, record.bus_key, record.to_json())
        count += 1
    return count


def drain(runner: StreamingRunner) -> None:
    for _ in range(100_000):
        if not runner.step():
            return
    raise AssertionError("the runner never caught up")


class Topic:
    """Reads a topic from the beginning as its own consumer group, a little more at each call."""

    def __init__(self, bus: MemoryBus, topic: str) -> None:
        self.consumer = bus.consumer([topic], f"test-reader-{uuid.uuid4()}", from_beginning=True)

    def read(self) -> list[bytes]:
        out: list[bytes] = []
        while batch := self.consumer.poll(100_000, 0):
            out.extend(m.value for m in batch)
        return out


def incident_entities(sim: Simulation) -> set[str]:
    return {e for i in sim.incidents for e in (*i.jtis, *i.ips, *i.subs)}


@pytest.mark.parametrize("partitions", [1, 3])
def test_runner_publishes_the_alerts_replay_gives(model: DetectionModel, attacks: Simulation, partitions: int) -> None:
    bus = MemoryBus(default_topics(partitions))
    alerts_topic = Topic(bus, ALERTS)
    published = publish(bus, attacks)
    runner = StreamingRunner(bus, model, poll_timeout_s=0)
    drain(runner)
    expected, _ = replay(attacks.events, model)
    got = [Alert.from_json(raw) for raw in alerts_topic.read()]
    assert runner.engine.stats.events + runner.engine.stats.late_events == published
    assert runner.engine.stats.late_events == 0  # every event in time: partitions are not event-time order
    assert sorted({a.alert_id for a in got}) == sorted({a.alert_id for a in expected})


def test_runner_dead_letters_garbage_and_keeps_going(model: DetectionModel, attacks: Simulation) -> None:
    bus = MemoryBus()
    records = list(iter_records(attacks.events.iloc[:300]))
    garbage = [b"not json", b"\xff\xfe\xfd binary", b"[1, 2, 3]", orjson.dumps({"schema": "token-usage/1"}), b""]
    for record in records[:100]:
        bus.publish(TOKEN_USAGE, record.bus_key, record.to_json())
    for i, raw in enumerate(garbage):
        bus.publish(TOKEN_USAGE, f"junk-{i}", raw)
    for record in records[100:]:
        bus.publish(TOKEN_USAGE, record.bus_key, record.to_json())
    runner = StreamingRunner(bus, model, poll_timeout_s=0)
    drain(runner)

    letters = [json.loads(raw) for raw in Topic(bus, DEAD_LETTER).read()]
    assert runner.dead_letters == len(letters) == len(garbage)
    assert sorted(base64.b64decode(letter["original"]) for letter in letters) == sorted(garbage)
    assert sorted(base64.b64decode(letter["key"]) for letter in letters) == sorted(
        f"junk-{i}".encode() for i in range(len(garbage))
    )
    assert all(letter["topic"] == TOKEN_USAGE and "token-usage/1" in letter["error"] for letter in letters)
    stats = runner.engine.stats
    assert stats.events + stats.late_events == len(records)  # every good event after the garbage was processed


def test_runner_restart_publishes_no_alert_twice(
    model: DetectionModel, attacks: Simulation, later_attacks: Simulation
) -> None:
    bus = MemoryBus()
    alerts_topic, letters_topic = Topic(bus, ALERTS), Topic(bus, DEAD_LETTER)
    publish(bus, attacks)
    bus.publish(TOKEN_USAGE, "junk", b"junk-1")
    first_runner = StreamingRunner(bus, model, group="detector", poll_timeout_s=0)
    drain(first_runner)
    first = [Alert.from_json(raw) for raw in alerts_topic.read()]
    first_runner.close()

    publish(bus, later_attacks)
    bus.publish(TOKEN_USAGE, "junk", b"junk-2")
    second_runner = StreamingRunner(bus, model, group="detector", poll_timeout_s=0)
    drain(second_runner)
    second = [Alert.from_json(raw) for raw in alerts_topic.read()]

    assert first and second
    assert not {a.alert_id for a in first} & {a.alert_id for a in second}
    assert any(a.entity in incident_entities(later_attacks) for a in second)  # new attacks still alert
    letters = [base64.b64decode(json.loads(raw)["original"]) for raw in letters_topic.read()]
    assert letters == [b"junk-1", b"junk-2"]  # the rebuild re-read junk-1 without dead-lettering it again


def test_runner_restart_rebuilds_open_windows(model: DetectionModel) -> None:
    """Six forged tokens before the restart and six after: the rule needs the windows rebuilt to see ten."""
    bus = MemoryBus()
    alerts_topic = Topic(bus, ALERTS)
    prober = "203.0.113.77"
    for i in range(6):
        event = forged(T0 + 10 * i, prober)
        bus.publish(TOKEN_USAGE, event.bus_key, event.to_json())
    first_runner = StreamingRunner(bus, model, group="detector", poll_timeout_s=0)
    drain(first_runner)
    before = [Alert.from_json(raw) for raw in alerts_topic.read()]
    first_runner.close()
    assert not any("forged_probing" in alert_rules(a) for a in before)

    for i in range(6, 12):
        event = forged(T0 + 10 * i, prober)
        bus.publish(TOKEN_USAGE, event.bus_key, event.to_json())
    second_runner = StreamingRunner(bus, model, group="detector", poll_timeout_s=0)
    drain(second_runner)
    after = [Alert.from_json(raw) for raw in alerts_topic.read()]
    assert any(a.entity == prober and "forged_probing" in alert_rules(a) for a in after)


def test_runner_rebuilds_windows_even_after_a_long_outage(
    model: DetectionModel, attacks: Simulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rebuild reaches back from the last processed event, not from the wall clock."""
    import pipeline.detection.runner as runner_module

    bus = MemoryBus()
    records = list(iter_records(attacks.events))
    half = len(records) // 2
    for record in records[:half]:
        bus.publish(TOKEN_USAGE, record.bus_key, record.to_json())
    first = StreamingRunner(bus, model, poll_timeout_s=0)
    drain(first)
    first.consumer.close()
    real_time = runner_module.time.time
    monkeypatch.setattr(runner_module.time, "time", lambda: real_time() + 3600)  # restarted an hour later
    second = StreamingRunner(bus, model, poll_timeout_s=0)
    second.step()
    assert second.engine.stats.events > 0, "the restarted runner rebuilt nothing"
