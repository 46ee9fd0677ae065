"""What is normal for a subject, a client and an IP — learned from the stream itself. Pure, no I/O.

* **subject**: the /16 networks and client-software families it uses, its usual volume per window, its
  client. A network becomes *known* for a subject only ``settle_s`` after it was first seen, so an
  attacker's network is novel for long enough to be caught, and a subject's new office is not novel for
  ever. A subject with no history has no baseline: novelty is then 0, never a guess.
* **client** (``client_id``): the usual volume of one token per window — a batch service's tokens are
  judged against services, a browser's against browsers.
* **IP**: the usual number of subjects behind it, so an office NAT is not a credential-stuffing botnet.

Volumes are exponentially weighted averages of *clean* windows (the caller feeds only windows that did
not alert), so an attack does not teach the baseline that attacks are normal. State is bounded per entity;
``to_dict``/``from_dict`` persist it (the services write it under the data dir).
"""

from __future__ import annotations

import math
from typing import Any

DEFAULT_SETTLE_S = 900.0
MAX_PREFIXES = 16
MAX_FAMILIES = 8
EWMA_ALPHA = 0.05


class SubjectProfile:
    __slots__ = ("client", "families", "prefixes", "rate")

    def __init__(self) -> None:
        self.prefixes: dict[str, float] = {}  # /16 -> first seen
        self.families: dict[str, float] = {}  # UA family -> first seen
        self.rate = 0.0  # EWMA of events per window, 0 until learned
        self.client: str | None = None


def _first_seen(known: dict[str, float], value: str, ts: float, cap: int) -> None:
    if value not in known:
        if len(known) >= cap:
            del known[max(known, key=known.__getitem__)]  # forget the newest, keep the established
        known[value] = ts


