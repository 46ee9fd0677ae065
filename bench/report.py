"""Render docs/performance.md from bench/results.json and the template bench/performance.md.in.

    python -m bench.report [--results bench/results.json] [--template bench/performance.md.in]
                           [--out docs/performance.md] [--check]

The template is a :class:`string.Template`: prose, with a ``${name}`` for every figure a benchmark produced
(``$$`` is a literal dollar sign). Each name is defined in :data:`FIGURES` below: where in results.json the
figure comes from, and how it is written. A figure the results file lacks stops the rendering with an error that
names the placeholder and the missing key. ``--check`` renders and compares with ``--out`` instead of writing it
(exit status 1 when they differ).
"""

from __future__ import annotations

import argparse
import json
import re
import string
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from bench import suite
from bench.suite import MissingFigure, dig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
TEMPLATE = ROOT / "bench" / "performance.md.in"
DOC = ROOT / "docs" / "performance.md"

# The targets of the headline figures are suite.TARGETS; these name them for the detail sections.
_TARGET = {target.figure: target.value for target in suite.TARGETS}
TARGET_DETECT_EVENTS_PER_S = _TARGET["pipeline_events_per_s.embedded"]  # issue 3: detect and the runner alike
TARGET_KAFKA_EVENTS_PER_S = _TARGET["pipeline_events_per_s.kafka"]  # issue 5
TARGET_HTTP_RPS = _TARGET["http_validate_rps"]  # issue 7
TARGET_HTTP_P99_MS = _TARGET["http_validate_p99_ms"]  # issue 7
TARGET_BYTES_PER_ENTITY = 1024  # issue 3 (no headline figure)
TARGET_PROPAGATION_S = 1.0  # issue 5 (no headline figure)
DASH = "\u2013"  # the en dash of ranges, as the prose writes them
MINUS = "\u2212"


class ReportError(Exception):
    """The template cannot be rendered from these results; the message says which figure and why."""


class Results:
    """results.json with lookups that name the missing key."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def __call__(self, *path: str | int) -> Any:
        value = dig(self.data, *path)
        if value is None:
            raise MissingFigure(f"results.json has no value for {'.'.join(map(str, path))} (not measured yet)")
        return value

    def d(self, bench: str, *path: str | int) -> Any:
        return self("details", bench, *path)

    def run(self, bench: str, *path: str | int) -> Any:
        return self("runs", bench, *path)


# ------------------------------------------------------------------------------------------- formatting


def n(x: float) -> str:
    return f"{round(x):,}"


def fixed(x: float, digits: int) -> str:
    return f"{x:,.{digits}f}"


def times(x: float) -> str:
    """A ratio as the tables write it: 0.97, 13.1."""
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def met_word(ok: bool) -> str:
    return "met" if ok else "**missed**"


def count(k: int, what: str) -> str:
    return f"no {what}s" if k == 0 else f"{k:,} {what}{'s' if k != 1 else ''}"


def load_phrase(r: Results, bench: str) -> str:
    load = r.run(bench, "load_average")
    during = load["during_1min"]
    span = f"{during['min']}" if during["min"] == during["max"] else f"{during['min']}{DASH}{during['max']}"
    before, after = load["before"][0], load["after"][0]
    return f"1-minute load average {before} at the start, {span} while it ran, {after} at the end"


def code_phrase(r: Results, bench: str) -> str:
    git = r.run(bench, "git")
    if not git.get("commit"):
        return "an unknown commit (no git)"
    text = f"commit `{git['commit'][:7]}`"
    changed = git.get("uncommitted") or []
    if changed:
        tops = sorted({path.split("/")[0] + "/" for path in changed})
        files = count(len(changed), "file")
        text += f" plus uncommitted changes ({files} under {', '.join(tops)}; listed in results.json)"
    else:
        text += " (nothing uncommitted under pipeline/, bench/, models/, scripts/)"
    return text


def command_phrase(r: Results, bench: str) -> str:
    """The command as recorded, without the address of a broker ``python -m bench`` started for the run."""
    command: str = r.run(bench, "command")
    if r.data.get("runs", {}).get(bench, {}).get("broker", {}).get("private"):
        command = re.sub(r" --bootstrap \S+", "", command)
    return command


def measured_dates(r: Results) -> str:
    dates = sorted(run["measured_at"] for run in r("runs").values())
    if not dates:
        raise MissingFigure("results.json has no runs")
    return dates[0] if dates[0] == dates[-1] else f"between {dates[0]} and {dates[-1]}"


def _machine_text(m: dict[str, Any]) -> str:
    return f"{m['cpus']} CPUs ({m['cpu_model']}), {m['platform']}, Python {m['python']}"


def run_machine(r: Results, bench: str) -> dict[str, Any]:
    """The machine a benchmark ran on: its run's own record (``--only`` reruns may run elsewhere), else the
    file's."""
    machine = dig(r.data, "runs", bench, "machine")
    return machine if isinstance(machine, dict) else r("machine")


