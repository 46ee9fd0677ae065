"""Detection pipeline throughput and memory: ``detect`` end to end, the streaming runner, bytes per entity.

A benchmark, not a timed test. Run from the repository root::

    .venv/bin/python -m bench.pipeline [--minutes M] [--scale S] [--train-minutes T] [--partitions P]
                                       [--profile] [--json] [--out FILE]

Everything runs in one process. Outside the timed regions:

1. baseline traffic (``pipeline.simulate``, no threats, seed 0, ``T`` minutes at the simulator's default
   population) trains a model with ``train_model`` (default parameters); the model is saved and loaded
   back, as ``jwtwatch detect`` gets it;
2. an evaluation stream with every threat injected (seed 1, ``M`` minutes, every population knob —
   browsers, mobile users, services, office NATs — multiplied by ``S``, so each entity behaves as the
   model was trained to expect and only the number of entities grows) is written to a ``.jsonl`` and a
   ``.parquet`` file in a temporary directory.

Then it measures:

* **detect, end to end** — ``read_events`` on the file, then ``replay`` of the frame (exactly what
  ``jwtwatch detect`` does, minus writing the alert file); read and replay are timed separately;
* **streaming runner** — every event is published beforehand as ``TokenUsage.to_json`` bytes to a
  ``MemoryBus`` (``P`` usage partitions, default 1; retention above the event count), then
  ``StreamingRunner.step()`` is timed until every event is processed: poll, parse, engine, publish alerts,
  commit (time inside ``consumer.poll`` is reported too);
* **memory per active entity** — a fresh engine replays the first half of the stream under
  ``tracemalloc`` (every micro-batch re-materialised from JSON first, so strings and floats the engine
  keeps are allocated inside the traced region, as when the runner parses messages). The engine state
  (windows, baselines, alert tracker) is the traced memory released when the engine is dropped,
  divided by ``engine.active_entities()`` at that point.

Time is measured with ``time.perf_counter`` (process CPU time and time in the garbage collector alongside);
each timed region starts after a ``gc.collect()``. Results: docs/performance.md, "Detection pipeline".
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console, JustifyMethod
from rich.table import Table

import pipeline
from bench import machine
from pipeline.bus import TOKEN_USAGE, default_topics
from pipeline.bus.memory import MemoryBus
from pipeline.detection.batch import COLUMNS, EventBatch, frame_to_batch, micro_batches
from pipeline.detection.engine import DetectionEngine
from pipeline.detection.replay import replay
from pipeline.detection.runner import StreamingRunner
from pipeline.detection.sources import read_events
from pipeline.detection.training import train_model
from pipeline.scoring.model import DetectionModel, load_model, save_model
from pipeline.simulate import SimulationParams, iter_records, simulate
from pipeline.simulate.io import write_events

TARGET_EVENTS_PER_S = 100_000
TARGET_BYTES_PER_ENTITY = 1024
TRAIN_SEED = 0
EVAL_SEED = 1
# replay()'s defaults: the memory pass cuts the stream the same way.
REPLAY_BATCH_EVENTS = 8192
REPLAY_BATCH_SPAN_S = 5.0
PROFILE_TOP = 15


# ------------------------------------------------------------------------------------------ fixtures


def eval_params(minutes: float, scale: float) -> SimulationParams:
    """The default simulation with every population knob times ``scale`` (threats as default)."""
    base = SimulationParams()
    return dataclasses.replace(
        base,
        minutes=minutes,
        seed=EVAL_SEED,
        browsers=max(1, round(base.browsers * scale)),
        mobile=max(1, round(base.mobile * scale)),
        services=max(1, round(base.services * scale)),
        offices=max(1, round(base.offices * scale)),
    )


def train(minutes: float, directory: Path) -> tuple[DetectionModel, dict[str, Any]]:
    began = time.perf_counter()
    baseline = simulate(SimulationParams(minutes=minutes, seed=TRAIN_SEED, threats=()))
    model, _ = train_model(baseline.events)
    save_model(model, directory)
    loaded = load_model(directory)  # as `jwtwatch detect` gets it
    return loaded, {
        "events": len(baseline.events),
        "minutes": minutes,
        "seed": TRAIN_SEED,
        "model_version": loaded.version,
        "seconds": round(time.perf_counter() - began, 1),
    }


# ------------------------------------------------------------------------------------- measurements


def rate(events: int, seconds: float) -> int:
    return round(events / seconds) if seconds > 0 else 0


class Clock:
    """Wall time, this process's CPU time, and time spent in the cyclic garbage collector."""

    def __init__(self) -> None:
        self.gc_s = 0.0
        self._gc_start = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_s += time.perf_counter() - self._gc_start

    def __enter__(self) -> Clock:
        gc.collect()
        gc.callbacks.append(self._on_gc)
        self.wall = time.perf_counter()
        self.cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        gc.callbacks.remove(self._on_gc)


