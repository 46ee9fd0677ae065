"""The streaming runner: token-usage/1 from the bus → the detection engine → alert/1 on the bus.

At-least-once: a batch's alerts are published and flushed before its offsets are committed. After a
restart the runner first *rebuilds* its windows by re-reading the last window length of the usage topic
(by time): events before the committed offsets only refill the windows — alerts they raise are the
ones already published (same deterministic ids), so they are not published again. Unparseable
messages go to the dead-letter topic with the error and the original bytes; they never stop the runner —
whatever a message makes the decoder raise, it is that message's fault (the rule of
``pipeline.bus.dead_letter``), not the poll's.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path

from pipeline.bus import ALERTS, TOKEN_USAGE, Bus, MessageRun
from pipeline.bus.checkpoint import checkpoint, park
from pipeline.bus.dead_letter import is_infrastructure_fault
from pipeline.detection.batch import EventBatch, Row, decode_rows, row_of
from pipeline.detection.collector import collector_paused
from pipeline.detection.engine import DetectionEngine
from pipeline.detection.history import load_baselines, save_baselines
from pipeline.events import Alert, AlertVerdict, TokenUsage
from pipeline.features.baselines import Baselines
from pipeline.networks import PREFIXES, NetworkResolver
from pipeline.response.verdicts import VerdictFollower
from pipeline.scoring.model import DetectionModel

log = logging.getLogger(__name__)

DEFAULT_GROUP = "jwtwatch-pipeline"


class StreamingRunner:
    def __init__(
        self,
        bus: Bus,
        model: DetectionModel,
        *,
        group: str = DEFAULT_GROUP,
        baselines_path: Path | None = None,
        on_alert: Callable[[Alert], None] | None = None,
        respond: Callable[[Alert], Alert] | None = None,
        max_batch: int = 16384,  # a backlog drains in fewer, larger steps (fewer commits and end-offset queries)
        poll_timeout_s: float = 0.2,
        save_every_s: float = 60.0,
        topic: str = TOKEN_USAGE,
        networks: NetworkResolver = PREFIXES,
    ) -> None:
        """``networks``: which network an address is in (``--ip-db``), else its /16 prefix."""
        self.bus = bus
        self.model = model
        self.baselines_path = Path(baselines_path) if baselines_path else None
        self.engine = DetectionEngine(model, baselines=self._load_baselines(), networks=networks)
        self.on_alert = on_alert
        self.respond = respond
        self.max_batch = max_batch
        self.poll_timeout_s = poll_timeout_s
        self.save_every_s = save_every_s
        self.group = group
        self.consumer = bus.consumer([topic], group, from_beginning=True)
        #: Analysts' verdicts (pipeline.response.verdicts), applied at the start of every step: set by whoever
        #: wires the runner (``follow_verdicts``), read by threads of the follower's own.
        self.verdicts: VerdictFollower | None = None
        self.dead_letters = 0
        self.published = 0
        self._rebuild_until: dict[tuple[str, int], int] = {}
        self._buffers: dict[tuple[str, int], _Pending] = {}
        # Per partition: the offset after the last message taken from a poll, and the last commit made.
        self._handled: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._last_save = time.monotonic()
        self._stop = threading.Event()
        # Entities touched by events processed live while a rebuild is still replaying other partitions.
        self._live_touched: set[tuple[str, str | None]] = set()
        self.rebuilds = 0  # rebuilds after partitions were gained mid-stream
        self.commits_rejected = 0  # commits a rebalance got ahead of (their messages come again)
        self.consumer.positions()  # join the group: the first assignment is reported as gained
        self._follow_assignment()

    def _load_baselines(self) -> Baselines | None:
        if self.baselines_path is None or not self.baselines_path.exists():
            return None
        try:
            return load_baselines(self.baselines_path)
        except (OSError, ValueError) as exc:
            log.warning("baselines in %s unreadable, starting fresh: %s", self.baselines_path, exc)
            return None

    def save_baselines(self) -> None:
        if self.baselines_path is None:
            return
        save_baselines(self.engine.baselines, self.baselines_path)
        self._last_save = time.monotonic()

    def _follow_assignment(self) -> bool:
        """Act on partitions lost or gained since the last look; returns whether a rebuild was started.

        Lost: their buffered events are dropped with their bookkeeping (never commit a partition not owned:
        the new owner goes on from the committed offset). Gained (at start, or another instance left, or the
        group rebalanced): the windows are rebuilt — see :meth:`_rebuild`.
        """
        lost, gained = self.consumer.assignment_changes()
        for tp in lost:
            self._buffers.pop(tp, None)
            self._handled.pop(tp, None)
            self._committed.pop(tp, None)
            self._rebuild_until.pop(tp, None)
        if gained:
            log.info("partitions gained %s, lost %s: rebuilding the windows", sorted(gained), sorted(lost))
            self._rebuild()
            return True
        return False

    def _rebuild(self) -> None:
        """Re-read a window length before the last processed event, to refill the open windows.

        "Last processed" is the newest message before the committed offsets — not the wall clock: a
        pipeline restarted after a long outage must still rebuild the windows it had.

        After partitions were gained mid-stream the whole engine is rebuilt, not just those partitions: its
        watermark is one for all partitions, so a gained partition's last window length, re-read into an
        engine already past it, would be late and dropped. So the engine starts afresh (baselines and hooks
        kept) and every assigned partition is re-read from a window length before its last processed event;
        messages up to what was processed (here, or committed by the previous owner) only refill windows and
        alert episodes.
        """
        processed = {tp: self._processed_offset(tp) for tp in self._handled}
        self._buffers.clear()
        self._handled.clear()
        self._committed.clear()
        self._live_touched.clear()
        committed = self.consumer.committed()
        for tp, offset in processed.items():
            if tp in committed:
                committed[tp] = max(committed[tp], offset)
        if self.engine.stats.batches:
            self._fresh_engine()
        self._rebuild_until = dict(committed)
        probes = {tp: pos - 1 for tp, pos in committed.items() if pos > 0}
        newest: dict[tuple[str, int], int] = {}
        if probes:
            self.consumer.seek(probes)
            deadline = time.monotonic() + 15
            while len(newest) < len(probes) and time.monotonic() < deadline:
                for message in self.consumer.poll(1000, 0.2):
                    tp = (message.topic, message.partition)
                    if probes.get(tp) == message.offset:
                        newest[tp] = message.timestamp_ms
            last_ms = max(newest.values()) if newest else int(time.time() * 1000)
            span_ms = int((self.model.spec.length_s + self.model.spec.grace_s) * 1000)
            # Per partition: a window length before its own last processed message (a partition whose owner
            # lagged has its open windows further back).
            self.consumer.seek_partitions_to_time({tp: newest.get(tp, last_ms) - span_ms for tp in probes})
        # Never skip past what was committed: messages after it were not processed yet.
        sought = self.consumer.positions() if probes else {}
        self.consumer.seek({tp: min(sought.get(tp, pos), pos) for tp, pos in committed.items()})

    def _fresh_engine(self) -> None:
        old = self.engine
        engine = DetectionEngine(
            self.model,
            baselines=old.baselines,
            rescore_s=old.rescore_s,
            confirm_forest=old.confirm_forest,
            networks=old.networks,
        )
        engine.stats = old.stats  # counts go on across rebuilds (events re-read are counted again)
        engine.on_finding, engine.on_scored = old.on_finding, old.on_scored
        engine.suppressions = old.suppressions  # analysts' benign verdicts are not window state
        self.engine = engine
        self.rebuilds += 1

    def _processed_offset(self, tp: tuple[str, int]) -> int:
        """The offset after the last message of ``tp`` processed (what :meth:`_commit` commits)."""
        pending = self._buffers.get(tp)
        offset = pending.offsets[0] if pending else self._handled[tp]
        return max(offset, self._rebuild_until.get(tp, 0))

    def follow_verdicts(
        self, revoke: Callable[[AlertVerdict], object] | None = None, *, background: bool = True
    ) -> VerdictFollower:
        """Read ``jwtwatch.verdicts``: benign ones suppress in this engine, compromised ones go to ``revoke``.

        Every verdict already on the topic is applied before this returns (before any event is scored). Then, with
        ``background`` (always over Kafka), the follower's readers are polled by threads of their own and each
        :meth:`step` applies what they have read (see ``pipeline.response.verdicts``); :meth:`close` stops them.
        Without it (an in-process bus stepped by a test) each step reads the verdicts itself."""
        self.verdicts = VerdictFollower(self.bus, self.engine.suppressions, group=self.group, revoke=revoke)
        self.verdicts.catch_up()
        if background:
            self.verdicts.start()
        return self.verdicts

    def step(self) -> int:
        """One poll → release in event-time order → process → publish → commit. Returns messages polled."""
        if self.verdicts is not None:
            self.verdicts.step()  # in this thread: the engine's suppressions have one owner
        runs = self.consumer.poll_runs(self.max_batch, self.poll_timeout_s)
        with collector_paused():  # the whole batch, decode to commit: see collector_paused
            return self._step(runs)

    def _step(self, runs: list[MessageRun]) -> int:
        if self._follow_assignment():
            return 0  # the rebuild re-positioned every partition: this poll's messages come again
        if runs:
            polled = self._take(runs)
        elif not any(self._buffers.values()):
            # The bus is quiet: score what the current tick has touched rather than wait for the next
            # event to close it (live latency; a replay never gets here mid-stream).
            self._publish(self.engine.flush())
            self._commit()
            return 0
        else:
            polled = 0
        self._release(self._frontier())
        if time.monotonic() - self._last_save > self.save_every_s:
            self.save_baselines()
        return polled

    def _take(self, runs: list[MessageRun]) -> int:
        """Decode a whole poll at once (no object per message) into the partitions' buffers."""
        values = [value for run in runs for value in run.values]
        try:
            rows = decode_rows(values)
        except Exception:
            # The fast decoder is meant to refuse (None), never to raise; if some message makes it raise anyway,
            # that message must not cost the whole poll: decode one by one, and _refused parks the culprits.
            log.exception("the fast decoder raised on a poll of %d messages: decoding them one by one", len(values))
            rows = [_row_or_none(value) for value in values]
        start = 0
        for run in runs:
            tp = (run.topic, run.partition)
            pending = self._buffers.get(tp)
            if pending is None:
                pending = self._buffers[tp] = _Pending()
            stop = start + len(run.values)
            taken = rows[start:stop]
            if None in taken:
                keep = [i for i, row in enumerate(taken) if row is not None or self._refused(run, i, taken)]
                taken, offsets = [taken[i] for i in keep], [run.offsets[i] for i in keep]
            else:
                offsets = run.offsets
            pending.rows.extend(taken)  # type: ignore[arg-type]  # no None is left (see just above)
            pending.offsets.extend(offsets)
            self._handled[tp] = run.offsets[-1] + 1
            start = stop
        return start

    def _refused(self, run: MessageRun, index: int, rows: list[Row | None]) -> bool:
        """A message the fast decoder refused: ``from_json`` gives the exact error for the dead letter.

        Returns whether to keep the row after all (set in ``rows``): only if ``from_json`` accepts it.
        """
        try:
            event = TokenUsage.from_json(run.values[index])
        except Exception as exc:  # RecordError, or anything else this one message makes parsing raise
            if is_infrastructure_fault(exc):
                raise
            offset = run.offsets[index]
            if self._rebuild_until.get((run.topic, run.partition), -1) <= offset:  # parked once, not when re-read
                park(self.bus, run.message(index), exc, consumer=self.group)
                self.dead_letters += 1
            return False
        log.warning("fast decoder refused a message from_json accepts (%s[%d]@%d)", run.topic, run.partition,
                    run.offsets[index])  # fmt: skip
        rows[index] = row_of(event)
        return True

    def _frontier(self) -> float:
        """Events up to this time may be processed: every partition still behind has passed it.

        Partitions are read side by side, but their event times run at different speeds (one token's
        events all sit in one partition). Releasing only what every lagging partition has reached keeps
        the engine in event-time order, so nothing is wrongly late. Every assigned partition counts, also
        one no poll has returned anything from yet: a Kafka poll can hand out one partition's whole fetch
        before the others'. A poll that returned nothing proves nothing either (a fetch still in flight): a
        partition is caught up only when its position is its end offset.
        """
        positions, ends = self.consumer.positions(), self.consumer.end_offsets()
        fronts = []
        for tp, end in ends.items():
            if positions.get(tp, end) < end:
                pending = self._buffers.get(tp)
                fronts.append(pending.rows[-1][0] if pending else float("-inf"))
        return min(fronts, default=float("inf"))

    def _release(self, frontier: float) -> None:
        """Process every buffered event up to ``frontier`` as one batch, in event-time order; commit."""
        ready: list[Row] = []
        replayed: list[bool] = []  # per row of ready, only while a rebuild is under way
        for tp, pending in self._buffers.items():
            rows, offsets = pending.take(frontier)
            if not rows:
                continue
            until = self._rebuild_until.get(tp, -1)
            if offsets[0] < until or replayed:
                replayed.extend([False] * (len(ready) - len(replayed)))
                replayed.extend(offset < until for offset in offsets)
            ready.extend(rows)
        if ready:
            if replayed:
                replayed.extend([False] * (len(ready) - len(replayed)))
                self._process_rebuilding(ready, replayed)
            else:
                ready.sort(key=_EVENT_TIME)  # stable: a partition's events keep their order within a ms
                self._publish(self.engine.process(EventBatch.from_rows(ready)))
        self._commit()

    def _process_rebuilding(self, ready: list[Row], replayed: list[bool]) -> None:
        order = sorted(range(len(ready)), key=lambda i: ready[i][0])
        live = self._live_touched
        for replay, run in itertools.groupby(order, key=replayed.__getitem__):
            rows = [ready[i] for i in run]
            batch = EventBatch.from_rows(rows)
            if replay:
                # Refill windows and open episodes; their alerts were published before the rebuild. But partitions
                # are not all rebuilt up to the same event time (one gained from another instance is behind the
                # others): a tick closed by a replayed event also scores what live events touched in it, and those
                # alerts are new.
                alerts = self.engine.process(batch) + self.engine.flush()
                self._publish([alert for alert in alerts if (alert.entity_type, alert.entity) in live])
                live.clear()  # the flush closed the tick
            else:
                for row in rows:
                    live.update((("jti", row[1]), ("sub", row[2]), ("ip", row[4])))
                self._publish(self.engine.process(batch))

    def _commit(self) -> None:
        """Commit, per partition, up to its first event still held back (else past everything handled).

        Alerts and dead letters are flushed to the bus first: a committed message's effects are durable.
        """
        offsets = {}
        for tp in self._handled:
            # While rebuilding, never commit below what was committed before the restart.
            offset = self._processed_offset(tp)
            if self._committed.get(tp) != offset:
                offsets[tp] = offset
        if not offsets:
            return
        # Alerts and dead letters first (the runner publishes alerts as it goes: the producer is its sink). A
        # rejected commit: a rebalance got there first. The next poll reports the new assignment and the runner
        # rebuilds from what the group has committed (every alert id is deterministic, so none repeats); if the
        # partitions stayed, the next commit carries these offsets again.
        if not checkpoint(self.bus, self.consumer, offsets=offsets, rewind_on_failure=False):
            self.commits_rejected += 1
            return
        self._committed.update(offsets)

    def _publish(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            if self.respond is not None:
                alert = self.respond(alert)
            self.bus.publish(ALERTS, alert.alert_id, alert.to_json())
            self.published += 1
            if self.on_alert is not None:
                self.on_alert(alert)

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            self.save_baselines()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop()
        if self.verdicts is not None:
            self.verdicts.close()  # its threads first (bounded), then its consumers
        self.consumer.close()


def _row_or_none(value: bytes) -> Row | None:
    """One message decoded on its own, the slow way: None for anything ``from_json`` refuses or raises on."""
    try:
        return row_of(TokenUsage.from_json(value))
    except Exception:
        return None


#: A row's event time (its first field), as a sort key in C.
_EVENT_TIME = itemgetter(0)


class _Pending:
    """One partition's decoded events not yet processed, in offset order."""

    __slots__ = ("offsets", "rows")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.offsets: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.rows)

    def take(self, frontier: float) -> tuple[list[Row], list[int]]:
        """The leading events at or before ``frontier`` (a partition is released in offset order)."""
        rows = self.rows
        if not rows or rows[0][0] > frontier:
            return [], []
        count = len(rows)
        if rows[-1][0] > frontier:
            count = next(i for i, row in enumerate(rows) if row[0] > frontier)
        taken, offsets = rows[:count], self.offsets[:count]
        del rows[:count], self.offsets[:count]
        return taken, offsets