def machine_phrase(r: Results) -> str:
    """Every machine the file's benchmarks ran on, the most used first."""
    texts = [_machine_text(run_machine(r, name)) for name in r.data.get("runs", {})] or [_machine_text(r("machine"))]
    ordered = sorted(set(texts), key=lambda t: (-texts.count(t), t))
    return " and ".join(ordered)


def env_phrase(r: Results, bench: str, libraries: tuple[str, ...]) -> str:
    env = r.d(bench, "environment")
    libs = ", ".join(f"{name} {env[name]}" for name in libraries)
    cpu = f'{env["cpus"]} CPUs (`nproc`), model name "{env["cpu_model"]}"'
    return f"{cpu}, {env['platform']}, Python {env['python']}, {libs}"


def heldout_headline(r: Results) -> str:
    """The held-out detection figures of the headline setup, in one phrase."""
    report = r("details", "detection_heldout")
    setup = report["headline_model"]
    f = report["figures"][setup]
    benign = {k: 100 * v["rate"] for k, v in f["benign_alerted"].items()}
    return (
        f"{setup}, {f['worlds']} worlds: recall {f['recall']['rate']:.2f} (worst world {f['worst_world_recall']:.2f}), "
        f"benign tokens {benign['tokens']:.2f} %, IPs {benign['ips']:.2f} %, subjects {benign['subjects']:.2f} % "
        f"alerted, median time to detect {f['median_time_to_detect_s']:.1f} s"
    )


# ------------------------------------------------------------------------------------------- the figures

Figure = Callable[[Results], str]
FIGURES: dict[str, Figure] = {}
_T = TypeVar("_T")


def bound(figure: Callable[[Results, _T], str], value: _T) -> Figure:
    """``figure`` with its second argument fixed now: what ``lambda r, b=bench: ...`` does in a loop, typed."""
    return lambda r: figure(r, value)


def _header() -> None:
    FIGURES["measured_dates"] = measured_dates
    FIGURES["machine"] = machine_phrase
    FIGURES["quick_note"] = lambda r: (
        "\n\n**A `--quick` smoke run: its sizes are far too small for these figures to mean anything.**"
        if r.data.get("quick")
        else ""
    )
    FIGURES["detection_heldout_measured_at"] = lambda r: r.run("detection_heldout", "measured_at")
    for bench in ("time_to_revoke", "kafka", "http"):
        FIGURES[f"{bench}_machine"] = bound(lambda r, b: _machine_text(run_machine(r, b)), bench)
    FIGURES["heldout_headline"] = heldout_headline
    for bench in ("validator", "time_to_revoke", "pipeline", "kafka", "http"):
        FIGURES[f"{bench}_measured_at"] = bound(lambda r, b: r.run(b, "measured_at"), bench)
        FIGURES[f"{bench}_load"] = bound(lambda r, b: load_phrase(r, b), bench)
        FIGURES[f"{bench}_duration_s"] = bound(lambda r, b: fixed(r.run(b, "duration_s"), 0), bench)
        FIGURES[f"{bench}_command"] = bound(lambda r, b: command_phrase(r, b), bench)
        FIGURES[f"{bench}_code"] = bound(lambda r, b: code_phrase(r, b), bench)


