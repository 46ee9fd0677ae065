"""A micro-batch of usage events in columns — what the engine consumes, from the bus or from files."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pandas as pd

from pipeline.events import TokenUsage, ts_to_epoch_ms

COLUMNS = ("ts", "jti", "sub", "client_id", "ip", "user_agent", "reason", "iat", "exp")


@dataclass
class EventBatch:
    """Parallel lists, one entry per event; ``ts`` in epoch seconds (float), ``reason`` None = accepted."""

    ts: list[float] = field(default_factory=list)
    jti: list[str | None] = field(default_factory=list)
    sub: list[str | None] = field(default_factory=list)
    client_id: list[str | None] = field(default_factory=list)
    ip: list[str] = field(default_factory=list)
    user_agent: list[str | None] = field(default_factory=list)
    reason: list[str | None] = field(default_factory=list)
    iat: list[int | None] = field(default_factory=list)
    exp: list[int | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)

    def append(self, event: TokenUsage, ts_s: float | None = None) -> None:
        """Add one event; ``ts_s`` saves parsing its timestamp again when the caller already has it."""
        self.ts.append(ts_to_epoch_ms(event.ts) / 1000.0 if ts_s is None else ts_s)
        self.jti.append(event.jti)
        self.sub.append(event.sub)
        self.client_id.append(event.client_id)
        self.ip.append(event.ip)
        self.user_agent.append(event.user_agent)
        self.reason.append(event.reason)
        self.iat.append(event.iat)
        self.exp.append(event.exp)

    @classmethod
    def from_records(cls, records: Iterable[TokenUsage]) -> EventBatch:
        batch = cls()
        for record in records:
            batch.append(record)
        return batch

    def slice(self, start: int, stop: int) -> EventBatch:
        return EventBatch(*(getattr(self, name)[start:stop] for name in COLUMNS))


def _nullable(series: pd.Series) -> list:
    """Column values with every kind of missing (None, NaN, pd.NA) as None."""
    return series.astype(object).where(series.notna(), None).tolist()


def frame_to_batch(frame: pd.DataFrame) -> EventBatch:
    """A DataFrame of token-usage/1 columns (``ts`` as epoch ms, or datetimes) as one batch."""
    ts = frame["ts"]
    if pd.api.types.is_datetime64_any_dtype(ts):
        per_second = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[ts.dt.unit]
        seconds = (ts.astype("int64") / per_second).tolist()
    else:
        seconds = (ts.astype("int64") / 1000.0).tolist()
    return EventBatch(
        ts=seconds,
        jti=_nullable(frame["jti"]),
        sub=_nullable(frame["sub"]),
        client_id=_nullable(frame["client_id"]),
        ip=frame["ip"].astype(str).tolist(),
        user_agent=_nullable(frame["user_agent"]),
        reason=_nullable(frame["reason"]),
        iat=_nullable(frame["iat"]),
        exp=_nullable(frame["exp"]),
    )


def micro_batches(batch: EventBatch, max_events: int = 4096, max_span_s: float = 1.0) -> Iterator[EventBatch]:
    """Cut an event-time-ordered batch into micro-batches of at most ``max_span_s`` of event time."""
    ts = batch.ts
    start = 0
    n = len(ts)
    while start < n:
        stop = min(start + max_events, n)
        limit = ts[start] + max_span_s
        if ts[stop - 1] >= limit:
            lo, hi = start + 1, stop - 1
            while lo < hi:  # first index at or past the span
                mid = (lo + hi) // 2
                if ts[mid] >= limit:
                    hi = mid
                else:
                    lo = mid + 1
            stop = lo
        yield batch.slice(start, stop)
        start = stop
