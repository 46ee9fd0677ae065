"""Network identity (``pipeline/networks``): the /16 fallback and ``--ip-db`` MaxMind DB files, on real .mmdb files
built by tests/support/mmdbkit.py and read with ``maxminddb``."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.detection.engine import Collected, DetectionEngine
from pipeline.errors import IpDbError
from pipeline.networks import KINDS, PREFIX_SOURCE, PREFIXES, MmdbResolver, Network, describe, kind_of, open_ip_db
from pipeline.networks._mmdb import HOSTING_ORGS, MAX_ORG_CHARS
from pipeline.windows import prefix16
from tests.support import mmdbkit

# ------------------------------------------------------------------------------------------ fallback


def test_without_a_database_an_address_is_in_its_prefix() -> None:
    assert open_ip_db([]) is PREFIXES
    assert PREFIXES.source == PREFIX_SOURCE
    assert PREFIXES("24.10.3.4") == Network(key="24.10")
    assert PREFIXES("2601:db8:1::5").key == "2601:db8"
    assert PREFIXES("24.10.3.4").label == "24.10.0.0/16"
    assert describe(PREFIXES) == ("network identity: /16 prefixes — no --ip-db given; ASN and network kind unavailable")


def test_labels() -> None:
    assert Network("AS7922", "residential", 7922, "Comcast").label == "AS7922 Comcast (residential)"
    assert Network("AS7922", "unknown", 7922, None).label == "AS7922"
    assert Network("45.33", "vpn").label == "45.33.0.0/16 (vpn)"
    assert Network("2a0b:f4c0", "proxy").label == "2a0b:f4c0::/32 (proxy)"


# ------------------------------------------------------------------------------------------ one file


def test_geolite2_asn_resolves_ipv4_and_ipv6_to_the_as(tmp_path: Path) -> None:
    resolver = open_ip_db([mmdbkit.geolite2_asn(tmp_path / "GeoLite2-ASN.mmdb")])
    assert isinstance(resolver, MmdbResolver)
    assert resolver.source == "mmdb:GeoLite2-ASN(2026-11-30)"
    home_v4, home_v6 = resolver("24.10.3.4"), resolver("2601:40:1::9")
    assert home_v4 == Network(key="AS7922", kind="unknown", asn=7922, org="COMCAST-7922")
    assert home_v6 is home_v4  # a dual-stack home: one network, one object
    assert resolver("24.10.3.4").label == "AS7922 COMCAST-7922"
    # An ASN file alone tells the big hosting providers apart by name, and nothing else.
    assert resolver("3.5.1.1") == Network("AS16509", "hosting", 16509, "AMAZON-02")
    assert resolver("2600:1f00:5::1").kind == "hosting"
    assert resolver("166.130.0.1").kind == "unknown"
    assert resolver("81.2.69.160").kind == "unknown"
    assert "GeoLite2-ASN built 2026-11-30" in describe(resolver)


@pytest.mark.parametrize(
    ("ip", "org"),
    [
        ("3.5.1.1", "AMAZON-02"),
        ("34.64.0.1", "GOOGLE-CLOUD-PLATFORM"),
        ("20.1.0.1", "MICROSOFT-CORP-MSN-AS-BLOCK"),
        ("138.68.1.1", "DIGITALOCEAN-ASN"),
        ("51.68.1.1", "OVH SAS"),
        ("65.108.1.1", "Hetzner Online GmbH"),
        ("45.33.1.1", "Akamai Connected Cloud"),
        ("45.32.1.1", "AS-CHOOPA"),
        ("129.146.1.1", "ORACLE-BMC-31898"),
        ("47.74.1.1", "Alibaba US Technology Co., Ltd."),
        ("43.129.1.1", "Tencent Building, Kejizhongyi Avenue"),
        ("62.171.130.1", "Contabo GmbH"),
        ("51.15.1.1", "Online S.a.s."),
        ("23.105.1.1", "Leaseweb Asia Pacific pte. ltd."),
    ],
)
def test_the_big_hosting_providers_are_hosting_by_name(tmp_path: Path, ip: str, org: str) -> None:
    resolver = open_ip_db([mmdbkit.geolite2_asn(tmp_path / "asn.mmdb")])
    network = resolver(ip)
    assert (network.org, network.kind) == (org, "hosting")


def test_hosting_names_match_at_a_word_start_only() -> None:
    assert kind_of({"autonomous_system_organization": "Rovhosting Ltd"}) == "unknown"  # not OVH
    assert kind_of({"autonomous_system_organization": "Coracle Networks"}) == "unknown"  # not Oracle
    assert kind_of({"isp": "Amazon.com"}) == "hosting"
    assert all(name == name.lower() for name in HOSTING_ORGS)


def test_dbip_asn_lite_and_isp_layouts(tmp_path: Path) -> None:
    lite = open_ip_db([mmdbkit.dbip_asn_lite(tmp_path / "dbip-asn-lite.mmdb")])
    assert lite("24.3.3.3") == Network("AS7922", "unknown", 7922, "Comcast Cable Communications, LLC")
    assert lite.source == "mmdb:DBIP-ASN-Lite (compat=GeoLite2-ASN)(2026-11-30)"
    isp = open_ip_db([mmdbkit.dbip_isp(tmp_path / "dbip-isp.mmdb")])  # fields under "traits"
    assert isp("24.3.3.3") == Network("AS7922", "residential", 7922, "Comcast Cable")
    assert isp("166.200.1.1").kind == "mobile"
    assert isp("12.1.1.1").kind == "business"
    assert isp("104.16.1.1").kind == "hosting"  # user_type hosting outranks connection_type Corporate


def test_connection_type_kinds(tmp_path: Path) -> None:
    resolver = open_ip_db([mmdbkit.connection_type(tmp_path / "GeoIP2-Connection-Type.mmdb")])
    kinds = {ip: resolver(ip) for ip in ("24.1.1.1", "2601::1", "166.130.0.1", "12.3.4.5", "98.97.1.1", "63.1.1.1")}
    assert {ip: n.kind for ip, n in kinds.items()} == {
        "24.1.1.1": "residential",
        "2601::1": "residential",
        "166.130.0.1": "mobile",
        "12.3.4.5": "business",
        "98.97.1.1": "residential",  # Satellite
        "63.1.1.1": "residential",  # Dialup
    }
    # No ASN in the file: each address keeps its prefix key, now with a kind.
    assert kinds["166.130.0.1"] == Network(key="166.130", kind="mobile")
    assert kinds["2601::1"].key == prefix16("2601::1")


def test_anonymous_ip_kinds(tmp_path: Path) -> None:
    resolver = open_ip_db([mmdbkit.anonymous_ip(tmp_path / "GeoIP2-Anonymous-IP.mmdb")])
    assert resolver("138.68.10.5").kind == "vpn"
    assert resolver("138.68.20.5").kind == "vpn"  # a VPN exit in a data centre is a VPN first
    assert resolver("65.108.3.3").kind == "hosting"
    assert resolver("24.1.2.3").kind == "proxy"  # residential proxy
    assert resolver("185.220.101.7").kind == "proxy"  # Tor exit (and public proxy)
    assert resolver("45.95.1.1").kind == "proxy"  # public proxy
    assert resolver("2a0b:f4c0::1") == Network(key="2a0b:f4c0", kind="proxy")
    assert resolver("138.68.30.5") == Network(key="138.68")  # not listed: not anonymous, kind unknown
    assert resolver("138.68.10.5").label == "138.68.0.0/16 (vpn)"


def test_geoip2_isp_mobile_codes_and_org_without_asn(tmp_path: Path) -> None:
    resolver = open_ip_db([mmdbkit.geoip2_isp(tmp_path / "GeoIP2-ISP.mmdb")])
    assert resolver("166.130.0.1") == Network("AS20057", "mobile", 20057, "ATT-MOBILITY-LLC-AS20057")
    assert resolver("81.2.69.160").kind == "unknown"
    assert resolver("90.1.1.1") == Network(key="90.1", kind="unknown", org="Orange")


def test_operators_label_their_networks(tmp_path: Path) -> None:
    resolver = open_ip_db([mmdbkit.labelled(tmp_path / "ours.mmdb")])
    assert resolver("203.0.113.7") == Network("AS64512", "business", 64512, "Example Corp HQ")
    assert resolver("2001:db8:5::1") is resolver("203.0.113.7")
    assert resolver("198.51.100.7").kind == "hosting"  # the synonym "datacenter"
    assert resolver("192.0.2.7").kind == "unknown"  # not a kind jwtwatch knows
    assert resolver("24.1.1.1") == Network(key="24.1", kind="residential")  # case does not matter


# ------------------------------------------------------------------------------------------ the kind rules


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({}, "unknown"),
        ({"network_kind": "vpn", "is_hosting_provider": True}, "vpn"),  # 1. the operator's label first
        ({"network_kind": "carrier"}, "mobile"),
        ({"network_kind": "office"}, "business"),
        ({"network_kind": "unknown", "connection_type": "Cellular"}, "mobile"),  # "unknown" labels nothing
        ({"is_residential_proxy": True, "is_anonymous_vpn": True}, "proxy"),  # 2. anonymous-IP flags
        ({"is_tor_exit_node": True}, "proxy"),
        ({"is_public_proxy": True, "is_hosting_provider": True}, "proxy"),
        ({"is_anonymous_vpn": True, "connection_type": "Cable/DSL"}, "vpn"),
        ({"is_hosting_provider": True, "user_type": "residential"}, "hosting"),
        ({"is_anonymous": True}, "unknown"),  # anonymous, but which way is not said
        ({"is_anonymous_vpn": False, "connection_type": "Cellular"}, "mobile"),
        ({"user_type": "cellular", "connection_type": "Cable/DSL"}, "mobile"),  # 3. user_type
        ({"user_type": "content_delivery_network"}, "hosting"),
        ({"user_type": "college"}, "business"),
        ({"user_type": "traveler", "connection_type": "Corporate"}, "business"),
        ({"connection_type": "cable/dsl"}, "residential"),  # 4. connection_type
        ({"connection_type": "Satellite"}, "residential"),
        ({"connection_type": "Dialup"}, "residential"),
        ({"connection_type": "Corporate"}, "business"),
        ({"mobile_country_code": "310", "autonomous_system_organization": "AMAZON-02"}, "mobile"),  # 5.
        ({"autonomous_system_organization": "Hetzner Online GmbH"}, "hosting"),  # 6. hosting by name
        ({"autonomous_system_organization": "COMCAST-7922"}, "unknown"),  # 7.
    ],
)
def test_kind_rules(fields: dict[str, Any], kind: str) -> None:
    assert kind_of(fields) == kind
    assert kind in KINDS


# ------------------------------------------------------------------------------------------ several files


def test_fields_merge_across_files_first_file_wins(tmp_path: Path) -> None:
    asn_file = mmdbkit.geolite2_asn(tmp_path / "GeoLite2-ASN.mmdb")
    connection = mmdbkit.connection_type(tmp_path / "GeoIP2-Connection-Type.mmdb")
    anonymous = mmdbkit.anonymous_ip(tmp_path / "GeoIP2-Anonymous-IP.mmdb")
    resolver = open_ip_db([asn_file, connection, anonymous])
    assert resolver.source == (
        "mmdb:GeoLite2-ASN(2026-11-30)+GeoIP2-Connection-Type(2026-11-30)+GeoIP2-Anonymous-IP(2026-11-30)"
    )
    assert resolver("24.10.3.4") == Network("AS7922", "residential", 7922, "COMCAST-7922")
    assert resolver("2601:40::1") is resolver("24.10.3.4")
    assert resolver("166.130.0.1") == Network("AS20057", "mobile", 20057, "ATT-MOBILITY-LLC-AS20057")
    # A residential proxy inside Comcast: the ASN is Comcast's, the kind the anonymous-IP file's (whatever
    # the order: the flags outrank connection_type).
    assert resolver("24.1.2.3") == Network("AS7922", "proxy", 7922, "COMCAST-7922")
    assert open_ip_db([anonymous, connection, asn_file])("24.1.2.3") == resolver("24.1.2.3")
    # The anonymous-IP file's hosting flag where the ASN file says nothing.
    assert resolver("138.68.10.5") == Network("AS14061", "vpn", 14061, "DIGITALOCEAN-ASN")
    assert describe(resolver).count(" built 2026-11-30 ") == 3


def test_the_first_file_that_knows_a_field_wins(tmp_path: Path) -> None:
    mine = mmdbkit.write_mmdb(tmp_path / "mine.mmdb", {"24.0.0.0/16": mmdbkit.asn(64600, "Our name for it")})
    theirs = mmdbkit.geolite2_asn(tmp_path / "GeoLite2-ASN.mmdb")
    assert open_ip_db([mine, theirs])("24.0.1.1").asn == 64600
    assert open_ip_db([theirs, mine])("24.0.1.1").asn == 7922
    assert open_ip_db([mine, theirs])("24.5.1.1").asn == 7922  # outside the first file: the second's


def test_an_uncovered_address_keeps_its_prefix(tmp_path: Path) -> None:
    resolver = open_ip_db([mmdbkit.geolite2_asn(tmp_path / "asn.mmdb"), mmdbkit.ipv4_only(tmp_path / "v4.mmdb")])
    assert resolver("9.9.9.9") == Network(key="9.9")
    assert resolver("2a03:2880::1") == Network(key="2a03:2880")
    v4_only = open_ip_db([mmdbkit.ipv4_only(tmp_path / "v4-only.mmdb")])
    assert v4_only("2601::1") == Network(key=prefix16("2601::1"))  # an IPv6 address in an IPv4-only file
    assert v4_only("24.0.0.1").asn == 7922
    assert v4_only("not an address") == Network(key=prefix16("not an address"))  # never an exception


def test_lookups_are_memoised(tmp_path: Path) -> None:
    resolver = open_ip_db([mmdbkit.geolite2_asn(tmp_path / "asn.mmdb")])
    assert isinstance(resolver, MmdbResolver)
    first = resolver("24.10.3.4")
    for _ in range(5):
        assert resolver("24.10.3.4") is first
    info = resolver.cache_info()
    assert (info.hits, info.misses) == (5, 1)
    small = MmdbResolver(resolver.files, cache_size=2)
    for i in range(10):
        small(f"24.0.0.{i}")
    assert small.cache_info().currsize == 2  # bounded


def test_network_records_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Network("AS1").kind = "vpn"  # type: ignore[misc]


# ------------------------------------------------------------------------------------------ errors


def _error(paths: list[Path]) -> str:
    with pytest.raises(IpDbError) as caught:
        open_ip_db(paths)
    message = str(caught.value)
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)
    return message


def test_unusable_files_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "GeoLite2-ASN.mmdb"
    assert _error([missing]) == f"--ip-db {missing}: no such file"
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"this is not a database\n" * 100)
    assert _error([garbage]) == f"--ip-db {garbage}: not a MaxMind DB (.mmdb) file"
    zero = tmp_path / "zero.mmdb"
    zero.write_bytes(b"")
    assert _error([zero]) == f"--ip-db {zero}: not a MaxMind DB (.mmdb) file"
    assert _error([tmp_path]) == f"--ip-db {tmp_path}: is a directory, not a MaxMind DB file"
    empty = mmdbkit.empty(tmp_path / "empty.mmdb")
    assert _error([empty]) == f"--ip-db {empty}: the GeoLite2-ASN database holds no networks"
    city = mmdbkit.city(tmp_path / "GeoLite2-City.mmdb")
    message = _error([city])
    assert message.startswith(f"--ip-db {city}: the GeoLite2-City database has neither ASN nor network-kind fields")
    # The second file is named when the first is fine.
    good = mmdbkit.geolite2_asn(tmp_path / "asn.mmdb")
    assert _error([good, missing]) == f"--ip-db {missing}: no such file"


# ------------------------------------------------------------------------------------------ writing


def test_write_mmdb_keeps_true_and_1_apart_and_is_reproducible(tmp_path: Path) -> None:
    import maxminddb

    rows = {
        "10.0.0.0/8": {"autonomous_system_number": 1, "is_anonymous_vpn": True, "n": 0, "flag": False},
        "10.1.0.0/16": {"autonomous_system_number": 65_000, "autonomous_system_organization": "inner"},
    }
    first = mmdbkit.write_mmdb(tmp_path / "a.mmdb", rows)
    second = mmdbkit.write_mmdb(tmp_path / "b.mmdb", list(reversed(rows.items())))  # order does not matter
    assert first.read_bytes() == second.read_bytes()
    with maxminddb.open_database(str(first)) as reader:
        record = reader.get("10.2.0.1")
        assert record == {"autonomous_system_number": 1, "is_anonymous_vpn": True, "n": 0, "flag": False}
        assert type(record["is_anonymous_vpn"]) is bool and type(record["autonomous_system_number"]) is int
        assert reader.get("10.1.2.3")["autonomous_system_organization"] == "inner"  # more specific wins
        assert reader.metadata().build_epoch == mmdbkit.BUILT


# ------------------------------------------------------------------ hostile database files (outside review, session 6)


def test_a_damaged_record_past_the_probe_falls_back_to_the_prefix_and_is_counted(tmp_path: Path) -> None:
    """Opening probes the first records only: a bad pointer further in must cost that address its AS, never the
    lookup (the engine resolves every event's address; an exception would drop the batch)."""
    rows = [(f"10.{i // 256}.{i % 256}.0/24", mmdbkit.asn(1000 + i, f"org{i}")) for i in range(1500)]
    rows.append(("200.0.0.0/24", mmdbkit.asn(99, "ZZZZ_LAST")))
    good = mmdbkit.write_mmdb(tmp_path / "big.mmdb", rows)
    data = bytearray(good.read_bytes())
    data[data.index(b"\x49ZZZZ_LAST")] = 0x3F  # a 32-bit pointer far past the data section
    damaged = tmp_path / "late_damage.mmdb"
    damaged.write_bytes(bytes(data))
    resolver = open_ip_db([damaged])
    assert resolver("10.0.1.1").asn == 1001
    assert resolver("200.0.0.1") == PREFIXES("200.0.0.1")
    assert resolver.failed_lookups == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("epoch", [2**40, 2**64 - 1])
def test_a_build_time_no_calendar_holds_is_shown_as_unknown(tmp_path: Path, epoch: int) -> None:
    path = mmdbkit.write_mmdb(tmp_path / "odd.mmdb", {"10.0.0.0/8": mmdbkit.asn(1, "One")}, build_epoch=epoch)
    resolver = open_ip_db([path])
    assert resolver.source == "mmdb:GeoLite2-ASN(?)"
    assert "GeoLite2-ASN" in describe(resolver)


def test_control_characters_in_the_database_type_never_reach_an_alert(tmp_path: Path) -> None:
    path = mmdbkit.write_mmdb(
        tmp_path / "ctl.mmdb", {"10.0.0.0/8": mmdbkit.asn(1, "One")}, database_type="ASN\r\x1b[2J\u2028x"
    )
    source = open_ip_db([path]).source
    assert source.isprintable() and "\x1b" not in source


def test_an_organisation_name_is_cut(tmp_path: Path) -> None:
    path = mmdbkit.write_mmdb(tmp_path / "long.mmdb", {"10.0.0.0/8": mmdbkit.asn(1, "x" * 100_000)})
    org = open_ip_db([path])("10.1.2.3").org
    assert org is not None and len(org) == MAX_ORG_CHARS


def test_a_fifo_is_refused_rather_than_read_for_ever(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.mmdb"
    os.mkfifo(fifo)
    with pytest.raises(IpDbError, match="not a regular file"):
        open_ip_db([fifo])


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"is_anonymous_vpn": "false", "autonomous_system_number": 1}, "unknown"),
        ({"is_anonymous_vpn": 1}, "unknown"),
        ({"mobile_country_code": ""}, "unknown"),
        ({"mobile_country_code": "310"}, "mobile"),
    ],
)
def test_kind_flags_must_be_true_and_codes_given(fields: dict[str, Any], kind: str) -> None:
    assert kind_of(fields) == kind


def test_kinds_without_asns_leave_networks_unidentified(tmp_path: Path) -> None:
    """A Connection-Type or Anonymous-IP file alone keys networks by /16 prefix: the engine must not treat its
    networks as autonomous systems (token_concurrent_networks stays off)."""
    kinds_only = open_ip_db([mmdbkit.connection_type(tmp_path / "ct.mmdb")])
    with_asns = open_ip_db([mmdbkit.geolite2_asn(tmp_path / "asn.mmdb")])
    assert not kinds_only.identifies_networks  # type: ignore[attr-defined]
    assert with_asns.identifies_networks  # type: ignore[attr-defined]
    assert not DetectionEngine(None, networks=kinds_only, collect=Collected()).networks_identified
    assert DetectionEngine(None, networks=with_asns, collect=Collected()).networks_identified
