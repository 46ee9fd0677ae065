"""Properties of the configuration parsers: hostile settings are refused with the parser's own error, never crash.

ValidatorConfig (pydantic), CIDR lists (trusted proxies, allowlists), JWK Sets, and
the Retry-After header a webhook receiver answers with.
"""

from __future__ import annotations

import ipaddress
import string
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.alerts.retry import MAX_RETRY_AFTER_S, parse_retry_after
from pipeline.errors import JwksError
from pipeline.keys.jwk import ASYMMETRIC_ALGORITHMS
from pipeline.keys.key_set import KeySet, parse_jwks
from pipeline.serving.client_ip import client_ip, parse_networks
from pipeline.validation import ValidatorConfig
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer

PROPERTY = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
# Digits of other scripts, superscripts and fractions: str.isdigit() says yes to some, int() to fewer.
OTHER_DIGITS = "\u00b2\u00b3\u00b9\u0660\u0669\u06f5\u2460\u00bd\uff11"
DIGITISH = st.text(alphabet=string.digits + OTHER_DIGITS + " smhdw.-+,/:", max_size=30)

# -------------------------------------------------------------------------------------- ValidatorConfig

CONFIG_FIELDS = {
    "issuer": JSON,
    "audience": JSON,
    "jwks_file": JSON,
    "jwks_url": st.sampled_from(["https://idp.example/jwks", "http://idp.example/", "https://[::1", "https://"])
    | st.text(max_size=40)
    | JSON,
    "jwks": JSON,
    "jwks_ca_file": JSON,
    "algorithms": st.text(max_size=40)
    | st.lists(st.sampled_from([*sorted(ASYMMETRIC_ALGORITHMS), "HS256", "none"]))
    | JSON,
    "leeway_s": JSON,
    "max_token_bytes": JSON,
    "require_typ": JSON,
    "jwks_refetch_cooldown_s": JSON,
    "jwks_refresh_s": JSON,
    "jwks_timeout_s": JSON,
    "cache_size": JSON,
    "unknown_option": JSON,
}


@PROPERTY
@given(st.fixed_dictionaries({}, optional=CONFIG_FIELDS))
@example({"issuer": "i", "audience": "a", "jwks_url": "https://[::1"})
@example({"issuer": "i", "audience": "a", "jwks_url": "https://a:99999999/"})
@example({"issuer": "i", "audience": "a", "jwks_file": "x\x00y"})
def test_any_config_is_valid_or_a_validation_error(options: dict[str, Any]) -> None:
    try:
        config = ValidatorConfig(**options)
    except ValidationError:
        return
    # What is accepted keeps the invariants the verifier relies on.
    assert config.algorithms and set(config.algorithms) <= ASYMMETRIC_ALGORITHMS
    assert sum(source is not None for source in (config.jwks_file, config.jwks_url, config.jwks)) == 1
    assert config.jwks_url is None or config.jwks_url.startswith("https://")
    assert 0 <= config.leeway_s <= 300 and 256 <= config.max_token_bytes <= 65536


@PROPERTY
@given(st.text(max_size=60) | st.lists(st.text(max_size=12), max_size=5))
def test_algorithm_lists_are_asymmetric_or_refused(algorithms: str | list[str]) -> None:
    try:
        config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks={"keys": []}, algorithms=algorithms)
    except ValidationError:
        return
    assert set(config.algorithms) <= ASYMMETRIC_ALGORITHMS


# ------------------------------------------------------------------------------------------ CIDR lists

CIDR_TEXT = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=string.hexdigits + ".:/,% ", max_size=60),
    st.lists(st.ip_addresses().map(str).flatmap(lambda a: st.sampled_from([a, a + "/8", a + "/64", a + "/129"]))).map(
        ",".join
    ),
)


@PROPERTY
@given(CIDR_TEXT | st.lists(st.text(max_size=20), max_size=4))
@example("10.0.0.0/8, ,fe80::/10")
@example("1.2.3.4/" + "9" * 5000)
@example("::/0%eth0")
def test_cidr_lists_parse_or_raise_value_error(cidrs: str | list[str]) -> None:
    try:
        networks = parse_networks(cidrs)
    except ValueError as exc:
        assert "not an IP network" in str(exc)
        return
    assert all(isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network) for n in networks)


