"""Which key an event has in each keyed view: the entity keys of the detection engine, defined once.

The engine (``pipeline/detection/_engine.py``, ``_ingest``) keeps one window per entity of three types, and an
event counts against these (the engine does the same tests inline, on its hot path, with ``VERIFIED_REASONS``
imported from here; ``tests/views/test_keys.py`` checks both agree on a simulated stream):

* **IP** — every event, against the address that sent it: ``ip`` exactly as the event carries it (a validated
  IPv4 or IPv6 address, not normalised further). :func:`ip_key`.
* **subject** — ``sub`` alone (not ``iss`` + ``sub``: two issuers' ``alice`` are one subject to the engine), and only
  when the token's signature was verified (``reason`` in :data:`VERIFIED_REASONS`): a forged or unverifiable
  token's ``sub`` is whatever its sender wrote, so it counts only against the IP. An event without a ``sub`` has no
  subject either. :func:`subject_key` (``None``: the event belongs to no subject).
* **token** — ``jti``, verified events only. The usage topic is already keyed by it (``TokenUsage.bus_key``: ``jti``,
  else the client IP), so the token view is the usage topic itself: no key here.

Pure: no I/O.
"""

from __future__ import annotations

#: Reasons given only after the signature was verified (``None``: accepted): the claims of such an event are
#: authentic. The detection engine imports it from here.
VERIFIED_REASONS: frozenset[str | None] = frozenset(
    {None, "expired", "not_yet_valid", "issuer", "audience", "missing_claim", "lifetime", "revoked", "replayed"}
)


def subject_key(sub: str | None, reason: str | None) -> str | None:
    """The event's key in the subject view, or ``None``: it counts against no subject (no ``sub``, or claims that
    were never verified)."""
    return sub if sub is not None and reason in VERIFIED_REASONS else None


def ip_key(ip: str) -> str:
    """The event's key in the IP view: its client address, as the event carries it. Every event has one."""
    return ip


__all__ = ["VERIFIED_REASONS", "ip_key", "subject_key"]
