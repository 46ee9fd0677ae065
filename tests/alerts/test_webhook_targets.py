"""Which URLs may receive webhooks: the SSRF rules of pipeline.alerts.targets. No DNS is used here."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.alerts.targets import check_address, check_target_url, classify_address, parse_target_url, resolve_target
from pipeline.errors import TargetError


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"an IP literal must not be resolved ({host})")


def resolver_of(table: dict[str, list[str]]):
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        if host not in table:
            raise OSError(f"unknown host {host}")
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


# --------------------------------------------------------------------------------------- accepted


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/hook",
        "https://93.184.216.34:8443/a/b?c=d&e=f",
        "https://[2606:4700:4700::1111]/hook",
        "http://127.0.0.1:8080/hook",
        "http://127.0.0.2/hook",
        "https://127.0.0.1/hook",
        "http://[::1]:9000/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.1/hook",
        "http://172.31.255.254/hook",
        "http://192.168.1.20:8000/hook",
        "http://100.64.0.1/hook",
        "http://[fd12:3456::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "HTTPS://93.184.216.34/hook",
    ],
)
def test_literal_addresses_accepted(url: str) -> None:
    resolved = check_target_url(url, no_dns)
    assert resolved.addresses
    assert resolved.target.scheme in ("http", "https")


def test_normalisation() -> None:
    target = parse_target_url("HTTPS://Hooks.Example.COM:8443/Path?q=1")
    assert target.url == "https://hooks.example.com:8443/Path?q=1"
    assert (target.scheme, target.host, target.port, target.target) == ("https", "hooks.example.com", 8443, "/Path?q=1")
    assert target.host_header == "hooks.example.com:8443"
    assert parse_target_url("https://example.com").target == "/"
    assert parse_target_url("https://example.com/x").host_header == "example.com"
    assert parse_target_url("http://[::1]:8080/").host_header == "[::1]:8080"
    assert parse_target_url("http://[::1]/").url == "http://[::1]/"


def test_hostname_resolving_to_public_over_https() -> None:
    resolve = resolver_of({"hooks.example.com": ["93.184.216.34", "2606:2800:220:1::1"]})
    resolved = check_target_url("https://hooks.example.com/in", resolve)
    assert [str(a) for a in resolved.addresses] == ["93.184.216.34", "2606:2800:220:1::1"]
    assert resolve.calls == [("hooks.example.com", 443)]


def test_hostname_resolving_to_private_over_http() -> None:
    resolve = resolver_of({"receiver.internal": ["10.0.0.7"], "localhost": ["127.0.0.1", "::1"]})
    assert check_target_url("http://receiver.internal:8080/in", resolve).addresses == (
        ipaddress.ip_address("10.0.0.7"),
    )
    assert len(check_target_url("http://localhost:9/in", resolve).addresses) == 2
    assert resolve.calls[0] == ("receiver.internal", 8080)


# ---------------------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://93.184.216.34/hook", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("gopher://127.0.0.1:25/", "scheme"),
        ("//93.184.216.34/hook", "scheme"),
        ("93.184.216.34/hook", "scheme"),
        ("", "empty"),
        ("https://", "no host"),
        ("https:///hook", "no host"),
        ("http://8.8.8.8/hook", "plain http to a public address"),
        ("http://93.184.216.34/hook", "plain http to a public address"),
        ("http://[2606:4700:4700::1111]/hook", "plain http to a public address"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://169.254.169.254/", "metadata"),
        ("http://169.254.170.2/v2/credentials", "metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("https://[fe80::1]/", "link-local"),
        ("http://[fe80::1%25eth0]/", "zone"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
        ("http://100.100.100.200/latest/meta-data/", "metadata"),
        ("https://192.0.0.192/", "metadata"),
        ("http://[::ffff:169.254.169.254]/", "metadata"),
        ("http://[::ffff:a9fe:a9fe]/", "metadata"),
        ("http://[64:ff9b::169.254.169.254]/", "metadata"),
        ("http://[2002:a9fe:a9fe::1]/", "metadata"),
        ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "teredo"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://METADATA.GOOGLE.INTERNAL./computeMetadata/v1/", "metadata"),
        ("https://metadata.goog/", "metadata"),
        ("http://instance-data/latest/", "metadata"),
        ("http://0.0.0.0:8080/", "unspecified"),
        ("http://[::]:8080/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://255.255.255.255/", "routable"),
        ("https://192.0.2.10/", "routable"),
        ("https://198.51.100.1/", "routable"),
        ("https://240.0.0.1/", "routable"),
        ("https://0.1.2.3/", "routable"),
        ("http://2852039166/", "dotted quad"),
        ("http://0xa9fea9fe/", "dotted quad"),
        ("http://0251.0376.0251.0376/", "dotted quad"),
        ("http://127.1/", "dotted quad"),
        ("http://127.000.000.001/", "dotted quad"),
        ("https://user:pw@93.184.216.34/hook", "credentials"),
        ("https://user:pw@host/", "credentials"),
        ("https://user@93.184.216.34/", "credentials"),
        ("https://@93.184.216.34/", "credentials"),
        ("https://93.184.216.34/hook#frag", "fragment"),
        ("https://93.184.216.34/hook#", "fragment"),
        ("https://93.184.216.34/ho ok", "printable"),
        ("https://93.184.216.34/hook\n", "printable"),
        ("https://exämple.com/", "printable"),
        ("https://evil.com\\@93.184.216.34/", "backslash"),
        ("https://93.184.216.34:0/", "port"),
        ("https://93.184.216.34:99999/", "valid URL"),
        ("https://93.184.216.34:http/", "valid URL"),
        ("https://[::1/", "valid URL"),
        ("https://[not-an-ip]/", "valid URL"),
        ("https://a..b/", "hostname"),
        ("https://-a.example/", "hostname"),
        ("https://" + "a" * 64 + ".example/", "hostname"),
        ("https://example.com/" + "a" * 3000, "longer"),
    ],
)
def test_refused(url: str, why: str) -> None:
    with pytest.raises(TargetError) as info:
        check_target_url(url, resolver_of({"host": ["93.184.216.34"]}))
    assert why.lower() in str(info.value).lower()


@pytest.mark.parametrize("value", [None, 5, b"https://93.184.216.34/", ["https://93.184.216.34/"], {"url": "x"}])
def test_non_strings_refused(value: object) -> None:
    with pytest.raises(TargetError):
        parse_target_url(value)


def test_every_resolved_address_is_checked() -> None:
    # One good address does not launder a bad one.
    resolve = resolver_of(
        {
            "mixed.example": ["93.184.216.34", "169.254.169.254"],
            "mixed6.example": ["2606:2800:220:1::1", "fd00:ec2::254"],
            "internal-and-public.example": ["10.0.0.5", "93.184.216.34"],
            "garbage.example": ["not-an-ip"],
            "empty.example": [],
            "local.example": ["127.0.0.1", "169.254.0.5"],
        }
    )
    with pytest.raises(TargetError, match="metadata"):
        check_target_url("https://mixed.example/", resolve)
    with pytest.raises(TargetError, match="metadata"):
        check_target_url("https://mixed6.example/", resolve)
    # https is fine for that one; plain http is not, since one address is public.
    check_target_url("https://internal-and-public.example/", resolve)
    with pytest.raises(TargetError, match="plain http"):
        check_target_url("http://internal-and-public.example/", resolve)
    with pytest.raises(TargetError, match="not an IP address"):
        check_target_url("https://garbage.example/", resolve)
    with pytest.raises(TargetError, match="no address"):
        check_target_url("https://empty.example/", resolve)
    with pytest.raises(TargetError, match="link-local"):
        check_target_url("http://local.example/", resolve)
    with pytest.raises(TargetError, match="does not resolve"):
        check_target_url("https://unknown.example/", resolve)


def test_public_name_over_http_refused() -> None:
    resolve = resolver_of({"hooks.example.com": ["93.184.216.34"]})
    with pytest.raises(TargetError, match="plain http"):
        check_target_url("http://hooks.example.com/", resolve)


def test_rebinding_is_caught_by_resolving_again() -> None:
    """Registration and every delivery resolve afresh: a name that re-binds to metadata is refused."""
    table = {"rebind.example": ["10.0.0.9"]}
    resolve = resolver_of(table)
    target = parse_target_url("http://rebind.example:8080/in")
    assert resolve_target(target, resolve).addresses == (ipaddress.ip_address("10.0.0.9"),)
    table["rebind.example"] = ["169.254.169.254"]
    with pytest.raises(TargetError, match="metadata"):
        resolve_target(target, resolve)
    table["rebind.example"] = ["127.0.0.1"]
    assert resolve_target(target, resolve).addresses == (ipaddress.ip_address("127.0.0.1"),)


def test_classification() -> None:
    ip = ipaddress.ip_address
    assert classify_address(ip("127.0.0.1")) == "loopback"
    assert classify_address(ip("::1")) == "loopback"
    assert classify_address(ip("10.0.0.1")) == "private"
    assert classify_address(ip("fc00::1")) == "private"
    assert classify_address(ip("8.8.8.8")) == "public"
    assert classify_address(ip("::ffff:8.8.8.8")) == "public"
    assert classify_address(ip("64:ff9b::808:808")) == "public"
    assert check_address(ip("8.8.8.8"), "https") == "public"
    with pytest.raises(TargetError):
        check_address(ip("8.8.8.8"), "http")
    for bad in ("169.254.169.254", "fe80::1", "fd00:ec2::254", "100.100.100.200", "::", "ff02::1", "2001:db8::1"):
        with pytest.raises(TargetError):
            classify_address(ip(bad))


# Every IPv6 form that carries (or might carry) an IPv4 address, and the rest of the space outside 2000::/3.
# (address, the class it gets) — or (address, a word of the refusal).
EMBEDDED_AND_SPECIAL_IPV6: list[tuple[str, str]] = [
    # IPv4-mapped ::ffff:a.b.c.d: a dual-stack socket reaches exactly that IPv4 address, judged as such.
    ("::ffff:8.8.8.8", "public"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "refused: metadata"),
    ("::ffff:169.254.1.1", "refused: link-local"),
    ("::ffff:0.0.0.0", "refused: unspecified"),
    ("::ffff:224.0.0.1", "refused: multicast"),
    # IPv4-compatible ::a.b.c.d (deprecated, RFC 4291): refused whatever it embeds.
    ("::a9fe:a9fe", "refused: IPv4-compatible"),
    ("::169.254.169.254", "refused: IPv4-compatible"),
    ("::127.0.0.1", "refused: IPv4-compatible"),
    ("::10.0.0.1", "refused: IPv4-compatible"),
    ("::8.8.8.8", "refused: IPv4-compatible"),
    ("::2", "refused: IPv4-compatible"),
    # SIIT IPv4-translated ::ffff:0:a.b.c.d (RFC 2765): outside 2000::/3.
    ("::ffff:0:a9fe:a9fe", "refused: 2000::/3"),
    ("::ffff:0:808:808", "refused: 2000::/3"),
    # Well-known NAT64 64:ff9b::/96 (RFC 6052): only a public IPv4 address may be embedded.
    ("64:ff9b::8.8.8.8", "public"),
    ("64:ff9b::169.254.169.254", "refused: metadata"),
    ("64:ff9b::169.254.1.1", "refused: link-local"),
    ("64:ff9b::10.0.0.1", "refused: must be public"),
    ("64:ff9b::127.0.0.1", "refused: must be public"),
    ("64:ff9b::192.168.1.1", "refused: must be public"),
    ("64:ff9b::100.64.0.1", "refused: must be public"),
    ("64:ff9b::192.0.2.1", "refused: routable"),
    ("64:ff9b::", "refused: unspecified"),
    # Local-use NAT64 64:ff9b:1::/48 (RFC 8215): where the IPv4 part sits is the operator's choice.
    ("64:ff9b:1::a9fe:a9fe", "refused: local-use NAT64"),
    ("64:ff9b:1:a9fe:a9:fe00::", "refused: local-use NAT64"),  # /48 format (RFC 6052 §2.2): 169.254.169.254
    ("64:ff9b:1::808:808", "refused: local-use NAT64"),
    ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", "refused: local-use NAT64"),
    # 6to4 2002::/16: only a public IPv4 address may be embedded.
    ("2002:808:808::1", "public"),
    ("2002:a9fe:a9fe::1", "refused: metadata"),
    ("2002:a00:1::1", "refused: must be public"),
    ("2002:7f00:1::1", "refused: must be public"),
    ("2002:c0a8:101::1", "refused: must be public"),
    ("2002::1", "refused: unspecified"),
    # Teredo 2001::/32 (the server and the client's obfuscated IPv4 address are in it).
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "refused: Teredo"),
    ("2001::a9fe:a9fe", "refused: Teredo"),
    # The rest outside 2000::/3, and special ranges inside it.
    ("100::1", "refused: 2000::/3"),
    ("fec0::1", "refused: 2000::/3"),
    ("5f00::1", "refused: 2000::/3"),
    ("4000::1", "refused: 2000::/3"),
    ("2001:db8::1", "refused: routable"),
    ("3fff::1", "refused: routable"),
    ("2001:2::1", "refused: routable"),
    ("2001:10::1", "refused: routable"),
    ("fe80::a9fe:a9fe", "refused: link-local"),
    ("ff02::a9fe:a9fe", "refused: multicast"),
    ("fd00:ec2::254", "refused: metadata"),
    ("fd00::a9fe:a9fe", "private"),
    ("::1", "loopback"),
    ("::", "refused: unspecified"),
    ("2606:4700:4700::1111", "public"),
    ("2620:4f:8000::1", "public"),
]


@pytest.mark.parametrize(("address", "expected"), EMBEDDED_AND_SPECIAL_IPV6)
def test_embedded_ipv4_and_special_ipv6(address: str, expected: str) -> None:
    ip = ipaddress.ip_address(address)
    if not expected.startswith("refused: "):
        assert classify_address(ip) == expected
        return
    with pytest.raises(TargetError) as info:
        classify_address(ip)
    assert expected.removeprefix("refused: ").lower() in str(info.value).lower()
    # The same literal in a URL is refused before anything is resolved or sent, over either scheme.
    for scheme in ("http", "https"):
        with pytest.raises(TargetError):
            check_target_url(f"{scheme}://[{address}]/hook", no_dns)


def test_a_name_resolving_to_an_embedded_form_is_refused() -> None:
    resolve = resolver_of({"compat.example": ["::a9fe:a9fe"], "nat64.example": ["64:ff9b:1::a9fe:a9fe"]})
    with pytest.raises(TargetError, match="IPv4-compatible"):
        check_target_url("https://compat.example/", resolve)
    with pytest.raises(TargetError, match="local-use NAT64"):
        check_target_url("https://nat64.example/", resolve)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_arbitrary_text_only_ever_raises_target_error(text: str) -> None:
    def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    for candidate in (text, "https://" + text, "http://" + text + "/x", "https://h.example/" + text):
        try:
            resolved = check_target_url(candidate, resolve)
        except TargetError:
            continue
        # Whatever passes is an http(s) URL without credentials whose addresses all passed the checks.
        assert resolved.target.scheme in ("http", "https")
        assert "@" not in resolved.target.url.split("/")[2]
        for address in resolved.addresses:
            check_address(address, resolved.target.scheme)
