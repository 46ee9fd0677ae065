"""What every node opens at start: its bus and the revocation feed's keys — and the error that stops a start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.bus.base import Bus
from pipeline.errors import KeyStoreError, NodeError
from pipeline.keys import KeyStore
from pipeline.revocations.feed import FeedSigner, FeedVerifier, open_or_create_keys


def open_bus(kafka: str | None, consumer_client: str = "kafka-python") -> Bus:
    """The bus a node runs on: Kafka when a bootstrap address is given, else the in-process bus."""
    if kafka is None:
        from pipeline.bus.memory import MemoryBus

        return MemoryBus()
    from pipeline.bus.kafka import KafkaBus
    from pipeline.errors import KafkaBusError

    try:
        return KafkaBus(kafka, consumer_client=consumer_client)
    except (KafkaBusError, ValueError) as exc:
        raise NodeError(str(exc)) from exc


@dataclass(frozen=True)
class FeedKeys:
    """The revocation feed's key store and the process's one signer (it numbers the versions it signs)."""

    store: KeyStore
    signer: FeedSigner

    def verifier(self) -> FeedVerifier:
        """A verifier for one reader of the feed. Each reader needs its own: a verifier remembers the newest version
        it saw per revocation, so a reader behind another one would take its older messages for replays."""
        return FeedVerifier.from_store(self.store)


def open_feed_keys(directory: Path | None, kafka: str | None, data_dir: Path) -> FeedKeys:
    """The key store ``--revocation-keys`` names; without Kafka, one made under the data dir. Over Kafka it must
    be given: every process shares it, or none could verify another's revocations."""
    try:
        if directory is not None:
            keys = KeyStore.open(directory)
        elif kafka is not None:
            raise NodeError("--revocation-keys DIR is needed with --kafka: every process must share the feed's keys")
        else:
            keys = open_or_create_keys(data_dir / "revocation-keys")
    except KeyStoreError as exc:
        raise NodeError(str(exc)) from exc
    return FeedKeys(keys, FeedSigner(keys))