def _headline() -> None:
    formats: dict[str, Callable[[Any], str]] = {
        "validator_tokens_per_s.first_seen": n,
        "validator_tokens_per_s.reused": n,
        "validator_vs_pyjwt.first_seen": times,
        "validator_vs_pyjwt.reused": times,
        "http_validate_rps": n,
        "http_validate_p99_ms": lambda x: fixed(x, 2),
        "pipeline_events_per_s.embedded": n,
        "pipeline_events_per_s.kafka": n,
        "pipeline_events_per_s.kafka_confluent": n,
        "time_to_revoke_p99_s": lambda x: fixed(x, 3),
    }
    for key in formats:
        FIGURES[key.replace(".", "_")] = bound(lambda r, k: formats[k](r(*k.split("."))), key)
    for target in suite.TARGETS:
        FIGURES["met_" + target.figure.replace(".", "_")] = bound(
            lambda r, t: yes(t.met(r(*t.figure.split(".")))), target
        )


def _validator() -> None:
    scenarios: dict[str, Callable[[Results], dict[str, Any]]] = {
        "rs256_first": lambda r: r.d("validator", "results", "RS256 first-seen"),
        "rs256_reuse": lambda r: suite.reuse_scenario(r.d("validator")),
        "es256_first": lambda r: r.d("validator", "results", "ES256 first-seen"),
        "eddsa_first": lambda r: r.d("validator", "results", "EdDSA first-seen"),
    }
    for name, get in scenarios.items():
        FIGURES[f"v_{name}_key"] = bound(lambda r, g: g(r)["key"], get)
        FIGURES[f"v_{name}_ours"] = bound(lambda r, g: n(g(r)["jwtwatch_tokens_per_s"]), get)
        FIGURES[f"v_{name}_bare"] = bound(lambda r, g: n(g(r)["pyjwt_tokens_per_s"]), get)
        FIGURES[f"v_{name}_ratio"] = bound(lambda r, g: times(g(r)["ratio"]), get)
        FIGURES[f"v_{name}_range"] = bound(
            lambda r, g: f"{times(g(r)['ratio_per_round_min'])}{DASH}{times(g(r)['ratio_per_round_max'])}", get
        )
    params = {
        "v_uses": "uses",
        "v_rounds": "rounds",
        "v_chunk": "chunk",
        "v_tokens": "tokens_first_seen",
        "v_reuse_tokens": "reuse_tokens",
        "v_revocations": "revocation_index_entries",
    }
    for placeholder, key in params.items():
        FIGURES[placeholder] = bound(lambda r, k: n(r.d("validator", "parameters", k)), key)
    FIGURES["v_reuse_validations"] = lambda r: n(suite.reuse_scenario(r.d("validator"))["validations_per_round"])
    FIGURES["v_machine"] = lambda r: env_phrase(r, "validator", ("PyJWT", "cryptography"))


