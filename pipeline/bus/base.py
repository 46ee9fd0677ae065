"""The Bus interface: publish with a key, consume in batches, commit after processing."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple


class Message(NamedTuple):
    """One message read from a topic. A named tuple, not a dataclass: consumers build one per message
    read (hundreds of thousands a second in the pipeline), and a tuple is built several times faster."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


@dataclass(slots=True)
class MessageRun:
    """Consecutive messages of one partition from one poll, as columns (``offsets[i]`` is ``values[i]``'s).

    What a high-volume consumer reads instead of one :class:`Message` per message: no object per message.
    """

    topic: str
    partition: int
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes]

    def message(self, index: int) -> Message:
        """The ``index``-th message on its own (for a dead letter). Its timestamp is not kept: 0."""
        return Message(self.topic, self.partition, self.offsets[index], self.keys[index], self.values[index], 0)


def runs_of(messages: Iterable[Message]) -> list[MessageRun]:
    """Messages as columns: one run per stretch of consecutive messages of one partition."""
    runs: list[MessageRun] = []
    for message in messages:
        if not runs or (runs[-1].topic, runs[-1].partition) != (message.topic, message.partition):
            runs.append(MessageRun(message.topic, message.partition, [], [], []))
        run = runs[-1]
        run.offsets.append(message.offset)
        run.keys.append(message.key)
        run.values.append(message.value)
    return runs


class Consumer(ABC):
    """A member of a consumer group reading some topics.

    ``poll`` returns the next batch; ``commit`` marks everything returned by ``poll`` so far as processed,
    so call it only once the batch's effects are durable (at-least-once).
    """

    @abstractmethod
    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Message]: ...

    def poll_runs(self, max_records: int = 500, timeout_s: float = 1.0) -> list[MessageRun]:
        """Like ``poll``, with the messages as columns, one :class:`MessageRun` per partition run."""
        return runs_of(self.poll(max_records, timeout_s))

    @abstractmethod
    def commit(self, offsets: dict[tuple[str, int], int] | None = None) -> None:
        """Mark as processed: everything polled so far, or up to the given next offsets per partition.

        Raises :class:`CommitRejected` when a rebalance got there first (at-least-once: redelivered)."""

    @abstractmethod
    def seek_to_beginning(self) -> None: ...

    @abstractmethod
    def seek_to_time(self, timestamp_ms: int) -> None:
        """Re-position every assigned partition at the first message at or after ``timestamp_ms``."""

    @abstractmethod
    def seek(self, positions: dict[tuple[str, int], int]) -> None:
        """Re-position the given (topic, partition)s at the given offsets."""

    @abstractmethod
    def seek_partitions_to_time(self, timestamps_ms: dict[tuple[str, int], int]) -> None:
        """Re-position each given (assigned) partition at its first message at or after its own timestamp
        (at the end where there is none); other partitions keep their positions."""

    @abstractmethod
    def committed(self) -> dict[tuple[str, int], int]:
        """Per assigned partition: the group's committed offset, or where a member starts without one (the
        beginning or the end, as ``from_beginning`` chose). Not this member's position."""

    @abstractmethod
    def assignment(self) -> set[tuple[str, int]]:
        """The partitions assigned to this member right now."""

    def assignment_changes(self) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
        """``(lost, gained)``: the partitions taken from / given to this member since the last call (the first
        call reports the whole assignment as gained). A partition lost and given back is in both: its
        position came back from the committed offset."""
        now = set(self.assignment())
        before: set[tuple[str, int]] = getattr(self, "_assignment_seen", set())
        self._assignment_seen = now
        return before - now, now - before

    @abstractmethod
    def end_offsets(self) -> dict[tuple[str, int], int]:
        """The next offset to be written per (topic, partition): 'caught up' means position == end."""

    @abstractmethod
    def positions(self) -> dict[tuple[str, int], int]: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bus(ABC):
    @abstractmethod
    def publish(
        self, topic: str, key: str | bytes | None, value: bytes | None, timestamp_ms: int | None = None
    ) -> None:
        """Queue one message. Messages with the same key keep their order. ``timestamp_ms`` is its time (default:
        now); a stage that republishes a message keeps the original's, so seeking by time finds it where it
        finds the original."""

    @abstractmethod
    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every published message is stored by the bus."""

    @abstractmethod
    def consumer(self, topics: Iterable[str], group: str, *, from_beginning: bool = True) -> Consumer:
        """Join ``group`` reading ``topics``; with no committed offset, start at the beginning or the end."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode_key(key: str | bytes | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return key.encode("utf-8")
