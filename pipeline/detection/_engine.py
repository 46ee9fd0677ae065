"""The detection engine: usage events in, alerts out — the one code path for streaming and replay.

For each micro-batch (``process``):

1. every event updates the sliding windows of its IP and — when its claims are trustworthy — of its
   token and subject (a forged token's ``sub`` is whatever the attacker wrote: it only counts against
   the IP that sent it);
2. every entity the batch touched is re-scored (at most once per ``rescore_s`` of event time, and at
   once when it first appears), all rows of one entity type in one vectorised forest call;
3. scores above the calibrated threshold — or a rule that needs no model — become findings, which the
   alert tracker turns into new or escalated alerts;
4. clean windows teach the baselines — and so do windows whose finding repeats a pattern an analyst judged
   benign for that entity (``suppressions``): those raise no alert; idle entities and quiet episodes are evicted.

Pure: no I/O. The streaming runner and ``jwtwatch detect`` wire it to the bus and to files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from pipeline.detection.batch import EventBatch
from pipeline.detection.episodes import AlertTracker, Finding
from pipeline.detection.rules import fired_rules, rule_severity
from pipeline.events import Alert
from pipeline.features import (
    FEATURES,
    NO_USER_AGENT,
    Session,
    ip_features,
    subject_features,
    token_features,
    ua_family,
)
from pipeline.features.baselines import Baselines
from pipeline.networks import PREFIXES, Network, NetworkResolver
from pipeline.response.summary import EntityFacts
from pipeline.response.suppressions import Suppressions
from pipeline.scoring.model import DetectionModel
from pipeline.views.keys import VERIFIED_REASONS  # which events' claims count: the keyed views' rule too
from pipeline.windows import (
    FORGED,
    NEVER,
    OTHER_REJECTED,
    STALE,
    EntityWindow,
    SubjectWindow,
    TokenWindow,
    WindowSpec,
    WindowStore,
)

_ROW_FOR_REASON = {
    None: 0,
    "bad_signature": FORGED,
    "unknown_kid": FORGED,
    "alg_not_allowed": FORGED,
    "malformed": FORGED,
    "weak_key": FORGED,
    "type": FORGED,
    "too_large": FORGED,
    "expired": STALE,
    "revoked": STALE,
    "replayed": STALE,
    "not_yet_valid": OTHER_REJECTED,
    "issuer": OTHER_REJECTED,
    "audience": OTHER_REJECTED,
    "missing_claim": OTHER_REJECTED,
    "lifetime": OTHER_REJECTED,
}


LEARN_AFTER_S = 120.0
LEARN_MAX_FACTOR = 5.0
TICK_S = 1.0  # entities touched in a tick of event time are scored when it closes
_MAX_MEMO_IPS = 200_000  # addresses whose network is remembered; cleared past this (an address spray)
NO_USER_AGENT_FAMILY = frozenset({NO_USER_AGENT})  # a session's families when it sent no user agent


@dataclass
class EngineStats:
    events: int = 0
    late_events: int = 0
    scored: int = 0
    findings: int = 0
    alerts: int = 0
    batches: int = 0
    suppressed: int = 0  # findings not raised: an analyst judged their pattern benign for that entity


@dataclass
class Collected:
    """Feature rows gathered without a model (training): per entity type, parallel lists."""

    ts: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in FEATURES})
    entity: dict[str, list[str]] = field(default_factory=lambda: {t: [] for t in FEATURES})
    rows: dict[str, list[list[float]]] = field(default_factory=lambda: {t: [] for t in FEATURES})


class DetectionEngine:
    def __init__(
        self,
        model: DetectionModel | None,
        *,
        baselines: Baselines | None = None,
        spec: WindowSpec | None = None,
        rescore_s: float = 5.0,
        confirm_forest: bool = True,
        collect: Collected | None = None,
        networks: NetworkResolver = PREFIXES,
    ) -> None:
        """``networks`` says which network an address is in (an ASN database, else its /16 prefix)."""
        if model is None and collect is None:
            raise ValueError("an engine without a model can only collect features (training)")
        self.model = model
        self.spec = model.spec if model is not None else (spec or WindowSpec())
        self.baselines = baselines if baselines is not None else Baselines()
        self.rescore_s = rescore_s
        self.confirm_forest = confirm_forest
        self.collect = collect
        self.networks = networks
        # Networks are autonomous systems (an ASN database), not /16 prefixes: what token_concurrent_networks needs.
        self.networks_identified = networks.identifies_networks
        self._network_of: dict[str, Network] = {}  # address -> its network, memoised (addresses repeat)
        self._network_hash: dict[str, int] = {}  # address -> hash of its network's key (0: "none yet")
        strings: dict[str, str] = {}  # user agents and client ids, shared by all windows
        kinds = {"jti": TokenWindow, "sub": SubjectWindow, "ip": EntityWindow}
        self.stores = {t: WindowStore(self.spec, window_type=kinds[t], strings=strings) for t in FEATURES}
        self.tracker = AlertTracker(
            model.version if model else "untrained", window_s=self.spec.length_s, network_source=networks.source
        )
        self.stats = EngineStats()
        self.max_ts = float("-inf")
        self._next_eviction = float("-inf")
        self._tick_end = float("-inf")
        self._touched: dict[str, set[str]] = {t: set() for t in FEATURES}
        self._lifetimes: dict[float, float] = {}  # exp - iat -> the float that token windows share
        self.on_finding: Callable[[Finding], None] | None = None
        #: Benign verdicts (pipeline.response.suppressions); the streaming runner fills it from the verdict topic.
        self.suppressions = Suppressions()
        #: Called with every scored batch of one entity type: (entity_type, keys, event times, feature
        #: rows, scores) — what the archive keeps as window features and scores.
        self.on_scored: Callable[[str, list[str], list[float], list[list[float]], list[float]], None] | None = None

    @property
    def watermark(self) -> float:
        return self.max_ts - self.spec.grace_s

    def network_of(self, ip: str) -> Network:
        network = self._network_of.get(ip)
        if network is None:
            self._remember_network(ip)
            network = self._network_of[ip]
        return network

    def _remember_network(self, ip: str) -> int:
        """Resolve ``ip`` once; the windows compare networks by the hash of their key."""
        if len(self._network_of) >= _MAX_MEMO_IPS:
            self._network_of.clear()
            self._network_hash.clear()
        network = self._network_of[ip] = self.networks(ip)
        value = self._network_hash[ip] = hash(network.key) or 1
        return value

    def active_entities(self) -> int:
        return sum(len(store) for store in self.stores.values())

    # ----------------------------------------------------------------------------------------- ingest

    def process(self, batch: EventBatch) -> list[Alert]:
        """Ingest events in order; score at every tick of event time (``TICK_S``).

        Scoring happens when the first event of a new tick arrives — a point fixed by event time
        alone, so the same events give the same scores and alert ids however they were cut into
        batches (a replay with other batch sizes, a runner rebuilding after a restart).
        """
        return _ingest(self, batch)

    def flush(self) -> list[Alert]:
        """Score what the current tick touched so far — for a live stream when the bus goes quiet."""
        alerts = self._close_tick()
        self.stats.alerts += len(alerts)
        return alerts

    def _close_tick(self) -> list[Alert]:
        alerts = self._score(self._touched)
        for keys in self._touched.values():
            keys.clear()
        return alerts

    def _evict(self) -> None:
        watermark = self.watermark
        for store in self.stores.values():
            store.evict_idle(watermark)
        self.tracker.close_quiet(self.max_ts)
        self.suppressions.prune(self.max_ts)
        self._next_eviction = self.max_ts + self.spec.length_s / 2

    # ---------------------------------------------------------------------------------------- scoring

    def _score(self, touched: dict[str, set[str]]) -> list[Alert]:
        alerts: list[Alert] = []
        spec = self.spec
        baselines = self.baselines
        for entity_type, keys in touched.items():
            store = self.stores[entity_type]
            due: list[str] = []
            rows: list[list[float]] = []
            for key in _due(store.entities, keys, self.rescore_s):
                window = store.entities[key]
                window.scored_at = window.last_ts
                window.dirty = False
                now = window.last_ts
                if entity_type == "jti":
                    row = token_features(window, spec, now, baselines, self.network_of)
                elif entity_type == "sub":
                    row = subject_features(
                        window, spec, now, baselines, key, self.network_of, self._sessions(window, now)
                    )
                else:
                    row = ip_features(window, spec, now, baselines, key)
                due.append(key)
                rows.append(row)
            if not due:
                continue
            self.stats.scored += len(due)
            if self.collect is not None:
                self.collect.ts[entity_type].extend(store.entities[k].last_ts for k in due)
                self.collect.entity[entity_type].extend(due)
                self.collect.rows[entity_type].extend(rows)
            if self.model is None:
                for key, row in zip(due, rows, strict=True):
                    self._learn(entity_type, key, store.entities[key], row)
                continue
            alerts.extend(self._judge(entity_type, store, due, rows))
        return alerts

    def _sessions(self, window: EntityWindow, now: float) -> list[Session] | None:
        """The subject's tokens seen in its window, with their clients, use spans and networks."""
        tokens = window.other_many  # two tokens or more: otherwise the one token is inline
        if not tokens or len(tokens) < 2:
            return None
        horizon = now - self.spec.length_s
        store = self.stores["jti"].entities
        sessions = []
        for jti, seen in tokens.items():
            token = store.get(jti)
            if seen < horizon or token is None or token.client is None:
                continue
            networks = [self.network_of(ip) for ip in token.ips_within(horizon)]
            agents = [ua for ua in token.uas_within(horizon) if ua]
            sessions.append(
                Session(
                    token.client,
                    max(token.first_ts, horizon),
                    token.last_ts,
                    frozenset(n.key for n in networks),
                    frozenset(n.kind for n in networks),
                    frozenset(ua_family(ua) for ua in agents) if agents else NO_USER_AGENT_FAMILY,
                    frozenset(agents),
                )
            )
        return sessions

    def _judge(self, entity_type: str, store: WindowStore, due: list[str], rows: list[list[float]]) -> list[Alert]:
        assert self.model is not None
        scorer = self.model.scorers[entity_type]
        scores = scorer.score_samples(np.asarray(rows))
        if self.on_scored is not None:
            self.on_scored(entity_type, due, [store.entities[k].last_ts for k in due], rows, scores.tolist())
        names = FEATURES[entity_type]
        alerts = []
        for key, row, score in zip(due, rows, scores.tolist(), strict=True):
            window = store.entities[key]
            rules = fired_rules(
                entity_type,
                row,
                networks_identified=self.networks_identified,
                machine=entity_type == "jti" and window.client is not None and window.client == window.owner,
            )
            severity = forest_severity = scorer.severity(score)
            if severity is None and not rules:
                window.suspect_since = NEVER
                self._learn(entity_type, key, window, row)
                continue
            severity = rule_severity(rules, severity)
            assert severity is not None  # a rule fired, or the forest gave one
            if self.suppressions and self.suppressions.covers(entity_type, key, rules, severity, window.last_ts):
                # An analyst judged this pattern benign for this entity: no alert, and the window is normal
                # behaviour, so it teaches the baselines like a clean one.
                window.suspect_since = NEVER
                self.stats.suppressed += 1
                self._learn(entity_type, key, window, row)
                continue
            if not rules and self.confirm_forest and window.suspect_since == NEVER:
                # The forest alone must see the entity anomalous twice in a row (>= rescore_s apart):
                # one odd request — a lazy client's expired token — is not an attack.
                window.suspect_since = window.last_ts
                continue
            now = window.last_ts
            explained = [r.to_dict() for r in scorer.reasons(row)]
            if not explained and forest_severity is not None:
                # The forest flagged the row yet no feature is above its baseline: say so, not usual values.
                explained = [scorer.combination(row).to_dict()]
            finding = Finding(
                entity_type=entity_type,
                entity=key,
                ts=now,
                window_start=now - now % self.spec.bucket_s - self.spec.length_s + self.spec.bucket_s,
                window_end=now,
                score=score,
                severity=severity,
                features=dict(zip(names, row, strict=True)),
                reasons=explained,
                rules=tuple(rules),
                sub=window.owner if entity_type == "jti" else key if entity_type == "sub" else None,
                jti=key if entity_type == "jti" else None,
                ip=key if entity_type == "ip" else window.last_ip or None,
            )
            self.stats.findings += 1
            if self.on_finding is not None:
                self.on_finding(finding)
            alert = self.tracker.observe(finding, partial(self._facts, window))
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _facts(self, window: EntityWindow) -> EntityFacts:
        """What an alert's summary says of the entity's window: networks, client software, time span."""
        horizon = window.last_ts - self.spec.length_s
        return EntityFacts(
            span_s=window.last_ts - max(window.first_ts, horizon),
            networks=tuple(sorted({self.network_of(ip).label for ip in window.ips_within(horizon)})),
            clients=tuple(sorted({ua_family(ua) for ua in window.uas_within(horizon) if ua})),
        )

    def _learn(self, entity_type: str, key: str, window: EntityWindow, row: list[float]) -> None:
        """A clean window teaches the baseline what normal volume looks like.

        Once the entity has been seen for ``LEARN_AFTER_S`` its volume, scaled to a whole window, is
        learned, then at most once per window — so a client's usual volume is known minutes into a
        stream, not only after a full window.
        """
        now = window.last_ts
        seen = now - window.first_ts
        if seen < LEARN_AFTER_S or now - window.learned_at < self.spec.length_s:
            return
        window.learned_at = now
        scale = self.spec.length_s / min(seen, self.spec.length_s)
        events = math.expm1(row[0]) * scale
        if entity_type == "jti":
            client = self.baselines.client_of(window.owner)
            usual = self.baselines.client_rate(client)
            # One busy token must not teach its client that abuse is normal: far above the usual
            # volume it is left out (the rate_abuse rule needs time to reach its floor).
            if not usual or events <= LEARN_MAX_FACTOR * usual:
                self.baselines.learn_client_rate(client, events)
        elif entity_type == "sub":
            usual = self.baselines.subject_rate(key)
            if not usual or events <= LEARN_MAX_FACTOR * usual:
                self.baselines.learn_subject_rate(key, events)
        else:
            self.baselines.learn_ip_subjects(key, row[1])


