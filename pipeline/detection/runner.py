"""The streaming runner: token-usage/1 from the bus → the detection engine → alert/1 on the bus.

At-least-once: a batch's alerts are published and flushed before its offsets are committed. After a
restart the runner first *rebuilds* its windows by re-reading the last window length of the usage topic
(by time): events before the committed offsets only refill the windows — alerts they raise are the
ones already published (same deterministic ids), so they are not published again. Unparseable
messages go to the dead-letter topic with the error and the original bytes; they never stop the runner.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.bus import ALERTS, DEAD_LETTER, TOKEN_USAGE, Bus, Message
from pipeline.detection.batch import EventBatch, micro_batches
from pipeline.detection.engine import DetectionEngine
from pipeline.events import Alert, RecordError, TokenUsage
from pipeline.features.baselines import Baselines
from pipeline.scoring.model import DetectionModel

log = logging.getLogger(__name__)

DEFAULT_GROUP = "jwtwatch-pipeline"


def dead_letter(bus: Bus, message: Message, error: str) -> None:
    record = {
        "error": error[:1000],
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": base64.b64encode(message.key).decode() if message.key is not None else None,
        "original": base64.b64encode(message.value[: 1 << 20]).decode(),
    }
    bus.publish(DEAD_LETTER, message.key, json.dumps(record).encode())


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
        self.consumer = bus.consumer([TOKEN_USAGE], group, from_beginning=True)
        self.dead_letters = 0
        self.published = 0
        self._rebuild_until: dict[tuple[str, int], int] = {}
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
        """Re-read the last window length before the committed offsets, to refill open windows."""
        committed = self.consumer.positions()
        if not any(committed.values()):
            return  # a new group: nothing was processed before, nothing to rebuild
        self._rebuild_until = committed
        self.consumer.seek_to_time(int((time.time() - self.model.spec.length_s - self.model.spec.grace_s) * 1000))
        # Never skip past what was committed: messages after it were not processed yet.
        sought = self.consumer.positions()
        self.consumer.seek({tp: min(sought.get(tp, pos), pos) for tp, pos in committed.items()})

    def step(self) -> int:
        """One poll → process → publish → commit. Returns the number of messages handled."""
        messages = self.consumer.poll(self.max_batch, self.poll_timeout_s)
        if not messages:
            return 0
        replayed, live = EventBatch(), EventBatch()
        for message in messages:
            try:
                event = TokenUsage.from_json(message.value)
            except RecordError as exc:
                if self._rebuild_until.get((message.topic, message.partition), -1) <= message.offset:
                    dead_letter(self.bus, message, str(exc))
                    self.dead_letters += 1
                continue
            until = self._rebuild_until.get((message.topic, message.partition))
            (replayed if until is not None and message.offset < until else live).append(event)
        if replayed:
            for part in micro_batches(replayed):
                self.engine.process(part)  # refills windows and open episodes; its alerts were published
        alerts = [alert for part in micro_batches(live) for alert in self.engine.process(part)] if live else []
        for alert in alerts:
            if self.respond is not None:
                alert = self.respond(alert)
            self.bus.publish(ALERTS, alert.alert_id, alert.to_json())
            self.published += 1
            if self.on_alert is not None:
                self.on_alert(alert)
        self.bus.flush()
        self.consumer.commit()
        if time.monotonic() - self._last_save > self.save_every_s:
            self.save_baselines()
        return len(messages)

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