class Baselines:
    def __init__(
        self,
        *,
        settle_s: float = DEFAULT_SETTLE_S,
        default_client_rate: float = 20.0,
        default_subject_rate: float = 30.0,
        default_ip_subjects: float = 2.0,
    ) -> None:
        self.settle_s = settle_s
        self.default_client_rate = default_client_rate
        self.default_subject_rate = default_subject_rate
        self.default_ip_subjects = default_ip_subjects
        self.subjects: dict[str, SubjectProfile] = {}
        self.clients: dict[str, float] = {}
        self.ips: dict[str, float] = {}
        self.now = 0.0

    # -- observation ------------------------------------------------------------------------------

    def observe_use(self, sub: str, client: str | None, prefix: str, family: str | None, ts: float) -> None:
        """An accepted use of a token of ``sub``: remember the network and software, first-seen times."""
        profile = self.subjects.get(sub)
        if profile is None:
            profile = self.subjects[sub] = SubjectProfile()
        # Once per accepted event: the usual case, a known network and software, needs no call.
        if prefix not in profile.prefixes:
            _first_seen(profile.prefixes, prefix, ts, MAX_PREFIXES)
        if family is not None and family not in profile.families:
            _first_seen(profile.families, family, ts, MAX_FAMILIES)
        if client is not None:
            profile.client = client
        if ts > self.now:
            self.now = ts

    def learn_client_rate(self, client: str | None, events: float) -> None:
        if client is None:
            return
        old = self.clients.get(client)
        self.clients[client] = events if old is None else old + EWMA_ALPHA * (events - old)

    def learn_subject_rate(self, sub: str, events: float) -> None:
        profile = self.subjects.get(sub)
        if profile is not None:
            profile.rate = events if profile.rate == 0 else profile.rate + EWMA_ALPHA * (events - profile.rate)

    def learn_ip_subjects(self, ip: str, subjects: float) -> None:
        old = self.ips.get(ip)
        self.ips[ip] = subjects if old is None else old + EWMA_ALPHA * (subjects - old)

    # -- lookups used by the features -----------------------------------------------------------------

    def client_of(self, sub: str | None) -> str | None:
        profile = self.subjects.get(sub) if sub is not None else None
        return profile.client if profile is not None else None

    def client_rate(self, client: str | None) -> float:
        """Usual uses of one of this client's tokens per window; 0 while not yet learned (no judgement)."""
        rate = self.clients.get(client) if client is not None else None
        return max(rate, 1.0) if rate is not None else 0.0

    def subject_rate(self, sub: str) -> float:
        """Usual uses by this subject per window, else its client's; 0 while neither is learned."""
        profile = self.subjects.get(sub)
        if profile is None or profile.rate == 0:
            return self.client_rate(profile.client if profile else None)
        return max(profile.rate, 1.0)

    def _settled(self, known: dict[str, float]) -> set[str] | None:
        cutoff = self.now - self.settle_s
        settled = {value for value, first in known.items() if first <= cutoff}
        return settled or None

    def known_prefixes(self, sub: str | None) -> set[str] | None:
        profile = self.subjects.get(sub) if sub is not None else None
        return self._settled(profile.prefixes) if profile is not None else None

    def known_ua_families(self, sub: str | None) -> set[str] | None:
        profile = self.subjects.get(sub) if sub is not None else None
        return self._settled(profile.families) if profile is not None else None

    def ip_subjects(self, ip: str) -> float:
        """Usual subjects behind this IP per window; 0 while not yet learned (no judgement)."""
        usual = self.ips.get(ip)
        return max(usual, 1.0) if usual is not None else 0.0

    def knows_ip(self, ip: str) -> bool:
        return ip in self.ips

    # -- persistence --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "settle_s": self.settle_s,
            "now": self.now,
            "defaults": [self.default_client_rate, self.default_subject_rate, self.default_ip_subjects],
            "subjects": {
                sub: {"prefixes": p.prefixes, "families": p.families, "rate": p.rate, "client": p.client}
                for sub, p in self.subjects.items()
            },
            "clients": self.clients,
            "ips": self.ips,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baselines:
        """Raises ``ValueError`` naming what is wrong: a history is read from disk, and one NaN time would keep
        every network from ever settling (novelty 0 for ever, the rules that need it silent)."""
        if not isinstance(data, dict) or data.get("format") != 1:
            raise ValueError("unknown baselines format")
        defaults = data.get("defaults")
        if not isinstance(defaults, list) or len(defaults) != 3:
            raise ValueError("defaults: three numbers expected")
        client, subject, ip = (_number(v, "defaults") for v in defaults)
        baselines = cls(
            settle_s=_number(data.get("settle_s"), "settle_s"),
            default_client_rate=client,
            default_subject_rate=subject,
            default_ip_subjects=ip,
        )
        baselines.now = _number(data.get("now"), "now")
        subjects = data.get("subjects")
        if not isinstance(subjects, dict):
            raise ValueError("subjects: a map expected")
        for sub, raw in subjects.items():
            if not isinstance(raw, dict):
                raise ValueError(f"subjects[{sub!r}]: a map expected")
            profile = SubjectProfile()
            profile.prefixes = _times(raw.get("prefixes"), "prefixes")
            profile.families = _times(raw.get("families"), "families")
            profile.rate = _number(raw.get("rate"), "rate")
            client_id = raw.get("client")
            if client_id is not None and not isinstance(client_id, str):
                raise ValueError(f"subjects[{sub!r}].client: a string expected")
            profile.client = client_id
            baselines.subjects[str(sub)] = profile
        baselines.clients = _times(data.get("clients"), "clients")
        baselines.ips = _times(data.get("ips"), "ips")
        return baselines


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: a number expected, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or abs(number) > 1e15:
        raise ValueError(f"{what}: {value!r} is not a usable number")
    return number


def _times(values: Any, what: str) -> dict[str, float]:
    if not isinstance(values, dict):
        raise ValueError(f"{what}: a map expected")
    return {str(k): _number(v, what) for k, v in values.items()}


#: What the public module re-exports (from this source, or from its compiled twin).
__all__ = [
    "DEFAULT_SETTLE_S",
    "EWMA_ALPHA",
    "MAX_FAMILIES",
    "MAX_PREFIXES",
    "Baselines",
    "SubjectProfile",
]
