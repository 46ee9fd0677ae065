"""The streaming runner: token-usage/1 from the bus → the detection engine → alert/1 on the bus.

At-least-once: a batch's alerts are published and flushed before its offsets are committed. After a
restart the runner first *rebuilds* its windows by re-reading the last window length of the usage topic
(by time): events before the committed offsets only refill the windows — alerts they raise are the
ones already published (same deterministic ids), so they are not published again. Unparseable
messages go to the dead-letter topic with the error and the original bytes; they never stop the runner.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from pipeline.bus import ALERTS, TOKEN_USAGE, Bus
from pipeline.bus.dead_letter import dead_letter
from pipeline.detection.batch import EventBatch
from pipeline.detection.engine import DetectionEngine
from pipeline.events import Alert, RecordError, TokenUsage, ts_to_epoch_ms
from pipeline.features.baselines import Baselines
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
        max_batch: int = 4096,
        poll_timeout_s: float = 0.2,
        save_every_s: float = 60.0,
    ) -> None:
        self.bus = bus
        self.model = model
        self.baselines_path = Path(baselines_path) if baselines_path else None
        self.engine = DetectionEngine(model, baselines=self._load_baselines())
        self.on_alert = on_alert
        self.respond = respond
        self.max_batch = max_batch
        self.poll_timeout_s = poll_timeout_s
        self.save_every_s = save_every_s
        self.group = group
        self.consumer = bus.consumer([TOKEN_USAGE], group, from_beginning=True)
        self.dead_letters = 0
        self.published = 0
        self._rebuild_until: dict[tuple[str, int], int] = {}
        self._buffers: dict[tuple[str, int], deque[tuple[int, int, bool, TokenUsage]]] = {}
        self._skipped: dict[tuple[str, int], int] = {}  # offsets past dead-lettered messages
        self._last_save = time.monotonic()
        self._stop = threading.Event()
        self._rebuild()

    def _load_baselines(self) -> Baselines | None:
        if self.baselines_path is None or not self.baselines_path.exists():
            return None
        try:
            return Baselines.from_dict(json.loads(self.baselines_path.read_text()))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("baselines in %s unreadable, starting fresh: %s", self.baselines_path, exc)
            return None

    def save_baselines(self) -> None:
        if self.baselines_path is None:
            return
        self.baselines_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.baselines_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.engine.baselines.to_dict()))
        os.replace(tmp, self.baselines_path)
        self._last_save = time.monotonic()

    def _rebuild(self) -> None:
        """Re-read a window length before the last processed event, to refill the open windows.

        "Last processed" is the newest message before the committed offsets — not the wall clock: a
        pipeline restarted after a long outage must still rebuild the windows it had.
        """
        committed = self.consumer.positions()
        if not any(committed.values()):
            return  # a new group: nothing was processed before, nothing to rebuild
        self._rebuild_until = committed
        probes = {tp: pos - 1 for tp, pos in committed.items() if pos > 0}
        self.consumer.seek(probes)
        newest: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + 15
        while len(newest) < len(probes) and time.monotonic() < deadline:
            for message in self.consumer.poll(1000, 0.2):
                tp = (message.topic, message.partition)
                if probes.get(tp) == message.offset:
                    newest[tp] = message.timestamp_ms
        last_ms = max(newest.values()) if newest else int(time.time() * 1000)
        span_ms = int((self.model.spec.length_s + self.model.spec.grace_s) * 1000)
        self.consumer.seek_to_time(last_ms - span_ms)
        # Never skip past what was committed: messages after it were not processed yet.
        sought = self.consumer.positions()
        self.consumer.seek({tp: min(sought.get(tp, pos), pos) for tp, pos in committed.items()})

    def step(self) -> int:
        """One poll → release in event-time order → process → publish → commit. Returns messages polled."""
        messages = self.consumer.poll(self.max_batch, self.poll_timeout_s)
        for message in messages:
            try:
                event = TokenUsage.from_json(message.value)
            except RecordError as exc:
                if self._rebuild_until.get((message.topic, message.partition), -1) <= message.offset:
                    dead_letter(self.bus, message, str(exc), consumer=self.group)
                    self.dead_letters += 1
                self._skipped[(message.topic, message.partition)] = message.offset + 1
                continue
            tp = (message.topic, message.partition)
            until = self._rebuild_until.get(tp)
            replay = until is not None and message.offset < until
            self._buffers.setdefault(tp, deque()).append((ts_to_epoch_ms(event.ts), message.offset, replay, event))
        if not messages and not any(self._buffers.values()):
            # The bus is quiet: score what the current tick has touched rather than wait for the next
            # event to close it (live latency; a replay never gets here mid-stream).
            self._publish(self.engine.flush())
            if self._skipped:
                self.consumer.commit(dict(self._skipped))
                self._skipped.clear()
            return 0
        self._release(self._frontier(quiet=not messages))
        if time.monotonic() - self._last_save > self.save_every_s:
            self.save_baselines()
        return len(messages)

    def _frontier(self, quiet: bool) -> float:
        """Events up to this time may be processed: every partition still behind has passed it.

        Partitions are read side by side, but their event times run at different speeds (one token's
        events all sit in one partition). Releasing only what every lagging partition has reached keeps
        the engine in event-time order, so nothing is wrongly late.
        """
        buffered = {tp: buf for tp, buf in self._buffers.items() if buf}
        if quiet or (len(buffered) <= 1 and not self._lagging(set(self._buffers) - set(buffered))):
            return float("inf")
        positions, ends = self.consumer.positions(), self.consumer.end_offsets()
        lagging = {tp for tp, end in ends.items() if positions.get(tp, end) < end}
        fronts = [buf[-1][0] for tp, buf in buffered.items() if tp in lagging]
        fronts += [float("-inf") for tp in lagging if tp not in buffered]
        return min(fronts) if fronts else float("inf")

    def _lagging(self, partitions: set[tuple[str, int]]) -> bool:
        if not partitions:
            return False
        positions, ends = self.consumer.positions(), self.consumer.end_offsets()
        return any(positions.get(tp, 0) < ends.get(tp, 0) for tp in partitions)

    def _release(self, frontier: float) -> None:
        ready: list[tuple[int, int, bool, TokenUsage, tuple[str, int]]] = []
        for tp, buf in self._buffers.items():
            while buf and buf[0][0] <= frontier:
                ts_ms, offset, replay, event = buf.popleft()
                ready.append((ts_ms, offset, replay, event, tp))
        if not ready:
            return
        ready.sort(key=lambda item: item[0])
        offsets: dict[tuple[str, int], int] = dict(self._skipped)
        self._skipped.clear()
        for replay, run in itertools.groupby(ready, key=lambda item: item[2]):
            items = list(run)
            batch = EventBatch()
            for item in items:
                batch.append(item[3], item[0] / 1000.0)
            if replay:
                # Refill windows and open episodes; their alerts were published before the restart.
                self.engine.process(batch)
                self.engine.flush()
            else:
                self._publish(self.engine.process(batch))
            for _, offset, _, _, tp in items:
                offsets[tp] = max(offsets.get(tp, 0), offset + 1)
        self.bus.flush()
        self.consumer.commit(offsets)

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
        self.consumer.close()
