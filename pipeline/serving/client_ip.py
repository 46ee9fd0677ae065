"""Which IP is the client's — pure.

``X-Forwarded-For`` is believed only when the socket peer is a trusted proxy, and then only as far as the
chain of trusted proxies goes: walking the list from the right, the first address that is not a trusted
proxy is the client. (Taking the leftmost entry would let any client write its own IP.)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str] | str | None) -> tuple[Network, ...]:
    if cidrs is None:
        return ()
    if isinstance(cidrs, str):
        cidrs = [part for part in cidrs.split(",")]
    networks = []
    for cidr in cidrs:
        cidr = cidr.strip()
        if cidr:
            try:
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError:
                raise ValueError(f"not an IP network: {cidr!r}") from None
    return tuple(networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            # A zone (``fe80::1%eth0``) names an interface of the sender's host, not part of the client's address,
            # and it may be any text up to the header's size: it would reach the usage event's ``ip`` as is.
            return ipaddress.IPv6Address(address.packed)
    return address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: tuple[Network, ...]) -> bool:
    return any(address in net for net in proxies)


def client_ip(peer: str | None, forwarded_for: str | None, trusted_proxies: tuple[Network, ...]) -> str:
    """The client's IP as text; ``0.0.0.0`` when the peer is unknown (e.g. a Unix socket)."""
    peer_ip = _ip(peer) if peer else None
    if peer_ip is None:
        return "0.0.0.0"  # noqa: S104 - a placeholder address, nothing binds to it  # nosec B104
    if not forwarded_for or not _trusted(peer_ip, trusted_proxies):
        return str(peer_ip)
    client = peer_ip
    for hop in reversed(forwarded_for.split(",")):
        hop_ip = _ip(hop)
        if hop_ip is None:
            break  # garbage in the chain: stop at the last address we could trust
        client = hop_ip
        if not _trusted(hop_ip, trusted_proxies):
            break
    return str(client)