def _pipeline() -> None:
    def p(r: Results, *path: str | int) -> Any:
        return r.d("pipeline", *path)

    def runner_ok(r: Results) -> bool:
        events_per_s: float = p(r, "runner", "events_per_s")
        return events_per_s >= TARGET_DETECT_EVENTS_PER_S

    def memory_ok(r: Results) -> bool:
        bytes_per_entity: float = p(r, "memory", "bytes_per_entity")
        return bytes_per_entity <= TARGET_BYTES_PER_ENTITY

    def per_entity(r: Results, *areas: str) -> str:
        memory = p(r, "memory")
        by_area = memory["retained_by_area"]
        if areas == ("other",):
            known = ("windows", "keys and times (parsed strings, floats)", "baselines")
            size = sum(v for k, v in by_area.items() if k not in known)
        else:
            size = sum(by_area.get(a, 0) for a in areas)
        return n(size / memory["active_entities"])

    for fmt in ("parquet", "jsonl"):
        FIGURES[f"p_detect_{fmt}_eps"] = bound(lambda r, f: n(p(r, "detect", f, "events_per_s")), fmt)
        FIGURES[f"p_detect_{fmt}_met"] = bound(
            lambda r, f: yes(p(r, "detect", f, "events_per_s") >= TARGET_DETECT_EVENTS_PER_S), fmt
        )
        FIGURES[f"p_replay_{fmt}_eps"] = bound(lambda r, f: n(p(r, "detect", f, "replay_events_per_s")), fmt)
        FIGURES[f"p_replay_{fmt}_s"] = bound(lambda r, f: fixed(p(r, "detect", f, "replay_s"), 1), fmt)
        FIGURES[f"p_replay_{fmt}_cpu_s"] = bound(lambda r, f: fixed(p(r, "detect", f, "replay_cpu_s"), 1), fmt)
        FIGURES[f"p_read_{fmt}_s"] = bound(lambda r, f: fixed(p(r, "detect", f, "read_s"), 2), fmt)
        FIGURES[f"p_{fmt}_mb"] = bound(lambda r, f: fixed(p(r, "detect", f, "file_mb"), 0), fmt)
    FIGURES["p_detect_met_word"] = lambda r: met_word(
        all(p(r, "detect", f, "events_per_s") >= TARGET_DETECT_EVENTS_PER_S for f in ("parquet", "jsonl"))
    )
    FIGURES["p_runner_eps"] = lambda r: n(p(r, "runner", "events_per_s"))
    FIGURES["p_runner_met"] = lambda r: yes(runner_ok(r))
    FIGURES["p_runner_met_word"] = lambda r: met_word(runner_ok(r))
    FIGURES["p_runner_target_phrase"] = lambda r: (
        "met"
        if runner_ok(r)
        else f"missed by {round(100 * (1 - p(r, 'runner', 'events_per_s') / TARGET_DETECT_EVENTS_PER_S))}%"
    )
    FIGURES["p_runner_s"] = lambda r: fixed(p(r, "runner", "seconds"), 1)
    FIGURES["p_runner_cpu_s"] = lambda r: fixed(p(r, "runner", "cpu_s"), 1)
    FIGURES["p_runner_gc_s"] = lambda r: fixed(p(r, "runner", "gc_s"), 2)
    FIGURES["p_gc_runner_s"] = FIGURES["p_runner_gc_s"]
    FIGURES["p_runner_alerts"] = lambda r: n(p(r, "runner", "alerts_published"))
    FIGURES["p_runner_late"] = lambda r: count(p(r, "runner", "late_events"), "late event")
    FIGURES["p_runner_vs_replay"] = lambda r: (
        f"{round(100 * p(r, 'runner', 'events_per_s') / p(r, 'detect', 'jsonl', 'replay_events_per_s'))}%"
    )
    FIGURES["p_replay_over_runner"] = lambda r: (
        f"{p(r, 'detect', 'jsonl', 'replay_events_per_s') / p(r, 'runner', 'events_per_s'):.1f}"
    )
    FIGURES["p_gc_replay_s"] = lambda r: (
        f"{fixed(p(r, 'detect', 'jsonl', 'replay_gc_s'), 2)} and {fixed(p(r, 'detect', 'parquet', 'replay_gc_s'), 2)}"
    )
    FIGURES["p_peak_active"] = lambda r: n(p(r, "runner", "peak_active_entities"))
    FIGURES["p_bytes_per_entity"] = lambda r: n(p(r, "memory", "bytes_per_entity"))
    FIGURES["p_memory_met"] = lambda r: yes(memory_ok(r))
    FIGURES["p_memory_met_word"] = lambda r: met_word(memory_ok(r))
    FIGURES["p_mem_windows"] = lambda r: per_entity(r, "windows")
    FIGURES["p_mem_keys"] = lambda r: per_entity(r, "keys and times (parsed strings, floats)")
    FIGURES["p_mem_baselines"] = lambda r: per_entity(r, "baselines")
    FIGURES["p_mem_other"] = lambda r: per_entity(r, "other")
    FIGURES["p_mem_active"] = lambda r: n(p(r, "memory", "active_entities"))
    for kind in ("jti", "sub", "ip"):
        FIGURES[f"p_mem_active_{kind}"] = bound(lambda r, k: n(p(r, "memory", "active_by_type", k)), kind)
    FIGURES["p_mem_baseline_subjects"] = lambda r: n(p(r, "memory", "baseline_entries", "subjects"))
    FIGURES["p_mem_baseline_ips"] = lambda r: n(p(r, "memory", "baseline_entries", "ips"))
    FIGURES["p_mem_state_mb"] = lambda r: fixed(p(r, "memory", "engine_state_bytes") / 1e6, 2)
    FIGURES["p_load_short"] = lambda r: "{min}{dash}{max}".format(
        dash=DASH, **r.run("pipeline", "load_average", "during_1min")
    )
    FIGURES["p_events"] = lambda r: n(p(r, "eval", "events"))
    FIGURES["p_minutes"] = lambda r: f"{p(r, 'eval', 'minutes'):g}"
    FIGURES["p_seed"] = lambda r: str(p(r, "eval", "seed"))
    FIGURES["p_scale"] = lambda r: f"{p(r, 'parameters', 'scale'):g}"
    for key in ("browsers", "mobile", "services", "offices", "incidents"):
        FIGURES[f"p_{key}"] = bound(lambda r, k: n(p(r, "eval", k)), key)
    FIGURES["p_partitions"] = lambda r: str(p(r, "parameters", "partitions"))
    FIGURES["p_train_minutes"] = lambda r: f"{p(r, 'training', 'minutes'):g}"
    FIGURES["p_train_seed"] = lambda r: str(p(r, "training", "seed"))
    FIGURES["p_train_events"] = lambda r: n(p(r, "training", "events"))

    def bad_and_late(r: Results) -> str:
        bad = sum(p(r, "detect", f, "bad_lines") for f in ("parquet", "jsonl"))
        late = sum(p(r, "detect", f, "late_events") for f in ("parquet", "jsonl")) + p(r, "runner", "late_events")
        text = f"{count(bad, 'bad line')}, {count(late, 'late event')}."
        return text[0].upper() + text[1:]

    FIGURES["p_bad_and_late"] = bad_and_late
    FIGURES["p_machine"] = lambda r: env_phrase(r, "pipeline", ("numpy", "scikit-learn", "pandas", "pyarrow", "orjson"))


