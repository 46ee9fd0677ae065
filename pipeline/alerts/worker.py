"""Running the alerts service: the delivery loop, and the consumer that feeds it from the bus."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pipeline.alerts.claims import ClaimedDelivery
from pipeline.alerts.service import AlertsService
from pipeline.bus import ALERTS, REVOCATIONS, Bus, Message
from pipeline.bus.checkpoint import CheckpointLoop
from pipeline.bus.dead_letter import dead_letter
from pipeline.events import Alert, Revocation

log = logging.getLogger(__name__)

DEFAULT_GROUP = "jwtwatch-alerts"
PURGE_EVERY_S = 3600.0


class AlertsWorker:
    """A thread that keeps the service's webhook attempts going; ``start()`` / ``stop()``.

    No rounds: it claims due deliveries whenever an attempt slot is free (``service.concurrency`` slots, at
    most ``service.per_target_concurrency`` of them per webhook) and hands each to a thread pool, so a new
    delivery starts at once even while slow receivers hold other slots — and a slow receiver holds its
    slots only until its attempt's total deadline. It sleeps ``interval_s`` when nothing more can start;
    ``wake()`` cuts the sleep short (call it after accepting something to send it at once), as does every
    attempt that ends. Once an hour it purges finished deliveries older than ``retention_s``.
    """

    def __init__(
        self,
        service: AlertsService,
        interval_s: float = 1.0,
        *,
        batch: int = 100,
        retention_s: float | None = 30 * 24 * 3600.0,
    ) -> None:
        self.service = service
        self.interval_s = interval_s
        self.batch = batch  # at most this many claimed at one look
        self.retention_s = retention_s
        self.rounds = 0  # looks at the outbox
        self.attempts = 0  # attempts finished
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_purge = time.monotonic()
        self._counts = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        with self._counts:
            return self._in_flight

    def start(self) -> AlertsWorker:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="jwtwatch-webhooks", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        slots = self.service.concurrency
        with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="webhook") as pool:
            while not self._stop.is_set():
                free = slots - self.in_flight
                started = 0
                wanted = min(free, self.batch)
                try:
                    if wanted > 0:
                        for job in self.service.claim_due(wanted, per_target=self.service.per_target_concurrency):
                            with self._counts:
                                self._in_flight += 1
                            pool.submit(self._attempt, job)
                            started += 1
                    self.rounds += 1
                    if self.retention_s is not None and time.monotonic() - self._last_purge > PURGE_EVERY_S:
                        self._last_purge = time.monotonic()
                        self.service.purge(self.retention_s)
                except Exception:
                    if self._stop.is_set():
                        break
                    log.exception("webhook delivery: claiming failed; retrying in %.1f s", self.interval_s)
                    started = 0
                if wanted == 0 or started < wanted:
                    # Nothing more can start now (all slots busy, nothing due, or what is due waits for its
                    # webhook's slots): until an attempt ends, something is accepted, or the interval passes.
                    self._wake.wait(self.interval_s)
                    self._wake.clear()
            # Stopping: what is in flight ends by its deadline; the pool waits for it as it closes.

    def _attempt(self, job: ClaimedDelivery) -> None:
        try:
            self.service.attempt(job)
        except Exception:
            # Not recorded (the database failed, or the service closed): the claim's lease brings it back.
            log.exception("webhook %s: delivery %s could not be recorded", job.webhook_id, job.delivery_id)
        finally:
            with self._counts:
                self._in_flight -= 1
                self.attempts += 1
            self._wake.set()  # a slot is free

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> AlertsWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AlertsConsumer:
    """Feeds the service from the bus: alert/1 from ALERTS, revocation/1 from REVOCATIONS.

    ``step()`` is one turn of the one consumer loop (``pipeline.bus.checkpoint``): it polls a batch, accepts every
    record (each ``accept_*`` commits to SQLite before it returns), and only then commits the bus offsets:
    at-least-once, made exactly-once by the service's idempotent accepts. A record that fails for a reason of its
    own (it does not parse, its signature fails, it cannot be serialised again, ... any exception but an
    infrastructure fault) goes to the dead-letter topic, is counted, and the batch goes on. An infrastructure fault
    (the disk, the database, a closed service) rewinds the consumer to that record and re-raises, so no good
    record is skipped or parked.
    """

    def __init__(
        self,
        bus: Bus,
        service: AlertsService,
        group: str = DEFAULT_GROUP,
        *,
        max_records: int = 500,
        poll_timeout_s: float = 0.5,
        parse_revocation: Callable[[bytes], Revocation] = Revocation.from_json,
    ) -> None:
        #: How a revocation message is read: a FeedVerifier's ``verify`` when the feed is signed.
        self.parse_revocation = parse_revocation
        self.bus = bus
        self.service = service
        self.group = group
        self.max_records = max_records
        self.poll_timeout_s = poll_timeout_s
        # From the beginning for a new group: accepts are idempotent, and revocations are a compacted feed.
        self.consumer = bus.consumer([ALERTS, REVOCATIONS], group, from_beginning=True)
        self.loop = CheckpointLoop(
            bus,
            self.consumer,
            decode=self._decode,
            sink=self,
            name=group,
            max_records=max_records,
            poll_timeout_s=poll_timeout_s,
            compacted=frozenset({REVOCATIONS}),
        )
        self.accepted = 0
        self.duplicates = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> int:
        """One poll → accept → dead-letter → commit. Returns the number of messages handled."""
        return self.loop.step()

    @property
    def dead_letters(self) -> int:
        return self.loop.dead_letters

    def _decode(self, message: Message) -> Alert | Revocation:
        if message.topic == REVOCATIONS:
            return self.parse_revocation(message.value)
        return Alert.from_json(message.value)

    # The loop's sink: each accept commits to SQLite before it returns (nothing to flush).

    def add(self, record: Alert | Revocation, message: Message) -> None:
        if isinstance(record, Revocation):
            fresh = self.service.accept_revocation(record)
        else:
            fresh = self.service.accept_alert(record)
        if fresh:
            self.accepted += 1
        else:
            self.duplicates += 1

    def flush(self) -> None:
        pass

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                if self._stop.is_set():
                    break
                log.exception("alerts consumer step failed; retrying")
                self._stop.wait(1.0)

    def start(self) -> AlertsConsumer:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name="jwtwatch-alerts-consumer", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.consumer.close()


__all__ = ["DEFAULT_GROUP", "AlertsConsumer", "AlertsWorker", "dead_letter"]
