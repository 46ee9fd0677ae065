"""Small MaxMind DB (.mmdb) files for tests, laid out like the real databases ``--ip-db`` reads.

Written with :func:`pipeline.networks.write_mmdb` (``mmdb-writer``), read back with ``maxminddb`` — real files,
real readers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.networks import write_mmdb as _write

#: 2026-11-30 00:00 UTC: the build date the test files carry unless told otherwise.
BUILT = int(dt.datetime(2026, 11, 30, tzinfo=dt.UTC).timestamp())


def write_mmdb(
    path: Path,
    networks: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]],
    *,
    database_type: str = "GeoLite2-ASN",
    ip_version: int = 6,
    build_epoch: int = BUILT,
) -> Path:
    """A .mmdb file mapping each CIDR to its record (more specific networks win, whatever the order)."""
    rows = list(networks.items()) if isinstance(networks, Mapping) else list(networks)
    _write(path, rows, database_type=database_type, description=f"jwtwatch test {database_type}",
           build_epoch=build_epoch, ip_version=ip_version)  # fmt: skip
    return path


# ------------------------------------------------------------------------------------ database layouts


def asn(number: int, org: str) -> dict[str, Any]:
    """A GeoLite2-ASN / DB-IP ASN lite / GeoIP2-ISP record's ASN fields."""
    return {"autonomous_system_number": number, "autonomous_system_organization": org}


def geolite2_asn(path: Path) -> Path:
    """GeoLite2-ASN: ASN and organisation only, IPv4 and IPv6."""
    return write_mmdb(
        path,
        {
            "24.0.0.0/12": asn(7922, "COMCAST-7922"),
            "2601::/20": asn(7922, "COMCAST-7922"),
            "166.128.0.0/9": asn(20057, "ATT-MOBILITY-LLC-AS20057"),
            "3.0.0.0/9": asn(16509, "AMAZON-02"),
            "2600:1f00::/24": asn(16509, "AMAZON-02"),
            "34.64.0.0/10": asn(396982, "GOOGLE-CLOUD-PLATFORM"),
            "20.0.0.0/11": asn(8075, "MICROSOFT-CORP-MSN-AS-BLOCK"),
            "138.68.0.0/16": asn(14061, "DIGITALOCEAN-ASN"),
            "51.68.0.0/16": asn(16276, "OVH SAS"),
            "65.108.0.0/16": asn(24940, "Hetzner Online GmbH"),
            "45.33.0.0/17": asn(63949, "Akamai Connected Cloud"),
            "45.32.0.0/16": asn(20473, "AS-CHOOPA"),
            "129.146.0.0/16": asn(31898, "ORACLE-BMC-31898"),
            "47.74.0.0/15": asn(45102, "Alibaba US Technology Co., Ltd."),
            "43.128.0.0/14": asn(132203, "Tencent Building, Kejizhongyi Avenue"),
            "62.171.128.0/17": asn(51167, "Contabo GmbH"),
            "51.15.0.0/16": asn(12876, "Online S.a.s."),
            "23.105.0.0/16": asn(59253, "Leaseweb Asia Pacific pte. ltd."),
            "81.2.69.0/24": asn(20712, "Andrews & Arnold Ltd"),
        },
        database_type="GeoLite2-ASN",
    )


def dbip_asn_lite(path: Path) -> Path:
    """DB-IP's "IP to ASN Lite" (GeoLite2-ASN compatible layout)."""
    return write_mmdb(
        path,
        {"24.0.0.0/12": asn(7922, "Comcast Cable Communications, LLC"), "81.2.69.0/24": asn(20712, "Andrews & Arnold")},
        database_type="DBIP-ASN-Lite (compat=GeoLite2-ASN)",
    )


def dbip_isp(path: Path) -> Path:
    """DB-IP's "IP to ISP": everything under ``traits``, with ``connection_type`` and ``user_type``."""

    def traits(number: int, org: str, connection: str, user_type: str) -> dict[str, Any]:
        return {
            "continent": {"code": "NA"},
            "country": {"iso_code": "US"},
            "traits": {
                "autonomous_system_number": number,
                "autonomous_system_organization": org,
                "connection_type": connection,
                "user_type": user_type,
                "isp": org,
                "organization": org,
            },
        }

    return write_mmdb(
        path,
        {
            "24.0.0.0/12": traits(7922, "Comcast Cable", "Cable/DSL", "residential"),
            "166.128.0.0/9": traits(20057, "AT&T Mobility", "Cellular", "cellular"),
            "12.0.0.0/8": traits(7018, "AT&T Enterprises", "Corporate", "business"),
            "104.16.0.0/13": traits(13335, "Cloudflare", "Corporate", "hosting"),
        },
        database_type="DBIP-ISP (compat=Enterprise)",
    )


