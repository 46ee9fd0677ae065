"""Run every benchmark and write one ``bench/results.json``, then render ``docs/performance.md`` from it.

    python -m bench [--only NAME[,NAME]] [--quick] [--bootstrap HOST:PORT] [--out FILE] [--doc FILE | --no-doc]

Each benchmark runs as ``python -m bench.<name> ... --out FILE`` in a process of its own (so one benchmark's
memory and threads do not weigh on the next; the validator still runs side by side with bare PyJWT in one
process, as it always has). Its full report goes under ``details.<name>`` of the results file, and when and
how it was measured (date, command, parameters, duration, the load average before, during and after, the git
commit and any uncommitted changes under pipeline/) under ``runs.<name>``. The top-level keys are the figures
issue 7 names (``validator_tokens_per_s``, ``validator_vs_pyjwt``, ``http_validate_rps``,
``http_validate_p99_ms``, ``pipeline_events_per_s``, ``time_to_revoke_p99_s``), derived from those reports,
with the targets, the date, the command and the machine.

``--only`` reruns some benchmarks and merges them into the existing file, keeping the others. The Kafka
benchmark needs a broker: without ``--bootstrap`` a private one is started with scripts/kafka-local just before
it and stopped just after. The HTTP benchmark needs wrk (Debian: ``apt-get install wrk``). A benchmark that
fails (or cannot run) is reported with the end of its output; the others still run and are kept, and the exit
status is 1. ``--quick`` runs tiny sizes, as a smoke test, into bench/results-quick.json by default.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import broker, machine, report, suite

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results.json"
QUICK_OUT = ROOT / "bench" / "results-quick.json"
DEFAULT_DOC = ROOT / "docs" / "performance.md"
#: The libraries whose versions matter to some figure (the machine block of results.json).
LIBRARIES = (
    "PyJWT",
    "cryptography",
    "numpy",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "orjson",
    "kafka-python",
    "crc32c",
    "uvicorn",
    "uvloop",
    "httptools",
    "fastapi",
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class BenchFailed(RuntimeError):
    pass


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def git_state() -> dict[str, Any]:
    """The commit measured, and the uncommitted changes to code that benchmarks run (pipeline/, bench/, models/)."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--", "pipeline", "bench", "models", "scripts"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "uncommitted": None}
    # (the results files are this harness's own output, not code)
    changed = sorted({line[3:] for line in status.stdout.splitlines() if line.strip()} - {"bench/results.json"})
    changed = [path for path in changed if not path.startswith("bench/results-")]
    return {"commit": head.stdout.strip(), "uncommitted": changed}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class LoadSampler:
    """The 1-minute load average every few seconds while a benchmark runs."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.samples: list[float] = []
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(round(os.getloadavg()[0], 2))
            if self._stop.wait(self._every):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        values = self.samples or [round(os.getloadavg()[0], 2)]
        return {"min": min(values), "median": round(statistics.median(values), 2), "max": max(values)}


# ---------------------------------------------------------------------------------------------- running


def _tail(path: Path, lines: int = 20) -> str:
    text = ANSI.sub("", path.read_text(errors="replace")) if path.exists() else ""
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Interrupt a benchmark's process group (SIGINT lets it stop what it started), then kill it."""
    for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_process(
    bench: suite.Bench, argv: list[str], out: Path, log: Path, console: Console, timeout_s: float
) -> dict[str, Any]:
    """Run one benchmark's command with a live status line; its report, or :class:`BenchFailed`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "132"}
    last = [""]
    with open(log, "wb") as sink:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        stdout = proc.stdout
        assert stdout is not None

        def pump() -> None:
            for raw in stdout:
                sink.write(raw)
                sink.flush()
                line = ANSI.sub("", raw.decode(errors="replace")).strip()
                if line.strip("─━═│┃┏┓┗┛┡┩└┘┌┐├┤┬┴┼╇╈╭╮╰╯ -|+"):
                    last[0] = line

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        began = time.monotonic()
        heartbeat = began
        status = console.status("") if console.is_terminal else contextlib.nullcontext()
        try:
            with status as live:
                while proc.poll() is None:
                    elapsed = time.monotonic() - began
                    if elapsed > timeout_s:
                        _stop(proc)
                        raise BenchFailed(f"no result after {timeout_s:.0f} s; stopped it. Its last output:\n"
                                          f"{_tail(log)}\n    (all of it: {log})")  # fmt: skip
                    text = f"[bold]{bench.name}[/bold] {elapsed:5.0f} s · {last[0][:110]}"
                    if live is not None:
                        live.update(text)
                    elif time.monotonic() - heartbeat >= 60:
                        console.print(f"  … {bench.name} {elapsed:.0f} s · {last[0][:110]}", highlight=False)
                        heartbeat = time.monotonic()
                    time.sleep(0.25)
        except BaseException:
            if proc.poll() is None:
                _stop(proc)
            raise
        finally:
            reader.join(timeout=5)
    if proc.returncode != 0:
        raise BenchFailed(f"exited with status {proc.returncode}. Its last output:\n{_tail(log)}\n"
                          f"    (all of it: {log})")  # fmt: skip
    try:
        report_: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        raise BenchFailed(f"wrote no readable report to {out} ({exc}). Its last output:\n{_tail(log)}") from exc
    return report_


def run_bench(
    bench: suite.Bench, quick: bool, workdir: Path, console: Console, bootstrap: str | None, timeout_s: float
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Run one benchmark (with a private broker if it needs one); its report, its run record, its summary."""
    out, log = workdir / f"{bench.name}.json", workdir / f"{bench.name}.log"
    out.unlink(missing_ok=True)
    extra: dict[str, Any] = {}
    broker_info: dict[str, Any] | None = None
    with contextlib.ExitStack() as stack:
        if "kafka" in bench.needs:
            if bootstrap:
                if not broker.reachable(bootstrap):
                    raise BenchFailed(f"the Kafka broker given with --bootstrap ({bootstrap}) accepts no connections")
                broker_info = {"bootstrap": bootstrap, "private": False}
            else:
                started = time.monotonic()
                status = console.status(
                    f"[bold]{bench.name}[/bold] starting a private Kafka broker (scripts/kafka-local)…"
                )
                with status if console.is_terminal else contextlib.nullcontext():
                    address = stack.enter_context(broker.private_broker(workdir / "kafka-broker")).bootstrap
                broker_info = {
                    "bootstrap": address,
                    "private": True,
                    "kafka_version": broker.kafka_version(),
                    "start_s": round(time.monotonic() - started, 1),
                }
            extra["bootstrap"] = broker_info["bootstrap"]
        argv = [sys.executable, "-m", bench.module, *bench.argv(quick, extra), "--out", str(out)]
        run: dict[str, Any] = {
            "measured_at": utc_now(),
            "command": " ".join(["python -m", bench.module, *bench.argv(quick, extra)]),
            "parameters": bench.parameters(quick),
            "quick": quick,
            "git": git_state(),
            # Per run: --only reruns some benchmarks, perhaps on another machine than the others were measured on.
            "machine": machine.environment(*LIBRARIES),
        }
        load_before = load_average()
        began = time.monotonic()
        with LoadSampler() as sampler:
            result = run_process(bench, argv, out, log, console, timeout_s)
        run["duration_s"] = round(time.monotonic() - began, 1)
        run["load_average"] = {"before": load_before, "during_1min": sampler.summary(), "after": load_average()}
        if broker_info is not None:
            run["broker"] = broker_info
    try:
        summary = bench.summary(result)
    except (KeyError, TypeError, ValueError, suite.MissingFigure) as exc:
        raise BenchFailed(f"its report lacks a figure ({exc!r}); report kept in {out}") from exc
    return result, run, summary


