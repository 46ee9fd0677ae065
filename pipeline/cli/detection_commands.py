"""``jwtwatch train`` and ``jwtwatch detect``: the streaming engine offline, on recorded events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pipeline.cli._options import DEFAULT_MODEL_DIR, IpDb, ModelDir, env
from pipeline.cli._output import console, err, fail, failing_on, progress
from pipeline.cli._startup import open_networks
from pipeline.detection.calibration import MIN_BENIGN as MIN_BENIGN_VERDICTS
from pipeline.detection.history import HISTORY_FILE

if TYPE_CHECKING:
    from pipeline.detection.sources import ReadResult
    from pipeline.features.baselines import Baselines
    from pipeline.scoring.model import DetectionModel

SEVERITY_COLUMNS = ("low", "medium", "high", "critical")
TOP_ALERTS = 10


def train(
    events: Annotated[list[Path], typer.Option("--events", help="token-usage/1 files: .jsonl, .jsonl.gz, .parquet")],
    model_dir: Annotated[Path, typer.Option("--model-dir", envvar=env("model_dir"), help="Where to write the model.")],
    seed: Annotated[int, typer.Option(envvar=env("seed"), help="Random seed of the forests.")] = 0,
    target_alert_rate: Annotated[
        float, typer.Option(help="Share of benign entities allowed to alert on held-out baseline traffic.")
    ] = 0.001,
    verdicts: Annotated[
        Path | None,
        typer.Option(
            "--verdicts",
            help="Analysts' verdict/1 records (.jsonl, .jsonl.gz, or a data dir with an archive): report the "
            "precision of past alerts per entity type and rule; with --calibrate, also raise thresholds from them.",
        ),
    ] = None,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="With --verdicts: raise each entity type's threshold just above the alerts the forest alone raised "
            f"and analysts judged benign (at least {MIN_BENIGN_VERDICTS} of them), never above one judged "
            "compromised; their feature rows are scored by the new model. Never lowers a threshold.",
        ),
    ] = False,
    verdict_alerts: Annotated[
        Path | None,
        typer.Option(
            "--verdict-alerts",
            help="The alerts the verdicts judged (alert/1 .jsonl from `jwtwatch detect`, or a data dir with an "
            "archive); default: the --verdicts data dir.",
        ),
    ] = None,
    history: Annotated[
        bool,
        typer.Option(
            "--history/--no-history",
            help=f"Also write what training learned of each subject, client and IP (networks, client families, "
            f"usual volumes) to MODEL_DIR/{HISTORY_FILE}, which `jwtwatch detect` starts from: later traffic of the "
            "same users is then judged against their history, as a running pipeline does. --no-history for a "
            "model shipped to others.",
        ),
    ] = True,
    ip_db: IpDb = None,
) -> None:
    """Train one Isolation Forest per entity type on baseline (attack-free) traffic."""
    from pipeline.detection.training import TrainingParams, train_model
    from pipeline.scoring.model import save_model

    networks = open_networks(ip_db)
    judged = _report_precision(verdicts) if verdicts is not None else []
    judged_alerts = _judged_alerts(verdicts, verdict_alerts) if calibrate else {}
    result = _read(events)
    if result.frame.empty:
        fail("no valid events to train on")
    bar, advance = progress("training", len(result.frame))
    with failing_on(ValueError), bar:
        model, learned = train_model(
            result.frame,
            TrainingParams(seed=seed, target_alert_rate=target_alert_rate),
            progress=advance,
            networks=networks,
        )
    if calibrate:
        _apply_calibration(model, judged, judged_alerts)
    version = save_model(model, model_dir)
    _save_history(learned if history else None, model_dir / HISTORY_FILE)
    table = Table("entity", "windows fitted", "held-out entities", "threshold", title=f"model {version}")
    for entity_type, scorer in model.scorers.items():
        rows = model.metadata["training"]["rows"][entity_type]
        table.add_row(entity_type, str(rows["fit"]), str(rows["entities"]), f"{scorer.threshold_:.4f}")
    console.print(table)
    console.print(f"model written to {model_dir} ({len(result.frame)} events, data sha256 "
                  f"{model.metadata['training']['data_sha256'][:12]}…)")  # fmt: skip


def _judged_alerts(verdicts: Path | None, verdict_alerts: Path | None) -> dict[str, Any]:
    """For --calibrate: the alerts the verdicts judged (--verdict-alerts, else the --verdicts data dir)."""
    if verdicts is None:
        fail("--calibrate needs --verdicts")
    source = verdict_alerts or verdicts
    if not source.is_dir() and verdict_alerts is None:
        fail("--calibrate needs the judged alerts: --verdict-alerts FILE, or --verdicts DATA_DIR with an archive")
    return _read_judged_alerts(source)


def _save_history(learned: Baselines | None, path: Path) -> None:
    """What training learned, for `jwtwatch detect` to start from (None: --no-history)."""
    from pipeline.detection.history import save_baselines

    if learned is not None:
        save_baselines(learned, path)
    else:
        path.unlink(missing_ok=True)  # an older model's history is not this one's


def _report_skipped(path: Path, bad: list[tuple[int, str]], what: str) -> None:
    """The first bad records of a file, by line, and how many were skipped (markup off: records are hostile)."""
    for line, error in bad[:20]:
        err.print(f"  {path}:{line}: {error}", markup=False)
    if bad:
        err.print(f"[yellow]{len(bad)} bad {what} record(s) skipped[/]")


def _read_judged_alerts(path: Path) -> dict[str, Any]:
    from pipeline.detection.precision import read_alert_features

    if not path.exists():
        fail(f"{path}: no such file or directory")
    try:
        alerts, bad = read_alert_features(path)
    except (OSError, ValueError) as exc:
        fail(f"{path}: {exc}")
    _report_skipped(path, bad, "alert")
    return alerts


def _apply_calibration(model: Any, verdicts: list[Any], alerts: dict[str, Any]) -> None:
    """Raise the new model's thresholds from the verdicts (pipeline.detection.calibration), say what moved."""
    from pipeline.detection.calibration import calibrate
    from pipeline.scoring.model import finalize_metadata

    results = calibrate(model, verdicts, alerts)
    table = Table(
        "entity", "benign", "compromised", "threshold", "benign quiet after",
        title="calibration from analysts' verdicts (forest-only alerts)",
    )  # fmt: skip
    for c in results:
        shown = f"{c.threshold_before:.4f}" + (f" → {c.threshold_after:.4f}" if c.moved else " (unchanged)")
        table.add_row(c.entity_type, str(c.benign), str(c.compromised), shown, f"{c.benign_quiet_after}/{c.benign}")
        model.scorers[c.entity_type] = model.scorers[c.entity_type].with_threshold(c.threshold_after)
    console.print(table)
    model.metadata["calibration"] = {
        c.entity_type: {"from": c.threshold_before, "to": c.threshold_after, "benign": c.benign,
                        "compromised": c.compromised}
        for c in results
    }  # fmt: skip
    finalize_metadata(model)


