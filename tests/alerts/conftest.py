"""Fixtures the alerts tests share: a webhook receiver on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.alerts import Receiver
from tests.support.servers import serve_app


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[Receiver]:
    """A webhook receiver on loopback, one per test module."""
    receiver = Receiver()
    with serve_app(receiver.app()) as base:
        receiver.base = base
        yield receiver


@pytest.fixture
def receiver(receiver_server: Receiver) -> Receiver:
    """The module's receiver, emptied for this test."""
    receiver_server.reset()
    return receiver_server
