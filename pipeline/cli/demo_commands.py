"""``jwtwatch demo``: the whole loop in one process on simulated traffic, then a report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from pipeline.cli._options import env
from pipeline.cli._output import console, err, fail

if TYPE_CHECKING:
    from pipeline.demo import DemoRun


def demo(
    minutes: Annotated[
        float, typer.Option(envvar=env("demo_minutes"), help="Minutes of simulated traffic (event time).")
    ] = 8.0,
    speed: Annotated[
        float,
        typer.Option(envvar=env("demo_speed"), help="Event time runs this many times faster than the wall clock."),
    ] = 10.0,
    seed: Annotated[int, typer.Option(envvar=env("demo_seed"), help="Simulation seed (same seed, same traffic).")] = 7,
    users: Annotated[
        int, typer.Option(envvar=env("demo_users"), help="Browser users (plus half as many on mobile).")
    ] = 40,
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir",
            envvar=env("demo_data_dir"),
            help="Where the demo keeps its state and archive; re-made on every run (only if a demo made it).",
        ),
    ] = Path("data/demo"),
    report_dir: Annotated[
        Path | None,
        typer.Option(envvar=env("demo_report_dir"), help="Where the report goes (default: DATA_DIR/report)."),
    ] = None,
    revoke_min_severity: Annotated[
        str, typer.Option(envvar=env("revoke_min_severity"), help="Lowest alert severity that auto-revokes.")
    ] = "high",
    live: Annotated[bool, typer.Option("--live/--no-live", help="The live view (on a terminal).")] = True,
) -> None:
    """The whole loop in one process: simulated services and attackers send real signed tokens through the
    real validator over HTTP; the pipeline scores them, alerts reach a local webhook receiver that verifies
    every signature, auto-revocations come back and the stolen tokens stop working.

    Minutes of traffic play in seconds (--speed). At the end: a summary table, and a report directory with
    index.html, PNG plots, summary.json and the Parquet archive (events, window features, scores, alerts)
    that the notebooks in notebooks/ explore.
    """
    from pipeline.demo import DemoOptions, run_demo
    from pipeline.demo.report import write_report
    from pipeline.errors import DemoError, ModelError
    from pipeline.events import SEVERITIES

    if revoke_min_severity not in SEVERITIES:
        fail(f"--revoke-min-severity must be one of {', '.join(SEVERITIES)}")
    try:
        options = DemoOptions(
            data_dir=data_dir, report_dir=report_dir, minutes=minutes, speed=speed, seed=seed, users=users,
            revoke_min_severity=revoke_min_severity, live=live,
        )  # fmt: skip
        run = run_demo(options, console)
    except DemoError as exc:
        fail(str(exc))
    except ModelError as exc:
        fail(f"the shipped model cannot be used: {exc}")
    except OSError as exc:
        fail(f"{exc} (data dir {data_dir})")
    with console.status("writing the report…"):
        index, figures = write_report(run)
    _print_summary(run, index, figures)


def _print_summary(run: DemoRun, index: Path, figures: dict[str, Any]) -> None:
    from pipeline.demo.report import headline_rows

    table = Table("", "", title="jwtwatch demo", show_header=False)
    for name, value in headline_rows(figures):
        table.add_row(name, str(value))
    console.print(table)
    threats = Table("threat", "incidents", "detected", "median s to detect", title="detection per threat")
    for row in figures["threats"]:
        threats.add_row(
            row["threat"],
            str(row["incidents"]),
            str(row["detected"]),
            "—" if row["median_s"] is None else str(row["median_s"]),
        )
    console.print(threats)
    console.print(f"report: [bold]{index}[/]")
    if not run.drained:
        err.print("[yellow]warning:[/] the pipeline or the outbox had not drained when the demo stopped")