def _time_to_revoke() -> None:
    for key in ("p50_s", "p90_s", "p99_s", "max_s"):
        FIGURES[f"ttr_{key}"] = bound(lambda r, k: fixed(r.d("time_to_revoke", k), 3), key)
    FIGURES["ttr_trials"] = lambda r: n(r.d("time_to_revoke", "trials"))


def _kafka() -> None:
    def k(r: Results, *path: str) -> Any:
        return r.d("kafka", *path)

    def broker(r: Results) -> str:
        info = r.run("kafka", "broker")
        if info.get("private"):
            return (
                f"a real single-node Apache Kafka {info.get('kafka_version') or ''} broker that `python -m bench` "
                "started for this benchmark with `scripts/kafka-local` (KRaft, Java 17)"
            ).replace("Kafka  broker", "Kafka broker")
        return f"the real Kafka broker given with `--bootstrap` ({info['bootstrap']})"

    def pipeline_met(r: Results, *client: str) -> str:
        rate = k(r, *client, "pipeline_events_per_s")
        if rate >= TARGET_KAFKA_EVENTS_PER_S:
            return "yes"
        return f"**no** ({MINUS}{round(100 * (1 - rate / TARGET_KAFKA_EVENTS_PER_S))}%)"

    FIGURES["kafka_broker"] = broker
    FIGURES["k_propagation_p50_ms"] = lambda r: fixed(k(r, "propagation_p50_s") * 1000, 0)
    FIGURES["k_propagation_p99_ms"] = lambda r: fixed(k(r, "propagation_p99_s") * 1000, 0)
    FIGURES["k_propagation_met"] = lambda r: yes(k(r, "propagation_p99_s") <= TARGET_PROPAGATION_S)
    FIGURES["k_publish_eps"] = lambda r: n(k(r, "publish_events_per_s"))
    FIGURES["k_trials"] = lambda r: n(r.run("kafka", "parameters", "trials"))
    FIGURES["k_events"] = lambda r: n(k(r, "events"))
    # The pipeline drain, once per consumer client: kafka-python's figures at the top of the report, confluent-kafka's
    # under "confluent_kafka".
    for prefix, client in (("k_pipeline", ()), ("k_confluent", ("confluent_kafka",))):
        FIGURES[f"{prefix}_eps"] = bound(lambda r, c: n(k(r, *c, "pipeline_events_per_s")), client)
        FIGURES[f"{prefix}_met"] = bound(lambda r, c: pipeline_met(r, *c), client)
        FIGURES[f"{prefix}_cpu_eps"] = bound(lambda r, c: n(k(r, *c, "pipeline_events_per_cpu_s")), client)
        FIGURES[f"{prefix}_s"] = bound(lambda r, c: fixed(k(r, *c, "pipeline_s"), 1), client)
        FIGURES[f"{prefix}_cpu_s"] = bound(lambda r, c: fixed(k(r, *c, "pipeline_cpu_s"), 1), client)
    FIGURES["k_late"] = lambda r: count(k(r, "late"), "late event")
    FIGURES["k_confluent_late"] = lambda r: count(k(r, "confluent_kafka", "late"), "late event")
    FIGURES["k_kafka_python"] = lambda r: r("machine", "kafka-python")
    FIGURES["k_crc32c"] = lambda r: r("machine", "crc32c")


