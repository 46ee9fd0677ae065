"""One line per alert that a person can act on — pure, no I/O.

Built only when an alert is raised or escalated (never per scored window), from the rules that fired in the
episode, the feature values and reasons of the finding, and a few facts of the entity's window (which
networks, which client software, over how long). Example::

    token of alice used from 45.33.0.0/16 and 203.0.0.0/16 within 4 s, 23 times — by 2 client families
    (Chrome, python-requests)

Networks are *labels*: today the /16 of an IPv4 address (/32 of an IPv6 one), from :func:`network_label`; an
ASN and network class ("AS14061 (hosting)") replace them once the engine has an IP database, without
changing this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.networks import PREFIXES
from pipeline.scoring import natural

#: A summary is one line; entity names inside it are cut to this many characters.
MAX_SUMMARY = 400
MAX_NAME = 64
#: Networks and client families named in full; beyond that "and N more".
MAX_LISTED = 3


@dataclass(frozen=True, slots=True)
class EntityFacts:
    """What an entity's window holds, for a person: the networks and client software it was used from (sorted,
    as labels) and how long from its first use in the window to its last."""

    span_s: float
    networks: tuple[str, ...] = ()
    clients: tuple[str, ...] = ()


def network_label(ip: str) -> str:
    """The network an address is counted in without an IP database, as a person reads it: ``203.0.0.0/16``,
    ``2001:db8::/32`` (the engine labels with its own resolver: ``AS14061 DigitalOcean (hosting)``)."""
    return PREFIXES(ip).label


def summarize(
    entity_type: str,
    entity: str,
    rules: Sequence[str],
    features: Mapping[str, float],
    reasons: Sequence[Mapping[str, Any]],
    facts: EntityFacts | None,
    *,
    sub: str | None = None,
) -> str:
    """``"<who> <did what, where, how often> — <why: the rules, else the top reasons>"``, one line.

    ``features`` are the finding's raw feature values (log-scaled counts as the model sees them); ``reasons``
    the feature reasons of :meth:`pipeline.scoring.EntityScorer.reasons` (or its combination).
    """
    count = _Counts(features)
    uses = count("events")
    if entity_type == "ip":
        head = f"IP {_name(entity)} made {_times(uses, 'request')}"
        if facts is not None:
            head += f" within {_duration(facts.span_s)}"
    else:
        who = f"subject {_name(entity)}" if entity_type == "sub" else f"token of {_name(sub)}" if sub else "token"
        head = who + " used"
        if facts is not None and facts.networks:
            head += f" from {_listed(facts.networks, 'network')}"
        if facts is not None:
            head += f" within {_duration(facts.span_s)}"
        head += f", {_times(uses, 'time')}"
    why = [_RULES[rule](count, facts) for rule in rules if rule in _RULES]
    why.extend(rule.replace("_", " ") for rule in rules if rule not in _RULES)
    if not why:
        why = [str(reason.get("text", "")) for reason in reasons[:2] if reason.get("text")]
    line = f"{head} — {'; '.join(why)}" if why else head
    return _one_line(line)


class _Counts:
    """Feature values in natural units (counts, not their log), 0 for a feature the row does not have."""

    def __init__(self, features: Mapping[str, float]) -> None:
        self.features = features

    def __call__(self, feature: str) -> float:
        value = self.features.get(feature)
        return natural(feature, float(value)) if value is not None else 0.0


def _token_changed(count: _Counts, facts: EntityFacts | None) -> str:
    families = int(count("distinct_ua_families"))
    if facts is not None and facts.clients:
        return f"by {_listed(facts.clients, 'client family', 'client families', counted=families)}"
    return f"by {families} client families"


def _stale(count: _Counts, facts: EntityFacts | None) -> str:
    return f"presented {_times(round(count('stale_rejections')), 'time')} after it expired or was revoked"


def _fanout(count: _Counts, facts: EntityFacts | None) -> str:
    return f"from {count('distinct_prefix24'):.0f} /24 networks"


def _rate(count: _Counts, facts: EntityFacts | None) -> str:
    return f"{count('rate_vs_client'):.0f} times as often as its client's tokens usually are"


def _parallel(count: _Counts, facts: EntityFacts | None) -> str:
    return (
        f"{count('parallel_sessions'):.0f} tokens of one client in use at once from different networks, "
        "not as a second device of the user's"
    )


def _concurrent(count: _Counts, facts: EntityFacts | None) -> str:
    return f"back and forth between networks {_times(round(count('network_returns')), 'time')} within seconds"


def _forged(count: _Counts, facts: EntityFacts | None) -> str:
    users = count("distinct_subjects")
    forged = round(count("forged_per_subject") * max(users, 1.0))
    text = f"{forged} forged or malformed tokens ({count('forged_share') * 100:.0f} % of its requests)"
    return text + (f", {users:.0f} users behind it" if users >= 1 else "")


_RULES = {
    "token_changed_client_and_network": _token_changed,
    "stale_token_replay": _stale,
    "token_fanout": _fanout,
    "rate_abuse": _rate,
    "parallel_sessions": _parallel,
    "token_concurrent_networks": _concurrent,
    "forged_probing": _forged,
}


def _listed(names: Sequence[str], singular: str, plural: str | None = None, *, counted: int | None = None) -> str:
    """``a``, ``a and b``, ``a, b and c``; past MAX_LISTED ``a, b, c and 4 more networks``. With ``counted``
    (how many the features counted, which may exceed the names the window kept): ``2 client families (a, b)``."""
    shown = [_name(n) for n in names[:MAX_LISTED]]
    rest = len(names) - len(shown)
    many = plural or singular + "s"
    if rest > 0:
        # Inside "2 client families (...)" the noun is already said.
        more = "" if counted is not None else f" {singular if rest == 1 else many}"
        text = f"{', '.join(shown)} and {rest} more{more}"
    elif len(shown) > 1:
        text = f"{', '.join(shown[:-1])} and {shown[-1]}"
    else:
        text = shown[0] if shown else ""
    if counted is None:
        return text
    return f"{counted} {singular if counted == 1 else many} ({text})"


def _times(n: float, noun: str) -> str:
    n = round(n)
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        seconds = 0.0
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def _name(text: str | None) -> str:
    """An entity name as it can safely sit in a line of text: printable, and short."""
    text = text or "?"
    if not text.isprintable():  # a subject from a token is hostile text: no control characters in a log line
        text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return text if len(text) <= MAX_NAME else text[: MAX_NAME - 1] + "…"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 1] + "…"