def measure_detect(path: Path, model: DetectionModel) -> tuple[dict[str, Any], Any]:
    """``jwtwatch detect`` without writing alerts: read_events + replay, timed separately. Also the frame."""
    with Clock() as reading:
        result = read_events([path])
    with Clock() as replaying:
        alerts, engine = replay(result.frame, model)
    events = len(result.frame)
    read_s, replay_s = reading.wall, replaying.wall
    return {
        "file": path.name,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "events": events,
        "bad_lines": len(result.bad),
        "late_events": engine.stats.late_events,
        "alerts": len(alerts),
        "read_s": round(read_s, 2),
        "read_cpu_s": round(reading.cpu, 2),
        "replay_s": round(replay_s, 2),
        "replay_cpu_s": round(replaying.cpu, 2),
        "replay_gc_s": round(replaying.gc_s, 2),
        "total_s": round(read_s + replay_s, 2),
        "read_events_per_s": rate(events, read_s),
        "replay_events_per_s": rate(events, replay_s),
        "events_per_s": rate(events, read_s + replay_s),
    }, result.frame


def wire_messages(jsonl: Path, events: Any) -> tuple[tuple[str, bytes], ...]:
    """(bus key, value) per event: the lines of the ``.jsonl`` file, which ``write_events`` writes exactly as
    ``TokenUsage.to_json`` does (checked on samples here) — the same bytes as publishing
    ``record.to_json()`` for every record of ``iter_records``, at a fraction of the set-up time."""
    lines = jsonl.read_bytes().splitlines()
    if len(lines) != len(events):
        raise RuntimeError(f"{jsonl}: {len(lines)} lines for {len(events)} events")
    for lo in (0, len(events) // 2, max(0, len(events) - 1000)):
        for i, record in enumerate(iter_records(events.iloc[lo : lo + 1000]), start=lo):
            if record.to_json() != lines[i] or record.bus_key != (record.jti or record.ip):
                raise RuntimeError(f"line {i + 1} of {jsonl} is not TokenUsage.to_json of its record")
    keys = events["jti"].where(events["jti"].notna(), events["ip"]).tolist()
    # A tuple of (str, bytes) tuples, which the garbage collector stops tracking: a list of a million
    # entries would be traversed by every full collection in the timed region.
    return tuple(zip(keys, lines, strict=True))


def measure_runner(messages: Sequence[tuple[str, bytes]], model: DetectionModel, partitions: int) -> dict[str, Any]:
    """Pre-publish every event, then time ``StreamingRunner.step()`` until the backlog is processed.

    ``partitions`` of the usage topic: 1 by default, because a runner that releases each poll as it comes
    sees a pre-filled multi-partition backlog partition by partition, and every partition after the first
    then lands behind the watermark (late, dropped) — see ``late_events``.
    """
    events = len(messages)
    topics = [dataclasses.replace(t, partitions=partitions) if t.name == TOKEN_USAGE else t for t in default_topics()]
    bus = MemoryBus(topics, retention=events + 1)
    began = time.perf_counter()
    publish = bus.publish
    for key, value in messages:
        publish(TOKEN_USAGE, key, value)
    publish_s = time.perf_counter() - began
    # No waiting on an empty poll: the backlog is all there, and the drain ends with one empty poll.
    runner = StreamingRunner(bus, model, poll_timeout_s=0.0)
    engine = runner.engine
    consumer = runner.consumer
    polling = [0.0]
    poll = consumer.poll

    def timed_poll(max_records: int = 500, timeout_s: float = 1.0) -> list[Any]:
        start = time.perf_counter()
        try:
            return poll(max_records, timeout_s)
        finally:
            polling[0] += time.perf_counter() - start

    consumer.poll = timed_poll  # type: ignore[method-assign]  # instrumented for this benchmark only
    step = runner.step
    stats = engine.stats
    steps = peak = idle = 0
    with Clock() as clock:
        while stats.events + stats.late_events < events:
            if step():
                idle = 0
            else:
                idle += 1
                if idle > 3:
                    raise RuntimeError(f"runner stalled: {stats.events + stats.late_events} of {events} processed")
            steps += 1
            active = engine.active_entities()
            if active > peak:
                peak = active
        step()  # the bus is quiet: a runner may score what it still holds
    runner.close()
    bus.close()
    rest = clock.wall - polling[0]
    handled = stats.events + stats.late_events
    return {
        "events": handled,
        "partitions": partitions,
        "steps": steps,
        "max_batch": runner.max_batch,
        "late_events": stats.late_events,
        "dead_letters": runner.dead_letters,
        "alerts_published": runner.published,
        "prepublish_s": round(publish_s, 1),
        "seconds": round(clock.wall, 2),
        "cpu_s": round(clock.cpu, 2),
        "gc_s": round(clock.gc_s, 2),
        "poll_s": round(polling[0], 2),
        "events_per_s": rate(handled, clock.wall),
        "events_per_s_excluding_poll": rate(handled, rest),
        "peak_active_entities": peak,
    }


def _fresh(batch: EventBatch) -> EventBatch:
    """The batch with newly allocated strings and floats, as if just parsed from the bus."""
    return EventBatch(*(orjson.loads(orjson.dumps(getattr(batch, name))) for name in COLUMNS))


def _area(filename: str) -> str:
    name = filename.replace(os.sep, "/")
    if "pipeline/windows" in name:
        return "windows"
    if "pipeline/features/baselines" in name:
        return "baselines"
    if "pipeline/response" in name:
        return "alert tracker"
    if "pipeline/detection/engine" in name:
        return "window fields set by the engine (floats)"
    if name.endswith("bench/pipeline.py"):
        return "keys and times (parsed strings, floats)"
    return "other"


def measure_memory(frame: Any, model: DetectionModel) -> dict[str, Any]:
    """Engine state after replaying the first half of the stream, per active entity (tracemalloc)."""
    batches = list(micro_batches(frame_to_batch(frame), REPLAY_BATCH_EVENTS, REPLAY_BATCH_SPAN_S))
    half = len(frame) // 2
    gc.collect()
    tracemalloc.start()
    engine = DetectionEngine(model)
    processed = peak = 0
    for batch in batches:
        if processed >= half:
            break
        engine.process(_fresh(batch))  # alerts dropped: only the engine's own state is measured
        processed += len(batch)
        peak = max(peak, engine.active_entities())
    del batches
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    snapshot = tracemalloc.take_snapshot()
    active = engine.active_entities()
    per_type = {entity_type: len(store) for entity_type, store in engine.stores.items()}
    baselines = {"subjects": len(engine.baselines.subjects), "ips": len(engine.baselines.ips)}
    open_episodes = len(engine.tracker.open)
    del engine
    gc.collect()
    state = held - tracemalloc.get_traced_memory()[0]  # what dropping the engine gives back
    tracemalloc.stop()
    areas: dict[str, int] = {}
    for stat in snapshot.statistics("filename"):
        area = _area(stat.traceback[0].filename)
        areas[area] = areas.get(area, 0) + stat.size
    return {
        "events_replayed": processed,
        "active_entities": active,
        "active_by_type": per_type,
        "peak_active_entities_first_half": peak,
        "baseline_entries": baselines,
        "open_episodes": open_episodes,
        "engine_state_bytes": state,
        "retained_bytes": sum(areas.values()),
        "retained_by_area": dict(sorted(areas.items(), key=lambda kv: -kv[1])),
        "bytes_per_entity": round(state / active) if active else 0,
    }


def profile_replay(frame: Any, model: DetectionModel, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    replay(frame, model)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# ------------------------------------------------------------------------------------------- report


def git_state() -> dict[str, Any]:
    """The commit measured, and whether pipeline/ had uncommitted changes at the time."""
    root = Path(pipeline.__file__).resolve().parent.parent  # the checkout whose pipeline/ was imported
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "pipeline"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "pipeline_dirty": None}
    return {"commit": head.stdout.strip(), "pipeline_dirty": bool(dirty.stdout.strip())}


LIBRARIES = ("numpy", "scikit-learn", "pandas", "pyarrow", "orjson")


def environment() -> dict[str, Any]:
    return {**git_state(), **machine.environment(*LIBRARIES)}


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of the table: (figure, value, detail, target, met)."""
    rows: list[dict[str, Any]] = []

    def row(figure: str, value: str, detail: str, target: str | None, met: bool | None) -> None:
        rows.append({"figure": figure, "value": value, "detail": detail, "target": target, "met": met})

    for fmt in ("jsonl", "parquet"):
        d = results["detect"][fmt]
        ok = d["events_per_s"] >= TARGET_EVENTS_PER_S
        row(f"detect .{fmt}, end to end", f"{d['events_per_s']:,} ev/s",
            f"{d['events']:,} events in {d['total_s']} s", f">= {TARGET_EVENTS_PER_S:,} ev/s", ok)  # fmt: skip
        row(f"  read_events .{fmt}", f"{d['read_events_per_s']:,} ev/s",
            f"{d['read_s']} s wall, {d['read_cpu_s']} s CPU ({d['file_mb']} MB)", None, None)  # fmt: skip
        row("  replay", f"{d['replay_events_per_s']:,} ev/s",
            f"{d['replay_s']} s wall, {d['replay_cpu_s']} s CPU, {d['alerts']} alerts", None, None)  # fmt: skip
    r = results["runner"]
    late = f", {r['late_events']:,} late" if r["late_events"] else ""
    row("streaming runner, in-process bus", f"{r['events_per_s']:,} ev/s",
        f"{r['events']:,} events in {r['seconds']} s, {r['alerts_published']} alerts{late}",
        f">= {TARGET_EVENTS_PER_S:,} ev/s", r["events_per_s"] >= TARGET_EVENTS_PER_S)  # fmt: skip
    row("  excluding MemoryConsumer.poll", f"{r['events_per_s_excluding_poll']:,} ev/s",
        f"poll took {r['poll_s']} s of the {r['seconds']} s", None, None)  # fmt: skip
    m = results["memory"]
    row("memory per active entity", f"{m['bytes_per_entity']:,} B",
        f"{m['engine_state_bytes'] / 2**20:.1f} MiB / {m['active_entities']:,} entities (mid-stream)",
        f"<= {TARGET_BYTES_PER_ENTITY:,} B", m["bytes_per_entity"] <= TARGET_BYTES_PER_ENTITY)  # fmt: skip
    row("peak active entities", f"{r['peak_active_entities']:,}", "jti + sub + ip, over the whole stream", None, None)
    return rows


def render(results: dict[str, Any], env: dict[str, Any], console: Console) -> None:
    e = results["parameters"]
    table = Table(
        title=f"jwtwatch detection pipeline, one process ({results['eval']['events']:,} events, "
        f"{e['minutes']:g} min x{e['scale']:g} population)"
    )
    columns: list[tuple[str, JustifyMethod]] = [
        ("figure", "left"), ("value", "right"), ("detail", "left"), ("target", "right"), ("met", "left")
    ]  # fmt: skip
    for column, justify in columns:
        table.add_column(column, justify=justify)
    for f in results["figures"]:
        met = "-" if f["met"] is None else ("yes" if f["met"] else "NO")
        table.add_row(f["figure"], f["value"], f["detail"], f["target"] or "-", met)
    console.print(table)
    console.print(machine.machine_line(env, *LIBRARIES))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="simulated minutes to evaluate (default 30)")
    parser.add_argument("--scale", type=float, default=3.0, help="population multiplier (default 3)")
    parser.add_argument("--train-minutes", type=float, default=30.0, help="baseline minutes to train on (default 30)")
    parser.add_argument("--partitions", type=int, default=1, help="partitions of the usage topic (default 1)")
    parser.add_argument("--profile", action="store_true", help=f"also cProfile one replay (top {PROFILE_TOP})")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout (table on stderr)")
    parser.add_argument("--out", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.scale <= 0 or args.train_minutes <= 0 or args.partitions < 1:
        parser.error("--minutes, --scale, --train-minutes and --partitions must be positive")

    stream = sys.stderr if args.json else sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 132)
    log = Console(stderr=True)
    began = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    parameters = {"minutes": args.minutes, "scale": args.scale, "train_minutes": args.train_minutes}
    results: dict[str, Any] = {"parameters": {**parameters, "partitions": args.partitions}}

    with tempfile.TemporaryDirectory(prefix="jwtwatch-bench-") as tmp:
        workdir = Path(tmp)
        log.print(f"[dim]training on {args.train_minutes:g} min of baseline traffic...[/dim]")
        model, results["training"] = train(args.train_minutes, workdir / "model")

        log.print("[dim]simulating the evaluation stream and writing .jsonl and .parquet...[/dim]")
        params = eval_params(args.minutes, args.scale)
        sim = simulate(params)
        paths = {fmt: workdir / f"events.{fmt}" for fmt in ("jsonl", "parquet")}
        for path in paths.values():
            write_events(sim, path)
        results["eval"] = {
            "events": len(sim.events),
            "incidents": len(sim.incidents),
            "seed": params.seed,
            "minutes": params.minutes,
            "browsers": params.browsers,
            "mobile": params.mobile,
            "services": params.services,
            "offices": params.offices,
        }

        results["detect"] = {}
        frame = None
        for fmt, path in paths.items():
            log.print(f"[dim]detect .{fmt}: read_events + replay...[/dim]")
            frame = None  # let the previous frame go before reading the next file
            results["detect"][fmt], frame = measure_detect(path, model)

        log.print("[dim]memory: half the stream under tracemalloc...[/dim]")
        results["memory"] = measure_memory(frame, model)
        if args.profile:
            log.print("[dim]profiling one replay...[/dim]")
            results["profile"] = profile_replay(frame, model, PROFILE_TOP)
        del frame

        log.print("[dim]streaming runner: pre-publishing, then draining the backlog...[/dim]")
        messages = wire_messages(paths["jsonl"], sim.events)
        del sim
        results["runner"] = measure_runner(messages, model, args.partitions)
        del messages

    env = environment()
    env["load_average_start_end"] = [load_start, round(os.getloadavg()[0], 2)]
    results["figures"] = figures(results)
    report = {
        "benchmark": "pipeline",
        "command": " ".join(["python -m bench.pipeline", *(sys.argv[1:] if argv is None else argv)]),
        "environment": env,
        **results,
        "duration_s": round(time.perf_counter() - began, 1),
    }
    render(results, env, console)
    if args.profile:
        sys.stderr.write(results["profile"])
    log.print(f"[dim]done in {report['duration_s']} s[/dim]")
    machine.write_report(report, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