@PROPERTY
@given(
    st.none() | st.ip_addresses().map(str) | st.text(max_size=20),
    st.none() | st.text(max_size=80) | st.lists(st.ip_addresses().map(str) | st.text(max_size=8)).map(", ".join),
    st.sampled_from(["", "127.0.0.0/8", "0.0.0.0/0,::/0", "10.0.0.0/8"]),
)
def test_client_ip_is_always_an_ip(peer: str | None, forwarded: str | None, proxies: str) -> None:
    ipaddress.ip_address(client_ip(peer, forwarded, parse_networks(proxies)))


# ----------------------------------------------------------------------------------------- Retry-After


@PROPERTY
@given(st.none() | DIGITISH | st.text(st.characters(codec="latin-1"), max_size=40), st.floats(0, 4e9))
@example("\u00b2", 0.0)  # a receiver's Retry-After may carry any latin-1 character
@example("9" * 400, 0.0)
@example("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)
@example("Wed, 21 Oct 99999 07:28:00 GMT", 0.0)
def test_retry_after_is_a_bounded_delay_or_none(value: str | None, now: float) -> None:
    wait = parse_retry_after(value, now)
    assert wait is None or 0.0 <= wait <= MAX_RETRY_AFTER_S


# ----------------------------------------------------------------------------------------------- JWKS

KEYS = Issuer.create()
GOOD_KEYS: list[dict[str, Any]] = KEYS.jwks()["keys"]
JWK_MEMBERS = {
    "kty": st.sampled_from(["RSA", "EC", "OKP", "oct", "rsa", ""]) | JSON,
    "alg": st.sampled_from([*sorted(ASYMMETRIC_ALGORITHMS), "HS256", "none", ""]) | JSON,
    "crv": st.sampled_from(["P-256", "P-384", "P-521", "Ed25519", "X25519", "secp256k1"]) | JSON,
    "kid": st.text(max_size=8) | JSON,
    "use": st.sampled_from(["sig", "enc"]) | JSON,
    "n": st.sampled_from([GOOD_KEYS[0].get("n", ""), "AQAB", "", "é", "AA"]) | JSON,
    "e": st.sampled_from(["AQAB", "AA", "", "AQ"]) | JSON,
    "x": st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=90) | JSON,
    "y": st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=90) | JSON,
    "d": JSON,
    "k": JSON,
}


@st.composite
def jwk_sets(draw: st.DrawFn) -> object:
    keys: list[object] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["good", "mutated", "random", "junk"]))
        if kind == "good":
            keys.append(dict(draw(st.sampled_from(GOOD_KEYS))))
        elif kind == "mutated":
            key = dict(draw(st.sampled_from(GOOD_KEYS)))
            key.update(draw(st.fixed_dictionaries({}, optional=JWK_MEMBERS)))
            keys.append(key)
        elif kind == "random":
            keys.append(draw(st.fixed_dictionaries({}, optional=JWK_MEMBERS)))
        else:
            keys.append(draw(JSON))
    return draw(st.sampled_from([{"keys": keys}, {"keys": keys, "extra": 1}, keys, {"keys": {"0": keys}}]))


def check_key_set(keys: KeySet) -> None:
    usable = keys.usable()
    assert usable
    for key in usable:
        assert key.alg in ASYMMETRIC_ALGORITHMS and key.jwk is not None
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(key.public_jwk)  # public members only
    document = keys.public_jwks()
    assert parse_jwks(orjson.dumps(document)).usable()  # what we publish, we can read back


@PROPERTY
@given(jwk_sets(), st.sampled_from(["object", "bytes", "text"]), st.none() | st.just(("ES256",)))
def test_any_jwks_document_is_a_key_set_or_a_jwks_error(
    document: object, form: str, allowed: tuple[str, ...] | None
) -> None:
    data: Any = document
    if form != "object":
        data = orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)
        data = data if form == "bytes" else data.decode()
    try:
        keys = parse_jwks(data, allowed)
    except JwksError:
        return
    check_key_set(keys)
    if allowed is not None:
        assert {k.alg for k in keys.usable()} <= set(allowed)


@PROPERTY
@given(st.binary(max_size=300) | st.text(max_size=300))
@example("\ud800")
@example(b'{"keys": [' + b"[" * 3000 + b"]")
def test_jwks_bytes_are_a_key_set_or_a_jwks_error(raw: bytes | str) -> None:
    try:
        keys = parse_jwks(raw)
    except JwksError:
        return
    check_key_set(keys)


def test_jwks_control_the_good_set_parses() -> None:
    keys = parse_jwks({"keys": GOOD_KEYS})
    assert len(keys.usable()) == len(GOOD_KEYS)
    with pytest.raises(JwksError):
        parse_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