# ---------------------------------------------------------------------------------------------- results


def assemble(previous: dict[str, Any], quick: bool, failed: dict[str, Any]) -> dict[str, Any]:
    """results.json: the headline figures first, then targets, date, command, machine, runs and details."""
    details = previous.get("details", {})
    runs = previous.get("runs", {})
    ordered_details = {b.name: details[b.name] for b in suite.BENCHES if b.name in details}
    ordered_runs = {b.name: runs[b.name] for b in suite.BENCHES if b.name in runs}
    results: dict[str, Any] = dict(suite.headline(ordered_details))
    results["targets"] = suite.targets(results)
    results["date"] = utc_now()
    results["command"] = " ".join(["python -m bench", *sys.argv[1:]])
    results["quick"] = quick
    results["machine"] = machine.environment(*LIBRARIES)
    if failed:
        results["failed"] = failed
    results["runs"] = ordered_runs
    results["details"] = ordered_details
    return results


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def parse_only(text: str | None, parser: argparse.ArgumentParser) -> list[suite.Bench]:
    if not text:
        return list(suite.BENCHES)
    names = [n.strip().replace("-", "_") for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in suite.BY_NAME]
    if unknown or not names:
        parser.error(f"--only: unknown benchmark(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(suite.BY_NAME)}")  # fmt: skip
    return [b for b in suite.BENCHES if b.name in names]  # in the suite's order


