"""The pipeline's side of analyst verdicts: verdict/1 from ``jwtwatch.verdicts`` into suppressions and revocations.

Two readers of the topic, for two jobs:

* **suppressions** — every pipeline process needs *every* benign verdict (its entities may be any), and needs them
  again after a restart: a reader in a group of its own reads the whole (compacted) topic from the beginning and
  never commits. Expired ones are dropped as they come.
* **revocations** — a ``compromised`` verdict must revoke once, not once per process or per restart: a reader in
  the pipeline's shared group (``<group>-verdicts``) hands each to the responder and commits. A record that does
  not parse is dead-lettered here, once.

Threads. After :meth:`VerdictFollower.start` each reader is polled continuously by a thread of its own, with a
blocking timeout, never by the runner: a Kafka group member has to be polled for its group to settle, and
kafka-python 3.0 completes a JoinGroup/SyncGroup round only while a ``poll`` is waiting for it — a member polled
with timeout 0 between the runner's steps (as it once was) finds the round finished, discards its outcome and
joins again, a new generation at every step, and is never assigned. The reader's thread parses verdicts and queues
them; :meth:`VerdictFollower.step`, called by the streaming runner at the start of each of its steps, in its
thread, applies what is queued — the engine's :class:`~pipeline.response.suppressions.Suppressions` has one owner,
and a verdict read before a step takes effect before that step's events are scored. Compromised verdicts are
revoked on the acting reader's thread: the :class:`~pipeline.response.responder.Responder` is thread-safe.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable

from pipeline.bus import VERDICTS, Bus
from pipeline.bus.base import CommitRejected
from pipeline.bus.dead_letter import dead_letter, describe, is_infrastructure_fault, rewind
from pipeline.events import AlertVerdict, parse_ts
from pipeline.loop import BackgroundLoop
from pipeline.response.suppressions import Suppressions

log = logging.getLogger(__name__)

MAX_RECORDS = 500
#: How long a reader's thread waits in one poll: a stop is noticed within about this long.
POLL_TIMEOUT_S = 0.5
#: How long :meth:`VerdictFollower.close` waits for each reader's thread to end its current poll.
STOP_TIMEOUT_S = 10.0


class VerdictFollower:
    def __init__(
        self,
        bus: Bus,
        suppressions: Suppressions,
        *,
        group: str,
        revoke: Callable[[AlertVerdict], object] | None = None,
        poll_timeout_s: float = POLL_TIMEOUT_S,
    ) -> None:
        """``revoke`` (a :class:`~pipeline.response.responder.Responder`'s ``revoke_for_verdict``) acts on
        ``compromised`` verdicts; without it they only lift an earlier benign verdict's suppression. It is called
        from the acting reader's thread once :meth:`start` was called, so it must be thread-safe."""
        self.bus = bus
        self.suppressions = suppressions
        self.group = group
        self.revoke = revoke
        self.poll_timeout_s = poll_timeout_s
        # A group of its own: the whole topic, every start (see the module docstring).
        self.reader = bus.consumer([VERDICTS], f"{group}-verdicts-{uuid.uuid4()}", from_beginning=True)
        self.actor = bus.consumer([VERDICTS], f"{group}-verdicts", from_beginning=True) if revoke else None
        # Verdicts read (by the reader's thread, once started) and not yet applied (by the owner's thread).
        self._read_verdicts: queue.SimpleQueue[AlertVerdict] = queue.SimpleQueue()
        self._loops: list[BackgroundLoop] = []
        self._started = False
        self.applied = 0
        self.revocations = 0
        self.dead_letters = 0

    def catch_up(self, timeout_s: float = 15.0) -> int:
        """Read and apply every verdict already on the topic — at start, on the thread that owns the suppressions,
        before :meth:`start` and before the first events are scored. Returns how many were applied."""
        deadline = time.monotonic() + timeout_s
        self.read(1.0)
        while time.monotonic() < deadline:
            positions, ends = self.reader.positions(), self.reader.end_offsets()
            if ends and all(positions.get(tp, 0) >= end for tp, end in ends.items()):
                break
            self.read(0.2)
        return self.apply()

    def start(self) -> None:
        """Poll each reader continuously from now on, each in a thread of its own (see the module docstring)."""
        if self._started:
            return
        self._started = True
        self._loops = [BackgroundLoop("verdicts-suppressions", lambda: self.read(self.poll_timeout_s))]
        if self.actor is not None:
            self._loops.append(BackgroundLoop("verdicts-revocations", lambda: self.act(self.poll_timeout_s)))
        for loop in self._loops:
            loop.start()

    @property
    def started(self) -> bool:
        """Whether the readers are polled by threads of their own (:meth:`start`; also once stopped)."""
        return self._started

    def step(self) -> int:
        """On the thread that owns the suppressions (the runner's, at the start of each step): apply the verdicts
        read since the last call. Returns how many were applied.

        Not started (no threads: the in-process bus, stepped by a test) it first reads and acts itself, without
        waiting — never do that with a Kafka bus (see the module docstring)."""
        if not self._started:
            self.read(0.0)
            self.act(0.0)
        return self.apply()

    def read(self, timeout_s: float) -> int:
        """Poll the suppressions' reader once and queue the verdicts for :meth:`apply`; returns messages read."""
        messages = self.reader.poll(MAX_RECORDS, timeout_s)
        for index, message in enumerate(messages):
            if not message.value:
                continue  # a tombstone: nothing to apply
            try:
                verdict = AlertVerdict.from_json(message.value)
            except Exception as exc:
                if is_infrastructure_fault(exc):
                    rewind(self.reader, messages[index:])  # not read: they come again
                    raise
                # The acting reader dead-letters it (once); this one re-reads the topic at every start.
                log.warning("verdict at %s[%d]@%d ignored: %s", message.topic, message.partition, message.offset,
                            describe(exc))  # fmt: skip
                continue
            self._read_verdicts.put(verdict)
        return len(messages)

    def apply(self) -> int:
        """Apply the queued verdicts to the suppressions, in the order read; returns how many."""
        applied = 0
        while True:
            try:
                verdict = self._read_verdicts.get_nowait()
            except queue.Empty:
                break
            until = parse_ts(verdict.suppress_until).timestamp() if verdict.suppress_until else None
            self.suppressions.judge(
                alert_id=verdict.alert_id,
                verdict=verdict.verdict,
                entity_type=verdict.entity_type,
                entity=verdict.entity,
                rules=verdict.rules,
                severity=verdict.severity,
                until=until,
            )
            applied += 1
        self.applied += applied
        return applied

    def act(self, timeout_s: float) -> int:
        """Poll the acting reader once: revoke for each compromised verdict, then commit; returns messages read."""
        if self.actor is None or self.revoke is None:
            return 0
        messages = self.actor.poll(MAX_RECORDS, timeout_s)
        if not messages:
            return 0
        try:
            for message in messages:
                if not message.value:
                    continue
                try:
                    verdict = AlertVerdict.from_json(message.value)
                    if verdict.verdict == "compromised":
                        self.revoke(verdict)
                        self.revocations += 1
                except Exception as exc:
                    if is_infrastructure_fault(exc):
                        raise
                    # Its own fault (it does not parse, its values cannot be revoked): parked, the rest go on.
                    dead_letter(self.bus, message, describe(exc), consumer=f"{self.group}-verdicts")
                    self.dead_letters += 1
            self.bus.flush()  # revocations and dead letters are stored before the offsets are committed
        except Exception:
            rewind(self.actor, messages)
            raise
        try:
            self.actor.commit()
        except CommitRejected as exc:
            # The group rebalanced first: whoever owns the partition now reads these verdicts again and revokes
            # once more — the same revocations, harmless (at-least-once).
            log.warning("verdicts: commit rejected, the group rebalanced: %s", exc)
        return len(messages)

    @property
    def pending(self) -> int:
        """Verdicts read and not applied yet (the runner applies them at its next step)."""
        return self._read_verdicts.qsize()

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The readers' threads (none before :meth:`start`)."""
        return tuple(loop.thread for loop in self._loops)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """End the readers' threads after their current poll (bounded wait); returns whether they all ended."""
        for loop in self._loops:
            loop.request_stop()
        deadline = time.monotonic() + timeout_s
        ended = True
        for loop in self._loops:
            if not loop.stop(max(0.0, deadline - time.monotonic())):
                log.warning("%s did not end within %g s; closing its consumer under it", loop.thread.name, timeout_s)
                ended = False
        return ended

    def close(self) -> None:
        """Stop the threads (bounded), then close both readers (leaving their groups)."""
        self.stop()
        self.reader.close()
        if self.actor is not None:
            self.actor.close()


__all__ = ["VerdictFollower"]