def _http() -> None:
    def h(r: Results, *path: str | int) -> Any:
        return r.d("http", *path)

    def judged(r: Results, workers: int) -> str:
        entry = h(r, f"workers_{workers}")
        rps_ok = entry["rps"]["median"] >= TARGET_HTTP_RPS
        p99_ok = entry["p99_ms"]["median"] <= TARGET_HTTP_P99_MS
        rounds = entry["rounds"]
        good = sum(1 for x in rounds if x["rps"] >= TARGET_HTTP_RPS and x["p99_ms"] <= TARGET_HTTP_P99_MS)
        if rps_ok and p99_ok:
            return f"yes (both in {good} of {len(rounds)} rounds)"
        return f"req/s {yes(rps_ok)}; p99 {yes(p99_ok)} (both in {good} of {len(rounds)} rounds)"

    def errors(r: Results) -> str:
        runs = [v for key, v in r.d("http").items() if key.startswith("workers_") and isinstance(v, dict)]
        measured = [x for entry in runs for x in entry["rounds"]]
        measured += [entry["first_seen"] for entry in runs if "first_seen" in entry]
        non_2xx = sum(x["non_2xx"] for x in measured)
        socket = sum(x["socket_errors"] for x in measured)
        if non_2xx == socket == 0:
            return "No non-2xx answer and no socket error in any round."
        return f"{count(non_2xx, 'non-2xx answer').capitalize()} and {count(socket, 'socket error')} over all rounds."

    def wrapped(r: Results) -> str:
        entries = [v for key, v in r.d("http").items() if key.startswith("workers_") and isinstance(v, dict)]
        if any(e.get("first_seen", {}).get("wrapped") for e in entries):
            return "it wrapped round in this run, so some were cache hits"
        return "never wrapped round, so no cache hit"

    def median_range(summary: dict[str, float], fmt: Callable[[float], str]) -> str:
        return f"{fmt(summary['median'])} ({fmt(summary['min'])}{DASH}{fmt(summary['max'])})"

    def wrk_version(r: Results) -> str:
        text = h(r, "wrk")
        match = re.search(r"wrk (\S+(?: \[\w+\])?)", text)
        return match.group(1) if match else text

    for w in (1, 2):
        FIGURES[f"h_w{w}_rps"] = bound(lambda r, w: median_range(h(r, f"workers_{w}", "rps"), n), w)
        FIGURES[f"h_w{w}_p99"] = bound(
            lambda r, w: median_range(h(r, f"workers_{w}", "p99_ms"), lambda x: fixed(x, 2)), w
        )
        FIGURES[f"h_w{w}_met"] = bound(lambda r, w: judged(r, w), w)
        FIGURES[f"h_w{w}_fs_rps"] = bound(lambda r, w: n(h(r, f"workers_{w}", "first_seen", "rps")), w)
        FIGURES[f"h_w{w}_fs_rps_plain"] = FIGURES[f"h_w{w}_fs_rps"]
        FIGURES[f"h_w{w}_fs_p99"] = bound(lambda r, w: fixed(h(r, f"workers_{w}", "first_seen", "p99_ms"), 1), w)
    FIGURES["h_head_workers"] = lambda r: str(h(r, "workers"))
    FIGURES["h_connections"] = lambda r: n(h(r, "connections"))
    FIGURES["h_tokens"] = lambda r: n(h(r, "distinct_tokens"))
    FIGURES["h_duration"] = lambda r: str(h(r, "duration_s"))
    FIGURES["h_rounds"] = lambda r: str(r.run("http", "parameters", "rounds"))
    FIGURES["h_threads"] = lambda r: str(r.run("http", "parameters", "threads"))
    FIGURES["h_warmup"] = lambda r: str(r.run("http", "parameters", "warmup"))
    FIGURES["h_fs_duration"] = lambda r: str(r.run("http", "parameters", "first-seen-duration"))
    FIGURES["h_fs_tokens"] = lambda r: n(r.run("http", "parameters", "first-seen-tokens"))
    FIGURES["h_errors"] = errors
    FIGURES["h_fs_wrapped"] = wrapped
    FIGURES["h_wrk"] = wrk_version
    for lib in ("uvicorn", "uvloop", "httptools", "fastapi"):
        FIGURES[f"h_{lib}"] = bound(lambda r, lib: h(r, "environment", lib), lib)


