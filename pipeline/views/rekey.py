"""The re-keying stage: the usage topic in, the same events out again keyed by subject and by IP.

One stage makes the views for every producer — a validator of ours or a foreign one that writes only
``jwtwatch.token-usage`` — so validators keep one publish per event. :class:`RekeyStage` reads the usage topic in a
consumer group of its own (``<group>-rekey``) on the one consumer loop (:mod:`pipeline.bus.checkpoint`); its sink,
:class:`Rekeyer`, parses each event strictly (token-usage/1, as the pipeline does) and publishes the message's
**original bytes**, unchanged, to ``<topic>.by-subject`` under the event's subject key (none for an event that
counts against no subject) and to ``<topic>.by-ip`` under its client IP (every event): the keys of
:mod:`pipeline.views.keys`, the detection engine's entity keys.

Delivery is at least once. The checkpoint flushes the producer (every view message stored, ``acks=all``) before it
commits the usage topic's offsets; a crash or a failed flush between the two publishes the events since the last
commit again, so **a view may hold an event twice** — its ``event_id`` says so, and a reader of a view drops
repeats by ``event_id``. A record that is not token-usage/1 is dead-lettered (``consumer``: the stage's group),
counted, and the rest go on; a publish the bus refuses is not the record's fault: the consumer rewinds to it and
tries again.

Order: a view keeps the order of one source partition for each key (the events of one key from one source
partition are published in the order read, by one idempotent producer). A subject's or an address's events come
from several source partitions (one per token), and arrive in a view in the order this stage read them —
interleaved by poll, not sorted by event time.
"""

from __future__ import annotations

from pipeline.bus.base import Bus, Message
from pipeline.bus.checkpoint import CheckpointLoop
from pipeline.bus.topics import TOKEN_USAGE, keyed_views
from pipeline.errors import Unavailable
from pipeline.events import TokenUsage
from pipeline.views.keys import ip_key, subject_key


def decode_usage(message: Message) -> TokenUsage:
    """token-usage/1, strictly (raises :class:`~pipeline.errors.RecordError` for anything else)."""
    return TokenUsage.from_json(message.value)


class Rekeyer:
    """A :class:`~pipeline.bus.checkpoint.Sink`: ``add`` publishes one event's original bytes to the views of
    ``source`` (``flush`` flushes the producer: the loop commits only after).

    Counters: ``read`` events taken, ``by_subject`` / ``by_ip`` messages handed to the producer per view (a rewind
    after a failed flush publishes, and counts, those since the last commit again)."""

    def __init__(self, bus: Bus, *, source: str = TOKEN_USAGE) -> None:
        self.bus = bus
        self.source = source
        self.subject_topic, self.ip_topic = keyed_views(source)
        self.read = 0
        self.by_subject = 0
        self.by_ip = 0

    def add(self, record: TokenUsage, message: Message) -> None:
        subject = subject_key(record.sub, record.reason)
        # Encoded here, outside the publishing: a key that cannot be encoded (a lone surrogate) is the record's fault.
        subject_bytes = None if subject is None else subject.encode("utf-8")
        ip_bytes = ip_key(record.ip).encode("utf-8")
        # The source's time, not ours: a worker rebuilding a view's windows seeks by time, as it does on the topic.
        timestamp_ms = message.timestamp_ms if message.timestamp_ms > 0 else None
        try:
            if subject_bytes is not None:
                self.bus.publish(self.subject_topic, subject_bytes, message.value, timestamp_ms)
            self.bus.publish(self.ip_topic, ip_bytes, message.value, timestamp_ms)
        except Exception as exc:  # the bus's, not the record's: rewind to this record and retry it later
            raise Unavailable(f"the keyed views of {self.source} cannot be published to: {exc}") from exc
        self.read += 1
        self.by_subject += subject_bytes is not None
        self.by_ip += 1

    def flush(self) -> None:
        """Every view message published so far stored by the bus (raises if not: nothing is committed then)."""
        self.bus.flush()


class RekeyStage:
    """The usage topic ``source`` read in consumer group ``group`` (instances sharing it share its partitions, as
    ``pipeline run`` instances do) and re-keyed into its views, one poll per :meth:`step`.

    A new group starts at the beginning of the topic (what it still holds): the views get its whole history."""

    def __init__(
        self,
        bus: Bus,
        *,
        group: str,
        source: str = TOKEN_USAGE,
        max_records: int = 5000,
        poll_timeout_s: float = 0.2,
    ) -> None:
        self.group = group
        self.consumer = bus.consumer([source], group, from_beginning=True)
        self.rekeyer = Rekeyer(bus, source=source)
        self.loop = CheckpointLoop(
            bus,
            self.consumer,
            decode=decode_usage,
            sink=self.rekeyer,
            name=group,
            max_records=max_records,
            poll_timeout_s=poll_timeout_s,
        )

    def step(self, timeout_s: float | None = None) -> int:
        """Poll once, publish what was read to the views, checkpoint; returns the messages read."""
        return self.loop.step(timeout_s)

    @property
    def dead_letters(self) -> int:
        return self.loop.dead_letters

    def counts(self) -> dict[str, int]:
        """Events read and published, per view, and records dead-lettered, since the stage started."""
        return {
            "read": self.rekeyer.read,
            "by_subject": self.rekeyer.by_subject,
            "by_ip": self.rekeyer.by_ip,
            "dead_letters": self.loop.dead_letters,
        }

    def lag(self) -> int:
        """Messages of the usage topic not yet read (-1: no partition assigned yet)."""
        return self.loop.lag()

    def close(self) -> None:
        """A last checkpoint, then leave the group."""
        self.loop.close()


__all__ = ["RekeyStage", "Rekeyer", "decode_usage"]
