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

    def request_stop(self) -> None:
        """Ask the loop to end after its current step, without waiting (stop several loops side by side)."""
        self._stop.set()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """End the loop after its current step and wait for it (bounded); returns whether the thread ended."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=timeout_s)
        return not self.thread.is_alive()
