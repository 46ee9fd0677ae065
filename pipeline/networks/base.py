"""What a network identity is (:class:`Network`, :class:`NetworkResolver`) and the fallback without a database
(:data:`PREFIXES`). Apart from the package's ``__init__`` so that the database reader (``_mmdb.py``), which the
package loads on demand, builds on them without importing the package back."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from pipeline.windows import prefix16

__all__ = ["KINDS", "PREFIXES", "PREFIX_SOURCE", "RENTED_KINDS", "Network", "NetworkResolver", "PrefixResolver"]

#: Network kinds, as far as a database can tell them. ``proxy``: an anonymising residential proxy exit (only an
#: anonymous-IP database says so); ``business``: corporate or office networks; ``unknown``: no database, or a
#: network the database does not classify.
KINDS = ("hosting", "vpn", "proxy", "residential", "mobile", "business", "unknown")
#: Kinds an attacker rents rather than lives on: evidence on their own when a subject's session comes from one.
RENTED_KINDS = frozenset({"hosting", "vpn", "proxy"})

#: ``Network.source`` / ``NetworkResolver.source`` when no database is configured.
PREFIX_SOURCE = "prefix"


@dataclass(frozen=True, slots=True)
class Network:
    """The network an address is counted in. ``key`` is what features compare (``AS7922`` with a database,
    else the address's /16 or IPv6 /32 as text); ``asn``/``org`` are ``None`` without a database."""

    key: str
    kind: str = "unknown"
    asn: int | None = None
    org: str | None = None

    @property
    def label(self) -> str:
        """As a person reads it: ``AS7922 Comcast (residential)``, or ``203.0.0.0/16`` without a database (with
        its kind when a database knows the kind but not the ASN: ``203.0.0.0/16 (vpn)``)."""
        kind = f" ({self.kind})" if self.kind != "unknown" else ""
        if self.asn is not None:
            org = f" {self.org}" if self.org else ""
            return f"AS{self.asn}{org}{kind}"
        prefix = f"{self.key}::/32" if ":" in self.key else f"{self.key}.0.0/16"
        return prefix + kind


class NetworkResolver(Protocol):
    """Address -> :class:`Network`. ``source`` says where identities come from, for logs and alerts;
    ``identifies_networks`` whether a network is an autonomous system (a database that names them), not a /16
    prefix — which benign clients cross back and forth within seconds."""

    source: str
    identifies_networks: bool

    def __call__(self, ip: str) -> Network: ...


class PrefixResolver:
    """The fallback without a database: the /16 (IPv4) or /32 (IPv6) prefix, kind unknown."""

    source = PREFIX_SOURCE
    identifies_networks = False

    def __call__(self, ip: str) -> Network:
        return _prefix_network(ip)


@lru_cache(maxsize=1 << 16)
def _prefix_network(ip: str) -> Network:
    return Network(key=prefix16(ip))


PREFIXES = PrefixResolver()
