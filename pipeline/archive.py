"""The Parquet archive: usage events, window features, scores and alerts, partitioned by date and hour.

Layout (Hive partitioning, so pandas, pyarrow, DuckDB and Spark read it as is)::

    <data_dir>/archive/events/date=2026-11-28/hour=14/part-<uuid>.parquet
    <data_dir>/archive/alerts/date=2026-11-28/hour=14/part-<uuid>.parquet
    <data_dir>/archive/verdicts/date=2026-11-28/hour=14/part-<uuid>.parquet
    <data_dir>/archive/scores/date=2026-11-28/hour=14/part-<uuid>.parquet
    <data_dir>/archive/features/entity_type=jti/date=2026-11-28/hour=14/part-<uuid>.parquet

``events``, ``alerts`` and ``verdicts`` are the token-usage/1, alert/1 and verdict/1 records (their Arrow schemas
in :mod:`pipeline.events`; a verdict is partitioned by when it was made, and every verdict is kept — an alert's
verdict is its latest). ``scores`` has one row per scoring of an entity's window: event time, entity type,
entity, score, the model's threshold and the severity the score maps to. ``features`` holds the feature
vector behind each of those scores; its columns differ by entity type (``pipeline.features.FEATURES``),
hence the extra ``entity_type`` partition. Both come from the detection engine's ``on_scored`` observer
(:class:`ScoreRecorder`).

Files are written whole to a temporary name, fsynced and renamed, so a reader never sees half a file. The
:class:`ArchiveConsumer` commits its bus offsets only after the files are on disk: a crash re-archives at
most one batch (consumers de-duplicate on ``event_id`` / ``alert_id``), and loses nothing.

The archive is its owner's only: directories are created 0700 (the root is narrowed to 0700 if it is wider)
and files 0600, whatever the umask — it holds subjects, token ids, addresses and user agents.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.bus import ALERTS, TOKEN_USAGE, VERDICTS, Bus, Message
from pipeline.bus.checkpoint import CheckpointLoop
from pipeline.bus.dead_letter import is_infrastructure_fault
from pipeline.events import ALERT_ARROW, Alert, AlertVerdict, TokenUsage, parse_ts, to_arrow, to_arrow_table
from pipeline.features import FEATURES
from pipeline.files import atomic_file
from pipeline.scoring.model import DetectionModel

log = logging.getLogger(__name__)

KINDS = ("events", "features", "scores", "alerts", "verdicts")
_RECORD_KINDS = ("events", "alerts", "verdicts")
ArchivedRecord = TokenUsage | Alert | AlertVerdict
_TS = pa.timestamp("ms", tz="UTC")

SCORES_ARROW = pa.schema(
    [
        ("ts", _TS),
        ("entity_type", pa.string()),
        ("entity", pa.string()),
        ("score", pa.float64()),
        ("threshold", pa.float64()),
        ("severity", pa.string()),
        ("model_version", pa.string()),
    ]
)


def features_arrow(entity_type: str) -> pa.Schema:
    """The schema of one entity type's feature rows: when, which entity, then one float per feature."""
    return pa.schema(
        [("ts", _TS), ("entity", pa.string()), ("model_version", pa.string())]
        + [(name, pa.float64()) for name in FEATURES[entity_type]]
    )


def _partition(moment: datetime) -> tuple[str, str]:
    return moment.strftime("%Y-%m-%d"), moment.strftime("%H")