def headline_table(results: dict[str, Any], console: Console) -> None:
    for figure, t in results["targets"].items():
        measured = "not measured" if t["measured"] is None else f"{t['measured']:,}"
        met = "-" if t["met"] is None else ("[green]met[/green]" if t["met"] else "[red]missed[/red]")
        console.print(f"  {figure:<32} {measured:>12}   target {t['target']:<10} {met}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", metavar="NAME[,NAME]", help=f"run only these ({', '.join(suite.BY_NAME)}), merged "
                        "into the existing results file")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run (default --out "
                        f"{QUICK_OUT.relative_to(ROOT)}, no doc)")  # fmt: skip
    parser.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka broker for the kafka benchmark "
                        "(default: start a private one with scripts/kafka-local)")  # fmt: skip
    parser.add_argument("--out", type=Path, help=f"results file (default {DEFAULT_OUT.relative_to(ROOT)})")
    parser.add_argument("--doc", type=Path, help="render this doc from the results (default: "
                        f"{DEFAULT_DOC.relative_to(ROOT)} when writing {DEFAULT_OUT.relative_to(ROOT)})")  # fmt: skip
    parser.add_argument("--no-doc", action="store_true", help="do not render the doc")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one benchmark may take (default 3600)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and their parameters, and exit")
    args = parser.parse_args(argv)
    selected = parse_only(args.only, parser)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    if args.list:
        for b in suite.BENCHES:
            console.print(f"{b.name:<15} python -m {b.module} {' '.join(b.argv(args.quick))}")
        return 0

    out = (args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)).resolve()
    doc = None
    if not args.no_doc:
        doc = args.doc or (DEFAULT_DOC if out == DEFAULT_OUT.resolve() and not args.quick else None)
    previous: dict[str, Any] = {}
    if out.exists():
        try:
            previous = json.loads(out.read_text())
        except ValueError as exc:
            console.print(f"[red]error:[/red] {out} is not valid JSON ({exc}); move it away or pass another --out")
            return 2
        if previous.get("details") and bool(previous.get("quick")) != args.quick:
            kind = "a --quick run into full results" if args.quick else "a full run into --quick results"
            console.print(f"[red]error:[/red] refusing to merge {kind} ({out}); pass another --out")
            return 2

    problems: dict[str, str] = {}
    for b in selected:
        if "wrk" in b.needs and shutil.which("wrk") is None:
            problems[b.name] = "wrk is not installed (Debian: apt-get install wrk); the HTTP benchmark needs it"
    workdir = Path(tempfile.mkdtemp(prefix="jwtwatch-bench-"))
    console.print(
        f"[bold]python -m bench[/bold]: {', '.join(b.name for b in selected)}{' (quick)' if args.quick else ''} "
        f"→ {out}  · load average {', '.join(map(str, load_average()))} · logs in {workdir}"
    )
    for name, problem in problems.items():
        console.print(f"[yellow]warning:[/yellow] {name} cannot run: {problem}")

    failed: dict[str, Any] = {}
    results = previous
    interrupted = False
    for b in selected:
        began = time.monotonic()
        try:
            if b.name in problems:
                raise BenchFailed(problems[b.name])
            details, run, summary = run_bench(b, args.quick, workdir, console, args.bootstrap, args.timeout)
        except (BenchFailed, broker.BrokerError) as exc:
            failed[b.name] = {"at": utc_now(), "error": str(exc)}
            console.print(f"[red]✗ {b.name:<15}[/red] {time.monotonic() - began:6.1f} s  failed: {exc}")
        except KeyboardInterrupt:
            failed[b.name] = {"at": utc_now(), "error": "interrupted"}
            console.print(f"[red]✗ {b.name:<15} interrupted[/red]")
            interrupted = True
        else:
            results.setdefault("details", {})[b.name] = details
            results.setdefault("runs", {})[b.name] = run
            load = run["load_average"]["during_1min"]
            console.print(
                f"[green]✓ {b.name:<15}[/green] {run['duration_s']:6.1f} s  {summary}  "
                f"[dim](load {load['min']}-{load['max']})[/dim]"
            )
        results = assemble(results, args.quick, failed)
        write_json(out, results)
        if interrupted:
            break

    console.print(f"[bold]{out}[/bold]:")
    headline_table(results, console)
    status = 130 if interrupted else (1 if failed else 0)
    if doc is not None and not interrupted:
        try:
            report.write(results, doc)
            console.print(f"rendered {doc} from {out}")
        except report.ReportError as exc:
            console.print(f"[red]error:[/red] {doc} not rendered: {exc}")
            status = status or 1
    if failed:
        console.print(f"[red]failed:[/red] {', '.join(failed)} (the results of the others are in {out}; "
                      f"logs in {workdir})")  # fmt: skip
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
