"""A step function run in a daemon thread until stopped — how services drive their bus consumers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class BackgroundLoop:
    """Calls ``step`` until stopped; an exception is logged and the loop goes on (never a dead thread)."""

    def __init__(self, name: str, step: Callable[[], object]) -> None:
        self._stop = threading.Event()
        self._step = step
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                log.exception("%s failed; continuing", self.thread.name)
                self._stop.wait(1.0)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)
