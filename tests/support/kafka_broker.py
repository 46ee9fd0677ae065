"""Real Kafka brokers for tests, started with scripts/kafka-local — shared by conftest and the tests that
need a broker of their own (one they may stop and start again).

Policy when no broker can be had: skip, or fail when JWTWATCH_REQUIRE_KAFKA=1 (as .ci/run sets).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from bench.broker import KAFKA_LOCAL, Broker, BrokerError, tail
from bench.broker import private_broker as _private_broker
from tests.support.require import skip_or_fail

__all__ = ["KAFKA_LOCAL", "Broker", "private_broker", "tail", "unavailable"]


def unavailable(reason: str) -> NoReturn:
    skip_or_fail(
        "KAFKA",
        f"no Kafka broker could be had (set JWTWATCH_KAFKA_BOOTSTRAP or run scripts/kafka-local start): {reason}",
    )


@contextlib.contextmanager
def private_broker(directory: Path) -> Iterator[Broker]:
    """bench.broker.private_broker, skipping (or failing, when required) where no broker can start."""
    with contextlib.ExitStack() as stack:
        try:
            broker = stack.enter_context(_private_broker(directory))
        except BrokerError as exc:
            unavailable(str(exc))
        yield broker
