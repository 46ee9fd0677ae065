"""The in-process bus: the embedded default, one process, no broker.

It keeps Kafka's semantics where they matter to callers — partitions chosen by key, consumer groups that
share partitions, committed offsets, seeking by time — so that the same service code runs on Kafka.
Memory is bounded: each partition keeps at most ``retention`` messages (the oldest are dropped, and a
consumer that fell that far behind skips ahead, as a Kafka consumer past retention would).
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pipeline.bus.base import Bus, Consumer, Message, MessageRun, encode_key
from pipeline.bus.topics import TopicSpec, default_topics


class _Partition:
    """A partition's messages as columns (keys, values, timestamps) in chunks of ``chunk`` messages.

    Full chunks are frozen into tuples of bytes and ints, which the garbage collector stops tracking: a
    backlog held in lists (or as message objects) would be traversed by every full collection — about a
    third of a second per million messages, many times over while a large backlog drains. Retention drops
    whole chunks from the head.
    """

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.base = 0  # offset of the first message kept
        self.sealed: list[tuple[tuple[bytes | None, ...], tuple[bytes, ...], tuple[int, ...]]] = []
        self.keys: list[bytes | None] = []  # the open chunk
        self.values: list[bytes] = []
        self.times: list[int] = []

    def __len__(self) -> int:
        return len(self.sealed) * self.chunk + len(self.values)

    @property
    def end(self) -> int:
        return self.base + len(self)

    def append(self, key: bytes | None, value: bytes, timestamp_ms: int) -> None:
        self.keys.append(key)
        self.values.append(value)
        self.times.append(timestamp_ms)
        if len(self.values) == self.chunk:
            self.sealed.append((tuple(self.keys), tuple(self.values), tuple(self.times)))
            self.keys, self.values, self.times = [], [], []

    def trim(self, keep: int) -> None:
        """Drop the oldest whole chunks while at least ``keep`` messages remain."""
        drop = min(len(self.sealed), (len(self) - keep) // self.chunk)
        if drop > 0:
            del self.sealed[:drop]
            self.base += drop * self.chunk

    def read(self, start: int, stop: int) -> tuple[list[bytes | None], list[bytes], list[int]]:
        """Keys, values and timestamps of the messages at offsets ``start`` to ``stop`` (kept ones)."""
        keys: list[bytes | None] = []
        values: list[bytes] = []
        times: list[int] = []
        lo, hi = start - self.base, stop - self.base
        while lo < hi:
            index, at = divmod(lo, self.chunk)
            ks, vs, ts = self.sealed[index] if index < len(self.sealed) else (self.keys, self.values, self.times)
            upto = min(len(vs), at + hi - lo)
            keys += ks[at:upto]
            values += vs[at:upto]
            times += ts[at:upto]
            lo += upto - at
        return keys, values, times

    def all_times(self) -> Iterator[int]:
        for _, _, times in self.sealed:
            yield from times
        yield from self.times


@dataclass
class _Group:
    members: list[MemoryConsumer] = field(default_factory=list)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)


class MemoryBus(Bus):
    def __init__(self, topics: Iterable[TopicSpec] | None = None, *, retention: int = 1_000_000) -> None:
        self._lock = threading.Condition()
        self._topics: dict[str, list[_Partition]] = {}
        self._compacted: set[str] = set()
        self._groups: dict[str, _Group] = {}
        self._retention = retention
        self._closed = False
        for spec in topics if topics is not None else default_topics():
            self.create_topic(spec)

    def create_topic(self, spec: TopicSpec) -> None:
        with self._lock:
            if spec.name not in self._topics:
                self._topics[spec.name] = [self._partition() for _ in range(max(1, spec.partitions))]
                if spec.compacted:
                    self._compacted.add(spec.name)

    def _partition(self) -> _Partition:
        # Chunks of at most 4096 messages, and at most an eighth of the retention (the slack it allows).
        return _Partition(max(1, min(4096, self._retention // 8)))

    def _partitions(self, topic: str) -> list[_Partition]:
        if topic not in self._topics:
            # Like a broker with auto-creation: an unknown topic gets the default shape.
            self._topics[topic] = [self._partition() for _ in range(3)]
        return self._topics[topic]

    def publish(
        self, topic: str, key: str | bytes | None, value: bytes | None, timestamp_ms: int | None = None
    ) -> None:
        raw_key = encode_key(key)
        with self._lock:
            if self._closed:
                raise RuntimeError("bus is closed")
            parts = self._partitions(topic)
            index = zlib.crc32(raw_key) % len(parts) if raw_key is not None else 0
            part = parts[index]
            # A None value is a tombstone (Kafka's delete marker); readers see it as empty bytes.
            part.append(raw_key, value or b"", int(time.time() * 1000) if timestamp_ms is None else timestamp_ms)
            # Compacted topics are the revocation feed: small, and every entry must stay readable.
            if topic not in self._compacted and len(part) > self._retention + self._retention // 8:
                # Trim in chunks: dropping one message at a time from a list's head would be O(n) each.
                part.trim(self._retention)
            self._lock.notify_all()

    def flush(self, timeout_s: float | None = None) -> None:
        """Publishing is synchronous here: nothing is ever pending."""

    def consumer(self, topics: Iterable[str], group: str, *, from_beginning: bool = True) -> MemoryConsumer:
        with self._lock:
            member = MemoryConsumer(self, list(topics), group, from_beginning)
            self._groups.setdefault(group, _Group()).members.append(member)
            for topic in member.topics:
                for index, part in enumerate(self._partitions(topic)):
                    # "From the end" means the end when the consumer joined, as with Kafka.
                    member._joined_at[(topic, index)] = part.end
            return member

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    # -- used by MemoryConsumer, always under self._lock ---------------------------------------------

    def _assignment(self, member: MemoryConsumer) -> list[tuple[str, int]]:
        group = self._groups[member.group]
        index = group.members.index(member)
        count = len(group.members)
        assigned = []
        for topic in member.topics:
            for p in range(len(self._topics[topic])):
                if p % count == index:
                    assigned.append((topic, p))
        return assigned

    def _leave(self, member: MemoryConsumer) -> None:
        group = self._groups.get(member.group)
        if group and member in group.members:
            group.members.remove(member)


class MemoryConsumer(Consumer):
    def __init__(self, bus: MemoryBus, topics: list[str], group: str, from_beginning: bool) -> None:
        self.bus = bus
        self.topics = topics
        self.group = group
        self._from_beginning = from_beginning
        self._positions: dict[tuple[str, int], int] = {}
        self._joined_at: dict[tuple[str, int], int] = {}
        self._closed = False

    def _position(self, tp: tuple[str, int]) -> int:
        pos = self._positions.get(tp)
        if pos is None:
            pos = self._positions[tp] = self._start(tp)
        return pos

    def _start(self, tp: tuple[str, int]) -> int:
        """Where this member starts reading ``tp``: the group's commit, else the beginning or where it joined."""
        committed = self.bus._groups[self.group].committed.get(tp)
        if committed is not None:
            return committed
        part = self.bus._topics[tp[0]][tp[1]]
        return part.base if self._from_beginning else self._joined_at.get(tp, part.end)

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Message]:
        return [
            Message(run.topic, run.partition, offset, key, value, timestamp_ms)
            for run, times in self._wait(max_records, timeout_s)
            for offset, key, value, timestamp_ms in zip(run.offsets, run.keys, run.values, times, strict=True)
        ]

    def poll_runs(self, max_records: int = 500, timeout_s: float = 1.0) -> list[MessageRun]:
        """Slices of the partitions' lists: no object is made per message."""
        return [run for run, _ in self._wait(max_records, timeout_s)]

    def _wait(self, max_records: int, timeout_s: float) -> list[tuple[MessageRun, list[int]]]:
        deadline = time.monotonic() + timeout_s
        with self.bus._lock:
            while True:
                if self._closed or self.bus._closed:
                    return []
                batch = self._take(max_records)
                if batch:
                    return batch
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self.bus._lock.wait(remaining)

    def _take(self, max_records: int) -> list[tuple[MessageRun, list[int]]]:
        """Up to ``max_records``, shared fairly between the assigned partitions (as Kafka's fetcher does),
        so that one partition's backlog does not run far ahead of the others in event time."""
        batch: list[tuple[MessageRun, list[int]]] = []
        count = 0
        assignment = self.bus._assignment(self)
        for tp in [tp for tp in self._positions if tp not in assignment]:
            del self._positions[tp]  # rebalanced away: the new owner resumes from the commit
        pending = []
        for tp in assignment:
            part = self.bus._topics[tp[0]][tp[1]]
            pos = max(self._position(tp), part.base)
            self._positions[tp] = pos
            if part.end > pos:
                pending.append((tp, part))
        while pending and count < max_records:
            share = max(1, (max_records - count) // len(pending))
            still = []
            for tp, part in pending:
                pos = self._positions[tp]
                take = min(part.end - pos, share, max_records - count)
                if take > 0:
                    keys, values, times = part.read(pos, pos + take)
                    batch.append((MessageRun(tp[0], tp[1], list(range(pos, pos + take)), keys, values), times))
                    count += take
                    self._positions[tp] = pos + take
                if part.end > self._positions[tp]:
                    still.append((tp, part))
            pending = still
        return batch

    def commit(self, offsets: dict[tuple[str, int], int] | None = None) -> None:
        with self.bus._lock:
            committed = self.bus._groups[self.group].committed
            assignment = set(self.bus._assignment(self))
            chosen = self._positions if offsets is None else offsets
            committed.update((tp, pos) for tp, pos in chosen.items() if tp in assignment)

    def seek_to_beginning(self) -> None:
        with self.bus._lock:
            for tp in self.bus._assignment(self):
                self._positions[tp] = self.bus._topics[tp[0]][tp[1]].base

    def seek_to_time(self, timestamp_ms: int) -> None:
        with self.bus._lock:
            self.seek_partitions_to_time(dict.fromkeys(self.bus._assignment(self), timestamp_ms))

    def seek_partitions_to_time(self, timestamps_ms: dict[tuple[str, int], int]) -> None:
        with self.bus._lock:
            assignment = set(self.bus._assignment(self))
            for tp, timestamp_ms in timestamps_ms.items():
                if tp in assignment:
                    self._positions[tp] = self._offset_for_time(tp, timestamp_ms)

    def _offset_for_time(self, tp: tuple[str, int], timestamp_ms: int) -> int:
        part = self.bus._topics[tp[0]][tp[1]]
        for offset, message_ms in enumerate(part.all_times(), part.base):
            if message_ms >= timestamp_ms:
                return offset
        return part.end

    def seek(self, positions: dict[tuple[str, int], int]) -> None:
        with self.bus._lock:
            self._positions.update(positions)

    def committed(self) -> dict[tuple[str, int], int]:
        with self.bus._lock:
            return {tp: self._start(tp) for tp in self.bus._assignment(self)}

    def assignment(self) -> set[tuple[str, int]]:
        with self.bus._lock:
            return set() if self._closed else set(self.bus._assignment(self))

    def end_offsets(self) -> dict[tuple[str, int], int]:
        with self.bus._lock:
            return {tp: self.bus._topics[tp[0]][tp[1]].end for tp in self.bus._assignment(self)}

    def positions(self) -> dict[tuple[str, int], int]:
        with self.bus._lock:
            return {tp: self._position(tp) for tp in self.bus._assignment(self)}

    def close(self) -> None:
        with self.bus._lock:
            self._closed = True
            self.bus._leave(self)
            self.bus._lock.notify_all()
