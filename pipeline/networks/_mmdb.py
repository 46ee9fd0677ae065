"""Network identity from offline MaxMind DB files (``--ip-db FILE``, repeatable), read with ``maxminddb``.

What an address resolves to, field by field (each looked up at the top level of a record, then under ``traits``,
where GeoIP2 Enterprise and DB-IP's ISP databases keep them):

* ``asn`` — ``autonomous_system_number`` (GeoLite2-ASN, GeoIP2-ISP, DB-IP ASN lite, DB-IP ISP);
* ``org`` — ``autonomous_system_organization``, else ``isp``, else ``organization``;
* ``kind`` — the first rule that applies, in this order:

  1. ``network_kind``: jwtwatch's own field, for operators who label their networks (and the simulator's
     databases). One of :data:`~pipeline.networks.KINDS`, or a synonym in :data:`KIND_SYNONYMS`;
  2. the GeoIP2 Anonymous-IP flags: ``is_residential_proxy``, ``is_tor_exit_node``, ``is_public_proxy`` ->
     ``proxy``; ``is_anonymous_vpn`` -> ``vpn``; ``is_hosting_provider`` -> ``hosting`` (a VPN exit in a data
     centre is a VPN first);
  3. ``user_type`` (GeoIP2 Enterprise, DB-IP ISP): see :data:`USER_TYPES`;
  4. ``connection_type`` (GeoIP2 Connection-Type, DB-IP ISP): ``Cellular`` -> ``mobile``; ``Cable/DSL``,
     ``Dialup``, ``Satellite`` -> ``residential``; ``Corporate`` -> ``business``;
  5. ``mobile_country_code`` / ``mobile_network_code`` (GeoIP2-ISP sets them on mobile networks) -> ``mobile``;
  6. the organisation's name, for the big hosting providers only (:data:`HOSTING_ORGS`) -> ``hosting``: a
     GeoLite2-ASN or DB-IP ASN file alone says whose network an address is in, not what kind it is;
  7. else ``unknown``.

With several files each field comes from the first file, in the order given, that has it for the address; the
kind is then derived from the merged fields by the rules above (so an Anonymous-IP file's flag outranks another
file's ``connection_type`` whatever the order). Put the file you trust most first.

The key features compare is ``AS<asn>`` when an ASN is known; an address no file gives an ASN for keeps its
prefix key (its /16, or its IPv6 /32), so it is still in *a* network. Lookups are memoised (an address repeats
across events), in a bounded cache.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any

import maxminddb
from maxminddb.errors import InvalidDatabaseError

from pipeline.errors import IpDbError
from pipeline.networks.base import KINDS, PREFIX_SOURCE, PREFIXES, Network, NetworkResolver, _prefix_network
from pipeline.windows import prefix16

log = logging.getLogger("pipeline.networks")

#: Memoised addresses per resolver (the engine resolves every event's address).
CACHE_SIZE = 1 << 16
#: An organisation's name is cut to this (it goes into alert summaries; a 2 MB name slowed each lookup 170 times).
MAX_ORG_CHARS = 200
#: Distinct networks kept for sharing one object per network among the memoised addresses.
_MAX_NETWORKS = 1 << 17
#: Records read from a file at open time to tell whether it holds anything a resolver can use.
PROBE_RECORDS = 1000

_ANONYMOUS_FLAGS: tuple[tuple[str, str], ...] = (
    ("is_residential_proxy", "proxy"),
    ("is_tor_exit_node", "proxy"),
    ("is_public_proxy", "proxy"),
    ("is_anonymous_vpn", "vpn"),
    ("is_hosting_provider", "hosting"),
)
#: GeoIP2 ``user_type`` (Enterprise, Insights) and DB-IP ``user_type`` -> kind; other values say nothing.
USER_TYPES: dict[str, str] = {
    "hosting": "hosting",
    "content_delivery_network": "hosting",
    "residential": "residential",
    "cellular": "mobile",
    "business": "business",
    "college": "business",
    "school": "business",
    "government": "business",
    "military": "business",
    "library": "business",
}
#: GeoIP2 Connection-Type / DB-IP ``connection_type`` -> kind (compared lower-case).
CONNECTION_TYPES: dict[str, str] = {
    "cellular": "mobile",
    "cable/dsl": "residential",
    "dialup": "residential",
    "satellite": "residential",
    "corporate": "business",
}
#: Accepted in ``network_kind`` besides the :data:`~pipeline.networks.KINDS` themselves.
KIND_SYNONYMS: dict[str, str] = {
    "datacenter": "hosting",
    "cloud": "hosting",
    "cellular": "mobile",
    "carrier": "mobile",
    "office": "business",
    "corporate": "business",
}
#: Organisation names (AS organisation, ISP) of the big hosting and cloud providers: the one kind an ASN file
#: alone can tell. Matched case-insensitively at a word start.
HOSTING_ORGS: tuple[str, ...] = (
    "amazon",  # AMAZON-02, AMAZON-AES
    "google cloud",
    "google-cloud",  # GOOGLE-CLOUD-PLATFORM
    "microsoft",  # MICROSOFT-CORP-MSN-AS-BLOCK (Azure)
    "azure",
    "digitalocean",
    "ovh",
    "hetzner",
    "linode",
    "akamai",  # Akamai Connected Cloud (Linode)
    "vultr",
    "choopa",  # Vultr's AS
    "the constant company",  # Vultr's owner
    "oracle",
    "alibaba",
    "aliyun",
    "tencent",
    "contabo",
    "scaleway",
    "online s.a.s",  # Scaleway's AS
    "leaseweb",
)
_HOSTING = re.compile(r"\b(?:" + "|".join(re.escape(name) for name in HOSTING_ORGS) + r")", re.IGNORECASE)

_ASN_FIELDS = ("autonomous_system_number",)
_ORG_FIELDS = ("autonomous_system_organization", "isp", "organization")
_KIND_FIELDS = (
    "network_kind",
    "user_type",
    "connection_type",
    "mobile_country_code",
    "mobile_network_code",
    *(flag for flag, _ in _ANONYMOUS_FLAGS),
)
#: Every record field a resolver reads (merged across files, first file wins).
FIELDS: tuple[str, ...] = (*_ASN_FIELDS, *_ORG_FIELDS, *_KIND_FIELDS)
_FIELD_SET = frozenset(FIELDS)
_KIND_SET = frozenset(_KIND_FIELDS)


# ------------------------------------------------------------------------------------------ kinds


def kind_of(fields: Mapping[str, Any]) -> str:
    """The network kind of an address from its (merged) record fields; the rules are the module's docstring's."""
    if _KIND_SET.isdisjoint(fields):  # an ASN file's record: the organisation's name is all there is
        return _org_kind(fields)
    labelled = fields.get("network_kind")
    if isinstance(labelled, str):
        name = labelled.strip().lower()
        name = KIND_SYNONYMS.get(name, name)
        if name in KINDS and name != "unknown":
            return name
    for flag, kind in _ANONYMOUS_FLAGS:
        if fields.get(flag) is True:  # a record's "false" (a string) is no flag
            return kind
    user_type = fields.get("user_type")
    if isinstance(user_type, str) and user_type.lower() in USER_TYPES:
        return USER_TYPES[user_type.lower()]
    connection = fields.get("connection_type")
    if isinstance(connection, str) and connection.lower() in CONNECTION_TYPES:
        return CONNECTION_TYPES[connection.lower()]
    if any(_given(fields.get(name)) for name in ("mobile_country_code", "mobile_network_code")):
        return "mobile"
    return _org_kind(fields)


def _given(value: Any) -> bool:
    return (isinstance(value, str) and value.strip() != "") or (isinstance(value, int) and not isinstance(value, bool))


def _org_kind(fields: Mapping[str, Any]) -> str:
    for name in _ORG_FIELDS:
        org = fields.get(name)
        if isinstance(org, str) and _is_hosting_org(org):
            return "hosting"
    return "unknown"


@lru_cache(maxsize=4096)
def _is_hosting_org(org: str) -> bool:
    """One of :data:`HOSTING_ORGS`, at a word start. Substrings first (in C; most names hold none), the word
    boundary only then: the case-insensitive pattern alone took about 3 µs on a long name."""
    lowered = org.lower()
    for name in HOSTING_ORGS:
        if name in lowered:
            return _HOSTING.search(org) is not None
    return False


def _fields(record: Any) -> Iterator[tuple[str, Any]]:
    """The fields a resolver reads from one record: top level first, then ``traits``."""
    if not isinstance(record, dict):
        return
    traits = record.get("traits")
    traits = traits if isinstance(traits, dict) else {}
    for name in FIELDS:
        value = record.get(name)
        if value is None:
            value = traits.get(name)
        if value is not None:
            yield name, value


# ------------------------------------------------------------------------------------------ files


@dataclass(frozen=True)
class IpDbFile:
    """One open database file and what its metadata says about it."""

    path: Path
    reader: Any  # maxminddb.Reader (the C extension's or the pure-Python one)
    database_type: str
    build_epoch: int
    ip_version: int
    has_asn: bool = True  # its first records name autonomous systems (an Anonymous-IP file alone does not)

    @property
    def built(self) -> str:
        """The build date (UTC), as ``2026-11-30``; ``?`` for a build time no calendar holds."""
        try:
            return dt.datetime.fromtimestamp(self.build_epoch, dt.UTC).strftime("%Y-%m-%d")
        except (ValueError, OverflowError, OSError):
            return "?"

    @property
    def source(self) -> str:
        return f"{self.database_type}({self.built})"


def open_ip_db_file(path: str | os.PathLike[str]) -> IpDbFile:
    """Open one MaxMind DB file and check that it holds ASN or network-kind fields; :class:`IpDbError` if not."""
    path = Path(path)
    if not path.exists():
        raise IpDbError(f"--ip-db {path}: no such file")
    if path.is_dir():
        raise IpDbError(f"--ip-db {path}: is a directory, not a MaxMind DB file")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise IpDbError(f"--ip-db {path}: not a regular file")
    try:
        reader = maxminddb.open_database(str(path))
    except InvalidDatabaseError:
        raise IpDbError(f"--ip-db {path}: not a MaxMind DB (.mmdb) file") from None
    except OSError as exc:
        raise IpDbError(f"--ip-db {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        meta = reader.metadata()
        found = _probe(reader)
        has_asn = _probe(reader, ("autonomous_system_number",)) is True
    except (InvalidDatabaseError, ValueError, TypeError, OSError) as exc:
        reader.close()
        raise IpDbError(f"--ip-db {path}: a damaged MaxMind DB file ({exc})") from None
    # It reaches every alert (network_source) and the logs: printable, and short.
    database_type = "".join(c if c.isprintable() else " " for c in str(meta.database_type or "unknown"))[:80]
    if found is None:
        reader.close()
        raise IpDbError(f"--ip-db {path}: the {database_type} database holds no networks")
    if not found:
        reader.close()
        raise IpDbError(
            f"--ip-db {path}: the {database_type} database has neither ASN nor network-kind fields "
            "(use GeoLite2-ASN, DB-IP ASN, GeoIP2 ISP / Connection-Type / Anonymous-IP, or records with network_kind)"
        )
    return IpDbFile(
        path=path,
        reader=reader,
        database_type=database_type,
        build_epoch=int(meta.build_epoch or 0),
        ip_version=int(meta.ip_version or 0),
        has_asn=has_asn,
    )


def _probe(reader: Any, wanted: tuple[str, ...] = FIELDS) -> bool | None:
    """Whether the first records of a database hold one of ``wanted`` (by default: any field a resolver reads);
    ``None`` when it has no record."""
    seen = False
    for _, record in islice(iter(reader), PROBE_RECORDS):
        seen = True
        if any(name in wanted for name, _ in _fields(record)):
            return True
    return False if seen else None


# ------------------------------------------------------------------------------------------ the resolver


class MmdbResolver:
    """Address -> :class:`~pipeline.networks.Network` from one or more MaxMind DB files (see the module)."""

    def __init__(self, files: Sequence[IpDbFile], cache_size: int = CACHE_SIZE) -> None:
        if not files:
            raise ValueError("MmdbResolver needs at least one database file")
        self.files = tuple(files)
        self.source = "mmdb:" + "+".join(f.source for f in self.files)
        #: Counted lookups a damaged record failed (the address then counts by its prefix).
        self.failed_lookups = 0
        #: Whether networks are autonomous systems. Kinds alone (a Connection-Type or Anonymous-IP file) leave the
        #: keys /16 prefixes, which benign clients cross back and forth within seconds.
        self.identifies_networks = any(f.has_asn for f in self.files)
        self._readers = tuple(f.reader for f in self.files)
        self._networks: dict[tuple[str, str, int | None, str | None], Network] = {}
        self._lookup = lru_cache(maxsize=cache_size)(self._resolve)

    def __call__(self, ip: str) -> Network:
        return self._lookup(ip)

    def _resolve(self, ip: str) -> Network:
        merged: dict[str, Any] = {}
        for reader in self._readers:
            try:
                record = reader.get(ip)
            except ValueError:  # not an address, or an IPv6 address in an IPv4-only database
                continue
            except InvalidDatabaseError as exc:  # a damaged record past what opening probed: this address only
                self.failed_lookups += 1
                if self.failed_lookups == 1:
                    log.warning("--ip-db: a damaged record for %s (%s); such addresses count by their prefix", ip, exc)
                continue
            if record.__class__ is dict:  # (a record's items, not FIELDS, are walked: a record has few)
                for name, value in record.items():
                    if name in _FIELD_SET and value is not None and name not in merged:
                        merged[name] = value
                traits = record.get("traits")
                if traits.__class__ is dict:
                    for name, value in traits.items():
                        if name in _FIELD_SET and value is not None and name not in merged:
                            merged[name] = value
        if not merged:
            return _prefix_network(ip)
        asn = merged.get("autonomous_system_number")
        asn = asn if asn.__class__ is int else None
        org = None
        for name in _ORG_FIELDS:
            value = merged.get(name)
            if value.__class__ is str:
                org = value[:MAX_ORG_CHARS]  # it reaches every alert's summary
                break
        kind = kind_of(merged)
        key = f"AS{asn}" if asn is not None else prefix16(ip)
        identity = (key, kind, asn, org)
        network = self._networks.get(identity)
        if network is None:  # one object per network: a cache of addresses holds references, not copies
            if len(self._networks) >= _MAX_NETWORKS:  # bounded (a world's worth of ASNs); the objects live on
                self._networks.clear()
            network = self._networks[identity] = Network(key=key, kind=kind, asn=asn, org=org)
        return network

    def cache_info(self) -> Any:
        return self._lookup.cache_info()

    def close(self) -> None:
        for reader in self._readers:
            reader.close()


def open_ip_db(paths: Sequence[str | os.PathLike[str]]) -> NetworkResolver:
    """The resolver for ``--ip-db`` files, in the order given (the first file that has a field wins); without
    files the prefix fallback :data:`~pipeline.networks.PREFIXES`. :class:`IpDbError` names a file it cannot use."""
    if not paths:
        return PREFIXES
    files: list[IpDbFile] = []
    try:
        for path in paths:
            files.append(open_ip_db_file(path))
    except IpDbError:
        for opened in files:
            opened.reader.close()
        raise
    return MmdbResolver(files)


def describe(resolver: NetworkResolver) -> str:
    """One line for the startup log: where network identities come from."""
    if resolver.source == PREFIX_SOURCE:
        return "network identity: /16 prefixes — no --ip-db given; ASN and network kind unavailable"
    if isinstance(resolver, MmdbResolver):
        files = ", ".join(f"{f.database_type} built {f.built} ({f.path})" for f in resolver.files)
        return (
            f"network identity: ASN and network kind from {files}; addresses they do not cover fall back to "
            "/16 prefixes"
        )
    return f"network identity: {resolver.source}"
