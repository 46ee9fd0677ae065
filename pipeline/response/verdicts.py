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

from pipeline.bus import VERDICTS, Bus, Message
from pipeline.bus.checkpoint import CheckpointLoop
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
        # Verdicts read (by the reader's thread, once started) and not yet applied (by the owner's thread).
        self._read_verdicts: queue.SimpleQueue[AlertVerdict] = queue.SimpleQueue()
        # A group of its own: the whole topic, every start (see the module docstring).
        self.reader = bus.consumer([VERDICTS], f"{group}-verdicts-{uuid.uuid4()}", from_beginning=True)
        self.actor = bus.consumer([VERDICTS], f"{group}-verdicts", from_beginning=True) if revoke else None
        # The acting reader parks a bad verdict (once); the suppressions' reader re-reads the topic at every start
        # and only logs it.
        compacted = frozenset({VERDICTS})
        self._reading = CheckpointLoop(
            bus,
            self.reader,
            decode=_verdict,
            sink=_Queue(self._read_verdicts),
            name=f"{group}-verdicts-reader",
            max_records=MAX_RECORDS,
            park_bad=False,
            compacted=compacted,
            commits=False,
        )
        self._acting = (
            CheckpointLoop(
                bus,
                self.actor,
                decode=_verdict,
                sink=_Revoker(self),
                name=f"{group}-verdicts",
                max_records=MAX_RECORDS,
                compacted=compacted,
            )
            if self.actor is not None
            else None
        )
        self._loops: list[BackgroundLoop] = []
        self._started = False
        self.applied = 0
        self.revocations = 0

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
        return self._reading.step(timeout_s)

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
        if self._acting is None:
            return 0
        return self._acting.step(timeout_s)

    @property
    def dead_letters(self) -> int:
        """Verdicts the acting reader parked (they do not parse, or their values cannot be revoked)."""
        return self._acting.dead_letters if self._acting is not None else 0

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


def _verdict(message: Message) -> AlertVerdict:
    return AlertVerdict.from_json(message.value)


class _Queue:
    """The suppressions' reader's sink: verdicts are queued for the runner's thread to apply."""

    def __init__(self, verdicts: queue.SimpleQueue[AlertVerdict]) -> None:
        self.verdicts = verdicts

    def add(self, verdict: AlertVerdict, message: Message) -> None:
        self.verdicts.put(verdict)

    def flush(self) -> None:
        pass


class _Revoker:
    """The acting reader's sink: a compromised verdict revokes (the responder publishes; the checkpoint flushes)."""

    def __init__(self, follower: VerdictFollower) -> None:
        self.follower = follower

    def add(self, verdict: AlertVerdict, message: Message) -> None:
        if verdict.verdict == "compromised" and self.follower.revoke is not None:
            self.follower.revoke(verdict)
            self.follower.revocations += 1

    def flush(self) -> None:
        pass


__all__ = ["VerdictFollower"]
