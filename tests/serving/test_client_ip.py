"""Which IP is the client's: the socket peer, unless a trusted proxy says otherwise — and only that far."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from pipeline.bus import TOKEN_USAGE
from pipeline.bus.memory import MemoryBus
from pipeline.events import TokenUsage
from pipeline.serving.client_ip import client_ip, parse_networks
from pipeline.validation import ValidatorConfig
from pipeline.validation.app import create_validator_app
from pipeline.validation.service import ValidatorService
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer
from tests.support.servers import serve_app

PROXIES = parse_networks("10.0.0.0/8, 2001:db8::/32")


# ---------------------------------------------------------------------------------------- untrusted


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "trusted"),
    [
        ("203.0.113.5", "198.51.100.7", ()),
        ("203.0.113.5", "198.51.100.7", PROXIES),  # proxies are configured, but this peer is not one
        ("203.0.113.5", "10.0.0.1, 127.0.0.1", PROXIES),  # claiming to come from inside does not help
        ("203.0.113.5", "", PROXIES),
        ("203.0.113.5", None, PROXIES),
    ],
)
def test_untrusted_peer_is_the_client_whatever_xff_says(peer: str, forwarded_for: str | None, trusted: tuple) -> None:
    assert client_ip(peer, forwarded_for, trusted) == "203.0.113.5"


def test_trusted_peer_without_xff_is_the_client() -> None:
    assert client_ip("10.0.0.9", None, PROXIES) == "10.0.0.9"
    assert client_ip("10.0.0.9", "", PROXIES) == "10.0.0.9"


@pytest.mark.parametrize("peer", [None, "", "unix:/run/jwtwatch.sock", "not-an-ip"])
def test_unknown_peer_is_the_placeholder_and_xff_is_not_believed(peer: str | None) -> None:
    assert client_ip(peer, "198.51.100.7", PROXIES) == "0.0.0.0"


# ------------------------------------------------------------------------------------------ trusted


def test_trusted_proxy_forwards_the_client() -> None:
    assert client_ip("10.0.0.1", "198.51.100.7", PROXIES) == "198.51.100.7"
    assert client_ip("10.0.0.1", "  198.51.100.7  ", PROXIES) == "198.51.100.7"


@pytest.mark.parametrize(
    ("forwarded_for", "client"),
    [
        ("fe80::1%eth0", "fe80::1"),
        ("2001:db9::7%" + "x" * 5000, "2001:db9::7"),  # a zone is any text, as long as the header allows
        ("2001:db9::7%\u00ff\u00fe", "2001:db9::7"),
    ],
)
def test_an_ipv6_zone_never_reaches_the_client_address(forwarded_for: str, client: str) -> None:
    assert client_ip("10.0.0.1", forwarded_for, PROXIES) == client
    assert client_ip(forwarded_for, None, PROXIES) == client  # a zoned peer too (a link-local socket)


def test_multi_hop_chain_picks_the_rightmost_untrusted() -> None:
    chain = "198.51.100.7, 10.1.0.5, 10.2.0.6"
    assert client_ip("10.3.0.7", chain, PROXIES) == "198.51.100.7"


def test_client_written_entries_left_of_the_real_client_are_ignored() -> None:
    # The client sent "X-Forwarded-For: 6.6.6.6, 10.0.0.1"; our proxies appended what they saw.
    chain = "6.6.6.6, 10.0.0.1, 198.51.100.7, 10.1.0.5"
    assert client_ip("10.2.0.1", chain, PROXIES) == "198.51.100.7"


def test_chain_of_only_trusted_proxies_yields_the_leftmost() -> None:
    assert client_ip("10.0.0.3", "10.0.0.1,10.0.0.2", PROXIES) == "10.0.0.1"


@pytest.mark.parametrize(
    ("chain", "expected"),
    [
        # Garbage stops the walk: nothing left of it can be believed, and the garbage is never returned.
        ("198.51.100.7, garbage, 10.1.0.5", "10.1.0.5"),
        ("198.51.100.7, not-an-ip", "10.0.0.1"),
        ("198.51.100.7, ", "10.0.0.1"),
        ("198.51.100.7,,10.1.0.5", "10.1.0.5"),
        ("198.51.100.7:4711", "10.0.0.1"),  # a port is not part of X-Forwarded-For
        ("[2001:db8::7]", "10.0.0.1"),
        ("unknown", "10.0.0.1"),
        ("<script>, 198.51.100.7", "198.51.100.7"),  # garbage left of the client is never reached
        ("999.999.999.999", "10.0.0.1"),
        ("1.2.3.4\x00", "10.0.0.1"),
    ],
)
def test_garbage_entries(chain: str, expected: str) -> None:
    assert client_ip("10.0.0.1", chain, PROXIES) == expected


# ---------------------------------------------------------------------------------------------- IPv6


def test_ipv6_peer_untrusted_and_canonicalised() -> None:
    assert client_ip("2001:0DB9:0000::0001", "198.51.100.7", PROXIES) == "2001:db9::1"


def test_ipv6_trusted_proxy_chain() -> None:
    assert client_ip("2001:db8::1", "2a00:1450::5, 2001:db8::10", PROXIES) == "2a00:1450::5"
    assert client_ip("2001:db8::1", "198.51.100.7, 2001:db8:1::1", PROXIES) == "198.51.100.7"


def test_ipv4_mapped_ipv6_is_treated_as_ipv4() -> None:
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d: trust and the answer follow the IPv4 address.
    assert client_ip("::ffff:10.0.0.1", "198.51.100.7", PROXIES) == "198.51.100.7"
    assert client_ip("::ffff:203.0.113.9", "198.51.100.7", PROXIES) == "203.0.113.9"
    assert client_ip("10.0.0.1", "::ffff:198.51.100.7", PROXIES) == "198.51.100.7"
    assert client_ip("10.0.0.1", "198.51.100.7, ::ffff:10.9.9.9", PROXIES) == "198.51.100.7"


def test_result_is_always_an_ip_address() -> None:
    for peer, chain in [("10.0.0.1", "x, y, z"), ("::ffff:10.0.0.1", "::ffff:1.2.3.4"), ("2001:db8::1", "fe80::1")]:
        ipaddress.ip_address(client_ip(peer, chain, PROXIES))


# -------------------------------------------------------------------------------------- parse_networks


def test_parse_networks_accepts_lists_strings_and_host_bits() -> None:
    assert parse_networks(None) == ()
    assert parse_networks("") == ()
    assert parse_networks(" , ,") == ()
    assert parse_networks("10.0.0.1/8, ::1") == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert parse_networks(["192.168.1.7", " 2001:db8::/32 "]) == (
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )


@pytest.mark.parametrize(
    "cidrs", ["10.0.0.0/33", "garbage", "10.0.0.0/8;192.168.0.0/16", "300.0.0.0/8", "::1/129", ["10.0.0.0/8", "bad"]]
)
def test_parse_networks_errors_name_the_entry(cidrs: str | list[str]) -> None:
    with pytest.raises(ValueError, match="not an IP network"):
        parse_networks(cidrs)


def test_service_refuses_bad_trusted_proxies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=Issuer.create().jwks())
    with pytest.raises(ValueError, match="not an IP network"):
        ValidatorService(config, data_dir=tmp_path, trusted_proxies="10.0.0.0/8,nonsense")


# ------------------------------------------------------------------------------------------------ HTTP


@dataclass
class Server:
    url: str
    bus: MemoryBus


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer.create()


def _server(issuer: Issuer, tmp: object, trusted: str | None) -> Iterator[Server]:
    bus = MemoryBus()
    config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
    service = ValidatorService(config, data_dir=tmp, bus=bus, trusted_proxies=trusted)  # type: ignore[arg-type]
    # serve_app is the production runner (pipeline.serving.server): uvicorn's own X-Forwarded-For
    # rewriting is off there, so whatever the app sees as the peer really is the socket peer.
    with serve_app(create_validator_app(service)) as url:
        yield Server(url, bus)
    service.close()


@pytest.fixture(scope="module")
def direct(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _server(issuer, tmp_path_factory.mktemp("direct"), None)


@pytest.fixture(scope="module")
def behind_proxy(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _server(issuer, tmp_path_factory.mktemp("proxied"), "127.0.0.1/32, 10.0.0.0/8")


def _event_ip(server: Server, headers: list[tuple[str, str]]) -> str:
    with server.bus.consumer([TOKEN_USAGE], "ip-check", from_beginning=False) as consumer:
        consumer.positions()
        response = httpx.get(server.url + "/v1/validate", headers=[("Authorization", "Bearer x.y.z"), *headers])
        assert response.status_code == 401
        [message] = consumer.poll(timeout_s=2)
    return TokenUsage.from_json(message.value).ip


def test_http_untrusted_peer_spoofing_xff_is_ignored(direct: Server) -> None:
    assert _event_ip(direct, [("X-Forwarded-For", "198.51.100.7")]) == "127.0.0.1"
    assert _event_ip(direct, []) == "127.0.0.1"


def test_http_trusted_proxy_chain(behind_proxy: Server) -> None:
    chain = "6.6.6.6, 198.51.100.7, 10.0.0.5"
    assert _event_ip(behind_proxy, [("X-Forwarded-For", chain)]) == "198.51.100.7"
    assert _event_ip(behind_proxy, []) == "127.0.0.1"


def test_http_xff_split_over_several_header_lines_is_one_list(behind_proxy: Server) -> None:
    # RFC 9110 §5.3: repeated header lines mean the comma-joined list. A proxy that adds its own line
    # (HAProxy's `option forwardfor` does) leaves the client's forged line first; the first line alone
    # would hand the attacker the IP of their choice.
    headers = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.7")]
    assert _event_ip(behind_proxy, headers) == "198.51.100.7"