def _report_precision(path: Path) -> list[Any]:
    from pipeline.detection.precision import precision_report, read_verdicts

    if not path.exists():
        fail(f"{path}: no such file or directory")
    try:
        read = read_verdicts(path)
    except (OSError, ValueError) as exc:
        fail(f"{path}: {exc}")
    _report_skipped(path, read.bad, "verdict")
    rows = precision_report(read.verdicts)
    table = Table("alerts", "compromised", "benign", "precision", title="analysts' verdicts on past alerts")
    for row in rows:
        shown = "-" if row.precision is None else f"{row.precision:.2f}"
        table.add_row(row.group, str(row.compromised), str(row.benign), shown)
    console.print(table if rows else f"no verdicts in {path}")
    return read.verdicts


def detect(
    events: Annotated[Path, typer.Option("--events", help="token-usage/1 file: .jsonl, .jsonl.gz, .parquet")],
    alerts_out: Annotated[Path, typer.Option("--alerts-out", help="Write alert/1 JSON lines here.")],
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Also archive the events, window features, scores and alerts as Parquet under DATA_DIR/archive "
            "(partitioned by date and hour; what the notebooks read).",
        ),
    ] = None,
    history: Annotated[
        bool,
        typer.Option(
            "--history/--no-history",
            help=f"Start from the history `jwtwatch train` learned (MODEL_DIR/{HISTORY_FILE}, when there is one): "
            "each subject's known networks and client software, usual volumes. --no-history judges the events "
            "as a fresh deployment would.",
        ),
    ] = True,
    ip_db: IpDb = None,
) -> None:
    """Replay recorded events in event time through the streaming engine; write the alerts."""
    from pipeline.archive import ArchiveWriter, ScoreRecorder
    from pipeline.detection.replay import replay
    from pipeline.errors import ModelError
    from pipeline.networks import identity_warning
    from pipeline.scoring.model import load_model

    with failing_on(ModelError):
        model = load_model(model_dir)
    networks = open_networks(ip_db)
    if warning := identity_warning(model.metadata.get("training", {}).get("network_identity"), networks.source):
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    learned = _learned_history(model_dir / HISTORY_FILE) if history else None
    if learned is None:
        err.print("history: none — every subject starts without known networks or clients")
    result = _read([events])
    archive = ArchiveWriter(data_dir) if data_dir is not None else None
    bar, advance = progress("detecting", len(result.frame))
    started = time.perf_counter()
    with bar:
        recorder = ScoreRecorder(archive, model) if archive is not None else None
        alerts, engine = replay(
            result.frame, model, baselines=learned, progress=advance, on_scored=recorder, networks=networks
        )
    elapsed = time.perf_counter() - started
    alerts_out.parent.mkdir(parents=True, exist_ok=True)
    with open(alerts_out, "wb") as out:
        for alert in alerts:
            out.write(alert.to_json() + b"\n")
    if archive is not None:
        with failing_on(OSError, prefix=f"cannot write the archive under {data_dir}: "), err.status("archiving…"):
            archive.add_event_frame(result.frame)
            archive.add("alerts", alerts)
            archive.flush()
        console.print(f"archive: {', '.join(f'{n} {k}' for k, n in archive.written.items())} under {archive.root}")
    _print_detection(alerts, model, result)
    stats = engine.stats
    console.print(
        f"{stats.events} events ({stats.late_events} late, {len(result.bad)} bad lines) in {elapsed:.1f} s "
        f"({stats.events / max(elapsed, 1e-9):,.0f} events/s); alerts in {alerts_out}"
    )