def _due(entities: dict[str, EntityWindow], touched: set[str], rescore_s: float) -> list[str]:
    """The touched entities to score now, sorted (the same events give the same alerts, run after run).

    One is due at once when something new appeared (an address, a client, a rejection), otherwise at most every
    ``rescore_s`` of event time. Filtered before sorting: a tick touches many more entities than are due.
    """
    due = []
    for key in touched:
        window = entities.get(key)
        if window is not None and (window.dirty or window.last_ts - window.scored_at >= rescore_s):
            due.append(key)
    due.sort()
    return due


def _ingest(engine: DetectionEngine, batch: EventBatch) -> list[Alert]:
    """:meth:`DetectionEngine.process`: a function of its own so that ``engine.pxd`` can give its locals C
    types when compiled (the stores and windows as extension types, times as doubles)."""
    touched_jti, touched_sub, touched_ip = engine._touched["jti"], engine._touched["sub"], engine._touched["ip"]
    jti_store, sub_store, ip_store = engine.stores["jti"], engine.stores["sub"], engine.stores["ip"]
    intern = jti_store.intern
    observe = engine.baselines.observe_use
    grace = engine.spec.grace_s
    bucket_s = engine.spec.bucket_s
    bucket = -1
    lifetimes = engine._lifetimes
    network_hashes = engine._network_hash
    network_of = engine._network_of
    remember_network = engine._remember_network
    watermark = engine.watermark
    max_ts = engine.max_ts
    tick_end = engine._tick_end
    late = 0
    rows = _ROW_FOR_REASON
    verified = VERIFIED_REASONS
    alerts: list[Alert] = []
    for ts, jti, sub, client, ip, ua, reason, iat, exp in zip(
        batch.ts, batch.jti, batch.sub, batch.client_id, batch.ip, batch.user_agent, batch.reason,
        batch.iat, batch.exp, strict=True,
    ):  # fmt: skip
        if ts < watermark:
            late += 1
            continue
        if ts >= tick_end:
            engine.max_ts = max_ts
            alerts.extend(engine._close_tick())
            tick_end = (ts // TICK_S + 1) * TICK_S
            if ts >= engine._next_eviction:
                engine.max_ts = max(max_ts, ts)
                engine._evict()
        if ts > max_ts:
            max_ts = ts
            watermark = ts - grace
        # The bucket and the network's hash are the same for the event's three windows: computed once. Windows
        # keep the bucket number (``head``): as pure Python one int object per bucket, not one per window.
        number = int(ts // bucket_s)
        if number != bucket:
            bucket = number
        prefix = network_hashes.get(ip) or remember_network(ip)
        row = rows.get(reason, OTHER_REJECTED)
        trusted = reason in verified
        # From here on ``ip`` is the IP window's own copy of the address, which the token and subject
        # windows then share instead of each keeping the copy parsed from their first event.
        ip = ip_store.add_at(ip, ts, bucket, prefix, ip, ua, row, sub if trusted else None).last_ip
        touched_ip.add(ip)
        if not trusted:
            continue
        if sub is not None:
            window = sub_store.add_at(sub, ts, bucket, prefix, ip, ua, row, jti)
            # Windows and baselines share one copy of each client id and subject.
            if client != window.owner:
                window.owner = None if client is None else intern(client)
            client = window.owner
            sub = window.key
            touched_sub.add(sub)
        if jti is not None:
            token = jti_store.add_at(jti, ts, bucket, prefix, ip, ua, row)
            assert isinstance(token, TokenWindow)  # the jti store's window type (compiled, engine.pxd says so)
            token.owner = sub
            if client != token.client:
                token.client = None if client is None else intern(client)
            if iat is not None and exp is not None:
                # Only the lifetime is read (token_age_fraction): exp - iat of the latest event, as floats.
                # Most tokens of a client share a lifetime, and as pure Python then one float object (compiled,
                # the window holds it as a C double).
                life = exp - iat
                if life != token.lifetime:
                    shared = lifetimes.get(life)
                    if shared is None:
                        if len(lifetimes) > 10_000:
                            lifetimes.clear()
                        shared = lifetimes[life] = float(exp) - float(iat)
                    token.lifetime = shared
                age = ts - iat
                if age > token.max_age_s:
                    token.max_age_s = age
            touched_jti.add(jti)
        if sub is not None and reason is None:
            observe(sub, client, network_of[ip].key, ua_family(ua) if ua else None, ts)
    engine.max_ts = max_ts
    engine._tick_end = tick_end
    engine.stats.events += len(batch) - late
    engine.stats.late_events += late
    engine.stats.batches += 1
    engine.stats.alerts += len(alerts)
    return alerts


#: What the public module re-exports (from this source, or from its compiled twin).
__all__ = [
    "LEARN_AFTER_S",
    "LEARN_MAX_FACTOR",
    "NO_USER_AGENT_FAMILY",
    "TICK_S",
    "VERIFIED_REASONS",
    "Collected",
    "DetectionEngine",
    "EngineStats",
]
