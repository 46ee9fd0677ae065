"""Network identity of a client address: which network (ASN) it is in and what kind of network that is.

A stolen token replayed from a residential proxy, a phone flipping between home Wi-Fi and its carrier, and a
dual-stack home whose IPv4 and IPv6 addresses share nothing textual are told apart by *whose network* an
address is in, not by its /16. With an offline database the operator supplies (MaxMind DB format:
GeoLite2-ASN, DB-IP ASN, GeoIP2 ISP / Connection-Type / Anonymous-IP; ``--ip-db FILE``), an address resolves to
its autonomous system and a network kind (:func:`open_ip_db`; the rules are in ``_mmdb.py``). Without one, the
fallback is today's prefix: the /16 of an IPv4 address, the /32 of an IPv6 one, kind ``unknown`` — and the
services say so at startup (:func:`describe`) and in each alert (alert/1 ``network_source``).

The resolver is a plain callable handed to the detection engine; the engine itself does no I/O (the files are
opened, and memory-mapped, before it starts).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.networks.base import (
    KINDS,
    PREFIX_SOURCE,
    PREFIXES,
    RENTED_KINDS,
    Network,
    NetworkResolver,
    PrefixResolver,
)

# The MaxMind DB resolver (``--ip-db``) and writer, loaded on first use (PEP 562): the reader's import costs
# about 40 ms, which every `jwtwatch` command paid at start-up, with or without --ip-db.
_LAZY = {
    "IpDbError": "pipeline.networks._mmdb",
    "IpDbFile": "pipeline.networks._mmdb",
    "MmdbResolver": "pipeline.networks._mmdb",
    "describe": "pipeline.networks._mmdb",
    "kind_of": "pipeline.networks._mmdb",
    "open_ip_db": "pipeline.networks._mmdb",
    "open_ip_db_file": "pipeline.networks._mmdb",
    "write_mmdb": "pipeline.networks._write",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:  # what the lazy names are, for the type checker
    from pipeline.errors import IpDbError
    from pipeline.networks._mmdb import IpDbFile, MmdbResolver, describe, kind_of, open_ip_db, open_ip_db_file
    from pipeline.networks._write import write_mmdb

__all__ = [
    "KINDS",
    "PREFIXES",
    "PREFIX_SOURCE",
    "RENTED_KINDS",
    "IpDbError",
    "IpDbFile",
    "MmdbResolver",
    "Network",
    "NetworkResolver",
    "PrefixResolver",
    "describe",
    "kind_of",
    "open_ip_db",
    "open_ip_db_file",
    "write_mmdb",
]


def identity_warning(trained_with: str | None, detecting_with: str) -> str | None:
    """A warning when a model trained with one kind of network identity (``prefix``, or an IP database) now
    detects with the other: feature values differ (a carrier's CGNAT pools are one network by AS, several by
    prefix), so its thresholds no longer hold as calibrated. Models from before this was recorded: ``None``."""
    if trained_with is None or (trained_with == PREFIX_SOURCE) == (detecting_with == PREFIX_SOURCE):
        return None
    return (
        f"the model was trained with network identity {trained_with!r} and now detects with {detecting_with!r}: "
        "retrain it with the same --ip-db (or without) for its thresholds to hold"
    )
