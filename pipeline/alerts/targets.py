"""Where a webhook may be sent: the URL rules, checked at registration and again before every delivery.

A webhook target is chosen by whoever holds the admin token, but the request is sent from inside the
network the alerts service runs in — the classic server-side request forgery set-up. The rules:

* ``https`` for public addresses; plain ``http`` only when *every* address of the host is loopback or
  private (RFC 1918, RFC 6598 shared space, IPv6 unique-local): internal receivers;
* link-local (169.254.0.0/16, fe80::/10) and cloud metadata addresses (169.254.169.254,
  fd00:ec2::254, 100.100.100.200, ...) and names (metadata.google.internal, ...) are always refused, as
  are unspecified, multicast, broadcast, reserved and documentation ranges;
* IPv6 must be global unicast (``2000::/3``), loopback ``::1`` or unique-local ``fc00::/7``: everything else
  outside ``2000::/3`` is refused — among it IPv4-compatible ``::a.b.c.d`` (deprecated by RFC 4291, and routed
  into an automatic tunnel by stacks that still know it), SIIT ``::ffff:0:a.b.c.d``, the local-use NAT64 prefix
  ``64:ff9b:1::/48`` (RFC 8215: where the IPv4 address sits depends on the operator's prefix length, so it
  cannot be judged) and Teredo ``2001::/32``. An IPv4-mapped address ``::ffff:a.b.c.d`` is that IPv4 address
  (a dual-stack socket connects to it over IPv4) and is judged as such. The well-known NAT64 prefix
  ``64:ff9b::/96`` and 6to4 ``2002::/16`` may only embed a *public* IPv4 address (RFC 6052 §3.1, RFC 3056):
  one that embeds a loopback, private or forbidden address is refused;
* a hostname is resolved and every address it resolves to must pass (:func:`resolve_target`). The
  delivery code resolves again right before each attempt and connects to the address it checked, so a
  name that re-binds to a forbidden address after registration (DNS rebinding) reaches nothing;
* no credentials (``user:pw@``), no fragments, no IPv6 zone ids, no whitespace, control characters or
  backslashes, and no numeric host spellings other than the canonical dotted quad (``http://2852039166/``,
  ``0xa9fea9fe``, ``0251.0376.0251.0376`` and ``127.1`` are what resolvers make of them, not what a
  reader sees). Hostnames are ASCII (IDNs in their ``xn--`` form).

Everything here is pure except :func:`system_resolver`; the resolver is a parameter, so the rules are
tested without DNS.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipeline.errors import TargetError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: ``resolver(host, port)`` -> the IP addresses (as strings) the host resolves to.
Resolver = Callable[[str, int], Iterable[str]]

MAX_URL_LENGTH = 2048

#: Cloud instance metadata endpoints (most are link-local anyway; these are named so that none slips).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, Oracle, OpenStack, DigitalOcean ...
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
        "fd20:ce::254",  # GCP metadata over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (legacy)
    )
)

METADATA_HOSTNAMES: frozenset[str] = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.ec2.internal",
        "metadata.azure.internal",
        "metadata.tencentyun.com",
    }
)

#: Internal ranges that may receive plain http (besides loopback).
PRIVATE_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("100.64.0.0/10"),  # RFC 6598 shared address space (carrier-grade NAT, some VPCs)
    ipaddress.ip_network("fc00::/7"),  # unique local
)

_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # ::a.b.c.d, deprecated (RFC 4291 §2.5.5.1)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known prefix (RFC 6052): the IPv4 address is the last 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use (RFC 8215): prefix length up to the operator
#: Special-purpose ranges that Python's ``is_global`` (3.11) still calls global.
_NOT_ROUTABLE: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("3fff::/20"),  # documentation (RFC 9637)
    ipaddress.ip_network("192.88.99.0/24"),  # 6to4 relay anycast, deprecated (RFC 7526)
)
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class TargetURL:
    """A syntactically acceptable webhook URL, taken apart."""

    url: str  # normalised: lower-case scheme and host
    scheme: str  # "http" or "https"
    host: str  # lower-case hostname, or an IP literal without brackets
    port: int
    target: str  # the request target: path and query
    ip: IPAddress | None  # the host, when it is an IP literal

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ResolvedTarget:
    """A target URL with the addresses it resolved to, every one of them checked."""

    target: TargetURL
    addresses: tuple[IPAddress, ...]


def classify_address(address: IPAddress) -> str:
    """``"loopback"``, ``"private"`` or ``"public"``; raises :class:`TargetError` for a forbidden address."""
    shown = str(address)
    if isinstance(address, ipaddress.IPv6Address):
        return _classify_v6(address, shown)
    return _classify_common(address, shown)


def _classify_v6(address: ipaddress.IPv6Address, shown: str) -> str:
    if address.scope_id:
        raise TargetError(f"{shown}: IPv6 zone ids are not accepted")
    if address in METADATA_ADDRESSES:
        raise TargetError(f"{shown} is a cloud metadata address")
    mapped = address.ipv4_mapped
    if mapped is not None:  # ::ffff:a.b.c.d is how a dual-stack socket names the IPv4 address a.b.c.d
        return _judge_embedded(shown, mapped)
    if address.is_loopback or address.is_unspecified:
        return _classify_common(address, shown)
    if address in _IPV4_COMPATIBLE:
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        raise TargetError(f"{shown} is IPv4-compatible (embeds {embedded}; deprecated by RFC 4291): not accepted")
    if address in _NAT64_LOCAL:
        raise TargetError(f"{shown} is in the local-use NAT64 prefix 64:ff9b:1::/48, whose IPv4 part cannot be judged")
    if address in _NAT64:
        return _judge_translated(shown, ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.teredo is not None:
        raise TargetError(f"{shown}: Teredo tunnel addresses are not accepted")
    if address.sixtofour is not None:
        return _judge_translated(shown, address.sixtofour)
    if address not in _GLOBAL_UNICAST_V6 and not address.is_link_local and not address.is_multicast:
        if any(address in net for net in PRIVATE_NETWORKS if net.version == 6):
            return _classify_common(address, shown)
        # Outside 2000::/3 nothing is a plain global unicast address: SIIT ::ffff:0:a.b.c.d, discard-only 100::/64,
        # deprecated site-local fec0::/10, SRv6 5f00::/16, unassigned space ...
        raise TargetError(f"{shown} is not a routable unicast address (outside the global unicast range 2000::/3)")
    return _classify_common(address, shown)


def _judge_embedded(shown: str, embedded: ipaddress.IPv4Address) -> str:
    try:
        return classify_address(embedded)
    except TargetError as exc:
        raise TargetError(f"{shown} embeds {exc}") from None


def _judge_translated(shown: str, embedded: ipaddress.IPv4Address) -> str:
    """NAT64 and 6to4 exist to reach the public IPv4 internet: embedding anything else is an evasion."""
    kind = _judge_embedded(shown, embedded)
    if kind != "public":
        raise TargetError(f"{shown} embeds the {kind} IPv4 address {embedded}: a translated address must be public")
    return kind


def _classify_common(address: IPAddress, shown: str) -> str:
    if address in METADATA_ADDRESSES:
        raise TargetError(f"{shown} is a cloud metadata address")
    if address.is_link_local:
        raise TargetError(f"{shown} is a link-local address")
    if address.is_unspecified:
        raise TargetError(f"{shown} is the unspecified address")
    if address.is_multicast:
        raise TargetError(f"{shown} is a multicast address")
    if address.is_loopback:
        return "loopback"
    if any(address in net for net in PRIVATE_NETWORKS if net.version == address.version):
        return "private"
    if address.is_global and not any(address in net for net in _NOT_ROUTABLE if net.version == address.version):
        return "public"
    raise TargetError(f"{shown} is not a routable unicast address (reserved or special-purpose range)")


def check_address(address: IPAddress, scheme: str) -> str:
    """Whether ``scheme`` may be used to reach ``address``; returns its class or raises :class:`TargetError`."""
    kind = classify_address(address)
    if scheme == "http" and kind == "public":
        raise TargetError(f"plain http to a public address ({address}) is refused: use https")
    return kind


def parse_target_url(url: object) -> TargetURL:
    """Check a webhook URL's syntax, scheme, host form and (for an IP literal) its address. No DNS."""
    if not isinstance(url, str):
        raise TargetError("the URL must be a string")
    if not url:
        raise TargetError("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise TargetError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(not (0x21 <= ord(ch) < 0x7F) for ch in url):
        raise TargetError("the URL must be printable ASCII without spaces (percent-encode the rest)")
    if "\\" in url:
        raise TargetError("backslashes are not accepted in a URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetError(f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise TargetError("the scheme must be https (or http for loopback and private addresses)")
    if "@" in parts.netloc:
        raise TargetError("credentials in the URL are not accepted")
    if parts.fragment or url.endswith("#"):
        raise TargetError("a URL fragment is not accepted")
    raw_host = parts.hostname
    if not raw_host:
        raise TargetError("the URL has no host")
    if port is None:
        port = _DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise TargetError("the port must lie in 1..65535")
    if "%" in raw_host:
        raise TargetError("IPv6 zone ids are not accepted")

    ip: IPAddress | None
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")
    if bracketed:
        try:
            ip = ipaddress.IPv6Address(raw_host)
        except ValueError:
            raise TargetError(f"{raw_host!r} is not an IPv6 address") from None
        host = str(ip)
    else:
        try:
            ip = ipaddress.IPv4Address(raw_host)
        except ValueError:
            ip = None
        host = str(ip) if ip is not None else _check_hostname(raw_host)
    if ip is not None:
        check_address(ip, scheme)

    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    netloc = f"[{host}]" if bracketed else host
    if parts.port is not None:
        netloc += f":{port}"
    return TargetURL(f"{scheme}://{netloc}{target}", scheme, host, port, target, ip)


def _check_hostname(raw: str) -> str:
    name = raw.lower()
    if len(name) > 253:
        raise TargetError("the hostname is longer than 253 characters")
    bare = name[:-1] if name.endswith(".") else name
    if bare in METADATA_HOSTNAMES:
        raise TargetError(f"{bare} is a cloud metadata host")
    labels = bare.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise TargetError(f"{raw!r} is not a valid hostname (IDNs in their xn-- form)")
    if _NUMERIC_LABEL.match(labels[-1]):
        # 2852039166, 0xa9fea9fe, 127.1, 0251.0376.0251.0376: resolvers read these as IPv4 addresses.
        raise TargetError(f"{raw!r}: write IPv4 addresses as a canonical dotted quad")
    return name


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the operating system's resolver gives for ``host`` (TCP), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]), None)
    return list(seen)


def resolve_target(target: TargetURL, resolver: Resolver = system_resolver) -> ResolvedTarget:
    """The addresses ``target`` resolves to, each one checked; raises :class:`TargetError`."""
    if target.ip is not None:
        return ResolvedTarget(target, (target.ip,))
    try:
        raw = list(resolver(target.host, target.port))
    except (OSError, UnicodeError) as exc:
        raise TargetError(f"{target.host} does not resolve ({exc})") from None
    if not raw:
        raise TargetError(f"{target.host} resolves to no address")
    addresses: list[IPAddress] = []
    for text in raw:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise TargetError(f"{target.host} resolves to {text!r}, not an IP address") from None
        try:
            check_address(address, target.scheme)
        except TargetError as exc:
            raise TargetError(f"{target.host} resolves to a refused address: {exc}") from None
        if address not in addresses:
            addresses.append(address)
    return ResolvedTarget(target, tuple(addresses))


def check_target_url(url: object, resolver: Resolver | None = None) -> ResolvedTarget:
    """Every rule at once: syntax, scheme, host, and each address the host resolves to."""
    return resolve_target(parse_target_url(url), resolver or system_resolver)


__all__ = [
    "METADATA_ADDRESSES",
    "METADATA_HOSTNAMES",
    "PRIVATE_NETWORKS",
    "ResolvedTarget",
    "Resolver",
    "TargetURL",
    "check_address",
    "check_target_url",
    "classify_address",
    "parse_target_url",
    "resolve_target",
    "system_resolver",
]
