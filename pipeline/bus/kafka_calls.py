"""Calling kafka-python: its errors translated to jwtwatch's, calls without a timeout of their own bounded.

Shared by the producing side (``kafka_producer.py``), topic administration (``kafka_admin.py``) and the consumer
adapter (``kafka_consumer.py``) of the kafka-python bus (``kafka.py``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from kafka.errors import (
    CommitFailedError,
    FencedInstanceIdError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kafka.structs import TopicPartition

from pipeline.errors import KafkaBusError, KafkaCommitRejected

_Client = TypeVar("_Client")

#: What the group coordinator answers to a commit from a member whose generation a rebalance has ended.
_LOST_TO_A_REBALANCE = (
    CommitFailedError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
    FencedInstanceIdError,
)


@contextlib.contextmanager
def translated(what: str, *, commit: bool = False) -> Iterator[None]:
    """kafka-python's errors as :class:`KafkaBusError` — for a ``commit``, one lost to a rebalance as
    :class:`KafkaCommitRejected`."""
    try:
        yield
    except KafkaError as exc:
        message = f"{what}: {type(exc).__name__}: {exc}"
        if commit and isinstance(exc, _LOST_TO_A_REBALANCE):
            raise KafkaCommitRejected(message) from exc
        raise KafkaBusError(message) from exc


def bounded(call: Callable[[], object], timeout_s: float, what: str) -> None:
    """Run a kafka-python call that has no timeout of its own; give up (raise) after ``timeout_s``."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    worker = threading.Thread(target=run, name="jwtwatch-kafka-call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise KafkaBusError(f"{what}: no answer from Kafka within {timeout_s:g} s")
    error = outcome[0]
    if isinstance(error, KafkaError):
        raise KafkaBusError(f"{what}: {type(error).__name__}: {error}") from error
    if error is not None:
        raise error


def connect(bootstrap: str, timeout_s: float, what: str, make: Callable[[], _Client]) -> _Client:
    """Make a kafka-python client (``what``: which, for the error); a broker out of reach as :class:`KafkaBusError`."""
    try:
        return make()
    except KafkaError as exc:
        raise KafkaBusError(
            f"cannot reach Kafka at {bootstrap!r} within {timeout_s:g} s ({what}): {type(exc).__name__}: {exc}"
        ) from exc


def tp_key(tp: TopicPartition) -> tuple[str, int]:
    return (tp.topic, tp.partition)


__all__ = ["bounded", "connect", "tp_key", "translated"]