def _learned_history(path: Path) -> Baselines | None:
    """The history `jwtwatch train` wrote beside the model, if there is one (says which on stderr)."""
    from pipeline.detection.history import load_baselines

    if not path.exists():
        return None
    try:
        learned = load_baselines(path)
    except (OSError, ValueError) as exc:
        fail(f"{path}: not a history written by jwtwatch train ({exc}); --no-history to go without")
    err.print(f"history: {len(learned.subjects):,} subjects learned in training ({path})")
    return learned


def _print_detection(alerts: list[Any], model: DetectionModel, result: ReadResult) -> None:
    table = Table("entity", *SEVERITY_COLUMNS, title=f"{len(alerts)} alerts (model {model.version})")
    for entity_type in ("jti", "sub", "ip"):
        counts = [sum(1 for a in alerts if a.entity_type == entity_type and a.severity == s) for s in SEVERITY_COLUMNS]
        table.add_row(entity_type, *map(str, counts))
    console.print(table)
    if alerts:
        console.print(_top_alerts(alerts))


TOP_ALERTS = 10


def _top_alerts(alerts: list[Any]) -> Table:
    """The most severe alerts, each with its one-line summary (the whole list is in the alerts file)."""
    latest = {alert.alert_id: alert for alert in alerts}  # an escalated alert is listed once, as it ended
    ranked = sorted(latest.values(), key=lambda a: (-SEVERITY_COLUMNS.index(a.severity), -a.score, a.ts, a.alert_id))[
        :TOP_ALERTS
    ]
    table = Table("severity", "type", "summary", title=f"top {len(ranked)} of {len(latest)} alerts")
    for alert in ranked:
        # Markup off: a summary quotes entity names (subjects come from tokens) that must print as they are.
        table.add_row(alert.severity, Text(alert.entity_type), Text(alert.summary or ""))
    return table


def _read(paths: list[Path]) -> ReadResult:
    from pipeline.detection.sources import read_events

    for path in paths:
        if not path.exists():
            fail(f"{path}: no such file")
    try:
        with err.status("reading events…"):
            result = read_events(paths)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    if result.bad:
        err.print(f"[yellow]{len(result.bad)} bad line(s) skipped[/]:")
        for bad in result.bad[:20]:
            err.print(f"  {bad.path}:{bad.line}: {bad.error}", markup=False)
        if len(result.bad) > 20:
            err.print(f"  … and {len(result.bad) - 20} more")
    return result
