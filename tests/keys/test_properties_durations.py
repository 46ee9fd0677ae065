"""Properties of duration parsing (key rotation: ``keys rotate --if-older-than``, ``keys audit --max-key-age``)."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.errors import KeyStoreError
from pipeline.keys import parse_duration

PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
ASCII_DURATIONS = st.text(alphabet=string.digits + " smhdwSMHDW.-+,/:x", max_size=30)


@PROPERTY
@given(ASCII_DURATIONS | st.text(string.printable, max_size=20) | st.integers(0, 10**9).map(str))
@example("0")
@example("1d12h")
@example(" 90 ")
def test_durations_parse_or_raise_keystore_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except KeyStoreError:
        return
    assert isinstance(seconds, int) and seconds > 0


def test_durations_control() -> None:
    assert parse_duration("1d12h") == 36 * 3600
    assert parse_duration(" 90 ") == 90
    with pytest.raises(KeyStoreError):
        parse_duration("0s")


@pytest.mark.parametrize("text", ["\u00b2", "9" * 5000, "9" * 5000 + "s"], ids=["superscript", "digits", "unit"])
def test_hostile_durations_raise_keystore_error(text: str) -> None:
    with pytest.raises(KeyStoreError):
        parse_duration(text)
