"""A small labelled usage stream for the keyed-view tests, and what each view should hold of it."""

from __future__ import annotations

from collections import Counter
from functools import cache

from pipeline.events import TokenUsage
from pipeline.simulate import SimulationParams, iter_records, simulate
from pipeline.views import ip_key, subject_key

#: A couple of minutes of a small world, with its attacks (forged tokens, malformed ones, stolen ones ...).
STREAM = SimulationParams(minutes=2, seed=17, browsers=40, mobile=15, services=3, offices=2, incidents_per_threat=1)


@cache
def usage_stream() -> tuple[TokenUsage, ...]:
    """The simulated events of ``STREAM``, in time order."""
    return tuple(iter_records(simulate(STREAM)))


def expected_counts(records: tuple[TokenUsage, ...] | list[TokenUsage]) -> tuple[Counter[str], Counter[str]]:
    """Events per key the subject view and the IP view should hold (each event once)."""
    subjects = Counter(key for r in records if (key := subject_key(r.sub, r.reason)) is not None)
    ips = Counter(ip_key(r.ip) for r in records)
    return subjects, ips