for _define in (_header, _headline, _validator, _pipeline, _time_to_revoke, _kafka, _http):
    _define()


# ------------------------------------------------------------------------------------------- rendering


class _Figures(Mapping[str, str]):
    """The mapping ``Template.substitute`` reads: each placeholder computed when the template asks for it."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = Results(results)

    def __getitem__(self, name: str) -> str:
        if name not in FIGURES:
            raise ReportError(f"the template names ${{{name}}}, which bench/report.py does not define")
        try:
            return str(FIGURES[name](self.results))
        except MissingFigure as exc:
            raise ReportError(f"${{{name}}}: {exc}") from None
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise ReportError(f"${{{name}}}: results.json does not hold this figure as expected ({exc!r})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(FIGURES)

    def __len__(self) -> int:
        return len(FIGURES)


def placeholders(template: str) -> list[str]:
    """The names a template uses, in order of first use."""
    names: dict[str, None] = {}
    for match in string.Template.pattern.finditer(template):
        name = match.group("named") or match.group("braced")
        if name:
            names[name] = None
    return list(names)


def render(results: dict[str, Any], template: str | None = None) -> str:
    """The doc for these results; :class:`ReportError` naming the placeholder and the missing key otherwise."""
    text = TEMPLATE.read_text(encoding="utf-8") if template is None else template
    try:
        return string.Template(text).substitute(_Figures(results))
    except ValueError as exc:  # a stray "$" in the prose
        raise ReportError(f"template: {exc} (write a literal dollar sign as $$)") from None


def load(path: Path = RESULTS) -> dict[str, Any]:
    try:
        results: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return results
    except FileNotFoundError:
        raise ReportError(f"{path} does not exist; run `python -m bench` first") from None
    except ValueError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from None


def write(results: dict[str, Any], doc: Path = DOC, template: Path = TEMPLATE) -> None:
    doc.write_text(render(results, template.read_text(encoding="utf-8")), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="default: bench/results.json")
    parser.add_argument("--template", type=Path, default=TEMPLATE, help="default: bench/performance.md.in")
    parser.add_argument("--out", type=Path, default=DOC, help="default: docs/performance.md")
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    try:
        text = render(load(args.results), args.template.read_text(encoding="utf-8"))
    except ReportError as exc:
        print(f"python -m bench.report: {exc}", file=sys.stderr)
        return 1
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is not the rendering of {args.results}; run `python -m bench.report`", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"rendered {args.out} from {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