class ArchiveWriter:
    """Buffers archive rows and writes them as Parquet files, one per partition and flush. Thread-safe:
    the detection engine adds scores from its thread while an archive consumer flushes from another."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "archive"
        self._lock = threading.Lock()
        self._records: dict[str, list[ArchivedRecord]] = {kind: [] for kind in _RECORD_KINDS}
        self._frames: list[pd.DataFrame] = []
        self._scores: list[dict[str, Any]] = []
        self._features: dict[str, list[dict[str, Any]]] = {t: [] for t in FEATURES}
        self.written = {kind: 0 for kind in KINDS}
        self.unarchivable = 0

    def add(self, kind: str, records: Sequence[ArchivedRecord]) -> None:
        if kind not in _RECORD_KINDS:
            raise ValueError(f"add() takes {_RECORD_KINDS}; scores and features come through add_scored()")
        with self._lock:
            self._records[kind].extend(records)

    def add_event_frame(self, frame: pd.DataFrame) -> None:
        """Usage events as a DataFrame (``ts`` in epoch ms, as read from files): ``jwtwatch detect``'s input,
        archived without turning every row into a record."""
        with self._lock:
            self._frames.append(frame)

    def add_scored(
        self,
        entity_type: str,
        keys: Sequence[str],
        event_times: Sequence[float],
        feature_rows: Sequence[Sequence[float]],
        scores: Sequence[float],
        *,
        model_version: str,
        threshold: float,
        severities: Sequence[str | None],
    ) -> None:
        """One scored batch of one entity type (the engine's ``on_scored`` arguments, plus model facts)."""
        names = FEATURES[entity_type]
        features, scored = [], []
        for key, ts, row, score, severity in zip(keys, event_times, feature_rows, scores, severities, strict=True):
            moment = datetime.fromtimestamp(ts, UTC)
            values = dict(zip(names, row, strict=True))
            features.append({"ts": moment, "entity": key, "model_version": model_version, **values})
            scored.append(
                {
                    "ts": moment,
                    "entity_type": entity_type,
                    "entity": key,
                    "score": score,
                    "threshold": threshold,
                    "severity": severity,
                    "model_version": model_version,
                }
            )
        with self._lock:
            self._features[entity_type].extend(features)
            self._scores.extend(scored)

    def pending(self) -> int:
        with self._lock:
            return (
                sum(len(v) for v in self._records.values())
                + sum(len(f) for f in self._frames)
                + len(self._scores)
                + sum(len(v) for v in self._features.values())
            )

    def flush(self) -> int:
        """Write everything pending; returns the number of rows written."""
        with self._lock:
            records = {kind: rows for kind, rows in self._records.items()}
            self._records = {kind: [] for kind in _RECORD_KINDS}
            frames, self._frames = self._frames, []
            scores, self._scores = self._scores, []
            features = self._features
            self._features = {t: [] for t in FEATURES}
        unwritten_scores, unwritten_features = scores, dict(features)
        total = 0
        try:
            for kind, kept in records.items():
                groups: dict[tuple[str, str], list[ArchivedRecord]] = defaultdict(list)
                for record in kept:
                    groups[_partition(parse_ts(record.ts))].append(record)
                written = 0  # rows Arrow could hold: an unarchivable one is counted there, not here
                for (date, hour), group in sorted(groups.items()):
                    table = self._records_table(group)
                    if table is not None:
                        self._write(self.root / kind, date, hour, table)
                        written += table.num_rows
                total += self._count(kind, written)
            for frame in frames:
                total += self._write_frame(frame)
            total += self._write_rows(self.root / "scores", scores, SCORES_ARROW, "scores")
            unwritten_scores = []
            for entity_type, rows in features.items():
                directory = self.root / "features" / f"entity_type={entity_type}"
                total += self._write_rows(directory, rows, features_arrow(entity_type), "features")
                del unwritten_features[entity_type]
        except BaseException:
            # A failed write (the disk is full): usage events and alerts come again from the bus (the consumer
            # rewinds to its last commit), but scores and features come from the engine only — they wait here
            # for the next flush.
            with self._lock:
                self._scores[:0] = unwritten_scores
                for entity_type, rows in unwritten_features.items():
                    self._features[entity_type][:0] = rows
            raise
        return total

    def _records_table(self, group: list[ArchivedRecord]) -> pa.Table | None:
        """The records as Arrow; one that Arrow cannot hold (an ``iat`` beyond int64 from a foreign producer,
        features orjson cannot write, ...) is left out and counted in ``unarchivable`` — a poison message must
        not fail every flush after it. (The archive consumer has already dead-lettered such records.)"""
        try:
            return to_arrow(group)
        except Exception as exc:
            if is_infrastructure_fault(exc):
                raise
            good: list[ArchivedRecord] = []
            for record in group:
                try:
                    to_arrow([record])
                except Exception as one:
                    if is_infrastructure_fault(one):
                        raise
                    self.unarchivable += 1
                    continue
                good.append(record)
            return to_arrow(good) if good else None

    def _count(self, kind: str, n: int) -> int:
        self.written[kind] += n
        return n

    def _write_frame(self, frame: pd.DataFrame) -> int:
        moments = pd.to_datetime(frame["ts"], unit="ms", utc=True)
        keys = pd.DataFrame({"date": moments.dt.strftime("%Y-%m-%d"), "hour": moments.dt.strftime("%H")})
        for key, index in keys.groupby(["date", "hour"], sort=True).groups.items():
            date, hour = cast("tuple[str, str]", key)
            self._write(self.root / "events", date, hour, to_arrow_table(frame.loc[index]))
        return self._count("events", len(frame))

    def _write_rows(self, directory: Path, rows: list[dict[str, Any]], schema: pa.Schema, kind: str) -> int:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            groups[_partition(row["ts"])].append(row)
        for (date, hour), group in sorted(groups.items()):
            self._write(directory, date, hour, pa.Table.from_pylist(group, schema=schema))
        return self._count(kind, len(rows))

    def _write(self, directory: Path, date: str, hour: str, table: pa.Table) -> None:
        directory = directory / f"date={date}" / f"hour={hour}"
        self._make_dirs(directory)
        # Whole and durable before the consumer commits the offsets of what it holds (a dot file until renamed:
        # readers skip it); 0600 whatever the umask.
        with atomic_file(directory / f"part-{uuid.uuid4().hex}.parquet", 0o600) as sink:
            pq.write_table(table, sink)

    def _make_dirs(self, directory: Path) -> None:
        """``directory`` and every missing parent up to the archive root, each 0700 (``mkdir -p`` would give
        the parents the umask's mode); a root left wider by an older version is narrowed."""
        if not self.root.is_dir():
            self.root.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                self.root.mkdir(mode=0o700)
        if self.root.stat().st_mode & 0o077:
            os.chmod(self.root, 0o700)
        missing = []
        for parent in (directory, *directory.parents):
            if parent == self.root or parent.is_dir():
                break
            missing.append(parent)
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)


