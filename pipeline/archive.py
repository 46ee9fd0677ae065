"""The Parquet archive: usage events and alerts under the data dir, partitioned by date and hour.

Layout (Hive partitioning, so pandas, pyarrow, DuckDB and Spark read it as is)::

    <data_dir>/archive/events/date=2026-11-28/hour=14/part-<uuid>.parquet
    <data_dir>/archive/alerts/date=2026-11-28/hour=14/part-<uuid>.parquet

Files are written whole to a temporary name and renamed, so a reader never sees half a file. The
:class:`ArchiveConsumer` commits its bus offsets only after the files are on disk: a crash re-archives at
most one batch (consumers de-duplicate on ``event_id`` / ``alert_id``), and loses nothing.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.bus import ALERTS, TOKEN_USAGE, Bus
from pipeline.events import Alert, RecordError, TokenUsage, parse_ts, to_arrow

KINDS = ("events", "alerts")


class ArchiveWriter:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "archive"
        self._pending: dict[str, list[TokenUsage | Alert]] = {kind: [] for kind in KINDS}
        self.written = {kind: 0 for kind in KINDS}

    def add(self, kind: str, records: Sequence[TokenUsage | Alert]) -> None:
        self._pending[kind].extend(records)

    def pending(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def flush(self) -> int:
        """Write everything pending; returns the number of records written."""
        total = 0
        for kind, records in self._pending.items():
            groups: dict[tuple[str, str], list[TokenUsage | Alert]] = defaultdict(list)
            for record in records:
                moment = parse_ts(record.ts)
                groups[(moment.strftime("%Y-%m-%d"), moment.strftime("%H"))].append(record)
            for (date, hour), group in sorted(groups.items()):
                directory = self.root / kind / f"date={date}" / f"hour={hour}"
                directory.mkdir(parents=True, exist_ok=True)
                name = f"part-{uuid.uuid4().hex}.parquet"
                tmp = directory / f".{name}.tmp"
                pq.write_table(to_arrow(group), tmp)  # type: ignore[arg-type]
                os.replace(tmp, directory / name)
                total += len(group)
            self.written[kind] += len(records)
            records.clear()
        return total


def read_archive(data_dir: Path, kind: str = "events") -> pd.DataFrame:
    """One kind of archived record as a DataFrame (with ``date`` and ``hour`` columns), sorted by time."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    root = Path(data_dir) / "archive" / kind
    if not root.exists():
        return pd.DataFrame()
    dataset = ds.dataset(root, format="parquet", partitioning="hive", exclude_invalid_files=True)
    frame = dataset.to_table().to_pandas()
    return frame.sort_values("ts", kind="stable", ignore_index=True) if not frame.empty else frame


class ArchiveConsumer:
    """Archives what passes on the bus: usage events and alerts, flushed in batches."""

    def __init__(
        self,
        bus: Bus,
        writer: ArchiveWriter,
        *,
        group: str = "jwtwatch-archive",
        flush_records: int = 20_000,
        flush_interval_s: float = 10.0,
    ) -> None:
        self.writer = writer
        self.consumer = bus.consumer([TOKEN_USAGE, ALERTS], group, from_beginning=True)
        self.flush_records = flush_records
        self.flush_interval_s = flush_interval_s
        self.skipped = 0
        self._last_flush = time.monotonic()

    def step(self, timeout_s: float = 0.2) -> int:
        messages = self.consumer.poll(5000, timeout_s)
        events, alerts = [], []
        for message in messages:
            try:
                if message.topic == TOKEN_USAGE:
                    events.append(TokenUsage.from_json(message.value))
                else:
                    alerts.append(Alert.from_json(message.value))
            except RecordError:
                self.skipped += 1  # the dead-letter topic is the detection pipeline's job; skip here
        self.writer.add("events", events)
        self.writer.add("alerts", alerts)
        due = time.monotonic() - self._last_flush >= self.flush_interval_s
        if self.writer.pending() >= self.flush_records or (due and self.writer.pending()) or (due and messages):
            self.flush()
        return len(messages)

    def flush(self) -> None:
        self.writer.flush()
        self.consumer.commit()  # only now: the records are on disk
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        self.consumer.close()
