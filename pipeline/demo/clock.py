"""The demo's clock: simulated event time, run faster than the wall clock, never ahead of the traffic.

Minutes of simulated traffic are played in seconds, yet every component must see times that make sense
for that traffic: the validator judges ``exp`` and ``iat`` and stamps usage events with it, the responder
dates revocations with it. So they all read this clock instead of ``time.time``.

It advances ``speed`` times faster than the wall clock from the start of the traffic — but never past
the time of the last request handed out (:meth:`reached`). When the machine cannot keep up, simulated
time slows down instead of requests arriving late, and rates (requests per minute of event time) stay
what the simulation made them.
"""

from __future__ import annotations

import bisect
import threading
import time


class DemoClock:
    def __init__(self, start: float, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.start = start
        self.speed = speed
        self._lock = threading.Lock()
        self._wall0: float | None = None
        self._frontier = start
        self._walls: list[float] = []  # (wall, event time) pairs as the traffic advanced, for wall_at()
        self._times: list[float] = []

    def begin(self) -> None:
        """The traffic starts now (wall clock)."""
        with self._lock:
            self._wall0 = time.monotonic()

    def paced(self) -> float:
        """Where simulated time would be by the wall clock alone."""
        if self._wall0 is None:
            return self.start
        return self.start + (time.monotonic() - self._wall0) * self.speed

    def __call__(self) -> float:
        return min(self.paced(), self._frontier)

    def reached(self, ts: float) -> None:
        """The traffic handed out a request for event time ``ts``: the clock may go that far."""
        with self._lock:
            if ts > self._frontier:
                self._frontier = ts
                self._walls.append(time.monotonic())
                self._times.append(ts)

    def finish(self, end: float) -> None:
        """The traffic is over: let the clock run to ``end`` (the components drain in event time)."""
        self.reached(end)

    def wall_at(self, ts: float) -> float | None:
        """The monotonic wall time at which the clock reached event time ``ts`` (None: not yet)."""
        with self._lock:
            i = bisect.bisect_left(self._times, ts)
            return self._walls[i] if i < len(self._walls) else None

    def wait_until(self, ts: float, stop: threading.Event) -> None:
        """Sleep until paced time reaches ``ts`` (or ``stop`` is set)."""
        while not stop.is_set():
            ahead = (ts - self.paced()) / self.speed
            if ahead <= 0:
                return
            stop.wait(min(ahead, 0.25))