class ScoreRecorder:
    """The detection engine's ``on_scored`` observer: every scored window's features and score, archived.

    ``engine.on_scored = ScoreRecorder(writer, model)``. It only buffers; whoever owns the writer flushes
    (the archive consumer on its schedule, ``detect`` and ``demo`` at the end)."""

    def __init__(self, writer: ArchiveWriter, model: DetectionModel) -> None:
        self.writer = writer
        self.model = model

    def __call__(
        self,
        entity_type: str,
        keys: list[str],
        event_times: list[float],
        feature_rows: list[list[float]],
        scores: list[float],
    ) -> None:
        scorer = self.model.scorers[entity_type]
        self.writer.add_scored(
            entity_type,
            keys,
            event_times,
            feature_rows,
            scores,
            model_version=self.model.version,
            threshold=float(scorer.threshold_),
            severities=[scorer.severity(s) for s in scores],
        )


# ------------------------------------------------------------------------------------------ readers


def archive_root(data_dir: Path) -> Path:
    return Path(data_dir) / "archive"


def read_archive(data_dir: Path, kind: str = "events", *, entity_type: str | None = None) -> pd.DataFrame:
    """One kind of archived data as a DataFrame (with ``date`` and ``hour`` columns), sorted by time.

    ``features`` needs ``entity_type`` (``jti``, ``sub`` or ``ip``): each has its own columns. Empty when
    nothing of that kind was archived yet."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    root = archive_root(data_dir) / kind
    if kind == "features":
        if entity_type not in FEATURES:
            raise ValueError(f"features need entity_type, one of {tuple(FEATURES)}")
        root = root / f"entity_type={entity_type}"
    elif entity_type is not None and kind != "scores":
        raise ValueError("entity_type selects features or scores")
    if not root.exists():
        return pd.DataFrame()
    dataset = ds.dataset(root, format="parquet", partitioning="hive", exclude_invalid_files=True)
    if kind == "alerts":
        # The schema is inferred from one file: one written before alert/1 gained an optional field (summary,
        # network_source) would drop that column for every file. Read them all with today's schema (missing
        # columns are null).
        schema = pa.unify_schemas([ALERT_ARROW, dataset.schema])
        dataset = ds.dataset(root, schema=schema, format="parquet", partitioning="hive", exclude_invalid_files=True)
    only = ds.field("entity_type") == entity_type if kind == "scores" and entity_type else None
    table = dataset.to_table(filter=only)
    frame: pd.DataFrame = table.to_pandas()
    return frame.sort_values("ts", kind="stable", ignore_index=True) if not frame.empty else frame


def read_features(data_dir: Path, entity_type: str) -> pd.DataFrame:
    """The archived feature rows of one entity type."""
    return read_archive(data_dir, "features", entity_type=entity_type)


def partitions(data_dir: Path) -> pd.DataFrame:
    """What the archive holds: one row per partition directory with its kind, date, hour, files and bytes."""
    rows = []
    root = archive_root(data_dir)
    for path in sorted(root.glob("*/**/hour=*")):
        files = [f for f in path.glob("*.parquet") if not f.name.startswith(".")]
        relative = path.relative_to(root).parts
        parts = dict(p.split("=", 1) for p in relative[1:])
        rows.append(
            {
                "kind": relative[0],
                "entity_type": parts.get("entity_type"),
                "date": parts["date"],
                "hour": int(parts["hour"]),
                "files": len(files),
                "bytes": sum(f.stat().st_size for f in files),
            }
        )
    return pd.DataFrame(rows, columns=["kind", "entity_type", "date", "hour", "files", "bytes"])


def as_usage_frame(events: pd.DataFrame) -> pd.DataFrame:
    """Archived events in the layout ``jwtwatch train`` and ``detect`` read from files (``ts`` as epoch ms,
    plain strings, nullable ints, no partition columns) — to train or replay on an archive."""
    frame = events.drop(columns=[c for c in ("date", "hour") if c in events])
    ts = pd.to_datetime(frame["ts"], utc=True)
    frame = frame.assign(ts=(ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1))
    for name in ("outcome", "reason"):
        column = frame[name].astype(object)
        frame[name] = column.where(column.notna(), None)
    for name in ("iat", "exp"):
        frame[name] = frame[name].astype("Int64")
    return frame.sort_values("ts", kind="stable", ignore_index=True)


# ------------------------------------------------------------------------------------- bus consumer


class ArchiveConsumer:
    """Archives what passes on the bus: usage events, alerts and analysts' verdicts, flushed in batches.

    Window features and scores do not travel on the bus: give the writer to a :class:`ScoreRecorder` on the
    engine that scores (``runner.engine.on_scored``) and this consumer's flushes write them too.

    One turn of the one consumer loop (``pipeline.bus.checkpoint``) per ``step``; the checkpoint (write the files,
    flush the producer, commit) comes once ``flush_records`` rows are pending or ``flush_interval_s`` has passed.
    Each message is judged on its own: one that cannot be parsed, or parsed but not archived (Arrow cannot hold
    it), is dead-lettered by this consumer too — the detection pipeline and the alerts service park their own
    copies; ``consumer`` in the letter says whose — and counted in ``dead_letters``. If a flush fails (the disk),
    nothing is committed and the consumer rewinds to its last commit: everything since comes again."""

    def __init__(
        self,
        bus: Bus,
        writer: ArchiveWriter,
        *,
        group: str = "jwtwatch-archive",
        flush_records: int = 20_000,
        flush_interval_s: float = 10.0,
    ) -> None:
        self.bus = bus
        self.writer = writer
        self.group = group
        self.consumer = bus.consumer([TOKEN_USAGE, ALERTS, VERDICTS], group, from_beginning=True)
        self.flush_records = flush_records
        self.flush_interval_s = flush_interval_s
        self.loop = CheckpointLoop(
            bus,
            self.consumer,
            decode=_archivable,
            sink=_Archiving(writer),
            name=group,
            max_records=5000,
            compacted=frozenset({VERDICTS}),
            due=self._due,
        )

    def _due(self, read: int, since_s: float) -> bool:
        """Scores and features reach the writer from the engine, not the bus: they count too."""
        pending = self.writer.pending()
        return pending >= self.flush_records or (since_s >= self.flush_interval_s and bool(pending or read))

    @property
    def dead_letters(self) -> int:
        return self.loop.dead_letters

    @property
    def skipped(self) -> int:
        """Messages not archived for a fault of their own (the older name of ``dead_letters``)."""
        return self.dead_letters

    def step(self, timeout_s: float = 0.2) -> int:
        return self.loop.step(timeout_s)

    def flush(self) -> None:
        """Write what is pending, flush the producer, commit (the records are on disk first)."""
        self.loop.checkpoint()

    def close(self) -> None:
        self.flush()
        self.consumer.close()


def _archivable(message: Message) -> ArchivedRecord:
    """The message's record, refused here if Arrow cannot hold it (where the message is still known)."""
    record: ArchivedRecord
    if message.topic == TOKEN_USAGE:
        return TokenUsage.from_json(message.value)
    record = AlertVerdict.from_json(message.value) if message.topic == VERDICTS else Alert.from_json(message.value)
    to_arrow([record])
    return record


class _Archiving:
    """The archive consumer's sink: records wait in the writer until the checkpoint writes them."""

    def __init__(self, writer: ArchiveWriter) -> None:
        self.writer = writer

    def add(self, record: ArchivedRecord, message: Message) -> None:
        kind = "events" if message.topic == TOKEN_USAGE else "verdicts" if message.topic == VERDICTS else "alerts"
        self.writer.add(kind, (record,))

    def flush(self) -> None:
        self.writer.flush()