def connection_type(path: Path) -> Path:
    """GeoIP2-Connection-Type: ``connection_type`` only."""
    return write_mmdb(
        path,
        {
            "24.0.0.0/12": {"connection_type": "Cable/DSL"},
            "2601::/20": {"connection_type": "Cable/DSL"},
            "166.128.0.0/9": {"connection_type": "Cellular"},
            "12.0.0.0/8": {"connection_type": "Corporate"},
            "98.96.0.0/13": {"connection_type": "Satellite"},
            "63.0.0.0/8": {"connection_type": "Dialup"},
        },
        database_type="GeoIP2-Connection-Type",
    )


def anonymous_ip(path: Path) -> Path:
    """GeoIP2-Anonymous-IP: true flags only (false ones are left out, as in the real file)."""
    return write_mmdb(
        path,
        {
            "138.68.10.0/24": {"is_anonymous": True, "is_anonymous_vpn": True},
            "138.68.20.0/24": {"is_anonymous": True, "is_anonymous_vpn": True, "is_hosting_provider": True},
            "65.108.0.0/16": {"is_anonymous": True, "is_hosting_provider": True},
            "24.1.2.0/24": {"is_anonymous": True, "is_residential_proxy": True},
            "185.220.101.0/24": {"is_anonymous": True, "is_tor_exit_node": True, "is_public_proxy": True},
            "45.95.0.0/16": {"is_anonymous": True, "is_public_proxy": True},
            "2a0b:f4c0::/32": {"is_anonymous": True, "is_tor_exit_node": True},
        },
        database_type="GeoIP2-Anonymous-IP",
    )


def geoip2_isp(path: Path) -> Path:
    """GeoIP2-ISP: ASN, ISP and organisation, and the mobile network codes on mobile networks."""
    return write_mmdb(
        path,
        {
            "166.128.0.0/9": {
                **asn(20057, "ATT-MOBILITY-LLC-AS20057"),
                "isp": "AT&T Mobility",
                "organization": "AT&T Mobility",
                "mobile_country_code": "310",
                "mobile_network_code": "410",
            },
            "81.2.69.0/24": {**asn(20712, "Andrews & Arnold Ltd"), "isp": "Andrews & Arnold", "organization": "A&A"},
            "90.0.0.0/8": {"isp": "Orange", "organization": "Orange S.A."},
        },
        database_type="GeoIP2-ISP",
    )


def labelled(path: Path) -> Path:
    """An operator's own file: jwtwatch's ``network_kind`` next to the ASN fields."""
    return write_mmdb(
        path,
        {
            "203.0.113.0/24": {**asn(64512, "Example Corp HQ"), "network_kind": "business"},
            "198.51.100.0/24": {**asn(64513, "Example Corp cloud"), "network_kind": "datacenter"},
            "2001:db8::/32": {**asn(64512, "Example Corp HQ"), "network_kind": "business"},
            "192.0.2.0/24": {**asn(64514, "Mystery"), "network_kind": "warp-drive"},
            "24.0.0.0/12": {"network_kind": "Residential"},
        },
        database_type="jwtwatch-networks",
    )


def city(path: Path) -> Path:
    """GeoLite2-City-like: location only — nothing a resolver can use."""
    return write_mmdb(
        path,
        {"24.0.0.0/12": {"country": {"iso_code": "US"}, "city": {"names": {"en": "Philadelphia"}}}},
        database_type="GeoLite2-City",
    )


def empty(path: Path) -> Path:
    return write_mmdb(path, {}, database_type="GeoLite2-ASN")


def ipv4_only(path: Path) -> Path:
    """An IPv4-only (``ip_version`` 4) ASN file: IPv6 lookups in it are errors the resolver must absorb."""
    return write_mmdb(path, {"24.0.0.0/12": asn(7922, "COMCAST-7922")}, database_type="GeoLite2-ASN", ip_version=4)
